//! The three controllers and how they run: `DatabaseClaim` (`claim`; owns
//! the children of a dedicated instance, watches `Service`s and
//! `DatabaseServer`s), `Service` status and ownership table (`service`),
//! and `DatabaseServer` reachability (`server`). What they share is in
//! `context`; server-side apply and the status patch in `apply`.

mod apply;
mod claim;
mod context;
mod drift;
mod server;
mod service;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Service as KubeService;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::core::DeserializeGuard;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};

use crate::api::{DatabaseClaim, DatabaseServer, Service};
use crate::children::MANAGED_BY;
use crate::metrics::Metrics;

pub use apply::{APPLIED_HASH_ANNOTATION, is_subset, up_to_date};
pub use claim::FINALIZER;
pub use claim::{
    ROTATE_ANNOTATION, SKIP_CLEANUP_ANNOTATION, major, selector_matches, shared_database,
    slot_username,
};
pub use context::{Config, Context, Error, backoff_delay};
pub use drift::{Choice, choose, foreign};

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
