//! The dedicated instance: StatefulSet (one replica, one volume) starting
//! with only its superuser, and its Service.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
    StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, KeyToPath, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PodSecurityContext, PodSpec, PodTemplateSpec, ResourceRequirements,
    SeccompProfile, SecretVolumeSource, SecurityContext, Service as KubeService, ServicePort,
    ServiceSpec, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{Inputs, names, tls};
use crate::engines::InstanceSecrets;

/// Pod template annotation: digest of the certificate the instance serves.
pub const TLS_ANNOTATION: &str = "dbps.io/tls-certificate";
/// Pod template annotation: digest of the files the instance reads at every
/// start (see [`crate::engines::InstanceFile`]).
pub const FILES_ANNOTATION: &str = "dbps.io/instance-files";

/// Volume size when the claim names none.
pub const DEFAULT_STORAGE_SIZE: &str = "1Gi";

/// How an instance's StatefulSet manages its pod. The field cannot change:
/// an instance made with another policy keeps it.
pub const POD_MANAGEMENT_POLICY: &str = "Parallel";

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
        name: &name,
        admin_secret: &admin_secret,
    };
    let storage = claim.spec.storage.clone().unwrap_or_default();
    let uid = engine.instance().run_as();

    let mut mounts = vec![
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
    let mut volumes = vec![Volume {
        name: "run".into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Default::default()
    }];
    // What the instance reads from its admin Secret besides the password:
    // its certificate (a directory) and its first-boot files (one by one).
    let files = &inputs.credentials.instance;
    let from_admin_secret = |volume: &str, keys: &[&str]| Volume {
        name: volume.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(admin_secret.clone()),
            items: Some(
                keys.iter()
                    .map(|k| KeyToPath {
                        key: k.to_string(),
                        path: k.to_string(),
                        ..Default::default()
                    })
                    .collect(),
            ),
            default_mode: Some(0o440),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut annotations = BTreeMap::new();
    if let (Some(dir), Some(tls)) = (engine.instance().tls_dir(), files.tls.as_ref()) {
        volumes.push(from_admin_secret(
            "tls",
            &[tls::CA_KEY, tls::CERT_KEY, tls::KEY_KEY],
        ));
        mounts.push(VolumeMount {
            name: "tls".into(),
            mount_path: dir.into(),
            read_only: Some(true),
            ..Default::default()
        });
        // The server reads its certificate at start: a new one restarts it.
        annotations.insert(TLS_ANNOTATION.to_string(), tls.digest());
    }
    let files = engine.instance().files();
    // A file read at every start: a change of it restarts the server.
    let mut enforced = Vec::new();
    for (key, contents) in &inputs.credentials.instance.files {
        if files.iter().any(|f| f.enforced && f.key == *key) {
            enforced.extend([key.as_bytes(), b"\0", contents.as_bytes(), b"\0"].concat());
        }
    }
    if !enforced.is_empty() {
        annotations.insert(FILES_ANNOTATION.to_string(), tls::short_digest(&enforced));
    }
    if !files.is_empty() {
        let keys: Vec<&str> = files.iter().map(|f| f.key).collect();
        // The volume keeps the name it was first given (a new name would
        // restart every instance that has it).
        volumes.push(from_admin_secret("first-boot", &keys));
        mounts.extend(files.iter().map(|f| VolumeMount {
            name: "first-boot".into(),
            mount_path: f.path.into(),
            sub_path: Some(f.key.into()),
            read_only: Some(true),
            ..Default::default()
        }));
    }
    let resources = claim.spec.resources.clone().unwrap_or_else(|| {
        let (request, limit) = engine.instance().default_memory();
        ResourceRequirements {
            requests: Some(quantities([("cpu", "100m"), ("memory", request)])),
            limits: Some(quantities([("memory", limit)])),
            ..Default::default()
        }
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
        args: Some(engine.instance().args()).filter(|a| !a.is_empty()),
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
            // With its one replica there is no order to keep; `Parallel`
            // lets the StatefulSet replace a pod that never became ready
            // (it cannot be scheduled, its image cannot be pulled) once the
            // claim is put right, where `OrderedReady` waits for it forever.
            pod_management_policy: Some(POD_MANAGEMENT_POLICY.into()),
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
                    annotations: (!annotations.is_empty()).then_some(annotations),
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
        // Its data, a scratch directory and its client authentication file
        // (its certificate once issued: below).
        let mounts: Vec<&str> = container["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["mountPath"].as_str().unwrap())
            .collect();
        assert_eq!(
            mounts,
            [
                "/var/lib/postgresql/data",
                "/var/run/dbps",
                "/etc/dbps/pg_hba.conf"
            ]
        );
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
    fn an_opensearch_instance_reads_its_certificate_and_user_database_from_its_admin_secret() {
        let claim = "
apiVersion: dbps.io/v1alpha1
kind: DatabaseClaim
metadata: { name: search-db, namespace: shop }
spec: { serviceRef: { name: search }, engine: opensearch }
";
        let tls = tls::InstanceTls::issue("search-db", "search-db").unwrap();
        let files = [
            ("internal_users.yml", "admin: {}"),
            ("roles_mapping.yml", "{}"),
            ("config.yml", "{}"),
        ];
        let sts = with_instance(claim, &tls, &files, |i| {
            serde_json::to_value(statefulset(i)).unwrap()
        });
        let pod = &sts["spec"]["template"];
        assert_eq!(
            pod["metadata"]["annotations"][TLS_ANNOTATION],
            tls.digest(),
            "a new certificate restarts the instance"
        );
        let container = &pod["spec"]["containers"][0];
        assert_eq!(container["image"], "opensearchproject/opensearch:2.19.4");
        let mounts = container["volumeMounts"].as_array().unwrap();
        assert!(mounts.contains(&json!({
            "name": "tls", "mountPath": "/usr/share/opensearch/config/dbps-tls", "readOnly": true
        })));
        assert!(mounts.contains(&json!({
            "name": "first-boot",
            "mountPath": "/usr/share/opensearch/config/opensearch-security/internal_users.yml",
            "subPath": "internal_users.yml", "readOnly": true
        })));
        let volumes = pod["spec"]["volumes"].as_array().unwrap();
        let tls_volume = volumes.iter().find(|v| v["name"] == "tls").unwrap();
        assert_eq!(tls_volume["secret"]["secretName"], "search-db-admin");
        assert_eq!(tls_volume["secret"]["defaultMode"], 0o440);
        let keys: Vec<&str> = tls_volume["secret"]["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["key"].as_str().unwrap())
            .collect();
        assert_eq!(keys, ["ca.crt", "tls.crt", "tls.key"], "not the password");
        let env: std::collections::BTreeMap<&str, &serde_json::Value> = container["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["name"].as_str().unwrap(), e))
            .collect();
        assert_eq!(env["DISABLE_INSTALL_DEMO_CONFIG"]["value"], "true");
        assert_eq!(container["resources"]["limits"]["memory"], "2Gi");
        assert_eq!(env["plugins.security.nodes_dn"]["value"], "CN=search-db");
        assert_eq!(
            env["plugins.security.ssl.http.pemkey_filepath"]["value"],
            "dbps-tls/tls.key"
        );
        assert_eq!(
            env["OPENSEARCH_INITIAL_ADMIN_PASSWORD"]["valueFrom"]["secretKeyRef"],
            json!({ "name": "search-db-admin", "key": "password" })
        );
        // The admin Secret holds what the volumes name.
        let secret = with_instance(claim, &tls, &files, crate::children::admin_secret);
        let data = secret.data.unwrap();
        for key in [
            "username",
            "password",
            "ca.crt",
            "tls.crt",
            "tls.key",
            "tls.names",
            "internal_users.yml",
        ] {
            assert!(data.contains_key(key), "{key}");
        }
    }

    #[test]
    fn an_instance_without_tls_mounts_nothing_of_its_admin_secret() {
        let claim = ORDERS_CLAIM.replace("engine: postgres", "engine: influxdb");
        assert_ne!(claim, ORDERS_CLAIM);
        let sts = build_json(&claim, ORDERS_SERVICE, statefulset);
        let pod = &sts["spec"]["template"];
        assert!(pod["metadata"].get("annotations").is_none());
        assert_eq!(pod["spec"]["volumes"].as_array().unwrap().len(), 1);
        assert!(pod["spec"]["containers"][0].get("args").is_none());
    }

    /// `f` of `claim_yaml`'s inputs, with the certificate and files its
    /// instance has.
    fn with_instance<T>(
        claim_yaml: &str,
        tls: &tls::InstanceTls,
        files: &[(&'static str, &str)],
        f: impl Fn(&Inputs) -> T,
    ) -> T {
        let claim = crate::children::fixtures::claim(claim_yaml);
        let service = crate::children::fixtures::service(ORDERS_SERVICE);
        let credentials = crate::children::Credentials {
            admin_password: "pw".into(),
            instance: crate::children::InstanceFiles {
                tls: Some(tls.clone()),
                files: files.iter().map(|(k, v)| (*k, v.to_string())).collect(),
            },
            ..Default::default()
        };
        let platform = crate::children::Platform::default();
        f(&Inputs {
            claim: &claim,
            service: &service,
            credentials: &credentials,
            platform: &platform,
        })
    }

    fn postgres_with(tls: &tls::InstanceTls, hba: &str) -> serde_json::Value {
        with_instance(ORDERS_CLAIM, tls, &[("pg_hba.conf", hba)], |i| {
            serde_json::to_value(statefulset(i)).unwrap()
        })
    }

    #[test]
    fn a_dedicated_postgres_serves_tls_only_with_its_files_from_its_admin_secret() {
        let tls = tls::InstanceTls::issue("orders-db", "orders-db").unwrap();
        let sts = postgres_with(&tls, "hostssl all all all scram-sha-256\n");
        let pod = &sts["spec"]["template"];
        let container = &pod["spec"]["containers"][0];
        assert_eq!(
            container["args"],
            json!([
                "postgres",
                "-c",
                "ssl=on",
                "-c",
                "ssl_cert_file=/etc/dbps/tls/tls.crt",
                "-c",
                "ssl_key_file=/etc/dbps/tls/tls.key",
                "-c",
                "hba_file=/etc/dbps/pg_hba.conf"
            ])
        );
        let mounts = container["volumeMounts"].as_array().unwrap();
        assert!(mounts.contains(&json!({
            "name": "tls", "mountPath": "/etc/dbps/tls", "readOnly": true
        })));
        assert!(mounts.contains(&json!({
            "name": "first-boot", "mountPath": "/etc/dbps/pg_hba.conf",
            "subPath": "pg_hba.conf", "readOnly": true
        })));
        let volumes = pod["spec"]["volumes"].as_array().unwrap();
        let files = volumes.iter().find(|v| v["name"] == "first-boot").unwrap();
        assert_eq!(
            files["secret"],
            json!({
                "secretName": "orders-db-admin", "defaultMode": 0o440,
                "items": [{ "key": "pg_hba.conf", "path": "pg_hba.conf" }]
            }),
            "the file alone, not the password"
        );
        // The server reads its certificate and its file at start: a change
        // of either restarts it, and nothing else does.
        let annotations = &pod["metadata"]["annotations"];
        assert_eq!(annotations[TLS_ANNOTATION], tls.digest());
        let again = postgres_with(&tls, "hostssl all all all scram-sha-256\n");
        assert_eq!(sts, again);
        let edited = postgres_with(&tls, "host all all all trust\n");
        let edited = &edited["spec"]["template"]["metadata"]["annotations"];
        assert_ne!(edited[FILES_ANNOTATION], annotations[FILES_ANNOTATION]);
        assert_eq!(edited[TLS_ANNOTATION], annotations[TLS_ANNOTATION]);
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
