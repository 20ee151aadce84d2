//! The fence around a dedicated instance: on the engine port, the owning
//! service's pods, and the operator's pods (which administer it) when the
//! operator runs in the cluster. Nothing else.

use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::json;

use super::{Inputs, names};

pub fn network_policy(inputs: &Inputs) -> NetworkPolicy {
    let port = json!([{ "protocol": "TCP", "port": inputs.claim.spec.engine.port() }]);
    let mut ingress = vec![json!({
        "from": [{ "podSelector": { "matchLabels": inputs.service.pod_selector() } }],
        "ports": port
    })];
    if let Some(operator) = &inputs.platform.operator {
        ingress.push(json!({
            "from": [{
                "namespaceSelector": { "matchLabels": { "kubernetes.io/metadata.name": operator.namespace } },
                "podSelector": { "matchLabels": operator.labels }
            }],
            "ports": port
        }));
    }
    let mut policy: NetworkPolicy = serde_json::from_value(json!({
        "spec": {
            "podSelector": { "matchLabels": inputs.instance_selector() },
            "policyTypes": ["Ingress"],
            "ingress": ingress
        }
    }))
    .expect("network policy");
    policy.metadata = inputs.meta(names::instance(&inputs.claim_name()), "network-policy");
    policy
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::*;

    #[test]
    fn admits_only_the_owning_service_pods_on_the_engine_port() {
        let policy = build_json(ORDERS_CLAIM, ORDERS_SERVICE, network_policy);
        assert_eq!(
            policy["spec"],
            json!({
                "podSelector": { "matchLabels": { "app.kubernetes.io/instance": "orders-db", "dbps.io/claim": "orders-db" } },
                "policyTypes": ["Ingress"],
                "ingress": [{
                    "from": [{ "podSelector": { "matchLabels": { "dbps.io/service": "orders" } } }],
                    "ports": [{ "protocol": "TCP", "port": 5432 }]
                }]
            })
        );
    }

    #[test]
    fn follows_a_custom_service_selector() {
        let service = "
apiVersion: dbps.io/v1alpha1
kind: Service
metadata: { name: orders, namespace: shop }
spec: { selector: { app: orders-api, tier: backend } }
";
        let policy = build_json(ORDERS_CLAIM, service, network_policy);
        assert_eq!(
            policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"],
            json!({ "app": "orders-api", "tier": "backend" })
        );
    }

    #[test]
    fn admits_the_operator_pods_when_the_operator_runs_in_the_cluster() {
        let platform = crate::children::Platform {
            operator: Some(crate::children::OperatorPods {
                namespace: "dbps-system".into(),
                labels: [(
                    "app.kubernetes.io/name".to_string(),
                    "dbps-operator".to_string(),
                )]
                .into(),
            }),
            ..Default::default()
        };
        let policy = build_json_on(&platform, ORDERS_CLAIM, ORDERS_SERVICE, network_policy);
        assert_eq!(
            policy["spec"]["ingress"][1],
            json!({
                "from": [{
                    "namespaceSelector": { "matchLabels": { "kubernetes.io/metadata.name": "dbps-system" } },
                    "podSelector": { "matchLabels": { "app.kubernetes.io/name": "dbps-operator" } }
                }],
                "ports": [{ "protocol": "TCP", "port": 5432 }]
            })
        );
        assert_eq!(policy["spec"]["ingress"].as_array().unwrap().len(), 2);
    }
}
