//! One module per engine. Each implements two traits: the [`Instance`] (how
//! a dedicated instance runs: image, port, data path, how it is told its
//! superuser, how readiness is probed, what a binding says) and the
//! [`Administration`] (database, users, passwords, revocation and drops over
//! the wire, the same for a dedicated instance and a registered shared
//! server). `module` is the one place an API [`Engine`] maps to them.
//!
//! Adding an engine: a folder here with its two implementations, a variant
//! of [`Engine`] (and [`Engine::ALL`]), an arm of `module`, and its local
//! test server in the end-to-end support.

mod admin;
mod influxdb;
mod mongodb;
mod opensearch;
pub mod ownership;
mod postgres;

use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, Probe, SecretKeySelector};

pub use crate::api::Engine;
pub use admin::{
    AdminError, Administration, CATALOG, Claimant, Conflict, Connection,
    DEFAULT_CONNECTIONS_PER_SERVER, Dropped, Extensions, Grant, Inventory,
    MAX_CONNECTIONS_PER_SERVER, Mark, ObjectKind, Presence, Provisioned, ReadGrant, ServerInfo,
    TIMEOUT, Tls, Verdict, bounded,
};

/// Key of the username in admin and binding Secrets.
pub const USERNAME_KEY: &str = "username";
/// Key of the password in admin and binding Secrets.
pub const PASSWORD_KEY: &str = "password";

/// The one place an API engine maps to its module.
fn module(engine: Engine) -> (&'static dyn Instance, &'static dyn Administration) {
    match engine {
        Engine::Postgres => (&postgres::Postgres, &postgres::Postgres),
        Engine::Mongodb => (&mongodb::Mongodb, &mongodb::Mongodb),
        Engine::Influxdb => (&influxdb::Influxdb, &influxdb::Influxdb),
        Engine::Opensearch => (&opensearch::Opensearch, &opensearch::Opensearch),
    }
}

/// A dedicated instance as the engine needs to know it at first boot: its
/// name and the Secret holding its superuser (and, for an instance that
/// serves TLS only, its certificate).
pub struct InstanceSecrets<'a> {
    pub name: &'a str,
    pub admin_secret: &'a str,
}

/// A file the instance reads besides its environment, made by the operator
/// and held in the instance's admin Secret (OpenSearch: the internal user
/// database with the admin's hash, read at first boot; PostgreSQL: its
/// client authentication file, read at every start).
pub struct InstanceFile {
    /// Key in the admin Secret.
    pub key: &'static str,
    /// Where the container reads it.
    pub path: &'static str,
    /// Makes the contents from the superuser's password.
    pub make: fn(&str) -> Result<String, String>,
    /// Whether the contents are always what `make` gives, so an edit of the
    /// Secret is put back (a file read at every start), or made once and
    /// kept (a file read at first boot only, made with a salt: made anew it
    /// would differ for nothing).
    pub enforced: bool,
}

/// How a dedicated instance of an engine runs. The image contract each
/// engine documents: on an empty data directory the server makes only its
/// superuser from the environment; everything else is administered over the
/// wire.
pub trait Instance: Sync {
    /// servicebinding.io `type`.
    fn binding_type(&self) -> &'static str;
    /// The port the server listens on.
    fn port(&self) -> u16;
    /// The version a claim gets when it names none.
    fn default_version(&self) -> &'static str;
    /// Repository of the official image, used unless the platform names another.
    fn image_repository(&self) -> &'static str;
    /// UID and GID the image runs its server as.
    fn run_as(&self) -> i64;
    /// Where the instance keeps its data (the volume's mount path).
    fn data_path(&self) -> &'static str;
    /// Environment of the instance container; passwords only by `secretKeyRef`.
    fn env(&self, secrets: &InstanceSecrets) -> Vec<EnvVar>;
    /// How the kubelet tells the server answers (the timing is every engine's).
    fn readiness(&self) -> Probe;
    /// Connection URI of a binding; `userinfo` is `user:password`, already
    /// percent-encoded.
    fn uri(&self, userinfo: &str, host: &str, port: u16, database: &str, tls: bool) -> String;
    /// servicebinding.io keys a binding over TLS adds for this engine.
    fn tls_binding_entries(&self) -> &'static [(&'static str, &'static str)] {
        &[]
    }
    /// Keys of its own a binding of `database` carries (OpenSearch: the
    /// index prefix).
    fn binding_entries(&self, _database: &str) -> Vec<(&'static str, String)> {
        Vec::new()
    }
    /// The superuser the instance image makes (`dbps_admin` where the image
    /// lets it be named).
    fn admin_username(&self) -> &'static str {
        "dbps_admin"
    }
    /// Memory (request, limit) of an instance whose claim names no resources.
    fn default_memory(&self) -> (&'static str, &'static str) {
        ("256Mi", "1Gi")
    }
    /// Where the instance reads `ca.crt`, `tls.crt` and `tls.key` when it
    /// serves TLS only, from a CA the operator makes for it alone.
    fn tls_dir(&self) -> Option<&'static str> {
        None
    }
    /// Arguments of the instance container, in place of its image's command
    /// arguments (none: the image's own).
    fn args(&self) -> Vec<String> {
        Vec::new()
    }
    /// Files it reads besides its environment (see [`InstanceFile`]).
    fn files(&self) -> &'static [InstanceFile] {
        &[]
    }
}

impl Engine {
    /// How a dedicated instance of this engine runs.
    pub fn instance(self) -> &'static dyn Instance {
        module(self).0
    }

    /// How a server of this engine is administered.
    pub fn admin(self) -> &'static dyn Administration {
        module(self).1
    }

    /// The official image of `version`.
    pub fn image(self, version: &str) -> String {
        format!("{}:{version}", self.instance().image_repository())
    }

    /// The instance superuser, kept for the operator.
    pub fn admin_username(self) -> &'static str {
        self.instance().admin_username()
    }

    /// The app's user of credentials generation `generation`: two users
    /// alternate, so the previous one keeps working through a rotation's grace
    /// period. Never the superuser.
    pub fn app_username(self, database: &str, generation: i64) -> String {
        match generation % 2 {
            0 => format!("{database}_app"),
            _ => format!("{database}_app2"),
        }
    }

    /// The engine's readiness check with the timing every engine shares.
    pub fn readiness_probe(self) -> Probe {
        Probe {
            period_seconds: Some(5),
            timeout_seconds: Some(3),
            failure_threshold: Some(6),
            ..self.instance().readiness()
        }
    }

    /// Connection URI for the binding.
    pub fn uri(
        self,
        username: &str,
        password: &str,
        host: &str,
        port: u16,
        database: &str,
    ) -> String {
        self.uri_with_tls(username, password, host, port, database, false)
    }

    /// Connection URI for the binding, asking for TLS when `tls`.
    pub fn uri_with_tls(
        self,
        username: &str,
        password: &str,
        host: &str,
        port: u16,
        database: &str,
        tls: bool,
    ) -> String {
        let userinfo = format!("{}:{}", percent_encode(username), percent_encode(password));
        self.instance().uri(&userinfo, host, port, database, tls)
    }
}

/// An env var read from a Secret key.
fn secret_env(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.into(),
                key: key.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn plain_env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

/// RFC 3986 userinfo encoding: unreserved characters stay, others are %XX.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const INSTANCE: InstanceSecrets = InstanceSecrets {
        name: "orders-db",
        admin_secret: "orders-db-admin",
    };

    #[test]
    fn uris_per_engine() {
        assert_eq!(
            Engine::Postgres.uri(
                "orders_app",
                "p@ss/w",
                "h.ns.svc.cluster.local",
                5432,
                "orders"
            ),
            "postgresql://orders_app:p%40ss%2Fw@h.ns.svc.cluster.local:5432/orders"
        );
        assert_eq!(
            Engine::Mongodb.uri("u", "p", "h", 27017, "catalog"),
            "mongodb://u:p@h:27017/catalog?authSource=catalog"
        );
        assert_eq!(
            Engine::Influxdb.uri("u", "p", "h", 8086, "tm"),
            "http://u:p@h:8086/?db=tm"
        );
        assert_eq!(
            Engine::Opensearch.uri_with_tls("u", "p", "h", 9200, "shop_search", true),
            "https://u:p@h:9200"
        );
        assert_eq!(
            Engine::Opensearch.instance().binding_entries("shop_search"),
            [("prefix", "shop_search-".to_string())]
        );
    }

    #[test]
    fn passwords_reach_containers_only_by_secret_reference() {
        for engine in Engine::ALL {
            let env = engine.instance().env(&INSTANCE);
            let secret_refs: Vec<(&str, &str)> = env
                .iter()
                .filter_map(|e| {
                    let r = e.value_from.as_ref()?.secret_key_ref.as_ref()?;
                    Some((r.name.as_str(), r.key.as_str()))
                })
                .collect();
            assert!(
                secret_refs.contains(&("orders-db-admin", PASSWORD_KEY)),
                "{engine:?}"
            );
            // The instance never references the binding: that Secret is the service's.
            assert!(
                secret_refs
                    .iter()
                    .all(|(name, _)| *name == "orders-db-admin"),
                "{engine:?}"
            );
            for e in &env {
                if e.name.contains("PASSWORD") {
                    assert!(e.value.is_none(), "{engine:?} {} is inline", e.name);
                }
            }
        }
    }

    #[test]
    fn app_user_is_not_the_admin() {
        for engine in Engine::ALL {
            for generation in 0..2 {
                assert_ne!(
                    engine.app_username("orders", generation),
                    engine.admin_username()
                );
            }
            assert_ne!(
                engine.app_username("orders", 0),
                engine.app_username("orders", 1)
            );
        }
    }
}
