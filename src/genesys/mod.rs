//! Genesys Cloud client (DESIGN §3): creates a guest session through Open Messaging (default) or
//! Guest Chat, with OAuth client-credentials tokens, one shared rate-limit pacer, and retries
//! bounded by a budget.
//!
//! # Layout
//!
//! - [`region`]: region name → `https://api.<domain>` / `https://login.<domain>`; explicit URLs win.
//! - [`config`]: [`GenesysArgs`] (flags and env vars of DESIGN §7) → [`GenesysConfig`].
//! - [`auth`]: the token provider: cached, refreshed early, one fetch in flight.
//! - [`error`]: the Genesys error body, status classification, and [`CreateError`].
//! - [`pacer`]: the shared, adaptive rate limiter (GCRA + AIMD + `inin-ratelimit-*`).
//! - [`circuit`]: the circuit breaker that pauses calls (and new work) while Genesys is down.
//! - [`retry`]: backoff with full jitter, `Retry-After`, the retry budget (on `backon`).
//! - [`open_messaging`], [`guest_chat`]: the two session APIs' bodies and responses.
//! - [`client`]: [`GenesysClient`], which ties them together.
//!
//! ```no_run
//! # async fn demo(request: &guest_session_worker::request::ValidatedRequest) -> anyhow::Result<()> {
//! use guest_session_worker::genesys::{GenesysClient, GenesysConfig};
//! let config = GenesysConfig::for_simulator("http://127.0.0.1:8089", "client", "secret", "integration");
//! let client = GenesysClient::new(config)?;
//! match client.create_session(request).await {
//!     Ok(session) => println!("conversation {:?}", session.conversation_id),
//!     Err(error) => println!("dead letter {}: {error}", error.kind()),
//! }
//! # Ok(()) }
//! ```

pub mod auth;
pub mod circuit;
pub mod client;
pub mod config;
pub mod error;
pub mod guest_chat;
pub mod open_messaging;
pub mod pacer;
pub mod region;
pub mod retry;

pub use client::{CreatedSession, GenesysClient};
pub use config::{GenesysArgs, GenesysConfig, GenesysConfigError, SessionApiKind};
pub use error::{CreateError, GenesysErrorBody, StatusClass, classify_status};
pub use pacer::{Pacer, PacerSnapshot};
pub use region::{Hosts, REGIONS, region_domain, resolve_hosts};
