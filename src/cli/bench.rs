//! `bench`: benchmarks against the local broker, with worker processes of this executable; each
//! family writes its section of `BENCHMARKS.md` (or `--output`).

use std::path::PathBuf;

use anyhow::Context;

use crate::{
    amqp::AmqpArgs,
    bench::{
        self,
        perf::{self, PerfOptions},
        rate_limit::{self, RateLimitOptions, Scenario},
    },
    telemetry::{LogFormat, Telemetry},
};

/// `bench` alone runs every family in turn (perf, then rate-limit), each rewriting its own section
/// of the same file: one command regenerates BENCHMARKS.md.
#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: Option<BenchCommand>,
    #[command(flatten)]
    pub common: CommonArgs,
}

/// The options every family takes (and `bench` alone passes on to each).
#[derive(clap::Args, Clone)]
pub struct CommonArgs {
    #[command(flatten)]
    pub amqp: AmqpArgs,
    /// A tiny run of a few seconds per family (CI): one replica, small quotas and backlogs;
    /// figures are not judged.
    #[arg(long)]
    pub smoke: bool,
    /// The Markdown file whose section of each family run is (re)written.
    #[arg(long, default_value = "BENCHMARKS.md")]
    pub output: PathBuf,
    /// Exit non-zero when a target is missed (always when a request is lost), after every family
    /// asked for has run.
    #[arg(long)]
    pub check: bool,
}

#[derive(clap::Subcommand)]
pub enum BenchCommand {
    /// One Genesys quota shared by 1 or N worker processes: goodput, 429s, dead letters, and a
    /// 429 storm. Build with --release for figures worth quoting.
    RateLimit(RateLimitArgs),
    /// One worker replica against the bare-broker ceiling: throughput, latency scaling (Little's
    /// law), added latency at 500 req/s, peak memory. Build with --release.
    Perf(PerfArgs),
}

#[derive(clap::Args)]
pub struct PerfArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// The worker executable (default: this one).
    #[arg(long)]
    pub worker_exe: Option<PathBuf>,
    /// Run one scenario only (for profiling); prints its figure and writes nothing.
    #[arg(long, value_enum)]
    pub only: Option<perf::Scenario>,
}

/// `bench rate-limit`'s lines when none are asked for.
const DEFAULT_REPLICAS: [usize; 2] = [1, 3];
const DEFAULT_SCENARIOS: [Scenario; 2] = [Scenario::Steady, Scenario::Storm];

#[derive(clap::Args)]
pub struct RateLimitArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Worker processes per scenario, comma-separated (each count is one line of the table).
    #[arg(long, value_delimiter = ',', default_values_t = DEFAULT_REPLICAS)]
    pub replicas: Vec<usize>,
    /// Scenarios to run, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = DEFAULT_SCENARIOS)]
    pub scenario: Vec<Scenario>,
    /// Calls per window of the simulated quota.
    #[arg(long)]
    pub quota: Option<u32>,
    /// Length of the steady scenario's quota window, in seconds.
    #[arg(long)]
    pub window_secs: Option<f64>,
    /// Simulated Genesys latency per call, in milliseconds.
    #[arg(long)]
    pub latency_ms: Option<u64>,
    /// The worker executable (default: this one).
    #[arg(long)]
    pub worker_exe: Option<PathBuf>,
}

pub async fn run(args: BenchArgs, log_format: LogFormat) -> anyhow::Result<()> {
    let telemetry = Telemetry::init(log_format, "warn")?;
    let result = match args.command {
        Some(BenchCommand::RateLimit(args)) => rate_limit(args).await,
        Some(BenchCommand::Perf(args)) => perf(args).await,
        None => every_family(args.common).await,
    };
    telemetry.shutdown();
    result
}

/// `perf`, then `rate-limit` with their default scenarios; a failed or missed family does not
/// keep the next one from running (and rewriting its section).
async fn every_family(common: CommonArgs) -> anyhow::Result<()> {
    let perf_result = perf(PerfArgs {
        common: common.clone(),
        worker_exe: None,
        only: None,
    })
    .await;
    if let Err(error) = &perf_result {
        eprintln!("error: {error:#}; running the rate-limit benchmark anyway");
    }
    let rate_limit_result = rate_limit(RateLimitArgs {
        common,
        replicas: DEFAULT_REPLICAS.to_vec(),
        scenario: DEFAULT_SCENARIOS.to_vec(),
        quota: None,
        window_secs: None,
        latency_ms: None,
        worker_exe: None,
    })
    .await;
    perf_result.and(rate_limit_result)
}

async fn rate_limit(args: RateLimitArgs) -> anyhow::Result<()> {
    let mut options = if args.common.smoke {
        RateLimitOptions::smoke(args.common.amqp.url.clone())
    } else {
        RateLimitOptions::standard(args.common.amqp.url.clone())
    };
    options.name_prefix = args.common.amqp.name_prefix.clone();
    options.worker_exe = args.worker_exe;
    options.scenarios = args.scenario;
    if !args.common.smoke || args.replicas != DEFAULT_REPLICAS {
        options.replicas = args.replicas;
    }
    anyhow::ensure!(
        options.replicas.iter().all(|r| (1..=16).contains(r)),
        "--replicas must be between 1 and 16"
    );
    if let Some(quota) = args.quota {
        anyhow::ensure!(quota >= 1, "--quota must be at least 1");
        options.quota = quota;
    }
    if let Some(secs) = args.window_secs {
        options.window = std::time::Duration::try_from_secs_f64(secs)
            .ok()
            .filter(|w| *w >= std::time::Duration::from_secs(1))
            .context("--window-secs must be at least 1")?;
    }
    if let Some(ms) = args.latency_ms {
        options.latency_ms = ms;
    }
    if !args.common.smoke && cfg!(debug_assertions) {
        eprintln!("note: a debug build; run `cargo run --release -- bench rate-limit` for figures worth quoting");
    }

    let report = rate_limit::run(options, &|line| eprintln!("{line}"))
        .await
        .context("the rate-limit benchmark could not run")?;
    let markdown = report.markdown();
    bench::write_section(&args.common.output, rate_limit::SECTION, &markdown)?;
    println!("{markdown}");
    eprintln!("wrote the rate-limit section of {}", args.common.output.display());
    anyhow::ensure!(
        report.nothing_lost(),
        "requests were lost or dead-lettered (see the table)"
    );
    if args.common.check {
        anyhow::ensure!(report.targets_met(), "a target was missed (see the table)");
    }
    Ok(())
}

async fn perf(args: PerfArgs) -> anyhow::Result<()> {
    let mut options = if args.common.smoke {
        PerfOptions::smoke(args.common.amqp.url.clone())
    } else {
        PerfOptions::standard(args.common.amqp.url.clone())
    };
    options.name_prefix = args.common.amqp.name_prefix.clone();
    options.worker_exe = args.worker_exe;
    options.only = args.only;
    if !args.common.smoke && cfg!(debug_assertions) {
        eprintln!("note: a debug build; run `cargo run --release -- bench perf` for figures worth quoting");
    }
    let report = perf::run(&options, &|line| eprintln!("{line}"))
        .await
        .context("the performance benchmark could not run")?;
    if options.only.is_some() {
        return Ok(());
    }
    let markdown = report.markdown(&machine_line());
    bench::write_section(&args.common.output, perf::SECTION, &markdown)?;
    println!("{markdown}");
    eprintln!("wrote the performance section of {}", args.common.output.display());
    if args.common.check {
        anyhow::ensure!(
            report.targets().iter().all(|(_, _, met)| *met),
            "a target was missed (see the table)"
        );
    }
    Ok(())
}

/// Date, cores, memory, broker and crate versions: what a reader needs to compare runs.
fn machine_line() -> String {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| format!("{:.0} GiB", kb as f64 / 1024.0 / 1024.0))
        .unwrap_or_else(|| "? GiB".into());
    let profile = if cfg!(debug_assertions) { "debug" } else { "release" };
    format!(
        "Reproduce with `cargo run --release -- bench perf` (RabbitMQ at `AMQP_URL`). Last run {} on {cores} cores, {memory}; guest-session-worker {} ({profile} build), lapin 4.12.",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        env!("CARGO_PKG_VERSION"),
    )
}
