//! A hostile corpus: every body is dead-lettered with the reason DESIGN §2 names, unchanged, and
//! the worker keeps consuming afterwards.

use std::{collections::HashMap, time::Duration};

use guest_session_worker::pipeline::dead_letter;

use crate::helpers::*;

const WAIT: Duration = Duration::from_secs(60);

fn with(edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let mut value = valid_request("hostile");
    edit(&mut value);
    body(&value)
}

/// (case, body, expected `x-error-kind`)
fn corpus() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let nested = |depth: usize| {
        format!(
            r#"{{"request_id":"deep","guest_id":"g","consent":{{"data_processing":true,"marketing":false}},"attributes":{{"k":{}1{}}}}}"#,
            "[".repeat(depth),
            "]".repeat(depth)
        )
        .into_bytes()
    };
    let mut ten_mib = with(|v| v["initial_message"] = serde_json::json!(""));
    ten_mib.truncate(ten_mib.len() - 1);
    ten_mib.extend(std::iter::repeat_n(b' ', 10 * 1024 * 1024));
    ten_mib.push(b'}');
    let pii = |key: &'static str| with(move |v| v["attributes"] = serde_json::json!({ key: "x" }));
    vec![
        ("nested 200 deep", nested(200), "malformed"),
        ("nested 100k deep", nested(100_000), "too_large"),
        ("nested under the size limit", "[".repeat(60_000).into_bytes(), "malformed"),
        ("10 MiB body", ten_mib, "too_large"),
        (
            "invalid UTF-8",
            b"{\"request_id\":\"utf8-\xff\xfe\",\"guest_id\":\"g\"}".to_vec(),
            "malformed",
        ),
        (
            "lone surrogate escape",
            br#"{"request_id":"s","guest_id":"g","display_name":"\udc00"}"#.to_vec(),
            "malformed",
        ),
        ("raw NUL bytes", b"{\"request_id\":\"nul\x00\",\"guest_id\":\"g\"}".to_vec(), "malformed"),
        (
            "NUL in display_name",
            with(|v| v["display_name"] = serde_json::json!("A\u{0}da")),
            "invalid",
        ),
        ("NUL in request_id", with(|v| v["request_id"] = serde_json::json!("r\u{0}")), "invalid"),
        (
            "number beyond f64",
            with(|v| v["routing"]["priority"] = serde_json::json!(0)).replace_first(b"\"priority\":0", b"\"priority\":1e400"),
            "malformed",
        ),
        (
            "30-digit priority",
            with(|v| v["routing"]["priority"] = serde_json::json!(0))
                .replace_first(b"\"priority\":0", b"\"priority\":123456789012345678901234567890"),
            "invalid",
        ),
        (
            "duplicate consent flag",
            br#"{"request_id":"dup","guest_id":"g","consent":{"data_processing":false,"data_processing":true}}"#.to_vec(),
            "malformed",
        ),
        (
            "duplicate request_id",
            br#"{"request_id":"a","request_id":"b","guest_id":"g","consent":{"data_processing":true,"marketing":false}}"#
                .to_vec(),
            "malformed",
        ),
        ("JSON array", br#"[{"request_id":"arr"}]"#.to_vec(), "malformed"),
        ("JSON string", br#""request""#.to_vec(), "malformed"),
        ("JSON null", b"null".to_vec(), "malformed"),
        ("empty body", Vec::new(), "malformed"),
        ("key EMAIL", pii("EMAIL"), "pii_blocked"),
        ("key Phone_Number", pii("Phone_Number"), "pii_blocked"),
        ("key e-mail", pii("e-mail"), "pii_blocked"),
        ("key user_email_2", pii("user_email_2"), "pii_blocked"),
    ]
}

trait ReplaceFirst {
    fn replace_first(self, from: &[u8], to: &[u8]) -> Vec<u8>;
}

impl ReplaceFirst for Vec<u8> {
    fn replace_first(self, from: &[u8], to: &[u8]) -> Vec<u8> {
        let at = self
            .windows(from.len())
            .position(|w| w == from)
            .expect("pattern present");
        [&self[..at], to, &self[at + from.len()..]].concat()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_corpus_is_dead_lettered_with_its_reasons_and_the_worker_stays_up() {
    let mut env = TestEnv::start().await;
    let events = env.bind_events().await;
    let corpus = corpus();
    let mut expected = HashMap::new();
    for (i, (case, payload, reason)) in corpus.iter().enumerate() {
        // The message id names the case, whatever the body says.
        let message_id = format!("hostile-{i}");
        env.publish_with(payload.clone(), |p| p.with_message_id(message_id.as_str().into()))
            .await;
        expected.insert(message_id, (*case, payload, *reason));
    }

    let dead = env
        .take(&env.topology.dead_letter_queue.clone(), corpus.len(), WAIT)
        .await;
    for delivery in &dead {
        let message_id = delivery
            .properties
            .message_id()
            .as_ref()
            .map(|m| m.to_string())
            .expect("dead letters keep the message id");
        let (case, payload, reason) = expected.remove(&message_id).expect("one dead letter per case");
        assert_eq!(
            header(delivery, dead_letter::KIND).as_deref(),
            Some(reason),
            "{case}: {:?}",
            header(delivery, dead_letter::DETAIL)
        );
        assert!(&delivery.data == payload, "{case}: the body is dead-lettered unchanged");
        let detail = header(delivery, dead_letter::DETAIL).unwrap_or_default();
        assert!(detail.len() < 2048, "{case}: a bounded detail, not an echo of the body");
    }
    let missing: Vec<&str> = expected.values().map(|(case, _, _)| *case).collect();
    assert!(missing.is_empty(), "cases without a dead letter: {missing:?}");

    // Still consuming, still creating sessions.
    env.publish(body(&valid_request("after-hostile"))).await;
    let created = env.take(&events, 1, WAIT).await;
    assert_eq!(
        created[0].properties.correlation_id().as_ref().map(|c| c.to_string()),
        Some("after-hostile".to_string())
    );
    assert!(env.readiness.is_ready());
    assert_eq!(env.sim.stats().sessions_created, 1, "no hostile body reached Genesys");
    env.cleanup().await;
}
