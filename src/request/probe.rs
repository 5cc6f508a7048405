//! Best-effort context for a body the strict parser refused.
//!
//! A body with a duplicate key somewhere in its attributes, or with a syntax error after its ids,
//! is `malformed`, but the dead letter and the audit record are far more useful when they still
//! name the request. This lenient pass reads only the top-level `request_id`, `guest_id` and
//! `consent`, skips everything else without building it, and keeps whatever it recorded before a
//! syntax error stopped it. An id or consent object that appears twice is ambiguous and is dropped.
//! The caller still applies the well-formedness rules to what comes back.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::Consent;

/// What the probe could read. Each field is `None` when absent, ambiguous or of the wrong shape.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Probed {
    pub(super) request_id: Option<String>,
    pub(super) guest_id: Option<String>,
    pub(super) consent: Option<Consent>,
}

pub(super) fn probe(body: &[u8]) -> Probed {
    let mut state = State::default();
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    // An error only ends the pass; what was recorded before it stays in `state`.
    let _ = TopLevel(&mut state).deserialize(&mut deserializer);
    Probed {
        request_id: state.request_id.into_value().and_then(Scalar::into_string),
        guest_id: state.guest_id.into_value().and_then(Scalar::into_string),
        consent: state.consent.into_value().flatten(),
    }
}

/// A field seen zero times, once, or more than once.
#[derive(Default)]
enum Slot<T> {
    #[default]
    Unseen,
    Seen(T),
    Repeated,
}

impl<T> Slot<T> {
    fn record(&mut self, value: T) {
        *self = match self {
            Slot::Unseen => Slot::Seen(value),
            Slot::Seen(_) | Slot::Repeated => Slot::Repeated,
        };
    }

    fn into_value(self) -> Option<T> {
        match self {
            Slot::Seen(value) => Some(value),
            Slot::Unseen | Slot::Repeated => None,
        }
    }

    fn is_unseen(&self) -> bool {
        matches!(self, Slot::Unseen)
    }
}

#[derive(Default)]
struct State {
    request_id: Slot<Scalar>,
    guest_id: Slot<Scalar>,
    consent: Slot<Option<Consent>>,
}

/// The top-level object; only a JSON object is read (an array is not taken field by field).
struct TopLevel<'s>(&'s mut State);

impl<'de> DeserializeSeed<'de> for TopLevel<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for TopLevel<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "request_id" => self.0.request_id.record(map.next_value()?),
                "guest_id" => self.0.guest_id.record(map.next_value()?),
                "consent" => self.0.consent.record(map.next_value::<ConsentProbe>()?.0),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// A value reduced to what the probe cares about; arrays and objects are skipped, not built.
#[derive(Debug, PartialEq)]
enum Scalar {
    String(String),
    Bool(bool),
    Null,
    Other,
}

impl Scalar {
    fn into_string(self) -> Option<String> {
        match self {
            Scalar::String(s) => Some(s),
            _ => None,
        }
    }
}

impl<'de> de::Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ScalarVisitor)
    }
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Scalar, E> {
        Ok(Scalar::Bool(v))
    }
    fn visit_i64<E>(self, _: i64) -> Result<Scalar, E> {
        Ok(Scalar::Other)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Scalar, E> {
        Ok(Scalar::Other)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Scalar, E> {
        Ok(Scalar::Other)
    }
    fn visit_str<E>(self, v: &str) -> Result<Scalar, E> {
        Ok(Scalar::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Scalar, E> {
        Ok(Scalar::String(v))
    }
    fn visit_unit<E>(self) -> Result<Scalar, E> {
        Ok(Scalar::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Scalar, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Scalar::Other)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Scalar, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Scalar::Other)
    }
}

/// The `consent` value: `Some` only for the well-formed shape `{data_processing: bool,
/// marketing?: bool | null}` with no other and no repeated keys (the same rule as the strict path).
struct ConsentProbe(Option<Consent>);

impl<'de> de::Deserialize<'de> for ConsentProbe {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ConsentVisitor)
    }
}

struct ConsentVisitor;

impl<'de> Visitor<'de> for ConsentVisitor {
    type Value = ConsentProbe;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<ConsentProbe, E> {
        Ok(ConsentProbe(None))
    }
    fn visit_i64<E>(self, _: i64) -> Result<ConsentProbe, E> {
        Ok(ConsentProbe(None))
    }
    fn visit_u64<E>(self, _: u64) -> Result<ConsentProbe, E> {
        Ok(ConsentProbe(None))
    }
    fn visit_f64<E>(self, _: f64) -> Result<ConsentProbe, E> {
        Ok(ConsentProbe(None))
    }
    fn visit_str<E>(self, _: &str) -> Result<ConsentProbe, E> {
        Ok(ConsentProbe(None))
    }
    fn visit_unit<E>(self) -> Result<ConsentProbe, E> {
        Ok(ConsentProbe(None))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<ConsentProbe, A::Error> {
        ScalarVisitor.visit_seq(seq).map(|_| ConsentProbe(None))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ConsentProbe, A::Error> {
        let mut data_processing = Slot::Unseen;
        let mut marketing = Slot::Unseen;
        let mut unknown = false;
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "data_processing" => data_processing.record(map.next_value::<Scalar>()?),
                "marketing" => marketing.record(map.next_value::<Scalar>()?),
                _ => {
                    unknown = true;
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let marketing_unseen = marketing.is_unseen();
        let consent = match (unknown, data_processing.into_value(), marketing.into_value()) {
            (false, Some(Scalar::Bool(data_processing)), marketing) => match marketing {
                Some(Scalar::Bool(marketing)) => Some(Consent {
                    data_processing,
                    marketing,
                }),
                Some(Scalar::Null) => Some(Consent {
                    data_processing,
                    marketing: false,
                }),
                None if marketing_unseen => Some(Consent {
                    data_processing,
                    marketing: false,
                }),
                _ => None,
            },
            _ => None,
        };
        Ok(ConsentProbe(consent))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(body: &str) -> (Option<String>, Option<String>) {
        let p = probe(body.as_bytes());
        (p.request_id, p.guest_id)
    }

    #[test]
    fn reads_ids_despite_nested_duplicates_and_later_syntax_errors() {
        let some = |s: &str| Some(s.to_owned());
        assert_eq!(
            ids(r#"{"request_id":"r","attributes":{"a":1,"a":2},"guest_id":"g"}"#),
            (some("r"), some("g"))
        );
        assert_eq!(
            ids(r#"{"request_id":"r","guest_id":"g","x":[[[}"#),
            (some("r"), some("g"))
        );
        assert_eq!(ids(r#"{"request_id":"r","guest_id":"#), (some("r"), None));
    }

    #[test]
    fn repeated_or_non_string_ids_are_dropped() {
        assert_eq!(
            ids(r#"{"request_id":"r","request_id":"s","guest_id":{"a":1}}"#),
            (None, None)
        );
        assert_eq!(ids(r#"["request_id","guest_id"]"#), (None, None));
        assert_eq!(ids("\u{0}"), (None, None));
    }

    #[test]
    fn consent_only_when_well_formed() {
        let consent = |body: &str| probe(body.as_bytes()).consent;
        let c = |data_processing, marketing| {
            Some(Consent {
                data_processing,
                marketing,
            })
        };
        assert_eq!(
            consent(r#"{"consent":{"data_processing":true},"x":{"a":1,"a":1}}"#),
            c(true, false)
        );
        assert_eq!(
            consent(r#"{"consent":{"data_processing":false,"marketing":true}"#),
            c(false, true)
        );
        assert_eq!(
            consent(r#"{"consent":{"data_processing":true,"marketing":null}}"#),
            c(true, false)
        );
        assert_eq!(consent(r#"{"consent":{"data_processing":true,"marketing":1}}"#), None);
        assert_eq!(consent(r#"{"consent":{"data_processing":true,"x":1}}"#), None);
        assert_eq!(
            consent(r#"{"consent":{"data_processing":true,"data_processing":true}}"#),
            None
        );
        assert_eq!(consent(r#"{"consent":{"data_processing":"true"}}"#), None);
        assert_eq!(consent(r#"{"consent":true}"#), None);
        assert_eq!(
            consent(r#"{"consent":{"data_processing":true},"consent":{"data_processing":true}}"#),
            None
        );
    }
}
