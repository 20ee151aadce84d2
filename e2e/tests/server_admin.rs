//! Administration of shared servers against the real engines: a database and
//! a user that works, is idempotent, is confined to its database, and can be
//! dropped; faults are told apart; quoting defeats injection.

use dbps_e2e::databases::{Kind, LocalServer, round_trip};
use dbps_operator::api::Engine;
use dbps_operator::servers::{AdminError, Grant, Servers};

fn grant(database: &str, username: &str, password: &str) -> Grant {
    Grant {
        database: database.into(),
        username: username.into(),
        password: password.into(),
    }
}

async fn administers(kind: Kind, engine: Engine) {
    let server = LocalServer::start(kind).await.unwrap();
    let conn = server.admin_connection(engine);
    let servers = Servers::default();

    let info = servers.info(&conn).await.unwrap();
    assert!(!info.version.is_empty());

    let a = grant("team_a_orders", "team_a_orders_app", "PasswordA1");
    let b = grant("team_b_payments", "team_b_payments_app", "PasswordB2");
    for g in [&a, &a, &b] {
        servers.ensure(&conn, g).await.unwrap(); // twice for a: idempotent
    }
    assert!(servers.can_login(&conn, &a).await);
    assert!(
        round_trip(&server, engine, &a.database, &a.username, &a.password)
            .await
            .is_ok_and(|v| v == "hello" || v == "42")
    );
    assert!(
        round_trip(&server, engine, &b.database, &b.username, &b.password)
            .await
            .is_ok()
    );

    // B's credentials are refused on A's database.
    let b_on_a = grant(&a.database, &b.username, &b.password);
    assert!(
        !servers.can_login(&conn, &b_on_a).await,
        "{engine:?}: B logs in to A's database"
    );
    assert!(
        round_trip(
            &server,
            engine,
            &b_on_a.database,
            &b_on_a.username,
            &b_on_a.password
        )
        .await
        .is_err(),
        "{engine:?}: B writes to A's database"
    );
    // A wrong password is refused.
    let wrong = grant(&a.database, &a.username, "not-the-password");
    assert!(!servers.can_login(&conn, &wrong).await);

    // A new password takes over (what rotation relies on).
    let a2 = grant(&a.database, &a.username, "PasswordA3");
    servers.ensure(&conn, &a2).await.unwrap();
    assert!(servers.can_login(&conn, &a2).await);
    assert!(!servers.can_login(&conn, &a).await);

    // A second user of the same database (the other slot of a rotation)
    // shares its data; revoking the first leaves the second working.
    let a_next = grant(&a.database, "team_a_orders_app2", "PasswordA4");
    servers.ensure(&conn, &a_next).await.unwrap();
    let shared = round_trip(
        &server,
        engine,
        &a_next.database,
        &a_next.username,
        &a_next.password,
    )
    .await;
    assert!(
        shared.is_ok(),
        "{engine:?}: second user cannot use the first's data: {shared:?}"
    );
    servers
        .revoke(&conn, &a.database, &a.username)
        .await
        .unwrap();
    servers
        .revoke(&conn, &a.database, &a.username)
        .await
        .unwrap();
    assert!(
        !servers.can_login(&conn, &a2).await,
        "{engine:?}: revoked user still logs in"
    );
    assert!(servers.can_login(&conn, &a_next).await);
    servers.ensure(&conn, &a2).await.unwrap();
    assert!(
        servers.can_login(&conn, &a2).await,
        "{engine:?}: a revoked slot comes back with ensure"
    );

    // Drop: gone, and dropping again is fine; B is untouched.
    servers
        .drop_database(
            &conn,
            &a.database,
            &[a.username.clone(), a_next.username.clone()],
        )
        .await
        .unwrap();
    servers
        .drop_database(
            &conn,
            &a.database,
            &[a.username.clone(), a_next.username.clone()],
        )
        .await
        .unwrap();
    assert!(!servers.can_login(&conn, &a2).await);
    assert!(servers.can_login(&conn, &b).await);

    // Faults are told apart.
    let mut bad = conn.clone();
    bad.password = "wrong".into();
    let err = servers.info(&bad).await.unwrap_err();
    assert!(
        matches!(err, AdminError::AuthenticationFailed(_)),
        "{engine:?}: {err:?}"
    );
    let mut down = conn.clone();
    down.port = dbps_e2e::ports::free_port().unwrap();
    let err = servers.info(&down).await.unwrap_err();
    assert_eq!(err.reason(), "ServerUnreachable", "{engine:?}: {err:?}");
}

#[tokio::test]
async fn postgres_databases_and_users() {
    administers(Kind::Postgres, Engine::Postgres).await;
}

#[tokio::test]
async fn influxdb_databases_and_users() {
    administers(Kind::InfluxDb, Engine::Influxdb).await;
}

#[tokio::test]
async fn mongodb_wire_databases_and_users() {
    administers(Kind::FerretDb, Engine::Mongodb).await;
}

#[tokio::test]
async fn ferretdb_is_reported_as_not_enforcing_database_roles() {
    let server = LocalServer::start(Kind::FerretDb).await.unwrap();
    let info = Servers::default()
        .info(&server.admin_connection(Engine::Mongodb))
        .await
        .unwrap();
    assert!(info.version.contains("FerretDB"), "{}", info.version);
    assert!(!info.enforces_database_roles);
}

#[tokio::test]
async fn crafted_names_and_passwords_cannot_inject_sql() {
    let server = LocalServer::start(Kind::Postgres).await.unwrap();
    let conn = server.admin_connection(Engine::Postgres);
    let servers = Servers::default();
    let victim = grant("victim", "victim_app", "VictimPass1");
    servers.ensure(&conn, &victim).await.unwrap();

    let evil = grant(
        r#"x"; DROP DATABASE victim; --"#,
        r#"evil" SUPERUSER; --"#,
        r#"p'; ALTER ROLE admin NOLOGIN; --\"#,
    );
    servers.ensure(&conn, &evil).await.unwrap();
    // The crafted strings became plain names and a plain password.
    assert!(servers.can_login(&conn, &evil).await);
    assert!(
        servers.can_login(&conn, &victim).await,
        "the victim database survived"
    );
    let conninfo = format!(
        "host=127.0.0.1 port={} user=admin password={} dbname=postgres",
        server.port, server.admin_password
    );
    let (client, c) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(c);
    let superuser: bool = client
        .query_one(
            "SELECT rolsuper FROM pg_roles WHERE rolname = $1",
            &[&evil.username],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!superuser, "the crafted user is no superuser");
    let dbs: Vec<String> = client
        .query("SELECT datname FROM pg_database", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        dbs.contains(&evil.database) && dbs.contains(&"victim".to_string()),
        "{dbs:?}"
    );
    servers
        .drop_database(&conn, &evil.database, std::slice::from_ref(&evil.username))
        .await
        .unwrap();
    assert!(servers.can_login(&conn, &victim).await);
}
