//! Administration of a database server over the wire, the same for a
//! registered shared server and a dedicated instance: what every engine's
//! administration receives and returns, and the trait it implements.

use std::time::Duration;

use futures::future::BoxFuture;

pub use super::ownership::{Claimant, Conflict, Mark, ObjectKind, Presence, Verdict};
use crate::api::{Engine, Reason};

/// Name of the catalog database in which dbps keeps its ownership marks on
/// MongoDB and InfluxDB. It has a `-`, which no name dbps gives a claim's
/// database has, and no claim may adopt it.
pub const CATALOG: &str = "dbps-catalog";

/// Admin connections the operator opens to one server at once, unless its
/// `DatabaseServer` says otherwise (`spec.maxConnections`).
pub const DEFAULT_CONNECTIONS_PER_SERVER: usize = 4;
/// The most a `DatabaseServer` may ask for.
pub const MAX_CONNECTIONS_PER_SERVER: usize = 64;
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

/// A read-only user another Service gets on a claim's database.
#[derive(Clone, PartialEq, Eq)]
pub struct ReadGrant {
    pub database: String,
    pub username: String,
    pub password: String,
    /// The tables and views it may read (PostgreSQL); empty: the whole
    /// database (InfluxDB).
    pub tables: Vec<String>,
}

impl std::fmt::Debug for ReadGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ReadGrant {{ database: {:?}, username: {:?}, tables: {:?} }}",
            self.database, self.username, self.tables
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
    #[error("extension: {0}")]
    Extension(String),
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
            AdminError::Extension(_) => Reason::ExtensionFailed,
            AdminError::Conflict(Conflict::OwnedByAnotherClaim { .. }) => {
                Reason::DatabaseOwnedByAnotherClaim
            }
            AdminError::Conflict(Conflict::Exists { .. }) => Reason::DatabaseExists,
        }
    }
}

/// A failed connection: [`AdminError::Tls`] when the TLS handshake failed
/// (the server's certificate is not of the CA the operator was given, or
/// not for its name), else [`AdminError::Unreachable`] with `message`.
pub fn connection_failure(
    error: &(dyn std::error::Error + 'static),
    message: String,
) -> AdminError {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return AdminError::Tls(tls.to_string());
        }
        // An I/O error's `source` skips the error it wraps.
        next = match e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    AdminError::Unreachable(message)
}

/// What [`Administration::ensure`] found and did beyond the usual.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Provisioned {
    /// Unmarked objects this claim adopted (the platform team allowed it).
    pub adopted: Vec<String>,
    /// Objects of this claim before it was re-created, now marked with its UID.
    pub reattached: Vec<String>,
}

impl Provisioned {
    pub(super) fn record(&mut self, verdict: &Verdict, name: &str) {
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

/// A claim's database's extensions after [`Administration::extensions`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Extensions {
    /// Every extension asked for, with its installed version.
    pub installed: Vec<crate::api::ExtensionStatus>,
    /// Those created now.
    pub created: Vec<String>,
    /// Extensions dbps created that are no longer asked for, dropped now.
    pub dropped: Vec<String>,
    /// Extensions no longer asked for that objects of the database still use:
    /// kept.
    pub in_use: Vec<String>,
}

/// What a server holds under the names of a claim's database and users:
/// each object's kind, name and ownership mark.
pub type Inventory = Vec<(ObjectKind, String, Presence)>;

/// What an engine's administration does on a server, as its administrator.
/// Every operation is idempotent and touches only objects whose ownership
/// marks name the claimant (see [`super::ownership`]); the caller bounds
/// connections and time.
pub trait Administration: Sync {
    /// Version and capabilities of the server.
    fn info<'a>(&'a self, conn: &'a Connection) -> BoxFuture<'a, Result<ServerInfo, AdminError>>;

    /// Makes `grant.database` exist, owned by `grant.username` with
    /// `grant.password`, who can reach no other database; every object
    /// marked as the claimant's. An object of another claim, or one dbps
    /// did not make (unless the claimant may adopt it), fails with
    /// [`AdminError::Conflict`] and nothing is changed.
    fn ensure<'a>(
        &'a self,
        conn: &'a Connection,
        server: &'a ServerInfo,
        grant: &'a Grant,
        claimant: &'a Claimant,
    ) -> BoxFuture<'a, Result<Provisioned, AdminError>>;

    /// Drops the database and the users (ending their sessions first) that
    /// carry `mark`, and nothing else; what is gone is skipped.
    fn drop_database<'a>(
        &'a self,
        conn: &'a Connection,
        database: &'a str,
        usernames: &'a [String],
        mark: &'a Mark,
    ) -> BoxFuture<'a, Result<Dropped, AdminError>>;

    /// Ends `username`'s access to `database` if it carries `mark`: it can
    /// no longer log in, and its open sessions end where the engine allows.
    fn revoke<'a>(
        &'a self,
        conn: &'a Connection,
        database: &'a str,
        username: &'a str,
        mark: &'a Mark,
    ) -> BoxFuture<'a, Result<(), AdminError>>;

    /// What the server holds under the names of a claim's database and users.
    fn inspect<'a>(
        &'a self,
        conn: &'a Connection,
        database: &'a str,
        usernames: &'a [String],
    ) -> BoxFuture<'a, Result<Inventory, AdminError>>;

    /// Makes the extensions `wanted` exist in `database` (which must be the
    /// claim's), created as the administrator and marked with `mark`, its
    /// owner role given every privilege on their tables; drops those marked
    /// by dbps that are no longer wanted, unless something depends on them.
    /// An engine without extensions refuses any.
    fn extensions<'a>(
        &'a self,
        _conn: &'a Connection,
        _database: &'a str,
        wanted: &'a [crate::api::Extension],
        _mark: &'a Mark,
    ) -> BoxFuture<'a, Result<Extensions, AdminError>> {
        Box::pin(async move {
            match wanted.is_empty() {
                true => Ok(Extensions::default()),
                false => Err(AdminError::Extension(
                    "this engine has no extensions".into(),
                )),
            }
        })
    }

    /// Makes `grant.username` a user that logs in with `grant.password` and
    /// may only read `grant.tables` of `grant.database` (which must be the
    /// claim's), marked as the claimant's; a grant on a table no longer
    /// named is taken back. Returns the tables that do not exist yet.
    fn ensure_reader<'a>(
        &'a self,
        _conn: &'a Connection,
        _grant: &'a ReadGrant,
        _claimant: &'a Claimant,
    ) -> BoxFuture<'a, Result<Vec<String>, AdminError>> {
        Box::pin(async {
            Err(AdminError::Refused(
                "this engine makes no read-only users".into(),
            ))
        })
    }

    /// Drops the read-only user `username` of `database` if it carries
    /// `mark`, ending its sessions; gone already is fine.
    fn drop_reader<'a>(
        &'a self,
        _conn: &'a Connection,
        _database: &'a str,
        _username: &'a str,
        _mark: &'a Mark,
    ) -> BoxFuture<'a, Result<(), AdminError>> {
        Box::pin(async { Ok(()) })
    }

    /// True when the server refuses an unencrypted connection of `username`
    /// to `database` before checking any password (no password is sent that
    /// could be wrong to reveal).
    fn refuses_plaintext<'a>(
        &'a self,
        _conn: &'a Connection,
        _database: &'a str,
        _username: &'a str,
    ) -> BoxFuture<'a, Result<bool, AdminError>> {
        Box::pin(async { Err(AdminError::Refused("this engine cannot be asked".into())) })
    }

    /// True when the server can keep an audit log of what sessions do.
    fn can_audit<'a>(&'a self, _conn: &'a Connection) -> BoxFuture<'a, Result<bool, AdminError>> {
        Box::pin(async { Ok(false) })
    }

    /// Turns the audit log on for every session of `database`, in a way its
    /// users cannot turn off.
    fn audit<'a>(
        &'a self,
        _conn: &'a Connection,
        _database: &'a str,
    ) -> BoxFuture<'a, Result<(), AdminError>> {
        Box::pin(async { Err(AdminError::Refused("this engine keeps no audit log".into())) })
    }

    /// True when `grant.username`/`grant.password` log in to `grant.database`.
    fn can_login<'a>(&'a self, conn: &'a Connection, grant: &'a Grant) -> BoxFuture<'a, bool>;
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

    /// An error with a cause, as a client library wraps a connection's.
    #[derive(Debug, thiserror::Error)]
    #[error("error sending request")]
    struct Wrapped(#[source] std::io::Error);

    #[test]
    fn a_failed_handshake_is_told_from_an_unreachable_server() {
        let handshake = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        let failure = connection_failure(&Wrapped(handshake), "sent".into());
        assert!(
            matches!(&failure, AdminError::Tls(m) if m.contains("UnknownIssuer")),
            "{failure:?}"
        );
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let failure = connection_failure(&Wrapped(refused), "connection refused".into());
        assert!(
            matches!(&failure, AdminError::Unreachable(m) if m == "connection refused"),
            "{failure:?}"
        );
    }
}
