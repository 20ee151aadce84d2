//! PostgreSQL. The image contract (official `postgres` image and any image
//! that keeps it): `POSTGRES_USER`/`POSTGRES_PASSWORD` make the superuser on
//! an empty data directory at `PGDATA`; the server listens on 5432;
//! `pg_isready` is on the path.

use k8s_openapi::api::core::v1::{EnvVar, ExecAction, Probe};

use super::{Instance, PASSWORD_KEY, USERNAME_KEY, plain_env, secret_env};

pub fn env(i: &Instance) -> Vec<EnvVar> {
    vec![
        secret_env("POSTGRES_USER", i.admin_secret, USERNAME_KEY),
        secret_env("POSTGRES_PASSWORD", i.admin_secret, PASSWORD_KEY),
        plain_env("PGDATA", "/var/lib/postgresql/data/pgdata"),
    ]
}

/// How the kubelet tells the server answers (the timing is every engine's).
pub fn readiness() -> Probe {
    Probe {
        exec: Some(ExecAction {
            command: Some(
                [
                    "sh",
                    "-c",
                    "exec pg_isready --host 127.0.0.1 --username \"$POSTGRES_USER\" --dbname postgres",
                ]
                .map(String::from)
                .to_vec(),
            ),
        }),
        ..Default::default()
    }
}
