//! The sample services. Each owns one database, reached through its
//! binding, and exposes an HTTP API; reporting also reads others' databases
//! through the read-only grants their owners gave it.

pub mod alerts;
pub mod catalog;
pub mod devices;
pub mod orders;
pub mod payments;
pub mod reporting;
pub mod search;
pub mod telemetry;

/// Maps a database error to an API error, logging it.
pub(crate) fn db_error(e: impl std::fmt::Display) -> crate::http::ApiError {
    crate::http::ApiError::internal(e)
}
