//! Shared placement against real servers: a claim on a registered
//! `DatabaseServer` gets a working database and user that other claims'
//! credentials cannot use; deletion drops or keeps them; faults converge.

use std::collections::BTreeMap;
use std::time::Duration;

use dbps_e2e::claims::{grant_of, reason_is, secret_values};
use dbps_e2e::databases::{Kind, LocalServer, round_trip};
use dbps_e2e::{RunningOperator, TestContext};
use dbps_operator::api::{ClaimPhase, DatabaseClaim, DatabaseServer, Engine};
use dbps_operator::engines::Connection;
use dbps_operator::servers::Servers;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

async fn setup(test: &str) -> (TestContext, RunningOperator) {
    dbps_e2e::fixtures::with_operator(test, Duration::from_secs(300)).await
}

/// Registers `server` as DatabaseServer `<ns>-<engine>` with an admin Secret in the test namespace.
async fn register(
    ctx: &TestContext,
    server: &LocalServer,
    engine: Engine,
    extra: serde_json::Value,
) -> String {
    let name = format!("{}-{}", ctx.namespace, engine.as_str());
    register_as(ctx, &name, server, engine, extra).await
}

/// Registers `server` as DatabaseServer `name`.
async fn register_as(
    ctx: &TestContext,
    name: &str,
    server: &LocalServer,
    engine: Engine,
    extra: serde_json::Value,
) -> String {
    assert_eq!(server.kind.engine(), engine);
    dbps_e2e::fixtures::register(ctx, name, server, extra).await;
    name.to_string()
}

async fn service(ctx: &TestContext, name: &str) {
    dbps_e2e::fixtures::service(ctx, name, json!({})).await;
}

async fn claim(
    ctx: &TestContext,
    name: &str,
    service: &str,
    engine: Engine,
    server: &str,
    policy: &str,
) {
    let spec = json!({ "serviceRef": { "name": service }, "engine": engine.as_str(), "server": { "name": server }, "deletionPolicy": policy });
    dbps_e2e::fixtures::claim(ctx, name, spec).await;
}

/// The values of claim's first binding Secret.
async fn binding(ctx: &TestContext, claim: &str) -> BTreeMap<String, String> {
    secret_values(
        &ctx.api::<Secret>()
            .get(&format!("{claim}-binding"))
            .await
            .unwrap(),
    )
}

fn admin(server: &LocalServer, engine: Engine) -> Connection {
    server.admin_connection(engine)
}

async fn lifecycle(kind: Kind, engine: Engine) {
    let (ctx, _operator) = setup(&format!("shared-{}", engine.as_str())).await;
    let server = LocalServer::start(kind).await.unwrap();
    let name = register(&ctx, &server, engine, json!({})).await;
    let servers: Api<DatabaseServer> = Api::all(ctx.client.clone());
    let registered = ctx
        .wait_for(&servers, &name, "server Reachable", reachable("True"))
        .await;
    assert!(
        registered
            .status
            .unwrap()
            .version
            .is_some_and(|v| !v.is_empty())
    );

    service(&ctx, "orders").await;
    service(&ctx, "payments").await;
    claim(&ctx, "orders-db", "orders", engine, &name, "Delete").await;
    claim(&ctx, "payments-db", "payments", engine, &name, "Retain").await;
    let claims = ctx.api::<DatabaseClaim>();
    for c in ["orders-db", "payments-db"] {
        let ready = ctx
            .wait_for(&claims, c, "claim Ready", reason_is("Ready"))
            .await;
        let status = ready.status.unwrap();
        assert_eq!(status.phase, Some(ClaimPhase::Ready));
        assert_eq!(status.binding.unwrap().name, format!("{c}-binding"));
        assert_eq!(status.endpoint.unwrap().port, i32::from(server.port));
    }
    let orders = binding(&ctx, "orders-db").await;
    let payments = binding(&ctx, "payments-db").await;
    let ns = ctx.namespace.replace('-', "_");
    assert_eq!(orders["database"], format!("{ns}_orders_db"));
    assert_eq!(orders["username"], format!("{ns}_orders_db_app"));
    assert_eq!(orders["host"], "127.0.0.1");
    assert_eq!(orders["port"], server.port.to_string());
    assert_eq!(orders["type"], engine.instance().binding_type());

    // Each service's credentials work on its own database ...
    for b in [&orders, &payments] {
        let read = round_trip(
            &server,
            engine,
            &b["database"],
            &b["username"],
            &b["password"],
        )
        .await;
        assert!(read.is_ok(), "{engine:?}: {read:?}");
    }
    // ... and are refused on the other's.
    let crossed = round_trip(
        &server,
        engine,
        &orders["database"],
        &payments["username"],
        &payments["password"],
    )
    .await;
    assert!(
        crossed.is_err(),
        "{engine:?}: payments reached the orders database"
    );

    ctx.wait_for(
        &servers,
        &name,
        "server counts 2 claims",
        |s: Option<&DatabaseServer>| {
            s.and_then(|s| s.status.as_ref())
                .is_some_and(|s| s.claims == 2)
        },
    )
    .await;

    // Delete drops the database and the user; Retain keeps them and the Secret.
    let admin_servers = Servers::default();
    let conn = admin(&server, engine);
    claims
        .delete("orders-db", &DeleteParams::default())
        .await
        .unwrap();
    ctx.wait_gone(&claims, "orders-db", "orders claim gone")
        .await;
    assert!(
        !admin_servers.can_login(&conn, &grant_of(&orders)).await,
        "orders user survived Delete"
    );
    claims
        .delete("payments-db", &DeleteParams::default())
        .await
        .unwrap();
    ctx.wait_gone(&claims, "payments-db", "payments claim gone")
        .await;
    assert!(
        admin_servers.can_login(&conn, &grant_of(&payments)).await,
        "Retain lost the payments user"
    );
    let kept = ctx
        .api::<Secret>()
        .get("payments-db-binding")
        .await
        .unwrap();
    assert!(
        kept.metadata
            .owner_references
            .unwrap_or_default()
            .is_empty()
    );
    let secrets = ctx.api::<Secret>();
    ctx.wait_gone(&secrets, "orders-db-binding", "orders binding collected")
        .await;
}

#[tokio::test]
async fn postgres_shared_claims() {
    lifecycle(Kind::Postgres, Engine::Postgres).await;
}

#[tokio::test]
async fn mongodb_shared_claims() {
    lifecycle(Kind::FerretDb, Engine::Mongodb).await;
}

#[tokio::test]
async fn opensearch_shared_claims() {
    lifecycle(Kind::OpenSearch, Engine::Opensearch).await;
}

#[tokio::test]
async fn influxdb_shared_claims() {
    lifecycle(Kind::InfluxDb, Engine::Influxdb).await;
}

/// A server's status takes its last answer for a moment (a burst of claims
/// passes it every few seconds); a claim that cannot reach it has it asked
/// again at once, not at the resync (300 s here).
#[tokio::test]
async fn a_server_that_stops_answering_is_reported_once_a_claim_cannot_reach_it() {
    let (ctx, _operator) = setup("server-frozen").await;
    let server = LocalServer::start(Kind::InfluxDb).await.unwrap();
    let name = register(&ctx, &server, Engine::Influxdb, json!({})).await;
    let servers: Api<DatabaseServer> = Api::all(ctx.client.clone());
    ctx.wait_for(&servers, &name, "server Reachable", reachable("True"))
        .await;
    server.freeze();
    service(&ctx, "orders").await;
    claim(
        &ctx,
        "orders-db",
        "orders",
        Engine::Influxdb,
        &name,
        "Delete",
    )
    .await;
    let claims = ctx.api::<DatabaseClaim>();
    ctx.wait_for(
        &claims,
        "orders-db",
        "ServerUnreachable",
        reason_is("ServerUnreachable"),
    )
    .await;
    ctx.wait_for(
        &servers,
        &name,
        "server not Reachable",
        unreachable_because("ServerUnreachable"),
    )
    .await;
    server.thaw();
    ctx.wait_for(&claims, "orders-db", "claim Ready", reason_is("Ready"))
        .await;
    ctx.wait_for(&servers, &name, "server Reachable again", reachable("True"))
        .await;
}

#[tokio::test]
async fn a_claim_made_while_the_server_is_down_becomes_ready_when_it_is_back() {
    let (ctx, _operator) = setup("server-down").await;
    let mut server = LocalServer::start(Kind::Postgres).await.unwrap();
    let name = register(&ctx, &server, Engine::Postgres, json!({})).await;
    server.pause();
    service(&ctx, "orders").await;
    claim(
        &ctx,
        "orders-db",
        "orders",
        Engine::Postgres,
        &name,
        "Delete",
    )
    .await;
    let claims = ctx.api::<DatabaseClaim>();
    let down = ctx
        .wait_for(
            &claims,
            "orders-db",
            "ServerUnreachable",
            reason_is("ServerUnreachable"),
        )
        .await;
    assert_eq!(down.status.unwrap().phase, Some(ClaimPhase::Provisioning));
    let servers: Api<DatabaseServer> = Api::all(ctx.client.clone());
    ctx.wait_for(
        &servers,
        &name,
        "server not Reachable",
        unreachable_because("ServerUnreachable"),
    )
    .await;

    server.resume().await.unwrap();
    ctx.wait_for(&claims, "orders-db", "claim Ready", reason_is("Ready"))
        .await;
    let b = binding(&ctx, "orders-db").await;
    assert!(
        round_trip(
            &server,
            Engine::Postgres,
            &b["database"],
            &b["username"],
            &b["password"]
        )
        .await
        .is_ok()
    );
}

#[tokio::test]
async fn deleting_while_the_server_is_down_retries_and_the_escape_hatch_lets_go() {
    let (ctx, _operator) = setup("cleanup-down").await;
    let mut server = LocalServer::start(Kind::Postgres).await.unwrap();
    let name = register(&ctx, &server, Engine::Postgres, json!({})).await;
    service(&ctx, "orders").await;
    claim(&ctx, "first", "orders", Engine::Postgres, &name, "Delete").await;
    claim(&ctx, "second", "orders", Engine::Postgres, &name, "Delete").await;
    let claims = ctx.api::<DatabaseClaim>();
    for c in ["first", "second"] {
        ctx.wait_for(&claims, c, "claim Ready", reason_is("Ready"))
            .await;
    }
    let first = binding(&ctx, "first").await;

    server.pause();
    for c in ["first", "second"] {
        claims.delete(c, &DeleteParams::default()).await.unwrap();
    }
    for c in ["first", "second"] {
        let stuck = ctx
            .wait_for(&claims, c, "CleanupFailed", reason_is("CleanupFailed"))
            .await;
        assert_eq!(stuck.status.unwrap().phase, Some(ClaimPhase::Deleting));
    }
    // The escape hatch: the second claim goes without touching the server.
    let skip = json!({ "metadata": { "annotations": { "dbps.io/skip-cleanup": "true" } } });
    claims
        .patch("second", &PatchParams::default(), &Patch::Merge(skip))
        .await
        .unwrap();
    ctx.wait_gone(&claims, "second", "second claim gone via skip-cleanup")
        .await;

    // The first is cleaned up once the server is back.
    server.resume().await.unwrap();
    ctx.wait_gone(
        &claims,
        "first",
        "first claim gone after the server returned",
    )
    .await;
    let conn = admin(&server, Engine::Postgres);
    assert!(!Servers::default().can_login(&conn, &grant_of(&first)).await);
}

#[tokio::test]
async fn a_server_refuses_namespaces_it_does_not_allow() {
    let (ctx, _operator) = setup("not-allowed").await;
    let server = LocalServer::start(Kind::InfluxDb).await.unwrap();
    let name = register(
        &ctx,
        &server,
        Engine::Influxdb,
        json!({ "allowedNamespaces": ["somebody-else"] }),
    )
    .await;
    service(&ctx, "telemetry").await;
    claim(
        &ctx,
        "readings",
        "telemetry",
        Engine::Influxdb,
        &name,
        "Delete",
    )
    .await;
    let claims = ctx.api::<DatabaseClaim>();
    let refused = ctx
        .wait_for(
            &claims,
            "readings",
            "NamespaceNotAllowed",
            reason_is("NamespaceNotAllowed"),
        )
        .await;
    assert_eq!(refused.status.unwrap().phase, Some(ClaimPhase::Failed));
    assert!(
        ctx.api::<Secret>()
            .get_opt("readings-binding")
            .await
            .unwrap()
            .is_none()
    );

    let allow = json!({ "spec": { "allowedNamespaces": ["somebody-else", ctx.namespace] } });
    Api::<DatabaseServer>::all(ctx.client.clone())
        .patch(&name, &PatchParams::default(), &Patch::Merge(allow))
        .await
        .unwrap();
    ctx.wait_for(&claims, "readings", "claim Ready", reason_is("Ready"))
        .await;
}

#[tokio::test]
async fn rotation_swaps_the_binding_and_revokes_the_old_password_after_the_grace_period() {
    let (ctx, _operator) = setup("rotation").await;
    let server = LocalServer::start(Kind::Postgres).await.unwrap();
    let name = register(&ctx, &server, Engine::Postgres, json!({})).await;
    service(&ctx, "payments").await;
    let c: DatabaseClaim = serde_json::from_value(json!({
        "apiVersion": "dbps.io/v1alpha1", "kind": "DatabaseClaim", "metadata": { "name": "payments-db" },
        "spec": { "serviceRef": { "name": "payments" }, "engine": "postgres", "server": { "name": name },
                  "deletionPolicy": "Delete", "rotation": { "gracePeriodSeconds": 4 } }
    }))
    .unwrap();
    let claims = ctx.api::<DatabaseClaim>();
    claims.create(&PostParams::default(), &c).await.unwrap();
    ctx.wait_for(&claims, "payments-db", "claim Ready", reason_is("Ready"))
        .await;
    let old = binding(&ctx, "payments-db").await;
    let conn = admin(&server, Engine::Postgres);

    // Watch, every 100 ms, that the credentials status.binding.name points at log in ...
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let watcher = {
        let (claims, secrets, conn) = (claims.clone(), ctx.api::<Secret>(), conn.clone());
        tokio::spawn(async move {
            let servers = Servers::default();
            let (mut samples, mut failures) = (0, Vec::new());
            while stopped.try_recv().is_err() {
                let current = claims
                    .get("payments-db")
                    .await
                    .unwrap()
                    .status
                    .unwrap()
                    .binding
                    .unwrap()
                    .name;
                // ... and so do those of the stable binding pods mount.
                for name in [current, "payments-db-binding".to_string()] {
                    let values = secret_values(&secrets.get(&name).await.unwrap());
                    samples += 1;
                    if !servers.can_login(&conn, &grant_of(&values)).await {
                        failures.push(name);
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (samples, failures)
        })
    };

    dbps_e2e::fixtures::request_rotation(&ctx, "payments-db", "2026-11-24").await;
    let rotated = ctx
        .wait_for(
            &claims,
            "payments-db",
            "binding swapped",
            |c: Option<&DatabaseClaim>| {
                c.and_then(|c| c.status.as_ref())
                    .and_then(|s| s.binding.as_ref())
                    .is_some_and(|b| b.name == "payments-db-binding-1")
            },
        )
        .await;
    let creds = rotated.status.unwrap().credentials.unwrap();
    assert_eq!(creds.generation, 1);
    assert_eq!(
        creds.previous.as_ref().unwrap().secret,
        "payments-db-binding"
    );
    let rotated_secret = ctx
        .api::<Secret>()
        .get("payments-db-binding-1")
        .await
        .unwrap();
    assert_eq!(rotated_secret.immutable, Some(true));
    let new = secret_values(&rotated_secret);
    assert_ne!(new["password"], old["password"]);
    assert_ne!(new["username"], old["username"]);
    let servers = Servers::default();
    assert!(
        servers.can_login(&conn, &grant_of(&new)).await,
        "new credentials work"
    );
    assert!(
        servers.can_login(&conn, &grant_of(&old)).await,
        "old credentials work during the grace period"
    );
    // The service account may read both Secrets during the grace period.
    let both = ["payments-db-binding", "payments-db-binding-1"];
    ctx.wait_for(
        &ctx.api::<k8s_openapi::api::rbac::v1::Role>(),
        "dbps-payments-binding-reader",
        "the Service's Role lists both Secrets",
        |r: Option<&k8s_openapi::api::rbac::v1::Role>| {
            r.and_then(|r| r.rules.as_ref()?.first()?.resource_names.clone())
                .is_some_and(|n| n == both)
        },
    )
    .await;
    // The stable binding holds the new credentials: a pod that mounts it
    // gets them when the kubelet refreshes its files.
    assert_eq!(binding(&ctx, "payments-db").await, new);

    // After the grace period the old password is revoked; the stable binding stays.
    ctx.wait_for(
        &claims,
        "payments-db",
        "previous credentials revoked",
        |c: Option<&DatabaseClaim>| {
            c.and_then(|c| c.status.as_ref()?.credentials.as_ref())
                .is_some_and(|c| c.previous.is_none())
        },
    )
    .await;
    assert!(
        !servers.can_login(&conn, &grant_of(&old)).await,
        "old credentials still work"
    );
    assert!(servers.can_login(&conn, &grant_of(&new)).await);
    // Data written under the old user is the new user's too.
    let read = round_trip(
        &server,
        Engine::Postgres,
        &new["database"],
        &new["username"],
        &new["password"],
    )
    .await;
    assert!(read.is_ok(), "{read:?}");

    let _ = stop.send(());
    let (samples, failures) = watcher.await.unwrap();
    assert!(samples > 20, "only {samples} samples");
    assert!(
        failures.is_empty(),
        "moments without working credentials: {failures:?}"
    );
}

#[tokio::test]
async fn an_operator_restart_in_the_middle_of_fifty_claims_leaves_no_duplicates_or_orphans() {
    let ctx = TestContext::new("restart").await.unwrap();
    let first = RunningOperator::start(&ctx, Duration::from_secs(300))
        .await
        .unwrap();
    let server = LocalServer::start(Kind::Postgres).await.unwrap();
    let name = register(&ctx, &server, Engine::Postgres, json!({})).await;
    service(&ctx, "orders").await;
    let names: Vec<String> = (0..50).map(|i| format!("c{i:02}")).collect();
    for n in &names {
        claim(&ctx, n, "orders", Engine::Postgres, &name, "Delete").await;
    }
    let claims = ctx.api::<DatabaseClaim>();
    let ready_count = || async {
        claims
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .iter()
            .filter(|c| c.status.as_ref().and_then(|s| s.phase) == Some(ClaimPhase::Ready))
            .count()
    };
    // Crash the operator (its task is aborted mid-flight) once some claims are done.
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while ready_count().await < 5 {
        assert!(
            std::time::Instant::now() < deadline,
            "no progress before the crash"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(first);
    let at_crash = ready_count().await;
    assert!(
        at_crash < 50,
        "all claims were done before the crash: nothing was interrupted"
    );

    let _second = RunningOperator::start(&ctx, Duration::from_secs(300))
        .await
        .unwrap();
    for n in &names {
        ctx.wait_for(
            &claims,
            n,
            "claim Ready after the restart",
            reason_is("Ready"),
        )
        .await;
    }

    // Exactly one database, one login role and one owner role per claim.
    let conninfo = format!(
        "host=127.0.0.1 port={} user=admin password={} dbname=postgres",
        server.port, server.admin_password
    );
    let (client, c) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(c);
    let prefix = format!("{}_c", ctx.namespace.replace('-', "_"));
    let count = |sql: &'static str| {
        let (client, like) = (&client, format!("{prefix}%"));
        async move {
            client
                .query_one(sql, &[&like])
                .await
                .unwrap()
                .get::<_, i64>(0)
        }
    };
    assert_eq!(
        count("SELECT count(*) FROM pg_database WHERE datname LIKE $1").await,
        50
    );
    assert_eq!(
        count("SELECT count(*) FROM pg_roles WHERE rolname LIKE $1 AND rolname LIKE '%\\_app' AND rolcanlogin").await,
        50
    );
    assert_eq!(
        count("SELECT count(*) FROM pg_roles WHERE rolname LIKE $1 AND rolname LIKE '%\\_owner'")
            .await,
        50
    );
    assert_eq!(
        count("SELECT count(*) FROM pg_roles WHERE rolname LIKE $1").await,
        100,
        "no other roles"
    );
    let secrets = ctx
        .api::<Secret>()
        .list(&Default::default())
        .await
        .unwrap()
        .items;
    let bindings = secrets
        .iter()
        .filter(|s| s.type_.as_deref() == Some("servicebinding.io/postgresql"))
        .count();
    assert_eq!(bindings, 50);
    // And every binding works.
    let servers = Servers::default();
    let conn = admin(&server, Engine::Postgres);
    for s in secrets
        .into_iter()
        .filter(|s| s.type_.as_deref() == Some("servicebinding.io/postgresql"))
    {
        let values = secret_values(&s);
        assert!(
            servers.can_login(&conn, &grant_of(&values)).await,
            "{}",
            values["database"]
        );
    }
    eprintln!("{at_crash} of 50 claims were Ready when the operator crashed");
}

fn reachable(expected: &'static str) -> impl Fn(Option<&DatabaseServer>) -> bool {
    move |s| reachable_condition(s).is_some_and(|c| c.status == expected)
}

/// A server not Reachable for `reason`.
fn unreachable_because(reason: &'static str) -> impl Fn(Option<&DatabaseServer>) -> bool {
    move |s| reachable_condition(s).is_some_and(|c| c.status == "False" && c.reason == reason)
}

/// A server's `Reachable` condition, once it has one.
fn reachable_condition(
    server: Option<&DatabaseServer>,
) -> Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    let status = server?.status.as_ref()?;
    dbps_operator::api::find_condition(&status.conditions, "Reachable")
}

/// A server that accepts TLS only is reached over TLS, verified against the
/// CA of its registration; the binding tells the service to use TLS too.
async fn over_tls(kind: Kind, engine: Engine, uri_mark: &str) {
    let (ctx, _operator) = setup(&format!("tls-{}", engine.as_str())).await;
    let server = LocalServer::start_tls(kind).await.unwrap();
    let ca = server.ca_pem.clone().unwrap();
    let secret: Secret = serde_json::from_value(json!({
        "metadata": { "name": "server-ca" }, "stringData": { "ca.crt": ca }
    }))
    .unwrap();
    ctx.api::<Secret>()
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let tls = json!({ "tls": { "enabled": true, "caSecretRef": { "namespace": ctx.namespace, "name": "server-ca" } } });
    let name = register(&ctx, &server, engine, tls).await;
    let plain = register_as(&ctx, &format!("{name}-plain"), &server, engine, json!({})).await;
    let servers: Api<DatabaseServer> = Api::all(ctx.client.clone());
    ctx.wait_for(
        &servers,
        &name,
        "TLS registration Reachable",
        reachable("True"),
    )
    .await;
    ctx.wait_for(
        &servers,
        &plain,
        "plain registration not Reachable",
        reachable("False"),
    )
    .await;

    service(&ctx, "svc").await;
    claim(&ctx, "db", "svc", engine, &name, "Delete").await;
    let claims = ctx.api::<DatabaseClaim>();
    ctx.wait_for(&claims, "db", "claim Ready over TLS", reason_is("Ready"))
        .await;
    let values = binding(&ctx, "db").await;
    assert_eq!(values["ca.crt"], ca);
    assert!(values["uri"].contains(uri_mark), "{}", values["uri"]);
    let servers = Servers::default();
    assert!(
        servers
            .can_login(&admin(&server, engine), &grant_of(&values))
            .await
    );
}

#[tokio::test]
async fn postgres_over_tls() {
    over_tls(Kind::Postgres, Engine::Postgres, "sslmode=verify-full").await;
}

#[tokio::test]
async fn influxdb_over_tls() {
    over_tls(Kind::InfluxDb, Engine::Influxdb, "https://").await;
}

#[tokio::test]
async fn mongodb_wire_over_tls() {
    over_tls(Kind::FerretDb, Engine::Mongodb, "tls=true").await;
}

/// A registration whose CA Secret holds another CA fails its handshakes
/// (`ServerTlsFailed`), and the right CA put in that Secret is used at the
/// next check: a CA a handshake failed with is not kept (for the minute a
/// CA is otherwise remembered). A claim made meanwhile gets Ready.
async fn ca_fixed(kind: Kind, engine: Engine) {
    let (ctx, _operator) = setup(&format!("ca-fix-{}", engine.as_str())).await;
    let server = LocalServer::start_tls(kind).await.unwrap();
    // A CA that did not sign the server's certificate: the control plane's.
    let other_ca = std::fs::read_to_string(ctx.plane().ca_file()).unwrap();
    assert_ne!(Some(&other_ca), server.ca_pem.as_ref());
    let secrets = ctx.api::<Secret>();
    let secret: Secret = serde_json::from_value(json!({
        "metadata": { "name": "server-ca" }, "stringData": { "ca.crt": other_ca }
    }))
    .unwrap();
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let tls = json!({ "tls": { "enabled": true, "caSecretRef": { "namespace": ctx.namespace, "name": "server-ca" } } });
    let name = register(&ctx, &server, engine, tls).await;
    let servers: Api<DatabaseServer> = Api::all(ctx.client.clone());
    let failed = ctx
        .wait_for(
            &servers,
            &name,
            "ServerTlsFailed",
            unreachable_because("ServerTlsFailed"),
        )
        .await;
    let message = &reachable_condition(Some(&failed)).unwrap().message;
    assert!(message.contains("certificate"), "{message}");
    service(&ctx, "svc").await;
    claim(&ctx, "db", "svc", engine, &name, "Delete").await;

    let fix = json!({ "stringData": { "ca.crt": server.ca_pem.clone().unwrap() } });
    secrets
        .patch("server-ca", &PatchParams::default(), &Patch::Merge(fix))
        .await
        .unwrap();
    // An unreachable server is checked every 15 s; the failed CA, were it
    // kept, would be used for 60 s.
    ctx.wait_for_within(
        &servers,
        &name,
        "Reachable with the CA put right",
        Duration::from_secs(40),
        reachable("True"),
    )
    .await;
    let claims = ctx.api::<DatabaseClaim>();
    ctx.wait_for(&claims, "db", "claim Ready over TLS", reason_is("Ready"))
        .await;
    assert_eq!(
        binding(&ctx, "db").await["ca.crt"],
        server.ca_pem.clone().unwrap()
    );
}

#[tokio::test]
async fn postgres_ca_put_right_after_a_failed_handshake_is_used() {
    ca_fixed(Kind::Postgres, Engine::Postgres).await;
}

#[tokio::test]
async fn influxdb_ca_put_right_after_a_failed_handshake_is_used() {
    ca_fixed(Kind::InfluxDb, Engine::Influxdb).await;
}

#[tokio::test]
async fn mongodb_wire_ca_put_right_after_a_failed_handshake_is_used() {
    ca_fixed(Kind::FerretDb, Engine::Mongodb).await;
}

/// A TCP proxy to `upstream` that holds every connection, unanswered, until
/// `open` is set: a server that has stalled, then recovers.
async fn stalling_proxy(upstream: u16) -> (u16, tokio::sync::watch::Sender<bool>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (open, opened) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let mut opened = opened.clone();
            tokio::spawn(async move {
                if opened.wait_for(|open| *open).await.is_err() {
                    return;
                }
                if let Ok(mut server) =
                    tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    (port, open)
}

#[tokio::test]
async fn a_stalled_server_holds_up_no_other_server_and_a_server_registered_late_is_used() {
    let (ctx, _operator) = setup("turns").await;
    service(&ctx, "orders").await;
    let claims = ctx.api::<DatabaseClaim>();
    // A claim on a server nobody registered yet waits for it.
    let late = format!("{}-late", ctx.namespace);
    claim(
        &ctx,
        "early-db",
        "orders",
        Engine::Postgres,
        &late,
        "Delete",
    )
    .await;
    ctx.wait_for(
        &claims,
        "early-db",
        "ServerNotFound",
        reason_is("ServerNotFound"),
    )
    .await;

    let healthy = LocalServer::start(Kind::Postgres).await.unwrap();
    // Forty claims on a server that takes one connection at a time and has
    // stalled: connections are accepted and never answered.
    let stalled = LocalServer::start(Kind::Postgres).await.unwrap();
    let (proxy, open) = stalling_proxy(stalled.port).await;
    let stalled_name = register_as(
        &ctx,
        &format!("{}-stalled", ctx.namespace),
        &stalled,
        Engine::Postgres,
        json!({ "port": proxy, "maxConnections": 1 }),
    )
    .await;
    let stuck: Vec<String> = (0..40).map(|i| format!("stuck-{i:02}")).collect();
    for name in &stuck {
        claim(
            &ctx,
            name,
            "orders",
            Engine::Postgres,
            &stalled_name,
            "Delete",
        )
        .await;
    }

    // The late server is registered: the waiting claim and new ones on it
    // are Ready while the stalled server still holds its claims, none of
    // which has been given up on yet (each would wait 10 s for an answer).
    register_as(&ctx, &late, &healthy, Engine::Postgres, json!({})).await;
    let fresh = ["fresh-0", "fresh-1", "fresh-2"];
    for name in fresh {
        claim(&ctx, name, "orders", Engine::Postgres, &late, "Delete").await;
    }
    for name in ["early-db"].iter().chain(&fresh) {
        ctx.wait_for(&claims, name, "claim Ready", reason_is("Ready"))
            .await;
    }
    let listed = claims.list(&Default::default()).await.unwrap();
    let given_up: Vec<_> = listed
        .items
        .iter()
        .filter(|c| stuck.contains(&c.metadata.name.clone().unwrap_or_default()))
        // Accepted and waiting (Provisioning) is not given up on; an
        // answer that never came would say why.
        .filter(|c| {
            c.status
                .as_ref()
                .and_then(|s| s.conditions.iter().find(|r| r.type_ == "Ready"))
                .is_some_and(|r| r.reason != "Provisioning")
        })
        .map(|c| c.metadata.name.clone().unwrap_or_default())
        .collect();
    assert!(
        given_up.is_empty(),
        "claims on the healthy server waited for the stalled one's: {given_up:?}"
    );
    let b = binding(&ctx, "early-db").await;
    round_trip(
        &healthy,
        Engine::Postgres,
        &b["database"],
        &b["username"],
        &b["password"],
    )
    .await
    .unwrap();

    // When the server answers again, every claim in its line gets its turn.
    open.send(true).unwrap();
    for name in &stuck {
        ctx.wait_for(&claims, name, "claim Ready", reason_is("Ready"))
            .await;
    }
}
