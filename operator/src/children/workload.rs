//! The dedicated instance: StatefulSet (one replica, one volume), its
//! Service, and the first-boot script that creates the app user.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Service as KubeService};
use serde_json::json;

use super::{Inputs, names};
use crate::engines::Instance;

/// Volume size when the claim names none.
pub const DEFAULT_STORAGE_SIZE: &str = "1Gi";

pub fn init_config(inputs: &Inputs) -> Option<ConfigMap> {
    let script = inputs.claim.spec.engine.init_script()?;
    Some(ConfigMap {
        metadata: inputs.meta(names::init_config(&inputs.claim_name()), "database"),
        data: Some(BTreeMap::from([(
            script.file_name.to_string(),
            script.contents.to_string(),
        )])),
        ..Default::default()
    })
}

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
    let database = claim.database_name();
    let admin_secret = names::admin_secret(&name);
    let instance = Instance {
        database: &database,
        admin_secret: &admin_secret,
    };
    let storage = claim.spec.storage.clone().unwrap_or_default();
    let uid = engine.run_as();

    let mut mounts = vec![json!({ "name": names::DATA_VOLUME, "mountPath": engine.data_path() })];
    let mut volumes = vec![json!({ "name": "run", "emptyDir": {} })];
    mounts.push(json!({ "name": "run", "mountPath": "/var/run/dbps" }));
    if let Some(script) = engine.init_script() {
        mounts.push(json!({ "name": "init", "mountPath": script.mount_path, "readOnly": true }));
        volumes.push(json!({
            "name": "init",
            "configMap": { "name": names::init_config(&name), "defaultMode": 0o555 }
        }));
    }
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
                        "image": engine.image(&inputs.version()),
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
        let env = container["env"].as_array().unwrap();
        let app_password = env.iter().find(|e| e["name"] == "APP_PASSWORD").unwrap();
        assert_eq!(
            app_password["valueFrom"]["secretKeyRef"],
            json!({ "name": "orders-db-admin", "key": "app-password" })
        );
        let init = container["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == "init")
            .unwrap();
        assert_eq!(init["mountPath"], "/docker-entrypoint-initdb.d");
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
        // InfluxDB's image creates the app user itself: no init script.
        assert!(build_json(claim, ORDERS_SERVICE, init_config).is_null());
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

    #[test]
    fn postgres_init_script_quotes_every_claim_value() {
        let cm = build_json(ORDERS_CLAIM, ORDERS_SERVICE, init_config);
        let script = cm["data"]["10-dbps-app-user.sh"].as_str().unwrap();
        assert!(script.contains(r#"CREATE ROLE :"app_user" LOGIN PASSWORD :'app_password'"#));
        assert!(
            script.contains(r#"REVOKE CONNECT, TEMPORARY ON DATABASE :"app_database" FROM PUBLIC"#)
        );
        assert!(
            !script.contains("orders"),
            "values come from the environment, not the text"
        );
    }
}
