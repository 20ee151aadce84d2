//! One watch per kind, shared: each of `DatabaseClaim`, `Service`,
//! `DatabaseServer`, and the Roles and RoleBindings the operator made, is
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
}

impl Caches {
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

    /// DatabaseServer `name`, as last seen.
    pub fn server(&self, name: &str) -> Option<Arc<DatabaseServer>> {
        self.servers.get(&ObjectRef::new(name))
    }

    /// The claims (that deserialize) for which `keep` holds.
    pub fn claims_where(&self, keep: impl Fn(&DatabaseClaim) -> bool) -> Vec<DatabaseClaim> {
        self.claims
            .state()
            .iter()
            .filter_map(|c| c.0.as_ref().ok())
            .filter(|c| keep(c))
            .cloned()
            .collect()
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

/// Entries of [`changed`] not seen for this long are forgotten (a deleted
/// object's, or one unchanged for that long: its next event passes).
const FORGET_AFTER: Duration = Duration::from_secs(3600);

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

/// The objects of `stream`, at most one per `key` per `window`: the first
/// of a key opens a window, the last seen within it is passed when it ends.
/// Unlike a debounce, a steady flow of changes never holds a key back for
/// longer than `window`.
pub fn throttled<T, S, Q>(
    stream: S,
    key: fn(&T) -> Option<Q>,
    window: Duration,
) -> impl Stream<Item = T> + Send
where
    T: Send + 'static,
    Q: Eq + Hash + Clone + Send + 'static,
    S: Stream<Item = T> + Send + 'static,
{
    struct State<T, Q, S> {
        input: std::pin::Pin<Box<S>>,
        open: HashMap<Q, (tokio::time::Instant, T)>,
        ended: bool,
    }
    let state: State<T, Q, S> = State {
        input: Box::pin(stream),
        open: HashMap::new(),
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
                            let at = state.open.get(&k).map_or(now + window, |(at, _)| *at);
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
        let out: Vec<(&str, i32, u128)> =
            throttled(input, |(k, _)| Some(*k), Duration::from_millis(500))
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
