//! search (OpenSearch): the catalog's CQRS read view. It builds its index
//! from the `ProductChanged` events catalog publishes through its outbox,
//! and answers full-text queries; it never reads catalog's database. An
//! event is applied with its version as OpenSearch's external version, so a
//! redelivered or late event (same or older version) changes nothing.
//! Every index it makes starts with its binding's `prefix`: the only indices
//! its user may touch.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::catalog::{Product, ProductChanged};
use crate::binding::Binding;
use crate::http::{ApiError, ApiResult};

#[derive(Clone)]
pub struct Search {
    http: reqwest::Client,
    base: String,
    username: String,
    password: String,
    /// The products index: `<prefix>products`.
    index: String,
}

/// A product found, with its score.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Hit {
    pub score: f64,
    pub product: Product,
}

#[derive(Deserialize)]
struct SearchQuery {
    q: String,
}

impl Search {
    /// A client of the binding's server (TLS with its CA), for the
    /// binding's user and prefix.
    pub fn connect(b: &Binding) -> Result<Self, String> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let prefix = b
            .prefix
            .clone()
            .ok_or("the binding has no prefix: it is not an OpenSearch binding")?;
        let tls = b.ca_crt.is_some() || b.kind == "opensearch";
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .tls_backend_preconfigured(crate::stores::tls_config(b.ca_crt.as_deref()))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self {
            http,
            base: format!(
                "{}://{}:{}",
                if tls { "https" } else { "http" },
                b.host,
                b.port
            ),
            username: b.username.clone(),
            password: b.password.clone(),
            index: format!("{prefix}products"),
        })
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(u16, serde_json::Value), String> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .basic_auth(&self.username, Some(&self.password));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer = request.send().await.map_err(|e| {
            // The causes too: a refused or timed-out connection, a certificate.
            let mut said = e.to_string();
            let mut cause = std::error::Error::source(&e);
            while let Some(c) = cause {
                said.push_str(&format!(": {c}"));
                cause = c.source();
            }
            said
        })?;
        let status = answer.status().as_u16();
        Ok((status, answer.json().await.unwrap_or_default()))
    }

    /// Makes the products index (names and attributes searchable as text).
    pub async fn setup(&self) -> Result<(), String> {
        let mappings = json!({ "mappings": { "properties": {
            "sku": { "type": "keyword" },
            "name": { "type": "text" },
            "price_cents": { "type": "long" },
            "attributes": { "type": "object" }
        } } });
        let (status, answer) = self
            .send(
                reqwest::Method::PUT,
                &format!("/{}", self.index),
                Some(mappings),
            )
            .await?;
        let exists = answer["error"]["type"] == "resource_already_exists_exception";
        match status {
            200 => Ok(()),
            400 if exists => Ok(()),
            _ => Err(format!(
                "creating index {}: HTTP {status} {answer}",
                self.index
            )),
        }
    }

    pub fn routes(self) -> Router {
        Router::new()
            .route("/events", post(on_event))
            .route("/search", get(search))
            .with_state(self)
    }

    /// Applies one event; true when it changed the view.
    pub async fn apply(&self, event: &ProductChanged) -> Result<bool, String> {
        let path = format!(
            "/{}/_doc/{}?version={}&version_type=external&refresh=true",
            self.index,
            urlencode(&event.product.sku),
            event.version
        );
        let body = serde_json::to_value(&event.product).map_err(|e| e.to_string())?;
        let (status, answer) = self.send(reqwest::Method::PUT, &path, Some(body)).await?;
        match status {
            200 | 201 => Ok(true),
            // The view has this version or a newer one: nothing to do.
            409 => Ok(false),
            _ => Err(format!("indexing {}: HTTP {status} {answer}", event.id)),
        }
    }

    /// Products matching `q` in their name or attributes, best first.
    pub async fn query(&self, q: &str) -> Result<Vec<Hit>, String> {
        let body = json!({ "query": { "multi_match": {
            "query": q, "fields": ["name^2", "attributes.*"], "lenient": true
        } } });
        let (status, answer) = self
            .send(
                reqwest::Method::POST,
                &format!("/{}/_search", self.index),
                Some(body),
            )
            .await?;
        if status != 200 {
            return Err(format!("search: HTTP {status} {answer}"));
        }
        Ok(answer["hits"]["hits"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|h| {
                Some(Hit {
                    score: h["_score"].as_f64().unwrap_or_default(),
                    product: serde_json::from_value(h["_source"].clone()).ok()?,
                })
            })
            .collect())
    }
}

/// A document id in a URL path.
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn on_event(
    State(s): State<Search>,
    Json(event): Json<ProductChanged>,
) -> Result<StatusCode, ApiError> {
    if event.kind != "ProductChanged" {
        return Err(ApiError::bad_request(format!(
            "search does not handle {}",
            event.kind
        )));
    }
    s.apply(&event).await.map_err(ApiError::internal)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn search(State(s): State<Search>, Query(q): Query<SearchQuery>) -> ApiResult<Vec<Hit>> {
    Ok(Json(s.query(&q.q).await.map_err(ApiError::internal)?))
}
