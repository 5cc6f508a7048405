//! Reading and checking JSON request bodies the way the Genesys API does: 415 without a JSON
//! content type, 400 for unparseable JSON or a wrong shape, 413 for oversized custom attributes.

use crate::sim::error_body::ApiError;
use axum::http::{HeaderMap, StatusCode, header};
use serde_json::{Map, Value};

/// Largest serialised size, in bytes, of Open Messaging `customAttributes` and Guest Chat
/// `customFields`.
pub const MAX_CUSTOM_BYTES: usize = 2048;

pub type Object = Map<String, Value>;

/// 415 unless the request says its body is JSON.
pub fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| {
            let mime = mime.trim().to_ascii_lowercase();
            mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
        });
    if is_json {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported.media.type",
            "Unsupported media type - the Content-Type header must be application/json.",
        ))
    }
}

/// The body as a JSON object, or a 400.
pub fn parse_object(body: &[u8]) -> Result<Object, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::bad_request("The request body must be a JSON object.")),
        Err(e) => Err(ApiError::bad_request(format!(
            "Unable to parse the request body as JSON: {e}"
        ))),
    }
}

/// A required object member of `parent`.
pub fn object<'a>(parent: &'a Object, path: &str, name: &str) -> Result<&'a Object, ApiError> {
    match parent.get(name) {
        Some(Value::Object(o)) => Ok(o),
        Some(_) => Err(ApiError::bad_request(format!("{path}{name} must be an object"))),
        None => Err(missing(path, name)),
    }
}

/// An optional object member of `parent`.
pub fn opt_object<'a>(parent: &'a Object, path: &str, name: &str) -> Result<Option<&'a Object>, ApiError> {
    match parent.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(o)) => Ok(Some(o)),
        Some(_) => Err(ApiError::bad_request(format!("{path}{name} must be an object"))),
    }
}

/// A required, non-empty string member of `parent`.
pub fn string<'a>(parent: &'a Object, path: &str, name: &str) -> Result<&'a str, ApiError> {
    match opt_string(parent, path, name)? {
        Some(s) if !s.trim().is_empty() => Ok(s),
        Some(_) => Err(ApiError::bad_request(format!("{path}{name} must not be empty"))),
        None => Err(missing(path, name)),
    }
}

/// An optional string member of `parent`.
pub fn opt_string<'a>(parent: &'a Object, path: &str, name: &str) -> Result<Option<&'a str>, ApiError> {
    match parent.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ApiError::bad_request(format!("{path}{name} must be a string"))),
    }
}

/// An optional map of string to string (custom attributes, custom fields): 400 if a value is not a
/// string, 413 if it serialises to more than [`MAX_CUSTOM_BYTES`].
pub fn custom_map(parent: &Object, path: &str, name: &str) -> Result<(), ApiError> {
    let Some(map) = opt_object(parent, path, name)? else {
        return Ok(());
    };
    if let Some((key, _)) = map.iter().find(|(_, v)| !v.is_string()) {
        return Err(ApiError::bad_request(format!("{path}{name}.{key} must be a string")));
    }
    let size = serde_json::to_vec(map).map(|v| v.len()).unwrap_or(usize::MAX);
    if size > MAX_CUSTOM_BYTES {
        return Err(ApiError::too_large(format!(
            "{path}{name} is {size} bytes; the maximum is {MAX_CUSTOM_BYTES} bytes"
        )));
    }
    Ok(())
}

fn missing(path: &str, name: &str) -> ApiError {
    ApiError::bad_request(format!(
        "{path}{name} is required (should have required property '{name}')"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Object {
        match v {
            Value::Object(o) => o,
            _ => Object::new(),
        }
    }

    #[test]
    fn custom_map_limits() {
        let ok = obj(json!({"m": {"a": "b"}}));
        assert!(custom_map(&ok, "", "m").is_ok());
        let not_string = obj(json!({"m": {"a": 1}}));
        assert_eq!(
            custom_map(&not_string, "", "m").map_err(|e| e.status.as_u16()),
            Err(400)
        );
        let big = obj(json!({"m": {"a": "x".repeat(2100)}}));
        assert_eq!(custom_map(&big, "", "m").map_err(|e| e.status.as_u16()), Err(413));
        assert!(custom_map(&Object::new(), "", "m").is_ok());
    }

    #[test]
    fn content_type() {
        let mut h = HeaderMap::new();
        assert!(require_json(&h).is_err());
        h.insert(
            header::CONTENT_TYPE,
            "application/json; charset=utf-8"
                .parse()
                .unwrap_or(axum::http::HeaderValue::from_static("x")),
        );
        assert!(require_json(&h).is_ok());
        h.insert(header::CONTENT_TYPE, axum::http::HeaderValue::from_static("text/plain"));
        assert!(require_json(&h).is_err());
    }
}
