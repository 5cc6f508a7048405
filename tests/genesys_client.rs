//! The Genesys client against the real simulator over sockets (and, where the simulator cannot
//! misbehave the way a test needs, a tiny hand-rolled server): tokens, retries, classification,
//! the shared quota and secrecy (spans: `tests/genesys_spans.rs`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use guest_session_worker::genesys::{
    CreateError, GenesysArgs, GenesysClient, GenesysConfig, Hosts, SessionApiKind, resolve_hosts,
};
use guest_session_worker::request::{ValidationPolicy, validate};
use guest_session_worker::sim::{self, Faults, SimConfig, Storm};
use secrecy::ExposeSecret;

mod support;

use support::genesys::*;

#[tokio::test]
async fn creates_an_open_messaging_session() {
    let (sim, client) = start(roomy_sim()).await;
    let created = client.create_session(&request("req-om-1")).await.expect("created");
    assert_eq!(created.api, SessionApiKind::OpenMessaging);
    assert_eq!(created.api.as_str(), "open_messaging");
    assert!(created.conversation_id.as_deref().is_some_and(|id| !id.is_empty()));
    assert!(created.message_id.is_some());
    assert!(created.guest_jwt.is_none());
    assert_eq!(created.attempts, 1);
    // A retried request is recognisable: the same request id gets the same conversation.
    let again = client
        .create_session(&request("req-om-1"))
        .await
        .expect("created again");
    assert_eq!(again.conversation_id, created.conversation_id);
    let stats = sim.stats();
    assert_eq!(
        (stats.token_requests, stats.sessions_created, stats.duplicates),
        (1, 1, 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_creates_fetch_exactly_one_token() {
    let (sim, client) = start(roomy_sim()).await;
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.create_session(&unique_request()).await })
        })
        .collect();
    for task in tasks {
        let created = task.await.expect("task").expect("created");
        assert_eq!(created.attempts, 1);
    }
    let stats = sim.stats();
    assert_eq!(stats.token_requests, 1, "{stats:?}");
    assert_eq!(stats.sessions_created, 100, "{stats:?}");
}

#[tokio::test]
async fn a_short_lived_token_is_refreshed_before_it_expires() {
    // A 2 s token is refreshed at half-life.
    let (sim, client) = start(SimConfig {
        token_ttl_secs: 2,
        ..roomy_sim()
    })
    .await;
    client.create_session(&unique_request()).await.expect("first");
    client
        .create_session(&unique_request())
        .await
        .expect("second, same token");
    assert_eq!(sim.stats().token_requests, 1);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let created = client
        .create_session(&unique_request())
        .await
        .expect("third: the old token, refreshed meanwhile");
    assert_eq!(created.attempts, 1);
    // The refresh runs beside the call (the old token is still good for 300 ms).
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while sim.stats().token_requests < 2 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stats = sim.stats();
    assert_eq!((stats.token_requests, stats.unauthorized), (2, 0), "{stats:?}");
}

#[tokio::test]
async fn a_revoked_token_is_refreshed_once_and_the_call_succeeds() {
    let (sim, client) = start(roomy_sim()).await;
    client.create_session(&unique_request()).await.expect("first");
    sim.set_faults(Faults {
        revoke_tokens: Some(true),
        ..Faults::default()
    });
    let created = client
        .create_session(&unique_request())
        .await
        .expect("created after a refresh");
    assert_eq!(created.attempts, 2);
    let stats = sim.stats();
    assert_eq!(
        (stats.token_requests, stats.unauthorized, stats.sessions_created),
        (2, 1, 2),
        "{stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_401s_for_one_revoked_token_cause_one_refresh() {
    let (sim, client) = start(roomy_sim()).await;
    client.create_session(&unique_request()).await.expect("first");
    sim.set_faults(Faults {
        revoke_tokens: Some(true),
        ..Faults::default()
    });
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.create_session(&unique_request()).await })
        })
        .collect();
    for task in tasks {
        task.await.expect("task").expect("created");
    }
    let stats = sim.stats();
    assert_eq!(stats.token_requests, 2, "{stats:?}");
    assert_eq!(stats.sessions_created, 21, "{stats:?}");
}

#[tokio::test]
async fn a_429_delays_the_retry_by_its_retry_after() {
    let (sim, client) = start(roomy_sim()).await;
    client.create_session(&unique_request()).await.expect("warm-up (token)");
    sim.set_faults(Faults {
        storm: Some(Storm {
            retry_after_secs: 2,
            duration_secs: 0.5,
        }),
        ..Faults::default()
    });
    let started = Instant::now();
    let created = client
        .create_session(&unique_request())
        .await
        .expect("created after the storm");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_secs(2), "retried after {waited:?}");
    assert_eq!(created.attempts, 2);
    assert_eq!(sim.stats().rate_limited, 1);
    // The pacer took the hit: its rate was cut.
    assert!(client.pacer().rate_per_minute() < 60_000.0);
}

#[tokio::test]
async fn a_429_storm_pauses_concurrent_calls_too() {
    let (sim, client) = start(roomy_sim()).await;
    client.create_session(&unique_request()).await.expect("warm-up (token)");
    sim.set_faults(Faults {
        storm: Some(Storm {
            retry_after_secs: 1,
            duration_secs: 0.3,
        }),
        ..Faults::default()
    });
    let started = Instant::now();
    let first = client
        .create_session(&unique_request())
        .await
        .expect("created after the storm");
    assert!(first.attempts >= 2);
    // A call starting during the pause waits for it instead of hitting the API.
    let rate_limited = sim.stats().rate_limited;
    sim.set_faults(Faults {
        storm: Some(Storm {
            retry_after_secs: 1,
            duration_secs: 0.3,
        }),
        ..Faults::default()
    });
    let (first_request, second_request) = (unique_request(), unique_request());
    let (a, b) = tokio::join!(client.create_session(&first_request), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        client.create_session(&second_request).await
    });
    a.expect("a");
    let b = b.expect("b");
    assert_eq!(b.attempts, 1, "the second call waited out the pause");
    assert_eq!(sim.stats().rate_limited, rate_limited + 1);
    assert!(started.elapsed() >= Duration::from_secs(2));
}

#[tokio::test]
async fn the_quota_headers_keep_calls_under_the_quota() {
    // 3 calls per 2 s window: the pacer reads inin-ratelimit-* and waits for the reset instead of
    // drawing 429s.
    let (sim, client) = start(SimConfig {
        quota_per_minute: 3,
        quota_window_secs: 2.0,
        ..SimConfig::for_tests()
    })
    .await;
    let started = Instant::now();
    for _ in 0..5 {
        let created = client.create_session(&unique_request()).await.expect("created");
        assert_eq!(created.attempts, 1);
    }
    let stats = sim.stats();
    assert_eq!((stats.rate_limited, stats.sessions_created), (0, 5), "{stats:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn server_errors_are_retried_until_success() {
    let (sim, client) = start(roomy_sim()).await;
    sim.set_faults(Faults {
        fail_next: Some(vec![503, 503, 502]),
        ..Faults::default()
    });
    let created = client.create_session(&unique_request()).await.expect("created");
    assert_eq!(created.attempts, 4);
    let stats = sim.stats();
    assert_eq!(
        (stats.server_errors, stats.sessions_created, stats.token_requests),
        (3, 1, 1),
        "{stats:?}"
    );
}

#[tokio::test]
async fn a_400_is_not_retried_and_carries_the_context_id() {
    let (sim, client) = start(roomy_sim()).await;
    sim.set_faults(Faults {
        reject_status: Some(400),
        ..Faults::default()
    });
    let error = client.create_session(&unique_request()).await.expect_err("rejected");
    assert_eq!(error.kind(), "genesys_rejected");
    assert_eq!(error.attempts(), 1);
    match &error {
        CreateError::Rejected {
            status,
            code,
            context_id,
            message,
            ..
        } => {
            assert_eq!(*status, 400);
            assert!(code.is_some());
            assert!(!message.is_empty());
            assert!(context_id.as_deref().is_some_and(|id| !id.is_empty()));
            // The text that becomes `x-error-detail`, the reply's detail and the log: status, code
            // and contextId, never Genesys's free text (a 400 can echo request values).
            let shown = error.to_string();
            assert!(!shown.contains(message.as_str()), "{shown}");
            assert!(shown.contains("HTTP 400"), "{shown}");
            assert!(shown.contains(code.as_deref().unwrap_or_default()), "{shown}");
            assert!(shown.contains(context_id.as_deref().unwrap_or_default()), "{shown}");
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
    assert!(error.context_id().is_some());
    assert_eq!(sim.stats().api_requests, 1);
}

#[tokio::test]
async fn other_permanent_statuses_are_rejected_at_once() {
    let (sim, client) = start(roomy_sim()).await;
    for status in [403, 404, 409, 413, 422] {
        sim.set_faults(Faults {
            reject_status: Some(status),
            ..Faults::default()
        });
        let error = client.create_session(&unique_request()).await.expect_err("rejected");
        assert!(
            matches!(error, CreateError::Rejected { status: s, attempts: 1, .. } if s == status),
            "{error:?}"
        );
    }
    sim.set_faults(Faults {
        reject_status: Some(0),
        fail_next: Some(vec![501]),
        ..Faults::default()
    });
    let error = client
        .create_session(&unique_request())
        .await
        .expect_err("501 is permanent");
    assert!(
        matches!(
            error,
            CreateError::Rejected {
                status: 501,
                attempts: 1,
                ..
            }
        ),
        "{error:?}"
    );
}

#[tokio::test]
async fn an_unknown_integration_is_a_404_rejection() {
    let sim_config = roomy_sim();
    let sim = sim::spawn(sim_config.clone()).await.expect("simulator starts");
    let mut config = config_for(&sim, &sim_config);
    config.integration_id = Some("no-such-integration".into());
    let client = GenesysClient::new(config).expect("client");
    let error = client.create_session(&unique_request()).await.expect_err("rejected");
    assert!(matches!(error, CreateError::Rejected { status: 404, .. }), "{error:?}");
}

#[tokio::test]
async fn an_outage_longer_than_the_budget_exhausts_the_retries() {
    let sim_config = roomy_sim();
    let sim = sim::spawn(sim_config.clone()).await.expect("simulator starts");
    let mut config = config_for(&sim, &sim_config);
    config.retry_budget = Duration::from_millis(1500);
    config.initial_backoff = Duration::from_millis(50);
    config.max_backoff = Duration::from_millis(400);
    let client = GenesysClient::new(config).expect("client");
    sim.set_faults(Faults {
        outage_secs: Some(30.0),
        ..Faults::default()
    });
    let started = Instant::now();
    let error = client.create_session(&unique_request()).await.expect_err("exhausted");
    let elapsed = started.elapsed();
    assert_eq!(error.kind(), "retries_exhausted");
    assert!(
        matches!(error, CreateError::RetriesExhausted { status: Some(503), .. }),
        "{error:?}"
    );
    assert!(error.attempts() >= 3, "{error:?}");
    assert!(error.context_id().is_some(), "{error:?}");
    assert_eq!(u64::from(error.attempts()), sim.stats().api_requests);
    assert!(elapsed <= Duration::from_millis(2500), "{elapsed:?}");
}

#[tokio::test]
async fn a_wrong_secret_is_retried_like_a_transient_error_and_never_logged() {
    let sim_config = roomy_sim();
    let sim = sim::spawn(sim_config.clone()).await.expect("simulator starts");
    let mut config = config_for(&sim, &sim_config);
    config.client_secret = "not-the-secret-xyz".to_string().into();
    // Longer than the second a token failure is held, so the endpoint is asked again.
    config.retry_budget = Duration::from_millis(1600);
    let client = GenesysClient::new(config).expect("client");
    let metrics = guest_session_worker::metrics::Metrics::new();
    client.set_metrics(metrics.clone());
    let error = client.create_session(&unique_request()).await.expect_err("no token");
    assert!(
        matches!(error, CreateError::RetriesExhausted { status: Some(401), .. }),
        "{error:?}"
    );
    let token_requests = sim.stats().token_requests;
    assert!(token_requests >= 2);
    assert_eq!(sim.stats().api_requests, 0);
    assert!(!error.to_string().contains("not-the-secret-xyz"));
    // A login outage or a rotated secret can be alerted on: every token answer and every retry
    // is counted, although no API request went out.
    let text = metrics.render();
    let line = format!("guest_session_worker_genesys_token_responses_total{{status=\"401\"}} {token_requests}");
    assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
    let retries: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("guest_session_worker_genesys_retries_total "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no retries_total in\n{text}"));
    assert!(
        retries + 1 >= token_requests,
        "{retries} retries, {token_requests} token requests"
    );
    // The contract's `attempts` are the POSTs sent to Genesys: none.
    assert_eq!(error.attempts(), 0, "{error:?}");
    assert!(
        !text.contains("genesys_responses_total{"),
        "no API response was counted:\n{text}"
    );
}

#[tokio::test]
async fn an_unreachable_host_exhausts_the_retries() {
    let unused = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut config = GenesysConfig::for_simulator(&format!("http://{unused}"), "c", "s", "i");
    config.retry_budget = Duration::from_millis(600);
    config.initial_backoff = Duration::from_millis(20);
    config.max_backoff = Duration::from_millis(100);
    let client = GenesysClient::new(config).expect("client");
    let error = client.create_session(&unique_request()).await.expect_err("unreachable");
    assert!(
        matches!(error, CreateError::RetriesExhausted { status: None, .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("connection"), "{error}");
}

#[tokio::test]
async fn guest_chat_returns_a_jwt_without_oauth() {
    let sim_config = roomy_sim();
    let sim = sim::spawn(sim_config.clone()).await.expect("simulator starts");
    let config = config_for(&sim, &sim_config).with_guest_chat(
        &sim_config.organization_id,
        &sim_config.deployment_id,
        "Web Support",
    );
    let client = GenesysClient::new(config).expect("client");
    assert_eq!(client.session_api(), SessionApiKind::GuestChat);
    let created = client.create_session(&unique_request()).await.expect("created");
    assert_eq!(created.api.as_str(), "guest_chat");
    assert!(created.conversation_id.as_deref().is_some_and(|id| !id.is_empty()));
    let jwt = created.guest_jwt.as_ref().expect("a jwt");
    assert_eq!(jwt.expose_secret().split('.').count(), 3, "JWT-shaped");
    assert!(created.member_id.is_some());
    assert!(created.event_stream_uri.is_some());
    assert!(!format!("{created:?}").contains(jwt.expose_secret()));
    let stats = sim.stats();
    assert_eq!((stats.token_requests, stats.sessions_created), (0, 1), "{stats:?}");

    // A request without routing goes to the default queue; 503s are retried here too.
    sim.set_faults(Faults {
        fail_next: Some(vec![503]),
        ..Faults::default()
    });
    let bare = validate(
        br#"{"request_id":"gc-2","guest_id":"g-2","consent":{"data_processing":true}}"#,
        &ValidationPolicy::default(),
    )
    .expect("valid");
    let created = client.create_session(&bare).await.expect("created");
    assert_eq!(created.attempts, 2);
}

#[derive(Parser, Debug)]
struct Cli {
    #[command(flatten)]
    genesys: GenesysArgs,
}

#[tokio::test]
async fn debug_and_display_never_show_the_secret() {
    const SECRET: &str = "s3cr3t-VALUE-never-printed";
    let cli = Cli::try_parse_from([
        "test",
        "--genesys-client-id",
        "client-1",
        "--genesys-client-secret",
        SECRET,
        "--genesys-integration-id",
        "integ-1",
    ])
    .expect("parses");
    let args = cli.genesys;
    let config = args.clone().into_config().expect("config");
    let client = GenesysClient::new(config.clone()).expect("client");
    for shown in [
        format!("{args:?}"),
        format!("{args:#?}"),
        args.to_string(),
        format!("{config:?}"),
        format!("{config:#?}"),
        config.to_string(),
        format!("{client:?}"),
        format!("{client:#?}"),
        client.to_string(),
    ] {
        assert!(!shown.contains(SECRET), "secret leaked: {shown}");
        assert!(shown.contains("client-1"), "{shown}");
    }
    assert_eq!(config.client_secret.expose_secret(), SECRET);
}

#[test]
fn regions_map_to_their_hosts() {
    let hosts = resolve_hosts("eu-west-2", None, None).unwrap();
    assert_eq!(hosts.api_base_url, "https://api.euw2.pure.cloud");
    assert_eq!(hosts.login_base_url, "https://login.euw2.pure.cloud");
    assert_eq!(
        Hosts::for_region("ap-southeast-2"),
        Some(Hosts {
            api_base_url: "https://api.mypurecloud.com.au".into(),
            login_base_url: "https://login.mypurecloud.com.au".into()
        })
    );
    let cli = Cli::try_parse_from([
        "test",
        "--genesys-region",
        "sa-east-1",
        "--genesys-session-api",
        "guest-chat",
        "--genesys-organization-id",
        "o",
        "--genesys-deployment-id",
        "d",
        "--genesys-queue",
        "q",
    ])
    .unwrap();
    let config = cli.genesys.into_config().unwrap();
    assert_eq!(config.api_base_url, "https://api.sae1.pure.cloud");
    assert_eq!(config.login_base_url, "https://login.sae1.pure.cloud");
    let err = Cli::try_parse_from(["test", "--genesys-region", "moon-1"])
        .unwrap()
        .genesys
        .into_config()
        .unwrap_err();
    assert!(err.to_string().contains("moon-1"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// A scripted server for what the simulator does not do on purpose.

#[derive(Clone, Copy)]
enum Api {
    /// Always 401 (a token the API never accepts).
    AlwaysUnauthorized,
    /// A 2xx without `conversationId`, then a proper answer.
    MissingConversationIdOnce,
    /// A 202 with an empty body, then a proper answer.
    EmptyAcceptedOnce,
    /// Guest Chat: a 200 without `jwt`.
    GuestChatWithoutJwt,
    /// The token endpoint refuses the client (a wrong secret).
    BadClient,
    /// The token endpoint answers 503 once, then issues tokens.
    TokenUnavailableOnce,
    /// The token endpoint always answers 503.
    TokenAlwaysUnavailable,
    /// The token endpoint issues one 6 s token, then answers 503.
    ShortTokenThenUnavailable,
    /// The token endpoint issues one 6 s token, then hangs for 5 s before each 503.
    ShortTokenThenHanging,
    /// A 502 with an HTML body, then a proper answer.
    HtmlBadGatewayOnce,
    /// A 202 whose body breaks off (the connection fails mid-body), then a proper answer.
    TruncatedAcceptedOnce,
}

struct Scripted {
    addr: SocketAddr,
    token_requests: Arc<AtomicU32>,
    api_requests: Arc<AtomicU32>,
    bodies: Arc<Mutex<Vec<serde_json::Value>>>,
    /// The `Accept` header of every API call.
    accepts: Arc<Mutex<Vec<String>>>,
}

async fn scripted(api: Api) -> Scripted {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    use axum::routing::post;

    let token_requests = Arc::new(AtomicU32::new(0));
    let api_requests = Arc::new(AtomicU32::new(0));
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let accepts = Arc::new(Mutex::new(Vec::new()));
    let accepted = accepts.clone();
    let tokens = token_requests.clone();
    let calls = api_requests.clone();
    let guest_calls = api_requests.clone();
    let seen = bodies.clone();
    let app = axum::Router::new()
        .route(
            "/oauth/token",
            post(move || {
                let n = tokens.fetch_add(1, Ordering::SeqCst);
                async move {
                    if let Api::BadClient = api {
                        return (
                            StatusCode::UNAUTHORIZED,
                            axum::Json(serde_json::json!({
                                "error": "invalid_client", "description": "client not found",
                                "error_description": "client not found"
                            })),
                        )
                            .into_response();
                    }
                    if let (Api::TokenUnavailableOnce, 0) | (Api::TokenAlwaysUnavailable, _) = (api, n) {
                        return StatusCode::SERVICE_UNAVAILABLE.into_response();
                    }
                    if let Api::ShortTokenThenUnavailable | Api::ShortTokenThenHanging = api {
                        if n > 0 {
                            if let Api::ShortTokenThenHanging = api {
                                tokio::time::sleep(Duration::from_secs(5)).await;
                            }
                            return StatusCode::SERVICE_UNAVAILABLE.into_response();
                        }
                        return axum::Json(serde_json::json!({
                            "access_token": "token-0", "token_type": "bearer", "expires_in": 6
                        }))
                        .into_response();
                    }
                    axum::Json(serde_json::json!({
                        "access_token": format!("token-{n}"), "token_type": "bearer", "expires_in": 86400
                    }))
                    .into_response()
                }
            }),
        )
        .route(
            "/api/v2/conversations/messages/{integration}/inbound/open/message",
            post(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                accepted.lock().unwrap().push(
                    headers
                        .get("accept")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string(),
                );
                seen.lock()
                    .unwrap()
                    .push(serde_json::from_slice(&body).unwrap_or_default());
                async move {
                    let ok = || {
                        (
                            StatusCode::ACCEPTED,
                            axum::Json(serde_json::json!({"id": "m-1", "conversationId": "c-1"})),
                        )
                            .into_response()
                    };
                    match (api, n) {
                        (Api::AlwaysUnauthorized, _) => (
                            StatusCode::UNAUTHORIZED,
                            axum::Json(serde_json::json!({
                                "message": "Invalid login credentials.", "code": "bad.credentials",
                                "status": 401, "contextId": "ctx-401"
                            })),
                        )
                            .into_response(),
                        (Api::MissingConversationIdOnce, 0) => {
                            (StatusCode::ACCEPTED, axum::Json(serde_json::json!({"id": "m-0"}))).into_response()
                        }
                        (Api::EmptyAcceptedOnce, 0) => StatusCode::ACCEPTED.into_response(),
                        (Api::TruncatedAcceptedOnce, 0) => {
                            let chunks: [Result<axum::body::Bytes, std::io::Error>; 2] = [
                                Ok(axum::body::Bytes::from_static(b"{\"id\": \"m-")),
                                Err(std::io::Error::other("the connection broke")),
                            ];
                            // The pause lets the head and the first chunk leave before the break.
                            let body = axum::body::Body::from_stream(futures_util::StreamExt::then(
                                futures_util::stream::iter(chunks),
                                |chunk| async move {
                                    if chunk.is_err() {
                                        tokio::time::sleep(Duration::from_millis(100)).await;
                                    }
                                    chunk
                                },
                            ));
                            (StatusCode::ACCEPTED, body).into_response()
                        }
                        (Api::HtmlBadGatewayOnce, 0) => {
                            (StatusCode::BAD_GATEWAY, "<html><body>502 Bad Gateway</body></html>").into_response()
                        }
                        _ => ok(),
                    }
                }
            }),
        )
        .route(
            "/api/v2/webchat/guest/conversations",
            post(move || {
                guest_calls.fetch_add(1, Ordering::SeqCst);
                async move {
                    match api {
                        Api::GuestChatWithoutJwt => {
                            (StatusCode::OK, axum::Json(serde_json::json!({"id": "c-9"}))).into_response()
                        }
                        _ => StatusCode::NOT_FOUND.into_response(),
                    }
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Scripted {
        addr,
        token_requests,
        api_requests,
        bodies,
        accepts,
    }
}

fn scripted_client(server: &Scripted) -> GenesysClient {
    let mut config = scripted_config(server, "s", Duration::from_secs(10));
    config.rate_limit_per_minute = 60_000;
    GenesysClient::new(config).expect("client")
}

/// Open Messaging against `server` with `secret`, fast backoff and `budget`.
fn scripted_config(server: &Scripted, secret: &str, budget: Duration) -> GenesysConfig {
    let mut config = GenesysConfig::for_simulator(&format!("http://{}", server.addr), "c", secret, "integ");
    config.initial_backoff = Duration::from_millis(10);
    config.max_backoff = Duration::from_millis(50);
    config.retry_budget = budget;
    config
}

#[tokio::test]
async fn a_second_401_is_a_rejection() {
    let server = scripted(Api::AlwaysUnauthorized).await;
    let error = scripted_client(&server)
        .create_session(&unique_request())
        .await
        .expect_err("rejected");
    assert!(
        matches!(
            error,
            CreateError::Rejected {
                status: 401,
                attempts: 2,
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(error.context_id(), Some("ctx-401"));
    assert_eq!(
        server.token_requests.load(Ordering::SeqCst),
        2,
        "refreshed exactly once"
    );
    assert_eq!(server.api_requests.load(Ordering::SeqCst), 2, "retried exactly once");
}

#[tokio::test]
async fn a_2xx_without_conversation_id_is_created_and_never_sent_again() {
    let server = scripted(Api::MissingConversationIdOnce).await;
    let created = scripted_client(&server)
        .create_session(&request("req-same-id"))
        .await
        .expect("created");
    assert_eq!(created.conversation_id, None);
    assert_eq!(created.message_id.as_deref(), Some("m-0"));
    assert_eq!(created.attempts, 1);
    assert_eq!(server.api_requests.load(Ordering::SeqCst), 1, "a 2xx is not re-sent");
}

#[tokio::test]
async fn a_2xx_without_a_body_is_created_and_never_sent_again() {
    let server = scripted(Api::EmptyAcceptedOnce).await;
    let created = scripted_client(&server)
        .create_session(&unique_request())
        .await
        .expect("created");
    assert_eq!((created.conversation_id, created.message_id), (None, None));
    assert_eq!(server.api_requests.load(Ordering::SeqCst), 1, "a 2xx is not re-sent");
}

#[tokio::test]
async fn a_2xx_whose_body_breaks_off_is_created_and_never_sent_again() {
    let server = scripted(Api::TruncatedAcceptedOnce).await;
    let created = scripted_client(&server)
        .create_session(&unique_request())
        .await
        .expect("created");
    assert_eq!((created.conversation_id, created.message_id), (None, None));
    assert_eq!(created.attempts, 1);
    assert_eq!(server.api_requests.load(Ordering::SeqCst), 1, "a 2xx is not re-sent");
}

#[tokio::test]
async fn a_guest_chat_2xx_without_jwt_is_rejected_without_opening_another_chat() {
    let server = scripted(Api::GuestChatWithoutJwt).await;
    let config = GenesysConfig::for_simulator(&format!("http://{}", server.addr), "c", "s", "integ").with_guest_chat(
        "org",
        "deployment",
        "Web Support",
    );
    let error = GenesysClient::new(config)
        .expect("client")
        .create_session(&unique_request())
        .await
        .expect_err("no jwt, no session");
    assert!(
        matches!(
            error,
            CreateError::Rejected {
                status: 200,
                attempts: 1,
                ..
            }
        ),
        "{error:?}"
    );
    // The dead letter's detail says what was wrong and names the chat that was opened.
    let detail = error.to_string();
    assert!(
        detail.contains("HTTP 200, but") && detail.contains("no jwt") && detail.contains("conversation c-9"),
        "{detail}"
    );
    assert_eq!(server.api_requests.load(Ordering::SeqCst), 1, "a 2xx is not re-sent");
}

#[tokio::test]
async fn a_refused_client_costs_the_login_host_one_request_per_second_not_one_per_retry() {
    let server = scripted(Api::BadClient).await;
    let client = GenesysClient::new(scripted_config(&server, "wrong", Duration::from_millis(2500))).expect("client");
    let calls = (0..20).map(|_| {
        let client = client.clone();
        async move { client.create_session(&unique_request()).await }
    });
    let results = futures_util::future::join_all(calls).await;
    for result in results {
        let error = result.expect_err("no token, no session");
        assert!(matches!(error, CreateError::RetriesExhausted { .. }), "{error:?}");
        assert!(error.to_string().contains("invalid_client"), "{error}");
    }
    // 20 requests retrying every 10-50 ms for 2.5 s would ask hundreds of times; held for a
    // second, a failure is asked about once per second.
    let asked = server.token_requests.load(Ordering::SeqCst);
    assert!((2..=4).contains(&asked), "{asked} token requests");
    assert_eq!(server.api_requests.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_try_that_failed_on_its_token_is_not_counted_as_an_http_attempt() {
    let server = scripted(Api::TokenUnavailableOnce).await;
    let created = scripted_client(&server)
        .create_session(&unique_request())
        .await
        .expect("created once the token endpoint is back");
    assert_eq!(server.token_requests.load(Ordering::SeqCst), 2);
    assert_eq!(server.api_requests.load(Ordering::SeqCst), 1);
    // The contract's `attempts` (event, audit record, `x-attempts`): POSTs sent to Genesys.
    assert_eq!(created.attempts, 1);
}

#[tokio::test]
async fn a_failed_refresh_keeps_the_token_in_use_until_it_expires() {
    let server = scripted(Api::ShortTokenThenUnavailable).await;
    let client = GenesysClient::new(scripted_config(&server, "s", Duration::from_millis(1500))).expect("client");
    client.create_session(&unique_request()).await.expect("first token");
    // A 6 s token is due for a refresh at 3 s and used until 4.5 s; the login host is down by
    // then.
    tokio::time::sleep(Duration::from_millis(3300)).await;
    let created = client
        .create_session(&unique_request())
        .await
        .expect("created with the unexpired token");
    assert_eq!(created.attempts, 1);
    // The refresh runs beside the call.
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    while server.token_requests.load(Ordering::SeqCst) < 2 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(server.token_requests.load(Ordering::SeqCst), 2, "the refresh was tried");
    assert_eq!(server.api_requests.load(Ordering::SeqCst), 2);
    // Past 4.5 s the token is no longer presented: no API call without a fresh one.
    tokio::time::sleep(Duration::from_millis(1400)).await;
    let error = client.create_session(&unique_request()).await.expect_err("no token");
    assert_eq!(error.attempts(), 0, "{error:?}");
    assert_eq!(server.api_requests.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn calls_do_not_wait_for_a_hanging_refresh_while_the_token_is_unexpired() {
    let server = scripted(Api::ShortTokenThenHanging).await;
    let client = scripted_client(&server);
    client.create_session(&unique_request()).await.expect("first token");
    tokio::time::sleep(Duration::from_millis(3200)).await;
    // Due for a refresh, which hangs: neither the call that starts it nor the next one waits.
    for call in ["the call that starts the refresh", "the next call"] {
        let started = std::time::Instant::now();
        let created = client
            .create_session(&unique_request())
            .await
            .expect("created with the unexpired token");
        assert!(
            started.elapsed() < Duration::from_millis(1000),
            "{call} waited {:?} for the refresh",
            started.elapsed()
        );
        assert_eq!(created.attempts, 1);
    }
    assert_eq!(server.token_requests.load(Ordering::SeqCst), 2, "one refresh, hanging");
}

#[tokio::test]
async fn a_request_that_waited_out_its_budget_behind_an_open_circuit_says_what_was_failing() {
    let server = scripted(Api::TokenAlwaysUnavailable).await;
    let client = GenesysClient::new(scripted_config(&server, "s", Duration::from_millis(1500))).expect("client");
    let calls = (0..20).map(|_| {
        let client = client.clone();
        async move { client.create_session(&unique_request()).await }
    });
    for result in futures_util::future::join_all(calls).await {
        let detail = result.expect_err("no token").to_string();
        // Also the requests that never had a try of their own (the login failures opened the
        // circuit): the operator reads what was failing, not only that the budget ran out.
        assert!(detail.contains("503"), "{detail}");
    }
}

#[tokio::test]
async fn a_non_json_error_body_is_still_classified() {
    let server = scripted(Api::HtmlBadGatewayOnce).await;
    let created = scripted_client(&server)
        .create_session(&unique_request())
        .await
        .expect("created");
    assert_eq!(created.attempts, 2);
}

#[tokio::test]
async fn the_open_messaging_body_follows_the_contract() {
    let server = scripted(Api::MissingConversationIdOnce).await;
    scripted_client(&server)
        .create_session(&request("req-body"))
        .await
        .expect("created");
    let body = server.bodies.lock().unwrap()[0].clone();
    assert_eq!(server.accepts.lock().unwrap()[0], "application/json");
    let channel = &body["channel"];
    assert_eq!(channel["messageId"], "req-body");
    assert_eq!(
        channel["from"],
        serde_json::json!({"id": GUEST_ID, "idType": "Opaque", "nickname": DISPLAY_NAME})
    );
    let time = channel["time"].as_str().unwrap();
    assert!(
        chrono::DateTime::parse_from_rfc3339(time).is_ok() && time.ends_with('Z') && time.len() == 24,
        "{time}"
    );
    let attributes: BTreeMap<String, String> =
        serde_json::from_value(channel["metadata"]["customAttributes"].clone()).unwrap();
    assert_eq!(attributes.get("source").map(String::as_str), Some("web_portal"));
    assert_eq!(body["text"], "Hi, I have a question about my order");

    // Without display name or initial message: no nickname, the configured text.
    server.bodies.lock().unwrap().clear();
    let bare = validate(
        br#"{"request_id":"req-bare","guest_id":"g-1","consent":{"data_processing":true}}"#,
        &ValidationPolicy::default(),
    )
    .unwrap();
    scripted_client(&server).create_session(&bare).await.expect("created");
    let body = server.bodies.lock().unwrap()[0].clone();
    assert!(body["channel"]["from"].get("nickname").is_none(), "{body}");
    assert_eq!(body["text"], "Guest session started");
}

// ---------------------------------------------------------------------------------------------
// Spans: names, the HTTP-client attributes, and no personal data in any field.
