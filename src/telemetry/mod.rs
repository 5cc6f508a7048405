//! Logs, traces and their propagation through AMQP headers (DESIGN §6).

pub mod init;
pub mod propagation;

pub use init::{LogFormat, Telemetry, TelemetryError};

/// An integer span attribute. tracing-opentelemetry exports only `i64` fields as OTLP integers:
/// an unsigned one falls back to its Debug text, a string, which a backend cannot compare
/// (`http.response.status_code >= 500`). So ports, statuses and counts go through this.
pub fn int(n: impl TryInto<i64>) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}
