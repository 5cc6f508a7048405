//! How an upstream app publishes a session request (DESIGN §2), for `enqueue`, the demo, replay
//! tools and tests.

use lapin::{BasicProperties, types::FieldTable};

use super::{Outgoing, Topology, headers, topology::REQUEST_ROUTING_KEY};

/// A persistent JSON request on the request exchange; `message_id` is the body's `request_id`
/// when it has a usable one, so the broker-side view matches the worker's.
pub fn request_message(topology: &Topology, body: Vec<u8>, headers: FieldTable) -> Outgoing {
    let message_id = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("request_id").and_then(|id| id.as_str()).map(str::to_string))
        .and_then(|id| headers::short(&id))
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string().into());
    Outgoing {
        exchange: topology.request_exchange.clone(),
        routing_key: REQUEST_ROUTING_KEY.to_string(),
        payload: body,
        properties: BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_message_id(message_id)
            .with_headers(headers),
        mandatory: true,
    }
}
