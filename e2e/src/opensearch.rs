//! A local OpenSearch node with its security plugin, the search engine's
//! test server: the install `e2e/tools/build-opensearch.sh` assembles from
//! Maven Central, started on loopback ports with a configuration of its own
//! (TLS on HTTP and transport from a CA of its own, basic authentication
//! against the internal user database, one `admin` user in `all_access`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::Error;
use crate::databases::{Kind, LocalServer, Restart};
use crate::process::Process;

/// The cached install of the pinned version.
pub fn install_dir() -> Result<PathBuf, Error> {
    let version = crate::binaries::Versions::pinned().opensearch;
    let cache = std::env::var_os("DBPS_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/dbps")))
        .ok_or_else(|| Error::Binaries("neither DBPS_CACHE_DIR nor HOME is set".into()))?;
    let dir = cache.join(format!("opensearch-{version}"));
    match dir.join(".complete").is_file() {
        true => Ok(dir),
        false => Err(Error::Binaries(format!(
            "{} is missing; run `make binaries` (e2e/tools/build-opensearch.sh)",
            dir.display()
        ))),
    }
}

/// The node's distinguished name, which its peers (itself) must present.
const NODE_DN: &str = "CN=dbps-opensearch-node";
/// The client certificate allowed to change the security configuration
/// directly (not used by the suites; the plugin asks for one).
const ADMIN_DN: &str = "CN=dbps-opensearch-admin";

/// Starts a node and waits until its admin user is served: a
/// [`LocalServer`] of kind [`Kind::OpenSearch`], with TLS (`ca_pem`).
pub async fn start() -> Result<LocalServer, Error> {
    crate::install_crypto_provider();
    let home = install_dir()?;
    let dir = tempfile::Builder::new()
        .prefix("dbps-opensearch-")
        .tempdir()
        .map_err(|e| Error::io("create temp dir", e))?;
    let path = dir.path().to_path_buf();
    let conf = path.join("config");
    copy_dir(&home.join("config"), &conf)?;
    for sub in ["data", "logs", "tmp"] {
        std::fs::create_dir_all(path.join(sub)).map_err(|e| Error::io("create dir", e))?;
    }

    let ca = crate::pki::Authority::new("dbps-local-opensearch-ca")?;
    let node = ca.peer(NODE_DN.trim_start_matches("CN="))?;
    let write = |name: &str, text: &str| {
        std::fs::write(conf.join(name), text).map_err(|e| Error::io(format!("write {name}"), e))
    };
    write("ca.pem", ca.cert_pem())?;
    write("node.pem", &node.cert_pem)?;
    write("node-key.pem", &node.key_pem)?;

    let admin_password = crate::databases::password();
    let hash = bcrypt(&home, &admin_password)?;
    let port = crate::ports::free_port()?;
    let transport = crate::ports::free_port()?;
    write(
        "opensearch.yml",
        &format!(
            r#"cluster.name: dbps-e2e
node.name: node-1
path.data: {data}
path.logs: {logs}
network.host: 127.0.0.1
http.port: {port}
transport.port: {transport}
discovery.type: single-node
# A test node on a shared disk: indices are never made read-only for space.
cluster.routing.allocation.disk.threshold_enabled: false
plugins.security.ssl.transport.pemcert_filepath: node.pem
plugins.security.ssl.transport.pemkey_filepath: node-key.pem
plugins.security.ssl.transport.pemtrustedcas_filepath: ca.pem
plugins.security.ssl.http.enabled: true
plugins.security.ssl.http.pemcert_filepath: node.pem
plugins.security.ssl.http.pemkey_filepath: node-key.pem
plugins.security.ssl.http.pemtrustedcas_filepath: ca.pem
plugins.security.authcz.admin_dn: ["{ADMIN_DN}"]
plugins.security.nodes_dn: ["{NODE_DN}"]
plugins.security.allow_default_init_securityindex: true
plugins.security.restapi.roles_enabled: ["all_access"]
plugins.security.audit.type: noop
"#,
            data = path.join("data").display(),
            logs = path.join("logs").display(),
        ),
    )?;
    let security = conf.join("opensearch-security");
    let write_security = |name: &str, text: String| {
        std::fs::write(security.join(name), text).map_err(|e| Error::io(format!("write {name}"), e))
    };
    write_security(
        "internal_users.yml",
        format!(
            "_meta: {{ type: internalusers, config_version: 2 }}\nadmin:\n  hash: \"{hash}\"\n  reserved: true\n  backend_roles: [admin]\n"
        ),
    )?;
    write_security(
        "roles_mapping.yml",
        "_meta: { type: rolesmapping, config_version: 2 }\nall_access:\n  reserved: false\n  users: [admin]\n".into(),
    )?;
    write_security(
        "config.yml",
        "_meta: { type: config, config_version: 2 }\nconfig:\n  dynamic:\n    http:\n      anonymous_auth_enabled: false\n    authc:\n      basic:\n        http_enabled: true\n        transport_enabled: true\n        order: 0\n        http_authenticator: { type: basic, challenge: true }\n        authentication_backend: { type: intern }\n".into(),
    )?;
    // The security plugin warns about configuration others can read.
    restrict(&conf)?;

    // OpenSearch refuses to run as root. As root it runs in a user namespace
    // of its own, as an ordinary user there; outside it is still this
    // process's child (`env` and `unshare` exec it), stopped by its handle.
    let launcher = home.join("bin/opensearch");
    let mut args = vec![
        format!("OPENSEARCH_PATH_CONF={}", conf.display()),
        format!("OPENSEARCH_TMPDIR={}", path.join("tmp").display()),
        "OPENSEARCH_JAVA_OPTS=-Xms256m -Xmx512m".to_string(),
    ];
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } == 0 {
        args.extend(["unshare", "--user", "--map-user=1000", "--map-group=1000"].map(String::from));
    }
    args.push(launcher.display().to_string());
    let program = PathBuf::from("env");
    let process = Process::spawn("opensearch", &program, &args, &path, |_| {})?;
    let mut server = LocalServer {
        kind: Kind::OpenSearch,
        host: "127.0.0.1".into(),
        port,
        admin_user: "admin".into(),
        admin_password,
        ca_pem: Some(ca.cert_pem().to_string()),
        process,
        dir: Some(dir),
        restart: Restart {
            program,
            args,
            run_as: None,
        },
    };
    let client = client(&server)?;
    let (url, user, password) = (
        url(&server, "/_cluster/health"),
        server.admin_user.clone(),
        server.admin_password.clone(),
    );
    server
        .process
        .wait_until(Duration::from_secs(180), || {
            let (client, url, user, password) =
                (client.clone(), url.clone(), user.clone(), password.clone());
            async move {
                let answer = client
                    .get(&url)
                    .basic_auth(&user, Some(&password))
                    .send()
                    .await;
                match answer {
                    Ok(r) if r.status().is_success() => r
                        .json::<serde_json::Value>()
                        .await
                        .is_ok_and(|h| h["status"] == "green" || h["status"] == "yellow"),
                    _ => false,
                }
            }
        })
        .await?;
    Ok(server)
}

/// `https://127.0.0.1:<port><path>` of a local OpenSearch node.
pub fn url(server: &LocalServer, path: &str) -> String {
    format!("https://127.0.0.1:{}{path}", server.port)
}

/// An HTTPS client trusting the node's CA.
pub fn client(server: &LocalServer) -> Result<reqwest::Client, Error> {
    crate::install_crypto_provider();
    let tls = dbps_operator::engines::Tls {
        ca_pem: server.ca_pem.clone(),
    }
    .client_config()
    .map_err(|e| Error::Binaries(e.to_string()))?;
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| Error::Binaries(format!("HTTP client: {e}")))
}

/// The bcrypt hash of `password`, made by the security plugin's own hasher.
fn bcrypt(home: &Path, password: &str) -> Result<String, Error> {
    let classpath = format!(
        "{}/*:{}/*",
        home.join("plugins/opensearch-security").display(),
        home.join("lib").display()
    );
    let out = std::process::Command::new("java")
        .args([
            "-cp",
            &classpath,
            "org.opensearch.security.tools.Hasher",
            "-env",
            "DBPS_OPENSEARCH_PASSWORD",
        ])
        .env("DBPS_OPENSEARCH_PASSWORD", password)
        .output()
        .map_err(|e| Error::io("run the security plugin's hasher", e))?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("$2"))
        .map(String::from)
        .ok_or_else(|| {
            Error::Binaries(format!(
                "the security plugin's hasher gave no hash: {}",
                String::from_utf8_lossy(&out.stderr)
            ))
        })
}

fn copy_dir(from: &Path, to: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(to).map_err(|e| Error::io("create dir", e))?;
    for entry in std::fs::read_dir(from).map_err(|e| Error::io("read dir", e))? {
        let entry = entry.map_err(|e| Error::io("read dir", e))?;
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target).map_err(|e| Error::io("copy config", e))?;
        }
    }
    Ok(())
}

/// Makes `dir` and everything in it readable by its owner only.
fn restrict(dir: &Path) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    let mode = |m| std::fs::Permissions::from_mode(m);
    std::fs::set_permissions(dir, mode(0o700)).map_err(|e| Error::io("chmod", e))?;
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io("read dir", e))? {
        let path = entry.map_err(|e| Error::io("read dir", e))?.path();
        match path.is_dir() {
            true => restrict(&path)?,
            false => {
                std::fs::set_permissions(&path, mode(0o600)).map_err(|e| Error::io("chmod", e))?
            }
        }
    }
    Ok(())
}
