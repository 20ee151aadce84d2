//! OpenSearch with its security plugin (the Elasticsearch API). A claim's
//! "database" is an index prefix: its user's role reaches the indices
//! `<database>-*` and nothing else. Placement is on a registered server only
//! (the CRD refuses a dedicated OpenSearch claim); the image contract below
//! is the official image's, for when dedicated instances are offered:
//! `OPENSEARCH_INITIAL_ADMIN_PASSWORD` sets the `admin` user's password on
//! an empty data directory, the REST API listens on 9200 over TLS.

mod admin;

use k8s_openapi::api::core::v1::{EnvVar, ExecAction, Probe};

use super::{Instance, InstanceSecrets, PASSWORD_KEY, plain_env, secret_env};

/// The engine's module (see [`super::module`]).
pub struct Opensearch;

/// The index pattern of a claim's database: `-` separates the prefix, and
/// no database name dbps gives has a `-`, so one claim's pattern never
/// matches another's indices (`shop_orders*` would match `shop_orders_db-x`).
pub fn index_prefix(database: &str) -> String {
    format!("{database}-")
}

impl Instance for Opensearch {
    fn binding_type(&self) -> &'static str {
        "opensearch"
    }

    fn port(&self) -> u16 {
        9200
    }

    fn default_version(&self) -> &'static str {
        "2.19.4"
    }

    fn image_repository(&self) -> &'static str {
        "opensearchproject/opensearch"
    }

    fn run_as(&self) -> i64 {
        1000
    }

    fn data_path(&self) -> &'static str {
        "/usr/share/opensearch/data"
    }

    fn env(&self, i: &InstanceSecrets) -> Vec<EnvVar> {
        vec![
            plain_env("discovery.type", "single-node"),
            secret_env(
                "OPENSEARCH_INITIAL_ADMIN_PASSWORD",
                i.admin_secret,
                PASSWORD_KEY,
            ),
        ]
    }

    fn readiness(&self) -> Probe {
        Probe {
            exec: Some(ExecAction {
                command: Some(
                    [
                        "sh",
                        "-c",
                        "curl -sfk -u \"admin:$OPENSEARCH_INITIAL_ADMIN_PASSWORD\" https://127.0.0.1:9200/_cluster/health",
                    ]
                    .map(String::from)
                    .to_vec(),
                ),
            }),
            ..Default::default()
        }
    }

    fn uri(&self, userinfo: &str, host: &str, port: u16, _database: &str, tls: bool) -> String {
        let scheme = if tls { "https" } else { "http" };
        format!("{scheme}://{userinfo}@{host}:{port}")
    }

    fn binding_entries(&self, database: &str) -> Vec<(&'static str, String)> {
        vec![("prefix", index_prefix(database))]
    }

    fn admin_username(&self) -> &'static str {
        "admin"
    }
}
