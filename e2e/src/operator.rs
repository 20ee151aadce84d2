//! The dbps operator inside a test: CRDs installed, controllers running in
//! the test's runtime, scoped to the test's namespace, under a user of its own
//! so the audit log tells its requests apart.

use std::time::Duration;

use dbps_operator::controller::{self, Config};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, ResourceExt};
use tokio::sync::oneshot;

use crate::{Error, TestContext};

/// Applies every dbps CRD and waits until each is Established.
pub async fn install_crds(client: &Client) -> Result<(), Error> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in dbps_operator::api::crds() {
        let name = crd.name_any();
        api.patch(
            &name,
            &PatchParams::apply("dbps-e2e").force(),
            &Patch::Apply(&crd),
        )
        .await?;
        let established = await_condition(api.clone(), &name, conditions::is_crd_established());
        tokio::time::timeout(Duration::from_secs(30), established)
            .await
            .map_err(|_| Error::Wait(format!("CRD {name} not Established in 30s")))?
            .map_err(|e| Error::Wait(format!("CRD {name}: {e}")))?;
    }
    Ok(())
}

/// The API of the chart's claim finalizer policy, which the chart installs
/// where the cluster serves it (as `helm template --api-versions` names it).
pub const MUTATING_POLICY_API: &str = "admissionregistration.k8s.io/v1/MutatingAdmissionPolicy";

/// The chart's directory.
pub fn chart_dir() -> std::path::PathBuf {
    std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../charts/dbps-operator"
    ))
    .into()
}

/// Installs the chart's policy that gives each new `DatabaseClaim` the
/// operator's finalizer, as `helm install` (default values) makes it, and
/// waits until the apiserver applies it: a claim created in `namespace`
/// (dry run) comes back with the finalizer.
pub async fn install_claim_finalizer_policy(
    plane: &crate::control_plane::ControlPlane,
    client: &Client,
    namespace: &str,
) -> Result<(), Error> {
    use dbps_operator::api::DatabaseClaim;
    let chart = chart_dir();
    let out = plane.tool(
        "helm",
        &[
            "template",
            "dbps",
            &chart.display().to_string(),
            "--show-only",
            "templates/claim-finalizer-policy.yaml",
            // As `helm install` finds it on this apiserver (1.36).
            "--api-versions",
            MUTATING_POLICY_API,
        ],
    )?;
    if !out.status.success() {
        return Err(Error::Wait(format!(
            "helm template: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    crate::manifests::apply_yaml(client, namespace, &String::from_utf8_lossy(&out.stdout)).await?;
    let claims: Api<DatabaseClaim> = Api::namespaced(client.clone(), namespace);
    let probe: DatabaseClaim = serde_json::from_value(serde_json::json!({
        "apiVersion": "dbps.io/v1alpha1", "kind": "DatabaseClaim",
        "metadata": { "name": "finalizer-policy-probe" },
        "spec": { "serviceRef": { "name": "probe" }, "engine": "postgres" }
    }))
    .expect("a valid claim");
    let dry_run = kube::api::PostParams {
        dry_run: true,
        ..Default::default()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let created = claims.create(&dry_run, &probe).await?;
        if created
            .finalizers()
            .iter()
            .any(|f| f == controller::FINALIZER)
        {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(Error::Wait(
                "the claim finalizer policy not applied in 30s".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Label of the `DatabaseServer`s a test registers: its namespace.
pub const TEST_LABEL: &str = "dbps-e2e/test";

/// A running operator; stopped (gracefully) by [`Self::stop`] or on drop.
pub struct RunningOperator {
    /// The user the operator authenticates as.
    pub user: String,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningOperator {
    /// Starts the operator for `ctx`'s namespace with the given resync period,
    /// with cluster-admin rights.
    pub async fn start(ctx: &TestContext, resync: Duration) -> Result<Self, Error> {
        install_crds(&ctx.client).await?;
        let user = format!("dbps-operator.{}", ctx.namespace);
        Self::start_as(ctx, resync, &user, &["system:masters"]).await
    }

    /// As [`Self::start`], watching every namespace (for grants across
    /// namespaces): only for a test binary of its own, whose control plane
    /// no other test's operator shares.
    pub async fn start_all_namespaces(ctx: &TestContext, resync: Duration) -> Result<Self, Error> {
        install_crds(&ctx.client).await?;
        let user = format!("dbps-operator.{}", ctx.namespace);
        let client = ctx.plane().client_for(&user, &["system:masters"]).await?;
        let config = Config {
            namespace: None,
            resync,
            server_selector: Some(format!("{TEST_LABEL}={}", ctx.namespace)),
            ..Config::default()
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let metrics = std::sync::Arc::new(dbps_operator::metrics::Metrics::default());
        let task = tokio::spawn(controller::run(client, config, metrics, async move {
            let _ = stopped.await;
        }));
        Ok(Self {
            user,
            stop: Some(stop),
            task,
        })
    }

    /// Starts the operator authenticated as `user` in `groups`: RBAC decides
    /// what it may do (e.g. the chart's ServiceAccount and its ClusterRole).
    pub async fn start_as(
        ctx: &TestContext,
        resync: Duration,
        user: &str,
        groups: &[&str],
    ) -> Result<Self, Error> {
        // A dedicated instance is administered through its Service address;
        // from this process that is safe only on a plane whose Services are
        // loopback addresses (a real node's are reached from the node).
        if !ctx.plane().loopback_services() {
            return Err(Error::Wait(format!(
                "an operator in the test process cannot reach Services in {}; run it on the node (Node::run_operator_binary) or as a pod",
                ctx.plane().service_cidr()
            )));
        }
        let user = user.to_string();
        let client = ctx.plane().client_for(&user, groups).await?;
        let config = Config {
            namespace: Some(ctx.namespace.clone()),
            resync,
            // Each test's operator keeps the status of the servers its test registers.
            server_selector: Some(format!("{TEST_LABEL}={}", ctx.namespace)),
            ..Config::default()
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let metrics = std::sync::Arc::new(dbps_operator::metrics::Metrics::default());
        let task = tokio::spawn(controller::run(client, config, metrics, async move {
            let _ = stopped.await;
        }));
        Ok(Self {
            user,
            stop: Some(stop),
            task,
        })
    }

    /// Asks the controllers to finish and waits for them.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for RunningOperator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The `dbps-sample` binary `make test` builds (`cargo build -p dbps-samples`),
/// beside the test binaries' directory.
pub fn samples_binary() -> std::path::PathBuf {
    sibling("dbps-sample")
}

/// The `dbps-operator` binary `make test` builds (`cargo build -p dbps-operator`),
/// beside the test binaries' directory; `DBPS_OPERATOR_BIN` names another
/// (e.g. an earlier build, to compare).
pub fn binary() -> std::path::PathBuf {
    match std::env::var_os("DBPS_OPERATOR_BIN") {
        Some(path) => std::path::PathBuf::from(path),
        None => sibling("dbps-operator"),
    }
}

fn sibling(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let bin = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target directory")
        .join(name);
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo build --bin {name}`",
        bin.display()
    );
    bin
}
