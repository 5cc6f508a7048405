//! The chaos suite: the worker under process kills, SIGTERM, a broker restart and freeze, a
//! deleted queue or exchange, a Genesys outage, poison messages and duplicate copies. A request,
//! once enqueued, must end as a created event or a dead letter whatever happens (DESIGN §1,
//! issue 6).
//!
//! A test binary of its own: `cargo test` runs test binaries one after another, so these never
//! overlap the main suite (`tests/it`). Inside it, the tests that run the worker binary under load
//! or restart a broker take [`HEAVY`] so that they do not compete for the machine's two cores;
//! the others run alongside. Nothing here touches the shared broker's node: the broker restart
//! runs on a dedicated RabbitMQ node started for it (skipped where `rabbitmq-server` is absent).

mod broker_restart;
mod duplicates;
mod genesys_outage;
mod harness;
mod kill;
#[path = "../support/leftovers.rs"]
mod leftovers;
mod poison;
mod rabbit_node;
mod session_loss;
mod sigterm;

/// Held by the tests that run the worker binary under load or restart a broker.
pub static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
