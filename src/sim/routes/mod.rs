//! The simulator's HTTP routes. One server plays both Genesys hosts: `/oauth/token` (login host) and
//! `/api/v2/...` (API host), plus the `/__sim/...` control endpoints.

mod admin;
mod body;
mod guest_chat;
mod oauth;
mod open_messaging;

pub use body::MAX_CUSTOM_BYTES;

use super::error_body::ApiError;
use super::state::SimState;
use axum::Router;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use std::sync::Arc;

/// Path of Open Messaging's inbound message route, with `{integrationId}` in place.
pub const OPEN_MESSAGE_PATH: &str = "/api/v2/conversations/messages/{integration_id}/inbound/open/message";
/// Path of Guest Chat's create-conversation route.
pub const GUEST_CHAT_PATH: &str = "/api/v2/webchat/guest/conversations";

pub fn router(state: Arc<SimState>) -> Router {
    Router::new()
        .route("/oauth/token", post(oauth::post_token))
        .route(OPEN_MESSAGE_PATH, post(open_messaging::post_inbound_message))
        .route(GUEST_CHAT_PATH, post(guest_chat::post_conversation))
        .route("/__sim/stats", get(admin::get_stats))
        .route("/__sim/faults", get(admin::get_faults).post(admin::post_faults))
        .route("/__sim/reset", post(admin::post_reset))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

async fn not_found(axum::extract::State(state): axum::extract::State<Arc<SimState>>, uri: Uri) -> Response {
    unknown(&state, &uri, StatusCode::NOT_FOUND)
}

async fn method_not_allowed(axum::extract::State(state): axum::extract::State<Arc<SimState>>, uri: Uri) -> Response {
    unknown(&state, &uri, StatusCode::METHOD_NOT_ALLOWED)
}

/// A Genesys error body for a route the simulator does not have; counted as an API call (and a
/// rejection) when the path is under `/api/`.
fn unknown(state: &SimState, uri: &Uri, status: StatusCode) -> Response {
    let response = ApiError::for_status(status).into_response();
    if uri.path().starts_with("/api/") {
        state.counters.api_request();
        state.counters.status(status);
    }
    response
}
