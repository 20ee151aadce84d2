//! Container images without a registry: a root filesystem of a few files
//! packed as a docker-archive tarball (one layer), which containerd imports
//! under the name pods use with `imagePullPolicy: Never`.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;

use crate::Error;

/// One image: its name, files and how it starts.
pub struct Image<'a> {
    /// `repository:tag`, as pods name it.
    pub name: &'a str,
    /// (path in the image, file on this machine), copied with their mode.
    pub files: Vec<(&'a str, PathBuf)>,
    /// (link in the image, target).
    pub links: Vec<(String, &'a str)>,
    pub entrypoint: Vec<&'a str>,
    /// Numeric user the image runs as by default.
    pub user: Option<u32>,
}

fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn tar(dir: &Path, out: &Path, entries: &[&str]) -> Result<(), Error> {
    let status = Command::new("tar")
        .args(["--numeric-owner", "--owner=0", "--group=0", "--sort=name"])
        .arg("--mtime=@0")
        .arg("-C")
        .arg(dir)
        .arg("-cf")
        .arg(out)
        .args(entries)
        .status()
        .map_err(|e| Error::io("tar", e))?;
    if !status.success() {
        return Err(Error::Binaries(format!("tar {} failed", out.display())));
    }
    Ok(())
}

impl Image<'_> {
    /// Writes the image as a docker-archive tarball in `work` and returns its path.
    pub fn write(&self, work: &Path) -> Result<PathBuf, Error> {
        let safe: String = self
            .name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let stage = work.join(format!("image-{safe}"));
        let root = stage.join("rootfs");
        let _ = std::fs::remove_dir_all(&stage);
        std::fs::create_dir_all(root.join("tmp")).map_err(|e| Error::io("image root", e))?;
        for (inside, source) in &self.files {
            let dest = root.join(inside.trim_start_matches('/'));
            std::fs::create_dir_all(dest.parent().unwrap())
                .map_err(|e| Error::io("image dir", e))?;
            std::fs::copy(source, &dest)
                .map_err(|e| Error::io(format!("copy {}", source.display()), e))?;
        }
        for (link, target) in &self.links {
            let dest = root.join(link.trim_start_matches('/'));
            let target: &str = target;
            std::fs::create_dir_all(dest.parent().unwrap())
                .map_err(|e| Error::io("image dir", e))?;
            std::os::unix::fs::symlink(target, &dest).map_err(|e| Error::io("image link", e))?;
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777))
            .map_err(|e| Error::io("image /tmp", e))?;
        let layer = stage.join("layer.tar");
        tar(&root, &layer, &["."])?;
        let layer_bytes = std::fs::read(&layer).map_err(|e| Error::io("read layer", e))?;
        let diff_id = format!("sha256:{}", sha256_hex(&layer_bytes));
        let mut config = json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {
                "Entrypoint": self.entrypoint,
                "Env": ["PATH=/bin:/usr/bin:/sbin:/usr/sbin"],
                "WorkingDir": "/",
            },
            "rootfs": { "type": "layers", "diff_ids": [diff_id] },
        });
        if let Some(uid) = self.user {
            config["config"]["User"] = json!(format!("{uid}:{uid}"));
        }
        let config_bytes = serde_json::to_vec(&config).expect("json");
        let config_name = format!("{}.json", sha256_hex(&config_bytes));
        std::fs::write(stage.join(&config_name), &config_bytes)
            .map_err(|e| Error::io("image config", e))?;
        let manifest =
            json!([{ "Config": config_name, "RepoTags": [self.name], "Layers": ["layer.tar"] }]);
        std::fs::write(stage.join("manifest.json"), manifest.to_string())
            .map_err(|e| Error::io("image manifest", e))?;
        let out = work.join(format!("{safe}.tar"));
        tar(&stage, &out, &["manifest.json", &config_name, "layer.tar"])?;
        let _ = std::fs::remove_dir_all(&stage);
        Ok(out)
    }
}

/// The pause image containerd runs each pod's sandbox from.
pub fn pause(node_bin: &Path) -> Image<'static> {
    Image {
        name: "registry.k8s.io/pause:3.10.2",
        files: vec![("/pause", node_bin.join("pause"))],
        links: vec![],
        entrypoint: vec!["/pause"],
        user: Some(65535),
    }
}

/// BusyBox (Debian's static build): a shell and network tools for test pods.
pub fn busybox() -> Image<'static> {
    let tools = [
        "sh", "nc", "wget", "cat", "echo", "sleep", "nslookup", "ls", "env", "timeout",
    ];
    Image {
        name: "dbps.local/busybox:1.35.0",
        files: vec![("/bin/busybox", PathBuf::from("/bin/busybox"))],
        links: tools
            .iter()
            .map(|t| (format!("/bin/{t}"), "busybox"))
            .collect(),
        entrypoint: vec!["/bin/sh"],
        user: Some(65534),
    }
}
