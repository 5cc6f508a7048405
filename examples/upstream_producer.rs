//! An upstream web app's side of the contract (DESIGN §2): publish one session request and wait for
//! the worker's reply.
//!
//! ```text
//! cargo run --example upstream_producer                  # DESIGN §2's sample request
//! cargo run --example upstream_producer -- request.json  # your own body
//! ```
//!
//! The request goes to the `guest-sessions` exchange with routing key `session.request`, persistent,
//! `message_id` = its `request_id`, a fresh W3C `traceparent` header (so the worker's spans join
//! this trace), and `reply_to` naming an exclusive, server-named reply queue plus a
//! `correlation_id`. The reply (`contracts/session-reply.schema.json`) is printed as JSON. For Guest
//! Chat it holds the guest's `jwt`: a real app hands that to the guest's browser and never logs it.
//!
//! Settings: `AMQP_URL`, `AMQP_NAME_PREFIX` (the worker's), `REPLY_TIMEOUT_SECS` (default 30).

use std::time::Duration;

use futures_util::StreamExt;
use guest_session_worker::amqp::{PublishError, Publisher, Topology, headers, request_message, tap::declare_exclusive};
use lapin::{
    Connection,
    options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions},
    types::FieldTable,
};

/// DESIGN §2's example request, with fresh ids so that each run creates a new session.
pub fn sample_request() -> serde_json::Value {
    serde_json::json!({
        "request_id": uuid::Uuid::new_v4().to_string(),
        "guest_id": format!("guest_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
        "display_name": "Ada",
        "attributes": { "source": "web_portal", "device_type": "desktop" },
        "consent": { "data_processing": true, "marketing": false },
        "routing": { "queue": "Web Support", "skills": ["web_support"], "language": "en", "priority": 1 },
        "initial_message": "Hi, I have a question about my order"
    })
}

/// A new W3C trace context, sampled: `00-<trace id>-<parent span id>-01`.
pub fn new_traceparent() -> String {
    let trace_id = uuid::Uuid::new_v4().simple().to_string();
    let span_id = &uuid::Uuid::new_v4().simple().to_string()[..16];
    format!("00-{trace_id}-{span_id}-01")
}

/// The worker's answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub correlation_id: String,
    pub traceparent: String,
    /// The reply body (JSON).
    pub body: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error(transparent)]
    Amqp(#[from] lapin::Error),
    #[error("publishing the request failed: {0}")]
    Publish(#[from] PublishError),
    #[error("no reply within {0:?}: is a worker running with the same AMQP_NAME_PREFIX?")]
    Timeout(Duration),
    #[error("the reply queue's consumer ended before a reply arrived")]
    ConsumerEnded,
}

/// Publishes `body` as a session request with `reply_to` and waits up to `timeout` for its reply.
pub async fn request_session(
    connection: &Connection,
    topology: &Topology,
    body: Vec<u8>,
    timeout: Duration,
) -> Result<Reply, RequestError> {
    let channel = connection.create_channel().await?;
    // Exclusive and server-named: only this connection reads it, and it vanishes with it.
    let reply_queue = declare_exclusive(&channel).await?;
    // Consume before publishing, so the reply cannot arrive unseen.
    let mut replies = channel
        .basic_consume(
            reply_queue.clone(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;

    let correlation_id = uuid::Uuid::new_v4().to_string();
    let traceparent = new_traceparent();
    let mut trace_headers = FieldTable::default();
    headers::set_str(&mut trace_headers, "traceparent", traceparent.as_str());
    let mut message = request_message(topology, body, trace_headers);
    message.properties = message
        .properties
        .with_reply_to(reply_queue.clone())
        .with_correlation_id(correlation_id.as_str().into());
    let publisher = Publisher::open(connection, 1).await?;
    publisher.publish(message).await?;

    let reply = tokio::time::timeout(timeout, async {
        while let Some(delivery) = replies.next().await {
            let delivery = delivery?;
            delivery.acker.ack(BasicAckOptions::default()).await?;
            let matches = delivery
                .properties
                .correlation_id()
                .as_ref()
                .is_some_and(|id| id.as_str() == correlation_id);
            if matches {
                return Ok(delivery.data);
            }
        }
        Err(RequestError::ConsumerEnded)
    })
    .await
    .map_err(|_| RequestError::Timeout(timeout))??;
    let _ = channel.basic_cancel(replies.tag(), BasicCancelOptions::default()).await;
    let _ = channel.close(200, "reply received".into()).await;
    Ok(Reply {
        correlation_id,
        traceparent,
        body: reply,
    })
}

#[cfg(not(test))]
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    use anyhow::Context;

    let url =
        std::env::var("AMQP_URL").unwrap_or_else(|_| guest_session_worker::amqp::connect::DEFAULT_AMQP_URL.into());
    let prefix = std::env::var("AMQP_NAME_PREFIX").unwrap_or_default();
    let timeout = std::env::var("REPLY_TIMEOUT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(Duration::from_secs(30), Duration::from_secs);
    let body = match std::env::args_os().nth(1) {
        Some(path) => std::fs::read(&path).with_context(|| format!("cannot read {}", path.to_string_lossy()))?,
        None => serde_json::to_vec(&sample_request())?,
    };

    let connection = guest_session_worker::amqp::connect(&url, "upstream_producer example").await?;
    let topology = Topology::new(&prefix);
    // Idempotent, as `guest-session-worker enqueue` does: the request has somewhere to go even if
    // no worker has started yet.
    topology
        .declare(&connection)
        .await
        .context("declaring the topology failed")?;
    let reply = request_session(&connection, &topology, body, timeout).await?;
    eprintln!(
        "reply for correlation_id {} (trace {}):",
        reply.correlation_id, reply.traceparent
    );
    let pretty = serde_json::from_slice::<serde_json::Value>(&reply.body)
        .and_then(|v| serde_json::to_string_pretty(&v))
        .unwrap_or_else(|_| String::from_utf8_lossy(&reply.body).into_owned());
    println!("{pretty}");
    let _ = connection.close(200, "bye".into()).await;
    Ok(())
}
