//! Status of a `DatabaseServer`: reachable with its admin credentials, its
//! version, and how many claims use it.

use std::sync::Arc;
use std::time::Duration;

use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};

use super::apply::{patch_status_if_changed, status_or_default};
use super::claim::shared::admin_connection;
use super::context::{Context, Error};
use crate::api::{DatabaseServer, DatabaseServerStatus, Reason, set_condition};

/// The condition a server reports.
pub const REACHABLE: &str = "Reachable";

/// A pass within this long of the server's last answer (to the same
/// credentials, nothing failed since) takes that answer rather than asking
/// again: a burst of claims is a pass every few seconds, each only to count
/// them. The resync, and any pass after a failure, asks.
pub const PROBE_FRESH: Duration = Duration::from_secs(30);

/// While only its count of claims changes, a server's status is written at
/// most this often (a burst of claims changes it with every pass).
pub const COUNT_PACE: Duration = Duration::from_secs(10);

pub async fn reconcile(server: Arc<DatabaseServer>, ctx: Arc<Context>) -> Result<Action, Error> {
    let name = server.name_any();
    let count = ctx
        .caches
        .count_claims_where(|c| c.spec.server.as_ref().is_some_and(|s| s.name == name))
        as i32;

    let (reachable, reason, message, version) = match admin_connection(&ctx, &server).await? {
        Err(unavailable) => (false, unavailable.reason, unavailable.message, None),
        Ok(conn) => match ctx
            .servers
            .recent_info(&conn, PROBE_FRESH.min(ctx.config.resync))
            .await
        {
            Ok(info) => {
                let mut message = format!(
                    "{} {} answers as {:?}",
                    server.spec.engine.as_str(),
                    info.version,
                    conn.username
                );
                if !info.enforces_database_roles {
                    message.push_str("; it does not enforce per-database roles");
                }
                (true, Reason::Reachable, message, Some(info.version))
            }
            Err(e) => {
                ctx.forget_failed(&conn, &e);
                (false, e.reason(), e.to_string(), None)
            }
        },
    };
    // Only its count changed since its last write, a moment ago: the write
    // waits.
    let held = std::sync::Mutex::new(None);
    let paced = ctx.server_pace.left_of("", &name, COUNT_PACE);
    let desired = |current: &DatabaseServerStatus| {
        let mut conditions = current.conditions.clone();
        let generation = server.metadata.generation;
        set_condition(
            &mut conditions,
            REACHABLE,
            reachable,
            reason.as_str(),
            &message,
            generation,
        );
        let next = DatabaseServerStatus {
            observed_generation: generation,
            conditions,
            version: version.clone().or_else(|| current.version.clone()),
            claims: count,
        };
        match paced {
            Some(left) if only_the_count_differs(current, &next) => {
                *held.lock().unwrap() = Some(left);
                current.clone()
            }
            _ => next,
        }
    };
    let written = patch_status_if_changed(
        &Api::<DatabaseServer>::all(ctx.client.clone()),
        &server,
        &ctx.written,
        |s| status_or_default(&s.status),
        |current| Some(desired(current)),
    )
    .await?;
    if written.is_some() {
        ctx.server_pace.wrote("", &name);
    }
    ctx.succeeded(&format!("DatabaseServer/{name}"));
    // An unreachable server is checked again soon.
    let next = if reachable {
        ctx.config.resync
    } else {
        ctx.config.resync.min(Duration::from_secs(15))
    };
    let next = held
        .into_inner()
        .unwrap()
        .map_or(next, |left| left.min(next));
    Ok(Action::requeue(next))
}

/// Whether `next` differs from `current` in its count of claims alone.
fn only_the_count_differs(current: &DatabaseServerStatus, next: &DatabaseServerStatus) -> bool {
    current.claims != next.claims
        && DatabaseServerStatus {
            claims: next.claims,
            ..current.clone()
        } == *next
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(claims: i32, reachable: bool, message: &str) -> DatabaseServerStatus {
        let mut conditions = Vec::new();
        let reason = match reachable {
            true => Reason::Reachable,
            false => Reason::ServerUnreachable,
        };
        set_condition(
            &mut conditions,
            REACHABLE,
            reachable,
            reason.as_str(),
            message,
            Some(1),
        );
        // One moment for all, so that only what the test changes differs.
        conditions[0].last_transition_time = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
        );
        DatabaseServerStatus {
            observed_generation: Some(1),
            conditions,
            version: Some("15.4".into()),
            claims,
        }
    }

    #[test]
    fn only_a_change_of_the_count_alone_waits_for_its_pace() {
        let before = status(3, true, "postgres 15.4 answers as \"admin\"");
        assert!(only_the_count_differs(
            &before,
            &status(7, true, "postgres 15.4 answers as \"admin\"")
        ));
        // Nothing changed: nothing to hold (nor to write).
        assert!(!only_the_count_differs(&before, &before.clone()));
        // Reachability, its message, the version or the generation: at once,
        // also with the count.
        let mut unreachable = status(7, false, "connection refused");
        unreachable.conditions[0].last_transition_time =
            before.conditions[0].last_transition_time.clone();
        assert!(!only_the_count_differs(&before, &unreachable));
        assert!(!only_the_count_differs(
            &before,
            &status(7, true, "postgres 15.4 answers as \"root\"")
        ));
        let upgraded = DatabaseServerStatus {
            version: Some("16.1".into()),
            ..status(7, true, "postgres 15.4 answers as \"admin\"")
        };
        assert!(!only_the_count_differs(&before, &upgraded));
        let edited = DatabaseServerStatus {
            observed_generation: Some(2),
            ..status(7, true, "postgres 15.4 answers as \"admin\"")
        };
        assert!(!only_the_count_differs(&before, &edited));
    }
}
