//! PostgreSQL. The image contract (official `postgres` image and any image
//! that keeps it): `POSTGRES_USER`/`POSTGRES_PASSWORD` make the superuser on
//! an empty data directory at `PGDATA`; the arguments `postgres -c name=value
//! …` start the server with those settings; the server listens on 5432;
//! `pg_isready` is on the path.
//!
//! A dedicated instance serves TLS only: its certificate comes from a CA the
//! operator makes for it alone, and its client authentication file (kept in
//! its admin Secret, put back when edited) admits password logins (SCRAM)
//! over TLS and over the local socket only, which the image's first-boot
//! scripts use.

mod admin;

use k8s_openapi::api::core::v1::{EnvVar, ExecAction, Probe};

use super::{
    Instance, InstanceFile, InstanceSecrets, PASSWORD_KEY, USERNAME_KEY, plain_env, secret_env,
};

/// Where the instance reads `ca.crt`, `tls.crt` and `tls.key`.
const TLS_DIR: &str = "/etc/dbps/tls";
/// Its client authentication file.
const HBA_PATH: &str = "/etc/dbps/pg_hba.conf";

/// Password logins (SCRAM) over TLS from anywhere the instance's
/// NetworkPolicy lets in, and over the local socket; nothing in clear text.
fn hba(_password: &str) -> Result<String, String> {
    Ok("# dbps: TLS only (this file is put back when edited)\n\
        local   all all     scram-sha-256\n\
        hostssl all all all scram-sha-256\n"
        .into())
}

const FILES: &[InstanceFile] = &[InstanceFile {
    key: "pg_hba.conf",
    path: HBA_PATH,
    make: hba,
    enforced: true,
}];

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

    fn tls_dir(&self) -> Option<&'static str> {
        Some(TLS_DIR)
    }

    fn args(&self) -> Vec<String> {
        vec![
            "postgres".to_string(),
            "-c".into(),
            "ssl=on".into(),
            "-c".into(),
            format!("ssl_cert_file={TLS_DIR}/tls.crt"),
            "-c".into(),
            format!("ssl_key_file={TLS_DIR}/tls.key"),
            "-c".into(),
            format!("hba_file={HBA_PATH}"),
        ]
    }

    fn files(&self) -> &'static [InstanceFile] {
        FILES
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_authentication_file_admits_passwords_over_tls_or_the_socket_alone() {
        let file = hba("pw").unwrap();
        let rules: Vec<Vec<&str>> = file
            .lines()
            .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(rules.len(), 2, "{file}");
        for rule in &rules {
            assert!(["local", "hostssl"].contains(&rule[0]), "{file}");
            assert_eq!(rule.last(), Some(&"scram-sha-256"), "{file}");
        }
        assert!(!file.contains("pw"), "no password in it");
        let file = &FILES[0];
        assert!(file.enforced, "read at every start: an edit is put back");
        assert_eq!(
            Postgres.args().last().unwrap(),
            &format!("hba_file={}", file.path)
        );
    }
}
