//! What a claim's status says, written only when it changes, and the events
//! that go with a change of its Ready reason (not routine progress: a first
//! provisioning is told by the status alone).

use kube::Resource;
use kube::ResourceExt;
use kube::runtime::events::{Event, EventType};

use super::super::apply::{patch_status_if_changed, status_or_default};
use super::super::context::{Context, Error};
use crate::api::{
    Binding, ClaimPhase, CredentialsStatus, DatabaseClaim, DatabaseClaimStatus, Endpoint,
    ExtensionStatus, READY, ReaderStatus, Reason, set_condition,
};

/// What the claim's status should say, before it is compared and written.
pub(super) struct Outcome {
    pub phase: ClaimPhase,
    pub ready: bool,
    pub reason: Reason,
    pub message: String,
    pub binding: Option<Binding>,
    pub endpoint: Option<Endpoint>,
    /// The database's extensions when they were set up now; `None` keeps
    /// what the status says.
    pub extensions: Option<Vec<ExtensionStatus>>,
    /// The compliance profile's verdict, when the claim has a profile.
    pub compliant: Option<super::profile::Verdict>,
    /// The read-only grants when they were set up now; `None` keeps what
    /// the status says.
    pub readers: Option<Vec<ReaderStatus>>,
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
            extensions: None,
            compliant: None,
            readers: None,
        }
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
    // Refused (another owner's object or database in its way), a claim is
    // not accepted for its Service, whatever was checked before: it waits
    // for no table, and the status written now keeps its entries out.
    if outcome.reason.is_conflict() {
        ctx.fences.forget(&super::turns::line_of(claim));
    }
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
        if let Some(verdict) = &outcome.compliant {
            set_condition(
                &mut conditions,
                super::profile::COMPLIANT,
                verdict.satisfied,
                verdict.reason.as_str(),
                &verdict.message,
                generation,
            );
        }
        DatabaseClaimStatus {
            observed_generation: generation,
            phase: Some(outcome.phase),
            conditions,
            binding: outcome.binding.clone(),
            endpoint: outcome.endpoint.clone(),
            credentials: credentials.clone().or_else(|| current.credentials.clone()),
            database: database.clone().or_else(|| current.database.clone()),
            extensions: outcome
                .extensions
                .clone()
                .unwrap_or_else(|| current.extensions.clone()),
            readers: outcome
                .readers
                .clone()
                .unwrap_or_else(|| current.readers.clone()),
        }
    };
    let ns = claim.namespace().unwrap_or_default();
    let replaced = patch_status_if_changed(
        &ctx.api::<DatabaseClaim>(&ns),
        claim,
        &ctx.written,
        |c| status_or_default(&c.status),
        |current| Some(desired(current)),
    )
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
    // Routine progress (provisioning, then Ready the first time) is told by
    // the status alone; a failure, and Ready again after one, get an event.
    let routine = matches!(
        (previous_reason, outcome.reason),
        (
            None | Some(Reason::Provisioning),
            Reason::Provisioning | Reason::Ready
        )
    );
    if previous_reason != Some(outcome.reason) && !routine {
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
