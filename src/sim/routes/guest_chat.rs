//! `POST /api/v2/webchat/guest/conversations` — Guest Chat (web chat v2) "Create an ACD chat
//! conversation from an external customer" (body `CreateWebChatConversationRequest`, answer
//! `CreateWebChatConversationResponse`). No OAuth: the quota key is the body's `deploymentId`.
//!
//! After the gate (see the [`crate::sim`] precedence; storm, quota, faults), checks in order: body not declared
//! JSON → 415; unparseable or not an object → 400; wrong shape → 400 (`organizationId`,
//! `deploymentId`, `routingTarget {targetType: "QUEUE", targetAddress}` and `memberInfo.displayName`
//! are required; `skills` a string list, `language` a string, `priority` an integer); unknown
//! `deploymentId` → 404; `organizationId` not the deployment's → 400; `memberInfo.customFields` not
//! a string map → 400, over 2048 bytes serialised → 413.
//!
//! Success: 200 `{id, jwt, eventStreamUri, member: {id}}`. The `jwt` is a JWT-shaped guest
//! credential (unsigned by any real key) and `eventStreamUri` a `wss://` address on the reserved
//! `.invalid` domain: the simulator has no event stream.

use super::body::{self, Object};
use crate::sim::error_body::ApiError;
use crate::sim::gate;
use crate::sim::state::SimState;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use std::sync::Arc;
use uuid::Uuid;

pub async fn post_conversation(State(state): State<Arc<SimState>>, headers: HeaderMap, body: Bytes) -> Response {
    let deployment = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("deploymentId").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_default();
    let caller = Ok(format!("deployment:{deployment}"));
    gate::api_call(&state, caller, || match create(&state, &headers, &body) {
        Ok(response) => response,
        Err(e) => e.into_response(),
    })
    .await
}

fn create(state: &SimState, headers: &HeaderMap, raw: &[u8]) -> Result<Response, ApiError> {
    body::require_json(headers)?;
    let request = body::parse_object(raw)?;
    let organization_id = body::string(&request, "", "organizationId")?;
    let deployment_id = body::string(&request, "", "deploymentId")?;
    validate_routing_target(body::object(&request, "", "routingTarget")?)?;
    let member_info = body::object(&request, "", "memberInfo")?;
    body::string(member_info, "memberInfo.", "displayName")?;
    for optional in ["firstName", "lastName", "email", "phoneNumber", "avatarImageUrl"] {
        body::opt_string(member_info, "memberInfo.", optional)?;
    }
    body::opt_string(&request, "", "memberAuthToken")?;

    if deployment_id != state.config.deployment_id {
        return Err(ApiError::not_found(format!(
            "Web chat deployment {deployment_id} not found"
        )));
    }
    if organization_id != state.config.organization_id {
        return Err(ApiError::bad_request(format!(
            "Organization {organization_id} does not own deployment {deployment_id}"
        )));
    }
    body::custom_map(member_info, "memberInfo.", "customFields")?;

    let conversation_id = Uuid::new_v4().to_string();
    let member_id = Uuid::new_v4().to_string();
    state.counters.session_created();
    let answer = json!({
        "id": conversation_id,
        "jwt": guest_jwt(&conversation_id, &member_id, &state.config.organization_id),
        "eventStreamUri": format!(
            "wss://streaming.genesys-sim.invalid/v2/webchat/guest/conversations/{conversation_id}/events"
        ),
        "member": { "id": member_id },
    });
    Ok((StatusCode::OK, axum::Json(answer)).into_response())
}

fn validate_routing_target(target: &Object) -> Result<(), ApiError> {
    let target_type = body::string(target, "routingTarget.", "targetType")?;
    if target_type != "QUEUE" {
        return Err(ApiError::bad_request(format!(
            "routingTarget.targetType must be QUEUE; got '{target_type}'"
        )));
    }
    body::string(target, "routingTarget.", "targetAddress")?;
    match target.get("skills") {
        None | Some(Value::Null) => {}
        Some(Value::Array(skills)) if skills.iter().all(Value::is_string) => {}
        Some(_) => {
            return Err(ApiError::bad_request("routingTarget.skills must be a list of strings"));
        }
    }
    body::opt_string(target, "routingTarget.", "language")?;
    match target.get("priority") {
        None | Some(Value::Null) => Ok(()),
        Some(p) if p.is_i64() || p.is_u64() => Ok(()),
        Some(_) => Err(ApiError::bad_request("routingTarget.priority must be an integer")),
    }
}

/// A JWT-shaped guest credential: real header and claims, random signature.
fn guest_jwt(conversation_id: &str, member_id: &str, organization_id: &str) -> String {
    let now = chrono::Utc::now().timestamp();
    let header = json!({ "alg": "HS256", "typ": "JWT" });
    let claims = json!({
        "iss": "genesys-sim",
        "sub": member_id,
        "org": organization_id,
        "conversationId": conversation_id,
        "iat": now,
        "exp": now + 86_400,
    });
    let part = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
    let signature = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
    format!("{}.{}.{}", part(&header), part(&claims), signature)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_target_rules() {
        let check = |v: Value| match v {
            Value::Object(o) => validate_routing_target(&o).map_err(|e| e.status.as_u16()),
            _ => Err(0),
        };
        assert!(check(json!({"targetType": "QUEUE", "targetAddress": "Web Support"})).is_ok());
        assert!(
            check(
                json!({"targetType": "QUEUE", "targetAddress": "q", "skills": ["a"], "language": "en", "priority": 1})
            )
            .is_ok()
        );
        assert_eq!(check(json!({"targetType": "USER", "targetAddress": "q"})), Err(400));
        assert_eq!(check(json!({"targetType": "QUEUE"})), Err(400));
        assert_eq!(
            check(json!({"targetType": "QUEUE", "targetAddress": "q", "skills": [1]})),
            Err(400)
        );
        assert_eq!(
            check(json!({"targetType": "QUEUE", "targetAddress": "q", "priority": "high"})),
            Err(400)
        );
    }

    #[test]
    fn jwt_has_three_parts() {
        assert_eq!(guest_jwt("c", "m", "o").split('.').count(), 3);
    }
}
