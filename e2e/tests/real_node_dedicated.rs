//! Dedicated claims on the real node: the operator's StatefulSets run real
//! servers (images made here from this machine's PostgreSQL 15, InfluxDB 1.6
//! and FerretDB, with the official images' first-boot contracts: a
//! superuser only) under Pod Security `restricted`; the operator, on the
//! node's network, makes each app user and database over the wire. A pod of
//! the owning Service reaches its database by the Service name with the
//! binding dbps issued; PostgreSQL's data survives a restart of its pod and,
//! with `Retain`, the claim's deletion; a rotation hands out the other user
//! and revokes the first after the grace period; a pod of another Service of
//! the same namespace, even holding the credentials, is refused by the
//! NetworkPolicy on real packets.

use std::time::Instant;

use dbps_e2e::TestContext;
use dbps_e2e::claims::reason_is;
use dbps_e2e::fixtures::{claim, influx_pod, psql_pod, run_pod as run, sample_check_pod, service};
use dbps_e2e::node::{NODE_NAME, Node, STORAGE_CLASS, host_sysctls};
use dbps_operator::api::DatabaseClaim;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::json;

#[tokio::test]
async fn dedicated_claims_of_every_engine_run_for_real_and_only_their_service_gets_in() {
    let bin = dbps_e2e::node::binaries().unwrap();
    let sysctls_before = host_sysctls();
    let ctx = TestContext::for_real_node("real-dedicated").await.unwrap();
    // Workloads go to the real node only: the fake one is tainted.
    dbps_e2e::node::keep_workloads_off_fake_nodes(&ctx.client)
        .await
        .unwrap();
    dbps_e2e::fixtures::enforce_restricted(&ctx.client, &ctx.namespace).await;
    let mut node = Node::start(&bin).await.unwrap();
    let started = Instant::now();
    node.join(ctx.plane).await.unwrap();
    eprintln!("node Ready after {:?}", started.elapsed());
    let image = dbps_e2e::images::postgres("15").unwrap();
    node.import(&image).unwrap();
    node.volume(ctx.plane, &ctx.namespace, "data-orders-db-0", "1Gi")
        .await
        .unwrap();
    // The operator runs on the node's network, as on a cluster host: it
    // reaches the instances through their Services to administer them.
    node.run_operator_for(&ctx).await.unwrap();

    for name in ["orders", "intruder", "telemetry", "catalog"] {
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
                "deletionPolicy": "Retain", "storage": { "size": "1Gi", "storageClassName": STORAGE_CLASS },
                "rotation": { "gracePeriodSeconds": 20 } }),
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

    // A rotation, done over the wire on the instance: the other user in a
    // new binding reads the same data; the first keeps working through the
    // grace period and is revoked after it.
    let first = dbps_e2e::fixtures::secret(&ctx, "orders-db-binding")
        .await
        .unwrap();
    claims
        .patch(
            "orders-db",
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "annotations": { "dbps.io/rotate": "1" } } })),
        )
        .await
        .unwrap();
    let rotated = ctx
        .wait_for(
            &claims,
            "orders-db",
            "rotated",
            |c: Option<&DatabaseClaim>| {
                c.and_then(|c| c.status.as_ref())
                    .and_then(|s| s.binding.as_ref())
                    .is_some_and(|b| b.name == "orders-db-binding-1")
            },
        )
        .await;
    let expires = rotated
        .status
        .unwrap()
        .credentials
        .unwrap()
        .previous
        .unwrap()
        .expires_at;
    let read = "SELECT 1 / (SELECT count(*) FROM orders WHERE id = 42)::int";
    let (ok, said) = run(
        &ctx,
        psql_pod(
            "orders-rotated",
            "orders",
            "orders-db-binding-1",
            &host,
            read,
        ),
    )
    .await;
    assert!(ok, "the rotated credentials do not read the data: {said}");
    let (ok, said) = run(
        &ctx,
        psql_pod("orders-grace", "orders", "orders-db-binding", &host, read),
    )
    .await;
    assert!(
        ok,
        "the previous credentials stopped before their grace period ended: {said}"
    );
    let secrets = ctx.api::<k8s_openapi::api::core::v1::Secret>();
    ctx.wait_gone(
        &secrets,
        "orders-db-binding",
        "previous binding removed after the grace period",
    )
    .await;
    assert!(k8s_openapi::jiff::Timestamp::now() >= expires.0);
    // Someone who kept the first credentials: the instance refuses them now.
    let kept: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({
        "metadata": { "name": "kept-credentials" },
        "stringData": { "username": first["username"], "password": first["password"], "database": first["database"] }
    }))
    .unwrap();
    secrets.create(&Default::default(), &kept).await.unwrap();
    let (ok, said) = run(
        &ctx,
        psql_pod(
            "orders-revoked",
            "orders",
            "kept-credentials",
            &host,
            "SELECT 1",
        ),
    )
    .await;
    assert!(!ok, "revoked credentials still log in");
    assert!(
        said.contains("authentication failed")
            || said.contains("not permitted to log in")
            || said.contains("does not exist"),
        "{said}"
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

    // A MongoDB claim on the FerretDB image (the `mongo` image's contract):
    // the catalog sample service checks in with its binding and writes;
    // another service's pod with the same binding gets no packet through.
    node.import(&dbps_e2e::images::ferretdb().unwrap()).unwrap();
    let samples = dbps_e2e::images::samples(
        &dbps_e2e::operator::samples_binary(),
        "dbps.local/dbps-sample:e2e",
    );
    node.import(&samples).unwrap();
    node.volume(ctx.plane, &ctx.namespace, "data-catalog-db-0", "1Gi")
        .await
        .unwrap();
    service(&ctx, "catalog", json!({})).await;
    let ferretdb = dbps_e2e::images::ferretdb().unwrap().name;
    let version = ferretdb.rsplit_once(':').unwrap().1.to_string();
    let claimed = Instant::now();
    claim(
        &ctx,
        "catalog-db",
        json!({ "serviceRef": { "name": "catalog" }, "engine": "mongodb", "version": version,
                "deletionPolicy": "Delete", "storage": { "size": "1Gi", "storageClassName": STORAGE_CLASS } }),
    )
    .await;
    ctx.wait_for(
        &claims,
        "catalog-db",
        "MongoDB claim Ready",
        reason_is("Ready"),
    )
    .await;
    eprintln!("MongoDB claim Ready after {:?}", claimed.elapsed());
    let (ok, said) = run(
        &ctx,
        sample_check_pod(
            "catalog-check",
            "catalog",
            &samples.name,
            "catalog",
            "catalog-db-binding",
        ),
    )
    .await;
    assert!(ok, "the catalog service cannot use its MongoDB: {said}");
    eprintln!("first MongoDB write after {:?}", claimed.elapsed());
    let (ok, said) = run(
        &ctx,
        sample_check_pod(
            "intruder-catalog",
            "intruder",
            &samples.name,
            "catalog",
            "catalog-db-binding",
        ),
    )
    .await;
    assert!(!ok, "another service reached MongoDB: {said}");

    let cgroup_root = node.cgroup_root.clone();
    drop(node);
    assert_eq!(host_sysctls(), sysctls_before, "host settings changed");
    for hierarchy in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let left = hierarchy.path().join(cgroup_root.trim_start_matches('/'));
        assert!(!left.exists(), "cgroup left: {}", left.display());
    }
}
