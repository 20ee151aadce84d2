//! A running service across a rotation of its credentials, as dbps carries
//! it out: the other user gets the same database, the binding files are
//! rewritten with it (the kubelet does this for a mounted Secret), and at
//! the end of the grace period the first user is revoked and its session
//! ended. The orders (PostgreSQL), catalog (MongoDB wire) and telemetry
//! (InfluxDB) stores go on answering, as the second user, with no restart:
//! each use reads the binding again and a changed one is logged in with
//! before the first user is revoked.

mod support;

use dbps_e2e::databases::{Kind, LocalServer};
use dbps_operator::api::Engine;
use dbps_operator::engines::Grant;
use dbps_operator::servers::Servers;
use dbps_samples::services::orders::Orders;
use dbps_samples::stores;
use serde_json::json;
use support::{get_json, get_status, post_status, provision, serve};

/// A rotation of `database`'s credentials as dbps carries it out: the
/// second user `<database>_app2` made on the same database and the binding
/// files under `root/<database>-db/` rewritten with it. The future returned
/// revokes the first user (`<database>_app`), ending its sessions.
async fn rotate(
    server: &LocalServer,
    engine: Engine,
    database: &str,
    root: &std::path::Path,
) -> impl std::future::Future<Output = ()> {
    let conn = server.admin_connection(engine);
    let owner = dbps_e2e::claims::claimant("samples", database, database, database, false);
    let second = Grant {
        database: database.into(),
        username: format!("{database}_app2"),
        password: dbps_operator::password::generate(),
    };
    Servers::default()
        .ensure(&conn, &second, &owner)
        .await
        .unwrap();
    let dir = root.join(format!("{database}-db"));
    std::fs::write(dir.join("username"), &second.username).unwrap();
    std::fs::write(dir.join("password"), &second.password).unwrap();
    let (database, first) = (database.to_string(), format!("{database}_app"));
    async move {
        Servers::default()
            .revoke(&conn, &database, &first, &owner.mark)
            .await
            .unwrap();
    }
}

/// The user the store's session logged in as.
async fn session_user(db: &stores::Postgres) -> String {
    db.lock()
        .await
        .query_one("SELECT session_user::text", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn the_orders_service_goes_on_as_the_rotated_user_without_a_restart() {
    let root = tempfile::tempdir().unwrap();
    let postgres = LocalServer::start(Kind::Postgres).await.unwrap();
    let binding = provision(&postgres, Engine::Postgres, "orders", root.path()).await;
    assert_eq!(binding.username, "orders_app");
    let db = stores::postgres(&binding).await.unwrap();
    let orders = Orders {
        db: db.clone(),
        http: dbps_samples::http::client(),
        payments_url: "http://127.0.0.1:9".into(),
        catalog_url: "http://127.0.0.1:9".into(),
    };
    orders.setup().await.unwrap();
    let url = serve(orders.routes()).await;
    let http = dbps_samples::http::client();
    let place = json!({ "customer": "ada", "items": [{ "sku": "mug", "quantity": 1, "unit_price_cents": 100 }] });
    assert_eq!(
        post_status(&http, format!("{url}/orders"), &place).await,
        201
    );

    // The rotation: the second user on the same database, the files
    // rewritten. The next use logs in as the second user, before the grace
    // period ends.
    let revoke = rotate(&postgres, Engine::Postgres, "orders", root.path()).await;
    assert_eq!(get_status(&http, format!("{url}/orders")).await, 200);
    assert_eq!(db.username().await, "orders_app2");
    assert_eq!(session_user(&db).await, "orders_app2");
    // The end of the grace period: the first user revoked, its sessions
    // ended. Every request after it is answered; the data is there.
    revoke.await;
    for _ in 0..20 {
        assert_eq!(get_status(&http, format!("{url}/orders")).await, 200);
    }
    assert_eq!(
        post_status(&http, format!("{url}/orders"), &place).await,
        201
    );
    let count: i64 = db
        .lock()
        .await
        .query_one("SELECT count(*) FROM orders", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 2);

    // A session the server ends (a restart, an administrator) is opened
    // again at the next use once the client has seen it end.
    let pid: i32 = db
        .lock()
        .await
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let admin = dbps_e2e::databases::connect_postgres(
        &postgres,
        "postgres",
        &postgres.admin_user,
        &postgres.admin_password,
    )
    .await
    .unwrap();
    admin
        .execute("SELECT pg_terminate_backend($1, 5000)", &[&pid])
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(get_status(&http, format!("{url}/orders")).await, 200);
    let again: i32 = db
        .lock()
        .await
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_ne!(again, pid, "the ended session was opened again");
    assert_eq!(session_user(&db).await, "orders_app2");

    // Files rewritten with credentials the server refuses are not taken:
    // the store goes on as the user in force.
    std::fs::write(root.path().join("orders-db/password"), "not-the-password").unwrap();
    assert_eq!(get_status(&http, format!("{url}/orders")).await, 200);
    assert_eq!(db.username().await, "orders_app2");
    assert_eq!(session_user(&db).await, "orders_app2");
}

#[tokio::test]
async fn the_influxdb_store_follows_the_binding_when_the_previous_user_is_revoked() {
    let root = tempfile::tempdir().unwrap();
    let influxdb = LocalServer::start(Kind::InfluxDb).await.unwrap();
    let binding = provision(&influxdb, Engine::Influxdb, "telemetry", root.path()).await;
    let store = stores::Influx::connect(&binding).await.unwrap();
    store.write("temperature value=1 1".into()).await.unwrap();

    rotate(&influxdb, Engine::Influxdb, "telemetry", root.path())
        .await
        .await;
    let dir = root.path().join("telemetry-db");

    store.write("temperature value=2 2".into()).await.unwrap();
    let answer = store
        .query("SELECT count(value) FROM temperature")
        .await
        .unwrap();
    assert_eq!(
        answer["results"][0]["series"][0]["values"][0][1], 2,
        "{answer}"
    );
    // Credentials that nobody rewrote are not retried forever: a store whose
    // files still hold the revoked user is refused.
    let stale = tempfile::tempdir().unwrap();
    let name = "telemetry-db";
    std::fs::create_dir_all(stale.path().join(name)).unwrap();
    for entry in std::fs::read_dir(&dir).unwrap().flatten() {
        std::fs::copy(
            entry.path(),
            stale.path().join(name).join(entry.file_name()),
        )
        .unwrap();
    }
    std::fs::write(stale.path().join(name).join("username"), &binding.username).unwrap();
    std::fs::write(stale.path().join(name).join("password"), &binding.password).unwrap();
    let revoked =
        dbps_samples::binding::Binding::read_from(Some(stale.path()), name, |_| None).unwrap();
    assert!(stores::Influx::connect(&revoked).await.is_err());
}

#[tokio::test]
async fn the_catalog_service_follows_the_binding_across_a_rotation() {
    let root = tempfile::tempdir().unwrap();
    let ferretdb = LocalServer::start(Kind::FerretDb).await.unwrap();
    let binding = provision(&ferretdb, Engine::Mongodb, "catalog", root.path()).await;
    assert_eq!(binding.username, "catalog_app");
    let store = stores::Mongo::connect(&binding).await.unwrap();
    let catalog = dbps_samples::services::catalog::Catalog { db: store.clone() };
    catalog.setup().await.unwrap();
    let url = serve(catalog.routes()).await;
    let http = dbps_samples::http::client();
    let mug = json!({ "sku": "mug", "name": "Mug", "price_cents": 900, "attributes": { "color": "red" } });
    assert_eq!(
        post_status(&http, format!("{url}/products"), &mug).await,
        201
    );

    rotate(&ferretdb, Engine::Mongodb, "catalog", root.path())
        .await
        .await;
    // The first user is gone: its credentials log in no more.
    assert!(stores::Mongo::connect(&binding).await.is_err());

    let cup = json!({ "sku": "cup", "name": "Cup", "price_cents": 500, "attributes": { "color": "red" } });
    assert_eq!(
        post_status(&http, format!("{url}/products"), &cup).await,
        201
    );
    let red: Vec<serde_json::Value> = get_json(&http, format!("{url}/products?color=red")).await;
    assert_eq!(red.len(), 2, "{red:?}");
    assert_eq!(store.username().await, "catalog_app2");

    // Files rewritten with credentials the server refuses are not taken:
    // the store goes on as the user in force.
    std::fs::write(root.path().join("catalog-db/password"), "not-the-password").unwrap();
    assert_eq!(
        get_status(&http, format!("{url}/products?color=red")).await,
        200
    );
    assert_eq!(store.username().await, "catalog_app2");
}
