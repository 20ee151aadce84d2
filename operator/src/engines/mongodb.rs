//! MongoDB wire protocol. The image contract (official `mongo` image, and a
//! FerretDB image that keeps it): `MONGO_INITDB_ROOT_USERNAME`/`_PASSWORD`
//! make the superuser in `admin` on an empty `/data/db` and switch
//! authentication on; the server listens on 27017. Readiness is a TCP check,
//! so no shell client (`mongosh`) is needed in the image.

use k8s_openapi::api::core::v1::{EnvVar, Probe, TCPSocketAction};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{Instance, PASSWORD_KEY, USERNAME_KEY, secret_env};

pub fn env(i: &Instance) -> Vec<EnvVar> {
    vec![
        secret_env("MONGO_INITDB_ROOT_USERNAME", i.admin_secret, USERNAME_KEY),
        secret_env("MONGO_INITDB_ROOT_PASSWORD", i.admin_secret, PASSWORD_KEY),
    ]
}

/// How the kubelet tells the server answers (the timing is every engine's).
pub fn readiness() -> Probe {
    Probe {
        tcp_socket: Some(TCPSocketAction {
            port: IntOrString::String("db".into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}
