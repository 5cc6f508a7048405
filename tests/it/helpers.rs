//! Test harness: a real broker (AMQP_URL, or RabbitMQ in a testcontainer), a real simulator on a
//! random port, and a worker under a unique name prefix, all started per test.

use std::{process::Output, time::Duration};

use futures_util::StreamExt;
use guest_session_worker::{
    amqp::{
        Outgoing, Publisher, Topology, connect, request_message,
        tap::{bind_exclusive, declare_exclusive},
        topology::EVENT_ROUTING_KEY,
    },
    genesys::{GenesysClient, GenesysConfig},
    health::Readiness,
    metrics::Metrics,
    pipeline::{Worker, WorkerSettings},
    request::ValidationPolicy,
    sim::{self, Faults, RunningSim, SimConfig},
};
use lapin::{
    BasicProperties, Channel, Connection, Consumer,
    message::Delivery,
    options::{BasicAckOptions, BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions},
    types::FieldTable,
};
use secrecy::SecretString;
use tokio::sync::OnceCell;

use crate::leftovers::Leftovers;

pub const AUDIT_KEY: &str = "test-audit-key";

/// The broker every test uses: `AMQP_URL`, or one RabbitMQ container shared by the test binary.
pub async fn amqp_url() -> String {
    static URL: OnceCell<String> = OnceCell::const_new();
    URL.get_or_init(|| async {
        if let Ok(url) = std::env::var("AMQP_URL") {
            return url;
        }
        start_container().await
    })
    .await
    .clone()
}

async fn start_container() -> String {
    use testcontainers_modules::{rabbitmq::RabbitMq, testcontainers::runners::AsyncRunner};
    let container = RabbitMq::default()
        .start()
        .await
        .expect("AMQP_URL is unset and RabbitMQ could not be started with Docker (testcontainers)");
    let host = container.get_host().await.expect("container host");
    let port = container.get_host_port_ipv4(5672).await.expect("container port");
    // Kept for the life of the test process.
    std::mem::forget(container);
    format!("amqp://guest:guest@{host}:{port}/%2f")
}

/// The socket address of the broker `url` names (for relays and proxies in front of it).
pub async fn broker_addr(url: &reqwest::Url) -> std::net::SocketAddr {
    tokio::net::lookup_host((
        url.host_str().expect("broker host").to_string(),
        url.port().unwrap_or(5672),
    ))
    .await
    .expect("broker address resolves")
    .next()
    .expect("one broker address")
}

pub fn unique_prefix() -> String {
    format!("it-{}.", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

pub struct EnvOptions {
    pub sim: SimConfig,
    pub concurrency: usize,
    pub retry_budget: Duration,
    pub start_worker: bool,
}

impl Default for EnvOptions {
    fn default() -> Self {
        Self {
            sim: SimConfig::for_tests(),
            concurrency: 32,
            retry_budget: Duration::from_secs(30),
            start_worker: true,
        }
    }
}

/// One test's world. Call [`TestEnv::cleanup`] at the end.
pub struct TestEnv {
    pub url: String,
    /// The name prefix of this test's exchanges and queues (`AMQP_NAME_PREFIX` for the CLI).
    pub prefix: String,
    pub topology: Topology,
    pub sim: RunningSim,
    pub sim_config: SimConfig,
    pub worker: Option<Worker>,
    pub metrics: Metrics,
    pub readiness: Readiness,
    pub connection: Connection,
    pub channel: Channel,
    pub publisher: Publisher,
    pub genesys_config: GenesysConfig,
    pub settings: WorkerSettings,
    /// Deletes the topology and the observer queues if the test fails before [`Self::cleanup`].
    leftovers: Leftovers,
}

impl TestEnv {
    pub async fn start() -> Self {
        Self::start_with(EnvOptions::default()).await
    }

    pub async fn start_with(options: EnvOptions) -> Self {
        let url = amqp_url().await;
        let prefix = unique_prefix();
        let topology = Topology::new(&prefix);
        let sim = sim::spawn(options.sim.clone()).await.expect("simulator starts");
        let mut genesys_config = GenesysConfig::for_simulator(
            &sim.base_url(),
            &options.sim.client_id,
            &options.sim.client_secret,
            &options.sim.integration_id,
        );
        genesys_config.retry_budget = options.retry_budget;
        genesys_config.initial_backoff = Duration::from_millis(50);
        genesys_config.max_backoff = Duration::from_millis(500);
        let settings = WorkerSettings {
            amqp_url: url.clone(),
            topology: topology.clone(),
            concurrency: options.concurrency,
            publisher_lanes: 2,
            shutdown_grace: Duration::from_secs(10),
            policy: ValidationPolicy::default(),
            audit_key: SecretString::from(AUDIT_KEY),
            crm_queue: None,
        };
        let connection = connect(&url, "it-observer").await.expect("broker reachable");
        topology.declare(&connection).await.expect("topology");
        let channel = connection.create_channel().await.expect("channel");
        let publisher = Publisher::open(&connection, 1).await.expect("publisher");
        let metrics = Metrics::new();
        let readiness = Readiness::default();
        let leftovers = Leftovers::new(&url, &topology);
        let mut env = Self {
            url,
            prefix,
            topology,
            sim,
            sim_config: options.sim,
            worker: None,
            metrics,
            readiness,
            connection,
            channel,
            publisher,
            genesys_config,
            settings,
            leftovers,
        };
        if options.start_worker {
            env.start_worker().await;
        }
        env
    }

    /// A world whose simulator already injects `faults` when the worker starts, with the CRM
    /// observer queue bound; returns that queue's name too.
    pub async fn start_with_faults(faults: Faults) -> (Self, String) {
        let mut env = Self::start_with(EnvOptions {
            start_worker: false,
            ..Default::default()
        })
        .await;
        let events_queue = env.bind_events().await;
        env.sim.set_faults(faults);
        env.start_worker().await;
        (env, events_queue)
    }

    /// Runs the CLI against this test's broker and names.
    pub async fn cli(&self, args: &[&str], extra_env: &[(&str, &str)]) -> Output {
        let mut env = vec![
            ("AMQP_URL", self.url.as_str()),
            ("AMQP_NAME_PREFIX", self.prefix.as_str()),
        ];
        env.extend_from_slice(extra_env);
        cli(args, &env).await
    }

    pub async fn start_worker(&mut self) {
        let genesys = GenesysClient::new(self.genesys_config.clone()).expect("genesys client");
        let worker = Worker::start(
            self.settings.clone(),
            genesys,
            self.metrics.clone(),
            self.readiness.clone(),
        )
        .await
        .expect("worker starts");
        self.worker = Some(worker);
    }

    pub async fn stop_worker(&mut self) {
        if let Some(worker) = self.worker.take() {
            worker.shutdown().await;
        }
    }

    /// A durable observer queue bound to the CRM exchange, as a CRM consumer would have.
    pub async fn bind_events(&mut self) -> String {
        let name = format!("{}crm-test", self.topology.request_exchange);
        self.declare_observer(&name, &self.topology.crm_exchange.clone(), EVENT_ROUTING_KEY)
            .await;
        name
    }

    /// Has `queue` deleted with the test's topology (a queue the worker declared for the test).
    pub fn delete_later(&mut self, queue: &str) {
        self.leftovers.queues.push(queue.to_string());
    }

    async fn declare_observer(&mut self, name: &str, exchange: &str, key: &str) {
        self.channel
            .queue_declare(
                name.into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("declare observer");
        self.channel
            .queue_bind(
                name.into(),
                exchange.into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind observer");
        self.leftovers.queues.push(name.to_string());
    }

    /// A server-named, exclusive queue (the broker deletes it with this test's connection), e.g.
    /// for `reply_to`.
    pub async fn private_queue(&self) -> String {
        declare_exclusive(&self.channel)
            .await
            .expect("private queue")
            .to_string()
    }

    /// A [`Self::private_queue`] bound to `exchange` with `key`: a copy of what is published there,
    /// as published (a classic queue adds no `x-delivery-count`, as the quorum queues do).
    pub async fn tap(&self, exchange: &str, key: &str) -> String {
        bind_exclusive(&self.channel, exchange, key)
            .await
            .expect("bind observer")
            .to_string()
    }

    /// Publishes a request body with the usual properties.
    pub async fn publish(&self, body: impl Into<Vec<u8>>) {
        self.publish_message(request_message(&self.topology, body.into(), FieldTable::default()))
            .await;
    }

    pub async fn publish_with(&self, body: impl Into<Vec<u8>>, edit: impl FnOnce(BasicProperties) -> BasicProperties) {
        let mut message = request_message(&self.topology, body.into(), FieldTable::default());
        message.properties = edit(message.properties);
        self.publish_message(message).await;
    }

    pub async fn publish_message(&self, message: Outgoing) {
        self.publisher
            .publish(message)
            .await
            .expect("request published and confirmed");
    }

    /// Reads exactly `n` messages from `queue` (acking them), failing after `timeout`.
    pub async fn take(&self, queue: &str, n: usize, timeout: Duration) -> Vec<Delivery> {
        let mut consumer = self.consume(queue).await;
        let mut out = Vec::with_capacity(n);
        let result = tokio::time::timeout(timeout, async {
            while out.len() < n {
                match consumer.next().await {
                    Some(Ok(delivery)) => {
                        delivery.acker.ack(BasicAckOptions::default()).await.expect("ack");
                        out.push(delivery);
                    }
                    other => panic!("consumer of {queue} ended: {other:?}"),
                }
            }
        })
        .await;
        let _ = self.channel.basic_cancel(consumer.tag(), Default::default()).await;
        assert!(
            result.is_ok(),
            "timed out waiting for {n} messages on {queue}: got {}",
            out.len()
        );
        out
    }

    /// Asserts that nothing (more) arrives on `queue` within `wait`.
    pub async fn assert_empty(&self, queue: &str, wait: Duration) {
        tokio::time::sleep(wait).await;
        let count = self.message_count(queue).await;
        assert_eq!(count, 0, "expected {queue} to be empty");
    }

    pub async fn message_count(&self, queue: &str) -> u32 {
        self.count_if_exists(queue).await.expect("queue exists")
    }

    /// The depth of `queue`, `None` when it does not exist (it may have been deleted).
    pub async fn count_if_exists(&self, queue: &str) -> Option<u32> {
        // A passive declare of a missing queue closes its channel: a channel of its own.
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
            .await;
        let _ = channel.close(200, "ok".into()).await;
        declared.ok().map(|q| q.message_count())
    }

    /// Deletes `queue` (say, one of the worker's own, under a running worker).
    pub async fn delete_queue(&self, queue: &str) {
        self.channel
            .queue_delete(queue.into(), lapin::options::QueueDeleteOptions::default())
            .await
            .expect("queue deleted");
    }

    async fn consume(&self, queue: &str) -> Consumer {
        self.channel
            .basic_consume(
                queue.into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consume")
    }

    /// Stops the worker and the simulator and deletes every queue and exchange the test declared.
    pub async fn cleanup(mut self) {
        self.stop_worker().await;
        self.leftovers.delete_now(&self.channel).await;
        let _ = self.connection.close(200, "test done".into()).await;
        self.sim.shutdown().await;
    }
}

/// Runs the `guest-session-worker` binary with `args` and exactly the given extra environment
/// (an inherited `AMQP_NAME_PREFIX` is dropped), human-readable logs on stderr.
pub async fn cli(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_guest-session-worker"));
    command
        .args(args)
        .env_remove("AMQP_NAME_PREFIX")
        .env("LOG_FORMAT", "pretty");
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().await.expect("the binary runs")
}

/// A valid request body with the given request id.
pub fn valid_request(request_id: &str) -> serde_json::Value {
    serde_json::json!({
        "request_id": request_id,
        "guest_id": format!("guest_{request_id}"),
        "display_name": "Ada",
        "attributes": { "source": "web_portal", "device_type": "desktop" },
        "consent": { "data_processing": true, "marketing": false },
        "routing": { "queue": "Web Support", "skills": ["web_support"], "language": "en", "priority": 1 },
        "initial_message": "Hi, I have a question about my order"
    })
}

pub fn body(value: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(value).expect("json")
}

pub fn header(delivery: &Delivery, key: &str) -> Option<String> {
    guest_session_worker::amqp::headers::get_str(delivery.properties.headers().as_ref(), key)
}
