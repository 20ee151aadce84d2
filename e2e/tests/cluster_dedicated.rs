//! Dedicated claims of every engine on a cluster with real pods (the real
//! node here, kind with `make e2e-kind`): the chart installs the operator,
//! which runs as a pod from its image with the chart's RBAC; each claim's
//! StatefulSet runs a real server under Pod Security `restricted` (a
//! superuser only at first boot) and the operator pod makes the app's user
//! and database over the wire, through the NetworkPolicy rule that admits
//! the chart's operator pods. A pod of the owning Service reaches its
//! database by the Service name with the binding dbps issued (PostgreSQL:
//! over TLS verified under the instance's own CA; in clear text the
//! instance refuses it); PostgreSQL's data survives a restart of its pod and, with `Retain`, the claim's
//! deletion; a rotation hands out the other user and revokes the first
//! after the grace period. Another Service of the same namespace is kept
//! off twice: the admission policy refuses its pod when it references the
//! binding, and the NetworkPolicy refuses its packets when it holds the
//! credentials some other way — also when it wears the operator's labels.

use std::time::Instant;

use dbps_e2e::claims::reason_is;
use dbps_e2e::cluster::{Cluster, OPERATOR_NAMESPACE};
use dbps_e2e::fixtures::{
    claim, copy_secret, influx_pod, psql_pod, psql_pod_sslmode, run_pod as run, sample_check_pod,
    service,
};
use dbps_e2e::node::NODE_NAME;
use dbps_operator::api::DatabaseClaim;
use k8s_openapi::api::core::v1::{PersistentVolume, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{DeleteParams, PostParams};
use serde_json::json;

/// Whether `said` (a client's output) tells of a connection the network
/// refused or dropped, not of a password or a database that said no.
fn refused_by_the_network(said: &str) -> bool {
    [
        "Connection refused",
        "timeout",
        "timed out",
        "could not connect",
        "no route",
    ]
    .iter()
    .any(|s| said.contains(s))
}

#[tokio::test]
async fn dedicated_claims_of_every_engine_run_for_real_and_only_their_service_gets_in() {
    let cluster = Cluster::start("cluster-dedicated").await.unwrap();
    let installed = Instant::now();
    cluster.install_operator().await.unwrap();
    eprintln!(
        "operator pod Ready {:?} after helm install began",
        installed.elapsed()
    );
    let ctx = &cluster.ctx;
    let images = &cluster.images;
    for name in ["orders", "intruder", "telemetry", "catalog"] {
        dbps_e2e::fixtures::service_account(ctx, name).await;
    }
    service(ctx, "orders", json!({})).await;
    service(ctx, "intruder", json!({})).await;

    // PostgreSQL, kept (Retain) when its claim is deleted.
    let claimed = Instant::now();
    claim(
        ctx,
        "orders-db",
        cluster.dedicated("orders", "postgres", json!({ "deletionPolicy": "Retain" })),
    )
    .await;
    let claims = ctx.api::<DatabaseClaim>();
    ctx.wait_for(&claims, "orders-db", "claim Ready", reason_is("Ready"))
        .await;
    eprintln!("PostgreSQL claim Ready after {:?}", claimed.elapsed());
    let pods = ctx.api::<Pod>();
    if ctx.is_local() {
        let db = pods.get("orders-db-0").await.unwrap();
        assert_eq!(db.spec.unwrap().node_name.as_deref(), Some(NODE_NAME));
    }
    // The instance admits the owning service's pods and the chart's
    // operator pods (in the operator's namespace), nothing else.
    let policy = ctx.api::<NetworkPolicy>().get("orders-db").await.unwrap();
    let ingress = serde_json::to_value(policy.spec.unwrap().ingress).unwrap();
    assert_eq!(ingress.as_array().unwrap().len(), 2, "{ingress}");
    assert_eq!(
        ingress[0]["from"][0]["podSelector"]["matchLabels"]["dbps.io/service"],
        "orders"
    );
    assert_eq!(
        ingress[1]["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        OPERATOR_NAMESPACE
    );
    assert_eq!(
        ingress[1]["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"],
        "dbps-operator"
    );
    // Pods reach it by its Service's name (cluster DNS, kube-proxy).
    let host = format!("orders-db.{}.svc.cluster.local", ctx.namespace);
    let binding = dbps_e2e::fixtures::secret(ctx, "orders-db-binding")
        .await
        .unwrap();
    assert_eq!(binding["host"], host);
    let psql = |name: &str, service: &str, binding: &str, sql: &str| {
        psql_pod(&images.psql, name, service, binding, &host, sql)
    };

    // The owning service logs in with its binding and writes.
    let (ok, said) = run(
        ctx,
        psql(
            "orders-write",
            "orders",
            "orders-db-binding",
            "CREATE TABLE orders (id int); INSERT INTO orders VALUES (42); SELECT sum(id) FROM orders",
        ),
    )
    .await;
    assert!(ok, "the owner could not write: {said}");
    eprintln!("first PostgreSQL login after {:?}", claimed.elapsed());
    // That was over TLS, verified to the instance's name under the
    // instance's own CA (the binding's `sslmode` and `ca.crt`); in clear
    // text the instance refuses the same credentials from the same pod.
    let admin = dbps_e2e::fixtures::secret(ctx, "orders-db-admin")
        .await
        .unwrap();
    assert_eq!(binding["sslmode"], "verify-full");
    assert_eq!(binding["ca.crt"], admin["ca.crt"]);
    let (ok, said) = run(
        ctx,
        psql_pod_sslmode(
            &images.psql,
            "orders-cleartext",
            "orders",
            "orders-db-binding",
            &host,
            "SELECT 1",
            Some("disable"),
        ),
    )
    .await;
    assert!(!ok, "the instance took a login in clear text: {said}");
    assert!(said.contains("no encryption"), "{said}");

    // Another service's pod referencing the binding is refused at admission ...
    let refused = pods
        .create(
            &PostParams::default(),
            &psql("intruder-read", "intruder", "orders-db-binding", "SELECT 1"),
        )
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("owned by service orders"),
        "{refused}"
    );
    // ... and with the credentials copied elsewhere, no packet gets through.
    copy_secret(ctx, "orders-db-binding", "stolen-orders").await;
    let (ok, said) = run(
        ctx,
        psql("intruder-stolen", "intruder", "stolen-orders", "SELECT 1"),
    )
    .await;
    assert!(!ok, "another service reached the database");
    assert!(refused_by_the_network(&said), "{said}");
    // Dressed in the operator pods' labels it is still refused: the
    // NetworkPolicy admits those only in the operator's namespace.
    let mut disguised = psql(
        "intruder-as-operator",
        "intruder",
        "stolen-orders",
        "SELECT 1",
    );
    let labels = disguised
        .metadata
        .labels
        .get_or_insert_with(Default::default);
    labels.insert("app.kubernetes.io/name".into(), "dbps-operator".into());
    labels.insert("app.kubernetes.io/instance".into(), "dbps-operator".into());
    let (ok, said) = run(ctx, disguised).await;
    assert!(!ok, "a pod with the operator's labels reached the database");
    assert!(refused_by_the_network(&said), "{said}");

    // The data survives a restart of the database pod.
    let first = pods.get("orders-db-0").await.unwrap().metadata.uid;
    pods.delete("orders-db-0", &DeleteParams::default())
        .await
        .unwrap();
    ctx.wait_for(
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
    // Fails (division by zero) unless the row written before is there.
    let read = "SELECT 1 / (SELECT count(*) FROM orders WHERE id = 42)::int";
    let (ok, said) = run(
        ctx,
        psql("orders-read", "orders", "orders-db-binding", read),
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
        ctx,
        "orders-db",
        cluster.dedicated(
            "orders",
            "postgres",
            json!({ "deletionPolicy": "Retain", "rotation": { "gracePeriodSeconds": 20 } }),
        ),
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
        ctx,
        psql("orders-read-again", "orders", "orders-db-binding", read),
    )
    .await;
    assert!(
        ok,
        "data lost across the claim's deletion and re-creation: {said}"
    );

    // A rotation, done over the wire on the instance: the other user, in a
    // new immutable Secret that `status.binding.name` names and in the
    // stable binding pods mount, reads the same data; the first keeps
    // working through the grace period and is revoked after it.
    let first = dbps_e2e::fixtures::secret(ctx, "orders-db-binding")
        .await
        .unwrap();
    copy_secret(ctx, "orders-db-binding", "kept-credentials").await;
    dbps_e2e::fixtures::request_rotation(ctx, "orders-db", "1").await;
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
    let issued = dbps_e2e::fixtures::secret(ctx, "orders-db-binding-1")
        .await
        .unwrap();
    assert_ne!(issued["username"], first["username"]);
    assert_eq!(
        dbps_e2e::fixtures::secret(ctx, "orders-db-binding").await,
        Some(issued.clone()),
        "the stable binding holds the credentials in force"
    );
    for (pod, secret) in [
        ("orders-rotated", "orders-db-binding-1"),
        ("orders-stable", "orders-db-binding"),
    ] {
        let (ok, said) = run(ctx, psql(pod, "orders", secret, read)).await;
        assert!(
            ok,
            "the rotated credentials in {secret} do not read the data: {said}"
        );
    }
    let (ok, said) = run(
        ctx,
        psql("orders-grace", "orders", "kept-credentials", read),
    )
    .await;
    assert!(
        ok,
        "the previous credentials stopped before their grace period ended: {said}"
    );
    ctx.wait_for(
        &claims,
        "orders-db",
        "previous credentials revoked after the grace period",
        |c: Option<&DatabaseClaim>| {
            c.and_then(|c| c.status.as_ref())
                .and_then(|s| s.credentials.as_ref())
                .is_some_and(|c| c.generation == 1 && c.previous.is_none())
        },
    )
    .await;
    assert!(k8s_openapi::jiff::Timestamp::now() >= expires.0);
    // Someone who kept the first credentials: the instance refuses them now.
    let (ok, said) = run(
        ctx,
        psql("orders-revoked", "orders", "kept-credentials", "SELECT 1"),
    )
    .await;
    assert!(!ok, "revoked credentials still log in");
    assert!(
        said.contains("authentication failed")
            || said.contains("not permitted to log in")
            || said.contains("does not exist"),
        "{said}"
    );
    assert!(
        dbps_e2e::fixtures::secret(ctx, "orders-db-binding")
            .await
            .is_some(),
        "the stable binding stays"
    );

    // InfluxDB the same way: a real server, its service writes, another
    // service is refused at admission and on the network.
    service(ctx, "telemetry", json!({})).await;
    let claimed = Instant::now();
    claim(
        ctx,
        "readings",
        cluster.dedicated(
            "telemetry",
            "influxdb",
            json!({ "deletionPolicy": "Delete" }),
        ),
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
    let influx = |name: &str, service: &str, binding: &str, query: &str| {
        influx_pod(&images.influx, name, service, binding, &host, query)
    };
    let (ok, said) = run(
        ctx,
        influx(
            "telemetry-write",
            "telemetry",
            "readings-binding",
            "INSERT temperature,device=th-1 value=21.5",
        ),
    )
    .await;
    assert!(ok, "the owner could not write to InfluxDB: {said}");
    eprintln!("first InfluxDB write after {:?}", claimed.elapsed());
    let refused = pods
        .create(
            &PostParams::default(),
            &influx(
                "orders-on-readings",
                "orders",
                "readings-binding",
                "SHOW MEASUREMENTS",
            ),
        )
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("owned by service telemetry"),
        "{refused}"
    );
    copy_secret(ctx, "readings-binding", "stolen-readings").await;
    let (ok, said) = run(
        ctx,
        influx(
            "orders-stolen-readings",
            "orders",
            "stolen-readings",
            "SHOW MEASUREMENTS",
        ),
    )
    .await;
    assert!(!ok, "another service reached InfluxDB: {said}");

    // MongoDB (FerretDB's image here, `mongo` on kind): the catalog sample
    // service checks in with its binding and writes; another service's pod
    // with the same credentials gets no packet through.
    service(ctx, "catalog", json!({})).await;
    let claimed = Instant::now();
    claim(
        ctx,
        "catalog-db",
        cluster.dedicated("catalog", "mongodb", json!({ "deletionPolicy": "Delete" })),
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
        ctx,
        sample_check_pod(
            "catalog-check",
            "catalog",
            &images.samples,
            "catalog",
            "catalog-db-binding",
        ),
    )
    .await;
    assert!(ok, "the catalog service cannot use its MongoDB: {said}");
    eprintln!("first MongoDB write after {:?}", claimed.elapsed());
    copy_secret(ctx, "catalog-db-binding", "stolen-catalog").await;
    let (ok, said) = run(
        ctx,
        sample_check_pod(
            "intruder-catalog",
            "intruder",
            &images.samples,
            "catalog",
            "stolen-catalog",
        ),
    )
    .await;
    assert!(!ok, "another service reached MongoDB: {said}");
    assert!(refused_by_the_network(&said), "{said}");

    // A claim deleted with `Delete` takes its volume with it: the volume
    // claim goes, and the provisioner deletes the volume (here also its
    // directory on the node).
    let volumes = kube::Api::<PersistentVolume>::all(ctx.client.clone());
    let ns = ctx.namespace.clone();
    let bound_to_readings = move |pv: &PersistentVolume| {
        pv.spec
            .as_ref()
            .and_then(|s| s.claim_ref.as_ref())
            .is_some_and(|r| {
                r.namespace.as_deref() == Some(ns.as_str())
                    && r.name.as_deref() == Some("data-readings-0")
            })
    };
    let volume = volumes
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .find(|pv| bound_to_readings(pv))
        .expect("the InfluxDB claim's volume");
    let path = volume
        .spec
        .as_ref()
        .and_then(|s| s.host_path.as_ref())
        .map(|h| std::path::PathBuf::from(&h.path));
    claims
        .delete("readings", &DeleteParams::default())
        .await
        .unwrap();
    ctx.wait_gone(&claims, "readings", "InfluxDB claim deleted")
        .await;
    let volume_name = volume.metadata.name.clone().unwrap();
    ctx.wait_gone(&volumes, &volume_name, "the deleted claim's volume deleted")
        .await;
    if let (true, Some(path)) = (ctx.is_local(), path) {
        assert!(!path.exists(), "{} left on the node", path.display());
    }

    cluster.finish().await;
}
