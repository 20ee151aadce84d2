//! InfluxDB 1.x. The image contract (official `influxdb:1.x` image):
//! `INFLUXDB_ADMIN_USER`/`_PASSWORD` make the admin on an empty
//! `/var/lib/influxdb`, `INFLUXDB_HTTP_AUTH_ENABLED` switches authentication
//! on; the HTTP API listens on 8086 and answers `/ping`.

mod admin;

use k8s_openapi::api::core::v1::{EnvVar, HTTPGetAction, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{Instance, InstanceSecrets, PASSWORD_KEY, USERNAME_KEY, plain_env, secret_env};

fn env(i: &InstanceSecrets) -> Vec<EnvVar> {
    vec![
        plain_env("INFLUXDB_HTTP_AUTH_ENABLED", "true"),
        plain_env("INFLUXDB_REPORTING_DISABLED", "true"),
        secret_env("INFLUXDB_ADMIN_USER", i.admin_secret, USERNAME_KEY),
        secret_env("INFLUXDB_ADMIN_PASSWORD", i.admin_secret, PASSWORD_KEY),
    ]
}

fn readiness() -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some("/ping".into()),
            port: IntOrString::String("db".into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The engine's module (see [`super::module`]).
pub struct Influxdb;

impl Instance for Influxdb {
    fn binding_type(&self) -> &'static str {
        "influxdb"
    }

    fn port(&self) -> u16 {
        8086
    }

    fn default_version(&self) -> &'static str {
        "1.11"
    }

    fn image_repository(&self) -> &'static str {
        "influxdb"
    }

    fn run_as(&self) -> i64 {
        1000
    }

    fn data_path(&self) -> &'static str {
        "/var/lib/influxdb"
    }

    fn env(&self, secrets: &InstanceSecrets) -> Vec<EnvVar> {
        env(secrets)
    }

    fn readiness(&self) -> Probe {
        readiness()
    }

    fn uri(&self, userinfo: &str, host: &str, port: u16, database: &str, tls: bool) -> String {
        let scheme = if tls { "https" } else { "http" };
        format!("{scheme}://{userinfo}@{host}:{port}/?db={database}")
    }
}
