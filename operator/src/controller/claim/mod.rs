//! Reconcile of a `DatabaseClaim`. A claim with `spec.server` is placed on a
//! registered server ([`shared`]), one without gets an instance of its own
//! ([`dedicated`]); either way its database, users and credentials are
//! administered over the wire ([`administer`], with [`rotation`] planning
//! when credentials change). Deletion runs once, behind the finalizer
//! ([`cleanup`]). Status is written only when it changes ([`status`]).

mod administer;
mod cleanup;
mod dedicated;
pub mod profile;
mod rotation;
pub(super) mod shared;
mod status;
mod turns;

use std::sync::Arc;

use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Api, ResourceExt};

use super::context::{Context, Error};
use crate::api::DatabaseClaim;

/// Finalizer that runs a claim's cleanup exactly once.
pub const FINALIZER: &str = "dbps.io/cleanup";

pub use cleanup::SKIP_CLEANUP_ANNOTATION;
pub use dedicated::major;
pub use rotation::ROTATE_ANNOTATION;
pub use shared::{selector_matches, shared_database, slot_username};
pub use turns::Turns;

/// When a claim's Service or server is missing from the caches: they may
/// lag the apiserver a moment (at start, or while a watch catches up), so
/// the claim looks again soon rather than at the next resync.
fn look_again_soon(ctx: &Context) -> Action {
    Action::requeue(ctx.config.resync.min(std::time::Duration::from_secs(5)))
}

/// The claim with the cleanup finalizer, added now when missing (unless it
/// is being deleted), so the first reconcile goes on to do the work rather
/// than wait for the event of its own patch (which the controller skips).
async fn with_finalizer(
    claims: &Api<DatabaseClaim>,
    claim: Arc<DatabaseClaim>,
    ctx: &Context,
) -> Result<Arc<DatabaseClaim>, Error> {
    let present = claim.finalizers().iter().any(|f| f == FINALIZER);
    if present || claim.metadata.deletion_timestamp.is_some() {
        return Ok(claim);
    }
    // A cached copy older than a write of this operator (a claim woken for
    // its turn before the watch brought its finalizer back) would fail the
    // patch's test: the live claim is read instead.
    let claim = match ctx.own.wrote_since(claim.as_ref()) {
        false => claim,
        true => match claims.get_opt(&claim.name_any()).await? {
            Some(live) if live.finalizers().iter().any(|f| f == FINALIZER) => {
                return Ok(Arc::new(live));
            }
            Some(live) => Arc::new(live),
            None => return Ok(claim),
        },
    };
    if claim.metadata.deletion_timestamp.is_some() {
        return Ok(claim);
    }
    // As kube's finalizer helper does: the patch fails when the list
    // changed since it was read, and the next event brings the new one.
    let pointer = |p: &str| json_patch::jsonptr::PointerBuf::parse(p).expect("valid pointer");
    let (at, value) = match &claim.metadata.finalizers {
        None => ("/metadata/finalizers", serde_json::json!([FINALIZER])),
        Some(_) => ("/metadata/finalizers/-", serde_json::json!(FINALIZER)),
    };
    let patch = json_patch::Patch(vec![
        json_patch::PatchOperation::Test(json_patch::TestOperation {
            path: pointer("/metadata/finalizers"),
            value: serde_json::json!(claim.metadata.finalizers),
        }),
        json_patch::PatchOperation::Add(json_patch::AddOperation {
            path: pointer(at),
            value,
        }),
    ]);
    let patched = claims
        .patch(
            &claim.name_any(),
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Json::<()>(patch),
        )
        .await?;
    ctx.own.record(&patched);
    Ok(Arc::new(patched))
}

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
    let claim = with_finalizer(&claims, claim, &ctx).await?;
    let action = finalizer(&claims, FINALIZER, claim, |event| async {
        match event {
            Finalizer::Apply(claim) => match &claim.spec.server {
                Some(server) => shared::apply(&claim, &server.name, &ctx).await,
                None => dedicated::apply(&claim, &ctx).await,
            },
            Finalizer::Cleanup(claim) => cleanup::cleanup(&claim, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))?;
    ctx.succeeded(&key);
    Ok(action)
}
