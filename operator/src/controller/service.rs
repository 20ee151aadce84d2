//! Status of a `Service`: its databases, their phases, and whether all are Ready.

use std::sync::Arc;

use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Api, ResourceExt};
use serde_json::json;

use super::apply::{apply_recorded, patch_status_if_changed};
use super::context::{Context, Error};
use crate::api::{
    ClaimPhase, DatabaseClaim, READY, Reason, Service, ServiceDatabase, ServiceStatus,
    set_condition,
};
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;

use crate::children::{
    FIELD_MANAGER, MANAGED_BY, binding_reader_role, binding_reader_role_binding, names,
};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};

/// Finalizer that removes a deleted Service's entries from the ownership table.
pub const SERVICE_FINALIZER: &str = "dbps.io/ownership";

pub async fn reconcile(service: Arc<Service>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = service.namespace().unwrap_or_default();
    let services: Api<Service> = ctx.api(&ns);
    let service =
        super::apply::with_finalizer(&services, service, SERVICE_FINALIZER, &ctx.own).await?;
    finalizer(&services, SERVICE_FINALIZER, service, |event| async {
        match event {
            Finalizer::Apply(service) => apply_service(service, &ctx).await,
            Finalizer::Cleanup(service) => {
                // Its Role and RoleBinding go with it (owner reference).
                let ns = service.namespace().unwrap_or_default();
                let name = service.name_any();
                write_entries(
                    &ctx,
                    &ns,
                    &name,
                    &service_manager(&service),
                    BTreeMap::new(),
                )
                .await?;
                // Claims that waited for its table are told it is gone.
                ctx.fences.release(&ns, &name);
                Ok(Action::await_change())
            }
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

async fn apply_service(service: Arc<Service>, ctx: &Context) -> Result<Action, Error> {
    let ns = service.namespace().unwrap_or_default();
    let name = service.name_any();
    let owns = |c: &DatabaseClaim| {
        c.metadata.namespace.as_deref() == Some(ns.as_str()) && c.spec.service_ref.name == name
    };
    let cached = ctx
        .caches
        .claims_of_service(&ns, &name, |c| owns(c) || reads(c, &ns, &name));
    let (owned, read): (Vec<&DatabaseClaim>, Vec<&DatabaseClaim>) = cached
        .iter()
        .filter_map(|c| c.0.as_ref().ok())
        .partition(|c| owns(c));
    let accepted = |c: &DatabaseClaim| super::claim::accepted(c, ctx);
    let now = k8s_openapi::jiff::Timestamp::now();
    let mut entries = ownership_entries(&service, &owned, accepted, now);
    entries.extend(reader_entries(&service, &read, accepted));
    // Entries only added while claims it names are still on their way: the
    // write may wait its pace (`TABLE_PACE_PER_ENTRY`), and its Role with it.
    let manager = service_manager(&service);
    // Only a table as this pass last wrote it waits: one someone else
    // edited (an entry taken out) is written back at once.
    let table = ctx.caches.table(&ns, &table_name(&name));
    let written: BTreeMap<String, String> = table
        .as_deref()
        .map(|cm| entries_of(cm, &manager))
        .unwrap_or_default();
    let version = table.as_deref().and_then(|cm| cm.resource_version());
    let held_table = ctx
        .table_pace
        .left(&ns, &name, written.len(), version.as_deref())
        .filter(|_| only_adds(&written, &entries))
        .filter(|_| owned.iter().any(|c| on_its_way(c, &written)));
    let entries = match held_table {
        Some(_) => &written,
        None => &entries,
    };
    // Its ServiceAccount may read (`get`) the binding Secrets the table puts
    // it in front of, and no other.
    let readable: Vec<String> = entries
        .iter()
        .filter(|(_, owner)| **owner == name)
        .filter_map(|(key, _)| key.strip_prefix("secret.").map(String::from))
        .collect();
    if let Some(version) = write_entries_over(ctx, &ns, &name, &manager, &written, entries).await? {
        ctx.table_pace.wrote(&ns, &name, version);
    }
    let role = binding_reader_role(&service, &readable);
    let cached_role = ctx.caches.role(&ns, &role.name_any());
    apply_recorded(&ctx.api::<Role>(&ns), &role, cached_role, &ctx.own).await?;
    let role_binding = binding_reader_role_binding(&service);
    let cached_binding = ctx.caches.role_binding(&ns, &role_binding.name_any());
    apply_recorded(
        &ctx.api::<RoleBinding>(&ns),
        &role_binding,
        cached_binding,
        &ctx.own,
    )
    .await?;
    let mut databases: Vec<ServiceDatabase> = owned
        .iter()
        .map(|c| ServiceDatabase {
            claim: c.name_any(),
            engine: c.spec.engine,
            phase: c.status.as_ref().and_then(|s| s.phase),
        })
        .collect();
    databases.sort_by(|a, b| a.claim.cmp(&b.claim));

    // Only its list of claims changed since its last write, a moment ago:
    // the write waits (`StatusPace`).
    let mut held = None;
    let paced = ctx.status_pace.left(&ns, &name, databases.len());
    let written = patch_status_if_changed(
        &ctx.api::<Service>(&ns),
        &service,
        &ctx.written,
        |s| std::borrow::Cow::Borrowed(&s.status),
        |current| {
            let next = compute(&service, current.as_ref(), databases);
            match (current, paced) {
                (Some(current), Some(left))
                    if *current != next && only_the_list_differs(current, &next) =>
                {
                    held = Some(left);
                    None
                }
                _ => Some(Some(next)),
            }
        },
    )
    .await?;
    if written.is_some() {
        ctx.status_pace.wrote(&ns, &name);
    }
    ctx.succeeded(&format!("Service/{ns}/{name}"));
    let again = [held, held_table]
        .into_iter()
        .flatten()
        .fold(ctx.config.resync, std::cmp::min);
    Ok(Action::requeue(again))
}

/// Interval between two writes of a Service's ownership table that only add
/// entries, per entry it holds (1000 entries: 30 s), while claims it names
/// are still on their way to Ready. Each write names every claim of the
/// Service, and costs in proportion (the apiserver about 70 µs per entry,
/// its Role 25 µs more): during a burst of a large Service, written at each
/// pass, their cost grew with the square of its claims. Paced, it stays a
/// small bounded share of a CPU per busy Service. The claims added meanwhile
/// wait holding nothing; a table whose claims are all Ready (or failed), an
/// entry changed or taken out, and a Service's first entries go at once.
pub const TABLE_PACE_PER_ENTRY: std::time::Duration = std::time::Duration::from_millis(30);

/// The interval between two writes that only add entries to a table of
/// `entries` entries.
pub fn table_interval(entries: usize) -> std::time::Duration {
    TABLE_PACE_PER_ENTRY
        .saturating_mul(u32::try_from(entries).unwrap_or(u32::MAX))
        .min(STATUS_PACE_LONGEST)
}

/// When each Service's pass last wrote its ownership table, and the version
/// that write made.
#[derive(Default)]
pub struct TablePace {
    written:
        std::sync::Mutex<std::collections::HashMap<(String, String), (std::time::Instant, String)>>,
}

impl TablePace {
    /// How long a write that only adds entries to Service `ns/name`'s table
    /// (of `entries` entries, at `version` in the cache) must still wait;
    /// `None` when it may go now: its interval has passed, or the table is
    /// not at the version the pass wrote (someone else wrote it since, or
    /// the cache does not show that write yet).
    pub fn left(
        &self,
        ns: &str,
        name: &str,
        entries: usize,
        version: Option<&str>,
    ) -> Option<std::time::Duration> {
        let written = self.written.lock().unwrap();
        let (at, wrote) = written.get(&(ns.to_string(), name.to_string()))?;
        if Some(wrote.as_str()) != version {
            return None;
        }
        table_interval(entries)
            .checked_sub(at.elapsed())
            .filter(|left| !left.is_zero())
    }

    /// The pass of Service `ns/name` wrote its table now, making `version`.
    /// Entries older than the longest interval hold nothing back and go.
    pub fn wrote(&self, ns: &str, name: &str, version: String) {
        let mut written = self.written.lock().unwrap();
        written.retain(|_, (at, _)| at.elapsed() < STATUS_PACE_LONGEST);
        written.insert(
            (ns.to_string(), name.to_string()),
            (std::time::Instant::now(), version),
        );
    }
}

/// Whether `desired` holds every entry of `written`, unchanged, and more.
fn only_adds(written: &BTreeMap<String, String>, desired: &BTreeMap<String, String>) -> bool {
    !written.is_empty()
        && desired.len() > written.len()
        && written.iter().all(|(k, v)| desired.get(k) == Some(v))
}

/// Whether `claim` is named by the table entries `written` and not yet Ready
/// (nor failed, nor leaving): the servers still have its work to do.
fn on_its_way(claim: &DatabaseClaim, written: &BTreeMap<String, String>) -> bool {
    let named = written.contains_key(&format!(
        "secret.{}",
        names::binding_secret(&claim.name_any())
    ));
    let phase = claim.status.as_ref().and_then(|s| s.phase);
    named
        && matches!(
            phase,
            None | Some(ClaimPhase::Pending) | Some(ClaimPhase::Provisioning)
        )
}

/// How often a Service's status is written while only its list of claims
/// changes: the list names every claim with its phase, so during a burst
/// (hundreds of claims created, or on their way to Ready) each write costs in
/// proportion to the Service's claims, and its claims change all the while.
/// The writes of a large Service are spread so that their cost per second
/// stays bounded: [`STATUS_PACE_PER_CLAIM`] of interval per claim, at most
/// [`STATUS_PACE_LONGEST`]. What a person or `kubectl wait` acts on goes out
/// at once: its Ready condition turning (or its reason changing), and a new
/// generation.
#[derive(Default)]
pub struct StatusPace {
    written: std::sync::Mutex<std::collections::HashMap<(String, String), std::time::Instant>>,
}

/// Interval between two writes of a Service's status, per claim it lists
/// (1000 claims: 30 s; the apiserver spends about 150 µs per claim listed on
/// each write).
pub const STATUS_PACE_PER_CLAIM: std::time::Duration = std::time::Duration::from_millis(30);
/// The longest interval, whatever the number of claims.
pub const STATUS_PACE_LONGEST: std::time::Duration = std::time::Duration::from_secs(60);

impl StatusPace {
    /// The interval between two list-only writes of a status listing
    /// `claims` claims.
    pub fn interval(claims: usize) -> std::time::Duration {
        STATUS_PACE_PER_CLAIM
            .saturating_mul(u32::try_from(claims).unwrap_or(u32::MAX))
            .min(STATUS_PACE_LONGEST)
    }

    /// How long a list-only write of Service `ns/name`'s status (listing
    /// `claims` claims) must still wait; `None` when it may go now.
    pub fn left(&self, ns: &str, name: &str, claims: usize) -> Option<std::time::Duration> {
        self.left_of(ns, name, Self::interval(claims))
    }

    /// How long a write of object `ns/name`'s status must still wait to be
    /// `interval` after the last; `None` when it may go now.
    pub fn left_of(
        &self,
        ns: &str,
        name: &str,
        interval: std::time::Duration,
    ) -> Option<std::time::Duration> {
        let written = self.written.lock().unwrap();
        let at = written.get(&(ns.to_string(), name.to_string()))?;
        interval
            .min(STATUS_PACE_LONGEST)
            .checked_sub(at.elapsed())
            .filter(|left| !left.is_zero())
    }

    /// Service `ns/name`'s status was written now. Entries older than the
    /// longest interval hold nothing back and go.
    pub fn wrote(&self, ns: &str, name: &str) {
        let mut written = self.written.lock().unwrap();
        written.retain(|_, at| at.elapsed() < STATUS_PACE_LONGEST);
        written.insert(
            (ns.to_string(), name.to_string()),
            std::time::Instant::now(),
        );
    }
}

/// Whether `next` differs from `current` only in its list of claims (their
/// phases, claims added or gone, and the Ready condition's message, which
/// names the claims not Ready): not in what a person or `kubectl wait` acts
/// on, its Ready condition's status and reason, or the generation it
/// describes.
fn only_the_list_differs(current: &ServiceStatus, next: &ServiceStatus) -> bool {
    let conditions = |s: &ServiceStatus| {
        s.conditions
            .iter()
            .map(|c| {
                (
                    c.type_.clone(),
                    c.status.clone(),
                    c.reason.clone(),
                    c.observed_generation,
                )
            })
            .collect::<Vec<_>>()
    };
    current.observed_generation == next.observed_generation
        && current.service_account_name == next.service_account_name
        && conditions(current) == conditions(next)
}

/// The ConfigMap that held the ownership entries of all the Services of a
/// namespace before each Service had a table of its own. It carries the
/// tables' labels, so the admission policy still reads it: a Service's pass
/// takes its own entries out of it, and it is deleted once empty. Entries a
/// deleted claim left in it (deletionPolicy Retain) stay there, enforced.
pub const LEGACY_TABLE: &str = "dbps-bindings";

/// The labels of every ownership table; the admission policy reads all the
/// ConfigMaps of the pod's namespace that carry them, and a pod must pass
/// each. A ConfigMap someone else labels so can only refuse more pods, never
/// let one through.
pub const TABLE_SELECTOR: &str =
    "app.kubernetes.io/managed-by=dbps-operator,app.kubernetes.io/component=ownership";

/// The ownership table of Service `service`: its entries and those its
/// deleted claims left behind. One per Service, so a Service's writes cost in
/// proportion to its own claims, not to the namespace's.
pub fn table_name(service: &str) -> String {
    format!("{LEGACY_TABLE}-{service}")
}

/// The Service whose ownership table `name` is (`None` for the legacy one).
pub fn table_service(name: &str) -> Option<&str> {
    name.strip_prefix(LEGACY_TABLE)?.strip_prefix('-')
}

/// Whether ConfigMap `name` is an ownership table, a Service's or the legacy
/// one. Anyone who may make ConfigMaps can give one the tables' labels: one
/// of another name concerns no Service.
pub fn is_table(name: &str) -> bool {
    name == LEGACY_TABLE || table_service(name).is_some()
}

/// The entries of the ownership table this Service owns:
/// `secret.<name>` → the service, for each of its binding Secrets (first,
/// current, and previous during a rotation); `secret.<claim>-admin` →
/// `claim:<claim>` for the admin Secret of each dedicated instance (only the
/// instance's pods, labelled `dbps.io/claim: <claim>`, may use it); and
/// `account.<service>` → its ServiceAccount.
///
/// A claim counts once it is `accepted` ([`super::claim::accepted`]): a
/// claim not yet checked by the claim controller, or refused because the
/// names it asks for belong to another Service, adds nothing (a claim must
/// not put its Service in front of another's Secret by naming it).
pub fn ownership_entries(
    service: &Service,
    claims: &[&DatabaseClaim],
    accepted: impl Fn(&DatabaseClaim) -> bool,
    now: k8s_openapi::jiff::Timestamp,
) -> BTreeMap<String, String> {
    let name = service.name_any();
    let mut entries = BTreeMap::from([(format!("account.{name}"), service.service_account())]);
    for claim in claims.iter().filter(|c| accepted(c)) {
        let status = claim.status.as_ref();
        // A rotation's new Secret is named before it is written.
        let first = names::binding_secret(claim.metadata.name.as_deref().unwrap_or_default());
        let due = super::claim::due_binding(claim, now);
        let secrets = [
            status
                .and_then(|s| s.binding.as_ref())
                .map(|b| b.name.as_str()),
            status
                .and_then(|s| s.credentials.as_ref())
                .and_then(|c| c.previous.as_ref())
                .map(|p| p.secret.as_str()),
            due.as_deref(),
        ]
        .into_iter()
        .flatten()
        // Most often its binding is still its first Secret: one entry.
        .filter(|secret| *secret != first);
        for secret in std::iter::once(first.as_str()).chain(secrets) {
            entries.insert(["secret.", secret].concat(), name.clone());
        }
        if claim.spec.server.is_none() {
            let claim_name = claim.name_any();
            entries.insert(
                format!("secret.{}", names::admin_secret(&claim_name)),
                format!("claim:{claim_name}"),
            );
        }
    }
    entries
}

/// Whether `claim` grants Service `namespace/service` read access (issued,
/// or asked for).
pub fn reads(claim: &DatabaseClaim, namespace: &str, service: &str) -> bool {
    let claim_ns = claim.metadata.namespace.as_deref().unwrap_or_default();
    claim
        .spec
        .readers
        .iter()
        .any(|r| r.service == service && r.namespace_or(claim_ns) == namespace)
        || claim
            .status
            .iter()
            .flat_map(|s| &s.readers)
            .any(|r| r.service == service && r.namespace == namespace)
}

/// The entries of the ownership table for the read-only bindings other
/// Services' claims issue to `service`: `secret.<binding>` → the service,
/// for each grant their status shows in force and, before its Secret is
/// written, each grant an `accepted` claim asks for.
pub fn reader_entries(
    service: &Service,
    claims: &[&DatabaseClaim],
    accepted: impl Fn(&DatabaseClaim) -> bool,
) -> BTreeMap<String, String> {
    let name = service.name_any();
    let ns = service.namespace().unwrap_or_default();
    let mut entries = BTreeMap::new();
    for claim in claims {
        let issued = claim
            .status
            .iter()
            .flat_map(|s| &s.readers)
            .filter(|r| r.service == name && r.namespace == ns)
            .map(|r| r.binding.clone());
        let claim_ns = claim.namespace().unwrap_or_default();
        let accepted = accepted(claim);
        let asked = claim
            .spec
            .readers
            .iter()
            .filter(|r| accepted && r.service == name && r.namespace_or(&claim_ns) == ns)
            .map(|_| names::reader_secret(&claim_ns, &claim.name_any(), &ns, &name));
        for secret in issued.chain(asked) {
            entries.insert(format!("secret.{secret}"), name.clone());
        }
    }
    entries
}

/// Field manager of the entries kept for the Secrets of a deleted claim.
fn retained_manager(claim: &str) -> String {
    format!("{FIELD_MANAGER}.retained.{claim}")
}

/// Keeps (or, with `None`, drops) the ownership-table entries of the Secrets
/// a deleted claim leaves behind (deletionPolicy Retain), so they stay fenced
/// for their Service after the claim is gone.
/// They go in the table of the claim's Service (`service`).
pub async fn retain_entries(
    ctx: &Context,
    namespace: &str,
    service: &str,
    claim: &str,
    entries: Option<BTreeMap<String, String>>,
) -> Result<(), Error> {
    let desired = entries.unwrap_or_default();
    write_entries(ctx, namespace, service, &retained_manager(claim), desired).await?;
    Ok(())
}

/// Makes the entries `manager` applied to the ownership table of Service
/// `service` in `namespace` exactly `desired` (server-side apply drops the
/// ones it no longer lists), and takes the manager's entries out of the
/// legacy table. A table left with no entry is deleted. The version of the
/// Service's table when this wrote it (and it stays).
async fn write_entries(
    ctx: &Context,
    namespace: &str,
    service: &str,
    manager: &str,
    desired: BTreeMap<String, String>,
) -> Result<Option<String>, Error> {
    // The tables are watched: an edit by someone else brings their Service
    // back here.
    let mine = ctx
        .caches
        .table(namespace, &table_name(service))
        .as_deref()
        .map(|cm| entries_of(cm, manager))
        .unwrap_or_default();
    write_entries_over(ctx, namespace, service, manager, &mine, &desired).await
}

/// As [`write_entries`], with `mine`: the entries `manager` has in the
/// table as the cache shows it.
async fn write_entries_over(
    ctx: &Context,
    namespace: &str,
    service: &str,
    manager: &str,
    mine: &BTreeMap<String, String>,
    desired: &BTreeMap<String, String>,
) -> Result<Option<String>, Error> {
    let mut version = None;
    if mine != desired {
        let name = table_name(service);
        version = apply_entries(ctx, namespace, &name, manager, desired).await?;
    }
    if let Some(legacy) = ctx.caches.table(namespace, LEGACY_TABLE)
        && !entries_of(&legacy, manager).is_empty()
    {
        apply_entries(ctx, namespace, LEGACY_TABLE, manager, &BTreeMap::new()).await?;
    }
    Ok(version)
}

/// Applies `manager`'s entries of table `name`; deletes the table when that
/// leaves it with none (unless someone wrote it meanwhile). The version
/// written, when the table stays.
async fn apply_entries(
    ctx: &Context,
    namespace: &str,
    name: &str,
    manager: &str,
    desired: &BTreeMap<String, String>,
) -> Result<Option<String>, Error> {
    let configmaps: Api<ConfigMap> = ctx.api(namespace);
    let patch = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "labels": { "app.kubernetes.io/managed-by": MANAGED_BY, "app.kubernetes.io/component": "ownership" },
        },
        "data": desired,
    });
    let written = configmaps
        .patch(
            name,
            &PatchParams::apply(manager).force(),
            &Patch::Apply(patch),
        )
        .await?;
    if written.data.as_ref().is_none_or(|d| d.is_empty()) {
        let unchanged = kube::api::Preconditions {
            resource_version: written.resource_version(),
            uid: written.uid(),
        };
        let delete = kube::api::DeleteParams {
            preconditions: Some(unchanged),
            ..Default::default()
        };
        match configmaps.delete(name, &delete).await {
            Ok(_) => {}
            // Gone already, or written again since: nothing to do.
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
        return Ok(None);
    }
    ctx.own.record(&written);
    Ok(written.resource_version())
}

/// The field manager of a Service's entries in the ownership table: each
/// Service writes its own, so server-side apply merges them and drops the
/// ones a Service no longer has.
fn service_manager(service: &Service) -> String {
    format!("{FIELD_MANAGER}.service.{}", service.name_any())
}

/// The data entries of `cm` that `manager` applied (from its managed fields).
fn entries_of(cm: &ConfigMap, manager: &str) -> BTreeMap<String, String> {
    let Some(data) = cm.data.as_ref() else {
        return BTreeMap::new();
    };
    cm.metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| {
            m.manager.as_deref() == Some(manager) && m.operation.as_deref() == Some("Apply")
        })
        .filter_map(|m| m.fields_v1.as_ref())
        .flat_map(|f| {
            f.0.get("f:data")
                .and_then(|d| d.as_object())
                .into_iter()
                .flat_map(|d| d.keys().filter_map(|k| k.strip_prefix("f:")))
        })
        .filter_map(|k| data.get_key_value(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// How many of the claims not Ready the Ready condition's message names.
const NAMED_NOT_READY: usize = 10;

/// The status a Service with these databases should have.
pub fn compute(
    service: &Service,
    current: Option<&ServiceStatus>,
    databases: Vec<ServiceDatabase>,
) -> ServiceStatus {
    // Only its conditions carry over (not its list, which can be long).
    let mut conditions = current.map(|c| c.conditions.clone()).unwrap_or_default();
    let waiting: Vec<&str> = databases
        .iter()
        .filter(|d| d.phase != Some(ClaimPhase::Ready))
        .map(|d| d.claim.as_str())
        .collect();
    let generation = service.metadata.generation;
    if waiting.is_empty() {
        let message = format!("{} database(s) ready", databases.len());
        set_condition(
            &mut conditions,
            READY,
            true,
            Reason::DatabasesReady.as_str(),
            message,
            generation,
        );
    } else {
        // A person reads the first few; the count tells the rest.
        let message = match waiting.len().checked_sub(NAMED_NOT_READY) {
            Some(more) if more > 0 => format!(
                "not ready: {} and {more} more",
                waiting[..NAMED_NOT_READY].join(", ")
            ),
            _ => format!("not ready: {}", waiting.join(", ")),
        };
        set_condition(
            &mut conditions,
            READY,
            false,
            Reason::DatabasesNotReady.as_str(),
            message,
            generation,
        );
    }
    ServiceStatus {
        observed_generation: generation,
        conditions,
        service_account_name: Some(service.service_account()),
        database_count: databases.len() as i32,
        databases,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::api::Engine;
    use crate::controller::claim::vetted;

    fn db(claim: &str, phase: Option<ClaimPhase>) -> ServiceDatabase {
        ServiceDatabase {
            claim: claim.into(),
            engine: Engine::Postgres,
            phase,
        }
    }

    #[test]
    fn ready_only_when_every_database_is_ready() {
        let service: Service = serde_yaml::from_str(
            "{apiVersion: dbps.io/v1alpha1, kind: Service, metadata: {name: orders, namespace: shop, generation: 3}, spec: {}}",
        )
        .unwrap();
        let status = compute(
            &service,
            None,
            vec![
                db("a", Some(ClaimPhase::Ready)),
                db("b", Some(ClaimPhase::Provisioning)),
            ],
        );
        assert_eq!(status.database_count, 2);
        assert_eq!(status.service_account_name.as_deref(), Some("orders"));
        assert_eq!(status.observed_generation, Some(3));
        let ready = &status.conditions[0];
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "DatabasesNotReady")
        );
        assert_eq!(ready.message, "not ready: b");

        let status = compute(&service, None, vec![db("a", Some(ClaimPhase::Ready))]);
        assert_eq!(status.conditions[0].status, "True");
    }

    #[test]
    fn only_a_few_claims_not_ready_are_named() {
        let service: Service = serde_yaml::from_str(
            "{apiVersion: dbps.io/v1alpha1, kind: Service, metadata: {name: orders, namespace: shop}, spec: {}}",
        )
        .unwrap();
        let databases = (0..25)
            .map(|i| db(&format!("db-{i:02}"), Some(ClaimPhase::Provisioning)))
            .collect();
        let status = compute(&service, None, databases);
        assert_eq!(
            status.conditions[0].message,
            "not ready: db-00, db-01, db-02, db-03, db-04, db-05, db-06, db-07, db-08, db-09 and 15 more"
        );
    }

    #[test]
    fn a_status_whose_list_of_claims_only_changed_waits_for_its_pace() {
        let service: Service = serde_yaml::from_str(
            "{apiVersion: dbps.io/v1alpha1, kind: Service, metadata: {name: orders, namespace: shop, generation: 1}, spec: {}}",
        )
        .unwrap();
        let provisioning = Some(ClaimPhase::Provisioning);
        let ready = Some(ClaimPhase::Ready);
        let before = compute(
            &service,
            None,
            vec![db("a", provisioning), db("b", provisioning), db("c", None)],
        );
        // Phases moved, a claim added, one gone, still not all Ready: held.
        let moved = compute(
            &service,
            Some(&before),
            vec![db("a", ready), db("b", provisioning), db("c", provisioning)],
        );
        assert!(only_the_list_differs(&before, &moved));
        let added = compute(
            &service,
            Some(&before),
            vec![
                db("a", provisioning),
                db("b", provisioning),
                db("c", None),
                db("d", None),
            ],
        );
        assert!(only_the_list_differs(&before, &added));
        let gone = compute(
            &service,
            Some(&before),
            vec![db("a", provisioning), db("c", None)],
        );
        assert!(only_the_list_differs(&before, &gone));
        // All Ready: the condition turns, it goes out; and back.
        let all = compute(
            &service,
            Some(&before),
            vec![db("a", ready), db("b", ready), db("c", ready)],
        );
        assert!(!only_the_list_differs(&before, &all));
        assert!(!only_the_list_differs(&all, &added));
        // The last claim gone: Ready too.
        let none = compute(&service, Some(&before), vec![]);
        assert!(!only_the_list_differs(&before, &none));
        // A new generation: out at once.
        let mut edited = service.clone();
        edited.metadata.generation = Some(2);
        let regenerated = compute(
            &edited,
            Some(&before),
            vec![db("a", provisioning), db("b", provisioning), db("c", None)],
        );
        assert!(!only_the_list_differs(&before, &regenerated));

        // The pace: in proportion to the claims listed, bounded.
        assert_eq!(
            StatusPace::interval(3),
            std::time::Duration::from_millis(90)
        );
        assert_eq!(
            StatusPace::interval(1000),
            std::time::Duration::from_secs(30)
        );
        assert_eq!(StatusPace::interval(100_000), STATUS_PACE_LONGEST);
        let pace = StatusPace::default();
        assert_eq!(pace.left("shop", "orders", 1000), None, "never written");
        pace.wrote("shop", "orders");
        let left = pace.left("shop", "orders", 1000).expect("written just now");
        assert!(left > std::time::Duration::from_secs(29), "{left:?}");
        assert_eq!(pace.left("shop", "payments", 1000), None, "another Service");
        assert_eq!(
            pace.left("other", "orders", 1000),
            None,
            "another namespace"
        );
        assert_eq!(pace.left("shop", "orders", 0), None, "nothing listed");
    }

    #[test]
    fn a_table_waits_its_pace_only_to_add_while_its_claims_are_on_their_way() {
        let table = |keys: &[&str]| -> BTreeMap<String, String> {
            keys.iter()
                .map(|k| (format!("secret.{k}"), "orders".to_string()))
                .collect()
        };
        let written = table(&["a-binding", "b-binding"]);
        // Only added: may wait.
        assert!(only_adds(
            &written,
            &table(&["a-binding", "b-binding", "c-binding"])
        ));
        // Nothing new, one taken out, or one changed: at once.
        assert!(!only_adds(&written, &written));
        assert!(!only_adds(
            &written,
            &table(&["a-binding", "c-binding", "d-binding"])
        ));
        let mut changed = table(&["a-binding", "b-binding", "c-binding"]);
        changed.insert("secret.a-binding".into(), "payments".into());
        assert!(!only_adds(&written, &changed));
        // A Service's first entries: at once.
        assert!(!only_adds(&BTreeMap::new(), &written));

        // On its way: named, and not yet Ready, failed or leaving.
        let with_phase = |name: &str, phase: Option<ClaimPhase>| {
            let mut claim = claim_with_reason(name, "orders", None);
            claim.status.get_or_insert_with(Default::default).phase = phase;
            claim
        };
        assert!(on_its_way(
            &with_phase("a", Some(ClaimPhase::Provisioning)),
            &written
        ));
        assert!(on_its_way(
            &with_phase("a", Some(ClaimPhase::Pending)),
            &written
        ));
        assert!(on_its_way(&with_phase("b", None), &written));
        assert!(!on_its_way(
            &with_phase("a", Some(ClaimPhase::Ready)),
            &written
        ));
        assert!(!on_its_way(
            &with_phase("a", Some(ClaimPhase::Failed)),
            &written
        ));
        assert!(!on_its_way(
            &with_phase("a", Some(ClaimPhase::Deleting)),
            &written
        ));
        assert!(
            !on_its_way(&with_phase("c", Some(ClaimPhase::Provisioning)), &written),
            "not named yet"
        );

        // Only a table at the version its pass wrote waits.
        let pace = TablePace::default();
        assert_eq!(
            pace.left("shop", "orders", 1000, Some("7")),
            None,
            "never written"
        );
        pace.wrote("shop", "orders", "7".into());
        let left = pace
            .left("shop", "orders", 1000, Some("7"))
            .expect("just written");
        assert!(left > std::time::Duration::from_secs(29), "{left:?}");
        assert_eq!(
            pace.left("shop", "orders", 1000, Some("8")),
            None,
            "written by someone else since"
        );
        assert_eq!(pace.left("shop", "orders", 1000, None), None, "deleted");
        assert_eq!(pace.left("shop", "payments", 1000, Some("7")), None);
        assert_eq!(
            pace.left("shop", "orders", 0, Some("7")),
            None,
            "no interval"
        );

        // The interval: in proportion to the entries, bounded.
        assert_eq!(table_interval(1000), std::time::Duration::from_secs(30));
        assert_eq!(table_interval(10), std::time::Duration::from_millis(300));
        assert_eq!(table_interval(100_000), STATUS_PACE_LONGEST);
    }

    /// A claim of Service `service` in namespace `shop`, its status saying
    /// `reason` (nothing without one).
    pub(crate) fn claim_with_reason(
        name: &str,
        service: &str,
        reason: Option<Reason>,
    ) -> DatabaseClaim {
        let mut claim: DatabaseClaim = serde_yaml::from_str(&format!(
            "{{apiVersion: dbps.io/v1alpha1, kind: DatabaseClaim, metadata: {{name: {name}, namespace: shop}}, spec: {{serviceRef: {{name: {service}}}, engine: postgres}}}}"
        ))
        .unwrap();
        if let Some(reason) = reason {
            let mut status = crate::api::DatabaseClaimStatus::default();
            set_condition(
                &mut status.conditions,
                READY,
                false,
                reason.as_str(),
                "",
                None,
            );
            claim.status = Some(status);
        }
        claim
    }

    #[test]
    fn a_refused_or_unvetted_claim_does_not_put_its_service_in_front_of_a_secret() {
        let intruder: Service = serde_yaml::from_str(
            "{apiVersion: dbps.io/v1alpha1, kind: Service, metadata: {name: intruder, namespace: shop}, spec: {}}",
        )
        .unwrap();
        let claims = [
            claim_with_reason(
                "orders-db",
                "intruder",
                Some(Reason::ObjectOwnedByAnotherService),
            ),
            claim_with_reason(
                "copy-db",
                "intruder",
                Some(Reason::DatabaseOwnedByAnotherClaim),
            ),
            claim_with_reason("new-db", "intruder", None),
            claim_with_reason("own-db", "intruder", Some(Reason::Provisioning)),
        ];
        let entries = ownership_entries(
            &intruder,
            &claims.iter().collect::<Vec<_>>(),
            vetted,
            k8s_openapi::jiff::Timestamp::now(),
        );
        assert_eq!(
            entries.keys().collect::<Vec<_>>(),
            [
                "account.intruder",
                "secret.own-db-admin",
                "secret.own-db-binding"
            ]
        );
    }

    #[test]
    fn a_rotations_secret_and_an_asked_grant_are_named_before_they_are_written() {
        let orders: Service = serde_yaml::from_str(
            "{apiVersion: dbps.io/v1alpha1, kind: Service, metadata: {name: orders, namespace: shop}, spec: {}}",
        )
        .unwrap();
        let reporting: Service = serde_yaml::from_str(
            "{apiVersion: dbps.io/v1alpha1, kind: Service, metadata: {name: reporting, namespace: shop}, spec: {}}",
        )
        .unwrap();
        let now = k8s_openapi::jiff::Timestamp::now();
        let mut claim = claim_with_reason("orders-db", "orders", Some(Reason::Ready));
        claim.spec.readers = serde_yaml::from_str("[{service: reporting, tables: [t]}]").unwrap();
        claim.status.as_mut().unwrap().credentials = Some(crate::api::CredentialsStatus {
            generation: 0,
            issued_at: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now)),
            trigger: None,
            ..Default::default()
        });
        let keys = |e: BTreeMap<String, String>| e.into_keys().collect::<Vec<_>>();
        assert_eq!(
            keys(ownership_entries(&orders, &[&claim], vetted, now)),
            [
                "account.orders",
                "secret.orders-db-admin",
                "secret.orders-db-binding"
            ]
        );
        assert_eq!(
            keys(reader_entries(&reporting, &[&claim], vetted)),
            ["secret.orders-db-reader-reporting"],
            "the grant an accepted claim asks for"
        );
        // A rotation asked for: the next generation's Secret is named now.
        claim.metadata.annotations = Some(BTreeMap::from([(
            super::super::claim::ROTATE_ANNOTATION.to_string(),
            "now".to_string(),
        )]));
        assert_eq!(
            keys(ownership_entries(&orders, &[&claim], vetted, now)),
            [
                "account.orders",
                "secret.orders-db-admin",
                "secret.orders-db-binding",
                "secret.orders-db-binding-1"
            ]
        );
        // Not accepted: neither.
        let unvetted = claim_with_reason("orders-db", "orders", None);
        let mut asking = unvetted.clone();
        asking.spec.readers = claim.spec.readers.clone();
        assert!(reader_entries(&reporting, &[&asking], vetted).is_empty());
    }
}
