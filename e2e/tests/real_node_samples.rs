//! The six sample services as they ship (`sample-services/manifests/`) on
//! the real node: their Deployments run the samples image under Pod Security
//! `restricted`, each with the binding dbps issued projected as files, on a
//! dedicated instance of its engine (the manifests' claims without
//! `server:`); the order saga (orders → payments → orders, through the
//! outboxes and Kubernetes Services) completes, and telemetry offers a
//! reading to alerts, which fires.

use std::time::Instant;

use dbps_e2e::TestContext;
use dbps_e2e::claims::reason_is;
use dbps_e2e::fixtures::{run_pod, script_pod};
use dbps_e2e::node::Node;
use dbps_operator::api::DatabaseClaim;
use k8s_openapi::api::apps::v1::Deployment;

/// A shell function sending one HTTP/1.0 request with `nc`: method, address,
/// path, JSON body; its input stays open a moment, as BusyBox's `nc` stops
/// reading when it ends. (BusyBox here is static and resolves no cluster names:
/// the test passes the Services' cluster IPs.)
const HTTP: &str = r#"req() { { printf '%s %s HTTP/1.0\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %s\r\n\r\n%s' "$1" "$3" "$2" "${#4}" "$4"; sleep 1; } | nc -w 5 "$2" 8080; }"#;

#[tokio::test]
async fn the_sample_services_run_as_pods_and_the_order_saga_completes() {
    let bin = dbps_e2e::node::binaries().unwrap();
    let ctx = TestContext::for_real_node("real-samples").await.unwrap();
    dbps_e2e::node::keep_workloads_off_fake_nodes(&ctx.client)
        .await
        .unwrap();
    dbps_e2e::fixtures::enforce_restricted(&ctx.client, &ctx.namespace).await;
    let mut node = Node::start(&bin).await.unwrap();
    node.join(ctx.plane).await.unwrap();
    // The images under the names the manifests use, so nothing is pulled.
    let samples = dbps_e2e::images::samples(
        &dbps_e2e::operator::samples_binary(),
        &format!("ghcr.io/dbps-io/dbps-sample:{}", env!("CARGO_PKG_VERSION")),
    );
    for image in [
        &dbps_e2e::images::postgres("15").unwrap(),
        &dbps_e2e::images::influxdb().unwrap(),
        &dbps_e2e::images::ferretdb().unwrap(),
        &dbps_e2e::images::busybox(),
        &samples,
    ] {
        node.import(image).unwrap();
    }
    node.run_operator_for(&ctx).await.unwrap();
    let ns = ctx.namespace.clone();

    let started = Instant::now();
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../sample-services/manifests");
    let mut claims = Vec::new();
    for file in ["ecommerce.yaml", "iot.yaml"] {
        let yaml = std::fs::read_to_string(format!("{root}/{file}")).unwrap();
        assert!(yaml.contains(&samples.name), "{file} names another image");
        let (yaml, volumes) = dbps_e2e::manifests::on_the_real_node(&yaml);
        for (claim, size) in volumes {
            let pvc = dbps_operator::children::names::data_pvc(&claim);
            node.volume(ctx.plane, &ns, &pvc, &size).await.unwrap();
            claims.push(claim);
        }
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
    let busybox = dbps_e2e::images::busybox().name;
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
    let (ok, said) = run_pod(&ctx, script_pod("saga", &busybox, &saga)).await;
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
    let (ok, said) = run_pod(&ctx, script_pod("iot", &busybox, &iot)).await;
    assert!(ok, "telemetry → alerts did not fire: {said}");
    drop(node);
}
