//! Connections to the service's own database, from its binding.

use std::sync::Arc;

use tokio::sync::{MappedMutexGuard, Mutex, MutexGuard};

use crate::binding::Binding;

/// A PostgreSQL session as the binding's user; one at a time per service is
/// plenty for a sample. Each use reads the binding again (a few small
/// files): when the credentials changed — a rotation, the kubelet rewrote
/// the files from the stable binding Secret — a session logged in with the
/// new ones takes over before the previous user is revoked at the end of the
/// grace period, so the service goes on without a restart. Credentials the
/// server refuses are not tried again until the files change once more. A
/// session the server ended (a restart) is opened again at the next use.
#[derive(Clone)]
pub struct Postgres {
    state: Arc<Mutex<PostgresState>>,
}

struct PostgresState {
    session: tokio_postgres::Client,
    /// The binding the session logged in with.
    binding: Binding,
    refused: Option<Binding>,
}

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.state.try_lock() {
            Ok(state) => write!(f, "Postgres({:?})", state.binding),
            Err(_) => write!(f, "Postgres(in use)"),
        }
    }
}

impl Postgres {
    /// The session, as the user the binding names now; opened again if the
    /// server ended the previous one.
    pub async fn lock(&self) -> MappedMutexGuard<'_, tokio_postgres::Client> {
        let mut state = self.state.lock().await;
        let fresh = match state.binding.reread() {
            Ok(fresh) => fresh,
            Err(e) => {
                tracing::warn!(error = %e, "binding unreadable; going on with the one read before");
                state.binding.clone()
            }
        };
        // Refused credentials wait for the files to change once more.
        let fresh = if state.refused.as_ref() == Some(&fresh) {
            state.binding.clone()
        } else {
            fresh
        };
        let changed = fresh != state.binding;
        if changed || state.session.is_closed() {
            match connect(&fresh).await {
                Ok(client) => {
                    if changed {
                        tracing::info!(database = ?fresh, "credentials changed; database session opened again");
                    } else {
                        tracing::info!(database = ?fresh, "database session opened again");
                    }
                    state.session = client;
                    state.binding = fresh;
                    state.refused = None;
                }
                Err(e) if changed => {
                    tracing::warn!(error = %e, "the binding's new credentials were refused; going on with the ones before");
                    state.refused = Some(fresh);
                }
                Err(e) => tracing::warn!(error = %e, "database session could not be opened again"),
            }
        }
        MutexGuard::map(state, |s| &mut s.session)
    }

    /// The user the session logged in as.
    pub async fn username(&self) -> String {
        self.state.lock().await.binding.username.clone()
    }
}

pub async fn postgres(b: &Binding) -> Result<Postgres, tokio_postgres::Error> {
    Ok(Postgres {
        state: Arc::new(Mutex::new(PostgresState {
            session: connect(b).await?,
            binding: b.clone(),
            refused: None,
        })),
    })
}

async fn connect(b: &Binding) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut config = tokio_postgres::Config::new();
    config
        .host(&b.host)
        .port(b.port)
        .user(&b.username)
        .password(&b.password)
        .dbname(&b.database)
        .application_name("dbps-sample")
        .connect_timeout(std::time::Duration::from_secs(10));
    // A binding that asks for TLS (`sslmode`, `ca.crt`) is connected to
    // over TLS only, verifying the server's certificate and name against
    // the binding's CA (`verify-full`).
    let client = match (&b.sslmode, &b.ca_crt) {
        (None, None) => {
            let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
            tokio::spawn(log_end(connection));
            client
        }
        (_, ca) => {
            config.ssl_mode(tokio_postgres::config::SslMode::Require);
            let connector =
                tokio_postgres_rustls::MakeRustlsConnect::new(tls_config(ca.as_deref()));
            let (client, connection) = config.connect(connector).await?;
            tokio::spawn(log_end(connection));
            client
        }
    };
    Ok(client)
}

async fn log_end<F: std::future::Future<Output = Result<(), tokio_postgres::Error>>>(
    connection: F,
) {
    if let Err(e) = connection.await {
        tracing::error!(error = %e, "database connection ended");
    }
}

/// A TLS client trusting `ca` (PEM), or the public roots without one.
pub fn tls_config(ca: Option<&str>) -> rustls::ClientConfig {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(pem) => {
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()).flatten() {
                let _ = roots.add(cert);
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports the default versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// A MongoDB database as the binding's user. Each use reads the binding
/// again (a few small files); when the credentials changed — a rotation, the
/// kubelet rewrote the files — a client logged in with the new ones takes
/// over before the previous user is revoked at the end of the grace period,
/// so the service goes on without a restart. Credentials the server refuses
/// are not tried again until the files change once more.
#[derive(Clone)]
pub struct Mongo {
    state: Arc<Mutex<MongoState>>,
}

struct MongoState {
    binding: Binding,
    db: mongodb::Database,
    refused: Option<Binding>,
}

impl std::fmt::Debug for Mongo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Mongo")
    }
}

impl Mongo {
    /// Connects as the binding's user; fails at start, not at the first
    /// request, when the credentials are wrong.
    pub async fn connect(b: &Binding) -> Result<Self, mongodb::error::Error> {
        Ok(Self {
            state: Arc::new(Mutex::new(MongoState {
                binding: b.clone(),
                db: open_mongodb(b).await?,
                refused: None,
            })),
        })
    }

    /// The database, as the user the binding names now.
    pub async fn db(&self) -> mongodb::Database {
        let mut state = self.state.lock().await;
        match state.binding.reread() {
            Ok(fresh) if fresh != state.binding && state.refused.as_ref() != Some(&fresh) => {
                match open_mongodb(&fresh).await {
                    Ok(db) => {
                        tracing::info!(database = ?fresh, "credentials changed; database session opened again");
                        state.db = db;
                        state.binding = fresh;
                        state.refused = None;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "the binding's new credentials were refused; going on with the ones before");
                        state.refused = Some(fresh);
                    }
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "binding unreadable; going on with the one read before")
            }
        }
        state.db.clone()
    }

    /// The user the store logs in as.
    pub async fn username(&self) -> String {
        self.state.lock().await.binding.username.clone()
    }
}

async fn open_mongodb(b: &Binding) -> Result<mongodb::Database, mongodb::error::Error> {
    use mongodb::options::{ClientOptions, Credential, ServerAddress};
    let options = ClientOptions::builder()
        .hosts(vec![ServerAddress::Tcp {
            host: b.host.clone(),
            port: Some(b.port),
        }])
        .credential(
            Credential::builder()
                .username(b.username.clone())
                .password(b.password.clone())
                .source(b.database.clone())
                .build(),
        )
        .app_name("dbps-sample".to_string())
        .server_selection_timeout(std::time::Duration::from_secs(10))
        .direct_connection(true)
        .build();
    let client = mongodb::Client::with_options(options)?;
    let db = client.database(&b.database);
    db.run_command(mongodb::bson::doc! { "listCollections": 1, "nameOnly": true })
        .await?;
    Ok(db)
}

/// The InfluxDB 1.x HTTP API as the binding's user. Each request carries
/// the credentials; one refused with 401 (a rotation's previous user was
/// revoked) is sent once more with the binding read again, and those
/// credentials are kept when they differ.
#[derive(Clone)]
pub struct Influx {
    pub http: reqwest::Client,
    pub base: String,
    binding: Arc<std::sync::RwLock<Binding>>,
}

impl Influx {
    pub async fn connect(b: &Binding) -> Result<Self, String> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let influx = Self {
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(10))
                .build()
                .map_err(|e| e.to_string())?,
            base: format!("http://{}:{}", b.host, b.port),
            binding: Arc::new(std::sync::RwLock::new(b.clone())),
        };
        influx.query("SHOW MEASUREMENTS").await?;
        Ok(influx)
    }

    fn auth(&self) -> [(&'static str, String); 3] {
        let b = self.binding.read().expect("binding lock");
        [
            ("db", b.database.clone()),
            ("u", b.username.clone()),
            ("p", b.password.clone()),
        ]
    }

    /// Sends the request `build` makes with the credentials in force; on a
    /// 401, once more with the binding as it reads now, if that changed.
    async fn send(
        &self,
        build: impl Fn(&[(&'static str, String); 3]) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, String> {
        let r = build(&self.auth())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if r.status() != reqwest::StatusCode::UNAUTHORIZED {
            return Ok(r);
        }
        let current = self.binding.read().expect("binding lock").clone();
        match current.reread() {
            Ok(fresh) if fresh != current => {
                tracing::info!(database = ?fresh, "credentials refused; using the binding as it reads now");
                *self.binding.write().expect("binding lock") = fresh;
                build(&self.auth()).send().await.map_err(|e| e.to_string())
            }
            _ => Ok(r),
        }
    }

    /// Writes line protocol.
    pub async fn write(&self, lines: String) -> Result<(), String> {
        let url = format!("{}/write", self.base);
        let r = self
            .send(|auth| {
                self.http
                    .post(&url)
                    .query(auth)
                    .query(&[("precision", "ms")])
                    .body(lines.clone())
            })
            .await?;
        if r.status().is_success() {
            Ok(())
        } else {
            Err(format!(
                "write: HTTP {} {}",
                r.status(),
                r.text().await.unwrap_or_default()
            ))
        }
    }

    /// Runs an InfluxQL query; returns its JSON answer.
    pub async fn query(&self, q: &str) -> Result<serde_json::Value, String> {
        let url = format!("{}/query", self.base);
        let r = self
            .send(|auth| {
                self.http
                    .get(&url)
                    .query(auth)
                    .query(&[("q", q), ("epoch", "ms")])
            })
            .await?;
        let status = r.status();
        let body: serde_json::Value = r.json().await.map_err(|e| e.to_string())?;
        match body["results"][0]["error"]
            .as_str()
            .or(body["error"].as_str())
        {
            Some(e) => Err(e.to_string()),
            None if status.is_success() => Ok(body),
            None => Err(format!("query: HTTP {status}")),
        }
    }
}
