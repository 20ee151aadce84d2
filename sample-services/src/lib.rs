//! Sample services of two systems — e-commerce (orders, catalog, payments)
//! and IoT (devices, telemetry, alerts) — each owning its database through a
//! dbps binding and talking to the others only over HTTP.

pub mod binding;
pub mod http;
pub mod outbox;
pub mod services;
pub mod stores;
