//! [`GenesysClient`]: one pooled HTTP client, one token provider and one pacer shared by every
//! concurrent [`GenesysClient::create_session`] call.
//!
//! One creation is: (circuit pass → pacer slot → token → `POST`) attempts, classified and retried
//! by [`super::retry`] until created, rejected, or the retry budget is spent. The circuit and the
//! pacer make a call *wait* (within its budget), never fail; [`GenesysClient::accepting`] tells the
//! worker when to stop taking new work.
//!
//! Tracing: `genesys.create_session` around the whole call, one `genesys.attempt` child per HTTP
//! attempt (OpenTelemetry HTTP-client attributes), `genesys.token` around a token fetch. Span fields
//! carry the request id, statuses and Genesys ids, never a guest id, name, attribute value or token.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use tokio::time::Instant;
use tracing::{Instrument, field};

use super::auth::{AccessToken, TokenProvider};
use super::circuit::{Circuit, CircuitSettings};
use super::config::{GenesysConfig, GenesysConfigError, SessionApiKind};
use super::error::{CreateError, GenesysErrorBody, StatusClass, classify_status, correlation_id, retry_after};
use super::pacer::Pacer;
use super::retry::{AttemptError, Failure, RetryPolicy};
use super::{guest_chat, open_messaging};
use crate::request::ValidatedRequest;

/// A created Genesys session.
#[derive(Debug, Clone)]
pub struct CreatedSession {
    pub api: SessionApiKind,
    /// Absent only when Open Messaging accepted the message without returning one.
    pub conversation_id: Option<String>,
    /// Open Messaging: the `id` of the inbound message Genesys stored.
    pub message_id: Option<String>,
    /// Guest Chat: the guest's member id.
    pub member_id: Option<String>,
    /// Guest Chat: where the guest's client reads events.
    pub event_stream_uri: Option<String>,
    /// Guest Chat only: the guest's credential. Send it only to `reply_to`; never log it.
    pub guest_jwt: Option<SecretString>,
    /// HTTP attempts it took (1 when the first one worked).
    pub attempts: u32,
}

/// The Genesys Cloud client. Cheap to clone; clones share the connection pool, token and pacer.
#[derive(Clone)]
pub struct GenesysClient {
    inner: Arc<Inner>,
}

struct Inner {
    config: GenesysConfig,
    http: reqwest::Client,
    /// Open Messaging only (Guest Chat uses no OAuth).
    tokens: Option<Arc<TokenProvider>>,
    pacer: Pacer,
    circuit: Circuit,
    policy: RetryPolicy,
    session_url: reqwest::Url,
    server_address: String,
    server_port: Option<u16>,
    /// Where each attempt's status is counted; set once by the worker.
    metrics: std::sync::OnceLock<crate::metrics::Metrics>,
    /// The text of the replica's last transient failure: why a request that never got a try of
    /// its own (the circuit stayed open) ran out of budget.
    last_failure: std::sync::Mutex<Option<String>>,
}

impl Inner {
    /// Keeps a transient failure as the call's and the replica's last one.
    fn remember(&self, call: &Call<'_>, error: &AttemptError) {
        if error.failure != Failure::Transient {
            return;
        }
        use std::sync::PoisonError;
        *self.last_failure.lock().unwrap_or_else(PoisonError::into_inner) = Some(error.message.clone());
        *call.last_failure.lock().unwrap_or_else(PoisonError::into_inner) = Some(error.clone());
    }
}

/// One creation in progress: what its attempts share.
struct Call<'a> {
    request: &'a ValidatedRequest,
    deadline: Instant,
    /// Tries, each a circuit pass and a pacer slot, and a token when one is used.
    tries: AtomicU32,
    /// POSTs sent to the session endpoint (the contract's `attempts`).
    attempts: AtomicU32,
    reauthenticated: AtomicBool,
    /// The last transient failure: what the dead letter reports if the budget then runs out
    /// while the attempt waits for the circuit or the pacer.
    last_failure: std::sync::Mutex<Option<AttemptError>>,
}

impl GenesysClient {
    /// Builds the HTTP client (rustls, pooled, connect timeout and request timeout from `config`)
    /// and checks the configuration.
    pub fn new(config: GenesysConfig) -> Result<Self, GenesysConfigError> {
        config.validate()?;
        let http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            // A redirected POST would silently become a GET: treat 3xx as a rejection instead.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!(env!("CARGO_PKG_NAME"), "/", env!("CARGO_PKG_VERSION")))
            // Every Genesys answer, errors included, is JSON; the official SDKs ask for it too.
            .default_headers(reqwest::header::HeaderMap::from_iter([(
                reqwest::header::ACCEPT,
                reqwest::header::HeaderValue::from_static("application/json"),
            )]))
            .build()
            .map_err(GenesysConfigError::HttpClient)?;
        let invalid_url = |reason: String| GenesysConfigError::Invalid {
            var: "GENESYS_API_URL",
            reason,
        };
        let session_url = match config.session_api {
            SessionApiKind::OpenMessaging => open_messaging::url(
                &config.api_base_url,
                config.integration_id.as_deref().unwrap_or_default(),
            ),
            SessionApiKind::GuestChat => guest_chat::url(&config.api_base_url),
        }
        .map_err(invalid_url)?;
        let tokens = (config.session_api == SessionApiKind::OpenMessaging).then(|| {
            TokenProvider::new(
                http.clone(),
                &config.login_base_url,
                config.client_id.clone(),
                config.client_secret.clone(),
            )
        });
        let policy = RetryPolicy {
            initial_backoff: config.initial_backoff,
            max_backoff: config.max_backoff,
            budget: config.retry_budget,
            max_retry_after: config.max_retry_after,
        };
        Ok(Self {
            inner: Arc::new(Inner {
                server_address: session_url.host_str().unwrap_or_default().to_string(),
                server_port: session_url.port_or_known_default(),
                metrics: std::sync::OnceLock::new(),
                last_failure: std::sync::Mutex::new(None),
                pacer: Pacer::new(config.rate_limit_per_minute, config.max_retry_after),
                circuit: Circuit::new(CircuitSettings::default()),
                http,
                tokens,
                policy,
                session_url,
                config,
            }),
        })
    }

    /// Counts every HTTP attempt's outcome in `metrics` (the first call wins; later ones are ignored).
    pub fn set_metrics(&self, metrics: crate::metrics::Metrics) {
        if let Some(tokens) = &self.inner.tokens {
            tokens.set_metrics(metrics.clone());
        }
        let _ = self.inner.metrics.set(metrics);
    }

    pub fn config(&self) -> &GenesysConfig {
        &self.inner.config
    }

    pub fn session_api(&self) -> SessionApiKind {
        self.inner.config.session_api
    }

    /// The shared pacer (its snapshot is useful for metrics).
    pub fn pacer(&self) -> &Pacer {
        &self.inner.pacer
    }

    /// The circuit breaker over Genesys calls.
    pub fn circuit(&self) -> &Circuit {
        &self.inner.circuit
    }

    /// Backpressure for the worker: resolves at once while Genesys is healthy; while a 429 has
    /// paused the pacer or the circuit is open (Genesys failing persistently), waits until that is
    /// over, so new deliveries stay in the queue instead of burning their retry budget here.
    /// Calls already in flight are unaffected: they wait within their own budget.
    pub async fn accepting(&self) {
        loop {
            self.inner.pacer.resumed().await;
            self.inner.circuit.accepting().await;
            if self.inner.pacer.snapshot().paused_for.is_none() {
                return;
            }
        }
    }

    /// Creates a Genesys session for `request` with the configured API, retrying transient
    /// failures within the retry budget.
    pub async fn create_session(&self, request: &ValidatedRequest) -> Result<CreatedSession, CreateError> {
        let api = self.session_api();
        let span = tracing::info_span!(
            "genesys.create_session",
            request_id = request.request_id(),
            genesys.session_api = api.as_str(),
            genesys.attempts = field::Empty,
            genesys.conversation_id = field::Empty,
            genesys.context_id = field::Empty,
            error.type = field::Empty,
            otel.status_code = field::Empty,
        );
        async {
            let started = Instant::now();
            let call = Call {
                request,
                deadline: started + self.inner.config.retry_budget,
                tries: AtomicU32::new(0),
                attempts: AtomicU32::new(0),
                reauthenticated: AtomicBool::new(false),
                last_failure: std::sync::Mutex::new(None),
            };
            let result = self
                .inner
                .policy
                .run(started, &call.attempts, || self.attempt(&call))
                .await;
            let span = tracing::Span::current();
            match &result {
                Ok(created) => {
                    span.record("genesys.attempts", crate::telemetry::int(created.attempts));
                    if let Some(conversation_id) = &created.conversation_id {
                        span.record("genesys.conversation_id", conversation_id.as_str());
                    }
                    tracing::debug!(
                        attempts = created.attempts,
                        elapsed_ms = elapsed_ms(started),
                        "genesys session created"
                    );
                }
                Err(error) => {
                    span.record("genesys.attempts", crate::telemetry::int(error.attempts()));
                    span.record("error.type", error.kind());
                    span.record("otel.status_code", "ERROR");
                    if let Some(id) = error.context_id() {
                        span.record("genesys.context_id", id);
                    }
                    tracing::warn!(
                        kind = error.kind(),
                        status = error.status(),
                        attempts = error.attempts(),
                        context_id = error.context_id(),
                        elapsed_ms = elapsed_ms(started),
                        "genesys session not created"
                    );
                }
            }
            result
        }
        .instrument(span)
        .await
    }

    /// One attempt: a circuit pass and a pacer slot, a token (Open Messaging), the POST, its
    /// classification.
    async fn attempt(&self, call: &Call<'_>) -> Result<CreatedSession, AttemptError> {
        let inner = &*self.inner;
        // Admission: an open circuit (Genesys failing persistently) or the pacer (shared quota,
        // 429 pause) makes the attempt wait, within the retry budget; neither makes it fail.
        let admitted = tokio::time::timeout_at(call.deadline, async {
            let pass = inner.circuit.admit().await;
            (pass, inner.pacer.acquire().await)
        })
        .await;
        let Ok((pass, slot)) = admitted else {
            let last = call
                .last_failure
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            return Err(match last {
                // What Genesys last said (status, context id) tells the operator more than the wait.
                Some(last) => AttemptError {
                    failure: Failure::BudgetSpent,
                    ..last
                },
                None => AttemptError {
                    failure: Failure::BudgetSpent,
                    status: None,
                    code: None,
                    message: match inner
                        .last_failure
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .as_deref()
                    {
                        Some(last) => format!(
                            "the retry budget ran out while waiting for Genesys (a rate-limit pause or an open circuit); the replica's last failure: {last}"
                        ),
                        None => {
                            "the retry budget ran out while waiting for Genesys (a rate-limit pause or an open circuit)"
                                .to_string()
                        }
                    },
                    context_id: None,
                    retry_after: None,
                },
            });
        };
        if call.tries.fetch_add(1, Ordering::Relaxed) > 0
            && let Some(metrics) = inner.metrics.get()
        {
            metrics.genesys_retry();
        }
        let token = match &inner.tokens {
            Some(tokens) => match tokens.token().await {
                Ok(token) => Some(token),
                Err(e) => {
                    if e.status.is_none_or(server_failing) {
                        pass.failed();
                    }
                    let error = AttemptError {
                        failure: Failure::Transient,
                        status: e.status,
                        code: None,
                        message: e.message,
                        context_id: e.context_id,
                        retry_after: e.retry_after,
                    };
                    inner.remember(call, &error);
                    return Err(error);
                }
            },
            None => None,
        };
        // Counted here, as the contract's `attempts` are the POSTs sent to Genesys (a try that
        // failed on its token sent none).
        let index = call.attempts.fetch_add(1, Ordering::Relaxed);
        let remaining = call.deadline.saturating_duration_since(Instant::now());
        let timeout = inner.config.request_timeout.min(remaining.max(Duration::from_secs(1)));
        let builder = inner.http.post(inner.session_url.clone()).timeout(timeout);
        let builder = match (&token, inner.config.session_api) {
            (Some(token), SessionApiKind::OpenMessaging) => {
                let body = open_messaging::body(call.request, &inner.config.initial_message, chrono::Utc::now());
                builder.bearer_auth(token.secret().expose_secret()).json(&body)
            }
            _ => builder.json(&guest_chat::body(
                call.request,
                inner.config.organization_id.as_deref().unwrap_or_default(),
                inner.config.deployment_id.as_deref().unwrap_or_default(),
                inner.config.default_queue.as_deref().unwrap_or_default(),
            )),
        };

        // Exported as `POST` (the HTTP client convention names the span after the method);
        // `http.request.resend_count` is set only on retries, as the convention asks. The URL
        // holds the integration id, never a guest's data.
        let span = tracing::info_span!(
            "genesys.attempt",
            otel.name = "POST",
            otel.kind = "client",
            otel.status_code = field::Empty,
            http.request.method = "POST",
            url.full = %inner.session_url,
            server.address = %inner.server_address,
            server.port = inner.server_port.map(crate::telemetry::int),
            http.request.resend_count = (index > 0).then_some(crate::telemetry::int(index)),
            http.response.status_code = field::Empty,
            error.type = field::Empty,
        );
        let result = async {
            let sent = builder.send().await;
            if let Some(metrics) = inner.metrics.get() {
                metrics.genesys_response(sent.as_ref().ok().map(|r| r.status().as_u16()));
            }
            let response = match sent {
                Ok(response) => response,
                Err(e) => {
                    pass.failed();
                    return Err(AttemptError::transient(
                        None,
                        format!("request failed: {}", describe_transport_error(&e)),
                    ));
                }
            };
            let status = response.status().as_u16();
            tracing::Span::current().record("http.response.status_code", crate::telemetry::int(status));
            slot.record(status, response.headers());
            // What the headers say is read before the body consumes the response, instead of
            // keeping a copy of them all.
            let hints = ResponseHints::of(response.headers());
            if server_failing(status) {
                pass.failed();
            } else {
                pass.succeeded();
            }
            let body = match response.bytes().await {
                Ok(body) => body,
                // A 2xx whose body was cut off still created the session: it is interpreted as
                // a 2xx without a body rather than sent again.
                Err(e) if classify_status(status) == StatusClass::Created => {
                    tracing::warn!(
                        status,
                        context_id = hints.correlation_id.as_deref(),
                        error = %describe_transport_error(&e),
                        "reading the body of a genesys 2xx failed; not sending the request again"
                    );
                    Default::default()
                }
                Err(e) => {
                    return Err(AttemptError::transient(
                        Some(status),
                        format!(
                            "reading the HTTP {status} response failed: {}",
                            describe_transport_error(&e)
                        ),
                    ));
                }
            };
            tracing::debug!(status, attempt = index, "genesys answered");
            self.interpret(call, token.as_ref(), status, hints, &body, index + 1)
                .await
        }
        .instrument(span.clone())
        .await;
        if let Err(error) = &result {
            self.inner.remember(call, error);
            let kind = error.status.map_or_else(|| "transport".to_string(), |s| s.to_string());
            span.record("error.type", kind.as_str());
            span.record("otel.status_code", "ERROR");
        }
        result
    }

    async fn interpret(
        &self,
        call: &Call<'_>,
        token: Option<&AccessToken>,
        status: u16,
        hints: ResponseHints,
        body: &[u8],
        attempts: u32,
    ) -> Result<CreatedSession, AttemptError> {
        let api = self.session_api();
        let class = classify_status(status);
        if class == StatusClass::Created {
            // A 2xx is never sent again, whatever its body: Genesys has the message or the chat,
            // and a second POST would make a second one.
            return match api {
                SessionApiKind::OpenMessaging => {
                    let c = open_messaging::parse_response(body);
                    if c.conversation_id.is_none() {
                        tracing::warn!(
                            status,
                            context_id = hints.correlation_id.as_deref(),
                            "genesys accepted the message without a conversationId; the event carries none"
                        );
                    }
                    Ok(CreatedSession {
                        api,
                        conversation_id: c.conversation_id,
                        message_id: c.message_id,
                        member_id: None,
                        event_stream_uri: None,
                        guest_jwt: None,
                        attempts,
                    })
                }
                SessionApiKind::GuestChat => guest_chat::parse_response(body)
                    .map(|c| CreatedSession {
                        api,
                        conversation_id: Some(c.conversation_id),
                        message_id: None,
                        member_id: c.member_id,
                        event_stream_uri: c.event_stream_uri,
                        guest_jwt: Some(c.jwt),
                        attempts,
                    })
                    // Without an id and a jwt the guest cannot join, and a retry would open another chat.
                    .map_err(|problem| AttemptError {
                        context_id: hints.correlation_id,
                        ..AttemptError::new(Failure::Permanent, Some(status), problem)
                    }),
            };
        }

        let error = GenesysErrorBody::parse(body);
        let context_id = error.context_id.clone().or(hints.correlation_id);
        let code_suffix = error.code.as_deref().map(|c| format!(" ({c})")).unwrap_or_default();
        let failure = match class {
            StatusClass::Unauthorized => match (token, &self.inner.tokens) {
                (Some(token), Some(tokens)) if !call.reauthenticated.swap(true, Ordering::Relaxed) => {
                    tokens.invalidate(token).await;
                    Failure::Reauthenticate
                }
                _ => Failure::Permanent,
            },
            StatusClass::Transient => Failure::Transient,
            StatusClass::Permanent | StatusClass::Created => Failure::Permanent,
        };
        let message = match failure {
            // Kept on the error for debugging only (a 400 can echo request values): the dead letter's
            // detail shows the status, code and contextId, never this text.
            Failure::Permanent => error.message.clone().unwrap_or_else(|| {
                let reason = reqwest::StatusCode::from_u16(status)
                    .ok()
                    .and_then(|s| s.canonical_reason());
                format!("HTTP {status}{}", reason.map(|r| format!(" {r}")).unwrap_or_default())
            }),
            _ => format!("HTTP {status}{code_suffix}"),
        };
        tracing::debug!(
            status,
            code = error.code.as_deref(),
            context_id = context_id.as_deref(),
            failure = ?failure,
            "genesys attempt failed"
        );
        Err(AttemptError {
            failure,
            status: Some(status),
            code: error.code,
            message,
            context_id,
            retry_after: hints.retry_after,
        })
    }
}

/// What an attempt needs from the response headers once the body is read.
struct ResponseHints {
    correlation_id: Option<String>,
    retry_after: Option<Duration>,
}

impl ResponseHints {
    fn of(headers: &reqwest::header::HeaderMap) -> Self {
        Self {
            correlation_id: correlation_id(headers),
            retry_after: retry_after(headers),
        }
    }
}

/// Statuses that count against Genesys's health in the circuit breaker (the transient ones except
/// 429, which says Genesys is up and pacing us).
fn server_failing(status: u16) -> bool {
    status == 408 || ((500..=599).contains(&status) && status != 501)
}

fn elapsed_ms(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// "timed out" / "connection failed" plus the innermost cause, without the URL or any body.
pub(crate) fn describe_transport_error(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "connection failed"
    } else if error.is_body() || error.is_decode() {
        "response body error"
    } else {
        "transport error"
    };
    let mut cause: &dyn std::error::Error = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    if std::ptr::addr_eq(cause, error as &dyn std::error::Error) {
        kind.to_string()
    } else {
        format!("{kind} ({cause})")
    }
}

impl fmt::Debug for GenesysClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GenesysClient")
            .field("config", &self.inner.config)
            .field("session_url", &self.inner.session_url.as_str())
            .field("pacer", &self.inner.pacer.snapshot())
            .finish_non_exhaustive()
    }
}

impl fmt::Display for GenesysClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GenesysClient({})", self.inner.config)
    }
}
