//! Nothing of a control plane outlives it: no process, no temp dir, whether it
//! is dropped or it is the shared one of a test binary that exits.

use std::path::{Path, PathBuf};
use std::process::Command;

use dbps_e2e::ControlPlane;

/// True while `pid` is a live process started from one of our binaries.
fn alive(pid: u32) -> bool {
    let bin = dbps_e2e::binaries::dir().unwrap();
    let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) else {
        return false;
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // A zombie (state Z) has exited already.
    let zombie = stat
        .rsplit(')')
        .next()
        .is_some_and(|s| s.trim_start().starts_with('Z'));
    exe.starts_with(&bin) && !zombie
}

fn assert_gone(pids: &[u32], dir: &Path) {
    let left: Vec<u32> = pids.iter().copied().filter(|p| alive(*p)).collect();
    assert!(left.is_empty(), "processes left running: {left:?}");
    assert!(!dir.exists(), "{} left behind", dir.display());
}

#[tokio::test]
async fn dropping_the_control_plane_stops_every_process_and_removes_its_dir() {
    let plane = ControlPlane::start().await.unwrap();
    let pids = plane.pids();
    let dir = plane.dir().to_path_buf();
    assert_eq!(
        pids.len(),
        5,
        "etcd, apiserver, controller-manager, scheduler, kwok"
    );
    assert!(pids.iter().all(|p| alive(*p)));
    drop(plane);
    assert_gone(&pids, &dir);
}

const REPORT: &str = "DBPS_E2E_SHARED_REPORT";

/// Run by the test below in a child process: starts the shared control plane,
/// reports its pids and dir, and returns; the process then exits.
#[tokio::test]
#[ignore = "helper, run by shared_control_plane_is_stopped_when_the_test_binary_exits"]
async fn shared_plane_child() {
    let Some(report) = std::env::var_os(REPORT) else {
        return;
    };
    let plane = dbps_e2e::shared().await.unwrap();
    let mut text = format!("{}\n", plane.dir().display());
    for pid in plane.pids() {
        text.push_str(&format!("{pid}\n"));
    }
    std::fs::write(report, text).unwrap();
}

#[test]
fn shared_control_plane_is_stopped_when_the_test_binary_exits() {
    let report = tempfile::NamedTempFile::new().unwrap();
    let status = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "shared_plane_child", "--nocapture"])
        .env(REPORT, report.path())
        .status()
        .unwrap();
    assert!(status.success());
    let text = std::fs::read_to_string(report.path()).unwrap();
    let mut lines = text.lines();
    let dir = PathBuf::from(lines.next().expect("report names the dir"));
    let pids: Vec<u32> = lines.map(|l| l.parse().unwrap()).collect();
    assert_eq!(pids.len(), 5);
    assert_gone(&pids, &dir);
}
