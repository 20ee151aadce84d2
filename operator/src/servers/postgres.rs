//! PostgreSQL: a LOGIN role without any special attribute, owner of its own
//! database, CONNECT and TEMPORARY revoked from PUBLIC on that database.

use tokio_postgres::{Client, NoTls};

use super::{AdminError, Connection, Grant, ServerInfo, TIMEOUT};

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

async fn admin(conn: &Connection) -> Result<Client, AdminError> {
    connect(conn, &conn.username, &conn.password, "postgres").await
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
        None => AdminError::Unreachable(e.to_string()),
    }
}

pub async fn info(conn: &Connection) -> Result<ServerInfo, AdminError> {
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

pub async fn can_login(conn: &Connection, grant: &Grant) -> bool {
    connect(conn, &grant.username, &grant.password, &grant.database)
        .await
        .is_ok()
}

/// The NOLOGIN role that owns `database`; the login users are its members
/// and act as it, so tables one user creates are the other's too (the two
/// users of a rotation share them).
pub fn owner_role(database: &str) -> String {
    super::bounded(&format!("{database}_owner"))
}

pub async fn ensure(conn: &Connection, grant: &Grant) -> Result<(), AdminError> {
    let (db, user, password) = (
        no_nul(&grant.database)?,
        no_nul(&grant.username)?,
        no_nul(&grant.password)?,
    );
    let owner = owner_role(db);
    let client = admin(conn).await?;
    let role_exists = |name: String| {
        let client = &client;
        async move {
            client
                .query("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&name])
                .await
                .map(|rows| !rows.is_empty())
                .map_err(classify)
        }
    };
    if !role_exists(owner.clone()).await? {
        let sql = format!(
            "CREATE ROLE {} NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS",
            quote_ident(&owner)
        );
        client.batch_execute(&sql).await.map_err(classify)?;
    }
    let user_exists = role_exists(user.to_string()).await?;
    let attributes = "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT";
    if !user_exists {
        let sql = format!(
            "CREATE ROLE {} {attributes} PASSWORD {}",
            quote_ident(user),
            quote_literal(password)
        );
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
    let current_owner: Option<String> = client
        .query_opt(
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = $1",
            &[&db],
        )
        .await
        .map_err(classify)?
        .map(|row| row.get(0));
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
    let sql = format!(
        "REVOKE CONNECT, TEMPORARY ON DATABASE {} FROM PUBLIC",
        quote_ident(db)
    );
    client.batch_execute(&sql).await.map_err(classify)?;
    // The password is set again only when it no longer works (rotation, drift).
    if user_exists && !can_login(conn, grant).await {
        let sql = format!(
            "ALTER ROLE {} WITH {attributes} PASSWORD {}",
            quote_ident(user),
            quote_literal(password)
        );
        client.batch_execute(&sql).await.map_err(classify)?;
    }
    Ok(())
}

pub async fn revoke(conn: &Connection, username: &str) -> Result<(), AdminError> {
    let user = no_nul(username)?;
    let client = admin(conn).await?;
    let exists = !client
        .query("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&user])
        .await
        .map_err(classify)?
        .is_empty();
    if exists {
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
    }
    Ok(())
}

pub async fn drop_database(
    conn: &Connection,
    database: &str,
    usernames: &[String],
) -> Result<(), AdminError> {
    let client = admin(conn).await?;
    // WITH (FORCE) ends the sessions still connected to it (PostgreSQL 13+).
    let sql = format!(
        "DROP DATABASE IF EXISTS {} WITH (FORCE)",
        quote_ident(no_nul(database)?)
    );
    client.batch_execute(&sql).await.map_err(classify)?;
    for user in usernames
        .iter()
        .map(String::as_str)
        .chain([owner_role(database).as_str()])
    {
        let sql = format!("DROP ROLE IF EXISTS {}", quote_ident(no_nul(user)?));
        client.batch_execute(&sql).await.map_err(classify)?;
    }
    Ok(())
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
