//! Shared placement: a claim with `spec.server` gets a database and a user
//! carved out of a registered `DatabaseServer`.

use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};

use super::apply::{apply, ensure};
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::runtime::events::EventType;

use super::claim::{Outcome, publish, update_status, update_status_full};
use super::{Context, Error, drift};
use crate::api::ServerTls;
use crate::api::{
    Binding, ClaimPhase, CredentialsStatus, DatabaseClaim, DatabaseServer,
    Endpoint as StatusEndpoint, PreviousCredentials, Reason, Service,
};
use crate::children::{
    Credentials, Endpoint, Inputs, binding_reader_role_binding, binding_reader_role_for,
    binding_secret_generation, names, secret_value,
};
use crate::engines::{PASSWORD_KEY, USERNAME_KEY};
use crate::password;
use crate::servers::{
    AdminError, Claimant, Connection, Grant, Mark, Tls, ownership, shared_identifier,
};

/// Key of the CA certificate in the Secret a server's `tls.caSecretRef` names.
pub const CA_KEY: &str = "ca.crt";

/// Annotation whose new value requests a credential rotation.
pub const ROTATE_ANNOTATION: &str = "dbps.io/rotate";
/// Grace period of previous credentials when the claim sets none.
pub const DEFAULT_GRACE_SECONDS: i64 = 300;

/// Annotation that makes deletion skip the cleanup on the server (the escape
/// hatch for a server that is gone for good).
pub const SKIP_CLEANUP_ANNOTATION: &str = "dbps.io/skip-cleanup";

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

/// The ownership mark of `claim`'s objects on a server.
pub async fn mark_of(ctx: &Context, claim: &DatabaseClaim) -> Result<Mark, Error> {
    Ok(Mark {
        cluster: ctx.cluster_id().await?,
        namespace: claim.namespace().unwrap_or_default(),
        claim: claim.name_any(),
        uid: claim.uid().unwrap_or_default(),
        service: claim.spec.service_ref.name.clone(),
    })
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
    let tls = match server.spec.tls.as_ref().filter(|t| t.enabled) {
        None => None,
        Some(ServerTls {
            ca_secret_ref: None,
            ..
        }) => Some(Tls { ca_pem: None }),
        Some(ServerTls {
            ca_secret_ref: Some(ca),
            ..
        }) => {
            let pem = ctx
                .api::<Secret>(&ca.namespace)
                .get_opt(&ca.name)
                .await?
                .and_then(|s| secret_value(&s, CA_KEY));
            match pem {
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
            }
        }
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
            reason: Reason::ServerNotFound,
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
    let services: Api<Service> = ctx.api(&ns);
    let service_name = &claim.spec.service_ref.name;
    let Some(service) = services.get_opt(service_name).await? else {
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
        return Ok(resync);
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

    let secrets: Api<Secret> = ctx.api(&ns);
    let status_endpoint = Some(StatusEndpoint {
        host: conn.host.clone(),
        port: conn.port.into(),
    });
    // What the server said goes into the status: a conflict (another
    // owner) waits for the resync, a fault is retried with backoff.
    let server_failure = async |e: AdminError| -> Result<Action, Error> {
        let phase = match e {
            AdminError::Conflict(_) => ClaimPhase::Failed,
            _ => ClaimPhase::Provisioning,
        };
        let mut outcome = Outcome::waiting(
            phase,
            e.reason(),
            format!("DatabaseServer {server_name:?}: {e}"),
        );
        outcome.endpoint = status_endpoint.clone();
        update_status(claim, ctx, outcome).await?;
        match e {
            AdminError::Conflict(_) => Ok(resync.clone()),
            e => Err(Error::Unavailable(e.reason(), e.to_string())),
        }
    };
    let (database, adopt) = placed_database(claim, &server);
    let claimant = Claimant {
        mark: mark_of(ctx, claim).await?,
        adopt,
    };
    let mark = &claimant.mark;
    let uid = &mark.uid;

    // A claim not placed yet writes nothing, not even its binding Secret,
    // until the server shows that the names it would use are its to take.
    let placed = claim.status.as_ref().and_then(|s| s.database.as_ref()) == Some(&database);
    if !placed {
        let users = [slot_username(claim, 0)];
        let authorized = match ctx.servers.inspect(&conn, &database, &users).await {
            Ok(found) => ownership::authorize(&found, &claimant).map_err(AdminError::from),
            Err(e) => Err(e),
        };
        if let Err(e) = authorized {
            return server_failure(e).await;
        }
    }

    let now = Timestamp::now();
    let trigger = claim.annotations().get(ROTATE_ANNOTATION).cloned();
    let mut creds = match claim.status.as_ref().and_then(|s| s.credentials.clone()) {
        Some(c) => c,
        // First issue: an annotation already there is not a request.
        None => CredentialsStatus {
            generation: 0,
            issued_at: Some(Time(now)),
            trigger: trigger.clone(),
            ..Default::default()
        },
    };

    // 1. Credentials past their grace period are revoked, then their Secret goes.
    if let Some(previous) = creds.previous.clone().filter(|p| p.expires_at.0 <= now) {
        if let Err(e) = ctx
            .servers
            .revoke(&conn, &database, &previous.username, mark)
            .await
        {
            return server_failure(e).await;
        }
        match secrets.delete(&previous.secret, &Default::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
        creds.previous = None;
    }

    // 2. A rotation is due on a new annotation value or on schedule, once the
    //    previous rotation's grace period is over.
    let rotation = claim.spec.rotation.clone().unwrap_or_default();
    let requested = trigger.is_some() && trigger != creds.trigger;
    let scheduled = rotation.every_seconds.is_some_and(|every| {
        creds
            .issued_at
            .as_ref()
            .is_some_and(|t| (now - t.0).get_seconds() >= every)
    });
    let rotate = (requested || scheduled) && creds.previous.is_none();
    let generation = if rotate {
        creds.generation + 1
    } else {
        creds.generation
    };

    // 3. The binding Secret of the generation in force is written before its
    //    user exists, so a password the server knows is always one a Secret
    //    holds. A Secret edited or deleted by hand is not believed: its
    //    credentials are issued anew.
    let secret_name = names::binding_secret_of(&name, generation);
    let mut current = secrets.get_opt(&secret_name).await?;
    // A Secret of that name kept for another Service, or not made by dbps, is left alone.
    if let Some(message) = current
        .as_ref()
        .and_then(|s| drift::foreign(&s.metadata, "Secret", claim, &service.name_any()))
    {
        let outcome = Outcome::waiting(
            ClaimPhase::Failed,
            Reason::ObjectOwnedByAnotherService,
            message,
        );
        update_status(claim, ctx, outcome).await?;
        return Ok(resync);
    }
    let found = current.as_ref().and_then(|s| secret_value(s, PASSWORD_KEY));
    let recorded = match rotate {
        true => None,
        false => creds.fingerprint.clone(),
    };
    let mut notice = None;
    let app_password = match drift::choose(uid, recorded.as_deref(), &[found.as_deref()]) {
        drift::Choice::Lost => {
            notice = Some(match &current {
                Some(_) => (
                    Reason::BindingSecretEdited,
                    format!(
                        "Secret {secret_name:?} was edited by hand; dbps issued new credentials in it and did not use the edited password"
                    ),
                ),
                None => (
                    Reason::BindingSecretDeleted,
                    format!(
                        "Secret {secret_name:?} was deleted; dbps wrote it again with new credentials"
                    ),
                ),
            });
            if current.as_ref().is_some_and(|s| s.immutable == Some(true)) {
                // An immutable Secret cannot be written over: it is replaced.
                match secrets.delete(&secret_name, &Default::default()).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(e) => return Err(e.into()),
                }
                current = None;
            }
            password::generate()
        }
        choice => choice.value().unwrap_or_default().to_string(),
    };
    let credentials = Credentials {
        admin_password: String::new(),
        app_password,
    };
    let inputs = Inputs {
        claim,
        service: &service,
        credentials: &credentials,
        cluster_domain: &ctx.config.cluster_domain,
    };
    let endpoint = Endpoint {
        host: conn.host.clone(),
        port: conn.port,
        database: database.clone(),
        username: slot_username(claim, generation),
        tls: conn.tls.as_ref().map(|t| t.ca_pem.clone()),
    };
    let binding = apply(
        &secrets,
        &binding_secret_generation(&inputs, &endpoint, generation),
        current,
    )
    .await?;
    let mut readable = vec![secret_name.clone()];
    let previous_secret = match rotate {
        true => Some(names::binding_secret_of(&name, creds.generation)),
        false => creds.previous.as_ref().map(|p| p.secret.clone()),
    };
    readable.extend(previous_secret);
    ensure(
        &ctx.api::<Role>(&ns),
        &binding_reader_role_for(&inputs, &readable),
    )
    .await?;
    ensure(
        &ctx.api::<RoleBinding>(&ns),
        &binding_reader_role_binding(&inputs),
    )
    .await?;

    let grant = Grant {
        database: database.clone(),
        username: endpoint.username.clone(),
        password: credentials.app_password.clone(),
    };
    let provisioned = match ctx.servers.ensure(&conn, &grant, &claimant).await {
        Ok(provisioned) => provisioned,
        Err(e) => return server_failure(e).await,
    };
    if let Some((reason, note)) = notice {
        publish(ctx, claim, EventType::Warning, reason, "Repair", note).await;
    }
    if !provisioned.adopted.is_empty() {
        let note = format!(
            "adopted {} on DatabaseServer {server_name:?}, as its spec.adoptions allows",
            provisioned.adopted.join(", ")
        );
        publish(
            ctx,
            claim,
            EventType::Normal,
            Reason::Adopted,
            "Adopt",
            note,
        )
        .await;
    }
    if rotate {
        let grace = rotation
            .grace_period_seconds
            .unwrap_or(DEFAULT_GRACE_SECONDS);
        creds.previous = Some(PreviousCredentials {
            secret: names::binding_secret_of(&name, creds.generation),
            username: slot_username(claim, creds.generation),
            expires_at: Time(now + SignedDuration::from_secs(grace)),
        });
        creds.generation = generation;
        creds.issued_at = Some(Time(now));
        creds.trigger = trigger.or(creds.trigger);
        let note = format!(
            "issued Secret {secret_name:?}; the previous credentials stop working in {grace}s"
        );
        publish(
            ctx,
            claim,
            EventType::Normal,
            Reason::Rotated,
            "Rotate",
            note,
        )
        .await;
    }
    creds.fingerprint = Some(password::fingerprint(uid, &credentials.app_password));

    let mut message = format!(
        "database {:?} on DatabaseServer {server_name:?}; credentials in Secret {:?}",
        grant.database,
        binding.name_any()
    );
    if ctx
        .servers
        .cached_info(&conn)
        .await
        .is_ok_and(|i| !i.enforces_database_roles)
    {
        message.push_str("; this server does not enforce per-database roles, so its other users are not kept out by it");
    }
    let outcome = Outcome {
        phase: ClaimPhase::Ready,
        ready: true,
        reason: Reason::Ready,
        message,
        binding: Some(Binding {
            name: binding.name_any(),
        }),
        endpoint: status_endpoint,
    };
    // Wake up for the end of a grace period or the next scheduled rotation.
    let mut next = ctx.config.resync;
    if let Some(p) = &creds.previous {
        next = next.min(
            Duration::try_from((p.expires_at.0 - now).abs()).unwrap_or_default()
                + Duration::from_millis(100),
        );
    } else if let (Some(every), Some(issued)) = (rotation.every_seconds, &creds.issued_at) {
        let due = issued.0 + SignedDuration::from_secs(every);
        next = next.min(
            Duration::try_from((due - now).abs()).unwrap_or_default() + Duration::from_millis(100),
        );
    }
    update_status_full(claim, ctx, outcome, Some(creds), Some(database)).await?;
    Ok(Action::requeue(next))
}

/// The two users of a shared claim alternate with each rotation, so the
/// previous one keeps working during the grace period.
pub fn slot_username(claim: &DatabaseClaim, generation: i64) -> String {
    let ns = claim.namespace().unwrap_or_default();
    let base = claim.database_name();
    let suffix = if generation % 2 == 0 { "_app" } else { "_app2" };
    shared_identifier(&ns, &format!("{base}{suffix}"))
}

/// Deletion of a shared claim. `Delete` drops the database and users on the
/// server that carry this claim's mark, and nothing else (retrying while the
/// server is unreachable); `Retain` keeps them and the binding Secret. The
/// annotation `dbps.io/skip-cleanup: "true"` skips the server side. Returns
/// what happened, for the event.
pub async fn cleanup_shared(
    claim: &DatabaseClaim,
    server_name: &str,
    ctx: &Context,
) -> Result<String, Error> {
    let skip = claim
        .annotations()
        .get(SKIP_CLEANUP_ANNOTATION)
        .is_some_and(|v| v == "true");
    let recorded = claim.status.as_ref().and_then(|s| s.database.clone());
    if claim.spec.deletion_policy != crate::api::DeletionPolicy::Delete {
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
    let users = [slot_username(claim, 0), slot_username(claim, 1)];
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
        assert_eq!(shared_database(&claim), "shop_orders_db");
        assert_eq!(slot_username(&claim, 0), "shop_orders_db_app");
        assert_eq!(slot_username(&claim, 1), "shop_orders_db_app2");
        assert_eq!(slot_username(&claim, 2), "shop_orders_db_app");
    }
}
