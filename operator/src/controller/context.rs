//! What every reconcile shares: how the operator runs ([`Config`]), the
//! client, event recorder, server administration and metrics
//! ([`Context`]), and why a reconcile failed ([`Error`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::finalizer;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client, Resource, ResourceExt};

use crate::api::{DatabaseServer, Reason};
use crate::children::MANAGED_BY;
use crate::engines::AdminError;
use crate::metrics::Metrics;

/// How the operator runs.
#[derive(Clone, Debug)]
pub struct Config {
    /// Watch only this namespace; `None` watches all.
    pub namespace: Option<String>,
    /// Re-check every object this often even when nothing changed.
    pub resync: Duration,
    /// Cluster domain, the operator's own pods and image repositories.
    pub platform: crate::children::Platform,
    /// Reporting instance in events (the pod name).
    pub instance: Option<String>,
    /// Label selector of the `DatabaseServer`s whose status this operator
    /// keeps (all when `None`). Claims may use any server.
    pub server_selector: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            namespace: None,
            resync: Duration::from_secs(300),
            platform: crate::children::Platform::default(),
            instance: None,
            server_selector: None,
        }
    }
}

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub config: Config,
    pub servers: crate::servers::Servers,
    pub metrics: Arc<Metrics>,
    /// The watched kinds, as last seen.
    pub caches: super::caches::Caches,
    /// Writes whose watch events are the operator's own doing.
    pub own: super::caches::OwnWrites,
    /// Statuses written lately, until the caches show them.
    pub written: super::apply::WrittenStatus,
    /// When each Service's status was last written.
    pub status_pace: super::service::StatusPace,
    /// When each Service's ownership table was last written.
    pub table_pace: super::service::TablePace,
    /// When each DatabaseServer's count of claims was last written.
    pub server_pace: super::service::StatusPace,
    /// Claims' turns at their servers.
    pub turns: Arc<super::claim::Turns>,
    /// Claims waiting for their Secrets' ownership-table entries.
    pub fences: Arc<super::claim::Fences>,
    /// DatabaseServers to look at again now (a claim could not reach one).
    server_checks: tokio::sync::mpsc::UnboundedSender<ObjectRef<DatabaseServer>>,
    /// Registered servers' admin credentials, by the Secret holding them,
    /// read at most once per [`ADMIN_SECRET_TTL`] (Secrets are not watched).
    admin_secrets: Mutex<HashMap<SecretRef, RememberedAdmin>>,
    /// One read at a time of each admin Secret: the reconciles that find
    /// nothing remembered at once (many, at start) wait for the first read
    /// instead of each asking the apiserver.
    admin_reads: crate::locks::KeyedLocks<SecretRef>,
    /// Registered servers' CA certificates, by the Secret holding them, read
    /// at most once per [`ADMIN_SECRET_TTL`].
    ca_secrets: Mutex<HashMap<SecretRef, (std::time::Instant, String)>>,
    failures: Mutex<HashMap<String, u32>>,
    cluster: tokio::sync::OnceCell<String>,
}

impl Context {
    /// The context, and the stream of DatabaseServers its reconciles ask to
    /// be looked at again ([`Context::server_failed`]).
    pub fn new(
        client: Client,
        config: Config,
        metrics: Arc<Metrics>,
        caches: super::caches::Caches,
        own: super::caches::OwnWrites,
        turns: Arc<super::claim::Turns>,
        fences: Arc<super::claim::Fences>,
    ) -> (
        Self,
        tokio::sync::mpsc::UnboundedReceiver<ObjectRef<DatabaseServer>>,
    ) {
        let (server_checks, checked) = tokio::sync::mpsc::unbounded_channel();
        let reporter = Reporter {
            controller: MANAGED_BY.into(),
            instance: config.instance.clone(),
        };
        let ctx = Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            config,
            servers: Default::default(),
            metrics,
            caches,
            own,
            written: Default::default(),
            status_pace: Default::default(),
            table_pace: Default::default(),
            server_pace: Default::default(),
            turns,
            fences,
            server_checks,
            admin_secrets: Mutex::default(),
            admin_reads: Default::default(),
            ca_secrets: Mutex::default(),
            failures: Mutex::default(),
            cluster: tokio::sync::OnceCell::new(),
        };
        (ctx, checked)
    }

    /// The identity of this cluster in ownership marks: the UID of its
    /// `kube-system` namespace (asked once).
    pub async fn cluster_id(&self) -> Result<String, Error> {
        self.cluster
            .get_or_try_init(|| async {
                let namespaces: Api<k8s_openapi::api::core::v1::Namespace> =
                    Api::all(self.client.clone());
                Ok::<_, Error>(
                    namespaces
                        .get("kube-system")
                        .await?
                        .uid()
                        .unwrap_or_default(),
                )
            })
            .await
            .cloned()
    }

    pub(super) fn api<K>(&self, namespace: &str) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// Next delay after a transient failure of `key`.
    pub(super) fn backoff(&self, key: String) -> Duration {
        let mut failures = self.failures.lock().unwrap();
        let n = failures.entry(key).or_insert(0);
        *n = n.saturating_add(1);
        backoff_delay(*n)
    }

    /// The username and password last read from admin Secret `ns`/`name`,
    /// if read less than [`ADMIN_SECRET_TTL`] ago.
    pub(super) fn remembered_admin(&self, ns: &str, name: &str) -> Option<(String, String)> {
        let secrets = self.admin_secrets.lock().unwrap();
        let (at, username, password) = secrets.get(&(ns.to_string(), name.to_string()))?;
        (at.elapsed() < ADMIN_SECRET_TTL).then(|| (username.clone(), password.clone()))
    }

    /// The right to read admin Secret `ns`/`name`, held by one reconcile at
    /// a time: who waited for it finds the credentials remembered.
    pub(super) async fn reading_admin(
        &self,
        ns: &str,
        name: &str,
    ) -> tokio::sync::OwnedMutexGuard<()> {
        let key = (ns.to_string(), name.to_string());
        self.admin_reads.lock(key).await
    }

    pub(super) fn remember_admin(&self, ns: &str, name: &str, username: &str, password: &str) {
        self.admin_secrets.lock().unwrap().insert(
            (ns.to_string(), name.to_string()),
            (std::time::Instant::now(), username.into(), password.into()),
        );
    }

    /// The CA certificate last read from Secret `ns`/`name`, if read less
    /// than [`ADMIN_SECRET_TTL`] ago.
    pub(super) fn remembered_ca(&self, ns: &str, name: &str) -> Option<String> {
        let cas = self.ca_secrets.lock().unwrap();
        let (at, pem) = cas.get(&(ns.to_string(), name.to_string()))?;
        (at.elapsed() < ADMIN_SECRET_TTL).then(|| pem.clone())
    }

    pub(super) fn remember_ca(&self, ns: &str, name: &str, pem: &str) {
        self.ca_secrets.lock().unwrap().insert(
            (ns.to_string(), name.to_string()),
            (std::time::Instant::now(), pem.into()),
        );
    }

    /// Forgets admin credentials a server refused: the next use reads the
    /// Secret again.
    fn forget_admin(&self, username: &str, password: &str) {
        self.admin_secrets
            .lock()
            .unwrap()
            .retain(|_, (_, u, p)| !(u == username && p == password));
    }

    /// Forgets a CA certificate a TLS handshake failed with: the next use
    /// reads its Secret again (a CA rotated there is taken at once).
    pub(super) fn forget_ca(&self, pem: &str) {
        self.ca_secrets.lock().unwrap().retain(|_, (_, p)| p != pem);
    }

    /// Forgets what a failure says is out of date: admin credentials the
    /// server refused, or the CA a handshake failed with.
    pub(super) fn forget_failed(&self, conn: &crate::engines::Connection, e: &AdminError) {
        match e {
            AdminError::AuthenticationFailed(_) => {
                self.forget_admin(&conn.username, &conn.password)
            }
            AdminError::Tls(_) => {
                if let Some(pem) = conn.tls.as_ref().and_then(|t| t.ca_pem.as_deref()) {
                    self.forget_ca(pem);
                }
            }
            _ => {}
        }
    }

    /// A claim could not reach DatabaseServer `name` (`e`): the server's
    /// last answer is not taken for its status any more, and its pass runs
    /// now rather than at its resync.
    pub(super) fn server_failed(
        &self,
        name: &str,
        conn: &crate::engines::Connection,
        e: &AdminError,
    ) {
        if matches!(
            e,
            AdminError::Unreachable(_)
                | AdminError::Timeout
                | AdminError::AuthenticationFailed(_)
                | AdminError::Tls(_)
        ) {
            self.servers.forget_answer(conn);
            let _ = self.server_checks.send(ObjectRef::new(name));
        }
    }

    pub(super) fn succeeded(&self, key: &str) {
        self.failures.lock().unwrap().remove(key);
    }
}

/// A Secret by namespace and name.
type SecretRef = (String, String);
/// When admin credentials were read, their username and password.
type RememberedAdmin = (std::time::Instant, String, String);

/// How long admin credentials read from a server's Secret are used before
/// the Secret is read again (at once after the server refuses them).
pub const ADMIN_SECRET_TTL: Duration = Duration::from_secs(60);

/// Delay before retry number `failures` (from 1): 1 s, doubling, at most 5 min.
pub fn backoff_delay(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(9);
    Duration::from_secs(1 << exponent).min(Duration::from_secs(300))
}

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object could not be read as the current API (e.g. written by
    /// another version); waits for a change.
    #[error("object does not match the dbps.io/v1alpha1 schema: {0}")]
    InvalidObject(String),
    /// The claim cannot be fulfilled as written; waits for a change.
    #[error("invalid spec: {0}")]
    InvalidSpec(String),
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A database server could not be used; retried with backoff.
    #[error("database server: {1}")]
    Unavailable(Reason, String),
    /// Cleanup outside Kubernetes failed; retried.
    #[error("cleanup: {0}")]
    Cleanup(String),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<finalizer::Error<Error>>),
}

impl Error {
    /// A stable label for logs and metrics.
    pub fn reason(&self) -> Reason {
        match self {
            Error::InvalidObject(_) => Reason::InvalidObject,
            Error::InvalidSpec(_) => Reason::InvalidSpec,
            Error::Kube(_) => Reason::KubernetesApi,
            Error::Cleanup(_) => Reason::CleanupFailed,
            Error::Unavailable(reason, _) => *reason,
            Error::Finalizer(e) => match &**e {
                finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e.reason(),
                _ => Reason::Finalizer,
            },
        }
    }

    /// Invalid input waits for a change; everything else is retried.
    pub fn is_permanent(&self) -> bool {
        self.reason().is_permanent()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_failures_back_off_exponentially_up_to_five_minutes() {
        let delays: Vec<u64> = [1, 2, 3, 4, 9, 10, 50]
            .map(|n| backoff_delay(n).as_secs())
            .to_vec();
        assert_eq!(delays, [1, 2, 4, 8, 256, 300, 300]);
    }

    #[test]
    fn invalid_input_waits_for_a_change_and_api_faults_are_retried() {
        assert!(Error::InvalidSpec("x".into()).is_permanent());
        assert!(Error::InvalidObject("x".into()).is_permanent());
        let transient = Error::Kube(kube::Error::Service("connection refused".into()));
        assert!(!transient.is_permanent());
        assert_eq!(transient.reason(), Reason::KubernetesApi);
        let unreachable = Error::Unavailable(Reason::ServerUnreachable, "down".into());
        assert_eq!(unreachable.reason().as_str(), "ServerUnreachable");
        assert!(!unreachable.is_permanent());
        let wrapped = Error::Finalizer(Box::new(finalizer::Error::ApplyFailed(
            Error::InvalidSpec("x".into()),
        )));
        assert!(wrapped.is_permanent());
    }
}
