//! The three controllers and how they run: `DatabaseClaim` (`claim`; owns
//! the children of a dedicated instance, watches `Service`s and
//! `DatabaseServer`s), `Service` status and ownership table (`service`),
//! and `DatabaseServer` reachability (`server`). What they share is in
//! `context`; server-side apply and the status patch in `apply`.

mod apply;
mod caches;
mod claim;
mod context;
mod drift;
mod server;
mod service;

use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Service as KubeService};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::core::DeserializeGuard;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};

use crate::api::{DatabaseClaim, DatabaseServer, Service};
use crate::children::MANAGED_BY;
use crate::metrics::Metrics;

pub use apply::{APPLIED_HASH_ANNOTATION, is_subset, up_to_date};
pub use caches::Caches;
pub use claim::FINALIZER;
pub use claim::{
    ROTATE_ANNOTATION, SKIP_CLEANUP_ANNOTATION, major, selector_matches, shared_database,
    slot_username,
};
pub use context::{Config, Context, Error, backoff_delay};
pub use drift::{Choice, choose, foreign};
pub use service::{LEGACY_TABLE, TABLE_SELECTOR, table_name};

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
    // Nothing is decided on a cache still filling (at start, a Role not
    // listed yet would look missing and be written again).
    ctx.caches.ready().await;
    let started = std::time::Instant::now();
    let result = reconcile.await;
    let reason = result.as_ref().err().map(Error::reason);
    ctx.metrics
        .reconciled(controller, started.elapsed(), reason);
    result
}

/// The claim changes that concern one Service or DatabaseServer within this
/// window are gathered into one reconcile of it (never held back longer).
const GATHER: Duration = Duration::from_millis(200);
/// While its claims keep changing, a Service's or server's windows double
/// up to this: a burst of claims is a few writes of it, not one per claim.
const GATHER_LONGEST: Duration = Duration::from_secs(2);

/// Claim reconciles in flight at once, which bounds the memory a burst of
/// claims takes. A server takes four times its `maxConnections` of them
/// at a time; its other claims wait in its line (`claim::Turns`) without
/// holding a slot, so this leaves room for four busy servers at the default.
const CLAIM_CONCURRENCY: u16 = 64;

/// The Services a claim concerns: its owner, and those it grants read
/// access (asked for, or still in force).
fn services_of(claim: &Arc<DeserializeGuard<DatabaseClaim>>) -> Vec<ObjectRef<Service>> {
    let Ok(claim) = claim.0.as_ref() else {
        return Vec::new();
    };
    caches::services_of(claim)
        .into_iter()
        .map(|(ns, n)| ObjectRef::new(&n).within(&ns))
        .collect()
}

/// The server a claim is placed on.
fn server_of(claim: &Arc<DeserializeGuard<DatabaseClaim>>) -> Option<ObjectRef<DatabaseServer>> {
    Some(ObjectRef::new(
        &claim.0.as_ref().ok()?.spec.server.as_ref()?.name,
    ))
}

/// Where a claim is placed, as [`caches::changed`] compares it: a server's
/// count of claims changes when a claim comes, goes or moves, not with its
/// finalizers or annotations.
fn placement(claim: &DeserializeGuard<DatabaseClaim>) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    let server = claim.0.as_ref().ok().and_then(|c| c.spec.server.as_ref());
    server.map(|s| &s.name).hash(&mut hasher);
    hasher.finish()
}

/// What is sent on `rx`, as a stream.
fn received<T: Send + 'static>(
    rx: tokio::sync::mpsc::UnboundedReceiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) })
}

/// A subscriber of a shared store's events.
fn subscribe<K>(
    writer: &kube::runtime::reflector::store::Writer<K>,
) -> kube::runtime::reflector::ReflectHandle<K>
where
    K: kube::runtime::reflector::Lookup + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    writer.subscribe().expect("a shared store has subscribers")
}

/// Drives a shared watch: its store and subscribers are fed as it is
/// polled; deletions go to `deletions`, errors to the log (the watch backs
/// off and goes on).
async fn drive<K>(
    watch: impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
    kind: &'static str,
    deletions: caches::Deletions<K>,
) where
    K: Send + Sync + 'static,
{
    let mut watch = std::pin::pin!(watch);
    while let Some(event) = watch.next().await {
        match event {
            Ok(watcher::Event::Delete(obj)) => deletions.deleted(obj).await,
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, kind, "watch"),
        }
    }
}

/// Runs the controllers until `shutdown` completes.
pub async fn run(
    client: Client,
    config: Config,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
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

    // One watch per kind of the API, shared by the controllers.
    let (claim_store, claim_writer) = caches::shared::<DeserializeGuard<DatabaseClaim>>();
    let (service_store, service_writer) = caches::shared::<Service>();
    let (server_store, server_writer) = caches::shared::<DatabaseServer>();
    let (role_store, role_writer) = caches::shared::<Role>();
    let (role_binding_store, role_binding_writer) = caches::shared::<RoleBinding>();
    let (table_store, table_writer) = caches::shared::<ConfigMap>();
    // The instances' children the operator made (its label): their changes
    // and deletions bring their claim back, and the claim reads them here.
    let (statefulset_store, statefulset_writer) = caches::shared::<StatefulSet>();
    let (instance_service_store, instance_service_writer) = caches::shared::<KubeService>();
    let (policy_store, policy_writer) = caches::shared::<NetworkPolicy>();
    let (statefulsets_for_claims, instance_services_for_claims, policies_for_claims) = (
        subscribe(&statefulset_writer),
        subscribe(&instance_service_writer),
        subscribe(&policy_writer),
    );
    let mut statefulset_deletions = caches::Deletions::new();
    let mut instance_service_deletions = caches::Deletions::new();
    let mut policy_deletions = caches::Deletions::new();
    let statefulsets_gone_for_claims = statefulset_deletions.listen();
    let instance_services_gone_for_claims = instance_service_deletions.listen();
    let policies_gone_for_claims = policy_deletions.listen();
    let tables_for_services = subscribe(&table_writer);
    let tables_for_fences = subscribe(&table_writer);
    let mut table_deletions = caches::Deletions::new();
    let tables_gone_for_services = table_deletions.listen();
    let roles_for_services = subscribe(&role_writer);
    let role_bindings_for_services = subscribe(&role_binding_writer);
    let (claims_for_claims, claims_for_services, claims_for_servers) = (
        subscribe(&claim_writer),
        subscribe(&claim_writer),
        subscribe(&claim_writer),
    );
    let (services_for_services, services_for_claims) =
        (subscribe(&service_writer), subscribe(&service_writer));
    let servers_for_claims = subscribe(&server_writer);
    let servers_for_servers = config
        .server_selector
        .is_none()
        .then(|| subscribe(&server_writer));
    // Deletions reach the controllers that follow another kind: a shared
    // store tells its subscribers only of objects that are there.
    let mut claim_deletions = caches::Deletions::new();
    let mut service_deletions = caches::Deletions::new();
    let mut server_deletions = caches::Deletions::new();
    let (claims_gone_for_services, claims_gone_for_servers) =
        (claim_deletions.listen(), claim_deletions.listen());
    let services_gone_for_claims = service_deletions.listen();
    let servers_gone_for_claims = server_deletions.listen();
    let mut role_deletions = caches::Deletions::new();
    let mut role_binding_deletions = caches::Deletions::new();
    let roles_gone_for_services = role_deletions.listen();
    let role_bindings_gone_for_services = role_binding_deletions.listen();
    let claims_by_service = caches::ClaimIndex::default();
    let watches = {
        let index = claims_by_service.clone();
        let claims = watcher(
            api_for::<DeserializeGuard<DatabaseClaim>>(&client, ns),
            watcher::Config::default(),
        )
        .default_backoff()
        .modify(caches::slim)
        // Indexed before cached: the index is never behind the cache.
        .inspect_ok(move |event| index.saw(event))
        .reflect_shared(claim_writer);
        let services = watcher(api_for::<Service>(&client, ns), watcher::Config::default())
            .default_backoff()
            .modify(caches::slim)
            .reflect_shared(service_writer);
        let servers = watcher(
            Api::<DatabaseServer>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff()
        .modify(caches::slim)
        .reflect_shared(server_writer);
        let roles = watcher(api_for::<Role>(&client, ns), owned.clone())
            .default_backoff()
            .modify(caches::slim)
            .reflect_shared(role_writer);
        let role_bindings = watcher(api_for::<RoleBinding>(&client, ns), owned.clone())
            .default_backoff()
            .modify(caches::slim)
            .reflect_shared(role_binding_writer);
        // Only the ownership tables, by their labels: no other ConfigMap is
        // seen, and of one labelled so under another name only its name is kept.
        let tables = watcher(
            api_for::<ConfigMap>(&client, ns),
            watcher::Config::default().labels(TABLE_SELECTOR),
        )
        .default_backoff()
        .modify(caches::slim_table)
        .reflect_shared(table_writer);
        let statefulsets = watcher(api_for::<StatefulSet>(&client, ns), owned.clone())
            .default_backoff()
            .modify(caches::slim)
            .reflect_shared(statefulset_writer);
        let instance_services = watcher(api_for::<KubeService>(&client, ns), owned.clone())
            .default_backoff()
            .modify(caches::slim)
            .reflect_shared(instance_service_writer);
        let policies = watcher(api_for::<NetworkPolicy>(&client, ns), owned.clone())
            .default_backoff()
            .modify(caches::slim)
            .reflect_shared(policy_writer);
        let mut stop_watches = stop.subscribe();
        async move {
            tokio::select! {
                _ = futures::future::join(
                    futures::future::join5(
                        drive(claims, "DatabaseClaim", claim_deletions),
                        drive(services, "Service", service_deletions),
                        drive(servers, "DatabaseServer", server_deletions),
                        drive(roles, "Role", role_deletions),
                        drive(role_bindings, "RoleBinding", role_binding_deletions),
                    ),
                    futures::future::join4(
                        drive(tables, "ConfigMap", table_deletions),
                        drive(statefulsets, "StatefulSet", statefulset_deletions),
                        drive(instance_services, "Service (core)", instance_service_deletions),
                        drive(policies, "NetworkPolicy", policy_deletions),
                    ),
                ) => {}
                _ = stop_watches.recv() => {}
            }
        }
    };
    let own = caches::OwnWrites::default();
    let (turns, woken) = claim::Turns::new();
    let (fences, asked) = claim::Fences::new(turns.waker());
    let (ctx, checked) = Context::new(
        client.clone(),
        config.clone(),
        metrics,
        Caches {
            claims: claim_store.clone(),
            services: service_store.clone(),
            servers: server_store.clone(),
            roles: role_store,
            role_bindings: role_binding_store,
            tables: table_store,
            statefulsets: statefulset_store,
            instance_services: instance_service_store,
            network_policies: policy_store,
            claims_by_service,
        },
        own.clone(),
        turns,
        fences.clone(),
    );
    let ctx = Arc::new(ctx);

    let service_claims = claim_store.clone();
    let server_claims = claim_store.clone();
    let phase_store = claim_store.clone();
    // The claim controller runs on what a user or another controller
    // changes of a claim, never on what it writes itself: its status, the
    // finalizer it adds, the Roles and RoleBindings it applies.
    let claims = Controller::for_shared_stream(
        caches::not_own(
            caches::changed(claims_for_claims, caches::spec_and_metadata),
            own.clone(),
        ),
        claim_store,
    )
    // An instance's children bring it back when they change (a replica
    // ready, an edit) or go; not for the claim's own writes, and not for
    // the watch's first list at start (each claim is reconciled then anyway).
    .owns_shared_stream(futures::stream::select(
        caches::not_own(
            caches::changed_since_start(statefulsets_for_claims, caches::any_change),
            own.clone(),
        ),
        statefulsets_gone_for_claims,
    ))
    .owns_shared_stream(futures::stream::select(
        caches::not_own(
            caches::changed_since_start(instance_services_for_claims, caches::any_change),
            own.clone(),
        ),
        instance_services_gone_for_claims,
    ))
    .owns_shared_stream(futures::stream::select(
        caches::not_own(
            caches::changed_since_start(policies_for_claims, caches::any_change),
            own.clone(),
        ),
        policies_gone_for_claims,
    ))
    .watches_shared_stream(
        // A Service's spec (selector, account), appearance or deletion
        // re-reconciles its claims; its status does not.
        futures::stream::select(
            caches::changed_since_start(services_for_claims, caches::spec_and_metadata),
            services_gone_for_claims,
        ),
        move |service| {
            let ns = service.namespace();
            let name = service.name_any();
            service_claims
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
    .watches_shared_stream(
        // So does a server's registration, namespaces or credentials.
        futures::stream::select(
            caches::changed_since_start(servers_for_claims, caches::spec_and_metadata),
            servers_gone_for_claims,
        ),
        move |server| {
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
    // A claim whose server was busy comes back when its turn comes.
    .reconcile_on(received(woken))
    .with_config(kube::runtime::controller::Config::default().concurrency(CLAIM_CONCURRENCY))
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

    // A Service's status and ownership entries follow its claims: the
    // changes of a burst are gathered (GATHER) into one write.
    let table_services = service_store.clone();
    let services = Controller::for_shared_stream(
        caches::changed(services_for_services, caches::spec_and_metadata),
        service_store,
    )
    // A change of a claim, for each Service it concerns, and a claim whose
    // Secret its table does not name yet asking for a pass, are gathered
    // together, by Service: one window per Service, not one for each kind
    // of reason (each pass of a large Service goes over all its claims).
    .reconcile_on(caches::throttled(
        futures::stream::select(
            futures::stream::select(claims_for_services, claims_gone_for_services)
                .flat_map(|claim| futures::stream::iter(services_of(&claim))),
            received(asked),
        ),
        |service| Some(service.clone()),
        GATHER,
        GATHER_LONGEST,
    ))
    // Its Role and RoleBinding, edited or deleted by someone else, are
    // written back.
    .owns_shared_stream(futures::stream::select(
        caches::not_own(roles_for_services, own.clone()),
        roles_gone_for_services,
    ))
    .owns_shared_stream(futures::stream::select(
        caches::not_own(role_bindings_for_services, own.clone()),
        role_bindings_gone_for_services,
    ))
    .watches_shared_stream(
        // An ownership table edited or deleted by someone else is written
        // back by its Service (the legacy table: by the Services of its
        // namespace).
        futures::stream::select(
            caches::not_own(tables_for_services, own.clone()),
            tables_gone_for_services,
        ),
        move |table| {
            let ns = table.namespace();
            let name = table.name_any();
            if !service::is_table(&name) {
                return Vec::new();
            }
            let of = service::table_service(&name).map(String::from);
            table_services
                .state()
                .into_iter()
                .filter(|s| s.namespace() == ns)
                .filter(|s| of.as_ref().is_none_or(|of| *of == s.name_any()))
                .map(|s| ObjectRef::from_obj(&*s))
                .collect::<Vec<_>>()
        },
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

    // A server's status counts its claims: it changes when one is placed
    // on it or leaves it, not with each claim's status, finalizers or
    // annotations. With a selector, only the selected servers are watched
    // for it.
    let servers = match (&config.server_selector, servers_for_servers) {
        (None, Some(all)) => Controller::for_shared_stream(
            caches::changed(all, caches::spec_and_metadata),
            server_store,
        ),
        (selector, _) => Controller::new(
            Api::<DatabaseServer>::all(client.clone()),
            watcher::Config::default().labels(selector.as_deref().unwrap_or_default()),
        ),
    };
    let servers = servers
        .watches_shared_stream(
            caches::throttled(
                futures::stream::select(
                    caches::changed(claims_for_servers, placement),
                    claims_gone_for_servers,
                ),
                server_of,
                GATHER,
                GATHER_LONGEST,
            ),
            |claim| server_of(&claim),
        )
        // A claim that could not reach its server has it looked at again
        // (gathered: a server down fails all its claims at once).
        .reconcile_on(caches::throttled(
            received(checked),
            |server| Some(server.clone()),
            GATHER,
            GATHER_LONGEST,
        ))
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

    // A claim waiting for its Service's table looks again when it changes.
    let mut fences_stop = stop.subscribe();
    let fenced = async move {
        let mut changes = std::pin::pin!(tables_for_fences);
        loop {
            tokio::select! {
                _ = fences_stop.recv() => return,
                table = changes.next() => match table {
                    Some(table) => fences.changed(&table),
                    None => return,
                },
            }
        }
    };

    // Claims by phase, and those waiting, for the metrics.
    let counter_ctx = ctx.clone();
    let mut counter_stop = stop.subscribe();
    let counts = async move {
        loop {
            let mut counts: Vec<(crate::api::ClaimPhase, i64)> = Vec::new();
            let phases = phase_store.state();
            // A claim whose status says nothing yet (it is written with
            // the claim's outcome) is on its way: Pending.
            for phase in phases.iter().filter_map(|c| {
                let claim = c.0.as_ref().ok()?;
                let phase = claim.status.as_ref().and_then(|s| s.phase);
                Some(phase.unwrap_or(crate::api::ClaimPhase::Pending))
            }) {
                match counts.iter_mut().find(|(p, _)| *p == phase) {
                    Some(entry) => entry.1 += 1,
                    None => counts.push((phase, 1)),
                }
            }
            counter_ctx.metrics.set_claims(counts);
            counter_ctx
                .metrics
                .set_waiting(counter_ctx.turns.waiting(), counter_ctx.fences.waiting());
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
    // Each on the heap: together they are too large for a thread's stack
    // in a debug build.
    tokio::join!(
        Box::pin(watches),
        Box::pin(claims),
        Box::pin(services),
        Box::pin(servers),
        Box::pin(counts),
        Box::pin(fenced),
        trigger
    );
}
