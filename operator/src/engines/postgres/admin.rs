//! PostgreSQL: a LOGIN role without any special attribute, owner of its own
//! database, CONNECT and TEMPORARY revoked from PUBLIC on that database.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio_postgres::{Client, NoTls};

use crate::engines::ownership::{self, Claimant, Mark, ObjectKind, Presence, Verdict, authorize};
use futures::future::BoxFuture;

use crate::api::{Extension, ExtensionStatus};
use crate::engines::admin::{
    AdminError, Administration, Connection, Dropped, Extensions, Grant, Inventory, Provisioned,
    ReadGrant, ServerInfo, TIMEOUT,
};

/// `"ident"`: a quoted identifier; embedded quotes are doubled.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// `'literal'` for a session with `standard_conforming_strings = on`:
/// embedded quotes are doubled, backslashes are plain characters.
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn no_nul(s: &str) -> Result<&str, AdminError> {
    if s.contains('\0') {
        Err(AdminError::Refused(
            "names and passwords cannot contain NUL".into(),
        ))
    } else {
        Ok(s)
    }
}

async fn connect(
    conn: &Connection,
    user: &str,
    password: &str,
    database: &str,
) -> Result<Client, AdminError> {
    let mut config = tokio_postgres::Config::new();
    config
        .host(&conn.host)
        .port(conn.port)
        .user(user)
        .password(password)
        .dbname(database)
        .application_name("dbps-operator")
        .connect_timeout(TIMEOUT);
    let client = match &conn.tls {
        None => {
            let (client, connection) = config.connect(NoTls).await.map_err(classify)?;
            tokio::spawn(connection);
            client
        }
        Some(tls) => {
            config.ssl_mode(tokio_postgres::config::SslMode::Require);
            let connector = tokio_postgres_rustls::MakeRustlsConnect::new(tls.client_config()?);
            let (client, connection) = config.connect(connector).await.map_err(classify)?;
            tokio::spawn(connection);
            client
        }
    };
    // Quoting below relies on it (the default since PostgreSQL 9.1).
    client
        .batch_execute("SET standard_conforming_strings = on")
        .await
        .map_err(classify)?;
    Ok(client)
}

/// Admin sessions (database `postgres`) kept open between operations: a
/// new session costs a process on the server and a SCRAM exchange, tens of
/// times more than the statements most operations send. A session is taken
/// back only when it answers a probe (a session left in a failed
/// transaction, or cut off, does not); idle ones are closed after
/// [`SESSION_IDLE`], and at most [`SESSIONS_KEPT`] per server and user are
/// kept (the operator's per-server limit bounds how many are in use).
struct Sessions {
    idle: std::sync::Mutex<HashMap<SessionKey, Vec<(Client, Instant)>>>,
}

/// A server and the credentials its sessions were opened with.
type SessionKey = (String, u16, String, String, Option<Option<String>>);

/// How long an unused admin session stays open.
const SESSION_IDLE: Duration = Duration::from_secs(10);
/// Idle admin sessions kept per server and user.
const SESSIONS_KEPT: usize = 16;
/// How long a kept session has to answer before it is given up.
const SESSION_PROBE: Duration = Duration::from_secs(2);

static SESSIONS: std::sync::LazyLock<Sessions> = std::sync::LazyLock::new(|| Sessions {
    idle: std::sync::Mutex::default(),
});

fn session_key(conn: &Connection) -> SessionKey {
    (
        conn.host.clone(),
        conn.port,
        conn.username.clone(),
        conn.password.clone(),
        conn.tls.as_ref().map(|t| t.ca_pem.clone()),
    )
}

impl Sessions {
    /// An idle session of `key` opened less than [`SESSION_IDLE`] ago;
    /// those idle for longer, of any server, are closed.
    fn take(&self, key: &SessionKey) -> Option<Client> {
        let mut idle = self.idle.lock().unwrap();
        for sessions in idle.values_mut() {
            sessions.retain(|(client, at)| at.elapsed() < SESSION_IDLE && !client.is_closed());
        }
        idle.retain(|_, sessions| !sessions.is_empty());
        idle.get_mut(key)
            .and_then(Vec::pop)
            .map(|(client, _)| client)
    }

    fn give_back(&self, key: SessionKey, client: Client) {
        if client.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap();
        let sessions = idle.entry(key).or_default();
        if sessions.len() < SESSIONS_KEPT {
            sessions.push((client, Instant::now()));
        }
    }
}

/// An admin session, given back for reuse when dropped.
struct Session {
    client: Option<Client>,
    key: SessionKey,
}

impl std::ops::Deref for Session {
    type Target = Client;

    fn deref(&self) -> &Client {
        self.client.as_ref().expect("held until dropped")
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            SESSIONS.give_back(std::mem::take(&mut self.key), client);
        }
    }
}

async fn admin(conn: &Connection) -> Result<Session, AdminError> {
    let key = session_key(conn);
    while let Some(client) = SESSIONS.take(&key) {
        let probe = tokio::time::timeout(SESSION_PROBE, client.simple_query("SELECT 1")).await;
        if matches!(probe, Ok(Ok(_))) {
            return Ok(Session {
                client: Some(client),
                key,
            });
        }
    }
    let client = connect(conn, &conn.username, &conn.password, "postgres").await?;
    Ok(Session {
        client: Some(client),
        key,
    })
}

fn classify(e: tokio_postgres::Error) -> AdminError {
    match e.as_db_error() {
        Some(db)
            if db.code() == &tokio_postgres::error::SqlState::INVALID_PASSWORD
                || db.code()
                    == &tokio_postgres::error::SqlState::INVALID_AUTHORIZATION_SPECIFICATION =>
        {
            AdminError::AuthenticationFailed(db.message().to_string())
        }
        Some(db) => AdminError::Refused(format!("{} ({})", db.message(), db.code().code())),
        None => crate::engines::admin::connection_failure(&e, e.to_string()),
    }
}

async fn info(conn: &Connection) -> Result<ServerInfo, AdminError> {
    let client = admin(conn).await?;
    let row = client
        .query_one("SHOW server_version", &[])
        .await
        .map_err(classify)?;
    Ok(ServerInfo {
        version: row.get(0),
        enforces_database_roles: true,
    })
}

async fn can_login(conn: &Connection, grant: &Grant) -> bool {
    connect(conn, &grant.username, &grant.password, &grant.database)
        .await
        .is_ok()
}

/// The NOLOGIN role that owns `database`; the login users are its members
/// and act as it, so tables one user creates are the other's too (the two
/// users of a rotation share them).
pub fn owner_role(database: &str) -> String {
    crate::engines::admin::bounded(&format!("{database}_owner"))
}

/// Databases and roles under the given names, with their marks (comments).
/// A database without a comment whose owner is a role carrying a mark counts
/// as marked by it: dbps creates the owner role (marked, in one transaction)
/// before the database, so that is a database dbps made whose comment an
/// interrupted reconcile did not write yet.
async fn presences(
    client: &Client,
    database: &str,
    roles: &[String],
) -> Result<Inventory, AdminError> {
    let rows = client
        .query(
            "SELECT rolname, shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = ANY($1)",
            &[&roles],
        )
        .await
        .map_err(classify)?;
    let role_presence = |name: &str| {
        let row = rows.iter().find(|r| r.get::<_, String>(0) == name);
        Presence::of(
            row.is_some(),
            row.and_then(|r| r.get::<_, Option<String>>(1)).as_deref(),
        )
    };
    let db = client
        .query_opt(
            "SELECT pg_get_userbyid(datdba), shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = $1",
            &[&database],
        )
        .await
        .map_err(classify)?;
    let mut database_presence = Presence::of(
        db.is_some(),
        db.as_ref()
            .and_then(|r| r.get::<_, Option<String>>(1))
            .as_deref(),
    );
    if database_presence == Presence::Unmarked {
        let dba: String = db.as_ref().map(|r| r.get(0)).unwrap_or_default();
        if let (true, Presence::Marked(mark)) = (dba == owner_role(database), role_presence(&dba)) {
            database_presence = Presence::Marked(mark);
        }
    }
    let mut found = vec![(
        ObjectKind::Database,
        database.to_string(),
        database_presence,
    )];
    found.extend(
        roles
            .iter()
            .map(|r| (ObjectKind::User, r.clone(), role_presence(r))),
    );
    Ok(found)
}

async fn inspect(
    conn: &Connection,
    database: &str,
    usernames: &[String],
) -> Result<Inventory, AdminError> {
    let client = admin(conn).await?;
    let mut roles = vec![owner_role(database)];
    roles.extend(usernames.iter().cloned());
    presences(&client, no_nul(database)?, &roles).await
}

fn comment(kind: ObjectKind, name: &str, mark: &Mark) -> String {
    let object = match kind {
        ObjectKind::Database => "DATABASE",
        ObjectKind::User => "ROLE",
    };
    format!(
        "COMMENT ON {object} {} IS {}",
        quote_ident(name),
        quote_literal(&mark.encode())
    )
}

async fn ensure(
    conn: &Connection,
    grant: &Grant,
    claimant: &Claimant,
) -> Result<Provisioned, AdminError> {
    let (db, user, password) = (
        no_nul(&grant.database)?,
        no_nul(&grant.username)?,
        no_nul(&grant.password)?,
    );
    let mark = &claimant.mark;
    let owner = owner_role(db);
    let client = admin(conn).await?;
    let found = presences(&client, db, &[owner.clone(), user.to_string()]).await?;
    // Nothing is written unless every object is this claim's to use.
    let verdicts = authorize(&found, claimant)?;
    let mut provisioned = Provisioned::default();
    for ((_, name, _), verdict) in found.iter().zip(&verdicts) {
        provisioned.record(verdict, name);
    }
    let (owner_verdict, user_verdict) = (&verdicts[1], &verdicts[2]);

    // The owner role, created and marked in one transaction.
    let owner_attributes = "NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS";
    let sql = match owner_verdict {
        Verdict::Create => Some(format!(
            "CREATE ROLE {} {owner_attributes}; {}",
            quote_ident(&owner),
            comment(ObjectKind::User, &owner, mark)
        )),
        Verdict::Adopt => Some(format!(
            "ALTER ROLE {} WITH {owner_attributes}; {}",
            quote_ident(&owner),
            comment(ObjectKind::User, &owner, mark)
        )),
        Verdict::Reattach => Some(comment(ObjectKind::User, &owner, mark)),
        Verdict::Ours => None,
    };
    if let Some(sql) = sql {
        client.batch_execute(&sql).await.map_err(classify)?;
    }

    // The login user, likewise.
    let attributes = "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT";
    let sql = match user_verdict {
        Verdict::Create => Some(format!(
            "CREATE ROLE {} {attributes} PASSWORD {}; {}",
            quote_ident(user),
            quote_literal(password),
            comment(ObjectKind::User, user, mark)
        )),
        Verdict::Adopt => Some(format!(
            "ALTER ROLE {} WITH {attributes}; {}",
            quote_ident(user),
            comment(ObjectKind::User, user, mark)
        )),
        Verdict::Reattach => Some(comment(ObjectKind::User, user, mark)),
        Verdict::Ours => None,
    };
    if let Some(sql) = sql {
        client.batch_execute(&sql).await.map_err(classify)?;
    }
    let statements = [
        format!("GRANT {} TO {}", quote_ident(&owner), quote_ident(user)),
        format!(
            "ALTER ROLE {} SET role = {}",
            quote_ident(user),
            quote_literal(&owner)
        ),
    ];
    for sql in statements {
        client.batch_execute(&sql).await.map_err(classify)?;
    }

    // The database: CREATE DATABASE cannot share a transaction, so it is made
    // owned by the marked role first and marked itself right after (see `presences`).
    let current = client
        .query_opt(
            "SELECT pg_get_userbyid(datdba), shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = $1",
            &[&db],
        )
        .await
        .map_err(classify)?;
    let current_owner: Option<String> = current.as_ref().map(|row| row.get(0));
    let current_mark: Option<String> = current.as_ref().and_then(|row| row.get(1));
    match current_owner.as_deref() {
        None => {
            let sql = format!(
                "CREATE DATABASE {} OWNER {}",
                quote_ident(db),
                quote_ident(&owner)
            );
            client.batch_execute(&sql).await.map_err(classify)?;
        }
        Some(o) if o != owner => {
            let sql = format!(
                "ALTER DATABASE {} OWNER TO {}",
                quote_ident(db),
                quote_ident(&owner)
            );
            client.batch_execute(&sql).await.map_err(classify)?;
        }
        Some(_) => {}
    }
    if current_mark.as_deref() != Some(mark.encode().as_str()) {
        client
            .batch_execute(&comment(ObjectKind::Database, db, mark))
            .await
            .map_err(classify)?;
    }
    let sql = format!(
        "REVOKE CONNECT, TEMPORARY ON DATABASE {} FROM PUBLIC",
        quote_ident(db)
    );
    client.batch_execute(&sql).await.map_err(classify)?;
    // The password is set again only when it no longer works (rotation, drift).
    if *user_verdict != Verdict::Create && !can_login(conn, grant).await {
        let sql = format!(
            "ALTER ROLE {} WITH {attributes} PASSWORD {}",
            quote_ident(user),
            quote_literal(password)
        );
        client.batch_execute(&sql).await.map_err(classify)?;
    }
    Ok(provisioned)
}

/// Gives `owner` every privilege on the tables, views and sequences that
/// extension `name` made, and the use of its schema. Its functions keep the
/// privileges the extension gave them: one that is not for everyone (such
/// as `dblink_connect_u`) stays the superuser's.
fn grant_extension_objects(name: &str, owner: &str) -> String {
    format!(
        r#"DO $dbps$
DECLARE r record;
BEGIN
  FOR r IN
    SELECT c.oid::regclass AS object, c.relkind
    FROM pg_depend d JOIN pg_class c ON c.oid = d.objid
    WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_extension'::regclass
      AND d.deptype = 'e' AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
      AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = {name})
  LOOP
    IF r.relkind = 'S' THEN
      EXECUTE format('GRANT ALL ON SEQUENCE %s TO %I', r.object, {owner});
    ELSE
      EXECUTE format('GRANT ALL ON TABLE %s TO %I', r.object, {owner});
    END IF;
  END LOOP;
  EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I',
    (SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = {name}),
    {owner});
END
$dbps$"#,
        name = quote_literal(name),
        owner = quote_literal(owner),
    )
}

async fn extensions(
    conn: &Connection,
    database: &str,
    wanted: &[Extension],
    mark: &Mark,
) -> Result<Extensions, AdminError> {
    let database = no_nul(database)?;
    let owner = owner_role(database);
    let client = connect(conn, &conn.username, &conn.password, database).await?;
    let names: Vec<String> = wanted.iter().map(|e| e.name.clone()).collect();
    let available: Vec<String> = client
        .query(
            "SELECT name FROM pg_available_extensions WHERE name = ANY($1)",
            &[&names],
        )
        .await
        .map_err(classify)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let missing: Vec<&str> = names
        .iter()
        .filter(|n| !available.contains(n))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        return Err(AdminError::Extension(format!(
            "{} not available on the server (pg_available_extensions does not list it); install it there, or remove it from spec.extensions",
            missing.join(", ")
        )));
    }
    // Name, version, schema and mark of every extension of the database.
    type Installed = (String, String, String, Option<String>);
    let installed = async |client: &Client| -> Result<Vec<Installed>, AdminError> {
        Ok(client
            .query(
                "SELECT e.extname::text, e.extversion, n.nspname::text, obj_description(e.oid, 'pg_extension') \
                 FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace",
                &[],
            )
            .await
            .map_err(classify)?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect())
    };
    let found = installed(&client).await?;
    let mut done = Extensions::default();
    for extension in wanted {
        let name = no_nul(&extension.name)?;
        let existing = found.iter().find(|(n, ..)| n == name);
        match (existing, &extension.schema) {
            (Some((_, _, schema, _)), Some(wanted)) if schema != wanted => {
                return Err(AdminError::Extension(format!(
                    "{name} exists in schema {schema:?}, not {wanted:?}; remove the schema from its entry, or drop the extension first"
                )));
            }
            (Some(_), _) => {}
            (None, schema) => {
                let mut sql = String::from("BEGIN; ");
                let mut create = format!("CREATE EXTENSION {}", quote_ident(name));
                if let Some(schema) = schema {
                    sql.push_str(&format!(
                        "CREATE SCHEMA IF NOT EXISTS {} AUTHORIZATION {}; ",
                        quote_ident(no_nul(schema)?),
                        quote_ident(&owner)
                    ));
                    create.push_str(&format!(" SCHEMA {}", quote_ident(schema)));
                }
                sql.push_str(&format!(
                    "{create}; COMMENT ON EXTENSION {} IS {}; COMMIT",
                    quote_ident(name),
                    quote_literal(&mark.encode())
                ));
                if let Err(e) = client.batch_execute(&sql).await {
                    let _ = client.batch_execute("ROLLBACK").await;
                    return Err(match classify(e) {
                        AdminError::Refused(message) => {
                            AdminError::Extension(format!("{name}: {message}"))
                        }
                        other => other,
                    });
                }
                done.created.push(name.to_string());
            }
        }
        client
            .batch_execute(&grant_extension_objects(name, &owner))
            .await
            .map_err(classify)?;
    }
    // Extensions dbps made that the claim no longer names go, unless used.
    for (name, _, _, comment) in &found {
        let ours = comment.as_deref().and_then(Mark::decode).is_some();
        if !ours || names.contains(name) {
            continue;
        }
        let sql = format!("DROP EXTENSION IF EXISTS {} RESTRICT", quote_ident(name));
        match client.batch_execute(&sql).await {
            Ok(()) => done.dropped.push(name.clone()),
            Err(e)
                if e.code()
                    == Some(&tokio_postgres::error::SqlState::DEPENDENT_OBJECTS_STILL_EXIST) =>
            {
                done.in_use.push(name.clone())
            }
            Err(e) => return Err(classify(e)),
        }
    }
    done.installed = installed(&client)
        .await?
        .into_iter()
        .filter(|(n, ..)| names.contains(n))
        .map(|(name, version, ..)| ExtensionStatus { name, version })
        .collect();
    Ok(done)
}

/// What pgAudit logs in a database under a compliance profile: every read
/// and write of a table, schema changes and role changes, each with the
/// relation it touched; never the statements' parameters (card numbers
/// would land in the log) nor the catalog queries of clients.
pub const AUDIT_SETTINGS: [(&str, &str); 4] = [
    ("pgaudit.log", "read, write, ddl, role"),
    ("pgaudit.log_relation", "on"),
    ("pgaudit.log_parameter", "off"),
    ("pgaudit.log_catalog", "off"),
];

async fn refuses_plaintext(
    conn: &Connection,
    database: &str,
    username: &str,
) -> Result<bool, AdminError> {
    let mut config = tokio_postgres::Config::new();
    config
        .host(&conn.host)
        .port(conn.port)
        .user(no_nul(username)?)
        .password(crate::password::generate())
        .dbname(no_nul(database)?)
        .application_name("dbps-operator")
        .ssl_mode(tokio_postgres::config::SslMode::Disable)
        .connect_timeout(TIMEOUT);
    match config.connect(NoTls).await {
        Ok(_) => Ok(false),
        // pg_hba.conf has no line for it, or rejects it: refused before
        // authentication. A wrong password (28P01) means it got that far.
        Err(e) => {
            match e.as_db_error() {
                Some(db) => Ok(db.code()
                    == &tokio_postgres::error::SqlState::INVALID_AUTHORIZATION_SPECIFICATION),
                None => Err(AdminError::Unreachable(e.to_string())),
            }
        }
    }
}

async fn can_audit(conn: &Connection) -> Result<bool, AdminError> {
    let client = admin(conn).await?;
    let preloaded: String = client
        .query_one("SELECT current_setting('shared_preload_libraries')", &[])
        .await
        .map_err(classify)?
        .get(0);
    Ok(preloaded.split(',').any(|l| l.trim() == "pgaudit"))
}

async fn audit(conn: &Connection, database: &str) -> Result<(), AdminError> {
    let database = no_nul(database)?;
    let client = admin(conn).await?;
    // Settings of a database apply to every new session in it; pgAudit's are
    // the superuser's to set, so its users cannot turn them off.
    let sql: Vec<String> = AUDIT_SETTINGS
        .iter()
        .map(|(name, value)| {
            format!(
                "ALTER DATABASE {} SET {name} = {}",
                quote_ident(database),
                quote_literal(value)
            )
        })
        .collect();
    client
        .batch_execute(&sql.join("; "))
        .await
        .map_err(classify)
}

/// `schema.name` of a table as a claim names it (`name` is in `public`).
fn qualified(table: &str) -> (String, String) {
    match table.split_once('.') {
        Some((schema, name)) => (schema.to_string(), name.to_string()),
        None => ("public".to_string(), table.to_string()),
    }
}

async fn ensure_reader(
    conn: &Connection,
    grant: &ReadGrant,
    claimant: &Claimant,
) -> Result<Vec<String>, AdminError> {
    let (db, user, password) = (
        no_nul(&grant.database)?,
        no_nul(&grant.username)?,
        no_nul(&grant.password)?,
    );
    let client = admin(conn).await?;
    let found = presences(&client, db, &[user.to_string()]).await?;
    let (kind, name, presence) = &found[1];
    let verdict = ownership::verdict(*kind, name, presence, &claimant.mark, false)?;
    // Reads only: no attribute, not even INHERIT, and read-only transactions.
    let attributes =
        "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS NOINHERIT";
    let sql = match verdict {
        Verdict::Create => format!(
            "BEGIN; CREATE ROLE {} {attributes} PASSWORD {}; {}; COMMIT",
            quote_ident(user),
            quote_literal(password),
            comment(ObjectKind::User, user, &claimant.mark)
        ),
        _ => format!(
            "ALTER ROLE {} WITH {attributes} PASSWORD {}; {}",
            quote_ident(user),
            quote_literal(password),
            comment(ObjectKind::User, user, &claimant.mark)
        ),
    };
    client.batch_execute(&sql).await.map_err(classify)?;
    let sql = format!(
        "ALTER ROLE {user} SET default_transaction_read_only = on; GRANT CONNECT ON DATABASE {db} TO {user}",
        user = quote_ident(user),
        db = quote_ident(db),
    );
    client.batch_execute(&sql).await.map_err(classify)?;

    // In the database: SELECT on what is named and exists, nothing else.
    let inside = connect(conn, &conn.username, &conn.password, db).await?;
    let mut granted = Vec::new();
    let mut waiting = Vec::new();
    for table in &grant.tables {
        let (schema, name) = qualified(no_nul(table)?);
        let exists = inside
            .query_opt(
                "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p', 'v', 'm', 'f')",
                &[&schema, &name],
            )
            .await
            .map_err(classify)?
            .is_some();
        if !exists {
            waiting.push(table.clone());
            continue;
        }
        let sql = format!(
            "GRANT USAGE ON SCHEMA {s} TO {u}; GRANT SELECT ON TABLE {s}.{t} TO {u}",
            s = quote_ident(&schema),
            t = quote_ident(&name),
            u = quote_ident(user),
        );
        inside.batch_execute(&sql).await.map_err(classify)?;
        granted.push((schema, name));
    }
    // Grants on tables no longer named are taken back.
    let held = inside
        .query(
            "SELECT DISTINCT table_schema::text, table_name::text FROM information_schema.role_table_grants WHERE grantee = $1",
            &[&user],
        )
        .await
        .map_err(classify)?;
    for row in held {
        let table: (String, String) = (row.get(0), row.get(1));
        if !granted.contains(&table) {
            let sql = format!(
                "REVOKE ALL ON TABLE {}.{} FROM {}",
                quote_ident(&table.0),
                quote_ident(&table.1),
                quote_ident(user)
            );
            inside.batch_execute(&sql).await.map_err(classify)?;
        }
    }
    Ok(waiting)
}

async fn drop_reader(
    conn: &Connection,
    database: &str,
    username: &str,
    mark: &Mark,
) -> Result<(), AdminError> {
    let (db, user) = (no_nul(database)?, no_nul(username)?);
    let client = admin(conn).await?;
    let found = presences(&client, db, &[user.to_string()]).await?;
    if !ownership::owned_by(&found[1].2, mark) {
        return Ok(());
    }
    end_logins(&client, user).await?;
    // Its grants in the database go with DROP OWNED (it owns nothing).
    if found[0].2 != Presence::Absent {
        let inside = connect(conn, &conn.username, &conn.password, db).await?;
        let sql = format!("DROP OWNED BY {}", quote_ident(user));
        inside.batch_execute(&sql).await.map_err(classify)?;
    }
    let sql = format!(
        "REVOKE ALL ON DATABASE {} FROM {u}; DROP ROLE IF EXISTS {u}",
        quote_ident(db),
        u = quote_ident(user)
    );
    client.batch_execute(&sql).await.map_err(classify)
}

async fn revoke(conn: &Connection, username: &str, mark: &Mark) -> Result<(), AdminError> {
    let user = no_nul(username)?;
    let client = admin(conn).await?;
    let rows = client
        .query(
            "SELECT shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = $1",
            &[&user],
        )
        .await
        .map_err(classify)?;
    let Some(row) = rows.first() else {
        return Ok(());
    };
    let presence = Presence::of(true, row.get::<_, Option<String>>(0).as_deref());
    if !ownership::owned_by(&presence, mark) {
        return Ok(());
    }
    end_logins(&client, user).await
}

/// `user` can no longer log in, and its open sessions end.
async fn end_logins(client: &Client, user: &str) -> Result<(), AdminError> {
    let sql = format!(
        "ALTER ROLE {} WITH NOLOGIN PASSWORD NULL",
        quote_ident(user)
    );
    client.batch_execute(&sql).await.map_err(classify)?;
    client
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1",
            &[&user],
        )
        .await
        .map_err(classify)?;
    Ok(())
}

async fn drop_database(
    conn: &Connection,
    database: &str,
    usernames: &[String],
    mark: &Mark,
) -> Result<Dropped, AdminError> {
    let database = no_nul(database)?;
    let client = admin(conn).await?;
    let mut roles: Vec<String> = usernames.to_vec();
    roles.push(owner_role(database));
    let found = presences(&client, database, &roles).await?;
    let (drop, kept) = ownership::droppable(found, mark);
    let mut dropped = Dropped {
        kept,
        ..Default::default()
    };
    // The database first: its owner role cannot go while it owns it.
    for (kind, name) in drop {
        let sql = match kind {
            // WITH (FORCE) ends the sessions still connected to it (PostgreSQL 13+).
            ObjectKind::Database => {
                format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    quote_ident(&name)
                )
            }
            ObjectKind::User => format!("DROP ROLE IF EXISTS {}", quote_ident(no_nul(&name)?)),
        };
        client.batch_execute(&sql).await.map_err(classify)?;
        dropped.dropped.push(name);
    }
    Ok(dropped)
}

impl Administration for super::Postgres {
    fn info<'a>(&'a self, conn: &'a Connection) -> BoxFuture<'a, Result<ServerInfo, AdminError>> {
        Box::pin(info(conn))
    }

    fn ensure<'a>(
        &'a self,
        conn: &'a Connection,
        _server: &'a ServerInfo,
        grant: &'a Grant,
        claimant: &'a Claimant,
    ) -> BoxFuture<'a, Result<Provisioned, AdminError>> {
        Box::pin(ensure(conn, grant, claimant))
    }

    fn drop_database<'a>(
        &'a self,
        conn: &'a Connection,
        database: &'a str,
        usernames: &'a [String],
        mark: &'a Mark,
    ) -> BoxFuture<'a, Result<Dropped, AdminError>> {
        Box::pin(drop_database(conn, database, usernames, mark))
    }

    fn revoke<'a>(
        &'a self,
        conn: &'a Connection,
        _database: &'a str,
        username: &'a str,
        mark: &'a Mark,
    ) -> BoxFuture<'a, Result<(), AdminError>> {
        Box::pin(revoke(conn, username, mark))
    }

    fn inspect<'a>(
        &'a self,
        conn: &'a Connection,
        database: &'a str,
        usernames: &'a [String],
    ) -> BoxFuture<'a, Result<Inventory, AdminError>> {
        Box::pin(inspect(conn, database, usernames))
    }

    fn extensions<'a>(
        &'a self,
        conn: &'a Connection,
        database: &'a str,
        wanted: &'a [Extension],
        mark: &'a Mark,
    ) -> BoxFuture<'a, Result<Extensions, AdminError>> {
        Box::pin(extensions(conn, database, wanted, mark))
    }

    fn ensure_reader<'a>(
        &'a self,
        conn: &'a Connection,
        grant: &'a ReadGrant,
        claimant: &'a Claimant,
    ) -> BoxFuture<'a, Result<Vec<String>, AdminError>> {
        Box::pin(ensure_reader(conn, grant, claimant))
    }

    fn drop_reader<'a>(
        &'a self,
        conn: &'a Connection,
        database: &'a str,
        username: &'a str,
        mark: &'a Mark,
    ) -> BoxFuture<'a, Result<(), AdminError>> {
        Box::pin(drop_reader(conn, database, username, mark))
    }

    fn refuses_plaintext<'a>(
        &'a self,
        conn: &'a Connection,
        database: &'a str,
        username: &'a str,
    ) -> BoxFuture<'a, Result<bool, AdminError>> {
        Box::pin(refuses_plaintext(conn, database, username))
    }

    fn can_audit<'a>(&'a self, conn: &'a Connection) -> BoxFuture<'a, Result<bool, AdminError>> {
        Box::pin(can_audit(conn))
    }

    fn audit<'a>(
        &'a self,
        conn: &'a Connection,
        database: &'a str,
    ) -> BoxFuture<'a, Result<(), AdminError>> {
        Box::pin(audit(conn, database))
    }

    fn can_login<'a>(&'a self, conn: &'a Connection, grant: &'a Grant) -> BoxFuture<'a, bool> {
        Box::pin(can_login(conn, grant))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_doubles_the_quote_character_only() {
        assert_eq!(quote_ident(r#"a"b"#), r#""a""b""#);
        assert_eq!(quote_literal(r"it's \x"), r"'it''s \x'");
    }
}
