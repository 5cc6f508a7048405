//! `POST /api/v2/conversations/messages/{integrationId}/inbound/open/message` — Open Messaging
//! "Send inbound Open Message" (body `OpenInboundNormalizedMessage`, answer
//! `OpenMessageNormalizedMessage`).
//!
//! After the gate (see the [`crate::sim`] precedence; bearer token, storm, quota, faults), checks in order:
//! unknown integration → 404; `prefetchConversationId` not `true`/`false` → 400; body not declared
//! JSON → 415; unparseable or not an object → 400; wrong shape → 400 (`channel`, `channel.from`,
//! `channel.from.id`, `channel.from.idType` ∈ Email/Phone/Opaque, `channel.time` as ISO-8601 are
//! required, `text` or `content` too); `channel.metadata.customAttributes` not a string map → 400,
//! more than 2048 bytes serialised → 413.
//!
//! Success: **202 Accepted** with the normalized message: a new `id`, the request's `channel` plus
//! `id`/`platform`/`type`/`to` filled in by the platform, `type: "Text"`, `text`,
//! `direction: "Inbound"`, and `conversationId` when `prefetchConversationId=true`. (The SDKs only
//! name the answer "successful operation"; Genesys accepts the message for asynchronous routing,
//! and clients should treat any 2xx as success.) A `channel.messageId` already received on this
//! integration gets the same `id` and `conversationId` again and counts as a duplicate.
//!
//! Known simplification: Genesys threads messages from the same `channel.from.id` into the guest's
//! open conversation; here every new `messageId` starts a new conversation.

use super::body::{self, Object};
use crate::sim::error_body::ApiError;
use crate::sim::gate;
use crate::sim::state::SimState;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Serialize, ser::SerializeMap};
use serde_json::Value;
use std::sync::Arc;

const ID_TYPES: [&str; 3] = ["Email", "Phone", "Opaque"];

pub async fn post_inbound_message(
    State(state): State<Arc<SimState>>,
    Path(integration_id): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let caller = gate::authorize(&state, &headers).map(|client_id| format!("client:{client_id}"));
    gate::api_call(&state, caller, || {
        match receive(&state, &integration_id, query.as_deref(), &headers, &body) {
            Ok(response) => response,
            Err(e) => e.into_response(),
        }
    })
    .await
}

fn receive(
    state: &SimState,
    integration_id: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    raw: &[u8],
) -> Result<Response, ApiError> {
    if integration_id != state.config.integration_id {
        return Err(ApiError::not_found(format!(
            "Open messaging integration {integration_id} not found"
        )));
    }
    let prefetch = prefetch_conversation_id(query)?;
    body::require_json(headers)?;
    let message = body::parse_object(raw)?;
    let channel = validate(&message)?;
    let message_id = channel.get("messageId").and_then(Value::as_str);

    let (stored, duplicate) = state.messages.record(integration_id, message_id);
    if duplicate {
        state.counters.duplicate();
    } else {
        state.counters.session_created();
    }

    // Serialised straight from the request's own values: no copy of the message is built.
    let answer = Answer {
        id: &stored.id,
        channel: AnswerChannel {
            received: channel,
            integration_id,
        },
        kind: "Text",
        text: message.get("text"),
        content: message.get("content"),
        metadata: message.get("metadata"),
        direction: "Inbound",
        conversation_id: prefetch.then_some(stored.conversation_id.as_str()),
    };
    Ok((StatusCode::ACCEPTED, axum::Json(answer)).into_response())
}

/// The `OpenMessageNormalizedMessage` answered for an accepted message.
#[derive(Serialize)]
struct Answer<'a> {
    id: &'a str,
    channel: AnswerChannel<'a>,
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<&'a Value>,
    direction: &'static str,
    #[serde(rename = "conversationId", skip_serializing_if = "Option::is_none")]
    conversation_id: Option<&'a str>,
}

/// The request's `channel` with what the platform fills in: `id`, `platform`, `type`, `to`.
struct AnswerChannel<'a> {
    received: &'a Object,
    integration_id: &'a str,
}

impl Serialize for AnswerChannel<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        const FILLED: [&str; 4] = ["id", "platform", "type", "to"];
        let mut map = serializer.serialize_map(None)?;
        for (key, value) in self.received.iter().filter(|(k, _)| !FILLED.contains(&k.as_str())) {
            map.serialize_entry(key, value)?;
        }
        map.serialize_entry("id", self.integration_id)?;
        map.serialize_entry("platform", "Open")?;
        map.serialize_entry("type", "Private")?;
        map.serialize_entry(
            "to",
            &To {
                id: self.integration_id,
            },
        )?;
        map.end()
    }
}

#[derive(Serialize)]
struct To<'a> {
    id: &'a str,
}

/// The `prefetchConversationId` query parameter (absent = false).
fn prefetch_conversation_id(query: Option<&str>) -> Result<bool, ApiError> {
    let value = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .find(|(k, _)| *k == "prefetchConversationId")
        .map(|(_, v)| v);
    match value {
        None => Ok(false),
        Some(v) if v.eq_ignore_ascii_case("true") => Ok(true),
        Some(v) if v.eq_ignore_ascii_case("false") => Ok(false),
        Some(v) => Err(ApiError::bad_request(format!(
            "prefetchConversationId must be true or false, got '{v}'"
        ))),
    }
}

/// Checks an `OpenInboundNormalizedMessage`; returns its `channel`.
fn validate(message: &Object) -> Result<&Object, ApiError> {
    let channel = body::object(message, "", "channel")?;
    let from = body::object(channel, "channel.", "from")?;
    body::string(from, "channel.from.", "id")?;
    let id_type = body::string(from, "channel.from.", "idType")?;
    if !ID_TYPES.iter().any(|t| t.eq_ignore_ascii_case(id_type)) {
        return Err(ApiError::bad_request(format!(
            "channel.from.idType must be one of Email, Phone, Opaque; got '{id_type}'"
        )));
    }
    for optional in ["nickname", "firstName", "lastName", "image", "email"] {
        body::opt_string(from, "channel.from.", optional)?;
    }
    let time = body::string(channel, "channel.", "time")?;
    if chrono::DateTime::parse_from_rfc3339(time).is_err() {
        return Err(ApiError::bad_request(format!(
            "channel.time must be an ISO-8601 date-time such as 2026-01-31T12:00:00.000Z; got '{time}'"
        )));
    }
    if body::opt_string(channel, "channel.", "messageId")?.is_some() {
        body::string(channel, "channel.", "messageId")?;
    }
    if let Some(metadata) = body::opt_object(channel, "channel.", "metadata")? {
        body::custom_map(metadata, "channel.metadata.", "customAttributes")?;
    }
    let has_text = body::opt_string(message, "", "text")?.is_some();
    let has_content = message
        .get("content")
        .and_then(Value::as_array)
        .is_some_and(|c| !c.is_empty());
    if !has_text && !has_content {
        return Err(ApiError::bad_request(
            "should have required property 'content', should have required property 'text'",
        ));
    }
    Ok(channel)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn prefetch_parsing() {
        assert_eq!(prefetch_conversation_id(None).ok(), Some(false));
        assert_eq!(
            prefetch_conversation_id(Some("prefetchConversationId=true")).ok(),
            Some(true)
        );
        assert_eq!(
            prefetch_conversation_id(Some("a=b&prefetchConversationId=FALSE")).ok(),
            Some(false)
        );
        assert!(prefetch_conversation_id(Some("prefetchConversationId=yes")).is_err());
    }

    #[test]
    fn shape_errors_are_400() {
        let cases = [
            json!({"text": "hi"}),
            json!({"channel": {"time": "2026-01-01T00:00:00Z"}, "text": "hi"}),
            json!({"channel": {"from": {"idType": "Opaque"}, "time": "2026-01-01T00:00:00Z"}, "text": "hi"}),
            json!({"channel": {"from": {"id": "g"}, "time": "2026-01-01T00:00:00Z"}, "text": "hi"}),
            json!({"channel": {"from": {"id": "g", "idType": "Fax"}, "time": "2026-01-01T00:00:00Z"}, "text": "hi"}),
            json!({"channel": {"from": {"id": "g", "idType": "Opaque"}}, "text": "hi"}),
            json!({"channel": {"from": {"id": "g", "idType": "Opaque"}, "time": "yesterday"}, "text": "hi"}),
            json!({"channel": {"from": {"id": "g", "idType": "Opaque"}, "time": "2026-01-01T00:00:00Z"}}),
        ];
        for case in cases {
            let Value::Object(o) = case.clone() else { continue };
            assert_eq!(validate(&o).err().map(|e| e.status.as_u16()), Some(400), "{case}");
        }
        let Value::Object(ok) = json!({"channel": {"from": {"id": "g", "idType": "Opaque"},
            "time": "2026-01-01T00:00:00.123Z", "messageId": "m"}, "text": "hi"})
        else {
            return;
        };
        assert!(validate(&ok).is_ok());
    }
}
