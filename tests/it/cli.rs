//! The command line as a new user meets it.

use guest_session_worker::amqp::{Topology, connect};

use crate::helpers::{amqp_url, cli, unique_prefix};

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

#[tokio::test]
async fn run_with_an_unreachable_broker_explains_itself_and_exits_non_zero() {
    let output = cli(
        &["run"],
        &[
            ("AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f"),
            ("AUDIT_HMAC_KEY", "k"),
            ("GENESYS_API_URL", "http://127.0.0.1:9"),
            ("GENESYS_LOGIN_URL", "http://127.0.0.1:9"),
            ("GENESYS_CLIENT_ID", "id"),
            ("GENESYS_CLIENT_SECRET", "very-secret-value"),
            ("GENESYS_INTEGRATION_ID", "integration"),
            ("HEALTH_ADDR", "127.0.0.1:0"),
        ],
    )
    .await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("AMQP_URL"), "{stderr}");
    assert!(stderr.contains("rabbitmq-server"), "{stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("very-secret-value") && !stderr.contains("guest:guest"),
        "{stderr}"
    );
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
