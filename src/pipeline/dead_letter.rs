//! Dead letters (DESIGN §5): the original body and properties, plus headers that say why.

use chrono::Utc;
use lapin::{BasicProperties, message::Delivery, types::FieldTable};

use super::event::rfc3339;
use crate::amqp::{Outgoing, headers};

pub const KIND: &str = "x-error-kind";
pub const DETAIL: &str = "x-error-detail";
pub const ATTEMPTS: &str = "x-attempts";
pub const FAILED_AT: &str = "x-failed-at";
pub const CONTEXT_ID: &str = "x-genesys-context-id";
/// Headers the worker adds; a replay strips them (and the broker's `x-death`) before re-queueing.
pub const WORKER_HEADERS: [&str; 5] = [KIND, DETAIL, ATTEMPTS, FAILED_AT, CONTEXT_ID];

/// Why a request is being dead-lettered.
#[derive(Debug, Clone)]
pub struct DeadLetterCause<'a> {
    pub kind: &'a str,
    pub detail: &'a str,
    pub attempts: u32,
    pub context_id: Option<&'a str>,
}

/// The dead letter for `delivery`: body byte-identical, original properties kept.
pub fn dead_letter(dead_letter_exchange: &str, delivery: &Delivery, cause: &DeadLetterCause<'_>) -> Outgoing {
    let mut table = delivery.properties.headers().clone().unwrap_or_default();
    headers::set_str(&mut table, KIND, cause.kind);
    headers::set_str(&mut table, DETAIL, cause.detail);
    headers::set_i64(&mut table, ATTEMPTS, i64::from(cause.attempts));
    headers::set_str(&mut table, FAILED_AT, rfc3339(Utc::now()));
    if let Some(context_id) = cause.context_id {
        headers::set_str(&mut table, CONTEXT_ID, context_id);
    }
    // The dead letter continues the request's trace (same trace id, the worker's span as parent).
    crate::telemetry::propagation::inject_current(&mut table);
    let properties = with_persistence(delivery.properties.clone()).with_headers(table);
    Outgoing {
        exchange: dead_letter_exchange.to_string(),
        routing_key: delivery.routing_key.as_str().to_string(),
        payload: delivery.data.clone(),
        properties,
        mandatory: false,
    }
}

/// A dead letter must survive a broker restart even if the original was published transient.
fn with_persistence(properties: BasicProperties) -> BasicProperties {
    if properties.delivery_mode().is_some() {
        properties
    } else {
        properties.with_delivery_mode(2)
    }
}

/// The headers of a dead letter minus what the worker and the broker added, for a replay.
pub fn strip_for_replay(table: Option<&FieldTable>) -> FieldTable {
    let mut clean = FieldTable::default();
    if let Some(table) = table {
        for (key, value) in table {
            let key_str = key.as_str();
            if WORKER_HEADERS.contains(&key_str)
                || key_str.starts_with("x-death")
                || key_str.starts_with("x-first-death")
                || key_str.starts_with("x-last-death")
            {
                continue;
            }
            clean.insert(key.clone(), value.clone());
        }
    }
    clean
}
