//! What the suites wait for and read on claims.

use std::collections::BTreeMap;

use dbps_operator::api::{ClaimPhase, DatabaseClaim};
use k8s_openapi::api::core::v1::Secret;

/// The claim is in `phase`.
pub fn phase_is(phase: ClaimPhase) -> impl Fn(Option<&DatabaseClaim>) -> bool {
    move |c| c.and_then(|c| c.status.as_ref()).and_then(|s| s.phase) == Some(phase)
}

/// The claim's Ready condition has `reason`.
pub fn reason_is(reason: &'static str) -> impl Fn(Option<&DatabaseClaim>) -> bool {
    move |c| {
        c.and_then(|c| c.status.as_ref()).is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.reason == reason)
        })
    }
}

/// A Secret's values as text.
pub fn secret_values(secret: &Secret) -> BTreeMap<String, String> {
    secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), String::from_utf8_lossy(&v.0).into_owned()))
        .collect()
}

/// The database, user and password a binding's values name.
pub fn grant_of(values: &BTreeMap<String, String>) -> dbps_operator::engines::Grant {
    dbps_operator::engines::Grant {
        database: values["database"].clone(),
        username: values["username"].clone(),
        password: values["password"].clone(),
    }
}

/// The ownership identity of a claim, as the operator marks its objects on
/// a server (cluster `test`).
pub fn claimant(
    namespace: &str,
    claim: &str,
    uid: &str,
    service: &str,
    adopt: bool,
) -> dbps_operator::engines::Claimant {
    dbps_operator::engines::Claimant {
        mark: dbps_operator::engines::Mark {
            cluster: "test".into(),
            namespace: namespace.into(),
            claim: claim.into(),
            uid: uid.into(),
            service: service.into(),
        },
        adopt,
    }
}
