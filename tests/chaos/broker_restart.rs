//! The broker goes away during load, on a dedicated node (the shared broker is never touched):
//! 1. a restart (`rabbitmqctl stop_app`, `start_app`): the connection is closed by the broker;
//! 2. a freeze (SIGSTOP): the connection stays open but goes silent, which only the missing
//!    heartbeats reveal;
//! 3. a memory alarm: the broker blocks the publishing connection (`connection.blocked`).
//!
//! Each time the worker reports not ready while the broker is away, consumes again within 10 s of
//! its return, and loses nothing.

use std::time::Duration;

use tokio::time::Instant;

use crate::{HEAVY, harness::*, rabbit_node::RabbitNode};

const CONCURRENCY: usize = 16;
/// Seconds; lapin gives up on a connection after two intervals without a frame from the broker.
const HEARTBEAT: u64 = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_heartbeat_loss_and_a_memory_alarm_during_load_lose_nothing_and_consuming_resumes_within_10_s() {
    let _heavy = HEAVY.lock().await;
    let Some(node) = RabbitNode::start().await else {
        eprintln!(
            "SKIPPED broker_restart_heartbeat_loss_and_a_memory_alarm…: rabbitmq-server is not installed here, so no \
             dedicated node can be started (tests never restart the shared broker)"
        );
        return;
    };
    let mut world = World::start(&node.url(), fast_sim(20)).await;
    let mut env = world.worker_env(CONCURRENCY, 10);
    for (key, value) in &mut env {
        if key == "AMQP_URL" {
            value.push_str(&format!("?heartbeat={HEARTBEAT}"));
        }
    }
    let worker = world.spawn_worker_with(&env).await;
    worker.wait_ready(Duration::from_secs(20)).await;

    // 1. Restart.
    let restart_ids = request_ids("restart", 600);
    world.publish_requests(&restart_ids).await;
    assert!(eventually(Duration::from_secs(60), || async { world.settled().await >= 100 }).await);
    node.stop_app().await;
    let unready = eventually(Duration::from_secs(5), || async { !worker.ready().await }).await;
    assert!(unready, "/readyz stayed 200 with the broker stopped");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!worker.ready().await, "ready while the broker is still down");
    node.start_app().await;
    let back = Instant::now();
    let resumed = eventually(Duration::from_secs(10), || worker.ready()).await;
    assert!(
        resumed,
        "not consuming 10 s after the restart; log:\n{}",
        worker.log_tail()
    );
    eprintln!("broker restart: consuming again {:?} after start_app", back.elapsed());
    world.reconnect().await;
    world.wait_finished(&worker, restart_ids.len()).await;

    // 2. Freeze: no error, no close, just silence.
    let freeze_ids = request_ids("freeze", 400);
    publish_and_get_going(&world, &freeze_ids).await;
    node.freeze();
    let frozen = Instant::now();
    // The observer's own connection is as stuck as the worker's: only HTTP to the worker now.
    let unready = eventually(Duration::from_secs(4 * HEARTBEAT + 5), || async {
        !worker.ready().await
    })
    .await;
    if !unready {
        node.thaw();
        panic!("/readyz stayed 200 with the broker frozen; log:\n{}", worker.log_tail());
    }
    eprintln!("frozen broker: not ready after {:?}", frozen.elapsed());
    tokio::time::sleep(Duration::from_secs(1)).await;
    node.thaw();
    let back = Instant::now();
    let resumed = eventually(Duration::from_secs(10), || worker.ready()).await;
    assert!(
        resumed,
        "not consuming 10 s after the thaw; log:\n{}",
        worker.log_tail()
    );
    eprintln!("frozen broker: consuming again {:?} after the thaw", back.elapsed());
    world.reconnect().await;

    // 3. A memory alarm: the connection stays up, but the broker stops reading from every
    //    connection that publishes (`connection.blocked`), so confirms and acks wait.
    let alarm_ids = request_ids("alarm", 300);
    publish_and_get_going(&world, &alarm_ids).await;
    node.memory_alarm(true).await;
    let unready = eventually(Duration::from_secs(10), || async { !worker.ready().await }).await;
    if !unready {
        node.memory_alarm(false).await;
        panic!(
            "/readyz stayed 200 with the connection blocked; log:\n{}",
            worker.log_tail()
        );
    }
    node.memory_alarm(false).await;
    let resumed = eventually(Duration::from_secs(10), || worker.ready()).await;
    assert!(
        resumed,
        "not ready 10 s after the alarm cleared; log:\n{}",
        worker.log_tail()
    );
    world
        .finish_and_stop(worker, restart_ids.len() + freeze_ids.len() + alarm_ids.len(), || {
            world.spawn_worker_with(&env)
        })
        .await;
    let outcomes = world.outcomes().await;
    let all: Vec<String> = restart_ids.into_iter().chain(freeze_ids).chain(alarm_ids).collect();
    let missing = outcomes.missing(&all);
    assert!(missing.is_empty(), "lost: {missing:?}");
    assert_eq!(outcomes.dead_letter_count(), 0, "dead letters: {:?}", outcomes.dead);
    let conflicting = outcomes.conflicting_conversations();
    assert!(conflicting.is_empty(), "{conflicting:?}");
    // Redone: at most what was unacked (the prefetch) in each of the two lost sessions.
    let duplicated = outcomes.duplicated();
    let prefetch = usize::from(guest_session_worker::pipeline::consumer::prefetch_for(CONCURRENCY));
    assert!(duplicated.len() <= 2 * prefetch, "{duplicated:?}");
    world.cleanup().await;
    drop(node);
}

/// Publishes `ids` and waits until the worker has settled 50 of them: the fault then meets load.
async fn publish_and_get_going(world: &World, ids: &[String]) {
    world.publish_requests(ids).await;
    let before = world.settled().await;
    assert!(
        eventually(Duration::from_secs(60), || async {
            world.settled().await >= before + 50
        })
        .await
    );
}
