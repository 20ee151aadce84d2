//! Transactional outbox and idempotent inbox on PostgreSQL: an event is
//! written in the same transaction as the change it announces, a relay
//! delivers it over HTTP with retries until the receiver accepts it, and the
//! receiver records every event id it handled so a redelivery changes nothing.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_postgres::Transaction;

use crate::stores::Postgres;

/// An event between services.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Event {
    /// Unique id; the receiver's deduplication key.
    pub id: String,
    /// `OrderPlaced`, `PaymentProcessed`, `PaymentFailed`.
    pub kind: String,
    pub order_id: String,
    #[serde(default)]
    pub payload: serde_json::Value,
}

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS outbox (
    id text PRIMARY KEY,
    destination text NOT NULL,
    body jsonb NOT NULL,
    attempts int NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    delivered_at timestamptz
);
CREATE TABLE IF NOT EXISTS processed_events (
    id text PRIMARY KEY,
    processed_at timestamptz NOT NULL DEFAULT now()
);";

/// Queues `event` for `destination` inside the caller's transaction.
pub async fn enqueue(
    tx: &Transaction<'_>,
    destination: &str,
    event: &Event,
) -> Result<(), tokio_postgres::Error> {
    let body = serde_json::to_value(event).expect("event serializes");
    tx.execute(
        "INSERT INTO outbox (id, destination, body) VALUES ($1, $2, $3)",
        &[&event.id, &destination, &body],
    )
    .await?;
    Ok(())
}

/// Records `event_id` as handled, inside the caller's transaction; false when
/// it was handled before (the caller then changes nothing).
pub async fn first_delivery(
    tx: &Transaction<'_>,
    event_id: &str,
) -> Result<bool, tokio_postgres::Error> {
    let inserted = tx
        .execute(
            "INSERT INTO processed_events (id) VALUES ($1) ON CONFLICT DO NOTHING",
            &[&event_id],
        )
        .await?;
    Ok(inserted == 1)
}

/// Delivers queued events, oldest first, until `stop` completes. A failed
/// delivery is retried on the next round.
pub async fn relay(
    db: Postgres,
    http: reqwest::Client,
    every: Duration,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    loop {
        if let Err(e) = deliver_pending(&db, &http).await {
            tracing::warn!(error = %e, "outbox relay");
        }
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// One round of the relay; returns how many events were delivered.
pub async fn deliver_pending(
    db: &Postgres,
    http: &reqwest::Client,
) -> Result<usize, tokio_postgres::Error> {
    let pending = db
        .lock()
        .await
        .query(
            "SELECT id, destination, body FROM outbox WHERE delivered_at IS NULL ORDER BY created_at LIMIT 50",
            &[],
        )
        .await?;
    let mut delivered = 0;
    for row in pending {
        let (id, destination, body): (String, String, serde_json::Value) =
            (row.get(0), row.get(1), row.get(2));
        let ok = matches!(http.post(&destination).json(&body).send().await, Ok(r) if r.status().is_success());
        let db = db.lock().await;
        if ok {
            db.execute(
                "UPDATE outbox SET delivered_at = now(), attempts = attempts + 1 WHERE id = $1",
                &[&id],
            )
            .await?;
            delivered += 1;
        } else {
            db.execute(
                "UPDATE outbox SET attempts = attempts + 1 WHERE id = $1",
                &[&id],
            )
            .await?;
            tracing::info!(event = %id, %destination, "delivery failed; will retry");
        }
    }
    Ok(delivered)
}
