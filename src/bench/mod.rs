//! Benchmarks behind `guest-session-worker bench …`: real worker processes against the local broker
//! and an in-process Genesys simulator, with results written to `BENCHMARKS.md`.
//!
//! This module holds what every scenario family shares:
//!
//! - [`Lab`]: a broker connection under a unique name prefix, the worker topology, a backlog
//!   publisher, and observers of the created-session events and dead letters (queues bound to the
//!   CRM and dead-letter exchanges, as a CRM consumer and an operator would have).
//! - [`Workers`]: N processes of the current executable running `run`, each with its own
//!   `/metrics` port, configured for the simulator; killed when dropped.
//! - [`write_section`]: one section per scenario family in `BENCHMARKS.md`, replaced in place on the
//!   next run, so families (rate limits, throughput, …) coexist in one file.
//!
//! [`cpu`] says where a run's CPU went (this process, the workers, a local broker).
//!
//! Families: [`rate_limit`] (pacing under one shared quota, 429 storms) and [`perf`] (throughput
//! against the bare-broker ceiling, latency scaling, added latency, memory).

pub mod cpu;
pub mod disk;
pub mod floor;
pub mod latency;
pub mod perf;
pub mod rate_limit;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use futures_util::StreamExt;
use lapin::{
    Channel, Connection,
    options::{QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions},
    types::FieldTable,
};
use tokio::{process::Child, task::JoinHandle, time::Instant};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    amqp::{
        ConnectError, PublishError, Publisher, Topology, connect, request_message,
        topology::{EVENT_ROUTING_KEY, inspect, quorum},
    },
    sim::{RunningSim, SimConfig, SimError},
};

/// Why a benchmark could not run (a missed target is not an error: it is reported in the table).
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("RabbitMQ refused a benchmark operation: {0}")]
    Broker(#[from] lapin::Error),
    #[error("publishing the backlog failed: {0}")]
    Publish(#[from] PublishError),
    #[error(transparent)]
    Sim(#[from] SimError),
    #[error("cannot start the worker process {exe}")]
    Spawn {
        exe: String,
        #[source]
        source: std::io::Error,
    },
    #[error("worker process {index} exited early ({status}); run it alone to see why")]
    WorkerExited { index: usize, status: String },
    #[error("cannot find a free local port for a worker's /metrics")]
    Port(#[source] std::io::Error),
    #[error("cannot read worker {index}'s metrics at {url}")]
    Metrics {
        index: usize,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("cannot control the simulator")]
    SimControl(#[source] reqwest::Error),
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("the floor loop failed: {0}")]
    Floor(String),
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// How often [`Lab::observe_queued`] reads its queues' depth.
const DEPTH_POLL: Duration = Duration::from_millis(5);

/// A unique name prefix for one scenario run, under the operator's own prefix.
pub fn unique_prefix(base: &str, family: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{base}bench-{family}-{}.", &id[..10])
}

/// Bound on [`Lab::close`] waiting for its observers to close their channels.
const OBSERVERS_STOP_TIMEOUT: Duration = Duration::from_secs(2);

/// The broker side of one scenario: topology, backlog, observers. Call [`Lab::close`] at the end:
/// it deletes everything the scenario declared.
pub struct Lab {
    pub url: String,
    pub topology: Topology,
    connection: Connection,
    channel: Channel,
    publisher: Publisher,
    /// The CRM consumer's queue of [`Lab::observe_queued`] (declared only there).
    crm_sink: String,
    /// The observer tasks, stopped by [`Lab::close`] before it deletes the queues they read (a
    /// depth poll of a deleted queue makes the broker close its channel, which lapin logs as an
    /// error).
    observers: TaskTracker,
    stop_observing: CancellationToken,
}

impl Lab {
    /// Connects and declares the worker topology under `prefix`.
    pub async fn open(url: &str, prefix: &str) -> Result<Self, BenchError> {
        let connection = connect(url, "guest-session-worker bench").await?;
        let topology = Topology::new(prefix);
        topology.declare(&connection).await?;
        let channel = connection.create_channel().await?;
        let publisher = Publisher::open(&connection, 1).await?;
        Ok(Self {
            url: url.to_string(),
            topology,
            connection,
            channel,
            publisher,
            crm_sink: format!("{prefix}crm.session-events"),
            observers: TaskTracker::new(),
            stop_observing: CancellationToken::new(),
        })
    }

    /// Publishes `n` valid sample requests with confirms (a window of unconfirmed ones in flight).
    pub async fn enqueue(&self, n: usize) -> Result<(), BenchError> {
        const WINDOW: usize = 256;
        let mut pending = Vec::with_capacity(WINDOW);
        for i in 0..n {
            let body = serde_json::to_vec(&crate::cli::sample::valid(i)).unwrap_or_default();
            let message = request_message(&self.topology, body, FieldTable::default());
            pending.push(self.publisher.submit(message).await?);
            if pending.len() == WINDOW {
                for p in pending.drain(..) {
                    p.confirmed().await?;
                }
            }
        }
        for p in pending {
            p.confirmed().await?;
        }
        Ok(())
    }

    /// Waits until some process consumes the request queue and returns when it was seen (within
    /// a millisecond or so): the point where the ceiling's and the floor's clocks start, after
    /// their connection and consumer are set up.
    pub async fn consuming(&self, timeout: Duration) -> Result<Instant, BenchError> {
        let deadline = Instant::now() + timeout;
        loop {
            let queue = inspect(&self.channel, &self.topology.request_queue).await?;
            if queue.consumer_count() > 0 {
                return Ok(Instant::now());
            }
            if Instant::now() > deadline {
                return Err(BenchError::Timeout("no worker consumed the request queue".into()));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Counts the created-session events (CRM exchange) and the dead letters (dead-letter
    /// exchange) from now on, each through an exclusive queue of this lab's connection.
    pub async fn observe(&self) -> Result<Outcomes, BenchError> {
        let created = self.count(&self.topology.crm_exchange, EVENT_ROUTING_KEY).await?;
        let dead = self.count(&self.topology.dead_letter_exchange, "").await?;
        Ok(Outcomes { created, dead })
    }

    /// Like [`Lab::observe`], but nothing is consumed: each count is a queue's depth, read every
    /// [`DEPTH_POLL`]. Events go to a durable quorum queue bound to the CRM exchange, as a CRM
    /// consumer's own queue (`examples/crm_consumer.rs`) and as the ceiling's sink; dead letters
    /// are counted in the topology's dead-letter queue. The broker then routes and stores every
    /// message but delivers none, as in the ceiling loop, and this process spends nothing per
    /// message.
    pub async fn observe_queued(&self) -> Result<Outcomes, BenchError> {
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        let sink = self.crm_sink.as_str();
        self.channel.queue_declare(sink.into(), durable, quorum()).await?;
        self.channel
            .queue_bind(
                sink.into(),
                self.topology.crm_exchange.as_str().into(),
                EVENT_ROUTING_KEY.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let created = self.depth(sink).await?;
        let dead = self.depth(&self.topology.dead_letter_queue).await?;
        Ok(Outcomes { created, dead })
    }

    async fn depth(&self, queue: &str) -> Result<Counter, BenchError> {
        let channel = self.connection.create_channel().await?;
        let name = queue.to_string();
        let count = Arc::new(AtomicU64::new(0));
        let task = self.spawn_observer(channel.clone(), {
            let count = Arc::clone(&count);
            async move {
                loop {
                    tokio::time::sleep(DEPTH_POLL).await;
                    match inspect(&channel, &name).await {
                        Ok(queue) => count.store(u64::from(queue.message_count()), Ordering::Relaxed),
                        Err(_) => break,
                    }
                }
            }
        });
        Ok(Counter { count, task })
    }

    async fn count(&self, exchange: &str, routing_key: &str) -> Result<Counter, BenchError> {
        let channel = self.connection.create_channel().await?;
        let mut consumer = crate::amqp::tap(&channel, exchange, routing_key, true).await?;
        let count = Arc::new(AtomicU64::new(0));
        let task = self.spawn_observer(channel, {
            let count = Arc::clone(&count);
            async move {
                // no_ack: the broker forgets each message once delivered; we only count them.
                while let Some(Ok(_)) = consumer.next().await {
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        Ok(Counter { count, task })
    }

    /// Runs an observer until it ends or [`Lab::close`] stops it, then closes its channel (which
    /// ends a consumer; and the close-ok comes after the answer to a poll still in flight).
    fn spawn_observer(&self, channel: Channel, observe: impl Future<Output = ()> + Send + 'static) -> JoinHandle<()> {
        let stop = self.stop_observing.clone();
        self.observers.spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = observe => {}
            }
            let _ = channel.close(200, "observer done".into()).await;
        })
    }

    /// Stops the observers, deletes the topology and the CRM sink and closes the connection (the
    /// exclusive observer queues go with it).
    pub async fn close(self) {
        self.stop_observing.cancel();
        self.observers.close();
        let _ = tokio::time::timeout(OBSERVERS_STOP_TIMEOUT, self.observers.wait()).await;
        let _ = self
            .channel
            .queue_delete(self.crm_sink.as_str().into(), QueueDeleteOptions::default())
            .await;
        let _ = self.topology.delete(&self.channel).await;
        let _ = self.connection.close(200, "bench done".into()).await;
    }
}

/// A running count of messages reaching an observer queue.
pub struct Counter {
    count: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Counter {
    pub fn get(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

impl Drop for Counter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What became of the backlog, as the broker tells it.
pub struct Outcomes {
    pub created: Counter,
    pub dead: Counter,
}

impl Outcomes {
    /// Requests that reached a final outcome (created or dead-lettered).
    pub fn settled(&self) -> u64 {
        self.created.get() + self.dead.get()
    }
}

/// Starts the Genesys simulator in-process on an ephemeral port, on a thread and runtime of its
/// own (as a remote Genesys, it does not share the runtime of the loops being measured).
pub async fn spawn_sim(config: SimConfig) -> Result<RunningSim, BenchError> {
    Ok(crate::sim::spawn_on_own_thread(config).await?)
}

/// How to start each worker process.
#[derive(Debug, Clone)]
pub struct WorkerSpec {
    /// The executable to run with `run` (normally this one, [`std::env::current_exe`]).
    pub exe: PathBuf,
    pub amqp_url: String,
    pub name_prefix: String,
    /// The simulator's base URL (both the API and the login host).
    pub genesys_url: String,
    pub client_id: String,
    pub client_secret: String,
    pub integration_id: String,
    pub rate_limit_per_minute: u32,
    pub concurrency: u16,
    /// `RUST_LOG` of the workers (their logs go to this process's stderr).
    pub log_filter: String,
}

impl WorkerSpec {
    /// A spec for `sim`'s default client, running this executable.
    pub fn for_sim(sim: &RunningSim, config: &SimConfig, amqp_url: &str, name_prefix: &str) -> Self {
        Self {
            exe: this_executable(),
            amqp_url: amqp_url.to_string(),
            name_prefix: name_prefix.to_string(),
            genesys_url: sim.base_url(),
            client_id: config.client_id.clone(),
            client_secret: config.client_secret.clone(),
            integration_id: config.integration_id.clone(),
            rate_limit_per_minute: 300,
            concurrency: 64,
            log_filter: "warn".to_string(),
        }
    }
}

/// The running executable. If it was replaced on disk while running (a rebuild), Linux reports
/// `path (deleted)`: the new binary at `path` is what a fresh process would run.
fn this_executable() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from(env!("CARGO_PKG_NAME")));
    match exe.to_str().and_then(|p| p.strip_suffix(" (deleted)")) {
        Some(path) if !exe.exists() => PathBuf::from(path),
        _ => exe,
    }
}

/// Worker processes started by a benchmark; killed when dropped.
pub struct Workers {
    processes: Vec<(Child, String)>,
    http: reqwest::Client,
}

impl Workers {
    /// Starts `n` processes of `spec.exe run`.
    pub async fn spawn(spec: &WorkerSpec, n: usize) -> Result<Self, BenchError> {
        let mut processes = Vec::with_capacity(n);
        for _ in 0..n {
            let port = free_port()?;
            let mut command = tokio::process::Command::new(&spec.exe);
            command
                .arg("run")
                .env("AMQP_URL", &spec.amqp_url)
                .env("AMQP_NAME_PREFIX", &spec.name_prefix)
                .env("GENESYS_API_URL", &spec.genesys_url)
                .env("GENESYS_LOGIN_URL", &spec.genesys_url)
                .env("GENESYS_SESSION_API", "open-messaging")
                .env("GENESYS_CLIENT_ID", &spec.client_id)
                .env("GENESYS_CLIENT_SECRET", &spec.client_secret)
                .env("GENESYS_INTEGRATION_ID", &spec.integration_id)
                .env("GENESYS_RATE_LIMIT_PER_MINUTE", spec.rate_limit_per_minute.to_string())
                .env("WORKER_CONCURRENCY", spec.concurrency.to_string())
                .env("AUDIT_HMAC_KEY", uuid::Uuid::new_v4().to_string())
                .env("HEALTH_ADDR", format!("127.0.0.1:{port}"))
                .env("LOG_FORMAT", "pretty")
                .env("RUST_LOG", &spec.log_filter)
                // The benchmark measures pacing, not trace export.
                .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
                .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .kill_on_drop(true);
            let child = command.spawn().map_err(|source| BenchError::Spawn {
                exe: spec.exe.display().to_string(),
                source,
            })?;
            processes.push((child, format!("http://127.0.0.1:{port}/metrics")));
        }
        Ok(Self {
            processes,
            http: reqwest::Client::new(),
        })
    }

    pub fn len(&self) -> usize {
        self.processes.len()
    }

    /// The worker processes' ids (to read their memory use).
    pub fn pids(&self) -> Vec<u32> {
        self.processes.iter().filter_map(|(child, _)| child.id()).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.processes.is_empty()
    }

    /// Fails if a worker process has exited (a benchmark would otherwise wait for nothing).
    pub fn check_alive(&mut self) -> Result<(), BenchError> {
        for (index, (child, _)) in self.processes.iter_mut().enumerate() {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(BenchError::WorkerExited {
                    index,
                    status: status.to_string(),
                });
            }
        }
        Ok(())
    }

    /// Waits until every worker serves `/metrics` (it is up and configured).
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<(), BenchError> {
        let deadline = Instant::now() + timeout;
        for index in 0..self.processes.len() {
            loop {
                self.check_alive()?;
                if self.http.get(&self.processes[index].1).send().await.is_ok() {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(BenchError::Timeout(format!("worker {index} did not start")));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    /// Each worker's Genesys counters, from its `/metrics`.
    pub async fn scrape(&self) -> Result<Vec<WorkerCounters>, BenchError> {
        let mut all = Vec::with_capacity(self.processes.len());
        for (index, (_, url)) in self.processes.iter().enumerate() {
            let text = async { self.http.get(url).send().await?.error_for_status()?.text().await }
                .await
                .map_err(|source| BenchError::Metrics {
                    index,
                    url: url.clone(),
                    source,
                })?;
            all.push(WorkerCounters::parse(&text));
        }
        Ok(all)
    }

    /// Kills every worker and waits for it: the broker returns their unacked deliveries.
    pub async fn stop(mut self) {
        for (child, _) in &mut self.processes {
            let _ = child.start_kill();
        }
        for (child, _) in &mut self.processes {
            let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
        }
    }
}

/// One worker's Genesys counters (DESIGN §6 metrics).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerCounters {
    /// Genesys HTTP responses by status (`error` for no response).
    pub responses: HashMap<String, u64>,
}

impl WorkerCounters {
    const RESPONSES: &'static str = "guest_session_worker_genesys_responses_total{";

    /// Reads `guest_session_worker_genesys_responses_total{status="…"} N` samples.
    pub fn parse(text: &str) -> Self {
        let mut responses = HashMap::new();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix(Self::RESPONSES) else {
                continue;
            };
            let Some((labels, value)) = rest.split_once('}') else {
                continue;
            };
            let status = labels
                .split(',')
                .find_map(|l| l.trim().strip_prefix("status=\""))
                .map(|s| s.trim_end_matches('"').to_string());
            let value = value.split_whitespace().next().and_then(|v| v.parse::<f64>().ok());
            if let (Some(status), Some(value)) = (status, value) {
                *responses.entry(status).or_default() += value as u64;
            }
        }
        Self { responses }
    }

    /// Every Genesys call this worker made.
    pub fn calls(&self) -> u64 {
        self.responses.values().sum()
    }

    pub fn status(&self, status: &str) -> u64 {
        self.responses.get(status).copied().unwrap_or(0)
    }

    /// Calls answered 2xx.
    pub fn succeeded(&self) -> u64 {
        self.responses
            .iter()
            .filter(|(s, _)| s.starts_with('2'))
            .map(|(_, n)| n)
            .sum()
    }
}

/// A local TCP port that was free a moment ago.
pub fn free_port() -> Result<u16, BenchError> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).map_err(BenchError::Port)?;
    Ok(listener.local_addr().map_err(BenchError::Port)?.port())
}

fn markers(family: &str) -> (String, String) {
    (
        format!("<!-- bench:{family}:begin -->"),
        format!("<!-- bench:{family}:end -->"),
    )
}

/// Writes `body` as the `family` section of the Markdown file at `path`: replaces the section of
/// a previous run in place, or appends it; creates the file (with a title) if needed. Other
/// sections are left alone.
pub fn write_section(path: &Path, family: &str, body: &str) -> Result<(), BenchError> {
    let (begin, end) = markers(family);
    let section = format!("{begin}\n{}\n{end}\n", body.trim_end());
    let existing = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            "# Benchmarks\n\nGenerated by `guest-session-worker bench …`; each section is replaced by its next run.\n"
                .to_string()
        }
        Err(source) => {
            return Err(BenchError::Write {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let merged = match (existing.find(&begin), existing.find(&end)) {
        (Some(start), Some(stop)) if stop > start => {
            let after = existing[stop + end.len()..].trim_start_matches('\n');
            format!(
                "{}{section}{}{after}",
                &existing[..start],
                if after.is_empty() { "" } else { "\n" }
            )
        }
        _ => format!("{}\n{section}", existing.trim_end().to_string() + "\n"),
    };
    std::fs::write(path, merged).map_err(|source| BenchError::Write {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_are_replaced_in_place_and_others_kept() {
        let dir = std::env::temp_dir().join(format!("bench-md-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("BENCHMARKS.md");
        write_section(&path, "perf", "## Perf\nfirst").unwrap();
        write_section(&path, "rate-limit", "## Rate limits\none").unwrap();
        write_section(&path, "perf", "## Perf\nsecond").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("# Benchmarks"), "{text}");
        assert!(text.contains("second") && !text.contains("first"), "{text}");
        assert!(text.contains("## Rate limits\none"), "{text}");
        assert!(
            text.find("## Perf").unwrap() < text.find("## Rate limits").unwrap(),
            "{text}"
        );
        assert_eq!(text.matches("bench:perf:begin").count(), 1, "{text}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn worker_counters_read_the_openmetrics_text() {
        let text = "# TYPE guest_session_worker_genesys_responses counter\n\
            guest_session_worker_genesys_responses_total{status=\"202\"} 280\n\
            guest_session_worker_genesys_responses_total{status=\"429\"} 3\n\
            guest_session_worker_genesys_responses_total{status=\"error\"} 1\n\
            guest_session_worker_genesys_rate_limited_total 3\n# EOF\n";
        let c = WorkerCounters::parse(text);
        assert_eq!((c.calls(), c.succeeded(), c.status("429")), (284, 280, 3));
    }
}
