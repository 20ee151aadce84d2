//! Read-only grants: a Service lets a named reporting Service read some of
//! its tables (PostgreSQL) or its whole database (InfluxDB). The reader gets
//! a user that can read exactly that and write nothing, through a Secret only
//! its account reads; another Service without a grant gets nothing, cannot
//! take the grant's Secret over, and the grant ends when it is removed or
//! the claim goes.

use std::collections::BTreeMap;
use std::time::Duration;

use dbps_e2e::TestContext;
use dbps_e2e::claims::{reason_is, secret_values};
use dbps_e2e::databases::{Kind, LocalServer, connect_postgres};
use dbps_e2e::fixtures::{self, wait_event};
use dbps_operator::api::{DatabaseClaim, ReaderStatus};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::api::rbac::v1::Role;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::json;
use tokio_postgres::Client;

async fn connect(server: &LocalServer, b: &BTreeMap<String, String>) -> Result<Client, String> {
    connect_postgres(server, &b["database"], &b["username"], &b["password"]).await
}

async fn values(ctx: &TestContext, secret: &str) -> BTreeMap<String, String> {
    secret_values(&ctx.api::<Secret>().get(secret).await.unwrap())
}

fn readers(claim: Option<&DatabaseClaim>) -> Vec<ReaderStatus> {
    claim
        .and_then(|c| c.status.as_ref())
        .map(|s| s.readers.clone())
        .unwrap_or_default()
}

/// Runs an InfluxQL statement as the binding's user.
async fn influx(
    server: &LocalServer,
    b: &BTreeMap<String, String>,
    q: &str,
) -> Result<serde_json::Value, String> {
    let answer = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{}/query", server.port))
        .basic_auth(&b["username"], Some(&b["password"]))
        .form(&[("q", q), ("db", &b["database"])])
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let body: serde_json::Value = answer.json().await.map_err(|e| e.to_string())?;
    match body["results"][0]["error"]
        .as_str()
        .or(body["error"].as_str())
    {
        Some(e) => Err(e.to_string()),
        None => Ok(body),
    }
}

/// Writes a point as the binding's user.
async fn influx_write(
    server: &LocalServer,
    b: &BTreeMap<String, String>,
    line: &str,
) -> reqwest::StatusCode {
    reqwest::Client::new()
        .post(format!("http://127.0.0.1:{}/write", server.port))
        .basic_auth(&b["username"], Some(&b["password"]))
        .query(&[("db", b["database"].as_str())])
        .body(line.to_string())
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test]
async fn a_reporting_service_reads_what_it_is_granted_and_nothing_else() {
    // A short resync: tables made after the grant are picked up by it. The
    // operator watches every namespace (this binary's plane is its own): a
    // grant reaches a Service of another namespace.
    let ctx = TestContext::new("readers").await.unwrap();
    let _operator = dbps_e2e::RunningOperator::start_all_namespaces(&ctx, Duration::from_secs(3))
        .await
        .unwrap();
    let analytics = dbps_e2e::shared::create_namespace(&ctx.client, "analytics")
        .await
        .unwrap();
    let warehouse: dbps_operator::api::Service = serde_json::from_value(json!({
        "apiVersion": "dbps.io/v1alpha1", "kind": "Service",
        "metadata": { "name": "warehouse", "namespace": analytics }, "spec": {}
    }))
    .unwrap();
    Api::<dbps_operator::api::Service>::namespaced(ctx.client.clone(), &analytics)
        .create(&Default::default(), &warehouse)
        .await
        .unwrap();
    let pg = LocalServer::start(Kind::Postgres).await.unwrap();
    let influxdb = LocalServer::start(Kind::InfluxDb).await.unwrap();
    let (pg_name, influx_name) = (
        format!("{}-pg", ctx.namespace),
        format!("{}-influx", ctx.namespace),
    );
    fixtures::register(&ctx, &pg_name, &pg, json!({})).await;
    fixtures::register(&ctx, &influx_name, &influxdb, json!({})).await;
    for service in [
        "orders",
        "telemetry",
        "reporting",
        "intruder",
        "audit-binding",
    ] {
        fixtures::service(&ctx, service, json!({})).await;
    }
    let claims = ctx.api::<DatabaseClaim>();

    // orders lets reporting read two of its tables, before they exist.
    fixtures::claim(
        &ctx,
        "orders-db",
        json!({ "serviceRef": { "name": "orders" }, "engine": "postgres", "server": { "name": pg_name },
                "deletionPolicy": "Delete",
                "readers": [{ "service": "reporting", "tables": ["orders", "order_totals"] }] }),
    )
    .await;
    let granted = ctx
        .wait_for(
            &claims,
            "orders-db",
            "grant waiting for its tables",
            |c: Option<&DatabaseClaim>| readers(c).first().is_some_and(|r| r.waiting.len() == 2),
        )
        .await;
    assert!(readers(Some(&granted))[0].tables.is_empty());
    let (_, note) = wait_event(&ctx, "orders-db", "ReadGranted").await;
    assert!(
        note.contains("reporting") && note.contains("granted once they exist"),
        "{note}"
    );
    let owner = values(&ctx, "orders-db-binding").await;
    let app = connect(&pg, &owner).await.unwrap();
    app.batch_execute(
        "CREATE TABLE orders (id int, total numeric);
         INSERT INTO orders VALUES (1, 10), (2, 32);
         CREATE VIEW order_totals AS SELECT sum(total) AS total FROM orders;
         CREATE TABLE customers (name text);
         INSERT INTO customers VALUES ('Ann');",
    )
    .await
    .unwrap();
    ctx.wait_for(
        &claims,
        "orders-db",
        "grant complete",
        |c: Option<&DatabaseClaim>| {
            readers(c)
                .first()
                .is_some_and(|r| r.waiting.is_empty() && r.tables == ["order_totals", "orders"])
        },
    )
    .await;

    // The reader's binding: its own user, read-only, on the granted tables only.
    let reader = values(&ctx, "orders-db-reader-reporting").await;
    assert_eq!(reader["database"], owner["database"]);
    assert_ne!(reader["username"], owner["username"]);
    let reporting = connect(&pg, &reader).await.unwrap();
    let total = order_total(&reporting).await;
    assert_eq!(total, "42");
    let count: i64 = reporting
        .query_one("SELECT count(*) FROM orders", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 2);
    for (what, sql) in [
        ("read an ungranted table", "SELECT * FROM customers"),
        ("write a granted table", "INSERT INTO orders VALUES (3, 1)"),
        ("delete from a granted table", "DELETE FROM orders"),
        ("create a table", "CREATE TABLE mine (x int)"),
        (
            "grant itself more",
            "GRANT SELECT ON customers TO CURRENT_USER",
        ),
    ] {
        assert!(
            reporting.batch_execute(sql).await.is_err(),
            "the reader could {what}"
        );
    }

    // Only reporting's account may read that Secret, and the ownership table
    // puts reporting, not orders, in front of it.
    let table = ctx
        .api::<ConfigMap>()
        .get("dbps-bindings-reporting")
        .await
        .unwrap();
    assert_eq!(
        table.data.unwrap()["secret.orders-db-reader-reporting"],
        "reporting"
    );
    assert_eq!(
        fixtures::table_entry(
            &ctx.client,
            &ctx.namespace,
            "secret.orders-db-reader-reporting"
        )
        .await
        .as_deref(),
        Some("reporting"),
        "no other table names the reader's Secret"
    );
    let role = ctx
        .api::<Role>()
        .get("dbps-reporting-binding-reader")
        .await
        .unwrap();
    assert_eq!(
        role.rules.unwrap()[0].resource_names.clone().unwrap(),
        ["orders-db-reader-reporting"]
    );
    let account = |sa: &str| format!("system:serviceaccount:{}:{sa}", ctx.namespace);
    let groups = ["system:serviceaccounts"];
    for (sa, allowed) in [("reporting", true), ("intruder", false), ("orders", false)] {
        let client = ctx.plane().client_for(&account(sa), &groups).await.unwrap();
        let api: Api<Secret> = Api::namespaced(client, &ctx.namespace);
        let mut read = api.get("orders-db-reader-reporting").await;
        for _ in 0..50 {
            if read.is_ok() == allowed {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            read = api.get("orders-db-reader-reporting").await;
        }
        assert_eq!(read.is_ok(), allowed, "{sa}: {:?}", read.err());
    }

    // Another Service without a grant: its own credentials do not open the
    // orders database, and naming its claim so that a grant's Secret would
    // land on another claim's binding takes nothing over.
    fixtures::claim(
        &ctx,
        "intruder-db",
        json!({ "serviceRef": { "name": "intruder" }, "engine": "postgres", "server": { "name": pg_name }, "deletionPolicy": "Delete" }),
    )
    .await;
    ctx.wait_for(&claims, "intruder-db", "Ready", reason_is("Ready"))
        .await;
    let mut intruder = values(&ctx, "intruder-db-binding").await;
    intruder.insert("database".into(), owner["database"].clone());
    assert!(
        connect(&pg, &intruder).await.is_err(),
        "intruder reached the orders database"
    );
    fixtures::claim(
        &ctx,
        "shop-reader-audit",
        json!({ "serviceRef": { "name": "orders" }, "engine": "postgres", "server": { "name": pg_name }, "deletionPolicy": "Delete" }),
    )
    .await;
    ctx.wait_for(&claims, "shop-reader-audit", "Ready", reason_is("Ready"))
        .await;
    let victim = values(&ctx, "shop-reader-audit-binding").await;
    fixtures::claim(
        &ctx,
        "shop",
        json!({ "serviceRef": { "name": "intruder" }, "engine": "postgres", "server": { "name": pg_name },
                "deletionPolicy": "Delete", "readers": [{ "service": "audit-binding", "tables": ["t"] }] }),
    )
    .await;
    // The grant is not issued (told by a Warning event); the claim's own
    // database and binding are not held up by it.
    let (type_, note) = wait_event(&ctx, "shop", "ObjectOwnedByAnotherService").await;
    assert_eq!(type_, "Warning");
    assert!(note.contains("shop-reader-audit-binding"), "{note}");
    let shop = ctx
        .wait_for(&claims, "shop", "Ready", reason_is("Ready"))
        .await;
    assert!(readers(Some(&shop)).is_empty(), "a grant was recorded");
    assert_eq!(
        values(&ctx, "shop-reader-audit-binding").await,
        victim,
        "the binding was taken over"
    );
    // Taking the entry away does not delete the other claim's Secret.
    claims
        .patch(
            "shop",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "readers": null } })),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        values(&ctx, "shop-reader-audit-binding").await,
        victim,
        "the other claim's binding was deleted"
    );

    // Taking a table out of the grant takes its privilege back.
    claims
        .patch(
            "orders-db",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "readers": [{ "service": "reporting", "tables": ["order_totals"] }] } })),
        )
        .await
        .unwrap();
    ctx.wait_for(
        &claims,
        "orders-db",
        "grant narrowed",
        |c: Option<&DatabaseClaim>| {
            readers(c)
                .first()
                .is_some_and(|r| r.tables == ["order_totals"])
        },
    )
    .await;
    let reporting = connect(&pg, &reader).await.unwrap();
    assert!(
        reporting
            .batch_execute("SELECT * FROM orders")
            .await
            .is_err(),
        "orders still readable"
    );
    order_total(&reporting).await;

    // Removing the grant ends it: the user goes, then its Secret, the table
    // entry and the Role's rule.
    claims
        .patch(
            "orders-db",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "readers": null } })),
        )
        .await
        .unwrap();
    let (_, note) = wait_event(&ctx, "orders-db", "ReadRevoked").await;
    assert!(note.contains("reporting"), "{note}");
    ctx.wait_for(
        &claims,
        "orders-db",
        "no grant",
        |c: Option<&DatabaseClaim>| readers(c).is_empty(),
    )
    .await;
    assert!(
        connect(&pg, &reader).await.is_err(),
        "the revoked reader still logs in"
    );
    ctx.wait_gone(
        &ctx.api::<Secret>(),
        "orders-db-reader-reporting",
        "reader Secret deleted",
    )
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let entry = fixtures::table_entry(
            &ctx.client,
            &ctx.namespace,
            "secret.orders-db-reader-reporting",
        )
        .await;
        let role = ctx
            .api::<Role>()
            .get("dbps-reporting-binding-reader")
            .await
            .unwrap();
        if entry.is_none() && role.rules.unwrap_or_default().is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the grant stayed in the table or the Role"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // InfluxDB, to a Service of another namespace: the whole database, read
    // only, through a Secret in the reader's namespace that only its account
    // reads; the grant ends with the claim.
    fixtures::claim(
        &ctx,
        "telemetry-db",
        json!({ "serviceRef": { "name": "telemetry" }, "engine": "influxdb", "server": { "name": influx_name },
                "deletionPolicy": "Retain", "readers": [{ "service": "warehouse", "namespace": analytics }] }),
    )
    .await;
    ctx.wait_for(
        &claims,
        "telemetry-db",
        "granted",
        |c: Option<&DatabaseClaim>| readers(c).len() == 1,
    )
    .await;
    let telemetry = values(&ctx, "telemetry-db-binding").await;
    assert!(
        influx_write(&influxdb, &telemetry, "temperature,device=d1 value=21.5")
            .await
            .is_success()
    );
    let secret_name = format!("{}-telemetry-db-reader-warehouse", ctx.namespace);
    let analytics_secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &analytics);
    let reader = secret_values(&analytics_secrets.get(&secret_name).await.unwrap());
    assert!(
        fixtures::secret(&ctx, &secret_name).await.is_none(),
        "the reader's Secret is in the owner's namespace"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let fenced =
            fixtures::table_entry(&ctx.client, &analytics, &format!("secret.{secret_name}")).await;
        if fenced.as_deref() == Some("warehouse") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "analytics' table does not fence the Secret"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (ns, sa, allowed) in [
        (analytics.as_str(), "warehouse", true),
        (analytics.as_str(), "default", false),
        (ctx.namespace.as_str(), "telemetry", false),
    ] {
        let user = format!("system:serviceaccount:{ns}:{sa}");
        let client = ctx
            .plane()
            .client_for(&user, &["system:serviceaccounts"])
            .await
            .unwrap();
        let api: Api<Secret> = Api::namespaced(client, &analytics);
        let mut read = api.get(&secret_name).await;
        for _ in 0..50 {
            if read.is_ok() == allowed {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            read = api.get(&secret_name).await;
        }
        assert_eq!(read.is_ok(), allowed, "{ns}/{sa}: {:?}", read.err());
    }
    let read = influx(&influxdb, &reader, "SELECT mean(value) FROM temperature")
        .await
        .unwrap();
    assert_eq!(read["results"][0]["series"][0]["values"][0][1], 21.5);
    assert!(
        !influx_write(&influxdb, &reader, "temperature,device=d2 value=99")
            .await
            .is_success(),
        "the reader wrote"
    );
    assert!(
        influx(&influxdb, &reader, "DROP MEASUREMENT temperature")
            .await
            .is_err()
    );
    claims
        .delete("telemetry-db", &DeleteParams::default())
        .await
        .unwrap();
    ctx.wait_gone(&claims, "telemetry-db", "claim gone").await;
    assert!(
        influx(&influxdb, &reader, "SELECT mean(value) FROM temperature")
            .await
            .is_err(),
        "the reader outlived the claim"
    );
    assert!(
        influx(&influxdb, &telemetry, "SELECT mean(value) FROM temperature")
            .await
            .is_ok(),
        "Retain lost the owner's access"
    );
    ctx.wait_gone(
        &analytics_secrets,
        &secret_name,
        "reader Secret deleted with the claim",
    )
    .await;
}

/// The view's total, as text.
async fn order_total(client: &tokio_postgres::Client) -> String {
    client
        .query_one("SELECT total::text FROM order_totals", &[])
        .await
        .unwrap()
        .get(0)
}
