//! What differs between engines for a dedicated instance: image, port, how
//! the instance is told its superuser, how readiness is probed, and the
//! servicebinding.io type and URI of a binding. Everything else (users,
//! databases, rotation) is administered over the wire, as on shared servers.

mod influxdb;
mod mongodb;
mod postgres;

use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, Probe, SecretKeySelector};

pub use crate::api::Engine;

/// Key of the username in admin and binding Secrets.
pub const USERNAME_KEY: &str = "username";
/// Key of the password in admin and binding Secrets.
pub const PASSWORD_KEY: &str = "password";

/// A dedicated instance as the engine needs to know it at first boot: only
/// the Secret holding its superuser.
pub struct Instance<'a> {
    pub admin_secret: &'a str,
}

impl Engine {
    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Postgres => "postgres",
            Engine::Mongodb => "mongodb",
            Engine::Influxdb => "influxdb",
        }
    }

    /// servicebinding.io `type`.
    pub fn binding_type(self) -> &'static str {
        match self {
            Engine::Postgres => "postgresql",
            Engine::Mongodb => "mongodb",
            Engine::Influxdb => "influxdb",
        }
    }

    pub fn port(self) -> u16 {
        match self {
            Engine::Postgres => 5432,
            Engine::Mongodb => 27017,
            Engine::Influxdb => 8086,
        }
    }

    pub fn default_version(self) -> &'static str {
        match self {
            Engine::Postgres => "17",
            Engine::Mongodb => "8.0",
            Engine::Influxdb => "1.11",
        }
    }

    /// Repository of the official image, used unless the platform names another.
    pub fn image_repository(self) -> &'static str {
        match self {
            Engine::Postgres => "postgres",
            Engine::Mongodb => "mongo",
            Engine::Influxdb => "influxdb",
        }
    }

    /// The official image of `version`.
    pub fn image(self, version: &str) -> String {
        format!("{}:{version}", self.image_repository())
    }

    /// The instance superuser, kept for the operator.
    pub fn admin_username(self) -> &'static str {
        "dbps_admin"
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

    /// UID and GID the official image runs its server as.
    pub fn run_as(self) -> i64 {
        match self {
            Engine::Postgres | Engine::Mongodb => 999,
            Engine::Influxdb => 1000,
        }
    }

    /// Where the instance keeps its data (the volume's mount path).
    pub fn data_path(self) -> &'static str {
        match self {
            Engine::Postgres => "/var/lib/postgresql/data",
            Engine::Mongodb => "/data/db",
            Engine::Influxdb => "/var/lib/influxdb",
        }
    }

    /// Environment of the instance container; passwords only by `secretKeyRef`.
    pub fn env(self, instance: &Instance) -> Vec<EnvVar> {
        match self {
            Engine::Postgres => postgres::env(instance),
            Engine::Mongodb => mongodb::env(instance),
            Engine::Influxdb => influxdb::env(instance),
        }
    }

    pub fn readiness_probe(self) -> Probe {
        let check = match self {
            Engine::Postgres => postgres::readiness(),
            Engine::Mongodb => mongodb::readiness(),
            Engine::Influxdb => influxdb::readiness(),
        };
        Probe {
            period_seconds: Some(5),
            timeout_seconds: Some(3),
            failure_threshold: Some(6),
            ..check
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
        let (u, p) = (percent_encode(username), percent_encode(password));
        match (self, tls) {
            (Engine::Postgres, false) => format!("postgresql://{u}:{p}@{host}:{port}/{database}"),
            (Engine::Postgres, true) => {
                format!("postgresql://{u}:{p}@{host}:{port}/{database}?sslmode=verify-full")
            }
            (Engine::Mongodb, tls) => format!(
                "mongodb://{u}:{p}@{host}:{port}/{database}?authSource={database}{}",
                if tls { "&tls=true" } else { "" }
            ),
            (Engine::Influxdb, tls) => {
                format!(
                    "{}://{u}:{p}@{host}:{port}/?db={database}",
                    if tls { "https" } else { "http" }
                )
            }
        }
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

    const INSTANCE: Instance = Instance {
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
    }

    #[test]
    fn passwords_reach_containers_only_by_secret_reference() {
        for engine in [Engine::Postgres, Engine::Mongodb, Engine::Influxdb] {
            let env = engine.env(&INSTANCE);
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
        for engine in [Engine::Postgres, Engine::Mongodb, Engine::Influxdb] {
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
