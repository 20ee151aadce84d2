//! The fence comes before the credentials. A Secret that carries credentials
//! (a binding, a read grant, a dedicated instance's admin Secret) is written
//! only once the ownership table of the Service it is for names it: from the
//! moment it exists, the admission policy refuses every other Service's pod
//! that references it. A claim whose Secret the table does not name yet
//! waits holding nothing (not a turn at its server), asks that Service for a
//! pass, and is woken when the Service's table changes.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use super::super::context::{Context, Error};
use super::super::service::table_name;
use super::status::{Outcome, update_status};
use super::turns::ClaimRef;
use crate::api::{ClaimPhase, DatabaseClaim, READY, Reason, Service};

/// A Secret and the owner its table entry must name: a Service, or
/// `claim:<claim>` for a dedicated instance's admin Secret.
pub struct Fence {
    pub secret: String,
    pub owner: String,
}

/// Claims waiting for a Service's table, by the Service's namespace and name.
pub struct Fences {
    waiting: Mutex<HashMap<(String, String), HashSet<ClaimRef>>>,
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
    /// owner's; when there is one, `claim` waits for that table to change
    /// and the Service is asked for a pass.
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
        let table = table();
        let data = table.as_ref().and_then(|t| t.data.as_ref());
        let missing = fences.iter().find(|f| {
            data.and_then(|d| d.get(&format!("secret.{}", f.secret))) != Some(&f.owner)
        })?;
        waiting
            .entry((namespace.to_string(), service.to_string()))
            .or_default()
            .insert(claim);
        let _ = self.ask.send(ObjectRef::new(service).within(namespace));
        Some(missing.secret.clone())
    }

    /// A table changed: the claims waiting for its Service look again.
    pub fn changed(&self, table: &ConfigMap) {
        let name = table.name_any();
        if let Some(service) = super::super::service::table_service(&name) {
            self.release(&table.namespace().unwrap_or_default(), service);
        }
    }

    /// The claims waiting for the table of Service `namespace`/`service`
    /// look again (it changed, or the Service is gone).
    pub fn release(&self, namespace: &str, service: &str) {
        let key = (namespace.to_string(), service.to_string());
        let woken = self.waiting.lock().unwrap().remove(&key);
        for claim in woken.into_iter().flatten() {
            let _ = self.wake.send(claim);
        }
    }

    /// Claims waiting, over all tables.
    pub fn waiting(&self) -> usize {
        self.waiting
            .lock()
            .unwrap()
            .values()
            .map(HashSet::len)
            .sum()
    }
}

/// The first of `fences` the ownership table of Service `namespace`/`service`
/// does not name yet, as the cache shows it; `claim` then waits for that
/// table to change.
pub(super) fn unfenced(
    ctx: &Context,
    claim: &DatabaseClaim,
    namespace: &str,
    service: &str,
    fences: &[Fence],
) -> Option<String> {
    let line = ClaimRef::new(&claim.name_any()).within(&claim.namespace().unwrap_or_default());
    ctx.fences.missing(
        || ctx.caches.table(namespace, &table_name(service)),
        namespace,
        service,
        fences,
        line,
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

        // Another Service's table changing does not wake it; its own does.
        fences.changed(&table("payments", &[]));
        assert!(woken.try_recv().is_err());
        fences.changed(&table("orders", &[("secret.orders-db-binding", "orders")]));
        assert_eq!(woken.recv().await.unwrap(), claim);
        assert_eq!(fences.waiting(), 0);

        // Named for its Service: nothing to wait for.
        let named = table("orders", &[("secret.orders-db-binding", "orders")]);
        assert!(
            fences
                .missing(|| Some(named), "shop", "orders", &want, claim)
                .is_none()
        );
        assert_eq!(fences.waiting(), 0);
    }
}
