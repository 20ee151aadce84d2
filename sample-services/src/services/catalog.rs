//! catalog (MongoDB): products with flexible attributes, queried by attribute.
//! It publishes every change of a product to search (the CQRS read view)
//! through an outbox kept in the product's own document: a change and its
//! `pending` flag are one single-document write (atomic without a
//! transaction), and a relay delivers the product's latest state with its
//! version, clearing the flag only if the product did not change meanwhile.

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::TryStreamExt;
use mongodb::bson::{Bson, Document, doc};
use serde::{Deserialize, Serialize};

use super::db_error;
use crate::http::{ApiError, ApiResult};

#[derive(Clone)]
pub struct Catalog {
    pub db: crate::stores::Mongo,
}

/// What catalog tells search: a product's state at `version`. Its `id`
/// (`<sku>@<version>`) is the same on every redelivery.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ProductChanged {
    pub id: String,
    pub kind: String,
    pub version: i64,
    pub product: Product,
}

/// A change of a product's name, price or attributes.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ProductUpdate {
    pub name: Option<String>,
    pub price_cents: Option<i64>,
    pub attributes: Option<BTreeMap<String, serde_json::Value>>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Product {
    pub sku: String,
    pub name: String,
    pub price_cents: i64,
    /// Any attributes: colour, size, material, …
    #[serde(default)]
    pub attributes: BTreeMap<String, serde_json::Value>,
}

impl Catalog {
    async fn products(&self) -> mongodb::Collection<Product> {
        self.db.db().await.collection("products")
    }

    pub async fn setup(&self) -> Result<(), mongodb::error::Error> {
        let index = mongodb::IndexModel::builder()
            .keys(doc! { "sku": 1 })
            .options(
                mongodb::options::IndexOptions::builder()
                    .unique(true)
                    .build(),
            )
            .build();
        self.products().await.create_index(index).await?;
        Ok(())
    }

    async fn documents(&self) -> mongodb::Collection<Document> {
        self.db.db().await.collection("products")
    }

    pub fn routes(self) -> Router {
        Router::new()
            .route("/products", post(add).get(search))
            .route("/products/by-sku/{sku}", get(by_sku).put(update))
            .with_state(self)
    }

    /// Delivers the state of every product changed since its last delivery
    /// to `search_url` (`POST /events`); returns how many went out.
    pub async fn deliver_pending(
        &self,
        http: &reqwest::Client,
        search_url: &str,
    ) -> Result<usize, String> {
        let docs = self.documents().await;
        let pending: Vec<Document> = docs
            .find(doc! { "pending": true })
            .await
            .map_err(|e| e.to_string())?
            .try_collect()
            .await
            .map_err(|e| e.to_string())?;
        let mut delivered = 0;
        for document in pending {
            let version = document.get_i64("version").unwrap_or_default();
            let product: Product =
                mongodb::bson::from_document(document).map_err(|e| e.to_string())?;
            let event = ProductChanged {
                id: format!("{}@{version}", product.sku),
                kind: "ProductChanged".into(),
                version,
                product: product.clone(),
            };
            let sent = http
                .post(format!("{search_url}/events"))
                .json(&event)
                .send()
                .await;
            if !matches!(sent, Ok(ref r) if r.status().is_success()) {
                tracing::info!(event = %event.id, "delivery to search failed; will retry");
                continue;
            }
            // Cleared only at the version delivered: a change made meanwhile
            // keeps the flag and goes out next round.
            docs.update_one(
                doc! { "sku": &product.sku, "version": version },
                doc! { "$set": { "pending": false } },
            )
            .await
            .map_err(|e| e.to_string())?;
            delivered += 1;
        }
        Ok(delivered)
    }
}

/// Delivers catalog's changes to search every `every` until `stop`.
pub async fn relay(
    catalog: Catalog,
    http: reqwest::Client,
    search_url: String,
    every: std::time::Duration,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    loop {
        if let Err(e) = catalog.deliver_pending(&http, &search_url).await {
            tracing::warn!(error = %e, "catalog relay");
        }
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// The product as stored: its fields, its version and the outbox flag.
fn stored(p: &Product, version: i64) -> Result<Document, ApiError> {
    let mut document = mongodb::bson::to_document(p).map_err(db_error)?;
    document.insert("version", version);
    document.insert("pending", true);
    Ok(document)
}

async fn add(
    State(s): State<Catalog>,
    Json(p): Json<Product>,
) -> Result<(StatusCode, Json<Product>), ApiError> {
    if p.sku.is_empty() || p.name.is_empty() || p.price_cents < 0 {
        return Err(ApiError::bad_request(
            "a product needs a sku, a name and a price",
        ));
    }
    match s.documents().await.insert_one(stored(&p, 1)?).await {
        Ok(_) => Ok((StatusCode::CREATED, Json(p))),
        Err(e) if e.to_string().contains("E11000") || e.to_string().contains("duplicate") => Err(
            ApiError(StatusCode::CONFLICT, format!("sku {} exists", p.sku)),
        ),
        Err(e) => Err(db_error(e)),
    }
}

async fn by_sku(State(s): State<Catalog>, Path(sku): Path<String>) -> ApiResult<Product> {
    let found = s
        .products()
        .await
        .find_one(doc! { "sku": &sku })
        .await
        .map_err(db_error)?;
    found
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("product {sku}")))
}

/// `PUT /products/by-sku/{sku}`: changes its name, price or attributes;
/// the change and its announcement to search are one write.
async fn update(
    State(s): State<Catalog>,
    Path(sku): Path<String>,
    Json(change): Json<ProductUpdate>,
) -> ApiResult<Product> {
    let docs = s.documents().await;
    for _ in 0..5 {
        let Some(current) = docs
            .find_one(doc! { "sku": &sku })
            .await
            .map_err(db_error)?
        else {
            return Err(ApiError::not_found(format!("product {sku}")));
        };
        let version = current.get_i64("version").unwrap_or(1);
        let mut product: Product = mongodb::bson::from_document(current).map_err(db_error)?;
        if let Some(name) = &change.name {
            product.name = name.clone();
        }
        if let Some(price) = change.price_cents {
            product.price_cents = price;
        }
        if let Some(attributes) = &change.attributes {
            product.attributes = attributes.clone();
        }
        if product.name.is_empty() || product.price_cents < 0 {
            return Err(ApiError::bad_request("a product needs a name and a price"));
        }
        // Written only over the version read: a concurrent change wins and
        // this one is made again on top of it.
        let updated = docs
            .replace_one(
                doc! { "sku": &sku, "version": version },
                stored(&product, version + 1)?,
            )
            .await
            .map_err(db_error)?;
        if updated.matched_count == 1 {
            return Ok(Json(product));
        }
    }
    Err(ApiError(
        StatusCode::CONFLICT,
        format!("product {sku} kept changing; try again"),
    ))
}

/// `GET /products?color=red&size=M`: products whose attributes have every
/// given value (numbers and booleans match as such).
async fn search(
    State(s): State<Catalog>,
    Query(q): Query<BTreeMap<String, String>>,
) -> ApiResult<Vec<Product>> {
    let mut filter = Document::new();
    for (key, value) in q {
        if key.contains('$') || key.contains('.') {
            return Err(ApiError::bad_request(format!("attribute name {key:?}")));
        }
        let typed = match serde_json::from_str::<serde_json::Value>(&value) {
            Ok(serde_json::Value::Number(n)) => n
                .as_i64()
                .map(Bson::Int64)
                .unwrap_or(Bson::Double(n.as_f64().unwrap_or_default())),
            Ok(serde_json::Value::Bool(b)) => Bson::Boolean(b),
            _ => Bson::String(value),
        };
        filter.insert(format!("attributes.{key}"), typed);
    }
    let found: Vec<Product> = s
        .products()
        .await
        .find(filter)
        .await
        .map_err(db_error)?
        .try_collect()
        .await
        .map_err(db_error)?;
    Ok(Json(found))
}
