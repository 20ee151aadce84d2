//! InfluxDB 1.x HTTP API: a database, a non-admin user, `GRANT ALL` on that
//! database only.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

use serde_json::Value;

use super::{AdminError, Connection, Grant, ServerInfo, TIMEOUT, Tls};

fn builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .timeout(TIMEOUT)
        .connect_timeout(TIMEOUT)
        .pool_max_idle_per_host(super::MAX_CONNECTIONS_PER_SERVER)
}

static HTTP: LazyLock<reqwest::Client> = LazyLock::new(|| {
    let _ = rustls::crypto::ring::default_provider().install_default();
    builder().build().expect("HTTP client")
});

/// HTTPS clients per CA, made once.
static HTTPS: LazyLock<Mutex<HashMap<Tls, reqwest::Client>>> = LazyLock::new(Default::default);

fn http(conn: &Connection) -> Result<reqwest::Client, AdminError> {
    let Some(tls) = &conn.tls else {
        return Ok(HTTP.clone());
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
                AdminError::Unreachable(e.to_string())
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

pub async fn info(conn: &Connection) -> Result<ServerInfo, AdminError> {
    // An authenticated statement proves the admin credentials too.
    admin(conn, "SHOW DATABASES").await?;
    let ping = http(conn)?
        .get(format!("{}/ping", base(conn)))
        .send()
        .await
        .map_err(|e| AdminError::Unreachable(e.to_string()))?;
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

pub async fn can_login(conn: &Connection, grant: &Grant) -> bool {
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

pub async fn ensure(conn: &Connection, grant: &Grant) -> Result<(), AdminError> {
    let (db, user) = (quote_ident(&grant.database), quote_ident(&grant.username));
    admin(conn, &format!("CREATE DATABASE {db}")).await?;
    let users = admin(conn, "SHOW USERS").await?;
    let exists = users["results"][0]["series"][0]["values"]
        .as_array()
        .is_some_and(|rows| rows.iter().any(|r| r[0].as_str() == Some(&grant.username)));
    let password = quote_literal(&grant.password);
    if !exists {
        admin(
            conn,
            &format!("CREATE USER {user} WITH PASSWORD {password}"),
        )
        .await?;
    }
    admin(conn, &format!("GRANT ALL ON {db} TO {user}")).await?;
    if exists && !can_login(conn, grant).await {
        admin(conn, &format!("SET PASSWORD FOR {user} = {password}")).await?;
    }
    Ok(())
}

pub async fn drop_database(
    conn: &Connection,
    database: &str,
    usernames: &[String],
) -> Result<(), AdminError> {
    // DROP DATABASE succeeds when the database is already gone; DROP USER does not.
    admin(conn, &format!("DROP DATABASE {}", quote_ident(database))).await?;
    drop_users(conn, usernames).await
}

/// Drops the users that exist.
pub async fn drop_users(conn: &Connection, usernames: &[String]) -> Result<(), AdminError> {
    let users = admin(conn, "SHOW USERS").await?;
    for user in usernames {
        let exists = users["results"][0]["series"][0]["values"]
            .as_array()
            .is_some_and(|rows| rows.iter().any(|r| r[0].as_str() == Some(user)));
        if exists {
            admin(conn, &format!("DROP USER {}", quote_ident(user))).await?;
        }
    }
    Ok(())
}
