//! Shared placement: a claim with `spec.server` gets a database and a user
//! carved out of a registered `DatabaseServer`.

use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};

use super::super::context::{Context, Error};
use super::administer::{Target, administer};
use super::status::{Outcome, update_status};
use crate::api::ServerTls;
use crate::api::{ClaimPhase, DatabaseClaim, DatabaseServer, Endpoint as StatusEndpoint, Reason};
use crate::children::secret_value;
use crate::engines::{Connection, DEFAULT_CONNECTIONS_PER_SERVER, Tls};
use crate::engines::{PASSWORD_KEY, USERNAME_KEY};
use crate::servers::shared_identifier;

/// Key of the CA certificate in the Secret a server's `tls.caSecretRef` names.
pub const CA_KEY: &str = "ca.crt";

/// Database name of a shared claim: unique per namespace.
pub fn shared_database(claim: &DatabaseClaim) -> String {
    shared_identifier(
        &claim.namespace().unwrap_or_default(),
        &claim.database_name(),
    )
}

/// The database a claim uses on `server`: the one it was given (recorded in
/// its status), else one the platform team lets it adopt, else its own name.
/// The second value says whether the claim may adopt that database.
pub fn placed_database(claim: &DatabaseClaim, server: &DatabaseServer) -> (String, bool) {
    let ns = claim.namespace().unwrap_or_default();
    let adoption = server
        .spec
        .adoptions
        .iter()
        .flatten()
        .find(|a| a.claim.namespace == ns && a.claim.name == claim.name_any());
    let recorded = claim.status.as_ref().and_then(|s| s.database.clone());
    let database = recorded
        .or_else(|| adoption.map(|a| a.database.clone()))
        .unwrap_or_else(|| shared_database(claim));
    let adopt = adoption.is_some_and(|a| a.database == database);
    (database, adopt)
}

/// Why a server cannot be used right now, as a condition reason and message.
pub struct Unavailable {
    pub phase: ClaimPhase,
    pub reason: Reason,
    pub message: String,
}

impl Unavailable {
    fn outcome(self) -> Outcome {
        Outcome::waiting(self.phase, self.reason, self.message)
    }
}

/// The CA certificate in Secret `ns`/`name`: remembered, or read by one
/// reconcile at a time (those that waited find it remembered).
async fn server_ca(ctx: &Context, ns: &str, name: &str) -> Result<Option<String>, Error> {
    if let Some(pem) = ctx.remembered_ca(ns, name) {
        return Ok(Some(pem));
    }
    let _reading = ctx.reading_admin(ns, name).await;
    if let Some(pem) = ctx.remembered_ca(ns, name) {
        return Ok(Some(pem));
    }
    let pem = ctx
        .api::<Secret>(ns)
        .get_opt(name)
        .await?
        .and_then(|s| secret_value(&s, CA_KEY));
    if let Some(pem) = &pem {
        ctx.remember_ca(ns, name, pem);
    }
    Ok(pem)
}

/// Admin connection of a server, from the Secret it references (read at
/// most once per `ADMIN_SECRET_TTL`, and again after the server refused it)
/// and its CA's Secret (read at most once per `ADMIN_SECRET_TTL`).
pub async fn admin_connection(
    ctx: &Context,
    server: &DatabaseServer,
) -> Result<Result<Connection, Unavailable>, Error> {
    let r = &server.spec.admin_secret_ref;
    let mut reading = None;
    let remembered = match ctx.remembered_admin(&r.namespace, &r.name) {
        Some(remembered) => Some(remembered),
        None => {
            reading = Some(ctx.reading_admin(&r.namespace, &r.name).await);
            ctx.remembered_admin(&r.namespace, &r.name)
        }
    };
    let (username, password) = match remembered {
        Some(remembered) => remembered,
        None => {
            let secrets: Api<Secret> = ctx.api(&r.namespace);
            let Some(secret) = secrets.get_opt(&r.name).await? else {
                return Ok(Err(Unavailable {
                    phase: ClaimPhase::Pending,
                    reason: Reason::AdminSecretNotFound,
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
                    reason: Reason::AdminSecretInvalid,
                    message: format!(
                        "Secret {}/{} needs the keys `username` and `password`",
                        r.namespace, r.name
                    ),
                }));
            };
            ctx.remember_admin(&r.namespace, &r.name, &username, &password);
            (username, password)
        }
    };
    // Released before the CA is read, which may be in the same Secret.
    drop(reading);
    let tls = match server.spec.tls.as_ref().filter(|t| t.enabled) {
        None => None,
        Some(ServerTls {
            ca_secret_ref: None,
            ..
        }) => Some(Tls { ca_pem: None }),
        Some(ServerTls {
            ca_secret_ref: Some(ca),
            ..
        }) => match server_ca(ctx, &ca.namespace, &ca.name).await? {
            Some(pem) => Some(Tls { ca_pem: Some(pem) }),
            None => {
                return Ok(Err(Unavailable {
                    phase: ClaimPhase::Pending,
                    reason: Reason::CaSecretNotFound,
                    message: format!(
                        "Secret {}/{} with key {CA_KEY:?} does not exist",
                        ca.namespace, ca.name
                    ),
                }));
            }
        },
    };
    let engine = server.spec.engine;
    Ok(Ok(Connection {
        engine,
        tls,
        host: server.spec.host.clone(),
        port: server
            .spec
            .port
            .map(|p| p as u16)
            .unwrap_or_else(|| engine.instance().port()),
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

/// `metav1.LabelSelector` semantics (kube's `Selector`); a selector with an
/// operator Kubernetes does not know matches nothing.
pub fn selector_matches(
    selector: &LabelSelector,
    labels: &std::collections::BTreeMap<String, String>,
) -> bool {
    use kube::core::{Selector, SelectorExt};
    Selector::try_from(selector.clone()).is_ok_and(|s| s.matches(labels))
}

/// A claim of a database on a registered server: the server is looked up
/// and vetted (engine, namespaces, admin Secret), then the database and
/// users are administered over the wire.
pub(super) async fn apply(
    claim: &DatabaseClaim,
    server_name: &str,
    ctx: &Context,
) -> Result<Action, Error> {
    let ns = claim.namespace().unwrap_or_default();
    let resync = Action::requeue(ctx.config.resync);
    let Some(server) = ctx.caches.server(server_name) else {
        let message = format!(
            "DatabaseServer {server_name:?} does not exist; register it or correct spec.server.name"
        );
        let outcome = Unavailable {
            phase: ClaimPhase::Pending,
            reason: Reason::ServerNotFound,
            message,
        }
        .outcome();
        update_status(claim, ctx, outcome).await?;
        return Ok(super::look_again_soon(ctx));
    };
    if server.spec.engine != claim.spec.engine {
        let message = format!(
            "DatabaseServer {server_name:?} runs {}, the claim asks for {}",
            server.spec.engine.as_str(),
            claim.spec.engine.as_str()
        );
        let outcome = Unavailable {
            phase: ClaimPhase::Failed,
            reason: Reason::InvalidSpec,
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
            reason: Reason::NamespaceNotAllowed,
            message,
        }
        .outcome();
        update_status(claim, ctx, outcome).await?;
        return Ok(resync);
    }
    let service_name = &claim.spec.service_ref.name;
    let Some(service) = ctx.caches.service(&ns, service_name) else {
        let message = format!(
            "Service {service_name:?} (dbps.io) does not exist in namespace {ns:?}; create it or correct spec.serviceRef.name"
        );
        let outcome = Unavailable {
            phase: ClaimPhase::Pending,
            reason: Reason::ServiceNotFound,
            message,
        }
        .outcome();
        update_status(claim, ctx, outcome).await?;
        return Ok(super::look_again_soon(ctx));
    };
    let conn = match admin_connection(ctx, &server).await? {
        Ok(conn) => conn,
        Err(unavailable) => {
            let why = Error::Unavailable(unavailable.reason, unavailable.message.clone());
            update_status(claim, ctx, unavailable.outcome()).await?;
            // error_policy retries with backoff.
            return Err(why);
        }
    };

    let (database, adopt) = placed_database(claim, &server);
    let target = Target {
        place: format!("DatabaseServer {server_name:?}"),
        endpoint: StatusEndpoint {
            host: conn.host.clone(),
            port: conn.port.into(),
        },
        tls: conn.tls.as_ref().map(|t| t.ca_pem.clone()),
        ready_message: format!("database {database:?} on DatabaseServer {server_name:?}"),
        conn,
        database,
        adopt,
        shared: true,
        users: [slot_username(claim, 0), slot_username(claim, 1)],
        admin_fingerprint: None,
        admin_secret: Some(server.spec.admin_secret_ref.clone()),
        allowed_extensions: (
            format!("DatabaseServer {server_name:?}'s spec.allowedExtensions"),
            server.spec.allowed_extensions.clone().unwrap_or_default(),
        ),
        connections: server
            .spec
            .max_connections
            .map_or(DEFAULT_CONNECTIONS_PER_SERVER, |n| n.max(1) as usize),
    };
    administer(claim, &service, target, ctx).await
}

/// The two users of a shared claim alternate with each rotation, so the
/// previous one keeps working during the grace period.
pub fn slot_username(claim: &DatabaseClaim, generation: i64) -> String {
    let ns = claim.namespace().unwrap_or_default();
    let base = claim.database_name();
    let suffix = if generation % 2 == 0 { "_app" } else { "_app2" };
    shared_identifier(&ns, &format!("{base}{suffix}"))
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
        let unknown: LabelSelector = serde_json::from_value(serde_json::json!({
            "matchExpressions": [{ "key": "env", "operator": "Near", "values": ["prod"] }]
        }))
        .unwrap();
        assert!(!selector_matches(&unknown, &labels(&[("env", "prod")])));
    }

    #[test]
    fn shared_names_are_prefixed_with_the_namespace() {
        let claim: DatabaseClaim = serde_yaml::from_str(
            "{apiVersion: dbps.io/v1alpha1, kind: DatabaseClaim, metadata: {name: orders-db, namespace: shop}, spec: {serviceRef: {name: orders}, engine: postgres, server: {name: pg}}}",
        )
        .unwrap();
        assert_eq!(shared_database(&claim), "shop_orders_db");
        assert_eq!(slot_username(&claim, 0), "shop_orders_db_app");
        assert_eq!(slot_username(&claim, 1), "shop_orders_db_app2");
        assert_eq!(slot_username(&claim, 2), "shop_orders_db_app");
    }
}
