//! Who may read the binding Secret: the owning service's ServiceAccount, and
//! only that Secret, only `get`.

use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};

use super::{Inputs, names};

pub fn binding_reader_role(inputs: &Inputs) -> Role {
    binding_reader_role_for(inputs, &[names::binding_secret(&inputs.claim_name())])
}

/// The reader Role for several binding Secrets (current and previous
/// credentials during a rotation's grace period).
pub fn binding_reader_role_for(inputs: &Inputs, secrets: &[String]) -> Role {
    Role {
        metadata: inputs.meta(names::binding_reader(&inputs.claim_name()), "access"),
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["secrets".into()]),
            resource_names: Some(secrets.to_vec()),
            verbs: vec!["get".into()],
            ..Default::default()
        }]),
    }
}

pub fn binding_reader_role_binding(inputs: &Inputs) -> RoleBinding {
    let name = names::binding_reader(&inputs.claim_name());
    RoleBinding {
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Role".into(),
            name: name.clone(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: inputs.service.service_account(),
            namespace: Some(inputs.namespace()),
            ..Default::default()
        }]),
        metadata: inputs.meta(name, "access"),
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::*;
    use serde_json::json;

    #[test]
    fn role_grants_get_on_the_binding_secret_only() {
        let role = build_json(ORDERS_CLAIM, ORDERS_SERVICE, binding_reader_role);
        assert_eq!(role["metadata"]["name"], "orders-db-binding-reader");
        assert_eq!(
            role["rules"],
            json!([{ "apiGroups": [""], "resources": ["secrets"], "resourceNames": ["orders-db-binding"], "verbs": ["get"] }])
        );
    }

    #[test]
    fn binding_names_the_service_account() {
        let service = "
apiVersion: dbps.io/v1alpha1
kind: Service
metadata: { name: orders, namespace: shop }
spec: { serviceAccountName: orders-api }
";
        let rb = build_json(ORDERS_CLAIM, service, binding_reader_role_binding);
        assert_eq!(
            rb["subjects"],
            json!([{ "kind": "ServiceAccount", "name": "orders-api", "namespace": "shop" }])
        );
        assert_eq!(rb["roleRef"]["name"], "orders-db-binding-reader");
    }
}
