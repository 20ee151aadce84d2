//! Reconcile of a `DatabaseClaim`: dereference (its Service, its existing
//! credentials) → build (pure) → apply (skipped when unchanged) → status.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Secret, Service as KubeService};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;

use super::administer::{Target, administer};
use super::apply::{apply, ensure, patch_status_if_changed};
use super::{Context, Error, FINALIZER, drift};
use crate::api::{
    Binding, CLAIM_LABEL, ClaimPhase, CredentialsStatus, DatabaseClaim, DatabaseClaimStatus,
    DeletionPolicy, Endpoint, READY, Reason, SERVICE_LABEL, Service, set_condition,
};
use crate::children::{Credentials, Dedicated, Inputs, names, secret_value};
use crate::engines::Connection;
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
    pub reason: Reason,
    pub message: String,
    pub binding: Option<Binding>,
    pub endpoint: Option<Endpoint>,
}

impl Outcome {
    /// Not ready, for `reason`.
    pub fn waiting(phase: ClaimPhase, reason: Reason, message: String) -> Self {
        Outcome {
            phase,
            ready: false,
            reason,
            message,
            binding: None,
            endpoint: None,
        }
    }
}

/// The major version of a version string (`17`, `8.0` → 8, `1.11` → 1).
pub fn major(version: &str) -> Option<u32> {
    version.split('.').next()?.parse().ok()
}

/// The version of the running instance, from its StatefulSet's image tag.
fn running_version(sts: &StatefulSet) -> Option<String> {
    let image = sts
        .spec
        .as_ref()?
        .template
        .spec
        .as_ref()?
        .containers
        .first()?
        .image
        .clone()?;
    image.rsplit_once(':').map(|(_, tag)| tag.to_string())
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
        let outcome = Outcome::waiting(
            ClaimPhase::Pending,
            Reason::ServiceNotFound,
            format!(
                "Service {service_name:?} (dbps.io) does not exist in namespace {ns:?}; create it or correct spec.serviceRef.name"
            ),
        );
        update_status(claim, ctx, outcome).await?;
        // The Service watch brings the claim back when the Service appears.
        return Ok(resync);
    };
    let secrets: Api<Secret> = ctx.api(&ns);
    let statefulsets: Api<StatefulSet> = ctx.api(&ns);
    let name = claim.name_any();
    let read = async {
        let admin = secrets.get_opt(&names::admin_secret(&name)).await?;
        let binding = secrets.get_opt(&names::binding_secret(&name)).await?;
        let live_sts = statefulsets.get_opt(&names::instance(&name)).await?;
        // The volume matters only until this claim's StatefulSet holds it.
        let owns_sts = live_sts.as_ref().is_some_and(|s| {
            s.owner_references()
                .iter()
                .any(|o| o.controller == Some(true) && Some(&o.uid) == claim.metadata.uid.as_ref())
        });
        let volume = match owns_sts {
            true => None,
            false => {
                ctx.api::<PersistentVolumeClaim>(&ns)
                    .get_opt(&names::data_pvc(&name))
                    .await?
            }
        };
        Ok::<_, kube::Error>((admin, binding, live_sts, volume))
    };
    let (admin, binding, live_sts, volume) = match read.await {
        Ok(found) => found,
        Err(e) => return Err(visible_failure(claim, ctx, e).await),
    };

    // Nothing of another Service, and nothing dbps did not make, is touched.
    let found = [
        admin.as_ref().map(|s| (&s.metadata, "Secret")),
        binding.as_ref().map(|s| (&s.metadata, "Secret")),
        live_sts.as_ref().map(|s| (&s.metadata, "StatefulSet")),
        volume
            .as_ref()
            .map(|v| (&v.metadata, "PersistentVolumeClaim")),
    ];
    let mut refusal = found
        .iter()
        .flatten()
        .find_map(|(meta, kind)| drift::foreign(meta, kind, claim, service_name))
        .map(|message| (Reason::ObjectOwnedByAnotherService, message));
    if refusal.is_none() && volume.is_some() && admin.is_none() {
        refusal = Some((
            Reason::VolumeWithoutCredentials,
            format!(
                "volume {:?} exists but Secret {:?}, which holds the credentials it was initialised with, does not; nothing was attached. Restore the Secret, or delete the volume to start afresh",
                names::data_pvc(&name),
                names::admin_secret(&name)
            ),
        ));
    }
    let version = claim
        .spec
        .version
        .clone()
        .unwrap_or_else(|| claim.spec.engine.instance().default_version().to_string());
    if let Some(running) = live_sts.as_ref().and_then(running_version)
        && refusal.is_none()
        && major(&running) != major(&version)
    {
        refusal = Some((
            Reason::MajorVersionChange,
            format!(
                "the instance runs {} {running}; {version} is another major version, which cannot run on its data. Set spec.version back to {running} (minor versions change in place), or move the data to a new claim",
                claim.spec.engine.as_str()
            ),
        ));
    }
    if let Some((reason, message)) = refusal {
        update_status(
            claim,
            ctx,
            Outcome::waiting(ClaimPhase::Failed, reason, message),
        )
        .await?;
        return Ok(resync);
    }

    // The superuser's password: believed only when it matches what dbps issued.
    let uid = claim.uid().unwrap_or_default();
    let mut issued = claim
        .status
        .as_ref()
        .and_then(|s| s.credentials.clone())
        .unwrap_or_default();
    let admin_pw = admin.as_ref().and_then(|s| secret_value(s, PASSWORD_KEY));
    let superuser = drift::choose(
        &uid,
        issued.admin_fingerprint.as_deref(),
        &[admin_pw.as_deref()],
    );
    let Some(admin_password) = superuser.value().map(String::from) else {
        let outcome = Outcome::waiting(
            ClaimPhase::Failed,
            Reason::AdminSecretEdited,
            format!(
                "Secret {:?} no longer holds the superuser password dbps issued (edited or deleted by hand); dbps does not use another value, and the instance keeps the password it was initialised with. Restore the Secret from a backup",
                names::admin_secret(&name)
            ),
        );
        update_status(claim, ctx, outcome).await?;
        return Ok(resync);
    };
    let admin_fingerprint = password::fingerprint(&uid, &admin_password);
    issued.admin_fingerprint = Some(admin_fingerprint.clone());
    let credentials = Credentials {
        admin_password,
        app_password: String::new(),
    };

    // build
    let inputs = Inputs {
        claim,
        service: &service,
        credentials: &credentials,
        platform: &ctx.config.platform,
    };
    let children = Dedicated::build(&inputs);

    // apply: the admin Secret first (the pod reads it), the workload last.
    let applied = async {
        apply(&secrets, &children.admin_secret, admin).await?;
        ensure(&ctx.api::<NetworkPolicy>(&ns), &children.network_policy).await?;
        let kube_service = ensure(&ctx.api::<KubeService>(&ns), &children.service).await?;
        let sts = apply(&statefulsets, &children.statefulset, live_sts).await?;
        Ok::<_, kube::Error>((kube_service, sts))
    };
    let (kube_service, sts) = match applied.await {
        Ok(applied) => applied,
        Err(e) => return Err(visible_failure(claim, ctx, e).await),
    };

    let engine = claim.spec.engine;
    let endpoint = Endpoint {
        host: inputs.host(),
        port: engine.instance().port().into(),
    };
    let ready = sts
        .status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0)
        >= 1;
    let cluster_ip = kube_service
        .spec
        .and_then(|s| s.cluster_ip)
        .filter(|ip| !ip.is_empty() && ip != "None");
    let Some(cluster_ip) = cluster_ip.filter(|_| ready) else {
        let outcome = Outcome {
            phase: ClaimPhase::Provisioning,
            ready: false,
            reason: Reason::Provisioning,
            message: format!(
                "waiting for StatefulSet {:?} to have a ready replica",
                sts.name_any()
            ),
            binding: None,
            endpoint: Some(endpoint),
        };
        update_status_with(claim, ctx, outcome, Some(issued)).await?;
        return Ok(resync);
    };

    // administer: the app's users and database, as on a shared server.
    let database = claim.database_name();
    let target = Target {
        place: format!("instance {:?}", names::instance(&name)),
        conn: Connection {
            engine,
            host: cluster_ip,
            port: engine.instance().port(),
            username: engine.admin_username().to_string(),
            password: credentials.admin_password.clone(),
            tls: None,
        },
        users: [
            engine.app_username(&database, 0),
            engine.app_username(&database, 1),
        ],
        database,
        adopt: false,
        shared: false,
        endpoint,
        tls: None,
        admin_fingerprint: Some(admin_fingerprint),
        ready_message: format!("{} {} is ready", engine.as_str(), inputs.version()),
    };
    administer(claim, &service, target, ctx).await
}

/// Makes a failure to read or write the instance's objects visible where the
/// user looks (e.g. a missing permission), and returns it for the retry.
async fn visible_failure(claim: &DatabaseClaim, ctx: &Context, e: kube::Error) -> Error {
    let outcome = Outcome::waiting(
        ClaimPhase::Provisioning,
        Reason::ApplyFailed,
        format!("reading or writing the instance's objects failed: {e}"),
    );
    match update_status(claim, ctx, outcome).await {
        Ok(()) => e.into(),
        Err(status) => status,
    }
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
    update_status_full(claim, ctx, outcome, credentials, None).await
}

/// As [`update_status_with`], also recording the database's name on its server.
pub(super) async fn update_status_full(
    claim: &DatabaseClaim,
    ctx: &Context,
    outcome: Outcome,
    credentials: Option<CredentialsStatus>,
    database: Option<String>,
) -> Result<(), Error> {
    let desired = |current: &DatabaseClaimStatus| {
        let mut conditions = current.conditions.clone();
        let generation = claim.metadata.generation;
        set_condition(
            &mut conditions,
            READY,
            outcome.ready,
            outcome.reason.as_str(),
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
            database: database.clone().or_else(|| current.database.clone()),
        }
    };
    let ns = claim.namespace().unwrap_or_default();
    let status_of = |c: &DatabaseClaim| c.status.clone().unwrap_or_default();
    let replaced = patch_status_if_changed(&ctx.api::<DatabaseClaim>(&ns), claim, status_of, |c| {
        desired(&status_of(c))
    })
    .await?;
    let Some(current) = replaced else {
        return Ok(());
    };
    let previous_reason = crate::api::find_condition(&current.conditions, READY)
        .and_then(|c| Reason::parse(&c.reason));
    if let Some(created) = claim
        .metadata
        .creation_timestamp
        .as_ref()
        .filter(|_| outcome.ready && previous_reason != Some(Reason::Ready))
    {
        let took = k8s_openapi::jiff::Timestamp::now().duration_since(created.0);
        ctx.metrics
            .claim_ready_after(std::time::Duration::try_from(took).unwrap_or_default());
    }
    if previous_reason != Some(outcome.reason) {
        let type_ = if outcome.ready || outcome.reason == Reason::Provisioning {
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
    reason: Reason,
    action: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.as_str().into(),
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
        let note = match super::shared::cleanup_shared(claim, &server.name, ctx).await {
            Ok(note) => note,
            Err(e) => {
                let outcome =
                    Outcome::waiting(ClaimPhase::Deleting, Reason::CleanupFailed, e.to_string());
                update_status(claim, ctx, outcome).await?;
                return Err(e);
            }
        };
        if claim.spec.deletion_policy == DeletionPolicy::Retain {
            let kept = kept_bindings(claim);
            for secret in &kept {
                release(&secrets, secret, &uid).await?;
            }
            if vetted(claim) {
                let entries = kept
                    .iter()
                    .map(|s| (format!("secret.{s}"), claim.spec.service_ref.name.clone()))
                    .collect();
                super::service::retain_entries(ctx, &ns, &name, Some(entries)).await?;
            }
        } else if vetted(claim) {
            super::service::retain_entries(ctx, &ns, &name, None).await?;
        }
        let reason = match claim.spec.deletion_policy {
            DeletionPolicy::Retain => Reason::Retained,
            DeletionPolicy::Delete => Reason::Deleted,
        };
        publish(ctx, claim, EventType::Normal, reason, "Delete", note).await;
        return Ok(Action::await_change());
    }
    match claim.spec.deletion_policy {
        DeletionPolicy::Retain => {
            let bindings = kept_bindings(claim);
            release(&secrets, &names::admin_secret(&name), &uid).await?;
            for secret in &bindings {
                release(&secrets, secret, &uid).await?;
            }
            // The kept Secrets stay fenced for their Service in the ownership table.
            if vetted(claim) {
                let mut entries: std::collections::BTreeMap<_, _> = bindings
                    .iter()
                    .map(|s| (format!("secret.{s}"), claim.spec.service_ref.name.clone()))
                    .collect();
                entries.insert(
                    format!("secret.{}", names::admin_secret(&name)),
                    format!("claim:{name}"),
                );
                super::service::retain_entries(ctx, &ns, &name, Some(entries)).await?;
            }
            // The volume remembers its Service: it is handed back to a claim
            // of the same name and Service only.
            let pvcs: Api<PersistentVolumeClaim> = ctx.api(&ns);
            let label = json!({ "metadata": { "labels": {
                SERVICE_LABEL: claim.spec.service_ref.name,
                CLAIM_LABEL: name,
            } } });
            match pvcs
                .patch(
                    &names::data_pvc(&name),
                    &PatchParams::default(),
                    &Patch::Merge(label),
                )
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
            let note = format!(
                "kept volume {:?} and Secrets {:?}, {} for Service {:?} (deletionPolicy Retain)",
                names::data_pvc(&name),
                names::admin_secret(&name),
                bindings
                    .iter()
                    .map(|b| format!("{b:?}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                claim.spec.service_ref.name
            );
            publish(
                ctx,
                claim,
                EventType::Normal,
                Reason::Retained,
                "Delete",
                note,
            )
            .await;
        }
        DeletionPolicy::Delete => {
            if vetted(claim) {
                super::service::retain_entries(ctx, &ns, &name, None).await?;
            }
            let pvcs: Api<PersistentVolumeClaim> = ctx.api(&ns);
            let volume = names::data_pvc(&name);
            // A volume kept for another Service (or not made by dbps) is not this claim's to delete.
            let kept = pvcs.get_opt(&volume).await?.and_then(|pvc| {
                drift::foreign(
                    &pvc.metadata,
                    "PersistentVolumeClaim",
                    claim,
                    &claim.spec.service_ref.name,
                )
            });
            let note = match kept {
                Some(why) => format!("left volume {volume:?}: {why}"),
                None => {
                    match pvcs.delete(&volume, &DeleteParams::background()).await {
                        Ok(_) => {}
                        Err(kube::Error::Api(e)) if e.code == 404 => {}
                        Err(e) => return Err(e.into()),
                    }
                    format!("deleted volume {volume:?}; Secrets follow the claim")
                }
            };
            publish(
                ctx,
                claim,
                EventType::Normal,
                Reason::Deleted,
                "Delete",
                note,
            )
            .await;
        }
    }
    Ok(Action::await_change())
}

/// The binding Secrets a `Retain` deletion keeps: the first, the one in
/// force and the one in its grace period.
fn kept_bindings(claim: &DatabaseClaim) -> Vec<String> {
    let status = claim.status.clone().unwrap_or_default();
    let mut kept = vec![names::binding_secret(&claim.name_any())];
    kept.extend(status.binding.map(|b| b.name));
    kept.extend(
        status
            .credentials
            .and_then(|c| c.previous)
            .map(|p| p.secret),
    );
    kept.sort();
    kept.dedup();
    kept
}

/// Whether the claim was ever accepted as the owner of its names: not
/// refused for a conflict, and reconciled at least once.
fn vetted(claim: &DatabaseClaim) -> bool {
    claim
        .status
        .as_ref()
        .and_then(|s| crate::api::find_condition(&s.conditions, READY))
        .and_then(|c| Reason::parse(&c.reason))
        .is_some_and(|r| !r.is_conflict())
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
