//! Genesys errors: the error body, the classification of a response (DESIGN §3), and
//! [`CreateError`], the outcome the pipeline turns into a dead letter.

use std::time::Duration;

use reqwest::header::{HeaderMap, RETRY_AFTER};
use serde_json::Value;

/// The longest Genesys `message` kept; the rest is cut.
const MAX_MESSAGE_CHARS: usize = 300;

/// A Genesys error body, `{message, code, status, messageParams, contextId, details[], errors[]}`, or
/// an OAuth error, `{error, description, error_description}`, read leniently: a missing field, a
/// field of an unexpected type or a body that is not JSON at all leaves the field empty, never fails.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenesysErrorBody {
    pub message: Option<String>,
    pub code: Option<String>,
    pub status: Option<u16>,
    pub message_params: Option<Value>,
    /// Quote this to Genesys support.
    pub context_id: Option<String>,
    pub details: Vec<Value>,
    pub errors: Vec<Value>,
}

impl GenesysErrorBody {
    pub fn parse(body: &[u8]) -> Self {
        let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(body) else {
            return Self::default();
        };
        let text = |key: &str| {
            map.get(key)
                .and_then(Value::as_str)
                .map(clean_text)
                .filter(|s| !s.is_empty())
        };
        let list = |key: &str| map.get(key).and_then(Value::as_array).cloned().unwrap_or_default();
        Self {
            message: text("message")
                .or_else(|| text("error_description"))
                .or_else(|| text("description")),
            code: text("code").or_else(|| text("error")),
            status: map.get("status").and_then(|s| {
                s.as_u64()
                    .or_else(|| s.as_str().and_then(|s| s.parse().ok()))
                    .and_then(|s| u16::try_from(s).ok())
            }),
            message_params: map.get("messageParams").filter(|v| !v.is_null()).cloned(),
            context_id: text("contextId"),
            details: list("details"),
            errors: list("errors"),
        }
    }
}

/// Cuts to [`MAX_MESSAGE_CHARS`] and replaces control characters (the text may travel in a header).
fn clean_text(s: &str) -> String {
    let mut out: String = s
        .trim()
        .chars()
        .take(MAX_MESSAGE_CHARS)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if s.trim().chars().count() > MAX_MESSAGE_CHARS {
        out.push('…');
    }
    out
}

/// What a response status means for the call (DESIGN §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusClass {
    /// 2xx.
    Created,
    /// 401: refresh the token once and retry once; a second 401 is permanent.
    Unauthorized,
    /// 408, 429, 5xx except 501: retry with backoff within the budget.
    Transient,
    /// Every other status (400, 403, 404, 409, 413, 422, 501, any other 4xx, 1xx/3xx): dead letter.
    Permanent,
}

pub fn classify_status(status: u16) -> StatusClass {
    match status {
        200..=299 => StatusClass::Created,
        401 => StatusClass::Unauthorized,
        408 | 429 => StatusClass::Transient,
        501 => StatusClass::Permanent,
        500..=599 => StatusClass::Transient,
        _ => StatusClass::Permanent,
    }
}

/// `Retry-After` as integer seconds (Genesys) or an HTTP date.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    if let Ok(secs) = value.parse::<f64>()
        && secs.is_finite()
        && secs >= 0.0
    {
        return Some(Duration::from_secs_f64(secs.min(1e9)));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let wait = at.signed_duration_since(chrono::Utc::now());
    Some(wait.to_std().unwrap_or(Duration::ZERO))
}

/// The correlation id Genesys puts on every response, used when the body carries no `contextId`.
pub(crate) fn correlation_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get("inin-correlation-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .filter(|s| !s.is_empty())
}

/// Why a session could not be created. Both variants are final: the pipeline dead-letters the
/// request with [`CreateError::kind`] as the reason.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// Genesys refused the request for good (4xx other than 408/429, a second 401, 501, or a 2xx
    /// the worker cannot use). The text (dead-letter `x-error-detail`, replies, logs) holds the
    /// status, `code` and `contextId` only, never Genesys's `message`; for an unusable 2xx,
    /// `message` is the worker's own finding (ids only) and is included.
    #[error("{}", rejected_text(*status, code.as_deref(), message, context_id.as_deref(), *attempts))]
    Rejected {
        status: u16,
        code: Option<String>,
        /// Genesys's free text (else the status line), for a debugger's eyes only: a 400 can echo
        /// request values (PII), so it is left out of the Display text, which is published and
        /// logged. The `contextId` finds the full response at Genesys support.
        message: String,
        context_id: Option<String>,
        attempts: u32,
    },
    /// Transient failures (429, 5xx, timeouts, connection or token errors) lasted past the retry budget.
    #[error("{}", exhausted_text(last_error, *status, context_id.as_deref(), *attempts, *refused_wait))]
    RetriesExhausted {
        last_error: String,
        status: Option<u16>,
        context_id: Option<String>,
        attempts: u32,
        /// Set when the retries ended because Genesys asked (`Retry-After`) to wait this long,
        /// more than `GENESYS_MAX_RETRY_AFTER_SECS`, rather than because the budget ran out.
        refused_wait: Option<Duration>,
    },
}

fn rejected_text(status: u16, code: Option<&str>, message: &str, context_id: Option<&str>, attempts: u32) -> String {
    let mut s = if (200..300).contains(&status) {
        // A 2xx that cannot be used: `message` is the worker's own finding, not Genesys text.
        format!("Genesys answered HTTP {status}, but {message}")
    } else {
        format!("Genesys rejected the session request with HTTP {status}")
    };
    if let Some(code) = code {
        s.push_str(&format!(" ({code})"));
    }
    if let Some(id) = context_id {
        s.push_str(&format!(" [contextId {id}]"));
    }
    s.push_str(&format!(
        " after {attempts} attempt{}",
        if attempts == 1 { "" } else { "s" }
    ));
    s
}

fn exhausted_text(
    last_error: &str,
    status: Option<u16>,
    context_id: Option<&str>,
    attempts: u32,
    refused_wait: Option<Duration>,
) -> String {
    let plural = if attempts == 1 { "" } else { "s" };
    let mut s = match refused_wait {
        Some(wait) => format!(
            "Genesys session creation not retried after {attempts} attempt{plural}: Genesys asked to wait {} s (Retry-After), more than GENESYS_MAX_RETRY_AFTER_SECS allows: {last_error}",
            wait.as_secs()
        ),
        None => format!(
            "Genesys session creation still failing when the retry budget ran out after {attempts} attempt{plural}: {last_error}"
        ),
    };
    if let Some(status) = status {
        s.push_str(&format!(" (last HTTP status {status})"));
    }
    if let Some(id) = context_id {
        s.push_str(&format!(" [contextId {id}]"));
    }
    s
}

impl CreateError {
    /// The dead-letter reason (`x-error-kind`).
    pub fn kind(&self) -> &'static str {
        match self {
            CreateError::Rejected { .. } => "genesys_rejected",
            CreateError::RetriesExhausted { .. } => "retries_exhausted",
        }
    }

    /// HTTP attempts made (token fetches not counted separately).
    pub fn attempts(&self) -> u32 {
        match self {
            CreateError::Rejected { attempts, .. } | CreateError::RetriesExhausted { attempts, .. } => *attempts,
        }
    }

    /// Genesys `contextId` (or `inin-correlation-id`) of the last response, for support.
    pub fn context_id(&self) -> Option<&str> {
        match self {
            CreateError::Rejected { context_id, .. } | CreateError::RetriesExhausted { context_id, .. } => {
                context_id.as_deref()
            }
        }
    }

    /// The last HTTP status seen, if any.
    pub fn status(&self) -> Option<u16> {
        match self {
            CreateError::Rejected { status, .. } => Some(*status),
            CreateError::RetriesExhausted { status, .. } => *status,
        }
    }
}

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderValue;

    use super::*;

    #[test]
    fn statuses_are_classified_as_design_says() {
        assert_eq!(classify_status(200), StatusClass::Created);
        assert_eq!(classify_status(201), StatusClass::Created);
        assert_eq!(classify_status(202), StatusClass::Created);
        for permanent in [400, 403, 404, 405, 409, 410, 413, 415, 422, 501, 302, 100] {
            assert_eq!(classify_status(permanent), StatusClass::Permanent, "{permanent}");
        }
        assert_eq!(classify_status(401), StatusClass::Unauthorized);
        for transient in [408, 429, 500, 502, 503, 504, 599] {
            assert_eq!(classify_status(transient), StatusClass::Transient, "{transient}");
        }
    }

    #[test]
    fn error_body_is_read_with_its_context_id() {
        let body = br#"{"message":"The request could not be understood","code":"bad.request","status":400,
            "messageParams":{"a":"b"},"contextId":"ctx-123","details":[{"errorCode":"x"}],"errors":[]}"#;
        let parsed = GenesysErrorBody::parse(body);
        assert_eq!(parsed.message.as_deref(), Some("The request could not be understood"));
        assert_eq!(parsed.code.as_deref(), Some("bad.request"));
        assert_eq!(parsed.status, Some(400));
        assert_eq!(parsed.context_id.as_deref(), Some("ctx-123"));
        assert_eq!(parsed.details.len(), 1);
        assert!(parsed.message_params.is_some());
    }

    #[test]
    fn error_body_parsing_never_fails() {
        assert_eq!(
            GenesysErrorBody::parse(b"<html>502 Bad Gateway</html>"),
            GenesysErrorBody::default()
        );
        assert_eq!(GenesysErrorBody::parse(b""), GenesysErrorBody::default());
        assert_eq!(GenesysErrorBody::parse(b"[1,2]"), GenesysErrorBody::default());
        let odd = GenesysErrorBody::parse(br#"{"message":5,"status":"503","contextId":null,"details":"x"}"#);
        assert_eq!(odd.message, None);
        assert_eq!(odd.status, Some(503));
        assert_eq!(odd.context_id, None);
        assert!(odd.details.is_empty());
    }

    #[test]
    fn oauth_error_body_is_understood() {
        let parsed = GenesysErrorBody::parse(br#"{"error":"invalid_client","description":"client not found"}"#);
        assert_eq!(parsed.code.as_deref(), Some("invalid_client"));
        assert_eq!(parsed.message.as_deref(), Some("client not found"));
    }

    #[test]
    fn long_messages_are_cut_and_cleaned() {
        let long = format!(r#"{{"message":"a\nb{}"}}"#, "x".repeat(1000));
        let message = GenesysErrorBody::parse(long.as_bytes()).message.unwrap();
        assert!(message.starts_with("a b"));
        assert_eq!(message.chars().count(), MAX_MESSAGE_CHARS + 1);
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(RETRY_AFTER, HeaderValue::from_static("2"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(2)));
        headers.insert(RETRY_AFTER, HeaderValue::from_static("garbage"));
        assert_eq!(retry_after(&headers), None);
        let soon = (chrono::Utc::now() + chrono::Duration::seconds(30)).to_rfc2822();
        headers.insert(RETRY_AFTER, HeaderValue::from_str(&soon).unwrap());
        let wait = retry_after(&headers).unwrap();
        assert!(
            wait > Duration::from_secs(25) && wait <= Duration::from_secs(30),
            "{wait:?}"
        );
    }

    #[test]
    fn create_error_reports_kind_attempts_and_context() {
        let rejected = CreateError::Rejected {
            status: 400,
            code: Some("bad.request".into()),
            message: "guest_id g-123 is not valid".into(),
            context_id: Some("ctx".into()),
            attempts: 1,
        };
        assert_eq!(rejected.kind(), "genesys_rejected");
        assert_eq!(rejected.attempts(), 1);
        assert_eq!(rejected.context_id(), Some("ctx"));
        assert_eq!(
            rejected.to_string(),
            "Genesys rejected the session request with HTTP 400 (bad.request) [contextId ctx] after 1 attempt",
            "Genesys's free text can echo request values: never in the published or logged text"
        );
        let exhausted = CreateError::RetriesExhausted {
            last_error: "HTTP 503".into(),
            status: Some(503),
            context_id: None,
            attempts: 7,
            refused_wait: None,
        };
        assert_eq!(exhausted.kind(), "retries_exhausted");
        assert_eq!(exhausted.attempts(), 7);
        assert_eq!(exhausted.context_id(), None);
        assert!(exhausted.to_string().contains("7 attempts"));
        assert!(exhausted.to_string().contains("retry budget ran out"));
        let refused = CreateError::RetriesExhausted {
            last_error: "HTTP 429".into(),
            status: Some(429),
            context_id: None,
            attempts: 1,
            refused_wait: Some(Duration::from_secs(600)),
        };
        assert_eq!(refused.kind(), "retries_exhausted");
        let text = refused.to_string();
        assert!(
            text.contains("asked to wait 600 s")
                && text.contains("GENESYS_MAX_RETRY_AFTER_SECS")
                && !text.contains("budget"),
            "{text}"
        );
    }
}
