//! Administration of registered database servers over the wire: create a
//! database and a user that can reach nothing else, idempotently; drop them;
//! report the server version. Connections are bounded per server and every
//! operation has a timeout.

mod influxdb;
mod mongodb;
pub mod ownership;
mod postgres;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{OwnedMutexGuard, Semaphore};

use crate::api::{Engine, Reason};
pub use ownership::{Claimant, Conflict, Mark, ObjectKind, Presence, Verdict};

/// Name of the catalog database in which dbps keeps its ownership marks on
/// MongoDB and InfluxDB. It has a `-`, which no name dbps gives a claim's
/// database has, and no claim may adopt it.
pub const CATALOG: &str = "dbps-catalog";

/// Concurrent admin connections to one server.
pub const MAX_CONNECTIONS_PER_SERVER: usize = 4;
/// Limit for connecting and for each statement.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// How to reach a server as its administrator.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Connection {
    pub engine: Engine,
    pub host: String,
    pub port: u16,
    pub username: String,
    pub password: String,
    /// Connect over TLS, verifying the server against this CA (PEM), or the
    /// well-known public roots when `None`.
    pub tls: Option<Tls>,
}

/// TLS to a server.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Tls {
    /// PEM of the CA that signed the server certificate.
    pub ca_pem: Option<String>,
}

impl Tls {
    /// A rustls client configuration trusting the CA (or the public roots).
    pub fn client_config(&self) -> Result<rustls::ClientConfig, AdminError> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        match &self.ca_pem {
            Some(pem) => {
                for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                    let cert = cert.map_err(|e| AdminError::Tls(format!("CA certificate: {e}")))?;
                    roots
                        .add(cert)
                        .map_err(|e| AdminError::Tls(format!("CA certificate: {e}")))?;
                }
                if roots.is_empty() {
                    return Err(AdminError::Tls("the CA Secret holds no certificate".into()));
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        Ok(rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| AdminError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth())
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:?}://{}@{}:{}",
            self.engine, self.username, self.host, self.port
        )
    }
}

/// A database and the user that owns it.
#[derive(Clone, PartialEq, Eq)]
pub struct Grant {
    pub database: String,
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Grant {{ database: {:?}, username: {:?} }}",
            self.database, self.username
        )
    }
}

/// What a server told us about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerInfo {
    pub version: String,
    /// False when the server cannot confine a user to one database (FerretDB v1
    /// has no role-based authorization).
    pub enforces_database_roles: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot reach the server: {0}")]
    Unreachable(String),
    #[error("the server refused the admin credentials: {0}")]
    AuthenticationFailed(String),
    #[error("the server refused a statement: {0}")]
    Refused(String),
    #[error("no answer within {TIMEOUT:?}")]
    Timeout,
    #[error("TLS: {0}")]
    Tls(String),
    #[error(transparent)]
    Conflict(#[from] Conflict),
}

impl AdminError {
    /// Reason for the claim's or server's condition.
    pub fn reason(&self) -> Reason {
        match self {
            AdminError::Unreachable(_) | AdminError::Timeout => Reason::ServerUnreachable,
            AdminError::AuthenticationFailed(_) => Reason::ServerAuthenticationFailed,
            AdminError::Refused(_) => Reason::ServerRefused,
            AdminError::Tls(_) => Reason::ServerTlsFailed,
            AdminError::Conflict(Conflict::OwnedByAnotherClaim { .. }) => {
                Reason::DatabaseOwnedByAnotherClaim
            }
            AdminError::Conflict(Conflict::Exists { .. }) => Reason::DatabaseExists,
        }
    }
}

/// What [`Servers::ensure`] found and did beyond the usual.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Provisioned {
    /// Unmarked objects this claim adopted (the platform team allowed it).
    pub adopted: Vec<String>,
    /// Objects of this claim before it was re-created, now marked with its UID.
    pub reattached: Vec<String>,
}

impl Provisioned {
    fn record(&mut self, verdict: &Verdict, name: &str) {
        match verdict {
            Verdict::Adopt => self.adopted.push(name.to_string()),
            Verdict::Reattach => self.reattached.push(name.to_string()),
            Verdict::Create | Verdict::Ours => {}
        }
    }
}

/// What a deletion dropped, and what it left because the marks say another
/// claim (or nobody) owns it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dropped {
    pub dropped: Vec<String>,
    pub kept: Vec<String>,
}

type NameLock = tokio::sync::Mutex<()>;

/// Entry point, shared by all reconciles: bounds connections per server.
#[derive(Default)]
pub struct Servers {
    limits: Mutex<HashMap<(String, u16), Arc<Semaphore>>>,
    infos: Mutex<HashMap<(String, u16), ServerInfo>>,
    /// One reconcile at a time per database on a server: two claims naming
    /// the same database never both find it free.
    names: Mutex<HashMap<(String, u16, String), Weak<NameLock>>>,
}

impl Servers {
    /// Holds the database name `database` on the server of `conn`.
    async fn hold(&self, conn: &Connection, database: &str) -> OwnedMutexGuard<()> {
        let lock = {
            let mut names = self.names.lock().unwrap();
            names.retain(|_, held| held.strong_count() > 0);
            let key = (conn.host.clone(), conn.port, database.to_string());
            match names.get(&key).and_then(Weak::upgrade) {
                Some(lock) => lock,
                None => {
                    let lock = Arc::new(tokio::sync::Mutex::new(()));
                    names.insert(key, Arc::downgrade(&lock));
                    lock
                }
            }
        };
        lock.lock_owned().await
    }

    async fn limited<T>(
        &self,
        conn: &Connection,
        op: impl std::future::Future<Output = Result<T, AdminError>>,
    ) -> Result<T, AdminError> {
        let semaphore = self
            .limits
            .lock()
            .unwrap()
            .entry((conn.host.clone(), conn.port))
            .or_insert_with(|| Arc::new(Semaphore::new(MAX_CONNECTIONS_PER_SERVER)))
            .clone();
        let _permit = semaphore
            .acquire_owned()
            .await
            .expect("semaphore never closes");
        tokio::time::timeout(TIMEOUT * 3, op)
            .await
            .map_err(|_| AdminError::Timeout)?
    }

    /// Version and capabilities of the server, asked now.
    pub async fn info(&self, conn: &Connection) -> Result<ServerInfo, AdminError> {
        let info = self
            .limited(conn, async {
                match conn.engine {
                    Engine::Postgres => postgres::info(conn).await,
                    Engine::Mongodb => mongodb::info(conn).await,
                    Engine::Influxdb => influxdb::info(conn).await,
                }
            })
            .await?;
        self.infos
            .lock()
            .unwrap()
            .insert((conn.host.clone(), conn.port), info.clone());
        Ok(info)
    }

    /// As [`Self::info`], from the last answer when there is one.
    pub async fn cached_info(&self, conn: &Connection) -> Result<ServerInfo, AdminError> {
        let cached = self
            .infos
            .lock()
            .unwrap()
            .get(&(conn.host.clone(), conn.port))
            .cloned();
        match cached {
            Some(info) => Ok(info),
            None => self.info(conn).await,
        }
    }

    /// Makes `grant.database` exist, owned by `grant.username`, whose password
    /// is `grant.password` and who can reach no other database, every object
    /// marked as the claimant's. Reads the marks first: an object of another
    /// claim, or one dbps did not make (unless the claimant may adopt it),
    /// fails with [`AdminError::Conflict`] and nothing is changed. Idempotent.
    pub async fn ensure(
        &self,
        conn: &Connection,
        grant: &Grant,
        claimant: &Claimant,
    ) -> Result<Provisioned, AdminError> {
        // Asked before taking a connection slot (info takes one itself).
        let roles = match conn.engine {
            Engine::Mongodb => self.cached_info(conn).await?.enforces_database_roles,
            Engine::Postgres | Engine::Influxdb => true,
        };
        let _held = self.hold(conn, &grant.database).await;
        self.limited(conn, async {
            match conn.engine {
                Engine::Postgres => postgres::ensure(conn, grant, claimant).await,
                Engine::Mongodb => mongodb::ensure(conn, grant, claimant, roles).await,
                Engine::Influxdb => influxdb::ensure(conn, grant, claimant).await,
            }
        })
        .await
    }

    /// Drops the database and the users (ending their sessions first) that
    /// carry `mark`, and nothing else. Idempotent: what is gone is skipped.
    pub async fn drop_database(
        &self,
        conn: &Connection,
        database: &str,
        usernames: &[String],
        mark: &Mark,
    ) -> Result<Dropped, AdminError> {
        let _held = self.hold(conn, database).await;
        self.limited(conn, async {
            match conn.engine {
                Engine::Postgres => postgres::drop_database(conn, database, usernames, mark).await,
                Engine::Mongodb => mongodb::drop_database(conn, database, usernames, mark).await,
                Engine::Influxdb => influxdb::drop_database(conn, database, usernames, mark).await,
            }
        })
        .await
    }

    /// Ends `username`'s access if it carries `mark`: it can no longer log
    /// in, and its open sessions end where the engine allows. Idempotent.
    pub async fn revoke(
        &self,
        conn: &Connection,
        database: &str,
        username: &str,
        mark: &Mark,
    ) -> Result<(), AdminError> {
        let _held = self.hold(conn, database).await;
        self.limited(conn, async {
            match conn.engine {
                Engine::Postgres => postgres::revoke(conn, username, mark).await,
                Engine::Mongodb => mongodb::revoke(conn, database, username, mark).await,
                Engine::Influxdb => influxdb::revoke(conn, username, mark).await,
            }
        })
        .await
    }

    /// What the server holds under the names of a claim's database and users.
    pub async fn inspect(
        &self,
        conn: &Connection,
        database: &str,
        usernames: &[String],
    ) -> Result<Vec<(ObjectKind, String, Presence)>, AdminError> {
        self.limited(conn, async {
            match conn.engine {
                Engine::Postgres => postgres::inspect(conn, database, usernames).await,
                Engine::Mongodb => mongodb::inspect(conn, database, usernames).await,
                Engine::Influxdb => influxdb::inspect(conn, database, usernames).await,
            }
        })
        .await
    }

    /// True when `username`/`password` log in to `database`.
    pub async fn can_login(&self, conn: &Connection, grant: &Grant) -> bool {
        self.limited(conn, async {
            Ok(match conn.engine {
                Engine::Postgres => postgres::can_login(conn, grant).await,
                Engine::Mongodb => mongodb::can_login(conn, grant).await,
                Engine::Influxdb => influxdb::can_login(conn, grant).await,
            })
        })
        .await
        .unwrap_or(false)
    }
}

/// A name for a database or user on a shared server, unique per namespace and
/// at most 63 bytes: `<namespace>_<name>` with `-` as `_`, shortened with a
/// hash of the whole when too long.
pub fn shared_identifier(namespace: &str, name: &str) -> String {
    bounded(&format!("{namespace}_{name}").replace(['-', '.'], "_"))
}

/// `name` if it fits in 63 bytes, else its start and a hash of the whole.
pub fn bounded(name: &str) -> String {
    if name.len() <= 63 {
        return name.to_string();
    }
    let mut cut = 46;
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}_{:016x}", &name[..cut], fnv1a(name.as_bytes()))
}

pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_identifiers_are_namespaced_and_bounded() {
        assert_eq!(shared_identifier("shop", "orders_db"), "shop_orders_db");
        assert_eq!(shared_identifier("team-a", "orders"), "team_a_orders");
        let long = shared_identifier(&"n".repeat(63), "orders_db");
        assert_eq!(long.len(), 63);
        assert_ne!(long, shared_identifier(&"n".repeat(62), "orders_db"));
        assert_eq!(
            long,
            shared_identifier(&"n".repeat(63), "orders_db"),
            "deterministic"
        );
    }
}
