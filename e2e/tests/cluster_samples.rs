//! The six sample services as they ship (`sample-services/manifests/`) on a
//! cluster with real pods (the real node here, kind with `make e2e-kind`),
//! with the operator the chart installs: their Deployments run the samples
//! image under Pod Security `restricted`, each with the binding dbps issued
//! projected as files, on a dedicated instance of its engine (the manifests'
//! claims without `server:`); the order saga (orders → payments → orders,
//! through the outboxes and Kubernetes Services) completes, and telemetry
//! offers a reading to alerts, which fires. Then the orders database's
//! credentials rotate while a client reads orders: the orders service
//! answers every request through the grace period and after the previous
//! user is revoked, in the same pod, never restarted.

use std::time::{Duration, Instant};

use dbps_e2e::claims::reason_is;
use dbps_e2e::cluster::Cluster;
use dbps_e2e::fixtures::{run_pod, script_pod};
use dbps_operator::api::DatabaseClaim;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

/// A shell function sending one HTTP/1.0 request with `nc`: method, address,
/// path, JSON body; its input stays open a moment, as BusyBox's `nc` stops
/// reading when it ends; no request takes more than 10 s. (The BusyBox made
/// here is static and resolves no cluster names: the test passes the
/// Services' cluster IPs.)
const HTTP: &str = r#"req() { { printf '%s %s HTTP/1.0\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %s\r\n\r\n%s' "$1" "$3" "$2" "${#4}" "$4"; sleep 1; } | timeout 10 nc -w 5 "$2" 8080; }"#;

#[tokio::test]
async fn the_sample_services_run_as_pods_and_the_order_saga_completes() {
    let cluster = Cluster::start("cluster-samples").await.unwrap();
    cluster.install_operator().await.unwrap();
    let ctx = &cluster.ctx;
    let samples = &cluster.images.samples;
    let ns = ctx.namespace.clone();

    let started = Instant::now();
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../sample-services/manifests");
    let mut claims = Vec::new();
    for file in ["ecommerce.yaml", "iot.yaml"] {
        let yaml = std::fs::read_to_string(format!("{root}/{file}")).unwrap();
        assert!(
            yaml.contains(samples.as_str()),
            "{file} names another image"
        );
        let (yaml, names) = dbps_e2e::manifests::dedicated(&yaml, &cluster.placement);
        claims.extend(names);
        dbps_e2e::manifests::apply_yaml(&ctx.client, &ns, &yaml)
            .await
            .unwrap();
    }
    assert_eq!(claims.len(), 6);
    let api = ctx.api::<DatabaseClaim>();
    for claim in &claims {
        ctx.wait_for(&api, claim, "claim Ready", reason_is("Ready"))
            .await;
    }
    eprintln!("six dedicated claims Ready after {:?}", started.elapsed());
    let deployments = ctx.api::<Deployment>();
    for service in [
        "orders",
        "payments",
        "catalog",
        "devices",
        "telemetry",
        "alerts",
    ] {
        // A sample service is ready once it has used its database.
        ctx.wait_for(
            &deployments,
            service,
            "sample service ready",
            |d: Option<&Deployment>| {
                d.and_then(|d| d.status.as_ref())
                    .and_then(|s| s.ready_replicas)
                    .unwrap_or(0)
                    >= 1
            },
        )
        .await;
    }
    eprintln!("six sample services ready after {:?}", started.elapsed());

    // The saga, from a pod, through the services' Kubernetes Services.
    let services = ctx.api::<k8s_openapi::api::core::v1::Service>();
    let mut ip = std::collections::BTreeMap::new();
    for name in ["orders", "catalog", "devices", "telemetry", "alerts"] {
        let svc = services.get(name).await.unwrap();
        ip.insert(name, svc.spec.unwrap().cluster_ip.unwrap());
    }
    let (orders, catalog, devices, telemetry, alerts) = (
        &ip["orders"],
        &ip["catalog"],
        &ip["devices"],
        &ip["telemetry"],
        &ip["alerts"],
    );
    let busybox = &cluster.images.busybox;
    let saga = format!(
        r#"{HTTP}
req POST {catalog} /products '{{"sku":"mug-red","name":"Red mug","price_cents":1200}}'
placed=$(req POST {orders} /orders '{{"customer":"ada","items":[{{"sku":"mug-red","quantity":2,"unit_price_cents":1200}}]}}')
echo "$placed" | grep -q ' 201 ' || {{ echo "place: $placed"; exit 1; }}
id=$(echo "$placed" | sed -n 's/.*"id":"\([^"]*\)".*/\1/p')
i=0
while [ $i -lt 60 ]; do
  order=$(req GET {orders} "/orders/$id" '')
  echo "$order" | grep -q '"status":"PAID"' && {{ echo "order $id PAID"; exit 0; }}
  i=$((i + 1)); sleep 1
done
echo "order $id: $order"; exit 1"#
    );
    let (ok, said) = run_pod(ctx, script_pod("saga", busybox, &saga)).await;
    assert!(ok, "the order saga did not complete: {said}");
    eprintln!("order saga completed after {:?}", started.elapsed());

    let iot = format!(
        r#"{HTTP}
req POST {devices} /devices '{{"id":"th-1","name":"Greenhouse","kind":"thermometer"}}' | grep -q ' 20[01] ' || exit 1
req POST {alerts} /rules '{{"metric":"temperature","op":"gt","threshold":30.0}}' | grep -q ' 20[01] ' || exit 1
req POST {telemetry} /readings '[{{"device_id":"th-1","metric":"temperature","value":41.5}}]' | grep -q ' 20[0-9] ' || exit 1
i=0
while [ $i -lt 30 ]; do
  req GET {alerts} /alerts '' | grep -q 'th-1' && {{ echo "alert fired"; exit 0; }}
  i=$((i + 1)); sleep 1
done
req GET {alerts} /alerts ''; exit 1"#
    );
    let (ok, said) = run_pod(ctx, script_pod("iot", busybox, &iot)).await;
    assert!(ok, "telemetry → alerts did not fire: {said}");

    // A rotation of the orders database while the orders service runs: the
    // kubelet refreshes its projected stable binding within the grace
    // period, and when the previous user is revoked (its session ended) the
    // service opens another session with the files as they read now. A
    // client reading orders all along gets every answer; the pod is the
    // same and never restarted.
    let pods = ctx.api::<Pod>();
    let serving = pods
        .list(&ListParams::default().labels("dbps.io/service=orders"))
        .await
        .unwrap()
        .items;
    assert_eq!(serving.len(), 1, "one orders pod");
    let restarts = |pod: &Pod| -> i32 {
        pod.status
            .iter()
            .flat_map(|s| s.container_statuses.iter().flatten())
            .map(|c| c.restart_count)
            .sum()
    };
    // (A service may have restarted once at its start, when its binding was
    // written a moment before its user existed.)
    let (pod_name, pod_uid, restarts_before) = (
        serving[0].metadata.name.clone().unwrap(),
        serving[0].metadata.uid.clone(),
        restarts(&serving[0]),
    );
    let grace = 90;
    api.patch(
        "orders-db",
        &PatchParams::default(),
        &Patch::Merge(json!({ "spec": { "rotation": { "gracePeriodSeconds": grace } } })),
    )
    .await
    .unwrap();
    let reader = format!(
        r#"{HTTP}
end=$(( $(date +%s) + {seconds} )); n=0
while [ $(date +%s) -lt $end ]; do
  req GET {orders} /orders '' | grep -q ' 200 ' || {{ echo "request $n failed"; exit 1; }}
  n=$((n + 1))
done
echo "$n requests answered""#,
        seconds = grace + 45
    );
    pods.create(
        &PostParams::default(),
        &script_pod("reader", busybox, &reader),
    )
    .await
    .unwrap();
    let rotated_at = Instant::now();
    dbps_e2e::fixtures::request_rotation(ctx, "orders-db", "1").await;
    ctx.wait_for(&api, "orders-db", "rotated", |c: Option<&DatabaseClaim>| {
        c.and_then(|c| c.status.as_ref()?.credentials.as_ref())
            .is_some_and(|c| c.generation == 1 && c.previous.is_some())
    })
    .await;
    let issued = dbps_e2e::fixtures::secret(ctx, "orders-db-binding")
        .await
        .unwrap();
    let (ok, said) =
        dbps_e2e::fixtures::wait_pod(ctx, "reader", Duration::from_secs(grace as u64 + 120)).await;
    assert!(
        ok,
        "the orders service stopped answering across the rotation: {said}"
    );
    let answered = cluster.pod_log("reader").await;
    let answered = answered.lines().last().unwrap_or_default().to_string();
    assert!(answered.contains("requests answered"), "{answered}");
    eprintln!(
        "across the rotation: {answered} in {:?}",
        rotated_at.elapsed()
    );
    let claim = api.get("orders-db").await.unwrap();
    let creds = claim.status.unwrap().credentials.unwrap();
    assert!(
        creds.previous.is_none(),
        "the previous credentials were revoked during the reads"
    );
    let pod = pods.get(&pod_name).await.unwrap();
    assert_eq!(pod.metadata.uid, pod_uid);
    assert_eq!(
        restarts(&pod),
        restarts_before,
        "the orders pod restarted during the rotation"
    );
    let logs = cluster.pod_log(&pod_name).await;
    assert!(
        logs.lines()
            .any(|l| l.contains("database session opened again")
                && l.contains(&format!("//{}@", issued["username"]))),
        "the service did not open a session as {}: {logs}",
        issued["username"]
    );
    cluster.finish().await;
}
