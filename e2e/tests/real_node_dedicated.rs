//! Dedicated claims on the real node: the operator's StatefulSets run real
//! servers (images made here from this machine's PostgreSQL 15 and InfluxDB
//! 1.6, with the official images' first-boot contracts) under Pod Security
//! `restricted`; a pod of the owning Service reaches its database by the
//! Service name with the binding dbps issued, and PostgreSQL's data survives
//! a restart of its pod; a pod of another Service of the same namespace,
//! even holding the credentials, is refused by the NetworkPolicy on real
//! packets.

use std::time::{Duration, Instant};

use dbps_e2e::claims::reason_is;
use dbps_e2e::fixtures::{claim, influx_pod, psql_pod, run_pod as run, service};
use dbps_e2e::node::{NODE_NAME, Node, STORAGE_CLASS, host_sysctls};
use dbps_e2e::{RunningOperator, TestContext};
use dbps_operator::api::DatabaseClaim;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::json;

#[tokio::test]
async fn dedicated_postgres_and_influxdb_claims_run_for_real_and_only_their_service_gets_in() {
    let bin = dbps_e2e::node::binaries().unwrap();
    let sysctls_before = host_sysctls();
    let ctx = TestContext::for_real_node("real-dedicated").await.unwrap();
    // Workloads go to the real node only: the fake one is tainted.
    dbps_e2e::node::keep_workloads_off_fake_nodes(&ctx.client)
        .await
        .unwrap();
    Api::<Namespace>::all(ctx.client.clone())
        .patch(
            &ctx.namespace,
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "labels": { "pod-security.kubernetes.io/enforce": "restricted" } } })),
        )
        .await
        .unwrap();
    let mut node = Node::start(&bin).await.unwrap();
    let started = Instant::now();
    node.join(ctx.plane).await.unwrap();
    eprintln!("node Ready after {:?}", started.elapsed());
    let image = dbps_e2e::images::postgres("15").unwrap();
    node.import(&image).unwrap();
    node.volume(ctx.plane, &ctx.namespace, "data-orders-db-0", "1Gi")
        .await
        .unwrap();
    let _operator = RunningOperator::start(&ctx, Duration::from_secs(300))
        .await
        .unwrap();

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
                "deletionPolicy": "Retain", "storage": { "size": "1Gi", "storageClassName": STORAGE_CLASS } }),
    )
    .await;
    let claims = ctx.api::<DatabaseClaim>();
    ctx.wait_for(
        &claims,
        "orders-db",
        "claim Ready on the real node",
        reason_is("Ready"),
    )
    .await;
    eprintln!("claim Ready after {:?}", claimed.elapsed());
    let pods = ctx.api::<Pod>();
    let db = pods.get("orders-db-0").await.unwrap();
    assert_eq!(db.spec.unwrap().node_name.as_deref(), Some(NODE_NAME));
    // Pods reach it by its Service's name (CoreDNS, kube-proxy).
    let host = format!("orders-db.{}.svc.cluster.local", ctx.namespace);
    let binding = dbps_e2e::fixtures::secret(&ctx, "orders-db-binding")
        .await
        .unwrap();
    assert_eq!(binding["host"], host);

    // The owning service logs in with its binding and writes.
    let (ok, said) = run(
        &ctx,
        psql_pod("orders-write", "orders", "orders-db-binding", &host,
            "CREATE TABLE orders (id int); INSERT INTO orders VALUES (42); SELECT sum(id) FROM orders"),
    )
    .await;
    assert!(ok, "the owner could not write: {said}");
    eprintln!("first login after {:?}", claimed.elapsed());
    // Another service's pod, even with the owner's credentials, does not get a packet through.
    let (ok, said) = run(
        &ctx,
        psql_pod(
            "intruder-read",
            "intruder",
            "orders-db-binding",
            &host,
            "SELECT 1",
        ),
    )
    .await;
    assert!(!ok, "another service reached the database");
    assert!(
        said.contains("Connection refused")
            || said.contains("timeout")
            || said.contains("could not connect"),
        "{said}"
    );

    // The data survives a restart of the database pod.
    let first = pods.get("orders-db-0").await.unwrap().metadata.uid;
    pods.delete("orders-db-0", &DeleteParams::default())
        .await
        .unwrap();
    let db = ctx
        .wait_for(
            &pods,
            "orders-db-0",
            "new database pod Ready",
            move |p: Option<&Pod>| {
                p.filter(|p| p.metadata.uid != first)
                    .and_then(|p| p.status.as_ref())
                    .is_some_and(|s| {
                        s.conditions
                            .iter()
                            .flatten()
                            .any(|c| c.type_ == "Ready" && c.status == "True")
                    })
            },
        )
        .await;
    assert!(db.status.unwrap().pod_ip.is_some());
    let (ok, said) = run(
        &ctx,
        // Fails (division by zero) unless the row written before is there.
        psql_pod(
            "orders-read",
            "orders",
            "orders-db-binding",
            &host,
            "SELECT 1 / (SELECT count(*) FROM orders WHERE id = 42)::int",
        ),
    )
    .await;
    assert!(ok, "data lost across a restart: {said}");

    // With Retain, deleting the claim keeps the volume and its credentials;
    // the claim made again finds its data.
    claims
        .delete("orders-db", &DeleteParams::default())
        .await
        .unwrap();
    ctx.wait_gone(&claims, "orders-db", "claim deleted").await;
    ctx.wait_gone(&pods, "orders-db-0", "database pod gone")
        .await;
    claim(
        &ctx,
        "orders-db",
        json!({ "serviceRef": { "name": "orders" }, "engine": "postgres", "version": "15",
                "deletionPolicy": "Retain", "storage": { "size": "1Gi", "storageClassName": STORAGE_CLASS } }),
    )
    .await;
    ctx.wait_for(
        &claims,
        "orders-db",
        "claim Ready again",
        reason_is("Ready"),
    )
    .await;
    let (ok, said) = run(
        &ctx,
        psql_pod(
            "orders-read-again",
            "orders",
            "orders-db-binding",
            &host,
            "SELECT 1 / (SELECT count(*) FROM orders WHERE id = 42)::int",
        ),
    )
    .await;
    assert!(
        ok,
        "data lost across the claim's deletion and re-creation: {said}"
    );

    // An InfluxDB claim the same way: a real server, its service writes,
    // another service is refused.
    node.import(&dbps_e2e::images::influxdb().unwrap()).unwrap();
    node.volume(ctx.plane, &ctx.namespace, "data-readings-0", "1Gi")
        .await
        .unwrap();
    service(&ctx, "telemetry", json!({})).await;
    let claimed = Instant::now();
    claim(
        &ctx,
        "readings",
        json!({ "serviceRef": { "name": "telemetry" }, "engine": "influxdb", "version": "1.6",
                "deletionPolicy": "Delete", "storage": { "size": "1Gi", "storageClassName": STORAGE_CLASS } }),
    )
    .await;
    ctx.wait_for(
        &claims,
        "readings",
        "InfluxDB claim Ready",
        reason_is("Ready"),
    )
    .await;
    eprintln!("InfluxDB claim Ready after {:?}", claimed.elapsed());
    let host = format!("readings.{}.svc.cluster.local", ctx.namespace);
    let (ok, said) = run(
        &ctx,
        influx_pod(
            "telemetry-write",
            "telemetry",
            "readings-binding",
            &host,
            "INSERT temperature,device=th-1 value=21.5",
        ),
    )
    .await;
    assert!(ok, "the owner could not write to InfluxDB: {said}");
    eprintln!("first InfluxDB write after {:?}", claimed.elapsed());
    let (ok, said) = run(
        &ctx,
        influx_pod(
            "orders-on-readings",
            "orders",
            "readings-binding",
            &host,
            "SHOW MEASUREMENTS",
        ),
    )
    .await;
    assert!(!ok, "another service reached InfluxDB: {said}");

    let cgroup_root = node.cgroup_root.clone();
    drop(node);
    assert_eq!(host_sysctls(), sysctls_before, "host settings changed");
    for hierarchy in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let left = hierarchy.path().join(cgroup_root.trim_start_matches('/'));
        assert!(!left.exists(), "cgroup left: {}", left.display());
    }
}
