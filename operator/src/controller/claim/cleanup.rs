//! What deleting a claim does: `Retain` keeps the data and the Secrets,
//! released from the claim and still fenced for its Service; `Delete`
//! removes the volume of a dedicated instance, or drops what carries the
//! claim's mark on a shared server.

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Secret};
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};
use serde_json::json;

use super::super::context::{Context, Error};
use super::super::drift;
use super::administer::mark_of;
use super::fences::accepted;
use super::shared::{admin_connection, placed_database, shared_database, slot_username};
use super::status::{Outcome, publish, update_status};
use crate::api::{
    CLAIM_LABEL, ClaimPhase, DatabaseClaim, DatabaseServer, DeletionPolicy, Reason, SERVICE_LABEL,
};
use crate::children::names;

/// Annotation that makes deletion skip the cleanup on the server (the escape
/// hatch for a server that is gone for good).
pub const SKIP_CLEANUP_ANNOTATION: &str = "dbps.io/skip-cleanup";

/// Runs once when the claim is deleted. `Retain` keeps the volume (the
/// StatefulSet leaves its PVC behind) and the Secrets (released from the
/// claim's ownership); `Delete` removes the volume too, and garbage
/// collection takes everything the claim owns.
pub(super) async fn cleanup(claim: &DatabaseClaim, ctx: &Context) -> Result<Action, Error> {
    let ns = claim.namespace().unwrap_or_default();
    let name = claim.name_any();
    let uid = claim.uid().unwrap_or_default();
    let secrets: Api<Secret> = ctx.api(&ns);
    // Whether its entries were its Service's to keep, before it is forgotten.
    let accepted = accepted(claim, ctx);
    ctx.fences.forget(&super::turns::line_of(claim));
    // The read access the claim granted ends with it, whatever its policy:
    // the readers' Secrets go (they have no owner reference, as they may
    // live in other namespaces); a shared server's reader users are
    // dropped below.
    for reader in claim.status.iter().flat_map(|s| &s.readers) {
        let api: Api<Secret> = ctx.api(&reader.namespace);
        match api.delete(&reader.binding, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    if let Some(server) = &claim.spec.server {
        let note = match cleanup_shared(claim, &server.name, ctx).await {
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
            if accepted {
                let entries = kept
                    .iter()
                    .map(|s| (format!("secret.{s}"), claim.spec.service_ref.name.clone()))
                    .collect();
                super::super::service::retain_entries(
                    ctx,
                    &ns,
                    &claim.spec.service_ref.name,
                    &name,
                    Some(entries),
                )
                .await?;
            }
        } else if accepted {
            super::super::service::retain_entries(
                ctx,
                &ns,
                &claim.spec.service_ref.name,
                &name,
                None,
            )
            .await?;
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
            if accepted {
                let mut entries: std::collections::BTreeMap<_, _> = bindings
                    .iter()
                    .map(|s| (format!("secret.{s}"), claim.spec.service_ref.name.clone()))
                    .collect();
                entries.insert(
                    format!("secret.{}", names::admin_secret(&name)),
                    format!("claim:{name}"),
                );
                super::super::service::retain_entries(
                    ctx,
                    &ns,
                    &claim.spec.service_ref.name,
                    &name,
                    Some(entries),
                )
                .await?;
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
            if accepted {
                super::super::service::retain_entries(
                    ctx,
                    &ns,
                    &claim.spec.service_ref.name,
                    &name,
                    None,
                )
                .await?;
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

/// Deletion of a shared claim. `Delete` drops the database and users on the
/// server that carry this claim's mark, and nothing else (retrying while the
/// server is unreachable); `Retain` keeps them and the binding Secret. The
/// annotation `dbps.io/skip-cleanup: "true"` skips the server side. Returns
/// what happened, for the event.
async fn cleanup_shared(
    claim: &DatabaseClaim,
    server_name: &str,
    ctx: &Context,
) -> Result<String, Error> {
    let skip = claim
        .annotations()
        .get(SKIP_CLEANUP_ANNOTATION)
        .is_some_and(|v| v == "true");
    let recorded = claim.status.as_ref().and_then(|s| s.database.clone());
    let readers = claim
        .status
        .as_ref()
        .map(|s| s.readers.clone())
        .unwrap_or_default();
    let retain = claim.spec.deletion_policy != crate::api::DeletionPolicy::Delete;
    if retain && readers.is_empty() {
        let database = recorded.unwrap_or_else(|| shared_database(claim));
        return Ok(format!(
            "kept database {database:?} on DatabaseServer {server_name:?} and Secret {:?} (deletionPolicy Retain)",
            names::binding_secret(&claim.name_any())
        ));
    }
    if skip {
        return Ok(format!(
            "left DatabaseServer {server_name:?} untouched ({SKIP_CLEANUP_ANNOTATION})"
        ));
    }
    let servers: Api<DatabaseServer> = Api::all(ctx.client.clone());
    let Some(server) = servers.get_opt(server_name).await? else {
        return Err(Error::Cleanup(format!(
            "DatabaseServer {server_name:?} is gone, so its database cannot be dropped; annotate the claim with {SKIP_CLEANUP_ANNOTATION}=true to delete it anyway"
        )));
    };
    let conn = admin_connection(ctx, &server)
        .await?
        .map_err(|u| Error::Cleanup(format!("{}: {}", u.reason, u.message)))?;
    let (database, _) = placed_database(claim, &server);
    let mark = mark_of(ctx, claim).await?;
    // Read access granted to other Services ends with the claim, whatever
    // happens to the data (their Secrets go with the claim).
    for reader in &readers {
        ctx.servers
            .drop_reader(&conn, &database, &reader.username, &mark)
            .await
            .map_err(|e| Error::Cleanup(format!("DatabaseServer {server_name:?}: {e}; retrying (annotate the claim with {SKIP_CLEANUP_ANNOTATION}=true to skip)")))?;
    }
    let ended = readers
        .iter()
        .map(|r| format!("{:?}", r.service))
        .collect::<Vec<_>>()
        .join(", ");
    if retain {
        return Ok(format!(
            "kept database {database:?} on DatabaseServer {server_name:?} and Secret {:?} (deletionPolicy Retain); ended the read access of Service(s) {ended}",
            names::binding_secret(&claim.name_any())
        ));
    }
    let mut users = vec![slot_username(claim, 0), slot_username(claim, 1)];
    users.extend(readers.iter().map(|r| r.username.clone()));
    let dropped = ctx
        .servers
        .drop_database(&conn, &database, &users, &mark)
        .await
        .map_err(|e| Error::Cleanup(format!("DatabaseServer {server_name:?}: {e}; retrying (annotate the claim with {SKIP_CLEANUP_ANNOTATION}=true to skip)")))?;
    let mut note = match dropped.dropped.is_empty() {
        true => format!("dropped nothing on DatabaseServer {server_name:?}"),
        false => format!(
            "dropped {} on DatabaseServer {server_name:?}",
            dropped.dropped.join(", ")
        ),
    };
    if !dropped.kept.is_empty() {
        note.push_str(&format!(
            "; left {}, which this claim does not own",
            dropped.kept.join(", ")
        ));
    }
    Ok(note)
}
