//! The dbps API, group `dbps.io`, version `v1alpha1`. Doc comments here become
//! the schema descriptions `kubectl explain` shows.

// kube's printcolumn(..) attributes repeat `type_ = "string"` by design.
#[allow(clippy::duplicated_attributes)]
mod claim;
mod condition;
mod reason;
#[allow(clippy::duplicated_attributes)]
mod server;
#[allow(clippy::duplicated_attributes)]
mod service;

pub use claim::*;
pub use condition::*;
pub use reason::Reason;
pub use server::*;
pub use service::*;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// API group of every dbps resource.
pub const GROUP: &str = "dbps.io";

/// Every CRD dbps serves, in a stable order.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![Service::crd(), DatabaseClaim::crd(), DatabaseServer::crd()]
}

/// The CRDs as one multi-document YAML stream, as committed in `crds/`.
pub fn crds_yaml() -> String {
    crds()
        .iter()
        .map(|crd| serde_yaml::to_string(crd).expect("CRDs serialize"))
        .collect::<Vec<_>>()
        .join("---\n")
}
