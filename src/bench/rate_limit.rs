//! `bench rate-limit`: how well 1 or N worker processes share one Genesys quota (issue 5).
//!
//! Every scenario starts a fresh simulator in-process, queues a backlog under a unique name prefix
//! on the local broker *before* the workers start (so they are never short of work), starts N
//! processes of this executable (`run`), and watches from outside: the simulator's counters for
//! calls, sessions and 429s; the CRM and dead-letter exchanges for outcomes; each worker's
//! `/metrics` for its own calls.
//!
//! - **steady**: a backlog of `backlog_windows` × the window's quota. Goodput is the number of
//!   sessions Genesys created between the end of the first window and the start of the last one
//!   (while the backlog surely lasts), over what the quota allows in that time.
//! - **storm**: in the middle of the first window, every call is answered 429 with a fixed
//!   `Retry-After` for a while (`POST /__sim/faults`). Counted: each worker's Genesys calls while
//!   it lasts, the most in any `Retry-After` period, and that every request is created afterwards.
//!
//! Time is compressed so a run takes about two minutes: Genesys's 300 calls per 60 s become 300
//! per 10 s, and the issue's storm (`Retry-After: 30` for 60 s, one window) becomes `Retry-After:
//! 3` for 6 s with a 6 s window: the same ratios, ten times faster.

use std::{fmt::Write as _, path::PathBuf, time::Duration};

use tokio::time::Instant;

use super::{BenchError, Lab, Outcomes, WorkerCounters, WorkerSpec, Workers, spawn_sim, unique_prefix};
use crate::sim::{Faults, RunningSim, SimConfig, Storm};

/// The section of `BENCHMARKS.md` this family writes.
pub const SECTION: &str = "rate-limit";

/// A scenario of the family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// A backlog of several windows' quota.
    Steady,
    /// A 429 storm in the middle of the first window.
    Storm,
}

impl Scenario {
    fn label(self) -> &'static str {
        match self {
            Scenario::Steady => "steady backlog",
            Scenario::Storm => "429 storm",
        }
    }
}

/// What to run, and at what scale.
#[derive(Debug, Clone)]
pub struct RateLimitOptions {
    pub amqp_url: String,
    /// Prepended to every scenario's unique name prefix.
    pub name_prefix: String,
    /// The worker executable; `None` runs this one.
    pub worker_exe: Option<PathBuf>,
    pub replicas: Vec<usize>,
    pub scenarios: Vec<Scenario>,
    /// Calls allowed per window (Genesys: 300).
    pub quota: u32,
    /// The steady scenario's window (Genesys: 60 s).
    pub window: Duration,
    /// The steady backlog, in windows' worth of quota.
    pub backlog_windows: u32,
    /// The storm scenario's window.
    pub storm_window: Duration,
    /// The storm scenario's backlog, in windows' worth of quota.
    pub storm_backlog_windows: u32,
    pub storm_retry_after_secs: u64,
    pub storm_duration: Duration,
    /// Simulated Genesys latency per call.
    pub latency_ms: u64,
    /// `WORKER_CONCURRENCY` of each worker.
    pub concurrency: u16,
    /// A tiny run (CI): the figures mean little and targets are not judged.
    pub smoke: bool,
}

impl RateLimitOptions {
    /// The documented run: ~2 minutes.
    pub fn standard(amqp_url: impl Into<String>) -> Self {
        Self {
            amqp_url: amqp_url.into(),
            name_prefix: String::new(),
            worker_exe: None,
            replicas: vec![1, 3],
            scenarios: vec![Scenario::Steady, Scenario::Storm],
            quota: 300,
            window: Duration::from_secs(10),
            backlog_windows: 4,
            storm_window: Duration::from_secs(6),
            storm_backlog_windows: 2,
            storm_retry_after_secs: 3,
            storm_duration: Duration::from_secs(6),
            latency_ms: 20,
            concurrency: 64,
            smoke: false,
        }
    }

    /// A few seconds: one replica, tiny quota and windows.
    pub fn smoke(amqp_url: impl Into<String>) -> Self {
        Self {
            replicas: vec![1],
            quota: 20,
            window: Duration::from_secs(1),
            backlog_windows: 3,
            storm_window: Duration::from_secs(2),
            storm_backlog_windows: 1,
            storm_retry_after_secs: 1,
            storm_duration: Duration::from_secs(2),
            latency_ms: 5,
            concurrency: 16,
            smoke: true,
            ..Self::standard(amqp_url)
        }
    }

    fn sim_config(&self, window: Duration) -> SimConfig {
        SimConfig {
            quota_per_minute: self.quota,
            quota_window_secs: window.as_secs_f64(),
            latency_ms: self.latency_ms,
            ..SimConfig::for_tests()
        }
    }

    fn worker_spec(&self, sim: &RunningSim, config: &SimConfig, prefix: &str) -> WorkerSpec {
        let mut spec = WorkerSpec::for_sim(sim, config, &self.amqp_url, prefix);
        if let Some(exe) = &self.worker_exe {
            spec.exe = exe.clone();
        }
        // The quota's per-minute equivalent, as an operator would configure it for Genesys.
        let per_minute = f64::from(config.quota_per_minute) * 60.0 / config.quota_window_secs;
        spec.rate_limit_per_minute = per_minute.round().clamp(1.0, f64::from(u32::MAX)) as u32;
        spec.concurrency = self.concurrency;
        spec
    }
}

/// Figures of one storm run.
#[derive(Debug, Clone, PartialEq)]
pub struct StormFigures {
    /// Each worker's Genesys calls while the storm lasted.
    pub calls_per_replica: Vec<u64>,
    /// The most calls one worker made within any `Retry-After` period of the storm.
    pub max_per_retry_after: u64,
    /// How many `Retry-After` periods the storm lasted.
    pub periods: f64,
}

/// One line of the table.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub scenario: Scenario,
    pub replicas: usize,
    pub backlog: u64,
    pub quota: u32,
    pub window: Duration,
    /// Sessions created per unit of time after the first window, as a fraction of the quota.
    pub goodput: Option<f64>,
    /// Genesys calls (all workers) and how many were answered 429.
    pub calls: u64,
    pub throttled: u64,
    pub created: u64,
    pub dead_letters: u64,
    /// Requests with no outcome at the end (neither created nor dead-lettered).
    pub lost: u64,
    /// Each worker's share of the sessions it created.
    pub shares: Vec<f64>,
    pub storm: Option<StormFigures>,
    pub retry_after_secs: u64,
    pub elapsed: Duration,
}

impl Row {
    pub fn throttled_share(&self) -> f64 {
        self.throttled as f64 / self.calls.max(1) as f64
    }

    /// The issue's target for this line.
    pub fn target(&self) -> String {
        match (self.scenario, self.replicas) {
            (Scenario::Steady, 1) => "goodput ≥ 97 %, 429s ≤ 1 %, 0 dead letters".to_string(),
            (Scenario::Steady, _) => "goodput ≥ 90 %, 429s ≤ 3 %, 0 dead letters".to_string(),
            (Scenario::Storm, _) => format!(
                "≤ 3 calls per replica per Retry-After ({} s) during the storm; all created, 0 lost",
                self.retry_after_secs
            ),
        }
    }

    /// Whether the line meets its target.
    pub fn met(&self) -> bool {
        let clean = self.dead_letters == 0 && self.lost == 0;
        match (self.scenario, self.replicas) {
            (Scenario::Steady, 1) => clean && self.goodput.is_some_and(|g| g >= 0.97) && self.throttled_share() <= 0.01,
            (Scenario::Steady, _) => clean && self.goodput.is_some_and(|g| g >= 0.90) && self.throttled_share() <= 0.03,
            (Scenario::Storm, _) => {
                clean && self.created == self.backlog && self.storm.as_ref().is_some_and(|s| s.max_per_retry_after <= 3)
            }
        }
    }
}

/// The result of a run.
#[derive(Debug, Clone)]
pub struct Report {
    pub options: RateLimitOptions,
    pub rows: Vec<Row>,
    pub date: chrono::DateTime<chrono::Utc>,
}

impl Report {
    /// Every line met its target (smoke runs are not judged).
    pub fn targets_met(&self) -> bool {
        self.options.smoke || self.rows.iter().all(Row::met)
    }

    /// No request was lost or dead-lettered: what must hold even in a smoke run.
    pub fn nothing_lost(&self) -> bool {
        self.rows.iter().all(|r| r.lost == 0 && r.dead_letters == 0)
    }

    /// The `BENCHMARKS.md` section.
    pub fn markdown(&self) -> String {
        let o = &self.options;
        let mut md = String::new();
        let _ = writeln!(md, "## Rate limits (`bench rate-limit`)\n");
        let command = if o.smoke {
            "cargo run --release -- bench rate-limit --smoke"
        } else {
            "cargo run --release -- bench rate-limit"
        };
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        let _ = writeln!(
            md,
            "Reproduce with `{command}` (RabbitMQ at `AMQP_URL`). Last run {} on {cores} cores{}.\n",
            self.date.format("%Y-%m-%d %H:%M UTC"),
            if o.smoke {
                ", **smoke run: sizes too small to judge**"
            } else {
                ""
            },
        );
        let _ = writeln!(
            md,
            "Each line: a fresh Genesys simulator ({} ms per call), the backlog queued before the workers start, \
             N worker processes (`run`, `WORKER_CONCURRENCY={}`, `GENESYS_RATE_LIMIT_PER_MINUTE` = the quota per minute) \
             sharing one OAuth client, hence one quota. Time is compressed: the quota is {} calls per {} s window \
             (Genesys: 300 per 60 s); the storm (`Retry-After: 30` for 60 s, one window, in the issue) becomes `Retry-After: {}` \
             for {} s with a {} s window — the same ratios.\n",
            o.latency_ms,
            o.concurrency,
            o.quota,
            secs(o.window),
            o.storm_retry_after_secs,
            secs(o.storm_duration),
            secs(o.storm_window),
        );
        let _ = writeln!(
            md,
            "| scenario | replicas | offered load | goodput (% of quota) | 429s (% of calls) | dead letters | lost | Genesys calls during the storm | per-replica share | target | met |"
        );
        let _ = writeln!(
            md,
            "| --- | ---: | --- | ---: | ---: | ---: | ---: | --- | --- | --- | :---: |"
        );
        for r in &self.rows {
            let offered = match r.scenario {
                Scenario::Steady => format!(
                    "{} queued at once ({}× the {} s window's quota of {})",
                    r.backlog,
                    r.backlog / u64::from(r.quota.max(1)),
                    secs(r.window),
                    r.quota
                ),
                Scenario::Storm => format!(
                    "{} queued; quota {} per {} s; storm from mid-window",
                    r.backlog,
                    r.quota,
                    secs(r.window)
                ),
            };
            let goodput = r
                .goodput
                .map_or_else(|| "—".to_string(), |g| format!("{:.1} %", g * 100.0));
            let storm = r.storm.as_ref().map_or_else(
                || "—".to_string(),
                |s| {
                    format!(
                        "max {} per replica per {} s Retry-After; {} in total over {:.0} periods ({})",
                        s.max_per_retry_after,
                        r.retry_after_secs,
                        s.calls_per_replica.iter().sum::<u64>(),
                        s.periods,
                        s.calls_per_replica
                            .iter()
                            .map(u64::to_string)
                            .collect::<Vec<_>>()
                            .join(" / ")
                    )
                },
            );
            let shares = if r.shares.len() > 1 {
                r.shares
                    .iter()
                    .map(|s| format!("{:.0} %", s * 100.0))
                    .collect::<Vec<_>>()
                    .join(" / ")
            } else {
                "—".to_string()
            };
            let met = if o.smoke {
                "n/a"
            } else if r.met() {
                "✅"
            } else {
                "❌"
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {:.2} % ({} of {}) | {} | {} | {} | {} | {} | {} |",
                r.scenario.label(),
                r.replicas,
                offered,
                goodput,
                r.throttled_share() * 100.0,
                r.throttled,
                r.calls,
                r.dead_letters,
                r.lost,
                storm,
                shares,
                r.target(),
                met
            );
        }
        let _ = writeln!(
            md,
            "\nHow it is measured: *goodput* = sessions the simulator created from the end of the first window to the start \
             of the last full one (the backlog lasts throughout), over the quota for that time; *429s* = the simulator's 429 \
             answers over all its API calls for the whole run; *dead letters* = messages on the dead-letter exchange; *lost* = \
             requests with neither a `session.created` event nor a dead letter at the end; *calls during the storm* = each \
             worker's own count of Genesys responses (`/metrics`), sampled every 100 ms; *per-replica share* = each worker's \
             share of the 2xx answers."
        );
        md
    }
}

fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{s:.0}")
    } else {
        format!("{s:.1}")
    }
}

/// Runs every requested scenario for every requested replica count; `progress` hears about each.
pub async fn run(options: RateLimitOptions, progress: &(dyn Fn(&str) + Sync)) -> Result<Report, BenchError> {
    let date = chrono::Utc::now();
    let mut rows = Vec::new();
    for scenario in &options.scenarios {
        for &replicas in &options.replicas {
            progress(&format!("{} with {replicas} replica(s)…", scenario.label()));
            let row = match scenario {
                Scenario::Steady => steady(&options, replicas).await?,
                Scenario::Storm => storm(&options, replicas).await?,
            };
            progress(&format!(
                "  goodput {}, 429s {:.2} %, {} created, {} dead letters, {} lost, {:.1} s{}",
                row.goodput.map_or("—".to_string(), |g| format!("{:.1} %", g * 100.0)),
                row.throttled_share() * 100.0,
                row.created,
                row.dead_letters,
                row.lost,
                row.elapsed.as_secs_f64(),
                row.storm.as_ref().map_or(String::new(), |s| format!(
                    ", storm calls per replica {:?} (max {} per Retry-After)",
                    s.calls_per_replica, s.max_per_retry_after
                )),
            ));
            rows.push(row);
        }
    }
    Ok(Report { options, rows, date })
}

/// What a scenario needs: a simulator, a lab with its observers, and the queued backlog.
struct Setup {
    sim: RunningSim,
    config: SimConfig,
    lab: Lab,
    prefix: String,
}

impl Setup {
    async fn start(o: &RateLimitOptions, window: Duration) -> Result<Self, BenchError> {
        let config = o.sim_config(window);
        let sim = spawn_sim(config.clone()).await?;
        let prefix = unique_prefix(&o.name_prefix, SECTION);
        match Lab::open(&o.amqp_url, &prefix).await {
            Ok(lab) => Ok(Self {
                sim,
                config,
                lab,
                prefix,
            }),
            Err(e) => {
                sim.shutdown().await;
                Err(e)
            }
        }
    }

    async fn finish(self) {
        self.lab.close().await;
        self.sim.shutdown().await;
    }
}

/// Polls every 10 ms until the first API call; returns its (approximate) instant.
async fn first_call(sim: &RunningSim, workers: &mut Workers, timeout: Duration) -> Result<Instant, BenchError> {
    let deadline = Instant::now() + timeout;
    let mut before = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let now = Instant::now();
        if sim.stats().api_requests > 0 {
            return Ok(before + (now - before) / 2);
        }
        workers.check_alive()?;
        if now > deadline {
            return Err(BenchError::Timeout("no worker called Genesys".to_string()));
        }
        before = now;
    }
}

/// Waits until `backlog` requests have an outcome, or `deadline`; samples the sessions created.
async fn drain(
    sim: &RunningSim,
    workers: &mut Workers,
    outcomes: &Outcomes,
    backlog: u64,
    deadline: Instant,
    samples: &mut Vec<(Instant, u64)>,
) -> Result<(), BenchError> {
    let mut checked = Instant::now();
    while outcomes.settled() < backlog && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
        samples.push((Instant::now(), sim.stats().sessions_created));
        if checked.elapsed() > Duration::from_secs(1) {
            workers.check_alive()?;
            checked = Instant::now();
        }
    }
    // Events may trail the last session by a publish; give them a moment.
    let settle = Instant::now() + Duration::from_secs(2);
    while outcomes.settled() < backlog && Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// The value of the last sample at or before `at`.
fn created_at(samples: &[(Instant, u64)], at: Instant) -> u64 {
    samples
        .iter()
        .take_while(|(t, _)| *t <= at)
        .last()
        .map_or(0, |(_, n)| *n)
}

fn shares(counters: &[WorkerCounters]) -> Vec<f64> {
    let total: u64 = counters.iter().map(WorkerCounters::succeeded).sum();
    counters
        .iter()
        .map(|c| c.succeeded() as f64 / total.max(1) as f64)
        .collect()
}

async fn steady(o: &RateLimitOptions, replicas: usize) -> Result<Row, BenchError> {
    let setup = Setup::start(o, o.window).await?;
    let result = steady_in(o, replicas, &setup).await;
    setup.finish().await;
    result
}

async fn steady_in(o: &RateLimitOptions, replicas: usize, setup: &Setup) -> Result<Row, BenchError> {
    let backlog = u64::from(o.quota) * u64::from(o.backlog_windows);
    let outcomes = setup.lab.observe().await?;
    setup
        .lab
        .enqueue(usize::try_from(backlog).unwrap_or(usize::MAX))
        .await?;
    let spec = o.worker_spec(&setup.sim, &setup.config, &setup.prefix);
    let mut workers = Workers::spawn(&spec, replicas).await?;
    let started = Instant::now();
    let t0 = first_call(&setup.sim, &mut workers, Duration::from_secs(30)).await?;
    let mut samples = vec![(t0, 0)];
    // Generous: three times what a perfect pacer needs, plus start-up.
    let deadline = t0 + o.window * (o.backlog_windows + 1) * 3 + Duration::from_secs(30);
    drain(&setup.sim, &mut workers, &outcomes, backlog, deadline, &mut samples).await?;
    let counters = workers.scrape().await?;
    workers.stop().await;

    let measured_windows = o.backlog_windows.saturating_sub(2);
    let goodput = (measured_windows > 0).then(|| {
        let from = t0 + o.window;
        let to = t0 + o.window * (o.backlog_windows - 1);
        let created = created_at(&samples, to) - created_at(&samples, from);
        created as f64 / f64::from(o.quota * measured_windows)
    });
    let stats = setup.sim.stats();
    let (created, dead) = (outcomes.created.get(), outcomes.dead.get());
    Ok(Row {
        scenario: Scenario::Steady,
        replicas,
        backlog,
        quota: o.quota,
        window: o.window,
        goodput,
        calls: stats.api_requests,
        throttled: stats.rate_limited,
        created,
        dead_letters: dead,
        lost: backlog.saturating_sub(created + dead),
        shares: shares(&counters),
        storm: None,
        retry_after_secs: o.storm_retry_after_secs,
        elapsed: started.elapsed(),
    })
}

async fn storm(o: &RateLimitOptions, replicas: usize) -> Result<Row, BenchError> {
    let setup = Setup::start(o, o.storm_window).await?;
    let result = storm_in(o, replicas, &setup).await;
    setup.finish().await;
    result
}

async fn storm_in(o: &RateLimitOptions, replicas: usize, setup: &Setup) -> Result<Row, BenchError> {
    let backlog = u64::from(o.quota) * u64::from(o.storm_backlog_windows.max(1));
    let outcomes = setup.lab.observe().await?;
    setup
        .lab
        .enqueue(usize::try_from(backlog).unwrap_or(usize::MAX))
        .await?;
    let spec = o.worker_spec(&setup.sim, &setup.config, &setup.prefix);
    let mut workers = Workers::spawn(&spec, replicas).await?;
    let started = Instant::now();
    let t0 = first_call(&setup.sim, &mut workers, Duration::from_secs(30)).await?;
    workers.wait_ready(Duration::from_secs(10)).await?;

    // The storm starts in the middle of the first window, through the control endpoint.
    tokio::time::sleep_until(t0 + o.storm_window / 2).await;
    let mut series: Vec<(Instant, Vec<u64>)> = Vec::new();
    let calls = |c: &[WorkerCounters]| c.iter().map(WorkerCounters::calls).collect::<Vec<_>>();
    series.push((Instant::now(), calls(&workers.scrape().await?)));
    reqwest::Client::new()
        .post(format!("{}/__sim/faults", setup.sim.base_url()))
        .json(&Faults {
            storm: Some(Storm {
                retry_after_secs: o.storm_retry_after_secs,
                duration_secs: o.storm_duration.as_secs_f64(),
            }),
            ..Faults::default()
        })
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(BenchError::SimControl)?;
    let storm_start = Instant::now();
    // Answers to calls sent just before the end still count; a latency's grace covers them.
    let storm_end = storm_start + o.storm_duration + Duration::from_millis(o.latency_ms);
    while Instant::now() < storm_end {
        tokio::time::sleep(Duration::from_millis(100)).await;
        series.push((Instant::now(), calls(&workers.scrape().await?)));
    }

    let deadline = Instant::now() + o.storm_window * 3 * 3 + Duration::from_secs(60);
    let mut samples = Vec::new();
    drain(&setup.sim, &mut workers, &outcomes, backlog, deadline, &mut samples).await?;
    let counters = workers.scrape().await?;
    workers.stop().await;

    let figures = storm_figures(
        &series,
        replicas,
        Duration::from_secs(o.storm_retry_after_secs),
        o.storm_duration,
    );
    let stats = setup.sim.stats();
    let (created, dead) = (outcomes.created.get(), outcomes.dead.get());
    Ok(Row {
        scenario: Scenario::Storm,
        replicas,
        backlog,
        quota: o.quota,
        window: o.storm_window,
        goodput: None,
        calls: stats.api_requests,
        throttled: stats.rate_limited,
        created,
        dead_letters: dead,
        lost: backlog.saturating_sub(created + dead),
        shares: shares(&counters),
        storm: Some(figures),
        retry_after_secs: o.storm_retry_after_secs,
        elapsed: started.elapsed(),
    })
}

/// Per-replica calls over the storm, and the most within any `Retry-After` period, from
/// cumulative call counts sampled over it (the first sample taken just before it began).
fn storm_figures(
    series: &[(Instant, Vec<u64>)],
    replicas: usize,
    retry_after: Duration,
    duration: Duration,
) -> StormFigures {
    let count = |i: usize, r: usize| series[i].1.get(r).copied().unwrap_or(0);
    let last = series.len().saturating_sub(1);
    let calls_per_replica = (0..replicas)
        .map(|r| count(last, r).saturating_sub(count(0, r)))
        .collect();
    let mut max_per_retry_after = 0;
    for r in 0..replicas {
        for i in 0..series.len() {
            // Counts in (t_i, t_i + Retry-After]: the calls of one Retry-After period.
            let j = series
                .iter()
                .rposition(|(t, _)| *t <= series[i].0 + retry_after)
                .unwrap_or(i);
            max_per_retry_after = max_per_retry_after.max(count(j, r).saturating_sub(count(i, r)));
        }
    }
    StormFigures {
        calls_per_replica,
        max_per_retry_after,
        periods: duration.as_secs_f64() / retry_after.as_secs_f64().max(f64::MIN_POSITIVE),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storm_figures_count_calls_per_retry_after_period() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let series = vec![
            (at(0), vec![10, 20]),
            (at(100), vec![12, 20]),
            (at(1000), vec![12, 21]),
            (at(3000), vec![13, 21]),
            (at(3200), vec![14, 22]),
            (at(6000), vec![15, 22]),
        ];
        let f = storm_figures(&series, 2, Duration::from_secs(3), Duration::from_secs(6));
        assert_eq!(f.calls_per_replica, vec![5, 2]);
        // Replica 0: 10 → 13 within 0..3 s.
        assert_eq!(f.max_per_retry_after, 3);
        assert_eq!(f.periods, 2.0);
    }

    fn row(scenario: Scenario, replicas: usize, goodput: f64, throttled: u64) -> Row {
        Row {
            scenario,
            replicas,
            backlog: 1200,
            quota: 300,
            window: Duration::from_secs(10),
            goodput: Some(goodput),
            calls: 1000,
            throttled,
            created: 1200,
            dead_letters: 0,
            lost: 0,
            shares: vec![],
            storm: None,
            retry_after_secs: 3,
            elapsed: Duration::from_secs(40),
        }
    }

    #[test]
    fn targets_follow_the_issue() {
        assert!(row(Scenario::Steady, 1, 0.975, 10).met());
        assert!(!row(Scenario::Steady, 1, 0.96, 0).met());
        assert!(!row(Scenario::Steady, 1, 0.99, 11).met());
        assert!(row(Scenario::Steady, 3, 0.91, 30).met());
        assert!(!row(Scenario::Steady, 3, 0.91, 31).met());
        let mut lost = row(Scenario::Steady, 3, 0.99, 0);
        lost.lost = 1;
        assert!(!lost.met());
        let mut storm = row(Scenario::Storm, 3, 0.0, 9);
        storm.storm = Some(StormFigures {
            calls_per_replica: vec![3, 2, 2],
            max_per_retry_after: 3,
            periods: 2.0,
        });
        assert!(storm.met());
        storm.storm.as_mut().unwrap().max_per_retry_after = 4;
        assert!(!storm.met());
    }

    #[test]
    fn the_table_has_one_line_per_row() {
        let report = Report {
            options: RateLimitOptions::standard("amqp://x"),
            rows: vec![row(Scenario::Steady, 1, 0.99, 0), row(Scenario::Steady, 3, 0.95, 12)],
            date: chrono::Utc::now(),
        };
        let md = report.markdown();
        assert!(md.starts_with("## Rate limits"));
        assert_eq!(md.matches("| steady backlog |").count(), 2, "{md}");
        assert!(md.contains("99.0 %") && md.contains("1.20 % (12 of 1000)"), "{md}");
        assert!(report.targets_met());
    }
}
