//! kill -9 the worker process three times during a 2,000-request load, restarting it each time.

use std::time::Duration;

use crate::{HEAVY, harness::*};

const REQUESTS: usize = 2_000;
const CONCURRENCY: usize = 32;
const KILLS: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_ends_with_an_outcome_across_three_kill_9s() {
    let _heavy = HEAVY.lock().await;
    let world = World::start(&shared_amqp_url(), fast_sim(20)).await;
    let ids = request_ids("kill", REQUESTS);
    world.publish_requests(&ids).await;

    let mut worker = world.spawn_worker(CONCURRENCY, 25).await;
    worker.wait_ready(Duration::from_secs(20)).await;
    for kill in 1..=KILLS {
        // Kill while work is certainly in flight: well before the end of the load.
        let threshold = (REQUESTS * kill / (KILLS + 1)) as u32;
        let reached = eventually(Duration::from_secs(120), || async {
            world.settled().await >= threshold
        })
        .await;
        assert!(
            reached,
            "no progress to {threshold} outcomes before kill {kill}; log:\n{}",
            worker.log_tail()
        );
        worker.kill9().await;
        worker = world.spawn_worker(CONCURRENCY, 25).await;
        // Back within seconds: the first connect of a fresh process.
        worker.wait_ready(Duration::from_secs(20)).await;
    }

    world
        .finish_and_stop(worker, REQUESTS, || world.spawn_worker(CONCURRENCY, 25))
        .await;

    let outcomes = world.outcomes().await;
    let missing = outcomes.missing(&ids);
    assert!(
        missing.is_empty(),
        "{} requests without an outcome: {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );

    // At-least-once: only requests unacked at a kill (at most the prefetch per kill: the ones in
    // flight and the finished ones whose coalesced ack had not left yet) may have been processed
    // twice, and a duplicate is recognisable.
    let prefetch = usize::from(guest_session_worker::pipeline::consumer::prefetch_for(CONCURRENCY));
    let bound = prefetch * KILLS;
    let duplicated = outcomes.duplicated();
    let stats = world.sim.stats();
    eprintln!(
        "kill -9 x{KILLS}: {} requests, {} with two outcomes, {} dead letters, simulator: {} created, {} duplicates",
        REQUESTS,
        duplicated.len(),
        outcomes.dead_letter_count(),
        stats.sessions_created,
        stats.duplicates
    );
    assert!(
        duplicated.len() <= bound,
        "{} duplicated outcomes > {bound}",
        duplicated.len()
    );
    assert!(
        stats.duplicates as usize <= bound,
        "{} Genesys duplicates > {bound}",
        stats.duplicates
    );
    assert_eq!(
        stats.sessions_created as usize, REQUESTS,
        "one Genesys conversation per request"
    );
    let conflicting = outcomes.conflicting_conversations();
    assert!(
        conflicting.is_empty(),
        "duplicate events name other conversations: {conflicting:?}"
    );
    // Three kills are fewer than the delivery limit (5): nothing is poison here.
    assert_eq!(outcomes.dead_letter_count(), 0, "dead letters: {:?}", outcomes.dead);
    world.cleanup().await;
}
