//! Pure builders: a claim, its Service and its credentials in, the
//! Kubernetes objects of a dedicated instance out. No client here.

mod network_policy;
mod rbac;
mod secrets;
pub mod tls;
mod workload;

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Secret, Service as KubeService};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};

use crate::api::{CLAIM_LABEL, DatabaseClaim, Engine, SERVICE_LABEL, Service};

pub use network_policy::network_policy;
pub use rbac::{binding_reader, binding_reader_role, binding_reader_role_binding};
pub use secrets::{
    CLAIM_NAMESPACE_LABEL, Credentials, Endpoint, InstanceFiles, admin_secret,
    binding_secret_generation, foreign_reader_secret, reader_secret, secret_value,
};
pub use workload::{POD_MANAGEMENT_POLICY, instance_service, statefulset};

/// Field manager of every write the operator makes.
pub const FIELD_MANAGER: &str = "dbps-operator";
pub const MANAGED_BY: &str = "dbps-operator";

/// Deterministic names of a claim's children.
pub mod names {
    pub fn instance(claim: &str) -> String {
        claim.to_string()
    }
    pub fn admin_secret(claim: &str) -> String {
        format!("{claim}-admin")
    }
    pub fn binding_secret(claim: &str) -> String {
        format!("{claim}-binding")
    }
    /// Binding Secret of credentials generation `generation`.
    pub fn binding_secret_of(claim: &str, generation: i64) -> String {
        match generation {
            0 => binding_secret(claim),
            n => format!("{claim}-binding-{n}"),
        }
    }
    /// The binding Secret, in the reader's namespace, of the read-only user
    /// of Service `reader_namespace/service` on the claim's database.
    pub fn reader_secret(
        claim_namespace: &str,
        claim: &str,
        reader_namespace: &str,
        service: &str,
    ) -> String {
        match claim_namespace == reader_namespace {
            true => format!("{claim}-reader-{service}"),
            false => format!("{claim_namespace}-{claim}-reader-{service}"),
        }
    }
    /// The per-claim reader Role and RoleBinding of earlier releases
    /// (now one per Service), removed when found.
    pub fn legacy_binding_reader(claim: &str) -> String {
        format!("{claim}-binding-reader")
    }
    /// The StatefulSet's volume claim template.
    pub const DATA_VOLUME: &str = "data";
    /// The PVC the StatefulSet controller makes for the instance's only pod.
    pub fn data_pvc(claim: &str) -> String {
        format!("{DATA_VOLUME}-{claim}-0")
    }
}

/// The operator's own pods, which a dedicated instance's NetworkPolicy admits
/// on the database port so the operator can administer it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OperatorPods {
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
}

/// What the platform decides for every claim's children.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    /// DNS suffix of in-cluster Services, usually `cluster.local`.
    pub cluster_domain: String,
    /// The operator's pods, when it runs in the cluster.
    pub operator: Option<OperatorPods>,
    /// Image repository per engine where not the official one (a mirror, or
    /// another image keeping the engine's contract); the tag is the claim's version.
    pub image_repositories: Vec<(Engine, String)>,
    /// PostgreSQL extensions claims may ask for in dedicated instances.
    pub postgres_extensions: Vec<String>,
}

impl Default for Platform {
    fn default() -> Self {
        Self {
            cluster_domain: "cluster.local".into(),
            operator: None,
            image_repositories: Vec::new(),
            postgres_extensions: Vec::new(),
        }
    }
}

impl Platform {
    /// The image of `engine` at `version`.
    pub fn image(&self, engine: Engine, version: &str) -> String {
        match self.image_repositories.iter().find(|(e, _)| *e == engine) {
            Some((_, repository)) => format!("{repository}:{version}"),
            None => engine.image(version),
        }
    }
}

/// Everything a claim's children are built from.
pub struct Inputs<'a> {
    pub claim: &'a DatabaseClaim,
    pub service: &'a Service,
    pub credentials: &'a Credentials,
    pub platform: &'a Platform,
}

impl Inputs<'_> {
    pub fn claim_name(&self) -> String {
        self.claim.name_any()
    }
    pub fn namespace(&self) -> String {
        self.claim.namespace().unwrap_or_default()
    }
    pub fn service_name(&self) -> String {
        self.service.name_any()
    }
    pub fn version(&self) -> String {
        self.claim.spec.version.clone().unwrap_or_else(|| {
            self.claim
                .spec
                .engine
                .instance()
                .default_version()
                .to_string()
        })
    }
    /// Fully qualified host of the instance's Service.
    pub fn host(&self) -> String {
        format!(
            "{}.{}.svc.{}",
            names::instance(&self.claim_name()),
            self.namespace(),
            self.platform.cluster_domain
        )
    }

    /// Labels of every child: `app.kubernetes.io/*`, `dbps.io/service`, `dbps.io/claim`.
    pub fn labels(&self, component: &str) -> BTreeMap<String, String> {
        let mut labels = self.pod_labels();
        labels.insert("app.kubernetes.io/component".into(), component.into());
        labels.insert(SERVICE_LABEL.into(), self.service_name());
        labels
    }

    /// Labels of the database pods. They leave out `dbps.io/service`: the
    /// database is not a pod *of* the service (its NetworkPolicy and the
    /// admission policy match service pods by that label).
    pub fn pod_labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (
                "app.kubernetes.io/name".into(),
                self.claim.spec.engine.instance().binding_type().into(),
            ),
            ("app.kubernetes.io/instance".into(), self.claim_name()),
            ("app.kubernetes.io/managed-by".into(), MANAGED_BY.into()),
            (CLAIM_LABEL.into(), self.claim_name()),
        ])
    }

    /// Selector of the database pods.
    pub fn instance_selector(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("app.kubernetes.io/instance".into(), self.claim_name()),
            (CLAIM_LABEL.into(), self.claim_name()),
        ])
    }

    /// Metadata of a child: name, namespace, labels, controller owner reference to the claim.
    pub fn meta(&self, name: String, component: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace()),
            labels: Some(self.labels(component)),
            owner_references: Some(vec![owner_reference(self.claim)]),
            ..Default::default()
        }
    }
}

/// Controller owner reference to the claim.
pub fn owner_reference(claim: &DatabaseClaim) -> OwnerReference {
    claim
        .controller_owner_ref(&())
        .expect("a claim read from the API has a name and uid")
}

/// The children of a dedicated instance. Its users, database and binding
/// Secrets are made over the wire, as on a shared server.
pub struct Dedicated {
    pub admin_secret: Secret,
    pub service: KubeService,
    pub statefulset: StatefulSet,
    pub network_policy: NetworkPolicy,
}

impl Dedicated {
    pub fn build(inputs: &Inputs) -> Self {
        Self {
            admin_secret: admin_secret(inputs),
            service: instance_service(inputs),
            statefulset: statefulset(inputs),
            network_policy: network_policy(inputs),
        }
    }
}

#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;

    pub fn claim(yaml: &str) -> DatabaseClaim {
        let mut claim: DatabaseClaim = serde_yaml::from_str(yaml).expect("claim fixture");
        claim.metadata.uid = Some("5f1e0c3a-claim-uid".into());
        claim
    }

    pub fn service(yaml: &str) -> Service {
        serde_yaml::from_str(yaml).expect("service fixture")
    }

    pub fn credentials() -> Credentials {
        Credentials {
            admin_password: "admin-secret-pw".into(),
            app_password: "app-secret-pw".into(),
            ..Default::default()
        }
    }

    pub const ORDERS_CLAIM: &str = "
apiVersion: dbps.io/v1alpha1
kind: DatabaseClaim
metadata: { name: orders-db, namespace: shop }
spec:
  serviceRef: { name: orders }
  engine: postgres
  storage: { size: 5Gi, storageClassName: fast }
";
    pub const ORDERS_SERVICE: &str = "
apiVersion: dbps.io/v1alpha1
kind: Service
metadata: { name: orders, namespace: shop }
spec: {}
";

    /// Builds with the fixtures above and checks the result as JSON.
    pub fn build_json<T: serde::Serialize>(
        claim_yaml: &str,
        service_yaml: &str,
        f: impl Fn(&Inputs) -> T,
    ) -> serde_json::Value {
        build_json_on(&Platform::default(), claim_yaml, service_yaml, f)
    }

    /// As [`build_json`], with the platform's settings.
    pub fn build_json_on<T: serde::Serialize>(
        platform: &Platform,
        claim_yaml: &str,
        service_yaml: &str,
        f: impl Fn(&Inputs) -> T,
    ) -> serde_json::Value {
        let (claim, service, credentials) =
            (claim(claim_yaml), service(service_yaml), credentials());
        let inputs = Inputs {
            claim: &claim,
            service: &service,
            credentials: &credentials,
            platform,
        };
        serde_json::to_value(f(&inputs)).unwrap()
    }
}
