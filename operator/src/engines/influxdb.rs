//! InfluxDB 1.x. The image contract (official `influxdb:1.x` image):
//! `INFLUXDB_ADMIN_USER`/`_PASSWORD` make the admin on an empty
//! `/var/lib/influxdb`, `INFLUXDB_HTTP_AUTH_ENABLED` switches authentication
//! on; the HTTP API listens on 8086 and answers `/ping`.

use serde_json::{Value, json};

use super::{Instance, PASSWORD_KEY, USERNAME_KEY, plain_env, secret_env};

pub fn env(i: &Instance) -> Value {
    json!([
        plain_env("INFLUXDB_HTTP_AUTH_ENABLED", "true"),
        plain_env("INFLUXDB_REPORTING_DISABLED", "true"),
        secret_env("INFLUXDB_ADMIN_USER", i.admin_secret, USERNAME_KEY),
        secret_env("INFLUXDB_ADMIN_PASSWORD", i.admin_secret, PASSWORD_KEY),
    ])
}

pub fn readiness() -> Value {
    json!({
        "httpGet": { "path": "/ping", "port": "db" },
        "periodSeconds": 5,
        "timeoutSeconds": 3,
        "failureThreshold": 6
    })
}
