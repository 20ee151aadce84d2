//! OpenSearch with its security plugin (the Elasticsearch API). A claim's
//! "database" is an index prefix: its user's role reaches the indices
//! `<database>-*` and nothing else.
//!
//! A dedicated instance keeps the official image's contract with its demo
//! configuration off (`DISABLE_INSTALL_DEMO_CONFIG`): settings come from
//! environment variables named like settings, the REST API listens on
//! 9200. The security plugin needs TLS and a user database before it
//! starts: the operator issues the instance's certificate from a CA of the
//! instance's own (mounted at [`TLS_DIR`]) and writes the internal user
//! database with the admin's bcrypt hash, which the plugin loads into its
//! index on first boot only.

mod admin;

use k8s_openapi::api::core::v1::{EnvVar, ExecAction, Probe};

use super::{Instance, InstanceFile, InstanceSecrets, PASSWORD_KEY, plain_env, secret_env};

/// The engine's module (see [`super::module`]).
pub struct Opensearch;

/// The index pattern of a claim's database: `-` separates the prefix, and
/// no database name dbps gives has a `-`, so one claim's pattern never
/// matches another's indices (`shop_orders*` would match `shop_orders_db-x`).
pub fn index_prefix(database: &str) -> String {
    format!("{database}-")
}

/// Where a dedicated instance reads its certificate: inside the
/// configuration directory, as the security plugin requires.
pub const TLS_DIR: &str = "/usr/share/opensearch/config/dbps-tls";
/// [`TLS_DIR`] as the plugin's settings name it (relative to the config).
const TLS_SETTING_DIR: &str = "dbps-tls";

/// bcrypt's cost for the admin's hash: the plugin's own hasher uses 12.
const BCRYPT_COST: u32 = 12;

/// The internal user database of a new instance: the admin alone, in the
/// `admin` backend role that the plugin's default role mapping gives
/// `all_access` (the image's demo users are not there).
fn internal_users(password: &str) -> Result<String, String> {
    let hash = bcrypt::hash(password, BCRYPT_COST).map_err(|e| e.to_string())?;
    Ok(format!(
        "_meta:\n  type: internalusers\n  config_version: 2\nadmin:\n  hash: \"{hash}\"\n  reserved: true\n  backend_roles: [admin]\n  description: the instance's superuser, used by dbps\n"
    ))
}

/// The role mapping of a new instance: `all_access` to the admin alone.
/// The plugin's default also maps `own_index` to every user (`*`), which
/// would give each claim's user an index named like itself besides its role.
fn roles_mapping(_: &str) -> Result<String, String> {
    Ok("_meta:\n  type: rolesmapping\n  config_version: 2\nall_access:\n  reserved: false\n  backend_roles: [admin]\n  users: [admin]\n".into())
}

/// Authentication of a new instance: HTTP basic against the internal user
/// database, nothing anonymous, no other domain.
fn authentication(_: &str) -> Result<String, String> {
    Ok("_meta:\n  type: config\n  config_version: 2\nconfig:\n  dynamic:\n    http:\n      anonymous_auth_enabled: false\n    authc:\n      basic_internal_auth_domain:\n        http_enabled: true\n        transport_enabled: true\n        order: 0\n        http_authenticator: { type: basic, challenge: true }\n        authentication_backend: { type: intern }\n".into())
}

const FIRST_BOOT: &[InstanceFile] = &[
    InstanceFile {
        key: "internal_users.yml",
        path: "/usr/share/opensearch/config/opensearch-security/internal_users.yml",
        make: internal_users,
        enforced: false,
    },
    InstanceFile {
        key: "roles_mapping.yml",
        path: "/usr/share/opensearch/config/opensearch-security/roles_mapping.yml",
        make: roles_mapping,
        enforced: false,
    },
    InstanceFile {
        key: "config.yml",
        path: "/usr/share/opensearch/config/opensearch-security/config.yml",
        make: authentication,
        enforced: false,
    },
];

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
        let pem = |name: &str| format!("{TLS_SETTING_DIR}/{name}");
        let mut env = vec![
            plain_env("DISABLE_INSTALL_DEMO_CONFIG", "true"),
            plain_env("OPENSEARCH_JAVA_OPTS", "-Xms512m -Xmx512m"),
            // The readiness probe logs in as the admin.
            secret_env(
                "OPENSEARCH_INITIAL_ADMIN_PASSWORD",
                i.admin_secret,
                PASSWORD_KEY,
            ),
            plain_env("discovery.type", "single-node"),
            plain_env("network.host", "0.0.0.0"),
            plain_env("plugins.security.ssl.http.enabled", "true"),
            plain_env("plugins.security.allow_default_init_securityindex", "true"),
            // The REST API for users and roles, to the admin (all_access) only.
            plain_env("plugins.security.restapi.roles_enabled", "all_access"),
            // Transport: the node itself, under the instance's own CA.
            plain_env("plugins.security.nodes_dn", &format!("CN={}", i.name)),
            plain_env(
                "plugins.security.ssl.transport.enforce_hostname_verification",
                "false",
            ),
            plain_env("plugins.security.audit.type", "noop"),
        ];
        for layer in ["http", "transport"] {
            for (setting, file) in [
                ("pemcert_filepath", "tls.crt"),
                ("pemkey_filepath", "tls.key"),
                ("pemtrustedcas_filepath", "ca.crt"),
            ] {
                env.push(plain_env(
                    &format!("plugins.security.ssl.{layer}.{setting}"),
                    &pem(file),
                ));
            }
        }
        env
    }

    fn readiness(&self) -> Probe {
        Probe {
            exec: Some(ExecAction {
                command: Some(
                    [
                        "sh".to_string(),
                        "-c".to_string(),
                        format!(
                            "curl -sf --cacert {TLS_DIR}/ca.crt -u \"admin:$OPENSEARCH_INITIAL_ADMIN_PASSWORD\" https://localhost:9200/_cluster/health"
                        ),
                    ]
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

    /// The JVM's 512 MiB heap and what it needs besides (metaspace, direct
    /// buffers, the page cache of its indices).
    fn default_memory(&self) -> (&'static str, &'static str) {
        ("1Gi", "2Gi")
    }

    fn tls_dir(&self) -> Option<&'static str> {
        Some(TLS_DIR)
    }

    fn files(&self) -> &'static [InstanceFile] {
        FIRST_BOOT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The entries of a security configuration file, `_meta` left out.
    fn entries(file: &serde_yaml::Value) -> Vec<&str> {
        file.as_mapping()
            .unwrap()
            .keys()
            .filter_map(|k| k.as_str())
            .filter(|k| *k != "_meta")
            .collect()
    }

    #[test]
    fn the_internal_user_database_holds_the_admin_alone_with_a_hash_of_its_password() {
        let file = internal_users("s3cret-pw").unwrap();
        let parsed: serde_yaml::Value = serde_yaml::from_str(&file).unwrap();
        let users = entries(&parsed);
        assert_eq!(users, ["admin"]);
        let hash = parsed["admin"]["hash"].as_str().unwrap();
        assert!(bcrypt::verify("s3cret-pw", hash).unwrap());
        assert!(!bcrypt::verify("another", hash).unwrap());
        assert!(!file.contains("s3cret-pw"));
    }

    #[test]
    fn a_new_instance_maps_all_access_to_the_admin_and_nothing_to_every_user() {
        let mapping: serde_yaml::Value = serde_yaml::from_str(&roles_mapping("").unwrap()).unwrap();
        let roles = entries(&mapping);
        assert_eq!(roles, ["all_access"]);
        let config: serde_yaml::Value = serde_yaml::from_str(&authentication("").unwrap()).unwrap();
        let http = &config["config"]["dynamic"]["http"];
        assert_eq!(http["anonymous_auth_enabled"], false);
        let files: Vec<&str> = FIRST_BOOT.iter().map(|f| f.key).collect();
        assert_eq!(
            files,
            ["internal_users.yml", "roles_mapping.yml", "config.yml"]
        );
    }
}
