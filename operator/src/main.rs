use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use dbps_operator::api::Engine;
use dbps_operator::children::{OperatorPods, Platform};
use dbps_operator::controller;
use dbps_operator::endpoints::{self, Health};
use dbps_operator::leader::{self, LeaseSettings};
use dbps_operator::metrics::Metrics;
use tokio::sync::watch;

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
    Run(Box<RunArgs>),
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
    /// Labels of the operator's own pods (`k=v,k=v`): each dedicated
    /// instance's NetworkPolicy admits pods with these labels in the
    /// operator's namespace (POD_NAMESPACE), so the operator can administer
    /// it. Leave unset when the operator runs outside the cluster.
    #[arg(long, env = "DBPS_OPERATOR_POD_LABELS", value_parser = parse_labels)]
    operator_pod_labels: Option<BTreeMap<String, String>>,
    /// Image repository of an engine's dedicated instances instead of the
    /// official one (`postgres=mirror.example/postgres`), for a mirror or
    /// another image that keeps the engine's contract. Repeat per engine.
    #[arg(long, env = "DBPS_IMAGE_REPOSITORIES", value_delimiter = ',', value_parser = parse_repository)]
    image_repository: Vec<(Engine, String)>,
    /// PostgreSQL extensions claims may ask for in their dedicated instances
    /// (`spec.extensions`), comma-separated; the image must have them.
    /// Default: none.
    #[arg(long, env = "DBPS_POSTGRES_EXTENSIONS", value_delimiter = ',')]
    postgres_extensions: Vec<String>,
    /// Keep the status only of DatabaseServers matching this label selector.
    #[arg(long, env = "DBPS_SERVER_SELECTOR")]
    server_selector: Option<String>,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "DBPS_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Run the controllers only while holding a Lease (for several replicas).
    #[arg(long, env = "DBPS_LEADER_ELECTION")]
    leader_election: bool,
    /// Name of the Lease.
    #[arg(long, env = "DBPS_LEASE_NAME", default_value = "dbps-operator")]
    lease_name: String,
    /// Namespace of the Lease (the pod's own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// Seconds a leader holds the Lease without renewing it.
    #[arg(long, env = "DBPS_LEASE_DURATION_SECONDS", default_value_t = 15)]
    lease_duration_seconds: u64,
    /// Log as JSON lines (default) or as text.
    #[arg(long, env = "DBPS_LOG_FORMAT", default_value = "json", value_parser = ["json", "text"])]
    log_format: String,
}

fn parse_labels(s: &str) -> Result<BTreeMap<String, String>, String> {
    s.split(',')
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                Ok((k.trim().to_string(), v.trim().to_string()))
            }
            _ => Err(format!("{pair:?} is not key=value")),
        })
        .collect()
}

fn parse_repository(s: &str) -> Result<(Engine, String), String> {
    let (engine, repository) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not engine=repository"))?;
    let engine = Engine::ALL
        .into_iter()
        .find(|e| e.as_str() == engine.trim())
        .ok_or_else(|| {
            let known: Vec<&str> = Engine::ALL.iter().map(|e| e.as_str()).collect();
            format!("unknown engine {engine:?} ({})", known.join(", "))
        })?;
    match repository.trim() {
        "" => Err(format!("{s:?} names no repository")),
        r if r.contains(':') && !r.contains('/') => Err(format!(
            "{r:?}: give the repository without a tag; the tag is the claim's version"
        )),
        r => Ok((engine, r.to_string())),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    match Cli::parse().command {
        Command::Crd => print!("{}", dbps_operator::api::crds_yaml()),
        Command::Run(args) => run(*args).await?,
    }
    Ok(())
}

async fn run(args: RunArgs) -> Result<(), Box<dyn std::error::Error>> {
    init_logging(&args.log_format);
    let client = kube::Client::try_default().await?;
    let instance = std::env::var("POD_NAME").ok();
    let config = controller::Config {
        namespace: args.namespace,
        resync: Duration::from_secs(args.resync_seconds),
        platform: Platform {
            cluster_domain: args.cluster_domain,
            operator: args.operator_pod_labels.map(|labels| OperatorPods {
                namespace: args.lease_namespace.clone(),
                labels,
            }),
            image_repositories: args.image_repository,
            postgres_extensions: args
                .postgres_extensions
                .into_iter()
                .map(|e| e.trim().to_string())
                .filter(|e| !e.is_empty())
                .collect(),
        },
        instance: instance.clone(),
        server_selector: args.server_selector,
    };
    let metrics = Arc::new(Metrics::default());
    let health = Health {
        metrics: metrics.clone(),
        ready: Default::default(),
    };

    // One shutdown signal (SIGTERM or Ctrl-C) for the endpoints and the controllers.
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        let _ = stop.send(true);
    });
    let until_stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let server = tokio::spawn(endpoints::serve(
        args.listen,
        health.clone(),
        until_stopped(stopped.clone()),
    ));
    tracing::info!(namespace = ?config.namespace, listen = %args.listen, "starting");

    if args.leader_election {
        let lease = LeaseSettings {
            namespace: args.lease_namespace,
            name: args.lease_name,
            identity: instance.unwrap_or_else(|| format!("dbps-operator-{}", std::process::id())),
            duration: Duration::from_secs(args.lease_duration_seconds),
        };
        // A standby is ready: it serves, and takes over when the leader goes.
        health.set_ready(true);
        let on_change = |leading| metrics.set_leader(leading);
        leader::run_while_leading(
            client.clone(),
            lease,
            |stop| controller::run(client.clone(), config.clone(), metrics.clone(), stop),
            on_change,
            until_stopped(stopped.clone()),
        )
        .await?;
    } else {
        health.set_ready(true);
        metrics.set_leader(true);
        controller::run(
            client,
            config,
            metrics.clone(),
            until_stopped(stopped.clone()),
        )
        .await;
    }
    if !*stopped.borrow() {
        // The controllers may only end on a shutdown: exit, to be started again.
        return Err("the controllers ended without a shutdown".into());
    }
    server.await??;
    tracing::info!("stopped");
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
