//! One control plane per test binary, shared by its tests; a fresh namespace
//! per test. Tests of one binary run as threads of one process, each with its
//! own Tokio runtime, so clients are made per test while the processes are
//! shared, and stopped when the test binary exits.

use k8s_openapi::api::core::v1::Namespace;
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::sync::OnceCell;

use crate::{ControlPlane, Error};

static SHARED: OnceCell<ControlPlane> = OnceCell::const_new();

extern "C" fn stop_shared() {
    if let Some(plane) = SHARED.get() {
        plane.stop();
    }
}

/// The control plane shared by this process, started on first use.
pub async fn shared() -> Result<&'static ControlPlane, Error> {
    SHARED
        .get_or_try_init(|| async {
            let plane = ControlPlane::start().await?;
            // SAFETY: registering a plain extern "C" fn without captures.
            unsafe { libc::atexit(stop_shared) };
            Ok(plane)
        })
        .await
}

/// A test's view of the shared control plane: an admin client and a
/// namespace of its own.
pub struct TestContext {
    pub plane: &'static ControlPlane,
    pub client: Client,
    pub namespace: String,
}

impl TestContext {
    /// Starts (once) the shared control plane and creates a namespace named
    /// after `test` with a unique suffix.
    pub async fn new(test: &str) -> Result<Self, Error> {
        let plane = shared().await?;
        let client = plane.client().await?;
        let namespace = create_namespace(&client, test).await?;
        Ok(Self {
            plane,
            client,
            namespace,
        })
    }

    /// A namespaced API for `K` in this test's namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }
}

/// Creates a namespace `<prefix>-<random>` and returns its name.
pub async fn create_namespace(client: &Client, prefix: &str) -> Result<String, Error> {
    let prefix: String = prefix
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(40)
        .collect();
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "metadata": { "generateName": format!("{}-", prefix.trim_matches('-')) }
    }))
    .expect("static namespace");
    let created = Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await?;
    Ok(created
        .metadata
        .name
        .expect("apiserver names the namespace"))
}
