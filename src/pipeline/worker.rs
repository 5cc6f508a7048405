//! The supervised worker: connect, declare the topology, consume; on a lost connection back off
//! with jitter and do it all again (lapin's own auto-recovery does not survive a broker restart);
//! on shutdown settle in-flight work and stop.

use std::{sync::Arc, time::Duration};

use lapin::Connection;
use rand::Rng;
use secrecy::SecretString;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{
    PipelineContext,
    consumer::{SessionEnd, SessionSettings, consume},
};
use crate::{
    amqp::{ConnectError, Publisher, Topology, connect},
    audit::Pseudonymizer,
    genesys::GenesysClient,
    health::Readiness,
    metrics::Metrics,
    request::ValidationPolicy,
};

/// Everything `run` (and `demo`, and the tests) configure.
#[derive(Clone)]
pub struct WorkerSettings {
    pub amqp_url: String,
    pub topology: Topology,
    pub concurrency: usize,
    pub publisher_lanes: usize,
    pub shutdown_grace: Duration,
    pub policy: ValidationPolicy,
    pub audit_key: SecretString,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(
        "declaring the RabbitMQ topology failed: {0}. If a queue already exists with other arguments, delete it or choose another AMQP_NAME_PREFIX."
    )]
    Topology(lapin::Error),
    #[error("opening the publisher channels failed: {0}")]
    Publisher(lapin::Error),
}

/// A running worker.
pub struct Worker {
    cancel: CancellationToken,
    task: JoinHandle<()>,
    readiness: Readiness,
}

impl Worker {
    /// Connects and declares the topology once (so a wrong `AMQP_URL` fails fast with a clear
    /// error), then consumes in the background until [`Worker::shutdown`].
    pub async fn start(
        settings: WorkerSettings,
        genesys: GenesysClient,
        metrics: Metrics,
        readiness: Readiness,
    ) -> Result<Self, WorkerError> {
        let connection = connect(&settings.amqp_url, "guest-session-worker").await?;
        let publisher = open_session(&connection, &settings).await?;
        genesys.set_metrics(metrics.clone());
        let ctx = Arc::new(PipelineContext {
            topology: settings.topology.clone(),
            policy: settings.policy.clone(),
            genesys,
            publisher,
            pseudonymizer: Pseudonymizer::new(settings.audit_key.clone()),
            metrics,
        });
        let cancel = CancellationToken::new();
        let task = tokio::spawn(supervise(settings, ctx, connection, cancel.clone(), readiness.clone()));
        Ok(Self {
            cancel,
            task,
            readiness,
        })
    }

    pub fn readiness(&self) -> &Readiness {
        &self.readiness
    }

    /// A token that stops the worker when cancelled (e.g. from a signal handler).
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Stops consuming, finishes in-flight work within the grace period, returns the rest to the
    /// queue, and waits until all of that is done.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        let _ = self.task.await;
    }

    /// Waits until the worker stops by itself or its token is cancelled elsewhere.
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

async fn open_session(connection: &Connection, settings: &WorkerSettings) -> Result<Publisher, WorkerError> {
    let channel = connection.create_channel().await.map_err(WorkerError::Topology)?;
    settings
        .topology
        .declare(&channel)
        .await
        .map_err(WorkerError::Topology)?;
    let _ = channel.close(200, "topology declared".into()).await;
    Publisher::open(connection, settings.publisher_lanes)
        .await
        .map_err(WorkerError::Publisher)
}

async fn supervise(
    settings: WorkerSettings,
    mut ctx: Arc<PipelineContext>,
    first: Connection,
    cancel: CancellationToken,
    readiness: Readiness,
) {
    let session = SessionSettings {
        concurrency: settings.concurrency,
        shutdown_grace: settings.shutdown_grace,
        consumer_tag: format!("guest-session-worker-{}", uuid::Uuid::new_v4()),
    };
    let mut connection = Some(first);
    let mut failures: u32 = 0;
    loop {
        let conn = match connection.take() {
            Some(conn) => conn,
            None => match reconnect(&settings, &mut ctx).await {
                Ok(conn) => conn,
                Err(error) => {
                    failures += 1;
                    tracing::warn!(%error, failures, "reconnecting to the broker failed");
                    if sleep_or_cancel(backoff(failures), &cancel).await {
                        break;
                    }
                    continue;
                }
            },
        };
        match consume(&conn, ctx.clone(), &session, &cancel, &readiness).await {
            Ok(SessionEnd::Shutdown) => {
                let _ = conn.close(200, "shutdown".into()).await;
                break;
            }
            Ok(SessionEnd::Lost(cause)) => {
                failures = 1;
                tracing::warn!(%cause, "lost the broker; reconnecting");
            }
            Err(error) => {
                failures += 1;
                tracing::warn!(%error, "consuming failed; reconnecting");
            }
        }
        readiness.set_ready(false);
        let _ = conn.close(320, "reconnecting".into()).await;
        if sleep_or_cancel(backoff(failures), &cancel).await {
            break;
        }
    }
    readiness.set_ready(false);
    tracing::info!("worker stopped");
}

/// A fresh connection, topology and publisher; the pipeline context is rebuilt around the new
/// publisher (everything else in it is connection-independent).
async fn reconnect(settings: &WorkerSettings, ctx: &mut Arc<PipelineContext>) -> Result<Connection, WorkerError> {
    let connection = connect(&settings.amqp_url, "guest-session-worker").await?;
    let publisher = open_session(&connection, settings).await?;
    *ctx = Arc::new(PipelineContext {
        topology: ctx.topology.clone(),
        policy: ctx.policy.clone(),
        genesys: ctx.genesys.clone(),
        publisher,
        pseudonymizer: ctx.pseudonymizer.clone(),
        metrics: ctx.metrics.clone(),
    });
    tracing::info!("reconnected to the broker");
    Ok(connection)
}

/// Full-jitter exponential backoff: 0..min(30 s, 100 ms × 2^n).
fn backoff(failures: u32) -> Duration {
    let cap = Duration::from_millis(100)
        .saturating_mul(1u32 << failures.min(9))
        .min(Duration::from_secs(30));
    let millis = rand::rng().random_range(0..=cap.as_millis() as u64);
    Duration::from_millis(millis.max(50))
}

/// Sleeps; returns true when cancelled meanwhile.
async fn sleep_or_cancel(duration: Duration, cancel: &CancellationToken) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => true,
        _ = tokio::time::sleep(duration) => false,
    }
}
