//! Prometheus metrics of the operator.

use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::api::ClaimPhase;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabel {
    pub controller: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub controller: &'static str,
    pub reason: &'static str,
}

/// What waiting claims wait for: a turn at their server, or their
/// Service's ownership table to name their Secrets.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WaitLabel {
    pub on: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum Phase {
    Pending,
    Provisioning,
    Ready,
    Failed,
    Deleting,
}

impl From<ClaimPhase> for Phase {
    fn from(p: ClaimPhase) -> Self {
        match p {
            ClaimPhase::Pending => Phase::Pending,
            ClaimPhase::Provisioning => Phase::Provisioning,
            ClaimPhase::Ready => Phase::Ready,
            ClaimPhase::Failed => Phase::Failed,
            ClaimPhase::Deleting => Phase::Deleting,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabel {
    pub phase: Phase,
}

pub struct Metrics {
    pub registry: Registry,
    reconciles: Family<ControllerLabel, Counter>,
    errors: Family<ErrorLabels, Counter>,
    duration: Family<ControllerLabel, Histogram>,
    ready_after: Histogram,
    claims: Family<PhaseLabel, Gauge>,
    waiting: Family<WaitLabel, Gauge>,
    leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("dbps");
        let reconciles = Family::<ControllerLabel, Counter>::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let duration = Family::<ControllerLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.005, 2.0, 14))
        });
        let ready_after = Histogram::new(exponential_buckets(0.5, 2.0, 14));
        let claims = Family::<PhaseLabel, Gauge>::default();
        let waiting = Family::<WaitLabel, Gauge>::default();
        let leader = Gauge::default();
        registry.register(
            "reconciles",
            "Reconciles, by controller",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Failed reconciles, by controller and reason",
            errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time spent in one reconcile",
            duration.clone(),
        );
        registry.register(
            "claim_ready_seconds",
            "Time from a claim's creation to its first Ready",
            ready_after.clone(),
        );
        registry.register("claims", "Claims by phase", claims.clone());
        registry.register(
            "claims_waiting",
            "Claims waiting, on a turn at their server (server) or for their Service's ownership table to name their Secrets (ownership_table)",
            waiting.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica is the leader (or runs without election)",
            leader.clone(),
        );
        Self {
            registry,
            reconciles,
            errors,
            duration,
            ready_after,
            claims,
            waiting,
            leader,
        }
    }
}

impl Metrics {
    pub fn reconciled(
        &self,
        controller: &'static str,
        took: Duration,
        error: Option<crate::api::Reason>,
    ) {
        let label = ControllerLabel { controller };
        self.reconciles.get_or_create(&label).inc();
        self.duration
            .get_or_create(&label)
            .observe(took.as_secs_f64());
        if let Some(reason) = error.map(crate::api::Reason::as_str) {
            self.errors
                .get_or_create(&ErrorLabels { controller, reason })
                .inc();
        }
    }

    pub fn claim_ready_after(&self, took: Duration) {
        self.ready_after.observe(took.as_secs_f64());
    }

    /// Replaces the claims-by-phase counts.
    pub fn set_claims(&self, counts: impl IntoIterator<Item = (ClaimPhase, i64)>) {
        self.claims.clear();
        for (phase, n) in counts {
            self.claims
                .get_or_create(&PhaseLabel {
                    phase: phase.into(),
                })
                .set(n);
        }
    }

    /// Claims waiting on a turn at their server, and for their Service's
    /// ownership table.
    pub fn set_waiting(&self, on_server: usize, on_table: usize) {
        for (on, n) in [("server", on_server), ("ownership_table", on_table)] {
            self.waiting
                .get_or_create(&WaitLabel { on })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_claims_are_counted_by_what_they_wait_on() {
        let metrics = Metrics::default();
        metrics.set_waiting(3, 2);
        let text = metrics.encode();
        assert!(
            text.contains("dbps_claims_waiting{on=\"server\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("dbps_claims_waiting{on=\"ownership_table\"} 2"),
            "{text}"
        );
        metrics.set_waiting(0, 0);
        assert!(
            metrics
                .encode()
                .contains("dbps_claims_waiting{on=\"ownership_table\"} 0")
        );
    }
}
