//! `enqueue`: publish session requests from a file (one JSON object, or JSON lines) or samples.

use std::path::PathBuf;

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};

use crate::{
    amqp::{
        AmqpArgs, Publisher, Topology, TopologyOptions, connect, request_message, topology::DEFAULT_DELIVERY_LIMIT,
    },
    telemetry::propagation,
};

#[derive(clap::Args)]
pub struct EnqueueArgs {
    #[command(flatten)]
    pub amqp: AmqpArgs,
    /// A file holding one JSON request object, or one request per line (JSON lines).
    #[arg(long, conflicts_with = "sample", required_unless_present = "sample")]
    pub file: Option<PathBuf>,
    /// Publish N generated valid requests.
    #[arg(long)]
    pub sample: Option<usize>,
    /// The request queue's `x-delivery-limit`. It must match the worker's: the queue is declared
    /// here too (so requests enqueued before any worker started wait for it), and the broker
    /// refuses a declaration whose arguments differ from the existing queue's.
    #[arg(long, env = "AMQP_DELIVERY_LIMIT", default_value_t = DEFAULT_DELIVERY_LIMIT)]
    pub delivery_limit: u32,
}

pub async fn run(args: EnqueueArgs) -> anyhow::Result<()> {
    let bodies = match (&args.file, args.sample) {
        (Some(path), _) => read_file(path)?,
        (None, Some(n)) => (0..n)
            .map(|i| serde_json::to_vec(&super::sample::valid(i)).unwrap_or_default())
            .collect(),
        (None, None) => bail!("give --file FILE or --sample N"),
    };
    let connection = connect(&args.amqp.url, "guest-session-worker enqueue").await?;
    let topology = Topology::with_options(
        &args.amqp.name_prefix,
        TopologyOptions {
            delivery_limit: args.delivery_limit,
        },
    );
    topology
        .declare(&connection)
        .await
        .context("declaring the topology failed")?;
    let publisher = Publisher::open(&connection, 1).await?;
    let total = bodies.len();
    publish_all(&publisher, &topology, bodies, total >= 1000).await?;
    eprintln!(
        "enqueued {total} request(s) to exchange '{}' (routing key session.request)",
        topology.request_exchange
    );
    let _ = connection.close(200, "done".into()).await;
    Ok(())
}

/// Publishes every body with confirms, keeping a bounded window of unconfirmed messages.
pub async fn publish_all(
    publisher: &Publisher,
    topology: &Topology,
    bodies: Vec<Vec<u8>>,
    progress: bool,
) -> anyhow::Result<()> {
    const WINDOW: usize = 512;
    let bar = if progress {
        ProgressBar::new(bodies.len() as u64)
    } else {
        ProgressBar::hidden()
    };
    if let Ok(style) = ProgressStyle::with_template("{bar:40} {pos}/{len} requests {per_sec} eta {eta}") {
        bar.set_style(style);
    }
    let mut pending = Vec::with_capacity(WINDOW);
    for body in bodies {
        let message = request_message(topology, body, propagation::current_headers());
        pending.push(publisher.submit(message).await?);
        if pending.len() == WINDOW {
            for p in pending.drain(..) {
                p.confirmed().await?;
                bar.inc(1);
            }
        }
    }
    for p in pending {
        p.confirmed().await?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(())
}

fn read_file(path: &PathBuf) -> anyhow::Result<Vec<Vec<u8>>> {
    let text = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    // One object spread over many lines, or JSON lines: try the whole file first.
    if serde_json::from_slice::<serde_json::Value>(&text).is_ok_and(|v| v.is_object()) {
        return Ok(vec![text]);
    }
    let lines: Vec<Vec<u8>> = text
        .split(|b| *b == b'\n')
        .map(|l| l.trim_ascii().to_vec())
        .filter(|l| !l.is_empty())
        .collect();
    if lines.is_empty() {
        bail!("{} holds no request", path.display());
    }
    // Lines are sent as they are, even when one is not valid JSON: rejecting bad requests (with a
    // dead letter saying why) is the worker's job, and a test harness may want exactly that.
    Ok(lines)
}
