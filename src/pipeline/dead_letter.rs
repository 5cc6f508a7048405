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
/// The request's `user_id` property, moved into a header: RabbitMQ refuses a publish whose
/// `user_id` is not the publishing connection's user (406, closing the channel), and the
/// worker's user is rarely the upstream app's. Kept through a replay, as the upstream's headers.
pub const ORIGINAL_USER_ID: &str = "x-original-user-id";
/// Headers the worker adds; a replay strips them (and the broker's `x-death`, `x-first-death-*`,
/// `x-last-death-*` and [`DELIVERY_COUNT`]) before re-queueing.
pub const WORKER_HEADERS: [&str; 5] = [KIND, DETAIL, ATTEMPTS, FAILED_AT, CONTEXT_ID];
/// The broker's delivery counter (quorum queues add it to a redelivered message): stale in a
/// replay, where the request starts over.
pub const DELIVERY_COUNT: &str = "x-delivery-count";

/// Why a request is being dead-lettered.
#[derive(Debug, Clone)]
pub struct DeadLetterCause<'a> {
    pub kind: &'a str,
    pub detail: &'a str,
    pub attempts: u32,
    pub context_id: Option<&'a str>,
}

/// The dead letter for `delivery`: body byte-identical, original properties kept except
/// `expiration` (a dead letter must not expire from the dead queue) and `user_id` (see
/// [`ORIGINAL_USER_ID`]), and always persistent.
pub fn dead_letter(dead_letter_exchange: &str, delivery: &Delivery, cause: &DeadLetterCause<'_>) -> Outgoing {
    let mut table = delivery.properties.headers().clone().unwrap_or_default();
    headers::set_str(&mut table, KIND, cause.kind);
    headers::set_str(&mut table, DETAIL, cause.detail);
    headers::set_i64(&mut table, ATTEMPTS, i64::from(cause.attempts));
    headers::set_str(&mut table, FAILED_AT, rfc3339(Utc::now()));
    if let Some(context_id) = cause.context_id {
        headers::set_str(&mut table, CONTEXT_ID, context_id);
    }
    if let Some(user_id) = delivery.properties.user_id() {
        headers::set_str(&mut table, ORIGINAL_USER_ID, user_id.as_str());
    }
    // The dead letter continues the request's trace (same trace id, the worker's span as parent).
    crate::telemetry::propagation::inject_current(&mut table);
    // Persistent even if the original was published transient: it must survive a broker restart.
    let properties = carried_over(&delivery.properties)
        .with_delivery_mode(2)
        .with_headers(table);
    Outgoing {
        exchange: dead_letter_exchange.to_string(),
        routing_key: delivery.routing_key.as_str().to_string(),
        payload: delivery.data.clone(),
        properties,
        // Returned if the dead queue is gone: the request is then requeued, not acked.
        mandatory: true,
    }
}

/// The properties a replay re-publishes a dead letter with: its own minus `expiration` and
/// `user_id` (a dead letter from an older worker may still carry the request's) and minus the
/// headers the worker and the broker added.
pub fn properties_for_replay(properties: &BasicProperties) -> BasicProperties {
    carried_over(properties).with_headers(strip_for_replay(properties.headers().as_ref()))
}

/// `properties` minus `expiration` and `user_id` (lapin's properties cannot unset a field, so
/// this copies the others).
fn carried_over(properties: &BasicProperties) -> BasicProperties {
    let mut copy = BasicProperties::default();
    macro_rules! keep {
        ($($get:ident => $set:ident),* $(,)?) => {
            $(if let Some(value) = properties.$get() {
                copy = copy.$set(value.clone());
            })*
        };
    }
    keep!(
        content_type => with_content_type,
        content_encoding => with_content_encoding,
        headers => with_headers,
        delivery_mode => with_delivery_mode,
        priority => with_priority,
        correlation_id => with_correlation_id,
        reply_to => with_reply_to,
        message_id => with_message_id,
        timestamp => with_timestamp,
        kind => with_type,
        app_id => with_app_id,
        cluster_id => with_cluster_id,
    );
    copy
}

/// The headers of a dead letter minus what the worker and the broker added, for a replay.
pub fn strip_for_replay(table: Option<&FieldTable>) -> FieldTable {
    let mut clean = FieldTable::default();
    if let Some(table) = table {
        for (key, value) in table {
            let key_str = key.as_str();
            if WORKER_HEADERS.contains(&key_str)
                || key_str == DELIVERY_COUNT
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

#[cfg(test)]
mod tests {
    use lapin::types::{AMQPValue, LongString, ShortString};

    use super::*;

    fn every_property() -> BasicProperties {
        let mut table = FieldTable::default();
        headers::set_str(
            &mut table,
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        );
        BasicProperties::default()
            .with_content_type("application/json".into())
            .with_content_encoding("identity".into())
            .with_headers(table)
            .with_delivery_mode(1)
            .with_priority(3)
            .with_correlation_id("corr".into())
            .with_reply_to("replies".into())
            .with_message_id("msg".into())
            .with_timestamp(1_700_000_000)
            .with_type("session.request".into())
            .with_app_id("portal".into())
            .with_cluster_id("cluster".into())
    }

    #[test]
    fn carried_over_keeps_every_property_but_expiration_and_user_id() {
        let original = every_property();
        assert_eq!(
            carried_over(
                &original
                    .clone()
                    .with_expiration("60000".into())
                    .with_user_id("portal".into())
            ),
            original
        );
    }

    #[test]
    fn a_replay_drops_expiration_and_what_the_worker_and_the_broker_added() {
        let mut table = every_property().headers().clone().unwrap_or_default();
        headers::set_str(&mut table, "upstream-header", "kept");
        headers::set_str(&mut table, KIND, "malformed");
        headers::set_i64(&mut table, ATTEMPTS, 0);
        headers::set_i64(&mut table, DELIVERY_COUNT, 3);
        table.insert(
            ShortString::from("x-death"),
            AMQPValue::FieldArray(vec![AMQPValue::LongString(LongString::from("q"))].into()),
        );
        headers::set_str(&mut table, "x-first-death-reason", "delivery_limit");
        let dead = every_property()
            .with_headers(table)
            .with_expiration("60000".into())
            .with_user_id("guest".into());
        let replayed = properties_for_replay(&dead);
        assert_eq!(replayed.expiration(), &None);
        assert_eq!(replayed.user_id(), &None);
        let keys: Vec<&str> = replayed
            .headers()
            .as_ref()
            .map(|t| t.inner().keys().map(|k| k.as_str()).collect())
            .unwrap_or_default();
        assert_eq!(keys, ["traceparent", "upstream-header"]);
        assert_eq!(replayed.message_id(), every_property().message_id());
    }
}
