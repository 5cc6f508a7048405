//! A Genesys Cloud simulator: a real HTTP server speaking the public Genesys Cloud API contract
//! (DESIGN §3), used by the demo, the integration tests and the benchmarks.
//!
//! One server plays both hosts, so its [`RunningSim::base_url`] is both the API and the login base URL:
//!
//! | route | what |
//! | --- | --- |
//! | `POST /oauth/token` | client-credentials grant (no quota, faults or latency) |
//! | `POST /api/v2/conversations/messages/{integrationId}/inbound/open/message` | Open Messaging inbound message, 202 |
//! | `POST /api/v2/webchat/guest/conversations` | Guest Chat conversation (no OAuth), 200 |
//! | `GET /__sim/stats`, `GET`/`POST /__sim/faults`, `POST /__sim/reset` | control |
//!
//! Every API error carries the Genesys error body ([`ErrorBody`]); every API call passes the rate
//! limit and fault gate described below.
//!
//! # Precedence of checks and faults
//!
//! For each call to an `/api/v2` route, the first rule that answers wins:
//!
//! 1. **Authentication** (Open Messaging only): missing, unknown, revoked or expired bearer token →
//!    401. No quota is consumed and no `inin-ratelimit-*` headers are sent (no client is known).
//! 2. **Storm** (fault, or the `--storm-secs` / `--storm-retry-after-secs` / `--storm-after-secs`
//!    flags): 429 with the storm's fixed `Retry-After`; no quota is consumed.
//! 3. **Quota**: the call is counted against its key's window; over quota → 429 with
//!    `Retry-After` = seconds until the window ends.
//! 4. **Outage** (fault): 503.
//! 5. **fail_next** (fault): the next scripted status (a scripted 429 carries `Retry-After: 1`).
//! 6. **error_rate** (fault, else `--error-rate`): a random 503.
//! 7. **reject_status** (fault): that 4xx (every gated route creates a session).
//! 8. **The handler**: request validation (400/404/413/415) or success.
//!
//! Calls that get past step 1 carry `inin-ratelimit-allowed/count/reset` whatever their final status
//! (a storm's 429 says the quota is spent and resets when the storm's `Retry-After` ends). Every API
//! answer carries `inin-correlation-id` (equal to the error body's `contextId`), is counted in the
//! stats, and is delayed by the latency (fault override, else `--latency-ms`) — 401s and 429s included.
//! The answer is decided (and the handler run) on arrival and only then delayed, so a client that
//! gives up during the delay may leave a created session behind, as with a slow real server.
//!
//! # Example
//!
//! ```no_run
//! # async fn demo() -> Result<(), guest_session_worker::sim::SimError> {
//! use guest_session_worker::sim::{self, Faults, SimConfig};
//! let sim = sim::spawn(SimConfig::for_tests()).await?;
//! sim.set_faults(Faults { fail_next: Some(vec![503]), ..Faults::default() });
//! println!("Genesys at {}", sim.base_url());
//! sim.shutdown().await;
//! # Ok(()) }
//! ```

mod config;
mod error_body;
mod faults;
mod gate;
mod messages;
mod precise_delay;
mod quota;
mod routes;
mod state;
mod stats;
mod tokens;

pub use config::SimConfig;
pub use error_body::{CORRELATION_HEADER, ErrorBody};
pub use faults::{Faults, Storm};
pub use quota::{ALLOWED_HEADER, COUNT_HEADER, RESET_HEADER};
pub use routes::MAX_CUSTOM_BYTES;
pub use stats::SimStats;

use state::SimState;
use std::future::Future;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long [`RunningSim::shutdown`] waits for open requests before abandoning them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Why the simulator could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("invalid simulator settings: {0}")]
    Config(String),
    /// `cause` is in the message, not an error source: `main` prints the chain, which would show
    /// it twice.
    #[error("the Genesys simulator cannot listen on {addr}: {cause}")]
    Bind { addr: SocketAddr, cause: std::io::Error },
    #[error("the Genesys simulator's server failed: {0}")]
    Serve(std::io::Error),
    #[error("the Genesys simulator's thread could not start: {0}")]
    Thread(std::io::Error),
}

/// A simulator serving in a tokio task. Dropping it stops the server too (gracefully, without
/// waiting); [`RunningSim::shutdown`] stops it and waits.
#[derive(Debug)]
pub struct RunningSim {
    addr: SocketAddr,
    state: Arc<SimState>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
    /// Set by [`spawn_on_own_thread`]: that thread drives the server's runtime until this drops.
    own_thread: Option<oneshot::Sender<()>>,
}

/// Binds `config.addr` and serves the simulator in a tokio task.
pub async fn spawn(config: SimConfig) -> Result<RunningSim, SimError> {
    config.validate().map_err(SimError::Config)?;
    let bind_addr = config.addr;
    let listener = tokio::net::TcpListener::bind(bind_addr)
        .await
        .map_err(|cause| SimError::Bind { addr: bind_addr, cause })?;
    let addr = listener
        .local_addr()
        .map_err(|cause| SimError::Bind { addr: bind_addr, cause })?;
    let storm = (config.storm_secs > 0.0).then(|| {
        (
            Duration::try_from_secs_f64(config.storm_after_secs).unwrap_or_default(),
            Storm {
                retry_after_secs: config.storm_retry_after_secs,
                duration_secs: config.storm_secs,
            },
        )
    });
    let state = Arc::new(SimState::new(config));
    if let Some((after, storm)) = storm {
        // The `--storm-*` flags: the same storm as `POST /__sim/faults`, once, `after` from now.
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            if let Err(e) = state.apply_faults(&Faults {
                storm: Some(storm),
                ..Faults::default()
            }) {
                tracing::warn!(error = %e, "simulator storm not started");
            } else {
                tracing::info!("simulator 429 storm started");
            }
        });
    }
    let app = routes::router(Arc::clone(&state));
    let (stop, stopped) = oneshot::channel::<()>();
    // Small answers must not wait for Nagle's algorithm (the real API answers promptly too).
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "TCP_NODELAY not set");
        }
    });
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                // Resolves on an explicit stop and when the RunningSim is dropped.
                let _ = stopped.await;
            })
            .await
    });
    Ok(RunningSim {
        addr,
        state,
        stop,
        task,
        own_thread: None,
    })
}

/// Like [`spawn`], but served by a current-thread runtime on a thread of its own, as a remote
/// Genesys would not share the caller's runtime: the benchmarks keep the simulator's tasks off
/// the threads of the loops they measure. The thread ends once the [`RunningSim`] is shut down
/// or dropped.
pub async fn spawn_on_own_thread(config: SimConfig) -> Result<RunningSim, SimError> {
    let (ready, started) = oneshot::channel();
    std::thread::Builder::new()
        .name("genesys-sim".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => runtime,
                Err(source) => {
                    let _ = ready.send(Err(SimError::Thread(source)));
                    return;
                }
            };
            runtime.block_on(async move {
                let (keep, released) = oneshot::channel::<()>();
                match spawn(config).await {
                    Ok(mut sim) => {
                        sim.own_thread = Some(keep);
                        if ready.send(Ok(sim)).is_ok() {
                            // Resolves when the RunningSim lets go of `keep`.
                            let _ = released.await;
                        }
                    }
                    Err(error) => {
                        let _ = ready.send(Err(error));
                    }
                }
            });
        })
        .map_err(SimError::Thread)?;
    started
        .await
        .map_err(|_| SimError::Thread(std::io::Error::other("the simulator thread ended before it served")))?
}

impl RunningSim {
    /// The address the server listens on (the real port when the config asked for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://HOST:PORT`, usable as both the API and the login base URL. An unspecified listening
    /// address (`0.0.0.0`, `::`) is given as loopback.
    pub fn base_url(&self) -> String {
        let mut addr = self.addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr {
                SocketAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
            });
        }
        format!("http://{addr}")
    }

    /// A snapshot of the counters (the same as `GET /__sim/stats`).
    pub fn stats(&self) -> SimStats {
        self.state.stats()
    }

    /// Merges fault settings (the same as `POST /__sim/faults`). An invalid setting (say an error
    /// rate above 1) is logged and nothing is changed.
    pub fn set_faults(&self, faults: Faults) {
        if let Err(e) = self.state.apply_faults(&faults) {
            tracing::warn!(error = %e, ?faults, "simulator faults ignored");
        }
    }

    /// The fault settings in force (the same as `GET /__sim/faults`).
    pub fn faults(&self) -> Faults {
        self.state.faults.current(std::time::Instant::now())
    }

    /// Zeroes the counters and clears faults and quota windows (the same as `POST /__sim/reset`).
    pub fn reset(&self) {
        self.state.reset();
    }

    /// Stops accepting connections, lets open requests finish (at most 5 s), and waits.
    pub async fn shutdown(self) {
        // `own_thread` is held until the server has stopped: its thread drives the server.
        let RunningSim {
            stop,
            mut task,
            own_thread,
            ..
        } = self;
        let _ = stop.send(());
        match tokio::time::timeout(SHUTDOWN_GRACE, &mut task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "simulator server ended with an error"),
            Ok(Err(e)) => tracing::warn!(error = %e, "simulator server task failed"),
            Err(_) => {
                tracing::warn!("simulator requests still open after the grace period; aborting");
                task.abort();
            }
        }
        drop(own_thread);
    }
}

/// The `sim` subcommand: serves the simulator until `shutdown` resolves. Logs the listening address,
/// client id and Genesys ids (never the client secret).
pub async fn run(config: SimConfig, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), SimError> {
    let mut sim = spawn(config).await?;
    let c = &sim.state.config;
    tracing::info!(
        addr = %sim.addr,
        base_url = %sim.base_url(),
        client_id = %c.client_id,
        integration_id = %c.integration_id,
        organization_id = %c.organization_id,
        deployment_id = %c.deployment_id,
        quota = c.quota_per_minute,
        quota_window_secs = c.quota_window_secs,
        latency_ms = c.latency_ms,
        error_rate = c.error_rate,
        token_ttl_secs = c.token_ttl_secs,
        storm_secs = c.storm_secs,
        storm_retry_after_secs = c.storm_retry_after_secs,
        storm_after_secs = c.storm_after_secs,
        "Genesys simulator listening (base_url is both the API and the login base URL)"
    );
    tokio::select! {
        () = shutdown => {
            tracing::info!("Genesys simulator stopping");
            sim.shutdown().await;
            Ok(())
        }
        ended = &mut sim.task => match ended {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(SimError::Serve(e)),
            Err(e) => Err(SimError::Serve(std::io::Error::other(e))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_storm_flags_start_a_storm_after_the_delay() {
        let sim = spawn(SimConfig {
            storm_secs: 6.0,
            storm_retry_after_secs: 3,
            storm_after_secs: 2.0,
            ..SimConfig::for_tests()
        })
        .await
        .expect("simulator starts");
        assert_eq!(sim.faults().storm, None);
        tokio::time::sleep(Duration::from_millis(2100)).await;
        let storm = sim.faults().storm.expect("the storm is on");
        assert_eq!(storm.retry_after_secs, 3);
        sim.shutdown().await;
    }
}
