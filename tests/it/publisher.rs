//! The shared confirm publisher (DESIGN §8): many tasks publishing at once through one channel must
//! each get the broker's answer for *their* message. Publishes alternate between a queue that takes
//! everything and one that refuses everything (`x-overflow: reject-publish` at length 0, so the
//! broker nacks each publish); a confirm handed to the wrong caller shows up as an `Ok` for the
//! refusing queue or a `Nacked` for the accepting one.

use guest_session_worker::amqp::{Outgoing, PublishError, Publisher, connect, topology::inspect};
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

    let depth = inspect(&admin, &accepting)
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

/// lapin hands a `basic.return` to whichever pending confirm of the channel completes next, so a
/// returned mandatory message must never share a channel with messages that are not mandatory:
/// its "unroutable" would land on one of them (and the returned one would look delivered).
/// Publishes alternate between plain messages to a queue and mandatory ones to no queue at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_returned_mandatory_message_is_reported_to_its_own_caller() {
    let connection = connect(&amqp_url().await, "it publisher returns")
        .await
        .expect("broker");
    let admin = connection.create_channel().await.expect("channel");
    let prefix = unique_prefix();
    let (accepting, nowhere) = (format!("{prefix}accepting"), format!("{prefix}no-such-queue"));
    admin
        .queue_declare(
            accepting.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("declare");
    // One lane: without a channel of their own, the mandatory messages would share it.
    let publisher = Publisher::open(&connection, 1).await.expect("publisher");

    let mut tasks = Vec::new();
    for n in 0..MESSAGES {
        let publisher = publisher.clone();
        let mandatory = n % 2 == 1;
        let outgoing = if mandatory {
            Outgoing {
                mandatory: true,
                ..message(&nowhere, n)
            }
        } else {
            message(&accepting, n)
        };
        tasks.push(tokio::spawn(async move {
            let result = publisher.publish(outgoing).await;
            match (mandatory, &result) {
                (false, Ok(())) | (true, Err(PublishError::Unroutable { .. })) => None,
                _ => Some(format!("message {n} (mandatory: {mandatory}): {result:?}")),
            }
        }));
    }
    let mut wrong = Vec::new();
    for task in tasks {
        wrong.extend(task.await.expect("task"));
    }
    // A batch that mixes both kinds: each goes to its own lane, and the batch reports the return.
    let batch = publisher
        .publish_all(vec![
            message(&accepting, 0),
            Outgoing {
                mandatory: true,
                ..message(&nowhere, 1)
            },
            message(&accepting, 2),
        ])
        .await;
    let depth = inspect(&admin, &accepting).await.map(|q| q.message_count());
    let _ = admin
        .queue_delete(accepting.as_str().into(), QueueDeleteOptions::default())
        .await;
    let _ = connection.close(200, "test done".into()).await;
    assert!(
        matches!(batch, Err(PublishError::Unroutable { .. })),
        "a mixed batch reports its returned message: {batch:?}"
    );
    assert_eq!(
        depth.ok(),
        Some((MESSAGES / 2 + 2) as u32),
        "every plain message arrived once"
    );
    assert!(
        wrong.is_empty(),
        "{} of {MESSAGES} outcomes went to the wrong caller, e.g. {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
}
