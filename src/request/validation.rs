//! The rules of DESIGN §2. (To be completed.)

use super::{Rejection, ValidatedRequest};

pub const MAX_BODY_BYTES: usize = 64 * 1024;
pub const MAX_CUSTOM_ATTRIBUTES_BYTES: usize = 2048;
pub const DEFAULT_PII_PATTERNS: &[&str] = &["email", "phone", "ssn", "credit", "password", "ip_address"];

/// Configurable parts of validation (the PII key patterns).
#[derive(Debug, Clone)]
pub struct ValidationPolicy {
    pii_patterns: Vec<String>,
}

impl Default for ValidationPolicy {
    fn default() -> Self {
        Self::new(DEFAULT_PII_PATTERNS.iter().copied())
    }
}

impl ValidationPolicy {
    pub fn new<S: AsRef<str>>(patterns: impl IntoIterator<Item = S>) -> Self {
        Self { pii_patterns: patterns.into_iter().map(|p| p.as_ref().to_string()).collect() }
    }
    /// Comma-separated patterns, as in `PII_KEY_PATTERNS`.
    pub fn from_csv(csv: &str) -> Self {
        Self::new(csv.split(',').map(str::trim).filter(|p| !p.is_empty()))
    }
}

pub fn validate(body: &[u8], policy: &ValidationPolicy) -> Result<ValidatedRequest, Rejection> {
    let _ = (body, policy);
    todo!("helper fills this in")
}
