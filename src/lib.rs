//! guest-session-worker: turns guest chat *session requests* queued on RabbitMQ into Genesys Cloud
//! guest sessions, and announces each created session to the CRM-sync exchange.
//!
//! # Layout
//!
//! A request travels through the crate top to bottom:
//!
//! - [`request`]: the wire model of a session request and its validation. [`request::ValidatedRequest`]
//!   can only be produced by [`request::validate`], so everything downstream holds a request that
//!   already obeys every rule of the contract; a failure is a [`request::Rejection`] naming its reason.
//! - [`genesys`]: the Genesys Cloud REST client: region hosts, OAuth client-credentials tokens
//!   ([`genesys::auth`]), the shared rate-limit pacer ([`genesys::pacer`]), retry classification and
//!   backoff ([`genesys::retry`]), and the two session APIs (Open Messaging, Guest Chat).
//! - [`amqp`]: RabbitMQ plumbing: connection with a clear error, topology names and declaration,
//!   and a single-task confirm publisher (see DESIGN §8 for why only one task publishes per channel).
//! - [`pipeline`]: the consumer loop and the per-message pipeline
//!   (decode → validate → create → publish event + audit → ack), each step a typed outcome;
//!   dead letters and the created-session event live here.
//! - [`telemetry`]: logs, OpenTelemetry traces, and W3C trace context carried in AMQP headers.
//! - [`metrics`], [`health`]: Prometheus metrics and the `/healthz`, `/readyz`, `/metrics` endpoint.
//! - [`audit`]: compliance records with a keyed pseudonym of the guest id.
//! - [`sim`]: a Genesys Cloud simulator (a real HTTP server) used by the demo, tests and benchmarks.
//! - [`bench`]: benchmarks with real worker processes against the local broker (`bench`: `perf`, then
//!   `rate-limit`).
//! - [`cli`]: the `guest-session-worker` subcommands (`run`, `demo`, `sim`, `enqueue`, `dead-letters`, `bench`).
//! - [`config`]: settings shared by the subcommands, each read from a flag or its env var.

pub mod amqp;
pub mod audit;
pub mod bench;
pub mod cli;
pub mod config;
pub mod genesys;
pub mod health;
pub mod metrics;
pub mod pipeline;
pub mod request;
pub mod sim;
pub mod telemetry;
