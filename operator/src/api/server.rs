use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::Engine;

/// An existing database server (in the cluster or managed, e.g. RDS),
/// registered by the platform team so claims can get a database and a
/// least-privileged user inside it.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "dbps.io",
    version = "v1alpha1",
    kind = "DatabaseServer",
    shortname = "dbsrv",
    category = "dbps",
    status = "DatabaseServerStatus",
    printcolumn(name = "Engine", type_ = "string", json_path = ".spec.engine"),
    printcolumn(name = "Host", type_ = "string", json_path = ".spec.host"),
    printcolumn(name = "Version", type_ = "string", json_path = ".status.version"),
    printcolumn(name = "Claims", type_ = "integer", json_path = ".status.claims"),
    printcolumn(
        name = "Reachable",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Reachable\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(
    validation = Rule::new("!(has(self.allowedNamespaces) && has(self.namespaceSelector))").message("set allowedNamespaces or namespaceSelector, not both"),
    validation = Rule::new("!has(self.allowedExtensions) || size(self.allowedExtensions) == 0 || self.engine == 'postgres'").message("allowedExtensions are PostgreSQL's: remove them")
)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseServerSpec {
    /// Engine of the server. Immutable.
    #[x_kube(validation = Rule::new("self == oldSelf").message("engine is immutable"))]
    pub engine: Engine,
    /// Host name or address the operator and the services reach the server at.
    #[schemars(length(min = 1, max = 253))]
    pub host: String,
    /// TCP port. Default per engine: 5432, 27017, 8086.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
    /// Secret with keys `username` and `password` of an administrative user.
    pub admin_secret_ref: SecretRef,
    /// TLS to the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ServerTls>,
    /// Namespaces whose claims may use this server. Default (with no
    /// `namespaceSelector` either): every namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_namespaces: Option<Vec<String>>,
    /// Labels of the namespaces whose claims may use this server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// Administrative connections the operator opens to this server at
    /// once: its claims are set up this many at a time (the others wait
    /// their turn, without holding up claims on other servers). Default 4;
    /// PostgreSQL creates databases no faster with more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 64))]
    pub max_connections: Option<i32>,
    /// PostgreSQL extensions claims on this server may ask for
    /// (`spec.extensions`); the operator creates them as this server's admin
    /// user, so that user must be allowed to (a superuser for untrusted
    /// extensions). Allow only extensions whose functions act within their
    /// own database: the claim's service gets every privilege on what one
    /// makes. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), extend("x-kubernetes-list-type" = "set"))]
    #[schemars(inner(length(max = 63)))]
    #[x_kube(validation = Rule::new("self.all(e, e.matches('^[a-z_][a-z0-9_-]{0,62}$'))").message("allowedExtensions: each entry is an extension's name, such as pg_partman"))]
    pub allowed_extensions: Option<Vec<String>>,
    /// Pre-existing databases that named claims may take over (migrations).
    /// Without an entry here, a claim never touches a database or user that
    /// dbps did not make; with one, that claim gets the database under its
    /// existing name, and its users' names if they exist. A database that
    /// another claim owns is never adopted. Each database at most once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["database"]))]
    pub adoptions: Option<Vec<Adoption>>,
}

/// A database on the server that one claim may adopt.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(self.database in ['postgres', 'template0', 'template1', 'admin', 'config', 'local', '_internal'])").message("a server's own databases cannot be adopted"))]
pub struct Adoption {
    /// Name of the database on the server.
    #[schemars(regex(pattern = r"^[A-Za-z_][A-Za-z0-9_]{0,62}$"))]
    pub database: String,
    /// The claim that may adopt it.
    pub claim: ClaimRef,
}

/// A claim in a namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ClaimRef {
    /// Namespace of the claim.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub namespace: String,
    /// Name of the claim.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
}

/// A Secret in a given namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SecretRef {
    /// Namespace of the Secret.
    #[schemars(length(min = 1, max = 63))]
    pub namespace: String,
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// TLS settings for connections to a server.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ServerTls {
    /// Connect over TLS.
    #[serde(default)]
    pub enabled: bool,
    /// Secret with key `ca.crt`, the CA that signed the server's certificate.
    /// Default: the operator's system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretRef>,
}

/// What the operator observed of a server.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseServerStatus {
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Reachable`, with a reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Version the server reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Number of claims placed on the server.
    #[serde(default)]
    pub claims: i32,
}
