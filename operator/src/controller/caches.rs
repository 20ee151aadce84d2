//! One watch per kind, shared: each of `DatabaseClaim`, `Service`,
//! `DatabaseServer`, and the Roles, RoleBindings, StatefulSets, Services and
//! NetworkPolicies the operator made, is
//! watched once, cached once, and its events fan out to the controllers
//! that need them. Reconciles read these caches instead of asking the
//! apiserver.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use kube::core::DeserializeGuard;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::{Resource, ResourceExt};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Service as KubeService};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};

use crate::api::{DatabaseClaim, DatabaseServer, Service};

/// Events a subscriber may lag behind the watch before the watch waits.
pub const SUBSCRIBER_BUFFER: usize = 1024;

/// The caches every reconcile reads.
#[derive(Clone)]
pub struct Caches {
    pub claims: Store<DeserializeGuard<DatabaseClaim>>,
    pub services: Store<Service>,
    pub servers: Store<DatabaseServer>,
    /// The Roles and RoleBindings the operator made (its label).
    pub roles: Store<Role>,
    pub role_bindings: Store<RoleBinding>,
    /// The ownership tables (`dbps-bindings-<service>`, one per Service,
    /// and the legacy `dbps-bindings`).
    pub tables: Store<ConfigMap>,
    /// Dedicated instances' StatefulSets, Services and NetworkPolicies the
    /// operator made (its label).
    pub statefulsets: Store<StatefulSet>,
    pub instance_services: Store<KubeService>,
    pub network_policies: Store<NetworkPolicy>,
    /// The claims by the Services they concern, so that a Service's pass
    /// looks at its own claims, not at every claim cached.
    pub claims_by_service: ClaimIndex,
}

impl Caches {
    /// Once every cache has been filled by its watch's first list. A wait
    /// begun before a cache was filled is not always woken when it is, so
    /// each wait is begun anew every 100 ms (a fresh wait sees a filled
    /// cache at once).
    pub async fn ready(&self) {
        loop {
            let all = async {
                futures::join!(
                    self.claims.wait_until_ready(),
                    self.services.wait_until_ready(),
                    self.servers.wait_until_ready(),
                    self.roles.wait_until_ready(),
                    self.role_bindings.wait_until_ready(),
                    self.tables.wait_until_ready(),
                    self.statefulsets.wait_until_ready(),
                    self.instance_services.wait_until_ready(),
                    self.network_policies.wait_until_ready(),
                )
            };
            if tokio::time::timeout(Duration::from_millis(100), all)
                .await
                .is_ok()
            {
                return;
            }
        }
    }

    /// Service `name` of namespace `ns`, as last seen.
    pub fn service(&self, ns: &str, name: &str) -> Option<Arc<Service>> {
        self.services.get(&ObjectRef::new(name).within(ns))
    }

    /// Role `name` of namespace `ns` the operator made, as last seen.
    pub fn role(&self, ns: &str, name: &str) -> Option<Role> {
        self.roles
            .get(&ObjectRef::new(name).within(ns))
            .map(|r| (*r).clone())
    }

    /// RoleBinding `name` of namespace `ns` the operator made, as last seen.
    pub fn role_binding(&self, ns: &str, name: &str) -> Option<RoleBinding> {
        self.role_bindings
            .get(&ObjectRef::new(name).within(ns))
            .map(|r| (*r).clone())
    }

    /// StatefulSet `name` of namespace `ns` the operator made, as last seen.
    pub fn statefulset(&self, ns: &str, name: &str) -> Option<StatefulSet> {
        self.statefulsets
            .get(&ObjectRef::new(name).within(ns))
            .map(|s| (*s).clone())
    }

    /// Service (core) `name` of namespace `ns` the operator made, as last seen.
    pub fn instance_service(&self, ns: &str, name: &str) -> Option<KubeService> {
        self.instance_services
            .get(&ObjectRef::new(name).within(ns))
            .map(|s| (*s).clone())
    }

    /// NetworkPolicy `name` of namespace `ns` the operator made, as last seen.
    pub fn network_policy(&self, ns: &str, name: &str) -> Option<NetworkPolicy> {
        self.network_policies
            .get(&ObjectRef::new(name).within(ns))
            .map(|s| (*s).clone())
    }

    /// Ownership table `name` of namespace `ns`, as last seen.
    pub fn table(&self, ns: &str, name: &str) -> Option<Arc<ConfigMap>> {
        self.tables.get(&ObjectRef::new(name).within(ns))
    }

    /// DatabaseServer `name`, as last seen.
    pub fn server(&self, name: &str) -> Option<Arc<DatabaseServer>> {
        self.servers.get(&ObjectRef::new(name))
    }

    /// The claims (that deserialize) that Service `ns`/`name` concerns
    /// (see [`ClaimIndex`]) and for which `keep` holds, as cached (shared,
    /// not copied).
    pub fn claims_of_service(
        &self,
        ns: &str,
        name: &str,
        keep: impl Fn(&DatabaseClaim) -> bool,
    ) -> Vec<Arc<DeserializeGuard<DatabaseClaim>>> {
        let mut claims = Vec::new();
        self.claims_by_service.each_claim(ns, name, |claim| {
            if let Some(c) = self.claims.get(claim)
                && c.0.as_ref().is_ok_and(&keep)
            {
                claims.push(c);
            }
        });
        claims
    }

    /// How many claims (that deserialize) `keep` holds for.
    pub fn count_claims_where(&self, keep: impl Fn(&DatabaseClaim) -> bool) -> usize {
        self.claims
            .state()
            .iter()
            .filter_map(|c| c.0.as_ref().ok())
            .filter(|c| keep(c))
            .count()
    }
}

/// The Services a claim concerns: its own, and those it grants read access
/// (asked for in its spec, or in force in its status), by namespace and name.
pub fn services_of(claim: &DatabaseClaim) -> Vec<(String, String)> {
    let Some(ns) = claim.metadata.namespace.as_deref() else {
        return Vec::new();
    };
    let mut services = vec![(ns.to_string(), claim.spec.service_ref.name.clone())];
    services.extend(
        claim
            .spec
            .readers
            .iter()
            .map(|r| (r.namespace_or(ns).to_string(), r.service.clone())),
    );
    services.extend(
        claim
            .status
            .iter()
            .flat_map(|s| &s.readers)
            .map(|r| (r.namespace.clone(), r.service.clone())),
    );
    services.sort();
    services.dedup();
    services
}

type ClaimKey = ObjectRef<DeserializeGuard<DatabaseClaim>>;

/// A claim's key in the index: its namespace and name (not the version and
/// uid a reference from the object carries, which the cache's lookup
/// ignores).
fn key_of(claim: &DeserializeGuard<DatabaseClaim>) -> ClaimKey {
    let meta = claim.meta();
    let key = ObjectRef::new(meta.name.as_deref().unwrap_or_default());
    match meta.namespace.as_deref() {
        Some(ns) => key.within(ns),
        None => key,
    }
}

/// The claims of the watch by the Services they concern ([`services_of`]).
/// It is fed the watch's events before the cache is ([`ClaimIndex::saw`]),
/// so it is never behind the cache: a claim new or changed there is in it
/// already (a claim the apiserver reports deleted leaves it a moment before
/// it leaves the cache). Whoever reads it takes the claims from the cache
/// and checks them there. A Service's pass costs in proportion to its own
/// claims, not to all of the namespace's.
#[derive(Clone, Default)]
pub struct ClaimIndex {
    inner: Arc<std::sync::Mutex<Indexed>>,
}

#[derive(Default)]
struct Indexed {
    by_service: HashMap<(String, String), std::collections::HashSet<ClaimKey>>,
    of_claim: HashMap<ClaimKey, Vec<(String, String)>>,
    /// The claims of a list under way, which replaces the index when done.
    relisted: Option<HashMap<ClaimKey, Vec<(String, String)>>>,
}

impl Indexed {
    fn set(&mut self, claim: ClaimKey, services: Vec<(String, String)>) {
        self.unset(&claim);
        self.add(claim, services);
    }

    /// `claim` concerns `services` too.
    fn add(&mut self, claim: ClaimKey, services: Vec<(String, String)>) {
        for service in &services {
            self.by_service
                .entry(service.clone())
                .or_default()
                .insert(claim.clone());
        }
        let known = self.of_claim.entry(claim).or_default();
        known.extend(services);
        known.sort();
        known.dedup();
    }

    fn unset(&mut self, claim: &ClaimKey) {
        for service in self.of_claim.remove(claim).into_iter().flatten() {
            if let Some(claims) = self.by_service.get_mut(&service) {
                claims.remove(claim);
                if claims.is_empty() {
                    self.by_service.remove(&service);
                }
            }
        }
    }
}

impl ClaimIndex {
    /// Takes in one event of the claim watch.
    pub fn saw(&self, event: &kube::runtime::watcher::Event<DeserializeGuard<DatabaseClaim>>) {
        use kube::runtime::watcher::Event;
        let services =
            |c: &DeserializeGuard<DatabaseClaim>| c.0.as_ref().map(services_of).unwrap_or_default();
        let mut index = self.inner.lock().unwrap();
        match event {
            Event::Apply(claim) => index.set(key_of(claim), services(claim)),
            Event::Delete(claim) => index.unset(&key_of(claim)),
            Event::Init => index.relisted = Some(HashMap::new()),
            Event::InitApply(claim) => {
                // Until the list is done, what it shows is added to what is
                // known: the cache still holds the claims as before it.
                let key = key_of(claim);
                let services = services(claim);
                index
                    .relisted
                    .get_or_insert_default()
                    .insert(key.clone(), services.clone());
                index.add(key, services);
            }
            Event::InitDone => {
                let listed = index.relisted.take().unwrap_or_default();
                index.by_service.clear();
                index.of_claim.clear();
                for (claim, services) in listed {
                    index.add(claim, services);
                }
            }
        }
    }

    /// Calls `each` with each claim Service `ns`/`name` concerns, under the
    /// index's lock (not copied out: a large Service's pass is frequent).
    pub fn each_claim(&self, ns: &str, name: &str, each: impl FnMut(&ClaimKey)) {
        let index = self.inner.lock().unwrap();
        if let Some(claims) = index.by_service.get(&(ns.to_string(), name.to_string())) {
            claims.iter().for_each(each);
        }
    }
}

/// Leaves out of a cached object what no reconcile reads: its managed
/// fields and the copy `kubectl apply` keeps of it (together often larger
/// than the rest). The ownership tables keep theirs: entries are told apart
/// by their field managers.
pub fn slim<K: Resource>(obj: &mut K) {
    let meta = obj.meta_mut();
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

/// A ConfigMap of the tables' labels that is not an ownership table by its
/// name (anyone who may make ConfigMaps can label one so): nothing reads
/// what it holds, so the cache keeps its name and not its contents.
pub fn slim_table(cm: &mut ConfigMap) {
    if super::service::is_table(&cm.name_any()) {
        return;
    }
    cm.data = None;
    cm.binary_data = None;
    let meta = &mut cm.metadata;
    meta.managed_fields = None;
    meta.annotations = None;
    meta.labels = None;
}

/// A shared store and the writer that fills it from a watch.
pub fn shared<K>() -> (Store<K>, reflector::store::Writer<K>)
where
    K: Resource + Clone + 'static,
    K::DynamicType: Default + Eq + Hash + Clone,
{
    reflector::store_shared(SUBSCRIBER_BUFFER)
}

/// The objects a watch saw deleted, for the controllers that must hear of
/// them: a shared store's subscribers hear only of objects that are there.
/// Each listener has a bounded buffer; a full one holds the watch back.
#[derive(Clone)]
pub struct Deletions<K> {
    listeners: Vec<tokio::sync::mpsc::Sender<Arc<K>>>,
}

impl<K: Send + Sync + 'static> Deletions<K> {
    pub fn new() -> Self {
        Self {
            listeners: Vec::new(),
        }
    }

    /// A stream of the objects deleted from now on.
    pub fn listen(&mut self) -> impl Stream<Item = Arc<K>> + Send + 'static {
        let (tx, rx) = tokio::sync::mpsc::channel(SUBSCRIBER_BUFFER);
        self.listeners.push(tx);
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|o| (o, rx)) })
    }

    /// Tells every listener that `obj` was deleted.
    pub async fn deleted(&self, obj: K) {
        let obj = Arc::new(obj);
        for listener in &self.listeners {
            let _ = listener.send(obj.clone()).await;
        }
    }
}

impl<K: Send + Sync + 'static> Default for Deletions<K> {
    fn default() -> Self {
        Self::new()
    }
}

/// What a controller reads of an object besides its status: the spec
/// (generation), labels, annotations (a rotation request is one),
/// finalizers, and the deletion mark. A status written by the operator
/// itself changes none of them.
pub fn spec_and_metadata<K: Resource>(obj: &K) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    obj.meta().generation.hash(&mut hasher);
    obj.labels().hash(&mut hasher);
    obj.annotations().hash(&mut hasher);
    obj.finalizers().hash(&mut hasher);
    obj.meta().deletion_timestamp.is_some().hash(&mut hasher);
    hasher.finish()
}

/// Any change of an object, its status included (its resourceVersion).
pub fn any_change<K: Resource>(obj: &K) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    obj.meta().resource_version.hash(&mut hasher);
    hasher.finish()
}

/// Writes this operator made, each by object and the resourceVersion the
/// apiserver gave it: the watch event that brings such a write back is the
/// operator's own doing, not a change to act on. An entry goes when its
/// event (or any later one of the object) is seen, or after [`OWN_WRITE_TTL`]
/// (its event came before the answer to the write: it was acted on).
#[derive(Clone, Default)]
pub struct OwnWrites {
    written: Arc<std::sync::Mutex<HashMap<ObjectKey, OwnWrite>>>,
}

/// One recorded write: the version the apiserver gave it, when, and the
/// [`desired_hash`](super::apply::desired_hash) of the object it applied.
struct OwnWrite {
    version: String,
    at: Instant,
    applied: Option<String>,
}

/// An object by kind, namespace and name.
type ObjectKey = (String, String, String);

/// How long a recorded write waits for its watch event.
const OWN_WRITE_TTL: Duration = Duration::from_secs(60);

fn own_key<K: Resource<DynamicType = ()>>(obj: &K) -> (String, String, String) {
    (
        K::kind(&()).into_owned(),
        obj.namespace().unwrap_or_default(),
        obj.name_any(),
    )
}

impl OwnWrites {
    /// Records `obj`, as the apiserver answered a write of it.
    pub fn record<K: Resource<DynamicType = ()>>(&self, obj: &K) {
        self.insert(obj, None);
    }

    /// [`record`](Self::record) of a write applied from a desired object
    /// whose hash is `hash`.
    pub fn record_applied<K: Resource<DynamicType = ()>>(&self, obj: &K, hash: String) {
        self.insert(obj, Some(hash));
    }

    fn insert<K: Resource<DynamicType = ()>>(&self, obj: &K, applied: Option<String>) {
        let Some(version) = obj.resource_version() else {
            return;
        };
        let now = Instant::now();
        let mut written = self.written.lock().unwrap();
        written.retain(|_, w| now.duration_since(w.at) < OWN_WRITE_TTL);
        let write = OwnWrite {
            version,
            at: now,
            applied,
        };
        written.insert(own_key(obj), write);
    }

    /// Whether the operator wrote `obj` since the copy given was read: a
    /// write of it is recorded whose event has not been seen, at another
    /// version than this copy's (a cache that lags behind that write).
    pub fn wrote_since<K: Resource<DynamicType = ()>>(&self, obj: &K) -> bool {
        self.since(obj).is_some()
    }

    /// Whether the operator applied `obj`, from a desired object whose hash
    /// is `hash`, since the copy given was read (as [`wrote_since`](Self::wrote_since)).
    pub fn applied_since<K: Resource<DynamicType = ()>>(&self, obj: &K, hash: &str) -> bool {
        self.since(obj)
            .flatten()
            .is_some_and(|applied| applied == hash)
    }

    /// The hash a write of `obj` newer than this copy was applied from
    /// (`Some(None)`: a write not applied from a desired object).
    fn since<K: Resource<DynamicType = ()>>(&self, obj: &K) -> Option<Option<String>> {
        let written = self.written.lock().unwrap();
        let write = written.get(&own_key(obj))?;
        (write.at.elapsed() < OWN_WRITE_TTL
            && obj.resource_version().as_deref() != Some(write.version.as_str()))
        .then(|| write.applied.clone())
    }

    /// Whether `obj` is a write this operator recorded (the entry goes
    /// either way: a later event of the object is someone else's).
    pub fn is_own<K: Resource<DynamicType = ()>>(&self, obj: &K) -> bool {
        let mut written = self.written.lock().unwrap();
        let key = own_key(obj);
        match written.remove(&key) {
            Some(write) => obj.resource_version().as_deref() == Some(write.version.as_str()),
            None => false,
        }
    }
}

/// The objects of `stream` that are not the operator's own writes.
pub fn not_own<K, S>(stream: S, own: OwnWrites) -> impl Stream<Item = Arc<K>> + Send
where
    K: Resource<DynamicType = ()> + Send + Sync + 'static,
    S: Stream<Item = Arc<K>> + Send,
{
    stream.filter(move |obj| std::future::ready(!own.is_own(obj.as_ref())))
}

/// Entries of [`changed`] not seen for this long are forgotten (a deleted
/// object's, or one unchanged for that long: its next event passes).
const FORGET_AFTER: Duration = Duration::from_secs(3600);

/// As [`changed`], but the first sight of an object made before this filter
/// was (at start, the watch's first list) does not pass: the objects that
/// follow it are reconciled at start anyway, from their own first sight.
pub fn changed_since_start<K, S>(stream: S, key: fn(&K) -> u64) -> impl Stream<Item = Arc<K>> + Send
where
    K: Resource + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send,
    S: Stream<Item = Arc<K>> + Send,
{
    let started = k8s_openapi::jiff::Timestamp::now();
    // Only objects made before the start are remembered: as many as there
    // were then.
    let mut seen: std::collections::HashSet<ObjectRef<K>> = std::collections::HashSet::new();
    changed(stream, key).filter(move |obj| {
        let before = obj
            .meta()
            .creation_timestamp
            .as_ref()
            .is_some_and(|t| t.0 < started);
        let first = before && seen.insert(ObjectRef::from_obj(obj.as_ref()));
        std::future::ready(!first)
    })
}

/// The objects of `stream` whose `key` differs from the one this filter
/// last passed for them (first sight included).
pub fn changed<K, S>(stream: S, key: fn(&K) -> u64) -> impl Stream<Item = Arc<K>> + Send
where
    K: Resource + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send,
    S: Stream<Item = Arc<K>> + Send,
{
    let mut seen: HashMap<ObjectRef<K>, (u64, Instant)> = HashMap::new();
    let mut swept = Instant::now();
    stream.filter(move |obj| {
        let now = Instant::now();
        if now.duration_since(swept) > FORGET_AFTER / 4 {
            seen.retain(|_, (_, at)| now.duration_since(*at) < FORGET_AFTER);
            swept = now;
        }
        let value = key(obj);
        let previous = seen.insert(ObjectRef::from_obj(obj.as_ref()), (value, now));
        std::future::ready(previous.map(|(v, _)| v) != Some(value))
    })
}

/// The objects of `stream`, at most one per `key` per window: the first of
/// a key opens a window, the last seen within it is passed when it ends.
/// Unlike a debounce, a steady flow of changes never holds a key back for
/// longer than a window. A window is `window` long for a key that was quiet;
/// for a key still busy when its last window ended, each next one is twice
/// as long, up to `longest` (a burst is gathered into fewer, larger passes).
pub fn throttled<T, S, Q>(
    stream: S,
    key: fn(&T) -> Option<Q>,
    window: Duration,
    longest: Duration,
) -> impl Stream<Item = T> + Send
where
    T: Send + 'static,
    Q: Eq + Hash + Clone + Send + 'static,
    S: Stream<Item = T> + Send + 'static,
{
    struct State<T, Q, S> {
        input: std::pin::Pin<Box<S>>,
        open: HashMap<Q, (tokio::time::Instant, T)>,
        /// When each key last went out, and the length of its last window.
        passed: HashMap<Q, (tokio::time::Instant, Duration)>,
        ended: bool,
    }
    let state: State<T, Q, S> = State {
        input: Box::pin(stream),
        open: HashMap::new(),
        passed: HashMap::new(),
        ended: false,
    };
    futures::stream::unfold(state, move |mut state| async move {
        loop {
            let now = tokio::time::Instant::now();
            let due = state
                .open
                .iter()
                .filter(|(_, (at, _))| *at <= now)
                .map(|(k, _)| k.clone())
                .next();
            if let Some(k) = due {
                let (_, item) = state.open.remove(&k).expect("present");
                state
                    .passed
                    .retain(|_, (at, _)| now.duration_since(*at) <= longest);
                let length = state.passed.get(&k).map_or(window, |(_, l)| *l);
                state.passed.insert(k, (now, length));
                return Some((item, state));
            }
            if state.ended {
                // What is still open goes out when its window ends.
                let next = state.open.values().map(|(at, _)| *at).min()?;
                tokio::time::sleep_until(next).await;
                continue;
            }
            let next = state.open.values().map(|(at, _)| *at).min();
            let wait = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                item = state.input.next() => match item {
                    Some(item) => match key(&item) {
                        Some(k) => {
                            // Now, not when this pass began waiting.
                            let now = tokio::time::Instant::now();
                            let at = match state.open.get(&k) {
                                Some((at, _)) => *at,
                                None => {
                                    // Busy: it went out less than a window ago.
                                    let length = match state.passed.get(&k) {
                                        Some((at, last)) if now.duration_since(*at) < *last => {
                                            (*last * 2).min(longest)
                                        }
                                        _ => window,
                                    };
                                    if let Some(entry) = state.passed.get_mut(&k) {
                                        entry.1 = length;
                                    }
                                    now + length
                                }
                            };
                            state.open.insert(k, (at, item));
                        }
                        None => return Some((item, state)),
                    },
                    None => state.ended = true,
                },
                _ = wait => {}
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_configmap_labelled_as_a_table_under_another_name_is_kept_as_its_name_alone() {
        let labelled = |name: &str| -> ConfigMap {
            serde_json::from_value(serde_json::json!({
                "metadata": {
                    "name": name, "namespace": "shop",
                    "labels": { "app.kubernetes.io/component": "ownership" },
                    "annotations": { "note": "x".repeat(1000) },
                    "managedFields": [{ "manager": "dbps-operator", "operation": "Apply" }],
                },
                "data": { "secret.orders-db-binding": "x".repeat(100_000) },
                "binaryData": { "blob": "AAAA" },
            }))
            .unwrap()
        };
        for name in ["dbps-bindings-orders", "dbps-bindings"] {
            let mut table = labelled(name);
            slim_table(&mut table);
            assert_eq!(table, labelled(name), "{name} is a table: kept whole");
        }
        for name in ["junk", "dbps-bindingsorders", "orders-dbps-bindings"] {
            let mut other = labelled(name);
            slim_table(&mut other);
            assert_eq!(other.name_any(), name);
            assert_eq!(other.namespace().as_deref(), Some("shop"));
            assert!(
                other.data.is_none() && other.binary_data.is_none(),
                "{name}"
            );
            assert!(other.metadata.labels.is_none() && other.metadata.annotations.is_none());
            assert!(other.metadata.managed_fields.is_none());
        }
    }

    fn claim(generation: i64, phase: Option<crate::api::ClaimPhase>) -> Arc<DatabaseClaim> {
        let mut claim: DatabaseClaim = serde_json::from_value(serde_json::json!({
            "apiVersion": "dbps.io/v1alpha1", "kind": "DatabaseClaim",
            "metadata": { "name": "orders-db", "namespace": "shop", "generation": generation },
            "spec": { "serviceRef": { "name": "orders" }, "engine": "postgres" }
        }))
        .unwrap();
        claim.status = phase.map(|phase| crate::api::DatabaseClaimStatus {
            phase: Some(phase),
            ..Default::default()
        });
        Arc::new(claim)
    }

    fn guarded(name: &str, service: &str, readers: &[&str]) -> DeserializeGuard<DatabaseClaim> {
        let readers: Vec<_> = readers
            .iter()
            .map(|r| serde_json::json!({ "service": r, "namespace": "shop" }))
            .collect();
        DeserializeGuard(Ok(serde_json::from_value(serde_json::json!({
            "apiVersion": "dbps.io/v1alpha1", "kind": "DatabaseClaim",
            "metadata": { "name": name, "namespace": "shop" },
            "spec": { "serviceRef": { "name": service }, "engine": "influxdb", "readers": readers }
        }))
        .unwrap()))
    }

    fn names(index: &ClaimIndex, service: &str) -> Vec<String> {
        let mut names = Vec::new();
        index.each_claim("shop", service, |c| names.push(c.name.clone()));
        names.sort();
        names
    }

    #[test]
    fn the_index_follows_the_claims_a_service_owns_and_reads() {
        use kube::runtime::watcher::Event;
        let index = ClaimIndex::default();
        index.saw(&Event::Apply(guarded("a", "orders", &[])));
        index.saw(&Event::Apply(guarded("b", "orders", &["billing"])));
        index.saw(&Event::Apply(guarded("c", "billing", &[])));
        assert_eq!(names(&index, "orders"), ["a", "b"]);
        assert_eq!(names(&index, "billing"), ["b", "c"]);
        // A grant taken back: the reader no longer sees the claim.
        index.saw(&Event::Apply(guarded("b", "orders", &[])));
        assert_eq!(names(&index, "billing"), ["c"]);
        index.saw(&Event::Delete(guarded("a", "orders", &[])));
        assert_eq!(names(&index, "orders"), ["b"]);
        // Another namespace's Service of the same name is another Service.
        let mut elsewhere = 0;
        index.each_claim("other", "orders", |_| elsewhere += 1);
        assert_eq!(elsewhere, 0);
        // A claim that does not deserialize concerns no Service.
        let broken: DeserializeGuard<DatabaseClaim> =
            DeserializeGuard(Err(kube::core::error_boundary::InvalidObject {
                metadata: kube::api::ObjectMeta {
                    name: Some("b".into()),
                    namespace: Some("shop".into()),
                    ..Default::default()
                },
                error: "bad".into(),
            }));
        index.saw(&Event::Apply(broken));
        assert!(names(&index, "orders").is_empty());
    }

    #[test]
    fn a_list_adds_what_it_shows_and_when_done_drops_what_it_did_not() {
        use kube::runtime::watcher::Event;
        let index = ClaimIndex::default();
        index.saw(&Event::Apply(guarded("gone", "orders", &[])));
        index.saw(&Event::Apply(guarded("moved", "orders", &["billing"])));
        index.saw(&Event::Init);
        index.saw(&Event::InitApply(guarded("moved", "orders", &[])));
        index.saw(&Event::InitApply(guarded("new", "orders", &[])));
        // While the list goes on, the cache still holds the claims as they
        // were: the index names them as before, and the listed ones too.
        assert_eq!(names(&index, "orders"), ["gone", "moved", "new"]);
        assert_eq!(names(&index, "billing"), ["moved"]);
        index.saw(&Event::InitDone);
        assert_eq!(names(&index, "orders"), ["moved", "new"]);
        assert!(names(&index, "billing").is_empty());
    }

    #[tokio::test]
    async fn only_changes_beyond_the_status_pass() {
        use crate::api::ClaimPhase::{Provisioning, Ready};
        let mut rotated = (*claim(2, Some(Ready))).clone();
        rotated
            .annotations_mut()
            .insert("dbps.io/rotate".into(), "1".into());
        let events = vec![
            claim(1, None),
            claim(1, Some(Provisioning)),
            claim(1, Some(Ready)),
            claim(2, Some(Ready)),
            claim(2, Some(Ready)),
            Arc::new(rotated),
        ];
        let passed: Vec<_> = changed(futures::stream::iter(events), spec_and_metadata)
            .map(|c| {
                (
                    c.metadata.generation,
                    c.annotations().contains_key("dbps.io/rotate"),
                )
            })
            .collect()
            .await;
        assert_eq!(
            passed,
            [(Some(1), false), (Some(2), false), (Some(2), true)]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_flow_passes_once_per_window_and_never_waits_longer() {
        // Changes of "a" every 100 ms for 2 s, and one of "b".
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            tx.send(("b", 0)).await.unwrap();
            for i in 0..20 {
                tx.send(("a", i)).await.unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        let input =
            futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) });
        let started = tokio::time::Instant::now();
        let window = Duration::from_millis(500);
        let out: Vec<(&str, i32, u128)> = throttled(input, |(k, _)| Some(*k), window, window)
            .map(|(k, i)| (k, i, started.elapsed().as_millis()))
            .collect()
            .await;
        let a: Vec<_> = out.iter().filter(|(k, ..)| *k == "a").collect();
        // One per 500 ms window, the last change of each, none later than
        // its window's end.
        assert_eq!(a.len(), 4, "{out:?}");
        assert_eq!(a.last().unwrap().1, 19, "the last change goes out");
        assert!(a.windows(2).all(|w| w[1].2 - w[0].2 >= 500), "{out:?}");
        assert!(a.iter().all(|(_, _, at)| *at <= 2000), "{out:?}");
        assert_eq!(out.iter().filter(|(k, ..)| *k == "b").count(), 1);
    }
}

#[cfg(test)]
mod gathering {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_burst_is_gathered_into_longer_windows_and_a_quiet_key_starts_short_again() {
        // Changes of "a" every 50 ms for 6 s, then one more after a pause.
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        tokio::spawn(async move {
            for i in 0..120 {
                tx.send(("a", i)).await.unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
            tx.send(("a", 1000)).await.unwrap();
        });
        let input =
            futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) });
        let started = tokio::time::Instant::now();
        let out: Vec<(i32, u128)> = throttled(
            input,
            |(k, _)| Some(*k),
            Duration::from_millis(200),
            Duration::from_secs(2),
        )
        .map(|(_, i)| (i, started.elapsed().as_millis()))
        .collect()
        .await;
        type Passed = Vec<(i32, u128)>;
        let (burst, after): (Passed, Passed) = out.iter().partition(|(i, _)| *i < 1000);
        // 200, 400, 800, 1600, 2000, 2000 ms windows, instead of thirty 200 ms ones.
        assert!(burst.len() <= 7, "{out:?}");
        assert_eq!(
            burst.first().unwrap().1,
            200,
            "the first change waits one short window"
        );
        assert_eq!(burst.last().unwrap().0, 119, "the last change goes out");
        let gaps: Vec<u128> = burst.windows(2).map(|w| w[1].1 - w[0].1).collect();
        assert!(
            gaps.iter().all(|g| *g <= 2000),
            "never longer than the longest: {gaps:?}"
        );
        // After a quiet spell the window is short again.
        // It was sent at 120 × 50 ms + 5 s.
        assert_eq!(after.len(), 1);
        assert_eq!(after[0].1, 11_000 + 200, "{out:?}");
    }

    #[test]
    fn a_cache_behind_an_own_apply_of_the_same_desired_object_needs_no_write() {
        let role = |version: &str| {
            let mut role = Role::default();
            role.metadata.name = Some("dbps-orders-bindings".into());
            role.metadata.namespace = Some("shop".into());
            role.metadata.resource_version = Some(version.into());
            role
        };
        let own = OwnWrites::default();
        own.record_applied(&role("11"), "hash-a".into());
        // The cache shows the version before the write: that write stands.
        assert!(own.wrote_since(&role("10")));
        assert!(own.applied_since(&role("10"), "hash-a"));
        // Another desired object is written all the same.
        assert!(!own.applied_since(&role("10"), "hash-b"));
        // The cache shows the write itself: compared as it is.
        assert!(!own.applied_since(&role("11"), "hash-a"));
        // The write's event is seen, then someone else's edit: that edit is
        // compared as it is, not taken for the write.
        assert!(own.is_own(&role("11")));
        assert!(!own.applied_since(&role("12"), "hash-a"));
        assert!(!own.is_own(&role("12")));
        // A write not applied from a desired object says nothing of one.
        own.record(&role("13"));
        assert!(own.wrote_since(&role("12")));
        assert!(!own.applied_since(&role("12"), "hash-a"));
    }
}
