use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// Label dbps puts on every object it makes for a claim.
pub const CLAIM_LABEL: &str = "dbps.io/claim";

/// The major version of `v` (the spec's version or the engine's default),
/// as a CEL expression over `v`; the defaults must match
/// [`Engine::default_version`].
macro_rules! cel_major {
    ($v:literal) => {
        concat!(
            "int((has(",
            $v,
            ".version) ? ",
            $v,
            ".version : (",
            $v,
            ".engine == 'postgres' ? '17' : (",
            $v,
            ".engine == 'mongodb' ? '8.0' : (",
            $v,
            ".engine == 'opensearch' ? '2.19.4' : '1.11')))).split('.')[0])"
        )
    };
}

/// CEL: the major version of a dedicated claim never goes down.
const MAJOR_DOWNGRADE: &str = concat!(
    "has(self.server) || ",
    cel_major!("self"),
    " >= ",
    cel_major!("oldSelf")
);
/// CEL: nor up: a major upgrade needs a data migration.
const MAJOR_UPGRADE: &str = concat!(
    "has(self.server) || ",
    cel_major!("self"),
    " <= ",
    cel_major!("oldSelf")
);

/// One database owned by one `Service`. Without `server`, dbps runs a
/// dedicated instance for it (StatefulSet with a volume); with `server`, it
/// carves a database and a user out of a registered `DatabaseServer`. Either
/// way the service gets a servicebinding.io Secret only its ServiceAccount can
/// read. A dedicated instance is fenced by a NetworkPolicy that admits only
/// the service's pods (and the operator's); a shared server keeps the claim's
/// user out of other databases by its own grants.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "dbps.io",
    version = "v1alpha1",
    kind = "DatabaseClaim",
    namespaced,
    shortname = "dbc",
    shortname = "dbclaim",
    category = "dbps",
    status = "DatabaseClaimStatus",
    printcolumn(name = "Engine", type_ = "string", json_path = ".spec.engine"),
    printcolumn(name = "Service", type_ = "string", json_path = ".spec.serviceRef.name"),
    printcolumn(name = "Server", type_ = "string", json_path = ".spec.server.name", priority = 1),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Binding", type_ = "string", json_path = ".status.binding.name", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.metadata.name.matches('^[a-z]([-a-z0-9]{0,38}[a-z0-9])?$')").message("metadata.name must be a DNS label of at most 40 characters that starts with a letter: it names the database's Kubernetes objects")
)]
#[x_kube(
    validation = Rule::new("!has(self.server) || (!has(self.storage) && !has(self.resources))").message("storage and resources apply to dedicated instances only: remove them, or remove server for a dedicated instance"),
    validation = Rule::new("has(self.server) == has(oldSelf.server) && (!has(self.server) || self.server == oldSelf.server)").message("server is immutable: placement cannot change after creation"),
    validation = Rule::new("has(self.database) == has(oldSelf.database) && (!has(self.database) || self.database == oldSelf.database)").message("database is immutable"),
    validation = Rule::new("has(self.storage) == has(oldSelf.storage) && (!has(self.storage) || self.storage == oldSelf.storage)").message("storage is immutable: the volume of a running instance cannot change"),
    validation = Rule::new("!has(self.server) || !has(self.version)").message("version describes a dedicated instance; a shared claim runs on the server's version: remove version"),
    validation = Rule::new("!has(self.extensions) || size(self.extensions) == 0 || self.engine == 'postgres'").message("extensions are PostgreSQL's: remove them, or use engine postgres"),
    validation = Rule::new("!has(self.readers) || size(self.readers) == 0 || self.engine != 'mongodb'").message("readers: read-only grants are made on postgres and influxdb"),
    validation = Rule::new("!has(self.readers) || self.engine != 'postgres' || self.readers.all(r, has(r.tables) && size(r.tables) > 0)").message("readers: on postgres each reader names the tables or views it may read"),
    validation = Rule::new("!has(self.readers) || !(self.engine in ['influxdb', 'opensearch']) || self.readers.all(r, !has(r.tables) || size(r.tables) == 0)").message("readers: InfluxDB and OpenSearch grant read on the whole database; remove tables"),
    validation = Rule::new("!has(self.readers) || self.readers.all(r, has(r.namespace) || r.service != self.serviceRef.name)").message("readers: the owning Service reads its database already"),
    validation = Rule::new("!has(self.profile) || (self.engine == 'postgres' && has(self.server))").message("profile PCI needs a PostgreSQL database on a registered DatabaseServer (spec.server) whose TLS and audit log the platform runs"),
    validation = Rule::new("!has(self.profile) || self.deletionPolicy == 'Retain'").message("profile PCI keeps the data: deletionPolicy must be Retain"),
    validation = Rule::new("!has(self.profile) || (has(self.rotation) && has(self.rotation.everySeconds) && self.rotation.everySeconds <= 7776000)").message("profile PCI rotates credentials at least every 90 days: set rotation.everySeconds (at most 7776000)"),
    validation = Rule::new("!has(oldSelf.profile) || (has(self.profile) && self.profile == oldSelf.profile)").message("profile cannot be removed or changed once set"),
    validation = Rule::new(MAJOR_DOWNGRADE).message("version: a major downgrade cannot start on the data directory of a newer major version; keep the current major version"),
    validation = Rule::new(MAJOR_UPGRADE).message("version: a major upgrade of a running instance is refused; move the data to a new claim with the new version (dump and restore, see docs/operations.md#major-upgrades) and switch the service's binding")
)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseClaimSpec {
    /// The `Service` (dbps.io) in this namespace that owns the database. Immutable.
    #[x_kube(validation = Rule::new("self == oldSelf").message("serviceRef is immutable: a database cannot change owner"))]
    pub service_ref: ServiceRef,

    /// Database engine: `postgres`, `mongodb`, `influxdb` (1.x API) or
    /// `opensearch`. Immutable.
    #[x_kube(validation = Rule::new("self == oldSelf").message("engine is immutable"))]
    pub engine: Engine,

    /// Engine version of a dedicated instance (its image tag), e.g. `17` for
    /// postgres. Default per engine: postgres 17, mongodb 8.0, influxdb 1.11,
    /// opensearch 2.19.4.
    /// Minor versions change in place; the major version cannot change (a
    /// downgrade cannot read newer data, an upgrade needs a migration). Not
    /// for shared claims, which run on their server's version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+){0,2}$"))]
    pub version: Option<String>,

    /// Name of the database inside the engine. Default: the claim's name with
    /// `-` turned into `_`. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z_][a-z0-9_]{0,58}$"))]
    pub database: Option<String>,

    /// What happens to the data and credentials when the claim is deleted:
    /// `Retain` (default) keeps the volume (or the shared database) and the
    /// Secrets; `Delete` removes them.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,

    /// A registered `DatabaseServer` to carve the database out of (shared
    /// placement). Absent: a dedicated instance. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerRef>,

    /// Volume of a dedicated instance. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<Storage>,

    /// CPU and memory of a dedicated instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Credential rotation, for every placement. A rotation also happens when
    /// the annotation `dbps.io/rotate` takes a new value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<Rotation>,

    /// PostgreSQL extensions the operator creates in the database, as the
    /// server's superuser, from the platform's allow-list only: the
    /// `DatabaseServer`'s `allowedExtensions` (shared placement), or the
    /// operator's `--postgres-extensions` (dedicated instances). The
    /// database's owner gets every privilege on what an extension makes. An
    /// entry removed from this list drops its extension, unless objects of
    /// the database depend on it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub extensions: Vec<Extension>,

    /// Other Services that may read this database (a reporting service):
    /// each gets a read-only user of its own, limited to the named tables
    /// and views on PostgreSQL (the whole database on InfluxDB), and a
    /// binding Secret in its own namespace that only its ServiceAccount
    /// reads: `<claim>-reader-<service>`, or
    /// `<claim-namespace>-<claim>-reader-<service>` in another namespace. Removing an entry revokes it: the user is
    /// dropped and the Secret deleted. Every grant is listed in
    /// `status.readers` and told by an event.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["service"]))]
    pub readers: Vec<Reader>,

    /// A compliance profile the database must meet, checked by the operator
    /// on every reconcile and shown in the `Compliant` condition. `PCI`
    /// (cardholder data): PostgreSQL on a registered server that refuses
    /// unencrypted connections, with pgAudit loaded (the operator turns its
    /// log on for the database); `deletionPolicy: Retain`; credentials
    /// rotated at least every 90 days; the server's admin Secret readable by
    /// no ServiceAccount of the claim's namespace. A new claim gets nothing
    /// until the profile is met. Cannot be removed once set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<Profile>,
}

/// A Service that may read a claim's database.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Reader {
    /// Name of a `Service` (dbps.io) in the claim's namespace.
    #[schemars(
        length(min = 1, max = 40),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub service: String,
    /// Its namespace. Default: the claim's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub namespace: Option<String>,
    /// Tables and views it may `SELECT` (PostgreSQL): `name` in schema
    /// `public`, or `schema.name`. One not made yet is granted once it exists.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), extend("x-kubernetes-list-type" = "set"), inner(length(max = 127), regex(pattern = r"^[a-z_][a-z0-9_]{0,62}(\.[a-z_][a-z0-9_]{0,62})?$")))]
    pub tables: Vec<String>,
}

/// A read-only grant in force.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReaderStatus {
    /// The reading Service.
    pub service: String,
    /// Its namespace.
    pub namespace: String,
    /// Its binding Secret, in its namespace.
    pub binding: String,
    /// Its read-only user.
    pub username: String,
    /// What it may read now.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tables: Vec<String>,
    /// Tables it is granted that do not exist yet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waiting: Vec<String>,
    /// Fingerprint of the password its Secret holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
}

/// A compliance profile.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum Profile {
    /// PCI DSS: cardholder data.
    #[serde(rename = "PCI")]
    Pci,
}

/// A PostgreSQL extension of a claim's database.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.schema) == has(oldSelf.schema) && (!has(self.schema) || self.schema == oldSelf.schema)").message("an extension's schema is immutable: remove its entry (which drops the extension), then add it again"))]
pub struct Extension {
    /// Name of the extension, as in `pg_available_extensions` (e.g. `pg_partman`).
    #[schemars(length(max = 63), regex(pattern = r"^[a-z_][a-z0-9_-]{0,62}$"))]
    pub name: String,
    /// Schema to create it in, made (owned by the database's owner) when
    /// missing. Default: the extension's own choice, usually `public`.
    /// Immutable once created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63), regex(pattern = r"^[a-z_][a-z0-9_]{0,62}$"))]
    #[x_kube(validation = Rule::new("!self.startsWith('pg_') && self != 'information_schema'").message("schema: pg_* and information_schema are PostgreSQL's own"))]
    pub schema: Option<String>,
}

/// How credentials rotate: each rotation issues a new user and password in a
/// new immutable binding Secret, points `status.binding.name` at it, and
/// writes them into the stable binding `<claim>-binding` as well (a pod that
/// mounts it as files gets them when the kubelet refreshes the volume, with
/// no restart); the previous credentials keep working for the grace period
/// (make it longer than the kubelet's refresh, a minute or two), then are
/// revoked.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Rotation {
    /// Rotate this often (seconds, at least 60). Absent: only on request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 60))]
    pub every_seconds: Option<i64>,
    /// How long the previous credentials keep working (seconds). Default 300.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 86400))]
    pub grace_period_seconds: Option<i64>,
}

/// Reference to the owning `Service`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ServiceRef {
    /// Name of a `Service` (dbps.io) in the claim's namespace.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
}

/// Reference to a `DatabaseServer`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ServerRef {
    /// Name of a cluster-scoped `DatabaseServer`.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub name: String,
}

/// Database engine.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// PostgreSQL.
    Postgres,
    /// MongoDB.
    Mongodb,
    /// InfluxDB, 1.x API.
    Influxdb,
    /// OpenSearch (the Elasticsearch API), with its security plugin: a
    /// claim's "database" is an index prefix.
    Opensearch,
}

impl Engine {
    /// Every engine.
    pub const ALL: [Engine; 4] = [
        Engine::Postgres,
        Engine::Mongodb,
        Engine::Influxdb,
        Engine::Opensearch,
    ];

    /// The engine's name in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Postgres => "postgres",
            Engine::Mongodb => "mongodb",
            Engine::Influxdb => "influxdb",
            Engine::Opensearch => "opensearch",
        }
    }
}

/// What deleting a claim does to its data.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
pub enum DeletionPolicy {
    /// Keep the data and the Secrets.
    #[default]
    Retain,
    /// Remove the data and the Secrets.
    Delete,
}

/// Volume of a dedicated instance.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Storage {
    /// Size of the volume, a positive quantity such as `10Gi`. Default `1Gi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("isQuantity(self) && quantity(self).isGreaterThan(quantity('0'))").message("size must be a positive quantity such as 10Gi"))]
    pub size: Option<String>,
    /// StorageClass of the volume. Default: the cluster's default class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub storage_class_name: Option<String>,
}

/// Lifecycle phase of a claim.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum ClaimPhase {
    /// Waiting for something the claim refers to (its Service, its server).
    Pending,
    /// Objects created, database not ready yet.
    Provisioning,
    /// The database accepts the service's credentials.
    Ready,
    /// The claim cannot be fulfilled as written; see the Ready condition.
    Failed,
    /// Cleanup is running.
    Deleting,
}

/// What the operator observed of a claim.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseClaimStatus {
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Summary of the `Ready` condition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<ClaimPhase>,
    /// `Ready`, with a reason such as `Provisioning`, `ServiceNotFound`,
    /// `InvalidSpec` or `Ready`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The servicebinding.io binding Secret (Provisioned Service duck type).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binding: Option<Binding>,
    /// Where the database listens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<Endpoint>,
    /// Which credentials are issued, and their fingerprints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<CredentialsStatus>,
    /// Name of the database on its server (shared placement).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// Extensions dbps created in the database, with their versions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extensions: Vec<ExtensionStatus>,
    /// The read-only grants to other Services in force.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub readers: Vec<ReaderStatus>,
}

/// An extension in a claim's database.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub struct ExtensionStatus {
    /// Its name.
    pub name: String,
    /// Its installed version.
    pub version: String,
}

/// The credentials in force and the ones still in their grace period.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsStatus {
    /// Number of rotations so far.
    pub generation: i64,
    /// When the current credentials were issued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_at: Option<Time>,
    /// The `dbps.io/rotate` annotation value last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<String>,
    /// The previous credentials, valid until `expiresAt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<PreviousCredentials>,
    /// Fingerprint (salted SHA-256, not the password) of the password in the
    /// binding Secret in force: a Secret edited by hand no longer matches it,
    /// and is replaced rather than believed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// Fingerprint of the superuser password of a dedicated instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_fingerprint: Option<String>,
}

/// Credentials replaced by a rotation, still working until they expire.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PreviousCredentials {
    /// Their binding Secret.
    pub secret: String,
    /// Their user.
    pub username: String,
    /// When they are revoked.
    pub expires_at: Time,
}

/// servicebinding.io Provisioned Service: the Secret holding the binding.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub struct Binding {
    /// Name of the Secret in the claim's namespace.
    pub name: String,
}

/// Network address of a database.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub struct Endpoint {
    /// Host name.
    pub host: String,
    /// TCP port.
    pub port: i32,
}

impl Reader {
    /// The reader's namespace, for a claim in `claim_namespace`.
    pub fn namespace_or<'a>(&'a self, claim_namespace: &'a str) -> &'a str {
        self.namespace.as_deref().unwrap_or(claim_namespace)
    }
}

impl DatabaseClaim {
    /// The database name inside the engine.
    pub fn database_name(&self) -> String {
        self.spec.database.clone().unwrap_or_else(|| {
            self.metadata
                .name
                .clone()
                .unwrap_or_default()
                .replace('-', "_")
        })
    }
}
