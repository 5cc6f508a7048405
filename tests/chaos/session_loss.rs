//! Losing part of a session without losing the connection: the broker cancels the consumer (its
//! queue was deleted), or a publisher channel is closed by a channel error (its exchange was
//! deleted). Either way the worker builds a new session, which declares the topology again, and
//! goes on processing.

use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::{ExchangeKind, types::FieldTable};

use crate::harness::*;

/// True when `exchange` exists (a passive declare succeeds).
async fn exchange_exists(world: &World, exchange: &str) -> bool {
    let connection = guest_session_worker::amqp::connect(&world.url, "chaos-probe")
        .await
        .expect("broker");
    let channel = connection.create_channel().await.expect("channel");
    let exists = channel
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .is_ok();
    let _ = connection.close(200, "probed".into()).await;
    exists
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_queue_or_exchange_makes_the_worker_rebuild_its_session() {
    let mut world = World::start(&shared_amqp_url(), fast_sim(0)).await;
    let (worker, readiness) = world.start_worker_in_process(4, |_| {}).await;
    world.publish_requests(&request_ids("before", 5)).await;
    assert!(eventually(Duration::from_secs(20), || async { world.settled().await >= 5 }).await);

    // 1. The request queue is deleted under the worker: the broker cancels its consumer.
    world
        .channel()
        .queue_delete(
            world.topology.request_queue.as_str().into(),
            QueueDeleteOptions::default(),
        )
        .await
        .expect("delete the request queue");
    // Only a new session declares it again.
    let redeclared = eventually(Duration::from_secs(15), || async {
        readiness.is_ready() && world.queue_exists(&world.topology.request_queue).await
    })
    .await;
    assert!(
        redeclared,
        "the worker did not rebuild its session after the consumer cancel"
    );
    world.publish_requests(&request_ids("after-cancel", 5)).await;
    assert!(eventually(Duration::from_secs(20), || async { world.settled().await >= 10 }).await);

    // 2. The event exchange is deleted: the next event publish is refused with a channel error
    // (404), which closes that publisher channel.
    world
        .channel()
        .exchange_delete(
            world.topology.crm_exchange.as_str().into(),
            ExchangeDeleteOptions::default(),
        )
        .await
        .expect("delete the CRM exchange");
    world.publish_requests(&request_ids("no-exchange", 1)).await;
    let redeclared = eventually(Duration::from_secs(15), || async {
        readiness.is_ready() && exchange_exists(&world, &world.topology.crm_exchange).await
    })
    .await;
    assert!(
        redeclared,
        "the worker did not rebuild its session after a publisher channel error"
    );
    world.rebind_events().await;
    // The request whose event was refused is not lost: redelivered, it ends as an event, or as an
    // `event_unroutable` dead letter if it ran before the CRM queue was bound again.
    let after = request_ids("after-channel-error", 5);
    world.publish_requests(&after).await;
    assert!(eventually(Duration::from_secs(20), || async { world.settled().await >= 16 }).await);
    worker.shutdown().await;

    let outcomes = world.outcomes().await;
    assert!(
        outcomes.missing(&request_ids("no-exchange", 1)).is_empty(),
        "{outcomes:?}"
    );
    assert!(outcomes.missing(&after).is_empty(), "{outcomes:?}");
    assert!(
        outcomes
            .dead
            .values()
            .flatten()
            .all(|reason| reason == "event_unroutable"),
        "{:?}",
        outcomes.dead
    );
    world.reconnect().await;
    world.cleanup().await;
}
