//! catalog (MongoDB): products with flexible attributes, queried by attribute.

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

    pub fn routes(self) -> Router {
        Router::new()
            .route("/products", post(add).get(search))
            .route("/products/by-sku/{sku}", get(by_sku))
            .with_state(self)
    }
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
    match s.products().await.insert_one(&p).await {
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
