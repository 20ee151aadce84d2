//! `make demo`: a local Kubernetes control plane with a fake node, ready for
//! kubectl, until Ctrl-C.

use dbps_e2e::ControlPlane;

#[tokio::main]
async fn main() -> Result<(), dbps_e2e::Error> {
    eprintln!(
        "starting etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok on loopback ports ..."
    );
    let plane = ControlPlane::start().await?;
    let bin = dbps_e2e::binaries::dir().map_err(dbps_e2e::Error::Binaries)?;
    println!(
        "\nThe local control plane is up at {server}.\n\n  export KUBECONFIG={kc}\n  export PATH={bin}:$PATH\n  kubectl get nodes\n  kubectl auth can-i --list\n\nComponent logs are in {dir}. Press Ctrl-C to stop and clean up.",
        server = plane.server_url(),
        kc = plane.kubeconfig_path().display(),
        bin = bin.display(),
        dir = plane.dir().display(),
    );
    wait_for_shutdown().await;
    eprintln!("stopping ...");
    drop(plane);
    Ok(())
}

async fn wait_for_shutdown() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
