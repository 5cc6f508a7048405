//! The `session.created` event (DESIGN §4) that CRM consumers receive.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::{
    genesys::CreatedSession,
    request::{Routing, ValidatedRequest},
};

pub const EVENT_TYPE: &str = "session.created";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SessionCreatedEvent {
    pub event_id: String,
    pub event_type: String,
    pub occurred_at: String,
    pub request_id: String,
    pub guest_id: String,
    pub session: SessionRef,
    /// `null` when the request had no routing hints (the key is always present).
    #[serde(default)]
    pub routing: Option<Routing>,
    #[serde(default)]
    pub attributes: BTreeMap<String, serde_json::Value>,
    pub consent: ConsentRecord,
    pub latency_ms: u64,
    pub attempts: u32,
}

/// Where the session lives in Genesys. The Guest Chat JWT is deliberately absent: it is a guest
/// credential and goes only to the requester's `reply_to`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SessionRef {
    pub api: String,
    /// `null` only when Open Messaging accepted the message without returning a conversation id.
    #[serde(default)]
    pub conversation_id: Option<String>,
    /// Open Messaging: the id Genesys gave the inbound message. The key is always there (DESIGN
    /// §4's shape): `null` for Guest Chat, or when Genesys returned no id.
    #[serde(default)]
    pub message_id: Option<String>,
    /// Guest Chat: the guest's member id in the chat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ConsentRecord {
    pub data_processing: bool,
    pub marketing: bool,
    pub recorded_at: String,
}

impl SessionCreatedEvent {
    pub fn new(
        request: &ValidatedRequest,
        session: &CreatedSession,
        received_at: DateTime<Utc>,
        latency_ms: u64,
    ) -> Self {
        let now = Utc::now();
        let consent = request.consent();
        Self {
            event_id: uuid::Uuid::new_v4().to_string(),
            event_type: EVENT_TYPE.to_string(),
            occurred_at: rfc3339(now),
            request_id: request.request_id().to_string(),
            guest_id: request.guest_id().to_string(),
            session: SessionRef {
                api: session.api.as_str().to_string(),
                conversation_id: session.conversation_id.clone(),
                message_id: session.message_id.clone(),
                member_id: session.member_id.clone(),
            },
            routing: request.routing().cloned(),
            attributes: request.attributes().clone(),
            consent: ConsentRecord {
                data_processing: consent.data_processing,
                marketing: consent.marketing,
                recorded_at: rfc3339(received_at),
            },
            latency_ms,
            attempts: session.attempts,
        }
    }
}

pub fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}
