//! `/metrics`, `/readyz` and `/healthz` of the real health server in front of a real worker.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use guest_session_worker::{health, sim::Faults};
use tokio_util::sync::CancellationToken;

use super::{Secrets, WAIT, tcp_proxy::TcpProxy};
use crate::helpers::*;

/// The samples of a Prometheus/OpenMetrics text, keyed by name and sorted labels.
fn parse_metrics(text: &str) -> BTreeMap<(String, BTreeMap<String, String>), f64> {
    let mut samples = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let (series, value) = line.rsplit_once(' ').expect("sample line");
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let inner = rest.strip_suffix('}').expect("closing brace");
                let labels = inner
                    .split(',')
                    .filter(|p| !p.is_empty())
                    .map(|pair| {
                        let (k, v) = pair.split_once('=').expect("label pair");
                        (k.to_string(), v.trim_matches('"').to_string())
                    })
                    .collect();
                (name.to_string(), labels)
            }
            None => (series.to_string(), BTreeMap::new()),
        };
        samples.insert((name, labels), value.parse::<f64>().expect("numeric sample"));
    }
    samples
}

fn sample(
    samples: &BTreeMap<(String, BTreeMap<String, String>), f64>,
    name: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    let labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    samples.get(&(name.to_string(), labels)).copied()
}

async fn get(url: &str) -> (u16, Option<String>, String) {
    let response = reqwest::get(url).await.expect("health endpoint answers");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    (status, content_type, response.text().await.expect("body"))
}

/// Polls `url` until it answers `status`, failing after `timeout`.
async fn wait_for_status(url: &str, status: u16, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let (got, _, _) = get(url).await;
        if got == status {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{url} still answers {got}, expected {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn start_health(env: &TestEnv) -> (String, CancellationToken) {
    let cancel = CancellationToken::new();
    let addr = health::serve(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        env.readiness.clone(),
        env.metrics.clone(),
        cancel.clone(),
    )
    .await
    .expect("health endpoint listens");
    (format!("http://{addr}"), cancel)
}

const P: &str = "guest_session_worker_";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_every_request_by_outcome_and_every_genesys_response_by_status() {
    let mut env = TestEnv::start().await;
    let (base, stop_health) = start_health(&env).await;
    let events_queue = env.bind_events().await;
    let secrets = Secrets::new();
    for i in 0..5 {
        env.publish(body(&secrets.valid(&format!("req-m-{i}")))).await;
    }
    for i in 0..2 {
        env.publish(body(&secrets.pii_blocked(&format!("req-m-pii-{i}")))).await;
    }
    env.take(&events_queue, 5, WAIT).await;
    env.take(&env.topology.dead_letter_queue.clone(), 2, WAIT).await;
    // Nothing else is in flight now, so the scripted 400 hits this request.
    env.sim.set_faults(Faults {
        fail_next: Some(vec![400]),
        ..Faults::default()
    });
    env.publish(body(&secrets.valid("req-m-rejected-by-genesys"))).await;
    env.take(&env.topology.dead_letter_queue.clone(), 1, WAIT).await;

    // Outcomes are counted right after the broker confirms, so the last may trail the dead letter.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let (content_type, samples) = loop {
        let (status, content_type, text) = get(&format!("{base}/metrics")).await;
        assert_eq!(status, 200);
        assert!(text.trim_end().ends_with("# EOF"), "{text}");
        let samples = parse_metrics(&text);
        let counted: f64 = samples
            .iter()
            .filter(|((name, _), _)| name == &format!("{P}requests_total"))
            .map(|(_, v)| v)
            .sum();
        if counted >= 8.0 || tokio::time::Instant::now() > deadline {
            break (content_type, samples);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        content_type
            .as_deref()
            .is_some_and(|c| c.starts_with("application/openmetrics-text")),
        "{content_type:?}"
    );
    let requests = format!("{P}requests_total");
    assert_eq!(
        sample(&samples, &requests, &[("outcome", "created"), ("reason", "")]),
        Some(5.0)
    );
    assert_eq!(
        sample(
            &samples,
            &requests,
            &[("outcome", "rejected"), ("reason", "pii_blocked")]
        ),
        Some(2.0)
    );
    assert_eq!(
        sample(
            &samples,
            &requests,
            &[("outcome", "failed"), ("reason", "genesys_rejected")]
        ),
        Some(1.0)
    );
    let total: f64 = samples
        .iter()
        .filter(|((name, _), _)| name == &requests)
        .map(|(_, v)| v)
        .sum();
    assert_eq!(total, 8.0, "no other outcome was counted");
    // Latency of created sessions only, in seconds.
    assert_eq!(
        sample(&samples, &format!("{P}session_creation_seconds_count"), &[]),
        Some(5.0)
    );
    assert!(sample(&samples, &format!("{P}session_creation_seconds_sum"), &[]).is_some_and(|s| s > 0.0));
    assert_eq!(
        sample(
            &samples,
            &format!("{P}session_creation_seconds_bucket"),
            &[("le", "+Inf")]
        ),
        Some(5.0)
    );
    let responses = format!("{P}genesys_responses_total");
    assert_eq!(sample(&samples, &responses, &[("status", "202")]), Some(5.0));
    assert_eq!(sample(&samples, &responses, &[("status", "400")]), Some(1.0));
    assert_eq!(
        sample(&samples, &format!("{P}genesys_rate_limited_total"), &[]),
        Some(0.0)
    );
    assert_eq!(sample(&samples, &format!("{P}genesys_retries_total"), &[]), Some(0.0));
    assert_eq!(
        sample(
            &samples,
            &format!("{P}genesys_token_responses_total"),
            &[("status", "200")]
        ),
        Some(1.0),
        "one token serves every call"
    );
    assert_eq!(sample(&samples, &format!("{P}requeued_total"), &[]), Some(0.0));
    assert_eq!(sample(&samples, &format!("{P}in_flight"), &[]), Some(0.0));
    let ratio = sample(&samples, &format!("{P}routing_success_ratio"), &[]).expect("ratio");
    assert!((ratio - 5.0 / 6.0).abs() < 1e-9, "5 created of 6 valid: {ratio}");
    // Labels hold vocabularies, never a guest's data or a request id.
    let (_, _, text) = get(&format!("{base}/metrics")).await;
    secrets.assert_absent(&text, "/metrics");
    assert!(!text.contains("req-m-"), "{text}");

    stop_health.cancel();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_broker_connection_and_shutdown() {
    let mut env = TestEnv::start_with(EnvOptions {
        start_worker: false,
        ..Default::default()
    })
    .await;
    // The worker reaches the broker through a proxy this test can cut.
    let mut broker_url = reqwest::Url::parse(&env.url).expect("AMQP_URL parses");
    let broker = crate::helpers::broker_addr(&broker_url).await;
    let proxy = TcpProxy::start(broker).await;
    broker_url.set_host(Some("127.0.0.1")).expect("host");
    broker_url.set_port(Some(proxy.addr().port())).expect("port");
    env.settings.amqp_url = broker_url.to_string();

    let (base, stop_health) = start_health(&env).await;
    let (readyz, healthz) = (format!("{base}/readyz"), format!("{base}/healthz"));
    assert_eq!(get(&readyz).await.0, 503, "not ready before the worker consumes");
    assert_eq!(get(&healthz).await.0, 200);

    env.start_worker().await;
    wait_for_status(&readyz, 200, Duration::from_secs(10)).await;
    let events_queue = env.bind_events().await;
    env.publish(body(&valid_request("req-ready-1"))).await;
    env.take(&events_queue, 1, WAIT).await;
    assert_eq!(get(&readyz).await.0, 200, "ready while consuming");

    proxy.cut();
    wait_for_status(&readyz, 503, Duration::from_secs(10)).await;
    // While the broker stays unreachable the worker keeps retrying and stays unready.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(get(&readyz).await.0, 503, "unready while the broker is unreachable");
    }
    assert_eq!(get(&healthz).await.0, 200, "alive all the same");

    proxy.restore();
    wait_for_status(&readyz, 200, Duration::from_secs(60)).await;
    env.publish(body(&valid_request("req-ready-2"))).await;
    env.take(&events_queue, 1, WAIT).await;

    env.stop_worker().await;
    assert_eq!(get(&readyz).await.0, 503, "unready once shut down");
    stop_health.cancel();
    env.cleanup().await;
}
