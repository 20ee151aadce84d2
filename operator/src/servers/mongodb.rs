//! MongoDB: a user with `readWrite` on its own database only. FerretDB v1
//! (the MongoDB-wire server of the test suites) has no roles: there the user
//! is created without any, and the server is reported as not enforcing
//! per-database roles.

use mongodb::bson::{Bson, Document, doc};
use mongodb::options::{ClientOptions, Credential, ServerAddress};

use super::{AdminError, Connection, Grant, ServerInfo, TIMEOUT};

async fn client(
    conn: &Connection,
    user: &str,
    password: &str,
    source: &str,
) -> Result<mongodb::Client, AdminError> {
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
        .max_pool_size(super::MAX_CONNECTIONS_PER_SERVER as u32)
        .direct_connection(true)
        .tls(match &conn.tls {
            None => mongodb::options::Tls::Disabled,
            Some(tls) => mongodb::options::Tls::Enabled(
                mongodb::options::TlsOptions::builder()
                    .ca_file_path(tls.ca_pem.as_deref().map(ca_file).transpose()?)
                    .build(),
            ),
        })
        .build();
    mongodb::Client::with_options(options).map_err(classify)
}

/// The driver reads a CA from a file: one file per CA, named by its hash.
fn ca_file(pem: &str) -> Result<std::path::PathBuf, AdminError> {
    let path =
        std::env::temp_dir().join(format!("dbps-ca-{:016x}.pem", super::fnv1a(pem.as_bytes())));
    if !path.exists() {
        std::fs::write(&path, pem)
            .map_err(|e| AdminError::Tls(format!("writing the CA file: {e}")))?;
    }
    Ok(path)
}

async fn admin(conn: &Connection) -> Result<mongodb::Client, AdminError> {
    client(conn, &conn.username, &conn.password, "admin").await
}

fn classify(e: mongodb::error::Error) -> AdminError {
    use mongodb::error::ErrorKind;
    match *e.kind {
        ErrorKind::Authentication { message, .. } => AdminError::AuthenticationFailed(message),
        ErrorKind::Command(c) if c.code == 18 => AdminError::AuthenticationFailed(c.message),
        ErrorKind::Command(c) => AdminError::Refused(format!("{} ({})", c.message, c.code_name)),
        ErrorKind::ServerSelection { message, .. } => AdminError::Unreachable(message),
        other => AdminError::Unreachable(other.to_string()),
    }
}

async fn run(
    client: &mongodb::Client,
    db: &str,
    command: Document,
) -> Result<Document, AdminError> {
    client
        .database(db)
        .run_command(command)
        .await
        .map_err(classify)
}

pub async fn info(conn: &Connection) -> Result<ServerInfo, AdminError> {
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

pub async fn can_login(conn: &Connection, grant: &Grant) -> bool {
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

async fn user_exists(client: &mongodb::Client, grant: &Grant) -> Result<bool, AdminError> {
    let info = run(
        client,
        &grant.database,
        doc! { "usersInfo": &grant.username },
    )
    .await?;
    Ok(matches!(info.get("users"), Some(Bson::Array(users)) if !users.is_empty()))
}

/// `enforces_roles`: false on FerretDB v1, which accepts only users without roles.
pub async fn ensure(
    conn: &Connection,
    grant: &Grant,
    enforces_roles: bool,
) -> Result<(), AdminError> {
    let admin = admin(conn).await?;
    let roles = if enforces_roles {
        vec![Bson::Document(
            doc! { "role": "readWrite", "db": &grant.database },
        )]
    } else {
        Vec::new()
    };
    if !user_exists(&admin, grant).await? {
        let create = doc! { "createUser": &grant.username, "pwd": &grant.password, "roles": roles };
        run(&admin, &grant.database, create).await?;
    } else if !can_login(conn, grant).await {
        let update = doc! { "updateUser": &grant.username, "pwd": &grant.password };
        run(&admin, &grant.database, update).await?;
    }
    Ok(())
}

pub async fn drop_database(
    conn: &Connection,
    database: &str,
    usernames: &[String],
) -> Result<(), AdminError> {
    let admin = admin(conn).await?;
    run(&admin, database, doc! { "dropDatabase": 1 }).await?;
    drop_users(conn, database, usernames).await
}

/// Drops the users of `database` that exist.
pub async fn drop_users(
    conn: &Connection,
    database: &str,
    usernames: &[String],
) -> Result<(), AdminError> {
    let admin = admin(conn).await?;
    for user in usernames {
        let grant = Grant {
            database: database.to_string(),
            username: user.clone(),
            password: String::new(),
        };
        if user_exists(&admin, &grant).await? {
            run(&admin, database, doc! { "dropUser": user }).await?;
        }
    }
    Ok(())
}
