//! The fence around a database: only the owning service's pods, on the
//! engine port.

use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::json;

use super::{Inputs, names};

pub fn network_policy(inputs: &Inputs) -> NetworkPolicy {
    let mut policy: NetworkPolicy = serde_json::from_value(json!({
        "spec": {
            "podSelector": { "matchLabels": inputs.instance_selector() },
            "policyTypes": ["Ingress"],
            "ingress": [{
                "from": [{ "podSelector": { "matchLabels": inputs.service.pod_selector() } }],
                "ports": [{ "protocol": "TCP", "port": inputs.claim.spec.engine.port() }]
            }]
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
}
