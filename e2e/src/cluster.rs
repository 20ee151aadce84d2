//! Where the cluster suites (`tests/cluster_*.rs`) run: the real node on
//! this machine (containerd, kubelet, kube-proxy, CoreDNS and kube-router
//! joined to a local control plane), or any cluster a kubeconfig names
//! (`DBPS_CLUSTER_KUBECONFIG`; `make e2e-kind` sets it for a kind cluster).
//! The suites are the same code on both: the operator is installed with the
//! chart and runs as a pod from its image, the database instances and the
//! services' pods run from images the target already holds (imported into
//! the node's containerd here, `kind load`ed there; never pulled).

use std::path::Path;
use std::time::Instant;

use crate::node::{Node, STORAGE_CLASS, host_sysctls};
use crate::{Error, TestContext};

/// The variable naming the kubeconfig of a cluster to run the suites on.
pub const KUBECONFIG_ENV: &str = "DBPS_CLUSTER_KUBECONFIG";

/// Where a dedicated claim's instance runs on a target: the version each
/// engine's claims name (the tag of an image the target holds) and the
/// StorageClass of its volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    pub postgres: String,
    pub influxdb: String,
    pub mongodb: String,
    pub opensearch: String,
    pub storage_class: String,
    /// Chart `instanceImages`: engine → repository, where not the official one.
    pub instance_images: Vec<(String, String)>,
}

impl Placement {
    /// The real node: images made here from this machine's PostgreSQL 15,
    /// InfluxDB and FerretDB (as the MongoDB-wire instance), volumes from
    /// the node's provisioner.
    pub fn real_node() -> Result<Self, Error> {
        Ok(Self::of_images(
            &crate::images::influxdb()?,
            &crate::images::ferretdb()?,
        ))
    }

    /// As [`Self::real_node`], with the InfluxDB and FerretDB images already made.
    fn of_images(influxdb: &crate::images::Image, ferretdb: &crate::images::Image) -> Self {
        let tag = |name: &str| {
            name.rsplit_once(':')
                .map(|(_, t)| t.to_string())
                .unwrap_or_default()
        };
        Self {
            postgres: "15".into(),
            influxdb: tag(&influxdb.name),
            mongodb: tag(&ferretdb.name),
            opensearch: crate::binaries::Versions::pinned().opensearch,
            storage_class: STORAGE_CLASS.into(),
            instance_images: vec![("mongodb".into(), "ferretdb".into())],
        }
    }

    /// A cluster named by a kubeconfig: the official images, at the versions
    /// `DBPS_CLUSTER_{POSTGRES,INFLUXDB,MONGODB}_VERSION` name (those
    /// `e2e/kind/run.sh` loads), volumes of `DBPS_CLUSTER_STORAGE_CLASS`
    /// (kind's `standard` by default).
    pub fn from_env() -> Self {
        let var = |name: &str, default: &str| {
            std::env::var(name)
                .ok()
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| default.to_string())
        };
        Self {
            postgres: var("DBPS_CLUSTER_POSTGRES_VERSION", "15"),
            influxdb: var("DBPS_CLUSTER_INFLUXDB_VERSION", "1.8"),
            mongodb: var("DBPS_CLUSTER_MONGODB_VERSION", "7.0"),
            opensearch: var(
                "DBPS_CLUSTER_OPENSEARCH_VERSION",
                &crate::binaries::Versions::pinned().opensearch,
            ),
            storage_class: var("DBPS_CLUSTER_STORAGE_CLASS", "standard"),
            instance_images: vec![],
        }
    }

    /// The version claims of `engine` name here.
    pub fn version(&self, engine: &str) -> &str {
        match engine {
            "postgres" => &self.postgres,
            "influxdb" => &self.influxdb,
            "mongodb" => &self.mongodb,
            "opensearch" => &self.opensearch,
            other => panic!("no version of engine {other} on this target"),
        }
    }
}

/// Images the suites' own pods run, by the names the target holds them under.
#[derive(Clone, Debug)]
pub struct ClientImages {
    /// Has `psql` (the PostgreSQL image).
    pub psql: String,
    /// Has `influx` (the InfluxDB image).
    pub influx: String,
    /// Has `sh`, `nc`, `sed` and `grep`.
    pub busybox: String,
    /// The sample services, under the name their manifests use.
    pub samples: String,
    /// The operator: repository and tag the chart is installed with.
    pub operator: (String, String),
}

/// A test's cluster: its context (client, namespace, tools), where dedicated
/// instances go, the images its pods use, and — on this machine — the node.
pub struct Cluster {
    pub ctx: TestContext,
    pub placement: Placement,
    pub images: ClientImages,
    node: Option<Node>,
    sysctls_before: Vec<(String, String)>,
}

/// The name of the samples image in `sample-services/manifests/`.
pub fn samples_image() -> String {
    format!("ghcr.io/dbps-io/dbps-sample:{}", env!("CARGO_PKG_VERSION"))
}

impl Cluster {
    /// The cluster named by `DBPS_CLUSTER_KUBECONFIG` when set; otherwise a
    /// real node started here and joined to this test binary's control
    /// plane, with every image the suites use imported. Either way a fresh
    /// namespace named after `test`, enforcing Pod Security `restricted`.
    pub async fn start(test: &str) -> Result<Self, Error> {
        if let Some(path) = std::env::var_os(KUBECONFIG_ENV).filter(|v| !v.is_empty()) {
            let ctx = TestContext::on_cluster(test, Path::new(&path)).await?;
            crate::fixtures::enforce_restricted(&ctx.client, &ctx.namespace).await;
            let placement = Placement::from_env();
            let images = ClientImages {
                psql: format!("postgres:{}", placement.postgres),
                influx: format!("influxdb:{}", placement.influxdb),
                busybox: std::env::var("DBPS_CLUSTER_BUSYBOX")
                    .unwrap_or_else(|_| "busybox:1.36".into()),
                samples: samples_image(),
                operator: (
                    "dbps.local/dbps-operator".into(),
                    env!("CARGO_PKG_VERSION").into(),
                ),
            };
            return Ok(Self {
                ctx,
                placement,
                images,
                node: None,
                sysctls_before: Vec::new(),
            });
        }
        let bin = crate::node::binaries()?;
        let sysctls_before = host_sysctls();
        let ctx = TestContext::for_real_node(test).await?;
        // Workloads go to the real node only: the fake one is tainted.
        crate::node::keep_workloads_off_fake_nodes(&ctx.client).await?;
        crate::fixtures::enforce_restricted(&ctx.client, &ctx.namespace).await;
        let mut node = Node::start(&bin).await?;
        let started = Instant::now();
        node.join(ctx.plane()).await?;
        eprintln!("node Ready after {:?}", started.elapsed());
        let tag = env!("CARGO_PKG_VERSION");
        let operator = crate::images::operator(&crate::operator::binary(), tag);
        let samples = crate::images::samples(&crate::operator::samples_binary(), &samples_image());
        let postgres = crate::images::postgres("15")?;
        let influxdb = crate::images::influxdb()?;
        let ferretdb = crate::images::ferretdb()?;
        let busybox = crate::images::busybox();
        let started = Instant::now();
        for image in [
            &postgres, &influxdb, &ferretdb, &busybox, &samples, &operator,
        ] {
            node.import(image)?;
        }
        let placement = Placement::of_images(&influxdb, &ferretdb);
        eprintln!("images imported after {:?}", started.elapsed());
        let images = ClientImages {
            psql: postgres.name,
            influx: influxdb.name,
            busybox: busybox.name,
            samples: samples.name,
            operator: ("dbps.local/dbps-operator".into(), tag.into()),
        };
        Ok(Self {
            ctx,
            placement,
            images,
            node: Some(node),
            sysctls_before,
        })
    }

    /// Makes the OpenSearch instance image available, which only the suites
    /// with dedicated OpenSearch claims need (it is the largest): imported
    /// into the real node here; a cluster named by a kubeconfig already holds
    /// the official one (`e2e/kind/run.sh` loads it).
    pub fn import_opensearch(&self) -> Result<(), Error> {
        match &self.node {
            Some(node) => {
                let started = Instant::now();
                node.import(&crate::images::opensearch()?)?;
                eprintln!("OpenSearch image imported after {:?}", started.elapsed());
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// The spec of a dedicated claim of `service` on `engine` here, with
    /// `extra` fields merged in.
    pub fn dedicated(
        &self,
        service: &str,
        engine: &str,
        extra: serde_json::Value,
    ) -> serde_json::Value {
        let mut spec = serde_json::json!({
            "serviceRef": { "name": service }, "engine": engine,
            "version": self.placement.version(engine),
            "storage": { "size": "1Gi", "storageClassName": self.placement.storage_class }
        });
        if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
            spec.extend(extra.clone());
        }
        spec
    }

    /// What pod `name` of the test's namespace logged: from the node's log
    /// directory here (the apiserver cannot reach the node's kubelet), from
    /// the API elsewhere.
    pub async fn pod_log(&self, name: &str) -> String {
        if let Some(node) = &self.node {
            return node_pod_logs(node, &format!("{}_{name}_", self.ctx.namespace))
                .into_iter()
                .map(|(_, text)| text)
                .collect();
        }
        self.ctx
            .api::<k8s_openapi::api::core::v1::Pod>()
            .logs(name, &Default::default())
            .await
            .unwrap_or_default()
    }

    /// The peak resident set (`VmHWM`, MiB) of the process named `comm` in
    /// pod `uid` on the real node, found through the pod's cgroup; `None` on
    /// a cluster named by a kubeconfig, or when the process is not there.
    pub fn pod_process_peak_rss_mib(&self, uid: &str, comm: &str) -> Option<f64> {
        let node = self.node.as_ref()?;
        let root =
            Path::new("/sys/fs/cgroup/memory").join(node.cgroup_root.trim_start_matches('/'));
        let pod = find_dir(&root, &format!("pod{uid}"), 4)?;
        let mut dirs = vec![pod];
        while let Some(dir) = dirs.pop() {
            let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines() {
                let named = std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| c.trim() == comm);
                if !named {
                    continue;
                }
                let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
                return status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmHWM:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
                    .map(|kb| kb / 1024.0);
            }
            dirs.extend(
                std::fs::read_dir(&dir)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.is_dir()),
            );
        }
        None
    }

    /// Installs (or upgrades to) the chart in `dbps-system` with the operator
    /// image the target holds, and waits until the operator pod is Ready.
    pub async fn install_operator(&self) -> Result<(), Error> {
        use k8s_openapi::api::core::v1::Namespace;
        let namespaces = kube::Api::<Namespace>::all(self.ctx.client.clone());
        if namespaces.get_opt(OPERATOR_NAMESPACE).await?.is_none() {
            let ns: Namespace = serde_json::from_value(
                serde_json::json!({ "metadata": { "name": OPERATOR_NAMESPACE } }),
            )
            .expect("static namespace");
            namespaces.create(&Default::default(), &ns).await?;
        }
        crate::fixtures::enforce_restricted(&self.ctx.client, OPERATOR_NAMESPACE).await;
        let chart = concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/dbps-operator");
        let (repository, tag) = &self.images.operator;
        let mut set = vec![
            format!("image.repository={repository}"),
            format!("image.tag={tag}"),
            "image.pullPolicy=Never".into(),
            "resyncSeconds=60".into(),
        ];
        set.extend(
            self.placement
                .instance_images
                .iter()
                .map(|(engine, repo)| format!("instanceImages.{engine}={repo}")),
        );
        let mut args = vec![
            "upgrade",
            "--install",
            "dbps-operator",
            chart,
            "--namespace",
            OPERATOR_NAMESPACE,
            "--wait",
            "--timeout",
            "3m",
        ];
        for s in &set {
            args.extend(["--set", s]);
        }
        let out = self.ctx.tool("helm", &args)?;
        if !out.status.success() {
            return Err(Error::Wait(format!(
                "helm install failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(())
    }

    /// Ends the test: here, stops the node and checks that the host's
    /// kernel settings are as before and no cgroup of the node is left;
    /// on another cluster, deletes the test's namespace.
    pub async fn finish(mut self) {
        let Some(node) = self.node.take() else {
            let namespaces =
                kube::Api::<k8s_openapi::api::core::v1::Namespace>::all(self.ctx.client.clone());
            let _ = namespaces
                .delete(&self.ctx.namespace, &Default::default())
                .await;
            return;
        };
        let cgroup_root = node.cgroup_root.clone();
        drop(node);
        assert_eq!(host_sysctls(), self.sysctls_before, "host settings changed");
        for hierarchy in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
            let left = hierarchy.path().join(cgroup_root.trim_start_matches('/'));
            assert!(!left.exists(), "cgroup left: {}", left.display());
        }
        let unused = crate::node::unused_cgroups_left();
        assert!(unused.is_empty(), "cgroups left: {unused:?}");
    }
}

impl Drop for Cluster {
    /// A failing test shows the last lines the operator pods logged.
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        // Here the apiserver cannot reach the node's kubelet for logs: the
        // node keeps them in its own directory.
        if let Some(node) = &self.node {
            let prefix = format!("{OPERATOR_NAMESPACE}_dbps-operator");
            for (path, text) in node_pod_logs(node, &prefix) {
                let lines: Vec<&str> = text.lines().collect();
                let tail = lines[lines.len().saturating_sub(80)..].join("\n");
                eprintln!("--- last lines of {} ---\n{tail}", path.display());
            }
            return;
        }
        // A client of its own: the test's client needs the test's runtime,
        // which is unwinding on this thread.
        let kubeconfig = self.ctx.kubeconfig().to_path_buf();
        let shown = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            let fetch = async {
                let config = kube::config::Kubeconfig::read_from(&kubeconfig).ok()?;
                let client = crate::control_plane::client_from(config).await.ok()?;
                let pods = kube::Api::<k8s_openapi::api::core::v1::Pod>::namespaced(
                    client,
                    OPERATOR_NAMESPACE,
                );
                let list = pods
                    .list(
                        &kube::api::ListParams::default()
                            .labels("app.kubernetes.io/name=dbps-operator"),
                    )
                    .await
                    .ok()?;
                let mut out = String::new();
                for pod in list.items {
                    let name = pod.metadata.name.unwrap_or_default();
                    let params = kube::api::LogParams {
                        tail_lines: Some(80),
                        ..Default::default()
                    };
                    let log = pods.logs(&name, &params).await.unwrap_or_default();
                    out.push_str(&format!(
                        "--- last lines of operator pod {name} ---\n{log}\n"
                    ));
                }
                Some(out)
            };
            runtime
                .block_on(async {
                    tokio::time::timeout(std::time::Duration::from_secs(20), fetch).await
                })
                .ok()
                .flatten()
        })
        .join()
        .ok()
        .flatten();
        if let Some(text) = shown {
            eprintln!("{text}");
        }
    }
}

/// The log files of the node's pods whose directory (`<namespace>_<pod>_<uid>`)
/// starts with `prefix`, with their text.
fn node_pod_logs(node: &Node, prefix: &str) -> Vec<(std::path::PathBuf, String)> {
    let root = node.dir().join("pod-logs");
    files_under(&root)
        .into_iter()
        .filter(|f| {
            f.strip_prefix(&root)
                .is_ok_and(|p| p.to_string_lossy().starts_with(prefix))
        })
        .map(|f| {
            let text = std::fs::read_to_string(&f).unwrap_or_default();
            (f, text)
        })
        .collect()
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// The namespace the suites install the chart into.
pub const OPERATOR_NAMESPACE: &str = "dbps-system";

/// The directory named `name` under `root`, at most `depth` levels down.
fn find_dir(root: &Path, name: &str, depth: usize) -> Option<std::path::PathBuf> {
    let entries = std::fs::read_dir(root).ok()?;
    let dirs: Vec<_> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    if let Some(found) = dirs
        .iter()
        .find(|p| p.file_name().is_some_and(|n| n == name))
    {
        return Some(found.clone());
    }
    match depth {
        0 => None,
        _ => dirs.iter().find_map(|d| find_dir(d, name, depth - 1)),
    }
}
