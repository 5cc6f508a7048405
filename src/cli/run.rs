//! `run`: the production worker.
//!
//! SIGTERM or SIGINT stops it gracefully: no new deliveries, in-flight requests finish within
//! `WORKER_SHUTDOWN_GRACE_SECS`, the rest go back to the queue, telemetry is flushed, exit 0.

use anyhow::Context;

use crate::{
    amqp::AmqpArgs,
    config::WorkerArgs,
    genesys::{GenesysArgs, GenesysClient},
    health::{self, Readiness},
    metrics::Metrics,
    pipeline::Worker,
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
    let worker = Worker::start(settings, genesys, metrics, readiness).await?;
    let cancel = worker.cancel_token();
    tokio::spawn(async move {
        super::shutdown_signal().await;
        tracing::info!(
            grace_secs = grace.as_secs(),
            "shutdown requested; finishing in-flight requests (signal again to stop at once)"
        );
        cancel.cancel();
        // An operator who signals twice wants out now. Unacked deliveries go back to the queue
        // when the connection drops, so this loses nothing; it only skips the wait.
        super::shutdown_signal().await;
        tracing::warn!("second shutdown signal; exiting without waiting for in-flight requests");
        std::process::exit(130);
    });
    worker.wait().await;
    health_cancel.cancel();
    tracing::info!("worker exited cleanly");
    Ok(())
}
