//! The worker: a supervised consumer that validates every delivery and runs it through
//! [`process`].
//!
//! - [`worker`]: connect, declare, consume; reconnect with backoff when the broker goes away;
//!   graceful shutdown.
//! - [`consumer`]: one connected session: bounded in-flight handlers, ack/nack per disposition.
//! - [`settler`]: acks coalesced into `multiple` acks, requeues, the last settlements of a session.
//! - [`inflight`]: copies of one request in flight together in this replica are processed once.
//! - [`process`]: the per-message pipeline, top to bottom.
//! - [`event`], [`dead_letter`], [`reply`]: the messages the worker publishes.
//! - [`outcome`]: what became of a request, as data.

pub mod consumer;
pub mod dead_letter;
pub mod event;
pub mod inflight;
pub mod outcome;
pub mod process;
pub mod reply;
pub mod settler;
pub mod worker;

pub use outcome::{Disposition, Outcome};
pub use process::{PipelineContext, json_properties};
pub use worker::{Worker, WorkerError, WorkerSettings};
