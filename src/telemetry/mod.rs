//! Logs, traces and their propagation through AMQP headers (DESIGN §6).

pub mod init;
pub mod propagation;

pub use init::{LogFormat, Telemetry, TelemetryError};
