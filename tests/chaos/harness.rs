//! The chaos tests' world: a broker (the shared one, or a dedicated node), a Genesys simulator,
//! the worker's topology under a unique prefix with a CRM queue bound to the event exchange, and
//! the worker itself, either as the real binary in a child process ([`WorkerProcess`]) or in
//! process ([`World::start_worker_in_process`]).
//!
//! Outcomes are read from the durable queues at the end ([`World::outcomes`]): the CRM queue for
//! events (`correlation_id` = request_id), the dead-letter queue for dead letters (the original
//! `message_id`, which [`request_message`] sets to the request_id).

use std::{
    collections::{BTreeMap, HashSet},
    net::SocketAddr,
    path::PathBuf,
    process::{ExitStatus, Stdio},
    time::Duration,
};

use crate::leftovers::Leftovers;
use futures_util::StreamExt;
use guest_session_worker::{
    amqp::{Outgoing, Publisher, Topology, connect, headers, request_message, topology::EVENT_ROUTING_KEY},
    genesys::{GenesysClient, GenesysConfig},
    health::Readiness,
    metrics::Metrics,
    pipeline::{Worker, WorkerSettings},
    request::ValidationPolicy,
    sim::{self, RunningSim, SimConfig},
};
use lapin::{
    Channel, Connection,
    options::{BasicAckOptions, BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable, LongString},
};
use secrecy::SecretString;
use tokio::{
    process::{Child, Command},
    time::Instant,
};

pub const AUDIT_KEY: &str = "chaos-audit-key";
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// The shared broker (`AMQP_URL`, else the local default).
pub fn shared_amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| DEFAULT_AMQP_URL.to_string())
}

pub fn valid_request(request_id: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "request_id": request_id,
        "guest_id": format!("guest_{request_id}"),
        "display_name": "Ada",
        "attributes": { "source": "web_portal", "device_type": "desktop" },
        "consent": { "data_processing": true, "marketing": false },
        "routing": { "queue": "Web Support", "skills": ["web_support"], "language": "en", "priority": 1 },
        "initial_message": "Hi, I have a question about my order"
    }))
    .expect("json")
}

pub fn request_ids(tag: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{tag}-{i:05}")).collect()
}

/// A simulator fast enough not to be the subject of the test: no quota in the way.
pub fn fast_sim(latency_ms: u64) -> SimConfig {
    SimConfig {
        latency_ms,
        quota_per_minute: 1_000_000,
        ..SimConfig::for_tests()
    }
}

/// Polls `check` every 50 ms until it holds; false when `timeout` passed first.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub struct World {
    pub url: String,
    pub prefix: String,
    pub topology: Topology,
    pub sim: RunningSim,
    pub sim_config: SimConfig,
    pub events_queue: String,
    connection: Connection,
    channel: Channel,
    publisher: Publisher,
    logs: PathBuf,
    leftovers: Leftovers,
}

impl World {
    /// Declares the topology under a fresh prefix on the broker at `url`, binds a CRM queue and
    /// starts the simulator.
    pub async fn start(url: &str, sim_config: SimConfig) -> Self {
        let prefix = format!("chaos-{}.", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let topology = Topology::new(&prefix);
        let sim = sim::spawn(sim_config.clone()).await.expect("simulator starts");
        let connection = connect(url, "chaos-observer")
            .await
            .expect("the broker is reachable (set AMQP_URL)");
        topology.declare(&connection).await.expect("topology");
        let channel = connection.create_channel().await.expect("channel");
        let events_queue = format!("{prefix}crm-observer");
        let mut quorum = FieldTable::default();
        quorum.insert("x-queue-type".into(), AMQPValue::LongString(LongString::from("quorum")));
        channel
            .queue_declare(
                events_queue.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                quorum,
            )
            .await
            .expect("declare the CRM queue");
        channel
            .queue_bind(
                events_queue.as_str().into(),
                topology.crm_exchange.as_str().into(),
                EVENT_ROUTING_KEY.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind the CRM queue");
        let publisher = Publisher::open(&connection, 1).await.expect("publisher");
        let logs = std::env::temp_dir().join(format!("{prefix}logs"));
        std::fs::create_dir_all(&logs).expect("log dir");
        let mut leftovers = Leftovers::new(url, &topology);
        leftovers.queues.push(events_queue.clone());
        Self {
            leftovers,
            url: url.to_string(),
            prefix,
            topology,
            sim,
            sim_config,
            events_queue,
            connection,
            channel,
            publisher,
            logs,
        }
    }

    /// The observer's channel (declarations, deletions).
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// True when `queue` exists (a passive declare, on a throwaway channel since a failing one
    /// closes its channel).
    pub async fn queue_exists(&self, queue: &str) -> bool {
        let Ok(channel) = self.connection.create_channel().await else {
            return false;
        };
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let exists = channel
            .queue_declare(queue.into(), passive, FieldTable::default())
            .await
            .is_ok();
        let _ = channel.close(200, "probed".into()).await;
        exists
    }

    /// Binds the CRM queue to the event exchange again (after the exchange was re-declared).
    pub async fn rebind_events(&self) {
        self.channel
            .queue_bind(
                self.events_queue.as_str().into(),
                self.topology.crm_exchange.as_str().into(),
                EVENT_ROUTING_KEY.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind the CRM queue");
    }

    /// A new observer connection (the old one died with a restarted broker).
    pub async fn reconnect(&mut self) {
        self.connection = connect(&self.url, "chaos-observer").await.expect("broker back");
        self.channel = self.connection.create_channel().await.expect("channel");
        self.publisher = Publisher::open(&self.connection, 1).await.expect("publisher");
    }

    /// Publishes one request per id (persistent, confirmed), 200 at a time.
    pub async fn publish_requests(&self, ids: &[String]) {
        for chunk in ids.chunks(200) {
            let publishes = chunk.iter().map(|id| self.publish_body(valid_request(id)));
            futures_util::future::join_all(publishes).await;
        }
    }

    pub async fn publish_body(&self, body: Vec<u8>) {
        self.publish(request_message(&self.topology, body, FieldTable::default()))
            .await;
    }

    /// Publishes `message` (a request with properties of the test's choosing), confirmed.
    pub async fn publish(&self, message: Outgoing) {
        self.publisher
            .publish(message)
            .await
            .expect("request published and confirmed");
    }

    /// A fresh exclusive queue for replies; it goes away with the observer's connection.
    pub async fn reply_queue(&self) -> String {
        let queue = self
            .channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("declare a reply queue");
        queue.name().to_string()
    }

    /// Ready messages in `queue` (unacked ones are not counted).
    pub async fn count(&self, queue: &str) -> u32 {
        let channel = self.connection.create_channel().await.expect("channel");
        let declared = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("queue exists");
        let _ = channel.close(200, "counted".into()).await;
        declared.message_count()
    }

    /// Events plus dead letters so far (each request ends as at least one of them).
    pub async fn settled(&self) -> u32 {
        self.count(&self.events_queue).await + self.count(&self.topology.dead_letter_queue).await
    }

    /// Waits until `total` outcomes are in and the request queue is empty (the worker may still
    /// hold the last requests: see [`World::finish_and_stop`]).
    pub async fn wait_finished(&self, worker: &WorkerProcess, total: usize) {
        let done = eventually(Duration::from_secs(180), || async {
            self.settled().await as usize >= total && self.count(&self.topology.request_queue).await == 0
        })
        .await;
        assert!(done, "the load did not finish; log:\n{}", worker.log_tail());
    }

    /// Waits until `total` outcomes are in and the request queue is empty, then stops `worker`
    /// gracefully (the exit must be clean). After lost sessions the outcome count includes redone
    /// requests' duplicates, so it can be reached while the last requests are still in the worker:
    /// in flight (the stop finishes them) or prefetched and not started (the stop returns them to
    /// the queue). Then a fresh worker from `respawn` takes those, up to three times.
    pub async fn finish_and_stop<F, Fut>(&self, mut worker: WorkerProcess, total: usize, respawn: F)
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = WorkerProcess>,
    {
        for stop in 1..=3 {
            self.wait_finished(&worker, total).await;
            let (status, _) = worker.terminate(Duration::from_secs(30)).await;
            assert_eq!(status.code(), Some(0), "exit status {status:?}");
            let returned = self.count(&self.topology.request_queue).await;
            if returned == 0 {
                return;
            }
            assert!(stop < 3, "{returned} requests still queued after three graceful stops");
            eprintln!("the graceful stop returned {returned} prefetched requests; a fresh worker takes them");
            worker = respawn().await;
            worker.wait_ready(Duration::from_secs(20)).await;
        }
    }

    /// Reads (and acks) every message now in the CRM and dead-letter queues.
    pub async fn outcomes(&self) -> Outcomes {
        let mut outcomes = Outcomes::default();
        for delivery in self.read_all(&self.events_queue.clone()).await {
            let request_id = delivery
                .properties
                .correlation_id()
                .as_ref()
                .map(|c| c.to_string())
                .expect("events carry the request id as correlation_id");
            let event: serde_json::Value = serde_json::from_slice(&delivery.data).expect("event JSON");
            let conversation = event["session"]["conversation_id"]
                .as_str()
                .expect("conversation id")
                .to_string();
            assert_eq!(event["request_id"].as_str(), Some(request_id.as_str()));
            outcomes.events.entry(request_id).or_default().push(conversation);
        }
        for delivery in self.read_all(&self.topology.dead_letter_queue.clone()).await {
            let id = delivery
                .properties
                .message_id()
                .as_ref()
                .map(|m| m.to_string())
                .unwrap_or_default();
            let table = delivery.properties.headers().as_ref();
            let reason = headers::get_str(table, "x-error-kind")
                .or_else(|| headers::get_str(table, "x-first-death-reason"))
                .unwrap_or_else(|| "unknown".into());
            outcomes.dead.entry(id).or_default().push(reason);
        }
        outcomes
    }

    pub async fn read_all(&self, queue: &str) -> Vec<lapin::message::Delivery> {
        let n = self.count(queue).await as usize;
        let channel = self.connection.create_channel().await.expect("channel");
        let mut consumer = channel
            .basic_consume(
                queue.into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consume");
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            match tokio::time::timeout(Duration::from_secs(30), consumer.next()).await {
                Ok(Some(Ok(delivery))) => {
                    delivery.acker.ack(BasicAckOptions::default()).await.expect("ack");
                    out.push(delivery);
                }
                other => panic!("reading {queue} stopped after {} of {n}: {other:?}", out.len()),
            }
        }
        let _ = channel.close(200, "read".into()).await;
        out
    }

    /// The environment of `guest-session-worker run` against this world.
    pub fn worker_env(&self, concurrency: usize, grace_secs: u64) -> Vec<(String, String)> {
        let base = self.sim.base_url();
        [
            ("AMQP_URL", self.url.clone()),
            ("AMQP_NAME_PREFIX", self.prefix.clone()),
            ("GENESYS_API_URL", base.clone()),
            ("GENESYS_LOGIN_URL", base),
            ("GENESYS_CLIENT_ID", self.sim_config.client_id.clone()),
            ("GENESYS_CLIENT_SECRET", self.sim_config.client_secret.clone()),
            ("GENESYS_INTEGRATION_ID", self.sim_config.integration_id.clone()),
            // The simulator's quota is not what these tests are about.
            ("GENESYS_RATE_LIMIT_PER_MINUTE", "600000".to_string()),
            ("AUDIT_HMAC_KEY", AUDIT_KEY.to_string()),
            ("WORKER_CONCURRENCY", concurrency.to_string()),
            ("WORKER_SHUTDOWN_GRACE_SECS", grace_secs.to_string()),
            ("RUST_LOG", "info".to_string()),
            ("LOG_FORMAT", "json".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Starts the real binary against this world.
    pub async fn spawn_worker(&self, concurrency: usize, grace_secs: u64) -> WorkerProcess {
        self.spawn_worker_with(&self.worker_env(concurrency, grace_secs)).await
    }

    /// Starts the real binary with this environment (see [`World::worker_env`]).
    pub async fn spawn_worker_with(&self, env: &[(String, String)]) -> WorkerProcess {
        WorkerProcess::spawn(env, &self.logs).await
    }

    /// A worker in this process, with a Genesys client configured by `tune`.
    pub async fn start_worker_in_process(
        &self,
        concurrency: usize,
        tune: impl FnOnce(&mut GenesysConfig),
    ) -> (Worker, Readiness) {
        let mut config = GenesysConfig::for_simulator(
            &self.sim.base_url(),
            &self.sim_config.client_id,
            &self.sim_config.client_secret,
            &self.sim_config.integration_id,
        );
        config.rate_limit_per_minute = 600_000;
        tune(&mut config);
        let settings = WorkerSettings {
            amqp_url: self.url.clone(),
            topology: self.topology.clone(),
            concurrency,
            publisher_lanes: 2,
            shutdown_grace: Duration::from_secs(10),
            policy: ValidationPolicy::default(),
            audit_key: SecretString::from(AUDIT_KEY),
            crm_queue: None,
        };
        let readiness = Readiness::default();
        let worker = Worker::start(
            settings,
            GenesysClient::new(config).expect("genesys client"),
            Metrics::new(),
            readiness.clone(),
        )
        .await
        .expect("worker starts");
        (worker, readiness)
    }

    /// Deletes what the test declared and stops the simulator.
    pub async fn cleanup(mut self) {
        self.leftovers.delete_now(&self.channel).await;
        let _ = self.connection.close(200, "chaos test done".into()).await;
        self.sim.shutdown().await;
        let _ = std::fs::remove_dir_all(&self.logs);
    }
}

/// What became of the requests: conversation ids of their events, reasons of their dead letters.
#[derive(Debug, Default)]
pub struct Outcomes {
    pub events: BTreeMap<String, Vec<String>>,
    pub dead: BTreeMap<String, Vec<String>>,
}

impl Outcomes {
    pub fn missing<'a>(&self, ids: &'a [String]) -> Vec<&'a String> {
        ids.iter()
            .filter(|id| !self.events.contains_key(*id) && !self.dead.contains_key(*id))
            .collect()
    }

    /// Requests with more than one terminal message.
    pub fn duplicated(&self) -> Vec<&String> {
        let ids: HashSet<&String> = self.events.keys().chain(self.dead.keys()).collect();
        let mut out: Vec<&String> = ids.into_iter().filter(|id| self.count(id) > 1).collect();
        out.sort();
        out
    }

    pub fn count(&self, id: &str) -> usize {
        self.events.get(id).map_or(0, Vec::len) + self.dead.get(id).map_or(0, Vec::len)
    }

    /// Requests whose events name more than one conversation.
    pub fn conflicting_conversations(&self) -> Vec<(&String, &Vec<String>)> {
        self.events
            .iter()
            .filter(|(_, conversations)| conversations.iter().collect::<HashSet<_>>().len() > 1)
            .collect()
    }

    pub fn dead_letter_count(&self) -> usize {
        self.dead.values().map(Vec::len).sum()
    }
}

/// `guest-session-worker run` in a child process.
pub struct WorkerProcess {
    child: Child,
    pub health: SocketAddr,
    log: PathBuf,
}

impl WorkerProcess {
    pub async fn spawn(env: &[(String, String)], log_dir: &std::path::Path) -> Self {
        let health = free_local_addr();
        let log = log_dir.join(format!("worker-{}.log", uuid::Uuid::new_v4().simple()));
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_guest-session-worker"))
            .arg("run")
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("HEALTH_ADDR", health.to_string())
            // Whatever the test runner's environment says, no export from the child.
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .expect("the worker binary starts");
        Self { child, health, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// `GET /readyz` answers 200.
    pub async fn ready(&self) -> bool {
        let url = format!("http://{}/readyz", self.health);
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(1))
            .build()
            .expect("http client");
        matches!(client.get(url).send().await, Ok(response) if response.status().is_success())
    }

    /// Waits for `/readyz`; the time it took, or a panic with the worker's log.
    pub async fn wait_ready(&self, timeout: Duration) -> Duration {
        let started = Instant::now();
        if !eventually(timeout, || self.ready()).await {
            panic!("the worker was not ready within {timeout:?}; log:\n{}", self.log_tail());
        }
        started.elapsed()
    }

    /// SIGKILL: no shutdown code runs.
    pub async fn kill9(mut self) {
        self.child.start_kill().expect("kill -9");
        let _ = self.child.wait().await;
    }

    /// SIGTERM, then waits (at most `timeout`) for the exit; the status and how long it took.
    pub async fn terminate(mut self, timeout: Duration) -> (ExitStatus, Duration) {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("kill -TERM runs");
        assert!(status.success(), "kill -TERM failed");
        let started = Instant::now();
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(Ok(exit)) => (exit, started.elapsed()),
            _ => panic!(
                "the worker did not exit within {timeout:?} of SIGTERM; log:\n{}",
                self.log_tail()
            ),
        }
    }

    /// The last lines of the worker's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

/// A loopback address with a port free right now (bound and released).
pub fn free_local_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}
