//! PostgreSQL (official `postgres` image).

use serde_json::{Value, json};

use super::{
    APP_PASSWORD_KEY, APP_USERNAME_KEY, InitScript, Instance, PASSWORD_KEY, USERNAME_KEY,
    plain_env, secret_env,
};

/// Run by the image's entrypoint once, on an empty data directory. psql's
/// `:"var"` and `:'var'` quote the identifiers and the password.
pub const INIT: InitScript = InitScript {
    file_name: "10-dbps-app-user.sh",
    mount_path: "/docker-entrypoint-initdb.d",
    contents: r#"#!/bin/sh
# Creates the app's role, owner of its own database and of nothing else.
set -eu
psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname postgres \
  -v app_user="$APP_USER" -v app_password="$APP_PASSWORD" -v app_database="$APP_DATABASE" <<'SQL'
CREATE ROLE :"app_user" LOGIN PASSWORD :'app_password' NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION;
CREATE DATABASE :"app_database" OWNER :"app_user";
REVOKE CONNECT, TEMPORARY ON DATABASE :"app_database" FROM PUBLIC;
REVOKE CONNECT ON DATABASE postgres FROM PUBLIC;
REVOKE CONNECT ON DATABASE template1 FROM PUBLIC;
SQL
"#,
};

pub fn env(i: &Instance) -> Value {
    json!([
        secret_env("POSTGRES_USER", i.admin_secret, USERNAME_KEY),
        secret_env("POSTGRES_PASSWORD", i.admin_secret, PASSWORD_KEY),
        plain_env("PGDATA", "/var/lib/postgresql/data/pgdata"),
        plain_env("APP_DATABASE", i.database),
        secret_env("APP_USER", i.admin_secret, APP_USERNAME_KEY),
        secret_env("APP_PASSWORD", i.admin_secret, APP_PASSWORD_KEY),
    ])
}

pub fn readiness() -> Value {
    json!({
        "exec": { "command": ["sh", "-c", "exec pg_isready --host 127.0.0.1 --username \"$POSTGRES_USER\" --dbname postgres"] },
        "periodSeconds": 5,
        "timeoutSeconds": 3,
        "failureThreshold": 6
    })
}
