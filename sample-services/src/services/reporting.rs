//! reporting (PostgreSQL warehouse of its own): aggregates orders, payments
//! and telemetry into its own database without sharing theirs. It reads them
//! through the read-only grants their owners gave it (`spec.readers` of
//! their claims: `SELECT` on the `orders` and `payments` tables, `READ` on
//! the telemetry database), and writes only its warehouse. Each refresh
//! replaces the snapshot in one transaction, so a report is never half old,
//! half new; it runs every `--refresh-seconds` and on `POST /refresh`.

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::db_error;
use crate::http::ApiResult;
use crate::stores::{Influx, Postgres};

#[derive(Clone)]
pub struct Reporting {
    /// Its own database.
    pub warehouse: Postgres,
    /// orders' database, read only (the `orders` table).
    pub orders: Postgres,
    /// payments' database, read only (the `payments` table).
    pub payments: Postgres,
    /// telemetry's database, read only.
    pub telemetry: Influx,
}

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS order_summary (
    status text PRIMARY KEY,
    orders bigint NOT NULL,
    total_cents bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS payment_summary (
    status text PRIMARY KEY,
    payments bigint NOT NULL,
    amount_cents bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS telemetry_summary (
    device_id text NOT NULL,
    metric text NOT NULL,
    readings bigint NOT NULL,
    mean double precision NOT NULL,
    PRIMARY KEY (device_id, metric)
);
CREATE TABLE IF NOT EXISTS refreshes (
    at timestamptz PRIMARY KEY DEFAULT now()
);";

/// Orders or payments of one status.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StatusTotal {
    pub status: String,
    pub count: i64,
    pub cents: i64,
}

/// Readings of one metric of one device.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MetricSummary {
    pub device_id: String,
    pub metric: String,
    pub readings: i64,
    pub mean: f64,
}

/// What the warehouse holds.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub orders: Vec<StatusTotal>,
    pub payments: Vec<StatusTotal>,
    pub telemetry: Vec<MetricSummary>,
    /// When the snapshot was taken (RFC 3339), if ever.
    pub refreshed_at: Option<String>,
}

impl Reporting {
    pub async fn setup(&self) -> Result<(), tokio_postgres::Error> {
        self.warehouse.lock().await.batch_execute(SCHEMA).await
    }

    pub fn routes(self) -> Router {
        Router::new()
            .route("/report", get(report))
            .route("/refresh", post(refresh_now))
            .with_state(self)
    }

    /// Reads the sources and replaces the warehouse's snapshot.
    pub async fn refresh(&self) -> Result<Report, String> {
        let orders = totals(
            &self.orders,
            "SELECT status, count(*), coalesce(sum(total_cents), 0)::bigint FROM orders GROUP BY status ORDER BY status",
        )
        .await?;
        let payments = totals(
            &self.payments,
            "SELECT status, count(*), coalesce(sum(amount_cents), 0)::bigint FROM payments GROUP BY status ORDER BY status",
        )
        .await?;
        let answer = self
            .telemetry
            .query("SELECT count(value), mean(value) FROM readings GROUP BY device_id, metric")
            .await?;
        let mut telemetry = Vec::new();
        for series in answer["results"][0]["series"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let row = &series["values"][0];
            telemetry.push(MetricSummary {
                device_id: series["tags"]["device_id"]
                    .as_str()
                    .unwrap_or_default()
                    .into(),
                metric: series["tags"]["metric"].as_str().unwrap_or_default().into(),
                readings: row[1].as_i64().unwrap_or_default(),
                mean: row[2].as_f64().unwrap_or_default(),
            });
        }
        let mut warehouse = self.warehouse.lock().await;
        let tx = warehouse.transaction().await.map_err(|e| e.to_string())?;
        tx.batch_execute(
            "DELETE FROM order_summary; DELETE FROM payment_summary; DELETE FROM telemetry_summary",
        )
        .await
        .map_err(|e| e.to_string())?;
        for (table, rows) in [("order_summary", &orders), ("payment_summary", &payments)] {
            let column = if table == "order_summary" {
                "orders, total_cents"
            } else {
                "payments, amount_cents"
            };
            for r in rows {
                tx.execute(
                    &format!("INSERT INTO {table} (status, {column}) VALUES ($1, $2, $3)"),
                    &[&r.status, &r.count, &r.cents],
                )
                .await
                .map_err(|e| e.to_string())?;
            }
        }
        for m in &telemetry {
            tx.execute(
                "INSERT INTO telemetry_summary VALUES ($1, $2, $3, $4)",
                &[&m.device_id, &m.metric, &m.readings, &m.mean],
            )
            .await
            .map_err(|e| e.to_string())?;
        }
        tx.execute("INSERT INTO refreshes DEFAULT VALUES", &[])
            .await
            .map_err(|e| e.to_string())?;
        tx.commit().await.map_err(|e| e.to_string())?;
        drop(warehouse);
        self.report().await.map_err(|e| e.to_string())
    }

    /// The snapshot the warehouse holds.
    pub async fn report(&self) -> Result<Report, tokio_postgres::Error> {
        let db = self.warehouse.lock().await;
        let totals_of = |rows: Vec<tokio_postgres::Row>| {
            rows.iter()
                .map(|r| StatusTotal {
                    status: r.get(0),
                    count: r.get(1),
                    cents: r.get(2),
                })
                .collect()
        };
        let orders = totals_of(
            db.query(
                "SELECT status, orders, total_cents FROM order_summary ORDER BY status",
                &[],
            )
            .await?,
        );
        let payments = totals_of(
            db.query(
                "SELECT status, payments, amount_cents FROM payment_summary ORDER BY status",
                &[],
            )
            .await?,
        );
        let telemetry = db
            .query(
                "SELECT device_id, metric, readings, mean FROM telemetry_summary ORDER BY device_id, metric",
                &[],
            )
            .await?
            .iter()
            .map(|r| MetricSummary {
                device_id: r.get(0),
                metric: r.get(1),
                readings: r.get(2),
                mean: r.get(3),
            })
            .collect();
        let refreshed_at = db
            .query_one(
                "SELECT to_char(max(at) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') FROM refreshes",
                &[],
            )
            .await?
            .get(0);
        Ok(Report {
            orders,
            payments,
            telemetry,
            refreshed_at,
        })
    }
}

async fn totals(db: &Postgres, sql: &str) -> Result<Vec<StatusTotal>, String> {
    Ok(db
        .lock()
        .await
        .query(sql, &[])
        .await
        .map_err(|e| e.to_string())?
        .iter()
        .map(|r| StatusTotal {
            status: r.get(0),
            count: r.get(1),
            cents: r.get(2),
        })
        .collect())
}

async fn report(State(s): State<Reporting>) -> ApiResult<Report> {
    Ok(Json(s.report().await.map_err(db_error)?))
}

async fn refresh_now(State(s): State<Reporting>) -> ApiResult<Report> {
    Ok(Json(s.refresh().await.map_err(db_error)?))
}

/// Refreshes every `every` until `stop` completes; a failed refresh (a
/// source not granted yet, a server down) keeps the last snapshot.
pub async fn refresh_loop(
    reporting: Reporting,
    every: std::time::Duration,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    loop {
        if let Err(e) = reporting.refresh().await {
            tracing::warn!(error = %e, "refresh failed; the last snapshot stays");
        }
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}
