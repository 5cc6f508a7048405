//! Unit tests of request validation: every reason, the order of the rows, and hostile bodies.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::*;

/// The request of DESIGN §2.
fn example() -> Value {
    json!({
        "request_id": "7b0c1a52-6f0e-4d2a-9a43-0f7f3c2b1d11",
        "guest_id": "guest_a8f3c91e-4b2d",
        "display_name": "Ada",
        "attributes": { "source": "web_portal", "device_type": "desktop" },
        "consent": { "data_processing": true, "marketing": false },
        "routing": { "queue": "Web Support", "skills": ["web_support"], "language": "en", "priority": 1 },
        "initial_message": "Hi, I have a question about my order"
    })
}

/// The smallest valid request.
fn minimal() -> Value {
    json!({ "request_id": "r-1", "guest_id": "g-1", "consent": { "data_processing": true } })
}

fn check(request: &Value) -> Result<ValidatedRequest, Rejection> {
    validate(&serde_json::to_vec(request).unwrap(), &ValidationPolicy::default())
}

fn check_raw(body: impl AsRef<[u8]>) -> Result<ValidatedRequest, Rejection> {
    validate(body.as_ref(), &ValidationPolicy::default())
}

#[track_caller]
fn rejected(request: &Value) -> Rejection {
    match check(request) {
        Ok(valid) => panic!("accepted {valid:?} from {request}"),
        Err(rejection) => rejection,
    }
}

#[track_caller]
fn rejected_raw(body: impl AsRef<[u8]>) -> Rejection {
    match check_raw(body) {
        Ok(valid) => panic!("accepted {valid:?}"),
        Err(rejection) => rejection,
    }
}

/// `base` with `pointer` (e.g. `/routing/priority`) set to `value`, creating objects on the way.
fn with(base: &Value, pointer: &str, value: Value) -> Value {
    let mut out = base.clone();
    let mut target = &mut out;
    for part in pointer.trim_start_matches('/').split('/') {
        if !target.is_object() {
            *target = json!({});
        }
        target = target.as_object_mut().unwrap().entry(part).or_insert(Value::Null);
    }
    *target = value;
    out
}

/// `base` without the member at `pointer`.
fn without(base: &Value, pointer: &str) -> Value {
    let mut out = base.clone();
    let (parent, last) = pointer.rsplit_once('/').unwrap();
    let parent = if parent.is_empty() {
        &mut out
    } else {
        out.pointer_mut(parent).unwrap()
    };
    parent.as_object_mut().unwrap().remove(last);
    out
}

// --- The example and what a valid request carries -------------------------------------------------

#[test]
fn design_example_is_accepted_with_its_custom_attributes() {
    let request = check(&example()).unwrap();
    assert_eq!(request.request_id(), "7b0c1a52-6f0e-4d2a-9a43-0f7f3c2b1d11");
    assert_eq!(request.guest_id(), "guest_a8f3c91e-4b2d");
    assert_eq!(request.display_name(), Some("Ada"));
    assert_eq!(request.initial_message(), Some("Hi, I have a question about my order"));
    assert_eq!(
        request.consent(),
        Consent {
            data_processing: true,
            marketing: false
        }
    );
    assert_eq!(
        request.routing(),
        Some(&Routing {
            queue: Some("Web Support".into()),
            skills: vec!["web_support".into()],
            language: Some("en".into()),
            priority: Some(1),
        })
    );
    let attributes: BTreeMap<String, Value> = [
        ("device_type".to_owned(), json!("desktop")),
        ("source".to_owned(), json!("web_portal")),
    ]
    .into();
    assert_eq!(request.attributes(), &attributes);
    let custom: BTreeMap<String, String> = [
        ("consent.data_processing", "true"),
        ("consent.marketing", "false"),
        ("device_type", "desktop"),
        ("routing.language", "en"),
        ("routing.priority", "1"),
        ("routing.queue", "Web Support"),
        ("routing.skills", "web_support"),
        ("source", "web_portal"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(request.custom_attributes(), &custom);
}

#[test]
fn minimal_request_is_accepted_and_has_only_the_consent_flags() {
    let request = check(&minimal()).unwrap();
    assert_eq!(request.display_name(), None);
    assert!(request.attributes().is_empty());
    assert_eq!(request.routing(), None);
    assert_eq!(request.initial_message(), None);
    assert_eq!(
        request.consent(),
        Consent {
            data_processing: true,
            marketing: false
        }
    );
    let keys: Vec<_> = request.custom_attributes().keys().map(String::as_str).collect();
    assert_eq!(keys, ["consent.data_processing", "consent.marketing"]);
}

#[test]
fn numbers_and_booleans_are_stringified_by_their_json_text() {
    let request = with(
        &minimal(),
        "/attributes",
        json!({ "n": 42, "neg": -7, "f": 1.5, "b": true, "s": "" }),
    );
    let request = with(&request, "/consent/marketing", json!(true));
    let valid = check(&request).unwrap();
    let custom = valid.custom_attributes();
    assert_eq!(custom["n"], "42");
    assert_eq!(custom["neg"], "-7");
    assert_eq!(custom["f"], "1.5");
    assert_eq!(custom["b"], "true");
    assert_eq!(custom["s"], "");
    assert_eq!(custom["consent.marketing"], "true");
    assert_eq!(valid.attributes()["n"], json!(42));
    assert_eq!(valid.attributes()["b"], json!(true));
}

#[test]
fn routing_hints_join_skills_and_omit_absent_members() {
    let request = with(
        &minimal(),
        "/routing",
        json!({ "skills": ["a", "b c", "d"], "priority": 0 }),
    );
    let valid = check(&request).unwrap();
    assert_eq!(valid.custom_attributes()["routing.skills"], "a,b c,d");
    assert_eq!(valid.custom_attributes()["routing.priority"], "0");
    assert!(!valid.custom_attributes().contains_key("routing.queue"));
    assert!(!valid.custom_attributes().contains_key("routing.language"));

    let empty = check(&with(&minimal(), "/routing", json!({ "skills": [] }))).unwrap();
    assert_eq!(empty.routing(), Some(&Routing::default()));
    assert!(!empty.custom_attributes().keys().any(|k| k.starts_with("routing.")));
}

#[test]
fn null_optional_fields_mean_absent() {
    let request = json!({
        "request_id": "r", "guest_id": "g", "display_name": null, "attributes": null,
        "consent": { "data_processing": true, "marketing": null }, "routing": null, "initial_message": null
    });
    let valid = check(&request).unwrap();
    assert_eq!(valid.display_name(), None);
    assert_eq!(valid.routing(), None);
    let routing = with(
        &minimal(),
        "/routing",
        json!({ "queue": null, "skills": null, "language": null, "priority": null }),
    );
    assert_eq!(check(&routing).unwrap().routing(), Some(&Routing::default()));
}

// --- One test per reason ----------------------------------------------------------------------------

#[test]
fn too_large_is_checked_before_parsing() {
    let mut body = vec![b'x'; MAX_BODY_BYTES + 1];
    assert_eq!(rejected_raw(&body).reason, RejectReason::TooLarge);
    body.truncate(MAX_BODY_BYTES);
    assert_eq!(rejected_raw(&body).reason, RejectReason::Malformed);
}

#[test]
fn a_valid_body_of_exactly_the_limit_is_accepted() {
    let mut body = serde_json::to_vec(&minimal()).unwrap();
    let padding = MAX_BODY_BYTES - body.len();
    body.splice(0..0, std::iter::repeat_n(b' ', padding));
    assert_eq!(body.len(), MAX_BODY_BYTES);
    assert!(check_raw(&body).is_ok());
    body.push(b' ');
    assert_eq!(rejected_raw(&body).reason, RejectReason::TooLarge);
}

#[test]
fn ten_mebibyte_body_is_too_large() {
    let mut request = minimal();
    request["initial_message"] = json!("x".repeat(10 * 1024 * 1024));
    let rejection = rejected(&request);
    assert_eq!(rejection.reason, RejectReason::TooLarge);
    assert!(rejection.detail.contains("65536"), "{}", rejection.detail);
    assert_eq!(rejection.request_id, None, "a too-large body is not parsed");
}

#[test]
fn each_reason_has_a_request_that_produces_it() {
    let cases = [
        (check_raw(b"{").unwrap_err().reason, RejectReason::Malformed),
        (
            check_raw(vec![b' '; MAX_BODY_BYTES + 1]).unwrap_err().reason,
            RejectReason::TooLarge,
        ),
        (
            rejected(&with(&minimal(), "/request_id", json!(""))).reason,
            RejectReason::Invalid,
        ),
        (
            rejected(&with(&minimal(), "/attributes/email", json!("x"))).reason,
            RejectReason::PiiBlocked,
        ),
        (
            rejected(&with(&minimal(), "/consent/data_processing", json!(false))).reason,
            RejectReason::ConsentMissing,
        ),
    ];
    for (got, want) in cases {
        assert_eq!(got, want);
    }
    let covered: Vec<_> = cases.iter().map(|(_, want)| *want).collect();
    assert!(RejectReason::ALL.iter().all(|r| covered.contains(r)));
}

// --- The order of the rows --------------------------------------------------------------------------

#[test]
fn first_failing_row_names_the_reason() {
    // Every row fails; repair them one at a time, top to bottom, and watch the reason move down.
    let mut request = json!({
        "request_id": "bad id",
        "guest_id": "g",
        "display_name": "",
        "attributes": { "source": null, "email": "x" },
        "consent": { "data_processing": false },
        "routing": { "priority": 11 },
        "initial_message": ""
    });
    let steps: [(&str, RejectReason, &str, Value); 7] = [
        ("request_id", RejectReason::Invalid, "/request_id", json!("r")),
        ("display_name", RejectReason::Invalid, "/display_name", json!("Ada")),
        (
            "attribute `source`",
            RejectReason::Invalid,
            "/attributes/source",
            json!("web"),
        ),
        (
            "`email`",
            RejectReason::PiiBlocked,
            "/attributes",
            json!({ "source": "web" }),
        ),
        (
            "consent",
            RejectReason::ConsentMissing,
            "/consent/data_processing",
            json!(true),
        ),
        (
            "routing.priority",
            RejectReason::Invalid,
            "/routing/priority",
            json!(10),
        ),
        (
            "initial_message",
            RejectReason::Invalid,
            "/initial_message",
            json!("hi"),
        ),
    ];
    for (names, reason, pointer, fix) in steps {
        let rejection = rejected(&request);
        assert_eq!(rejection.reason, reason, "{rejection}");
        assert!(
            rejection.detail.contains(names),
            "expected {names} in {:?}",
            rejection.detail
        );
        request = with(&request, pointer, fix);
    }
    assert!(check(&request).is_ok());
}

#[test]
fn too_large_comes_before_malformed_and_malformed_before_invalid() {
    let garbage = vec![b'['; MAX_BODY_BYTES + 10];
    assert_eq!(rejected_raw(garbage).reason, RejectReason::TooLarge);
    let request = with(&with(&minimal(), "/request_id", json!("bad id")), "/unknown", json!(1));
    assert_eq!(rejected(&request).reason, RejectReason::Malformed);
}

#[test]
fn request_id_row_comes_before_guest_id_and_both_before_display_name() {
    let request = with(&with(&minimal(), "/request_id", json!(5)), "/guest_id", json!(""));
    let rejection = rejected(&request);
    assert!(rejection.detail.starts_with("request_id"), "{}", rejection.detail);
    let request = with(&with(&minimal(), "/guest_id", json!("")), "/display_name", json!(""));
    assert!(rejected(&request).detail.starts_with("guest_id"));
}

#[test]
fn oversized_custom_attributes_are_invalid_before_pii_and_consent() {
    let mut attributes = serde_json::Map::new();
    for i in 0..10 {
        attributes.insert(format!("k{i}"), json!("v".repeat(256)));
    }
    attributes.insert("email".into(), json!("x"));
    let request = with(&minimal(), "/attributes", Value::Object(attributes));
    let request = with(&request, "/consent/data_processing", json!(false));
    let rejection = rejected(&request);
    assert_eq!(rejection.reason, RejectReason::Invalid);
    assert!(rejection.detail.contains("custom attributes"), "{}", rejection.detail);
}

#[test]
fn pii_comes_before_consent_and_consent_before_routing() {
    let request = with(&minimal(), "/attributes/Phone_Number", json!("x"));
    let request = without(&request, "/consent");
    let request = with(&request, "/routing/priority", json!("high"));
    assert_eq!(rejected(&request).reason, RejectReason::PiiBlocked);
    let request = without(&request, "/attributes");
    assert_eq!(rejected(&request).reason, RejectReason::ConsentMissing);
}

// --- Wrong JSON types of known fields: invalid at their own row ---------------------------------------

#[test]
fn wrong_types_fail_their_own_row() {
    let cases: [(&str, Value, RejectReason); 18] = [
        ("/request_id", json!(5), RejectReason::Invalid),
        ("/request_id", json!(null), RejectReason::Invalid),
        ("/guest_id", json!(["g"]), RejectReason::Invalid),
        ("/display_name", json!(5), RejectReason::Invalid),
        ("/attributes", json!([]), RejectReason::Invalid),
        ("/attributes", json!("source=web"), RejectReason::Invalid),
        ("/attributes/source", json!(null), RejectReason::Invalid),
        ("/attributes/source", json!(["web"]), RejectReason::Invalid),
        ("/attributes/source", json!({ "a": 1 }), RejectReason::Invalid),
        ("/consent", json!(true), RejectReason::ConsentMissing),
        ("/consent", json!(null), RejectReason::ConsentMissing),
        ("/consent/data_processing", json!("true"), RejectReason::ConsentMissing),
        ("/consent/marketing", json!(0), RejectReason::ConsentMissing),
        ("/routing", json!([]), RejectReason::Invalid),
        ("/routing/queue", json!(7), RejectReason::Invalid),
        ("/routing/skills", json!("web"), RejectReason::Invalid),
        ("/routing/language", json!(1), RejectReason::Invalid),
        ("/initial_message", json!({}), RejectReason::Invalid),
    ];
    for (pointer, value, reason) in cases {
        let rejection = rejected(&with(&example(), pointer, value.clone()));
        assert_eq!(rejection.reason, reason, "{pointer} = {value}: {rejection}");
    }
}

#[test]
fn missing_required_fields() {
    assert_eq!(
        rejected(&without(&minimal(), "/request_id")).detail,
        "request_id is required"
    );
    assert_eq!(
        rejected(&without(&minimal(), "/guest_id")).detail,
        "guest_id is required"
    );
    let rejection = rejected(&without(&minimal(), "/consent"));
    assert_eq!(
        (rejection.reason, rejection.detail.as_str()),
        (RejectReason::ConsentMissing, "consent is missing")
    );
    let rejection = rejected(&with(&minimal(), "/consent", json!({})));
    assert_eq!(rejection.reason, RejectReason::ConsentMissing);
}

// --- Body row: malformed ------------------------------------------------------------------------------

#[test]
fn unknown_fields_at_every_level_are_malformed() {
    for pointer in ["/extra", "/consent/extra", "/routing/extra"] {
        let rejection = rejected(&with(&example(), pointer, json!(1)));
        assert_eq!(rejection.reason, RejectReason::Malformed, "{pointer}");
        let field = pointer.trim_start_matches('/').replace('/', ".");
        assert!(rejection.detail.contains(&format!("`{field}`")), "{}", rejection.detail);
    }
    // Any key is a legal attribute key as far as the body row is concerned.
    assert!(check(&with(&example(), "/attributes/extra", json!(1))).is_ok());
}

#[test]
fn duplicate_keys_anywhere_are_malformed() {
    let bodies = [
        r#"{"request_id":"r","request_id":"r","guest_id":"g","consent":{"data_processing":true}}"#,
        r#"{"request_id":"r","guest_id":"g","consent":{"data_processing":true},"consent":{"data_processing":true}}"#,
        r#"{"request_id":"r","guest_id":"g","consent":{"data_processing":false,"data_processing":true}}"#,
        r#"{"request_id":"r","guest_id":"g","consent":{"data_processing":true},"attributes":{"a":"1","a":"2"}}"#,
        r#"{"request_id":"r","guest_id":"g","consent":{"data_processing":true},"attributes":{"a":"1","\u0061":"2"}}"#,
        r#"{"request_id":"r","guest_id":"g","consent":{"data_processing":true},"routing":{"queue":"a","queue":"b"}}"#,
        r#"{"request_id":"r","guest_id":"g","consent":{"data_processing":true},"attributes":{"a":{"b":1,"b":2}}}"#,
    ];
    for body in bodies {
        let rejection = rejected_raw(body);
        assert_eq!(rejection.reason, RejectReason::Malformed, "{body}");
        assert!(rejection.detail.contains("duplicate key"), "{}", rejection.detail);
    }
}

#[test]
fn invalid_utf8_is_malformed() {
    let mut body = br#"{"request_id":"r","guest_id":"g","display_name":"A"#.to_vec();
    body.extend_from_slice(&[0xff, 0xfe]);
    body.extend_from_slice(br#"","consent":{"data_processing":true}}"#);
    let rejection = rejected_raw(&body);
    assert_eq!(rejection.reason, RejectReason::Malformed);
    assert_eq!(
        rejection.request_id.as_deref(),
        Some("r"),
        "ids before the error are kept"
    );
    assert_eq!(rejected_raw([0xc3, 0x28]).reason, RejectReason::Malformed);
    assert_eq!(
        rejected_raw(br#"{"request_id":"\ud800"}"#).reason,
        RejectReason::Malformed
    );
    // A byte-order mark is not JSON.
    let mut bom = vec![0xef, 0xbb, 0xbf];
    bom.extend(serde_json::to_vec(&minimal()).unwrap());
    assert_eq!(rejected_raw(&bom).reason, RejectReason::Malformed);
}

#[test]
fn raw_nul_bytes_are_malformed_and_escaped_ones_fail_their_row() {
    let base = String::from_utf8(serde_json::to_vec(&minimal()).unwrap()).unwrap();
    assert_eq!(
        rejected_raw(base.replacen("\"r-1\"", "\"r\0\"", 1)).reason,
        RejectReason::Malformed
    );
    assert_eq!(rejected_raw(format!("{base}\0")).reason, RejectReason::Malformed);
    assert_eq!(rejected_raw(format!("\0{base}")).reason, RejectReason::Malformed);
    assert_eq!(rejected_raw(b"\0").reason, RejectReason::Malformed);
    // An escaped NUL is valid JSON; it is then simply a character outside the id alphabet.
    assert_eq!(
        rejected_raw(base.replacen("\"r-1\"", "\"r\\u0000\"", 1)).reason,
        RejectReason::Invalid
    );
    let name = with(&minimal(), "/display_name", json!("A\u{0}"));
    assert_eq!(rejected(&name).reason, RejectReason::Invalid);
}

#[test]
fn deeply_nested_json_is_malformed_without_overflowing_the_stack() {
    assert_eq!(rejected_raw("[".repeat(10_000)).reason, RejectReason::Malformed);
    let closed = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    assert_eq!(rejected_raw(&closed).reason, RejectReason::Malformed);
    let objects = format!(
        r#"{{"request_id":"r","guest_id":"g","consent":{{"data_processing":true}},"attributes":{{"a":{}1{}}}}}"#,
        r#"{"a":"#.repeat(5_000),
        "}".repeat(5_000)
    );
    let rejection = rejected_raw(&objects);
    assert_eq!(rejection.reason, RejectReason::Malformed);
    assert!(rejection.detail.contains("recursion limit"), "{}", rejection.detail);
    assert_eq!(rejection.request_id.as_deref(), Some("r"));
    // Moderate nesting parses; inside an attribute it is then an invalid value.
    let nested = with(&minimal(), "/attributes/a", json!([[[[[[[[[[1]]]]]]]]]]));
    assert_eq!(rejected(&nested).reason, RejectReason::Invalid);
}

#[test]
fn huge_numbers() {
    let base = r#"{"request_id":"r","guest_id":"g","consent":{"data_processing":true},"#;
    for number in ["1e400", "-1e400", &format!("1{}", "0".repeat(400))] {
        let rejection = rejected_raw(format!(r#"{base}"attributes":{{"n":{number}}}}}"#));
        assert_eq!(rejection.reason, RejectReason::Malformed, "{number}");
        assert!(rejection.detail.contains("number out of range"), "{}", rejection.detail);
    }
    for priority in ["1e20", "18446744073709551616", "-1", "1.0", "0.5", "11", "256"] {
        let rejection = rejected_raw(format!(r#"{base}"routing":{{"priority":{priority}}}}}"#));
        assert_eq!(rejection.reason, RejectReason::Invalid, "{priority}");
    }
    // Beyond 64 bits an integer is read as a float, like serde_json does; it is still a number.
    let valid = check_raw(format!(
        r#"{base}"attributes":{{"n":123456789012345678901234567890}}}}"#
    ))
    .unwrap();
    assert!(valid.attributes()["n"].is_f64());
}

#[test]
fn non_object_json_is_malformed() {
    for body in [
        "[]",
        "[1,2]",
        "\"request\"",
        "42",
        "-1.5",
        "true",
        "null",
        "",
        "   ",
        "{} {}",
        "{}x",
        "{,}",
    ] {
        let rejection = rejected_raw(body);
        assert_eq!(rejection.reason, RejectReason::Malformed, "{body:?}");
    }
    assert!(rejected_raw("[]").detail.contains("not an array"));
}

// --- Row: ids -------------------------------------------------------------------------------------------

#[test]
fn ids_are_1_to_128_chars_of_the_alphabet() {
    for id in ["a", "A-Z.a_z:0-9", &"x".repeat(128), "urn:uuid:7b0c1a52-6f0e"] {
        assert!(check(&with(&minimal(), "/request_id", json!(id))).is_ok(), "{id}");
        assert!(check(&with(&minimal(), "/guest_id", json!(id))).is_ok(), "{id}");
    }
    for id in ["", &"x".repeat(129), "a b", "a/b", "é", "a\n", "a+b", "a@b", "ä"] {
        for field in ["/request_id", "/guest_id"] {
            let rejection = rejected(&with(&minimal(), field, json!(id)));
            assert_eq!(rejection.reason, RejectReason::Invalid, "{field} = {id:?}");
        }
    }
}

// --- Row: display_name ------------------------------------------------------------------------------------

#[test]
fn display_name_is_1_to_64_chars_without_control_characters() {
    for name in ["A", "Zoë O'Brien", &"漢".repeat(64), "🙂 smile"] {
        assert!(check(&with(&minimal(), "/display_name", json!(name))).is_ok(), "{name}");
    }
    for name in ["", &"漢".repeat(65), "Ada\nLovelace", "Ada\u{7f}", "Ada\u{85}", "\t"] {
        assert_eq!(
            rejected(&with(&minimal(), "/display_name", json!(name))).reason,
            RejectReason::Invalid
        );
    }
}

// --- Row: attributes --------------------------------------------------------------------------------------

#[test]
fn at_most_100_attributes() {
    let attributes = |n: usize| Value::Object((0..n).map(|i| (format!("k{i}"), json!(i))).collect());
    assert!(check(&with(&minimal(), "/attributes", attributes(100))).is_ok());
    let rejection = rejected(&with(&minimal(), "/attributes", attributes(101)));
    assert_eq!(rejection.reason, RejectReason::Invalid);
    assert!(rejection.detail.contains("101 entries"), "{}", rejection.detail);
}

#[test]
fn attribute_keys_are_1_to_64_chars_of_the_alphabet_and_not_reserved() {
    for key in ["a", "A.b_c-9", &"k".repeat(64), "routing", "consent", "my.routing.x"] {
        assert!(
            check(&with(&minimal(), &format!("/attributes/{key}"), json!(1))).is_ok(),
            "{key}"
        );
    }
    for key in [
        "",
        &"k".repeat(65),
        "a b",
        "a:b",
        "ké",
        "routing.queue",
        "routing.x",
        "consent.marketing",
    ] {
        let rejection = rejected(&with(&minimal(), &format!("/attributes/{key}"), json!(1)));
        assert_eq!(rejection.reason, RejectReason::Invalid, "{key:?}");
    }
}

#[test]
fn an_unknown_field_is_quoted_only_when_it_looks_like_a_name() {
    let mut request = minimal();
    request["colour"] = json!("x");
    let rejection = rejected(&request);
    assert_eq!(rejection.reason, RejectReason::Malformed);
    assert!(rejection.detail.contains("`colour`"), "{}", rejection.detail);
    let mut request = minimal();
    request["consent"]["ada@example.com"] = json!(true);
    let rejection = rejected(&request);
    assert_eq!(rejection.reason, RejectReason::Malformed);
    assert!(
        !rejection.detail.contains("ada") && rejection.detail.contains("15 characters"),
        "{}",
        rejection.detail
    );
}

#[test]
fn a_key_outside_the_alphabet_is_not_quoted_in_the_detail() {
    let mut request = minimal();
    request["attributes"] = json!({ "ada@example.com": "x" });
    let rejection = rejected(&request);
    assert_eq!(rejection.reason, RejectReason::Invalid);
    assert!(
        !rejection.detail.contains("ada") && rejection.detail.contains("15 characters"),
        "{}",
        rejection.detail
    );
}

#[test]
fn attribute_string_values_have_at_most_256_chars() {
    assert!(check(&with(&minimal(), "/attributes/a", json!("é".repeat(256)))).is_ok());
    let rejection = rejected(&with(&minimal(), "/attributes/a", json!("é".repeat(257))));
    assert_eq!(rejection.reason, RejectReason::Invalid);
    assert!(rejection.detail.contains("`a`"));
}

/// Attributes whose custom-attribute map (with the two consent flags) serialises to `len` bytes.
fn attributes_serialising_to(len: usize) -> Value {
    let mut attributes = serde_json::Map::new();
    let size = |attributes: &serde_json::Map<String, Value>| {
        let mut custom: BTreeMap<String, String> = attributes
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
            .collect();
        custom.insert("consent.data_processing".into(), "true".into());
        custom.insert("consent.marketing".into(), "false".into());
        serde_json::to_vec(&custom).unwrap().len()
    };
    let mut i = 0;
    while size(&attributes) + 256 + 16 < len {
        attributes.insert(format!("k{i}"), json!("v".repeat(256)));
        i += 1;
    }
    attributes.insert("z".into(), json!(""));
    let missing = len - size(&attributes);
    assert!(missing <= 256);
    attributes.insert("z".into(), json!("v".repeat(missing)));
    assert_eq!(size(&attributes), len);
    Value::Object(attributes)
}

#[test]
fn custom_attributes_at_most_2048_bytes() {
    let request = with(
        &minimal(),
        "/attributes",
        attributes_serialising_to(MAX_CUSTOM_ATTRIBUTES_BYTES),
    );
    let valid = check(&request).unwrap();
    assert_eq!(
        serde_json::to_vec(valid.custom_attributes()).unwrap().len(),
        MAX_CUSTOM_ATTRIBUTES_BYTES
    );

    let request = with(
        &minimal(),
        "/attributes",
        attributes_serialising_to(MAX_CUSTOM_ATTRIBUTES_BYTES + 1),
    );
    let rejection = rejected(&request);
    assert_eq!(rejection.reason, RejectReason::Invalid);
    assert!(rejection.detail.contains("2049 bytes"), "{}", rejection.detail);
}

#[test]
fn routing_hints_and_escaping_count_towards_the_custom_attribute_limit() {
    // Fine on their own ...
    let attributes = attributes_serialising_to(MAX_CUSTOM_ATTRIBUTES_BYTES - 40);
    let request = with(&minimal(), "/attributes", attributes);
    assert!(check(&request).is_ok());
    // ... over the limit with a queue hint travelling beside them.
    let rejection = rejected(&with(&request, "/routing/queue", json!("Web Support Queue Europe")));
    assert!(rejection.detail.contains("custom attributes"), "{}", rejection.detail);
    // Skills alone can exceed it: 20 skills of 64 three-byte characters.
    let skills: Vec<_> = (0..20).map(|_| "漢".repeat(64)).collect();
    let rejection = rejected(&with(&minimal(), "/routing/skills", json!(skills)));
    assert!(rejection.detail.contains("custom attributes"), "{}", rejection.detail);
    // Quotes are counted escaped: 256 `"` serialise to 512 bytes.
    let quotes: serde_json::Map<_, _> = (0..4).map(|i| (format!("q{i}"), json!("\"".repeat(256)))).collect();
    let rejection = rejected(&with(&minimal(), "/attributes", Value::Object(quotes)));
    assert!(rejection.detail.contains("custom attributes"), "{}", rejection.detail);
}

// --- Row: attribute keys (PII) -----------------------------------------------------------------------------

#[test]
fn look_alike_pii_keys_are_blocked() {
    let keys = [
        "email",
        "E_Mail",
        "e-mail",
        "e.mail",
        "EMAIL",
        "user_email_2",
        "Phone_Number",
        "phone",
        "mobilePhone",
        "ssn",
        "S.S.N",
        "credit_card",
        "CreditCard",
        "password",
        "pass_word",
        "ip_address",
        "ip.address",
        "IP-Address",
        "ipaddress",
        "client_ip_address_v4",
        "s_s_n_x",
    ];
    for key in keys {
        let rejection = rejected(&with(&minimal(), &format!("/attributes/{key}"), json!("x")));
        assert_eq!(rejection.reason, RejectReason::PiiBlocked, "{key}");
        assert!(rejection.detail.contains(&format!("`{key}`")), "{}", rejection.detail);
    }
    for key in [
        "source",
        "device_type",
        "mail",
        "ip",
        "address",
        "phon",
        "cred",
        "pass",
        "mail_e",
    ] {
        assert!(
            check(&with(&minimal(), &format!("/attributes/{key}"), json!("x"))).is_ok(),
            "{key}"
        );
    }
}

#[test]
fn pii_patterns_are_configurable_and_normalised_once() {
    let policy = ValidationPolicy::from_csv(" Date-Of.Birth , ,IBAN,,");
    let body = |key: &str| serde_json::to_vec(&with(&minimal(), &format!("/attributes/{key}"), json!("x"))).unwrap();
    for key in ["date_of_birth", "DateOfBirth", "user.iban"] {
        assert_eq!(
            validate(&body(key), &policy).unwrap_err().reason,
            RejectReason::PiiBlocked,
            "{key}"
        );
    }
    assert!(
        validate(&body("email"), &policy).is_ok(),
        "the defaults are replaced, not extended"
    );
    // Patterns that normalise to nothing would block every key; they are ignored.
    let policy = ValidationPolicy::new(["_", "-.", ""]);
    assert!(validate(&body("anything"), &policy).is_ok());
    let policy = ValidationPolicy::new(["EMAIL", "e_mail", "e-mail"]);
    assert!(
        format!("{policy:?}").contains(r#"pii_patterns: ["email"]"#),
        "{policy:?}"
    );
}

// --- Row: consent ---------------------------------------------------------------------------------------------

#[test]
fn consent_must_be_given() {
    for consent in [
        json!({ "data_processing": false }),
        json!({ "marketing": true }),
        json!({ "data_processing": null }),
    ] {
        let rejection = rejected(&with(&minimal(), "/consent", consent.clone()));
        assert_eq!(rejection.reason, RejectReason::ConsentMissing, "{consent}");
    }
    let valid = check(&with(
        &minimal(),
        "/consent",
        json!({ "data_processing": true, "marketing": true }),
    ))
    .unwrap();
    assert_eq!(
        valid.consent(),
        Consent {
            data_processing: true,
            marketing: true
        }
    );
}

// --- Row: routing ----------------------------------------------------------------------------------------------

#[test]
fn routing_rules() {
    let ok = [
        ("/routing/priority", json!(0)),
        ("/routing/priority", json!(10)),
        ("/routing/skills", json!(vec!["s"; 20])),
        ("/routing/skills", json!(["k".repeat(64)])),
        ("/routing/queue", json!("q".repeat(128))),
        ("/routing/language", json!("en-US")),
        ("/routing/language", json!("zh-Hant-TW")),
        ("/routing/language", json!("yue")),
        ("/routing/language", json!("de-CH-1901")),
        ("/routing/language", json!(format!("en{}", "-abc".repeat(8)))),
        ("/routing", json!({})),
    ];
    for (pointer, value) in ok {
        assert!(
            check(&with(&example(), pointer, value.clone())).is_ok(),
            "{pointer} = {value}"
        );
    }
    let invalid = [
        ("/routing/priority", json!(11)),
        ("/routing/priority", json!(-1)),
        ("/routing/priority", json!(2.5)),
        ("/routing/priority", json!("1")),
        ("/routing/skills", json!(vec!["s"; 21])),
        ("/routing/skills", json!([""])),
        ("/routing/skills", json!(["k".repeat(65)])),
        ("/routing/skills", json!(["a\tb"])),
        ("/routing/skills", json!([1])),
        ("/routing/queue", json!("")),
        ("/routing/queue", json!("q".repeat(129))),
        ("/routing/queue", json!("Web\u{1b}Support")),
        ("/routing/language", json!("e")),
        ("/routing/language", json!("english")),
        ("/routing/language", json!("en_US")),
        ("/routing/language", json!("en-")),
        ("/routing/language", json!("-en")),
        ("/routing/language", json!("en--US")),
        ("/routing/language", json!("en-abcdefghi")),
        ("/routing/language", json!("1n")),
        ("/routing/language", json!("")),
        ("/routing/language", json!(format!("en{}", "-abc".repeat(9)))),
    ];
    for (pointer, value) in invalid {
        let rejection = rejected(&with(&example(), pointer, value.clone()));
        assert_eq!(rejection.reason, RejectReason::Invalid, "{pointer} = {value}");
        assert!(rejection.detail.starts_with("routing"), "{}", rejection.detail);
    }
}

// --- Row: initial_message --------------------------------------------------------------------------------------

#[test]
fn initial_message_is_1_to_2000_chars() {
    assert!(check(&with(&minimal(), "/initial_message", json!("é".repeat(2000)))).is_ok());
    assert!(check(&with(&minimal(), "/initial_message", json!("line 1\nline 2"))).is_ok());
    for message in [String::new(), "é".repeat(2001)] {
        assert_eq!(
            rejected(&with(&minimal(), "/initial_message", json!(message))).reason,
            RejectReason::Invalid
        );
    }
}

// --- What a rejection carries -----------------------------------------------------------------------------------

#[test]
fn rejection_carries_well_formed_ids_and_consent() {
    let request = with(&example(), "/attributes/email", json!("ada@example.com"));
    let rejection = rejected(&request);
    assert_eq!(
        rejection.request_id.as_deref(),
        Some("7b0c1a52-6f0e-4d2a-9a43-0f7f3c2b1d11")
    );
    assert_eq!(rejection.guest_id.as_deref(), Some("guest_a8f3c91e-4b2d"));
    assert_eq!(
        rejection.consent,
        Some(Consent {
            data_processing: true,
            marketing: false
        })
    );

    // The id row: the well-formed one of the two is still carried.
    let rejection = rejected(&with(&example(), "/guest_id", json!("bad id")));
    assert_eq!(
        rejection.request_id.as_deref(),
        Some("7b0c1a52-6f0e-4d2a-9a43-0f7f3c2b1d11")
    );
    assert_eq!(rejection.guest_id, None);
    let rejection = rejected(&with(&example(), "/request_id", json!(7)));
    assert_eq!(
        (rejection.request_id, rejection.guest_id.as_deref()),
        (None, Some("guest_a8f3c91e-4b2d"))
    );

    // Consent that is declined is still a well-formed record.
    let rejection = rejected(&with(&example(), "/consent/data_processing", json!(false)));
    assert_eq!(
        rejection.consent,
        Some(Consent {
            data_processing: false,
            marketing: false
        })
    );
    assert_eq!(rejected(&with(&example(), "/consent", json!("yes"))).consent, None);

    // Malformed by an unknown field: the tree was parsed, the context is read from it.
    let rejection = rejected(&with(&example(), "/routing/extra", json!(1)));
    assert_eq!(rejection.reason, RejectReason::Malformed);
    assert_eq!(rejection.guest_id.as_deref(), Some("guest_a8f3c91e-4b2d"));
    assert_eq!(
        rejection.consent,
        Some(Consent {
            data_processing: true,
            marketing: false
        })
    );
    let rejection = rejected(&with(
        &with(&example(), "/extra", json!(1)),
        "/request_id",
        json!("bad id"),
    ));
    assert_eq!(rejection.request_id, None);

    // Malformed by a duplicate key: the context comes from the lenient probe.
    let body = r#"{"request_id":"r-1","guest_id":"g-1","attributes":{"a":1,"a":2},"consent":{"data_processing":true}}"#;
    let rejection = rejected_raw(body);
    assert_eq!(rejection.reason, RejectReason::Malformed);
    assert_eq!(
        (rejection.request_id.as_deref(), rejection.guest_id.as_deref()),
        (Some("r-1"), Some("g-1"))
    );
    assert_eq!(
        rejection.consent,
        Some(Consent {
            data_processing: true,
            marketing: false
        })
    );
    let body = r#"{"request_id":"r-1","request_id":"r-2","guest_id":"bad id"}"#;
    let rejection = rejected_raw(body);
    assert_eq!((rejection.request_id, rejection.guest_id), (None, None));

    // Not an object: nothing to carry.
    let rejection = rejected_raw(r#"[{"request_id":"r-1"}]"#);
    assert_eq!(rejection.request_id, None);
}

#[test]
fn detail_never_quotes_personal_values() {
    let secret = "Ada-Lovelace-1815";
    let cases = [
        with(&minimal(), "/display_name", json!(format!("{secret}\n"))),
        with(&minimal(), "/display_name", json!(secret.repeat(10))),
        with(&minimal(), "/attributes/email", json!(secret)),
        with(&minimal(), "/attributes/source", json!(secret.repeat(20))),
        with(&minimal(), "/attributes/source", json!([secret])),
        with(&minimal(), "/initial_message", json!(secret.repeat(200))),
        with(
            &with(&minimal(), "/attributes/source", json!(secret)),
            "/consent/data_processing",
            json!(false),
        ),
        with(&minimal(), "/guest_id", json!(format!("{secret} "))),
        with(&with(&minimal(), "/guest_id", json!(secret)), "/request_id", json!("")),
        with(&with(&minimal(), "/guest_id", json!(secret)), "/extra", json!(1)),
        with(&minimal(), "/routing/queue", json!(format!("{secret}\u{7}"))),
    ];
    for request in cases {
        let rejection = rejected(&request);
        assert!(!rejection.detail.contains("Ada"), "{request} -> {}", rejection.detail);
    }
    let body = format!(r#"{{"request_id":"r","guest_id":"{secret}","attributes":{{"a":"{secret}","a":1}}}}"#);
    assert!(!rejected_raw(body).detail.contains("Ada"));
    let body = format!(r#"{{"request_id":"r","display_name":"{secret}","attributes":{{"a":"{secret}", }}}}"#);
    assert!(!rejected_raw(body).detail.contains("Ada"));
}

#[test]
fn unknown_field_names_outside_the_alphabet_are_not_quoted() {
    let name = format!("line\nbreak{}", "x".repeat(200));
    let rejection = rejected(&with(&minimal(), &format!("/{name}"), json!(1)));
    assert!(
        !rejection.detail.contains("line") && rejection.detail.contains("210 characters"),
        "{}",
        rejection.detail
    );
    assert!(!rejection.detail.contains('\n'));
    assert!(rejection.detail.len() < 250, "{}", rejection.detail);
}

#[test]
fn debug_of_a_valid_request_redacts_personal_fields() {
    let valid = check(&example()).unwrap();
    let debug = format!("{valid:?}");
    assert!(!debug.contains("Ada") && !debug.contains("guest_a8f3c91e") && !debug.contains("question"));
}
