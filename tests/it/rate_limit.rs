//! Issue 5 as an operator sees it: while Genesys throttles us, requests wait in the queue instead
//! of burning their retry budget into the dead-letter queue.

use std::time::Duration;

use guest_session_worker::sim::{Faults, Storm};

use crate::helpers::{EnvOptions, TestEnv, body, valid_request};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_pause_keeps_new_requests_in_the_queue_instead_of_dead_lettering_them() {
    let mut env = TestEnv::start_with(EnvOptions {
        concurrency: 2,
        retry_budget: Duration::from_secs(2),
        start_worker: false,
        ..EnvOptions::default()
    })
    .await;
    let events = env.bind_events().await;
    // Every call is answered 429 with `Retry-After: 8` for 7 s: far longer than a request's 2 s
    // retry budget.
    env.sim.set_faults(Faults {
        storm: Some(Storm {
            retry_after_secs: 8,
            duration_secs: 7.0,
        }),
        ..Faults::default()
    });
    for i in 0..20 {
        env.publish(body(&valid_request(&format!("backpressure-{i}")))).await;
    }
    env.start_worker().await;

    // The two requests in flight when the 429 came cannot wait 8 s within 2 s: dead letters. The
    // other 18 stayed in the queue during the pause (the worker took no new delivery), so they
    // were created after it, within their own budgets.
    let created = env.take(&events, 18, Duration::from_secs(60)).await;
    assert_eq!(created.len(), 18);
    env.assert_empty(&events, Duration::from_millis(300)).await;
    let dead = env.message_count(&env.topology.dead_letter_queue.clone()).await;
    assert_eq!(dead, 2, "only the requests in flight at the 429 are dead-lettered");
    // One call per request in flight, then a single probe after the pause.
    let stats = env.sim.stats();
    assert!(stats.rate_limited <= 3, "{stats:?}");
    env.cleanup().await;
}
