//! Compliance profiles: what a claim's database must be for the data it
//! holds, checked against the server itself (not its registration) on every
//! reconcile, and shown in the claim's `Compliant` condition. What the spec
//! alone says (Retain, rotation period, placement) the apiserver's CEL rules
//! already enforce.

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::PostParams;
use kube::{Api, ResourceExt};

use super::super::context::{Context, Error};
use crate::api::{DatabaseClaim, Profile, Reason, SecretRef, Service};
use crate::engines::{AdminError, Connection};

/// Type of the condition a profile is reported in.
pub const COMPLIANT: &str = "Compliant";

/// The extension a profile needs in the database.
pub fn required_extensions(profile: Option<Profile>) -> &'static [&'static str] {
    match profile {
        Some(Profile::Pci) => &["pgaudit"],
        None => &[],
    }
}

/// What the checks found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub satisfied: bool,
    pub reason: Reason,
    pub message: String,
}

/// Why the checks could not be made.
pub enum CheckError {
    /// The server did not answer the way a check needs.
    Server(AdminError),
    Kube(Error),
}

impl From<kube::Error> for CheckError {
    fn from(e: kube::Error) -> Self {
        CheckError::Kube(e.into())
    }
}

/// What the profile checks need to know of the claim's server.
pub struct Subject<'a> {
    pub conn: &'a Connection,
    pub place: &'a str,
    pub database: &'a str,
    pub username: &'a str,
    pub admin_secret: Option<&'a SecretRef>,
}

/// Checks `claim`'s profile on its server; `None` when it has none.
pub async fn check(
    claim: &DatabaseClaim,
    service: &Service,
    subject: Subject<'_>,
    ctx: &Context,
) -> Result<Option<Verdict>, CheckError> {
    let Some(Profile::Pci) = claim.spec.profile else {
        return Ok(None);
    };
    let fail = |reason, message: String| {
        Ok(Some(Verdict {
            satisfied: false,
            reason,
            message: format!("PCI: {message}"),
        }))
    };
    let Subject {
        conn,
        place,
        database,
        username,
        admin_secret,
    } = subject;
    // Encryption in transit: the operator and the service use TLS, and the
    // server refuses anyone who does not.
    if conn.tls.is_none() {
        return fail(
            Reason::PlaintextAccepted,
            format!(
                "{place} is not registered with tls.enabled; nothing is issued over an unencrypted connection"
            ),
        );
    }
    let refused = ctx
        .servers
        .refuses_plaintext(conn, database, username)
        .await
        .map_err(CheckError::Server)?;
    if !refused {
        return fail(
            Reason::PlaintextAccepted,
            format!(
                "{place} accepts unencrypted connections of user {username:?} to database {database:?}; its pg_hba.conf must have hostssl lines only"
            ),
        );
    }
    // An audit trail of access to the data.
    if !ctx
        .servers
        .can_audit(conn)
        .await
        .map_err(CheckError::Server)?
    {
        return fail(
            Reason::AuditUnavailable,
            format!(
                "{place} has not loaded pgAudit: add pgaudit to its shared_preload_libraries and restart it"
            ),
        );
    }
    // The administrator's credentials out of every workload's reach.
    let ns = claim.namespace().unwrap_or_default();
    let account = service.service_account();
    if let Some(secret) = admin_secret {
        for (verb, name) in [("get", Some(secret.name.clone())), ("list", None)] {
            if may(ctx, &ns, &account, verb, &secret.namespace, name.clone()).await? {
                let what = match &name {
                    Some(name) => format!("get Secret {}/{name}", secret.namespace),
                    None => format!("list the Secrets of namespace {}", secret.namespace),
                };
                return fail(
                    Reason::AdminSecretReachable,
                    format!(
                        "ServiceAccount {ns}/{account} (or every account of namespace {ns}) may {what}, which holds the admin credentials of {place}; remove that RBAC grant"
                    ),
                );
            }
        }
    }
    let every = claim
        .spec
        .rotation
        .as_ref()
        .and_then(|r| r.every_seconds)
        .unwrap_or_default();
    Ok(Some(Verdict {
        satisfied: true,
        reason: Reason::ProfileSatisfied,
        message: format!(
            "PCI: {place} refuses unencrypted connections; pgAudit logs reads, writes, DDL and role changes in the database; credentials rotate every {every}s; deletionPolicy Retain; no account of namespace {ns} may read the server's admin Secret"
        ),
    }))
}

/// Whether ServiceAccount `ns/account`, or any account of `ns` through its
/// groups, may `verb` Secrets in `namespace` (one named `name`, or all).
async fn may(
    ctx: &Context,
    ns: &str,
    account: &str,
    verb: &str,
    namespace: &str,
    name: Option<String>,
) -> Result<bool, CheckError> {
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(format!("system:serviceaccount:{ns}:{account}")),
            groups: Some(vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{ns}"),
                "system:authenticated".into(),
            ]),
            resource_attributes: Some(ResourceAttributes {
                namespace: Some(namespace.into()),
                verb: Some(verb.into()),
                resource: Some("secrets".into()),
                name,
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let api: Api<SubjectAccessReview> = Api::all(ctx.client.clone());
    let answer = api.create(&PostParams::default(), &review).await?;
    Ok(answer.status.is_some_and(|s| s.allowed))
}
