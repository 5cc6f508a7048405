//! Copies of one request in flight together in one replica are processed once; a copy that is not
//! identical waits for the first and is recognisable (same conversation).

use std::time::Duration;

use guest_session_worker::amqp::request_message;
use lapin::types::FieldTable;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_in_flight_together_are_processed_once() {
    // A slow Genesys keeps the first copy in flight while the others arrive.
    let world = World::start(&shared_amqp_url(), fast_sim(500)).await;
    let (worker, _readiness) = world.start_worker_in_process(8, |_| {}).await;
    for _ in 0..4 {
        world.publish_body(valid_request("dup-1")).await;
    }
    // Same request id, another body (an upstream app that re-serialised its request).
    let mut variant: serde_json::Value = serde_json::from_slice(&valid_request("dup-1")).expect("json");
    variant["display_name"] = serde_json::json!("Ada L.");
    world.publish_body(serde_json::to_vec(&variant).expect("json")).await;

    let settled = eventually(Duration::from_secs(30), || async {
        world.settled().await >= 2 && world.count(&world.topology.request_queue).await == 0
    })
    .await;
    assert!(settled, "the copies were not settled");
    // Give a wrongly processed copy the time to show up.
    tokio::time::sleep(Duration::from_secs(2)).await;
    worker.shutdown().await;

    let outcomes = world.outcomes().await;
    let conversations = outcomes.events.get("dup-1").cloned().unwrap_or_default();
    assert_eq!(
        conversations.len(),
        2,
        "one event for the four identical copies, one for the variant: {conversations:?}"
    );
    assert_eq!(conversations[0], conversations[1], "the same conversation");
    let stats = world.sim.stats();
    assert_eq!(stats.sessions_created, 1);
    assert_eq!(stats.duplicates, 1, "only the variant reached Genesys a second time");
    assert_eq!(world.count(&world.topology.request_queue).await, 0, "every copy acked");
    world.cleanup().await;
}

/// A copy settled by its first copy is still answered for itself: an upstream app that publishes
/// a request again (no confirm in time) often does so from a new connection with a new reply
/// queue, and waits there. It gets its own reply, from the first copy's session, and its own
/// audit record; Genesys and the CRM still see the request once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_settled_by_its_first_copy_gets_its_own_reply_and_audit_record() {
    let world = World::start(&shared_amqp_url(), fast_sim(300)).await;
    let mut asked = Vec::new();
    for copy in ["first", "second"] {
        let queue = world.reply_queue().await;
        let correlation_id = format!("corr-{copy}");
        let mut message = request_message(&world.topology, valid_request("dup-reply-1"), FieldTable::default());
        message.properties = message
            .properties
            .with_reply_to(queue.as_str().into())
            .with_correlation_id(correlation_id.as_str().into());
        world.publish(message).await;
        asked.push((queue, correlation_id));
    }
    // Both copies are queued before the worker starts, so its first prefetch holds both: they
    // are in flight together however slow the machine.
    let (worker, _readiness) = world.start_worker_in_process(8, |_| {}).await;
    let answered = eventually(Duration::from_secs(30), || async {
        for (queue, _) in &asked {
            if world.count(queue).await == 0 {
                return false;
            }
        }
        world.count(&world.topology.request_queue).await == 0
    })
    .await;
    assert!(answered, "a copy got no reply");
    worker.shutdown().await;

    let mut conversations = Vec::new();
    for (queue, correlation_id) in &asked {
        let replies = world.read_all(queue).await;
        assert_eq!(replies.len(), 1, "one reply to {correlation_id}");
        let properties = &replies[0].properties;
        assert_eq!(
            properties.correlation_id().as_ref().map(|c| c.as_str()),
            Some(correlation_id.as_str())
        );
        let reply: serde_json::Value = serde_json::from_slice(&replies[0].data).expect("reply JSON");
        assert_eq!(reply["outcome"], "created", "{reply}");
        assert_eq!(reply["request_id"], "dup-reply-1");
        conversations.push(
            reply["session"]["conversation_id"]
                .as_str()
                .expect("conversation")
                .to_string(),
        );
    }
    assert_eq!(conversations[0], conversations[1], "both replies name the one session");

    let audits = world.read_all(&world.topology.audit_queue.clone()).await;
    let records: Vec<serde_json::Value> = audits
        .iter()
        .map(|a| serde_json::from_slice(&a.data).expect("audit JSON"))
        .collect();
    assert_eq!(records.len(), 2, "one audit record per copy: {records:?}");
    for record in &records {
        assert_eq!(record["request_id"], "dup-reply-1");
        assert_eq!(record["outcome"], "created");
        assert_eq!(record["attempts"], 1);
    }
    let outcomes = world.outcomes().await;
    assert_eq!(outcomes.events.get("dup-reply-1").map(Vec::len), Some(1), "one event");
    let stats = world.sim.stats();
    assert_eq!(
        (stats.sessions_created, stats.duplicates),
        (1, 0),
        "Genesys saw the request once"
    );
    world.cleanup().await;
}

/// A dead letter is not shared with the copies in flight alongside: an operator may be draining
/// the dead queue at that very moment, and acking a copy on the strength of a dead letter that
/// is already gone would lose the request. Each copy gets its own, one after the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_of_a_dead_lettered_request_each_get_their_own_dead_letter_one_at_a_time() {
    const LATENCY_MS: u64 = 300;
    let world = World::start(&shared_amqp_url(), fast_sim(LATENCY_MS)).await;
    world.sim.set_faults(guest_session_worker::sim::Faults {
        reject_status: Some(400),
        ..Default::default()
    });
    let (worker, _readiness) = world.start_worker_in_process(8, |_| {}).await;
    let started = std::time::Instant::now();
    for _ in 0..3 {
        world.publish_body(valid_request("dup-dead-1")).await;
    }
    let settled = eventually(Duration::from_secs(30), || async {
        world.count(&world.topology.dead_letter_queue).await >= 3
            && world.count(&world.topology.request_queue).await == 0
    })
    .await;
    assert!(settled, "not every copy was dead-lettered");
    // Never two Genesys calls for one messageId at once: the copies ran after each other.
    assert!(
        started.elapsed() >= Duration::from_millis(3 * LATENCY_MS),
        "the copies reached Genesys together"
    );
    worker.shutdown().await;

    let outcomes = world.outcomes().await;
    assert_eq!(outcomes.dead.get("dup-dead-1").map(Vec::len), Some(3), "{outcomes:?}");
    assert!(outcomes.events.is_empty());
    assert_eq!(world.sim.stats().rejected, 3, "each copy asked Genesys itself");
    world.cleanup().await;
}
