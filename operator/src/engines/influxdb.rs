//! InfluxDB 1.x. The image contract (official `influxdb:1.x` image):
//! `INFLUXDB_ADMIN_USER`/`_PASSWORD` make the admin on an empty
//! `/var/lib/influxdb`, `INFLUXDB_HTTP_AUTH_ENABLED` switches authentication
//! on; the HTTP API listens on 8086 and answers `/ping`.

use k8s_openapi::api::core::v1::{EnvVar, HTTPGetAction, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{Instance, PASSWORD_KEY, USERNAME_KEY, plain_env, secret_env};

pub fn env(i: &Instance) -> Vec<EnvVar> {
    vec![
        plain_env("INFLUXDB_HTTP_AUTH_ENABLED", "true"),
        plain_env("INFLUXDB_REPORTING_DISABLED", "true"),
        secret_env("INFLUXDB_ADMIN_USER", i.admin_secret, USERNAME_KEY),
        secret_env("INFLUXDB_ADMIN_PASSWORD", i.admin_secret, PASSWORD_KEY),
    ]
}

/// How the kubelet tells the server answers (the timing is every engine's).
pub fn readiness() -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some("/ping".into()),
            port: IntOrString::String("db".into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}
