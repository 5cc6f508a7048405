//! The validated request: a value that has passed every rule of DESIGN §2.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Consent flags as the request carried them. In a [`ValidatedRequest`], `data_processing` is true.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Consent {
    pub data_processing: bool,
    #[serde(default)]
    pub marketing: bool,
}

/// Routing hints for Genesys (queue, skills, language, priority), all optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Routing {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skills: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u8>,
}

/// A request that obeys every rule. Only [`super::validate`] builds one.
#[derive(Clone, PartialEq)]
pub struct ValidatedRequest {
    pub(super) request_id: String,
    pub(super) guest_id: String,
    pub(super) display_name: Option<String>,
    /// Scalar values (string, number, boolean) exactly as sent.
    pub(super) attributes: BTreeMap<String, serde_json::Value>,
    pub(super) consent: Consent,
    pub(super) routing: Option<Routing>,
    pub(super) initial_message: Option<String>,
    /// What travels to Genesys: attributes stringified, plus routing hints and consent flags.
    pub(super) custom_attributes: BTreeMap<String, String>,
}

impl ValidatedRequest {
    pub fn request_id(&self) -> &str {
        &self.request_id
    }
    pub fn guest_id(&self) -> &str {
        &self.guest_id
    }
    pub fn display_name(&self) -> Option<&str> {
        self.display_name.as_deref()
    }
    pub fn attributes(&self) -> &BTreeMap<String, serde_json::Value> {
        &self.attributes
    }
    pub fn consent(&self) -> Consent {
        self.consent
    }
    pub fn routing(&self) -> Option<&Routing> {
        self.routing.as_ref()
    }
    pub fn initial_message(&self) -> Option<&str> {
        self.initial_message.as_deref()
    }
    /// The custom attributes sent to Genesys (Open Messaging `channel.metadata.customAttributes`,
    /// Guest Chat `memberInfo.customFields`): every attribute as a string, plus `routing.queue`,
    /// `routing.skills` (comma-joined), `routing.language`, `routing.priority`,
    /// `consent.data_processing` and `consent.marketing`. Validation guarantees they serialise to at
    /// most [`super::MAX_CUSTOM_ATTRIBUTES_BYTES`].
    pub fn custom_attributes(&self) -> &BTreeMap<String, String> {
        &self.custom_attributes
    }
}

/// Redacts everything personal: only ids of the request and the shape of the rest.
impl std::fmt::Debug for ValidatedRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ValidatedRequest")
            .field("request_id", &self.request_id)
            .field("guest_id", &"<redacted>")
            .field("display_name", &self.display_name.as_ref().map(|_| "<redacted>"))
            .field("attribute_keys", &self.attributes.keys().collect::<Vec<_>>())
            .field("consent", &self.consent)
            .field("routing", &self.routing)
            .field("initial_message", &self.initial_message.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}
