//! Reconcile of a `DatabaseClaim`: dereference (its Service, its existing
//! credentials) → build (pure) → apply (skipped when unchanged) → status.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolumeClaim, Secret, Service as KubeService,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;

use super::apply::{apply, ensure};
use super::{Context, Error, FINALIZER};
use crate::api::{
    Binding, ClaimPhase, CredentialsStatus, DatabaseClaim, DatabaseClaimStatus, DeletionPolicy,
    Endpoint, READY, Service, set_condition,
};
use crate::children::{Credentials, Dedicated, FIELD_MANAGER, Inputs, names, secret_value};
use crate::engines::PASSWORD_KEY;
use crate::password;

pub async fn reconcile(
    guard: Arc<DeserializeGuard<DatabaseClaim>>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let claim = match &guard.0 {
        Ok(claim) => Arc::new(claim.clone()),
        Err(invalid) => return Err(Error::InvalidObject(invalid.error.clone())),
    };
    let ns = claim.namespace().unwrap_or_default();
    let key = format!("DatabaseClaim/{ns}/{}", claim.name_any());
    let claims: Api<DatabaseClaim> = ctx.api(&ns);
    let action = finalizer(&claims, FINALIZER, claim, |event| async {
        match event {
            Finalizer::Apply(claim) => apply_claim(&claim, &ctx).await,
            Finalizer::Cleanup(claim) => cleanup(&claim, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))?;
    ctx.succeeded(&key);
    Ok(action)
}

/// What the claim's status should say, before it is compared and written.
pub(super) struct Outcome {
    pub phase: ClaimPhase,
    pub ready: bool,
    pub reason: &'static str,
    pub message: String,
    pub binding: Option<Binding>,
    pub endpoint: Option<Endpoint>,
}

async fn apply_claim(claim: &DatabaseClaim, ctx: &Context) -> Result<Action, Error> {
    let ns = claim.namespace().unwrap_or_default();
    let resync = Action::requeue(ctx.config.resync);

    if let Some(server) = &claim.spec.server {
        return super::shared::apply_shared(claim, &server.name, ctx).await;
    }

    // dereference
    let services: Api<Service> = ctx.api(&ns);
    let service_name = &claim.spec.service_ref.name;
    let Some(service) = services.get_opt(service_name).await? else {
        let outcome = Outcome {
            phase: ClaimPhase::Pending,
            ready: false,
            reason: "ServiceNotFound",
            message: format!(
                "Service {service_name:?} (dbps.io) does not exist in namespace {ns:?}; create it or correct spec.serviceRef.name"
            ),
            binding: None,
            endpoint: None,
        };
        update_status(claim, ctx, outcome).await?;
        // The Service watch brings the claim back when the Service appears.
        return Ok(resync);
    };
    let secrets: Api<Secret> = ctx.api(&ns);
    let name = claim.name_any();
    let admin = secrets.get_opt(&names::admin_secret(&name)).await?;
    let binding = secrets.get_opt(&names::binding_secret(&name)).await?;
    let existing = |s: &Option<Secret>| s.as_ref().and_then(|s| secret_value(s, PASSWORD_KEY));
    let credentials = Credentials {
        admin_password: existing(&admin).unwrap_or_else(password::generate),
        app_password: existing(&binding).unwrap_or_else(password::generate),
    };

    // build
    let inputs = Inputs {
        claim,
        service: &service,
        credentials: &credentials,
        cluster_domain: &ctx.config.cluster_domain,
    };
    let children = Dedicated::build(&inputs);

    // apply: Secrets first (the pod reads them), the workload last.
    let applied = async {
        apply(&secrets, &children.admin_secret, admin).await?;
        let binding = apply(&secrets, &children.binding_secret, binding).await?;
        ensure(&ctx.api::<Role>(&ns), &children.role).await?;
        ensure(&ctx.api::<RoleBinding>(&ns), &children.role_binding).await?;
        ensure(&ctx.api::<NetworkPolicy>(&ns), &children.network_policy).await?;
        if let Some(init) = &children.init_config {
            ensure(&ctx.api::<ConfigMap>(&ns), init).await?;
        }
        ensure(&ctx.api::<KubeService>(&ns), &children.service).await?;
        let sts = ensure(&ctx.api::<StatefulSet>(&ns), &children.statefulset).await?;
        Ok::<_, kube::Error>((binding, sts))
    };
    let (binding, sts) = match applied.await {
        Ok(applied) => applied,
        Err(e) => {
            // Make the failure visible where the user looks (e.g. a missing permission).
            let outcome = Outcome {
                phase: ClaimPhase::Provisioning,
                ready: false,
                reason: "ApplyFailed",
                message: format!("writing the instance's objects failed: {e}"),
                binding: None,
                endpoint: None,
            };
            update_status(claim, ctx, outcome).await?;
            return Err(e.into());
        }
    };

    // status, from what was applied
    let ready = sts
        .status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0)
        >= 1;
    let endpoint = Endpoint {
        host: inputs.host(),
        port: claim.spec.engine.port().into(),
    };
    let outcome = if ready {
        Outcome {
            phase: ClaimPhase::Ready,
            ready: true,
            reason: "Ready",
            message: format!(
                "{} {} is ready; credentials in Secret {:?}",
                claim.spec.engine.as_str(),
                inputs.version(),
                binding.name_any()
            ),
            binding: Some(Binding {
                name: binding.name_any(),
            }),
            endpoint: Some(endpoint),
        }
    } else {
        Outcome {
            phase: ClaimPhase::Provisioning,
            ready: false,
            reason: "Provisioning",
            message: format!(
                "waiting for StatefulSet {:?} to have a ready replica",
                sts.name_any()
            ),
            binding: None,
            endpoint: Some(endpoint),
        }
    };
    update_status(claim, ctx, outcome).await?;
    Ok(resync)
}

/// Writes the status when it differs from the live one, and records an
/// event when the Ready condition's reason changes. Credentials status is kept.
pub(super) async fn update_status(
    claim: &DatabaseClaim,
    ctx: &Context,
    outcome: Outcome,
) -> Result<(), Error> {
    update_status_with(claim, ctx, outcome, None).await
}

/// As [`update_status`], setting the credentials status when given.
pub(super) async fn update_status_with(
    claim: &DatabaseClaim,
    ctx: &Context,
    outcome: Outcome,
    credentials: Option<CredentialsStatus>,
) -> Result<(), Error> {
    let desired = |current: &DatabaseClaimStatus| {
        let mut conditions = current.conditions.clone();
        let generation = claim.metadata.generation;
        set_condition(
            &mut conditions,
            READY,
            outcome.ready,
            outcome.reason,
            &outcome.message,
            generation,
        );
        DatabaseClaimStatus {
            observed_generation: generation,
            phase: Some(outcome.phase),
            conditions,
            binding: outcome.binding.clone(),
            endpoint: outcome.endpoint.clone(),
            credentials: credentials.clone().or_else(|| current.credentials.clone()),
        }
    };
    let cached = claim.status.clone().unwrap_or_default();
    if desired(&cached) == cached {
        return Ok(());
    }
    // The cache may not show our last write yet: compare with the live object.
    let ns = claim.namespace().unwrap_or_default();
    let claims: Api<DatabaseClaim> = ctx.api(&ns);
    let Some(live) = claims.get_opt(&claim.name_any()).await? else {
        return Ok(());
    };
    let current = live.status.unwrap_or_default();
    let status = desired(&current);
    if status == current {
        return Ok(());
    }
    let previous_reason =
        crate::api::find_condition(&current.conditions, READY).map(|c| c.reason.clone());
    let patch = json!({
        "apiVersion": "dbps.io/v1alpha1",
        "kind": "DatabaseClaim",
        "status": status,
    });
    claims
        .patch_status(
            &claim.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(patch),
        )
        .await?;
    if let Some(created) = claim
        .metadata
        .creation_timestamp
        .as_ref()
        .filter(|_| outcome.ready && previous_reason.as_deref() != Some("Ready"))
    {
        let took = k8s_openapi::jiff::Timestamp::now().duration_since(created.0);
        ctx.metrics
            .claim_ready_after(std::time::Duration::try_from(took).unwrap_or_default());
    }
    if previous_reason.as_deref() != Some(outcome.reason) {
        let type_ = if outcome.ready || outcome.reason == "Provisioning" {
            EventType::Normal
        } else {
            EventType::Warning
        };
        publish(
            ctx,
            claim,
            type_,
            outcome.reason,
            "Reconcile",
            outcome.message,
        )
        .await;
    }
    Ok(())
}

pub(super) async fn publish(
    ctx: &Context,
    claim: &DatabaseClaim,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: action.into(),
        secondary: None,
    };
    if let Err(error) = ctx.recorder.publish(&event, &claim.object_ref(&())).await {
        tracing::warn!(%error, "could not record event");
    }
}

/// Runs once when the claim is deleted. `Retain` keeps the volume (the
/// StatefulSet leaves its PVC behind) and the Secrets (released from the
/// claim's ownership); `Delete` removes the volume too, and garbage
/// collection takes everything the claim owns.
async fn cleanup(claim: &DatabaseClaim, ctx: &Context) -> Result<Action, Error> {
    let ns = claim.namespace().unwrap_or_default();
    let name = claim.name_any();
    let uid = claim.uid().unwrap_or_default();
    let secrets: Api<Secret> = ctx.api(&ns);
    if let Some(server) = &claim.spec.server {
        if let Err(e) = super::shared::cleanup_shared(claim, &server.name, ctx).await {
            let outcome = Outcome {
                phase: ClaimPhase::Deleting,
                ready: false,
                reason: "CleanupFailed",
                message: e.to_string(),
                binding: None,
                endpoint: None,
            };
            update_status(claim, ctx, outcome).await?;
            return Err(e);
        }
        let database = super::shared::shared_database(claim);
        let note = match claim.spec.deletion_policy {
            DeletionPolicy::Retain => {
                // The Secrets of the credentials in force and in their grace period.
                let status = claim.status.clone().unwrap_or_default();
                let mut kept: Vec<String> = status.binding.iter().map(|b| b.name.clone()).collect();
                kept.extend(
                    status
                        .credentials
                        .and_then(|c| c.previous)
                        .map(|p| p.secret),
                );
                kept.push(names::binding_secret(&name));
                kept.dedup();
                for secret in &kept {
                    release(&secrets, secret, &uid).await?;
                }
                format!(
                    "kept database {database:?} on DatabaseServer {:?} and Secret {:?} (deletionPolicy Retain)",
                    server.name,
                    names::binding_secret(&name)
                )
            }
            DeletionPolicy::Delete => format!(
                "dropped database {database:?} and its user on DatabaseServer {:?}",
                server.name
            ),
        };
        publish(ctx, claim, EventType::Normal, "Deleted", "Delete", note).await;
        return Ok(Action::await_change());
    }
    match claim.spec.deletion_policy {
        DeletionPolicy::Retain => {
            for secret_name in [names::admin_secret(&name), names::binding_secret(&name)] {
                release(&secrets, &secret_name, &uid).await?;
            }
            let note = format!(
                "kept volume {:?} and Secrets {:?}, {:?} (deletionPolicy Retain)",
                names::data_pvc(&name),
                names::admin_secret(&name),
                names::binding_secret(&name)
            );
            publish(ctx, claim, EventType::Normal, "Retained", "Delete", note).await;
        }
        DeletionPolicy::Delete => {
            let pvcs: Api<PersistentVolumeClaim> = ctx.api(&ns);
            match pvcs
                .delete(&names::data_pvc(&name), &DeleteParams::background())
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
            let note = format!(
                "deleted volume {:?}; Secrets follow the claim",
                names::data_pvc(&name)
            );
            publish(ctx, claim, EventType::Normal, "Deleted", "Delete", note).await;
        }
    }
    Ok(Action::await_change())
}

/// Removes the claim's owner reference from a Secret so it outlives the claim.
async fn release(secrets: &Api<Secret>, name: &str, claim_uid: &str) -> Result<(), Error> {
    let Some(secret) = secrets.get_opt(name).await? else {
        return Ok(());
    };
    let owners = secret.metadata.owner_references.clone().unwrap_or_default();
    if !owners.iter().any(|o| o.uid == claim_uid) {
        return Ok(());
    }
    let kept: Vec<_> = owners.into_iter().filter(|o| o.uid != claim_uid).collect();
    let patch = json!({
        "metadata": {
            "ownerReferences": kept,
            "resourceVersion": secret.resource_version(),
        }
    });
    secrets
        .patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await?;
    Ok(())
}
