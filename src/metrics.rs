//! Prometheus metrics (DESIGN §6), rendered in the text exposition format at `/metrics`.

use std::{sync::Arc, time::Duration};

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

struct Inner {
    registry: Registry,
    requests: Family<OutcomeLabels, Counter>,
    creation_seconds: Histogram,
    genesys_responses: Family<StatusLabels, Counter>,
    rate_limited: Counter,
    retries: Counter,
    in_flight: Gauge,
    routing_success_ratio: Gauge<f64, std::sync::atomic::AtomicU64>,
    created: Counter,
    routed_attempts: Counter,
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
        Self(Arc::new(Inner {
            registry,
            requests,
            creation_seconds,
            genesys_responses,
            rate_limited,
            retries,
            in_flight,
            routing_success_ratio,
            created: Counter::default(),
            routed_attempts: Counter::default(),
        }))
    }

    pub fn record_outcome(&self, outcome: &Outcome, _elapsed: Duration) {
        let labels = OutcomeLabels {
            outcome: outcome.label(),
            reason: outcome.reason().unwrap_or(""),
        };
        self.0.requests.get_or_create(&labels).inc();
        if !matches!(outcome, Outcome::Rejected { .. }) {
            let routed = self.0.routed_attempts.inc() + 1;
            let created = if matches!(outcome, Outcome::Created { .. }) {
                self.0.created.inc() + 1
            } else {
                self.0.created.get()
            };
            self.0.routing_success_ratio.set(created as f64 / routed as f64);
        }
    }

    pub fn observe_creation(&self, elapsed: Duration) {
        self.0.creation_seconds.observe(elapsed.as_secs_f64());
    }

    /// One Genesys HTTP attempt finished with `status` (`None`: no response at all).
    pub fn genesys_response(&self, status: Option<u16>, resend_count: u32) {
        let status = status.map_or_else(|| "error".to_string(), |s| s.to_string());
        if status == "429" {
            self.0.rate_limited.inc();
        }
        if resend_count > 0 {
            self.0.retries.inc();
        }
        self.0.genesys_responses.get_or_create(&StatusLabels { status }).inc();
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
