//! Status of a `Service`: its databases, their phases, and whether all are Ready.

use std::sync::Arc;

use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};
use serde_json::json;

use super::{Context, Error};
use crate::api::{
    ClaimPhase, DatabaseClaim, READY, Service, ServiceDatabase, ServiceStatus, set_condition,
};
use crate::children::FIELD_MANAGER;

pub async fn reconcile(service: Arc<Service>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = service.namespace().unwrap_or_default();
    let name = service.name_any();
    let claims: Api<DatabaseClaim> = ctx.api(&ns);
    let mut databases: Vec<ServiceDatabase> = claims
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|c| c.spec.service_ref.name == name)
        .map(|c| ServiceDatabase {
            claim: c.name_any(),
            engine: c.spec.engine,
            phase: c.status.and_then(|s| s.phase),
        })
        .collect();
    databases.sort_by(|a, b| a.claim.cmp(&b.claim));

    if Some(&compute(&service, databases.clone())) != service.status.as_ref() {
        // The cache may not show our last write yet: compare with the live object.
        let services: Api<Service> = ctx.api(&ns);
        if let Some(live) = services.get_opt(&name).await? {
            let status = compute(&live, databases);
            if Some(&status) != live.status.as_ref() {
                let patch = json!({ "apiVersion": "dbps.io/v1alpha1", "kind": "Service", "status": status });
                services
                    .patch_status(
                        &name,
                        &PatchParams::apply(FIELD_MANAGER).force(),
                        &Patch::Apply(patch),
                    )
                    .await?;
            }
        }
    }
    ctx.succeeded(&format!("Service/{ns}/{name}"));
    Ok(Action::requeue(ctx.config.resync))
}

/// The status a Service with these databases should have.
pub fn compute(service: &Service, databases: Vec<ServiceDatabase>) -> ServiceStatus {
    let current = service.status.clone().unwrap_or_default();
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
            "DatabasesReady",
            message,
            generation,
        );
    } else {
        let message = format!("not ready: {}", waiting.join(", "));
        set_condition(
            &mut conditions,
            READY,
            false,
            "DatabasesNotReady",
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

        let status = compute(&service, vec![db("a", Some(ClaimPhase::Ready))]);
        assert_eq!(status.conditions[0].status, "True");
    }
}
