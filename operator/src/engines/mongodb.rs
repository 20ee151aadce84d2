//! MongoDB (official `mongo` image).

use serde_json::{Value, json};

use super::{
    APP_PASSWORD_KEY, APP_USERNAME_KEY, InitScript, Instance, PASSWORD_KEY, USERNAME_KEY,
    plain_env, secret_env,
};

/// Run by the image's entrypoint once, on an empty data directory, as the
/// root user it created from `MONGO_INITDB_ROOT_*`.
pub const INIT: InitScript = InitScript {
    file_name: "10-dbps-app-user.js",
    mount_path: "/docker-entrypoint-initdb.d",
    contents: r#"// Creates the app's user with readWrite on its own database and nothing else.
const database = process.env.APP_DATABASE;
db.getSiblingDB(database).createUser({
  user: process.env.APP_USER,
  pwd: process.env.APP_PASSWORD,
  roles: [{ role: "readWrite", db: database }],
});
"#,
};

pub fn env(i: &Instance) -> Value {
    json!([
        secret_env("MONGO_INITDB_ROOT_USERNAME", i.admin_secret, USERNAME_KEY),
        secret_env("MONGO_INITDB_ROOT_PASSWORD", i.admin_secret, PASSWORD_KEY),
        plain_env("MONGO_INITDB_DATABASE", i.database),
        plain_env("APP_DATABASE", i.database),
        secret_env("APP_USER", i.admin_secret, APP_USERNAME_KEY),
        secret_env("APP_PASSWORD", i.admin_secret, APP_PASSWORD_KEY),
    ])
}

pub fn readiness() -> Value {
    json!({
        "exec": { "command": ["mongosh", "--quiet", "--eval", "quit(db.adminCommand({ ping: 1 }).ok ? 0 : 1)"] },
        "periodSeconds": 5,
        "timeoutSeconds": 5,
        "failureThreshold": 6
    })
}
