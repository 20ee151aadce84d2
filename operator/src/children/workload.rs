//! The dedicated instance: StatefulSet (one replica, one volume) starting
//! with only its superuser, and its Service.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Service as KubeService;
use serde_json::json;

use super::{Inputs, names};
use crate::engines::Instance;

/// Volume size when the claim names none.
pub const DEFAULT_STORAGE_SIZE: &str = "1Gi";

pub fn instance_service(inputs: &Inputs) -> KubeService {
    let port = inputs.claim.spec.engine.port();
    let mut service: KubeService = serde_json::from_value(json!({
        "spec": {
            "type": "ClusterIP",
            "selector": inputs.instance_selector(),
            "ports": [{ "name": "db", "port": port, "targetPort": "db", "protocol": "TCP" }]
        }
    }))
    .expect("service");
    service.metadata = inputs.meta(names::instance(&inputs.claim_name()), "database");
    service
}

pub fn statefulset(inputs: &Inputs) -> StatefulSet {
    let claim = inputs.claim;
    let engine = claim.spec.engine;
    let name = inputs.claim_name();
    let admin_secret = names::admin_secret(&name);
    let instance = Instance {
        admin_secret: &admin_secret,
    };
    let storage = claim.spec.storage.clone().unwrap_or_default();
    let uid = engine.run_as();

    let mounts = json!([
        { "name": names::DATA_VOLUME, "mountPath": engine.data_path() },
        { "name": "run", "mountPath": "/var/run/dbps" }
    ]);
    let volumes = json!([{ "name": "run", "emptyDir": {} }]);
    let resources = claim.spec.resources.clone().map_or_else(
        || json!({ "requests": { "cpu": "100m", "memory": "256Mi" }, "limits": { "memory": "1Gi" } }),
        |r| serde_json::to_value(r).expect("resources"),
    );
    let mut pvc_spec = json!({
        "accessModes": ["ReadWriteOnce"],
        "resources": { "requests": { "storage": storage.size.as_deref().unwrap_or(DEFAULT_STORAGE_SIZE) } }
    });
    if let Some(class) = &storage.storage_class_name {
        pvc_spec["storageClassName"] = json!(class);
    }

    let mut sts: StatefulSet = serde_json::from_value(json!({
        "spec": {
            "replicas": 1,
            "serviceName": names::instance(&name),
            "selector": { "matchLabels": inputs.instance_selector() },
            "podManagementPolicy": "OrderedReady",
            "updateStrategy": { "type": "RollingUpdate" },
            "persistentVolumeClaimRetentionPolicy": { "whenDeleted": "Retain", "whenScaled": "Retain" },
            "template": {
                "metadata": { "labels": inputs.pod_labels() },
                "spec": {
                    "automountServiceAccountToken": false,
                    "enableServiceLinks": false,
                    "securityContext": {
                        "runAsNonRoot": true,
                        "runAsUser": uid,
                        "runAsGroup": uid,
                        "fsGroup": uid,
                        "seccompProfile": { "type": "RuntimeDefault" }
                    },
                    "containers": [{
                        "name": engine.as_str(),
                        "image": inputs.platform.image(engine, &inputs.version()),
                        "ports": [{ "name": "db", "containerPort": engine.port(), "protocol": "TCP" }],
                        "env": engine.env(&instance),
                        "readinessProbe": engine.readiness_probe(),
                        "resources": resources,
                        "volumeMounts": mounts,
                        "securityContext": {
                            "allowPrivilegeEscalation": false,
                            "capabilities": { "drop": ["ALL"] },
                            "runAsNonRoot": true
                        }
                    }],
                    "volumes": volumes
                }
            },
            "volumeClaimTemplates": [{
                "metadata": { "name": names::DATA_VOLUME, "labels": inputs.pod_labels() },
                "spec": pvc_spec
            }]
        }
    }))
    .expect("statefulset");
    sts.metadata = inputs.meta(names::instance(&name), "database");
    sts
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::*;
    use serde_json::json;

    #[test]
    fn postgres_statefulset_reads_like_the_instance() {
        let sts = build_json(ORDERS_CLAIM, ORDERS_SERVICE, statefulset);
        assert_eq!(sts["metadata"]["name"], "orders-db");
        assert_eq!(
            sts["metadata"]["labels"]["app.kubernetes.io/component"],
            "database"
        );
        assert_eq!(sts["spec"]["replicas"], 1);
        let pod = &sts["spec"]["template"];
        assert_eq!(
            pod["metadata"]["labels"],
            json!({
                "app.kubernetes.io/instance": "orders-db",
                "app.kubernetes.io/managed-by": "dbps-operator",
                "app.kubernetes.io/name": "postgresql",
                "dbps.io/claim": "orders-db"
            })
        );
        let container = &pod["spec"]["containers"][0];
        assert_eq!(container["image"], "postgres:17");
        assert_eq!(container["ports"][0]["containerPort"], 5432);
        assert_eq!(
            container["securityContext"],
            json!({ "allowPrivilegeEscalation": false, "capabilities": { "drop": ["ALL"] }, "runAsNonRoot": true })
        );
        assert_eq!(
            pod["spec"]["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );
        assert_eq!(pod["spec"]["automountServiceAccountToken"], false);
        assert_eq!(
            sts["spec"]["volumeClaimTemplates"][0]["spec"],
            json!({
                "accessModes": ["ReadWriteOnce"],
                "resources": { "requests": { "storage": "5Gi" } },
                "storageClassName": "fast"
            })
        );
        // The instance starts with its superuser only: the operator makes the
        // app's users over the wire.
        let env: Vec<&str> = container["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap())
            .collect();
        assert_eq!(env, ["POSTGRES_USER", "POSTGRES_PASSWORD", "PGDATA"]);
        assert_eq!(
            container["env"][1]["valueFrom"]["secretKeyRef"],
            json!({ "name": "orders-db-admin", "key": "password" })
        );
        assert_eq!(container["volumeMounts"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn a_platform_image_repository_replaces_the_official_one() {
        let platform = crate::children::Platform {
            image_repositories: vec![(crate::api::Engine::Postgres, "mirror.local/pg".into())],
            ..Default::default()
        };
        let sts = build_json_on(&platform, ORDERS_CLAIM, ORDERS_SERVICE, statefulset);
        assert_eq!(
            sts["spec"]["template"]["spec"]["containers"][0]["image"],
            "mirror.local/pg:17"
        );
    }

    #[test]
    fn defaults_for_influxdb_without_storage_or_resources() {
        let claim = "
apiVersion: dbps.io/v1alpha1
kind: DatabaseClaim
metadata: { name: readings, namespace: iot }
spec: { serviceRef: { name: telemetry }, engine: influxdb, version: '1.8' }
";
        let sts = build_json(claim, ORDERS_SERVICE, statefulset);
        let container = &sts["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(container["image"], "influxdb:1.8");
        assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/ping");
        assert_eq!(container["resources"]["requests"]["memory"], "256Mi");
        assert_eq!(
            sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"],
            "1Gi"
        );
        assert!(
            sts["spec"]["volumeClaimTemplates"][0]["spec"]
                .get("storageClassName")
                .is_none()
        );
    }

    #[test]
    fn service_exposes_the_engine_port_of_the_instance_pods() {
        let svc = build_json(ORDERS_CLAIM, ORDERS_SERVICE, instance_service);
        assert_eq!(
            svc["spec"],
            json!({
                "type": "ClusterIP",
                "selector": { "app.kubernetes.io/instance": "orders-db", "dbps.io/claim": "orders-db" },
                "ports": [{ "name": "db", "port": 5432, "targetPort": "db", "protocol": "TCP" }]
            })
        );
    }
}
