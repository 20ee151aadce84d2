//! Reconcile of a `DatabaseClaim`. A claim with `spec.server` is placed on a
//! registered server ([`shared`]), one without gets an instance of its own
//! ([`dedicated`]); either way its database, users and credentials are
//! administered over the wire ([`administer`], with [`rotation`] planning
//! when credentials change). Deletion runs once, behind the finalizer
//! ([`cleanup`]). Status is written only when it changes ([`status`]).

mod administer;
mod cleanup;
mod dedicated;
mod fences;
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
#[cfg(test)]
pub use fences::vetted;
pub use fences::{Fences, accepted};
pub use rotation::{ROTATE_ANNOTATION, due_binding};
pub use shared::{selector_matches, shared_database, slot_username};
pub use turns::Turns;

/// When a claim's Service or server is missing from the caches: they may
/// lag the apiserver a moment (at start, or while a watch catches up), so
/// the claim looks again soon rather than at the next resync.
fn look_again_soon(ctx: &Context) -> Action {
    Action::requeue(ctx.config.resync.min(std::time::Duration::from_secs(5)))
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
    let claim = super::apply::with_finalizer(&claims, claim, FINALIZER, &ctx.own).await?;
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
