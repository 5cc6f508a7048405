//! Property tests of request validation.

use std::collections::BTreeMap;

use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::sample::{Index, select};
use serde_json::{Map, Value, json};

use super::*;

const SEPARATORS: [&str; 4] = ["", ".", "_", "-"];

fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')
}

fn id() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._:-]{1,128}"
}

/// Lowercase without separators, as the contract compares keys and patterns.
fn normalised(s: &str) -> String {
    s.chars()
        .filter(|c| !matches!(c, '.' | '_' | '-'))
        .flat_map(char::to_lowercase)
        .collect()
}

fn is_pii(key: &str) -> bool {
    let key = normalised(key);
    DEFAULT_PII_PATTERNS.iter().any(|p| key.contains(&normalised(p)))
}

fn attribute_key() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._-]{1,40}".prop_filter("PII or reserved key", |k| {
        !is_pii(k) && !k.starts_with("routing.") && !k.starts_with("consent.")
    })
}

fn attribute_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        "\\PC{0,30}".prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        // Eighths are exact in binary and short in decimal, so they survive the JSON round trip.
        (-1_000_000_i64..1_000_000).prop_map(|n| Value::from(n as f64 / 8.0)),
        any::<bool>().prop_map(Value::from),
    ]
}

fn routing() -> impl Strategy<Value = Routing> {
    (
        proptest::option::of("[A-Za-z0-9 ]{1,40}"),
        vec("[a-z_]{1,20}", 0..4),
        proptest::option::of("[a-zA-Z]{2,3}(-[A-Za-z0-9]{1,8}){0,2}"),
        proptest::option::of(0_u8..=10),
    )
        .prop_map(|(queue, skills, language, priority)| Routing {
            queue,
            skills,
            language,
            priority,
        })
}

/// The parts of a valid request, as generated.
#[derive(Debug, Clone)]
struct Parts {
    request_id: String,
    guest_id: String,
    display_name: Option<String>,
    attributes: BTreeMap<String, Value>,
    consent: Consent,
    routing: Option<Routing>,
    initial_message: Option<String>,
}

impl Parts {
    fn to_json(&self) -> Value {
        let mut body = Map::new();
        body.insert("request_id".into(), json!(self.request_id));
        body.insert("guest_id".into(), json!(self.guest_id));
        if let Some(name) = &self.display_name {
            body.insert("display_name".into(), json!(name));
        }
        if !self.attributes.is_empty() {
            body.insert("attributes".into(), json!(self.attributes));
        }
        body.insert("consent".into(), serde_json::to_value(self.consent).unwrap());
        if let Some(routing) = &self.routing {
            body.insert("routing".into(), serde_json::to_value(routing).unwrap());
        }
        if let Some(message) = &self.initial_message {
            body.insert("initial_message".into(), json!(message));
        }
        Value::Object(body)
    }

    /// The custom attributes the contract describes, computed independently of the validator.
    fn expected_custom_attributes(&self) -> BTreeMap<String, String> {
        let mut custom: BTreeMap<String, String> = self
            .attributes
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().map_or_else(|| v.to_string(), str::to_owned)))
            .collect();
        if let Some(routing) = &self.routing {
            if let Some(queue) = &routing.queue {
                custom.insert("routing.queue".into(), queue.clone());
            }
            if !routing.skills.is_empty() {
                custom.insert("routing.skills".into(), routing.skills.join(","));
            }
            if let Some(language) = &routing.language {
                custom.insert("routing.language".into(), language.clone());
            }
            if let Some(priority) = routing.priority {
                custom.insert("routing.priority".into(), priority.to_string());
            }
        }
        custom.insert(
            "consent.data_processing".into(),
            self.consent.data_processing.to_string(),
        );
        custom.insert("consent.marketing".into(), self.consent.marketing.to_string());
        custom
    }
}

fn valid_parts() -> impl Strategy<Value = Parts> {
    (
        id(),
        id(),
        proptest::option::of("[^\\p{Cc}]{1,64}"),
        btree_map(attribute_key(), attribute_value(), 0..8),
        any::<bool>(),
        proptest::option::of(routing()),
        proptest::option::of("(?s).{1,200}"),
    )
        .prop_map(
            |(request_id, guest_id, display_name, attributes, marketing, routing, initial_message)| Parts {
                request_id,
                guest_id,
                display_name,
                attributes,
                consent: Consent {
                    data_processing: true,
                    marketing,
                },
                routing,
                initial_message,
            },
        )
}

/// `pattern` (separators removed) in a random casing with random separators between its letters.
fn styled(pattern: &str, style: &[(bool, usize)]) -> String {
    let mut out = String::new();
    let letters: Vec<char> = pattern.chars().filter(|c| !matches!(c, '.' | '_' | '-')).collect();
    for (i, (c, (upper, sep))) in letters.iter().zip(style.iter().cycle()).enumerate() {
        out.push(if *upper { c.to_ascii_uppercase() } else { *c });
        if i + 1 < letters.len() {
            out.push_str(SEPARATORS[*sep]);
        }
    }
    out
}

fn style() -> impl Strategy<Value = Vec<(bool, usize)>> {
    vec((any::<bool>(), 0..SEPARATORS.len()), 12)
}

/// An arbitrary JSON value, shallow enough to build quickly.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "\\PC{0,20}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..8).prop_map(Value::Array),
            btree_map(
                prop_oneof![
                    select(vec![
                        "request_id",
                        "guest_id",
                        "display_name",
                        "attributes",
                        "consent",
                        "routing",
                        "initial_message",
                        "data_processing",
                        "marketing",
                        "queue",
                        "skills",
                        "language",
                        "priority",
                    ])
                    .prop_map(str::to_owned),
                    "[a-z_]{1,8}",
                ],
                inner,
                0..8
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Ways to break a request, each failing a different row or the parser.
#[derive(Debug, Clone, Copy)]
enum Breakage {
    ControlInDisplayName,
    LongDisplayName,
    LongAttributeValue,
    AttributeValueInArray,
    PiiKey,
    ConsentDeclined,
    UnknownField,
    DuplicateAttribute,
    BadPriority,
    EmptyInitialMessage,
    Truncated,
    BadRequestId,
    OversizedCustomAttributes,
}

fn breakage() -> impl Strategy<Value = Breakage> {
    use Breakage::*;
    select(vec![
        ControlInDisplayName,
        LongDisplayName,
        LongAttributeValue,
        AttributeValueInArray,
        PiiKey,
        ConsentDeclined,
        UnknownField,
        DuplicateAttribute,
        BadPriority,
        EmptyInitialMessage,
        Truncated,
        BadRequestId,
        OversizedCustomAttributes,
    ])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn valid_requests_validate_and_round_trip(parts in valid_parts()) {
        let body = serde_json::to_vec(&parts.to_json()).unwrap();
        let valid = validate(&body, &ValidationPolicy::default())
            .map_err(|r| TestCaseError::fail(format!("rejected: {r}")))?;
        prop_assert_eq!(valid.request_id(), parts.request_id.as_str());
        prop_assert_eq!(valid.guest_id(), parts.guest_id.as_str());
        prop_assert_eq!(valid.display_name(), parts.display_name.as_deref());
        prop_assert_eq!(valid.attributes(), &parts.attributes);
        prop_assert_eq!(valid.consent(), parts.consent);
        prop_assert_eq!(valid.routing(), parts.routing.as_ref());
        prop_assert_eq!(valid.initial_message(), parts.initial_message.as_deref());
        prop_assert_eq!(valid.custom_attributes(), &parts.expected_custom_attributes());
        prop_assert!(serde_json::to_vec(valid.custom_attributes()).unwrap().len() <= MAX_CUSTOM_ATTRIBUTES_BYTES);
    }

    #[test]
    fn an_id_with_a_char_outside_the_alphabet_is_invalid(
        parts in valid_parts(),
        id in "[A-Za-z0-9._:-]{0,100}",
        bad in any::<char>().prop_filter("outside the alphabet", |c| !is_id_char(*c)),
        at in any::<Index>(),
        guest in any::<bool>(),
    ) {
        let mut id = id;
        id.insert(at.index(id.len() + 1), bad);
        let mut request = parts.to_json();
        let field = if guest { "guest_id" } else { "request_id" };
        request[field] = json!(id);
        let rejection = validate(&serde_json::to_vec(&request).unwrap(), &ValidationPolicy::default()).unwrap_err();
        prop_assert_eq!(rejection.reason, RejectReason::Invalid);
        prop_assert!(rejection.detail.starts_with(field), "{}", rejection.detail);
    }

    #[test]
    fn a_key_containing_a_pii_pattern_in_any_style_is_blocked(
        parts in valid_parts(),
        pattern in select(DEFAULT_PII_PATTERNS),
        key_style in style(),
        (prefix, prefix_sep) in ("[a-zA-Z0-9]{0,6}", select(SEPARATORS.to_vec())),
        (suffix, suffix_sep) in ("[a-zA-Z0-9]{0,6}", select(SEPARATORS.to_vec())),
        configured in proptest::option::of(style()),
        value in attribute_value(),
    ) {
        let key = format!("{prefix}{prefix_sep}{}{suffix_sep}{suffix}", styled(pattern, &key_style));
        // Either the default policy, or one configured with the pattern in yet another style.
        let policy = match &configured {
            None => ValidationPolicy::default(),
            Some(style) => ValidationPolicy::new([styled(pattern, style)]),
        };
        let mut request = parts.to_json();
        request["attributes"] = Value::Object(Map::from_iter([(key.clone(), value)]));
        let rejection = validate(&serde_json::to_vec(&request).unwrap(), &policy).unwrap_err();
        prop_assert_eq!(rejection.reason, RejectReason::PiiBlocked, "{}: {}", key, rejection);
        prop_assert!(rejection.detail.contains(&key));
    }

    #[test]
    fn validate_never_panics_on_arbitrary_bytes(body in vec(any::<u8>(), 0..2048)) {
        let _ = validate(&body, &ValidationPolicy::default());
    }

    #[test]
    fn validate_never_panics_on_mutated_requests(
        parts in valid_parts(),
        edits in vec((any::<Index>(), any::<u8>(), 0..3_u8), 1..6),
    ) {
        let mut body = serde_json::to_vec(&parts.to_json()).unwrap();
        for (at, byte, op) in edits {
            match op {
                0 => { let i = at.index(body.len()); body[i] = byte; }
                1 => body.insert(at.index(body.len() + 1), byte),
                _ => body.truncate(at.index(body.len() + 1)),
            }
            if body.is_empty() { break; }
        }
        let _ = validate(&body, &ValidationPolicy::default());
    }

    #[test]
    fn validate_never_panics_on_arbitrary_json(value in any_json()) {
        let body = serde_json::to_vec(&value).unwrap();
        if let Ok(valid) = validate(&body, &ValidationPolicy::default()) {
            prop_assert!(valid.consent().data_processing);
        }
    }

    #[test]
    fn detail_never_contains_personal_values(
        parts in valid_parts(),
        guest_id in "[A-Za-z0-9]{16}",
        display_name in "[α-ω]{6,12}",
        values in vec("[α-ω]{6,12}", 1..4),
        initial_message in "[α-ω ]{6,40}",
        breakage in breakage(),
        cut in any::<Index>(),
    ) {
        let mut parts = parts;
        parts.guest_id = guest_id.clone();
        parts.display_name = Some(display_name.clone());
        parts.initial_message = Some(initial_message.clone());
        parts.attributes = values.iter().enumerate().map(|(i, v)| (format!("attr_{i}"), json!(v))).collect();
        let mut request = parts.to_json();
        let mut body = None;
        match breakage {
            Breakage::ControlInDisplayName => request["display_name"] = json!(format!("{display_name}\u{7}")),
            Breakage::LongDisplayName => request["display_name"] = json!(display_name.repeat(20)),
            Breakage::LongAttributeValue => request["attributes"]["attr_0"] = json!(values[0].repeat(50)),
            Breakage::AttributeValueInArray => request["attributes"]["attr_0"] = json!([values[0]]),
            Breakage::PiiKey => request["attributes"]["home_phone"] = json!(values[0]),
            Breakage::ConsentDeclined => request["consent"]["data_processing"] = json!(false),
            Breakage::UnknownField => request["nickname"] = json!(display_name),
            Breakage::DuplicateAttribute => {
                let text = serde_json::to_string(&request).unwrap();
                let duplicated = text.replacen(
                    "\"attributes\":{",
                    &format!("\"attributes\":{{\"attr_0\":{},", json!(values[0])),
                    1,
                );
                body = Some(duplicated.into_bytes());
            }
            Breakage::BadPriority => request["routing"] = json!({ "priority": 99 }),
            Breakage::EmptyInitialMessage => request["initial_message"] = json!(""),
            Breakage::Truncated => {
                let full = serde_json::to_vec(&request).unwrap();
                body = Some(full[..cut.index(full.len())].to_vec());
            }
            Breakage::BadRequestId => request["request_id"] = json!(""),
            Breakage::OversizedCustomAttributes => {
                for i in 0..12 {
                    request["attributes"][format!("long_{i}")] = json!(values[0].repeat(20));
                }
            }
        }
        let body = body.unwrap_or_else(|| serde_json::to_vec(&request).unwrap());
        let rejection = validate(&body, &ValidationPolicy::default()).unwrap_err();
        let detail = &rejection.detail;
        prop_assert!(!detail.contains(&guest_id), "{:?}: {}", breakage, detail);
        prop_assert!(!detail.contains(&display_name), "{:?}: {}", breakage, detail);
        prop_assert!(!detail.contains(&initial_message), "{:?}: {}", breakage, detail);
        for value in &values {
            prop_assert!(!detail.contains(value.as_str()), "{:?}: {}", breakage, detail);
        }
        // Nothing Greek can come from our templates, so no fragment of a value leaked either.
        prop_assert!(!detail.chars().any(|c| ('α'..='ω').contains(&c)), "{:?}: {}", breakage, detail);
    }
}
