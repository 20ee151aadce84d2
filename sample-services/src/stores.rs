//! Connections to the service's own database, from its binding.

use std::sync::Arc;

use tokio::sync::Mutex;

use crate::binding::Binding;

/// A PostgreSQL session; one at a time per service is plenty for a sample.
pub type Postgres = Arc<Mutex<tokio_postgres::Client>>;

pub async fn postgres(b: &Binding) -> Result<Postgres, tokio_postgres::Error> {
    let mut config = tokio_postgres::Config::new();
    config
        .host(&b.host)
        .port(b.port)
        .user(&b.username)
        .password(&b.password)
        .dbname(&b.database)
        .application_name("dbps-sample")
        .connect_timeout(std::time::Duration::from_secs(10));
    let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::error!(error = %e, "database connection ended");
        }
    });
    Ok(Arc::new(Mutex::new(client)))
}

pub async fn mongodb(b: &Binding) -> Result<mongodb::Database, mongodb::error::Error> {
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
    // Fail at start, not at the first request, when the credentials are wrong.
    db.run_command(mongodb::bson::doc! { "listCollections": 1, "nameOnly": true })
        .await?;
    Ok(db)
}

/// The InfluxDB 1.x HTTP API as the binding's user.
#[derive(Clone)]
pub struct Influx {
    pub http: reqwest::Client,
    pub base: String,
    pub binding: Binding,
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
            binding: b.clone(),
        };
        influx.query("SHOW MEASUREMENTS").await?;
        Ok(influx)
    }

    fn auth(&self) -> [(&str, &str); 3] {
        [
            ("db", &self.binding.database),
            ("u", &self.binding.username),
            ("p", &self.binding.password),
        ]
    }

    /// Writes line protocol.
    pub async fn write(&self, lines: String) -> Result<(), String> {
        let r = self
            .http
            .post(format!("{}/write", self.base))
            .query(&self.auth())
            .query(&[("precision", "ms")])
            .body(lines)
            .send()
            .await
            .map_err(|e| e.to_string())?;
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
        let r = self
            .http
            .get(format!("{}/query", self.base))
            .query(&self.auth())
            .query(&[("q", q), ("epoch", "ms")])
            .send()
            .await
            .map_err(|e| e.to_string())?;
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
