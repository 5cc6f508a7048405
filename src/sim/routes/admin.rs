//! The simulator's own control endpoints (not part of Genesys; not counted, no faults):
//!
//! - `GET /__sim/stats` → [`SimStats`](crate::sim::SimStats) JSON.
//! - `GET /__sim/faults` → the fault settings in force.
//! - `POST /__sim/faults` with a [`Faults`] JSON body (an empty body counts as `{}`) → merges the
//!   fields given, answers the settings now in force; an invalid value → 400 and nothing changes.
//! - `POST /__sim/reset` → zeroes the stats, clears every fault and the quota windows; 204.

use crate::sim::error_body::ApiError;
use crate::sim::faults::Faults;
use crate::sim::state::SimState;
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::time::Instant;

pub async fn get_stats(State(state): State<Arc<SimState>>) -> Response {
    Json(state.stats()).into_response()
}

pub async fn get_faults(State(state): State<Arc<SimState>>) -> Response {
    Json(state.faults.current(Instant::now())).into_response()
}

pub async fn post_faults(State(state): State<Arc<SimState>>, body: Bytes) -> Response {
    let faults = if body.iter().all(u8::is_ascii_whitespace) {
        Faults::default()
    } else {
        match serde_json::from_slice::<Faults>(&body) {
            Ok(f) => f,
            Err(e) => return ApiError::bad_request(format!("invalid faults: {e}")).into_response(),
        }
    };
    match state.apply_faults(&faults) {
        Ok(current) => {
            tracing::info!(?faults, "simulator faults changed");
            Json(current).into_response()
        }
        Err(e) => ApiError::bad_request(e).into_response(),
    }
}

pub async fn post_reset(State(state): State<Arc<SimState>>) -> Response {
    state.reset();
    StatusCode::NO_CONTENT.into_response()
}
