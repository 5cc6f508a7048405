//! Compliance audit records (DESIGN §5): one per final outcome of a request, with the guest id
//! pseudonymised by a keyed hash so records can be correlated without holding the identifier.

use chrono::{DateTime, SecondsFormat, Utc};
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use sha2::Sha256;

/// Computes `guest_ref = hex(HMAC-SHA256(key, guest_id))`.
#[derive(Clone)]
pub struct Pseudonymizer {
    /// The HMAC state with the key already absorbed (its inner and outer pads hashed once, not
    /// for every record); cloned per guest id.
    keyed: Hmac<Sha256>,
}

impl Pseudonymizer {
    pub fn new(key: SecretString) -> Self {
        // HMAC accepts keys of any length, so construction cannot fail.
        let keyed = <Hmac<Sha256> as Mac>::new_from_slice(key.expose_secret().as_bytes())
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        Self { keyed }
    }

    pub fn guest_ref(&self, guest_id: &str) -> String {
        let mut mac = self.keyed.clone();
        mac.update(guest_id.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }
}

impl std::fmt::Debug for Pseudonymizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pseudonymizer { key: <redacted> }")
    }
}

/// The final outcome of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditOutcome {
    /// The session exists in Genesys and its event was published.
    Created,
    /// The request broke a rule of the contract (validation).
    Rejected,
    /// Genesys refused the request or never accepted it within the retry budget.
    Failed,
}

/// One audit record. Never holds an attribute value, the display name, the guest id or a secret.
#[derive(Debug, Clone, Serialize)]
pub struct AuditRecord {
    pub timestamp: String,
    pub request_id: Option<String>,
    pub guest_ref: Option<String>,
    pub outcome: AuditOutcome,
    pub reason: Option<String>,
    pub latency_ms: u64,
    pub attempts: u32,
    pub routing_success: bool,
    pub validation_passed: bool,
    pub consent_data_processing: Option<bool>,
    pub consent_marketing: Option<bool>,
    pub pii_blocked: bool,
    pub privacy_compliant: bool,
    pub trace_id: Option<String>,
}

impl AuditOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditOutcome::Created => "created",
            AuditOutcome::Rejected => "rejected",
            AuditOutcome::Failed => "failed",
        }
    }
}

impl AuditRecord {
    pub fn timestamp(at: DateTime<Utc>) -> String {
        at.to_rfc3339_opts(SecondsFormat::Millis, true)
    }

    /// Logs the record at target `audit`, one log field per record field, so a log pipeline can
    /// index and filter it (`RUST_LOG=audit=info` keeps it when other logs are turned down).
    pub fn log(&self) {
        tracing::info!(
            target: "audit",
            recorded_at = %self.timestamp,
            request_id = self.request_id.as_deref(),
            guest_ref = self.guest_ref.as_deref(),
            outcome = self.outcome.as_str(),
            reason = self.reason.as_deref(),
            latency_ms = self.latency_ms,
            attempts = self.attempts,
            routing_success = self.routing_success,
            validation_passed = self.validation_passed,
            consent_data_processing = self.consent_data_processing,
            consent_marketing = self.consent_marketing,
            pii_blocked = self.pii_blocked,
            privacy_compliant = self.privacy_compliant,
            trace_id = self.trace_id.as_deref(),
            "audit record"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_ref_is_stable_per_key_and_differs_across_keys() {
        let a = Pseudonymizer::new(SecretString::from("key-a"));
        let b = Pseudonymizer::new(SecretString::from("key-b"));
        assert_eq!(a.guest_ref("guest_1"), a.guest_ref("guest_1"));
        assert_ne!(a.guest_ref("guest_1"), b.guest_ref("guest_1"));
        assert_ne!(a.guest_ref("guest_1"), a.guest_ref("guest_2"));
        assert_eq!(a.guest_ref("guest_1").len(), 64);
        assert!(!format!("{a:?}").contains("key-a"));
    }
}
