//! Observability as an SRE meets it (DESIGN §5, §6): spans exported over OTLP by the real `run`
//! binary, Prometheus text and readiness from the real health server, audit records on the audit
//! queue.
//!
//! The trace test runs the worker as a child process configured only by the standard OTEL_*
//! variables: the global tracing subscriber is process-wide, and this test binary runs many
//! tests at once, so an in-process exporter would collect everyone's spans.

mod audit;
mod health;
mod otlp_receiver;
pub mod tcp_proxy;
mod traces;

use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

/// Unique strings that must never leave the worker except in the CRM event and to Genesys.
struct Secrets {
    guest_id: String,
    display_name: String,
    attribute_value: String,
    initial_message: String,
    email: String,
}

impl Secrets {
    fn new() -> Self {
        let tag = &uuid::Uuid::new_v4().simple().to_string()[..10];
        Self {
            guest_id: format!("guest_{tag}"),
            display_name: format!("Zelda{tag}"),
            attribute_value: format!("portal{tag}"),
            initial_message: format!("my order {tag} is late"),
            email: format!("ada.{tag}@example.com"),
        }
    }

    fn all(&self) -> [&str; 5] {
        [
            &self.guest_id,
            &self.display_name,
            &self.attribute_value,
            &self.initial_message,
            &self.email,
        ]
    }

    fn assert_absent(&self, text: &str, what: &str) {
        for secret in self.all() {
            assert!(!text.contains(secret), "{what} contains {secret:?}:\n{text}");
        }
    }

    fn valid(&self, request_id: &str) -> serde_json::Value {
        self.request(request_id, &self.guest_id)
    }

    fn request(&self, request_id: &str, guest_id: &str) -> serde_json::Value {
        serde_json::json!({
            "request_id": request_id,
            "guest_id": guest_id,
            "display_name": self.display_name,
            "attributes": { "source": self.attribute_value, "device_type": "desktop" },
            "consent": { "data_processing": true, "marketing": false },
            "routing": { "queue": "Web Support", "skills": ["web_support"], "language": "en", "priority": 1 },
            "initial_message": self.initial_message,
        })
    }

    /// Blocked for its `email` attribute key; the value is the PII that must not leak.
    fn pii_blocked(&self, request_id: &str) -> serde_json::Value {
        let mut request = self.valid(request_id);
        request["attributes"]["email"] = serde_json::json!(self.email);
        request
    }
}
