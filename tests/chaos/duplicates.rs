//! Copies of one request in flight together in one replica are processed once; a copy that is not
//! identical waits for the first and is recognisable (same conversation).

use std::time::Duration;

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
