//! InfluxDB 1.x (official `influxdb:1.x` image). Its entrypoint creates the
//! database, the admin, and the app user with `GRANT ALL` on that database
//! only, from the environment; HTTP authentication is switched on.

use serde_json::{Value, json};

use super::{
    APP_PASSWORD_KEY, APP_USERNAME_KEY, Instance, PASSWORD_KEY, USERNAME_KEY, plain_env, secret_env,
};

pub fn env(i: &Instance) -> Value {
    json!([
        plain_env("INFLUXDB_HTTP_AUTH_ENABLED", "true"),
        plain_env("INFLUXDB_REPORTING_DISABLED", "true"),
        secret_env("INFLUXDB_ADMIN_USER", i.admin_secret, USERNAME_KEY),
        secret_env("INFLUXDB_ADMIN_PASSWORD", i.admin_secret, PASSWORD_KEY),
        plain_env("INFLUXDB_DB", i.database),
        secret_env("INFLUXDB_USER", i.admin_secret, APP_USERNAME_KEY),
        secret_env("INFLUXDB_USER_PASSWORD", i.admin_secret, APP_PASSWORD_KEY),
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
