//! MongoDB: a user with `readWrite` on its own database only. FerretDB v1
//! (the MongoDB-wire server of the test suites) has no roles: there the user
//! is created without any, and the server is reported as not enforcing
//! per-database roles.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mongodb::bson::{Bson, Document, doc};
use mongodb::event::EventHandler;
use mongodb::event::sdam::SdamEvent;
use mongodb::options::{ClientOptions, Credential, ServerAddress};

use crate::engines::ownership::{self, Claimant, Mark, ObjectKind, Presence, Verdict, authorize};
use futures::future::BoxFuture;

use crate::engines::admin::{
    AdminError, Administration, Connection, Dropped, Grant, Inventory, Provisioned, ServerInfo,
    TIMEOUT,
};

/// A client of one server, and the last failure of the driver's checks of
/// that server. An operation on a server that cannot be reached fails its
/// server selection with the driver's picture of the whole topology, which
/// says more or less from one try to the next (a check under way, a check
/// failed); the check's own failure says what went wrong, the same way each
/// time, and tells a failed TLS handshake from a refused connection.
#[derive(Clone)]
struct Client {
    inner: mongodb::Client,
    failed_check: Arc<Mutex<Option<mongodb::error::Error>>>,
}

impl Client {
    fn database(&self, name: &str) -> mongodb::Database {
        self.inner.database(name)
    }

    async fn probe(&self) -> Result<(), mongodb::error::Error> {
        let admin = self.database("admin");
        admin.run_command(doc! { "ping": 1 }).await.map(drop)
    }

    fn classify(&self, e: mongodb::error::Error) -> AdminError {
        use mongodb::error::ErrorKind;
        match *e.kind {
            ErrorKind::ServerSelection { .. } => {
                match self.failed_check.lock().unwrap().clone() {
                    Some(check) => failed_check(check),
                    // No check has failed, none has answered in time either.
                    None => AdminError::Timeout,
                }
            }
            _ => classify(e),
        }
    }
}

/// Whether `e` is a connection that ended under an operation (the driver
/// then drops all the pool's connections to that server).
fn lost_connection(e: &mongodb::error::Error) -> bool {
    use mongodb::error::ErrorKind;
    matches!(
        &*e.kind,
        ErrorKind::Io(_) | ErrorKind::ConnectionPoolCleared { .. }
    )
}

/// Why a check of the server failed: its connection's error.
fn failed_check(e: mongodb::error::Error) -> AdminError {
    use mongodb::error::ErrorKind;
    match &*e.kind {
        ErrorKind::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => AdminError::Timeout,
        ErrorKind::Io(io) => crate::engines::admin::connection_failure(&**io, io.to_string()),
        _ => classify(e),
    }
}

async fn client(
    conn: &Connection,
    user: &str,
    password: &str,
    source: &str,
) -> Result<Client, AdminError> {
    // Held until the client is built, which reads it.
    let ca = conn
        .tls
        .as_ref()
        .and_then(|tls| tls.ca_pem.as_deref())
        .map(CaFile::write)
        .transpose()?;
    let failed = Arc::new(Mutex::new(None));
    let record = failed.clone();
    let checks = EventHandler::callback(move |event: SdamEvent| match event {
        SdamEvent::ServerHeartbeatFailed(check) => *record.lock().unwrap() = Some(check.failure),
        SdamEvent::ServerHeartbeatSucceeded(_) => *record.lock().unwrap() = None,
        _ => {}
    });
    let options = ClientOptions::builder()
        .hosts(vec![ServerAddress::Tcp {
            host: conn.host.clone(),
            port: Some(conn.port),
        }])
        .credential(
            Credential::builder()
                .username(user.to_string())
                .password(password.to_string())
                .source(source.to_string())
                .build(),
        )
        .app_name("dbps-operator".to_string())
        .connect_timeout(TIMEOUT)
        .server_selection_timeout(TIMEOUT)
        .max_pool_size(crate::engines::admin::MAX_CONNECTIONS_PER_SERVER as u32)
        .direct_connection(true)
        .tls(match &conn.tls {
            None => mongodb::options::Tls::Disabled,
            Some(_) => mongodb::options::Tls::Enabled(
                mongodb::options::TlsOptions::builder()
                    .ca_file_path(ca.as_ref().map(|ca| ca.0.clone()))
                    .build(),
            ),
        })
        .sdam_event_handler(checks)
        .build();
    Ok(Client {
        inner: mongodb::Client::with_options(options).map_err(classify)?,
        failed_check: failed,
    })
}

/// A server's CA, for the driver, which takes it only as a file and reads it
/// once, while the client is built. The file is this process's own: created
/// new under a random name (never one someone else put there first), readable
/// by its owner alone, and removed when this is dropped.
struct CaFile(std::path::PathBuf);

impl CaFile {
    fn write(pem: &str) -> Result<Self, AdminError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let failed = |e: std::io::Error| AdminError::Tls(format!("writing the CA file: {e}"));
        let name = crate::password::generate();
        let path = std::env::temp_dir().join(format!("dbps-ca-{name}.pem"));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(failed)?;
        let written = Self(path);
        file.write_all(pem.as_bytes()).map_err(failed)?;
        Ok(written)
    }
}

impl Drop for CaFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Admin clients kept between operations, one per server and credentials.
/// A driver client is a pool of authenticated connections and a monitor of
/// its server, made to be built once: one per operation would open a
/// connection and run a SCRAM exchange (and, when it goes, an
/// `endSessions`) for each operation. A client unused for [`CLIENT_IDLE`]
/// is let go (its connections close), and a kept one is used only once it
/// answers a ping; a new password or CA is a new key, so a client is never
/// used with credentials other than its own. Logins of users ([`can_login`])
/// build their own client each time: they check a password.
#[derive(Default)]
struct Kept {
    clients: HashMap<ClientKey, (Client, Instant)>,
    /// Whether a task lets idle clients go; one runs while any is kept.
    reaping: bool,
}

/// A server and the credentials (and CA) its admin client authenticates with.
type ClientKey = Connection;

/// How long an unused admin client stays open.
const CLIENT_IDLE: Duration = Duration::from_secs(10);

static KEPT: std::sync::LazyLock<Mutex<Kept>> = std::sync::LazyLock::new(Mutex::default);

impl Kept {
    /// Lets go of the clients unused since `now - CLIENT_IDLE`.
    fn prune(&mut self, now: Instant) {
        self.clients
            .retain(|_, (_, used)| now.saturating_duration_since(*used) < CLIENT_IDLE);
    }

    /// The kept client of `key`, marked as used `now`.
    fn take(&mut self, key: &ClientKey, now: Instant) -> Option<Client> {
        self.prune(now);
        let (client, used) = self.clients.get_mut(key)?;
        *used = now;
        Some(client.clone())
    }

    /// Keeps `client` for `key`, unless one was kept meanwhile (then that one
    /// is used, and `client` goes); whether a reaper has to be started.
    fn keep(&mut self, key: ClientKey, client: Client, now: Instant) -> (Client, bool) {
        let (kept, used) = self.clients.entry(key).or_insert((client, now));
        *used = now;
        let start = !std::mem::replace(&mut self.reaping, true);
        (kept.clone(), start)
    }
}

/// Lets idle admin clients go, every [`CLIENT_IDLE`], until none is kept.
async fn reap() {
    loop {
        tokio::time::sleep(CLIENT_IDLE).await;
        let mut kept = KEPT.lock().unwrap();
        kept.prune(Instant::now());
        kept.reaping = !kept.clients.is_empty();
        if !kept.reaping {
            return;
        }
    }
}

async fn admin(conn: &Connection) -> Result<Client, AdminError> {
    let kept = KEPT.lock().unwrap().take(conn, Instant::now());
    if let Some(client) = kept {
        // A kept client's connections may have ended with the server (a
        // restart). The driver lets go of all of them at the first that
        // fails; so a probe that fails so is sent once more, on a new one.
        let mut probe = client.probe().await;
        if matches!(&probe, Err(e) if lost_connection(e)) {
            probe = client.probe().await;
        }
        return match probe {
            Ok(()) => Ok(client),
            Err(e) => Err(client.classify(e)),
        };
    }
    let built = client(conn, &conn.username, &conn.password, "admin").await?;
    let (client, start) = KEPT
        .lock()
        .unwrap()
        .keep(conn.clone(), built, Instant::now());
    if start {
        tokio::spawn(reap());
    }
    Ok(client)
}

/// What the driver's error `e` means; a failed server selection is told by
/// [`Client::classify`], from the server's last check.
fn classify(e: mongodb::error::Error) -> AdminError {
    use mongodb::error::ErrorKind;
    match *e.kind {
        ErrorKind::Authentication { message, .. } => AdminError::AuthenticationFailed(message),
        ErrorKind::Command(c) if c.code == 18 => AdminError::AuthenticationFailed(c.message),
        ErrorKind::Command(c) => AdminError::Refused(format!("{} ({})", c.message, c.code_name)),
        other => AdminError::Unreachable(other.to_string()),
    }
}

async fn run(client: &Client, db: &str, command: Document) -> Result<Document, AdminError> {
    client
        .database(db)
        .run_command(command)
        .await
        .map_err(|e| client.classify(e))
}

async fn info(conn: &Connection) -> Result<ServerInfo, AdminError> {
    let client = admin(conn).await?;
    let build = run(&client, "admin", doc! { "buildInfo": 1 }).await?;
    let ferretdb = build.get_str("ferretdbVersion").ok().map(String::from);
    let version = match &ferretdb {
        Some(v) => format!("{} (FerretDB {v})", build.get_str("version").unwrap_or("?")),
        None => build.get_str("version").unwrap_or("unknown").to_string(),
    };
    // buildInfo needs no authentication; listing databases does.
    run(
        &client,
        "admin",
        doc! { "listDatabases": 1, "nameOnly": true },
    )
    .await?;
    Ok(ServerInfo {
        version,
        enforces_database_roles: ferretdb.is_none(),
    })
}

async fn can_login(conn: &Connection, grant: &Grant) -> bool {
    let Ok(client) = client(conn, &grant.username, &grant.password, &grant.database).await else {
        return false;
    };
    run(
        &client,
        &grant.database,
        doc! { "listCollections": 1, "nameOnly": true },
    )
    .await
    .is_ok()
}

async fn user_exists(client: &Client, database: &str, username: &str) -> Result<bool, AdminError> {
    let info = run(client, database, doc! { "usersInfo": username }).await?;
    Ok(matches!(info.get("users"), Some(Bson::Array(users)) if !users.is_empty()))
}

async fn database_exists(client: &Client, database: &str) -> Result<bool, AdminError> {
    let listed = run(
        client,
        "admin",
        doc! { "listDatabases": 1, "nameOnly": true, "filter": { "name": database } },
    )
    .await?;
    Ok(matches!(listed.get("databases"), Some(Bson::Array(dbs))
        if dbs.iter().any(|d| d.as_document().and_then(|d| d.get_str("name").ok()) == Some(database))))
}

/// Catalog keys: one document per database and per user of a database.
fn database_key(database: &str) -> String {
    format!("database:{database}")
}
fn user_key(database: &str, username: &str) -> String {
    format!("user:{database}.{username}")
}

fn catalog(client: &Client) -> mongodb::Collection<Document> {
    client
        .database(crate::engines::admin::CATALOG)
        .collection("owners")
}

async fn read_mark(client: &Client, key: &str) -> Result<Option<String>, AdminError> {
    let found = catalog(client)
        .find_one(doc! { "_id": key })
        .await
        .map_err(|e| client.classify(e))?;
    Ok(found.and_then(|d| d.get_str("mark").ok().map(String::from)))
}

async fn write_mark(client: &Client, key: &str, mark: &Mark) -> Result<(), AdminError> {
    catalog(client)
        .replace_one(
            doc! { "_id": key },
            doc! { "_id": key, "mark": mark.encode() },
        )
        .upsert(true)
        .await
        .map_err(|e| client.classify(e))?;
    Ok(())
}

async fn erase_mark(client: &Client, key: &str) -> Result<(), AdminError> {
    catalog(client)
        .delete_one(doc! { "_id": key })
        .await
        .map_err(|e| client.classify(e))?;
    Ok(())
}

/// The database and users under these names with their marks, and for
/// each whether it exists (a mark may stand for an object not made yet).
async fn presences(
    client: &Client,
    database: &str,
    usernames: &[String],
) -> Result<(Inventory, Vec<bool>), AdminError> {
    let db_exists = database_exists(client, database).await?;
    let mark = read_mark(client, &database_key(database)).await?;
    let mut found = vec![(
        ObjectKind::Database,
        database.to_string(),
        Presence::of(db_exists, mark.as_deref()),
    )];
    let mut exists = vec![db_exists];
    for user in usernames {
        let there = user_exists(client, database, user).await?;
        let mark = read_mark(client, &user_key(database, user)).await?;
        found.push((
            ObjectKind::User,
            user.clone(),
            Presence::of(there, mark.as_deref()),
        ));
        exists.push(there);
    }
    Ok((found, exists))
}

async fn inspect(
    conn: &Connection,
    database: &str,
    usernames: &[String],
) -> Result<Inventory, AdminError> {
    Ok(presences(&admin(conn).await?, database, usernames).await?.0)
}

/// `enforces_roles`: false on FerretDB v1, which accepts only users without roles.
/// The marks are written before the objects (a reservation), so a reconcile
/// that stops in between leaves a name this claim still holds.
async fn ensure(
    conn: &Connection,
    grant: &Grant,
    claimant: &Claimant,
    enforces_roles: bool,
) -> Result<Provisioned, AdminError> {
    let admin = admin(conn).await?;
    let (db, user) = (&grant.database, &grant.username);
    let (found, exists) = presences(&admin, db, std::slice::from_ref(user)).await?;
    let verdicts = authorize(&found, claimant)?;
    let mut provisioned = Provisioned::default();
    for ((kind, name, _), verdict) in found.iter().zip(&verdicts) {
        provisioned.record(verdict, name);
        if *verdict != Verdict::Ours {
            let key = match kind {
                ObjectKind::Database => database_key(db),
                ObjectKind::User => user_key(db, name),
            };
            write_mark(&admin, &key, &claimant.mark).await?;
        }
    }
    let roles = if enforces_roles {
        vec![Bson::Document(doc! { "role": "readWrite", "db": db })]
    } else {
        Vec::new()
    };
    if !exists[1] {
        let create = doc! { "createUser": user, "pwd": &grant.password, "roles": roles };
        run(&admin, db, create).await?;
    } else {
        if verdicts[1] == Verdict::Adopt && enforces_roles {
            // An adopted user gets exactly the rights dbps gives its own.
            run(&admin, db, doc! { "updateUser": user, "roles": roles }).await?;
        }
        if !can_login(conn, grant).await {
            let update = doc! { "updateUser": user, "pwd": &grant.password };
            run(&admin, db, update).await?;
        }
    }
    Ok(provisioned)
}

async fn drop_database(
    conn: &Connection,
    database: &str,
    usernames: &[String],
    mark: &Mark,
) -> Result<Dropped, AdminError> {
    let admin = admin(conn).await?;
    let (found, exists) = presences(&admin, database, usernames).await?;
    let existing: Vec<String> = found
        .iter()
        .zip(&exists)
        .filter(|(_, e)| **e)
        .map(|((_, name, _), _)| name.clone())
        .collect();
    let (drop, kept) = ownership::droppable(found, mark);
    let mut dropped = Dropped {
        kept,
        ..Default::default()
    };
    for (kind, name) in drop {
        let key = match kind {
            ObjectKind::Database => {
                run(&admin, database, doc! { "dropDatabase": 1 }).await?;
                database_key(database)
            }
            ObjectKind::User => {
                if existing.contains(&name) {
                    run(&admin, database, doc! { "dropUser": &name }).await?;
                }
                user_key(database, &name)
            }
        };
        erase_mark(&admin, &key).await?;
        dropped.dropped.push(name);
    }
    Ok(dropped)
}

/// Drops `username` if it carries `mark`; its mark stays, so the name is
/// still this claim's for its next rotation.
async fn revoke(
    conn: &Connection,
    database: &str,
    username: &str,
    mark: &Mark,
) -> Result<(), AdminError> {
    let admin = admin(conn).await?;
    let exists = user_exists(&admin, database, username).await?;
    let key = user_key(database, username);
    let presence = Presence::of(exists, read_mark(&admin, &key).await?.as_deref());
    if exists && ownership::owned_by(&presence, mark) {
        run(&admin, database, doc! { "dropUser": username }).await?;
    }
    Ok(())
}

impl Administration for super::Mongodb {
    fn info<'a>(&'a self, conn: &'a Connection) -> BoxFuture<'a, Result<ServerInfo, AdminError>> {
        Box::pin(info(conn))
    }

    fn ensure<'a>(
        &'a self,
        conn: &'a Connection,
        server: &'a ServerInfo,
        grant: &'a Grant,
        claimant: &'a Claimant,
    ) -> BoxFuture<'a, Result<Provisioned, AdminError>> {
        Box::pin(ensure(
            conn,
            grant,
            claimant,
            server.enforces_database_roles,
        ))
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
        database: &'a str,
        username: &'a str,
        mark: &'a Mark,
    ) -> BoxFuture<'a, Result<(), AdminError>> {
        Box::pin(revoke(conn, database, username, mark))
    }

    fn inspect<'a>(
        &'a self,
        conn: &'a Connection,
        database: &'a str,
        usernames: &'a [String],
    ) -> BoxFuture<'a, Result<Inventory, AdminError>> {
        Box::pin(inspect(conn, database, usernames))
    }

    fn can_login<'a>(&'a self, conn: &'a Connection, grant: &'a Grant) -> BoxFuture<'a, bool> {
        Box::pin(can_login(conn, grant))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The two tests below look at the same directory.
    static TEMP_DIR: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn ca_files() -> std::collections::BTreeSet<std::ffi::OsString> {
        std::fs::read_dir(std::env::temp_dir())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .filter(|n| n.to_string_lossy().starts_with("dbps-ca-"))
            .collect()
    }

    #[test]
    fn a_ca_file_is_the_operators_own_and_goes_when_dropped() {
        use std::os::unix::fs::PermissionsExt;
        let _dir = TEMP_DIR.lock().unwrap();
        let ca = CaFile::write("-----BEGIN CERTIFICATE-----\n").unwrap();
        let meta = std::fs::symlink_metadata(&ca.0).unwrap();
        assert!(meta.is_file());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(
            std::fs::read_to_string(&ca.0).unwrap(),
            "-----BEGIN CERTIFICATE-----\n"
        );
        let other = CaFile::write("-----BEGIN CERTIFICATE-----\n").unwrap();
        assert_ne!(ca.0, other.0, "never a name already there");
        let path = ca.0.clone();
        drop(ca);
        assert!(!path.exists());
    }

    #[test]
    fn a_client_holds_its_ca_without_leaving_a_file() {
        let tls = crate::children::tls::InstanceTls::issue("orders-db", "orders-db").unwrap();
        let _dir = TEMP_DIR.lock().unwrap();
        let before = ca_files();
        let conn = Connection {
            engine: crate::api::Engine::Mongodb,
            host: "127.0.0.1".into(),
            port: 1,
            username: "admin".into(),
            password: "secret".into(),
            tls: Some(crate::engines::admin::Tls {
                ca_pem: Some(tls.ca_pem.clone()),
            }),
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime
            .block_on(client(&conn, "admin", "secret", "admin"))
            .unwrap();
        let after = ca_files();
        assert!(
            after.is_subset(&before),
            "left: {:?}",
            after.difference(&before)
        );
    }

    /// A loopback port nobody listens on.
    fn nobody_listens() -> Connection {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Connection {
            engine: crate::api::Engine::Mongodb,
            host: "127.0.0.1".into(),
            port,
            username: "admin".into(),
            password: "secret".into(),
            tls: None,
        }
    }

    /// A server nobody listens on: the driver gives up on finding it after
    /// its selection timeout, and the failure reads the same each time, from
    /// the kept admin client as from a client of its own.
    #[tokio::test]
    async fn a_server_that_refuses_connections_fails_the_same_way_each_time() {
        let conn = nobody_listens();
        let own = async {
            let client = client(&conn, "admin", "secret", "admin").await.unwrap();
            run(&client, "admin", doc! { "buildInfo": 1 }).await
        };
        let (first, second, third) = tokio::join!(info(&conn), info(&conn), own);
        let (first, second, third) = (first.unwrap_err(), second.unwrap_err(), third.unwrap_err());
        assert!(
            matches!(&first, AdminError::Unreachable(m) if m.contains("refused")),
            "{first}"
        );
        assert_eq!(first.to_string(), second.to_string());
        assert_eq!(first.to_string(), third.to_string());
    }

    /// Operations on a server share its admin client; another password is
    /// another client; an unused client is let go; one reaper is started.
    #[tokio::test]
    async fn an_admin_client_is_kept_per_server_and_credentials_until_idle() {
        let conn = nobody_listens();
        let rotated = Connection {
            password: "rotated".into(),
            ..conn.clone()
        };
        let built = async |conn: &Connection| {
            client(conn, &conn.username, &conn.password, "admin")
                .await
                .unwrap()
        };
        let same = |a: &Client, b: &Client| Arc::ptr_eq(&a.failed_check, &b.failed_check);
        let mut kept = Kept::default();
        let now = Instant::now();
        assert!(kept.take(&conn, now).is_none());
        let (first, start) = kept.keep(conn.clone(), built(&conn).await, now);
        assert!(start, "the first client kept starts the reaper");
        // Two built at once: the one kept first is used.
        let (again, start) = kept.keep(conn.clone(), built(&conn).await, now);
        assert!(same(&first, &again) && !start);
        let later = now + CLIENT_IDLE / 2;
        assert!(same(&first, &kept.take(&conn, later).unwrap()));
        assert!(kept.take(&rotated, later).is_none());
        let (other, _) = kept.keep(rotated.clone(), built(&rotated).await, later);
        assert!(!same(&first, &other));
        // Unused for CLIENT_IDLE since its last use: let go.
        assert!(kept.take(&conn, later + CLIENT_IDLE).is_none());
        assert!(kept.clients.is_empty());
    }
}
