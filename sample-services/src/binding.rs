//! Reading a database binding the servicebinding.io way: files under
//! `$SERVICE_BINDING_ROOT/<binding>/` (`type`, `host`, `port`, `database`,
//! `username`, `password`, `uri`), with environment variables as fallback
//! (`<BINDING>_HOST`, … with the binding name upper-cased, `-` as `_`).

use std::path::Path;

#[derive(Clone, PartialEq, Eq)]
pub struct Binding {
    pub kind: String,
    pub host: String,
    pub port: u16,
    pub database: String,
    pub username: String,
    pub password: String,
    /// servicebinding.io `ca.crt`: the CA (PEM) to verify the server with;
    /// present when the binding asks for TLS.
    pub ca_crt: Option<String>,
    /// `sslmode` (PostgreSQL), e.g. `verify-full`.
    pub sslmode: Option<String>,
    /// `prefix` (OpenSearch): every index of the service starts with it.
    pub prefix: Option<String>,
    /// Where it was read from (`$SERVICE_BINDING_ROOT` and the binding's
    /// name), to read it again.
    pub source: Option<(std::path::PathBuf, String)>,
}

impl std::fmt::Debug for Binding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}://{}@{}:{}/{}",
            self.kind, self.username, self.host, self.port, self.database
        )
    }
}

#[derive(Debug, thiserror::Error)]
#[error("binding {binding:?}: {what}")]
pub struct BindingError {
    pub binding: String,
    pub what: String,
}

impl Binding {
    /// Reads binding `name` from `$SERVICE_BINDING_ROOT/<name>/`, else from the environment.
    pub fn read(name: &str) -> Result<Self, BindingError> {
        let root = std::env::var_os("SERVICE_BINDING_ROOT");
        Self::read_from(root.as_deref().map(Path::new), name, |k| {
            std::env::var(k).ok()
        })
    }

    /// The binding as its files read now (a rotation rewrites them); one
    /// read from the environment is returned as it is.
    pub fn reread(&self) -> Result<Self, BindingError> {
        match &self.source {
            Some((root, name)) => Self::read_from(Some(root), name, |_| None),
            None => Ok(self.clone()),
        }
    }

    pub fn read_from(
        root: Option<&Path>,
        name: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, BindingError> {
        let prefix = name.to_ascii_uppercase().replace('-', "_");
        let value = |key: &str| -> Result<String, BindingError> {
            if let Some(Ok(v)) = root.map(|r| std::fs::read_to_string(r.join(name).join(key))) {
                return Ok(v.trim_end_matches('\n').to_string());
            }
            env(&format!("{prefix}_{}", key.to_ascii_uppercase())).ok_or_else(|| BindingError {
                binding: name.into(),
                what: format!(
                    "no {key} (neither a file nor {prefix}_{})",
                    key.to_ascii_uppercase()
                ),
            })
        };
        let port = value("port")?;
        Ok(Self {
            kind: value("type")?,
            host: value("host")?,
            port: port.parse().map_err(|_| BindingError {
                binding: name.into(),
                what: format!("port {port:?}"),
            })?,
            database: value("database")?,
            username: value("username")?,
            password: value("password")?,
            ca_crt: value("ca.crt").ok(),
            sslmode: value("sslmode").ok(),
            prefix: value("prefix").ok(),
            source: root
                .filter(|r| r.join(name).is_dir())
                .map(|r| (r.to_path_buf(), name.to_string())),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_win_over_the_environment() {
        let dir = std::env::temp_dir().join(format!("binding-test-{}", std::process::id()));
        let b = dir.join("orders-db");
        std::fs::create_dir_all(&b).unwrap();
        for (k, v) in [
            ("type", "postgresql"),
            ("host", "db"),
            ("port", "5432\n"),
            ("database", "orders"),
            ("username", "app"),
        ] {
            std::fs::write(b.join(k), v).unwrap();
        }
        let env = |k: &str| (k == "ORDERS_DB_PASSWORD").then(|| "from-env".to_string());
        let binding = Binding::read_from(Some(&dir), "orders-db", env).unwrap();
        assert_eq!(binding.port, 5432);
        assert_eq!(binding.password, "from-env");
        assert_eq!(format!("{binding:?}"), "postgresql://app@db:5432/orders");
        assert!(Binding::read_from(None, "orders-db", |_| None).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
