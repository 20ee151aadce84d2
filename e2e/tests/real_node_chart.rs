//! The operator as it is installed: `helm install` of the chart on the real
//! node, the operator running as a pod from its image (made here from the
//! binary `cargo build` made) under Pod Security `restricted`, reaching the
//! apiserver through the `kubernetes` Service with the chart's RBAC, and
//! provisioning a dedicated PostgreSQL claim, whose app user it makes over
//! the wire through the instance's NetworkPolicy, and that only its service
//! reaches.

use std::path::PathBuf;
use std::time::Instant;

use dbps_e2e::TestContext;
use dbps_e2e::claims::reason_is;
use dbps_e2e::fixtures::{claim, psql_pod, run_pod, service};
use dbps_e2e::node::{Node, STORAGE_CLASS};
use dbps_operator::api::DatabaseClaim;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::Api;
use serde_json::json;

#[tokio::test]
async fn the_chart_runs_the_operator_as_a_pod_that_provisions_a_real_database() {
    let bin = dbps_e2e::node::binaries().unwrap();
    let ctx = TestContext::for_real_node("real-chart").await.unwrap();
    dbps_e2e::node::keep_workloads_off_fake_nodes(&ctx.client)
        .await
        .unwrap();
    dbps_e2e::fixtures::enforce_restricted(&ctx.client, &ctx.namespace).await;
    let mut node = Node::start(&bin).await.unwrap();
    node.join(ctx.plane).await.unwrap();
    let tag = env!("CARGO_PKG_VERSION");
    node.import(&dbps_e2e::images::operator(
        &dbps_e2e::operator::binary(),
        tag,
    ))
    .unwrap();
    node.import(&dbps_e2e::images::postgres("15").unwrap())
        .unwrap();
    node.volume(ctx.plane, &ctx.namespace, "data-orders-db-0", "1Gi")
        .await
        .unwrap();

    let installed = Instant::now();
    let out = ctx
        .plane
        .tool("kubectl", &["create", "namespace", "dbps-system"])
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dbps_e2e::fixtures::enforce_restricted(&ctx.client, "dbps-system").await;
    let chart = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../charts/dbps-operator");
    let out = ctx
        .plane
        .tool(
            "helm",
            &[
                "install",
                "dbps-operator",
                &chart.display().to_string(),
                "--namespace",
                "dbps-system",
                "--set",
                "image.repository=dbps.local/dbps-operator",
                "--set",
                &format!("image.tag={tag}"),
                "--set",
                "image.pullPolicy=Never",
                "--set",
                "resyncSeconds=60",
                "--wait",
                "--timeout",
                "2m",
            ],
        )
        .unwrap();
    assert!(
        out.status.success(),
        "helm install failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), "dbps-system");
    let operator = deployments.get("dbps-operator").await.unwrap();
    assert_eq!(operator.status.unwrap().ready_replicas, Some(1));
    eprintln!(
        "operator pod Ready {:?} after helm install began",
        installed.elapsed()
    );

    for name in ["orders", "intruder", "telemetry"] {
        dbps_e2e::fixtures::service_account(&ctx, name).await;
    }
    service(&ctx, "orders", json!({})).await;
    service(&ctx, "intruder", json!({})).await;
    let claimed = Instant::now();
    claim(
        &ctx,
        "orders-db",
        json!({ "serviceRef": { "name": "orders" }, "engine": "postgres", "version": "15",
                "deletionPolicy": "Delete", "storage": { "size": "1Gi", "storageClassName": STORAGE_CLASS } }),
    )
    .await;
    let claims = ctx.api::<DatabaseClaim>();
    ctx.wait_for(&claims, "orders-db", "claim Ready", reason_is("Ready"))
        .await;
    eprintln!("claim Ready {:?} after it was made", claimed.elapsed());
    // The operator pod made the app's user over the wire: the instance's
    // NetworkPolicy admits the owning service's pods and the chart's
    // operator pods, nothing else.
    let policy = ctx
        .api::<k8s_openapi::api::networking::v1::NetworkPolicy>()
        .get("orders-db")
        .await
        .unwrap();
    let ingress = serde_json::to_value(policy.spec.unwrap().ingress).unwrap();
    assert_eq!(ingress.as_array().unwrap().len(), 2, "{ingress}");
    assert_eq!(
        ingress[1]["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "dbps-system"
    );
    assert_eq!(
        ingress[1]["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"],
        "dbps-operator"
    );
    let host = format!("orders-db.{}.svc.cluster.local", ctx.namespace);
    let (ok, said) = run_pod(
        &ctx,
        psql_pod(
            "orders",
            "orders",
            "orders-db-binding",
            &host,
            "CREATE TABLE t (v int); SELECT 1",
        ),
    )
    .await;
    assert!(ok, "the owner could not use its database: {said}");
    // The chart's admission policy keeps another service's pod off the binding ...
    let refused = ctx
        .api::<k8s_openapi::api::core::v1::Pod>()
        .create(
            &Default::default(),
            &psql_pod(
                "intruder",
                "intruder",
                "orders-db-binding",
                &host,
                "SELECT 1",
            ),
        )
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("owned by service orders"),
        "{refused}"
    );
    // ... and the NetworkPolicy keeps its packets off the database.
    let (ok, said) = run_pod(
        &ctx,
        psql_pod("intruder-guess", "intruder", "", &host, "SELECT 1"),
    )
    .await;
    assert!(!ok, "another service reached the database");
    assert!(
        said.contains("Connection refused") || said.contains("timeout"),
        "refused by the network, not by a password: {said}"
    );
    // A pod of that service dressed in the operator's labels is still
    // refused: the NetworkPolicy admits them only in the operator's namespace.
    let mut disguised = psql_pod("intruder-as-operator", "intruder", "", &host, "SELECT 1");
    let labels = disguised
        .metadata
        .labels
        .get_or_insert_with(Default::default);
    labels.insert("app.kubernetes.io/name".into(), "dbps-operator".into());
    labels.insert("app.kubernetes.io/instance".into(), "dbps-operator".into());
    let (ok, said) = run_pod(&ctx, disguised).await;
    assert!(!ok, "a pod with the operator's labels reached the database");
    assert!(
        said.contains("Connection refused") || said.contains("timeout"),
        "refused by the network, not by a password: {said}"
    );
    drop(node);
}
