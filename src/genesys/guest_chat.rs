//! Guest Chat, web chat v2 (DESIGN §3.2; deprecated by Genesys but still used):
//! `POST /api/v2/webchat/guest/conversations`, no OAuth. The response's `jwt` is a guest
//! credential: it goes only to the request's `reply_to`, never to CRM or logs.

use std::collections::BTreeMap;

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use crate::request::ValidatedRequest;

/// Display name sent when the request has none.
pub const DEFAULT_DISPLAY_NAME: &str = "Guest";

/// The create-conversation URL under `api_base_url`.
pub(crate) fn url(api_base_url: &str) -> Result<reqwest::Url, String> {
    let mut url = reqwest::Url::parse(api_base_url).map_err(|e| e.to_string())?;
    url.path_segments_mut()
        .map_err(|()| "base URL cannot take a path".to_string())?
        .pop_if_empty()
        .extend(["api", "v2", "webchat", "guest", "conversations"]);
    Ok(url)
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CreateConversation<'a> {
    organization_id: &'a str,
    deployment_id: &'a str,
    routing_target: RoutingTarget<'a>,
    member_info: MemberInfo<'a>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct RoutingTarget<'a> {
    target_type: &'static str,
    target_address: &'a str,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    skills: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    language: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    priority: Option<u8>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct MemberInfo<'a> {
    display_name: &'a str,
    custom_fields: &'a BTreeMap<String, String>,
}

/// The body for `request`: its routing hints, the default queue when it names none.
pub(crate) fn body<'a>(
    request: &'a ValidatedRequest,
    organization_id: &'a str,
    deployment_id: &'a str,
    default_queue: &'a str,
) -> CreateConversation<'a> {
    let routing = request.routing();
    CreateConversation {
        organization_id,
        deployment_id,
        routing_target: RoutingTarget {
            target_type: "QUEUE",
            target_address: routing.and_then(|r| r.queue.as_deref()).unwrap_or(default_queue),
            skills: routing.map(|r| r.skills.as_slice()).unwrap_or_default(),
            language: routing.and_then(|r| r.language.as_deref()),
            priority: routing.and_then(|r| r.priority),
        },
        member_info: MemberInfo {
            display_name: request.display_name().unwrap_or(DEFAULT_DISPLAY_NAME),
            custom_fields: request.custom_attributes(),
        },
    }
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Response {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    jwt: Option<String>,
    #[serde(default)]
    event_stream_uri: Option<String>,
    #[serde(default)]
    member: Option<Member>,
}

#[derive(Default, Deserialize)]
struct Member {
    #[serde(default)]
    id: Option<String>,
}

/// What a 2xx told us. `Debug` is derived: the jwt is a [`SecretString`].
#[derive(Debug, Clone)]
pub(crate) struct Created {
    pub conversation_id: String,
    pub jwt: SecretString,
    pub event_stream_uri: Option<String>,
    pub member_id: Option<String>,
}

/// Reads a 2xx body; `id` and `jwt` are required (without them the guest cannot join).
/// The created chat, or what is missing from the answer (no PII: ids only).
pub(crate) fn parse_response(body: &[u8]) -> Result<Created, String> {
    let response: Response =
        serde_json::from_slice(body).map_err(|_| "its body is not the expected JSON".to_string())?;
    let conversation_id = response
        .id
        .filter(|id| !id.is_empty())
        .ok_or_else(|| "its body has no conversation id".to_string())?;
    // The chat exists but no guest can join it without the jwt; it is never routed to an agent
    // until a guest connects, and its id lets support find it.
    let jwt = response.jwt.filter(|jwt| !jwt.is_empty()).ok_or_else(|| {
        format!("its body has no jwt: conversation {conversation_id} was opened and cannot be joined")
    })?;
    Ok(Created {
        conversation_id,
        jwt: SecretString::from(jwt),
        event_stream_uri: response.event_stream_uri.filter(|u| !u.is_empty()),
        member_id: response.member.and_then(|m| m.id).filter(|id| !id.is_empty()),
    })
}
