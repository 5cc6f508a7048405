//! A 60-second Genesys outage (every API call answered 503): nothing is dead-lettered while the
//! retry budget lasts, and processing resumes within 5 s of the recovery.
//!
//! The worker runs in process with `max_backoff` = 4 s: the time from the recovery to the next
//! attempt is bounded by the longest backoff, and the default (`GenesysConfig::DEFAULT_MAX_BACKOFF`)
//! is longer than the 5 s this test asks for. No env var sets it yet (see the resilience notes).

use std::time::Duration;

use guest_session_worker::sim::Faults;
use tokio::time::Instant;

use crate::harness::*;

const OUTAGE: Duration = Duration::from_secs(60);
const BEFORE: usize = 10;
const DURING: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_60_s_genesys_outage_dead_letters_nothing_and_processing_resumes_within_5_s() {
    let world = World::start(&shared_amqp_url(), fast_sim(10)).await;
    let (worker, _readiness) = world
        .start_worker_in_process(8, |config| {
            config.retry_budget = Duration::from_secs(180);
            config.initial_backoff = Duration::from_millis(200);
            config.max_backoff = Duration::from_secs(4);
        })
        .await;
    let before = request_ids("outage-before", BEFORE);
    world.publish_requests(&before).await;
    assert!(
        eventually(Duration::from_secs(30), || async {
            world.settled().await as usize >= BEFORE
        })
        .await
    );

    world.sim.set_faults(Faults {
        outage_secs: Some(OUTAGE.as_secs_f64()),
        ..Faults::default()
    });
    let recovery = Instant::now() + OUTAGE;
    let during = request_ids("outage-during", DURING);
    world.publish_requests(&during).await;

    // Until just before the recovery: nothing created, nothing dead-lettered.
    tokio::time::sleep_until(recovery - Duration::from_millis(500)).await;
    assert_eq!(
        world.count(&world.topology.dead_letter_queue).await,
        0,
        "dead letters during the outage"
    );
    assert_eq!(
        world.count(&world.events_queue).await as usize,
        BEFORE,
        "events during the outage"
    );
    assert!(world.sim.stats().server_errors > 0, "the outage was hit");

    let resumed = eventually(Duration::from_secs(30), || async {
        world.count(&world.events_queue).await as usize > BEFORE
    })
    .await;
    assert!(resumed, "no session created after the outage");
    let after = Instant::now().saturating_duration_since(recovery);
    eprintln!("Genesys outage: first session {after:?} after the recovery");
    assert!(
        after <= Duration::from_secs(5),
        "processing resumed {after:?} after the recovery"
    );

    assert!(
        eventually(Duration::from_secs(60), || async {
            world.count(&world.events_queue).await as usize >= BEFORE + DURING
        })
        .await
    );
    worker.shutdown().await;
    let outcomes = world.outcomes().await;
    let all: Vec<String> = before.into_iter().chain(during).collect();
    assert!(outcomes.missing(&all).is_empty(), "{:?}", outcomes.missing(&all));
    assert_eq!(outcomes.dead_letter_count(), 0);
    assert!(outcomes.duplicated().is_empty(), "{:?}", outcomes.duplicated());
    world.cleanup().await;
}
