//! When a claim's credentials rotate and when the previous ones are revoked:
//! a pure plan from what the status records, what the claim asks and the
//! clock. The administration carries it out; nothing here talks to a server.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::api::{CredentialsStatus, PreviousCredentials, Rotation};

/// Annotation whose new value requests a credential rotation.
pub const ROTATE_ANNOTATION: &str = "dbps.io/rotate";

/// Grace period of previous credentials when the claim sets none.
pub const DEFAULT_GRACE_SECONDS: i64 = 300;

/// The credentials status to start from: the recorded one, or a first issue
/// at `now` (an annotation already there at the first issue is not a request).
pub fn recorded(
    status: Option<CredentialsStatus>,
    trigger: Option<&str>,
    now: Timestamp,
) -> CredentialsStatus {
    match status {
        Some(c) if c.issued_at.is_some() => c,
        other => CredentialsStatus {
            generation: 0,
            issued_at: Some(Time(now)),
            trigger: trigger.map(String::from),
            ..other.unwrap_or_default()
        },
    }
}

/// What this reconcile does about rotation.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Previous credentials past their grace period: revoke their user, then
    /// delete their Secret.
    pub revoke: Option<PreviousCredentials>,
    /// Issue the other user, in a new generation, now.
    pub rotate: bool,
    /// The generation in force once the plan is carried out.
    pub generation: i64,
}

/// The plan for `creds` given the claim's rotation settings and its
/// `dbps.io/rotate` annotation value. A rotation is due on a new annotation
/// value or on schedule, once the previous rotation's grace period is over.
pub fn plan(
    creds: &CredentialsStatus,
    trigger: Option<&str>,
    rotation: &Rotation,
    now: Timestamp,
) -> Plan {
    let revoke = creds.previous.clone().filter(|p| p.expires_at.0 <= now);
    let in_grace = creds.previous.is_some() && revoke.is_none();
    let requested = trigger.is_some() && trigger != creds.trigger.as_deref();
    let scheduled = rotation.every_seconds.is_some_and(|every| {
        creds
            .issued_at
            .as_ref()
            .is_some_and(|t| (now - t.0).get_seconds() >= every)
    });
    let rotate = (requested || scheduled) && !in_grace;
    Plan {
        revoke,
        rotate,
        generation: creds.generation + i64::from(rotate),
    }
}

/// The binding Secret of the generation a rotation due now would issue
/// (`None` when none is due), so that its Service's ownership table names it
/// before it is written.
pub fn due_binding(claim: &crate::api::DatabaseClaim, now: Timestamp) -> Option<String> {
    let trigger = kube::ResourceExt::annotations(claim)
        .get(ROTATE_ANNOTATION)
        .map(String::as_str);
    let scheduled = claim
        .spec
        .rotation
        .as_ref()
        .is_some_and(|r| r.every_seconds.is_some());
    if trigger.is_none() && !scheduled {
        // Neither asked for nor on a schedule: none is due (most claims, and
        // a Service's pass asks this of each of its claims).
        return None;
    }
    let creds = recorded(
        claim.status.as_ref().and_then(|s| s.credentials.clone()),
        trigger,
        now,
    );
    let settings = claim.spec.rotation.clone().unwrap_or_default();
    let plan = plan(&creds, trigger, &settings, now);
    plan.rotate.then(|| {
        crate::children::names::binding_secret_of(
            &kube::ResourceExt::name_any(claim),
            plan.generation,
        )
    })
}

/// The status once the plan was carried out: the revoked credentials gone;
/// after a rotation, the previous ones (`previous_secret`, `previous_user`)
/// working until the grace period ends.
pub fn carried_out(
    mut creds: CredentialsStatus,
    plan: &Plan,
    trigger: Option<&str>,
    rotation: &Rotation,
    previous_secret: String,
    previous_user: String,
    now: Timestamp,
) -> CredentialsStatus {
    if plan.revoke.is_some() {
        creds.previous = None;
    }
    if plan.rotate {
        let grace = rotation
            .grace_period_seconds
            .unwrap_or(DEFAULT_GRACE_SECONDS);
        creds.previous = Some(PreviousCredentials {
            secret: previous_secret,
            username: previous_user,
            expires_at: Time(now + SignedDuration::from_secs(grace)),
        });
        creds.generation = plan.generation;
        creds.issued_at = Some(Time(now));
        creds.trigger = trigger.map(String::from).or(creds.trigger);
    }
    creds
}

/// When to look again: the end of a grace period or the next scheduled
/// rotation, if sooner than `resync`.
pub fn next_wake(
    creds: &CredentialsStatus,
    rotation: &Rotation,
    now: Timestamp,
    resync: Duration,
) -> Duration {
    let until = |t: Timestamp| {
        Duration::try_from((t - now).abs()).unwrap_or_default() + Duration::from_millis(100)
    };
    match (&creds.previous, rotation.every_seconds, &creds.issued_at) {
        (Some(p), _, _) => resync.min(until(p.expires_at.0)),
        (None, Some(every), Some(issued)) => {
            resync.min(until(issued.0 + SignedDuration::from_secs(every)))
        }
        _ => resync,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    fn every(seconds: i64, grace: Option<i64>) -> Rotation {
        Rotation {
            every_seconds: Some(seconds),
            grace_period_seconds: grace,
        }
    }

    #[test]
    fn an_annotation_there_at_the_first_issue_is_not_a_request() {
        let creds = recorded(None, Some("now"), at(0));
        assert_eq!(creds.generation, 0);
        assert_eq!(creds.trigger.as_deref(), Some("now"));
        let plan = plan(&creds, Some("now"), &Rotation::default(), at(1));
        assert!(!plan.rotate);
        assert_eq!(plan.generation, 0);
        // A status written before any issue (a dedicated claim's superuser
        // fingerprint) keeps what it holds.
        let partial = CredentialsStatus {
            admin_fingerprint: Some("f".into()),
            ..Default::default()
        };
        let creds = recorded(Some(partial), None, at(0));
        assert_eq!(creds.admin_fingerprint.as_deref(), Some("f"));
        assert_eq!(creds.issued_at, Some(Time(at(0))));
    }

    #[test]
    fn a_new_annotation_value_rotates_once() {
        let creds = recorded(None, None, at(0));
        let rotation = Rotation::default();
        let plan1 = plan(&creds, Some("1"), &rotation, at(10));
        assert_eq!(
            plan1,
            Plan {
                revoke: None,
                rotate: true,
                generation: 1
            }
        );
        let after = carried_out(
            creds,
            &plan1,
            Some("1"),
            &rotation,
            "db-binding".into(),
            "db_app".into(),
            at(10),
        );
        assert_eq!(after.generation, 1);
        assert_eq!(after.trigger.as_deref(), Some("1"));
        let previous = after.previous.clone().unwrap();
        assert_eq!(
            (previous.secret.as_str(), previous.username.as_str()),
            ("db-binding", "db_app")
        );
        assert_eq!(previous.expires_at, Time(at(10 + DEFAULT_GRACE_SECONDS)));
        // The same value again is not another request.
        assert!(!plan(&after, Some("1"), &rotation, at(400)).rotate);
    }

    #[test]
    fn no_rotation_during_a_grace_period_and_revocation_at_its_end() {
        let rotation = every(60, Some(30));
        let creds = recorded(None, None, at(0));
        let first = plan(&creds, None, &rotation, at(60));
        assert!(first.rotate);
        let after = carried_out(
            creds,
            &first,
            None,
            &rotation,
            "db-binding".into(),
            "db_app".into(),
            at(60),
        );
        // A new annotation value waits while the previous credentials work.
        let waiting = plan(&after, Some("now"), &rotation, at(80));
        assert_eq!(
            waiting,
            Plan {
                revoke: None,
                rotate: false,
                generation: 1
            }
        );
        // At the end of the grace period they are revoked, and the request
        // (or the schedule) rotates again in the same reconcile.
        let due = plan(&after, Some("now"), &rotation, at(90));
        assert_eq!(due.revoke, after.previous);
        assert!(due.rotate);
        assert_eq!(due.generation, 2);
        let revoked_only = plan(&after, None, &rotation, at(90));
        assert!(revoked_only.revoke.is_some() && !revoked_only.rotate);
        let cleared = carried_out(
            after,
            &revoked_only,
            None,
            &rotation,
            String::new(),
            String::new(),
            at(90),
        );
        assert_eq!(cleared.previous, None);
        assert_eq!(cleared.generation, 1);
    }

    #[test]
    fn the_next_wake_is_the_grace_end_or_the_schedule_within_the_resync() {
        let resync = Duration::from_secs(300);
        let creds = recorded(None, None, at(0));
        assert_eq!(
            next_wake(&creds, &Rotation::default(), at(5), resync),
            resync
        );
        assert_eq!(
            next_wake(&creds, &every(120, None), at(20), resync),
            Duration::from_millis(100_100)
        );
        let rotation = every(3600, Some(20));
        let rotated = carried_out(
            creds,
            &Plan {
                revoke: None,
                rotate: true,
                generation: 1,
            },
            Some("x"),
            &rotation,
            "s".into(),
            "u".into(),
            at(0),
        );
        assert_eq!(
            next_wake(&rotated, &rotation, at(5), resync),
            Duration::from_millis(15_100)
        );
    }
}
