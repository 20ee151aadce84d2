//! Status of a `DatabaseServer`: reachable with its admin credentials, its
//! version, and how many claims use it.

use std::sync::Arc;
use std::time::Duration;

use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};

use super::apply::patch_status_if_changed;
use super::claim::shared::admin_connection;
use super::context::{Context, Error};
use crate::api::{DatabaseServer, DatabaseServerStatus, Reason, set_condition};

/// The condition a server reports.
pub const REACHABLE: &str = "Reachable";

pub async fn reconcile(server: Arc<DatabaseServer>, ctx: Arc<Context>) -> Result<Action, Error> {
    let name = server.name_any();
    let count = ctx
        .caches
        .count_claims_where(|c| c.spec.server.as_ref().is_some_and(|s| s.name == name))
        as i32;

    let (reachable, reason, message, version) = match admin_connection(&ctx, &server).await? {
        Err(unavailable) => (false, unavailable.reason, unavailable.message, None),
        Ok(conn) => match ctx.servers.info(&conn).await {
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
        DatabaseServerStatus {
            observed_generation: generation,
            conditions,
            version: version.clone().or_else(|| current.version.clone()),
            claims: count,
        }
    };
    let status_of = |s: &DatabaseServer| s.status.clone().unwrap_or_default();
    patch_status_if_changed(
        &Api::<DatabaseServer>::all(ctx.client.clone()),
        &server,
        &ctx.written,
        status_of,
        desired,
    )
    .await?;
    ctx.succeeded(&format!("DatabaseServer/{name}"));
    // An unreachable server is checked again soon.
    let next = if reachable {
        ctx.config.resync
    } else {
        ctx.config.resync.min(Duration::from_secs(15))
    };
    Ok(Action::requeue(next))
}
