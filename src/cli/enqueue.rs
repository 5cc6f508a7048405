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
    let whole = serde_json::from_slice::<serde_json::Value>(&text);
    if whole.as_ref().is_ok_and(|v| v.is_object()) {
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
    // A lone `{` is never a JSON-lines record: this is one pretty-printed object that does not
    // parse, and its lines sent one by one would be as many malformed requests.
    if let (Some(b"{"), Err(error)) = (lines.first().map(Vec::as_slice), whole) {
        bail!("{} is not one valid JSON object: {error}", path.display());
    }
    // Lines are sent as they are, even when one is not valid JSON: rejecting bad requests (with a
    // dead letter saying why) is the worker's job, and a test harness may want exactly that.
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::read_file;

    fn read(text: &str) -> Result<Vec<String>, String> {
        let dir = std::env::temp_dir().join(format!("enqueue-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let path = dir.join("req.json");
        std::fs::write(&path, text).map_err(|e| e.to_string())?;
        let read = read_file(&path)
            .map(|bodies| {
                bodies
                    .into_iter()
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .collect()
            })
            .map_err(|e| e.to_string());
        let _ = std::fs::remove_dir_all(&dir);
        read
    }

    #[test]
    fn a_pretty_printed_object_is_one_request() {
        let bodies = read("{\n  \"request_id\": \"r-1\",\n  \"guest_id\": \"g-1\"\n}\n").unwrap();
        assert_eq!(bodies.len(), 1);
    }

    #[test]
    fn json_lines_are_one_request_each_even_a_malformed_one() {
        let bodies = read("{\"request_id\": \"r-1\"}\n\nnot json\n{\"request_id\": \"r-2\"}\n").unwrap();
        assert_eq!(
            bodies,
            ["{\"request_id\": \"r-1\"}", "not json", "{\"request_id\": \"r-2\"}"]
        );
    }

    #[test]
    fn a_pretty_printed_object_that_does_not_parse_is_refused_with_where() {
        let error = read("{\n  \"request_id\": \"r-1\",\n}\n").unwrap_err();
        assert!(
            error.contains("not one valid JSON object") && error.contains("line 3"),
            "{error}"
        );
    }

    #[test]
    fn an_empty_file_is_refused() {
        assert!(read("\n  \n").unwrap_err().contains("holds no request"));
    }
}
