//! `run`: the production worker.
//!
//! SIGTERM or SIGINT stops it gracefully: no new deliveries, in-flight requests finish within
//! `WORKER_SHUTDOWN_GRACE_SECS`, the rest go back to the queue, telemetry is flushed, exit 0.

use std::time::Duration;

use anyhow::Context;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{
    amqp::AmqpArgs,
    config::WorkerArgs,
    genesys::{GenesysArgs, GenesysClient},
    health::{self, Readiness},
    metrics::Metrics,
    pipeline::{Worker, WorkerSettings},
    telemetry::{LogFormat, Telemetry},
};

#[derive(clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub amqp: AmqpArgs,
    #[command(flatten)]
    pub worker: WorkerArgs,
    #[command(flatten)]
    pub genesys: GenesysArgs,
}

pub async fn run(args: RunArgs, log_format: LogFormat) -> anyhow::Result<()> {
    let telemetry = Telemetry::init(log_format, "info")?;
    let result = serve(args).await;
    telemetry.shutdown();
    result
}

async fn serve(args: RunArgs) -> anyhow::Result<()> {
    // Both checked before either is reported, so one run names every missing setting.
    let (settings, genesys_config) = match (args.worker.settings(&args.amqp), args.genesys.into_config()) {
        (Ok(settings), Ok(genesys_config)) => (settings, genesys_config),
        (settings, genesys_config) => {
            let mut problems = Vec::new();
            if let Err(error) = settings {
                problems.push(error.to_string());
            }
            if let Err(error) = genesys_config {
                problems.push(format!("invalid Genesys configuration: {error}"));
            }
            anyhow::bail!("{}", problems.join("\n"));
        }
    };
    let genesys = GenesysClient::new(genesys_config).context("cannot build the Genesys client")?;
    let metrics = Metrics::new();
    let readiness = Readiness::default();
    let health_cancel = tokio_util::sync::CancellationToken::new();
    let health_addr = health::serve(
        args.worker.health_addr,
        readiness.clone(),
        metrics.clone(),
        health_cancel.clone(),
    )
    .await?;
    tracing::info!(%health_addr, queue = %settings.topology.request_queue, concurrency = settings.concurrency, "starting worker");

    let grace = settings.shutdown_grace;
    let wait = Duration::from_secs(args.worker.startup_wait_secs);
    // One listener for the whole life of the process: a signal that came while no listener was
    // registered (between the start-up wait and the worker) would be lost.
    let stop = CancellationToken::new();
    let signalled = stop.clone();
    tokio::spawn(async move {
        super::shutdown_signal().await;
        tracing::info!(
            grace_secs = grace.as_secs(),
            "shutdown requested; finishing in-flight requests, if any (signal again to stop at once)"
        );
        signalled.cancel();
        // An operator who signals twice wants out now. Unacked deliveries go back to the queue
        // when the connection drops, so this loses nothing; it only skips the wait.
        super::shutdown_signal().await;
        tracing::warn!("second shutdown signal; exiting without waiting for in-flight requests");
        std::process::exit(130);
    });
    let Some(worker) = start_when_the_broker_answers(settings, genesys, metrics, readiness, wait, &stop).await? else {
        health_cancel.cancel();
        tracing::info!("stopped while waiting for the broker");
        return Ok(());
    };
    let cancel = worker.cancel_token();
    tokio::spawn(async move {
        stop.cancelled().await;
        cancel.cancel();
    });
    worker.wait().await;
    health_cancel.cancel();
    tracing::info!("worker exited cleanly");
    Ok(())
}

/// Starts the worker once the broker answers. A broker that refuses or drops connections (still
/// starting, or down for a moment) is retried with backoff for `wait`, unready meanwhile, so a
/// pod started during a broker outage waits instead of crash-looping. Anything the broker will
/// refuse however long one waits (URL, credentials, vhost, topology) fails at once. `None`:
/// `stop` came first. An attempt under way when `wait` ends is finished (at most the 30 s a
/// connection set-up may take).
async fn start_when_the_broker_answers(
    settings: WorkerSettings,
    genesys: GenesysClient,
    metrics: Metrics,
    readiness: Readiness,
    wait: Duration,
    stop: &CancellationToken,
) -> anyhow::Result<Option<Worker>> {
    let deadline = Instant::now() + wait;
    let mut failures: u32 = 0;
    loop {
        let started = tokio::select! {
            _ = stop.cancelled() => return Ok(None),
            started = Worker::start(settings.clone(), genesys.clone(), metrics.clone(), readiness.clone()) => started,
        };
        let error = match started {
            Ok(worker) => return Ok(Some(worker)),
            Err(error) if error.is_unanswered() && Instant::now() < deadline => error,
            Err(error) => return Err(error.into()),
        };
        failures = failures.saturating_add(1);
        let left = deadline.saturating_duration_since(Instant::now());
        // The whole explanation once; then only that the wait goes on.
        if failures == 1 {
            tracing::warn!(
                %error,
                wait_left_secs = left.as_secs(),
                "the broker does not answer yet; retrying (/readyz answers 503 meanwhile; WORKER_STARTUP_WAIT_SECS bounds the wait)"
            );
        } else {
            tracing::warn!(
                failures,
                wait_left_secs = left.as_secs(),
                "the broker does not answer yet; retrying"
            );
        }
        tokio::select! {
            _ = stop.cancelled() => return Ok(None),
            _ = tokio::time::sleep(crate::pipeline::worker::backoff(failures).min(left)) => {}
        }
    }
}
