//! The answer sent to a requester that set `reply_to` (DESIGN §1). Unlike the CRM event it may
//! carry the Guest Chat JWT: the requester is the guest's own web app.

use lapin::{BasicProperties, types::ShortString};
use secrecy::ExposeSecret;
use serde::Serialize;

use crate::{amqp::Outgoing, genesys::CreatedSession};

#[derive(Serialize)]
pub struct Reply<'a> {
    pub request_id: Option<&'a str>,
    /// `created`, `rejected` or `failed`.
    pub outcome: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<ReplySession<'a>>,
}

#[derive(Serialize)]
pub struct ReplySession<'a> {
    pub api: &'a str,
    pub conversation_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub member_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_stream_uri: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt: Option<&'a str>,
}

impl<'a> ReplySession<'a> {
    pub fn from_created(session: &'a CreatedSession) -> Self {
        Self {
            api: session.api.as_str(),
            conversation_id: session.conversation_id.as_deref(),
            message_id: session.message_id.as_deref(),
            member_id: session.member_id.as_deref(),
            event_stream_uri: session.event_stream_uri.as_deref(),
            jwt: session.guest_jwt.as_ref().map(|jwt| jwt.expose_secret()),
        }
    }
}

/// The reply message, sent through the default exchange straight to the `reply_to` queue.
pub fn reply_message(
    reply_to: &ShortString,
    correlation_id: Option<ShortString>,
    reply: &Reply<'_>,
    headers: lapin::types::FieldTable,
) -> Outgoing {
    let mut properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_headers(headers);
    if let Some(correlation_id) = correlation_id {
        properties = properties.with_correlation_id(correlation_id);
    }
    Outgoing {
        exchange: String::new(),
        routing_key: reply_to.as_str().to_string(),
        // Serialising a struct of strings and options cannot fail.
        payload: serde_json::to_vec(reply).unwrap_or_default(),
        properties,
        mandatory: false,
    }
}
