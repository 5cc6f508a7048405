//! Integration tests: one binary, a module per feature (keeps link time down). Every test talks
//! to a real RabbitMQ (`AMQP_URL`, or a testcontainer) and a real Genesys simulator over sockets.

mod bench;
mod cli;
mod contracts;
mod deploy;
mod examples;
mod helpers;
mod hostile;
#[path = "../support/leftovers.rs"]
mod leftovers;
mod message_properties;
mod observability;
mod pipeline;
mod publisher;
mod rate_limit;
