//! InfluxDB 1.x HTTP API: a database, a non-admin user, `GRANT ALL` on that
//! database only.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

use serde_json::Value;

use crate::engines::ownership::{self, Claimant, Mark, ObjectKind, Presence, Verdict, authorize};
use futures::future::BoxFuture;

use crate::engines::admin::{
    AdminError, Administration, Connection, Dropped, Grant, Inventory, Provisioned, ReadGrant,
    ServerInfo, TIMEOUT, Tls,
};

fn builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .timeout(TIMEOUT)
        .connect_timeout(TIMEOUT)
        .pool_max_idle_per_host(crate::engines::admin::DEFAULT_CONNECTIONS_PER_SERVER)
}

/// The plain HTTP client, made once. It is given a TLS configuration of its
/// own (the public roots, never used over plain HTTP) so that building it
/// never depends on the system's CA certificates, which a minimal image lacks.
static HTTP: LazyLock<Result<reqwest::Client, String>> = LazyLock::new(|| {
    let tls = Tls::default().client_config().map_err(|e| e.to_string())?;
    builder()
        .tls_backend_preconfigured(tls)
        .build()
        .map_err(|e| format!("HTTP client: {e}"))
});

/// HTTPS clients per CA, made once.
static HTTPS: LazyLock<Mutex<HashMap<Tls, reqwest::Client>>> = LazyLock::new(Default::default);

fn http(conn: &Connection) -> Result<reqwest::Client, AdminError> {
    let Some(tls) = &conn.tls else {
        return HTTP.clone().map_err(AdminError::Tls);
    };
    let mut clients = HTTPS.lock().unwrap();
    if let Some(client) = clients.get(tls) {
        return Ok(client.clone());
    }
    let client = builder()
        .tls_backend_preconfigured(tls.client_config()?)
        .build()
        .map_err(|e| AdminError::Tls(e.to_string()))?;
    clients.insert(tls.clone(), client.clone());
    Ok(client)
}

/// `"ident"` in InfluxQL: backslash and quote escaped.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// `'literal'` in InfluxQL: backslash and quote escaped.
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

fn base(conn: &Connection) -> String {
    let scheme = if conn.tls.is_some() { "https" } else { "http" };
    format!("{scheme}://{}:{}", conn.host, conn.port)
}

/// Runs one statement as `user`; returns the JSON answer.
async fn query(
    conn: &Connection,
    user: &str,
    password: &str,
    db: Option<&str>,
    q: &str,
) -> Result<Value, AdminError> {
    let mut form = vec![("q", q)];
    if let Some(db) = db {
        form.push(("db", db));
    }
    let response = http(conn)?
        .post(format!("{}/query", base(conn)))
        .basic_auth(user, Some(password))
        .form(&form)
        .send()
        .await
        .map_err(|e| {
            if e.is_timeout() {
                AdminError::Timeout
            } else {
                crate::engines::admin::connection_failure(&e, e.to_string())
            }
        })?;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    let error = body["error"]
        .as_str()
        .or_else(|| body["results"][0]["error"].as_str())
        .map(String::from);
    match (status.as_u16(), error) {
        (401 | 403, e) => Err(AdminError::AuthenticationFailed(
            e.unwrap_or_else(|| status.to_string()),
        )),
        (_, Some(e)) => Err(AdminError::Refused(e)),
        (200..=299, None) => Ok(body),
        (_, None) => Err(AdminError::Refused(status.to_string())),
    }
}

async fn admin(conn: &Connection, q: &str) -> Result<Value, AdminError> {
    query(conn, &conn.username, &conn.password, None, q).await
}

async fn info(conn: &Connection) -> Result<ServerInfo, AdminError> {
    // An authenticated statement proves the admin credentials too.
    admin(conn, "SHOW DATABASES").await?;
    let ping = http(conn)?
        .get(format!("{}/ping", base(conn)))
        .send()
        .await
        .map_err(|e| crate::engines::admin::connection_failure(&e, e.to_string()))?;
    let version = ping
        .headers()
        .get("X-Influxdb-Version")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("unknown")
        .to_string();
    Ok(ServerInfo {
        version,
        enforces_database_roles: true,
    })
}

async fn can_login(conn: &Connection, grant: &Grant) -> bool {
    let q = format!("SHOW MEASUREMENTS ON {}", quote_ident(&grant.database));
    query(
        conn,
        &grant.username,
        &grant.password,
        Some(&grant.database),
        &q,
    )
    .await
    .is_ok()
}

/// Names in the catalog: one series per database and per user.
fn database_key(database: &str) -> String {
    format!("database:{database}")
}
fn user_key(username: &str) -> String {
    format!("user:{username}")
}

/// A tag value in line protocol: commas, equals signs and spaces escaped.
fn line_tag(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace(',', "\\,")
        .replace('=', "\\=")
        .replace(' ', "\\ ")
}

/// A string field value in line protocol: backslashes and quotes escaped.
fn line_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Whether database `database` exists. `SHOW DATABASES` lists them all, so
/// each claim would cost in proportion to the server's databases: `SHOW
/// RETENTION POLICIES ON` answers for that one alone.
async fn database_exists(conn: &Connection, database: &str) -> Result<bool, AdminError> {
    let q = format!("SHOW RETENTION POLICIES ON {}", quote_ident(database));
    match admin(conn, &q).await {
        Ok(_) => Ok(true),
        Err(AdminError::Refused(e)) if e == format!("database not found: {database}") => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whether user `username` exists, asked of that user alone (`SHOW USERS`
/// lists them all).
async fn user_exists(conn: &Connection, username: &str) -> Result<bool, AdminError> {
    let q = format!("SHOW GRANTS FOR {}", quote_ident(username));
    match admin(conn, &q).await {
        Ok(_) => Ok(true),
        Err(AdminError::Refused(e)) if e == "user not found" => Ok(false),
        Err(e) => Err(e),
    }
}

/// The catalog's marks for `keys`. The catalog is made on first use.
async fn read_marks(
    conn: &Connection,
    keys: &[String],
) -> Result<HashMap<String, String>, AdminError> {
    admin(
        conn,
        &format!(
            "CREATE DATABASE {}",
            quote_ident(crate::engines::admin::CATALOG)
        ),
    )
    .await?;
    let filter = keys
        .iter()
        .map(|k| format!("\"object\" = {}", quote_literal(k)))
        .collect::<Vec<_>>()
        .join(" OR ");
    let q = format!("SELECT \"mark\", \"object\" FROM \"owners\" WHERE {filter}");
    let answer = query(
        conn,
        &conn.username,
        &conn.password,
        Some(crate::engines::admin::CATALOG),
        &q,
    )
    .await?;
    let mut marks = HashMap::new();
    for series in answer["results"][0]["series"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let columns = series["columns"].as_array().cloned().unwrap_or_default();
        let col = |name: &str| columns.iter().position(|c| c.as_str() == Some(name));
        let (Some(mark), Some(object)) = (col("mark"), col("object")) else {
            continue;
        };
        for row in series["values"].as_array().into_iter().flatten() {
            if let (Some(o), Some(m)) = (row[object].as_str(), row[mark].as_str()) {
                marks.insert(o.to_string(), m.to_string());
            }
        }
    }
    Ok(marks)
}

/// Writes a mark: one point at time 0 per object, so writing again replaces it.
async fn write_mark(conn: &Connection, key: &str, mark: &Mark) -> Result<(), AdminError> {
    let line = format!(
        "owners,object={} mark={} 0",
        line_tag(key),
        line_string(&mark.encode())
    );
    let response = http(conn)?
        .post(format!("{}/write", base(conn)))
        .basic_auth(&conn.username, Some(&conn.password))
        .query(&[("db", crate::engines::admin::CATALOG), ("precision", "s")])
        .body(line)
        .send()
        .await
        .map_err(|e| crate::engines::admin::connection_failure(&e, e.to_string()))?;
    match response.status().as_u16() {
        200..=299 => Ok(()),
        401 | 403 => Err(AdminError::AuthenticationFailed(
            response.status().to_string(),
        )),
        _ => Err(AdminError::Refused(format!(
            "writing the ownership catalog: {}",
            response.text().await.unwrap_or_default()
        ))),
    }
}

async fn erase_mark(conn: &Connection, key: &str) -> Result<(), AdminError> {
    let q = format!(
        "DELETE FROM \"owners\" WHERE \"object\" = {}",
        quote_literal(key)
    );
    query(
        conn,
        &conn.username,
        &conn.password,
        Some(crate::engines::admin::CATALOG),
        &q,
    )
    .await
    .map(drop)
}

/// The database and users under these names with their marks, and for
/// each whether it exists (a mark may stand for an object not made yet).
async fn presences(
    conn: &Connection,
    database: &str,
    usernames: &[String],
) -> Result<(Inventory, Vec<bool>), AdminError> {
    let mut keys = vec![database_key(database)];
    keys.extend(usernames.iter().map(|u| user_key(u)));
    let marks = read_marks(conn, &keys).await?;
    let db_exists = database_exists(conn, database).await?;
    let mut found = vec![(
        ObjectKind::Database,
        database.to_string(),
        Presence::of(db_exists, marks.get(&keys[0]).map(String::as_str)),
    )];
    let mut exists = vec![db_exists];
    for (user, key) in usernames.iter().zip(&keys[1..]) {
        let there = user_exists(conn, user).await?;
        found.push((
            ObjectKind::User,
            user.clone(),
            Presence::of(there, marks.get(key).map(String::as_str)),
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
    Ok(presences(conn, database, usernames).await?.0)
}

/// The marks are written before the objects (a reservation), so a
/// reconcile that stops in between leaves a name this claim still holds.
async fn ensure(
    conn: &Connection,
    grant: &Grant,
    claimant: &Claimant,
) -> Result<Provisioned, AdminError> {
    let (found, existing) =
        presences(conn, &grant.database, std::slice::from_ref(&grant.username)).await?;
    let verdicts = authorize(&found, claimant)?;
    let mut provisioned = Provisioned::default();
    for ((kind, name, _), verdict) in found.iter().zip(&verdicts) {
        provisioned.record(verdict, name);
        if *verdict != Verdict::Ours {
            let key = match kind {
                ObjectKind::Database => database_key(name),
                ObjectKind::User => user_key(name),
            };
            write_mark(conn, &key, &claimant.mark).await?;
        }
    }
    let (db, user) = (quote_ident(&grant.database), quote_ident(&grant.username));
    admin(conn, &format!("CREATE DATABASE {db}")).await?;
    let exists = existing[1];
    let password = quote_literal(&grant.password);
    if !exists {
        admin(
            conn,
            &format!("CREATE USER {user} WITH PASSWORD {password}"),
        )
        .await?;
    } else if verdicts[1] == Verdict::Adopt {
        // An adopted user gets exactly the rights dbps gives its own.
        admin(conn, &format!("REVOKE ALL PRIVILEGES FROM {user}")).await?;
    }
    admin(conn, &format!("GRANT ALL ON {db} TO {user}")).await?;
    if exists && !can_login(conn, grant).await {
        admin(conn, &format!("SET PASSWORD FOR {user} = {password}")).await?;
    }
    Ok(provisioned)
}

async fn drop_database(
    conn: &Connection,
    database: &str,
    usernames: &[String],
    mark: &Mark,
) -> Result<Dropped, AdminError> {
    let (found, exists) = presences(conn, database, usernames).await?;
    let users: Vec<String> = found
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
                // DROP DATABASE succeeds when the database is already gone; DROP USER does not.
                admin(conn, &format!("DROP DATABASE {}", quote_ident(&name))).await?;
                database_key(&name)
            }
            ObjectKind::User => {
                if users.contains(&name) {
                    admin(conn, &format!("DROP USER {}", quote_ident(&name))).await?;
                }
                user_key(&name)
            }
        };
        erase_mark(conn, &key).await?;
        dropped.dropped.push(name);
    }
    Ok(dropped)
}

/// Drops `username` if it carries `mark`; its mark stays, so the name is
/// still this claim's for its next rotation.
async fn revoke(conn: &Connection, username: &str, mark: &Mark) -> Result<(), AdminError> {
    drop_user_if_owned(conn, username, mark).await.map(drop)
}

/// Drops `username` (when it exists) if its mark, or its reservation, is
/// `mark`; true when it is this claim's.
async fn drop_user_if_owned(
    conn: &Connection,
    username: &str,
    mark: &Mark,
) -> Result<bool, AdminError> {
    let key = user_key(username);
    let marks = read_marks(conn, std::slice::from_ref(&key)).await?;
    let exists = user_exists(conn, username).await?;
    let presence = Presence::of(exists, marks.get(&key).map(String::as_str));
    if !ownership::owned_by(&presence, mark) {
        return Ok(false);
    }
    if exists {
        admin(conn, &format!("DROP USER {}", quote_ident(username))).await?;
    }
    Ok(true)
}

/// A user with `READ` on the claim's database only; marked first, as the
/// claim's own users are.
async fn ensure_reader(
    conn: &Connection,
    grant: &ReadGrant,
    claimant: &Claimant,
) -> Result<Vec<String>, AdminError> {
    let (found, existing) =
        presences(conn, &grant.database, std::slice::from_ref(&grant.username)).await?;
    let (kind, name, presence) = &found[1];
    let verdict = ownership::verdict(*kind, name, presence, &claimant.mark, false)?;
    if verdict != Verdict::Ours {
        write_mark(conn, &user_key(&grant.username), &claimant.mark).await?;
    }
    let user = quote_ident(&grant.username);
    let password = quote_literal(&grant.password);
    let login = Grant {
        database: grant.database.clone(),
        username: grant.username.clone(),
        password: grant.password.clone(),
    };
    if !existing[1] {
        admin(
            conn,
            &format!("CREATE USER {user} WITH PASSWORD {password}"),
        )
        .await?;
    } else if !can_login(conn, &login).await {
        admin(conn, &format!("SET PASSWORD FOR {user} = {password}")).await?;
    }
    admin(
        conn,
        &format!("GRANT READ ON {} TO {user}", quote_ident(&grant.database)),
    )
    .await?;
    Ok(Vec::new())
}

/// Drops `username` and its mark if it carries `mark`.
async fn drop_reader(conn: &Connection, username: &str, mark: &Mark) -> Result<(), AdminError> {
    if drop_user_if_owned(conn, username, mark).await? {
        erase_mark(conn, &user_key(username)).await?;
    }
    Ok(())
}

impl Administration for super::Influxdb {
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
        _database: &'a str,
        username: &'a str,
        mark: &'a Mark,
    ) -> BoxFuture<'a, Result<(), AdminError>> {
        Box::pin(drop_reader(conn, username, mark))
    }

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

    fn can_login<'a>(&'a self, conn: &'a Connection, grant: &'a Grant) -> BoxFuture<'a, bool> {
        Box::pin(can_login(conn, grant))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_protocol_escapes_tags_and_strings() {
        assert_eq!(line_tag("user:a b,c=d"), r"user:a\ b\,c\=d");
        assert_eq!(line_string(r#"{"a":"b\c"}"#), r#""{\"a\":\"b\\c\"}""#);
    }
}
