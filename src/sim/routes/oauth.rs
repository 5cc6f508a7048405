//! `POST /oauth/token` of the login host: the OAuth 2 client-credentials grant.
//!
//! Client authentication is checked first (`Authorization: Basic base64(id:secret)`; bad or missing →
//! 401 `invalid_client`), then the form's `grant_type` (anything but `client_credentials`, or a body
//! that is not a form → 400 `unsupported_grant_type`). Success: 200
//! `{access_token, token_type: "bearer", expires_in}`. Errors use the login host's shape
//! `{error, description, error_description}`, not the API's error body. Faults, latency and the quota
//! do not apply here.

use crate::sim::state::SimState;
use axum::Form;
use axum::extract::State;
use axum::extract::rejection::FormRejection;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Deserialize)]
pub struct TokenForm {
    grant_type: Option<String>,
}

/// The login host's success body.
#[derive(Debug, Serialize, Deserialize)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: String,
    pub expires_in: u64,
}

/// The login host's error body.
#[derive(Debug, Serialize, Deserialize)]
pub struct OAuthError {
    pub error: String,
    pub description: String,
    pub error_description: String,
}

pub async fn post_token(
    State(state): State<Arc<SimState>>,
    headers: HeaderMap,
    form: Result<Form<TokenForm>, FormRejection>,
) -> Response {
    state.counters.token_request();
    let response = token(&state, &headers, form.ok().map(|Form(f)| f));
    state.counters.status(response.status());
    response
}

fn token(state: &SimState, headers: &HeaderMap, form: Option<TokenForm>) -> Response {
    if !client_authenticated(state, headers) {
        let mut response = oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "client authentication failed",
        );
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"oauth\""),
        );
        return response;
    }
    let grant_type = form.and_then(|f| f.grant_type);
    if grant_type.as_deref() != Some("client_credentials") {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "grant_type must be client_credentials",
        );
    }
    let ttl = state.config.token_ttl_secs;
    let access_token = state
        .tokens
        .issue(&state.config.client_id, Duration::from_secs(ttl), Instant::now());
    let body = TokenResponse {
        access_token,
        token_type: "bearer".to_owned(),
        expires_in: ttl,
    };
    no_store((StatusCode::OK, axum::Json(body)).into_response())
}

/// True when the Basic credentials are the configured client's.
fn client_authenticated(state: &SimState, headers: &HeaderMap) -> bool {
    let Some(encoded) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
        .map(|(_, rest)| rest.trim())
    else {
        return false;
    };
    let Ok(decoded) = STANDARD.decode(encoded) else {
        return false;
    };
    let Ok(decoded) = String::from_utf8(decoded) else {
        return false;
    };
    let Some((id, secret)) = decoded.split_once(':') else {
        return false;
    };
    // Evaluate both comparisons so the answer time does not depend on which one failed.
    let id_ok = constant_time_eq(id.as_bytes(), state.config.client_id.as_bytes());
    let secret_ok = constant_time_eq(secret.as_bytes(), state.config.client_secret.as_bytes());
    id_ok & secret_ok
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    let body = OAuthError {
        error: error.to_owned(),
        description: description.to_owned(),
        error_description: description.to_owned(),
    };
    no_store((status, axum::Json(body)).into_response())
}

fn no_store(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}
