//! telemetry (InfluxDB 1.x): ingests readings as line protocol and answers
//! queries by device and time range. Each reading is also offered to the
//! alerts service when one is configured.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::http::{ApiError, ApiResult};
use crate::stores::Influx;

#[derive(Clone)]
pub struct Telemetry {
    pub influx: Influx,
    pub http: reqwest::Client,
    /// Base URL of the alerts service, if readings should be evaluated.
    pub alerts_url: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Reading {
    pub device_id: String,
    pub metric: String,
    pub value: f64,
    /// Milliseconds since the epoch; default now.
    #[serde(default)]
    pub timestamp_ms: Option<i64>,
}

/// Line protocol tag value: commas, spaces and equals signs escaped.
pub fn escape_tag(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace(',', "\\,")
        .replace(' ', "\\ ")
        .replace('=', "\\=")
}

/// InfluxQL string literal.
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

impl Telemetry {
    pub fn routes(self) -> Router {
        Router::new()
            .route("/readings", post(ingest).get(query))
            .with_state(self)
    }
}

async fn ingest(
    State(s): State<Telemetry>,
    Json(readings): Json<Vec<Reading>>,
) -> Result<StatusCode, ApiError> {
    if readings
        .iter()
        .any(|r| r.device_id.is_empty() || r.metric.is_empty() || !r.value.is_finite())
    {
        return Err(ApiError::bad_request(
            "readings need a device_id, a metric and a finite value",
        ));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64;
    let mut readings = readings;
    for r in &mut readings {
        r.timestamp_ms.get_or_insert(now);
    }
    let lines: Vec<String> = readings
        .iter()
        .map(|r| {
            format!(
                "readings,device_id={},metric={} value={} {}",
                escape_tag(&r.device_id),
                escape_tag(&r.metric),
                r.value,
                r.timestamp_ms.unwrap_or(now)
            )
        })
        .collect();
    s.influx
        .write(lines.join("\n"))
        .await
        .map_err(ApiError::internal)?;
    if let Some(alerts) = &s.alerts_url {
        // Best effort: telemetry keeps ingesting when alerts is down.
        if let Err(e) = s
            .http
            .post(format!("{alerts}/evaluate"))
            .json(&readings)
            .send()
            .await
        {
            tracing::warn!(error = %e, "alerts unreachable");
        }
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct RangeQuery {
    device_id: String,
    from_ms: Option<i64>,
    to_ms: Option<i64>,
    metric: Option<String>,
}

async fn query(State(s): State<Telemetry>, Query(q): Query<RangeQuery>) -> ApiResult<Vec<Reading>> {
    let mut influxql = format!(
        "SELECT value, metric FROM readings WHERE device_id = {}",
        quote_literal(&q.device_id)
    );
    if let Some(metric) = &q.metric {
        influxql.push_str(&format!(" AND metric = {}", quote_literal(metric)));
    }
    if let Some(from) = q.from_ms {
        influxql.push_str(&format!(" AND time >= {from}ms"));
    }
    if let Some(to) = q.to_ms {
        influxql.push_str(&format!(" AND time <= {to}ms"));
    }
    let body = s
        .influx
        .query(&influxql)
        .await
        .map_err(ApiError::internal)?;
    let rows = body["results"][0]["series"][0]["values"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    Ok(Json(
        rows.iter()
            .map(|r| Reading {
                device_id: q.device_id.clone(),
                timestamp_ms: r[0].as_i64(),
                value: r[1].as_f64().unwrap_or_default(),
                metric: r[2].as_str().unwrap_or_default().to_string(),
            })
            .collect(),
    ))
}
