//! MongoDB wire protocol. The image contract (official `mongo` image, and a
//! FerretDB image that keeps it): `MONGO_INITDB_ROOT_USERNAME`/`_PASSWORD`
//! make the superuser in `admin` on an empty `/data/db` and switch
//! authentication on; the server listens on 27017. Readiness is a TCP check,
//! so no shell client (`mongosh`) is needed in the image.

use serde_json::{Value, json};

use super::{Instance, PASSWORD_KEY, USERNAME_KEY, secret_env};

pub fn env(i: &Instance) -> Value {
    json!([
        secret_env("MONGO_INITDB_ROOT_USERNAME", i.admin_secret, USERNAME_KEY),
        secret_env("MONGO_INITDB_ROOT_PASSWORD", i.admin_secret, PASSWORD_KEY),
    ])
}

pub fn readiness() -> Value {
    json!({
        "tcpSocket": { "port": "db" },
        "periodSeconds": 5,
        "timeoutSeconds": 3,
        "failureThreshold": 6
    })
}
