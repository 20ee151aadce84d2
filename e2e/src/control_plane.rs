//! A real Kubernetes control plane on loopback ports: etcd and kube-apiserver
//! (RBAC, client-certificate authentication, service-account signing keys,
//! audit log), and optionally kube-controller-manager, kube-scheduler and
//! kwok with fake Ready nodes so workloads get scheduled and become Ready.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use crate::Error;
use crate::binaries;
use crate::pki::{self, Authority};
use crate::ports::free_port;
use crate::process::Process;

const KWOK_STAGES: &str = include_str!("../kwok/stages.yaml");
const AUDIT_POLICY: &str = "apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
";
/// The default StorageClass; kwok provisions its volumes.
pub const STORAGE_CLASS: &str = "dbps-local";
/// Annotation kwok selects the nodes it plays by.
pub const KWOK_NODE_ANNOTATION: &str = "kwok.x-k8s.io/node";

/// What to start besides etcd and kube-apiserver.
#[derive(Debug, Clone)]
pub struct Options {
    /// kube-controller-manager, kube-scheduler and kwok.
    pub workloads: bool,
    /// Number of fake kwok nodes (with `workloads`).
    pub nodes: usize,
    /// Range of Service cluster IPs.
    pub service_cidr: &'static str,
}

/// Service range of a plane with fake nodes only: loopback addresses, so a
/// connection to a Service from this machine (the operator administering a
/// dedicated instance) is refused here and never leaves it.
pub const LOOPBACK_SERVICE_CIDR: &str = "127.96.0.0/24";
/// Service range of a plane a real node joins: these addresses exist only in
/// the node's network namespace.
pub const NODE_SERVICE_CIDR: &str = "10.96.0.0/24";

impl Default for Options {
    fn default() -> Self {
        Self {
            workloads: true,
            nodes: 1,
            service_cidr: LOOPBACK_SERVICE_CIDR,
        }
    }
}

impl Options {
    /// etcd and kube-apiserver only: enough for API-level tests.
    pub fn api_only() -> Self {
        Self {
            workloads: false,
            nodes: 0,
            ..Self::default()
        }
    }

    /// A plane for a real node to join (see [`crate::node::Node::join`]).
    pub fn real_node() -> Self {
        Self {
            service_cidr: NODE_SERVICE_CIDR,
            ..Self::default()
        }
    }
}

pub struct ControlPlane {
    dir: Mutex<Option<tempfile::TempDir>>,
    path: PathBuf,
    processes: Mutex<Vec<Process>>,
    server: String,
    ca: Authority,
    admin_kubeconfig: PathBuf,
    audit_log: PathBuf,
    service_cidr: &'static str,
}

impl ControlPlane {
    /// Starts the whole control plane with one fake node.
    pub async fn start() -> Result<Self, Error> {
        Self::start_with(Options::default()).await
    }

    pub async fn start_with(options: Options) -> Result<Self, Error> {
        let bin = binaries::dir().map_err(Error::Binaries)?;
        let dir = tempfile::Builder::new()
            .prefix("dbps-control-plane-")
            .tempdir()
            .map_err(|e| Error::io("create temp dir", e))?;
        let path = dir.path().to_path_buf();
        let write = |name: &str, text: &str| -> Result<PathBuf, Error> {
            let p = path.join(name);
            std::fs::write(&p, text).map_err(|e| Error::io(format!("write {}", p.display()), e))?;
            Ok(p)
        };

        let ca = Authority::new("dbps-local-ca")?;
        let ca_file = write("ca.crt", ca.cert_pem())?;
        let (sa_private, sa_public) = pki::signing_key()?;
        let sa_key = write("service-account.key", &sa_private)?;
        let sa_pub = write("service-account.pub", &sa_public)?;
        let serving = ca.server(
            "kube-apiserver",
            &[
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ],
        )?;
        let serving_crt = write("serving.crt", &serving.cert_pem)?;
        let serving_key = write("serving.key", &serving.key_pem)?;
        let audit_policy = write("audit-policy.yaml", AUDIT_POLICY)?;
        let audit_log = path.join("audit.log");

        let mut plane = Self {
            dir: Mutex::new(Some(dir)),
            path: path.clone(),
            processes: Mutex::new(Vec::new()),
            server: String::new(),
            ca,
            admin_kubeconfig: path.join("admin.kubeconfig"),
            audit_log: audit_log.clone(),
            service_cidr: options.service_cidr,
        };

        // etcd
        let (client_port, peer_port) = (free_port()?, free_port()?);
        let etcd_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let mut etcd = Process::spawn(
            "etcd",
            &bin.join("etcd"),
            &args(&[
                ("--name", "default"),
                ("--data-dir", &path.join("etcd").display().to_string()),
                ("--listen-client-urls", &etcd_url),
                ("--advertise-client-urls", &etcd_url),
                ("--listen-peer-urls", &peer_url),
                ("--initial-advertise-peer-urls", &peer_url),
                ("--initial-cluster", &format!("default={peer_url}")),
                ("--unsafe-no-fsync", "true"),
                ("--log-level", "warn"),
            ]),
            &path,
            |_| {},
        )?;
        let http = http_client(None)?;
        let health = format!("{etcd_url}/health");
        etcd.wait_until(Duration::from_secs(30), || probe(&http, &health))
            .await?;
        plane.push(etcd);

        // kube-apiserver
        let api_port = free_port()?;
        plane.server = format!("https://127.0.0.1:{api_port}");
        let mut apiserver = Process::spawn(
            "kube-apiserver",
            &bin.join("kube-apiserver"),
            &args(&[
                ("--etcd-servers", &etcd_url),
                ("--bind-address", "127.0.0.1"),
                ("--advertise-address", "127.0.0.1"),
                ("--secure-port", &api_port.to_string()),
                ("--tls-cert-file", &path_str(&serving_crt)),
                ("--tls-private-key-file", &path_str(&serving_key)),
                ("--client-ca-file", &path_str(&ca_file)),
                // Node: what a real node's kubelet may read and write.
                ("--authorization-mode", "Node,RBAC"),
                // PodNodeSelector: a namespace's pods can be kept on one kind
                // of node (the demo puts dedicated instances on the real one).
                (
                    "--enable-admission-plugins",
                    "NodeRestriction,PodNodeSelector",
                ),
                (
                    "--service-account-issuer",
                    "https://kubernetes.default.svc.cluster.local",
                ),
                ("--service-account-key-file", &path_str(&sa_pub)),
                ("--service-account-signing-key-file", &path_str(&sa_key)),
                ("--service-cluster-ip-range", options.service_cidr),
                ("--endpoint-reconciler-type", "none"),
                ("--allow-privileged", "true"),
                ("--audit-policy-file", &path_str(&audit_policy)),
                ("--audit-log-path", &path_str(&audit_log)),
                ("--audit-log-format", "json"),
                (
                    "--cert-dir",
                    &path.join("apiserver-certs").display().to_string(),
                ),
                ("--profiling", "false"),
                ("--v", "1"),
            ]),
            &path,
            |_| {},
        )?;
        let admin = plane.write_kubeconfig("admin", &["system:masters"])?;
        std::fs::rename(&admin, &plane.admin_kubeconfig)
            .map_err(|e| Error::io("place admin kubeconfig", e))?;
        let admin_http = http_client(Some((&plane.ca, "probe", &["system:masters"])))?;
        let readyz = format!("{}/readyz", plane.server);
        apiserver
            .wait_until(Duration::from_secs(60), || probe(&admin_http, &readyz))
            .await?;
        plane.push(apiserver);

        if options.workloads {
            plane.start_workloads(&bin, &sa_key, &ca_file).await?;
            plane.add_storage_class().await?;
            plane.add_nodes(options.nodes).await?;
        }
        Ok(plane)
    }

    async fn start_workloads(
        &self,
        bin: &Path,
        sa_key: &Path,
        ca_file: &Path,
    ) -> Result<(), Error> {
        let path = &self.path;
        let serving = self.ca.server("local-components", &[])?;
        let crt = path.join("components.crt");
        let key = path.join("components.key");
        for (p, text) in [(&crt, &serving.cert_pem), (&key, &serving.key_pem)] {
            std::fs::write(p, text).map_err(|e| Error::io("write serving cert", e))?;
        }
        let http = http_client(Some((&self.ca, "probe", &[])))?;

        // kube-controller-manager, under its own bootstrap identity.
        let cm_kubeconfig = self.write_kubeconfig("system:kube-controller-manager", &[])?;
        let cm_port = free_port()?;
        let mut cm = Process::spawn(
            "kube-controller-manager",
            &bin.join("kube-controller-manager"),
            &args(&[
                ("--kubeconfig", &path_str(&cm_kubeconfig)),
                ("--authentication-kubeconfig", &path_str(&cm_kubeconfig)),
                ("--authorization-kubeconfig", &path_str(&cm_kubeconfig)),
                ("--leader-elect", "false"),
                ("--bind-address", "127.0.0.1"),
                ("--secure-port", &cm_port.to_string()),
                ("--tls-cert-file", &path_str(&crt)),
                ("--tls-private-key-file", &path_str(&key)),
                ("--service-account-private-key-file", &path_str(sa_key)),
                ("--root-ca-file", &path_str(ca_file)),
                ("--controllers", "*"),
                ("--use-service-account-credentials", "true"),
                ("--v", "1"),
            ]),
            path,
            |_| {},
        )?;
        let healthz = format!("https://127.0.0.1:{cm_port}/healthz");
        cm.wait_until(Duration::from_secs(60), || probe(&http, &healthz))
            .await?;
        self.push(cm);

        // kube-scheduler
        let sched_kubeconfig = self.write_kubeconfig("system:kube-scheduler", &[])?;
        let sched_port = free_port()?;
        let mut scheduler = Process::spawn(
            "kube-scheduler",
            &bin.join("kube-scheduler"),
            &args(&[
                ("--kubeconfig", &path_str(&sched_kubeconfig)),
                ("--authentication-kubeconfig", &path_str(&sched_kubeconfig)),
                ("--authorization-kubeconfig", &path_str(&sched_kubeconfig)),
                ("--leader-elect", "false"),
                ("--bind-address", "127.0.0.1"),
                ("--secure-port", &sched_port.to_string()),
                ("--tls-cert-file", &path_str(&crt)),
                ("--tls-private-key-file", &path_str(&key)),
                ("--v", "1"),
            ]),
            path,
            |_| {},
        )?;
        let healthz = format!("https://127.0.0.1:{sched_port}/healthz");
        scheduler
            .wait_until(Duration::from_secs(60), || probe(&http, &healthz))
            .await?;
        self.push(scheduler);

        // kwok plays the kubelet of annotated fake nodes; pod and node
        // addresses it reports are loopback ones.
        let stages = path.join("kwok-stages.yaml");
        std::fs::write(&stages, KWOK_STAGES).map_err(|e| Error::io("write kwok stages", e))?;
        let kwok_port = free_port()?;
        let mut kwok = Process::spawn(
            "kwok",
            &bin.join("kwok"),
            &args(&[
                ("--kubeconfig", &path_str(&self.admin_kubeconfig)),
                ("--config", &path_str(&stages)),
                (
                    "--manage-nodes-with-annotation-selector",
                    &format!("{KWOK_NODE_ANNOTATION}=fake"),
                ),
                ("--node-lease-duration-seconds", "40"),
                ("--node-ip", "127.0.0.1"),
                ("--cidr", "127.64.0.1/16"),
                ("--server-address", &format!("127.0.0.1:{kwok_port}")),
            ]),
            path,
            // kwok reads ~/.kwok; keep it inside the temp dir.
            |cmd| {
                cmd.env("HOME", path);
            },
        )?;
        let healthz = format!("http://127.0.0.1:{kwok_port}/healthz");
        kwok.wait_until(Duration::from_secs(30), || probe(&http, &healthz))
            .await?;
        self.push(kwok);
        Ok(())
    }

    /// The default StorageClass `dbps-local`, whose claims kwok provisions.
    async fn add_storage_class(&self) -> Result<(), Error> {
        let class: StorageClass = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": STORAGE_CLASS,
                "annotations": { "storageclass.kubernetes.io/is-default-class": "true" },
            },
            "provisioner": "dbps.local/kwok-volume",
            "reclaimPolicy": "Delete",
            "volumeBindingMode": "Immediate",
        }))
        .expect("static storage class");
        let api: Api<StorageClass> = Api::all(self.client().await?);
        api.create(&PostParams::default(), &class).await?;
        Ok(())
    }

    /// Registers `count` fake nodes played by kwok and waits until they are Ready.
    pub async fn add_nodes(&self, count: usize) -> Result<(), Error> {
        let client = self.client().await?;
        let nodes: Api<Node> = Api::all(client);
        let existing = nodes.list(&Default::default()).await?.items.len();
        let mut names = Vec::new();
        for i in existing..existing + count {
            let name = format!("kwok-node-{i}");
            let node: Node = serde_json::from_value(serde_json::json!({
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": name,
                    "annotations": { KWOK_NODE_ANNOTATION: "fake" },
                    "labels": {
                        "type": "kwok",
                        "kubernetes.io/hostname": name,
                        "kubernetes.io/os": "linux",
                        "kubernetes.io/arch": "amd64",
                    },
                },
            }))
            .expect("static node");
            nodes.create(&PostParams::default(), &node).await?;
            names.push(name);
        }
        for name in names {
            let ready = kube::runtime::wait::await_condition(nodes.clone(), &name, node_ready);
            let ok = tokio::time::timeout(Duration::from_secs(60), ready).await;
            if !matches!(ok, Ok(Ok(Some(_)))) {
                let mut procs = self.processes.lock().unwrap();
                let kwok = procs.iter_mut().find(|p| p.name() == "kwok");
                return Err(match kwok {
                    Some(p) => p.failure(format!("node {name} did not become Ready")),
                    None => Error::Binaries("kwok is not running".into()),
                });
            }
        }
        Ok(())
    }

    fn push(&self, p: Process) {
        self.processes.lock().unwrap().push(p);
    }

    /// `https://127.0.0.1:<port>`.
    /// The apiserver's port on 127.0.0.1.
    /// Range of Service cluster IPs.
    pub fn service_cidr(&self) -> &'static str {
        self.service_cidr
    }

    /// Whether Services get loopback addresses (a plane without a real node).
    pub fn loopback_services(&self) -> bool {
        self.service_cidr.starts_with("127.")
    }

    pub fn port(&self) -> u16 {
        self.server
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_default()
    }

    /// The CA that signed the apiserver's certificate (PEM file).
    pub fn ca_file(&self) -> PathBuf {
        self.path.join("ca.crt")
    }

    pub fn server_url(&self) -> &str {
        &self.server
    }

    /// A kubeconfig for `kubectl` with cluster-admin rights.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.admin_kubeconfig
    }

    /// The apiserver's JSON audit log (one event per line, level Metadata).
    pub fn audit_log_path(&self) -> &Path {
        &self.audit_log
    }

    /// The temp dir holding certificates, data and component logs.
    pub fn dir(&self) -> &Path {
        &self.path
    }

    /// PIDs of the running components.
    pub fn pids(&self) -> Vec<u32> {
        let procs = self.processes.lock().unwrap();
        procs.iter().filter_map(Process::pid).collect()
    }

    /// Log files of the components, in start order.
    pub fn logs(&self) -> Vec<(String, PathBuf)> {
        let procs = self.processes.lock().unwrap();
        procs
            .iter()
            .map(|p| (p.name().to_string(), p.log_path().to_path_buf()))
            .collect()
    }

    /// A client with cluster-admin rights (group `system:masters`).
    pub async fn client(&self) -> Result<Client, Error> {
        let kc = Kubeconfig::read_from(&self.admin_kubeconfig)
            .map_err(|e| Error::Kubeconfig(e.to_string()))?;
        client_from(kc).await
    }

    /// A client authenticated by certificate as `user` in `groups`; RBAC
    /// decides what it may do.
    pub async fn client_for(&self, user: &str, groups: &[&str]) -> Result<Client, Error> {
        let path = self.write_kubeconfig(user, groups)?;
        let kc = Kubeconfig::read_from(&path).map_err(|e| Error::Kubeconfig(e.to_string()))?;
        client_from(kc).await
    }

    /// Writes a kubeconfig for `user` in `groups` and returns its path.
    pub fn write_kubeconfig(&self, user: &str, groups: &[&str]) -> Result<PathBuf, Error> {
        let cert = self.ca.client(user, groups)?;
        let safe: String = user
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let dir = self.path.join("users");
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("create users dir", e))?;
        // Files of their own per call: concurrent tests writing for the same
        // user never read each other's half-written certificate or key.
        static WRITTEN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = WRITTEN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let crt = dir.join(format!("{safe}-{n}.crt"));
        let key = dir.join(format!("{safe}-{n}.key"));
        let kc = dir.join(format!("{safe}-{n}.kubeconfig"));
        std::fs::write(&crt, &cert.cert_pem).map_err(|e| Error::io("write client cert", e))?;
        std::fs::write(&key, &cert.key_pem).map_err(|e| Error::io("write client key", e))?;
        let text = format!(
            "apiVersion: v1
kind: Config
clusters:
- name: dbps-local
  cluster:
    server: {server}
    certificate-authority: {ca}
users:
- name: {user:?}
  user:
    client-certificate: {crt}
    client-key: {key}
contexts:
- name: dbps-local
  context:
    cluster: dbps-local
    user: {user:?}
current-context: dbps-local
",
            server = self.server,
            ca = self.path.join("ca.crt").display(),
            crt = crt.display(),
            key = key.display(),
        );
        std::fs::write(&kc, text).map_err(|e| Error::io("write kubeconfig", e))?;
        Ok(kc)
    }

    /// Stops every component (newest first) and removes the temp dir.
    /// Idempotent; also runs on drop.
    pub fn stop(&self) {
        let mut procs = self.processes.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(mut p) = procs.pop() {
            p.stop();
        }
        drop(procs);
        let dir = self.dir.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(dir) = dir {
            if std::env::var_os("DBPS_KEEP_CONTROL_PLANE_DIR").is_some() {
                eprintln!("keeping {}", dir.keep().display());
            } else {
                let _ = dir.close();
            }
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}

fn node_ready(node: Option<&Node>) -> bool {
    node.and_then(|n| n.status.as_ref())
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

pub(crate) async fn client_from(kc: Kubeconfig) -> Result<Client, Error> {
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| Error::Kubeconfig(e.to_string()))?;
    Ok(Client::try_from(config)?)
}

fn args(pairs: &[(&str, &str)]) -> Vec<String> {
    pairs.iter().map(|(k, v)| format!("{k}={v}")).collect()
}

fn path_str(p: &Path) -> String {
    p.display().to_string()
}

/// An HTTP client trusting the control plane's CA, optionally presenting a
/// client certificate for `user` in `groups`.
fn http_client(identity: Option<(&Authority, &str, &[&str])>) -> Result<reqwest::Client, Error> {
    crate::install_crypto_provider();
    let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(5));
    if let Some((ca, user, groups)) = identity {
        let root = reqwest::Certificate::from_pem(ca.cert_pem().as_bytes())?;
        let cert = ca.client(user, groups)?;
        let pem = format!("{}{}", cert.cert_pem, cert.key_pem);
        builder = builder
            .tls_certs_only([root])
            .identity(reqwest::Identity::from_pem(pem.as_bytes())?);
    }
    Ok(builder.build()?)
}

async fn probe(http: &reqwest::Client, url: &str) -> bool {
    matches!(http.get(url).send().await, Ok(r) if r.status().is_success())
}

impl ControlPlane {
    /// Current size of the audit log: pass it to [`Self::audit_events_since`].
    pub fn audit_offset(&self) -> u64 {
        std::fs::metadata(&self.audit_log)
            .map(|m| m.len())
            .unwrap_or(0)
    }

    /// Audit events (JSON) written after `offset`, completed requests only.
    pub fn audit_events_since(&self, offset: u64) -> Vec<serde_json::Value> {
        use std::io::{Read, Seek, SeekFrom};
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.audit_log) {
            let _ = f.seek(SeekFrom::Start(offset));
            let _ = f.read_to_string(&mut text);
        }
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|e| e["stage"] == "ResponseComplete")
            .collect()
    }
}

impl ControlPlane {
    /// Runs one of the control plane's tools (`kubectl`, `helm`) against this
    /// control plane with cluster-admin rights.
    pub fn tool(&self, name: &str, args: &[&str]) -> Result<std::process::Output, Error> {
        let bin = binaries::dir().map_err(Error::Binaries)?;
        std::process::Command::new(bin.join(name))
            .args(args)
            .env("KUBECONFIG", &self.admin_kubeconfig)
            .env("HELM_CACHE_HOME", self.path.join("helm/cache"))
            .env("HELM_CONFIG_HOME", self.path.join("helm/config"))
            .env("HELM_DATA_HOME", self.path.join("helm/data"))
            .output()
            .map_err(|e| Error::io(format!("run {name}"), e))
    }
}
