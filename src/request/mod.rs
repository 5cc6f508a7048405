//! Session requests (DESIGN §2): the wire model, and validation that turns raw bytes into a
//! [`ValidatedRequest`] or a [`Rejection`] naming the contract's reason.
//!
//! Parse, don't validate: the only way to obtain a [`ValidatedRequest`] is [`validate`], so the rest
//! of the crate never re-checks a rule.
//!
//! - `validation`: the rules, in the order of the contract's table, and the PII policy.
//! - `json`: the parsed tree, which refuses duplicate keys (serde_json's `Value` keeps the last).
//! - `probe`: best-effort ids and consent from a body that failed to parse, for the dead letter.

mod json;
mod probe;
mod rejection;
mod validated;
mod validation;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

pub use rejection::{RejectReason, Rejection};
pub use validated::{Consent, Routing, ValidatedRequest};
pub use validation::{
    DEFAULT_PII_PATTERNS, MAX_BODY_BYTES, MAX_CUSTOM_ATTRIBUTES_BYTES, ValidationPolicy, request_id_of, validate,
};
