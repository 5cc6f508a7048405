//! The examples of `examples/`, exercised against the real broker: their logic is compiled here
//! (their `main` is left out under `cfg(test)`), so what the tests run is what users run.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    extract::State,
    http::{HeaderMap, StatusCode},
    routing::post,
};
use guest_session_worker::amqp::{Outgoing, topology::EVENT_ROUTING_KEY};
use lapin::{BasicProperties, options::QueueDeleteOptions, types::FieldTable};
use tokio_util::sync::CancellationToken;

use crate::helpers::*;

#[allow(dead_code)]
#[path = "../../examples/crm_consumer.rs"]
pub mod crm_consumer;

#[allow(dead_code)]
#[path = "../../examples/upstream_producer.rs"]
pub mod upstream_producer;

const WAIT: Duration = Duration::from_secs(60);

/// A stand-in for the CRM's `CRM_SYNC_ENDPOINT`: records every POST, and answers 503 to the first
/// `fail_first` of them.
#[derive(Clone, Default)]
struct FakeCrm {
    inner: Arc<Mutex<CrmLog>>,
}

#[derive(Default)]
struct CrmLog {
    fail_first: usize,
    attempts: usize,
    /// (Idempotency-Key, body) of the accepted POSTs.
    accepted: Vec<(String, serde_json::Value)>,
}

impl FakeCrm {
    async fn spawn(fail_first: usize) -> (Self, SocketAddr) {
        let crm = FakeCrm::default();
        crm.inner.lock().unwrap().fail_first = fail_first;
        let app = Router::new().route("/sessions", post(accept)).with_state(crm.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (crm, addr)
    }

    fn accepted(&self) -> Vec<(String, serde_json::Value)> {
        self.inner.lock().unwrap().accepted.clone()
    }

    fn attempts(&self) -> usize {
        self.inner.lock().unwrap().attempts
    }

    async fn wait_for_accepted(&self, n: usize) -> Vec<(String, serde_json::Value)> {
        tokio::time::timeout(WAIT, async {
            loop {
                let accepted = self.accepted();
                if accepted.len() >= n {
                    return accepted;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("the CRM endpoint did not receive {n} events: {:?}", self.accepted()))
    }
}

async fn accept(State(crm): State<FakeCrm>, headers: HeaderMap, body: axum::body::Bytes) -> StatusCode {
    let mut log = crm.inner.lock().unwrap();
    log.attempts += 1;
    if log.attempts <= log.fail_first {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = serde_json::from_slice(&body).expect("the CRM receives JSON");
    log.accepted.push((key, body));
    StatusCode::NO_CONTENT
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crm_consumer_forwards_each_created_session_once_and_retries_an_unavailable_crm() {
    let env = TestEnv::start().await;
    let (crm, addr) = FakeCrm::spawn(1).await;
    let prefix = env
        .topology
        .request_exchange
        .strip_suffix("guest-sessions")
        .expect("prefixed names")
        .to_string();
    let settings = crm_consumer::Settings {
        amqp_url: env.url.clone(),
        name_prefix: prefix.clone(),
        // The default: the prefixed `crm.session-events`.
        queue: None,
        endpoint: Some(format!("http://{addr}/sessions")),
        dedup_capacity: 100,
        prefetch: 16,
        retries: 6,
    };
    assert_eq!(settings.queue(), format!("{prefix}crm.session-events"));
    let sink = crm_consumer::Sink::from_settings(&settings).unwrap();
    // The consumer's queue exists (and is bound) before the worker publishes anything.
    crm_consumer::declare_queue(&env.channel, &env.topology.crm_exchange, &settings.queue())
        .await
        .unwrap();

    let stop = CancellationToken::new();
    let handled = Arc::new(Mutex::new(Vec::new()));
    let consumer = {
        let (settings, sink, stop, handled) = (settings.clone(), sink.clone(), stop.clone(), handled.clone());
        let connection = guest_session_worker::amqp::connect(&env.url, "it-crm-consumer")
            .await
            .unwrap();
        tokio::spawn(async move {
            let channel = connection.create_channel().await.unwrap();
            let result = crm_consumer::run(&channel, &settings, &sink, stop.cancelled_owned(), |h| {
                handled.lock().unwrap().push(h.clone())
            })
            .await;
            let _ = connection.close(200, "done".into()).await;
            result
        })
    };

    // 1. A real request → the worker's event → the CRM (after one 503 and a retry).
    env.publish(body(&valid_request("crm-1"))).await;
    let accepted = crm.wait_for_accepted(1).await;
    let (key, first_event) = accepted[0].clone();
    assert_eq!(key, "crm-1", "Idempotency-Key is the correlation id");
    assert_eq!(first_event["request_id"], "crm-1");
    assert_eq!(crm.attempts(), 2, "the 503 was retried");

    // 2. The same event again, as a redelivery after a lost confirm would look.
    let duplicate = Outgoing {
        exchange: env.topology.crm_exchange.clone(),
        routing_key: EVENT_ROUTING_KEY.to_string(),
        payload: serde_json::to_vec(&first_event).unwrap(),
        properties: BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_correlation_id("crm-1".into()),
        mandatory: true,
    };
    env.publish_message(duplicate).await;

    // 3. A second request. The consumer handles its queue in order, and the duplicate was
    // confirmed into that queue before this request was even published: once the second event
    // arrives, the duplicate has been handled.
    env.publish(body(&valid_request("crm-2"))).await;
    let accepted = crm.wait_for_accepted(2).await;
    let ids: Vec<&str> = accepted.iter().map(|(key, _)| key.as_str()).collect();
    assert_eq!(ids, ["crm-1", "crm-2"], "the duplicate was not forwarded");
    assert_eq!(crm.attempts(), 3);
    // The consumer records an outcome after its ack, just after the CRM got the event.
    tokio::time::timeout(WAIT, async {
        while handled.lock().unwrap().len() < 3 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("three deliveries handled");
    assert_eq!(
        *handled.lock().unwrap(),
        vec![
            crm_consumer::Handled::Forwarded {
                correlation_id: "crm-1".into()
            },
            crm_consumer::Handled::Duplicate {
                correlation_id: "crm-1".into()
            },
            crm_consumer::Handled::Forwarded {
                correlation_id: "crm-2".into()
            },
        ]
    );

    stop.cancel();
    consumer.await.unwrap().unwrap();
    // Every event was acked: nothing is left in (or returns to) the consumer's queue.
    assert_eq!(env.message_count(&settings.queue()).await, 0);
    env.channel
        .queue_delete(settings.queue().as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crm_consumer_leaves_an_event_unacked_until_the_crm_takes_it() {
    // The CRM is down for the whole retry schedule of the first delivery: the event goes back to
    // the queue (not lost, not acked), and the redelivery reaches the CRM once it is back.
    let env = TestEnv::start_with(EnvOptions {
        start_worker: false,
        ..Default::default()
    })
    .await;
    let (crm, addr) = FakeCrm::spawn(3).await; // the first delivery's 1 + 2 retries all fail
    let queue = format!("{}crm-unacked", env.topology.request_exchange);
    let settings = crm_consumer::Settings {
        amqp_url: env.url.clone(),
        name_prefix: String::new(),
        queue: Some(queue.clone()),
        endpoint: Some(format!("http://{addr}/sessions")),
        dedup_capacity: 10,
        prefetch: 1,
        retries: 2,
    };
    let sink = crm_consumer::Sink::from_settings(&settings).unwrap();
    crm_consumer::declare_queue(&env.channel, &env.topology.crm_exchange, &queue)
        .await
        .unwrap();
    env.publish_message(Outgoing {
        exchange: env.topology.crm_exchange.clone(),
        routing_key: EVENT_ROUTING_KEY.to_string(),
        payload: br#"{"request_id":"crm-down-1","event_type":"session.created"}"#.to_vec(),
        properties: BasicProperties::default().with_correlation_id("crm-down-1".into()),
        mandatory: true,
    })
    .await;

    let connection = guest_session_worker::amqp::connect(&env.url, "it-crm-unacked")
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    crm_consumer::declare_queue(&channel, &env.topology.crm_exchange, &queue)
        .await
        .unwrap();
    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut seen = crm_consumer::RecentIds::new(10);
    let first = futures_util::StreamExt::next(&mut consumer).await.unwrap().unwrap();
    let outcome = crm_consumer::handle(&first, &sink, &mut seen).await.unwrap();
    assert!(matches!(outcome, crm_consumer::Handled::Requeued { .. }), "{outcome:?}");
    assert_eq!(crm.attempts(), 3);
    assert!(crm.accepted().is_empty());

    let again = futures_util::StreamExt::next(&mut consumer).await.unwrap().unwrap();
    assert!(again.redelivered, "the same event came back");
    let outcome = crm_consumer::handle(&again, &sink, &mut seen).await.unwrap();
    assert_eq!(
        outcome,
        crm_consumer::Handled::Forwarded {
            correlation_id: "crm-down-1".into()
        }
    );
    assert_eq!(crm.accepted().len(), 1);
    let _ = connection.close(200, "done".into()).await;
    assert_eq!(env.message_count(&queue).await, 0, "acked after the CRM took it");
    env.channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_producer_gets_its_reply_with_its_correlation_id() {
    let mut env = TestEnv::start().await;
    // Some CRM queue must be bound, or the event is unroutable and the reply says `failed`.
    env.bind_events().await;
    let request = upstream_producer::sample_request();
    let request_id = request["request_id"].as_str().unwrap().to_string();
    let reply = upstream_producer::request_session(
        &env.connection,
        &env.topology,
        serde_json::to_vec(&request).unwrap(),
        WAIT,
    )
    .await
    .expect("a reply");
    let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(body["outcome"], "created", "{body}");
    assert_eq!(body["request_id"], request_id.as_str());
    assert_eq!(body["session"]["api"], "open_messaging");
    assert!(reply.traceparent.starts_with("00-") && reply.traceparent.ends_with("-01"));
    env.cleanup().await;
}
