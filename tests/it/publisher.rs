//! The shared confirm publisher (DESIGN §8): many tasks publishing at once through one channel must
//! each get the broker's answer for *their* message. Publishes alternate between a queue that takes
//! everything and one that refuses everything (`x-overflow: reject-publish` at length 0, so the
//! broker nacks each publish); a confirm handed to the wrong caller shows up as an `Ok` for the
//! refusing queue or a `Nacked` for the accepting one.

use guest_session_worker::amqp::{Outgoing, PublishError, Publisher, connect};
use lapin::{
    BasicProperties,
    options::{QueueDeclareOptions, QueueDeleteOptions},
    types::{AMQPValue, FieldTable},
};

use crate::helpers::{amqp_url, unique_prefix};

const MESSAGES: usize = 4000;

fn message(queue: &str, n: usize) -> Outgoing {
    Outgoing {
        exchange: String::new(),
        routing_key: queue.to_string(),
        payload: format!("{{\"n\":{n}}}").into_bytes(),
        properties: BasicProperties::default(),
        mandatory: false,
    }
}

// A multi-threaded runtime and a task per publish: the calls must really overlap (a unit-test
// runtime runs one task at a time, and this test then passes even for a racy publisher).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_concurrent_caller_gets_the_confirm_of_its_own_message() {
    let connection = connect(&amqp_url().await, "it publisher").await.expect("broker");
    let admin = connection.create_channel().await.expect("channel");
    let prefix = unique_prefix();
    let (accepting, refusing) = (format!("{prefix}accepting"), format!("{prefix}refusing"));
    let mut full = FieldTable::default();
    full.insert("x-max-length".into(), AMQPValue::LongInt(0));
    full.insert("x-overflow".into(), AMQPValue::LongString("reject-publish".into()));
    for (queue, arguments) in [(&accepting, FieldTable::default()), (&refusing, full)] {
        admin
            .queue_declare(queue.as_str().into(), QueueDeclareOptions::default(), arguments)
            .await
            .expect("declare");
    }
    // One lane: every publish goes through the same channel.
    let publisher = Publisher::open(&connection, 1).await.expect("publisher");

    let mut tasks = Vec::new();
    for n in 0..MESSAGES {
        let publisher = publisher.clone();
        let refused = n % 2 == 1;
        let queue = if refused { refusing.clone() } else { accepting.clone() };
        tasks.push(tokio::spawn(async move {
            // Both entry points: single publishes and batches.
            let result = if n % 3 == 0 {
                publisher.publish(message(&queue, n)).await
            } else {
                publisher.publish_all(vec![message(&queue, n)]).await
            };
            match (refused, &result) {
                (false, Ok(())) | (true, Err(PublishError::Nacked { .. })) => None,
                _ => Some(format!("message {n} to {queue}: {result:?}")),
            }
        }));
    }
    let mut wrong = Vec::new();
    for task in tasks {
        wrong.extend(task.await.expect("task"));
    }
    assert!(
        wrong.is_empty(),
        "{} of {MESSAGES} confirms went to the wrong caller, e.g. {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );

    let batch = publisher
        .publish_all(vec![
            message(&accepting, 0),
            message(&refusing, 1),
            message(&accepting, 2),
        ])
        .await;
    assert!(
        matches!(batch, Err(PublishError::Nacked { .. })),
        "a batch with one refused message fails: {batch:?}"
    );

    let depth = admin
        .queue_declare(
            accepting.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("passive declare")
        .message_count();
    assert_eq!(depth as usize, MESSAGES / 2 + 2, "every accepted message arrived once");
    for queue in [&accepting, &refusing] {
        let _ = admin
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    let _ = connection.close(200, "test done".into()).await;
}
