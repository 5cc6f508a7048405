//! `demo`: the quick start. An embedded Genesys simulator and a worker on `AMQP_URL`, a sample
//! batch of valid and invalid requests, and a summary of what happened to each.

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant},
};

use anyhow::Context;
use futures_util::StreamExt;
use lapin::types::FieldTable;
use secrecy::SecretString;

use super::sample;
use crate::{
    amqp::{AmqpArgs, Publisher, Topology, connect, request_message, tap, topology::EVENT_ROUTING_KEY},
    genesys::{GenesysClient, GenesysConfig},
    health::Readiness,
    metrics::Metrics,
    pipeline::{Worker, WorkerSettings, event::SessionCreatedEvent},
    request::ValidationPolicy,
    sim::{self, SimConfig},
    telemetry::{LogFormat, Telemetry},
};

#[derive(clap::Args)]
pub struct DemoArgs {
    #[command(flatten)]
    pub amqp: AmqpArgs,
    /// Exit after the batch instead of running until Ctrl-C.
    #[arg(long)]
    pub once: bool,
    /// How many valid requests the batch holds (7 invalid ones, at least one per rejection reason, are added).
    #[arg(long, default_value_t = 20)]
    pub valid: usize,
    /// Simulated Genesys latency per call.
    #[arg(long, default_value_t = 20)]
    pub sim_latency_ms: u64,
}

pub async fn run(args: DemoArgs, log_format: LogFormat) -> anyhow::Result<()> {
    let telemetry = Telemetry::init(log_format, "warn")?;
    let result = demo(args).await;
    telemetry.shutdown();
    result
}

async fn demo(args: DemoArgs) -> anyhow::Result<()> {
    let prefix = if args.amqp.name_prefix.is_empty() {
        "demo.".to_string()
    } else {
        args.amqp.name_prefix.clone()
    };
    let topology = Topology::new(&prefix);

    let sim_config = SimConfig {
        latency_ms: args.sim_latency_ms,
        ..SimConfig::for_tests()
    };
    let simulator = sim::spawn(sim_config.clone())
        .await
        .context("cannot start the embedded Genesys simulator")?;
    let genesys = GenesysClient::new(GenesysConfig::for_simulator(
        &simulator.base_url(),
        &sim_config.client_id,
        &sim_config.client_secret,
        &sim_config.integration_id,
    ))?;

    let settings = WorkerSettings {
        amqp_url: args.amqp.url.clone(),
        topology: topology.clone(),
        concurrency: 64,
        publisher_lanes: 2,
        shutdown_grace: Duration::from_secs(10),
        policy: ValidationPolicy::default(),
        // A throwaway key: demo pseudonyms are not meant to be compared with anything.
        audit_key: SecretString::from(uuid::Uuid::new_v4().to_string()),
        crm_queue: None,
    };
    let worker = Worker::start(settings, genesys, Metrics::new(), Readiness::default()).await?;

    // Watch the outcomes through our own temporary queues, as a CRM consumer and an operator would.
    let connection = connect(&args.amqp.url, "guest-session-worker demo").await?;
    let channel = connection.create_channel().await?;
    let events = tap(&channel, &topology.crm_exchange, EVENT_ROUTING_KEY, false).await?;
    let dead = tap(&channel, &topology.dead_letter_exchange, "", false).await?;

    let mut batch: Vec<(String, Vec<u8>)> = (0..args.valid)
        .map(|i| {
            (
                "created".to_string(),
                serde_json::to_vec(&sample::valid(i)).unwrap_or_default(),
            )
        })
        .collect();
    batch.extend(
        sample::invalid_batch()
            .into_iter()
            .map(|(reason, body)| (reason.to_string(), body)),
    );
    let total = batch.len();
    println!(
        "guest-session-worker demo: {total} requests ({} valid, {} invalid) → exchange '{}'; Genesys simulator at {}",
        args.valid,
        total - args.valid,
        topology.request_exchange,
        simulator.base_url()
    );

    let publisher = Publisher::open(&connection, 1).await?;
    let mut published_at: HashMap<String, Instant> = HashMap::new();
    let mut expected: HashMap<String, String> = HashMap::new();
    for (expect, body) in batch {
        let message = request_message(&topology, body, FieldTable::default());
        let id = message
            .properties
            .message_id()
            .as_ref()
            .map(|m| m.to_string())
            .unwrap_or_default();
        published_at.insert(id.clone(), Instant::now());
        expected.insert(id, expect);
        publisher.publish(message).await?;
    }

    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    let mut latencies: Vec<Duration> = Vec::new();
    let mut mismatches = 0usize;
    let (mut events, mut dead) = (events, dead);
    let deadline = tokio::time::sleep(Duration::from_secs(60));
    tokio::pin!(deadline);
    let mut seen = 0usize;
    while seen < total {
        let (id, outcome) = tokio::select! {
            _ = &mut deadline => break,
            Some(Ok(delivery)) = events.next() => {
                let _ = delivery.acker.ack(Default::default()).await;
                let event: Option<SessionCreatedEvent> = serde_json::from_slice(&delivery.data).ok();
                (event.map(|e| e.request_id).unwrap_or_default(), "created".to_string())
            }
            Some(Ok(delivery)) = dead.next() => {
                let _ = delivery.acker.ack(Default::default()).await;
                let id = delivery.properties.message_id().as_ref().map(|m| m.to_string()).unwrap_or_default();
                let reason = super::dead_letters::reason_of(&delivery.properties);
                (id, reason)
            }
        };
        let Some(start) = published_at.remove(&id) else {
            continue;
        };
        seen += 1;
        latencies.push(start.elapsed());
        if expected.get(&id) != Some(&outcome) {
            mismatches += 1;
        }
        *outcomes.entry(outcome).or_default() += 1;
    }

    print_summary(&outcomes, &mut latencies, total, seen, &simulator.stats());
    if !args.once {
        println!(
            "\nThe worker keeps running (Ctrl-C to stop) and the outcomes of what you enqueue are counted below. Enqueue more with:\n  AMQP_NAME_PREFIX={prefix} cargo run --release -- enqueue --sample 100\nList dead letters with:\n  AMQP_NAME_PREFIX={prefix} cargo run --release -- dead-letters list"
        );
        // The observer queues stay bound meanwhile: without a queue on the CRM exchange every
        // later event would be unroutable and its request dead-lettered.
        follow(&mut events, &mut dead).await;
    }
    let _ = connection.close(200, "demo done".into()).await;
    worker.shutdown().await;
    simulator.shutdown().await;
    anyhow::ensure!(
        seen == total,
        "only {seen} of {total} requests reached an outcome within 60 s"
    );
    anyhow::ensure!(
        mismatches == 0,
        "{mismatches} request(s) ended with an unexpected outcome"
    );
    Ok(())
}

/// Counts outcomes as they arrive until Ctrl-C, printing the running totals when they change.
async fn follow(events: &mut lapin::Consumer, dead: &mut lapin::Consumer) {
    let mut created = 0usize;
    let mut dead_by_reason: BTreeMap<String, usize> = BTreeMap::new();
    let mut changed = false;
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    let stop = super::shutdown_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            Some(Ok(delivery)) = events.next() => {
                let _ = delivery.acker.ack(Default::default()).await;
                created += 1;
                changed = true;
            }
            Some(Ok(delivery)) = dead.next() => {
                let _ = delivery.acker.ack(Default::default()).await;
                let reason = super::dead_letters::reason_of(&delivery.properties);
                *dead_by_reason.entry(reason).or_default() += 1;
                changed = true;
            }
            _ = ticker.tick() => {
                if std::mem::take(&mut changed) {
                    let reasons: Vec<String> = dead_by_reason.iter().map(|(r, n)| format!("{r} {n}")).collect();
                    let dead: usize = dead_by_reason.values().sum();
                    println!(
                        "since the batch: created {created}, dead-lettered {dead}{}",
                        if reasons.is_empty() { String::new() } else { format!(" ({})", reasons.join(", ")) }
                    );
                }
            }
        }
    }
}

fn print_summary(
    outcomes: &BTreeMap<String, usize>,
    latencies: &mut [Duration],
    total: usize,
    seen: usize,
    stats: &sim::SimStats,
) {
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p).ceil() as usize).saturating_sub(1))
            .map_or(0, |d| d.as_millis())
    };
    let created = outcomes.get("created").copied().unwrap_or(0);
    println!("\n{:<28} {:>6}", "outcome", "count");
    println!("{:<28} {:>6}", "created (session.created)", created);
    println!("{:<28} {:>6}", "dead-lettered", seen - created);
    for (reason, count) in outcomes.iter().filter(|(r, _)| r.as_str() != "created") {
        println!("  {reason:<26} {count:>6}");
    }
    if seen < total {
        println!("{:<28} {:>6}", "no outcome yet", total - seen);
    }
    println!(
        "\nlatency, request published → outcome received: p50 {} ms, p99 {} ms",
        pct(0.50),
        pct(0.99)
    );
    println!(
        "Genesys simulator: {} token request(s), {} API call(s), {} session(s) created, {} duplicate(s), {} rate-limited",
        stats.token_requests, stats.api_requests, stats.sessions_created, stats.duplicates, stats.rate_limited
    );
}
