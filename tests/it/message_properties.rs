//! Properties and trace headers of what the worker publishes, on real messages: dead letters keep
//! no `expiration` and are persistent, a replay starts the request over, and every message carries
//! exactly one `traceparent` (the upstream's, else a fresh one) and never an empty `tracestate`.

use std::time::Duration;

use guest_session_worker::{
    amqp::{headers, request_message, topology::REQUEST_ROUTING_KEY},
    pipeline::dead_letter,
};
use lapin::{
    message::Delivery,
    options::{BasicGetOptions, BasicRejectOptions},
    types::FieldTable,
};

use crate::helpers::*;

const WAIT: Duration = Duration::from_secs(60);

fn random_hex(len: usize) -> String {
    uuid::Uuid::new_v4().simple().to_string()[..len].to_string()
}

/// The names of `delivery`'s headers that are `name` whatever their case.
fn spellings(delivery: &Delivery, name: &str) -> Vec<String> {
    delivery
        .properties
        .headers()
        .as_ref()
        .map(|t| {
            t.inner()
                .keys()
                .map(|k| k.to_string())
                .filter(|k| k.eq_ignore_ascii_case(name))
                .collect()
        })
        .unwrap_or_default()
}

/// The one `traceparent` of `delivery` (spelled in lower case), with no `tracestate` beside it.
fn only_traceparent(delivery: &Delivery, what: &str) -> String {
    assert_eq!(spellings(delivery, "traceparent"), ["traceparent"], "{what}");
    assert!(
        spellings(delivery, "tracestate").is_empty(),
        "{what}: no empty tracestate: {:?}",
        delivery.properties.headers()
    );
    header(delivery, "traceparent").expect("traceparent")
}

/// The trace id of a `traceparent` the worker started itself: W3C version 00, lower-case hex,
/// non-zero ids, not sampled (flags 00: nothing was recorded).
fn fresh_trace_id(traceparent: &str) -> String {
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    let lower_hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    assert_eq!(parts[0], "00", "{traceparent}");
    assert!(
        lower_hex(parts[1], 32) && parts[1].bytes().any(|b| b != b'0'),
        "{traceparent}"
    );
    assert!(
        lower_hex(parts[2], 16) && parts[2].bytes().any(|b| b != b'0'),
        "{traceparent}"
    );
    assert_eq!(parts[3], "00", "{traceparent}");
    parts[1].to_string()
}

/// One message from `queue`, left unacked (the caller settles it).
async fn get_one(env: &TestEnv, queue: &str) -> Delivery {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let got = env
            .channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: false })
            .await
            .expect("basic.get");
        if let Some(message) = got {
            return message.delivery;
        }
        assert!(tokio::time::Instant::now() < deadline, "nothing arrived on {queue}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn audit_by_request(audits: &[Delivery]) -> std::collections::HashMap<String, (serde_json::Value, String)> {
    audits
        .iter()
        .map(|d| {
            let record: serde_json::Value = serde_json::from_slice(&d.data).expect("audit JSON");
            let id = record["request_id"].as_str().expect("request_id").to_string();
            (id, (record, only_traceparent(d, "audit message")))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_has_no_expiration_is_persistent_and_replays_without_broker_headers() {
    let mut env = TestEnv::start().await;
    let upstream = format!("00-{}-{}-01", random_hex(32), random_hex(16));
    let mut trace = FieldTable::default();
    headers::set_str(&mut trace, "Traceparent", upstream.clone());
    let payload = b"not json".to_vec();
    let mut request = request_message(&env.topology, payload.clone(), trace);
    request.properties = request
        .properties
        .with_message_id("dl-props-1".into())
        .with_expiration("600000".into())
        .with_delivery_mode(1);
    env.publish_message(request).await;

    let dead = get_one(&env, &env.topology.dead_letter_queue).await;
    let p = &dead.properties;
    assert_eq!(header(&dead, dead_letter::KIND).as_deref(), Some("malformed"));
    assert_eq!(dead.data, payload, "body byte-identical");
    assert_eq!(p.message_id().as_ref().map(|m| m.as_str()), Some("dl-props-1"));
    assert_eq!(
        p.expiration(),
        &None,
        "a dead letter must not expire from the dead queue"
    );
    assert_eq!(p.delivery_mode(), &Some(2), "a dead letter is persistent");
    assert_eq!(
        spellings(&dead, "traceparent"),
        ["traceparent"],
        "the request's `Traceparent` is replaced, not doubled"
    );
    assert_eq!(header(&dead, "traceparent"), Some(upstream.clone()));
    assert!(spellings(&dead, "tracestate").is_empty());
    // Returned unsettled: the replay then reads a redelivery, which the quorum queue marks with
    // `x-delivery-count`.
    dead.acker
        .reject(BasicRejectOptions { requeue: true })
        .await
        .expect("requeue the dead letter");
    env.stop_worker().await;

    // A classic queue beside the request queue shows the replay as published: the quorum request
    // queue would rewrite `x-delivery-count` with its own count.
    let observer = env.tap(&env.topology.request_exchange, REQUEST_ROUTING_KEY).await;
    // A dead letter as an older worker wrote it: still carrying the request's `expiration`.
    let mut legacy_headers = FieldTable::default();
    headers::set_str(&mut legacy_headers, dead_letter::KIND, "malformed");
    let mut legacy = request_message(&env.topology, payload.clone(), legacy_headers);
    legacy.exchange = env.topology.dead_letter_exchange.clone();
    legacy.properties = legacy
        .properties
        .with_message_id("dl-props-legacy".into())
        .with_expiration("600000".into());
    env.publish_message(legacy).await;

    let output = env.cli(&["dead-letters", "replay"], &[]).await;
    assert!(
        output.status.success(),
        "replay failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("replayed 2 "));
    let mut replayed = env.take(&observer, 2, WAIT).await;
    replayed.sort_by_key(|d| d.properties.message_id().as_ref().map(|m| m.to_string()));
    let ids: Vec<Option<&str>> = replayed
        .iter()
        .map(|d| d.properties.message_id().as_ref().map(|m| m.as_str()))
        .collect();
    assert_eq!(ids, [Some("dl-props-1"), Some("dl-props-legacy")]);
    for delivery in &replayed {
        let p = &delivery.properties;
        assert_eq!(delivery.data, payload);
        assert_eq!(p.expiration(), &None, "a replay carries no expiration: {ids:?}");
        assert_eq!(p.delivery_mode(), &Some(2));
        for stale in [
            dead_letter::DELIVERY_COUNT,
            dead_letter::KIND,
            dead_letter::ATTEMPTS,
            dead_letter::FAILED_AT,
        ] {
            assert_eq!(header(delivery, stale), None, "{stale} in {:?}", p.headers());
        }
    }
    assert_eq!(
        header(&replayed[0], "traceparent"),
        Some(upstream),
        "the replay continues the trace"
    );
    assert_eq!(env.message_count(&env.topology.request_queue).await, 2, "re-queued");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_published_for_a_request_carries_one_traceparent_the_upstreams_or_a_fresh_one() {
    let mut env = TestEnv::start().await;
    let events_queue = env.bind_events().await;
    let replies = env.private_queue().await;
    let tag = random_hex(8);
    let (fresh_a, fresh_b, fresh_blocked, passed) = (
        format!("fresh-a-{tag}"),
        format!("fresh-b-{tag}"),
        format!("fresh-pii-{tag}"),
        format!("upstream-{tag}"),
    );
    for id in [&fresh_a, &fresh_b] {
        env.publish_with(body(&valid_request(id)), |p| p.with_reply_to(replies.as_str().into()))
            .await;
    }
    let mut pii = valid_request(&fresh_blocked);
    pii["attributes"]["email"] = serde_json::json!("ada@example.com");
    env.publish(body(&pii)).await;
    // An upstream `traceparent` without `tracestate`: passed through, with no empty `tracestate`.
    let upstream_trace = random_hex(32);
    let upstream = format!("00-{upstream_trace}-{}-01", random_hex(16));
    let mut trace = FieldTable::default();
    headers::set_str(&mut trace, "traceparent", upstream.clone());
    let mut request = request_message(&env.topology, body(&valid_request(&passed)), trace);
    request.properties = request.properties.with_reply_to(replies.as_str().into());
    env.publish_message(request).await;

    let events = env.take(&events_queue, 3, WAIT).await;
    let replied = env.take(&replies, 3, WAIT).await;
    let dead = env.take(&env.topology.dead_letter_queue.clone(), 1, WAIT).await;
    let audits = audit_by_request(&env.take(&env.topology.audit_queue.clone(), 4, WAIT).await);
    let by_correlation = |deliveries: &[Delivery], id: &str, what: &str| {
        let delivery = deliveries
            .iter()
            .find(|d| d.properties.correlation_id().as_ref().map(|c| c.as_str()) == Some(id))
            .unwrap_or_else(|| panic!("no {what} for {id}"));
        only_traceparent(delivery, what)
    };
    let mut trace_ids = Vec::new();
    for id in [&fresh_a, &fresh_b, &passed] {
        let traceparent = by_correlation(&events, id, "session.created event");
        let trace_id = if id == &passed {
            assert_eq!(traceparent, upstream, "the upstream's context, unchanged");
            upstream_trace.clone()
        } else {
            fresh_trace_id(&traceparent)
        };
        assert_eq!(by_correlation(&replied, id, "reply"), traceparent, "{id}");
        let (record, audit_traceparent) = &audits[id.as_str()];
        assert_eq!(audit_traceparent, &traceparent, "{id}");
        assert_eq!(record["trace_id"].as_str(), Some(trace_id.as_str()), "{id}");
        trace_ids.push(trace_id);
    }
    assert_ne!(trace_ids[0], trace_ids[1], "one trace per request");

    let traceparent = only_traceparent(&dead[0], "dead letter");
    assert_eq!(header(&dead[0], dead_letter::KIND).as_deref(), Some("pii_blocked"));
    let (record, audit_traceparent) = &audits[fresh_blocked.as_str()];
    assert_eq!(audit_traceparent, &traceparent);
    assert_eq!(record["trace_id"].as_str(), Some(fresh_trace_id(&traceparent).as_str()));
    env.cleanup().await;
}

/// A broker user of this test's own, made with `rabbitmqctl` and deleted on drop; `None` when
/// the broker is not a local node this machine's `rabbitmqctl` administers.
struct BrokerUser {
    name: String,
    url: String,
}

impl BrokerUser {
    fn create(broker_url: &str) -> Option<Self> {
        let mut url = reqwest::Url::parse(broker_url).ok()?;
        if !matches!(url.host_str(), Some("127.0.0.1" | "localhost")) {
            return None;
        }
        let name = format!("it-upstream-{}", random_hex(10));
        let password = random_hex(24);
        let vhost = match url.path().trim_start_matches('/') {
            "" | "%2f" | "%2F" => "/".to_string(),
            other => other.to_string(),
        };
        rabbitmqctl(&["add_user", &name, &password])?;
        let user = Self {
            name: name.clone(),
            url: {
                url.set_username(&name).ok()?;
                url.set_password(Some(&password)).ok()?;
                url.to_string()
            },
        };
        rabbitmqctl(&["set_permissions", "-p", &vhost, &name, ".*", ".*", ".*"])?;
        Some(user)
    }
}

impl Drop for BrokerUser {
    fn drop(&mut self) {
        let _ = rabbitmqctl(&["delete_user", &self.name]);
    }
}

fn rabbitmqctl(args: &[&str]) -> Option<()> {
    let output = std::process::Command::new("rabbitmqctl").args(args).output().ok()?;
    output.status.success().then_some(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_apps_user_id_moves_to_a_header_so_the_broker_accepts_its_dead_letter() {
    let mut env = TestEnv::start_with(EnvOptions {
        start_worker: false,
        ..Default::default()
    })
    .await;
    let Some(user) = BrokerUser::create(&env.url) else {
        eprintln!("skipped: no local rabbitmqctl to make a second broker user");
        env.cleanup().await;
        return;
    };
    let events = env.bind_events().await;
    env.start_worker().await;
    // The upstream app publishes as its own broker user and says so in `user_id` (RabbitMQ's
    // validated user id), while the worker connects as another user.
    let upstream = guest_session_worker::amqp::connect(&user.url, "it-upstream")
        .await
        .expect("the test's user connects");
    let publisher = guest_session_worker::amqp::Publisher::open(&upstream, 1)
        .await
        .expect("publisher");
    for (id, payload) in [
        ("uid-invalid", b"not json".to_vec()),
        ("uid-valid", body(&valid_request("uid-valid"))),
    ] {
        let mut request = request_message(&env.topology, payload, FieldTable::default());
        request.properties = request
            .properties
            .with_message_id(id.into())
            .with_user_id(user.name.as_str().into());
        publisher.publish(request).await.expect("request confirmed");
    }

    let dead = env.take(&env.topology.dead_letter_queue.clone(), 1, WAIT).await;
    assert_eq!(header(&dead[0], dead_letter::KIND).as_deref(), Some("malformed"));
    assert_eq!(dead[0].properties.user_id(), &None);
    assert_eq!(
        header(&dead[0], dead_letter::ORIGINAL_USER_ID).as_deref(),
        Some(user.name.as_str())
    );
    // The worker's channels survived the dead letter: the next request goes through.
    let created = env.take(&events, 1, WAIT).await;
    assert_eq!(
        created[0].properties.correlation_id().as_ref().map(|c| c.as_str()),
        Some("uid-valid")
    );
    let _ = upstream.close(200, "done".into()).await;
    env.cleanup().await;
}
