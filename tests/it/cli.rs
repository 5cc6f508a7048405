//! The command line as a new user meets it.

use std::time::Duration;

use guest_session_worker::amqp::{Topology, connect};

use crate::{
    helpers::{amqp_url, broker_addr, cli, unique_prefix},
    leftovers::Leftovers,
    observability::tcp_proxy::TcpProxy,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_once_exits_zero_and_prints_the_summary() {
    let url = amqp_url().await;
    let prefix = unique_prefix();
    let output = cli(
        &["demo", "--once", "--valid", "10"],
        &[("AMQP_URL", &url), ("AMQP_NAME_PREFIX", &prefix)],
    )
    .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "demo failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("created (session.created)"), "{stdout}");
    assert!(
        stdout.contains("pii_blocked") && stdout.contains("consent_missing"),
        "{stdout}"
    );
    assert!(stdout.contains("p50") && stdout.contains("p99"), "{stdout}");

    let connection = connect(&url, "it-cleanup").await.expect("broker");
    let channel = connection.create_channel().await.expect("channel");
    Topology::new(&prefix)
        .delete(&channel)
        .await
        .expect("demo topology removed");
}

/// What `run` needs besides the broker (a Genesys that is never called here).
const RUN_ENV: [(&str, &str); 7] = [
    ("AUDIT_HMAC_KEY", "k"),
    ("GENESYS_API_URL", "http://127.0.0.1:9"),
    ("GENESYS_LOGIN_URL", "http://127.0.0.1:9"),
    ("GENESYS_CLIENT_ID", "id"),
    ("GENESYS_CLIENT_SECRET", "very-secret-value"),
    ("GENESYS_INTEGRATION_ID", "integration"),
    ("HEALTH_ADDR", "127.0.0.1:0"),
];

#[tokio::test]
async fn run_with_an_unreachable_broker_explains_itself_and_exits_non_zero() {
    let mut env = RUN_ENV.to_vec();
    env.extend([
        ("AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f"),
        ("WORKER_STARTUP_WAIT_SECS", "1"),
    ]);
    let started = std::time::Instant::now();
    let output = cli(&["run"], &env).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("does not answer yet"),
        "it waited for the broker first: {stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(20), "{:?}", started.elapsed());
    assert!(stderr.contains("AMQP_URL"), "{stderr}");
    assert!(stderr.contains("rabbitmq-server"), "{stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("very-secret-value") && !stderr.contains("guest:guest"),
        "{stderr}"
    );
}

/// A pod started while the broker is down waits for it, unready, instead of crash-looping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_waits_for_a_broker_that_comes_up_after_it_started() {
    let url = amqp_url().await;
    let prefix = unique_prefix();
    // Deletes what the worker declared even when an assertion fails first.
    let mut leftovers = Leftovers::new(&url, &Topology::new(&prefix));
    let broker_url = reqwest::Url::parse(&url).expect("AMQP_URL parses");
    // The worker reaches the broker through a proxy that refuses every connection until it is
    // restored, as a broker that is not up yet would.
    let proxy = TcpProxy::start(broker_addr(&broker_url).await).await;
    proxy.cut();
    let health = free_port();
    let mut late_url = broker_url.clone();
    late_url.set_host(Some("127.0.0.1")).expect("host");
    late_url.set_port(Some(proxy.addr().port())).expect("port");
    let health_addr = format!("127.0.0.1:{health}");
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_guest-session-worker"));
    command
        .arg("run")
        .envs(RUN_ENV)
        .env("HEALTH_ADDR", &health_addr)
        .env("AMQP_URL", late_url.as_str())
        .env("AMQP_NAME_PREFIX", &prefix)
        .env("LOG_FORMAT", "pretty")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().expect("the binary runs");
    let readyz = format!("http://{health_addr}/readyz");
    let mut unready_seen = false;
    for _ in 0..50 {
        if let Ok(response) = reqwest::get(&readyz).await {
            assert_eq!(response.status().as_u16(), 503, "not ready without a broker");
            unready_seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(unready_seen, "/readyz is served while the broker is missing");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        child.try_wait().expect("child status").is_none(),
        "run is still waiting"
    );

    proxy.restore();
    let mut ready = false;
    for _ in 0..150 {
        if reqwest::get(&readyz).await.is_ok_and(|r| r.status().as_u16() == 200) {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pid = child.id().expect("pid");
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let output = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("run exits after SIGTERM")
        .expect("output");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(ready, "ready once the broker answered:\n{stderr}");
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("does not answer yet"), "{stderr}");

    let connection = connect(&url, "it-cleanup").await.expect("broker");
    let channel = connection.create_channel().await.expect("channel");
    leftovers.delete_now(&channel).await;
}

/// Credentials the broker refuses are not waited for: retrying cannot fix them.
#[tokio::test]
async fn run_with_a_wrong_broker_password_exits_at_once() {
    let url = amqp_url().await;
    let Some((_, host)) = url.rsplit_once('@') else {
        panic!("AMQP_URL without credentials: {url}");
    };
    let wrong = format!("amqp://guest:N0t-The-Pw@{host}");
    let mut env = RUN_ENV.to_vec();
    env.push(("AMQP_URL", wrong.as_str()));
    let started = std::time::Instant::now();
    let output = cli(&["run"], &env).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("refused the user name or password"), "{stderr}");
    assert!(!stderr.contains("does not answer yet"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(20), "{:?}", started.elapsed());
}

/// An empty pattern list (a templating slip) would switch the PII rule off: refused.
#[tokio::test]
async fn run_refuses_an_empty_pii_pattern_list() {
    for patterns in ["", " , ,", "-"] {
        let mut env = RUN_ENV.to_vec();
        env.push(("PII_KEY_PATTERNS", patterns));
        let output = cli(&["run"], &env).await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{patterns:?}");
        assert!(
            stderr.contains("PII_KEY_PATTERNS holds no pattern"),
            "{patterns:?}: {stderr}"
        );
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

#[tokio::test]
async fn a_mistyped_broker_url_is_refused_without_printing_its_password() {
    for url in [
        "guest:Sup3rS3cret@127.0.0.1",
        "amqp://guest:Sup3rS3cret@127.0.0.1:notaport/%2f",
    ] {
        let output = cli(&["enqueue", "--sample", "1"], &[("AMQP_URL", url)]).await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{url}");
        assert!(stderr.contains("AMQP_URL"), "{stderr}");
        assert!(!stderr.contains("Sup3rS3cret"), "{stderr}");
    }
}

#[tokio::test]
async fn a_wrong_broker_password_is_named_as_such() {
    let url = amqp_url().await;
    let Some((_, host)) = url.rsplit_once('@') else {
        panic!("AMQP_URL without credentials: {url}");
    };
    let wrong = format!("amqp://guest:N0t-The-Pw@{host}");
    let output = cli(&["enqueue", "--sample", "1"], &[("AMQP_URL", wrong.as_str())]).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("refused the user name or password"), "{stderr}");
    assert!(!stderr.contains("N0t-The-Pw"), "{stderr}");
    assert_eq!(
        stderr.matches("ACCESS_REFUSED - Login").count(),
        1,
        "the cause once: {stderr}"
    );
}

#[tokio::test]
async fn run_without_an_audit_key_refuses_to_start() {
    let output = cli(
        &["run"],
        &[
            ("AUDIT_HMAC_KEY", ""),
            ("GENESYS_INTEGRATION_ID", ""),
            ("HEALTH_ADDR", "127.0.0.1:0"),
        ],
    )
    .await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("AUDIT_HMAC_KEY"), "{stderr}");
    assert!(
        stderr.contains("GENESYS_INTEGRATION_ID"),
        "every missing setting in one run: {stderr}"
    );
}

/// AMQP names are at most 255 bytes; a longer prefix must be refused up front, not make lapin
/// panic while declaring the topology.
#[tokio::test]
async fn a_name_prefix_too_long_for_amqp_is_refused_with_a_clear_message() {
    let url = amqp_url().await;
    let prefix = "p".repeat(300);
    for args in [&["enqueue", "--sample", "1"][..], &["dead-letters", "list"]] {
        let output = cli(args, &[("AMQP_URL", &url), ("AMQP_NAME_PREFIX", &prefix)]).await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?}: {stderr}");
        assert!(
            stderr.contains("AMQP_NAME_PREFIX is 300 bytes long; at most 200"),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}
