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
use dbps_e2e::node::{Node, STORAGE_CLASS};
use dbps_operator::api::DatabaseClaim;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

/// The manifests' documents, with each claim made dedicated: the version of
/// the image made here for its engine, and a volume of the node.
fn dedicated(yaml: &str) -> String {
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let mut value: serde_yaml::Value = serde::Deserialize::deserialize(doc).unwrap();
        if value["kind"] == "DatabaseClaim" {
            let spec = value["spec"].as_mapping_mut().unwrap();
            spec.remove("server");
            let version = match spec["engine"].as_str().unwrap() {
                "postgres" => "15",
                "influxdb" => "1.6",
                _ => "1.24",
            };
            spec.insert("version".into(), version.into());
            let storage: serde_yaml::Value =
                serde_yaml::from_str(&format!("{{size: 1Gi, storageClassName: {STORAGE_CLASS}}}"))
                    .unwrap();
            spec.insert("storage".into(), storage);
        }
        out.push(serde_yaml::to_string(&value).unwrap());
    }
    out.join("---\n")
}

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
    Api::<Namespace>::all(ctx.client.clone())
        .patch(
            &ctx.namespace,
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "labels": { "pod-security.kubernetes.io/enforce": "restricted" } } })),
        )
        .await
        .unwrap();
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
    let claims = [
        "orders-db",
        "payments-db",
        "catalog-db",
        "devices-db",
        "telemetry-db",
        "alerts-db",
    ];
    for claim in claims {
        node.volume(ctx.plane, &ctx.namespace, &format!("data-{claim}-0"), "1Gi")
            .await
            .unwrap();
    }
    dbps_e2e::operator::install_crds(&ctx.client).await.unwrap();
    let ns = ctx.namespace.clone();
    node.run_operator(
        ctx.plane,
        &format!("dbps-operator.{ns}"),
        &["system:masters"],
        &[
            format!("--namespace={ns}"),
            "--resync-seconds=300".into(),
            format!("--server-selector={}={ns}", dbps_e2e::operator::TEST_LABEL),
            "--image-repository=mongodb=ferretdb".into(),
        ],
    )
    .unwrap();

    let started = Instant::now();
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../sample-services/manifests");
    for file in ["ecommerce.yaml", "iot.yaml"] {
        let yaml = std::fs::read_to_string(format!("{root}/{file}")).unwrap();
        assert!(yaml.contains(&samples.name), "{file} names another image");
        dbps_e2e::manifests::apply_yaml(&ctx.client, &ns, &dedicated(&yaml))
            .await
            .unwrap();
    }
    let api = ctx.api::<DatabaseClaim>();
    for claim in claims {
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
