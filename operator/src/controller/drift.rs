//! Credentials drift, decided without a client: a password found in a Secret
//! is believed only when it matches the fingerprint recorded when dbps issued
//! it. A Secret edited or deleted by hand is restored from another copy dbps
//! wrote, or its credentials are issued anew; an edited value is never adopted.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;

use crate::api::{CLAIM_LABEL, DatabaseClaim, SERVICE_LABEL};
use crate::children::MANAGED_BY;
use crate::password;

/// What to do with one password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Choice {
    /// The first place holds the password dbps issued (or nothing was
    /// recorded yet and this is what dbps wrote there): keep it.
    Keep(String),
    /// The first place lost it (edited or deleted); another copy still holds
    /// it: write it back.
    Restore(String),
    /// Nothing recorded and nothing found: a new password.
    New(String),
    /// Recorded, but no copy matches any more: it cannot be restored.
    Lost,
}

impl Choice {
    pub fn value(&self) -> Option<&str> {
        match self {
            Choice::Keep(v) | Choice::Restore(v) | Choice::New(v) => Some(v),
            Choice::Lost => None,
        }
    }
}

/// Chooses among `copies` (the first is where the service reads it) by the
/// `recorded` fingerprint, salted with `salt` (the claim's UID).
pub fn choose(salt: &str, recorded: Option<&str>, copies: &[Option<&str>]) -> Choice {
    match recorded {
        Some(fingerprint) => {
            let matching = copies
                .iter()
                .position(|c| c.is_some_and(|v| password::fingerprint(salt, v) == fingerprint));
            match matching {
                Some(0) => Choice::Keep(copies[0].unwrap().to_string()),
                Some(i) => Choice::Restore(copies[i].unwrap().to_string()),
                None => Choice::Lost,
            }
        }
        // Issued before fingerprints were kept, or by a reconcile that
        // stopped before its status: what dbps wrote is what it finds.
        None => match copies.iter().flatten().next() {
            Some(v) if copies[0].is_some() => Choice::Keep(v.to_string()),
            Some(v) => Choice::Restore(v.to_string()),
            None => Choice::New(password::generate()),
        },
    }
}

/// Why an existing object of the name dbps would write is not this claim's
/// to use; `None` when it is (made for this claim, or kept for it when an
/// earlier claim of the same name and Service was deleted with `Retain`).
pub fn foreign(
    meta: &ObjectMeta,
    kind: &str,
    claim: &DatabaseClaim,
    service: &str,
) -> Option<String> {
    let name = meta.name.clone().unwrap_or_default();
    let uid = claim.uid().unwrap_or_default();
    let owners = meta.owner_references.clone().unwrap_or_default();
    if owners
        .iter()
        .any(|o| o.controller == Some(true) && o.uid == uid)
    {
        return None;
    }
    let empty = BTreeMap::new();
    let labels = meta.labels.as_ref().unwrap_or(&empty);
    let made_for_this_claim = labels
        .get("app.kubernetes.io/managed-by")
        .map(String::as_str)
        == Some(MANAGED_BY)
        && labels.get(CLAIM_LABEL) == Some(&claim.name_any());
    // A controller other than a claim of this name (e.g. a user's StatefulSet).
    let foreign_controller = owners.iter().any(|o| {
        o.controller == Some(true) && (o.kind != "DatabaseClaim" || o.name != claim.name_any())
    });
    if !made_for_this_claim || foreign_controller {
        return Some(format!(
            "{kind} {name:?} exists and was not made by dbps for this claim; nothing was changed. Give the claim another name, or remove the {kind}"
        ));
    }
    match labels.get(SERVICE_LABEL) {
        Some(owner) if owner != service => Some(format!(
            "{kind} {name:?} was kept for Service {owner:?} (deletionPolicy Retain) and is not handed to Service {service:?}; nothing was attached. Give the claim another name, or delete the {kind} to start afresh"
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(v: &str) -> String {
        password::fingerprint("uid", v)
    }

    #[test]
    fn the_recorded_password_is_kept_or_restored_and_an_edit_is_never_believed() {
        let issued = "Issued0123456789Issued0123456789";
        let f = fp(issued);
        assert_eq!(
            choose("uid", Some(&f), &[Some(issued), Some(issued)]),
            Choice::Keep(issued.into())
        );
        // Binding edited to "weak": restored from the admin Secret's copy.
        assert_eq!(
            choose("uid", Some(&f), &[Some("weak"), Some(issued)]),
            Choice::Restore(issued.into())
        );
        // Binding deleted: restored likewise.
        assert_eq!(
            choose("uid", Some(&f), &[None, Some(issued)]),
            Choice::Restore(issued.into())
        );
        // Every copy edited or gone: lost, never "weak".
        assert_eq!(
            choose("uid", Some(&f), &[Some("weak"), Some("weak")]),
            Choice::Lost
        );
        assert_eq!(choose("uid", Some(&f), &[None]), Choice::Lost);
        // Another claim's salt does not match.
        assert_eq!(choose("other-uid", Some(&f), &[Some(issued)]), Choice::Lost);
    }

    #[test]
    fn without_a_record_what_dbps_wrote_is_kept_and_nothing_found_is_new() {
        assert_eq!(
            choose("uid", None, &[Some("a"), Some("b")]),
            Choice::Keep("a".into())
        );
        assert_eq!(
            choose("uid", None, &[None, Some("b")]),
            Choice::Restore("b".into())
        );
        let Choice::New(v) = choose("uid", None, &[None, None]) else {
            panic!("a new password")
        };
        assert_eq!(v.len(), password::LENGTH);
    }

    fn claim() -> DatabaseClaim {
        let mut c: DatabaseClaim = serde_yaml::from_str(
            "{apiVersion: dbps.io/v1alpha1, kind: DatabaseClaim, metadata: {name: orders-db, namespace: shop}, spec: {serviceRef: {name: orders}, engine: postgres}}",
        )
        .unwrap();
        c.metadata.uid = Some("new-uid".into());
        c
    }

    fn meta(yaml: &str) -> ObjectMeta {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn kept_objects_go_only_to_a_claim_of_the_same_name_and_service() {
        let c = claim();
        let retained = meta(
            "{name: orders-db-admin, labels: {app.kubernetes.io/managed-by: dbps-operator, dbps.io/claim: orders-db, dbps.io/service: orders}}",
        );
        assert_eq!(foreign(&retained, "Secret", &c, "orders"), None);
        let refused = foreign(&retained, "Secret", &c, "intruder").unwrap();
        assert!(refused.contains("kept for Service \"orders\""), "{refused}");

        // Still owned by the deleted claim of the same name (garbage collection pending).
        let lingering = meta(
            "{name: orders-db, labels: {app.kubernetes.io/managed-by: dbps-operator, dbps.io/claim: orders-db, dbps.io/service: orders}, ownerReferences: [{apiVersion: dbps.io/v1alpha1, kind: DatabaseClaim, name: orders-db, uid: old-uid, controller: true}]}",
        );
        assert_eq!(foreign(&lingering, "StatefulSet", &c, "orders"), None);

        // A volume the StatefulSet made carries no service label: its Secrets decide.
        let volume = meta(
            "{name: data-orders-db-0, labels: {app.kubernetes.io/managed-by: dbps-operator, dbps.io/claim: orders-db}}",
        );
        assert_eq!(
            foreign(&volume, "PersistentVolumeClaim", &c, "intruder"),
            None
        );

        // Someone else's objects of the same name.
        let users = meta("{name: orders-db-binding, labels: {app: mine}}");
        assert!(
            foreign(&users, "Secret", &c, "orders")
                .unwrap()
                .contains("not made by dbps")
        );
        let other_controller = meta(
            "{name: orders-db, labels: {app.kubernetes.io/managed-by: dbps-operator, dbps.io/claim: orders-db}, ownerReferences: [{apiVersion: apps/v1, kind: Deployment, name: x, uid: u, controller: true}]}",
        );
        assert!(foreign(&other_controller, "StatefulSet", &c, "orders").is_some());

        // Made for this very claim.
        let mine = meta(
            "{name: orders-db, ownerReferences: [{apiVersion: dbps.io/v1alpha1, kind: DatabaseClaim, name: orders-db, uid: new-uid, controller: true}]}",
        );
        assert_eq!(foreign(&mine, "StatefulSet", &c, "orders"), None);
    }
}
