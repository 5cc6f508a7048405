//! The supervised worker: connect, declare the topology, consume; when the session is lost back
//! off with jitter and do it all again; on shutdown settle in-flight work and stop.
//!
//! lapin's own auto-recovery is not used: it does not survive a broker restart (lapin issue
//! #450). A session is lost when the connection fails (socket error, the broker closing it, two
//! missed heartbeat intervals), when the consumer channel is closed by a channel error, when the
//! broker cancels the consumer (its queue was deleted), or when a publisher lane's channel closes.
//! Each time the whole connection is replaced: a new connection, the topology declared again, new
//! publisher lanes (the old ones die with the old connection), a new consumer. `/readyz` is false
//! from the moment the session is lost until the new consumer is attached.

use std::{sync::Arc, time::Duration};

use lapin::Connection;
use rand::Rng;
use secrecy::SecretString;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{
    PipelineContext,
    consumer::{SessionEnd, SessionSettings, consume},
    inflight::InFlightRequests,
};
use crate::{
    amqp::{ConnectError, Publisher, Topology, connect},
    audit::Pseudonymizer,
    genesys::GenesysClient,
    health::Readiness,
    metrics::Metrics,
    request::ValidationPolicy,
};

/// Longest wait between two reconnect attempts.
const MAX_RECONNECT_BACKOFF: Duration = Duration::from_secs(5);
/// Bound on connecting, declaring the topology and opening the publisher lanes: a broker that
/// accepts TCP but never answers (frozen, overloaded) must not stall the worker for good.
const SESSION_SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on closing a connection that may already be gone.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

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
    /// A queue the worker declares and binds to the CRM exchange for `session.created`, for a
    /// stack with no CRM consumer of its own (the compose stack); `None` in production, where
    /// each CRM consumer declares its own.
    pub crm_queue: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(
        "declaring the RabbitMQ topology failed: {0}. If an exchange or the request queue already exists with another type or other arguments, delete it or choose another AMQP_NAME_PREFIX."
    )]
    Topology(lapin::Error),
    #[error("opening the publisher channels failed: {0}")]
    Publisher(lapin::Error),
    #[error(
        "the broker did not complete the connection, topology and channels within {0:?}: it accepts TCP but does not answer. Check AMQP_URL and the broker's health."
    )]
    Unresponsive(Duration),
}

impl WorkerError {
    /// True when the broker did not answer (see [`ConnectError::is_unanswered`]): a broker still
    /// starting, or down for a moment. Everything else is a configuration to fix.
    pub fn is_unanswered(&self) -> bool {
        match self {
            WorkerError::Connect(error) => error.is_unanswered(),
            WorkerError::Unresponsive(_) => true,
            // The connection dropping mid-declare (a broker restarting) is worth waiting for; a
            // topology the broker refuses (PRECONDITION_FAILED) is not.
            WorkerError::Topology(error) | WorkerError::Publisher(error) => crate::amqp::connect::may_clear_up(error),
        }
    }
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
        let (connection, publisher) = open_connection(&settings).await?;
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

/// Connects, declares the topology and opens the publisher lanes, within
/// [`SESSION_SETUP_TIMEOUT`].
async fn open_connection(settings: &WorkerSettings) -> Result<(Connection, Publisher), WorkerError> {
    tokio::time::timeout(SESSION_SETUP_TIMEOUT, async {
        let connection = connect(&settings.amqp_url, "guest-session-worker").await?;
        let publisher = open_session(&connection, settings).await?;
        Ok((connection, publisher))
    })
    .await
    .map_err(|_| WorkerError::Unresponsive(SESSION_SETUP_TIMEOUT))?
}

async fn open_session(connection: &Connection, settings: &WorkerSettings) -> Result<Publisher, WorkerError> {
    settings
        .topology
        .declare(connection)
        .await
        .map_err(WorkerError::Topology)?;
    if let Some(queue) = &settings.crm_queue {
        settings
            .topology
            .declare_crm_queue(connection, queue)
            .await
            .map_err(WorkerError::Topology)?;
    }
    // The audit and dead-letter queues are the worker's own: a record returned from either means
    // one was deleted, and the session restarts to declare it again (a message is never acked
    // with its record confirmed into no queue).
    let owned = [
        settings.topology.audit_exchange.as_str(),
        settings.topology.dead_letter_exchange.as_str(),
    ];
    Publisher::open_owning(connection, settings.publisher_lanes, &owned)
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
        requests: InFlightRequests::default(),
    };
    let mut connection = Some(first);
    let mut failures: u32 = 0;
    loop {
        let conn = match connection.take() {
            Some(conn) => conn,
            None => {
                // A broker that accepts TCP but never answers must not hold up a shutdown.
                let attempt = tokio::select! {
                    _ = cancel.cancelled() => break,
                    attempt = reconnect(&settings, &mut ctx) => attempt,
                };
                match attempt {
                    Ok(conn) => conn,
                    Err(error) => {
                        failures = failures.saturating_add(1);
                        tracing::warn!(%error, failures, "reconnecting to the broker failed");
                        if sleep_or_cancel(backoff(failures), &cancel).await {
                            break;
                        }
                        continue;
                    }
                }
            }
        };
        let ended = consume(&conn, ctx.clone(), &session, &cancel, &readiness).await;
        readiness.set_ready(false);
        match ended {
            Ok(SessionEnd::Shutdown) => {
                close(&conn, 200, "shutdown").await;
                break;
            }
            Ok(SessionEnd::Lost(cause)) => {
                failures = 1;
                tracing::warn!(%cause, "lost the broker session; reconnecting");
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                tracing::warn!(%error, "consuming failed; reconnecting");
            }
        }
        // Also closes the publisher lanes of this connection; `reconnect` opens new ones.
        close(&conn, 320, "reconnecting").await;
        if sleep_or_cancel(backoff(failures), &cancel).await {
            break;
        }
    }
    readiness.set_ready(false);
    tracing::info!("worker stopped");
}

/// Closes a connection that may already be dead, without hanging on it.
async fn close(connection: &Connection, code: u16, reason: &str) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, connection.close(code, reason.into())).await;
}

/// A fresh connection, topology and publisher; the pipeline context is rebuilt around the new
/// publisher (everything else in it is connection-independent).
async fn reconnect(settings: &WorkerSettings, ctx: &mut Arc<PipelineContext>) -> Result<Connection, WorkerError> {
    let (connection, publisher) = open_connection(settings).await?;
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

/// Full-jitter exponential backoff: 0..min(5 s, 100 ms × 2^n), at least 50 ms. The cap is low
/// on purpose: a restarted broker is back within seconds, and the worker should be too (a
/// reconnect attempt is one TCP connect, cheap for the broker).
pub(crate) fn backoff(failures: u32) -> Duration {
    let cap = Duration::from_millis(100)
        .saturating_mul(1u32 << failures.min(9))
        .min(MAX_RECONNECT_BACKOFF);
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
