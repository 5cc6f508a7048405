//! Prometheus metrics (DESIGN §6), rendered in the OpenMetrics text format at `/metrics`.
//!
//! | metric | type | labels | meaning |
//! | --- | --- | --- | --- |
//! | `guest_session_worker_requests_total` | counter | `outcome` (`created`, `rejected`, `failed`), `reason` | requests by final outcome |
//! | `guest_session_worker_session_creation_seconds` | histogram | | delivery → session created in Genesys |
//! | `guest_session_worker_genesys_responses_total` | counter | `status` (`202`, `503`, …, `error`) | every Genesys HTTP attempt |
//! | `guest_session_worker_genesys_token_responses_total` | counter | `status` (`200`, `401`, …, `error`) | every OAuth token request to the login host |
//! | `guest_session_worker_genesys_rate_limited_total` | counter | | Genesys 429s |
//! | `guest_session_worker_genesys_retries_total` | counter | | attempts that were retries |
//! | `guest_session_worker_in_flight` | gauge | | requests being processed now |
//! | `guest_session_worker_routing_success_ratio` | gauge | | created / valid requests that reached a final outcome |
//! | `guest_session_worker_requeued_total` | counter | | requests returned to the queue because a publish was not confirmed |
//!
//! Labels hold only bounded vocabularies (outcomes, reasons, HTTP statuses): never an id.

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use crate::pipeline::Outcome;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: String,
}

/// The HTTP status as a label, `error` when no response came.
fn status_labels(status: Option<u16>) -> StatusLabels {
    StatusLabels {
        status: status.map_or_else(|| "error".to_string(), |s| s.to_string()),
    }
}

struct Inner {
    registry: Registry,
    requests: Family<OutcomeLabels, Counter>,
    creation_seconds: Histogram,
    genesys_responses: Family<StatusLabels, Counter>,
    token_responses: Family<StatusLabels, Counter>,
    rate_limited: Counter,
    retries: Counter,
    in_flight: Gauge,
    routing_success_ratio: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// (created, valid requests with a final outcome): updated together so the ratio is never
    /// computed from a half-updated pair.
    routing: Mutex<(u64, u64)>,
    requeued: Counter,
}

/// Cheap to clone; all clones feed one registry.
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("guest_session_worker");
        let requests = Family::<OutcomeLabels, Counter>::default();
        registry.register("requests", "Requests by final outcome and reason", requests.clone());
        let creation_seconds = Histogram::new([
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
        ]);
        registry.register(
            "session_creation_seconds",
            "Time from delivery to session created in Genesys",
            creation_seconds.clone(),
        );
        let genesys_responses = Family::<StatusLabels, Counter>::default();
        registry.register(
            "genesys_responses",
            "Genesys HTTP responses by status ('error' for no response)",
            genesys_responses.clone(),
        );
        let token_responses = Family::<StatusLabels, Counter>::default();
        registry.register(
            "genesys_token_responses",
            "Genesys OAuth token endpoint responses by status ('error' for no response)",
            token_responses.clone(),
        );
        let rate_limited = Counter::default();
        registry.register("genesys_rate_limited", "Genesys 429 responses", rate_limited.clone());
        let retries = Counter::default();
        registry.register("genesys_retries", "Genesys attempts that were retries", retries.clone());
        let in_flight = Gauge::default();
        registry.register("in_flight", "Requests being processed now", in_flight.clone());
        let routing_success_ratio = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "routing_success_ratio",
            "Created sessions over valid requests that reached a final outcome",
            routing_success_ratio.clone(),
        );
        let requeued = Counter::default();
        registry.register(
            "requeued",
            "Requests returned to the queue because a publish was not confirmed",
            requeued.clone(),
        );
        Self(Arc::new(Inner {
            registry,
            requests,
            creation_seconds,
            genesys_responses,
            token_responses,
            rate_limited,
            retries,
            in_flight,
            routing_success_ratio,
            routing: Mutex::new((0, 0)),
            requeued,
        }))
    }

    pub fn record_outcome(&self, outcome: &Outcome) {
        let labels = OutcomeLabels {
            outcome: outcome.label(),
            reason: outcome.reason().unwrap_or(""),
        };
        self.0.requests.get_or_create(&labels).inc();
        if !matches!(outcome, Outcome::Rejected { .. }) {
            let mut routing = self.0.routing.lock().unwrap_or_else(PoisonError::into_inner);
            routing.1 += 1;
            if matches!(outcome, Outcome::Created { .. }) {
                routing.0 += 1;
            }
            self.0.routing_success_ratio.set(routing.0 as f64 / routing.1 as f64);
        }
    }

    /// A request went back to the queue (its publishes were not confirmed).
    pub fn record_requeue(&self) {
        self.0.requeued.inc();
    }

    pub fn observe_creation(&self, elapsed: Duration) {
        self.0.creation_seconds.observe(elapsed.as_secs_f64());
    }

    /// One answer (or none: `None`) to a session-creation attempt.
    pub fn genesys_response(&self, status: Option<u16>) {
        if status == Some(429) {
            self.0.rate_limited.inc();
        }
        self.0.genesys_responses.get_or_create(&status_labels(status)).inc();
    }

    /// One answer (or none) from the OAuth token endpoint. Counted apart from the API's: a 401
    /// there is a wrong client secret, not an expired token.
    pub fn genesys_token_response(&self, status: Option<u16>) {
        self.0.token_responses.get_or_create(&status_labels(status)).inc();
    }

    /// An attempt that is a retry, whether or not it got as far as an HTTP request (it may fail
    /// on the token first).
    pub fn genesys_retry(&self) {
        self.0.retries.inc();
    }

    /// Counts one request in flight until the guard drops (also when its task is aborted).
    pub fn track_in_flight(&self) -> InFlight {
        self.0.in_flight.inc();
        InFlight(self.0.in_flight.clone())
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buffer = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut buffer, &self.0.registry);
        buffer
    }
}

/// Decrements the in-flight gauge on drop.
pub struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::RejectReason;

    #[test]
    fn renders_conventional_names_and_counts() {
        let metrics = Metrics::new();
        metrics.record_outcome(&Outcome::Created { attempts: 1 });
        metrics.record_outcome(&Outcome::Rejected {
            reason: RejectReason::PiiBlocked,
        });
        metrics.record_outcome(&Outcome::Failed {
            reason: "genesys_rejected",
            attempts: 1,
        });
        metrics.observe_creation(Duration::from_millis(120));
        metrics.genesys_response(Some(429));
        metrics.genesys_retry();
        metrics.genesys_response(Some(202));
        metrics.genesys_retry();
        metrics.genesys_response(None);
        metrics.genesys_token_response(Some(401));
        let guard = metrics.track_in_flight();
        let text = metrics.render();
        for line in [
            "guest_session_worker_requests_total{outcome=\"created\",reason=\"\"} 1",
            "guest_session_worker_requests_total{outcome=\"rejected\",reason=\"pii_blocked\"} 1",
            "guest_session_worker_requests_total{outcome=\"failed\",reason=\"genesys_rejected\"} 1",
            "guest_session_worker_session_creation_seconds_count 1",
            "guest_session_worker_genesys_responses_total{status=\"429\"} 1",
            "guest_session_worker_genesys_responses_total{status=\"202\"} 1",
            "guest_session_worker_genesys_responses_total{status=\"error\"} 1",
            "guest_session_worker_genesys_token_responses_total{status=\"401\"} 1",
            "guest_session_worker_genesys_rate_limited_total 1",
            "guest_session_worker_genesys_retries_total 2",
            "guest_session_worker_in_flight 1",
            "guest_session_worker_routing_success_ratio 0.5",
            "guest_session_worker_requeued_total 0",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        drop(guard);
        assert!(
            metrics
                .render()
                .lines()
                .any(|l| l == "guest_session_worker_in_flight 0")
        );
    }
}
