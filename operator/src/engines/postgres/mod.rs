//! PostgreSQL. The image contract (official `postgres` image and any image
//! that keeps it): `POSTGRES_USER`/`POSTGRES_PASSWORD` make the superuser on
//! an empty data directory at `PGDATA`; the server listens on 5432;
//! `pg_isready` is on the path.

mod admin;

use k8s_openapi::api::core::v1::{EnvVar, ExecAction, Probe};

use super::{Instance, InstanceSecrets, PASSWORD_KEY, USERNAME_KEY, plain_env, secret_env};

fn env(i: &InstanceSecrets) -> Vec<EnvVar> {
    vec![
        secret_env("POSTGRES_USER", i.admin_secret, USERNAME_KEY),
        secret_env("POSTGRES_PASSWORD", i.admin_secret, PASSWORD_KEY),
        plain_env("PGDATA", "/var/lib/postgresql/data/pgdata"),
    ]
}

fn readiness() -> Probe {
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

/// The engine's module (see [`super::module`]).
pub struct Postgres;

impl Instance for Postgres {
    fn binding_type(&self) -> &'static str {
        "postgresql"
    }

    fn port(&self) -> u16 {
        5432
    }

    fn default_version(&self) -> &'static str {
        "17"
    }

    fn image_repository(&self) -> &'static str {
        "postgres"
    }

    fn run_as(&self) -> i64 {
        999
    }

    fn data_path(&self) -> &'static str {
        "/var/lib/postgresql/data"
    }

    fn env(&self, secrets: &InstanceSecrets) -> Vec<EnvVar> {
        env(secrets)
    }

    fn readiness(&self) -> Probe {
        readiness()
    }

    fn uri(&self, userinfo: &str, host: &str, port: u16, database: &str, tls: bool) -> String {
        let query = if tls { "?sslmode=verify-full" } else { "" };
        format!("postgresql://{userinfo}@{host}:{port}/{database}{query}")
    }

    fn tls_binding_entries(&self) -> &'static [(&'static str, &'static str)] {
        &[("sslmode", "verify-full")]
    }
}
