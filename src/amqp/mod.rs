//! RabbitMQ plumbing: connecting with an error an operator can act on, the topology of DESIGN §2–5,
//! a confirm publisher that respects lapin's one-publisher-per-channel rule (DESIGN §8), and the
//! header helpers shared by everything that reads or writes AMQP properties.

pub mod connect;
pub mod headers;
pub mod publisher;
pub mod request_message;
pub mod tap;
pub mod topology;

pub use connect::{AmqpArgs, ConnectError, connect};
pub use publisher::{Outgoing, PublishError, Publisher};
pub use request_message::request_message;
pub use tap::tap;
pub use topology::{Topology, TopologyOptions};
