//! alerts (MongoDB): flexible alert rules, evaluated against incoming
//! readings; fired alerts are stored and listed.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use futures::TryStreamExt;
use mongodb::bson::{Document, doc};
use serde::{Deserialize, Serialize};

use super::db_error;
use super::telemetry::Reading;
use crate::http::{ApiError, ApiResult, new_id};

#[derive(Clone)]
pub struct Alerts {
    pub db: crate::stores::Mongo,
}

/// A rule: when `metric` of a device (or of any device) compares to
/// `threshold` by `op`, an alert fires. Extra fields (labels, severity, …)
/// are kept as they are.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Rule {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub device_id: Option<String>,
    pub metric: String,
    /// gt, ge, lt, le
    pub op: String,
    pub threshold: f64,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Rule {
    pub fn matches(&self, r: &Reading) -> bool {
        let device = self.device_id.as_ref().is_none_or(|d| *d == r.device_id);
        let hit = match self.op.as_str() {
            "gt" => r.value > self.threshold,
            "ge" => r.value >= self.threshold,
            "lt" => r.value < self.threshold,
            "le" => r.value <= self.threshold,
            _ => false,
        };
        device && self.metric == r.metric && hit
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Alert {
    pub id: String,
    pub rule_id: String,
    pub reading: Reading,
}

impl Alerts {
    pub fn routes(self) -> Router {
        Router::new()
            .route("/rules", post(add_rule).get(rules))
            .route("/evaluate", post(evaluate))
            .route("/alerts", axum::routing::get(alerts))
            .with_state(self)
    }
}

async fn add_rule(
    State(s): State<Alerts>,
    Json(mut rule): Json<Rule>,
) -> Result<(StatusCode, Json<Rule>), ApiError> {
    if !["gt", "ge", "lt", "le"].contains(&rule.op.as_str()) || rule.metric.is_empty() {
        return Err(ApiError::bad_request(
            "a rule needs a metric and op gt, ge, lt or le",
        ));
    }
    rule.id = new_id();
    s.db.db()
        .await
        .collection::<Rule>("rules")
        .insert_one(&rule)
        .await
        .map_err(db_error)?;
    Ok((StatusCode::CREATED, Json(rule)))
}

async fn rules(State(s): State<Alerts>) -> ApiResult<Vec<Rule>> {
    let found =
        s.db.db()
            .await
            .collection::<Rule>("rules")
            .find(doc! {})
            .await
            .map_err(db_error)?;
    Ok(Json(found.try_collect().await.map_err(db_error)?))
}

/// Evaluates readings against the rules; returns the alerts fired.
async fn evaluate(
    State(s): State<Alerts>,
    Json(readings): Json<Vec<Reading>>,
) -> ApiResult<Vec<Alert>> {
    let rules: Vec<Rule> =
        s.db.db()
            .await
            .collection::<Rule>("rules")
            .find(doc! {})
            .await
            .map_err(db_error)?
            .try_collect()
            .await
            .map_err(db_error)?;
    let fired: Vec<Alert> = readings
        .iter()
        .flat_map(|r| {
            rules
                .iter()
                .filter(|rule| rule.matches(r))
                .map(|rule| Alert {
                    id: new_id(),
                    rule_id: rule.id.clone(),
                    reading: r.clone(),
                })
        })
        .collect();
    if !fired.is_empty() {
        s.db.db()
            .await
            .collection::<Alert>("alerts")
            .insert_many(&fired)
            .await
            .map_err(db_error)?;
    }
    Ok(Json(fired))
}

#[derive(Deserialize)]
struct AlertQuery {
    device_id: Option<String>,
}

async fn alerts(State(s): State<Alerts>, Query(q): Query<AlertQuery>) -> ApiResult<Vec<Alert>> {
    let filter = match q.device_id {
        Some(d) => doc! { "reading.device_id": d },
        None => Document::new(),
    };
    let found =
        s.db.db()
            .await
            .collection::<Alert>("alerts")
            .find(filter)
            .await
            .map_err(db_error)?;
    Ok(Json(found.try_collect().await.map_err(db_error)?))
}
