//! Spans exported over OTLP by the real `run` binary, configured only by the standard OTEL_*
//! variables.

use std::{process::Stdio, time::Duration};

use guest_session_worker::{
    amqp::{Topology, headers, request_message},
    sim::Faults,
};
use lapin::types::FieldTable;
use tokio::io::AsyncReadExt;

use super::{
    Secrets, WAIT,
    otlp_receiver::{OtlpReceiver, ReceivedSpan},
};
use crate::helpers::*;

fn trace_headers(traceparent: &str, tracestate: &str) -> FieldTable {
    let mut table = FieldTable::default();
    headers::set_str(&mut table, "traceparent", traceparent);
    headers::set_str(&mut table, "tracestate", tracestate);
    table
}

/// `(trace id, parent span id)` of a W3C `traceparent`.
fn parse_traceparent(value: &str) -> (String, String) {
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "traceparent {value}");
    assert_eq!(parts[0], "00", "traceparent {value}");
    (parts[1].to_string(), parts[2].to_string())
}

fn random_hex(len: usize) -> String {
    uuid::Uuid::new_v4().simple().to_string()[..len].to_string()
}

fn prefix_of(topology: &Topology) -> String {
    let prefix = topology
        .request_exchange
        .strip_suffix("guest-sessions")
        .expect("request exchange ends with guest-sessions")
        .to_string();
    assert_eq!(&Topology::new(&prefix), topology);
    prefix
}

/// `guest-session-worker run` as a child process, stderr collected.
struct ChildWorker {
    child: tokio::process::Child,
    stderr: tokio::task::JoinHandle<String>,
}

impl ChildWorker {
    /// Starts `run` against `env`'s broker, prefix and simulator, with a clean environment plus `extra`.
    fn spawn(env: &TestEnv, extra: &[(&str, &str)]) -> Self {
        let sim = &env.sim_config;
        let base = env.sim.base_url();
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_guest-session-worker"));
        command
            .arg("run")
            .env_clear()
            .env("AMQP_URL", &env.url)
            .env("AMQP_NAME_PREFIX", prefix_of(&env.topology))
            .env("AUDIT_HMAC_KEY", AUDIT_KEY)
            .env("GENESYS_API_URL", &base)
            .env("GENESYS_LOGIN_URL", &base)
            .env("GENESYS_CLIENT_ID", &sim.client_id)
            .env("GENESYS_CLIENT_SECRET", &sim.client_secret)
            .env("GENESYS_INTEGRATION_ID", &sim.integration_id)
            .env("HEALTH_ADDR", "127.0.0.1:0")
            .env("WORKER_SHUTDOWN_GRACE_SECS", "10")
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (key, value) in extra {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("the binary starts");
        let mut pipe = child.stderr.take().expect("stderr piped");
        // Read while it runs, so a full pipe never blocks the child's logging.
        let stderr = tokio::spawn(async move {
            let mut out = String::new();
            let _ = pipe.read_to_string(&mut out).await;
            out
        });
        Self { child, stderr }
    }

    /// SIGTERM, as Kubernetes stops a pod; returns whether it exited 0, and its stderr.
    async fn terminate(mut self) -> (bool, String) {
        let pid = self.child.id().expect("child still running");
        let killed = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(killed.success());
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("the worker exits within 30 s of SIGTERM")
            .expect("wait");
        let stderr = self.stderr.await.expect("stderr reader");
        (status.success(), stderr)
    }
}

fn one<'a>(spans: &[&'a ReceivedSpan], name: &str) -> &'a ReceivedSpan {
    let found: Vec<_> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(found.len(), 1, "expected one {name} span in {spans:#?}");
    found[0]
}

fn children<'a>(spans: &[&'a ReceivedSpan], parent: &ReceivedSpan) -> Vec<&'a ReceivedSpan> {
    spans
        .iter()
        .copied()
        .filter(|s| s.parent_span_id == parent.span_id)
        .collect()
}

const SPAN_KIND_CLIENT: i32 = 3;
const SPAN_KIND_PRODUCER: i32 = 4;
const SPAN_KIND_CONSUMER: i32 = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_trace_reaches_the_otlp_collector_from_upstream_through_genesys_to_the_crm_event() {
    let receiver = OtlpReceiver::start().await;
    let mut env = TestEnv::start_with(EnvOptions {
        start_worker: false,
        ..Default::default()
    })
    .await;
    let events_queue = env.bind_events().await;
    // The first session call fails once; the retry succeeds.
    env.sim.set_faults(Faults {
        fail_next: Some(vec![503]),
        ..Faults::default()
    });
    let secrets = Secrets::new();
    let (trace_id, upstream_span) = (random_hex(32), random_hex(16));
    let (blocked_trace, blocked_span) = (random_hex(32), random_hex(16));
    let created_id = format!("req-otel-{}", random_hex(8));
    let blocked_id = format!("req-otel-blocked-{}", random_hex(8));
    // The upstream asks for a reply too: every message the worker publishes continues the trace.
    let reply_queue = env.private_queue().await;
    let mut created_request = request_message(
        &env.topology,
        body(&secrets.valid(&created_id)),
        trace_headers(&format!("00-{trace_id}-{upstream_span}-01"), "upstream=kept"),
    );
    created_request.properties = created_request.properties.with_reply_to(reply_queue.as_str().into());
    env.publish_message(created_request).await;

    let worker = ChildWorker::spawn(
        &env,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.endpoint()),
            ("OTEL_SERVICE_NAME", "gsw-otel-test"),
            ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=it"),
            // Nothing is exported on a timer: every span the receiver gets was flushed on SIGTERM.
            ("OTEL_BSP_SCHEDULE_DELAY", "600000"),
        ],
    );
    let events = env.take(&events_queue, 1, WAIT).await;
    let replies = env.take(&reply_queue, 1, WAIT).await;
    // The pii_blocked request goes after the 503 is used up, so the fault cannot hit it.
    env.publish_message(request_message(
        &env.topology,
        body(&secrets.pii_blocked(&blocked_id)),
        trace_headers(&format!("00-{blocked_trace}-{blocked_span}-01"), ""),
    ))
    .await;
    let dead = env.take(&env.topology.dead_letter_queue.clone(), 1, WAIT).await;
    let audits = env.take(&env.topology.audit_queue.clone(), 2, WAIT).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        receiver.spans().is_empty(),
        "with a 10-minute batch delay nothing is exported before shutdown"
    );
    let (exited_cleanly, stderr) = worker.terminate().await;
    assert!(exited_cleanly, "worker exit status after SIGTERM:\n{stderr}");

    let spans = receiver.spans();
    assert!(!spans.is_empty(), "spans are flushed on shutdown:\n{stderr}");
    // Every exported span belongs to one of the two requests' traces: none lost its parent.
    for span in &spans {
        assert!(
            span.trace_id == trace_id || span.trace_id == blocked_trace,
            "span outside the request traces: {span:#?}"
        );
        assert_eq!(
            span.resource.get("service.name").map(String::as_str),
            Some("gsw-otel-test")
        );
        assert_eq!(
            span.resource.get("deployment.environment.name").map(String::as_str),
            Some("it")
        );
        // No guest id, display name, attribute value, message text or PII value in any span.
        secrets.assert_absent(&span.all_text(), &format!("span {}", span.name));
    }
    let ours: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.trace_id == trace_id).collect();

    let consume = one(&ours, "consume");
    assert_eq!(
        consume.parent_span_id, upstream_span,
        "consume is a child of the upstream span"
    );
    assert_eq!(consume.kind, SPAN_KIND_CONSUMER);
    assert_eq!(consume.attr("messaging.system"), Some("rabbitmq"));
    assert_eq!(consume.attr("messaging.operation.type"), Some("process"));
    assert_eq!(
        consume.attr("messaging.destination.name"),
        Some(env.topology.request_exchange.as_str())
    );
    assert_eq!(
        consume.attr("messaging.destination.subscription.name"),
        Some(env.topology.request_queue.as_str())
    );
    assert_eq!(
        consume.attr("messaging.rabbitmq.destination.routing_key"),
        Some("session.request")
    );
    assert_eq!(consume.attr("messaging.message.id"), Some(created_id.as_str()));
    // Numbers arrive as OTLP integers, so a backend can compare them.
    assert!(consume.int_attr("messaging.rabbitmq.message.delivery_tag").is_some());
    assert!(consume.int_attr("messaging.message.body.size").is_some_and(|n| n > 0));
    assert_eq!(consume.attr("guest_session.outcome"), Some("created"));
    assert_eq!(consume.status_code, 0, "a created request is no error");

    let validate = one(&ours, "validate");
    assert_eq!(validate.parent_span_id, consume.span_id);

    let create = one(&ours, "genesys.create_session");
    assert_eq!(create.parent_span_id, consume.span_id);
    assert_eq!(create.int_attr("genesys.attempts"), Some(2));
    assert_eq!(create.attr("request_id"), Some(created_id.as_str()));
    let mut attempts: Vec<&ReceivedSpan> = children(&ours, create)
        .into_iter()
        .filter(|s| s.kind == SPAN_KIND_CLIENT && s.name == "POST")
        .collect();
    assert_eq!(attempts.len(), 2, "one child per HTTP attempt: {ours:#?}");
    attempts.sort_by_key(|s| s.attr("http.request.resend_count").map(str::to_string));
    let (first, retry) = (attempts[0], attempts[1]);
    assert_eq!(
        first.attr("http.request.resend_count"),
        None,
        "not set on the first attempt"
    );
    assert_eq!(first.int_attr("http.response.status_code"), Some(503));
    assert_eq!(first.attr("error.type"), Some("503"));
    assert_eq!(first.status_code, 2, "a failed attempt has status ERROR");
    assert_eq!(retry.int_attr("http.request.resend_count"), Some(1));
    assert_eq!(retry.int_attr("http.response.status_code"), Some(202));
    for attempt in [first, retry] {
        assert_eq!(attempt.attr("http.request.method"), Some("POST"));
        assert_eq!(attempt.attr("server.address"), Some("127.0.0.1"));
        assert_eq!(attempt.int_attr("server.port"), Some(i64::from(env.sim.addr().port())));
        assert!(
            attempt
                .attr("url.full")
                .is_some_and(|u| u.contains("/inbound/open/message"))
        );
    }
    let token = one(&ours, "genesys.token");
    assert_eq!(token.parent_span_id, create.span_id);
    assert_eq!(token.int_attr("http.response.status_code"), Some(200));
    assert_eq!(token.int_attr("server.port"), Some(i64::from(env.sim.addr().port())));

    let publish = one(&ours, "publish");
    assert_eq!(publish.parent_span_id, consume.span_id);
    assert_eq!(publish.kind, SPAN_KIND_PRODUCER);
    assert_eq!(publish.attr("messaging.system"), Some("rabbitmq"));
    assert_eq!(publish.attr("messaging.operation.type"), Some("send"));
    assert_eq!(
        publish.attr("messaging.destination.name"),
        Some(env.topology.crm_exchange.as_str())
    );
    assert_eq!(
        publish.attr("messaging.rabbitmq.destination.routing_key"),
        Some("session.created")
    );
    assert_eq!(
        publish.int_attr("messaging.batch.message_count"),
        Some(3),
        "event + audit + reply"
    );

    // The CRM event continues the trace, with the publish span as its parent.
    let event = &events[0];
    let event_json: serde_json::Value = serde_json::from_slice(&event.data).expect("event JSON");
    assert_eq!(publish.attr("messaging.message.id"), event_json["event_id"].as_str());
    let (event_trace, event_parent) = parse_traceparent(&header(event, "traceparent").expect("event traceparent"));
    assert_eq!(event_trace, trace_id);
    assert_eq!(event_parent, publish.span_id);
    assert_eq!(header(event, "tracestate").as_deref(), Some("upstream=kept"));
    let (reply_trace, reply_parent) =
        parse_traceparent(&header(&replies[0], "traceparent").expect("reply traceparent"));
    assert_eq!(
        (reply_trace.as_str(), reply_parent.as_str()),
        (trace_id.as_str(), publish.span_id.as_str())
    );

    // The rejected request: its own trace, dead letter and audit record continue it.
    let blocked: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.trace_id == blocked_trace).collect();
    let blocked_consume = one(&blocked, "consume");
    assert_eq!(blocked_consume.parent_span_id, blocked_span);
    assert_eq!(blocked_consume.attr("guest_session.outcome"), Some("rejected"));
    assert_eq!(blocked_consume.attr("guest_session.reason"), Some("pii_blocked"));
    assert_eq!(
        blocked_consume.status_code, 0,
        "a rejected request is the sender's error, not ours"
    );
    assert_eq!(one(&blocked, "validate").attr("reason"), Some("pii_blocked"));
    let blocked_publish = one(&blocked, "publish");
    assert_eq!(
        blocked_publish.attr("messaging.destination.name"),
        Some(env.topology.dead_letter_exchange.as_str())
    );
    let (dead_trace, dead_parent) =
        parse_traceparent(&header(&dead[0], "traceparent").expect("dead letter traceparent"));
    assert_eq!(
        (dead_trace.as_str(), dead_parent.as_str()),
        (blocked_trace.as_str(), blocked_publish.span_id.as_str())
    );

    // Audit records carry the trace id, and are logged at target `audit` too.
    let mut audit_traces: Vec<String> = audits
        .iter()
        .map(|d| {
            let record: serde_json::Value = serde_json::from_slice(&d.data).expect("audit JSON");
            let trace = record["trace_id"]
                .as_str()
                .expect("trace_id in audit record")
                .to_string();
            let (header_trace, _) = parse_traceparent(&header(d, "traceparent").expect("audit traceparent"));
            assert_eq!(header_trace, trace, "the audit message continues the request's trace");
            trace
        })
        .collect();
    audit_traces.sort();
    let mut expected = vec![trace_id.clone(), blocked_trace.clone()];
    expected.sort();
    assert_eq!(audit_traces, expected);
    let audit_lines: Vec<&str> = stderr.lines().filter(|l| l.contains(r#""target":"audit""#)).collect();
    assert_eq!(audit_lines.len(), 2, "one audit log line per request:\n{stderr}");
    let mut logged: Vec<(String, String)> = audit_lines
        .iter()
        .map(|line| {
            let entry: serde_json::Value = serde_json::from_str(line).expect("JSON log line");
            let fields = &entry["fields"];
            assert_eq!(fields["guest_ref"].as_str().map(str::len), Some(64), "{line}");
            (
                fields["request_id"].as_str().unwrap_or_default().to_string(),
                fields["outcome"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    logged.sort();
    let mut expected_log = vec![
        (created_id.clone(), "created".to_string()),
        (blocked_id.clone(), "rejected".to_string()),
    ];
    expected_log.sort();
    assert_eq!(logged, expected_log);
    // Nothing the worker logged holds a guest's data either.
    secrets.assert_absent(&stderr, "the worker's log");

    env.cleanup().await;
}

#[tokio::test]
async fn run_refuses_an_otlp_protocol_it_cannot_speak() {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_guest-session-worker"))
        .arg("run")
        .env_clear()
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        .env("AUDIT_HMAC_KEY", "k")
        .env("HEALTH_ADDR", "127.0.0.1:0")
        .output()
        .await
        .expect("the binary runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("OTEL_EXPORTER_OTLP_PROTOCOL=grpc") && stderr.contains("http/protobuf"),
        "{stderr}"
    );
}

/// An unroutable `session.created` event comes back from the broker whole (guest id, attributes);
/// lapin would log it at WARN. Not even a RUST_LOG that asks for it lets it into the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unroutable_event_is_dead_lettered_without_its_body_in_the_log() {
    let env = TestEnv::start_with(EnvOptions {
        start_worker: false,
        ..Default::default()
    })
    .await;
    // No CRM queue is bound: the event is unroutable.
    let secrets = Secrets::new();
    let request_id = format!("req-unroutable-{}", random_hex(8));
    env.publish(body(&secrets.valid(&request_id))).await;
    let receiver = OtlpReceiver::start().await;
    let worker = ChildWorker::spawn(
        &env,
        &[
            ("RUST_LOG", "info,lapin::returned_messages=trace"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.endpoint()),
        ],
    );
    let dead = env.take(&env.topology.dead_letter_queue.clone(), 1, WAIT).await;
    let (exited_cleanly, stderr) = worker.terminate().await;
    assert!(exited_cleanly, "worker exit status after SIGTERM:\n{stderr}");
    assert_eq!(header(&dead[0], "x-error-kind").as_deref(), Some("event_unroutable"));
    // A request the worker could not carry through fails its `consume` span too.
    let spans = receiver.spans();
    let all: Vec<&ReceivedSpan> = spans.iter().collect();
    let consume = one(&all, "consume");
    assert_eq!(consume.attr("guest_session.outcome"), Some("failed"));
    assert_eq!(consume.attr("error.type"), Some("event_unroutable"));
    assert_eq!(consume.status_code, 2, "status ERROR");
    assert!(stderr.contains("event_unroutable"), "the worker reports it:\n{stderr}");
    // lapin prints the body as a byte list, so look for its log line, not only the strings.
    assert!(
        !stderr.contains("lapin::returned_messages") && !stderr.contains("returned us a message"),
        "lapin logged the returned event:\n{stderr}"
    );
    secrets.assert_absent(&stderr, "the worker's log");
    env.cleanup().await;
}

/// A request still running when the shutdown grace ends goes back to the queue; its `consume`
/// span says so instead of ending as if nothing happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_abandoned_at_the_end_of_the_grace_period_marks_its_consume_span() {
    let mut env = TestEnv::start_with(EnvOptions {
        start_worker: false,
        ..Default::default()
    })
    .await;
    env.bind_events().await;
    // Genesys answers after the grace period: the request cannot finish in time.
    env.sim.set_faults(Faults {
        latency_ms: Some(20_000),
        ..Faults::default()
    });
    let request_id = format!("req-abandoned-{}", random_hex(8));
    env.publish(body(&valid_request(&request_id))).await;
    let receiver = OtlpReceiver::start().await;
    let worker = ChildWorker::spawn(
        &env,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.endpoint()),
            ("WORKER_SHUTDOWN_GRACE_SECS", "2"),
        ],
    );
    // Wait until the request is in flight (the simulator has its call).
    let deadline = tokio::time::Instant::now() + WAIT;
    while env.sim.stats().api_requests == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the request never reached Genesys"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (exited_cleanly, stderr) = worker.terminate().await;
    assert!(exited_cleanly, "worker exit status after SIGTERM:\n{stderr}");
    let spans = receiver.spans();
    let all: Vec<&ReceivedSpan> = spans.iter().collect();
    let consume = one(&all, "consume");
    assert_eq!(consume.attr("error.type"), Some("abandoned"), "{consume:#?}");
    assert_eq!(consume.status_code, 2, "status ERROR");
    assert_eq!(consume.attr("guest_session.outcome"), None, "no final outcome");
    assert_eq!(
        env.message_count(&env.topology.request_queue).await,
        1,
        "the request is back in the queue"
    );
    env.cleanup().await;
}
