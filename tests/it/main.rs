//! Integration tests: one binary, a module per feature (keeps link time down). Every test talks
//! to a real RabbitMQ (`AMQP_URL`, or a testcontainer) and a real Genesys simulator over sockets.

mod cli;
mod helpers;
mod pipeline;
