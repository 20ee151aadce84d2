//! dbps operator: the database-per-service pattern on Kubernetes.
//!
//! The reconcile of a claim is a pipeline: dereference (read its Service) →
//! build (pure functions in [`children`] and [`engines`]) → apply (server-side
//! apply, skipped when nothing differs) → status.

pub mod api;
pub mod children;
pub mod controller;
pub mod endpoints;
pub mod engines;
pub mod leader;
pub mod locks;
pub mod metrics;
pub mod password;
pub mod servers;
