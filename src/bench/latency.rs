//! The *added latency* scenario of `bench perf`: requests offered at a steady rate to one worker
//! against the simulator at a fixed latency; per request, event received − request published −
//! the simulator's latency.
//!
//! Beside it, in the same round, the same offered load through a bare relay in this process
//! (consume the request, publish an event, ack once it is confirmed; no HTTP): what the broker's
//! two hops cost alone on this machine. The broker delivers from a quorum queue only once the
//! message is in its fsynced log, so a slow disk shows up in both lines.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_util::StreamExt;
use lapin::{
    BasicProperties,
    options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions},
    types::FieldTable,
};
use tokio::time::Instant;

use super::{
    BenchError, Lab, Workers, cpu,
    disk::{DiskProbe, Stalls},
    perf::{PerfOptions, payload, spec, unthrottled_sim},
    spawn_sim, unique_prefix,
};
use crate::amqp::{Outgoing, Publisher, request_message, topology::EVENT_ROUTING_KEY};

/// Percentiles of (event received − request published − simulated latency), in ms, over the
/// requests answered.
#[derive(Debug, Clone, Copy, Default)]
pub struct AddedLatency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub completed: usize,
    pub sent: usize,
}

impl std::fmt::Display for AddedLatency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "p50 {:.2} ms, p99 {:.2} ms ({} of {} answered; p90 {:.1}, p99.9 {:.1}, max {:.1} ms)",
            self.p50, self.p99, self.completed, self.sent, self.p90, self.p999, self.max
        )
    }
}

/// One round of the scenario: the worker, then the bare relay, each with what the disk under the
/// broker did meanwhile (`None` without a local broker).
#[derive(Debug, Clone, Copy, Default)]
pub struct LatencyRound {
    pub worker: AddedLatency,
    pub worker_disk: Option<Stalls>,
    pub relay: AddedLatency,
    pub relay_disk: Option<Stalls>,
}

impl LatencyRound {
    /// Runs the round; `broker` is the local broker's pid, if any.
    pub async fn run(options: &PerfOptions, broker: Option<u32>) -> Result<Self, BenchError> {
        let (worker, worker_disk) = probing(broker, through_worker(options)).await?;
        cpu::broker_settled(broker, options.settle_timeout).await;
        let (relay, relay_disk) = probing(broker, through_relay(options)).await?;
        Ok(Self {
            worker,
            worker_disk,
            relay,
            relay_disk,
        })
    }
}

/// Runs `measure` with the disk probe beside it.
async fn probing(
    broker: Option<u32>,
    measure: impl std::future::Future<Output = Result<AddedLatency, BenchError>>,
) -> Result<(AddedLatency, Option<Stalls>), BenchError> {
    let probe = broker
        .and_then(DiskProbe::broker_dir)
        .and_then(|dir| DiskProbe::start(&dir));
    let measured = measure.await;
    let stalls = probe.map(DiskProbe::stop);
    Ok((measured?, stalls))
}

/// The worker's added latency at the options' offered load, its simulator at their latency.
pub async fn through_worker(options: &PerfOptions) -> Result<AddedLatency, BenchError> {
    let config = unthrottled_sim(options.offered_latency_ms);
    let sim = spawn_sim(config.clone()).await?;
    let prefix = unique_prefix(&options.name_prefix, "latency");
    let lab = Lab::open(&options.amqp_url, &prefix).await?;
    let result = async {
        let mut workers = Workers::spawn(&spec(options, &sim, &config, &prefix, 64), 1).await?;
        let measured = async {
            workers.wait_ready(Duration::from_secs(30)).await?;
            offer_and_time(&lab, options, Duration::from_millis(options.offered_latency_ms)).await
        }
        .await;
        workers.stop().await;
        measured
    }
    .await;
    lab.close().await;
    sim.shutdown().await;
    result
}

/// The same offered load through a bare relay in this process instead of the worker.
pub async fn through_relay(options: &PerfOptions) -> Result<AddedLatency, BenchError> {
    let prefix = unique_prefix(&options.name_prefix, "latency-relay");
    let lab = Lab::open(&options.amqp_url, &prefix).await?;
    let result = async {
        relay(&lab).await?;
        offer_and_time(&lab, options, Duration::ZERO).await
    }
    .await;
    // Stops the relay with the other observers.
    lab.close().await;
    result
}

/// Consumes the lab's request queue and, per request, publishes an event (correlation id = the
/// request's message id) and acks the request once the event is confirmed; until the lab closes.
async fn relay(lab: &Lab) -> Result<(), BenchError> {
    let publisher = Publisher::open(&lab.connection, 1).await?;
    let channel = lab.connection.create_channel().await?;
    channel.basic_qos(64, BasicQosOptions::default()).await?;
    let mut deliveries = channel
        .basic_consume(
            lab.topology.request_queue.as_str().into(),
            "bench-relay".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let exchange = lab.topology.crm_exchange.clone();
    lab.spawn_observer(channel, async move {
        while let Some(Ok(delivery)) = deliveries.next().await {
            let mut properties = BasicProperties::default()
                .with_content_type("application/json".into())
                .with_delivery_mode(2);
            if let Some(id) = delivery.properties.message_id() {
                properties = properties.with_correlation_id(id.clone());
            }
            let event = Outgoing {
                exchange: exchange.clone(),
                routing_key: EVENT_ROUTING_KEY.to_string(),
                payload: delivery.data.clone(),
                properties,
                mandatory: false,
            };
            let Ok(pending) = publisher.submit(event).await else {
                break;
            };
            tokio::spawn(async move {
                if pending.confirmed().await.is_ok() {
                    let _ = delivery.acker.ack(BasicAckOptions::default()).await;
                }
            });
        }
    });
    Ok(())
}

/// Publishes the offered load at its rate (20 warm-up requests first) and times each request's
/// event, less `simulated`.
async fn offer_and_time(lab: &Lab, options: &PerfOptions, simulated: Duration) -> Result<AddedLatency, BenchError> {
    let received = watch_events(lab).await?;
    let publisher = &lab.publisher;
    // Warm the path (token, connections) before measuring.
    for i in 0..20 {
        publisher
            .publish(request_message(&lab.topology, payload(i), FieldTable::default()))
            .await?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let total = (f64::from(options.offered_rate) * options.offered_secs) as usize;
    let interval = Duration::from_secs_f64(1.0 / f64::from(options.offered_rate));
    let mut sent_at: HashMap<String, Instant> = HashMap::with_capacity(total);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for i in 0..total {
        ticker.tick().await;
        let body = crate::cli::sample::valid(i);
        let id = body["request_id"].as_str().unwrap_or_default().to_string();
        let message = request_message(
            &lab.topology,
            serde_json::to_vec(&body).unwrap_or_default(),
            FieldTable::default(),
        );
        // The confirm is not awaited here: an upstream app publishing at this rate would not wait either.
        let _pending = publisher.submit(message).await?;
        sent_at.insert(id, Instant::now());
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while received.lock().map(|r| r.len()).unwrap_or(0) < total + 20 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut added: Vec<f64> = received
        .lock()
        .map(|r| {
            r.iter()
                .filter_map(|(id, at)| {
                    sent_at
                        .get(id)
                        .map(|s| at.saturating_duration_since(*s).saturating_sub(simulated).as_secs_f64() * 1000.0)
                })
                .collect()
        })
        .unwrap_or_default();
    added.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        added
            .get(((added.len() as f64 * p).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or(f64::NAN)
    };
    Ok(AddedLatency {
        p50: pct(0.50),
        p90: pct(0.90),
        p99: pct(0.99),
        p999: pct(0.999),
        max: pct(1.0),
        completed: added.len(),
        sent: total,
    })
}

/// Records when each `session.created` event (by correlation id) reached an exclusive queue.
/// Until the lab closes.
async fn watch_events(lab: &Lab) -> Result<Arc<Mutex<HashMap<String, Instant>>>, BenchError> {
    let channel = lab.connection.create_channel().await?;
    let mut consumer = crate::amqp::tap(&channel, &lab.topology.crm_exchange, EVENT_ROUTING_KEY, true).await?;
    let received = Arc::new(Mutex::new(HashMap::new()));
    let sink = received.clone();
    lab.spawn_observer(channel, async move {
        while let Some(Ok(delivery)) = consumer.next().await {
            let at = Instant::now();
            if let (Some(id), Ok(mut map)) = (delivery.properties.correlation_id().as_ref(), sink.lock()) {
                map.insert(id.to_string(), at);
            }
        }
    });
    Ok(received)
}
