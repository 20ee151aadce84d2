//! Shared placement: a claim with `spec.server` gets a database and a user
//! carved out of a registered `DatabaseServer`.

use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};

use super::apply::{apply, ensure};
use super::claim::{Outcome, update_status};
use super::{Context, Error};
use crate::api::{
    Binding, ClaimPhase, DatabaseClaim, DatabaseServer, Endpoint as StatusEndpoint, Service,
};
use crate::children::{
    Credentials, Endpoint, Inputs, binding_reader_role, binding_reader_role_binding,
    binding_secret_for, names, secret_value,
};
use crate::engines::{PASSWORD_KEY, USERNAME_KEY};
use crate::password;
use crate::servers::{Connection, Grant, shared_identifier};

/// Annotation that makes deletion skip the cleanup on the server (the escape
/// hatch for a server that is gone for good).
pub const SKIP_CLEANUP_ANNOTATION: &str = "dbps.io/skip-cleanup";

/// Database and user names of a shared claim: unique per namespace.
pub fn shared_names(claim: &DatabaseClaim) -> (String, String) {
    let ns = claim.namespace().unwrap_or_default();
    let base = claim.database_name();
    (
        shared_identifier(&ns, &base),
        shared_identifier(&ns, &format!("{base}_app")),
    )
}

/// Why a server cannot be used right now, as a condition reason and message.
pub struct Unavailable {
    pub phase: ClaimPhase,
    pub reason: &'static str,
    pub message: String,
}

impl Unavailable {
    fn outcome(self) -> Outcome {
        Outcome {
            phase: self.phase,
            ready: false,
            reason: self.reason,
            message: self.message,
            binding: None,
            endpoint: None,
        }
    }
}

/// Admin connection of a server, from the Secret it references.
pub async fn admin_connection(
    ctx: &Context,
    server: &DatabaseServer,
) -> Result<Result<Connection, Unavailable>, Error> {
    let r = &server.spec.admin_secret_ref;
    let secrets: Api<Secret> = ctx.api(&r.namespace);
    let Some(secret) = secrets.get_opt(&r.name).await? else {
        return Ok(Err(Unavailable {
            phase: ClaimPhase::Pending,
            reason: "AdminSecretNotFound",
            message: format!(
                "DatabaseServer {:?} references Secret {}/{} which does not exist",
                server.name_any(),
                r.namespace,
                r.name
            ),
        }));
    };
    let (Some(username), Some(password)) = (
        secret_value(&secret, USERNAME_KEY),
        secret_value(&secret, PASSWORD_KEY),
    ) else {
        return Ok(Err(Unavailable {
            phase: ClaimPhase::Pending,
            reason: "AdminSecretInvalid",
            message: format!(
                "Secret {}/{} needs the keys `username` and `password`",
                r.namespace, r.name
            ),
        }));
    };
    let engine = server.spec.engine;
    Ok(Ok(Connection {
        engine,
        host: server.spec.host.clone(),
        port: server
            .spec
            .port
            .map(|p| p as u16)
            .unwrap_or_else(|| engine.port()),
        username,
        password,
    }))
}

/// Whether `server` lets claims of namespace `ns` use it.
async fn namespace_allowed(
    ctx: &Context,
    server: &DatabaseServer,
    ns: &str,
) -> Result<bool, Error> {
    if let Some(allowed) = &server.spec.allowed_namespaces {
        return Ok(allowed.iter().any(|a| a == ns));
    }
    if let Some(selector) = &server.spec.namespace_selector {
        let namespaces: Api<Namespace> = Api::all(ctx.client.clone());
        let labels = namespaces
            .get(ns)
            .await?
            .metadata
            .labels
            .unwrap_or_default();
        return Ok(selector_matches(selector, &labels));
    }
    Ok(true)
}

/// `metav1.LabelSelector` semantics.
pub fn selector_matches(
    selector: &LabelSelector,
    labels: &std::collections::BTreeMap<String, String>,
) -> bool {
    let labels_ok = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let expressions_ok = selector.match_expressions.iter().flatten().all(|e| {
        let value = labels.get(&e.key);
        let values = e.values.clone().unwrap_or_default();
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    labels_ok && expressions_ok
}

pub async fn apply_shared(
    claim: &DatabaseClaim,
    server_name: &str,
    ctx: &Context,
) -> Result<Action, Error> {
    let ns = claim.namespace().unwrap_or_default();
    let name = claim.name_any();
    let resync = Action::requeue(ctx.config.resync);
    let servers: Api<DatabaseServer> = Api::all(ctx.client.clone());
    let Some(server) = servers.get_opt(server_name).await? else {
        let message = format!(
            "DatabaseServer {server_name:?} does not exist; register it or correct spec.server.name"
        );
        let outcome = Unavailable {
            phase: ClaimPhase::Pending,
            reason: "ServerNotFound",
            message,
        }
        .outcome();
        update_status(claim, ctx, outcome).await?;
        return Ok(resync);
    };
    if server.spec.engine != claim.spec.engine {
        let message = format!(
            "DatabaseServer {server_name:?} runs {}, the claim asks for {}",
            server.spec.engine.as_str(),
            claim.spec.engine.as_str()
        );
        let outcome = Unavailable {
            phase: ClaimPhase::Failed,
            reason: "InvalidSpec",
            message,
        }
        .outcome();
        update_status(claim, ctx, outcome).await?;
        return Ok(Action::await_change());
    }
    if !namespace_allowed(ctx, &server, &ns).await? {
        let message =
            format!("DatabaseServer {server_name:?} does not accept claims from namespace {ns:?}");
        let outcome = Unavailable {
            phase: ClaimPhase::Failed,
            reason: "NamespaceNotAllowed",
            message,
        }
        .outcome();
        update_status(claim, ctx, outcome).await?;
        return Ok(resync);
    }
    let services: Api<Service> = ctx.api(&ns);
    let service_name = &claim.spec.service_ref.name;
    let Some(service) = services.get_opt(service_name).await? else {
        let message = format!(
            "Service {service_name:?} (dbps.io) does not exist in namespace {ns:?}; create it or correct spec.serviceRef.name"
        );
        let outcome = Unavailable {
            phase: ClaimPhase::Pending,
            reason: "ServiceNotFound",
            message,
        }
        .outcome();
        update_status(claim, ctx, outcome).await?;
        return Ok(resync);
    };
    let conn = match admin_connection(ctx, &server).await? {
        Ok(conn) => conn,
        Err(unavailable) => {
            update_status(claim, ctx, unavailable.outcome()).await?;
            return Ok(Action::requeue(
                ctx.backoff(format!("DatabaseClaim/{ns}/{name}")),
            ));
        }
    };

    // The binding Secret is written before the user exists, so a password
    // the server knows is always one the Secret holds.
    let secrets: Api<Secret> = ctx.api(&ns);
    let current = secrets.get_opt(&names::binding_secret(&name)).await?;
    let credentials = Credentials {
        admin_password: String::new(),
        app_password: current
            .as_ref()
            .and_then(|s| secret_value(s, PASSWORD_KEY))
            .unwrap_or_else(password::generate),
    };
    let inputs = Inputs {
        claim,
        service: &service,
        credentials: &credentials,
        cluster_domain: &ctx.config.cluster_domain,
    };
    let (database, username) = shared_names(claim);
    let endpoint = Endpoint {
        host: conn.host.clone(),
        port: conn.port,
        database: database.clone(),
        username: username.clone(),
    };
    let binding = apply(&secrets, &binding_secret_for(&inputs, &endpoint), current).await?;
    ensure(&ctx.api::<Role>(&ns), &binding_reader_role(&inputs)).await?;
    ensure(
        &ctx.api::<RoleBinding>(&ns),
        &binding_reader_role_binding(&inputs),
    )
    .await?;

    let grant = Grant {
        database,
        username,
        password: credentials.app_password.clone(),
    };
    let status_endpoint = Some(StatusEndpoint {
        host: conn.host.clone(),
        port: conn.port.into(),
    });
    if let Err(e) = ctx.servers.ensure(&conn, &grant).await {
        let outcome = Outcome {
            phase: ClaimPhase::Provisioning,
            ready: false,
            reason: e.reason(),
            message: format!("DatabaseServer {server_name:?}: {e}"),
            binding: None,
            endpoint: status_endpoint,
        };
        update_status(claim, ctx, outcome).await?;
        return Ok(Action::requeue(
            ctx.backoff(format!("DatabaseClaim/{ns}/{name}")),
        ));
    }
    let mut message = format!(
        "database {:?} on DatabaseServer {server_name:?}; credentials in Secret {:?}",
        grant.database,
        binding.name_any()
    );
    if ctx
        .servers
        .info(&conn)
        .await
        .is_ok_and(|i| !i.enforces_database_roles)
    {
        message.push_str("; this server does not enforce per-database roles, so its other users are not kept out by it");
    }
    let outcome = Outcome {
        phase: ClaimPhase::Ready,
        ready: true,
        reason: "Ready",
        message,
        binding: Some(Binding {
            name: binding.name_any(),
        }),
        endpoint: status_endpoint,
    };
    update_status(claim, ctx, outcome).await?;
    Ok(resync)
}

/// Deletion of a shared claim. `Delete` drops the database and user on the
/// server (retrying while the server is unreachable); `Retain` keeps them and
/// the binding Secret. The annotation `dbps.io/skip-cleanup: "true"` skips
/// the server side.
pub async fn cleanup_shared(
    claim: &DatabaseClaim,
    server_name: &str,
    ctx: &Context,
) -> Result<(), Error> {
    let skip = claim
        .annotations()
        .get(SKIP_CLEANUP_ANNOTATION)
        .is_some_and(|v| v == "true");
    if skip || claim.spec.deletion_policy != crate::api::DeletionPolicy::Delete {
        return Ok(());
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
    let (database, username) = shared_names(claim);
    ctx.servers
        .drop_database(&conn, &database, &[username])
        .await
        .map_err(|e| Error::Cleanup(format!("DatabaseServer {server_name:?}: {e}; retrying (annotate the claim with {SKIP_CLEANUP_ANNOTATION}=true to skip)")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn label_selectors_match_like_kubernetes() {
        let selector: LabelSelector = serde_json::from_value(serde_json::json!({
            "matchLabels": { "team": "shop" },
            "matchExpressions": [
                { "key": "env", "operator": "In", "values": ["prod", "staging"] },
                { "key": "legacy", "operator": "DoesNotExist" }
            ]
        }))
        .unwrap();
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert!(selector_matches(
            &selector,
            &labels(&[("team", "shop"), ("env", "prod")])
        ));
        assert!(!selector_matches(
            &selector,
            &labels(&[("team", "shop"), ("env", "dev")])
        ));
        assert!(!selector_matches(
            &selector,
            &labels(&[("team", "shop"), ("env", "prod"), ("legacy", "1")])
        ));
        assert!(!selector_matches(&selector, &labels(&[("env", "prod")])));
    }

    #[test]
    fn shared_names_are_prefixed_with_the_namespace() {
        let claim: DatabaseClaim = serde_yaml::from_str(
            "{apiVersion: dbps.io/v1alpha1, kind: DatabaseClaim, metadata: {name: orders-db, namespace: shop}, spec: {serviceRef: {name: orders}, engine: postgres, server: {name: pg}}}",
        )
        .unwrap();
        assert_eq!(
            shared_names(&claim),
            ("shop_orders_db".into(), "shop_orders_db_app".into())
        );
    }
}
