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
    shared_with(crate::Options::default()).await
}

/// The shared control plane, started with `options` on first use; a plane
/// already started with another Service range is an error.
pub async fn shared_with(options: crate::Options) -> Result<&'static ControlPlane, Error> {
    let cidr = options.service_cidr;
    let plane = SHARED
        .get_or_try_init(|| async {
            let plane = ControlPlane::start_with(options).await?;
            // SAFETY: registering a plain extern "C" fn without captures.
            unsafe { libc::atexit(stop_shared) };
            Ok::<_, Error>(plane)
        })
        .await?;
    if plane.service_cidr() != cidr {
        return Err(Error::Wait(format!(
            "this test binary's control plane serves Services from {}, not {cidr}",
            plane.service_cidr()
        )));
    }
    Ok(plane)
}

/// A test's view of its cluster: an admin client and a namespace of its
/// own, on the control plane this process shares, or on a cluster named by a
/// kubeconfig ([`Self::on_cluster`]).
pub struct TestContext {
    plane: Option<&'static ControlPlane>,
    kubeconfig: std::path::PathBuf,
    pub client: Client,
    pub namespace: String,
}

impl TestContext {
    /// Starts (once) the shared control plane and creates a namespace named
    /// after `test` with a unique suffix.
    pub async fn new(test: &str) -> Result<Self, Error> {
        Self::with(test, crate::Options::default()).await
    }

    /// As [`Self::new`], on a plane a real node can join.
    pub async fn for_real_node(test: &str) -> Result<Self, Error> {
        Self::with(test, crate::Options::real_node()).await
    }

    async fn with(test: &str, options: crate::Options) -> Result<Self, Error> {
        let plane = shared_with(options).await?;
        let client = plane.client().await?;
        let namespace = create_namespace(&client, test).await?;
        Ok(Self {
            plane: Some(plane),
            kubeconfig: plane.kubeconfig_path().to_path_buf(),
            client,
            namespace,
        })
    }

    /// A namespace named after `test` on the cluster `kubeconfig` names
    /// (its current context, with the rights it grants): no local process.
    pub async fn on_cluster(test: &str, kubeconfig: &std::path::Path) -> Result<Self, Error> {
        crate::install_crypto_provider();
        let config = kube::config::Kubeconfig::read_from(kubeconfig)
            .map_err(|e| Error::Kubeconfig(format!("{}: {e}", kubeconfig.display())))?;
        let client = crate::control_plane::client_from(config).await?;
        let namespace = create_namespace(&client, test).await?;
        Ok(Self {
            plane: None,
            kubeconfig: kubeconfig.to_path_buf(),
            client,
            namespace,
        })
    }

    /// The local control plane this test runs on; panics on a cluster named
    /// by a kubeconfig, where no such plane exists.
    pub fn plane(&self) -> &'static ControlPlane {
        self.plane
            .expect("this test needs the local control plane, not a cluster named by a kubeconfig")
    }

    /// Whether this test runs on the local control plane.
    pub fn is_local(&self) -> bool {
        self.plane.is_some()
    }

    /// The kubeconfig with this context's (admin) rights.
    pub fn kubeconfig(&self) -> &std::path::Path {
        &self.kubeconfig
    }

    /// Runs `kubectl` or `helm` against this cluster with the context's
    /// rights: the local plane's build of the tool, or else the one on `PATH`.
    pub fn tool(&self, name: &str, args: &[&str]) -> Result<std::process::Output, Error> {
        if let Some(plane) = self.plane {
            return plane.tool(name, args);
        }
        let program = crate::binaries::dir()
            .ok()
            .map(|d| d.join(name))
            .filter(|p| p.exists())
            .unwrap_or_else(|| name.into());
        let home = std::env::temp_dir().join(format!("dbps-e2e-helm-{}", self.namespace));
        std::process::Command::new(program)
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_DATA_HOME", home.join("data"))
            .output()
            .map_err(|e| Error::io(format!("run {name}"), e))
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

impl TestContext {
    /// Waits (at most 90 s) until `condition` holds for object `name`, and
    /// returns it; panics naming `what` otherwise.
    pub async fn wait_for<K>(
        &self,
        api: &Api<K>,
        name: &str,
        what: &str,
        condition: impl kube::runtime::wait::Condition<K>,
    ) -> K
    where
        K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    {
        self.wait_for_within(
            api,
            name,
            what,
            std::time::Duration::from_secs(90),
            condition,
        )
        .await
    }

    /// As [`Self::wait_for`], waiting at most `limit`.
    pub async fn wait_for_within<K>(
        &self,
        api: &Api<K>,
        name: &str,
        what: &str,
        limit: std::time::Duration,
        condition: impl kube::runtime::wait::Condition<K>,
    ) -> K
    where
        K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    {
        let wait = kube::runtime::wait::await_condition(api.clone(), name, condition);
        match tokio::time::timeout(limit, wait).await {
            Ok(Ok(Some(obj))) => obj,
            Ok(Ok(None)) => panic!("{name} does not exist while waiting for {what}"),
            Ok(Err(e)) => panic!("watch failed while waiting for {what}: {e}"),
            Err(_) => {
                let now = api.get_opt(name).await.ok().flatten();
                let events = self.recent_events().await;
                panic!(
                    "timed out waiting for {what}; {name} is now: {now:#?}\n--- recent events in {} ---\n{events}",
                    self.namespace
                )
            }
        }
    }

    /// The namespace's last events, one line each: what a timed-out wait
    /// shows to tell why (a pod not scheduled, an image not found, …).
    pub async fn recent_events(&self) -> String {
        let events = self
            .api::<k8s_openapi::api::core::v1::Event>()
            .list(&Default::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default();
        let mut lines: Vec<(String, String)> = events
            .into_iter()
            .map(|e| {
                let when = e
                    .last_timestamp
                    .map(|t| t.0.to_string())
                    .or(e.event_time.map(|t| t.0.to_string()))
                    .unwrap_or_default();
                let object = format!(
                    "{}/{}",
                    e.involved_object.kind.unwrap_or_default(),
                    e.involved_object.name.unwrap_or_default()
                );
                let line = format!(
                    "{when} {object} {}: {}",
                    e.reason.unwrap_or_default(),
                    e.message.unwrap_or_default()
                );
                (when, line)
            })
            .collect();
        lines.sort();
        let start = lines.len().saturating_sub(30);
        lines[start..]
            .iter()
            .map(|(_, l)| l.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl TestContext {
    /// Waits (at most 90 s) until object `name` no longer exists.
    pub async fn wait_gone<K>(&self, api: &Api<K>, name: &str, what: &str)
    where
        K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    {
        let wait =
            kube::runtime::wait::await_condition(api.clone(), name, |o: Option<&K>| o.is_none());
        if tokio::time::timeout(std::time::Duration::from_secs(90), wait)
            .await
            .is_err()
        {
            let now = api.get_opt(name).await.ok().flatten();
            panic!("timed out waiting for {what}; {name} is now: {now:#?}")
        }
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
