use std::time::Duration;

use clap::{Parser, Subcommand};
use dbps_operator::controller;

#[derive(Parser)]
#[command(
    name = "dbps-operator",
    version,
    about = "Kubernetes operator for the database-per-service pattern"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controllers against the cluster of the current kubeconfig or service account.
    Run(RunArgs),
    /// Print the CustomResourceDefinitions as YAML.
    Crd,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "WATCH_NAMESPACE")]
    namespace: Option<String>,
    /// Seconds between re-checks of an unchanged object.
    #[arg(long, env = "DBPS_RESYNC_SECONDS", default_value_t = 300)]
    resync_seconds: u64,
    /// DNS suffix of in-cluster Services.
    #[arg(long, env = "DBPS_CLUSTER_DOMAIN", default_value = "cluster.local")]
    cluster_domain: String,
    /// Keep the status only of DatabaseServers matching this label selector.
    #[arg(long, env = "DBPS_SERVER_SELECTOR")]
    server_selector: Option<String>,
    /// Log as JSON lines (default) or as text.
    #[arg(long, env = "DBPS_LOG_FORMAT", default_value = "json", value_parser = ["json", "text"])]
    log_format: String,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    match Cli::parse().command {
        Command::Crd => print!("{}", dbps_operator::api::crds_yaml()),
        Command::Run(args) => {
            init_logging(&args.log_format);
            let client = kube::Client::try_default().await?;
            let config = controller::Config {
                namespace: args.namespace,
                resync: Duration::from_secs(args.resync_seconds),
                cluster_domain: args.cluster_domain,
                instance: std::env::var("POD_NAME").ok(),
                server_selector: args.server_selector,
            };
            tracing::info!(namespace = ?config.namespace, "starting");
            controller::run(client, config, shutdown_signal()).await;
            tracing::info!("stopped");
        }
    }
    Ok(())
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if format == "json" {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
