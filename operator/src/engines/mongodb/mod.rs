//! MongoDB wire protocol. The image contract (official `mongo` image, and a
//! FerretDB image that keeps it): `MONGO_INITDB_ROOT_USERNAME`/`_PASSWORD`
//! make the superuser in `admin` on an empty `/data/db` and switch
//! authentication on; the server listens on 27017. Readiness is a TCP check,
//! so no shell client (`mongosh`) is needed in the image.

mod admin;

use k8s_openapi::api::core::v1::{EnvVar, Probe, TCPSocketAction};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{Instance, InstanceSecrets, PASSWORD_KEY, USERNAME_KEY, secret_env};

fn env(i: &InstanceSecrets) -> Vec<EnvVar> {
    vec![
        secret_env("MONGO_INITDB_ROOT_USERNAME", i.admin_secret, USERNAME_KEY),
        secret_env("MONGO_INITDB_ROOT_PASSWORD", i.admin_secret, PASSWORD_KEY),
    ]
}

fn readiness() -> Probe {
    Probe {
        tcp_socket: Some(TCPSocketAction {
            port: IntOrString::String("db".into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The engine's module (see [`super::module`]).
pub struct Mongodb;

impl Instance for Mongodb {
    fn binding_type(&self) -> &'static str {
        "mongodb"
    }

    fn port(&self) -> u16 {
        27017
    }

    fn default_version(&self) -> &'static str {
        "8.0"
    }

    fn image_repository(&self) -> &'static str {
        "mongo"
    }

    fn run_as(&self) -> i64 {
        999
    }

    fn data_path(&self) -> &'static str {
        "/data/db"
    }

    fn env(&self, secrets: &InstanceSecrets) -> Vec<EnvVar> {
        env(secrets)
    }

    fn readiness(&self) -> Probe {
        readiness()
    }

    fn uri(&self, userinfo: &str, host: &str, port: u16, database: &str, tls: bool) -> String {
        let query = if tls { "&tls=true" } else { "" };
        format!("mongodb://{userinfo}@{host}:{port}/{database}?authSource={database}{query}")
    }
}
