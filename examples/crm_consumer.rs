//! A CRM consumer of `session.created` events (DESIGN §4): what another team writes to keep its CRM
//! in sync with the guest sessions the worker creates.
//!
//! ```text
//! cargo run --example crm_consumer                                   # print each event
//! CRM_SYNC_ENDPOINT=http://localhost:8088/sessions cargo run --example crm_consumer
//! ```
//!
//! It declares its **own durable queue** (`CRM_QUEUE`, default `{AMQP_NAME_PREFIX}crm.session-events`; a quorum
//! queue) bound to the `crm-sync` topic exchange with routing key `session.created`, so events
//! published while it is down wait for it. Each event is printed as a JSON line, or POSTed to
//! `CRM_SYNC_ENDPOINT` with retries (exponential backoff with jitter on connection errors, 408,
//! 429 and 5xx), and acked **only after** that succeeded.
//!
//! Delivery is at least once (the worker may publish an event again if the broker lost its
//! confirm), so the consumer **deduplicates by `correlation_id`** (the request id). The memory of
//! ids is a bounded in-process set (`CRM_DEDUP_CAPACITY` most recent ids, oldest forgotten
//! first): it catches the duplicates that arrive close together, which is where they come from,
//! but not across a restart or between two replicas of this consumer. A CRM that must never see a
//! duplicate makes its write idempotent on the request id as well; the POST carries it in
//! `Idempotency-Key` for that.
//!
//! Settings: `AMQP_URL`, `AMQP_NAME_PREFIX` (the worker's), `CRM_QUEUE`, `CRM_SYNC_ENDPOINT`,
//! `CRM_DEDUP_CAPACITY`, `CRM_PREFETCH`. The logic lives in functions that the integration tests
//! call against a real broker (`tests/it/examples.rs`).

use std::{
    collections::{HashSet, VecDeque},
    future::Future,
    time::Duration,
};

use backon::{ExponentialBuilder, Retryable};
use futures_util::StreamExt;
use guest_session_worker::amqp::{Topology, headers, topology::EVENT_ROUTING_KEY};
use lapin::{
    Channel, ExchangeKind,
    message::Delivery,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, ExchangeDeclareOptions,
        QueueBindOptions, QueueDeclareOptions,
    },
    types::{AMQPValue, FieldTable, LongString},
};

pub const DEFAULT_QUEUE: &str = "crm.session-events";

impl Settings {
    /// `CRM_QUEUE`, or the default queue under the worker's prefix, so that consumers of
    /// differently prefixed workers never share a queue.
    pub fn queue(&self) -> String {
        self.queue
            .clone()
            .unwrap_or_else(|| format!("{}{DEFAULT_QUEUE}", self.name_prefix))
    }
}

/// The consumer's settings; each flag also reads the env var named here.
#[derive(Debug, Clone, clap::Parser)]
#[command(about = "Consume session.created events and forward them to a CRM")]
pub struct Settings {
    /// Broker URL.
    #[arg(long, env = "AMQP_URL", default_value = guest_session_worker::amqp::connect::DEFAULT_AMQP_URL, hide_env_values = true)]
    pub amqp_url: String,
    /// The worker's AMQP_NAME_PREFIX (names its `crm-sync` exchange).
    #[arg(long, env = "AMQP_NAME_PREFIX", default_value = "")]
    pub name_prefix: String,
    /// This consumer's own durable queue (default: `AMQP_NAME_PREFIX` + `crm.session-events`).
    #[arg(long, env = "CRM_QUEUE")]
    pub queue: Option<String>,
    /// Where to POST each event; unset = print it to stdout.
    #[arg(long, env = "CRM_SYNC_ENDPOINT")]
    pub endpoint: Option<String>,
    /// How many recent correlation ids to remember for deduplication.
    #[arg(long, env = "CRM_DEDUP_CAPACITY", default_value_t = 10_000)]
    pub dedup_capacity: usize,
    /// Unacked events the broker may hand over at once (they are still handled one at a time).
    #[arg(long, env = "CRM_PREFETCH", default_value_t = 16)]
    pub prefetch: u16,
    /// Retries of a POST that failed with a connection error, 408, 429 or 5xx, before the event is
    /// returned to the queue (backoff from 200 ms, doubling, at most 10 s, with jitter).
    #[arg(long, env = "CRM_RETRIES", default_value_t = 6)]
    pub retries: usize,
}

/// Declares the `crm-sync` exchange (as the worker does, so either may start first) and this
/// consumer's durable queue, bound with `session.created`.
pub async fn declare_queue(channel: &Channel, crm_exchange: &str, queue: &str) -> Result<(), lapin::Error> {
    channel
        .exchange_declare(
            crm_exchange.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let mut arguments = FieldTable::default();
    // Quorum: replicated and durable, like the worker's own queues.
    arguments.insert("x-queue-type".into(), AMQPValue::LongString(LongString::from("quorum")));
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            arguments,
        )
        .await?;
    channel
        .queue_bind(
            queue.into(),
            crm_exchange.into(),
            EVENT_ROUTING_KEY.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
}

/// The most recent `capacity` ids; the oldest is forgotten first.
#[derive(Debug)]
pub struct RecentIds {
    ids: HashSet<String>,
    order: VecDeque<String>,
    capacity: usize,
}

impl RecentIds {
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            ids: HashSet::with_capacity(capacity.min(65_536)),
            order: VecDeque::with_capacity(capacity.min(65_536)),
            capacity,
        }
    }

    pub fn contains(&self, id: &str) -> bool {
        self.ids.contains(id)
    }

    pub fn insert(&mut self, id: String) {
        if self.ids.contains(&id) {
            return;
        }
        if self.order.len() == self.capacity
            && let Some(oldest) = self.order.pop_front()
        {
            self.ids.remove(&oldest);
        }
        self.ids.insert(id.clone());
        self.order.push_back(id);
    }
}

/// Why an event could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The CRM refused it (4xx other than 408/429): retrying will not help.
    #[error("the CRM refused the event: {0}")]
    Refused(String),
    /// Still failing after the retries (connection errors, 408, 429, 5xx).
    #[error("the CRM is unavailable: {0}")]
    Unavailable(String),
}

/// Where events go.
#[derive(Debug, Clone)]
pub enum Sink {
    /// One JSON line per event on stdout.
    Print,
    /// `POST` to the CRM's endpoint.
    Http {
        client: reqwest::Client,
        endpoint: String,
        retries: usize,
    },
}

impl Sink {
    pub fn from_settings(settings: &Settings) -> Result<Self, reqwest::Error> {
        match &settings.endpoint {
            None => Ok(Sink::Print),
            Some(endpoint) => Ok(Sink::Http {
                client: reqwest::Client::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .timeout(Duration::from_secs(15))
                    .build()?,
                endpoint: endpoint.clone(),
                retries: settings.retries,
            }),
        }
    }

    /// Delivers one event body, retrying what may succeed later.
    pub async fn deliver(
        &self,
        event: &[u8],
        correlation_id: &str,
        traceparent: Option<&str>,
    ) -> Result<(), ForwardError> {
        let (client, endpoint, retries) = match self {
            Sink::Print => {
                println!("{}", String::from_utf8_lossy(event));
                return Ok(());
            }
            Sink::Http {
                client,
                endpoint,
                retries,
            } => (client, endpoint, *retries),
        };
        let post = || async {
            let mut request = client
                .post(endpoint.as_str())
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header("Idempotency-Key", correlation_id)
                .body(event.to_vec());
            if let Some(traceparent) = traceparent {
                // The CRM's trace continues the guest's request.
                request = request.header("traceparent", traceparent);
            }
            match request.send().await {
                Ok(response) if response.status().is_success() => Ok(()),
                Ok(response) => {
                    let status = response.status();
                    if status.is_server_error()
                        || status == reqwest::StatusCode::TOO_MANY_REQUESTS
                        || status == reqwest::StatusCode::REQUEST_TIMEOUT
                    {
                        Err(ForwardError::Unavailable(format!("HTTP {status}")))
                    } else {
                        Err(ForwardError::Refused(format!("HTTP {status}")))
                    }
                }
                Err(error) => Err(ForwardError::Unavailable(error.to_string())),
            }
        };
        post.retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(200))
                .with_max_delay(Duration::from_secs(10))
                .with_max_times(retries)
                .with_jitter(),
        )
        .when(|error| matches!(error, ForwardError::Unavailable(_)))
        .notify(|error, wait| eprintln!("crm_consumer: {error}; retrying in {wait:?}"))
        .await
    }
}

/// What became of one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handled {
    /// Forwarded, then acked.
    Forwarded { correlation_id: String },
    /// Seen before: acked without forwarding.
    Duplicate { correlation_id: String },
    /// Not an event we can use, or refused by the CRM: rejected without requeue (the queue's
    /// dead-letter policy, if the operator set one, keeps it).
    Dropped { reason: String },
    /// The CRM stayed unavailable: returned to the queue for a later try.
    Requeued { reason: String },
}

/// The event's `correlation_id` property, else its body's `request_id`.
fn correlation_id(delivery: &Delivery) -> Option<String> {
    delivery
        .properties
        .correlation_id()
        .as_ref()
        .map(|id| id.as_str().to_string())
        .filter(|id| !id.is_empty())
        .or_else(|| {
            serde_json::from_slice::<serde_json::Value>(&delivery.data)
                .ok()?
                .get("request_id")?
                .as_str()
                .map(str::to_string)
        })
}

/// Handles one delivery: deduplicate, forward, then ack (or nack).
pub async fn handle(delivery: &Delivery, sink: &Sink, seen: &mut RecentIds) -> Result<Handled, lapin::Error> {
    let Some(correlation_id) = correlation_id(delivery) else {
        let reason = "no correlation_id and no request_id: not a session.created event".to_string();
        delivery
            .acker
            .nack(BasicNackOptions {
                requeue: false,
                ..Default::default()
            })
            .await?;
        return Ok(Handled::Dropped { reason });
    };
    if seen.contains(&correlation_id) {
        delivery.acker.ack(BasicAckOptions::default()).await?;
        return Ok(Handled::Duplicate { correlation_id });
    }
    let traceparent = headers::get_str(delivery.properties.headers().as_ref(), "traceparent");
    match sink
        .deliver(&delivery.data, &correlation_id, traceparent.as_deref())
        .await
    {
        Ok(()) => {
            // Remembered only once the CRM has it: a failed forward must not hide the redelivery.
            seen.insert(correlation_id.clone());
            delivery.acker.ack(BasicAckOptions::default()).await?;
            Ok(Handled::Forwarded { correlation_id })
        }
        Err(error @ ForwardError::Refused(_)) => {
            delivery
                .acker
                .nack(BasicNackOptions {
                    requeue: false,
                    ..Default::default()
                })
                .await?;
            Ok(Handled::Dropped {
                reason: error.to_string(),
            })
        }
        Err(error @ ForwardError::Unavailable(_)) => {
            delivery
                .acker
                .nack(BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                })
                .await?;
            Ok(Handled::Requeued {
                reason: error.to_string(),
            })
        }
    }
}

/// Consumes `settings.queue` until `shutdown` resolves or the channel closes, handling deliveries
/// one at a time (so a duplicate is always compared with what was forwarded before it).
/// `on_handled` sees each outcome (the example logs it).
pub async fn run(
    channel: &Channel,
    settings: &Settings,
    sink: &Sink,
    shutdown: impl Future<Output = ()>,
    mut on_handled: impl FnMut(&Handled),
) -> Result<(), lapin::Error> {
    let topology = Topology::new(&settings.name_prefix);
    let queue = settings.queue();
    declare_queue(channel, &topology.crm_exchange, &queue).await?;
    channel
        .basic_qos(settings.prefetch.max(1), BasicQosOptions::default())
        .await?;
    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "crm_consumer".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut seen = RecentIds::new(settings.dedup_capacity);
    tokio::pin!(shutdown);
    loop {
        let delivery = tokio::select! {
            _ = &mut shutdown => break,
            next = consumer.next() => match next {
                Some(delivery) => delivery?,
                None => break,
            },
        };
        let handled = handle(&delivery, sink, &mut seen).await?;
        on_handled(&handled);
    }
    // Unacked deliveries go back to the queue when the channel closes.
    Ok(())
}

#[cfg(not(test))]
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    use anyhow::Context;
    use clap::Parser;

    let settings = Settings::parse();
    let sink = Sink::from_settings(&settings).context("cannot build the HTTP client")?;
    let connection = guest_session_worker::amqp::connect(&settings.amqp_url, "crm_consumer example").await?;
    let channel = connection.create_channel().await?;
    eprintln!(
        "crm_consumer: queue '{}' ← exchange '{}' ({EVENT_ROUTING_KEY}); {}",
        settings.queue(),
        Topology::new(&settings.name_prefix).crm_exchange,
        match &settings.endpoint {
            Some(endpoint) => format!("forwarding to {endpoint}"),
            None => "printing events (set CRM_SYNC_ENDPOINT to forward them)".to_string(),
        }
    );
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    run(&channel, &settings, &sink, shutdown, |handled| match handled {
        Handled::Forwarded { .. } => {}
        other => eprintln!("crm_consumer: {other:?}"),
    })
    .await
    .context("consuming events failed")?;
    let _ = connection.close(200, "bye".into()).await;
    Ok(())
}
