//! The Genesys Cloud error body, sent with every error from the API host.
//!
//! Shape (platform API `ErrorBody`): `{message, code, status, messageParams, contextId, details[], errors[]}`.
//! `contextId` is also sent as the `inin-correlation-id` header, as Genesys does, so a client can log it.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use uuid::Uuid;

/// Response header carrying the request's correlation id.
pub const CORRELATION_HEADER: &str = "inin-correlation-id";

/// A Genesys error body.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    pub message: String,
    pub code: String,
    pub status: u16,
    pub message_params: BTreeMap<String, String>,
    pub context_id: String,
    pub details: Vec<serde_json::Value>,
    pub errors: Vec<serde_json::Value>,
}

/// An error answer of the API host: status, Genesys error code and human message.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    /// A generic error for `status`, with the code and message Genesys uses for it.
    pub fn for_status(status: StatusCode) -> Self {
        let (code, message) = default_code_and_message(status);
        Self::new(status, code, message)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad.request", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not.found", message)
    }

    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "request.entity.too.large", message)
    }

    pub fn body(&self, context_id: &str) -> ErrorBody {
        ErrorBody {
            message: self.message.clone(),
            code: self.code.to_owned(),
            status: self.status.as_u16(),
            message_params: BTreeMap::new(),
            context_id: context_id.to_owned(),
            details: Vec::new(),
            errors: Vec::new(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let context_id = Uuid::new_v4().to_string();
        let body = self.body(&context_id);
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Ok(value) = HeaderValue::from_str(&context_id) {
            response.headers_mut().insert(CORRELATION_HEADER, value);
        }
        response
    }
}

/// Genesys-style code and message for a status the simulator may answer with.
pub fn default_code_and_message(status: StatusCode) -> (&'static str, &'static str) {
    match status.as_u16() {
        400 => (
            "bad.request",
            "The request could not be understood by the server due to malformed syntax.",
        ),
        401 => ("bad.credentials", "Invalid login credentials."),
        403 => (
            "missing.permissions",
            "You are not authorized to perform the requested action.",
        ),
        404 => ("not.found", "The requested resource was not found."),
        405 => (
            "method.not.allowed",
            "The requested method is not allowed on this resource.",
        ),
        409 => (
            "conflict",
            "The request could not be completed due to a conflict with the current state of the resource.",
        ),
        413 => ("request.entity.too.large", "The request entity is too large."),
        415 => (
            "unsupported.media.type",
            "Unsupported media type - Unsupported or incorrect media type, such as an incorrect Content-Type value in the header.",
        ),
        422 => (
            "invalid.value",
            "The request was well-formed but could not be processed.",
        ),
        429 => ("too.many.requests", "Rate limit exceeded the maximum."),
        500 => (
            "internal.server.error",
            "The server encountered an unexpected condition which prevented it from fulfilling the request.",
        ),
        501 => (
            "not.implemented",
            "The server does not support the functionality required to fulfill the request.",
        ),
        502 => (
            "bad.gateway",
            "The server, while acting as a gateway or proxy, received an invalid response from the upstream server.",
        ),
        503 => (
            "service.unavailable",
            "Service Unavailable - The server is currently unavailable (because it is overloaded or down for maintenance).",
        ),
        504 => ("gateway.timeout", "The request timed out."),
        s if s >= 500 => ("server.error", "The server failed to complete the request."),
        _ => ("bad.request", "The request could not be completed."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialises_with_genesys_field_names() {
        let body = ApiError::bad_request("nope").body("ctx");
        let json = serde_json::to_value(&body).unwrap_or_default();
        assert_eq!(json["messageParams"], serde_json::json!({}));
        assert_eq!(json["contextId"], "ctx");
        assert_eq!(json["status"], 400);
        assert_eq!(json["code"], "bad.request");
        assert_eq!(json["details"], serde_json::json!([]));
        assert_eq!(json["errors"], serde_json::json!([]));
    }
}
