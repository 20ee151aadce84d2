//! payments (PostgreSQL, the sensitive database): consumes `OrderPlaced`,
//! records a payment, and answers `PaymentProcessed` or `PaymentFailed`
//! through its own outbox. A redelivered `OrderPlaced` is ignored.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::db_error;
use crate::http::{ApiError, ApiResult, new_id};
use crate::outbox::{self, Event};
use crate::stores::Postgres;

#[derive(Clone)]
pub struct Payments {
    pub db: Postgres,
    /// Base URL of the orders service.
    pub orders_url: String,
    /// Largest amount accepted, in cents; larger payments fail.
    pub limit_cents: i64,
}

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS payments (
    id text PRIMARY KEY,
    order_id text NOT NULL UNIQUE,
    amount_cents bigint NOT NULL,
    status text NOT NULL,
    reason text,
    created_at timestamptz NOT NULL DEFAULT now()
);";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Payment {
    pub id: String,
    pub order_id: String,
    pub amount_cents: i64,
    /// PROCESSED or FAILED.
    pub status: String,
    pub reason: Option<String>,
}

impl Payments {
    pub async fn setup(&self) -> Result<(), tokio_postgres::Error> {
        self.db
            .lock()
            .await
            .batch_execute(&format!("{SCHEMA}{}", outbox::SCHEMA))
            .await
    }

    pub fn routes(self) -> Router {
        Router::new()
            .route("/events", post(on_event))
            .route("/payments", get(list))
            .with_state(self)
    }
}

async fn on_event(
    State(s): State<Payments>,
    Json(event): Json<Event>,
) -> Result<StatusCode, ApiError> {
    if event.kind != "OrderPlaced" {
        return Err(ApiError::bad_request(format!(
            "payments does not handle {}",
            event.kind
        )));
    }
    let amount = event.payload["total_cents"]
        .as_i64()
        .ok_or_else(|| ApiError::bad_request("OrderPlaced without total_cents"))?;
    let (status, kind, reason) = if amount <= s.limit_cents {
        ("PROCESSED", "PaymentProcessed", None)
    } else {
        (
            "FAILED",
            "PaymentFailed",
            Some(format!(
                "amount {amount} exceeds the limit {}",
                s.limit_cents
            )),
        )
    };
    let mut db = s.db.lock().await;
    let tx = db.transaction().await.map_err(db_error)?;
    if outbox::first_delivery(&tx, &event.id)
        .await
        .map_err(db_error)?
    {
        let inserted = tx
            .execute(
                "INSERT INTO payments (id, order_id, amount_cents, status, reason) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (order_id) DO NOTHING",
                &[&new_id(), &event.order_id, &amount, &status, &reason],
            )
            .await
            .map_err(db_error)?;
        if inserted == 1 {
            let answer = Event {
                id: new_id(),
                kind: kind.into(),
                order_id: event.order_id.clone(),
                payload: serde_json::json!({ "reason": reason }),
            };
            outbox::enqueue(&tx, &format!("{}/events", s.orders_url), &answer)
                .await
                .map_err(db_error)?;
            tracing::info!(order = %event.order_id, status, "payment recorded");
        }
    }
    tx.commit().await.map_err(db_error)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct ListQuery {
    order_id: Option<String>,
}

async fn list(State(s): State<Payments>, Query(q): Query<ListQuery>) -> ApiResult<Vec<Payment>> {
    let db = s.db.lock().await;
    let rows = match q.order_id {
        Some(id) => {
            db.query("SELECT * FROM payments WHERE order_id = $1", &[&id])
                .await
        }
        None => {
            db.query("SELECT * FROM payments ORDER BY created_at DESC", &[])
                .await
        }
    }
    .map_err(db_error)?;
    Ok(Json(
        rows.iter()
            .map(|r| Payment {
                id: r.get("id"),
                order_id: r.get("order_id"),
                amount_cents: r.get("amount_cents"),
                status: r.get("status"),
                reason: r.get("reason"),
            })
            .collect(),
    ))
}
