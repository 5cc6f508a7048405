//! Open Messaging (DESIGN §3.1): an inbound open message creates (or continues) the guest's
//! conversation.
//!
//! `POST /api/v2/conversations/messages/{integrationId}/inbound/open/message?prefetchConversationId=true`
//! with a bearer token. `channel.messageId` is the request id, so Genesys (and the simulator) can
//! recognise a retried request.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::request::ValidatedRequest;

/// The inbound-message URL under `api_base_url` (which may carry a path prefix, e.g. a proxy).
pub(crate) fn url(api_base_url: &str, integration_id: &str) -> Result<reqwest::Url, String> {
    let mut url = reqwest::Url::parse(api_base_url).map_err(|e| e.to_string())?;
    url.path_segments_mut()
        .map_err(|()| "base URL cannot take a path".to_string())?
        .pop_if_empty()
        .extend([
            "api",
            "v2",
            "conversations",
            "messages",
            integration_id,
            "inbound",
            "open",
            "message",
        ]);
    url.query_pairs_mut().append_pair("prefetchConversationId", "true");
    Ok(url)
}

#[derive(Debug, Serialize)]
pub(crate) struct InboundMessage<'a> {
    channel: Channel<'a>,
    text: &'a str,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Channel<'a> {
    message_id: &'a str,
    time: String,
    from: From<'a>,
    metadata: Metadata<'a>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct From<'a> {
    id: &'a str,
    id_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    nickname: Option<&'a str>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Metadata<'a> {
    custom_attributes: &'a BTreeMap<String, String>,
}

/// The body for `request`; `default_text` when the request has no `initial_message`.
pub(crate) fn body<'a>(request: &'a ValidatedRequest, default_text: &'a str, now: DateTime<Utc>) -> InboundMessage<'a> {
    InboundMessage {
        channel: Channel {
            message_id: request.request_id(),
            time: now.to_rfc3339_opts(SecondsFormat::Millis, true),
            from: From {
                id: request.guest_id(),
                id_type: "Opaque",
                nickname: request.display_name(),
            },
            metadata: Metadata {
                custom_attributes: request.custom_attributes(),
            },
        },
        text: request.initial_message().unwrap_or(default_text),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Response {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    conversation_id: Option<String>,
}

/// What a 2xx told us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Created {
    pub message_id: Option<String>,
    pub conversation_id: Option<String>,
}

/// Reads a 2xx body. Genesys has accepted the message whatever the body says: the API reference
/// marks `conversationId` optional (`prefetchConversationId` only asks for it), and nothing
/// documents that a re-sent message with the same `channel.messageId` is dropped, so a body
/// without it (or without JSON at all) is still a created session, never a reason to POST again.
pub(crate) fn parse_response(body: &[u8]) -> Created {
    let response: Response = serde_json::from_slice(body).unwrap_or_default();
    Created {
        message_id: response.id.filter(|id| !id.is_empty()),
        conversation_id: response.conversation_id.filter(|id| !id.is_empty()),
    }
}
