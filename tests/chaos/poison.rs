//! Poison messages: a request that is returned to the queue again and again (a consumer that
//! crashes on it, or a publish that always fails) is dead-lettered by the broker once it exceeds
//! the quorum queue's `x-delivery-limit`, and `dead-letters list` shows it as `delivery_limit`.

use std::time::Duration;

use futures_util::StreamExt;
use guest_session_worker::amqp::{connect, headers, topology::DEFAULT_DELIVERY_LIMIT};
use lapin::{
    options::{BasicConsumeOptions, BasicNackOptions, BasicQosOptions},
    types::FieldTable,
};

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_requeued_past_the_delivery_limit_is_dead_lettered_as_delivery_limit() {
    let world = World::start(&shared_amqp_url(), fast_sim(0)).await;
    world.publish_body(valid_request("poison-1")).await;

    // Stand in for a worker that never gets to settle this message: take it and return it, over
    // and over, until the broker stops delivering it.
    let connection = connect(&world.url, "chaos-poison").await.expect("broker");
    let channel = connection.create_channel().await.expect("channel");
    channel.basic_qos(1, BasicQosOptions::default()).await.expect("qos");
    let mut consumer = channel
        .basic_consume(
            world.topology.request_queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let mut deliveries = 0u32;
    while let Ok(Some(Ok(delivery))) = tokio::time::timeout(Duration::from_secs(3), consumer.next()).await {
        deliveries += 1;
        assert!(deliveries <= DEFAULT_DELIVERY_LIMIT + 1, "delivered past the limit");
        delivery
            .acker
            .nack(BasicNackOptions {
                requeue: true,
                multiple: false,
            })
            .await
            .expect("nack");
    }
    let _ = connection.close(200, "done".into()).await;
    assert_eq!(
        deliveries,
        DEFAULT_DELIVERY_LIMIT + 1,
        "the first delivery plus one per allowed return"
    );

    assert!(
        eventually(Duration::from_secs(10), || async {
            world.count(&world.topology.dead_letter_queue).await == 1
        })
        .await,
        "the poison message is dead-lettered by the broker"
    );

    // The operator's view: `dead-letters list` names the reason (and leaves the message there).
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_guest-session-worker"))
        .args(["dead-letters", "list"])
        .env("AMQP_URL", &world.url)
        .env("AMQP_NAME_PREFIX", &world.prefix)
        .output()
        .await
        .expect("dead-letters list runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let line = stdout
        .lines()
        .find(|line| line.contains("poison-1"))
        .unwrap_or_else(|| panic!("poison-1 listed:\n{stdout}"));
    assert!(line.contains("delivery_limit"), "{line}");

    let dead = world.read_all(&world.topology.dead_letter_queue.clone()).await;
    assert_eq!(dead.len(), 1, "still there after listing");
    let table = dead[0].properties.headers().as_ref();
    assert_eq!(
        headers::get_str(table, "x-first-death-reason").as_deref(),
        Some("delivery_limit")
    );
    assert_eq!(
        headers::get_str(table, "x-first-death-queue").as_deref(),
        Some(world.topology.request_queue.as_str())
    );
    assert_eq!(dead[0].data, valid_request("poison-1"), "the body is unchanged");
    world.cleanup().await;
}
