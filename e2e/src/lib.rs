//! Test support for dbps: a real local Kubernetes control plane built from
//! the upstream binaries (etcd, kube-apiserver, kube-controller-manager,
//! kube-scheduler, kwok), started on loopback ports in a temp dir and torn
//! down on drop.
//!
//! ```no_run
//! # async fn demo() -> Result<(), dbps_e2e::Error> {
//! let plane = dbps_e2e::ControlPlane::start().await?;
//! let admin = plane.client().await?;
//! let alice = plane.client_for("alice", &["developers"]).await?;
//! println!("kubectl --kubeconfig {}", plane.kubeconfig_path().display());
//! # Ok(()) }
//! ```

pub mod binaries;
pub mod claims;
pub mod cluster;
pub mod control_plane;
pub mod databases;
pub mod fixtures;
pub mod images;
pub mod manifests;
pub mod node;
pub mod opensearch;
pub mod operator;
pub(crate) mod pki;
pub mod ports;
pub mod process;
pub mod shared;

pub use control_plane::{ControlPlane, Options};
pub use operator::RunningOperator;
pub use shared::{TestContext, shared};

/// Why a local component could not be provided.
#[derive(thiserror::Error)]
pub enum Error {
    #[error("control plane binaries: {0}")]
    Binaries(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{component} failed to start: {reason}\n--- last lines of its log ---\n{log_tail}")]
    Start {
        component: String,
        reason: String,
        log_tail: String,
    },
    #[error("certificates: {0}")]
    Pki(#[from] rcgen::Error),
    #[error("{0}")]
    Wait(String),
    #[error("kubeconfig: {0}")]
    Kubeconfig(String),
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("HTTP: {0}")]
    Http(#[from] reqwest::Error),
}

// `unwrap()` in tests prints Debug: make it the readable message, log tail included.
impl std::fmt::Debug for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl Error {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}

/// Installs rustls' ring provider as the process default (idempotent).
pub(crate) fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The sizes a benchmark runs: the comma-separated numbers in environment
/// variable `var`, or in `default` when it is not set.
pub fn sizes(var: &str, default: &str) -> Vec<usize> {
    std::env::var(var)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}
