use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::ClaimPhase;

/// Label every pod of a service carries by default, and that dbps puts on
/// the objects it makes for that service.
pub const SERVICE_LABEL: &str = "dbps.io/service";

/// One microservice: the unit of data ownership. Its `DatabaseClaim`s give
/// it databases that only its pods (matched by `selector`) can reach and only
/// its ServiceAccount can read the credentials of.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "dbps.io",
    version = "v1alpha1",
    kind = "Service",
    namespaced,
    shortname = "dsvc",
    category = "dbps",
    status = "ServiceStatus",
    printcolumn(name = "Account", type_ = "string", json_path = ".status.serviceAccountName"),
    printcolumn(name = "Databases", type_ = "integer", json_path = ".status.databaseCount"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.metadata.name.matches('^[a-z]([-a-z0-9]{0,38}[a-z0-9])?$')").message("metadata.name must be a DNS label of at most 40 characters that starts with a letter")
)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// Labels (matchLabels) of the pods that are this service; only these pods
    /// may connect to its databases. Default: `dbps.io/service: <name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.size() > 0").message("selector must name at least one label; omit it for the default dbps.io/service: <name>"))]
    pub selector: Option<BTreeMap<String, String>>,

    /// The ServiceAccount the service's pods run as; only it may read the
    /// credentials of the service's databases. Default: the service's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub service_account_name: Option<String>,
}

impl Service {
    /// The pod labels that identify this service.
    pub fn pod_selector(&self) -> BTreeMap<String, String> {
        self.spec.selector.clone().unwrap_or_else(|| {
            BTreeMap::from([(
                SERVICE_LABEL.to_string(),
                self.metadata.name.clone().unwrap_or_default(),
            )])
        })
    }

    /// The ServiceAccount allowed to read this service's credentials.
    pub fn service_account(&self) -> String {
        self.spec
            .service_account_name
            .clone()
            .unwrap_or_else(|| self.metadata.name.clone().unwrap_or_default())
    }
}

/// What the operator observed of a `Service`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStatus {
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` is True when every database of the service is Ready.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The effective ServiceAccount.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// Number of databases (claims) the service owns.
    #[serde(default)]
    pub database_count: i32,
    /// The service's databases and their phases.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub databases: Vec<ServiceDatabase>,
}

/// One database of a service.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceDatabase {
    /// Name of the `DatabaseClaim`.
    pub claim: String,
    /// Engine of the database.
    pub engine: super::Engine,
    /// Phase of the claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<ClaimPhase>,
}
