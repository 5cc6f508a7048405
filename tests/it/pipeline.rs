//! The vertical slice: requests in, sessions created, events / dead letters / audit / replies out.

use std::{collections::HashSet, time::Duration};

use guest_session_worker::{
    audit::AuditOutcome,
    pipeline::{dead_letter, event::SessionCreatedEvent},
    sim::Faults,
};
use lapin::BasicProperties;

use crate::helpers::*;

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_valid_requests_become_two_hundred_events_and_audit_records() {
    let mut env = TestEnv::start().await;
    let events_queue = env.bind_events().await;
    let ids: Vec<String> = (0..200).map(|i| format!("req-{i:04}")).collect();
    for id in &ids {
        env.publish(body(&valid_request(id))).await;
    }

    let events = env.take(&events_queue, 200, WAIT).await;
    let mut seen = HashSet::new();
    for delivery in &events {
        let event: SessionCreatedEvent = serde_json::from_slice(&delivery.data).expect("event is JSON of the contract");
        assert_eq!(event.event_type, "session.created");
        assert!(seen.insert(event.request_id.clone()), "one event per request");
        assert_eq!(event.guest_id, format!("guest_{}", event.request_id));
        assert_eq!(event.session.api, "open_messaging");
        assert!(
            event
                .session
                .conversation_id
                .as_deref()
                .is_some_and(|id| !id.is_empty())
        );
        assert!(event.session.message_id.is_some());
        let routing = event.routing.as_ref().expect("routing echoed");
        assert_eq!(routing.queue.as_deref(), Some("Web Support"));
        assert_eq!(routing.skills, vec!["web_support".to_string()]);
        assert_eq!(routing.language.as_deref(), Some("en"));
        assert_eq!(routing.priority, Some(1));
        assert_eq!(event.attributes.get("source"), Some(&serde_json::json!("web_portal")));
        assert!(event.consent.data_processing && !event.consent.marketing);
        assert!(chrono::DateTime::parse_from_rfc3339(&event.occurred_at).is_ok());
        assert!(chrono::DateTime::parse_from_rfc3339(&event.consent.recorded_at).is_ok());
        assert!(uuid::Uuid::parse_str(&event.event_id).is_ok());
        assert_eq!(event.attempts, 1);
        // Properties of DESIGN §4.
        let p = &delivery.properties;
        assert_eq!(p.delivery_mode(), &Some(2));
        assert_eq!(p.content_type().as_ref().map(|c| c.as_str()), Some("application/json"));
        assert_eq!(
            p.message_id().as_ref().map(|m| m.to_string()),
            Some(event.event_id.clone())
        );
        assert_eq!(
            p.correlation_id().as_ref().map(|c| c.to_string()),
            Some(event.request_id.clone())
        );
        assert_eq!(delivery.routing_key.as_str(), "session.created");
    }
    assert_eq!(seen, ids.iter().cloned().collect::<HashSet<_>>());

    let audits = env.take(&env.topology.audit_queue.clone(), 200, WAIT).await;
    for delivery in &audits {
        let record: serde_json::Value = serde_json::from_slice(&delivery.data).expect("audit JSON");
        assert_eq!(record["outcome"], serde_json::json!(AuditOutcome::Created));
        assert_eq!(record["validation_passed"], true);
        assert_eq!(record["routing_success"], true);
        assert_eq!(record["guest_ref"].as_str().map(str::len), Some(64));
    }

    assert_eq!(
        env.message_count(&env.topology.request_queue).await,
        0,
        "request queue drained"
    );
    env.stop_worker().await;
    // Nothing was left unacked: after the worker's channel closed, nothing came back.
    assert_eq!(
        env.message_count(&env.topology.request_queue).await,
        0,
        "nothing unacked"
    );
    assert_eq!(env.message_count(&env.topology.dead_letter_queue).await, 0);
    assert_eq!(env.sim.stats().sessions_created, 200);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_invalid_class_is_dead_lettered_once_with_its_reason_and_the_body_unchanged() {
    let mut env = TestEnv::start().await;
    let events_queue = env.bind_events().await;
    let base = valid_request("bad-0");
    let with = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut v = base.clone();
        f(&mut v);
        body(&v)
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("malformed", b"{\"request_id\": \"bad-1\", ".to_vec()),
        (
            "too_large",
            with(&|v| v["initial_message"] = serde_json::json!("x".repeat(65 * 1024))),
        ),
        ("invalid", with(&|v| v["request_id"] = serde_json::json!("has spaces!"))),
        ("invalid", with(&|v| v["guest_id"] = serde_json::json!(""))),
        (
            "invalid",
            with(&|v| {
                v["attributes"] =
                    serde_json::Value::Object((0..101).map(|i| (format!("k{i}"), serde_json::json!("v"))).collect())
            }),
        ),
        (
            "pii_blocked",
            with(&|v| v["attributes"]["E_Mail"] = serde_json::json!("ada@example.com")),
        ),
        (
            "consent_missing",
            with(&|v| v["consent"]["data_processing"] = serde_json::json!(false)),
        ),
        ("malformed", with(&|v| v["surprise"] = serde_json::json!(true))),
    ];
    for (i, (_, payload)) in cases.iter().enumerate() {
        env.publish_with(payload.clone(), |p| p.with_message_id(format!("case-{i}").into()))
            .await;
    }
    let dead = env
        .take(&env.topology.dead_letter_queue.clone(), cases.len(), WAIT)
        .await;
    for delivery in &dead {
        let id = delivery
            .properties
            .message_id()
            .as_ref()
            .expect("original message_id kept")
            .to_string();
        let index: usize = id.trim_start_matches("case-").parse().expect("case index");
        let (reason, payload) = &cases[index];
        assert_eq!(
            header(delivery, dead_letter::KIND).as_deref(),
            Some(*reason),
            "case {index}"
        );
        assert_eq!(&delivery.data, payload, "body byte-identical (case {index})");
        let detail = header(delivery, dead_letter::DETAIL).expect("detail");
        assert!(!detail.contains("ada@example.com"), "detail must not leak values");
        assert_eq!(header(delivery, dead_letter::ATTEMPTS).as_deref(), Some("0"));
        assert!(header(delivery, dead_letter::FAILED_AT).is_some());
    }
    let audits = env.take(&env.topology.audit_queue.clone(), cases.len(), WAIT).await;
    for delivery in &audits {
        let record: serde_json::Value = serde_json::from_slice(&delivery.data).expect("audit JSON");
        assert_eq!(record["outcome"], "rejected");
        assert_eq!(record["validation_passed"], false);
        let text = String::from_utf8_lossy(&delivery.data);
        assert!(
            !text.contains("ada@example.com") && !text.contains("Ada") && !text.contains("guest_bad-0"),
            "audit leaks: {text}"
        );
    }
    env.assert_empty(&events_queue, Duration::from_millis(300)).await;
    assert_eq!(env.sim.stats().api_requests, 0, "invalid requests never reach Genesys");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_genesys_400_is_dead_lettered_as_genesys_rejected_with_its_context_id() {
    let (env, events_queue) = TestEnv::start_with_faults(Faults {
        reject_status: Some(400),
        ..Default::default()
    })
    .await;
    env.publish(body(&valid_request("rejected-1"))).await;
    let dead = env.take(&env.topology.dead_letter_queue.clone(), 1, WAIT).await;
    assert_eq!(header(&dead[0], dead_letter::KIND).as_deref(), Some("genesys_rejected"));
    let context_id = header(&dead[0], dead_letter::CONTEXT_ID).expect("x-genesys-context-id");
    assert!(!context_id.is_empty());
    // Status, code and contextId; Genesys's free text stays out (a 400 can echo request values).
    let detail = header(&dead[0], dead_letter::DETAIL).expect("x-error-detail");
    assert!(
        detail.contains("HTTP 400") && detail.contains("bad.request") && detail.contains(&context_id),
        "{detail}"
    );
    assert!(!detail.contains("could not be understood"), "{detail}");
    assert_eq!(
        header(&dead[0], dead_letter::ATTEMPTS).as_deref(),
        Some("1"),
        "a 400 is not retried"
    );
    env.assert_empty(&events_queue, Duration::from_millis(200)).await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_second_genesys_outage_delays_but_loses_nothing() {
    let (env, events_queue) = TestEnv::start_with_faults(Faults {
        outage_secs: Some(2.0),
        ..Default::default()
    })
    .await;
    for i in 0..20 {
        env.publish(body(&valid_request(&format!("outage-{i}")))).await;
    }
    let events = env.take(&events_queue, 20, WAIT).await;
    assert_eq!(events.len(), 20);
    assert!(env.sim.stats().server_errors > 0, "the outage was seen");
    assert_eq!(
        env.message_count(&env.topology.dead_letter_queue).await,
        0,
        "nothing dead-lettered"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_with_reply_to_gets_a_reply_with_its_correlation_id() {
    let mut env = TestEnv::start().await;
    // A CRM queue must be bound, or the event is unroutable and the one reply says `failed`.
    env.bind_events().await;
    let reply_name = env.private_queue().await;
    env.publish_with(body(&valid_request("reply-1")), |p: BasicProperties| {
        p.with_reply_to(reply_name.as_str().into())
            .with_correlation_id("corr-42".into())
    })
    .await;
    let replies = env.take(&reply_name, 1, WAIT).await;
    assert_eq!(
        replies[0]
            .properties
            .correlation_id()
            .as_ref()
            .map(|c| c.to_string())
            .as_deref(),
        Some("corr-42")
    );
    let reply: serde_json::Value = serde_json::from_slice(&replies[0].data).expect("reply JSON");
    assert_eq!(reply["outcome"], "created");
    assert_eq!(reply["request_id"], "reply-1");
    assert!(reply["session"]["conversation_id"].is_string());
    env.cleanup().await;
}

/// `AMQP_CRM_QUEUE`: with no CRM consumer of its own (the compose stack), the worker declares and
/// binds a queue, so events are routed instead of every request ending as `event_unroutable`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_crm_queue_is_declared_bound_and_receives_the_events() {
    let mut env = TestEnv::start_with(EnvOptions {
        start_worker: false,
        ..Default::default()
    })
    .await;
    let crm_queue = format!("{}crm.session-created", env.topology.request_exchange);
    env.delete_later(&crm_queue);
    env.settings.crm_queue = Some(crm_queue.clone());
    env.start_worker().await;
    env.publish(body(&valid_request("crm-queue-1"))).await;
    let events = env.take(&crm_queue, 1, WAIT).await;
    let event: SessionCreatedEvent = serde_json::from_slice(&events[0].data).expect("event");
    assert_eq!(event.request_id, "crm-queue-1");
    assert_eq!(env.message_count(&env.topology.dead_letter_queue.clone()).await, 0);
    env.cleanup().await;
}

/// Waits until `queue` exists (it may have been deleted) and holds at least `n` messages.
async fn wait_until_it_holds(env: &TestEnv, queue: &str, n: u32) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while env.count_if_exists(queue).await.is_none_or(|count| count < n) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{queue} never held {n} messages"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `(request_id, outcome)` of each audit record.
fn audit_outcomes(audits: &[lapin::message::Delivery]) -> Vec<(String, String)> {
    audits
        .iter()
        .map(|d| {
            let record: serde_json::Value = serde_json::from_slice(&d.data).expect("audit JSON");
            let field = |name: &str| record[name].as_str().unwrap_or_default().to_string();
            (field("request_id"), field("outcome"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_audit_or_dead_letter_queue_is_declared_again_and_no_record_is_confirmed_into_nowhere() {
    let mut env = TestEnv::start_with(EnvOptions {
        start_worker: false,
        ..Default::default()
    })
    .await;
    let events_queue = env.bind_events().await;
    env.start_worker().await;
    // An operator deletes the worker's own queues while it runs (say, to recreate them with
    // other arguments). Without a queue bound, the broker would confirm a record it dropped.
    let (dead_queue, audit_queue) = (env.topology.dead_letter_queue.clone(), env.topology.audit_queue.clone());
    for queue in [&dead_queue, &audit_queue] {
        env.delete_queue(queue).await;
    }
    env.publish_with(b"not json".to_vec(), |p| p.with_message_id("gone-dead-1".into()))
        .await;
    env.publish(body(&valid_request("gone-audit-1"))).await;

    // The records came back unroutable: the requests were requeued, the worker's session
    // restarted and declared its queues again, and the redelivered requests got their records.
    wait_until_it_holds(&env, &dead_queue, 1).await;
    wait_until_it_holds(&env, &audit_queue, 2).await;
    let dead = env.take(&dead_queue, 1, WAIT).await;
    assert_eq!(
        dead[0].properties.message_id().as_ref().map(|m| m.as_str()),
        Some("gone-dead-1")
    );
    assert_eq!(header(&dead[0], dead_letter::KIND).as_deref(), Some("malformed"));
    let audits = env.take(&audit_queue, 2, WAIT).await;
    let mut outcomes = audit_outcomes(&audits);
    outcomes.sort();
    assert_eq!(
        outcomes,
        [
            ("gone-audit-1".to_string(), "created".to_string()),
            ("gone-dead-1".to_string(), "rejected".to_string())
        ]
    );
    // The created request's event went out before its audit record was returned, and again
    // when it was redone: a duplicate, recognisable by its request id.
    let events = env.take(&events_queue, 1, WAIT).await;
    assert_eq!(
        events[0].properties.correlation_id().as_ref().map(|c| c.as_str()),
        Some("gone-audit-1")
    );
    assert_eq!(env.message_count(&env.topology.request_queue.clone()).await, 0);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn returned_audit_records_of_many_requests_are_never_taken_for_unroutable_events() {
    let mut env = TestEnv::start_with(EnvOptions {
        start_worker: false,
        ..Default::default()
    })
    .await;
    let events_queue = env.bind_events().await;
    let audit_queue = env.topology.audit_queue.clone();
    env.start_worker().await;
    // Deleted under the running worker (its start declared it), then many requests at once:
    // events and audit records of many requests on the lanes together, the audit records returned.
    env.delete_queue(&audit_queue).await;
    let ids: Vec<String> = (0..60).map(|i| format!("gone-audit-many-{i}")).collect();
    let requests = ids
        .iter()
        .map(|id| {
            guest_session_worker::amqp::request_message(&env.topology, body(&valid_request(id)), Default::default())
        })
        .collect();
    env.publisher.publish_all(requests).await.expect("requests confirmed");
    wait_until_it_holds(&env, &audit_queue, 60).await;
    let audits = env.take(&audit_queue, 60, WAIT).await;
    let created: HashSet<String> = audit_outcomes(&audits)
        .into_iter()
        .filter_map(|(id, outcome)| (outcome == "created").then_some(id))
        .collect();
    assert_eq!(created, ids.iter().cloned().collect::<HashSet<_>>());
    assert_eq!(
        env.message_count(&env.topology.dead_letter_queue.clone()).await,
        0,
        "a returned audit record was taken for an unroutable event"
    );
    // Redone after the returns: more events than requests.
    let events = env.message_count(&events_queue).await;
    assert!(
        events > 60,
        "{events} events: no audit record came back, the test proved nothing"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_chat_jwt_goes_to_the_reply_and_never_to_the_crm_event() {
    let mut env = TestEnv::start_with(EnvOptions {
        start_worker: false,
        ..Default::default()
    })
    .await;
    let events_queue = env.bind_events().await;
    let c = &env.sim_config;
    env.genesys_config = guest_session_worker::genesys::GenesysConfig {
        session_api: guest_session_worker::genesys::SessionApiKind::GuestChat,
        organization_id: Some(c.organization_id.clone()),
        deployment_id: Some(c.deployment_id.clone()),
        default_queue: Some("Web Support".into()),
        ..env.genesys_config.clone()
    };
    env.start_worker().await;
    let reply_name = env.private_queue().await;
    env.publish_with(body(&valid_request("chat-1")), |p| {
        p.with_reply_to(reply_name.as_str().into())
    })
    .await;
    let replies = env.take(&reply_name, 1, WAIT).await;
    let reply: serde_json::Value = serde_json::from_slice(&replies[0].data).expect("reply JSON");
    let jwt = reply["session"]["jwt"]
        .as_str()
        .expect("the guest gets its JWT")
        .to_string();
    assert_eq!(
        replies[0]
            .properties
            .correlation_id()
            .as_ref()
            .map(|c| c.to_string())
            .as_deref(),
        Some("chat-1")
    );
    let events = env.take(&events_queue, 1, WAIT).await;
    let text = String::from_utf8_lossy(&events[0].data);
    assert!(
        !text.contains(&jwt) && !text.contains("jwt"),
        "CRM event carries no JWT: {text}"
    );
    let event: SessionCreatedEvent = serde_json::from_slice(&events[0].data).expect("event");
    assert_eq!(event.session.api, "guest_chat");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_dead_letters_are_processed_once_the_cause_is_gone() {
    let (env, events_queue) = TestEnv::start_with_faults(Faults {
        reject_status: Some(422),
        ..Default::default()
    })
    .await;
    for i in 0..3 {
        env.publish(body(&valid_request(&format!("replay-{i}")))).await;
    }
    // Wait until all three are dead letters (without consuming them).
    let deadline = tokio::time::Instant::now() + WAIT;
    while env.message_count(&env.topology.dead_letter_queue).await < 3 {
        assert!(tokio::time::Instant::now() < deadline, "dead letters did not arrive");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    env.sim.set_faults(Faults {
        reject_status: Some(0),
        ..Default::default()
    });

    let output = env
        .cli(&["dead-letters", "replay", "--reason", "genesys_rejected"], &[])
        .await;
    assert!(
        output.status.success(),
        "replay failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("replayed 3"));

    let events = env.take(&events_queue, 3, WAIT).await;
    assert_eq!(events.len(), 3);
    assert_eq!(env.message_count(&env.topology.dead_letter_queue).await, 0);
    env.cleanup().await;
}

/// A replay while a worker still refuses the requests must stop after what the dead queue held
/// when it started: each refused copy comes straight back to the dead queue, and a replay that
/// read until the queue was empty would chase it (and race the worker's in-flight duplicate check).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_of_still_invalid_dead_letters_replays_each_once() {
    let env = TestEnv::start().await;
    for i in 0..3 {
        env.publish(format!("not json {i}").into_bytes()).await;
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    while env.message_count(&env.topology.dead_letter_queue).await < 3 {
        assert!(tokio::time::Instant::now() < deadline, "dead letters did not arrive");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let output = env.cli(&["dead-letters", "replay", "--reason", "malformed"], &[]).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "replay failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("replayed 3 "), "{stdout}");

    // The worker refuses them again: all three are back, none lost, none doubled.
    let deadline = tokio::time::Instant::now() + WAIT;
    while env.message_count(&env.topology.dead_letter_queue).await < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "replayed dead letters did not come back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(env.message_count(&env.topology.dead_letter_queue).await, 3);
    env.cleanup().await;
}

/// `enqueue` declares the request queue too, so it must declare it with the worker's
/// `AMQP_DELIVERY_LIMIT`, or the broker refuses the declaration (PRECONDITION_FAILED).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_declares_the_request_queue_with_the_configured_delivery_limit() {
    let env = TestEnv::start_with(EnvOptions {
        start_worker: false,
        ..Default::default()
    })
    .await;
    // The harness declared the queue with the default limit; a different one is refused...
    let refused = env
        .cli(&["enqueue", "--sample", "1"], &[("AMQP_DELIVERY_LIMIT", "7")])
        .await;
    assert!(!refused.status.success(), "a different delivery limit must be refused");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("x-delivery-limit"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    // ...and the matching one is honoured.
    let default_limit = guest_session_worker::amqp::topology::DEFAULT_DELIVERY_LIMIT.to_string();
    let accepted = env
        .cli(
            &["enqueue", "--sample", "1"],
            &[("AMQP_DELIVERY_LIMIT", &default_limit)],
        )
        .await;
    assert!(
        accepted.status.success(),
        "{}",
        String::from_utf8_lossy(&accepted.stderr)
    );
    assert_eq!(env.message_count(&env.topology.request_queue).await, 1);
    env.cleanup().await;
}

/// DESIGN names the dead-letter and audit queues without saying what kind they are; an operator
/// who created them beforehand as classic queues (the default of most clients) must not find the
/// worker refusing to start. Any other difference is refused: a quorum dead queue without the
/// worker's delivery limit would drop dead letters. The request queue's kind is the contract's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_and_audit_queues_created_beforehand_as_classic_queues_are_used_as_they_are() {
    use guest_session_worker::amqp::{
        Outgoing, Publisher, connect,
        topology::{Topology, inspect, is_precondition_failed, quorum},
    };
    use lapin::{
        options::QueueDeclareOptions,
        types::{AMQPValue, FieldTable, LongString},
    };

    let url = amqp_url().await;
    let connection = connect(&url, "it-classic-queues").await.expect("broker reachable");
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let mut classic = FieldTable::default();
    classic.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("classic")),
    );
    let channel = connection.create_channel().await.expect("channel");

    let topology = Topology::new(&unique_prefix());
    let mut leftovers = crate::leftovers::Leftovers::new(&url, &topology);
    for queue in [&topology.dead_letter_queue, &topology.audit_queue] {
        channel
            .queue_declare(queue.as_str().into(), durable, FieldTable::default())
            .await
            .expect("a classic queue");
    }
    topology
        .declare(&connection)
        .await
        .expect("the worker's declaration accepts them");
    topology
        .declare(&connection)
        .await
        .expect("and again, as on every reconnect");
    // Still classic, and bound: an audit record and a dead letter reach them.
    for queue in [&topology.dead_letter_queue, &topology.audit_queue] {
        channel
            .queue_declare(queue.as_str().into(), durable, classic.clone())
            .await
            .expect("still a classic queue");
    }
    let publisher = Publisher::open(&connection, 1).await.expect("publisher");
    for exchange in [&topology.dead_letter_exchange, &topology.audit_exchange] {
        publisher
            .publish(Outgoing {
                exchange: exchange.clone(),
                routing_key: String::new(),
                payload: b"{}".to_vec(),
                properties: BasicProperties::default(),
                mandatory: true,
            })
            .await
            .expect("routed to the classic queue");
    }
    for queue in [&topology.dead_letter_queue, &topology.audit_queue] {
        let depth = inspect(&channel, queue).await.expect("queue").message_count();
        assert_eq!(depth, 1, "{queue}");
    }
    leftovers.delete_now(&channel).await;

    // A quorum dead queue without the delivery limit is refused, as is a classic request queue.
    let no_limit = Topology::new(&unique_prefix());
    let mut leftovers = crate::leftovers::Leftovers::new(&url, &no_limit);
    channel
        .queue_declare(no_limit.dead_letter_queue.as_str().into(), durable, quorum())
        .await
        .expect("a quorum queue without x-delivery-limit");
    let refused = no_limit.declare(&connection).await.expect_err("refused");
    assert!(is_precondition_failed(&refused), "{refused}");
    let channel = connection.create_channel().await.expect("channel");
    leftovers.delete_now(&channel).await;

    let classic_requests = Topology::new(&unique_prefix());
    let mut leftovers = crate::leftovers::Leftovers::new(&url, &classic_requests);
    channel
        .queue_declare(
            classic_requests.request_queue.as_str().into(),
            durable,
            FieldTable::default(),
        )
        .await
        .expect("a classic queue");
    let refused = classic_requests
        .declare(&connection)
        .await
        .expect_err("a classic request queue is refused");
    assert!(is_precondition_failed(&refused), "{refused}");
    let channel = connection.create_channel().await.expect("channel");
    leftovers.delete_now(&channel).await;
    let _ = connection.close(200, "done".into()).await;
}

/// `dead-letters list` names each dead letter by its request id, also when the upstream app
/// published without a `message_id` (most clients' default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_list_names_a_dead_letter_without_message_id_by_its_request_id() {
    let env = TestEnv::start().await;
    let mut request = valid_request("no-message-id-1");
    request["consent"]["data_processing"] = serde_json::json!(false);
    env.publish_with(body(&request), |p| {
        BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_headers(p.headers().clone().unwrap_or_default())
    })
    .await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while env.message_count(&env.topology.dead_letter_queue).await < 1 {
        assert!(tokio::time::Instant::now() < deadline, "the dead letter did not arrive");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let output = env.cli(&["dead-letters", "list"], &[]).await;
    let shown = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let line = shown
        .lines()
        .find(|line| line.contains("consent_missing"))
        .unwrap_or_else(|| panic!("no consent_missing line in:\n{shown}"));
    assert!(line.starts_with("no-message-id-1 "), "{line}");
    env.cleanup().await;
}
