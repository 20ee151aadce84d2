//! Administration of shared servers against the real engines: a database and
//! a user that works, is idempotent, is confined to its database, and can be
//! dropped; faults are told apart; quoting defeats injection.

use dbps_e2e::claims::claimant;
use dbps_e2e::databases::{Kind, LocalServer, behind_dbps, round_trip};
use dbps_operator::api::{Engine, Reason};
use dbps_operator::engines::{AdminError, Conflict, Grant};
use dbps_operator::servers::Servers;

fn grant(database: &str, username: &str, password: &str) -> Grant {
    Grant {
        database: database.into(),
        username: username.into(),
        password: password.into(),
    }
}

async fn administers(kind: Kind, engine: Engine) {
    let mut server = LocalServer::start(kind).await.unwrap();
    let conn = server.admin_connection(engine);
    let servers = Servers::default();

    let info = servers.info(&conn).await.unwrap();
    assert!(!info.version.is_empty());

    let a = grant("team_a_orders", "team_a_orders_app", "PasswordA1");
    let b = grant("team_b_payments", "team_b_payments_app", "PasswordB2");
    let owner_a = claimant("team-a", "orders", "uid-a", "orders", false);
    let owner_b = claimant("team-b", "payments", "uid-b", "payments", false);
    for (g, c) in [(&a, &owner_a), (&a, &owner_a), (&b, &owner_b)] {
        servers.ensure(&conn, g, c).await.unwrap(); // twice for a: idempotent
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
    servers.ensure(&conn, &a2, &owner_a).await.unwrap();
    assert!(servers.can_login(&conn, &a2).await);
    assert!(!servers.can_login(&conn, &a).await);

    // A second user of the same database (the other slot of a rotation)
    // shares its data; revoking the first leaves the second working.
    let a_next = grant(&a.database, "team_a_orders_app2", "PasswordA4");
    servers.ensure(&conn, &a_next, &owner_a).await.unwrap();
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
        .revoke(&conn, &a.database, &a.username, &owner_a.mark)
        .await
        .unwrap();
    servers
        .revoke(&conn, &a.database, &a.username, &owner_a.mark)
        .await
        .unwrap();
    assert!(
        !servers.can_login(&conn, &a2).await,
        "{engine:?}: revoked user still logs in"
    );
    assert!(servers.can_login(&conn, &a_next).await);
    servers.ensure(&conn, &a2, &owner_a).await.unwrap();
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
            &owner_a.mark,
        )
        .await
        .unwrap();
    servers
        .drop_database(
            &conn,
            &a.database,
            &[a.username.clone(), a_next.username.clone()],
            &owner_a.mark,
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
    assert_eq!(
        err.reason(),
        Reason::ServerUnreachable,
        "{engine:?}: {err:?}"
    );

    // A recent answer stands for the credentials it was given to only, and
    // not once they failed: a server's status asks again.
    let within = std::time::Duration::from_secs(30);
    let err = servers.recent_info(&bad, within).await.unwrap_err();
    assert!(
        matches!(err, AdminError::AuthenticationFailed(_)),
        "{engine:?}: a wrong password rode on an answer to the right one: {err:?}"
    );
    servers.forget_answer(&conn);
    assert_eq!(servers.recent_info(&conn, within).await.unwrap(), info);
    // Given, it is taken within its time (the server, stopped, answers
    // nothing), and not after.
    server.pause();
    let recent = servers.recent_info(&conn, within).await;
    let stale = servers.recent_info(&conn, std::time::Duration::ZERO).await;
    server.resume().await.unwrap();
    assert_eq!(recent.unwrap(), info, "{engine:?}");
    assert!(stale.is_err(), "{engine:?}: {stale:?}");
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
    let victim_owner = claimant("shop", "victim", "uid-v", "victim", false);
    servers.ensure(&conn, &victim, &victim_owner).await.unwrap();

    let evil = grant(
        r#"x"; DROP DATABASE victim; --"#,
        r#"evil" SUPERUSER; --"#,
        r#"p'; ALTER ROLE admin NOLOGIN; --\"#,
    );
    // The mark, a quoted literal too, carries crafted text as well.
    let evil_owner = claimant(
        "shop",
        "e'; DROP DATABASE victim; --",
        "uid-e",
        "x'); --",
        false,
    );
    servers.ensure(&conn, &evil, &evil_owner).await.unwrap();
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
        .drop_database(
            &conn,
            &evil.database,
            std::slice::from_ref(&evil.username),
            &evil_owner.mark,
        )
        .await
        .unwrap();
    assert!(servers.can_login(&conn, &victim).await);
}

/// Another claim naming the same database (same namespace, another Service)
/// touches nothing of the owner's; an unmarked database is adopted only when
/// allowed; a re-created claim gets its objects back; an interrupted
/// provisioning converges without anyone else taking the names.
async fn ownership(kind: Kind, engine: Engine) {
    let server = LocalServer::start(kind).await.unwrap();
    let conn = server.admin_connection(engine);
    let servers = Servers::default();
    let owned = grant("shop_orders_db", "shop_orders_db_app", "OwnerPass1");
    let owner = claimant("shop", "orders-db", "uid-1", "orders", false);
    servers.ensure(&conn, &owned, &owner).await.unwrap();
    let wrote = round_trip(
        &server,
        engine,
        &owned.database,
        &owned.username,
        &owned.password,
    )
    .await;
    assert!(wrote.is_ok(), "{engine:?}: {wrote:?}");

    // The takeover: same database and user names, another claim and Service.
    let intruder = claimant("shop", "orders-copy", "uid-9", "intruder", false);
    let taken = grant(&owned.database, &owned.username, "IntruderPass9");
    let refused = servers.ensure(&conn, &taken, &intruder).await.unwrap_err();
    assert_eq!(
        refused.reason(),
        Reason::DatabaseOwnedByAnotherClaim,
        "{engine:?}"
    );
    assert!(
        refused.to_string().contains("claim shop/orders-db"),
        "{refused}"
    );
    // Even the platform team's adoption does not hand over another claim's database.
    let adopting = claimant("shop", "orders-copy", "uid-9", "intruder", true);
    assert!(servers.ensure(&conn, &taken, &adopting).await.is_err());
    // Its own user name on the owner's database is refused as well.
    let beside = grant(&owned.database, "shop_intruder_app", "IntruderPass9");
    assert!(servers.ensure(&conn, &beside, &intruder).await.is_err());
    assert!(
        servers.can_login(&conn, &owned).await,
        "{engine:?}: the owner's password was changed"
    );
    assert!(!servers.can_login(&conn, &taken).await);
    // Revoking and dropping as the intruder leave everything in place.
    servers
        .revoke(&conn, &owned.database, &owned.username, &intruder.mark)
        .await
        .unwrap();
    let dropped = servers
        .drop_database(
            &conn,
            &owned.database,
            std::slice::from_ref(&owned.username),
            &intruder.mark,
        )
        .await
        .unwrap();
    assert!(dropped.dropped.is_empty(), "{engine:?}: {dropped:?}");
    assert!(dropped.kept.contains(&owned.database), "{dropped:?}");
    let read = round_trip(
        &server,
        engine,
        &owned.database,
        &owned.username,
        &owned.password,
    )
    .await;
    assert!(
        read.is_ok(),
        "{engine:?}: the owner lost its data: {read:?}"
    );

    // A database dbps did not make is not adopted ...
    behind_dbps::create(
        &server,
        engine,
        "legacy_orders",
        "legacy_orders_app",
        "LegacyPass1",
    )
    .await
    .unwrap();
    let legacy = grant("legacy_orders", "legacy_orders_app", "NewPass42");
    let migrating = claimant("shop", "legacy", "uid-l", "orders", false);
    let refused = servers
        .ensure(&conn, &legacy, &migrating)
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, AdminError::Conflict(Conflict::Exists { .. })),
        "{engine:?}: {refused:?}"
    );
    assert_eq!(refused.reason(), Reason::DatabaseExists);
    let untouched = grant("legacy_orders", "legacy_orders_app", "LegacyPass1");
    assert!(
        servers.can_login(&conn, &untouched).await,
        "{engine:?}: the legacy password was changed"
    );
    let gone = servers
        .drop_database(
            &conn,
            &legacy.database,
            std::slice::from_ref(&legacy.username),
            &migrating.mark,
        )
        .await
        .unwrap();
    assert!(gone.dropped.is_empty(), "{gone:?}");
    assert!(
        behind_dbps::database_exists(&server, engine, "legacy_orders")
            .await
            .unwrap()
    );
    // ... unless the platform team allows this claim to.
    let allowed = claimant("shop", "legacy", "uid-l", "orders", true);
    let adopted = servers.ensure(&conn, &legacy, &allowed).await.unwrap();
    assert!(
        adopted.adopted.contains(&legacy.database),
        "{engine:?}: {adopted:?}"
    );
    assert!(servers.can_login(&conn, &legacy).await);
    let used = round_trip(
        &server,
        engine,
        &legacy.database,
        &legacy.username,
        &legacy.password,
    )
    .await;
    assert!(used.is_ok(), "{engine:?}: {used:?}");
    // Adopted, it is the claim's own: no adoption needed again.
    servers.ensure(&conn, &legacy, &migrating).await.unwrap();

    // Re-created with the same name and Service (Retain): reattached, and the
    // old UID no longer owns it.
    let recreated = claimant("shop", "orders-db", "uid-2", "orders", false);
    let back = servers.ensure(&conn, &owned, &recreated).await.unwrap();
    assert!(
        back.reattached.contains(&owned.database),
        "{engine:?}: {back:?}"
    );
    let stale = servers
        .drop_database(
            &conn,
            &owned.database,
            std::slice::from_ref(&owned.username),
            &owner.mark,
        )
        .await
        .unwrap();
    assert!(stale.dropped.is_empty(), "{engine:?}: {stale:?}");

    // Interrupted between mark and object: the names stay this claim's.
    behind_dbps::interrupt_after_marking(
        &server,
        engine,
        &owned.database,
        &[owned.username.as_str()],
    )
    .await
    .unwrap();
    assert!(
        servers.ensure(&conn, &taken, &intruder).await.is_err(),
        "{engine:?}: taken in the gap"
    );
    servers.ensure(&conn, &owned, &recreated).await.unwrap();
    assert!(servers.can_login(&conn, &owned).await);
    servers.ensure(&conn, &owned, &recreated).await.unwrap();

    // Deletion by the owner drops exactly its objects; the names are free again.
    let done = servers
        .drop_database(
            &conn,
            &owned.database,
            std::slice::from_ref(&owned.username),
            &recreated.mark,
        )
        .await
        .unwrap();
    assert!(
        done.dropped.contains(&owned.database),
        "{engine:?}: {done:?}"
    );
    assert!(done.kept.is_empty(), "{engine:?}: {done:?}");
    assert!(!servers.can_login(&conn, &owned).await);
    servers.ensure(&conn, &taken, &intruder).await.unwrap();
    assert!(servers.can_login(&conn, &taken).await);
}

#[tokio::test]
async fn postgres_ownership_marks() {
    ownership(Kind::Postgres, Engine::Postgres).await;
}

#[tokio::test]
async fn influxdb_ownership_marks() {
    ownership(Kind::InfluxDb, Engine::Influxdb).await;
}

#[tokio::test]
async fn mongodb_wire_ownership_marks() {
    ownership(Kind::FerretDb, Engine::Mongodb).await;
}

/// The operator keeps a few admin sessions open between operations; one the
/// server cut off (a restart, an administrator ending it) or one left in a
/// failed transaction is never used again, and no more are kept than the
/// server's connection limit lets run at once.
#[tokio::test]
async fn kept_admin_sessions_are_replaced_when_cut_off_and_bounded() {
    use dbps_e2e::databases::connect_postgres;
    let mut server = LocalServer::start(Kind::Postgres).await.unwrap();
    let conn = server.admin_connection(Engine::Postgres);
    let servers = Servers::default();
    servers.set_connections(&conn, 3);
    let owner = |i: usize| claimant("kept", &format!("db{i}"), &format!("uid-{i}"), "svc", false);
    let ensure_all = async |range: std::ops::Range<usize>| {
        futures::future::join_all(range.map(|i| {
            let (servers, conn) = (&servers, &conn);
            async move {
                let g = grant(
                    &format!("kept_db{i}"),
                    &format!("kept_db{i}_app"),
                    "Passw0rd",
                );
                servers.ensure(conn, &g, &owner(i)).await
            }
        }))
        .await
    };
    for done in ensure_all(0..6).await {
        done.unwrap();
    }
    let watcher = connect_postgres(
        &server,
        "postgres",
        &server.admin_user,
        &server.admin_password,
    )
    .await
    .unwrap();
    let sessions = async || -> i64 {
        watcher
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'dbps-operator'",
                &[],
            )
            .await
            .unwrap()
            .get(0)
    };
    let kept = sessions().await;
    assert!(
        (1..=3).contains(&kept),
        "{kept} admin sessions kept for a limit of 3"
    );

    // An administrator ends them: the next operations open new ones.
    watcher
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'dbps-operator'",
            &[],
        )
        .await
        .unwrap();
    for done in ensure_all(6..9).await {
        done.unwrap();
    }

    // The server restarts: the kept sessions are gone with it. Once it
    // accepts connections again, operations work at once.
    server.pause();
    server.resume().await.unwrap();
    let accepting = std::time::Instant::now();
    while connect_postgres(
        &server,
        "postgres",
        &server.admin_user,
        &server.admin_password,
    )
    .await
    .is_err()
    {
        assert!(accepting.elapsed() < std::time::Duration::from_secs(60));
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    for done in ensure_all(9..12).await {
        done.unwrap();
    }
    let g = grant("kept_db11", "kept_db11_app", "Passw0rd");
    assert!(servers.can_login(&conn, &g).await);
}

/// The operator keeps one MongoDB admin client per server; the server
/// restarts, its connections are gone with it: once it accepts connections
/// again, operations work at once.
#[tokio::test]
async fn a_kept_mongodb_admin_client_works_at_once_after_the_server_restarts() {
    let mut server = LocalServer::start(Kind::FerretDb).await.unwrap();
    let conn = server.admin_connection(Engine::Mongodb);
    let servers = Servers::default();
    let owner = |i: usize| claimant("kept", &format!("db{i}"), &format!("uid-{i}"), "svc", false);
    let kept = |i: usize| {
        grant(
            &format!("kept_db{i}"),
            &format!("kept_db{i}_app"),
            "Passw0rd",
        )
    };
    servers.ensure(&conn, &kept(0), &owner(0)).await.unwrap();
    server.pause();
    server.resume().await.unwrap();
    servers.ensure(&conn, &kept(1), &owner(1)).await.unwrap();
    assert!(servers.can_login(&conn, &kept(1)).await);
    // And again, on the connections opened since.
    servers.ensure(&conn, &kept(0), &owner(0)).await.unwrap();
}
