//! Why a request was refused, in the contract's vocabulary.

use serde::Serialize;

/// The machine-readable reason of DESIGN §2, sent as the `x-error-kind` dead-letter header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    Malformed,
    TooLarge,
    Invalid,
    PiiBlocked,
    ConsentMissing,
}

impl RejectReason {
    pub const ALL: [RejectReason; 5] = [
        RejectReason::Malformed,
        RejectReason::TooLarge,
        RejectReason::Invalid,
        RejectReason::PiiBlocked,
        RejectReason::ConsentMissing,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Malformed => "malformed",
            RejectReason::TooLarge => "too_large",
            RejectReason::Invalid => "invalid",
            RejectReason::PiiBlocked => "pii_blocked",
            RejectReason::ConsentMissing => "consent_missing",
        }
    }
}

impl std::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused request. `detail` is for humans and never quotes an attribute value, the display name,
/// the initial message or the guest id; it may name a field or an attribute key.
#[derive(Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct Rejection {
    pub reason: RejectReason,
    pub detail: String,
    /// The request id, when the body held one that is itself well formed (so the dead letter and
    /// the audit record can name the request even though it was refused).
    pub request_id: Option<String>,
    /// The guest id under the same condition; used only to compute the audit pseudonym.
    pub guest_id: Option<String>,
    /// The consent flags when the body carried a well-formed `consent` object.
    pub consent: Option<super::Consent>,
}

/// Without the guest id (PII): a `{:?}` of a rejection may reach a log.
impl std::fmt::Debug for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rejection")
            .field("reason", &self.reason)
            .field("detail", &self.detail)
            .field("request_id", &self.request_id)
            .field("guest_id", &self.guest_id.as_ref().map(|_| "<redacted>"))
            .field("consent", &self.consent)
            .finish()
    }
}
