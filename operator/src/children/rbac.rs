//! Who may read binding Secrets through the API: each Service's
//! ServiceAccount, `get` on exactly the binding Secrets of its own claims,
//! nothing else. One Role and one RoleBinding per Service (not per claim):
//! the Service controller keeps them with its ownership-table entries, from
//! the same list of Secrets.

use std::collections::BTreeMap;

use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, ResourceExt};

use super::MANAGED_BY;
use crate::api::{SERVICE_LABEL, Service};

/// Name of a Service's reader Role and RoleBinding.
pub fn binding_reader(service: &str) -> String {
    format!("dbps-{service}-binding-reader")
}

fn meta(service: &Service) -> ObjectMeta {
    let name = service.name_any();
    ObjectMeta {
        name: Some(binding_reader(&name)),
        namespace: service.namespace(),
        labels: Some(BTreeMap::from([
            ("app.kubernetes.io/managed-by".into(), MANAGED_BY.into()),
            ("app.kubernetes.io/component".into(), "access".into()),
            (SERVICE_LABEL.into(), name),
        ])),
        owner_references: service.controller_owner_ref(&()).map(|r| vec![r]),
        ..Default::default()
    }
}

/// `get` on `secrets` (the binding Secrets of the Service's claims), and no
/// rule at all when there are none: an empty `resourceNames` would grant
/// every Secret of the namespace.
pub fn binding_reader_role(service: &Service, secrets: &[String]) -> Role {
    let rules = match secrets {
        [] => vec![],
        secrets => vec![PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["secrets".into()]),
            resource_names: Some(secrets.to_vec()),
            verbs: vec!["get".into()],
            ..Default::default()
        }],
    };
    Role {
        metadata: meta(service),
        rules: Some(rules),
    }
}

pub fn binding_reader_role_binding(service: &Service) -> RoleBinding {
    RoleBinding {
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Role".into(),
            name: binding_reader(&service.name_any()),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: service.service_account(),
            namespace: service.namespace(),
            ..Default::default()
        }]),
        metadata: meta(service),
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::*;
    use serde_json::json;

    #[test]
    fn the_role_grants_get_on_the_services_binding_secrets_only() {
        let mut orders = service(ORDERS_SERVICE);
        orders.metadata.uid = Some("service-uid".into());
        let secrets = ["a-binding".to_string(), "b-binding-1".to_string()];
        let role = serde_json::to_value(binding_reader_role(&orders, &secrets)).unwrap();
        assert_eq!(role["metadata"]["name"], "dbps-orders-binding-reader");
        assert_eq!(role["metadata"]["ownerReferences"][0]["kind"], "Service");
        assert_eq!(
            role["rules"],
            json!([{ "apiGroups": [""], "resources": ["secrets"], "resourceNames": ["a-binding", "b-binding-1"], "verbs": ["get"] }])
        );
    }

    #[test]
    fn a_service_without_secrets_gets_a_role_that_grants_nothing() {
        let role =
            serde_json::to_value(binding_reader_role(&service(ORDERS_SERVICE), &[])).unwrap();
        assert_eq!(role["rules"], json!([]), "never an empty resourceNames");
    }

    #[test]
    fn the_binding_names_the_service_account() {
        let orders = service(
            "
apiVersion: dbps.io/v1alpha1
kind: Service
metadata: { name: orders, namespace: shop }
spec: { serviceAccountName: orders-api }
",
        );
        let rb = serde_json::to_value(binding_reader_role_binding(&orders)).unwrap();
        assert_eq!(
            rb["subjects"],
            json!([{ "kind": "ServiceAccount", "name": "orders-api", "namespace": "shop" }])
        );
        assert_eq!(rb["roleRef"]["name"], "dbps-orders-binding-reader");
    }
}
