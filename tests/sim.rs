//! The Genesys simulator over real sockets.

use guest_session_worker::sim::{self, Faults, RunningSim, SimConfig, SimStats, Storm};
use reqwest::{Client, Response, StatusCode};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const OPEN_PATH: &str = "/api/v2/conversations/messages/5c0d1e7a-0000-4000-8000-00000000a001/inbound/open/message";
const GUEST_PATH: &str = "/api/v2/webchat/guest/conversations";

async fn start(config: SimConfig) -> (RunningSim, Client) {
    let sim = match sim::spawn(config).await {
        Ok(sim) => sim,
        Err(e) => panic!("simulator did not start: {e}"),
    };
    (sim, Client::new())
}

async fn body(response: Response) -> Value {
    response.json::<Value>().await.unwrap_or(Value::Null)
}

fn header(response: &Response, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

async fn token(sim: &RunningSim, client: &Client) -> String {
    let response = client
        .post(format!("{}/oauth/token", sim.base_url()))
        .basic_auth("demo-client", Some("demo-secret"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .expect("token request");
    assert_eq!(response.status(), StatusCode::OK);
    body(response).await["access_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn open_message(message_id: &str) -> Value {
    json!({
        "channel": {
            "messageId": message_id,
            "time": "2026-11-24T10:23:45.123Z",
            "from": { "nickname": "Ada", "id": "guest_a8f3c91e-4b2d", "idType": "Opaque" },
            "metadata": { "customAttributes": { "source": "web_portal", "queue": "Web Support" } }
        },
        "text": "Hi, I have a question about my order"
    })
}

async fn send_open(sim: &RunningSim, client: &Client, token: &str, message: &Value) -> Response {
    client
        .post(format!("{}{OPEN_PATH}?prefetchConversationId=true", sim.base_url()))
        .bearer_auth(token)
        .json(message)
        .send()
        .await
        .expect("open message request")
}

fn guest_request(deployment_id: &str) -> Value {
    json!({
        "organizationId": "5c0d1e7a-0000-4000-8000-00000000b001",
        "deploymentId": deployment_id,
        "routingTarget": { "targetType": "QUEUE", "targetAddress": "Web Support",
                           "skills": ["web_support"], "language": "en", "priority": 1 },
        "memberInfo": { "displayName": "Ada", "customFields": { "source": "web_portal" } }
    })
}

async fn send_guest(sim: &RunningSim, client: &Client, request: &Value) -> Response {
    client
        .post(format!("{}{GUEST_PATH}", sim.base_url()))
        .json(request)
        .send()
        .await
        .expect("guest chat request")
}

/// Asserts a Genesys error body with the given status and a contextId equal to the header's.
async fn assert_error_body(response: Response, status: u16) -> Value {
    assert_eq!(response.status().as_u16(), status);
    let correlation = header(&response, "inin-correlation-id");
    let b = body(response).await;
    assert_eq!(b["status"], status, "{b}");
    assert!(b["code"].as_str().is_some_and(|c| !c.is_empty()), "{b}");
    assert!(b["message"].is_string(), "{b}");
    assert_eq!(b["messageParams"], json!({}), "{b}");
    assert_eq!(b["details"], json!([]), "{b}");
    assert_eq!(b["errors"], json!([]), "{b}");
    let context = b["contextId"].as_str().unwrap_or_default();
    assert!(uuid::Uuid::parse_str(context).is_ok(), "contextId {context}");
    assert_eq!(correlation.as_deref(), Some(context));
    b
}

#[tokio::test]
async fn token_success_bad_client_and_bad_grant() {
    let (sim, client) = start(SimConfig::for_tests()).await;
    let url = format!("{}/oauth/token", sim.base_url());

    let ok = client
        .post(&url)
        .basic_auth("demo-client", Some("demo-secret"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .expect("send");
    assert_eq!(ok.status(), StatusCode::OK);
    let b = body(ok).await;
    assert!(b["access_token"].as_str().is_some_and(|t| t.len() > 20));
    assert_eq!(b["token_type"], "bearer");
    assert_eq!(b["expires_in"], 86_400);

    for (id, secret) in [("demo-client", "wrong"), ("other", "demo-secret")] {
        let bad = client
            .post(&url)
            .basic_auth(id, Some(secret))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .expect("send");
        assert_eq!(bad.status(), StatusCode::UNAUTHORIZED);
        let b = body(bad).await;
        assert_eq!(b["error"], "invalid_client");
        assert!(b["description"].is_string() && b["error_description"].is_string());
    }
    let missing = client
        .post(&url)
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .expect("send");
    assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);

    for form in [vec![("grant_type", "password")], vec![]] {
        let bad = client
            .post(&url)
            .basic_auth("demo-client", Some("demo-secret"))
            .form(&form)
            .send()
            .await
            .expect("send");
        assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
        assert_eq!(body(bad).await["error"], "unsupported_grant_type");
    }

    let s = sim.stats();
    assert_eq!(s.token_requests, 6);
    assert_eq!((s.unauthorized, s.rejected, s.api_requests), (3, 2, 0));
    sim.shutdown().await;
}

#[tokio::test]
async fn open_message_creates_and_recognises_duplicates() {
    let (sim, client) = start(SimConfig::for_tests()).await;
    let t = token(&sim, &client).await;

    let first = send_open(&sim, &client, &t, &open_message("req-1")).await;
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&first, "inin-ratelimit-allowed").as_deref(), Some("300"));
    assert_eq!(header(&first, "inin-ratelimit-count").as_deref(), Some("1"));
    assert!(header(&first, "inin-ratelimit-reset").is_some());
    assert!(header(&first, "inin-correlation-id").is_some());
    let a = body(first).await;
    assert!(
        uuid::Uuid::parse_str(a["conversationId"].as_str().unwrap_or_default()).is_ok(),
        "{a}"
    );
    assert!(a["id"].as_str().is_some_and(|id| !id.is_empty()));
    assert_eq!(a["channel"]["messageId"], "req-1");
    assert_eq!(a["channel"]["from"]["id"], "guest_a8f3c91e-4b2d");
    assert_eq!(a["channel"]["metadata"]["customAttributes"]["source"], "web_portal");
    assert_eq!(a["type"], "Text");
    assert_eq!(a["direction"], "Inbound");
    assert_eq!(a["text"], "Hi, I have a question about my order");

    let again = body(send_open(&sim, &client, &t, &open_message("req-1")).await).await;
    assert_eq!(again["conversationId"], a["conversationId"]);
    assert_eq!(again["id"], a["id"]);

    let other = body(send_open(&sim, &client, &t, &open_message("req-2")).await).await;
    assert_ne!(other["conversationId"], a["conversationId"]);

    // Without prefetchConversationId there is no conversationId.
    let plain = client
        .post(format!("{}{OPEN_PATH}", sim.base_url()))
        .bearer_auth(&t)
        .json(&open_message("req-3"))
        .send()
        .await
        .expect("send");
    assert_eq!(plain.status(), StatusCode::ACCEPTED);
    assert!(body(plain).await.get("conversationId").is_none());

    let s = sim.stats();
    assert_eq!(
        s,
        SimStats {
            token_requests: 1,
            api_requests: 4,
            sessions_created: 3,
            duplicates: 1,
            ..SimStats::default()
        }
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn open_message_needs_a_valid_bearer_token() {
    let (sim, client) = start(SimConfig::for_tests()).await;
    let url = format!("{}{OPEN_PATH}", sim.base_url());

    let missing = client.post(&url).json(&open_message("m")).send().await.expect("send");
    let b = assert_error_body(missing, 401).await;
    assert_eq!(b["code"], "authentication.required");

    let unknown = client
        .post(&url)
        .bearer_auth("not-a-token")
        .json(&open_message("m"))
        .send()
        .await
        .expect("send");
    assert!(header(&unknown, "inin-ratelimit-allowed").is_none());
    let b = assert_error_body(unknown, 401).await;
    assert_eq!(b["code"], "bad.credentials");

    // Revocation invalidates tokens issued so far, not later ones.
    let t = token(&sim, &client).await;
    assert_eq!(
        send_open(&sim, &client, &t, &open_message("m1")).await.status(),
        StatusCode::ACCEPTED
    );
    sim.set_faults(Faults {
        revoke_tokens: Some(true),
        ..Faults::default()
    });
    assert_error_body(send_open(&sim, &client, &t, &open_message("m2")).await, 401).await;
    let fresh = token(&sim, &client).await;
    assert_eq!(
        send_open(&sim, &client, &fresh, &open_message("m2")).await.status(),
        StatusCode::ACCEPTED
    );

    assert_eq!(sim.stats().unauthorized, 3);
    sim.shutdown().await;
}

#[tokio::test]
async fn expired_token_is_refused() {
    let config = SimConfig {
        token_ttl_secs: 1,
        ..SimConfig::for_tests()
    };
    let (sim, client) = start(config).await;
    let response = client
        .post(format!("{}/oauth/token", sim.base_url()))
        .basic_auth("demo-client", Some("demo-secret"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .expect("send");
    let b = body(response).await;
    assert_eq!(b["expires_in"], 1);
    let t = b["access_token"].as_str().unwrap_or_default().to_owned();
    assert_eq!(
        send_open(&sim, &client, &t, &open_message("a")).await.status(),
        StatusCode::ACCEPTED
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let b = assert_error_body(send_open(&sim, &client, &t, &open_message("b")).await, 401).await;
    assert_eq!(b["code"], "bad.credentials");
    sim.shutdown().await;
}

#[tokio::test]
async fn open_message_validation() {
    let (sim, client) = start(SimConfig::for_tests()).await;
    let t = token(&sim, &client).await;

    // customAttributes over 2048 bytes → 413.
    let mut big = open_message("big");
    big["channel"]["metadata"]["customAttributes"]["blob"] = json!("x".repeat(2048));
    let b = assert_error_body(send_open(&sim, &client, &t, &big).await, 413).await;
    assert!(b["message"].as_str().unwrap_or_default().contains("2048"));

    // Bad shapes → 400 with a contextId.
    let mut no_from = open_message("s1");
    no_from["channel"].as_object_mut().map(|c| c.remove("from"));
    let mut no_id_type = open_message("s2");
    no_id_type["channel"]["from"]
        .as_object_mut()
        .map(|f| f.remove("idType"));
    let mut no_time = open_message("s3");
    no_time["channel"].as_object_mut().map(|c| c.remove("time"));
    let mut not_string_attr = open_message("s4");
    not_string_attr["channel"]["metadata"]["customAttributes"]["n"] = json!(5);
    for bad in [
        json!({"text": "no channel"}),
        no_from,
        no_id_type,
        no_time,
        not_string_attr,
    ] {
        let b = assert_error_body(send_open(&sim, &client, &t, &bad).await, 400).await;
        assert_eq!(b["code"], "bad.request");
    }

    // Unparseable JSON → 400; wrong content type → 415.
    let garbage = client
        .post(format!("{}{OPEN_PATH}", sim.base_url()))
        .bearer_auth(&t)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("send");
    assert_error_body(garbage, 400).await;
    let text = client
        .post(format!("{}{OPEN_PATH}", sim.base_url()))
        .bearer_auth(&t)
        .header("content-type", "text/plain")
        .body(open_message("t").to_string())
        .send()
        .await
        .expect("send");
    assert_error_body(text, 415).await;

    // Unknown integration → 404.
    let unknown = client
        .post(format!(
            "{}/api/v2/conversations/messages/00000000-0000-4000-8000-000000000000/inbound/open/message",
            sim.base_url()
        ))
        .bearer_auth(&t)
        .json(&open_message("u"))
        .send()
        .await
        .expect("send");
    assert_error_body(unknown, 404).await;

    let s = sim.stats();
    assert_eq!((s.rejected, s.sessions_created), (9, 0));
    sim.shutdown().await;
}

#[tokio::test]
async fn quota_exhaustion_answers_429_until_the_window_ends() {
    let config = SimConfig {
        quota_per_minute: 3,
        quota_window_secs: 1.0,
        ..SimConfig::for_tests()
    };
    let (sim, client) = start(config).await;
    let t = token(&sim, &client).await;

    for i in 1..=3 {
        let r = send_open(&sim, &client, &t, &open_message(&format!("q{i}"))).await;
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        assert_eq!(header(&r, "inin-ratelimit-count"), Some(i.to_string()));
    }
    let limited = send_open(&sim, &client, &t, &open_message("q4")).await;
    assert_eq!(header(&limited, "retry-after").as_deref(), Some("1"));
    assert_eq!(header(&limited, "inin-ratelimit-allowed").as_deref(), Some("3"));
    assert_eq!(header(&limited, "inin-ratelimit-count").as_deref(), Some("3"));
    assert_eq!(header(&limited, "inin-ratelimit-reset").as_deref(), Some("1"));
    let b = assert_error_body(limited, 429).await;
    assert_eq!(b["code"], "too.many.requests");

    // Guest Chat has its own quota, per deployment.
    let guest = send_guest(&sim, &client, &guest_request("5c0d1e7a-0000-4000-8000-00000000c001")).await;
    assert_eq!(guest.status(), StatusCode::OK);
    assert_eq!(header(&guest, "inin-ratelimit-count").as_deref(), Some("1"));

    tokio::time::sleep(Duration::from_millis(1050)).await;
    let r = send_open(&sim, &client, &t, &open_message("q4")).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&r, "inin-ratelimit-count").as_deref(), Some("1"));
    assert_eq!(sim.stats().rate_limited, 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn concurrent_callers_share_one_quota() {
    let config = SimConfig {
        quota_per_minute: 20,
        ..SimConfig::for_tests()
    };
    let (sim, client) = start(config).await;
    let t = token(&sim, &client).await;
    let url = format!("{}{OPEN_PATH}", sim.base_url());
    let calls = (0..50).map(|i| {
        let (client, url, t) = (client.clone(), url.clone(), t.clone());
        tokio::spawn(async move {
            client
                .post(url)
                .bearer_auth(t)
                .json(&open_message(&format!("c{i}")))
                .send()
                .await
                .map(|r| r.status())
        })
    });
    let statuses = futures_util::future::join_all(calls).await;
    let accepted = statuses
        .iter()
        .filter(|s| matches!(s, Ok(Ok(StatusCode::ACCEPTED))))
        .count();
    let limited = statuses
        .iter()
        .filter(|s| matches!(s, Ok(Ok(StatusCode::TOO_MANY_REQUESTS))))
        .count();
    assert_eq!((accepted, limited), (20, 30));
    let s = sim.stats();
    assert_eq!((s.sessions_created, s.rate_limited, s.api_requests), (20, 30, 50));
    sim.shutdown().await;
}

#[tokio::test]
async fn fail_next_outage_and_error_rate() {
    let (sim, client) = start(SimConfig::for_tests()).await;
    let t = token(&sim, &client).await;

    sim.set_faults(Faults {
        fail_next: Some(vec![503, 500, 429, 400]),
        ..Faults::default()
    });
    let r = send_open(&sim, &client, &t, &open_message("f")).await;
    assert!(header(&r, "inin-ratelimit-count").is_some());
    assert_eq!(assert_error_body(r, 503).await["code"], "service.unavailable");
    assert_error_body(send_open(&sim, &client, &t, &open_message("f")).await, 500).await;
    let r = send_open(&sim, &client, &t, &open_message("f")).await;
    assert_eq!(header(&r, "retry-after").as_deref(), Some("1"));
    assert_error_body(r, 429).await;
    assert_error_body(send_open(&sim, &client, &t, &open_message("f")).await, 400).await;
    assert_eq!(
        send_open(&sim, &client, &t, &open_message("f")).await.status(),
        StatusCode::ACCEPTED
    );

    sim.set_faults(Faults {
        outage_secs: Some(0.4),
        ..Faults::default()
    });
    assert_error_body(send_open(&sim, &client, &t, &open_message("o")).await, 503).await;
    let guest = send_guest(&sim, &client, &guest_request("5c0d1e7a-0000-4000-8000-00000000c001")).await;
    assert_error_body(guest, 503).await;
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(
        send_open(&sim, &client, &t, &open_message("o")).await.status(),
        StatusCode::ACCEPTED
    );

    sim.set_faults(Faults {
        error_rate: Some(1.0),
        ..Faults::default()
    });
    assert_error_body(send_open(&sim, &client, &t, &open_message("e")).await, 503).await;
    sim.set_faults(Faults {
        error_rate: Some(0.0),
        ..Faults::default()
    });
    assert_eq!(
        send_open(&sim, &client, &t, &open_message("e")).await.status(),
        StatusCode::ACCEPTED
    );

    let s = sim.stats();
    assert_eq!((s.server_errors, s.rate_limited, s.rejected), (5, 1, 1));
    // The first message was answered 503 four times before it was created once; retries of "f" were
    // not duplicates because the failed attempts never reached the handler.
    assert_eq!((s.sessions_created, s.duplicates), (3, 0));
    sim.shutdown().await;
}

#[tokio::test]
async fn storm_answers_429_with_its_retry_after() {
    let (sim, client) = start(SimConfig::for_tests()).await;
    let t = token(&sim, &client).await;
    sim.set_faults(Faults {
        storm: Some(Storm {
            retry_after_secs: 7,
            duration_secs: 0.4,
        }),
        ..Faults::default()
    });
    for _ in 0..2 {
        let r = send_open(&sim, &client, &t, &open_message("s")).await;
        assert_eq!(header(&r, "retry-after").as_deref(), Some("7"));
        assert_eq!(header(&r, "inin-ratelimit-reset").as_deref(), Some("7"));
        assert_error_body(r, 429).await;
    }
    let guest = send_guest(&sim, &client, &guest_request("5c0d1e7a-0000-4000-8000-00000000c001")).await;
    assert_eq!(header(&guest, "retry-after").as_deref(), Some("7"));
    tokio::time::sleep(Duration::from_millis(450)).await;
    let r = send_open(&sim, &client, &t, &open_message("s")).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    // Storm 429s consumed no quota.
    assert_eq!(header(&r, "inin-ratelimit-count").as_deref(), Some("1"));
    assert_eq!(sim.stats().rate_limited, 3);
    sim.shutdown().await;
}

#[tokio::test]
async fn reject_status_until_cleared() {
    let (sim, client) = start(SimConfig::for_tests()).await;
    let t = token(&sim, &client).await;
    sim.set_faults(Faults {
        reject_status: Some(422),
        ..Faults::default()
    });
    assert_error_body(send_open(&sim, &client, &t, &open_message("r")).await, 422).await;
    let guest = send_guest(&sim, &client, &guest_request("5c0d1e7a-0000-4000-8000-00000000c001")).await;
    assert_error_body(guest, 422).await;
    sim.set_faults(Faults {
        reject_status: Some(0),
        ..Faults::default()
    });
    assert_eq!(
        send_open(&sim, &client, &t, &open_message("r")).await.status(),
        StatusCode::ACCEPTED
    );
    let s = sim.stats();
    assert_eq!((s.rejected, s.sessions_created), (2, 1));
    sim.shutdown().await;
}

#[tokio::test]
async fn latency_delays_api_answers() {
    let config = SimConfig {
        latency_ms: 150,
        ..SimConfig::for_tests()
    };
    let (sim, client) = start(config).await;
    let t = token(&sim, &client).await;
    let started = Instant::now();
    assert_eq!(
        send_open(&sim, &client, &t, &open_message("l")).await.status(),
        StatusCode::ACCEPTED
    );
    assert!(started.elapsed() >= Duration::from_millis(150));
    sim.set_faults(Faults {
        latency_ms: Some(0),
        ..Faults::default()
    });
    let started = Instant::now();
    assert_eq!(
        send_open(&sim, &client, &t, &open_message("l2")).await.status(),
        StatusCode::ACCEPTED
    );
    assert!(started.elapsed() < Duration::from_millis(150));
    sim.shutdown().await;
}

#[tokio::test]
async fn guest_chat_success_and_rejections() {
    let (sim, client) = start(SimConfig::for_tests()).await;
    let ok = send_guest(&sim, &client, &guest_request("5c0d1e7a-0000-4000-8000-00000000c001")).await;
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(header(&ok, "inin-ratelimit-allowed").as_deref(), Some("300"));
    let b = body(ok).await;
    assert!(
        uuid::Uuid::parse_str(b["id"].as_str().unwrap_or_default()).is_ok(),
        "{b}"
    );
    assert_eq!(b["jwt"].as_str().unwrap_or_default().split('.').count(), 3);
    assert!(b["eventStreamUri"].as_str().is_some_and(|u| u.starts_with("wss://")));
    assert!(b["member"]["id"].is_string());

    let unknown = send_guest(&sim, &client, &guest_request("00000000-0000-4000-8000-000000000000")).await;
    assert_error_body(unknown, 404).await;

    let mut wrong_org = guest_request("5c0d1e7a-0000-4000-8000-00000000c001");
    wrong_org["organizationId"] = json!("00000000-0000-4000-8000-000000000000");
    assert_error_body(send_guest(&sim, &client, &wrong_org).await, 400).await;

    let mut big = guest_request("5c0d1e7a-0000-4000-8000-00000000c001");
    big["memberInfo"]["customFields"]["blob"] = json!("x".repeat(2100));
    assert_error_body(send_guest(&sim, &client, &big).await, 413).await;

    let mut no_target = guest_request("5c0d1e7a-0000-4000-8000-00000000c001");
    no_target.as_object_mut().map(|o| o.remove("routingTarget"));
    assert_error_body(send_guest(&sim, &client, &no_target).await, 400).await;

    let s = sim.stats();
    assert_eq!((s.api_requests, s.sessions_created, s.rejected), (5, 1, 4));
    sim.shutdown().await;
}

#[tokio::test]
async fn control_endpoints() {
    let (sim, client) = start(SimConfig::for_tests()).await;
    let base = sim.base_url();
    let current = client
        .post(format!("{base}/__sim/faults"))
        .json(&json!({"fail_next": [503], "reject_status": 409, "storm": {"retry_after_secs": 3, "duration_secs": 60}}))
        .send()
        .await
        .expect("send");
    assert_eq!(current.status(), StatusCode::OK);
    let f = body(current).await;
    assert_eq!(f["fail_next"], json!([503]));
    assert_eq!(f["reject_status"], 409);
    assert_eq!(f["storm"]["retry_after_secs"], 3);

    // Merging keeps what is not given.
    let merged = body(
        client
            .post(format!("{base}/__sim/faults"))
            .json(&json!({"latency_ms": 5}))
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(
        (merged["latency_ms"].clone(), merged["reject_status"].clone()),
        (json!(5), json!(409))
    );

    let invalid = client
        .post(format!("{base}/__sim/faults"))
        .json(&json!({"error_rate": 2.0}))
        .send()
        .await
        .expect("send");
    assert_eq!(invalid.status(), StatusCode::BAD_REQUEST);

    let _ = send_guest(&sim, &client, &guest_request("5c0d1e7a-0000-4000-8000-00000000c001")).await;
    let stats: SimStats = client
        .get(format!("{base}/__sim/stats"))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("stats json");
    assert_eq!(stats, sim.stats());
    assert_eq!(stats.rate_limited, 1);

    let reset = client.post(format!("{base}/__sim/reset")).send().await.expect("send");
    assert_eq!(reset.status(), StatusCode::NO_CONTENT);
    assert_eq!(sim.stats(), SimStats::default());
    let f = body(client.get(format!("{base}/__sim/faults")).send().await.expect("send")).await;
    assert_eq!(f, json!({}));

    let nowhere = client.get(format!("{base}/api/v2/nowhere")).send().await.expect("send");
    assert_error_body(nowhere, 404).await;
    sim.shutdown().await;
}

#[tokio::test]
async fn run_serves_until_shutdown() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    let config = SimConfig {
        addr: ([127, 0, 0, 1], port).into(),
        ..SimConfig::for_tests()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(sim::run(config, async move {
        let _ = stopped.await;
    }));
    let client = Client::new();
    let url = format!("http://127.0.0.1:{port}/__sim/stats");
    let mut up = false;
    for _ in 0..100 {
        if client.get(&url).send().await.is_ok_and(|r| r.status().is_success()) {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(up, "sim::run did not serve");
    let _ = stop.send(());
    let ended = tokio::time::timeout(Duration::from_secs(10), server).await;
    assert!(matches!(ended, Ok(Ok(Ok(())))), "{ended:?}");
    assert!(client.get(&url).send().await.is_err());
}

#[tokio::test]
async fn spawn_reports_a_busy_address() {
    let (sim, _client) = start(SimConfig::for_tests()).await;
    let taken = SimConfig {
        addr: sim.addr(),
        ..SimConfig::for_tests()
    };
    let err = sim::spawn(taken).await.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("cannot listen"), "{err}");
    sim.shutdown().await;
}

#[tokio::test]
async fn own_thread_simulator_serves_and_stops_with_its_thread() {
    let threads_named = || {
        std::fs::read_dir("/proc/self/task")
            .into_iter()
            .flatten()
            .flatten()
            .filter(|task| {
                std::fs::read_to_string(task.path().join("comm")).is_ok_and(|comm| comm.trim() == "genesys-sim")
            })
            .count()
    };
    let before = threads_named();
    let sim = match sim::spawn_on_own_thread(SimConfig::for_tests()).await {
        Ok(sim) => sim,
        Err(e) => panic!("simulator did not start: {e}"),
    };
    assert_eq!(threads_named(), before + 1);
    let client = Client::new();
    let t = token(&sim, &client).await;
    let created = send_open(&sim, &client, &t, &open_message("own-thread-1")).await;
    assert_eq!(created.status(), StatusCode::ACCEPTED);
    assert_eq!(sim.stats().sessions_created, 1);

    let addr = sim.addr();
    sim.shutdown().await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the simulator still accepts connections after shutdown"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while threads_named() > before && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(threads_named(), before, "the simulator's thread outlived its shutdown");
}
