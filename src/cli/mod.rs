//! The `guest-session-worker` command line (DESIGN §7). Each subcommand lives in its own file;
//! this is the only place that uses `anyhow` and turns errors into an exit code.

mod bench;
mod dead_letters;
mod demo;
mod enqueue;
mod run;
pub mod sample;
mod sim;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::telemetry::LogFormat;

#[derive(Parser)]
#[command(
    name = "guest-session-worker",
    version,
    about = "Turns queued guest session requests into Genesys Cloud sessions"
)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Json, global = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the worker (the production entry point).
    Run(Box<run::RunArgs>),
    /// Quick start: embedded Genesys simulator + worker on AMQP_URL, a sample batch, a summary.
    /// Its queues and exchanges are named under `demo.` unless AMQP_NAME_PREFIX is set, and are
    /// left in place for inspection.
    Demo(demo::DemoArgs),
    /// Run the Genesys Cloud simulator alone.
    Sim(sim::SimArgs),
    /// Publish session requests to the request exchange.
    Enqueue(enqueue::EnqueueArgs),
    /// Inspect and replay dead letters.
    #[command(subcommand)]
    DeadLetters(dead_letters::DeadLettersCommand),
    /// Benchmarks against the local broker: `bench` runs them all, `bench perf` and `bench
    /// rate-limit` one family; results go to BENCHMARKS.md.
    Bench(bench::BenchArgs),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let log_format = cli.log_format;
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Run(args) => run::run(*args, log_format).await,
            Command::Demo(args) => demo::run(args, log_format).await,
            Command::Sim(args) => sim::run(args, log_format).await,
            Command::Enqueue(args) => enqueue::run(args).await,
            Command::DeadLetters(command) => dead_letters::run(command).await,
            Command::Bench(command) => bench::run(command, log_format).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // One paragraph, the whole cause chain, no backtrace.
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves when SIGTERM or SIGINT (Ctrl-C) arrives.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}
