//! orders (PostgreSQL): place, get and list orders. Placing an order writes
//! `OrderPlaced` to the outbox in the same transaction; payments answers with
//! `PaymentProcessed` (the order is PAID) or `PaymentFailed` (the order is
//! CANCELLED — the saga's compensation). `/orders/{id}/details` composes the
//! order with the catalog's product details over the catalog's API.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::db_error;
use crate::http::{ApiError, ApiResult, new_id};
use crate::outbox::{self, Event};
use crate::stores::Postgres;

#[derive(Clone)]
pub struct Orders {
    pub db: Postgres,
    pub http: reqwest::Client,
    /// Base URL of the payments service.
    pub payments_url: String,
    /// Base URL of the catalog service.
    pub catalog_url: String,
}

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS orders (
    id text PRIMARY KEY,
    customer text NOT NULL,
    items jsonb NOT NULL,
    total_cents bigint NOT NULL,
    status text NOT NULL,
    reason text,
    created_at timestamptz NOT NULL DEFAULT now()
);";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Item {
    pub sku: String,
    pub quantity: i64,
    pub unit_price_cents: i64,
}

#[derive(Debug, Deserialize)]
pub struct NewOrder {
    pub customer: String,
    pub items: Vec<Item>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Order {
    pub id: String,
    pub customer: String,
    pub items: Vec<Item>,
    pub total_cents: i64,
    /// PENDING, PAID or CANCELLED.
    pub status: String,
    pub reason: Option<String>,
}

impl Orders {
    pub async fn setup(&self) -> Result<(), tokio_postgres::Error> {
        self.db
            .lock()
            .await
            .batch_execute(&format!("{SCHEMA}{}", outbox::SCHEMA))
            .await
    }

    pub fn routes(self) -> Router {
        Router::new()
            .route("/orders", post(place).get(list))
            .route("/orders/{id}", get(fetch))
            .route("/orders/{id}/details", get(details))
            .route("/events", post(on_event))
            .with_state(self)
    }
}

fn order_from(row: &tokio_postgres::Row) -> Order {
    Order {
        id: row.get("id"),
        customer: row.get("customer"),
        items: serde_json::from_value(row.get("items")).unwrap_or_default(),
        total_cents: row.get("total_cents"),
        status: row.get("status"),
        reason: row.get("reason"),
    }
}

async fn place(
    State(s): State<Orders>,
    Json(new): Json<NewOrder>,
) -> Result<(StatusCode, Json<Order>), ApiError> {
    if new.customer.trim().is_empty() || new.items.is_empty() {
        return Err(ApiError::bad_request(
            "an order needs a customer and at least one item",
        ));
    }
    if new
        .items
        .iter()
        .any(|i| i.quantity <= 0 || i.unit_price_cents < 0 || i.sku.is_empty())
    {
        return Err(ApiError::bad_request(
            "items need a sku, a positive quantity and a price",
        ));
    }
    let total: i64 = new
        .items
        .iter()
        .map(|i| i.quantity * i.unit_price_cents)
        .sum();
    let order = Order {
        id: new_id(),
        customer: new.customer,
        items: new.items,
        total_cents: total,
        status: "PENDING".into(),
        reason: None,
    };
    let event = Event {
        id: new_id(),
        kind: "OrderPlaced".into(),
        order_id: order.id.clone(),
        payload: serde_json::json!({ "total_cents": total, "customer": order.customer }),
    };
    let mut db = s.db.lock().await;
    let tx = db.transaction().await.map_err(db_error)?;
    let items = serde_json::to_value(&order.items).expect("items serialize");
    tx.execute(
        "INSERT INTO orders (id, customer, items, total_cents, status) VALUES ($1, $2, $3, $4, $5)",
        &[
            &order.id,
            &order.customer,
            &items,
            &order.total_cents,
            &order.status,
        ],
    )
    .await
    .map_err(db_error)?;
    outbox::enqueue(&tx, &format!("{}/events", s.payments_url), &event)
        .await
        .map_err(db_error)?;
    tx.commit().await.map_err(db_error)?;
    tracing::info!(order = %order.id, total_cents = total, "order placed");
    Ok((StatusCode::CREATED, Json(order)))
}

async fn fetch(State(s): State<Orders>, Path(id): Path<String>) -> ApiResult<Order> {
    let row =
        s.db.lock()
            .await
            .query_opt("SELECT * FROM orders WHERE id = $1", &[&id])
            .await
            .map_err(db_error)?;
    row.map(|r| Json(order_from(&r)))
        .ok_or_else(|| ApiError::not_found(format!("order {id}")))
}

#[derive(Deserialize)]
struct ListQuery {
    status: Option<String>,
}

async fn list(State(s): State<Orders>, Query(q): Query<ListQuery>) -> ApiResult<Vec<Order>> {
    let db = s.db.lock().await;
    let rows = match q.status {
        Some(status) => {
            db.query(
                "SELECT * FROM orders WHERE status = $1 ORDER BY created_at DESC",
                &[&status],
            )
            .await
        }
        None => {
            db.query("SELECT * FROM orders ORDER BY created_at DESC", &[])
                .await
        }
    }
    .map_err(db_error)?;
    Ok(Json(rows.iter().map(order_from).collect()))
}

/// Payment outcomes move the order on; a redelivered event changes nothing.
async fn on_event(
    State(s): State<Orders>,
    Json(event): Json<Event>,
) -> Result<StatusCode, ApiError> {
    let (status, reason) = match event.kind.as_str() {
        "PaymentProcessed" => ("PAID", None),
        "PaymentFailed" => (
            "CANCELLED",
            event.payload["reason"].as_str().map(String::from),
        ),
        other => {
            return Err(ApiError::bad_request(format!(
                "orders does not handle {other}"
            )));
        }
    };
    let mut db = s.db.lock().await;
    let tx = db.transaction().await.map_err(db_error)?;
    if outbox::first_delivery(&tx, &event.id)
        .await
        .map_err(db_error)?
    {
        tx.execute(
            "UPDATE orders SET status = $2, reason = $3 WHERE id = $1 AND status = 'PENDING'",
            &[&event.order_id, &status, &reason],
        )
        .await
        .map_err(db_error)?;
        tracing::info!(order = %event.order_id, status, "payment outcome applied");
    }
    tx.commit().await.map_err(db_error)?;
    Ok(StatusCode::NO_CONTENT)
}

/// API composition: the order, each item with the catalog's product.
#[derive(Serialize, Deserialize, Debug)]
pub struct OrderDetails {
    pub order: Order,
    pub products: Vec<serde_json::Value>,
}

async fn details(State(s): State<Orders>, Path(id): Path<String>) -> ApiResult<OrderDetails> {
    let Json(order) = fetch(State(s.clone()), Path(id)).await?;
    let mut products = Vec::new();
    for item in &order.items {
        let url = format!("{}/products/by-sku/{}", s.catalog_url, item.sku);
        let product = match s.http.get(&url).send().await {
            Ok(r) if r.status().is_success() => r.json().await.unwrap_or(serde_json::Value::Null),
            // The order stays readable when the catalog is not.
            _ => serde_json::json!({ "sku": item.sku, "unavailable": true }),
        };
        products.push(product);
    }
    Ok(Json(OrderDetails { order, products }))
}
