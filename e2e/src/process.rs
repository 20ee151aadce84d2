//! One supervised local process (a server, the operator, a sample service):
//! output captured in a log file, readiness polled with its log tail shown
//! on failure, stopped on drop — by its own handle, never by name.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::Error;

pub struct Process {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Process {
    /// Starts `program` with `args`, its stdout and stderr appended to `<log_dir>/<name>.log`.
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        log_dir: &Path,
        configure: impl FnOnce(&mut Command),
    ) -> Result<Self, Error> {
        let log = log_dir.join(format!("{name}.log"));
        let out =
            File::create(&log).map_err(|e| Error::io(format!("create {}", log.display()), e))?;
        let err = out
            .try_clone()
            .map_err(|e| Error::io("clone log handle", e))?;
        let mut cmd = Command::new(program);
        cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
        configure(&mut cmd);
        let child = cmd
            .spawn()
            .map_err(|e| Error::io(format!("start {}", program.display()), e))?;
        tracing::debug!(name, pid = child.id(), "started");
        Ok(Self {
            name: name.to_string(),
            child: Some(child),
            log,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Everything the process wrote so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`) to the process, if it runs.
    pub fn signal(&self, signal: i32) {
        if let Some(child) = &self.child {
            // SAFETY: signalling our own child, whose pid is not reaped yet.
            unsafe { libc::kill(child.id() as libc::pid_t, signal) };
        }
    }

    /// Its exit status, once it has exited.
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// The last `lines` lines of the process output.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// An error naming the process, with its log tail.
    pub fn failure(&self, reason: impl Into<String>) -> Error {
        Error::Start {
            component: self.name.clone(),
            reason: reason.into(),
            log_tail: self.log_tail(40),
        }
    }

    /// Fails if the process has exited.
    pub fn check_running(&mut self) -> Result<(), Error> {
        let status = match self.child.is_some() {
            false => Some(None),
            true => self.try_wait().map(Some),
        };
        match status {
            None => Ok(()),
            Some(s) => Err(self.failure(match s {
                Some(s) => format!("exited with {s}"),
                None => "stopped".to_string(),
            })),
        }
    }

    /// Polls `probe` until it answers true, failing early if the process exits.
    pub async fn wait_until<F, Fut>(&mut self, timeout: Duration, mut probe: F) -> Result<(), Error>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_running()?;
            if probe().await {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(self.failure(format!("not ready after {timeout:?}")));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the process exits; fails unless it exits successfully.
    pub async fn wait_success(&mut self, timeout: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.try_wait();
            match status {
                Some(s) if s.success() => return Ok(()),
                Some(s) => return Err(self.failure(format!("exited with {s}"))),
                None if Instant::now() > deadline => {
                    return Err(self.failure(format!("still running after {timeout:?}")));
                }
                None => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// SIGTERM, then SIGKILL after a grace period; waits for the exit.
    pub fn stop(&mut self) {
        self.stop_with(libc::SIGTERM);
    }

    /// As [`Self::stop`], asking with `signal` first (PostgreSQL shuts down
    /// at once on SIGINT, and on SIGTERM only once its clients are gone).
    pub fn stop_with(&mut self, signal: i32) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        // SAFETY: signalling our own child, whose pid is not reaped yet.
        unsafe { libc::kill(child.id() as libc::pid_t, signal) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                tracing::debug!(name = %self.name, "stopped");
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}

/// CPU seconds (user and system) of `pid` and of its children that ended,
/// from `/proc/<pid>/stat`; 0 when the process is gone.
pub fn cpu_seconds(pid: u32) -> f64 {
    stat_fields(pid).map_or(0.0, |fields| {
        // Fields 14 to 17 of stat (utime, stime, cutime, cstime); the
        // fields after the command start at field 3.
        let ticks: f64 = (11..=14)
            .filter_map(|i| fields.get(i)?.parse::<f64>().ok())
            .sum();
        // SAFETY: plain getter.
        ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
    })
}

/// CPU seconds of `pid` and of all its children, running or ended (a
/// server that forks a process per session, such as PostgreSQL).
pub fn tree_cpu_seconds(pid: u32) -> f64 {
    let children: f64 = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            stat_fields(*child)
                .and_then(|f| f.get(1)?.parse::<u32>().ok())
                .is_some_and(|parent| parent == pid)
        })
        .map(cpu_seconds)
        .sum();
    cpu_seconds(pid) + children
}

/// The fields of `/proc/<pid>/stat` after the command (field 3 on).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(String::from).collect())
}

/// The CPUs this process may run on (its affinity mask).
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; the call fills it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
            .collect()
    }
}

/// Restricts every thread of `pid` and of all its descendants to `cpus`;
/// processes they start later inherit it. Threads or processes that end
/// meanwhile are skipped.
pub fn pin_tree(pid: u32, cpus: &[usize]) -> std::io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        // SAFETY: `set` is a valid set; CPU_SET ignores CPUs past its size.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    let mut parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|p| Some((p, stat_fields(p)?.get(1)?.parse().ok()?)))
        .collect();
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        parents.retain(|(_, pp)| *pp != parent);
        i += 1;
    }
    for process in tree {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{process}/task")) else {
            continue;
        };
        for tid in tasks
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<libc::pid_t>().ok())
        {
            // SAFETY: `set` outlives the call; the size is its own.
            let done = unsafe {
                libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set)
            };
            let error = std::io::Error::last_os_error();
            if done != 0 && error.raw_os_error() != Some(libc::ESRCH) {
                return Err(error);
            }
        }
    }
    Ok(())
}
