//! The operations endpoint (DESIGN §6): `/healthz` (the process is alive), `/readyz` (the consumer
//! is attached to the broker) and `/metrics` (Prometheus text).

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use axum::{Router, extract::State, http::StatusCode, http::header, response::IntoResponse, routing::get};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Whether the worker is consuming; cheap to clone.
#[derive(Clone, Default, Debug)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set_ready(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

#[derive(Clone)]
struct AppState {
    readiness: Readiness,
    metrics: Metrics,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on HEALTH_ADDR {addr}: {cause}")]
pub struct HealthError {
    addr: SocketAddr,
    /// In the message, not an error source: `main` prints the chain, which would show it twice.
    cause: std::io::Error,
}

/// Binds `addr` and serves until `cancel` fires; returns the bound address (port 0 picks one).
pub async fn serve(
    addr: SocketAddr,
    readiness: Readiness,
    metrics: Metrics,
    cancel: CancellationToken,
) -> Result<SocketAddr, HealthError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|cause| HealthError { addr, cause })?;
    let local = listener.local_addr().map_err(|cause| HealthError { addr, cause })?;
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(AppState { readiness, metrics });
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { cancel.cancelled().await })
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "health endpoint stopped");
        }
    });
    Ok(local)
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    if state.readiness.is_ready() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

/// prometheus-client writes OpenMetrics text (`_total` samples under a `counter` TYPE, `# EOF`);
/// announced as the classic `text/plain; version=0.0.4`, Prometheus would misread the counters.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

async fn metrics_text(State(state): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, OPENMETRICS)], state.metrics.render())
}
