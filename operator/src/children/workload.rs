//! The dedicated instance: StatefulSet (one replica, one volume) starting
//! with only its superuser, and its Service.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
    StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PodSecurityContext, PodSpec, PodTemplateSpec, ResourceRequirements,
    SeccompProfile, SecurityContext, Service as KubeService, ServicePort, ServiceSpec, Volume,
    VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{Inputs, names};
use crate::engines::InstanceSecrets;

/// Volume size when the claim names none.
pub const DEFAULT_STORAGE_SIZE: &str = "1Gi";

pub fn instance_service(inputs: &Inputs) -> KubeService {
    let port = inputs.claim.spec.engine.instance().port();
    KubeService {
        metadata: inputs.meta(names::instance(&inputs.claim_name()), "database"),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(inputs.instance_selector()),
            ports: Some(vec![ServicePort {
                name: Some("db".into()),
                port: port.into(),
                target_port: Some(IntOrString::String("db".into())),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// `(name, quantity)` pairs as a resource map.
fn quantities<const N: usize>(pairs: [(&str, &str); N]) -> BTreeMap<String, Quantity> {
    pairs
        .into_iter()
        .map(|(name, q)| (name.to_string(), Quantity(q.to_string())))
        .collect()
}

pub fn statefulset(inputs: &Inputs) -> StatefulSet {
    let claim = inputs.claim;
    let engine = claim.spec.engine;
    let name = inputs.claim_name();
    let admin_secret = names::admin_secret(&name);
    let instance = InstanceSecrets {
        admin_secret: &admin_secret,
    };
    let storage = claim.spec.storage.clone().unwrap_or_default();
    let uid = engine.instance().run_as();

    let mounts = vec![
        VolumeMount {
            name: names::DATA_VOLUME.into(),
            mount_path: engine.instance().data_path().into(),
            ..Default::default()
        },
        VolumeMount {
            name: "run".into(),
            mount_path: "/var/run/dbps".into(),
            ..Default::default()
        },
    ];
    let volumes = vec![Volume {
        name: "run".into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Default::default()
    }];
    let resources = claim
        .spec
        .resources
        .clone()
        .unwrap_or_else(|| ResourceRequirements {
            requests: Some(quantities([("cpu", "100m"), ("memory", "256Mi")])),
            limits: Some(quantities([("memory", "1Gi")])),
            ..Default::default()
        });
    let pvc_spec = PersistentVolumeClaimSpec {
        access_modes: Some(vec!["ReadWriteOnce".into()]),
        resources: Some(VolumeResourceRequirements {
            requests: Some(quantities([(
                "storage",
                storage.size.as_deref().unwrap_or(DEFAULT_STORAGE_SIZE),
            )])),
            ..Default::default()
        }),
        storage_class_name: storage.storage_class_name.clone(),
        ..Default::default()
    };

    let container = Container {
        name: engine.as_str().into(),
        image: Some(inputs.platform.image(engine, &inputs.version())),
        ports: Some(vec![ContainerPort {
            name: Some("db".into()),
            container_port: engine.instance().port().into(),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        env: Some(engine.instance().env(&instance)),
        readiness_probe: Some(engine.readiness_probe()),
        resources: Some(resources),
        volume_mounts: Some(mounts),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            run_as_non_root: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    };

    StatefulSet {
        metadata: inputs.meta(names::instance(&name), "database"),
        spec: Some(StatefulSetSpec {
            replicas: Some(1),
            service_name: Some(names::instance(&name)),
            selector: LabelSelector {
                match_labels: Some(inputs.instance_selector()),
                ..Default::default()
            },
            pod_management_policy: Some("OrderedReady".into()),
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("RollingUpdate".into()),
                ..Default::default()
            }),
            persistent_volume_claim_retention_policy: Some(
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some("Retain".into()),
                    when_scaled: Some("Retain".into()),
                },
            ),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(inputs.pod_labels()),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(uid),
                        run_as_group: Some(uid),
                        fs_group: Some(uid),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    containers: vec![container],
                    volumes: Some(volumes),
                    ..Default::default()
                }),
            },
            volume_claim_templates: Some(vec![PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some(names::DATA_VOLUME.into()),
                    labels: Some(inputs.pod_labels()),
                    ..Default::default()
                },
                spec: Some(pvc_spec),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
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
