//! A JSON tree that refuses duplicate object keys.
//!
//! `serde_json::Value` silently keeps the last of two equal keys, which would let
//! `{"consent": {"data_processing": false, "data_processing": true}}` mean whatever a reader's parser
//! happens to pick. [`Json`] is the same tree, built in one pass by `serde_json`'s parser (so its
//! recursion limit, UTF-8 checks and number range checks apply), except that a repeated key at any
//! depth is a parse error. Strings are owned so that validation can move them into the
//! [`super::ValidatedRequest`] without copying.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// One JSON value. Objects are sorted maps without duplicate keys.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Json {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(String),
    Array(Vec<Json>),
    Object(BTreeMap<String, Json>),
}

impl Json {
    /// The JSON type with its article, for rejection details ("must be a string, not an array").
    pub(super) fn describe(&self) -> &'static str {
        match self {
            Json::Null => "null",
            Json::Bool(_) => "a boolean",
            Json::Number(_) => "a number",
            Json::String(_) => "a string",
            Json::Array(_) => "an array",
            Json::Object(_) => "an object",
        }
    }

    pub(super) fn as_str(&self) -> Option<&str> {
        match self {
            Json::String(s) => Some(s),
            _ => None,
        }
    }
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Json, E> {
        Ok(Json::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Json, E> {
        Ok(Json::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Json, E> {
        Ok(Json::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Json, E> {
        // serde_json never yields a non-finite float (it reports "number out of range" itself),
        // but refuse one rather than trust that.
        serde_json::Number::from_f64(v)
            .map(Json::Number)
            .ok_or_else(|| E::custom("number out of range"))
    }

    fn visit_str<E>(self, v: &str) -> Result<Json, E> {
        Ok(Json::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Json, E> {
        Ok(Json::String(v))
    }

    fn visit_unit<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }

    fn visit_none<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Json, D::Error> {
        Json::deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let mut entries = BTreeMap::new();
        while let Some(key) = map.next_key::<String>()? {
            match entries.entry(key) {
                // The key is not quoted: it may sit inside an attribute value. serde_json appends
                // the line and column, which is enough for an operator to find it.
                Entry::Occupied(_) => return Err(de::Error::custom("duplicate key in a JSON object")),
                Entry::Vacant(slot) => {
                    slot.insert(map.next_value()?);
                }
            }
        }
        Ok(Json::Object(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Json, serde_json::Error> {
        serde_json::from_str(s)
    }

    #[test]
    fn parses_every_json_type() {
        let json = parse(r#"{"a":[null,true,-1,2,1.5,"s",{}]}"#).unwrap();
        let Json::Object(top) = json else {
            panic!("not an object")
        };
        let Json::Array(items) = &top["a"] else {
            panic!("not an array")
        };
        let kinds: Vec<_> = items.iter().map(Json::describe).collect();
        assert_eq!(
            kinds,
            [
                "null",
                "a boolean",
                "a number",
                "a number",
                "a number",
                "a string",
                "an object"
            ]
        );
    }

    #[test]
    fn duplicate_keys_are_an_error_at_any_depth() {
        for body in [
            r#"{"a":1,"a":2}"#,
            r#"{"x":{"a":1,"a":1}}"#,
            r#"[[{"b":{"a":1,"a":1}}]]"#,
            r#"{"\u0061":1,"a":2}"#,
        ] {
            let err = parse(body).unwrap_err();
            assert!(
                err.to_string().starts_with("duplicate key in a JSON object at line 1"),
                "{body}: {err}"
            );
        }
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let body = "[".repeat(100_000);
        let err = parse(&body).unwrap_err();
        assert!(err.to_string().contains("recursion limit"), "{err}");
    }
}
