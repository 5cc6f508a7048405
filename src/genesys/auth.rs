//! OAuth client-credentials tokens (DESIGN §3): `POST {login}/oauth/token` with HTTP Basic auth and
//! `grant_type=client_credentials`.
//!
//! - The token is cached and refreshed `expires_in - 60 s` after it was issued (half its lifetime
//!   when that is under two minutes), like the official SDKs.
//! - Exactly one fetch is in flight however many callers wait: callers queue on one mutex and
//!   re-check the cache when they get it. Callers that queued behind a *failed* fetch share its
//!   error instead of each hitting the login host again.
//! - A 401 from the API invalidates the token by its generation, so many concurrent 401s for the
//!   same token cause one refresh.
//! - Every failure of the token endpoint (network, 5xx, 429, and 400/401 too) is a
//!   [`TokenError`] the caller retries within its budget: a wrong secret must not dead-letter the
//!   whole stream in a second.
//! - A token due for its refresh but unexpired is handed out at once while one background task
//!   refreshes it; if that fails, the token stays in use until shortly before it expires
//!   (`expires_in` less 10 s, or a quarter of a short lifetime). The refresh is due a minute
//!   early, so a brief login outage, or a login host that hangs, never holds an API call.
//! - A failure is held for [`FAILURE_HOLD`] (or the endpoint's `Retry-After`, up to
//!   [`MAX_FAILURE_HOLD`]): every caller in that time gets it without asking again, so a wrong
//!   secret or a login outage costs the login host one request per hold per replica, not one per
//!   retry of every request in flight.
//!
//! The secret and the access token are [`SecretString`]s; neither is ever logged.

use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio::sync::{Mutex, RwLock};
use tokio::time::Instant;
use tracing::{Instrument, field};

use super::error::{GenesysErrorBody, correlation_id, retry_after};

/// The SDKs refresh this long before expiry.
const REFRESH_MARGIN: Duration = Duration::from_secs(60);
/// How long before its expiry a token is no longer presented, even when its refresh failed (at
/// most a quarter of its lifetime).
const USE_MARGIN: Duration = Duration::from_secs(10);
/// When `expires_in` is missing.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);
/// How long a failed fetch answers for the token endpoint.
pub const FAILURE_HOLD: Duration = Duration::from_secs(1);
/// The longest a token endpoint's `Retry-After` holds a failure.
pub const MAX_FAILURE_HOLD: Duration = Duration::from_secs(60);

/// A bearer token and the generation it belongs to (for [`TokenProvider::invalidate`]).
#[derive(Clone)]
pub struct AccessToken {
    value: SecretString,
    generation: u64,
}

impl AccessToken {
    pub fn secret(&self) -> &SecretString {
        &self.value
    }
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessToken")
            .field("value", &"[REDACTED]")
            .field("generation", &self.generation)
            .finish()
    }
}

/// A failed token fetch. Always transient from the caller's point of view.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct TokenError {
    /// Human text without secrets: HTTP status, OAuth `error` code, or the network failure.
    pub message: String,
    pub status: Option<u16>,
    pub retry_after: Option<Duration>,
    pub context_id: Option<String>,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    token_type: Option<String>,
    #[serde(default, deserialize_with = "lifetime_secs")]
    expires_in: Option<u64>,
}

/// The longest `expires_in` believed: a week (Genesys issues tokens for a day by default).
const MAX_LIFETIME_SECS: u64 = 7 * 24 * 3600;

/// `expires_in` as Genesys sends it (an integer), or as a float or a numeric string, which some
/// OAuth servers and proxies send; anything else, or a value under a second, counts as absent
/// rather than failing the token, and a value above a week counts as a week.
fn lifetime_secs<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    let value = Option::<serde_json::Value>::deserialize(deserializer)?;
    let secs = match value {
        Some(serde_json::Value::Number(n)) => n.as_f64(),
        Some(serde_json::Value::String(s)) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    Ok(secs
        .filter(|s| s.is_finite() && *s >= 1.0)
        .map(|s| (s as u64).min(MAX_LIFETIME_SECS)))
}

struct CachedToken {
    token: AccessToken,
    refresh_at: Instant,
    /// Until when the token may still be presented if its refresh fails: its expiry, less a
    /// margin for the call's own travel time.
    usable_until: Instant,
}

#[derive(Default)]
struct FetchState {
    /// Completed fetches, successful or not.
    completed: u64,
    /// The last fetch's error, and until when it answers for the endpoint.
    last_error: Option<(TokenError, Instant)>,
}

/// Caches one client-credentials token and refreshes it, one fetch at a time.
pub struct TokenProvider {
    http: reqwest::Client,
    token_url: String,
    server_address: String,
    server_port: Option<u16>,
    client_id: String,
    client_secret: SecretString,
    cached: RwLock<Option<CachedToken>>,
    fetch: Mutex<FetchState>,
    /// A background refresh (of a token due for one but unexpired) is under way.
    refreshing: std::sync::atomic::AtomicBool,
    completed_hint: std::sync::atomic::AtomicU64,
    next_generation: std::sync::atomic::AtomicU64,
    metrics: std::sync::OnceLock<crate::metrics::Metrics>,
}

impl std::fmt::Debug for TokenProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenProvider")
            .field("token_url", &self.token_url)
            .field("client_id", &self.client_id)
            .field("client_secret", &"[REDACTED]")
            .finish_non_exhaustive()
    }
}

impl TokenProvider {
    pub fn new(
        http: reqwest::Client,
        login_base_url: &str,
        client_id: String,
        client_secret: SecretString,
    ) -> Arc<Self> {
        let token_url = format!("{}/oauth/token", login_base_url.trim_end_matches('/'));
        let parsed = reqwest::Url::parse(&token_url).ok();
        let server_address = parsed
            .as_ref()
            .and_then(|u| u.host_str().map(str::to_string))
            .unwrap_or_default();
        let server_port = parsed.as_ref().and_then(|u| u.port_or_known_default());
        Arc::new(Self {
            http,
            token_url,
            server_address,
            server_port,
            client_id,
            client_secret,
            cached: RwLock::new(None),
            fetch: Mutex::new(FetchState::default()),
            refreshing: Default::default(),
            completed_hint: Default::default(),
            next_generation: Default::default(),
            metrics: std::sync::OnceLock::new(),
        })
    }

    /// Counts every token request's answer in `metrics` (the first call wins).
    pub fn set_metrics(&self, metrics: crate::metrics::Metrics) {
        let _ = self.metrics.set(metrics);
    }

    /// A fresh token: the cached one, or the result of the one fetch in flight.
    pub async fn token(self: &Arc<Self>) -> Result<AccessToken, TokenError> {
        use std::sync::atomic::Ordering;
        if let Some(token) = self.fresh().await {
            return Ok(token);
        }
        // Due for a refresh but unexpired: refresh in the background and go on with it, so a
        // login host that fails or hangs (up to the request timeout) holds no API call.
        if let Some(token) = self.unexpired().await {
            if !self.refreshing.swap(true, Ordering::AcqRel) {
                let this = Arc::clone(self);
                tokio::spawn(async move {
                    let _ = this.fetch_or_share().await;
                    this.refreshing.store(false, Ordering::Release);
                });
            }
            return Ok(token);
        }
        self.fetch_or_share().await
    }

    /// The one fetch: the caller that gets the lock fetches; those that queued behind it take
    /// its token, or share its failure.
    async fn fetch_or_share(&self) -> Result<AccessToken, TokenError> {
        use std::sync::atomic::Ordering;
        let seen = self.completed_hint.load(Ordering::Acquire);
        let mut fetch = self.fetch.lock().await;
        if let Some(token) = self.fresh().await {
            return Ok(token);
        }
        if let Some((error, held_until)) = &fetch.last_error
            && (fetch.completed != seen || Instant::now() < *held_until)
        {
            // A fetch failed while we queued, or so recently that asking again is pointless.
            return Err(error.clone());
        }
        let result = self.fetch_token().await;
        fetch.completed += 1;
        self.completed_hint.store(fetch.completed, Ordering::Release);
        match result {
            Ok((value, lifetime)) => {
                fetch.last_error = None;
                let generation = self.next_generation.fetch_add(1, Ordering::Relaxed) + 1;
                let token = AccessToken { value, generation };
                let now = Instant::now();
                *self.cached.write().await = Some(CachedToken {
                    token: token.clone(),
                    refresh_at: now + refresh_after(lifetime),
                    usable_until: now + lifetime.saturating_sub(USE_MARGIN.min(lifetime / 4)),
                });
                Ok(token)
            }
            Err(error) => {
                let hold = error
                    .retry_after
                    .map_or(FAILURE_HOLD, |wait| wait.clamp(FAILURE_HOLD, MAX_FAILURE_HOLD));
                fetch.last_error = Some((error.clone(), Instant::now() + hold));
                Err(error)
            }
        }
    }

    /// Drops the cached token if it is still `token`'s generation (the API answered 401 to it).
    pub async fn invalidate(&self, token: &AccessToken) {
        let mut cached = self.cached.write().await;
        if cached.as_ref().is_some_and(|c| c.token.generation == token.generation) {
            tracing::info!(
                generation = token.generation,
                "genesys token rejected by the API; refreshing"
            );
            *cached = None;
        }
    }

    /// The cached token if it has not expired yet, though due for a refresh.
    async fn unexpired(&self) -> Option<AccessToken> {
        let cached = self.cached.read().await;
        cached
            .as_ref()
            .filter(|c| Instant::now() < c.usable_until)
            .map(|c| c.token.clone())
    }

    async fn fresh(&self) -> Option<AccessToken> {
        let cached = self.cached.read().await;
        cached
            .as_ref()
            .filter(|c| Instant::now() < c.refresh_at)
            .map(|c| c.token.clone())
    }

    async fn fetch_token(&self) -> Result<(SecretString, Duration), TokenError> {
        let span = tracing::info_span!(
            "genesys.token",
            otel.kind = "client",
            http.request.method = "POST",
            server.address = %self.server_address,
            server.port = self.server_port.map(crate::telemetry::int),
            http.response.status_code = field::Empty,
            error.type = field::Empty,
            otel.status_code = field::Empty,
        );
        let result = async {
            let sent = self
                .http
                .post(&self.token_url)
                .basic_auth(&self.client_id, Some(self.client_secret.expose_secret()))
                .form(&[("grant_type", "client_credentials")])
                .send()
                .await;
            if let Some(metrics) = self.metrics.get() {
                metrics.genesys_token_response(sent.as_ref().ok().map(|r| r.status().as_u16()));
            }
            let response = sent.map_err(|e| TokenError {
                message: format!("token request failed: {}", super::client::describe_transport_error(&e)),
                status: None,
                retry_after: None,
                context_id: None,
            })?;
            let status = response.status().as_u16();
            tracing::Span::current().record("http.response.status_code", crate::telemetry::int(status));
            let headers = response.headers().clone();
            let body = response.bytes().await.map_err(|e| TokenError {
                message: format!(
                    "token response body unreadable: {}",
                    super::client::describe_transport_error(&e)
                ),
                status: Some(status),
                retry_after: None,
                context_id: None,
            })?;
            if !(200..300).contains(&status) {
                let error = GenesysErrorBody::parse(&body);
                let code = error.code.map(|c| format!(" ({c})")).unwrap_or_default();
                return Err(TokenError {
                    message: format!("token endpoint answered HTTP {status}{code}"),
                    status: Some(status),
                    retry_after: retry_after(&headers),
                    context_id: error.context_id.or_else(|| correlation_id(&headers)),
                });
            }
            let parsed: TokenResponse = serde_json::from_slice(&body).map_err(|_| TokenError {
                message: "token endpoint answered 2xx without a usable access_token".to_string(),
                status: Some(status),
                retry_after: None,
                context_id: correlation_id(&headers),
            })?;
            if parsed.access_token.is_empty() {
                return Err(TokenError {
                    message: "token endpoint answered an empty access_token".to_string(),
                    status: Some(status),
                    retry_after: None,
                    context_id: correlation_id(&headers),
                });
            }
            if let Some(kind) = parsed.token_type.as_deref()
                && !kind.eq_ignore_ascii_case("bearer")
            {
                tracing::warn!(
                    token_type = kind,
                    "genesys token type is not bearer; using it as a bearer token"
                );
            }
            let lifetime = parsed.expires_in.map(Duration::from_secs).unwrap_or(DEFAULT_LIFETIME);
            tracing::debug!(expires_in_secs = lifetime.as_secs(), "genesys token obtained");
            Ok((SecretString::from(parsed.access_token), lifetime))
        }
        .instrument(span.clone())
        .await;
        if let Err(error) = &result {
            span.record(
                "error.type",
                error.status.map_or_else(|| "transport".to_string(), |s| s.to_string()),
            );
            span.record("otel.status_code", "ERROR");
            tracing::warn!(parent: &span, status = error.status, context_id = error.context_id.as_deref(), "genesys token fetch failed: {}", error.message);
        }
        result
    }
}

/// When to refresh a token of this lifetime: 60 s before expiry, or at half-life if that is
/// sooner (a lifetime of two minutes or less).
pub fn refresh_after(lifetime: Duration) -> Duration {
    if lifetime > REFRESH_MARGIN * 2 {
        lifetime - REFRESH_MARGIN
    } else {
        lifetime / 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_happens_a_minute_early_or_at_half_life() {
        assert_eq!(refresh_after(Duration::from_secs(86_400)), Duration::from_secs(86_340));
        assert_eq!(refresh_after(Duration::from_secs(3600)), Duration::from_secs(3540));
        assert_eq!(refresh_after(Duration::from_secs(121)), Duration::from_secs(61));
        assert_eq!(refresh_after(Duration::from_secs(120)), Duration::from_secs(60));
        assert_eq!(refresh_after(Duration::from_secs(2)), Duration::from_secs(1));
        assert_eq!(refresh_after(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn access_token_debug_is_redacted() {
        let token = AccessToken {
            value: SecretString::from("eyJhbGciOi-secret"),
            generation: 3,
        };
        let shown = format!("{token:?}");
        assert!(!shown.contains("eyJ") && shown.contains("generation: 3"), "{shown}");
    }

    #[test]
    fn expires_in_is_read_as_an_integer_a_float_or_a_numeric_string() {
        let lifetime = |json: &str| {
            serde_json::from_str::<TokenResponse>(json)
                .map(|t| t.expires_in)
                .map_err(|e| e.to_string())
        };
        assert_eq!(lifetime(r#"{"access_token":"a","expires_in":86399}"#), Ok(Some(86_399)));
        assert_eq!(
            lifetime(r#"{"access_token":"a","expires_in":86399.0}"#),
            Ok(Some(86_399))
        );
        assert_eq!(
            lifetime(r#"{"access_token":"a","expires_in":" 3600 "}"#),
            Ok(Some(3600))
        );
        assert_eq!(lifetime(r#"{"access_token":"a","expires_in":"soon"}"#), Ok(None));
        assert_eq!(lifetime(r#"{"access_token":"a","expires_in":null}"#), Ok(None));
        assert_eq!(lifetime(r#"{"access_token":"a"}"#), Ok(None));
        assert_eq!(lifetime(r#"{"access_token":"a","expires_in":0}"#), Ok(None));
        assert_eq!(lifetime(r#"{"access_token":"a","expires_in":-5}"#), Ok(None));
        assert_eq!(
            lifetime(r#"{"access_token":"a","expires_in":1e30}"#),
            Ok(Some(MAX_LIFETIME_SECS))
        );
        assert_eq!(
            lifetime(r#"{"access_token":"a","expires_in":"1e30"}"#),
            Ok(Some(MAX_LIFETIME_SECS))
        );
    }
}
