//! Container images without a registry: a root filesystem of a few files
//! packed as a docker-archive tarball (one layer), which containerd imports
//! under the name pods use with `imagePullPolicy: Never`.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;

use crate::Error;

/// One image: its name, files and how it starts.
pub struct Image {
    /// `repository:tag`, as pods name it.
    pub name: String,
    /// (path in the image, file or directory on this machine), copied with
    /// their modes.
    pub files: Vec<(String, PathBuf)>,
    /// (path in the image, contents, mode): files written as they are.
    pub texts: Vec<(String, String, u32)>,
    /// (link in the image, target).
    pub links: Vec<(String, String)>,
    pub entrypoint: Vec<String>,
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

/// Adds what identifies `path` (and, for a directory, everything below it)
/// to `key`: names, sizes and modification times.
fn describe(path: &Path, key: &mut ring::digest::Context) {
    let Ok(meta) = std::fs::metadata(path) else {
        key.update(format!("missing {}\n", path.display()).as_bytes());
        return;
    };
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    key.update(format!("{} {} {mtime}\n", path.display(), meta.len()).as_bytes());
    if meta.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect();
        entries.sort();
        for entry in entries {
            describe(&entry, key);
        }
    }
}

impl Image {
    /// The image's content key: its definition and the files it is made of.
    pub fn key(&self) -> String {
        let mut key = ring::digest::Context::new(&ring::digest::SHA256);
        key.update(
            format!(
                "{}\n{:?}\n{:?}\n{:?}\n",
                self.name, self.entrypoint, self.user, self.links
            )
            .as_bytes(),
        );
        for (inside, text, mode) in &self.texts {
            key.update(format!("{inside} {mode}\n{text}\n").as_bytes());
        }
        for (inside, source) in &self.files {
            key.update(format!("{inside}\n").as_bytes());
            describe(source, &mut key);
        }
        key.finish().as_ref()[..12]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// The image as a docker-archive tarball, made once per content key in
    /// `~/.cache/dbps/images/` (or `$DBPS_CACHE_DIR/images/`).
    pub fn archive(&self) -> Result<PathBuf, Error> {
        let cache = std::env::var_os("DBPS_CACHE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/dbps")
            })
            .join("images");
        let stem: String = self
            .name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let path = cache.join(format!("{stem}--{}.tar", self.key()));
        if path.exists() {
            return Ok(path);
        }
        // Earlier contents of the same image go: the cache holds one per name.
        for entry in std::fs::read_dir(&cache).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(&format!("{stem}--")) && name.ends_with(".tar") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        std::fs::create_dir_all(&cache).map_err(|e| Error::io("image cache", e))?;
        let work = tempfile::Builder::new()
            .prefix("build-")
            .tempdir_in(&cache)
            .map_err(|e| Error::io("image build dir", e))?;
        let tar = self.write(work.path())?;
        std::fs::rename(&tar, &path).map_err(|e| Error::io("image cache", e))?;
        Ok(path)
    }

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
            // cp -a keeps modes, copies directories whole; -L follows links.
            let status = Command::new("cp")
                .args(["-a", "-L"])
                .arg(source)
                .arg(&dest)
                .status()
                .map_err(|e| Error::io("cp", e))?;
            if !status.success() {
                return Err(Error::Binaries(format!(
                    "copying {} into the image",
                    source.display()
                )));
            }
        }
        for (inside, text, mode) in &self.texts {
            use std::os::unix::fs::PermissionsExt;
            let dest = root.join(inside.trim_start_matches('/'));
            std::fs::create_dir_all(dest.parent().unwrap())
                .map_err(|e| Error::io("image dir", e))?;
            std::fs::write(&dest, text).map_err(|e| Error::io("image file", e))?;
            std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(*mode))
                .map_err(|e| Error::io("image file mode", e))?;
        }
        for (link, target) in &self.links {
            let dest = root.join(link.trim_start_matches('/'));
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
                "Env": ["PATH=/usr/local/bin:/bin:/usr/bin:/sbin:/usr/sbin", "TZ=UTC"],
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
pub fn pause(node_bin: &Path) -> Image {
    Image {
        name: "registry.k8s.io/pause:3.10.2".into(),
        files: vec![("/pause".into(), node_bin.join("pause"))],
        texts: vec![],
        links: vec![],
        entrypoint: vec!["/pause".into()],
        user: Some(65535),
    }
}

/// BusyBox (Debian's static build): a shell and network tools for test pods.
pub fn busybox() -> Image {
    let tools = [
        "sh", "nc", "wget", "cat", "echo", "sleep", "nslookup", "ls", "env", "timeout", "httpd",
        "mkdir",
    ];
    Image {
        name: "dbps.local/busybox:1.35.0".into(),
        files: vec![("/bin/busybox".into(), PathBuf::from("/bin/busybox"))],
        texts: vec![],
        links: tools
            .iter()
            .map(|t| (format!("/bin/{t}"), "busybox".to_string()))
            .collect(),
        entrypoint: vec!["/bin/sh".into()],
        user: Some(65534),
    }
}

/// The shared libraries `binary` loads (from `ldd`), the loader included.
fn libraries(binary: &Path) -> Vec<PathBuf> {
    let out = Command::new("ldd").arg(binary).output();
    let text = out
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let path = match l.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// The first-boot contract of the official `postgres` image, for the image
/// made from this machine's PostgreSQL: on an empty `$PGDATA`, `initdb` with
/// `$POSTGRES_USER`/`$POSTGRES_PASSWORD`, the scripts of
/// `/docker-entrypoint-initdb.d` against a server reachable only through its
/// socket, then the server on every address with password authentication;
/// arguments `postgres -c name=value …` (or `-c …` alone) start the server
/// with those settings, any other command runs as it is.
const POSTGRES_ENTRYPOINT: &str = r#"#!/bin/sh
set -eu
[ "$#" -gt 0 ] || set -- postgres
case "$1" in -*) set -- postgres "$@" ;; esac
[ "$1" = postgres ] || exec "$@"
shift
: "${PGDATA:=/var/lib/postgresql/data}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  mkdir -p "$PGDATA"
  chmod 700 "$PGDATA"
  pwfile=$(mktemp)
  printf '%s' "$POSTGRES_PASSWORD" > "$pwfile"
  initdb -D "$PGDATA" -U "$POSTGRES_USER" --pwfile="$pwfile"     --auth-local=scram-sha-256 --auth-host=scram-sha-256 -E UTF8 --locale=C >/dev/null
  rm -f "$pwfile"
  echo "listen_addresses = '*'" >> "$PGDATA/postgresql.conf"
  echo "unix_socket_directories = '/tmp'" >> "$PGDATA/postgresql.conf"
  echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
  pg_ctl -D "$PGDATA" -w -o "-c listen_addresses=''" start >/dev/null
  export PGHOST=/tmp PGPASSWORD="$POSTGRES_PASSWORD"
  for f in /docker-entrypoint-initdb.d/*.sh; do
    [ -e "$f" ] || continue
    echo "running $f"
    "$f"
  done
  pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
  unset PGPASSWORD PGHOST
fi
exec postgres -D "$PGDATA" "$@"
"#;

/// `postgres:<major>` from this machine's PostgreSQL (Debian's packages):
/// its programs, libraries and shared files, a static shell for the
/// entrypoint, and the official image's first-boot contract
/// ([`POSTGRES_ENTRYPOINT`]); user 999 as in the official image.
pub fn postgres(major: &str) -> Result<Image, Error> {
    let bindir = PathBuf::from(format!("/usr/lib/postgresql/{major}/bin"));
    if !bindir.exists() {
        return Err(Error::Binaries(format!(
            "PostgreSQL {major} is not installed"
        )));
    }
    let mut files: Vec<(String, PathBuf)> = vec![
        (
            format!("/usr/lib/postgresql/{major}"),
            PathBuf::from(format!("/usr/lib/postgresql/{major}")),
        ),
        (
            format!("/usr/share/postgresql/{major}"),
            PathBuf::from(format!("/usr/share/postgresql/{major}")),
        ),
        (
            "/usr/share/zoneinfo/UTC".into(),
            PathBuf::from("/usr/share/zoneinfo/UTC"),
        ),
        ("/bin/busybox".into(), PathBuf::from("/bin/busybox")),
    ];
    let mut libs: Vec<PathBuf> = Vec::new();
    let programs = ["postgres", "initdb", "pg_ctl", "psql", "pg_isready"];
    let mut objects: Vec<PathBuf> = programs.iter().map(|p| bindir.join(p)).collect();
    objects.extend(
        std::fs::read_dir(format!("/usr/lib/postgresql/{major}/lib"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "so")),
    );
    for object in &objects {
        for lib in libraries(object) {
            if !libs.contains(&lib) && !lib.starts_with(format!("/usr/lib/postgresql/{major}")) {
                libs.push(lib);
            }
        }
    }
    files.extend(libs.into_iter().map(|l| (l.display().to_string(), l)));
    let tools = [
        "sh", "mkdir", "chmod", "mktemp", "rm", "cat", "echo", "ls", "sleep",
    ];
    let mut links: Vec<(String, String)> = tools
        .iter()
        .map(|t| (format!("/bin/{t}"), "busybox".to_string()))
        .collect();
    for p in programs {
        links.push((
            format!("/usr/local/bin/{p}"),
            format!("/usr/lib/postgresql/{major}/bin/{p}"),
        ));
    }
    Ok(Image {
        name: format!("postgres:{major}"),
        files,
        texts: vec![
            ("/usr/local/bin/docker-entrypoint.sh".into(), POSTGRES_ENTRYPOINT.into(), 0o755),
            ("/etc/passwd".into(), "root:x:0:0::/root:/bin/sh\npostgres:x:999:999::/var/lib/postgresql:/bin/sh\nnobody:x:65534:65534::/:/bin/sh\n".into(), 0o644),
            ("/etc/group".into(), "root:x:0:\npostgres:x:999:\nnogroup:x:65534:\n".into(), 0o644),
        ],
        links,
        entrypoint: vec!["/usr/local/bin/docker-entrypoint.sh".into()],
        user: Some(999),
    })
}

/// The first-boot contract of the official `influxdb:1.x` image, for the
/// image made from this machine's InfluxDB: on an empty data directory, the
/// server is started on loopback without authentication, the admin
/// (`INFLUXDB_ADMIN_USER`), the database (`INFLUXDB_DB`) and its user
/// (`INFLUXDB_USER`, `GRANT ALL` on it only) are created, and the server
/// then runs with the `INFLUXDB_*` settings (authentication on).
const INFLUXDB_ENTRYPOINT: &str = r#"#!/bin/sh
set -eu
export HOME=/tmp
export INFLUXDB_META_DIR=/var/lib/influxdb/meta
export INFLUXDB_DATA_DIR=/var/lib/influxdb/data
export INFLUXDB_DATA_WAL_DIR=/var/lib/influxdb/wal
if [ ! -d /var/lib/influxdb/meta ] && [ -n "${INFLUXDB_ADMIN_USER:-}" ]; then
  INFLUXDB_HTTP_AUTH_ENABLED=false INFLUXDB_HTTP_BIND_ADDRESS=127.0.0.1:8086 influxd &
  pid=$!
  i=0
  until influx -execute "SHOW DATABASES" >/dev/null 2>&1; do
    i=$((i + 1)); [ "$i" -lt 60 ] || exit 1; sleep 0.5
  done
  influx -execute "CREATE USER "$INFLUXDB_ADMIN_USER" WITH PASSWORD '$INFLUXDB_ADMIN_PASSWORD' WITH ALL PRIVILEGES"
  q() { influx -username "$INFLUXDB_ADMIN_USER" -password "$INFLUXDB_ADMIN_PASSWORD" -execute "$1"; }
  if [ -n "${INFLUXDB_DB:-}" ]; then
    q "CREATE DATABASE "$INFLUXDB_DB""
    if [ -n "${INFLUXDB_USER:-}" ]; then
      q "CREATE USER "$INFLUXDB_USER" WITH PASSWORD '$INFLUXDB_USER_PASSWORD'"
      q "GRANT ALL ON "$INFLUXDB_DB" TO "$INFLUXDB_USER""
    fi
  fi
  kill "$pid"
  wait "$pid" || true
fi
exec influxd
"#;

/// `influxdb:<major.minor>` from this machine's InfluxDB 1.x (Debian's
/// `influxdb` and `influxdb-client`), with the official image's first-boot
/// contract ([`INFLUXDB_ENTRYPOINT`]); user 1000 as the operator runs it.
pub fn influxdb() -> Result<Image, Error> {
    let version = Command::new("influxd")
        .arg("version")
        .output()
        .map_err(|e| Error::io("influxd version", e))?;
    let text = String::from_utf8_lossy(&version.stdout);
    // "InfluxDB v1.6.7~rc0 (git: ...)" → 1.6
    let tag = text
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.strip_prefix('v'))
        .map(|v| v.split('.').take(2).collect::<Vec<_>>().join("."))
        .ok_or_else(|| Error::Binaries(format!("influxd version: {text}")))?;
    let mut files: Vec<(String, PathBuf)> =
        vec![("/bin/busybox".into(), PathBuf::from("/bin/busybox"))];
    let mut libs: Vec<PathBuf> = Vec::new();
    for program in ["/usr/bin/influxd", "/usr/bin/influx"] {
        files.push((program.into(), PathBuf::from(program)));
        for lib in libraries(Path::new(program)) {
            if !libs.contains(&lib) {
                libs.push(lib);
            }
        }
    }
    files.extend(libs.into_iter().map(|l| (l.display().to_string(), l)));
    let tools = ["sh", "sleep", "kill", "mkdir", "cat"];
    Ok(Image {
        name: format!("influxdb:{tag}"),
        files,
        texts: vec![
            (
                "/usr/local/bin/entrypoint.sh".into(),
                INFLUXDB_ENTRYPOINT.into(),
                0o755,
            ),
            (
                "/etc/passwd".into(),
                "root:x:0:0::/root:/bin/sh\ninfluxdb:x:1000:1000::/var/lib/influxdb:/bin/sh\n"
                    .into(),
                0o644,
            ),
        ],
        links: tools
            .iter()
            .map(|t| (format!("/bin/{t}"), "busybox".to_string()))
            .collect(),
        entrypoint: vec!["/usr/local/bin/entrypoint.sh".into()],
        user: Some(1000),
    })
}

/// The operator's image, from the binary `cargo build` made: the program and
/// First boot of the MongoDB-wire image: the official `mongo` image's
/// contract (`MONGO_INITDB_ROOT_USERNAME`/`_PASSWORD` make the superuser in
/// `admin` on an empty `/data/db`, authentication on, port 27017) kept by
/// FerretDB on SQLite, whose setup flags make that user only while the
/// `admin` database does not exist yet.
const FERRETDB_ENTRYPOINT: &str = r#"#!/bin/sh
set -eu
exec /usr/local/bin/ferretdb \
  --listen-addr=:27017 \
  --handler=sqlite --sqlite-url=file:/data/db/ --state-dir=/data/db \
  --telemetry=disable --log-level=info --debug-addr=127.0.0.1:8088 \
  --test-enable-new-auth \
  --setup-database=admin \
  --setup-username="${MONGO_INITDB_ROOT_USERNAME:?}" \
  --setup-password="${MONGO_INITDB_ROOT_PASSWORD:?}"
"#;

/// `ferretdb:<major.minor>`: the FerretDB build of `build-ferretdb.sh` (a
/// MongoDB wire-protocol server) with the `mongo` image's first-boot
/// contract ([`FERRETDB_ENTRYPOINT`]); user 999 as the operator runs it.
/// Dedicated MongoDB claims use it with `--image-repository mongodb=ferretdb`
/// and `version` set to FerretDB's.
pub fn ferretdb() -> Result<Image, Error> {
    let binary = crate::databases::ferretdb_binary()?;
    let version = crate::binaries::Versions::pinned().ferretdb;
    let tag = version
        .trim_start_matches('v')
        .split('.')
        .take(2)
        .collect::<Vec<_>>()
        .join(".");
    Ok(Image {
        name: format!("ferretdb:{tag}"),
        files: vec![
            ("/bin/busybox".into(), PathBuf::from("/bin/busybox")),
            ("/usr/local/bin/ferretdb".into(), binary),
        ],
        texts: vec![
            (
                "/usr/local/bin/entrypoint.sh".into(),
                FERRETDB_ENTRYPOINT.into(),
                0o755,
            ),
            (
                "/etc/passwd".into(),
                "root:x:0:0::/root:/bin/sh\nmongodb:x:999:999::/data/db:/bin/sh\n".into(),
                0o644,
            ),
        ],
        links: vec![("/bin/sh".into(), "busybox".into())],
        entrypoint: vec!["/usr/local/bin/entrypoint.sh".into()],
        user: Some(999),
    })
}

/// First boot and settings of the official `opensearchproject/opensearch`
/// image with its demo configuration off, for the image made from the
/// Maven install: every variable named like a setting (with a dot) becomes
/// an `-E` option; the configuration directory, with what is mounted into
/// it (the certificate, the internal user database), is copied where the
/// server may write (it keeps its keystore there).
const OPENSEARCH_ENTRYPOINT: &str = r#"#!/bin/bash
set -euo pipefail
home=/usr/share/opensearch
run=/tmp/opensearch
rm -rf "$run"
mkdir -p "$run/logs" "$run/tmp"
cp -rL "$home/config" "$run/config"
chmod -R go-rwx "$run/config"
settings=()
while IFS='=' read -r name value; do
  if [[ "$name" =~ ^[a-z0-9_]+\.[a-z0-9_.]+$ ]]; then
    settings+=("-E$name=$value")
  fi
done <<<"$(env)"
export JAVA_HOME=/usr/lib/jvm/java HOME="$run" OPENSEARCH_PATH_CONF="$run/config" OPENSEARCH_TMPDIR="$run/tmp"
exec "$home/bin/opensearch" -Epath.logs="$run/logs" "${settings[@]}"
"#;

/// The JDK of this machine's `java` (OpenJDK 17 from Debian), as a Java home.
fn java_home() -> Result<PathBuf, Error> {
    let preferred = PathBuf::from("/usr/lib/jvm/java-17-openjdk-amd64");
    if preferred.join("bin/java").exists() {
        return Ok(preferred);
    }
    let java = std::fs::canonicalize("/usr/bin/java").map_err(|e| Error::io("java", e))?;
    java.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .ok_or_else(|| Error::Binaries(format!("no Java home above {}", java.display())))
}

/// `opensearchproject/opensearch:<version>` from the install
/// `build-opensearch.sh` assembles (the server, its modules and the security
/// plugin), this machine's Java runtime, bash, curl for the readiness probe,
/// and the official image's contract ([`OPENSEARCH_ENTRYPOINT`]); user 1000
/// as in the official image.
pub fn opensearch() -> Result<Image, Error> {
    let install = crate::opensearch::install_dir()?;
    let version = crate::binaries::Versions::pinned().opensearch;
    let java = java_home()?;
    let inside_java = "/usr/lib/jvm/java";
    let mut files: Vec<(String, PathBuf)> = ["bin", "lib", "modules", "plugins", "config"]
        .iter()
        .map(|d| (format!("/usr/share/opensearch/{d}"), install.join(d)))
        .collect();
    files.push(("/bin/busybox".into(), PathBuf::from("/bin/busybox")));
    // The runtime only: no sources, no compiler's symbol table, no link
    // whose target this machine lacks.
    let mut objects: Vec<PathBuf> = vec![java.join("bin/java")];
    files.push((format!("{inside_java}/bin/java"), java.join("bin/java")));
    for top in ["conf", "release"] {
        files.push((format!("{inside_java}/{top}"), java.join(top)));
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(java.join("lib"))
        .map_err(|e| Error::io("Java lib", e))?
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for entry in entries {
        let name = entry.file_name().unwrap_or_default().to_string_lossy();
        if !entry.exists() || name == "src.zip" || name == "ct.sym" {
            continue;
        }
        if name.ends_with(".so") {
            objects.push(entry.clone());
        }
        if name == "server" {
            objects.push(entry.join("libjvm.so"));
        }
        files.push((format!("{inside_java}/lib/{name}"), entry));
    }
    for program in ["/usr/bin/bash", "/usr/bin/curl"] {
        files.push((program.into(), PathBuf::from(program)));
        objects.push(PathBuf::from(program));
    }
    let mut libs: Vec<PathBuf> = Vec::new();
    for object in &objects {
        for lib in libraries(object) {
            if !libs.contains(&lib) && !lib.starts_with(&java) {
                libs.push(lib);
            }
        }
    }
    files.extend(libs.into_iter().map(|l| (l.display().to_string(), l)));
    let tools = [
        "sh", "cp", "rm", "mkdir", "chmod", "env", "dirname", "sed", "mktemp", "cat", "ls",
    ];
    let mut links: Vec<(String, String)> = tools
        .iter()
        .map(|t| (format!("/bin/{t}"), "busybox".to_string()))
        .collect();
    links.push(("/bin/bash".into(), "/usr/bin/bash".into()));
    links.push(("/usr/bin/env".into(), "/bin/busybox".into()));
    links.push(("/usr/bin/java".into(), format!("{inside_java}/bin/java")));
    Ok(Image {
        name: format!("opensearchproject/opensearch:{version}"),
        files,
        texts: vec![
            (
                "/usr/local/bin/opensearch-docker-entrypoint.sh".into(),
                OPENSEARCH_ENTRYPOINT.into(),
                0o755,
            ),
            (
                "/etc/passwd".into(),
                "root:x:0:0::/root:/bin/sh\nopensearch:x:1000:1000::/usr/share/opensearch:/bin/bash\n"
                    .into(),
                0o644,
            ),
        ],
        links,
        entrypoint: vec!["/usr/local/bin/opensearch-docker-entrypoint.sh".into()],
        user: Some(1000),
    })
}

/// Image `name`: the sample services binary (and a shell, for a pod's retry
/// loop), as user 65532.
pub fn samples(binary: &Path, name: &str) -> Image {
    let mut files: Vec<(String, PathBuf)> = vec![
        ("/usr/local/bin/dbps-sample".into(), binary.to_path_buf()),
        ("/bin/busybox".into(), PathBuf::from("/bin/busybox")),
    ];
    // The HTTP client between services loads the system's CA roots.
    let roots = Path::new("/etc/ssl/certs/ca-certificates.crt");
    if roots.exists() {
        files.push((roots.display().to_string(), roots.to_path_buf()));
    }
    files.extend(
        libraries(binary)
            .into_iter()
            .map(|l| (l.display().to_string(), l)),
    );
    Image {
        name: name.to_string(),
        files,
        texts: vec![],
        links: ["sh", "sleep"]
            .iter()
            .map(|t| (format!("/bin/{t}"), "busybox".to_string()))
            .collect(),
        entrypoint: vec!["/usr/local/bin/dbps-sample".into()],
        user: Some(65532),
    }
}

/// the libraries it loads; user 65532 as the chart runs it.
pub fn operator(binary: &Path, tag: &str) -> Image {
    let mut files: Vec<(String, PathBuf)> =
        vec![("/usr/local/bin/dbps-operator".into(), binary.to_path_buf())];
    files.extend(
        libraries(binary)
            .into_iter()
            .map(|l| (l.display().to_string(), l)),
    );
    Image {
        name: format!("dbps.local/dbps-operator:{tag}"),
        files,
        texts: vec![],
        links: vec![],
        entrypoint: vec!["/usr/local/bin/dbps-operator".into()],
        user: Some(65532),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(text: &str) -> Image {
        Image {
            name: "dbps.local/test:1".into(),
            files: vec![("/bin/busybox".into(), PathBuf::from("/bin/busybox"))],
            texts: vec![("/etc/motd".into(), text.into(), 0o644)],
            links: vec![],
            entrypoint: vec!["/bin/sh".into()],
            user: Some(1),
        }
    }

    #[test]
    fn the_content_key_follows_what_the_image_is_made_of() {
        assert_eq!(image("a").key(), image("a").key());
        assert_ne!(image("a").key(), image("b").key());
        let mut other_user = image("a");
        other_user.user = Some(2);
        assert_ne!(image("a").key(), other_user.key());
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, "1").unwrap();
        let with_file = |i: &mut Image| i.files.push(("/f".into(), file.clone()));
        let mut before = image("a");
        with_file(&mut before);
        let key_before = before.key();
        std::fs::write(&file, "22").unwrap();
        assert_ne!(key_before, before.key(), "a changed file changes the key");
    }
}
