//! The fence comes before the credentials. A Secret that carries credentials
//! (a binding, a read grant, a dedicated instance's admin Secret) is written
//! only once the ownership table of the Service it is for names it: from the
//! moment it exists, the admission policy refuses every other Service's pod
//! that references it. A claim whose Secret the table does not name yet
//! waits holding nothing (not a turn at its server), asks that Service for a
//! pass, and is woken when the Service's table names its Secrets.
//!
//! A new claim is accepted for its Service (its entries may enter the
//! table) once the claim controller has checked that the Secrets it would
//! write are not another's. The acceptance is kept in memory, and the table
//! itself is its record: an entry the table has for a claim not yet Ready
//! stays after a restart. Its status is written only when the claim is
//! Ready, fails, or has waited for its table for [`TELL_AFTER`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
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

/// How old a claim may be before its status says what it waits for (its
/// Service's table, or a turn at its server): one Ready (or failed) by
/// then, the usual case, writes no status before its outcome.
pub const TELL_AFTER: Duration = Duration::from_secs(30);

/// Claims waiting for a Service's table, by the Service's namespace and name,
/// each with the entries it waits for; and the claims accepted since this
/// operator started, with their UIDs.
pub struct Fences {
    waiting: Mutex<HashMap<(String, String), HashMap<ClaimRef, Needs>>>,
    accepted: Mutex<HashMap<ClaimRef, String>>,
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
            accepted: Mutex::default(),
            wake,
            ask,
        });
        (fences, asked)
    }

    /// The first of `fences` that `table` (the ownership table of Service
    /// `namespace`/`service`, as the cache shows it) does not name as its
    /// owner's; when there is one, `claim` waits until that table names all
    /// of them ([`Fences::ask`] asks the Service for a pass).
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
        Some(missing.secret.clone())
    }

    /// Service `namespace`/`service` is asked for a pass.
    pub fn ask(&self, namespace: &str, service: &str) {
        let _ = self.ask.send(ObjectRef::new(service).within(namespace));
    }

    /// The claim controller found that `claim`'s Secrets are not another's:
    /// its Service's table may name them.
    pub fn accept(&self, claim: &DatabaseClaim) {
        let uid = claim.uid().unwrap_or_default();
        self.accepted.lock().unwrap().insert(line_of(claim), uid);
    }

    /// Whether `claim` (this very object: its UID) was accepted since this
    /// operator started.
    pub fn was_accepted(&self, claim: &DatabaseClaim) -> bool {
        let uid = claim.uid().unwrap_or_default();
        self.accepted.lock().unwrap().get(&line_of(claim)) == Some(&uid)
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

    /// `claim` is gone, or refused: it waits for no table and is not
    /// accepted.
    pub fn forget(&self, claim: &ClaimRef) {
        self.waiting.lock().unwrap().retain(|_, claims| {
            claims.remove(claim);
            !claims.is_empty()
        });
        self.accepted.lock().unwrap().remove(claim);
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

/// A claim the caller has checked (the Secrets it would write are not
/// another's) waits for the table of its own Service: it is accepted, and
/// the Service is asked for a pass. Its status says so once the claim is
/// [`TELL_AFTER`] old (the table's change, which wakes it, comes first as a
/// rule), or at once when it says why the claim was not Ready before.
pub(super) async fn wait(
    claim: &DatabaseClaim,
    service: &str,
    secret: &str,
    ctx: &Context,
) -> Result<Action, Error> {
    let ns = claim.namespace().unwrap_or_default();
    let said = vetted(claim);
    if !said {
        ctx.fences.accept(claim);
    }
    ctx.fences.ask(&ns, service);
    if said {
        return Ok(Action::requeue(ctx.config.resync));
    }
    if let Some(left) = untold(claim) {
        return Ok(Action::requeue(left));
    }
    let message = format!(
        "waiting for the ownership table of Service {service:?} to name Secret {secret:?}, which is written once no other Service's pod can use it"
    );
    let outcome = Outcome::waiting(ClaimPhase::Provisioning, Reason::Provisioning, message);
    update_status(claim, ctx, outcome).await?;
    Ok(Action::requeue(ctx.config.resync))
}

/// How long a waiting claim whose status says nothing yet may go on saying
/// nothing: until it is [`TELL_AFTER`] old. `None` when its status says
/// something (why it was not Ready: that is replaced at once) or it is older.
pub(super) fn untold(claim: &DatabaseClaim) -> Option<Duration> {
    if ready_condition(claim).is_some() {
        return None;
    }
    let created = claim.metadata.creation_timestamp.as_ref()?.0;
    let age = k8s_openapi::jiff::Timestamp::now().duration_since(created);
    let age = Duration::try_from(age).unwrap_or_default();
    TELL_AFTER.checked_sub(age).filter(|left| !left.is_zero())
}

/// The `Ready` condition of `claim`'s status, when it has one.
fn ready_condition(claim: &DatabaseClaim) -> Option<&Condition> {
    claim
        .status
        .as_ref()
        .and_then(|s| crate::api::find_condition(&s.conditions, READY))
}

/// Whether `claim`'s status accepts it for its Service: it says Ready or
/// why not, and that is not another owner's object or database in its way.
pub fn vetted(claim: &DatabaseClaim) -> bool {
    ready_condition(claim)
        .and_then(|c| Reason::parse(&c.reason))
        .is_some_and(|r| !r.is_conflict())
}

/// Whether the claim controller checked `claim`: its status says so
/// ([`vetted`]), or, when it says nothing yet, this operator accepted it.
pub fn checked(claim: &DatabaseClaim, ctx: &Context) -> bool {
    match ready_condition(claim) {
        Some(_) => vetted(claim),
        None => ctx.fences.was_accepted(claim),
    }
}

/// Whether `claim` is accepted for its Service: only an accepted claim's
/// Secrets enter the ownership tables. A claim whose status says why it is
/// or is not Ready is as [`vetted`] says; one whose status says nothing yet
/// is accepted when this operator accepted it, or when its Service's table
/// (as the cache shows it) already names its binding for that Service, as
/// it does after a restart for a claim accepted before.
pub fn accepted(claim: &DatabaseClaim, ctx: &Context) -> bool {
    let ns = claim.namespace().unwrap_or_default();
    let table = || {
        ctx.caches
            .table(&ns, &table_name(&claim.spec.service_ref.name))
    };
    accepted_by(claim, ctx.fences.was_accepted(claim), table)
}

/// [`accepted`], with `here` whether this operator accepted `claim` and
/// `table` its Service's table.
fn accepted_by(
    claim: &DatabaseClaim,
    here: bool,
    table: impl FnOnce() -> Option<Arc<ConfigMap>>,
) -> bool {
    if ready_condition(claim).is_some() {
        return vetted(claim);
    }
    let binding = Fence {
        secret: crate::children::names::binding_secret(&claim.name_any()),
        owner: claim.spec.service_ref.name.clone(),
    };
    here || names(table().as_deref(), &binding)
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
        fences.ask("shop", "orders");
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

    fn claim(name: &str, uid: &str, service: &str, reason: Option<Reason>) -> DatabaseClaim {
        let mut claim =
            super::super::super::service::tests::claim_with_reason(name, service, reason);
        claim.metadata.uid = Some(uid.into());
        claim
    }

    #[test]
    fn a_claim_is_accepted_by_its_status_by_this_operator_or_by_its_table() {
        let (wake, _woken) = unbounded_channel();
        let (fences, _asked) = Fences::new(wake);
        let new = claim("orders-db", "u1", "orders", None);
        let named = || Some(table("orders", &[("secret.orders-db-binding", "orders")]));
        let for_another = || Some(table("orders", &[("secret.orders-db-binding", "payments")]));

        // A claim whose status says nothing: not accepted until this operator
        // accepts it, or its Service's table names its binding for that
        // Service (accepted before a restart).
        assert!(!accepted_by(&new, fences.was_accepted(&new), || None));
        assert!(!accepted_by(&new, false, for_another));
        assert!(accepted_by(&new, false, named));
        fences.accept(&new);
        assert!(accepted_by(&new, fences.was_accepted(&new), || None));

        // Another claim of the same name (another UID) is not the one accepted.
        let again = claim("orders-db", "u2", "orders", None);
        assert!(!fences.was_accepted(&again));

        // A status decides when it says why: a conflict refuses, whatever
        // was accepted or named before; Provisioning or a fault accepts.
        for reason in [
            Reason::ObjectOwnedByAnotherService,
            Reason::DatabaseOwnedByAnotherClaim,
        ] {
            let refused = claim("orders-db", "u1", "orders", Some(reason));
            assert!(!accepted_by(&refused, true, named), "{reason:?}");
        }
        for reason in [
            Reason::Provisioning,
            Reason::ServerUnreachable,
            Reason::Ready,
        ] {
            let told = claim("orders-db", "u1", "orders", Some(reason));
            assert!(accepted_by(&told, false, || None), "{reason:?}");
        }

        // A refused or deleted claim is forgotten.
        fences.forget(&line_of(&new));
        assert!(!fences.was_accepted(&new));
    }

    #[test]
    fn a_waiting_claim_says_nothing_until_it_is_old_enough_or_has_said_why_before() {
        let ago = |secs: i64| {
            let at = k8s_openapi::jiff::Timestamp::now()
                - k8s_openapi::jiff::SignedDuration::from_secs(secs);
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(at))
        };
        let mut young = claim("orders-db", "u1", "orders", None);
        young.metadata.creation_timestamp = ago(1);
        let left = untold(&young).expect("a young claim says nothing yet");
        assert!(left <= TELL_AFTER - Duration::from_secs(1) && left > TELL_AFTER / 2);
        let mut old = young.clone();
        old.metadata.creation_timestamp = ago(TELL_AFTER.as_secs() as i64 + 1);
        assert_eq!(untold(&old), None);
        let mut refused = claim(
            "orders-db",
            "u1",
            "orders",
            Some(Reason::ObjectOwnedByAnotherService),
        );
        refused.metadata.creation_timestamp = ago(1);
        assert_eq!(untold(&refused), None, "a refusal gone is replaced at once");
    }
}
