//! Real database servers for the suites, each in a temp dir on a free
//! loopback port, with authentication on and an admin user, stopped on drop:
//! PostgreSQL and InfluxDB 1.x from Debian's packages, FerretDB (a
//! MongoDB wire-protocol server on SQLite) built from Go modules, and
//! OpenSearch with its security plugin assembled from Maven Central
//! ([`crate::opensearch`]).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use dbps_operator::api::Engine;
use dbps_operator::engines::Grant;
use mongodb::bson::{Document, doc};

use crate::Error;
use crate::ports::free_port;
use crate::process::Process;

/// Which database server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Postgres,
    InfluxDb,
    FerretDb,
    /// OpenSearch with its security plugin: TLS only, always.
    OpenSearch,
}

/// A running local database server.
pub struct LocalServer {
    pub kind: Kind,
    pub host: String,
    pub port: u16,
    pub admin_user: String,
    pub admin_password: String,
    /// With TLS: the CA (PEM) that signed the server's certificate. The server
    /// then accepts TLS connections only.
    pub ca_pem: Option<String>,
    pub(crate) process: Process,
    pub(crate) dir: Option<tempfile::TempDir>,
    pub(crate) restart: Restart,
}

/// How to start the same server again on the same port and data.
pub(crate) struct Restart {
    pub(crate) program: PathBuf,
    pub(crate) args: Vec<String>,
    pub(crate) run_as: Option<(u32, u32)>,
}

impl Kind {
    /// The dbps engine this server speaks.
    pub fn engine(self) -> Engine {
        match self {
            Kind::Postgres => Engine::Postgres,
            Kind::InfluxDb => Engine::Influxdb,
            Kind::FerretDb => Engine::Mongodb,
            Kind::OpenSearch => Engine::Opensearch,
        }
    }
}

impl LocalServer {
    /// Starts a server of `kind`.
    pub async fn start(kind: Kind) -> Result<Self, Error> {
        Self::start_with(kind, false).await
    }

    /// Starts a server of `kind` that accepts TLS connections only, with a
    /// certificate for `localhost`/`127.0.0.1` from a CA of its own.
    pub async fn start_tls(kind: Kind) -> Result<Self, Error> {
        Self::start_with(kind, true).await
    }

    /// Starts a PostgreSQL server as `options` say.
    pub async fn start_postgres(options: PostgresOptions) -> Result<Self, Error> {
        let tls = match options.tls {
            false => None,
            true => Some(local_tls(Kind::Postgres)?),
        };
        start_postgres(tls, &options).await
    }

    async fn start_with(kind: Kind, tls: bool) -> Result<Self, Error> {
        let tls = match tls {
            false => None,
            true => Some(local_tls(kind)?),
        };
        match kind {
            Kind::Postgres => {
                let options = PostgresOptions {
                    tls: tls.is_some(),
                    plaintext_too: false,
                    preload: Vec::new(),
                };
                start_postgres(tls, &options).await
            }
            Kind::InfluxDb => start_influxdb(tls).await,
            Kind::FerretDb => start_ferretdb(tls).await,
            Kind::OpenSearch => crate::opensearch::start().await,
        }
    }

    /// How the operator reaches this server as its administrator.
    pub fn admin_connection(&self, engine: Engine) -> dbps_operator::engines::Connection {
        dbps_operator::engines::Connection {
            engine,
            host: self.host.clone(),
            port: self.port,
            username: self.admin_user.clone(),
            password: self.admin_password.clone(),
            tls: self
                .ca_pem
                .clone()
                .map(|ca| dbps_operator::engines::Tls { ca_pem: Some(ca) }),
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// What the server wrote to its log so far.
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// The temp dir with the server's data and log.
    pub fn dir(&self) -> &Path {
        self.dir
            .as_ref()
            .expect("dir lives as long as the server")
            .path()
    }

    /// Stops the server, keeping its data and port for [`Self::resume`].
    pub fn pause(&mut self) {
        self.stop();
    }

    /// Freezes the server (`SIGSTOP`): it accepts connections and answers
    /// nothing until [`Self::thaw`]. For a server of one process (InfluxDB,
    /// FerretDB): PostgreSQL's sessions are processes of their own.
    pub fn freeze(&self) {
        self.process.signal(libc::SIGSTOP);
    }

    /// Lets a frozen server go on (`SIGCONT`).
    pub fn thaw(&self) {
        self.process.signal(libc::SIGCONT);
    }

    /// Stops the server with the signal that ends it with clients still
    /// connected, cleanly: a PostgreSQL killed after the grace period would
    /// leave its shared memory segments in `/dev/shm`.
    fn stop(&mut self) {
        self.process.stop_with(match self.kind {
            Kind::Postgres => libc::SIGINT,
            _ => libc::SIGTERM,
        });
    }

    /// Starts the server again after [`Self::pause`], on the same port and data.
    pub async fn resume(&mut self) -> Result<(), Error> {
        let dir = self.dir().to_path_buf();
        self.process = spawn(
            &format!("{:?}-resumed", self.kind).to_lowercase(),
            &self.restart.program,
            &self.restart.args,
            &dir,
            self.restart.run_as,
        )?;
        let port = self.port;
        wait_for_port(&mut self.process, port).await
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        self.stop();
        if let Some(dir) = self.dir.take() {
            let _ = dir.close();
        }
    }
}

fn spawn(
    name: &str,
    program: &Path,
    args: &[String],
    dir: &Path,
    run_as: Option<(u32, u32)>,
) -> Result<Process, Error> {
    Process::spawn(name, program, args, dir, |cmd: &mut Command| {
        if let Some((uid, gid)) = run_as {
            cmd.uid(uid).gid(gid);
        }
    })
}

async fn wait_for_port(process: &mut Process, port: u16) -> Result<(), Error> {
    process
        .wait_until(Duration::from_secs(60), || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        })
        .await
}

fn temp_dir(prefix: &str) -> Result<tempfile::TempDir, Error> {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .map_err(|e| Error::io("create temp dir", e))
}

/// The CA (PEM) and the server's certificate and key, for TLS.
type TlsFiles = Option<(String, crate::pki::CertifiedKey)>;

/// A CA of the server's own and its certificate for `localhost`/`127.0.0.1`.
fn local_tls(kind: Kind) -> Result<(String, crate::pki::CertifiedKey), Error> {
    let ca = crate::pki::Authority::new("dbps-local-database-ca")?;
    Ok((
        ca.cert_pem().to_string(),
        ca.server(&format!("{kind:?}"), &[])?,
    ))
}

/// How a local PostgreSQL server runs.
#[derive(Clone, Debug, Default)]
pub struct PostgresOptions {
    /// Serve TLS, with a certificate from a CA of its own; unencrypted
    /// connections are refused unless `plaintext_too`.
    pub tls: bool,
    /// With TLS, accept unencrypted connections as well.
    pub plaintext_too: bool,
    /// `shared_preload_libraries` (e.g. `pgaudit`).
    pub preload: Vec<String>,
}

/// Writes the certificate and key into `dir` (key readable by its owner only).
fn write_tls(
    dir: &Path,
    tls: &TlsFiles,
    run_as: Option<(u32, u32)>,
) -> Result<Option<(PathBuf, PathBuf)>, Error> {
    let Some((_, cert)) = tls else {
        return Ok(None);
    };
    let (crt, key) = (dir.join("server.crt"), dir.join("server.key"));
    std::fs::write(&crt, &cert.cert_pem).map_err(|e| Error::io("write server.crt", e))?;
    std::fs::write(&key, &cert.key_pem).map_err(|e| Error::io("write server.key", e))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::io("chmod server.key", e))?;
    if let Some((uid, gid)) = run_as {
        chown_tree(&crt, uid, gid)?;
        chown_tree(&key, uid, gid)?;
    }
    Ok(Some((crt, key)))
}

pub(crate) fn password() -> String {
    dbps_operator::password::generate()
}

// --- PostgreSQL --------------------------------------------------------------

/// Debian's PostgreSQL server binaries (the newest installed major version).
fn postgres_bin() -> Result<PathBuf, Error> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|_| {
            Error::Binaries("PostgreSQL is not installed (apt-get install postgresql)".into())
        })?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("postgres").is_file())
        .collect();
    versions.sort();
    versions
        .pop()
        .ok_or_else(|| Error::Binaries("no PostgreSQL server under /usr/lib/postgresql".into()))
}

/// initdb and postgres refuse to run as root: as root, run them as the
/// `postgres` account Debian's package creates.
fn unprivileged_account() -> Result<Option<(u32, u32)>, Error> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let name = std::ffi::CString::new("postgres").expect("static name");
    // SAFETY: getpwnam returns a pointer into static storage or null; read at once.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        return Err(Error::Binaries(
            "running as root needs the postgres account (apt-get install postgresql)".into(),
        ));
    }
    // SAFETY: pw is non-null and points to a valid passwd entry.
    Ok(Some(unsafe { ((*pw).pw_uid, (*pw).pw_gid) }))
}

fn chown_tree(path: &Path, uid: u32, gid: u32) -> Result<(), Error> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path without NUL");
    // SAFETY: c is a valid NUL-terminated path.
    if unsafe { libc::chown(c.as_ptr(), uid, gid) } != 0 {
        return Err(Error::io(
            format!("chown {}", path.display()),
            std::io::Error::last_os_error(),
        ));
    }
    if path.is_dir() {
        for entry in std::fs::read_dir(path).map_err(|e| Error::io("read dir", e))? {
            chown_tree(
                &entry.map_err(|e| Error::io("read dir", e))?.path(),
                uid,
                gid,
            )?;
        }
    }
    Ok(())
}

async fn start_postgres(tls: TlsFiles, options: &PostgresOptions) -> Result<LocalServer, Error> {
    let bin = postgres_bin()?;
    let run_as = unprivileged_account()?;
    let dir = temp_dir("dbps-postgres-")?;
    let path = dir.path().to_path_buf();
    let admin_password = password();
    let pwfile = path.join("pwfile");
    std::fs::write(&pwfile, &admin_password).map_err(|e| Error::io("write pwfile", e))?;
    if let Some((uid, gid)) = run_as {
        chown_tree(&path, uid, gid)?;
    }
    let data = path.join("data");
    let mut initdb = spawn(
        "initdb",
        &bin.join("initdb"),
        &[
            format!("--pgdata={}", data.display()),
            "--username=admin".into(),
            "--auth=scram-sha-256".into(),
            format!("--pwfile={}", pwfile.display()),
            "--encoding=UTF8".into(),
            "--no-sync".into(),
        ],
        &path,
        run_as,
    )?;
    initdb.wait_success(Duration::from_secs(120)).await?;
    let _ = std::fs::remove_file(&pwfile);

    let port = free_port()?;
    let mut args: Vec<String> = [
        "-D",
        &data.display().to_string(),
        "-p",
        &port.to_string(),
        "-k",
        &path.display().to_string(),
        "-c",
        "listen_addresses=127.0.0.1",
        "-c",
        "fsync=off",
        "-c",
        "max_connections=200",
    ]
    .map(String::from)
    .to_vec();
    if let Some((crt, key)) = write_tls(&path, &tls, run_as)? {
        // TLS only: a plain TCP connection finds no pg_hba line.
        let hba = data.join("pg_hba.conf");
        let rules = match options.plaintext_too {
            false => "local all all scram-sha-256\nhostssl all all 127.0.0.1/32 scram-sha-256\n",
            true => "local all all scram-sha-256\nhost all all 127.0.0.1/32 scram-sha-256\n",
        };
        std::fs::write(&hba, rules).map_err(|e| Error::io("write pg_hba.conf", e))?;
        if let Some((uid, gid)) = run_as {
            chown_tree(&hba, uid, gid)?;
        }
        for setting in [
            "ssl=on".to_string(),
            format!("ssl_cert_file={}", crt.display()),
            format!("ssl_key_file={}", key.display()),
        ] {
            args.extend(["-c".to_string(), setting]);
        }
    }
    if !options.preload.is_empty() {
        args.extend([
            "-c".to_string(),
            format!("shared_preload_libraries={}", options.preload.join(",")),
        ]);
    }
    let program = bin.join("postgres");
    let process = spawn("postgres", &program, &args, &path, run_as)?;
    let server = LocalServer {
        kind: Kind::Postgres,
        host: "127.0.0.1".into(),
        port,
        admin_user: "admin".into(),
        admin_password,
        ca_pem: tls.map(|(ca, _)| ca),
        process,
        dir: Some(dir),
        restart: Restart {
            program,
            args,
            run_as,
        },
    };
    server.wait_ready().await
}

impl LocalServer {
    /// Waits until the admin user can work with the server (over TLS when it has TLS).
    async fn wait_ready(mut self) -> Result<Self, Error> {
        let conn = self.admin_connection(self.kind.engine());
        let servers = dbps_operator::servers::Servers::default();
        self.process
            .wait_until(Duration::from_secs(60), || async {
                servers.info(&conn).await.is_ok()
            })
            .await?;
        Ok(self)
    }
}

// --- InfluxDB 1.x ----------------------------------------------------------

async fn start_influxdb(tls: TlsFiles) -> Result<LocalServer, Error> {
    let program = PathBuf::from("/usr/bin/influxd");
    if !program.is_file() {
        return Err(Error::Binaries(
            "InfluxDB is not installed (apt-get install influxdb)".into(),
        ));
    }
    let dir = temp_dir("dbps-influxdb-")?;
    let path = dir.path().to_path_buf();
    let (port, rpc) = (free_port()?, free_port()?);
    let https = match write_tls(&path, &tls, None)? {
        None => String::new(),
        Some((crt, key)) => format!(
            "  https-enabled = true\n  https-certificate = \"{}\"\n  https-private-key = \"{}\"\n",
            crt.display(),
            key.display()
        ),
    };
    // No usage reporting, no self-monitoring store, everything on loopback.
    let config = format!(
        r#"reporting-disabled = true
bind-address = "127.0.0.1:{rpc}"
[meta]
  dir = "{dir}/meta"
[data]
  dir = "{dir}/data"
  wal-dir = "{dir}/wal"
  query-log-enabled = false
[monitor]
  store-enabled = false
[http]
  enabled = true
  bind-address = "127.0.0.1:{port}"
  auth-enabled = true
  log-enabled = false
{https}[continuous_queries]
  enabled = false
"#,
        dir = path.display()
    );
    let config_path = path.join("influxdb.conf");
    std::fs::write(&config_path, config).map_err(|e| Error::io("write influxdb.conf", e))?;
    let args = vec!["-config".into(), config_path.display().to_string()];
    let mut process = spawn("influxd", &program, &args, &path, None)?;
    crate::install_crypto_provider();
    let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(5));
    let scheme = match &tls {
        None => "http",
        Some((ca, _)) => {
            builder = builder.tls_certs_only([reqwest::Certificate::from_pem(ca.as_bytes())?]);
            "https"
        }
    };
    let http = builder.build()?;
    let ping = format!("{scheme}://127.0.0.1:{port}/ping");
    process
        .wait_until(Duration::from_secs(60), || {
            let (http, ping) = (http.clone(), ping.clone());
            async move { matches!(http.get(&ping).send().await, Ok(r) if r.status().is_success()) }
        })
        .await?;
    // With no user yet, InfluxDB accepts exactly this statement unauthenticated.
    let admin_password = password();
    let q = format!("CREATE USER admin WITH PASSWORD '{admin_password}' WITH ALL PRIVILEGES");
    let response = http
        .post(format!("{scheme}://127.0.0.1:{port}/query"))
        .form(&[("q", q.as_str())])
        .send()
        .await?;
    if !response.status().is_success() {
        return Err(process.failure(format!(
            "creating the admin user: HTTP {}",
            response.status()
        )));
    }
    Ok(LocalServer {
        kind: Kind::InfluxDb,
        host: "127.0.0.1".into(),
        port,
        admin_user: "admin".into(),
        admin_password,
        ca_pem: tls.map(|(ca, _)| ca),
        process,
        dir: Some(dir),
        restart: Restart {
            program,
            args,
            run_as: None,
        },
    })
}

// --- FerretDB ----------------------------------------------------------------

/// The FerretDB binary built by `e2e/tools/build-ferretdb.sh`.
pub fn ferretdb_binary() -> Result<PathBuf, Error> {
    let version = crate::binaries::Versions::pinned().ferretdb;
    let cache = std::env::var_os("DBPS_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/dbps")))
        .ok_or_else(|| Error::Binaries("neither DBPS_CACHE_DIR nor HOME is set".into()))?;
    let bin = cache.join(format!("ferretdb-{version}/ferretdb"));
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(Error::Binaries(format!(
            "{} is missing; run `make binaries` (e2e/tools/build-ferretdb.sh)",
            bin.display()
        )))
    }
}

async fn start_ferretdb(tls: TlsFiles) -> Result<LocalServer, Error> {
    let program = ferretdb_binary()?;
    let dir = temp_dir("dbps-ferretdb-")?;
    let path = dir.path().to_path_buf();
    std::fs::create_dir_all(path.join("data")).map_err(|e| Error::io("create data dir", e))?;
    let (port, debug) = (free_port()?, free_port()?);
    let admin_password = password();
    let mut args = vec![
        "--handler=sqlite".into(),
        format!("--sqlite-url=file:{}/data/", path.display()),
        format!("--debug-addr=127.0.0.1:{debug}"),
        format!("--state-dir={}", path.display()),
        // No usage reporting.
        "--telemetry=disable".into(),
        // SCRAM authentication against users FerretDB stores itself.
        "--test-enable-new-auth".into(),
        "--setup-database=admin".into(),
        "--setup-username=admin".into(),
        format!("--setup-password={admin_password}"),
        "--log-level=error".into(),
    ];
    match write_tls(&path, &tls, None)? {
        None => args.push(format!("--listen-addr=127.0.0.1:{port}")),
        Some((crt, key)) => args.extend([
            // TLS only: no plain listener.
            "--listen-addr=".to_string(),
            format!("--listen-tls=127.0.0.1:{port}"),
            format!("--listen-tls-cert-file={}", crt.display()),
            format!("--listen-tls-key-file={}", key.display()),
        ]),
    }
    // FerretDB keeps each database's SQLite file (with its WAL and
    // shared-memory files) open: ten thousand databases need more
    // descriptors than a process is given by default. Raised for this
    // process alone, as far as it may be.
    let process = Process::spawn("ferretdb", &program, &args, &path, |cmd: &mut Command| {
        // SAFETY: getrlimit and setrlimit are async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                let wanted: libc::rlim_t = 1 << 17;
                let raised = libc::rlimit {
                    rlim_cur: wanted,
                    rlim_max: wanted,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
                    let mut current = libc::rlimit {
                        rlim_cur: 0,
                        rlim_max: 0,
                    };
                    if libc::getrlimit(libc::RLIMIT_NOFILE, &mut current) == 0 {
                        current.rlim_cur = current.rlim_max;
                        libc::setrlimit(libc::RLIMIT_NOFILE, &current);
                    }
                }
                Ok(())
            });
        }
    })?;
    let server = LocalServer {
        kind: Kind::FerretDb,
        host: "127.0.0.1".into(),
        port,
        admin_user: "admin".into(),
        admin_password,
        ca_pem: tls.map(|(ca, _)| ca),
        process,
        dir: Some(dir),
        restart: Restart {
            program,
            args,
            run_as: None,
        },
    };
    server.wait_ready().await
}

/// A session as `username` on `database` of a local PostgreSQL server: over
/// TLS, verifying it against its CA, when the server has TLS.
pub async fn connect_postgres(
    server: &LocalServer,
    database: &str,
    username: &str,
    password: &str,
) -> Result<tokio_postgres::Client, String> {
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(server.port)
        .user(username)
        .password(password)
        .dbname(database);
    let client = match &server.ca_pem {
        None => {
            let (client, conn) = config
                .connect(tokio_postgres::NoTls)
                .await
                .map_err(|e| format!("{e:?}"))?;
            tokio::spawn(conn);
            client
        }
        Some(ca) => {
            let tls = dbps_operator::engines::Tls {
                ca_pem: Some(ca.clone()),
            };
            let connector = tokio_postgres_rustls::MakeRustlsConnect::new(
                tls.client_config().map_err(|e| e.to_string())?,
            );
            config.ssl_mode(tokio_postgres::config::SslMode::Require);
            let (client, conn) = config
                .connect(connector)
                .await
                .map_err(|e| format!("{e:?}"))?;
            tokio::spawn(conn);
            client
        }
    };
    Ok(client)
}

/// Writes a row (PostgreSQL), a point (InfluxDB) or a document (MongoDB)
/// with these credentials and reads it back.
pub async fn round_trip(
    server: &LocalServer,
    engine: Engine,
    database: &str,
    username: &str,
    password: &str,
) -> Result<String, String> {
    let g = Grant {
        database: database.into(),
        username: username.into(),
        password: password.into(),
    };
    match engine {
        Engine::Postgres => {
            let client = connect_postgres(server, &g.database, &g.username, &g.password).await?;
            client
                .batch_execute(
                    "CREATE TABLE IF NOT EXISTS t (v text); INSERT INTO t VALUES ('hello')",
                )
                .await
                .map_err(|e| format!("{e:?}"))?;
            let row = client
                .query_one("SELECT v FROM t LIMIT 1", &[])
                .await
                .map_err(|e| format!("{e:?}"))?;
            Ok(row.get(0))
        }
        Engine::Influxdb => {
            let http = reqwest::Client::new();
            let base = format!("http://127.0.0.1:{}", server.port);
            let auth = [
                ("db", g.database.as_str()),
                ("u", g.username.as_str()),
                ("p", g.password.as_str()),
            ];
            let write = http
                .post(format!("{base}/write"))
                .query(&auth)
                .body("probe value=42")
                .send()
                .await;
            let write = write.map_err(|e| e.to_string())?;
            if !write.status().is_success() {
                return Err(format!(
                    "write: HTTP {} {}",
                    write.status(),
                    write.text().await.unwrap_or_default()
                ));
            }
            let mut q = auth.to_vec();
            q.push(("q", "SELECT value FROM probe"));
            let read = http
                .get(format!("{base}/query"))
                .query(&q)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let body: serde_json::Value = read.json().await.map_err(|e| e.to_string())?;
            body["results"][0]["series"][0]["values"][0][1]
                .as_f64()
                .map(|v| v.to_string())
                .ok_or_else(|| format!("read: {body}"))
        }
        Engine::Mongodb => {
            let uri = format!(
                "mongodb://{}:{}@127.0.0.1:{}/{}?authSource={}&serverSelectionTimeoutMS=5000",
                g.username, g.password, server.port, g.database, g.database
            );
            let client = mongodb::Client::with_uri_str(uri)
                .await
                .map_err(|e| e.to_string())?;
            let docs = client.database(&g.database).collection::<Document>("probe");
            docs.insert_one(doc! { "v": "hello" })
                .await
                .map_err(|e| e.to_string())?;
            let found = docs.find_one(doc! {}).await.map_err(|e| e.to_string())?;
            Ok(found
                .and_then(|d| d.get_str("v").ok().map(String::from))
                .unwrap_or_default())
        }
        Engine::Opensearch => {
            // An index of the claim's prefix, written and read back.
            let http = crate::opensearch::client(server).map_err(|e| e.to_string())?;
            let index = format!("{}-probe", g.database);
            let url = crate::opensearch::url(server, &format!("/{index}/_doc/1?refresh=true"));
            let wrote = http
                .put(&url)
                .basic_auth(&g.username, Some(&g.password))
                .json(&serde_json::json!({ "v": "hello" }))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if !wrote.status().is_success() {
                return Err(format!(
                    "write: HTTP {} {}",
                    wrote.status(),
                    wrote.text().await.unwrap_or_default()
                ));
            }
            let read = http
                .get(crate::opensearch::url(server, &format!("/{index}/_doc/1")))
                .basic_auth(&g.username, Some(&g.password))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let body: serde_json::Value = read.json().await.map_err(|e| e.to_string())?;
            body["_source"]["v"]
                .as_str()
                .map(String::from)
                .ok_or_else(|| format!("read: {body}"))
        }
    }
}

/// Statements run as the server's administrator, the way a person (not
/// dbps) would: to make objects dbps did not make, or to leave the state an
/// interrupted reconcile leaves.
pub mod behind_dbps {
    use super::*;

    async fn pg_admin(
        server: &LocalServer,
        database: &str,
    ) -> Result<tokio_postgres::Client, String> {
        let conninfo = format!(
            "host=127.0.0.1 port={} user={} password={} dbname={database}",
            server.port, server.admin_user, server.admin_password
        );
        let (client, conn) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
            .await
            .map_err(|e| format!("{e:?}"))?;
        tokio::spawn(conn);
        Ok(client)
    }

    async fn postgres(server: &LocalServer, database: &str, sql: &str) -> Result<(), String> {
        let client = pg_admin(server, database).await?;
        client
            .batch_execute(sql)
            .await
            .map_err(|e| format!("{e:?}"))
    }

    async fn influx(server: &LocalServer, db: Option<&str>, q: &str) -> Result<(), String> {
        let mut form = vec![("q", q)];
        form.extend(db.map(|db| ("db", db)));
        let answer = reqwest::Client::new()
            .post(format!("http://127.0.0.1:{}/query", server.port))
            .basic_auth(&server.admin_user, Some(&server.admin_password))
            .form(&form)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let body: serde_json::Value = answer.json().await.map_err(|e| e.to_string())?;
        match body["results"][0]["error"]
            .as_str()
            .or(body["error"].as_str())
        {
            Some(e) => Err(e.to_string()),
            None => Ok(()),
        }
    }

    /// A request to a local OpenSearch node as its admin; the answer's status.
    async fn opensearch(
        server: &LocalServer,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(u16, serde_json::Value), String> {
        let http = crate::opensearch::client(server).map_err(|e| e.to_string())?;
        let mut request = http
            .request(method, crate::opensearch::url(server, path))
            .basic_auth(&server.admin_user, Some(&server.admin_password));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer = request.send().await.map_err(|e| e.to_string())?;
        let status = answer.status().as_u16();
        Ok((status, answer.json().await.unwrap_or_default()))
    }

    async fn mongo(server: &LocalServer) -> Result<mongodb::Client, String> {
        let uri = format!(
            "mongodb://{}:{}@127.0.0.1:{}/admin?authSource=admin&serverSelectionTimeoutMS=5000",
            server.admin_user, server.admin_password, server.port
        );
        mongodb::Client::with_uri_str(uri)
            .await
            .map_err(|e| e.to_string())
    }

    /// A database with data in it and a user who can use it, made by hand.
    pub async fn create(
        server: &LocalServer,
        engine: Engine,
        database: &str,
        username: &str,
        password: &str,
    ) -> Result<(), String> {
        match engine {
            Engine::Postgres => {
                postgres(
                    server,
                    "postgres",
                    &format!("CREATE ROLE \"{username}\" LOGIN PASSWORD '{password}'"),
                )
                .await?;
                postgres(
                    server,
                    "postgres",
                    &format!("CREATE DATABASE \"{database}\" OWNER \"{username}\""),
                )
                .await
            }
            Engine::Influxdb => {
                for q in [
                    format!("CREATE DATABASE \"{database}\""),
                    format!("CREATE USER \"{username}\" WITH PASSWORD '{password}'"),
                    format!("GRANT ALL ON \"{database}\" TO \"{username}\""),
                ] {
                    influx(server, None, &q).await?;
                }
                Ok(())
            }
            Engine::Mongodb => {
                let client = mongo(server).await?;
                let db = client.database(database);
                db.run_command(doc! { "createUser": username, "pwd": password, "roles": [] })
                    .await
                    .map_err(|e| e.to_string())?;
                db.collection::<Document>("legacy")
                    .insert_one(doc! { "v": "legacy" })
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            }
            Engine::Opensearch => {
                // An index under the name's prefix and a user, unmarked.
                let doc = serde_json::json!({ "v": "legacy" });
                let path = format!("/{database}-legacy/_doc/1?refresh=true");
                let user = serde_json::json!({ "password": password });
                for (method, path, body) in [
                    (reqwest::Method::PUT, path, doc),
                    (
                        reqwest::Method::PUT,
                        format!("/_plugins/_security/api/internalusers/{username}"),
                        user,
                    ),
                ] {
                    let (status, answer) = opensearch(server, method, &path, Some(body)).await?;
                    if !(200..300).contains(&status) {
                        return Err(format!("{path}: HTTP {status} {answer}"));
                    }
                }
                Ok(())
            }
        }
    }

    /// The state a reconcile leaves when it stops between writing a mark and
    /// making the object: PostgreSQL — the database exists (owned by the
    /// marked owner role) without its own mark; MongoDB and InfluxDB — the
    /// marks exist and the database and users do not.
    pub async fn interrupt_after_marking(
        server: &LocalServer,
        engine: Engine,
        database: &str,
        usernames: &[&str],
    ) -> Result<(), String> {
        match engine {
            Engine::Postgres => {
                postgres(
                    server,
                    "postgres",
                    &format!("COMMENT ON DATABASE \"{database}\" IS NULL"),
                )
                .await
            }
            Engine::Influxdb => {
                influx(server, None, &format!("DROP DATABASE \"{database}\"")).await?;
                for user in usernames {
                    influx(server, None, &format!("DROP USER \"{user}\"")).await?;
                }
                Ok(())
            }
            Engine::Mongodb => {
                let client = mongo(server).await?;
                let db = client.database(database);
                for user in usernames {
                    db.run_command(doc! { "dropUser": *user })
                        .await
                        .map_err(|e| e.to_string())?;
                }
                db.drop().await.map_err(|e| e.to_string())
            }
            Engine::Opensearch => {
                // The role (the reservation) is written first: the users
                // and indices go.
                for user in usernames {
                    let path = format!("/_plugins/_security/api/internalusers/{user}");
                    opensearch(server, reqwest::Method::DELETE, &path, None).await?;
                }
                let path = format!("/{database}-*?expand_wildcards=all");
                opensearch(server, reqwest::Method::DELETE, &path, None)
                    .await
                    .map(drop)
            }
        }
    }

    /// Whether `database` exists on the server.
    pub async fn database_exists(
        server: &LocalServer,
        engine: Engine,
        database: &str,
    ) -> Result<bool, String> {
        match engine {
            Engine::Postgres => {
                let client = pg_admin(server, "postgres").await?;
                let rows = client
                    .query("SELECT 1 FROM pg_database WHERE datname = $1", &[&database])
                    .await
                    .map_err(|e| format!("{e:?}"))?;
                Ok(!rows.is_empty())
            }
            Engine::Influxdb => {
                let answer = reqwest::Client::new()
                    .post(format!("http://127.0.0.1:{}/query", server.port))
                    .basic_auth(&server.admin_user, Some(&server.admin_password))
                    .form(&[("q", "SHOW DATABASES")])
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                let body: serde_json::Value = answer.json().await.map_err(|e| e.to_string())?;
                Ok(body["results"][0]["series"][0]["values"]
                    .as_array()
                    .is_some_and(|rows| rows.iter().any(|r| r[0] == database)))
            }
            Engine::Mongodb => {
                let names = mongo(server)
                    .await?
                    .list_database_names()
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(names.iter().any(|n| n == database))
            }
            Engine::Opensearch => {
                let role = format!("/_plugins/_security/api/roles/dbps-{database}");
                let (status, _) = opensearch(server, reqwest::Method::GET, &role, None).await?;
                let path = format!("/_resolve/index/{database}-*?expand_wildcards=all");
                let (_, found) = opensearch(server, reqwest::Method::GET, &path, None).await?;
                let indices = found["indices"].as_array().is_some_and(|i| !i.is_empty());
                Ok(status == 200 || indices)
            }
        }
    }
}
