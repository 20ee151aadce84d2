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
                write_entries(&ctx, &ns, &service_manager(&service), BTreeMap::new()).await?;
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
        c.namespace().as_deref() == Some(ns.as_str()) && c.spec.service_ref.name == name
    };
    let cached = ctx.caches.claims_where(|c| owns(c) || reads(c, &ns, &name));
    let (owned, read): (Vec<&DatabaseClaim>, Vec<&DatabaseClaim>) = cached
        .iter()
        .filter_map(|c| c.0.as_ref().ok())
        .partition(|c| owns(c));
    let mut entries = ownership_entries(&service, &owned);
    entries.extend(reader_entries(&service, &read));
    // Its ServiceAccount may read (`get`) the binding Secrets the table puts
    // it in front of, and no other.
    let readable: Vec<String> = entries
        .iter()
        .filter(|(_, owner)| **owner == name)
        .filter_map(|(key, _)| key.strip_prefix("secret.").map(String::from))
        .collect();
    write_entries(ctx, &ns, &service_manager(&service), entries).await?;
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

    patch_status_if_changed(
        &ctx.api::<Service>(&ns),
        &service,
        &ctx.written,
        |s| s.status.clone(),
        |current| Some(compute(&service, current.as_ref(), databases.clone())),
    )
    .await?;
    ctx.succeeded(&format!("Service/{ns}/{name}"));
    Ok(Action::requeue(ctx.config.resync))
}

/// Name of the per-namespace ConfigMap the ownership admission policy reads.
pub const OWNERSHIP_TABLE: &str = "dbps-bindings";

/// The entries of the ownership table this Service owns:
/// `secret.<name>` → the service, for each of its binding Secrets (first,
/// current, and previous during a rotation); `secret.<claim>-admin` →
/// `claim:<claim>` for the admin Secret of each dedicated instance (only the
/// instance's pods, labelled `dbps.io/claim: <claim>`, may use it); and
/// `account.<service>` → its ServiceAccount.
///
/// A claim counts once the claim controller has vetted it: a claim not yet
/// reconciled, or refused because the names it asks for belong to another
/// Service, adds nothing (a claim must not put its Service in front of
/// another's Secret by naming it).
pub fn ownership_entries(service: &Service, claims: &[&DatabaseClaim]) -> BTreeMap<String, String> {
    let name = service.name_any();
    let mut entries = BTreeMap::from([(format!("account.{name}"), service.service_account())]);
    for claim in claims {
        let Some(status) = claim.status.as_ref() else {
            continue;
        };
        let vetted = crate::api::find_condition(&status.conditions, READY)
            .and_then(|c| Reason::parse(&c.reason))
            .is_some_and(|r| !r.is_conflict());
        if !vetted {
            continue;
        }
        let secrets = [
            Some(names::binding_secret(&claim.name_any())),
            status.binding.as_ref().map(|b| b.name.clone()),
        ]
        .into_iter()
        .chain([status
            .credentials
            .as_ref()
            .and_then(|c| c.previous.as_ref())
            .map(|p| p.secret.clone())])
        .flatten();
        for secret in secrets {
            entries.insert(format!("secret.{secret}"), name.clone());
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
    let claim_ns = claim.namespace().unwrap_or_default();
    claim
        .spec
        .readers
        .iter()
        .any(|r| r.service == service && r.namespace_or(&claim_ns) == namespace)
        || claim
            .status
            .iter()
            .flat_map(|s| &s.readers)
            .any(|r| r.service == service && r.namespace == namespace)
}

/// The entries of the ownership table for the read-only bindings other
/// Services' claims issued to `service`: `secret.<claim>-reader-<service>`
/// → the service, for each grant their status shows in force.
pub fn reader_entries(service: &Service, claims: &[&DatabaseClaim]) -> BTreeMap<String, String> {
    let name = service.name_any();
    let ns = service.namespace().unwrap_or_default();
    claims
        .iter()
        .filter_map(|c| c.status.as_ref())
        .flat_map(|s| &s.readers)
        .filter(|r| r.service == name && r.namespace == ns)
        .map(|r| (format!("secret.{}", r.binding), name.clone()))
        .collect()
}

/// Field manager of the entries kept for the Secrets of a deleted claim.
fn retained_manager(claim: &str) -> String {
    format!("{FIELD_MANAGER}.retained.{claim}")
}

/// Keeps (or, with `None`, drops) the ownership-table entries of the Secrets
/// a deleted claim leaves behind (deletionPolicy Retain), so they stay fenced
/// for their Service after the claim is gone.
pub async fn retain_entries(
    ctx: &Context,
    namespace: &str,
    claim: &str,
    entries: Option<BTreeMap<String, String>>,
) -> Result<(), Error> {
    let desired = entries.unwrap_or_default();
    write_entries(ctx, namespace, &retained_manager(claim), desired).await
}

/// Makes the entries `manager` applied to the ownership table of `namespace`
/// exactly `desired` (server-side apply drops the ones it no longer lists).
async fn write_entries(
    ctx: &Context,
    namespace: &str,
    manager: &str,
    desired: BTreeMap<String, String>,
) -> Result<(), Error> {
    let configmaps: Api<ConfigMap> = ctx.api(namespace);
    // The tables are watched: an edit by someone else brings the Services
    // of the namespace back here.
    let live = ctx.caches.table(namespace);
    let mine = live.map(|cm| entries_of(&cm, manager)).unwrap_or_default();
    if mine == desired {
        return Ok(());
    }
    let patch = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": OWNERSHIP_TABLE,
            "labels": { "app.kubernetes.io/managed-by": MANAGED_BY, "app.kubernetes.io/component": "ownership" },
        },
        "data": desired,
    });
    let written = configmaps
        .patch(
            OWNERSHIP_TABLE,
            &PatchParams::apply(manager).force(),
            &Patch::Apply(patch),
        )
        .await?;
    ctx.own.record(&written);
    Ok(())
}

/// The field manager of a Service's entries in the ownership table: each
/// Service writes its own, so server-side apply merges them and drops the
/// ones a Service no longer has.
fn service_manager(service: &Service) -> String {
    format!("{FIELD_MANAGER}.service.{}", service.name_any())
}

/// The data entries of `cm` that `manager` applied (from its managed fields).
fn entries_of(cm: &ConfigMap, manager: &str) -> BTreeMap<String, String> {
    let data = cm.data.clone().unwrap_or_default();
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
                .map(|d| {
                    d.keys()
                        .filter_map(|k| k.strip_prefix("f:"))
                        .map(String::from)
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        })
        .filter_map(|k| data.get(&k).map(|v| (k, v.clone())))
        .collect()
}

/// The status a Service with these databases should have.
pub fn compute(
    service: &Service,
    current: Option<&ServiceStatus>,
    databases: Vec<ServiceDatabase>,
) -> ServiceStatus {
    let current = current.cloned().unwrap_or_default();
    let mut conditions = current.conditions;
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
        let message = format!("not ready: {}", waiting.join(", "));
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
mod tests {
    use super::*;
    use crate::api::Engine;

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

    fn claim_with_reason(name: &str, service: &str, reason: Option<Reason>) -> DatabaseClaim {
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
        let entries = ownership_entries(&intruder, &claims.iter().collect::<Vec<_>>());
        assert_eq!(
            entries.keys().collect::<Vec<_>>(),
            [
                "account.intruder",
                "secret.own-db-admin",
                "secret.own-db-binding"
            ]
        );
    }
}
