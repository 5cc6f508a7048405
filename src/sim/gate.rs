//! What every API call goes through before (and after) its handler; the precedence is documented
//! in the [`crate::sim`] module docs ("Precedence of checks and faults").

use super::error_body::{ApiError, CORRELATION_HEADER};
use super::quota::{Admission, RateLimit};
use super::state::SimState;
use super::tokens::TokenError;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::time::Instant;
use uuid::Uuid;

/// The client id behind the request's bearer token, or the 401 to answer.
pub fn authorize(state: &SimState, headers: &HeaderMap) -> Result<String, ApiError> {
    let Some(raw) = headers.get(header::AUTHORIZATION) else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "authentication.required",
            "No authentication bearer token specified in authorization header.",
        ));
    };
    let token = raw
        .to_str()
        .ok()
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .filter(|token| !token.is_empty());
    let Some(token) = token else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "authentication.required",
            "No authentication bearer token specified in authorization header.",
        ));
    };
    state.tokens.check(token, Instant::now()).map_err(|e| {
        let message = match e {
            TokenError::Unknown => "Invalid login credentials.",
            TokenError::Expired => "Invalid login credentials. The token has expired.",
        };
        ApiError::new(StatusCode::UNAUTHORIZED, "bad.credentials", message)
    })
}

/// Runs one API call: `caller` is the quota key (or the authentication failure), `handler` runs
/// only if no earlier rule answers (see the module docs for the order).
pub async fn api_call(
    state: &SimState,
    caller: Result<String, ApiError>,
    handler: impl FnOnce() -> Response,
) -> Response {
    let arrived = tokio::time::Instant::now();
    state.counters.api_request();
    let (mut response, limit) = match caller {
        Err(unauthorized) => (unauthorized.into_response(), None),
        Ok(key) => admitted(state, &key, handler),
    };
    if let Some(limit) = limit {
        limit.write_headers(response.headers_mut());
    }
    if !response.headers().contains_key(CORRELATION_HEADER)
        && let Ok(value) = HeaderValue::from_str(&Uuid::new_v4().to_string())
    {
        response.headers_mut().insert(CORRELATION_HEADER, value);
    }
    state.counters.status(response.status());
    let latency = state.faults.latency(state.config.latency_ms);
    if !latency.is_zero() {
        // The latency runs from arrival, held precisely (tokio's timers end up to 1 ms late).
        super::precise_delay::sleep_until(arrived + latency).await;
    }
    response
}

fn admitted(state: &SimState, key: &str, handler: impl FnOnce() -> Response) -> (Response, Option<RateLimit>) {
    let now = Instant::now();
    if let Some(retry_after) = state.faults.storm(now) {
        let limit = RateLimit {
            allowed: state.quota.limit(),
            count: state.quota.limit(),
            reset_secs: retry_after.max(1),
        };
        return (too_many_requests(retry_after, state), Some(limit));
    }
    let limit = match state.quota.admit(key, now) {
        Admission::Limited(limit) => {
            return (too_many_requests(limit.reset_secs, state), Some(limit));
        }
        Admission::Admitted(limit) => limit,
    };
    if let Some(status) = state.faults.injected_failure(now, state.config.error_rate) {
        let response = if status == StatusCode::TOO_MANY_REQUESTS {
            too_many_requests(1, state)
        } else {
            ApiError::for_status(status).into_response()
        };
        return (response, Some(limit));
    }
    if let Some(status) = state.faults.reject_status() {
        return (ApiError::for_status(status).into_response(), Some(limit));
    }
    (handler(), Some(limit))
}

fn too_many_requests(retry_after_secs: u64, state: &SimState) -> Response {
    let message = format!(
        "Rate limit exceeded the maximum [{}] requests within [{}] seconds. Retry the request in [{}] seconds.",
        state.quota.limit(),
        state.quota.window().as_secs_f64(),
        retry_after_secs
    );
    let mut response = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "too.many.requests", message).into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
    response
}
