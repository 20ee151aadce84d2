//! `make demo`: a local Kubernetes control plane with fake nodes, the dbps
//! operator, and one dedicated database per engine from `examples/`, until Ctrl-C.

use std::time::{Duration, Instant};

use dbps_e2e::manifests::apply_yaml;
use dbps_e2e::operator::install_crds;
use dbps_e2e::{ControlPlane, Error};
use dbps_operator::api::{ClaimPhase, DatabaseClaim};
use dbps_operator::controller::{self, Config};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, PostParams};

const NAMESPACE: &str = "demo";
const EXAMPLES: [(&str, &str); 3] = [
    (
        "examples/orders-postgres.yaml",
        include_str!("../../../examples/orders-postgres.yaml"),
    ),
    (
        "examples/catalog-mongodb.yaml",
        include_str!("../../../examples/catalog-mongodb.yaml"),
    ),
    (
        "examples/telemetry-influxdb.yaml",
        include_str!("../../../examples/telemetry-influxdb.yaml"),
    ),
];

#[tokio::main]
async fn main() -> Result<(), Error> {
    let started = Instant::now();
    eprintln!(
        "starting etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok on loopback ports ..."
    );
    let plane = ControlPlane::start().await?;
    let client = plane.client().await?;
    install_crds(&client).await?;

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let operator = tokio::spawn(controller::run(
        client.clone(),
        Config::default(),
        async move {
            let _ = stopped.await;
        },
    ));
    eprintln!("operator running; applying the examples to namespace {NAMESPACE:?} ...");

    let namespace: Namespace = serde_json::from_value(serde_json::json!({
        "metadata": { "name": NAMESPACE, "labels": { "pod-security.kubernetes.io/enforce": "restricted" } }
    }))
    .expect("static namespace");
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await?;
    for (file, yaml) in EXAMPLES {
        let applied = apply_yaml(&client, NAMESPACE, yaml).await?;
        eprintln!("  {file}: {}", applied.join(", "));
    }

    let claims: Api<DatabaseClaim> = Api::namespaced(client.clone(), NAMESPACE);
    let deadline = Instant::now() + Duration::from_secs(120);
    let list = loop {
        let list = claims.list(&Default::default()).await?.items;
        let ready = list
            .iter()
            .all(|c| c.status.as_ref().and_then(|s| s.phase) == Some(ClaimPhase::Ready));
        if (ready && !list.is_empty()) || Instant::now() > deadline {
            break list;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    print_claims(&list);

    let bin = dbps_e2e::binaries::dir().map_err(Error::Binaries)?;
    println!(
        "\nEverything is up after {:.1}s; the local control plane is at {server}.\n\n  export KUBECONFIG={kc}\n  export PATH={bin}:$PATH\n  kubectl get dbps -n {NAMESPACE}\n  kubectl get statefulsets,pvc,networkpolicies,secrets -n {NAMESPACE}\n  kubectl explain databaseclaim.spec\n\nDatabase pods run on kwok's fake nodes: Kubernetes schedules them and reports them Ready,\nno database process runs behind them. Component logs are in {dir}.\nPress Ctrl-C to stop and clean up.",
        started.elapsed().as_secs_f64(),
        server = plane.server_url(),
        kc = plane.kubeconfig_path().display(),
        bin = bin.display(),
        dir = plane.dir().display(),
    );
    wait_for_shutdown().await;
    eprintln!("stopping ...");
    let _ = stop.send(());
    let _ = operator.await;
    drop(plane);
    Ok(())
}

fn print_claims(claims: &[DatabaseClaim]) {
    println!(
        "\n{:<12} {:<9} {:<10} {:<8} {:<18} ENDPOINT",
        "CLAIM", "ENGINE", "SERVICE", "PHASE", "BINDING"
    );
    for c in claims {
        let status = c.status.clone().unwrap_or_default();
        println!(
            "{:<12} {:<9} {:<10} {:<8} {:<18} {}",
            c.metadata.name.as_deref().unwrap_or_default(),
            c.spec.engine.as_str(),
            c.spec.service_ref.name,
            status.phase.map(|p| format!("{p:?}")).unwrap_or_default(),
            status.binding.map(|b| b.name).unwrap_or_default(),
            status
                .endpoint
                .map(|e| format!("{}:{}", e.host, e.port))
                .unwrap_or_default(),
        );
    }
}

async fn wait_for_shutdown() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
