//! Sample session requests for `enqueue --sample` and the demo.

use serde_json::{Value, json};

const QUEUES: [&str; 3] = ["Web Support", "Billing", "Sales"];
const SOURCES: [&str; 3] = ["web_portal", "mobile_app", "help_center"];
const LANGUAGES: [&str; 3] = ["en", "en-GB", "fr"];

/// A valid request, different for each `n`.
pub fn valid(n: usize) -> Value {
    let request_id = uuid::Uuid::new_v4().to_string();
    json!({
        "request_id": request_id,
        "guest_id": format!("guest_{:08x}", rand::random::<u32>()),
        "display_name": format!("Guest {n}"),
        "attributes": { "source": SOURCES[n % 3], "device_type": if n.is_multiple_of(2) { "desktop" } else { "mobile" }, "visit": n as u64 },
        "consent": { "data_processing": true, "marketing": n.is_multiple_of(4) },
        "routing": { "queue": QUEUES[n % 3], "skills": ["web_support"], "language": LANGUAGES[n % 3], "priority": (n % 5) as u64 },
        "initial_message": "Hi, I have a question about my order"
    })
}

/// One invalid request body per rejection reason of the contract, labelled with the reason the
/// worker must give.
pub fn invalid_batch() -> Vec<(&'static str, Vec<u8>)> {
    let with = |f: &dyn Fn(&mut Value)| {
        let mut v = valid(0);
        f(&mut v);
        serde_json::to_vec(&v).unwrap_or_default()
    };
    vec![
        ("malformed", br#"{"request_id": "r-1", "guest_id": "#.to_vec()),
        (
            "too_large",
            with(&|v| v["initial_message"] = json!("x".repeat(70 * 1024))),
        ),
        ("invalid", with(&|v| v["guest_id"] = json!("not a valid id!"))),
        (
            "invalid",
            with(&|v| {
                let attrs: serde_json::Map<String, Value> = (0..101).map(|i| (format!("k{i}"), json!("v"))).collect();
                v["attributes"] = Value::Object(attrs);
            }),
        ),
        (
            "pii_blocked",
            with(&|v| v["attributes"]["customer_email"] = json!("ada@example.com")),
        ),
        (
            "consent_missing",
            with(&|v| v["consent"]["data_processing"] = json!(false)),
        ),
        ("malformed", with(&|v| v["unexpected_field"] = json!(1))),
    ]
}
