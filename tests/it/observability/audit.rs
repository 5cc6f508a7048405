//! Audit records (DESIGN §5) on the audit queue: one per final outcome, pseudonymised, no PII.

use std::collections::BTreeMap;

use guest_session_worker::{audit::Pseudonymizer, sim::Faults};
use secrecy::SecretString;

use super::{Secrets, WAIT};
use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_records_pseudonymise_the_guest_and_hold_no_personal_data() {
    let mut env = TestEnv::start().await;
    let secrets = Secrets::new();
    let other_guest = format!("{}-other", secrets.guest_id);
    let audit_queue = env.topology.audit_queue.clone();
    // No CRM queue is bound yet: the session is created but its event is unroutable, which is a
    // failure, recorded once (never a `created` record followed by a `failed` one).
    env.publish(body(&secrets.valid("req-a-unroutable"))).await;
    let mut deliveries = env.take(&audit_queue, 1, WAIT).await;
    env.bind_events().await;
    // Created twice for one guest, rejected twice (PII key, no consent), failed once (Genesys 400).
    env.publish(body(&secrets.valid("req-a-created-1"))).await;
    env.publish(body(&secrets.valid("req-a-created-2"))).await;
    env.publish(body(&secrets.pii_blocked("req-a-pii"))).await;
    let mut no_consent = secrets.request("req-a-consent", &other_guest);
    no_consent["consent"]["data_processing"] = serde_json::json!(false);
    env.publish(body(&no_consent)).await;
    deliveries.extend(env.take(&audit_queue, 4, WAIT).await);
    env.sim.set_faults(Faults {
        fail_next: Some(vec![400]),
        ..Faults::default()
    });
    env.publish(body(&secrets.valid("req-a-failed"))).await;
    deliveries.extend(env.take(&audit_queue, 1, WAIT).await);

    let mut records = BTreeMap::new();
    for delivery in &deliveries {
        let text = String::from_utf8(delivery.data.clone()).expect("UTF-8");
        secrets.assert_absent(&text, "an audit record");
        assert!(!text.contains(&other_guest), "{text}");
        let record: serde_json::Value = serde_json::from_str(&text).expect("audit JSON");
        for field in [
            "timestamp",
            "request_id",
            "guest_ref",
            "outcome",
            "reason",
            "latency_ms",
            "attempts",
            "routing_success",
            "validation_passed",
            "consent_data_processing",
            "consent_marketing",
            "pii_blocked",
            "privacy_compliant",
            "trace_id",
        ] {
            assert!(record.get(field).is_some(), "{field} missing in {record}");
        }
        let request_id = record["request_id"].as_str().expect("request_id").to_string();
        assert_eq!(
            delivery.properties.correlation_id().as_ref().map(|c| c.to_string()),
            Some(request_id.clone())
        );
        records.insert(request_id, record);
    }
    let ids: Vec<&String> = records.keys().collect();
    assert_eq!(
        ids,
        [
            "req-a-consent",
            "req-a-created-1",
            "req-a-created-2",
            "req-a-failed",
            "req-a-pii",
            "req-a-unroutable"
        ],
        "one record per request"
    );
    let outcome = |id: &str| {
        let r = &records[id];
        (
            r["outcome"].as_str().unwrap_or_default().to_string(),
            r["reason"].as_str().map(str::to_string),
        )
    };
    assert_eq!(outcome("req-a-created-1"), ("created".into(), None));
    assert_eq!(outcome("req-a-pii"), ("rejected".into(), Some("pii_blocked".into())));
    assert_eq!(
        outcome("req-a-consent"),
        ("rejected".into(), Some("consent_missing".into()))
    );
    assert_eq!(
        outcome("req-a-failed"),
        ("failed".into(), Some("genesys_rejected".into()))
    );
    assert_eq!(
        outcome("req-a-unroutable"),
        ("failed".into(), Some("event_unroutable".into()))
    );
    assert_eq!(records["req-a-pii"]["pii_blocked"], true);
    assert_eq!(records["req-a-consent"]["privacy_compliant"], false);
    assert_eq!(
        (
            records["req-a-pii"]["consent_data_processing"].clone(),
            records["req-a-pii"]["privacy_compliant"].clone()
        ),
        (serde_json::json!(true), serde_json::json!(false)),
        "consent does not make a request with a personal-data key compliant"
    );
    assert_eq!(records["req-a-created-1"]["privacy_compliant"], true);
    assert_eq!(records["req-a-created-1"]["routing_success"], true);
    assert_eq!(records["req-a-failed"]["attempts"], 1);

    // guest_ref: one value per guest and key, whatever the outcome; another guest, another value.
    let key_a = Pseudonymizer::new(SecretString::from(AUDIT_KEY));
    let expected = key_a.guest_ref(&secrets.guest_id);
    for id in [
        "req-a-created-1",
        "req-a-created-2",
        "req-a-pii",
        "req-a-failed",
        "req-a-unroutable",
    ] {
        assert_eq!(records[id]["guest_ref"].as_str(), Some(expected.as_str()), "{id}");
    }
    assert_eq!(
        records["req-a-consent"]["guest_ref"].as_str(),
        Some(key_a.guest_ref(&other_guest).as_str())
    );
    assert_ne!(key_a.guest_ref(&other_guest), expected);

    // A worker with another key gives the same guest another, equally stable, guest_ref.
    env.stop_worker().await;
    env.settings.audit_key = SecretString::from("another-audit-key");
    env.start_worker().await;
    env.publish(body(&secrets.valid("req-a-key-b"))).await;
    let rekeyed = env.take(&audit_queue, 1, WAIT).await;
    let record: serde_json::Value = serde_json::from_slice(&rekeyed[0].data).expect("audit JSON");
    assert_eq!(record["request_id"], "req-a-key-b");
    assert_eq!(record["outcome"], "created");
    let key_b = Pseudonymizer::new(SecretString::from("another-audit-key")).guest_ref(&secrets.guest_id);
    assert_eq!(record["guest_ref"].as_str(), Some(key_b.as_str()));
    assert_ne!(key_b, expected);

    env.cleanup().await;
}
