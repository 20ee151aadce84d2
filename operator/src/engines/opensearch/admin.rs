//! OpenSearch's security plugin over its REST API: a claim's database is the
//! index pattern `<database>-*`, reached through a role `dbps-<database>`
//! whose description carries the claim's ownership mark; its users are
//! internal users that carry the mark in `attributes` and hold that role
//! alone. Readers hold `dbps-<database>-read`.
//!
//! What the roles leave out is as important as what they grant: no alias,
//! template, resize or rollover permission (with any of them a user can put
//! an alias of another claim's name on its own index and take that claim's
//! writes, or name an alias into its own prefix on another's index), and no
//! cluster monitoring beyond `GET /` (health and state list every index).
//!
//! The security configuration is one document per kind on the server:
//! writes to it are serialized per server and retried on a version conflict.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use reqwest::Method;
use serde_json::{Value, json};

use super::index_prefix;
use crate::engines::admin::{
    AdminError, Administration, Connection, Dropped, Grant, Inventory, Provisioned, ReadGrant,
    ServerInfo, TIMEOUT, Tls,
};
use crate::engines::ownership::{self, Claimant, Mark, ObjectKind, Presence, Verdict, authorize};

/// Key of the ownership mark in an internal user's `attributes`.
const MARK_KEY: &str = "dbps.io/owner";
/// How often a write that met a version conflict is tried again.
const CONFLICT_RETRIES: usize = 10;

/// The role of a claim's users.
pub fn role_name(database: &str) -> String {
    format!("dbps-{database}")
}

/// The role of the Services a claim lets read its database.
pub fn read_role_name(database: &str) -> String {
    format!("dbps-{database}-read")
}

/// Cluster-level actions a reader needs: `GET /` and the multi-index
/// reads, whose per-index parts are then checked against its index rights.
const READ_CLUSTER_ACTIONS: [&str; 6] = [
    "cluster:monitor/main",
    "indices:data/read/mget",
    "indices:data/read/msearch",
    "indices:data/read/mtv",
    "indices:data/read/scroll",
    "indices:data/read/scroll/clear",
];

/// The app role: everything on `<database>-*` an application needs, and
/// nothing that names or reaches another index.
fn app_role(database: &str, mark: &Mark) -> Value {
    let mut cluster = READ_CLUSTER_ACTIONS.to_vec();
    cluster.extend(["indices:data/write/bulk", "indices:data/write/reindex"]);
    json!({
        "description": mark.encode(),
        "cluster_permissions": cluster,
        "index_permissions": [{
            "index_patterns": [format!("{}*", index_prefix(database))],
            "allowed_actions": [
                "crud",
                "indices:admin/create",
                "indices:admin/delete",
                "indices:admin/get",
                "indices:admin/mapping/put",
                "indices:admin/mappings/get",
                "indices:admin/settings/update",
                "indices:admin/refresh*",
                "indices:admin/flush*",
                "indices:admin/aliases/get",
                "indices:admin/analyze",
                "indices:admin/validate/query",
                "indices:admin/resolve/index",
                "indices:monitor/settings/get",
                "indices:monitor/stats",
            ],
        }],
    })
}

/// The read role: search and get on `<database>-*`.
fn read_role(database: &str, mark: &Mark) -> Value {
    json!({
        "description": mark.encode(),
        "cluster_permissions": READ_CLUSTER_ACTIONS,
        "index_permissions": [{
            "index_patterns": [format!("{}*", index_prefix(database))],
            "allowed_actions": [
                "read",
                "indices:admin/get",
                "indices:admin/mappings/get",
                "indices:admin/aliases/get",
                "indices:admin/resolve/index",
                "indices:monitor/settings/get",
            ],
        }],
    })
}

fn user_body(password: &str, role: &str, mark: &Mark) -> Value {
    json!({
        "password": password,
        "attributes": { MARK_KEY: mark.encode() },
        "opendistro_security_roles": [role],
        "backend_roles": [],
    })
}

/// HTTPS clients per CA (and one trusting the public roots), made once.
static CLIENTS: LazyLock<Mutex<HashMap<Option<Tls>, reqwest::Client>>> =
    LazyLock::new(Default::default);

fn http(conn: &Connection) -> Result<reqwest::Client, AdminError> {
    let mut clients = CLIENTS.lock().unwrap();
    if let Some(client) = clients.get(&conn.tls) {
        return Ok(client.clone());
    }
    let tls = conn.tls.clone().unwrap_or_default().client_config()?;
    let client = reqwest::Client::builder()
        .timeout(TIMEOUT)
        .connect_timeout(TIMEOUT)
        .tls_backend_preconfigured(tls)
        .build()
        .map_err(|e| AdminError::Tls(e.to_string()))?;
    clients.insert(conn.tls.clone(), client.clone());
    Ok(client)
}

fn base(conn: &Connection) -> String {
    let scheme = if conn.tls.is_some() { "https" } else { "http" };
    format!("{scheme}://{}:{}", conn.host, conn.port)
}

/// One request as `user`; the status and the answer (JSON, or its text).
async fn call(
    conn: &Connection,
    method: Method,
    path: &str,
    body: Option<&Value>,
    user: &str,
    password: &str,
) -> Result<(u16, Value), AdminError> {
    let mut request = http(conn)?
        .request(method, format!("{}{path}", base(conn)))
        .basic_auth(user, Some(password));
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request.send().await.map_err(|e| {
        if e.is_timeout() {
            AdminError::Timeout
        } else {
            crate::engines::admin::connection_failure(&e, e.to_string())
        }
    })?;
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Ok((status, value))
}

/// A request as the administrator; 401 is a refused admin login.
async fn admin(
    conn: &Connection,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> Result<(u16, Value), AdminError> {
    let (status, value) = call(conn, method, path, body, &conn.username, &conn.password).await?;
    match status {
        401 => Err(AdminError::AuthenticationFailed(
            "the server refused the admin credentials".into(),
        )),
        _ => Ok((status, value)),
    }
}

/// The message of an error answer.
fn message(value: &Value) -> String {
    value["message"]
        .as_str()
        .or_else(|| value["error"]["reason"].as_str())
        .map(String::from)
        .unwrap_or_else(|| value.to_string())
}

fn refused(what: &str, status: u16, value: &Value) -> AdminError {
    AdminError::Refused(format!("{what}: HTTP {status}: {}", message(value)))
}

/// The lock a server's security configuration is written under.
type WriteLock = Arc<tokio::sync::Mutex<()>>;

/// One lock per server for writes to its security configuration.
static WRITES: LazyLock<Mutex<HashMap<(String, u16), WriteLock>>> = LazyLock::new(Default::default);

/// A write to the security configuration (PUT or DELETE of a role or a
/// user), one at a time per server, tried again on a version conflict.
/// Gone already is fine for a DELETE.
async fn write(
    conn: &Connection,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> Result<(), AdminError> {
    let lock = WRITES
        .lock()
        .unwrap()
        .entry((conn.host.clone(), conn.port))
        .or_default()
        .clone();
    let _one = lock.lock().await;
    for attempt in 0..=CONFLICT_RETRIES {
        let (status, value) = admin(conn, method.clone(), path, body).await?;
        match status {
            200..=299 => return Ok(()),
            404 if method == Method::DELETE => return Ok(()),
            409 if attempt < CONFLICT_RETRIES => {
                let jitter =
                    50 + (crate::engines::admin::fnv1a(path.as_bytes()) + attempt as u64) % 200;
                tokio::time::sleep(Duration::from_millis(jitter)).await;
            }
            _ => return Err(refused(&format!("{method} {path}"), status, &value)),
        }
    }
    unreachable!("the last attempt returns")
}

/// A role's mark: absent, unmarked or marked.
async fn role_presence(conn: &Connection, role: &str) -> Result<Option<Presence>, AdminError> {
    let path = format!("/_plugins/_security/api/roles/{role}");
    let (status, value) = admin(conn, Method::GET, &path, None).await?;
    match status {
        404 => Ok(None),
        200 => Ok(Some(Presence::of(
            true,
            value[role]["description"].as_str(),
        ))),
        _ => Err(refused(&format!("GET {path}"), status, &value)),
    }
}

/// The indices (hidden ones too), aliases and data streams named `<database>-…`.
async fn prefixed(conn: &Connection, database: &str) -> Result<Vec<String>, AdminError> {
    let prefix = index_prefix(database);
    let path = format!("/_resolve/index/{prefix}*?expand_wildcards=all");
    let (status, value) = admin(conn, Method::GET, &path, None).await?;
    if status != 200 {
        return Err(refused(&format!("GET {path}"), status, &value));
    }
    Ok(["indices", "aliases", "data_streams"]
        .iter()
        .flat_map(|kind| value[kind].as_array().cloned().unwrap_or_default())
        .filter_map(|v| v["name"].as_str().map(String::from))
        .filter(|name| name.starts_with(&prefix))
        .collect())
}

async fn user_presence(conn: &Connection, user: &str) -> Result<Presence, AdminError> {
    let path = format!("/_plugins/_security/api/internalusers/{user}");
    let (status, value) = admin(conn, Method::GET, &path, None).await?;
    match status {
        404 => Ok(Presence::Absent),
        200 => Ok(Presence::of(
            true,
            value[user]["attributes"][MARK_KEY].as_str(),
        )),
        _ => Err(refused(&format!("GET {path}"), status, &value)),
    }
}

/// The database (its role, or indices under its prefix without one) and the
/// users under these names, with their marks.
async fn presences(
    conn: &Connection,
    database: &str,
    usernames: &[String],
) -> Result<Inventory, AdminError> {
    let database_presence = match role_presence(conn, &role_name(database)).await? {
        Some(presence) => presence,
        None if prefixed(conn, database).await?.is_empty() => Presence::Absent,
        None => Presence::Unmarked,
    };
    let mut found = vec![(
        ObjectKind::Database,
        database.to_string(),
        database_presence,
    )];
    for user in usernames {
        found.push((
            ObjectKind::User,
            user.clone(),
            user_presence(conn, user).await?,
        ));
    }
    Ok(found)
}

/// The roles `user` holds when it logs in with `password`; `None` when it
/// cannot log in.
async fn roles_of(conn: &Connection, user: &str, password: &str) -> Option<Vec<String>> {
    let (status, value) = call(
        conn,
        Method::GET,
        "/_plugins/_security/authinfo",
        None,
        user,
        password,
    )
    .await
    .ok()?;
    (status == 200).then(|| {
        value["roles"]
            .as_array()
            .map(|roles| {
                roles
                    .iter()
                    .filter_map(|r| r.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    })
}

/// Makes `user` log in with `password` and hold `role` alone, marked.
async fn ensure_user(
    conn: &Connection,
    user: &str,
    password: &str,
    role: &str,
    verdict: &Verdict,
    mark: &Mark,
) -> Result<(), AdminError> {
    let path = format!("/_plugins/_security/api/internalusers/{user}");
    // Each write to the security configuration costs every client a fresh
    // password check: a user that works as it should is left alone.
    let alone = [role.to_string()];
    if *verdict == Verdict::Ours
        && roles_of(conn, user, password).await.as_deref() == Some(&alone[..])
    {
        return Ok(());
    }
    write(
        conn,
        Method::PUT,
        &path,
        Some(&user_body(password, role, mark)),
    )
    .await?;
    // A rolesmapping that names the user would give it more: refused.
    match roles_of(conn, user, password).await {
        Some(roles) if roles == [role] => Ok(()),
        Some(roles) => Err(AdminError::Refused(format!(
            "user {user:?} holds roles {roles:?} besides {role:?}: a rolesmapping of the server names it; remove it"
        ))),
        None => Err(AdminError::Refused(format!(
            "user {user:?} cannot log in after it was written"
        ))),
    }
}

async fn info(conn: &Connection) -> Result<ServerInfo, AdminError> {
    let (status, value) = admin(conn, Method::GET, "/", None).await?;
    if status != 200 {
        return Err(refused("GET /", status, &value));
    }
    if value["version"]["distribution"] != "opensearch" {
        return Err(AdminError::Refused(format!(
            "the server is not OpenSearch (distribution {})",
            value["version"]["distribution"]
        )));
    }
    let version = value["version"]["number"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let path = "/_plugins/_security/api/permissionsinfo";
    let (status, access) = admin(conn, Method::GET, path, None).await?;
    if status != 200 || access["has_api_access"] != true {
        return Err(AdminError::Refused(format!(
            "the admin user may not use the security plugin's REST API (give it a role of plugins.security.restapi.roles_enabled): {}",
            message(&access)
        )));
    }
    Ok(ServerInfo {
        version,
        enforces_database_roles: true,
    })
}

async fn ensure(
    conn: &Connection,
    grant: &Grant,
    claimant: &Claimant,
) -> Result<Provisioned, AdminError> {
    let found = presences(conn, &grant.database, std::slice::from_ref(&grant.username)).await?;
    let verdicts = authorize(&found, claimant)?;
    let mut provisioned = Provisioned::default();
    for ((_, name, _), verdict) in found.iter().zip(&verdicts) {
        provisioned.record(verdict, name);
    }
    let role = role_name(&grant.database);
    // The role first: it is the reservation, and a user naming it needs it.
    if verdicts[0] != Verdict::Ours {
        let path = format!("/_plugins/_security/api/roles/{role}");
        let body = app_role(&grant.database, &claimant.mark);
        write(conn, Method::PUT, &path, Some(&body)).await?;
    }
    ensure_user(
        conn,
        &grant.username,
        &grant.password,
        &role,
        &verdicts[1],
        &claimant.mark,
    )
    .await?;
    Ok(provisioned)
}

async fn drop_database(
    conn: &Connection,
    database: &str,
    usernames: &[String],
    mark: &Mark,
) -> Result<Dropped, AdminError> {
    let found = presences(conn, database, usernames).await?;
    let (drop, kept) = ownership::droppable(found, mark);
    let mut dropped = Dropped {
        kept,
        ..Default::default()
    };
    // The users first: nothing writes while the indices go.
    for (kind, name) in &drop {
        if *kind == ObjectKind::User {
            let path = format!("/_plugins/_security/api/internalusers/{name}");
            write(conn, Method::DELETE, &path, None).await?;
            dropped.dropped.push(name.clone());
        }
    }
    if drop.iter().any(|(kind, _)| *kind == ObjectKind::Database) {
        // By name (a wildcard skips hidden indices), in batches that keep
        // the request line short.
        let names = prefixed(conn, database).await?;
        for batch in names.chunks(50) {
            let path = format!(
                "/{}?expand_wildcards=all&ignore_unavailable=true",
                batch.join(",")
            );
            let (status, value) = admin(conn, Method::DELETE, &path, None).await?;
            if !(200..300).contains(&status) && status != 404 {
                return Err(refused("deleting the indices", status, &value));
            }
        }
        for role in [read_role_name(database), role_name(database)] {
            let path = format!("/_plugins/_security/api/roles/{role}");
            write(conn, Method::DELETE, &path, None).await?;
        }
        dropped.dropped.push(database.to_string());
    }
    Ok(dropped)
}

/// Deletes `username` if it carries `mark`: basic authentication is checked
/// on every request, so it can do nothing more from the next one on.
async fn revoke(conn: &Connection, username: &str, mark: &Mark) -> Result<(), AdminError> {
    if ownership::owned_by(&user_presence(conn, username).await?, mark) {
        let path = format!("/_plugins/_security/api/internalusers/{username}");
        write(conn, Method::DELETE, &path, None).await?;
    }
    Ok(())
}

async fn can_login(conn: &Connection, grant: &Grant) -> bool {
    let mine = [role_name(&grant.database), read_role_name(&grant.database)];
    roles_of(conn, &grant.username, &grant.password)
        .await
        .is_some_and(|roles| roles.len() == 1 && mine.contains(&roles[0]))
}

async fn ensure_reader(
    conn: &Connection,
    grant: &ReadGrant,
    claimant: &Claimant,
) -> Result<Vec<String>, AdminError> {
    let role = read_role_name(&grant.database);
    let role_verdict = ownership::verdict(
        ObjectKind::Database,
        &role,
        &role_presence(conn, &role)
            .await?
            .unwrap_or(Presence::Absent),
        &claimant.mark,
        false,
    )?;
    let user_verdict = ownership::verdict(
        ObjectKind::User,
        &grant.username,
        &user_presence(conn, &grant.username).await?,
        &claimant.mark,
        false,
    )?;
    if role_verdict != Verdict::Ours {
        let path = format!("/_plugins/_security/api/roles/{role}");
        let body = read_role(&grant.database, &claimant.mark);
        write(conn, Method::PUT, &path, Some(&body)).await?;
    }
    ensure_user(
        conn,
        &grant.username,
        &grant.password,
        &role,
        &user_verdict,
        &claimant.mark,
    )
    .await?;
    Ok(Vec::new())
}

impl Administration for super::Opensearch {
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
        Box::pin(presences(conn, database, usernames))
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
        _database: &'a str,
        username: &'a str,
        mark: &'a Mark,
    ) -> BoxFuture<'a, Result<(), AdminError>> {
        Box::pin(revoke(conn, username, mark))
    }

    fn can_login<'a>(&'a self, conn: &'a Connection, grant: &'a Grant) -> BoxFuture<'a, bool> {
        Box::pin(can_login(conn, grant))
    }
}
