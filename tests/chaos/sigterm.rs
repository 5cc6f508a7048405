//! SIGTERM during load: the worker stops taking deliveries, gives in-flight requests the grace
//! period, returns the rest to the queue, and exits 0 within the grace period; nothing is lost and
//! nothing is processed twice.

use std::time::Duration;

use guest_session_worker::sim::Faults;

use crate::{HEAVY, harness::*};

const REQUESTS: usize = 400;
const CONCURRENCY: usize = 16;
const GRACE_SECS: u64 = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_load_exits_0_within_the_grace_period_and_loses_nothing() {
    let _heavy = HEAVY.lock().await;
    let world = World::start(&shared_amqp_url(), fast_sim(50)).await;
    let ids = request_ids("term", REQUESTS);
    world.publish_requests(&ids).await;

    let worker = world.spawn_worker(CONCURRENCY, GRACE_SECS).await;
    worker.wait_ready(Duration::from_secs(20)).await;
    assert!(eventually(Duration::from_secs(60), || async { world.settled().await >= 60 }).await);
    // Genesys goes down: the requests in flight now retry and cannot finish within the grace
    // period, so the shutdown has to hand them back.
    world.sim.set_faults(Faults {
        outage_secs: Some(60.0),
        ..Faults::default()
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (status, took) = worker.terminate(Duration::from_secs(GRACE_SECS + 20)).await;
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
    eprintln!("SIGTERM: exited 0 after {took:?} (grace {GRACE_SECS} s)");
    let grace = Duration::from_secs(GRACE_SECS);
    // It waited for the in-flight requests (lower bound), and not past the grace period (the
    // process's whole shutdown fits in it; a little slack for process exit).
    assert!(
        took >= grace / 2,
        "exited after {took:?}: did not wait for in-flight work"
    );
    assert!(
        took <= grace + Duration::from_millis(1500),
        "exited {took:?} after SIGTERM, grace is {grace:?}"
    );

    // Nothing vanished: every request is either settled or back in the queue (none unacked: the
    // process is gone).
    let accounted = eventually(Duration::from_secs(5), || async {
        world.settled().await + world.count(&world.topology.request_queue).await == REQUESTS as u32
    })
    .await;
    let (settled, waiting) = (world.settled().await, world.count(&world.topology.request_queue).await);
    assert!(accounted, "settled {settled} + queued {waiting} != {REQUESTS}");
    assert!(waiting > 0, "the load was still running at SIGTERM");

    world.sim.set_faults(Faults {
        outage_secs: Some(0.0),
        ..Faults::default()
    });
    let worker = world.spawn_worker(CONCURRENCY, GRACE_SECS).await;
    worker.wait_ready(Duration::from_secs(20)).await;
    let done = eventually(Duration::from_secs(120), || async {
        world.settled().await as usize >= REQUESTS && world.count(&world.topology.request_queue).await == 0
    })
    .await;
    assert!(
        done,
        "the rest was not processed after the restart; log:\n{}",
        worker.log_tail()
    );
    let (status, _) = worker.terminate(Duration::from_secs(GRACE_SECS + 20)).await;
    assert_eq!(status.code(), Some(0));

    let outcomes = world.outcomes().await;
    assert!(outcomes.missing(&ids).is_empty(), "lost: {:?}", outcomes.missing(&ids));
    assert_eq!(outcomes.dead_letter_count(), 0, "dead letters: {:?}", outcomes.dead);
    // A graceful stop leaves no half-done request behind: no duplicate anywhere.
    assert!(
        outcomes.duplicated().is_empty(),
        "duplicated: {:?}",
        outcomes.duplicated()
    );
    assert_eq!(world.sim.stats().duplicates, 0);
    assert_eq!(world.sim.stats().sessions_created as usize, REQUESTS);
    world.cleanup().await;
}
