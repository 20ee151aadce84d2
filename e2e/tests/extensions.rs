//! PostgreSQL extensions on a claim: created by the operator as the server's
//! superuser, only from the platform's allow-list; usable by the owning
//! service; never created, dropped or reached through by anyone else.

use std::collections::BTreeMap;
use std::time::Duration;

use dbps_e2e::claims::{reason_is, secret_values};
use dbps_e2e::databases::{Kind, LocalServer, connect_postgres};
use dbps_e2e::fixtures::{self, wait_event};
use dbps_operator::api::{DatabaseClaim, ExtensionStatus};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use tokio_postgres::Client;

async fn connect(server: &LocalServer, user: &str, password: &str, database: &str) -> Client {
    try_connect(server, user, password, database)
        .await
        .unwrap_or_else(|e| panic!("{user} cannot connect to {database}: {e}"))
}

async fn try_connect(
    server: &LocalServer,
    user: &str,
    password: &str,
    database: &str,
) -> Result<Client, String> {
    connect_postgres(server, database, user, password).await
}

async fn binding(ctx: &dbps_e2e::TestContext, claim: &str) -> BTreeMap<String, String> {
    secret_values(
        &ctx.api::<Secret>()
            .get(&format!("{claim}-binding"))
            .await
            .unwrap(),
    )
}

async fn as_app(server: &LocalServer, b: &BTreeMap<String, String>) -> Client {
    connect(server, &b["username"], &b["password"], &b["database"]).await
}

async fn extensions_of(client: &Client) -> Vec<String> {
    let mut names: Vec<String> = client
        .query("SELECT extname::text FROM pg_extension", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    names.sort();
    names
}

fn names(status: &[ExtensionStatus]) -> Vec<&str> {
    status.iter().map(|e| e.name.as_str()).collect()
}

async fn set_extensions(ctx: &dbps_e2e::TestContext, claim: &str, extensions: serde_json::Value) {
    ctx.api::<DatabaseClaim>()
        .patch(
            claim,
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "extensions": extensions } })),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn extensions_come_only_from_the_allow_list_serve_their_owner_and_go_when_unused() {
    let (ctx, _operator) = fixtures::with_operator("extensions", Duration::from_secs(300)).await;
    let server = LocalServer::start(Kind::Postgres).await.unwrap();
    let name = format!("{}-pg", ctx.namespace);
    fixtures::register(
        &ctx,
        &name,
        &server,
        json!({ "allowedExtensions": ["pg_partman", "citext"] }),
    )
    .await;
    for service in ["orders", "payments"] {
        fixtures::service(&ctx, service, json!({})).await;
    }
    let claims = ctx.api::<DatabaseClaim>();

    // An extension the platform does not allow: the claim fails and nothing
    // is made for it, not even its database or binding.
    fixtures::claim(
        &ctx,
        "payments-db",
        json!({ "serviceRef": { "name": "payments" }, "engine": "postgres", "server": { "name": name },
                "deletionPolicy": "Delete", "extensions": [{ "name": "dblink" }] }),
    )
    .await;
    let refused = ctx
        .wait_for(
            &claims,
            "payments-db",
            "claim refused",
            reason_is("ExtensionNotAllowed"),
        )
        .await;
    let message = &refused.status.unwrap().conditions[0].message;
    assert!(
        message.contains("dblink") && message.contains(&format!("DatabaseServer {name:?}")),
        "{message}"
    );
    let admin = connect(
        &server,
        &server.admin_user,
        &server.admin_password,
        "postgres",
    )
    .await;
    let payments_database = format!("{}_payments_db", ctx.namespace.replace('-', "_"));
    let made = admin
        .query(
            "SELECT 1 FROM pg_database WHERE datname = $1",
            &[&payments_database],
        )
        .await
        .unwrap();
    assert!(made.is_empty(), "a refused claim got a database");
    assert!(
        fixtures::secret(&ctx, "payments-db-binding")
            .await
            .is_none(),
        "a refused claim got a binding"
    );

    // Allowed ones are created, the first in a schema of its own, and listed
    // in the status with their versions.
    fixtures::claim(
        &ctx,
        "orders-db",
        json!({ "serviceRef": { "name": "orders" }, "engine": "postgres", "server": { "name": name },
                "deletionPolicy": "Delete",
                "extensions": [{ "name": "pg_partman", "schema": "partman" }, { "name": "citext" }] }),
    )
    .await;
    let ready = ctx
        .wait_for(&claims, "orders-db", "claim Ready", reason_is("Ready"))
        .await;
    let listed = ready.status.unwrap().extensions;
    assert_eq!(names(&listed), ["pg_partman", "citext"]);
    assert!(listed.iter().all(|e| !e.version.is_empty()), "{listed:?}");
    wait_event(&ctx, "orders-db", "Ready").await;

    // The owning service uses them: pg_partman manages a partitioned table,
    // which needs its configuration tables (the superuser's) to be writable.
    let orders = binding(&ctx, "orders-db").await;
    let app = as_app(&server, &orders).await;
    app.batch_execute(
        "CREATE TABLE events (id bigint NOT NULL, body text) PARTITION BY RANGE (id);
         SELECT partman.create_parent('public.events', 'id', 'native', '10');
         INSERT INTO events VALUES (1, 'a'), (15, 'b');
         CREATE TABLE emails (address citext PRIMARY KEY);
         INSERT INTO emails VALUES ('Ann@Example.org');",
    )
    .await
    .unwrap();
    let partitions: i64 = app
        .query_one(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = 'public.events'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(partitions >= 2, "pg_partman made {partitions} partitions");
    let found: i64 = app
        .query_one(
            "SELECT count(*) FROM emails WHERE address = 'ann@example.ORG'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(found, 1, "citext does not compare case-insensitively");

    // The service cannot do what the allow-list keeps from it: create an
    // extension that is not trusted, or drop one dbps made.
    let own = app.batch_execute("CREATE EXTENSION dblink").await;
    assert!(own.is_err(), "the service created an untrusted extension");
    let dropped = app.batch_execute("DROP EXTENSION citext CASCADE").await;
    assert!(
        dropped.is_err(),
        "the service dropped an extension dbps made"
    );
    // What it may make itself (a trusted extension) is its own business.
    app.batch_execute("CREATE EXTENSION hstore").await.unwrap();

    // Another service's claim of the same namespace cannot reach them: its
    // credentials do not open the orders database.
    set_extensions(&ctx, "payments-db", json!([])).await;
    ctx.wait_for(&claims, "payments-db", "claim Ready", reason_is("Ready"))
        .await;
    let payments = binding(&ctx, "payments-db").await;
    assert!(
        try_connect(
            &server,
            &payments["username"],
            &payments["password"],
            &orders["database"]
        )
        .await
        .is_err(),
        "payments reached the orders database"
    );
    let theirs = as_app(&server, &payments).await;
    assert_eq!(extensions_of(&theirs).await, ["plpgsql"]);

    // Removed from the claim: pg_partman, unused, goes; citext, which a
    // column uses, stays and is told; hstore, which dbps did not make, stays.
    set_extensions(&ctx, "orders-db", json!([])).await;
    let (type_, note) = wait_event(&ctx, "orders-db", "ExtensionInUse").await;
    assert_eq!(type_, "Warning");
    assert!(note.contains("citext"), "{note}");
    let after = ctx
        .wait_for(
            &claims,
            "orders-db",
            "status lists citext only",
            |c: Option<&DatabaseClaim>| {
                c.and_then(|c| c.status.as_ref())
                    .is_some_and(|s| names(&s.extensions) == ["citext"])
            },
        )
        .await;
    assert_eq!(
        after.status.unwrap().conditions[0].reason,
        "Ready",
        "a kept extension is not a failure"
    );
    assert_eq!(
        extensions_of(&app).await,
        ["citext", "hstore", "plpgsql"],
        "pg_partman was not dropped, or another was"
    );
    let rows: i64 = app
        .query_one("SELECT count(*) FROM emails", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 1, "data was lost");

    // The platform allow-list is the server's: a claim cannot widen it.
    set_extensions(&ctx, "orders-db", json!([{ "name": "dblink" }])).await;
    ctx.wait_for(
        &claims,
        "orders-db",
        "claim refused",
        reason_is("ExtensionNotAllowed"),
    )
    .await;
    assert!(!extensions_of(&app).await.contains(&"dblink".to_string()));
    // The binding stays while the claim is refused.
    assert_eq!(
        binding(&ctx, "orders-db").await["password"],
        orders["password"]
    );

    // An allowed extension the server does not have fails with a reason.
    fixtures::claim(
        &ctx,
        "stock-db",
        json!({ "serviceRef": { "name": "orders" }, "engine": "postgres", "server": { "name": name },
                "deletionPolicy": "Delete", "extensions": [{ "name": "citext" }, { "name": "pg_partman" }] }),
    )
    .await;
    ctx.wait_for(&claims, "stock-db", "claim Ready", reason_is("Ready"))
        .await;
    let servers = kube::Api::<dbps_operator::api::DatabaseServer>::all(ctx.client.clone());
    servers
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "allowedExtensions": ["citext", "pg_partman", "no_such_extension"] } })),
        )
        .await
        .unwrap();
    set_extensions(&ctx, "stock-db", json!([{ "name": "no_such_extension" }])).await;
    let failed = ctx
        .wait_for(
            &claims,
            "stock-db",
            "claim failed",
            reason_is("ExtensionFailed"),
        )
        .await;
    let message = &failed.status.unwrap().conditions[0].message;
    assert!(
        message.contains("no_such_extension") && message.contains("not available"),
        "{message}"
    );
}
