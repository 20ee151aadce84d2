//! devices (PostgreSQL): the registry of IoT devices.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::db_error;
use crate::http::{ApiError, ApiResult};
use crate::stores::Postgres;

#[derive(Clone)]
pub struct Devices {
    pub db: Postgres,
}

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS devices (
    id text PRIMARY KEY,
    name text NOT NULL,
    kind text NOT NULL,
    location text,
    registered_at timestamptz NOT NULL DEFAULT now()
);";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Device {
    pub id: String,
    pub name: String,
    /// thermometer, meter, …
    pub kind: String,
    pub location: Option<String>,
}

impl Devices {
    pub async fn setup(&self) -> Result<(), tokio_postgres::Error> {
        self.db.lock().await.batch_execute(SCHEMA).await
    }

    pub fn routes(self) -> Router {
        Router::new()
            .route("/devices", post(register).get(list))
            .route("/devices/{id}", get(fetch))
            .with_state(self)
    }
}

fn device_from(r: &tokio_postgres::Row) -> Device {
    Device {
        id: r.get("id"),
        name: r.get("name"),
        kind: r.get("kind"),
        location: r.get("location"),
    }
}

async fn register(
    State(s): State<Devices>,
    Json(d): Json<Device>,
) -> Result<(StatusCode, Json<Device>), ApiError> {
    if d.id.is_empty() || d.name.is_empty() || d.kind.is_empty() {
        return Err(ApiError::bad_request(
            "a device needs an id, a name and a kind",
        ));
    }
    let inserted = s
        .db
        .lock()
        .await
        .execute(
            "INSERT INTO devices (id, name, kind, location) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            &[&d.id, &d.name, &d.kind, &d.location],
        )
        .await
        .map_err(db_error)?;
    if inserted == 0 {
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!("device {} exists", d.id),
        ));
    }
    Ok((StatusCode::CREATED, Json(d)))
}

async fn fetch(State(s): State<Devices>, Path(id): Path<String>) -> ApiResult<Device> {
    let row =
        s.db.lock()
            .await
            .query_opt("SELECT * FROM devices WHERE id = $1", &[&id])
            .await
            .map_err(db_error)?;
    row.map(|r| Json(device_from(&r)))
        .ok_or_else(|| ApiError::not_found(format!("device {id}")))
}

async fn list(State(s): State<Devices>) -> ApiResult<Vec<Device>> {
    let rows =
        s.db.lock()
            .await
            .query("SELECT * FROM devices ORDER BY id", &[])
            .await
            .map_err(db_error)?;
    Ok(Json(rows.iter().map(device_from).collect()))
}
