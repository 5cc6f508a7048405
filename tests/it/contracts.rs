//! The published message contracts (`contracts/`): JSON Schemas (draft 2020-12) and the AsyncAPI
//! document. The schemas are checked against what the worker really publishes in an integration
//! run, against DESIGN.md's examples, and — for the request — against the worker's own validation
//! on a shared corpus.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    time::Duration,
};

use guest_session_worker::{
    amqp::{Topology, topology::EVENT_ROUTING_KEY, topology::REQUEST_ROUTING_KEY},
    request::{DEFAULT_PII_PATTERNS, ValidationPolicy, validate},
    sim::Faults,
};
use lapin::types::{AMQPValue, FieldTable};
use serde_json::{Value, json};

use crate::{examples::upstream_producer, helpers::*};

const WAIT: Duration = Duration::from_secs(60);

fn contracts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("contracts")
}

fn load_schema(file: &str) -> Value {
    let path = contracts_dir().join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{file} is not JSON: {e}"))
}

/// A validator that also checks `format` (date-time, uuid), which draft 2020-12 leaves optional.
fn validator(file: &str) -> jsonschema::Validator {
    jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(&load_schema(file))
        .unwrap_or_else(|e| panic!("{file} does not compile: {e}"))
}

fn errors(validator: &jsonschema::Validator, instance: &Value) -> Vec<String> {
    validator
        .iter_errors(instance)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

#[track_caller]
fn assert_valid(validator: &jsonschema::Validator, instance: &Value, what: &str) {
    let errors = errors(validator, instance);
    assert!(errors.is_empty(), "{what} breaks its schema: {errors:#?}\n{instance:#}");
}

const SCHEMAS: [&str; 5] = [
    "session-request.schema.json",
    "session-created.schema.json",
    "audit-record.schema.json",
    "dead-letter-headers.schema.json",
    "session-reply.schema.json",
];

/// An AMQP headers table as the JSON object the dead-letter schema describes.
fn headers_json(table: Option<&FieldTable>) -> Value {
    let mut object = serde_json::Map::new();
    if let Some(table) = table {
        for (key, value) in table {
            object.insert(key.as_str().to_string(), amqp_json(value));
        }
    }
    Value::Object(object)
}

fn amqp_json(value: &AMQPValue) -> Value {
    match value {
        AMQPValue::Boolean(b) => json!(b),
        AMQPValue::ShortShortInt(n) => json!(n),
        AMQPValue::ShortShortUInt(n) => json!(n),
        AMQPValue::ShortInt(n) => json!(n),
        AMQPValue::ShortUInt(n) => json!(n),
        AMQPValue::LongInt(n) => json!(n),
        AMQPValue::LongUInt(n) => json!(n),
        AMQPValue::LongLongInt(n) => json!(n),
        AMQPValue::Timestamp(n) => json!(n),
        AMQPValue::Float(f) => json!(f),
        AMQPValue::Double(f) => json!(f),
        AMQPValue::FieldTable(t) => headers_json(Some(t)),
        AMQPValue::FieldArray(items) => Value::Array(items.as_slice().iter().map(amqp_json).collect()),
        AMQPValue::Void => Value::Null,
        other => guest_session_worker::amqp::headers::value_as_string(other).map_or(Value::Null, Value::String),
    }
}

#[test]
fn every_schema_is_valid_draft_2020_12_and_accepts_its_own_examples() {
    for file in SCHEMAS {
        let schema = load_schema(file);
        assert_eq!(
            schema["$schema"], "https://json-schema.org/draft/2020-12/schema",
            "{file}"
        );
        if let Err(error) = jsonschema::meta::validate(&schema) {
            panic!("{file} is not a valid draft 2020-12 schema: {error}");
        }
        let validator = validator(file);
        let examples = schema["examples"].as_array().expect("every schema has examples");
        assert!(!examples.is_empty(), "{file}");
        for example in examples {
            assert_valid(&validator, example, &format!("an example of {file}"));
        }
    }
}

/// Every JSON pointer (`#/…`) and file (`./…`) reference of the AsyncAPI document.
fn refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("$ref", Value::String(target)) => out.push(target.clone()),
                    _ => refs(value, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

#[test]
fn asyncapi_document_references_every_schema_and_names_the_worker_topology() {
    let text = std::fs::read_to_string(contracts_dir().join("asyncapi.yaml")).expect("asyncapi.yaml");
    let doc: Value = serde_yaml_ng::from_str(&text).expect("asyncapi.yaml is YAML");
    assert_eq!(doc["asyncapi"], "3.0.0");

    let mut targets = Vec::new();
    refs(&doc, &mut targets);
    let mut files = BTreeSet::new();
    for target in &targets {
        if let Some(pointer) = target.strip_prefix('#') {
            // JSON pointers escape `/` in keys as `~1`.
            assert!(doc.pointer(pointer).is_some(), "dangling reference {target}");
        } else {
            let file = target.strip_prefix("./").unwrap_or(target);
            assert!(
                contracts_dir().join(file).is_file(),
                "{target} is not a file in contracts/"
            );
            files.insert(file.to_string());
        }
    }
    assert_eq!(
        files,
        SCHEMAS.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>(),
        "the AsyncAPI messages reference every schema"
    );

    // The channels are the worker's default topology (DESIGN §2, §4, §5).
    let topology = Topology::new("");
    let exchange = |channel: &str| -> (String, String) {
        let binding = &doc["channels"][channel]["bindings"]["amqp"]["exchange"];
        assert_eq!(doc["channels"][channel]["address"], binding["name"], "{channel}");
        assert_eq!(binding["durable"], true, "{channel}");
        (
            binding["name"].as_str().unwrap_or_default().to_string(),
            binding["type"].as_str().unwrap_or_default().to_string(),
        )
    };
    assert_eq!(
        exchange("sessionRequests"),
        (topology.request_exchange.clone(), "direct".into())
    );
    assert_eq!(
        exchange("sessionCreated"),
        (topology.crm_exchange.clone(), "topic".into())
    );
    assert_eq!(
        exchange("deadLetters"),
        (topology.dead_letter_exchange.clone(), "fanout".into())
    );
    assert_eq!(exchange("audit"), (topology.audit_exchange.clone(), "fanout".into()));
    assert_eq!(
        doc["operations"]["receiveSessionRequest"]["bindings"]["amqp"]["cc"][0],
        REQUEST_ROUTING_KEY
    );
    assert_eq!(
        doc["operations"]["sendSessionCreated"]["bindings"]["amqp"]["cc"][0],
        EVENT_ROUTING_KEY
    );
    for (name, operation) in doc["operations"].as_object().expect("operations") {
        let action = operation["action"].as_str().unwrap_or_default();
        assert!(matches!(action, "send" | "receive"), "{name}: {action}");
    }
}

/// The first ```json block after the heading that starts with `heading`.
fn design_example(design: &str, heading: &str) -> Value {
    let section = design
        .find(heading)
        .unwrap_or_else(|| panic!("DESIGN.md has no {heading:?} section"));
    let rest = &design[section..];
    let start = rest.find("```json").expect("a json block") + "```json".len();
    let end = rest[start..].find("```").expect("the block ends") + start;
    serde_json::from_str(&rest[start..end]).unwrap_or_else(|e| panic!("{heading} example is not JSON: {e}"))
}

/// Replaces DESIGN's placeholders (`"…"`, `"uuid"`) with values of the documented kind.
fn fill_placeholders(value: &mut Value, key: &str) {
    match value {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                fill_placeholders(v, k);
            }
        }
        Value::String(s) if s == "…" || s == "uuid" => {
            *s = match key {
                "event_id" | "conversation_id" | "message_id" => "0f8c2a5e-3b1d-4c6e-9a7f-2d4b6c8e0a1f".into(),
                "request_id" => "7b0c1a52-6f0e-4d2a-9a43-0f7f3c2b1d11".into(),
                "guest_id" => "guest_a8f3c91e-4b2d".into(),
                "recorded_at" => "2026-11-24T10:23:45.940Z".into(),
                other => panic!("DESIGN §4 has a placeholder in `{other}` this test does not know"),
            }
        }
        _ => {}
    }
}

#[test]
fn design_md_examples_follow_the_schemas() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/DESIGN.md");
    let Ok(design) = std::fs::read_to_string(&path) else {
        eprintln!(
            "skipped: {} not found (the contract lives beside the repository)",
            path.display()
        );
        return;
    };
    let request = design_example(&design, "## 2.");
    assert_valid(
        &validator("session-request.schema.json"),
        &request,
        "DESIGN §2's request",
    );
    assert!(
        validate(&serde_json::to_vec(&request).unwrap(), &ValidationPolicy::default()).is_ok(),
        "and the worker accepts it"
    );

    let mut event = design_example(&design, "## 4.");
    fill_placeholders(&mut event, "");
    assert_valid(
        &validator("session-created.schema.json"),
        &event,
        "DESIGN §4's event (placeholders filled in)",
    );
}

#[test]
fn the_schema_encodes_the_default_pii_patterns_the_worker_uses() {
    // Pattern `ip_address` → `[Ii][._-]*[Pp][._-]*[Aa]…`: case-insensitive, separators anywhere,
    // which is the worker's "lowercase, remove . _ -, then contains".
    let expected: BTreeSet<String> = DEFAULT_PII_PATTERNS
        .iter()
        .map(|p| {
            p.chars()
                .filter(|c| !matches!(c, '.' | '_' | '-'))
                .map(|c| format!("[{}{}]", c.to_ascii_uppercase(), c.to_ascii_lowercase()))
                .collect::<Vec<_>>()
                .join("[._-]*")
        })
        .collect();
    let schema = load_schema("session-request.schema.json");
    let found: BTreeSet<String> = schema["properties"]["attributes"]["propertyNames"]["not"]["anyOf"]
        .as_array()
        .expect("anyOf")
        .iter()
        .filter(|s| s["description"].as_str().is_some_and(|d| d.starts_with("PII")))
        .map(|s| s["pattern"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(found, expected);
}

/// Bodies with the worker's verdict (`None` = accepted, else the reason). The schema must accept
/// exactly the accepted ones.
fn corpus() -> Vec<(&'static str, Value, Option<&'static str>)> {
    let base = || {
        json!({
            "request_id": "7b0c1a52-6f0e-4d2a-9a43-0f7f3c2b1d11",
            "guest_id": "guest_a8f3c91e-4b2d",
            "display_name": "Ada",
            "attributes": { "source": "web_portal", "device_type": "desktop" },
            "consent": { "data_processing": true, "marketing": false },
            "routing": { "queue": "Web Support", "skills": ["web_support"], "language": "en", "priority": 1 },
            "initial_message": "Hi, I have a question about my order"
        })
    };
    let with = |edit: &dyn Fn(&mut Value)| {
        let mut v = base();
        edit(&mut v);
        v
    };
    let without = |field: &str| {
        let mut v = base();
        v.as_object_mut().unwrap().remove(field);
        v
    };
    let attribute = |key: &str, value: Value| with(&|v| v["attributes"][key] = value.clone());
    let many_attributes = |n: usize| {
        let attrs: serde_json::Map<String, Value> = (0..n).map(|i| (format!("k{i}"), json!(i))).collect();
        with(&|v| v["attributes"] = Value::Object(attrs.clone()))
    };
    vec![
        // Accepted.
        ("DESIGN §2 example", base(), None),
        (
            "only the required fields",
            json!({"request_id": "r-1", "guest_id": "g-1", "consent": {"data_processing": true}}),
            None,
        ),
        (
            "null optional fields mean absent",
            json!({"request_id": "r-1", "guest_id": "g-1", "display_name": null, "attributes": null,
                   "routing": null, "initial_message": null,
                   "consent": {"data_processing": true, "marketing": null}}),
            None,
        ),
        (
            "null routing members",
            with(&|v| v["routing"] = json!({"queue": null, "skills": null, "language": null, "priority": null})),
            None,
        ),
        (
            "number, boolean and empty-string attribute values",
            with(&|v| v["attributes"] = json!({"visits": 3, "score": -1.5, "returning": true, "note": ""})),
            None,
        ),
        (
            "routing bounds",
            with(&|v| v["routing"] = json!({"priority": 10, "language": "pt-BR", "skills": [], "queue": "q"})),
            None,
        ),
        (
            "an id of every allowed character",
            with(&|v| v["request_id"] = json!("Az09._:-")),
            None,
        ),
        (
            "a 128-character id",
            with(&|v| v["guest_id"] = json!("g".repeat(128))),
            None,
        ),
        (
            "a 64-character display name",
            with(&|v| v["display_name"] = json!("é".repeat(64))),
            None,
        ),
        (
            "a 256-character attribute value",
            attribute("note", json!("x".repeat(256))),
            None,
        ),
        (
            "a 2000-character message with line breaks",
            with(&|v| v["initial_message"] = json!(format!("{}\n", "m".repeat(1999)))),
            None,
        ),
        (
            "dots and near-miss keys",
            attribute("routing_hint.e-mai0", json!("x")),
            None,
        ),
        ("100 attributes", many_attributes(100), None),
        // Refused: the body.
        ("not an object", json!(["a"]), Some("malformed")),
        ("a JSON string", json!("hello"), Some("malformed")),
        (
            "an unknown top-level field",
            with(&|v| v["extra"] = json!(1)),
            Some("malformed"),
        ),
        (
            "an unknown consent field",
            with(&|v| v["consent"]["extra"] = json!(true)),
            Some("malformed"),
        ),
        (
            "an unknown routing field",
            with(&|v| v["routing"]["extra"] = json!(1)),
            Some("malformed"),
        ),
        // Refused: ids.
        ("no request_id", without("request_id"), Some("invalid")),
        (
            "a null guest_id",
            with(&|v| v["guest_id"] = Value::Null),
            Some("invalid"),
        ),
        (
            "a space in an id",
            with(&|v| v["request_id"] = json!("a b")),
            Some("invalid"),
        ),
        (
            "a 129-character id",
            with(&|v| v["request_id"] = json!("r".repeat(129))),
            Some("invalid"),
        ),
        (
            "a numeric guest_id",
            with(&|v| v["guest_id"] = json!(42)),
            Some("invalid"),
        ),
        // Refused: display name.
        (
            "an empty display name",
            with(&|v| v["display_name"] = json!("")),
            Some("invalid"),
        ),
        (
            "a control character in the display name",
            with(&|v| v["display_name"] = json!("A\u{7}da")),
            Some("invalid"),
        ),
        (
            "a C1 control character in the display name",
            with(&|v| v["display_name"] = json!("A\u{85}da")),
            Some("invalid"),
        ),
        (
            "a 65-character display name",
            with(&|v| v["display_name"] = json!("n".repeat(65))),
            Some("invalid"),
        ),
        // Refused: attributes.
        ("101 attributes", many_attributes(101), Some("invalid")),
        (
            "attributes as an array",
            with(&|v| v["attributes"] = json!([])),
            Some("invalid"),
        ),
        (
            "a space in an attribute key",
            attribute("bad key", json!("x")),
            Some("invalid"),
        ),
        (
            "a 65-character attribute key",
            attribute(&"k".repeat(65), json!("x")),
            Some("invalid"),
        ),
        (
            "a reserved routing. key",
            attribute("routing.queue", json!("x")),
            Some("invalid"),
        ),
        (
            "a reserved consent. key",
            attribute("consent.marketing", json!("x")),
            Some("invalid"),
        ),
        (
            "a null attribute value",
            attribute("source", Value::Null),
            Some("invalid"),
        ),
        (
            "an object attribute value",
            attribute("source", json!({"a": 1})),
            Some("invalid"),
        ),
        (
            "a 257-character attribute value",
            attribute("note", json!("x".repeat(257))),
            Some("invalid"),
        ),
        // Refused: PII keys.
        ("E_Mail", attribute("E_Mail", json!("x")), Some("pii_blocked")),
        (
            "customerPhone",
            attribute("customerPhone", json!("x")),
            Some("pii_blocked"),
        ),
        ("ip.address", attribute("ip.address", json!("x")), Some("pii_blocked")),
        (
            "zip_address contains ip_address",
            attribute("zip_address", json!("x")),
            Some("pii_blocked"),
        ),
        ("S-S-N", attribute("S-S-N", json!(1)), Some("pii_blocked")),
        (
            "credit_card_last4",
            attribute("credit_card_last4", json!("1234")),
            Some("pii_blocked"),
        ),
        ("PassWord", attribute("PassWord", json!(true)), Some("pii_blocked")),
        // Refused: consent.
        ("no consent", without("consent"), Some("consent_missing")),
        (
            "null consent",
            with(&|v| v["consent"] = Value::Null),
            Some("consent_missing"),
        ),
        (
            "consent refused",
            with(&|v| v["consent"]["data_processing"] = json!(false)),
            Some("consent_missing"),
        ),
        (
            "consent as text",
            with(&|v| v["consent"]["data_processing"] = json!("yes")),
            Some("consent_missing"),
        ),
        (
            "consent without data_processing",
            with(&|v| v["consent"] = json!({"marketing": true})),
            Some("consent_missing"),
        ),
        (
            "marketing as a number",
            with(&|v| v["consent"]["marketing"] = json!(1)),
            Some("consent_missing"),
        ),
        // Refused: routing.
        (
            "priority 11",
            with(&|v| v["routing"]["priority"] = json!(11)),
            Some("invalid"),
        ),
        (
            "priority -1",
            with(&|v| v["routing"]["priority"] = json!(-1)),
            Some("invalid"),
        ),
        (
            "priority as text",
            with(&|v| v["routing"]["priority"] = json!("1")),
            Some("invalid"),
        ),
        (
            "21 skills",
            with(&|v| v["routing"]["skills"] = json!(vec!["s"; 21])),
            Some("invalid"),
        ),
        (
            "an empty skill",
            with(&|v| v["routing"]["skills"] = json!([""])),
            Some("invalid"),
        ),
        (
            "language `english`",
            with(&|v| v["routing"]["language"] = json!("english")),
            Some("invalid"),
        ),
        (
            "language `e`",
            with(&|v| v["routing"]["language"] = json!("e")),
            Some("invalid"),
        ),
        (
            "routing as an array",
            with(&|v| v["routing"] = json!([])),
            Some("invalid"),
        ),
        (
            "an empty queue",
            with(&|v| v["routing"]["queue"] = json!("")),
            Some("invalid"),
        ),
        // Refused: initial message.
        (
            "an empty initial message",
            with(&|v| v["initial_message"] = json!("")),
            Some("invalid"),
        ),
        (
            "a 2001-character initial message",
            with(&|v| v["initial_message"] = json!("m".repeat(2001))),
            Some("invalid"),
        ),
    ]
}

#[test]
fn the_request_schema_accepts_and_refuses_what_the_worker_does() {
    let schema = validator("session-request.schema.json");
    let policy = ValidationPolicy::default();
    let corpus = corpus();
    assert!(corpus.len() >= 30);
    let mut disagreements = Vec::new();
    let mut reasons = BTreeSet::new();
    for (name, body, expected) in &corpus {
        let worker = validate(&serde_json::to_vec(body).unwrap(), &policy)
            .err()
            .map(|r| r.reason.as_str());
        // The corpus states the worker's verdict, so a change in either side shows up here.
        assert_eq!(worker, *expected, "the worker's verdict on {name:?}");
        reasons.extend(worker);
        if schema.is_valid(body) != worker.is_none() {
            disagreements.push(format!(
                "{name}: worker {worker:?}, schema errors {:?}",
                errors(&schema, body)
            ));
        }
    }
    assert!(
        disagreements.is_empty(),
        "schema and worker disagree: {disagreements:#?}"
    );
    // Every reason the schema can express is in the corpus (too_large cannot be: see below).
    assert_eq!(
        reasons,
        BTreeSet::from(["consent_missing", "invalid", "malformed", "pii_blocked"])
    );
}

/// The rules the schema's description lists as not expressible in JSON Schema. They are kept out
/// of the corpus above on purpose; here they are pinned down as known differences, so that the
/// description stays true.
#[test]
fn rules_json_schema_cannot_express_are_the_documented_ones() {
    let schema = validator("session-request.schema.json");
    let policy = ValidationPolicy::default();
    let design = || {
        json!({
            "request_id": "r-1", "guest_id": "g-1",
            "consent": { "data_processing": true },
            "routing": { "priority": 1 }
        })
    };

    // (1) Over 64 KiB of body (here: padding) is too_large.
    let mut padded = serde_json::to_vec(&design()).unwrap();
    padded.extend(std::iter::repeat_n(b' ', 70 * 1024));
    // (2) Duplicate keys: a schema sees the parser's merged object.
    let duplicated =
        br#"{"request_id":"r-1","guest_id":"g-1","consent":{"data_processing":false,"data_processing":true}}"#.to_vec();
    // (3) The 2048-byte budget of custom attributes.
    let mut over_budget = design();
    for i in 0..9 {
        over_budget["attributes"][format!("note{i}")] = json!("x".repeat(250));
    }
    let over_budget = serde_json::to_vec(&over_budget).unwrap();
    // (4) A priority written as a float.
    let float_priority =
        br#"{"request_id":"r-1","guest_id":"g-1","consent":{"data_processing":true},"routing":{"priority":1.0}}"#
            .to_vec();

    for (rule, body, reason) in [
        ("body size", padded, "too_large"),
        ("duplicate keys", duplicated, "malformed"),
        ("custom attribute budget", over_budget, "invalid"),
        ("integer literal", float_priority, "invalid"),
    ] {
        let worker = validate(&body, &policy).err().map(|r| r.reason.as_str());
        assert_eq!(worker, Some(reason), "{rule}");
        let parsed: Value = serde_json::from_slice(&body).expect("still JSON");
        assert!(
            schema.is_valid(&parsed),
            "{rule}: the schema now refuses this; move it into the corpus and the description"
        );
    }
}

/// Bodies for the integration run: `(request id, body, outcome)`.
fn integration_requests() -> Vec<(String, Vec<u8>, &'static str)> {
    let created = |id: &str, edit: &dyn Fn(&mut Value)| {
        let mut v = valid_request(id);
        edit(&mut v);
        (id.to_string(), body(&v), "created")
    };
    let mut requests = vec![
        created("contract-full", &|_| {}),
        created(
            "contract-minimal",
            &|v| {
                *v =
                    json!({"request_id": "contract-minimal", "guest_id": "g-min", "consent": {"data_processing": true}})
            },
        ),
        created("contract-scalars", &|v| {
            v["attributes"] = json!({"visits": 3, "score": 0.5, "returning": true});
            v["routing"] = json!({"priority": 0});
        }),
        created("contract-empty-skills", &|v| v["routing"] = json!({"skills": []})),
    ];
    let rejected = |id: &str, edit: &dyn Fn(&mut Value), reason: &'static str| {
        let mut v = valid_request(id);
        edit(&mut v);
        (id.to_string(), body(&v), reason)
    };
    requests.extend([
        (
            "contract-malformed".to_string(),
            br#"{"request_id": "contract-malformed", "guest_id": "#.to_vec(),
            "malformed",
        ),
        rejected(
            "contract-too-large",
            &|v| v["initial_message"] = json!("x".repeat(70 * 1024)),
            "too_large",
        ),
        rejected("contract-invalid", &|v| v["display_name"] = json!(""), "invalid"),
        rejected(
            "contract-pii",
            &|v| v["attributes"]["customer_email"] = json!("ada@example.com"),
            "pii_blocked",
        ),
        rejected(
            "contract-consent",
            &|v| v["consent"]["data_processing"] = json!(false),
            "consent_missing",
        ),
    ]);
    requests
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_worker_publishes_follows_the_schemas() {
    let mut env = TestEnv::start().await;
    let events_queue = env.bind_events().await;
    let event_schema = validator("session-created.schema.json");
    let audit_schema = validator("audit-record.schema.json");
    let dead_letter_schema = validator("dead-letter-headers.schema.json");
    let reply_schema = validator("session-reply.schema.json");

    let requests = integration_requests();
    let created = requests.iter().filter(|r| r.2 == "created").count();
    for (_, body, _) in &requests {
        env.publish(body.clone()).await;
    }
    // Events: one per created session.
    let events = env.take(&events_queue, created, WAIT).await;
    for delivery in &events {
        let event: Value = serde_json::from_slice(&delivery.data).expect("event JSON");
        assert_valid(&event_schema, &event, "a session.created event");
        assert_eq!(
            delivery.properties.correlation_id().as_ref().map(|c| c.as_str()),
            event["request_id"].as_str()
        );
        // The schema is what keeps a credential out: a JWT in the event would break it.
        let mut with_jwt = event.clone();
        with_jwt["session"]["jwt"] = json!("eyJ...");
        assert!(!event_schema.is_valid(&with_jwt));
    }

    // Genesys refuses the next call: a genesys_rejected dead letter with Genesys' context id.
    env.sim.set_faults(Faults {
        fail_next: Some(vec![400]),
        ..Default::default()
    });
    env.publish(body(&valid_request("contract-genesys-400"))).await;

    let rejected = requests.len() - created + 1;
    let dead = env.take(&env.topology.dead_letter_queue.clone(), rejected, WAIT).await;
    let mut kinds = BTreeSet::new();
    for delivery in &dead {
        let headers = headers_json(delivery.properties.headers().as_ref());
        assert_valid(&dead_letter_schema, &headers, "dead-letter headers");
        kinds.insert(headers["x-error-kind"].as_str().unwrap_or_default().to_string());
        if headers["x-error-kind"] == "genesys_rejected" {
            assert!(headers["x-genesys-context-id"].is_string(), "{headers}");
        }
    }
    let mut expected: BTreeSet<String> = requests
        .iter()
        .filter(|r| r.2 != "created")
        .map(|r| r.2.to_string())
        .collect();
    expected.insert("genesys_rejected".into());
    assert_eq!(kinds, expected);

    // Audit: one record per final outcome, whatever it was.
    let audits = env
        .take(&env.topology.audit_queue.clone(), requests.len() + 1, WAIT)
        .await;
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    for delivery in &audits {
        let record: Value = serde_json::from_slice(&delivery.data).expect("audit JSON");
        assert_valid(&audit_schema, &record, "an audit record");
        *outcomes
            .entry(record["outcome"].as_str().unwrap_or_default().to_string())
            .or_default() += 1;
    }
    assert_eq!(
        outcomes,
        BTreeMap::from([
            ("created".to_string(), created),
            ("failed".to_string(), 1),
            ("rejected".to_string(), requests.len() - created),
        ])
    );

    // Replies, as the upstream_producer example receives them: created and rejected.
    for (request, outcome) in [
        (valid_request("contract-reply-ok"), "created"),
        (
            json!({"request_id": "contract-reply-no", "guest_id": "g", "consent": {"data_processing": false}}),
            "rejected",
        ),
    ] {
        let reply = upstream_producer::request_session(&env.connection, &env.topology, body(&request), WAIT)
            .await
            .expect("a reply");
        let reply: Value = serde_json::from_slice(&reply.body).expect("reply JSON");
        assert_valid(&reply_schema, &reply, "a reply");
        assert_eq!(reply["outcome"], outcome);
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_chat_outputs_follow_the_schemas_and_keep_the_jwt_out_of_the_event() {
    let mut env = TestEnv::start_with(EnvOptions {
        start_worker: false,
        ..Default::default()
    })
    .await;
    env.genesys_config = env.genesys_config.clone().with_guest_chat(
        env.sim_config.organization_id.clone(),
        env.sim_config.deployment_id.clone(),
        "Web Support",
    );
    env.start_worker().await;
    let events_queue = env.bind_events().await;

    let reply = upstream_producer::request_session(
        &env.connection,
        &env.topology,
        body(&valid_request("contract-guest-chat")),
        WAIT,
    )
    .await
    .expect("a reply");
    let reply: Value = serde_json::from_slice(&reply.body).expect("reply JSON");
    assert_valid(&validator("session-reply.schema.json"), &reply, "a Guest Chat reply");
    assert_eq!(reply["session"]["api"], "guest_chat");
    assert!(
        reply["session"]["jwt"].is_string(),
        "the requester gets the JWT: {reply}"
    );

    let events = env.take(&events_queue, 1, WAIT).await;
    let event: Value = serde_json::from_slice(&events[0].data).expect("event JSON");
    assert_valid(&validator("session-created.schema.json"), &event, "a Guest Chat event");
    assert!(event["session"]["member_id"].is_string(), "{event}");
    assert!(
        event["session"].get("message_id").is_some_and(Value::is_null),
        "DESIGN §4 keeps the key: {event}"
    );
    assert!(
        !String::from_utf8_lossy(&events[0].data).contains(reply["session"]["jwt"].as_str().unwrap_or("-")),
        "the CRM never sees the JWT"
    );
    let audits = env.take(&env.topology.audit_queue.clone(), 1, WAIT).await;
    let record: Value = serde_json::from_slice(&audits[0].data).expect("audit JSON");
    assert_valid(
        &validator("audit-record.schema.json"),
        &record,
        "a Guest Chat audit record",
    );
    env.cleanup().await;
}
