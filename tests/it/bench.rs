//! The benchmarks' smoke runs (`bench rate-limit --smoke`, `bench --smoke`): they run end to end
//! (simulator, worker processes, broker) and write their tables where told, never to BENCHMARKS.md.

use crate::helpers::{amqp_url, cli, unique_prefix};

/// A run where nothing failed logs no errors: its own teardown (observers stopped before their
/// queues are deleted) must not make the broker close channels under it.
fn assert_quiet(stderr: &str) {
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|line| line.contains("\"level\":\"ERROR\""))
        .collect();
    assert!(errors.is_empty(), "a clean run logged errors:\n{}", errors.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_smoke_run_exits_zero_and_writes_its_table() {
    let url = amqp_url().await;
    let dir = std::env::temp_dir().join(format!("gsw-bench-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("BENCHMARKS.md");
    std::fs::write(&path, "# Benchmarks\n\nkept as is\n").expect("seed file");
    let output = cli(
        &[
            "bench",
            "rate-limit",
            "--smoke",
            "--output",
            path.to_str().expect("UTF-8 temp path"),
        ],
        &[
            ("AMQP_URL", &url),
            ("AMQP_NAME_PREFIX", &unique_prefix()),
            ("LOG_FORMAT", "json"),
        ],
    )
    .await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "bench failed: {stderr}");
    assert_quiet(&stderr);
    let table = std::fs::read_to_string(&path).expect("the table was written");
    assert!(table.contains("kept as is"), "{table}");
    assert!(table.contains("## Rate limits"), "{table}");
    assert!(table.contains("| steady backlog | 1 |"), "{table}");
    assert!(table.contains("| 429 storm | 1 |"), "{table}");
    assert!(table.contains("bench:rate-limit:end"), "{table}");
    std::fs::remove_dir_all(&dir).expect("temp dir removed");
}

/// `bench --smoke` (no family named): every family runs, perf then rate-limit, each scenario for a
/// moment, and both sections land where they are told.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_smoke_run_exits_zero_and_writes_every_section() {
    let url = amqp_url().await;
    let dir = std::env::temp_dir().join(format!("gsw-perf-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("BENCHMARKS.md");
    let output = cli(
        &["bench", "--smoke", "--output", path.to_str().expect("UTF-8 temp path")],
        &[
            ("AMQP_URL", &url),
            ("AMQP_NAME_PREFIX", &unique_prefix()),
            ("LOG_FORMAT", "json"),
        ],
    )
    .await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "bench failed: {stderr}");
    assert_quiet(&stderr);
    let table = std::fs::read_to_string(&path).expect("the table was written");
    for row in [
        "## Performance",
        "throughput ≥ 0.45 × ceiling",
        "the contract's floor",
        "Little's law",
        "p99 added latency",
        // The broker's own latency beside the worker's, with the disk probe (a local broker).
        "through a bare relay",
        "Round 1: worker p50",
        "peak RSS",
        "What we changed",
        // Where the CPU went; the worker's share is read from its live process.
        "µs in the worker",
        // The rate-limit family ran after it, into the same file.
        "## Rate limits",
        "| steady backlog | 1 |",
        "| 429 storm | 1 |",
    ] {
        assert!(table.contains(row), "missing {row}: {table}");
    }
    std::fs::remove_dir_all(&dir).expect("temp dir removed");
}
