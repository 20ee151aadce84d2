//! The fence comes before the credentials. A Secret that carries credentials
//! (a binding, a read grant, a dedicated instance's admin Secret) is written
//! only once the ownership table of the Service it is for names it: from the
//! moment it exists, the admission policy refuses every other Service's pod
//! that references it. A claim whose Secret the table does not name yet
//! waits holding nothing (not a turn at its server), asks that Service for a
//! pass, and is woken when the Service's table names its Secrets.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use super::super::context::{Context, Error};
use super::super::service::table_name;
use super::status::{Outcome, update_status};
use super::turns::{ClaimRef, line_of};
use crate::api::{ClaimPhase, DatabaseClaim, READY, Reason, Service};

/// A Secret and the owner its table entry must name: a Service, or
/// `claim:<claim>` for a dedicated instance's admin Secret.
#[derive(Clone)]
pub struct Fence {
    pub secret: String,
    pub owner: String,
}

/// The table entries a waiting claim needs.
type Needs = Vec<Fence>;

/// Claims waiting for a Service's table, by the Service's namespace and name,
/// each with the entries it waits for.
pub struct Fences {
    waiting: Mutex<HashMap<(String, String), HashMap<ClaimRef, Needs>>>,
    wake: UnboundedSender<ClaimRef>,
    ask: UnboundedSender<ObjectRef<Service>>,
}

impl Fences {
    /// The fences, waking claims through `wake`; the stream of Services
    /// asked for a pass.
    pub fn new(
        wake: UnboundedSender<ClaimRef>,
    ) -> (Arc<Self>, UnboundedReceiver<ObjectRef<Service>>) {
        let (ask, asked) = unbounded_channel();
        let fences = Arc::new(Self {
            waiting: Mutex::default(),
            wake,
            ask,
        });
        (fences, asked)
    }

    /// The first of `fences` that `table` (the ownership table of Service
    /// `namespace`/`service`, as the cache shows it) does not name as its
    /// owner's; when there is one, `claim` waits until that table names all
    /// of them, and the Service is asked for a pass.
    pub fn missing(
        &self,
        table: impl FnOnce() -> Option<Arc<ConfigMap>>,
        namespace: &str,
        service: &str,
        fences: &[Fence],
        claim: ClaimRef,
    ) -> Option<String> {
        // Under the lock: a table change that lands between the look and the
        // wait still wakes the claim (the cache is updated before its
        // subscribers hear of it).
        let mut waiting = self.waiting.lock().unwrap();
        let key = (namespace.to_string(), service.to_string());
        let table = table();
        let Some(missing) = fences.iter().find(|f| !names(table.as_deref(), f)) else {
            // Nothing to wait for (any more): a wait of its own from before
            // is over.
            if let Some(claims) = waiting.get_mut(&key) {
                claims.remove(&claim);
                if claims.is_empty() {
                    waiting.remove(&key);
                }
            }
            return None;
        };
        waiting
            .entry(key)
            .or_default()
            .insert(claim, fences.to_vec());
        let _ = self.ask.send(ObjectRef::new(service).within(namespace));
        Some(missing.secret.clone())
    }

    /// A table changed: the claims waiting for its Service whose entries it
    /// now all names look again; the others wait on (a burst of a Service's
    /// claims is many changes of its table, each naming a few of them).
    pub fn changed(&self, table: &ConfigMap) {
        let name = table.name_any();
        let Some(service) = super::super::service::table_service(&name) else {
            return;
        };
        let key = (table.namespace().unwrap_or_default(), service.to_string());
        let mut woken = Vec::new();
        {
            let mut waiting = self.waiting.lock().unwrap();
            let Some(claims) = waiting.get_mut(&key) else {
                return;
            };
            claims.retain(|claim, needs| {
                let named = needs.iter().all(|need| names(Some(table), need));
                if named {
                    woken.push(claim.clone());
                }
                !named
            });
            if claims.is_empty() {
                waiting.remove(&key);
            }
        }
        for claim in woken {
            let _ = self.wake.send(claim);
        }
    }

    /// `claim` is gone: it waits for no table.
    pub fn forget(&self, claim: &ClaimRef) {
        self.waiting.lock().unwrap().retain(|_, claims| {
            claims.remove(claim);
            !claims.is_empty()
        });
    }

    /// The claims waiting for the table of Service `namespace`/`service`
    /// look again (it changed, or the Service is gone).
    pub fn release(&self, namespace: &str, service: &str) {
        let key = (namespace.to_string(), service.to_string());
        let woken = self.waiting.lock().unwrap().remove(&key);
        for claim in woken.into_iter().flat_map(HashMap::into_keys) {
            let _ = self.wake.send(claim);
        }
    }

    /// Claims waiting, over all tables.
    pub fn waiting(&self) -> usize {
        self.waiting
            .lock()
            .unwrap()
            .values()
            .map(HashMap::len)
            .sum()
    }
}

/// Whether `table` names `fence`'s Secret (`secret.<name>`) for its owner.
fn names(table: Option<&ConfigMap>, fence: &Fence) -> bool {
    table
        .and_then(|t| t.data.as_ref())
        .and_then(|d| d.get(&format!("secret.{}", fence.secret)))
        == Some(&fence.owner)
}

/// The first of `fences` the ownership table of Service `namespace`/`service`
/// does not name yet, as the cache shows it; `claim` then waits until that
/// table names them all.
pub(super) fn unfenced(
    ctx: &Context,
    claim: &DatabaseClaim,
    namespace: &str,
    service: &str,
    fences: &[Fence],
) -> Option<String> {
    ctx.fences.missing(
        || ctx.caches.table(namespace, &table_name(service)),
        namespace,
        service,
        fences,
        line_of(claim),
    )
}

/// What a claim waiting for the table of its own Service says: a claim not
/// accepted yet is accepted by it (its Secrets then enter the table).
pub(super) async fn wait(
    claim: &DatabaseClaim,
    service: &str,
    secret: &str,
    ctx: &Context,
) -> Result<Action, Error> {
    if !vetted(claim) {
        let message = format!(
            "waiting for the ownership table of Service {service:?} to name Secret {secret:?}, which is written once no other Service's pod can use it"
        );
        let outcome = Outcome::waiting(ClaimPhase::Provisioning, Reason::Provisioning, message);
        update_status(claim, ctx, outcome).await?;
    }
    Ok(Action::requeue(ctx.config.resync))
}

/// Whether the claim controller accepted `claim` for its Service: its status
/// says Ready or why not, and that is not another owner's object or database
/// in its way. Only an accepted claim's Secrets enter the ownership table.
pub fn vetted(claim: &DatabaseClaim) -> bool {
    claim
        .status
        .as_ref()
        .and_then(|s| crate::api::find_condition(&s.conditions, READY))
        .and_then(|c| Reason::parse(&c.reason))
        .is_some_and(|r| !r.is_conflict())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn table(service: &str, entries: &[(&str, &str)]) -> Arc<ConfigMap> {
        let mut cm = ConfigMap::default();
        cm.metadata.name = Some(table_name(service));
        cm.metadata.namespace = Some("shop".into());
        cm.data = Some(
            entries
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        );
        Arc::new(cm)
    }

    fn fence(secret: &str, owner: &str) -> Fence {
        Fence {
            secret: secret.into(),
            owner: owner.into(),
        }
    }

    #[tokio::test]
    async fn a_claim_waits_until_its_services_table_names_its_secret_for_that_service() {
        let (wake, mut woken) = unbounded_channel();
        let (fences, mut asked) = Fences::new(wake);
        let claim: ClaimRef = ObjectRef::new("orders-db").within("shop");
        let want = [fence("orders-db-binding", "orders")];

        // No table, or one naming the Secret for another Service: it waits,
        // and the Service is asked for a pass.
        let none = fences.missing(|| None, "shop", "orders", &want, claim.clone());
        assert_eq!(none.as_deref(), Some("orders-db-binding"));
        assert_eq!(
            asked.recv().await.unwrap(),
            ObjectRef::new("orders").within("shop")
        );
        let other = table("orders", &[("secret.orders-db-binding", "payments")]);
        let wrong = fences.missing(
            || Some(other.clone()),
            "shop",
            "orders",
            &want,
            claim.clone(),
        );
        assert!(wrong.is_some());
        assert_eq!(fences.waiting(), 1, "waiting once");

        // Another Service's table changing does not wake it, even naming the
        // Secret; nor does its own naming other claims' Secrets, or this one
        // for another owner. Its own naming it for its Service does, once.
        fences.changed(&table(
            "payments",
            &[("secret.orders-db-binding", "orders")],
        ));
        fences.changed(&table(
            "orders",
            &[
                ("secret.orders-cache-binding", "orders"),
                ("secret.orders-db-binding", "claim:orders-db"),
            ],
        ));
        assert!(woken.try_recv().is_err());
        assert_eq!(fences.waiting(), 1);
        fences.changed(&table("orders", &[("secret.orders-db-binding", "orders")]));
        assert_eq!(woken.recv().await.unwrap(), claim);
        assert_eq!(fences.waiting(), 0);
        fences.changed(&table("orders", &[("secret.orders-db-binding", "orders")]));
        assert!(woken.try_recv().is_err(), "woken once");

        // Named for its Service: nothing to wait for.
        let named = table("orders", &[("secret.orders-db-binding", "orders")]);
        assert!(
            fences
                .missing(|| Some(named), "shop", "orders", &want, claim)
                .is_none()
        );
        assert_eq!(fences.waiting(), 0);
    }

    #[tokio::test]
    async fn a_claim_waiting_for_two_entries_is_woken_when_both_are_named_and_forgotten_when_gone()
    {
        let (wake, mut woken) = unbounded_channel();
        let (fences, _asked) = Fences::new(wake);
        let claim: ClaimRef = ObjectRef::new("orders-db").within("shop");
        let want = [
            fence("orders-db-admin", "claim:orders-db"),
            fence("orders-db-binding", "orders"),
        ];
        assert!(
            fences
                .missing(|| None, "shop", "orders", &want, claim.clone())
                .is_some()
        );
        fences.changed(&table(
            "orders",
            &[("secret.orders-db-admin", "claim:orders-db")],
        ));
        assert!(woken.try_recv().is_err(), "one of two named");
        fences.changed(&table(
            "orders",
            &[
                ("secret.orders-db-admin", "claim:orders-db"),
                ("secret.orders-db-binding", "orders"),
            ],
        ));
        assert_eq!(woken.recv().await.unwrap(), claim);

        // A deleted claim waits for nothing; a look that finds all named
        // ends a wait from before.
        fences.missing(|| None, "shop", "orders", &want, claim.clone());
        fences.missing(|| None, "shop", "payments", &want, claim.clone());
        assert_eq!(fences.waiting(), 2);
        fences.forget(&claim);
        assert_eq!(fences.waiting(), 0);
        fences.missing(|| None, "shop", "orders", &want, claim.clone());
        let named = table(
            "orders",
            &[
                ("secret.orders-db-admin", "claim:orders-db"),
                ("secret.orders-db-binding", "orders"),
            ],
        );
        assert!(
            fences
                .missing(|| Some(named), "shop", "orders", &want, claim)
                .is_none()
        );
        assert_eq!(fences.waiting(), 0);
        assert!(woken.try_recv().is_err());
    }
}
