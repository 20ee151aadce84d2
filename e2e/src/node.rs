//! A real node on this machine, in network and mount namespaces of its own:
//! containerd (with runc) runs there, on the node address 10.250.0.2, with
//! the kernel settings kubelet checks masked inside its private mount
//! namespace so the host's values never change. Everything it starts is
//! recorded (`~/.cache/dbps/real-node/<id>.json`: the namespace holder's pid
//! and start time, the cgroups it made) and removed by that record — on
//! drop, or by the next start when a run was killed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Error;
use crate::process::Process;

/// The node's address, on its own loopback device, inside its namespace.
pub const NODE_IP: &str = "10.250.0.2";

/// Kernel settings kubelet wants, masked (bind-mounted) inside the node's
/// mount namespace: kubelet reads them there (`protectKernelDefaults`) and
/// never writes the host's.
pub const MASKED_SYSCTLS: &[(&str, &str)] = &[
    ("vm/overcommit_memory", "1"),
    ("vm/panic_on_oom", "0"),
    ("kernel/panic", "10"),
    ("kernel/panic_on_oops", "1"),
    ("kernel/keys/root_maxkeys", "1000000"),
    ("kernel/keys/root_maxbytes", "25000000"),
];

/// The real node's binaries, built once by `e2e/tools/build-binaries.sh --node`.
pub fn binaries() -> Result<PathBuf, Error> {
    let out = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tools/build-binaries.sh"
    ))
    .arg("--node")
    .output()
    .map_err(|e| Error::io("run build-binaries.sh --node", e))?;
    if !out.status.success() {
        return Err(Error::Binaries(
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    Ok(PathBuf::from(
        stdout.lines().last().unwrap_or_default().trim(),
    ))
}

/// Taints every node but the real one, so workloads land on the real node.
pub async fn keep_workloads_off_fake_nodes(client: &kube::Client) -> Result<(), Error> {
    let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client.clone());
    for node in nodes.list(&Default::default()).await?.items {
        let name = node.metadata.name.unwrap_or_default();
        if name == NODE_NAME {
            continue;
        }
        let taint = serde_json::json!({ "spec": { "taints": [{ "key": "dbps.io/fake-node", "effect": "NoSchedule" }] } });
        nodes
            .patch(
                &name,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(taint),
            )
            .await?;
    }
    Ok(())
}

/// Host-wide settings a node could be tempted to change; a run must leave
/// them as it found them.
pub const WATCHED_SYSCTLS: &[&str] = &[
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
    "net/ipv4/ip_forward",
    "net/netfilter/nf_conntrack_max",
];

/// The host's values of [`WATCHED_SYSCTLS`].
pub fn host_sysctls() -> Vec<(String, String)> {
    WATCHED_SYSCTLS
        .iter()
        .map(|s| {
            let v = std::fs::read_to_string(Path::new("/proc/sys").join(s)).unwrap_or_default();
            (s.to_string(), v.trim().to_string())
        })
        .collect()
}

/// What a run leaves to be removed, written before it is made.
#[derive(Serialize, Deserialize, Default, Debug)]
struct Record {
    holder_pid: u32,
    holder_start: u64,
    /// The node's own cgroup directories this run made, one per hierarchy
    /// (the shared ones above them are listed by [`SharedCgroups`]).
    cgroups: Vec<PathBuf>,
    /// The node's cgroup path; kubelet and runc make it in hierarchies the
    /// run did not (the cgroup v2 one of a hybrid host): removed in each.
    #[serde(default)]
    cgroup_root: String,
    dir: PathBuf,
}

fn records_dir() -> PathBuf {
    std::env::var_os("DBPS_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/dbps")
        })
        .join("real-node")
}

/// Start time of process `pid` (field 22 of `/proc/<pid>/stat`), which tells
/// a recorded process from a later one with the same pid.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    after.split_whitespace().nth(19)?.parse().ok()
}

/// The processes in a cgroup directory (and below it).
fn cgroup_pids(dir: &Path) -> Vec<u32> {
    let mut pids: Vec<u32> = std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                pids.extend(cgroup_pids(&entry.path()));
            }
        }
    }
    pids
}

/// Removes a cgroup directory and the ones kubelet and runc made below it.
fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&entry.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// Whether `dir` is a node's own cgroup (`…/dbps-node-<id>`), which only its
/// run uses; the directories above it may be shared by concurrent runs.
fn is_node_cgroup(dir: &Path) -> bool {
    dir.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("dbps-node-"))
}

/// The cgroup directories above the nodes' own that runs made because a
/// hierarchy lacked them (the job's memory cgroup path, mirrored in the
/// other hierarchies). Concurrent runs share them, so they are listed in one
/// file, changed under an exclusive lock, and removed by whichever run finds
/// them empty; the lock is released when this value drops.
struct SharedCgroups {
    _lock: std::fs::File,
}

impl SharedCgroups {
    fn lock() -> Result<Self, Error> {
        use std::os::fd::AsRawFd;
        let dir = records_dir();
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("records dir", e))?;
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("cgroups.lock"))
            .map_err(|e| Error::io("cgroup lock", e))?;
        // SAFETY: flock on a descriptor this value owns.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(Error::io("cgroup lock", std::io::Error::last_os_error()));
        }
        Ok(Self { _lock: lock })
    }

    fn list_path() -> PathBuf {
        records_dir().join("cgroup-parents.json")
    }

    fn made(&self) -> Vec<PathBuf> {
        std::fs::read(Self::list_path())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn save(&self, made: &[PathBuf]) -> Result<(), Error> {
        let text = serde_json::to_vec(made).expect("paths serialize");
        std::fs::write(Self::list_path(), text).map_err(|e| Error::io("cgroup parents", e))
    }

    /// Removes the listed directories no run uses any more (a cgroup with a
    /// child or a process refuses `rmdir`), deepest first.
    fn remove_unused(&self, extra: &[PathBuf]) {
        let mut made = self.made();
        for dir in extra {
            if !made.contains(dir) {
                made.push(dir.clone());
            }
        }
        made.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        made.retain(|dir| dir.exists() && std::fs::remove_dir(dir).is_err());
        let _ = self.save(&made);
    }
}

impl Record {
    /// Every directory of the node's cgroup, in every hierarchy.
    fn cgroup_dirs(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = self
            .cgroups
            .iter()
            .filter(|d| is_node_cgroup(d))
            .cloned()
            .collect();
        if self.cgroup_root.contains("dbps-node-") {
            let hierarchies = std::fs::read_dir("/sys/fs/cgroup")
                .into_iter()
                .flatten()
                .flatten();
            for h in hierarchies {
                let dir = h.path().join(self.cgroup_root.trim_start_matches('/'));
                if dir.exists() && !dirs.contains(&dir) {
                    dirs.push(dir);
                }
            }
        }
        dirs
    }

    /// Ends everything the record names: processes in its cgroups, its
    /// namespace holder (the namespaces, their mounts and links go with it),
    /// then the cgroups and the directory.
    fn remove(&self) {
        let cgroups = self.cgroup_dirs();
        for _ in 0..3 {
            let mut killed = false;
            for cg in cgroups.iter().rev() {
                for pid in cgroup_pids(cg) {
                    // SAFETY: a process inside a cgroup this run made.
                    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
                    killed = true;
                }
            }
            if !killed {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        if start_time(self.holder_pid) == Some(self.holder_start) {
            // SAFETY: the recorded holder, recognised by its start time.
            unsafe { libc::kill(self.holder_pid as libc::pid_t, libc::SIGKILL) };
            for _ in 0..50 {
                if start_time(self.holder_pid) != Some(self.holder_start) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // The node's own cgroups with what kubelet and runc made below them;
        // then the shared directories above, if no other run still uses them
        // (a record of an earlier layout may list some of them itself).
        let shared = SharedCgroups::lock();
        for cg in cgroups.iter().rev() {
            remove_cgroup_tree(cg);
        }
        if let Ok(shared) = shared {
            let above: Vec<PathBuf> = self
                .cgroups
                .iter()
                .filter(|d| !is_node_cgroup(d))
                .cloned()
                .collect();
            shared.remove_unused(&above);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Removes what runs that were killed before their teardown left behind.
pub fn sweep_leftovers() {
    let Ok(entries) = std::fs::read_dir(records_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(record) = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Record>(&b).ok())
        else {
            continue;
        };
        // A run whose holder still runs under the process that started it
        // is alive; any other record is what a killed run left.
        let alive = start_time(record.holder_pid) == Some(record.holder_start)
            && !is_orphan(record.holder_pid);
        if !alive {
            record.remove();
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// The shared cgroup directories runs made that are still there although no
/// run is left to use them (none while any node's record exists).
pub fn unused_cgroups_left() -> Vec<PathBuf> {
    let Ok(shared) = SharedCgroups::lock() else {
        return Vec::new();
    };
    let running = std::fs::read_dir(records_dir())
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| {
            e.path().extension().is_some_and(|x| x == "json")
                && e.path() != SharedCgroups::list_path()
        });
    if running {
        return Vec::new();
    }
    shared.made().into_iter().filter(|d| d.exists()).collect()
}

/// Whether the run that started holder `pid` is gone (its parent is init).
fn is_orphan(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let ppid = stat
        .rsplit_once(')')
        .and_then(|(_, after)| after.split_whitespace().nth(1))
        .and_then(|p| p.parse::<u32>().ok());
    ppid.is_none_or(|p| p == 1)
}

/// A TCP forwarder from an address inside the node's network namespace to
/// one on the host's loopback: the node reaches the apiserver without any
/// route or link between the namespaces. Its listening socket (which keeps
/// the namespace alive) closes on drop.
struct Forwarder {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Forwarder {
    fn start(
        holder_pid: u32,
        listen: std::net::SocketAddr,
        target: std::net::SocketAddr,
    ) -> Result<Self, Error> {
        use std::os::fd::AsRawFd;
        use std::sync::atomic::Ordering;
        let node_ns = std::fs::File::open(format!("/proc/{holder_pid}/ns/net"))
            .map_err(|e| Error::io("open the node's network namespace", e))?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            // This thread's own namespace, to come back to after binding.
            let host_ns = match std::fs::File::open("/proc/thread-self/ns/net") {
                Ok(f) => f,
                Err(e) => return drop(tx.send(Err(e.to_string()))),
            };
            // SAFETY: setns on this thread only, with namespace fds it holds.
            if unsafe { libc::setns(node_ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return drop(tx.send(Err(std::io::Error::last_os_error().to_string())));
            }
            let listener = std::net::TcpListener::bind(listen);
            // SAFETY: as above, back to where the thread started.
            unsafe { libc::setns(host_ns.as_raw_fd(), libc::CLONE_NEWNET) };
            let listener = match listener.and_then(|l| l.set_nonblocking(true).map(|_| l)) {
                Ok(l) => l,
                Err(e) => return drop(tx.send(Err(e.to_string()))),
            };
            let _ = tx.send(Ok(()));
            while !stopping.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((inbound, _)) => {
                        std::thread::spawn(move || pipe(inbound, target));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(())) => Ok(Self {
                stop,
                thread: Some(thread),
            }),
            Ok(Err(e)) => Err(Error::Binaries(format!("forwarder {listen}: {e}"))),
            Err(_) => Err(Error::Binaries(format!("forwarder {listen}: no answer"))),
        }
    }
}

/// Copies both ways between `inbound` and a new connection to `target`.
fn pipe(inbound: std::net::TcpStream, target: std::net::SocketAddr) {
    let _ = inbound.set_nonblocking(false);
    let Ok(outbound) = std::net::TcpStream::connect(target) else {
        return;
    };
    let (Ok(mut a), Ok(mut b)) = (inbound.try_clone(), outbound.try_clone()) else {
        return;
    };
    let back = std::thread::spawn(move || {
        let _ = std::io::copy(&mut b, &mut a);
        let _ = a.shutdown(std::net::Shutdown::Write);
    });
    let (mut inbound, mut outbound) = (inbound, outbound);
    let _ = std::io::copy(&mut inbound, &mut outbound);
    let _ = outbound.shutdown(std::net::Shutdown::Write);
    let _ = back.join();
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The node's namespaces with containerd running in them.
pub struct Node {
    id: String,
    dir: PathBuf,
    bin: PathBuf,
    record_path: PathBuf,
    record: Record,
    holder: Option<Process>,
    procs: Vec<Process>,
    forwarders: Vec<Forwarder>,
    /// The task provisioning volumes of [`STORAGE_CLASS`], once joined.
    provisioner: Option<tokio::task::JoinHandle<()>>,
    /// The cgroup (one path in every hierarchy) the node's pods go under.
    pub cgroup_root: String,
}

/// Name of the real node in the cluster.
pub const NODE_NAME: &str = "dbps-node";

/// StorageClass of the volumes made on the real node (its provisioner:
/// [`PROVISIONER`], run by the harness while the node is joined).
pub const STORAGE_CLASS: &str = "dbps-node";

/// The provisioner name of [`STORAGE_CLASS`].
pub const PROVISIONER: &str = "dbps.io/node-local";

/// The bridge network of the node's pods.
pub const POD_CIDR: &str = "10.244.0.0/24";
/// The node's address on the pod bridge, the pods' gateway.
pub const POD_GATEWAY: &str = "10.244.0.1";

const SETUP: &str = r#"set -eu
ip link set lo up
ip addr add "$NODE_IP/32" dev lo
# The pod bridge (the CNI bridge plugin takes it as it finds it) and a route
# for Service addresses, so connections from the node itself reach Services
# (kube-proxy rewrites them to a pod's address on the way out).
ip link add cni0 type bridge
ip addr add "$POD_GATEWAY/24" dev cni0
ip link set cni0 up
ip route add "$SERVICE_CIDR" dev cni0 src "$POD_GATEWAY"
echo 1 > /proc/sys/net/ipv4/ip_forward
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p "$D/varlog" "$D/sysctl"
mount --bind "$D/varlog" /var/log
for s in $MASKS; do
  p=${s%%=*}; v=${s#*=}; f="$D/sysctl/$(echo "$p" | tr / _)"
  echo "$v" > "$f"
  mount --bind "$f" "/proc/sys/$p"
done
touch "$D/ready"
exec sleep infinity
"#;

impl Node {
    /// Why a real node cannot run here, if it cannot.
    pub fn unavailable() -> Option<String> {
        // SAFETY: plain getter.
        if unsafe { libc::geteuid() } != 0 {
            return Some("the real node needs root".into());
        }
        for tool in ["unshare", "nsenter", "ip", "mount", "iptables", "ipset"] {
            let found = std::env::var_os("PATH")
                .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).exists()))
                .unwrap_or(false)
                || Path::new("/usr/sbin").join(tool).exists();
            if !found {
                return Some(format!("{tool} is not installed"));
            }
        }
        if !Path::new("/sys/fs/cgroup/memory").exists() {
            return Some("no cgroup v1 memory hierarchy".into());
        }
        None
    }

    /// Starts the namespaces and containerd, with the node binaries in `bin`.
    pub async fn start(bin: &Path) -> Result<Self, Error> {
        if let Some(why) = Self::unavailable() {
            return Err(Error::Binaries(why));
        }
        sweep_leftovers();
        let id = format!("{:08x}", rand_id());
        let dir = std::env::temp_dir().join(format!("dbps-node-{id}"));
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("node dir", e))?;
        let records = records_dir();
        std::fs::create_dir_all(&records).map_err(|e| Error::io("records dir", e))?;
        let masks = MASKED_SYSCTLS
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ");
        let holder = Process::spawn(
            "node-namespaces",
            Path::new("/usr/bin/unshare"),
            &[
                "--net".into(),
                "--mount".into(),
                "--propagation".into(),
                "private".into(),
                "--".into(),
                "/bin/sh".into(),
                "-c".into(),
                SETUP.into(),
            ],
            &dir,
            |cmd| {
                cmd.env("D", &dir)
                    .env("NODE_IP", NODE_IP)
                    .env("POD_GATEWAY", POD_GATEWAY)
                    .env("SERVICE_CIDR", crate::control_plane::NODE_SERVICE_CIDR)
                    .env("MASKS", &masks);
            },
        )?;
        let holder_pid = holder.pid().unwrap_or_default();
        let mut node = Node {
            id: id.clone(),
            record_path: records.join(format!("{id}.json")),
            record: Record {
                holder_pid,
                holder_start: start_time(holder_pid).unwrap_or_default(),
                cgroups: Vec::new(),
                cgroup_root: String::new(),
                dir: dir.clone(),
            },
            dir,
            bin: bin.to_path_buf(),
            holder: Some(holder),
            procs: Vec::new(),
            forwarders: Vec::new(),
            provisioner: None,
            cgroup_root: String::new(),
        };
        node.save_record()?;
        let ready = node.dir.join("ready");
        node.holder
            .as_mut()
            .unwrap()
            .wait_until(Duration::from_secs(10), || {
                let ready = ready.clone();
                async move { ready.exists() }
            })
            .await?;
        node.make_cgroups()?;
        node.start_containerd().await?;
        Ok(node)
    }

    fn save_record(&self) -> Result<(), Error> {
        let text = serde_json::to_vec(&self.record).expect("record serializes");
        std::fs::write(&self.record_path, text).map_err(|e| Error::io("write node record", e))
    }

    /// One cgroup path in every hierarchy, under this process's memory
    /// cgroup (so the node's pods count against the same memory limit).
    fn make_cgroups(&mut self) -> Result<(), Error> {
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let memory_path = own
            .lines()
            .find_map(|l| {
                l.split(':')
                    .nth(2)
                    .filter(|_| l.split(':').nth(1) == Some("memory"))
            })
            .unwrap_or("/")
            .trim_end_matches('/')
            .to_string();
        self.cgroup_root = format!("{memory_path}/dbps-node-{}", self.id);
        self.record.cgroup_root = self.cgroup_root.clone();
        self.save_record()?;
        // Every mounted hierarchy, the cgroup v2 one of a hybrid host too
        // (runc would make the path there itself, and nothing would record it).
        let hierarchies: Vec<PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
            .map_err(|e| Error::io("cgroup hierarchies", e))?
            .flatten()
            .map(|h| h.path())
            .filter(|h| h.join("cgroup.procs").exists())
            .collect();
        // Under the lock, so that no other run removes a shared directory
        // above between its check and the creation below it.
        let shared = SharedCgroups::lock()?;
        let mut made = shared.made();
        for base in hierarchies {
            let cpuset = base.ends_with("cpuset");
            let mut path = base.clone();
            for part in self.cgroup_root.trim_start_matches('/').split('/') {
                let parent = path.clone();
                path = path.join(part);
                if path.exists() {
                    continue;
                }
                if is_node_cgroup(&path) {
                    self.record.cgroups.push(path.clone());
                    self.save_record()?;
                } else {
                    made.push(path.clone());
                    shared.save(&made)?;
                }
                std::fs::create_dir(&path)
                    .map_err(|e| Error::io(format!("create cgroup {}", path.display()), e))?;
                if cpuset {
                    for f in ["cpuset.cpus", "cpuset.mems"] {
                        let v = std::fs::read_to_string(parent.join(f)).unwrap_or_default();
                        std::fs::write(path.join(f), v.trim())
                            .map_err(|e| Error::io(format!("write {f}"), e))?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Moves `pid` into the node's cgroup `sub` (made under the root).
    fn enter_cgroup(&mut self, pid: u32, sub: &str) -> Result<(), Error> {
        for h in [
            "cpu", "cpuacct", "cpuset", "memory", "pids", "blkio", "devices", "freezer",
        ] {
            let root = Path::new("/sys/fs/cgroup")
                .join(h)
                .join(self.cgroup_root.trim_start_matches('/'));
            let path = root.join(sub);
            if !path.exists() {
                std::fs::create_dir(&path)
                    .map_err(|e| Error::io(format!("create cgroup {}", path.display()), e))?;
                if h == "cpuset" {
                    for f in ["cpuset.cpus", "cpuset.mems"] {
                        let v = std::fs::read_to_string(root.join(f)).unwrap_or_default();
                        let _ = std::fs::write(path.join(f), v.trim());
                    }
                }
            }
            std::fs::write(path.join("cgroup.procs"), pid.to_string())
                .map_err(|e| Error::io(format!("enter cgroup {}", path.display()), e))?;
        }
        Ok(())
    }

    /// The process holding the node's namespaces (`nsenter --target <pid>`).
    pub fn holder_pid(&self) -> u32 {
        self.record.holder_pid
    }

    /// Where the run's record is, until its teardown.
    pub fn record_path(&self) -> &Path {
        &self.record_path
    }

    /// Path of the node's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The containerd socket.
    pub fn containerd_socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    /// `nsenter` arguments that run a program inside the node's namespaces.
    fn inside(&self, program: &Path, args: &[String]) -> Vec<String> {
        let mut all = vec![
            "--target".to_string(),
            self.record.holder_pid.to_string(),
            "--net".into(),
            "--mount".into(),
            "--".into(),
            program.display().to_string(),
        ];
        all.extend(args.iter().cloned());
        all
    }

    /// Runs `program` inside the node's namespaces and returns its output.
    pub fn run(&self, program: &str, args: &[&str]) -> Result<std::process::Output, Error> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let program = if program.contains('/') {
            PathBuf::from(program)
        } else {
            self.bin.join(program)
        };
        let program = if program.exists() {
            program
        } else {
            PathBuf::from(program.file_name().unwrap_or_default())
        };
        Command::new("nsenter")
            .args(self.inside(&program, &args))
            .env("PATH", self.path_env())
            .output()
            .map_err(|e| Error::io("nsenter", e))
    }

    fn path_env(&self) -> String {
        format!(
            "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            self.bin.display()
        )
    }

    async fn start_containerd(&mut self) -> Result<(), Error> {
        let d = self.dir.clone();
        let config = d.join("containerd.toml");
        let text = format!(
            r#"version = 3
root = "{root}"
state = "/run/containerd"
oom_score = 0
[grpc]
  address = "{sock}"
[plugins."io.containerd.cri.v1.runtime"]
  enable_selinux = false
  disable_apparmor = true
  restrict_oom_score_adj = true
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "{bin}/runc"
        SystemdCgroup = false
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["{bin}"]
    conf_dir = "{d}/cni/net.d"
[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "registry.k8s.io/pause:3.10.2"
"#,
            root = d.join("containerd").display(),
            sock = self.containerd_socket().display(),
            bin = self.bin.display(),
            d = d.display(),
        );
        std::fs::create_dir_all(d.join("cni/net.d")).map_err(|e| Error::io("cni dir", e))?;
        std::fs::write(&config, text).map_err(|e| Error::io("write containerd config", e))?;
        // containerd and the shims it starts live in the node's cgroup.
        let mut containerd = self.spawn_inside(
            "containerd",
            "runtime",
            &["--config".into(), config.display().to_string()],
        )?;
        let sock = self.containerd_socket();
        let ctr = self.bin.join("ctr");
        containerd
            .wait_until(Duration::from_secs(30), || {
                let (sock, ctr) = (sock.clone(), ctr.clone());
                async move {
                    Command::new(&ctr)
                        .args(["--address", &sock.display().to_string(), "version"])
                        .output()
                        .is_ok_and(|o| o.status.success())
                }
            })
            .await?;
        self.procs.push(containerd);
        Ok(())
    }

    /// Joins the node to `plane`: the apiserver is forwarded into the
    /// node's namespace (on 127.0.0.1 and the node address, same port), the
    /// pod network is a bridge inside it, and kubelet registers the node
    /// `dbps-node` and waits until it is Ready.
    pub async fn join(&mut self, plane: &crate::ControlPlane) -> Result<(), Error> {
        if plane.service_cidr() != crate::control_plane::NODE_SERVICE_CIDR {
            return Err(Error::Wait(format!(
                "a node joins a plane serving Services from {} (Options::real_node), not {}",
                crate::control_plane::NODE_SERVICE_CIDR,
                plane.service_cidr()
            )));
        }
        let port = plane.port();
        let target: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
        for ip in [[127, 0, 0, 1], [10, 250, 0, 2]] {
            let listen: std::net::SocketAddr = (ip, port).into();
            self.forwarders
                .push(Forwarder::start(self.record.holder_pid, listen, target)?);
        }
        let d = self.dir.clone();
        // Pods: a bridge inside the namespace, no masquerade and no default
        // route (no way out): routes to the node and to Services only.
        let cni = format!(
            r#"{{"cniVersion": "1.0.0", "name": "dbps-pods", "plugins": [
  {{"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
    "ipam": {{"type": "host-local", "ranges": [[{{"subnet": "{POD_CIDR}"}}]], "dataDir": "{ipam}",
      "routes": [{{"dst": "{NODE_IP}/32"}}, {{"dst": "{services}"}}]}}}},
  {{"type": "portmap", "capabilities": {{"portMappings": true}}}}
]}}"#,
            ipam = d.join("cni-ipam").display(),
            services = crate::control_plane::NODE_SERVICE_CIDR,
        );
        std::fs::write(d.join("cni/net.d/10-dbps.conflist"), cni)
            .map_err(|e| Error::io("write CNI config", e))?;
        std::fs::write(d.join("resolv.conf"), "search cluster.local\n")
            .map_err(|e| Error::io("write resolv.conf", e))?;
        self.import(&crate::images::pause(&self.bin))?;
        let kubeconfig =
            plane.write_kubeconfig(&format!("system:node:{NODE_NAME}"), &["system:nodes"])?;
        let healthz = crate::ports::free_port()?;
        let config = format!(
            r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: {cgroup_root}
protectKernelDefaults: true
oomScoreAdj: 0
containerRuntimeEndpoint: unix://{sock}
address: {NODE_IP}
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: {healthz}
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: true}}
  x509: {{clientCAFile: {ca}}}
authorization: {{mode: Webhook}}
clusterDomain: cluster.local
clusterDNS: [{NODE_IP}]
resolvConf: {d}/resolv.conf
podLogsDir: {d}/pod-logs
failSwapOn: false
localStorageCapacityIsolation: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {{memory.available: "50Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}}
serializeImagePulls: false
registerNode: true
"#,
            cgroup_root = self.cgroup_root,
            sock = self.containerd_socket().display(),
            ca = plane.ca_file().display(),
            d = d.display(),
        );
        let config_path = d.join("kubelet.yaml");
        std::fs::write(&config_path, config).map_err(|e| Error::io("write kubelet config", e))?;
        let mut kubelet = self.spawn_inside(
            "kubelet",
            "kubelet",
            &[
                "--config".into(),
                config_path.display().to_string(),
                "--kubeconfig".into(),
                kubeconfig.display().to_string(),
                "--root-dir".into(),
                d.join("kubelet").display().to_string(),
                "--hostname-override".into(),
                NODE_NAME.into(),
                "--node-ip".into(),
                NODE_IP.into(),
                "--v".into(),
                "1".into(),
            ],
        )?;
        let client = plane.client().await?;
        let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client);
        kubelet
            .wait_until(Duration::from_secs(90), || {
                let nodes = nodes.clone();
                async move {
                    nodes
                        .get_opt(NODE_NAME)
                        .await
                        .ok()
                        .flatten()
                        .is_some_and(|n| {
                            n.status
                                .and_then(|s| s.conditions)
                                .unwrap_or_default()
                                .iter()
                                .any(|c| c.type_ == "Ready" && c.status == "True")
                        })
                }
            })
            .await?;
        self.procs.push(kubelet);
        self.start_kube_router(plane).await?;
        self.start_kube_proxy(plane).await?;
        // Pods reach the apiserver as in any cluster: the `kubernetes`
        // Service, whose endpoint is the forwarder on the node address.
        let slice = serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": { "name": "kubernetes-dbps-node", "namespace": "default",
                          "labels": { "kubernetes.io/service-name": "kubernetes" } },
            "addressType": "IPv4",
            "endpoints": [{ "addresses": [NODE_IP], "conditions": { "ready": true } }],
            "ports": [{ "name": "https", "port": port, "protocol": "TCP" }]
        });
        kube::Api::<k8s_openapi::api::discovery::v1::EndpointSlice>::namespaced(
            plane.client().await?,
            "default",
        )
        .patch(
            "kubernetes-dbps-node",
            &kube::api::PatchParams::apply("dbps-e2e").force(),
            &kube::api::Patch::Apply(slice),
        )
        .await?;
        self.start_provisioner(plane).await?;
        self.start_coredns(plane).await
    }

    /// The StorageClass [`STORAGE_CLASS`] and its provisioner: each claim
    /// of that class gets a directory of the node's (writable by the
    /// non-root database users) behind a PersistentVolume bound to it; a
    /// volume released by its claim is deleted with its directory, as the
    /// class's `Delete` reclaim policy says.
    async fn start_provisioner(&mut self, plane: &crate::ControlPlane) -> Result<(), Error> {
        use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
        use k8s_openapi::api::storage::v1::StorageClass;
        let client = plane.client().await?;
        let class = StorageClass {
            metadata: kube::api::ObjectMeta {
                name: Some(STORAGE_CLASS.into()),
                ..Default::default()
            },
            provisioner: PROVISIONER.into(),
            reclaim_policy: Some("Delete".into()),
            volume_binding_mode: Some("Immediate".into()),
            ..Default::default()
        };
        kube::Api::<StorageClass>::all(client.clone())
            .patch(
                STORAGE_CLASS,
                &kube::api::PatchParams::apply("dbps-e2e").force(),
                &kube::api::Patch::Apply(&class),
            )
            .await?;
        let volumes = self.dir.join("volumes");
        let pvs = kube::Api::<PersistentVolume>::all(client.clone());
        let pvcs = kube::Api::<PersistentVolumeClaim>::all(client);
        self.provisioner = Some(tokio::spawn(async move {
            loop {
                if let Err(e) = provision_once(&pvcs, &pvs, &volumes).await {
                    tracing::debug!(error = %e, "node volume provisioner");
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }));
        Ok(())
    }

    /// Grants `user` read access to what a node component watches.
    async fn grant_reads(
        plane: &crate::ControlPlane,
        role: &str,
        user: &str,
        rules: serde_json::Value,
    ) -> Result<(), Error> {
        let client = plane.client().await?;
        let params = kube::api::PatchParams::apply("dbps-e2e").force();
        let cluster_role = serde_json::json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": { "name": role }, "rules": rules
        });
        let binding = serde_json::json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": { "name": role },
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role },
            "subjects": [{ "apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user }]
        });
        kube::Api::<k8s_openapi::api::rbac::v1::ClusterRole>::all(client.clone())
            .patch(role, &params, &kube::api::Patch::Apply(cluster_role))
            .await?;
        kube::Api::<k8s_openapi::api::rbac::v1::ClusterRoleBinding>::all(client)
            .patch(role, &params, &kube::api::Patch::Apply(binding))
            .await?;
        Ok(())
    }

    /// Makes the host's `127.0.0.1:port` (a local database server) reachable
    /// at the same address from the node's own processes, as the apiserver is.
    pub fn forward_to_host(&mut self, port: u16) -> Result<(), Error> {
        let address: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
        self.forwarders
            .push(Forwarder::start(self.record.holder_pid, address, address)?);
        Ok(())
    }

    /// Runs the operator binary at `program` on the node, in its network
    /// namespace (as an operator on a cluster host's network runs),
    /// authenticated as `user` in `groups`, with `args` after `run`. It
    /// reaches the apiserver through the node's forwarder and dedicated
    /// instances through their Services; it stops with the node.
    pub fn run_operator_binary(
        &mut self,
        plane: &crate::ControlPlane,
        program: &Path,
        user: &str,
        groups: &[&str],
        args: &[String],
    ) -> Result<(), Error> {
        let kubeconfig = plane.write_kubeconfig(user, groups)?;
        let mut all = vec![
            "run".to_string(),
            "--log-format=text".into(),
            format!("--listen=127.0.0.1:{}", crate::ports::free_port()?),
        ];
        all.extend(args.iter().cloned());
        let args = self.inside(program, &all);
        let process = Process::spawn(
            "dbps-operator",
            Path::new("/usr/bin/nsenter"),
            &args,
            &self.dir,
            |cmd| {
                cmd.env("KUBECONFIG", &kubeconfig).env(
                    "RUST_LOG",
                    std::env::var("DBPS_OPERATOR_LOG").unwrap_or_else(|_| "info,kube=warn".into()),
                );
            },
        )?;
        if let Some(pid) = process.pid() {
            self.enter_cgroup(pid, "operator")?;
        }
        self.procs.push(process);
        Ok(())
    }

    /// Spawns the node binary `name` inside the node's namespaces, in the
    /// node's cgroup `cgroup`.
    fn spawn_inside(
        &mut self,
        name: &str,
        cgroup: &str,
        args: &[String],
    ) -> Result<Process, Error> {
        let args = self.inside(&self.bin.join(name), args);
        let path = self.path_env();
        let process = Process::spawn(
            name,
            Path::new("/usr/bin/nsenter"),
            &args,
            &self.dir,
            |cmd| {
                cmd.env("PATH", path);
            },
        )?;
        if let Some(pid) = process.pid() {
            self.enter_cgroup(pid, cgroup)?;
        }
        Ok(process)
    }

    /// Waits until `process` has put rules containing `needle` into the
    /// node's iptables table `table`.
    async fn wait_for_rules(
        &self,
        process: &mut Process,
        table: &str,
        needle: &str,
    ) -> Result<(), Error> {
        let holder = self.record.holder_pid.to_string();
        process
            .wait_until(Duration::from_secs(60), || {
                let (holder, table, needle) =
                    (holder.clone(), table.to_string(), needle.to_string());
                async move {
                    Command::new("nsenter")
                        .args([
                            "--target", &holder, "--net", "--", "iptables", "-t", &table, "-S",
                        ])
                        .output()
                        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(&needle))
                }
            })
            .await
    }

    /// kube-proxy (iptables mode) inside the node: Service addresses work for
    /// pods. It is told to leave the conntrack table's size (a host-wide
    /// setting) alone.
    async fn start_kube_proxy(&mut self, plane: &crate::ControlPlane) -> Result<(), Error> {
        // system:kube-proxy is bound to system:node-proxier by default.
        let kubeconfig = plane.write_kubeconfig("system:kube-proxy", &[])?;
        let (healthz, metrics) = (crate::ports::free_port()?, crate::ports::free_port()?);
        let config = format!(
            r#"apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {{kubeconfig: {kubeconfig}}}
mode: iptables
hostnameOverride: {NODE_NAME}
clusterCIDR: 10.244.0.0/16
oomScoreAdj: 0
healthzBindAddress: 127.0.0.1:{healthz}
metricsBindAddress: 127.0.0.1:{metrics}
conntrack: {{maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}}
iptables: {{localhostNodePorts: false}}
"#,
            kubeconfig = kubeconfig.display()
        );
        let path = self.dir.join("kube-proxy.yaml");
        std::fs::write(&path, config).map_err(|e| Error::io("write kube-proxy config", e))?;
        let mut proxy = self.spawn_inside(
            "kube-proxy",
            "kube-proxy",
            &[format!("--config={}", path.display())],
        )?;
        self.wait_for_rules(&mut proxy, "nat", "KUBE-SERVICES")
            .await?;
        self.procs.push(proxy);
        Ok(())
    }

    /// CoreDNS on the node address: cluster names only (no `forward`, so no
    /// query leaves the node). kubelet points pods at it.
    async fn start_coredns(&mut self, plane: &crate::ControlPlane) -> Result<(), Error> {
        let user = "system:dbps-node:coredns";
        Self::grant_reads(
            plane,
            "dbps-node:coredns",
            user,
            serde_json::json!([
                { "apiGroups": [""], "resources": ["services", "endpoints", "pods", "namespaces"], "verbs": ["list", "watch"] },
                { "apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"] }
            ]),
        )
        .await?;
        let kubeconfig = plane.write_kubeconfig(user, &[])?;
        let corefile = format!(
            r#".:53 {{
    bind {NODE_IP}
    errors
    kubernetes cluster.local in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig} dbps-local
        pods insecure
    }}
    cache 30
    loadbalance
}}
"#,
            kubeconfig = kubeconfig.display()
        );
        let path = self.dir.join("Corefile");
        std::fs::write(&path, corefile).map_err(|e| Error::io("write Corefile", e))?;
        let mut dns = self.spawn_inside(
            "coredns",
            "coredns",
            &["-conf".into(), path.display().to_string()],
        )?;
        dns.wait_until(Duration::from_secs(30), || {
            let log = dns_log(&self.dir);
            async move { log.contains("CoreDNS-") }
        })
        .await?;
        self.procs.push(dns);
        Ok(())
    }

    /// kube-router's network-policy controller (firewall only: it neither
    /// routes nor proxies, so it changes no kernel setting): NetworkPolicies
    /// become iptables rules and ipsets inside the node's namespace.
    async fn start_kube_router(&mut self, plane: &crate::ControlPlane) -> Result<(), Error> {
        let user = "system:dbps-node:kube-router";
        Self::grant_reads(
            plane,
            "dbps-node:kube-router",
            user,
            serde_json::json!([
                { "apiGroups": [""], "resources": ["pods", "namespaces", "nodes", "services", "endpoints"], "verbs": ["get", "list", "watch"] },
                { "apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"], "verbs": ["get", "list", "watch"] },
                { "apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "list", "watch"] }
            ]),
        )
        .await?;
        let kubeconfig = plane.write_kubeconfig(user, &[])?;
        let mut router = self.spawn_inside(
            "kube-router",
            "kube-router",
            &[
                "--run-firewall=true".into(),
                "--run-router=false".into(),
                "--run-service-proxy=false".into(),
                format!("--hostname-override={NODE_NAME}"),
                format!("--kubeconfig={}", kubeconfig.display()),
                format!(
                    "--service-cluster-ip-range={}",
                    crate::control_plane::NODE_SERVICE_CIDR
                ),
                "--health-port=0".into(),
                "--metrics-port=0".into(),
                "--iptables-sync-period=30s".into(),
                "--v=1".into(),
            ],
        )?;
        self.wait_for_rules(&mut router, "filter", "KUBE-ROUTER")
            .await?;
        self.procs.push(router);
        Ok(())
    }

    /// Imports `image` into containerd's `k8s.io` namespace (what kubelet uses).
    pub fn import(&self, image: &crate::images::Image) -> Result<(), Error> {
        let tar = image.archive()?;
        let out = Command::new(self.bin.join("ctr"))
            .args(["--address", &self.containerd_socket().display().to_string()])
            .args(["--namespace", "k8s.io", "images", "import"])
            .arg(&tar)
            .output()
            .map_err(|e| Error::io("ctr images import", e))?;
        if !out.status.success() {
            return Err(Error::Binaries(format!(
                "importing {}: {}",
                image.name,
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(())
    }

    /// Stops every process and removes what the record names.
    pub fn stop(&mut self) {
        if let Some(task) = self.provisioner.take() {
            task.abort();
        }
        for p in self.procs.iter_mut().rev() {
            p.stop();
        }
        self.procs.clear();
        self.forwarders.clear();
        if std::env::var_os("DBPS_KEEP_NODE_LOGS").is_some() {
            // The components' logs outlive the node, for a look after a failure.
            let keep = std::env::temp_dir().join(format!("dbps-node-logs-{}", self.id));
            let _ = std::fs::create_dir_all(&keep);
            for entry in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
                if entry.path().extension().is_some_and(|e| e == "log") {
                    let _ = std::fs::copy(entry.path(), keep.join(entry.file_name()));
                }
            }
            eprintln!("node logs kept in {}", keep.display());
        }
        if let Some(mut holder) = self.holder.take() {
            // Processes of the node's cgroups first, then the holder.
            self.record.remove();
            holder.stop();
        }
        let _ = std::fs::remove_file(&self.record_path);
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One pass of the node's volume provisioner: a volume for each pending
/// claim of [`STORAGE_CLASS`], and released volumes deleted.
async fn provision_once(
    pvcs: &kube::Api<k8s_openapi::api::core::v1::PersistentVolumeClaim>,
    pvs: &kube::Api<k8s_openapi::api::core::v1::PersistentVolume>,
    volumes: &Path,
) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    for pvc in pvcs.list(&Default::default()).await?.items {
        let spec = pvc.spec.clone().unwrap_or_default();
        let pending = pvc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Pending");
        if spec.storage_class_name.as_deref() != Some(STORAGE_CLASS)
            || !pending
            || spec.volume_name.is_some()
        {
            continue;
        }
        let Some(pv) = volume_for(&pvc, volumes) else {
            continue;
        };
        let dir = volumes.join(pv.metadata.name.as_deref().unwrap_or_default());
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("volume dir", e))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))
            .map_err(|e| Error::io("volume dir mode", e))?;
        match pvs.create(&Default::default(), &pv).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    for pv in pvs.list(&Default::default()).await?.items {
        let ours = pv
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("pv.kubernetes.io/provisioned-by"))
            .is_some_and(|p| p == PROVISIONER);
        let released = pv.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Released");
        if ours && released {
            let name = pv.metadata.name.clone().unwrap_or_default();
            pvs.delete(&name, &Default::default()).await?;
            let _ = std::fs::remove_dir_all(volumes.join(&name));
        }
    }
    Ok(())
}

/// The PersistentVolume for `pvc`: a directory under `volumes` named after
/// the claim's UID, on this node only, of the size the claim asks.
fn volume_for(
    pvc: &k8s_openapi::api::core::v1::PersistentVolumeClaim,
    volumes: &Path,
) -> Option<k8s_openapi::api::core::v1::PersistentVolume> {
    use k8s_openapi::api::core::v1::{
        HostPathVolumeSource, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm,
        ObjectReference, PersistentVolume, PersistentVolumeSpec, VolumeNodeAffinity,
    };
    let uid = pvc.metadata.uid.clone()?;
    let size = pvc
        .spec
        .as_ref()?
        .resources
        .as_ref()?
        .requests
        .as_ref()?
        .get("storage")?
        .clone();
    let name = format!("pvc-{uid}");
    Some(PersistentVolume {
        metadata: kube::api::ObjectMeta {
            name: Some(name.clone()),
            annotations: Some(
                [(
                    "pv.kubernetes.io/provisioned-by".to_string(),
                    PROVISIONER.to_string(),
                )]
                .into(),
            ),
            ..Default::default()
        },
        spec: Some(PersistentVolumeSpec {
            capacity: Some([("storage".to_string(), size)].into()),
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            persistent_volume_reclaim_policy: Some("Delete".into()),
            storage_class_name: Some(STORAGE_CLASS.into()),
            claim_ref: Some(ObjectReference {
                namespace: pvc.metadata.namespace.clone(),
                name: pvc.metadata.name.clone(),
                uid: Some(uid),
                ..Default::default()
            }),
            host_path: Some(HostPathVolumeSource {
                path: volumes.join(&name).display().to_string(),
                type_: Some("Directory".into()),
            }),
            node_affinity: Some(VolumeNodeAffinity {
                required: Some(NodeSelector {
                    node_selector_terms: vec![NodeSelectorTerm {
                        match_expressions: Some(vec![NodeSelectorRequirement {
                            key: "kubernetes.io/hostname".into(),
                            operator: "In".into(),
                            values: Some(vec![NODE_NAME.into()]),
                        }]),
                        ..Default::default()
                    }],
                }),
            }),
            ..Default::default()
        }),
        ..Default::default()
    })
}

fn dns_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("coredns.log")).unwrap_or_default()
}

fn rand_id() -> u32 {
    let mut b = [0u8; 4];
    let _ = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b));
    u32::from_le_bytes(b)
}
