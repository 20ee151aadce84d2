//! Where the control plane binaries are: `$KUBEBUILDER_ASSETS` when set (the
//! envtest convention), otherwise the cache that `e2e/tools/build-binaries.sh`
//! fills, keyed by the versions pinned in `e2e/tools/versions.env`.

use std::path::{Path, PathBuf};

const VERSIONS_ENV: &str = include_str!("../tools/versions.env");

/// Every binary the support library may start or the suites may call.
pub const ALL: [&str; 7] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok",
    "kubectl",
    "helm",
];

/// The pinned versions, as in `e2e/tools/versions.env`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versions {
    pub kubernetes: String,
    pub etcd: String,
    pub kwok: String,
    pub helm: String,
    pub ferretdb: String,
    pub opensearch: String,
}

impl Versions {
    pub fn pinned() -> Self {
        parse_versions(VERSIONS_ENV)
    }

    /// The cache key shared with `build-binaries.sh`.
    pub fn cache_key(&self) -> String {
        format!(
            "k8s-{}_etcd-{}_kwok-{}_helm-{}",
            self.kubernetes, self.etcd, self.kwok, self.helm
        )
    }
}

fn parse_versions(text: &str) -> Versions {
    let get = |key: &str| {
        text.lines()
            .filter_map(|l| l.trim().split_once('='))
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| panic!("versions.env lacks {key}"))
    };
    Versions {
        kubernetes: get("KUBERNETES_VERSION"),
        etcd: get("ETCD_VERSION"),
        kwok: get("KWOK_VERSION"),
        helm: get("HELM_VERSION"),
        ferretdb: get("FERRETDB_VERSION"),
        opensearch: get("OPENSEARCH_VERSION"),
    }
}

/// The directory holding every binary in [`ALL`].
pub fn dir() -> Result<PathBuf, String> {
    let dir = match std::env::var_os("KUBEBUILDER_ASSETS").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => {
            let cache = std::env::var_os("DBPS_CACHE_DIR")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/dbps")))
                .ok_or("neither DBPS_CACHE_DIR nor HOME is set")?;
            cache.join(format!("bin-{}", Versions::pinned().cache_key()))
        }
    };
    let missing: Vec<&str> = ALL
        .iter()
        .copied()
        .filter(|b| !dir.join(b).is_file())
        .collect();
    if missing.is_empty() {
        Ok(dir)
    } else {
        Err(format!(
            "{} lacks {}; run `make binaries` (e2e/tools/build-binaries.sh) or point KUBEBUILDER_ASSETS at a directory that has them",
            dir.display(),
            missing.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_versions_form_the_script_cache_key() {
        let v = parse_versions(
            "# c\nKUBERNETES_VERSION=v1.2.3\nETCD_VERSION=v3.6.1\nKWOK_VERSION=v0.8.0\nHELM_VERSION=v3.1.0\nFERRETDB_VERSION=v1.2.3\nOPENSEARCH_VERSION=2.19.4\n",
        );
        assert_eq!(
            v.cache_key(),
            "k8s-v1.2.3_etcd-v3.6.1_kwok-v0.8.0_helm-v3.1.0"
        );
        assert!(Versions::pinned().kubernetes.starts_with("v1."));
    }
}
