//! The fence around a dedicated instance: on the engine port, the owning
//! service's pods, and the operator's pods (which administer it) when the
//! operator runs in the cluster. Nothing else.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{Inputs, names};

/// A selector by labels only.
fn match_labels(labels: BTreeMap<String, String>) -> LabelSelector {
    LabelSelector {
        match_labels: Some(labels),
        ..Default::default()
    }
}

pub fn network_policy(inputs: &Inputs) -> NetworkPolicy {
    let port = vec![NetworkPolicyPort {
        protocol: Some("TCP".into()),
        port: Some(IntOrString::Int(
            inputs.claim.spec.engine.instance().port().into(),
        )),
        ..Default::default()
    }];
    let mut ingress = vec![NetworkPolicyIngressRule {
        from: Some(vec![NetworkPolicyPeer {
            pod_selector: Some(match_labels(inputs.service.pod_selector())),
            ..Default::default()
        }]),
        ports: Some(port.clone()),
    }];
    if let Some(operator) = &inputs.platform.operator {
        ingress.push(NetworkPolicyIngressRule {
            from: Some(vec![NetworkPolicyPeer {
                namespace_selector: Some(match_labels(BTreeMap::from([(
                    "kubernetes.io/metadata.name".to_string(),
                    operator.namespace.clone(),
                )]))),
                pod_selector: Some(match_labels(operator.labels.clone())),
                ..Default::default()
            }]),
            ports: Some(port),
        });
    }
    NetworkPolicy {
        metadata: inputs.meta(names::instance(&inputs.claim_name()), "network-policy"),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(match_labels(inputs.instance_selector())),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(ingress),
            ..Default::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::*;
    use serde_json::json;

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
