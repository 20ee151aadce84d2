//! The controllers: one for `DatabaseClaim` (owns the children of a
//! dedicated instance, watches `Service`), one for `Service` status.

mod apply;
mod claim;
mod drift;
mod server;
mod service;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Service as KubeService;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::core::DeserializeGuard;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{finalizer, watcher};
use kube::{Api, Client, Resource, ResourceExt};

use crate::api::{DatabaseClaim, DatabaseServer, Reason, Service};
use crate::children::MANAGED_BY;
use crate::metrics::Metrics;

pub use apply::{APPLIED_HASH_ANNOTATION, is_subset, up_to_date};
pub use claim::{
    ROTATE_ANNOTATION, SKIP_CLEANUP_ANNOTATION, major, selector_matches, shared_database,
    slot_username,
};
pub use drift::{Choice, choose, foreign};

/// Finalizer that runs a claim's cleanup exactly once.
pub const FINALIZER: &str = "dbps.io/cleanup";

/// How the operator runs.
#[derive(Clone, Debug)]
pub struct Config {
    /// Watch only this namespace; `None` watches all.
    pub namespace: Option<String>,
    /// Re-check every object this often even when nothing changed.
    pub resync: Duration,
    /// Cluster domain, the operator's own pods and image repositories.
    pub platform: crate::children::Platform,
    /// Reporting instance in events (the pod name).
    pub instance: Option<String>,
    /// Label selector of the `DatabaseServer`s whose status this operator
    /// keeps (all when `None`). Claims may use any server.
    pub server_selector: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            namespace: None,
            resync: Duration::from_secs(300),
            platform: crate::children::Platform::default(),
            instance: None,
            server_selector: None,
        }
    }
}

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub config: Config,
    pub servers: crate::servers::Servers,
    pub metrics: Arc<Metrics>,
    failures: Mutex<HashMap<String, u32>>,
    cluster: tokio::sync::OnceCell<String>,
}

impl Context {
    pub fn new(client: Client, config: Config, metrics: Arc<Metrics>) -> Self {
        let reporter = Reporter {
            controller: MANAGED_BY.into(),
            instance: config.instance.clone(),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            config,
            servers: Default::default(),
            metrics,
            failures: Mutex::default(),
            cluster: tokio::sync::OnceCell::new(),
        }
    }

    /// The identity of this cluster in ownership marks: the UID of its
    /// `kube-system` namespace (asked once).
    pub async fn cluster_id(&self) -> Result<String, Error> {
        self.cluster
            .get_or_try_init(|| async {
                let namespaces: Api<k8s_openapi::api::core::v1::Namespace> =
                    Api::all(self.client.clone());
                Ok::<_, Error>(
                    namespaces
                        .get("kube-system")
                        .await?
                        .uid()
                        .unwrap_or_default(),
                )
            })
            .await
            .cloned()
    }

    fn api<K>(&self, namespace: &str) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// Next delay after a transient failure of `key`.
    fn backoff(&self, key: String) -> Duration {
        let mut failures = self.failures.lock().unwrap();
        let n = failures.entry(key).or_insert(0);
        *n = n.saturating_add(1);
        backoff_delay(*n)
    }

    fn succeeded(&self, key: &str) {
        self.failures.lock().unwrap().remove(key);
    }
}

/// Delay before retry number `failures` (from 1): 1 s, doubling, at most 5 min.
pub fn backoff_delay(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(9);
    Duration::from_secs(1 << exponent).min(Duration::from_secs(300))
}

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object could not be read as the current API (e.g. written by
    /// another version); waits for a change.
    #[error("object does not match the dbps.io/v1alpha1 schema: {0}")]
    InvalidObject(String),
    /// The claim cannot be fulfilled as written; waits for a change.
    #[error("invalid spec: {0}")]
    InvalidSpec(String),
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A database server could not be used; retried with backoff.
    #[error("database server: {1}")]
    Unavailable(Reason, String),
    /// Cleanup outside Kubernetes failed; retried.
    #[error("cleanup: {0}")]
    Cleanup(String),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<finalizer::Error<Error>>),
}

impl Error {
    /// A stable label for logs and metrics.
    pub fn reason(&self) -> Reason {
        match self {
            Error::InvalidObject(_) => Reason::InvalidObject,
            Error::InvalidSpec(_) => Reason::InvalidSpec,
            Error::Kube(_) => Reason::KubernetesApi,
            Error::Cleanup(_) => Reason::CleanupFailed,
            Error::Unavailable(reason, _) => *reason,
            Error::Finalizer(e) => match &**e {
                finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e.reason(),
                _ => Reason::Finalizer,
            },
        }
    }

    /// Invalid input waits for a change; everything else is retried.
    pub fn is_permanent(&self) -> bool {
        self.reason().is_permanent()
    }
}

fn error_policy<K>(obj: Arc<K>, error: &Error, ctx: Arc<Context>) -> Action
where
    K: Resource,
    K::DynamicType: Default,
{
    let key = format!(
        "{}/{}/{}",
        K::kind(&Default::default()),
        obj.namespace().unwrap_or_default(),
        obj.name_any()
    )
    .replace("//", "/");
    if error.is_permanent() {
        tracing::warn!(object = %key, reason = %error.reason(), %error, "waiting for a change");
        Action::await_change()
    } else {
        let delay = ctx.backoff(key.clone());
        tracing::warn!(object = %key, reason = %error.reason(), %error, ?delay, "retrying");
        Action::requeue(delay)
    }
}

fn api_for<K>(client: &Client, namespace: &Option<String>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    <K as Resource>::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Times a reconcile and counts it, with its error reason.
async fn measured(
    ctx: &Context,
    controller: &'static str,
    reconcile: impl std::future::Future<Output = Result<Action, Error>>,
) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    let result = reconcile.await;
    let reason = result.as_ref().err().map(Error::reason);
    ctx.metrics
        .reconciled(controller, started.elapsed(), reason);
    result
}

/// Runs the controllers until `shutdown` completes.
pub async fn run(
    client: Client,
    config: Config,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let ctx = Arc::new(Context::new(client.clone(), config.clone(), metrics));
    let ns = &config.namespace;
    let owned =
        watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={MANAGED_BY}"));
    let (stop, _) = tokio::sync::broadcast::channel::<()>(1);
    let stopped = |stop: &tokio::sync::broadcast::Sender<()>| {
        let mut rx = stop.subscribe();
        async move {
            let _ = rx.recv().await;
        }
    };

    let claims = Controller::new(
        api_for::<DeserializeGuard<DatabaseClaim>>(&client, ns),
        watcher::Config::default(),
    );
    let claim_store = claims.store();
    let phase_store = claim_store.clone();
    let server_claims = claim_store.clone();
    let claims = claims
        .owns(api_for::<StatefulSet>(&client, ns), owned.clone())
        .owns(api_for::<KubeService>(&client, ns), owned.clone())
        .owns(api_for::<NetworkPolicy>(&client, ns), owned.clone())
        .owns(api_for::<Role>(&client, ns), owned.clone())
        .owns(api_for::<RoleBinding>(&client, ns), owned)
        .watches(
            api_for::<Service>(&client, ns),
            watcher::Config::default(),
            move |service| {
                // A Service change (selector, account, appearance) re-reconciles its claims.
                let ns = service.namespace();
                let name = service.name_any();
                claim_store
                    .state()
                    .into_iter()
                    .filter(|c| {
                        c.0.as_ref()
                            .is_ok_and(|c| c.namespace() == ns && c.spec.service_ref.name == name)
                    })
                    .map(|c| ObjectRef::from_obj(&*c))
                    .collect::<Vec<_>>()
            },
        )
        .watches(
            Api::<DatabaseServer>::all(client.clone()),
            watcher::Config::default(),
            move |server| {
                // A server change (registration, namespaces, credentials) re-reconciles its claims.
                let name = server.name_any();
                server_claims
                    .state()
                    .into_iter()
                    .filter(|c| {
                        c.0.as_ref()
                            .is_ok_and(|c| c.spec.server.as_ref().is_some_and(|s| s.name == name))
                    })
                    .map(|c| ObjectRef::from_obj(&*c))
                    .collect::<Vec<_>>()
            },
        )
        .graceful_shutdown_on(stopped(&stop))
        .run(
            |o, c| async move { measured(&c.clone(), "claim", claim::reconcile(o, c)).await },
            error_policy,
            ctx.clone(),
        )
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "claim reconcile");
            }
        });

    let services = Controller::new(api_for::<Service>(&client, ns), watcher::Config::default())
        .watches(
            api_for::<DatabaseClaim>(&client, ns),
            watcher::Config::default(),
            |claim| Some(ObjectRef::new(&claim.spec.service_ref.name).within(&claim.namespace()?)),
        )
        .graceful_shutdown_on(stopped(&stop))
        .run(
            |o, c| async move { measured(&c.clone(), "service", service::reconcile(o, c)).await },
            error_policy,
            ctx.clone(),
        )
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "service reconcile");
            }
        });

    let mut selected = watcher::Config::default();
    if let Some(selector) = &config.server_selector {
        selected = selected.labels(selector);
    }
    let servers = Controller::new(Api::<DatabaseServer>::all(client.clone()), selected)
        .watches(
            api_for::<DatabaseClaim>(&client, ns),
            watcher::Config::default(),
            |claim| claim.spec.server.as_ref().map(|s| ObjectRef::new(&s.name)),
        )
        .graceful_shutdown_on(stopped(&stop))
        .run(
            |o, c| async move { measured(&c.clone(), "server", server::reconcile(o, c)).await },
            error_policy,
            ctx.clone(),
        )
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "server reconcile");
            }
        });

    // Claims by phase, for the metrics.
    let counter_ctx = ctx.clone();
    let mut counter_stop = stop.subscribe();
    let counts = async move {
        loop {
            let mut counts: Vec<(crate::api::ClaimPhase, i64)> = Vec::new();
            let phases = phase_store.state();
            for phase in phases
                .iter()
                .filter_map(|c| c.0.as_ref().ok()?.status.as_ref()?.phase)
            {
                match counts.iter_mut().find(|(p, _)| *p == phase) {
                    Some(entry) => entry.1 += 1,
                    None => counts.push((phase, 1)),
                }
            }
            counter_ctx.metrics.set_claims(counts);
            tokio::select! {
                _ = counter_stop.recv() => return,
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
        }
    };
    let trigger = async move {
        shutdown.await;
        let _ = stop.send(());
    };
    tokio::join!(claims, services, servers, counts, trigger);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_failures_back_off_exponentially_up_to_five_minutes() {
        let delays: Vec<u64> = [1, 2, 3, 4, 9, 10, 50]
            .map(|n| backoff_delay(n).as_secs())
            .to_vec();
        assert_eq!(delays, [1, 2, 4, 8, 256, 300, 300]);
    }

    #[test]
    fn invalid_input_waits_for_a_change_and_api_faults_are_retried() {
        assert!(Error::InvalidSpec("x".into()).is_permanent());
        assert!(Error::InvalidObject("x".into()).is_permanent());
        let transient = Error::Kube(kube::Error::Service("connection refused".into()));
        assert!(!transient.is_permanent());
        assert_eq!(transient.reason(), Reason::KubernetesApi);
        let unreachable = Error::Unavailable(Reason::ServerUnreachable, "down".into());
        assert_eq!(unreachable.reason().as_str(), "ServerUnreachable");
        assert!(!unreachable.is_permanent());
        let wrapped = Error::Finalizer(Box::new(finalizer::Error::ApplyFailed(
            Error::InvalidSpec("x".into()),
        )));
        assert!(wrapped.is_permanent());
    }
}
