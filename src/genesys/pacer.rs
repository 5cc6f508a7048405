//! One shared rate-limit pacer per client, so that every in-flight call spends one quota
//! (DESIGN §3: 300 requests/minute by default, `Retry-After` on 429, `inin-ratelimit-*` headers).
//!
//! Every HTTP attempt to the API host waits in [`Pacer::acquire`] for a [`Slot`], and hands the
//! response back with [`Slot::record`]. Callers wait in single file (a FIFO lock): only the caller
//! at the head of the line watches the clock, so a hundred waiters cost one timer, and the head
//! re-plans with whatever the latest response taught the pacer.
//!
//! # How the next call is timed
//!
//! - **With a live quota window** (`inin-ratelimit-allowed`, `-count`, `-reset` seen): Genesys
//!   counts every call made with the OAuth client in a fixed window, whichever replica made it, so
//!   `count` is the quota the *whole deployment* has used. The pacer estimates what is left of the
//!   shared budget, `allowed − count − (our calls started since that count was taken)`, and
//!   spreads it evenly over the time left until the reset (a tenth of it may go at once). When
//!   nothing is left it waits for the reset. N replicas doing the same thing with no coordination
//!   each take `left / time_left`: together they spend the window's whole budget by its end
//!   (front-loaded, `left` decays like `(1 − t/T)^N`), each replica gets an equal share because
//!   each reads the same shared numbers, and only the last few calls of a window are contended.
//! - **The reset time** is only sent in whole seconds (rounded up), which would blur a compressed
//!   benchmark window or waste up to a second per window. Each response bounds the window's end:
//!   it lies in `(sent + reset − 1 s, received + reset]`. The pacer intersects those intervals
//!   across responses, which pins the end down to a few tens of milliseconds within a second of
//!   traffic, and always waits for the upper bound, so it never starts the next window early.
//! - **Without a window** (no headers yet, or the window has ended and the next one has not
//!   reported): a GCRA token bucket at an additive-increase / multiplicative-decrease rate. Its
//!   ceiling is `GENESYS_RATE_LIMIT_PER_MINUTE`, lowered to `allowed` per window length when the
//!   headers show the quota is smaller; bursts are a tenth of the quota.
//! - **429**: the whole pacer pauses until `Retry-After` (clamped, plus a little jitter so that
//!   replicas do not resume in lockstep), not just the call that got it; the AIMD rate is cut ×0.7
//!   once per episode and grows back by 1 % of the ceiling per 2xx. The first call after a pause is
//!   a *probe*: nobody else goes until it is answered, so a storm of 429s costs one call per
//!   `Retry-After` per replica, however many requests are waiting.
//!
//! All the logic takes the instant as an argument; the async glue only sleeps, so tests drive it on
//! a paused tokio clock.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::header::HeaderMap;
use tokio::sync::Notify;
use tokio::time::{Instant, sleep_until};

/// Multiplicative decrease of the AIMD rate on a 429.
pub const DECREASE_FACTOR: f64 = 0.7;
/// Additive increase of the AIMD rate on a 2xx, as a fraction of the ceiling rate.
pub const INCREASE_FRACTION: f64 = 0.01;
/// The AIMD rate never drops below this fraction of the ceiling.
pub const MIN_RATE_FRACTION: f64 = 0.05;
/// Burst capacity as a fraction of the quota (30 requests at 300/min), or of what is left of the
/// current window.
pub const BURST_FRACTION: f64 = 0.1;
/// Pause after a 429 that carries no `Retry-After`.
pub const DEFAULT_PAUSE: Duration = Duration::from_secs(1);
/// A 429 arriving less than this long after a pause ended does not cut the rate again: it most
/// likely answers a request sent before the pause.
pub const CUT_COOLDOWN: Duration = Duration::from_secs(2);
/// The largest `inin-ratelimit-allowed` taken as it is (far above any Genesys quota).
const MAX_ALLOWED: u64 = 1_000_000_000;
/// The longest emission interval or burst tolerance (a rate of one call a day).
const MAX_INTERVAL: Duration = Duration::from_secs(86_400);

/// A shared, adaptive rate limiter. Cheap to call from many tasks at once (one short mutex).
#[derive(Debug)]
pub struct Pacer {
    state: Mutex<State>,
    /// The single-file line of callers waiting for a slot (tokio's mutex is FIFO).
    line: tokio::sync::Mutex<()>,
    /// Woken by every response, so the head of the line re-plans with fresh information.
    changed: Notify,
    max_pause: Duration,
    /// Jitter on 429 pauses; off in unit tests so that they are exact.
    jitter: bool,
}

#[derive(Debug)]
struct State {
    /// AIMD level: the header-less rate is `level × ceiling`.
    level: f64,
    /// `GENESYS_RATE_LIMIT_PER_MINUTE`.
    configured: f64,
    /// Requests per minute: the configured rate, or `allowed` per window length when the headers
    /// say that is less.
    ceiling: f64,
    /// GCRA theoretical arrival time of the next call.
    tat: Instant,
    paused_until: Option<Instant>,
    /// 429s before this instant belong to the episode that already cut the rate.
    no_cut_until: Option<Instant>,
    /// The next call after a pause must be a probe.
    probe_due: bool,
    /// The probe in flight: nobody else goes until it is answered.
    probe: Option<u64>,
    /// Sequence number of the next slot.
    next_seq: u64,
    window: Option<Window>,
    /// Longest `inin-ratelimit-reset` seen: the window length, give or take the rounding.
    window_len: Option<Duration>,
    /// `inin-ratelimit-allowed` as last seen.
    allowed: Option<u64>,
}

/// What the `inin-ratelimit-*` headers of one response say about the shared window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Report {
    allowed: u64,
    count: u64,
    /// `inin-ratelimit-reset` as a duration.
    until_reset: Duration,
    /// The window ends after this instant ...
    ends_after: Instant,
    /// ... and no later than this one.
    ends_by: Instant,
}

/// The pacer's view of the current quota window, merged from many [`Report`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Window {
    allowed: u64,
    /// The highest count reported for this window ...
    count: u64,
    /// ... by the response to our call with this sequence number: our calls after it are not in
    /// `count` yet.
    counted_through: u64,
    ends_after: Instant,
    ends_by: Instant,
}

impl Window {
    /// What is left of the shared budget, as far as this replica can tell at `next_seq`.
    fn left(&self, next_seq: u64) -> u64 {
        let ours_since = next_seq.saturating_sub(self.counted_through + 1);
        self.allowed.saturating_sub(self.count).saturating_sub(ours_since)
    }
}

/// A point-in-time view of the pacer, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PacerSnapshot {
    /// The AIMD rate used while no quota window is known, requests per minute.
    pub rate_per_minute: f64,
    pub paused_for: Option<Duration>,
    /// The estimated budget left in the current window (all replicas together), if known.
    pub window_remaining: Option<u64>,
    /// Time until the current window resets (its upper bound), if known.
    pub window_resets_in: Option<Duration>,
}

/// The permission to make one call. Hand its response back with [`Slot::record`]; dropping it
/// instead says the call got no response (it failed in transport or was abandoned).
#[derive(Debug)]
#[must_use = "a slot is the permission to make one call; record its response"]
pub struct Slot<'a> {
    pacer: &'a Pacer,
    seq: u64,
    sent: Instant,
    settled: bool,
}

impl Slot<'_> {
    /// Feeds the call's response back: `inin-ratelimit-*` headers, 429 pause and cut, 2xx
    /// recovery.
    pub fn record(mut self, status: u16, headers: &HeaderMap) {
        self.settled = true;
        self.pacer
            .on_response_at(self.seq, self.sent, Instant::now(), status, headers);
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.pacer.on_no_response(self.seq);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    /// Go now with this sequence number.
    Go(u64),
    /// Ask again at this instant (or when a response changes the picture).
    Wait(Instant),
    /// Ask again when the probe in flight is answered.
    AwaitProbe,
}

impl Pacer {
    /// A pacer starting at `rate_per_minute`; no pause lasts longer than `max_pause`.
    pub fn new(rate_per_minute: u32, max_pause: Duration) -> Self {
        Self {
            state: Mutex::new(State {
                level: 1.0,
                configured: f64::from(rate_per_minute.max(1)),
                ceiling: f64::from(rate_per_minute.max(1)),
                tat: Instant::now(),
                paused_until: None,
                no_cut_until: None,
                probe_due: false,
                probe: None,
                next_seq: 0,
                window: None,
                window_len: None,
                allowed: None,
            }),
            line: tokio::sync::Mutex::new(()),
            changed: Notify::new(),
            max_pause,
            jitter: true,
        }
    }

    /// Waits for a slot. Cancel-safe: a dropped caller leaves the line and takes nothing.
    pub async fn acquire(&self) -> Slot<'_> {
        // Fast path: nobody waits in line and the budget allows a call now (a busy, healthy
        // worker's every call); no queueing on the line, no waiter registration.
        let now = Instant::now();
        if let Ok(_head) = self.line.try_lock()
            && let Decision::Go(seq) = self.try_take(now)
        {
            return Slot {
                pacer: self,
                seq,
                sent: now,
                settled: false,
            };
        }
        let _head = self.line.lock().await;
        loop {
            // Registered before reading the state, so a response landing in between still wakes us.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let now = Instant::now();
            match self.try_take(now) {
                Decision::Go(seq) => {
                    return Slot {
                        pacer: self,
                        seq,
                        sent: now,
                        settled: false,
                    };
                }
                Decision::Wait(until) => {
                    tokio::select! {
                        () = sleep_until(until) => {}
                        () = &mut changed => {}
                    }
                }
                Decision::AwaitProbe => changed.await,
            }
        }
    }

    /// Resolves at once unless a 429 paused the pacer; then when the pause is over.
    pub async fn resumed(&self) {
        while let Some(until) = self.paused_until(Instant::now()) {
            sleep_until(until).await;
        }
    }

    fn paused_until(&self, now: Instant) -> Option<Instant> {
        self.lock().paused_until.filter(|p| *p > now)
    }

    /// The pacing decision for the head of the line at `now` (the whole logic, clock-free).
    fn try_take(&self, now: Instant) -> Decision {
        let mut s = self.lock();
        if let Some(until) = s.paused_until {
            if until > now {
                return Decision::Wait(until);
            }
            s.paused_until = None;
        }
        if s.probe.is_some() {
            return Decision::AwaitProbe;
        }
        let (interval, tolerance) = match s.window.filter(|w| w.ends_by > now) {
            Some(window) => {
                let left = window.left(s.next_seq);
                if left == 0 {
                    return Decision::Wait(window.ends_by);
                }
                spread(window.ends_by - now, left)
            }
            None => gcra_params(s.level * s.ceiling, s.allowed),
        };
        let tat = s.tat.max(now);
        let ahead = tat - now;
        if ahead > tolerance {
            return Decision::Wait(now + (ahead - tolerance));
        }
        s.tat = tat + interval;
        let seq = s.next_seq;
        s.next_seq += 1;
        if s.probe_due {
            s.probe_due = false;
            s.probe = Some(seq);
        }
        Decision::Go(seq)
    }

    fn on_response_at(&self, seq: u64, sent: Instant, now: Instant, status: u16, headers: &HeaderMap) {
        let paused = {
            let mut s = self.lock();
            if s.probe == Some(seq) {
                s.probe = None;
            }
            if let Some(report) = report_from_headers(headers, sent, now, self.max_pause) {
                s.learn(report, seq);
            }
            match status {
                429 => Some(self.pause(&mut s, now, headers)),
                200..=299 => {
                    s.level = (s.level + INCREASE_FRACTION).min(1.0);
                    None
                }
                _ => None,
            }
        };
        self.changed.notify_waiters();
        // Logged outside the lock: every Genesys call of the replica takes it.
        if let Some(pause) = paused {
            pause.log();
        }
    }

    fn on_no_response(&self, seq: u64) {
        let released = {
            let mut s = self.lock();
            let was_probe = s.probe == Some(seq);
            if was_probe {
                // No verdict: the next call probes again.
                s.probe = None;
                s.probe_due = true;
            }
            was_probe
        };
        if released {
            self.changed.notify_waiters();
        }
    }

    /// A 429: pause every caller until `Retry-After`, cut the rate once per episode, and make the
    /// first call after the pause a probe.
    fn pause(&self, s: &mut State, now: Instant, headers: &HeaderMap) -> Pause {
        let wait = super::error::retry_after(headers)
            .unwrap_or(DEFAULT_PAUSE)
            .min(self.max_pause);
        let wait = if self.jitter {
            super::retry::with_small_jitter(wait)
        } else {
            wait
        };
        let until = now + wait;
        let same_episode = s.paused_until.is_some_and(|p| p > now) || s.no_cut_until.is_some_and(|t| now < t);
        if !same_episode {
            s.level = (s.level * DECREASE_FACTOR).max(MIN_RATE_FRACTION);
        }
        let resume = match s.paused_until {
            Some(p) if p >= until => p,
            _ => until,
        };
        s.paused_until = Some(resume);
        s.no_cut_until = Some(resume + CUT_COOLDOWN);
        s.probe_due = true;
        // No burst after the pause: the schedule restarts one interval after it.
        s.tat = s.tat.max(resume);
        Pause {
            pause_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
            rate_per_minute: s.level * s.ceiling,
            new_episode: !same_episode,
        }
    }

    /// The AIMD rate used while no quota window is known, requests per minute.
    pub fn rate_per_minute(&self) -> f64 {
        let s = self.lock();
        s.level * s.ceiling
    }

    pub fn snapshot(&self) -> PacerSnapshot {
        self.snapshot_at(Instant::now())
    }

    fn snapshot_at(&self, now: Instant) -> PacerSnapshot {
        let s = self.lock();
        let window = s.window.filter(|w| w.ends_by > now);
        PacerSnapshot {
            rate_per_minute: s.level * s.ceiling,
            paused_for: s.paused_until.filter(|p| *p > now).map(|p| p - now),
            window_remaining: window.map(|w| w.left(s.next_seq)),
            window_resets_in: window.map(|w| w.ends_by - now),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent even if a holder panicked: every update is a plain store.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    #[cfg(test)]
    fn without_jitter(mut self) -> Self {
        self.jitter = false;
        self
    }
}

impl State {
    /// Merges one response's report into the window view, and learns the quota and the window
    /// length (which set the header-less ceiling).
    fn learn(&mut self, report: Report, seq: u64) {
        let fresh = Window {
            allowed: report.allowed,
            count: report.count,
            counted_through: seq,
            ends_after: report.ends_after,
            ends_by: report.ends_by,
        };
        self.window = Some(match self.window {
            None => fresh,
            // Provably a later window than ours: it replaces it.
            Some(current) if report.ends_after >= current.ends_by => fresh,
            // Provably an earlier one (a late answer): ignore it.
            Some(current) if report.ends_by <= current.ends_after => current,
            // The same window: the highest count and the tightest bounds win.
            Some(current) => {
                let (count, counted_through) = if report.count > current.count {
                    (report.count, seq)
                } else {
                    (current.count, current.counted_through)
                };
                Window {
                    allowed: report.allowed,
                    count,
                    counted_through,
                    ends_after: current.ends_after.max(report.ends_after),
                    ends_by: current.ends_by.min(report.ends_by),
                }
            }
        });
        self.allowed = Some(report.allowed);
        let window_len = self
            .window_len
            .map_or(report.until_reset, |l| l.max(report.until_reset));
        self.window_len = Some(window_len);
        // The header-less rate never exceeds the configured one (the operator's cap), but comes
        // down to what the quota really allows.
        let learned = report.allowed as f64 * 60.0 / window_len.as_secs_f64();
        self.ceiling = self.configured.min(learned).max(1.0);
    }
}

/// Spreads `left` calls evenly over `time_left`; a tenth of them may go at once.
fn spread(time_left: Duration, left: u64) -> (Duration, Duration) {
    let interval = time_left.div_f64(left as f64);
    let burst = ((left as f64) * BURST_FRACTION).floor().max(1.0);
    (interval, interval.mul_f64(burst - 1.0))
}

/// Emission interval and burst tolerance of GCRA at `rate` requests per minute, with a burst of a
/// tenth of `allowed` per window when known, else of the per-minute rate.
fn gcra_params(rate: f64, allowed: Option<u64>) -> (Duration, Duration) {
    // `rate` and `allowed` come from the network (adapted to headers): a value no real quota
    // has must not overflow a Duration (which panics), so both ends are clamped.
    let interval = Duration::try_from_secs_f64(60.0 / rate.max(f64::MIN_POSITIVE))
        .unwrap_or(MAX_INTERVAL)
        .min(MAX_INTERVAL);
    let quota = allowed.map_or(rate, |a| a.min(MAX_ALLOWED) as f64);
    let burst = (quota * BURST_FRACTION).floor().max(1.0);
    let tolerance = Duration::try_from_secs_f64(interval.as_secs_f64() * (burst - 1.0))
        .unwrap_or(MAX_INTERVAL)
        .min(MAX_INTERVAL);
    (interval, tolerance)
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// Reads `inin-ratelimit-*` of a response to a call sent at `sent` and received at `received`.
/// `inin-ratelimit-reset` is seconds until the reset, rounded up, or a Unix time (seconds or
/// milliseconds) when it is that large; the end never lies more than `max_pause` ahead.
fn report_from_headers(headers: &HeaderMap, sent: Instant, received: Instant, max_pause: Duration) -> Option<Report> {
    let allowed = header_u64(headers, "inin-ratelimit-allowed")?;
    let count = header_u64(headers, "inin-ratelimit-count")?;
    let reset = header_u64(headers, "inin-ratelimit-reset")?;
    let until_reset = if reset >= 1_000_000_000 {
        let unix_now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let at = if reset >= 1_000_000_000_000 {
            Duration::from_millis(reset)
        } else {
            Duration::from_secs(reset)
        };
        at.saturating_sub(unix_now)
    } else {
        Duration::from_secs(reset)
    };
    if until_reset.is_zero() {
        return None;
    }
    let until_reset = until_reset.min(max_pause);
    // The server read its clock somewhere between `sent` and `received`, and rounded up.
    let ends_by = received + until_reset;
    let ends_after = (sent + until_reset)
        .checked_sub(Duration::from_secs(1))
        .unwrap_or(sent)
        .min(ends_by);
    Some(Report {
        allowed,
        count,
        until_reset,
        ends_after,
        ends_by,
    })
}

/// A pause a 429 started or lengthened, to be logged once the pacer's lock is released.
#[derive(Clone, Copy)]
struct Pause {
    pause_ms: u64,
    rate_per_minute: f64,
    new_episode: bool,
}

impl Pause {
    fn log(self) {
        let Pause {
            pause_ms,
            rate_per_minute,
            new_episode,
        } = self;
        // Every call of the replica waits now: an operator sees the start of each episode (a long
        // `Retry-After` holds the whole replica up to GENESYS_MAX_RETRY_AFTER_SECS).
        if new_episode {
            tracing::info!(
                pause_ms,
                rate_per_minute,
                "genesys answered 429: every call of this replica waits"
            );
        } else {
            tracing::debug!(pause_ms, rate_per_minute, "genesys pacer paused by 429");
        }
    }
}

#[cfg(test)]
mod tests {
    //! The decision logic is driven with explicit instants; the end-to-end behaviour (one or two
    //! pacers against a simulated Genesys quota) runs on a paused tokio clock, so a minute of
    //! traffic takes milliseconds and every run is the same.

    use std::sync::Arc;

    use reqwest::header::HeaderValue;

    use super::*;

    #[test]
    fn quotas_no_real_genesys_sends_do_not_overflow() {
        for (rate, allowed) in [(1.0, Some(u64::MAX)), (f64::MIN_POSITIVE, None), (1e300, Some(0))] {
            let (interval, tolerance) = gcra_params(rate, allowed);
            assert!(interval <= MAX_INTERVAL && tolerance <= MAX_INTERVAL);
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    fn none() -> HeaderMap {
        HeaderMap::new()
    }

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    fn pacer(rate: u32) -> (Pacer, Instant) {
        (
            Pacer::new(rate, Duration::from_secs(180)).without_jitter(),
            Instant::now(),
        )
    }

    /// What `acquire` does for a caller at the head of the line at `now`, if no response arrives
    /// meanwhile: the instant it goes, and its sequence number.
    fn take_at(pacer: &Pacer, mut now: Instant) -> (Instant, u64) {
        loop {
            match pacer.try_take(now) {
                Decision::Go(seq) => return (now, seq),
                Decision::Wait(until) => now = until,
                Decision::AwaitProbe => panic!("waiting for a probe that nobody will answer"),
            }
        }
    }

    fn go_at(pacer: &Pacer, now: Instant) -> Instant {
        take_at(pacer, now).0
    }

    /// Feeds a response to call `seq`, sent at `sent`, received at `at`.
    fn respond(pacer: &Pacer, seq: u64, sent: Instant, at: Instant, status: u16, headers: &HeaderMap) {
        pacer.on_response_at(seq, sent, at, status, headers);
    }

    fn window(allowed: u64, count: u64, reset: u64) -> HeaderMap {
        headers(&[
            ("inin-ratelimit-allowed", &allowed.to_string()),
            ("inin-ratelimit-count", &count.to_string()),
            ("inin-ratelimit-reset", &reset.to_string()),
        ])
    }

    #[test]
    fn without_headers_it_bursts_then_paces_at_the_configured_rate() {
        // 60/min: one per second, burst of 6.
        let (pacer, t0) = pacer(60);
        let slots: Vec<_> = (0..9).map(|_| go_at(&pacer, t0) - t0).collect();
        let expected: Vec<_> = [0, 0, 0, 0, 0, 0, 1, 2, 3]
            .into_iter()
            .map(Duration::from_secs)
            .collect();
        assert_eq!(slots, expected);
        // Idle time refills the burst.
        let later = t0 + secs(60.0);
        assert!((0..6).all(|_| go_at(&pacer, later) == later));
        assert_eq!(go_at(&pacer, later) - later, secs(1.0));

        // The default quota: 30 at once, then five a second.
        let (pacer, t0) = self::pacer(300);
        assert!((0..30).all(|_| go_at(&pacer, t0) == t0));
        assert_eq!(go_at(&pacer, t0) - t0, secs(0.2));
    }

    #[test]
    fn a_429_pauses_every_caller_and_the_first_call_after_it_probes() {
        let (pacer, t0) = pacer(60);
        let (_, first) = take_at(&pacer, t0);
        respond(
            &pacer,
            first,
            t0,
            t0 + secs(0.5),
            429,
            &headers(&[("retry-after", "5")]),
        );
        assert_eq!(pacer.snapshot_at(t0 + secs(0.5)).paused_for, Some(secs(5.0)));
        // A caller arriving during the pause waits it out ...
        assert_eq!(pacer.try_take(t0 + secs(1.0)), Decision::Wait(t0 + secs(5.5)));
        let (probe_at, probe) = take_at(&pacer, t0 + secs(1.0));
        assert_eq!(probe_at, t0 + secs(5.5));
        // ... and goes alone: nobody else until the probe is answered, however long it takes.
        assert_eq!(pacer.try_take(t0 + secs(9.0)), Decision::AwaitProbe);
        respond(&pacer, probe, probe_at, t0 + secs(9.0), 202, &none());
        assert_eq!(pacer.try_take(t0 + secs(9.0)), Decision::Go(probe + 1));
    }

    #[test]
    fn a_probe_that_gets_no_answer_hands_over_to_the_next_caller() {
        let (pacer, t0) = pacer(600);
        let (_, first) = take_at(&pacer, t0);
        respond(&pacer, first, t0, t0, 429, &headers(&[("retry-after", "1")]));
        let (at, probe) = take_at(&pacer, t0);
        assert_eq!(pacer.try_take(at), Decision::AwaitProbe);
        pacer.on_no_response(probe);
        let (next_at, next) = take_at(&pacer, at);
        assert_eq!((next_at, next), (at, probe + 1));
        // That one is the probe now.
        assert_eq!(pacer.try_take(at), Decision::AwaitProbe);
    }

    #[test]
    fn retry_after_is_clamped_and_defaults_to_a_second() {
        let pacer = Pacer::new(6000, Duration::from_secs(3)).without_jitter();
        let t0 = Instant::now();
        let (_, seq) = take_at(&pacer, t0);
        respond(&pacer, seq, t0, t0, 429, &headers(&[("retry-after", "3600")]));
        assert_eq!(go_at(&pacer, t0) - t0, secs(3.0));

        let (pacer, t0) = self::pacer(6000);
        let (_, seq) = take_at(&pacer, t0);
        respond(&pacer, seq, t0, t0, 429, &none());
        assert_eq!(go_at(&pacer, t0) - t0, DEFAULT_PAUSE);
    }

    #[test]
    fn pauses_are_jittered_upwards_only() {
        for _ in 0..50 {
            let pacer = Pacer::new(6000, Duration::from_secs(180));
            let t0 = Instant::now();
            pacer.on_response_at(0, t0, t0, 429, &headers(&[("retry-after", "2")]));
            let paused = pacer.snapshot_at(t0).paused_for.unwrap();
            assert!(paused >= secs(2.0) && paused <= secs(2.2), "{paused:?}");
        }
    }

    #[test]
    fn the_rate_is_cut_once_per_pause_and_recovers_additively() {
        let (pacer, t0) = pacer(300);
        respond(&pacer, 0, t0, t0, 429, &headers(&[("retry-after", "2")]));
        assert!((pacer.rate_per_minute() - 210.0).abs() < 1e-9);
        // More 429s from requests that were already in flight: no further cut.
        respond(&pacer, 1, t0, t0 + secs(0.1), 429, &headers(&[("retry-after", "2")]));
        respond(&pacer, 2, t0, t0 + secs(2.5), 429, &none());
        assert!((pacer.rate_per_minute() - 210.0).abs() < 1e-9);
        respond(&pacer, 3, t0, t0 + secs(3.0), 200, &none());
        assert!((pacer.rate_per_minute() - 213.0).abs() < 1e-9);
        for seq in 4..104 {
            respond(&pacer, seq, t0, t0 + secs(3.0), 201, &none());
        }
        assert_eq!(pacer.rate_per_minute(), 300.0);
        // Separate 429 episodes cut again each time, down to the floor.
        for i in 0..50 {
            let at = t0 + secs(10.0) + CUT_COOLDOWN * i;
            respond(
                &pacer,
                200 + u64::from(i),
                at,
                at,
                429,
                &headers(&[("retry-after", "0")]),
            );
        }
        assert_eq!(pacer.rate_per_minute(), 300.0 * MIN_RATE_FRACTION);
        // Other statuses leave it alone.
        for status in [400, 401, 404, 500, 503] {
            respond(&pacer, 300, t0, t0 + secs(200.0), status, &none());
        }
        assert_eq!(pacer.rate_per_minute(), 300.0 * MIN_RATE_FRACTION);
    }

    #[test]
    fn an_exhausted_window_waits_for_its_reset_then_refills() {
        let (pacer, t0) = pacer(6000);
        let (_, seq) = take_at(&pacer, t0);
        respond(&pacer, seq, t0, t0, 202, &window(300, 298, 10));
        assert_eq!(pacer.snapshot_at(t0).window_remaining, Some(2));
        assert_eq!(pacer.snapshot_at(t0).window_resets_in, Some(secs(10.0)));
        // Two left: they are spread over the ten seconds, then nothing until the reset.
        let a = go_at(&pacer, t0);
        let b = go_at(&pacer, t0);
        assert!(a < t0 + secs(10.0) && b < t0 + secs(10.0) && a <= b);
        assert_eq!(pacer.snapshot_at(b).window_remaining, Some(0));
        assert_eq!(go_at(&pacer, b), t0 + secs(10.0));
        // The next window's first answer refills the budget: the pace is its quota over its length.
        let t1 = t0 + secs(10.0);
        respond(&pacer, seq + 3, t1, t1 + secs(0.05), 202, &window(300, 1, 10));
        let snapshot = pacer.snapshot_at(t1 + secs(0.05));
        assert_eq!(snapshot.window_remaining, Some(299));
        let gaps: Vec<_> = (0..40).map(|_| go_at(&pacer, t1 + secs(0.05))).collect();
        let spread = *gaps.last().unwrap() - gaps[0];
        // A tenth goes at once, the rest at about 10 s / 300 each.
        assert!(spread > secs(0.3) && spread < secs(0.6), "{spread:?}");
    }

    #[test]
    fn the_reset_is_pinned_down_from_many_rounded_answers() {
        let (pacer, t0) = pacer(6000);
        // The window really ends at t0 + 9.62 s; each answer rounds the time left up.
        let end = t0 + secs(9.62);
        for (i, at) in [0.0, 0.3, 0.61, 0.65, 1.0].into_iter().enumerate() {
            let now = t0 + secs(at);
            let reset = (end - now).as_secs_f64().ceil() as u64;
            respond(&pacer, i as u64, now, now, 202, &window(300, 10 + i as u64, reset));
        }
        let resets_in = pacer.snapshot_at(t0).window_resets_in.unwrap();
        assert!(resets_in >= secs(9.62) && resets_in <= secs(9.66), "{resets_in:?}");
    }

    #[test]
    fn late_answers_from_an_older_window_are_ignored() {
        let (pacer, t0) = pacer(6000);
        respond(&pacer, 5, t0, t0, 202, &window(300, 100, 30));
        // An answer that left earlier in the same window (lower count) does not raise the budget.
        respond(&pacer, 4, t0, t0, 202, &window(300, 90, 30));
        assert_eq!(pacer.snapshot_at(t0).window_remaining, Some(200));
        // A new window replaces it.
        let t1 = t0 + secs(30.0);
        respond(&pacer, 6, t1, t1, 202, &window(300, 1, 60));
        assert_eq!(pacer.snapshot_at(t1).window_remaining, Some(299));
        // A late answer from the old window is ignored.
        respond(&pacer, 3, t0, t1 + secs(0.1), 202, &window(300, 299, 1));
        assert_eq!(pacer.snapshot_at(t1 + secs(0.1)).window_remaining, Some(299));
        // Incomplete headers are ignored.
        respond(&pacer, 7, t1, t1, 202, &headers(&[("inin-ratelimit-allowed", "300")]));
        assert_eq!(pacer.snapshot_at(t1).window_remaining, Some(299));
    }

    #[test]
    fn our_own_calls_since_the_last_count_are_deducted() {
        let (pacer, t0) = pacer(6000);
        let (_, first) = take_at(&pacer, t0);
        for _ in 0..4 {
            take_at(&pacer, t0);
        }
        // The first call's answer counts 10 (ours and others'); the 4 we started after it are not
        // in that count yet.
        respond(&pacer, first, t0, t0, 202, &window(20, 10, 10));
        assert_eq!(pacer.snapshot_at(t0).window_remaining, Some(6));
    }

    #[test]
    fn unix_time_resets_are_understood_and_bounded() {
        let (pacer, t0) = pacer(6000);
        let unix = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 20;
        respond(&pacer, 0, t0, t0, 202, &window(300, 300, unix));
        let waited = go_at(&pacer, t0) - t0;
        assert!(waited > secs(18.0) && waited <= secs(20.0), "{waited:?}");

        let (pacer, t0) = self::pacer(6000);
        respond(&pacer, 0, t0, t0, 202, &window(300, 300, (unix + 100_000) * 1000));
        assert_eq!(go_at(&pacer, t0) - t0, secs(180.0));
    }

    /// The async glue: every task sleeps through a pause, and the line drains in order.
    #[tokio::test(start_paused = true)]
    async fn acquire_sleeps_through_a_pause_for_every_task() {
        let pacer = Arc::new(Pacer::new(60_000, Duration::from_secs(180)).without_jitter());
        pacer.acquire().await.record(429, &headers(&[("retry-after", "1")]));
        let start = Instant::now();
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let pacer = pacer.clone();
                tokio::spawn(async move { pacer.acquire().await.record(202, &none()) })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        assert!(start.elapsed() >= Duration::from_secs(1), "{:?}", start.elapsed());
        assert!(pacer.snapshot().paused_for.is_none());
    }

    // ---- A simulated Genesys quota, shared by one or more pacers ----

    /// A fixed-window quota like Genesys's (and the simulator's): `allowed` calls per window,
    /// the window opening with the first call after the previous one ended; `reset` rounded up to
    /// whole seconds; a 429 carries `Retry-After` = the time left.
    struct FakeGenesys {
        allowed: u64,
        window: Duration,
        headers: bool,
        state: Mutex<(Option<Instant>, u64)>,
    }

    impl FakeGenesys {
        fn new(allowed: u64, window: Duration, headers: bool) -> Arc<Self> {
            Arc::new(Self {
                allowed,
                window,
                headers,
                state: Mutex::new((None, 0)),
            })
        }

        /// Another client of the same quota spends everything that is left of the window.
        fn spend_the_rest(&self, now: Instant) {
            while self.call(now).0 != 429 {}
        }

        fn call(&self, now: Instant) -> (u16, HeaderMap) {
            let mut state = self.state.lock().unwrap();
            let (start, used) = &mut *state;
            if start.is_none_or(|s| now - s >= self.window) {
                *start = Some(now);
                *used = 0;
            }
            let left = self.window - (now - start.unwrap());
            let reset = left.as_secs_f64().ceil().max(1.0) as u64;
            let status = if *used < self.allowed {
                *used += 1;
                202
            } else {
                429
            };
            let mut map = if self.headers {
                window(self.allowed, *used, reset)
            } else {
                HeaderMap::new()
            };
            if status == 429 {
                map.insert("retry-after", HeaderValue::from(reset));
            }
            (status, map)
        }
    }

    #[derive(Default)]
    struct Tally {
        created: Vec<Instant>,
        throttled: usize,
        calls: usize,
    }

    impl std::fmt::Debug for Tally {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(
                f,
                "{} created, {} of {} calls throttled",
                self.created.len(),
                self.throttled,
                self.calls
            )
        }
    }

    impl Tally {
        fn created_between(&self, from: Instant, to: Instant) -> usize {
            self.created.iter().filter(|t| **t >= from && **t < to).count()
        }
        fn throttled_share(&self) -> f64 {
            self.throttled as f64 / self.calls.max(1) as f64
        }
    }

    /// `workers` tasks per pacer call `genesys` through it for `run_for`, each call taking
    /// `latency` (half each way); a 429 delays that worker by its `Retry-After`, like the retry
    /// policy does.
    async fn drive(
        pacers: &[Arc<Pacer>],
        genesys: &Arc<FakeGenesys>,
        workers: usize,
        latency: Duration,
        run_for: Duration,
    ) -> Vec<Tally> {
        let end = Instant::now() + run_for;
        let tallies: Vec<_> = pacers.iter().map(|_| Arc::new(Mutex::new(Tally::default()))).collect();
        let mut tasks = Vec::new();
        for (pacer, tally) in pacers.iter().zip(&tallies) {
            for _ in 0..workers {
                let (pacer, tally, genesys) = (pacer.clone(), tally.clone(), genesys.clone());
                tasks.push(tokio::spawn(async move {
                    while Instant::now() < end {
                        let slot = pacer.acquire().await;
                        tokio::time::sleep(latency / 2).await;
                        let (status, headers) = genesys.call(Instant::now());
                        tokio::time::sleep(latency / 2).await;
                        slot.record(status, &headers);
                        {
                            let mut tally = tally.lock().unwrap();
                            tally.calls += 1;
                            if status == 429 {
                                tally.throttled += 1;
                            } else {
                                tally.created.push(Instant::now());
                            }
                        }
                        if status == 429 {
                            let wait = crate::genesys::error::retry_after(&headers).unwrap_or(DEFAULT_PAUSE);
                            tokio::time::sleep(wait).await;
                        }
                    }
                }));
            }
        }
        for task in tasks {
            task.await.unwrap();
        }
        tallies
            .into_iter()
            .map(|t| std::mem::take(&mut *t.lock().unwrap()))
            .collect()
    }

    const WINDOW: Duration = Duration::from_secs(10);
    const ALLOWED: u64 = 300;

    #[tokio::test(start_paused = true)]
    async fn one_replica_uses_the_whole_quota_with_almost_no_429s() {
        let genesys = FakeGenesys::new(ALLOWED, WINDOW, true);
        // Configured at the quota's per-minute rate, as documented.
        let pacer = Arc::new(Pacer::new(1800, Duration::from_secs(180)).without_jitter());
        let t0 = Instant::now();
        let tally = drive(&[pacer], &genesys, 32, secs(0.04), WINDOW * 8).await.remove(0);
        let created = tally.created_between(t0 + WINDOW, t0 + WINDOW * 8);
        let goodput = created as f64 / (7 * ALLOWED) as f64;
        assert!(goodput >= 0.97, "goodput {goodput:.3} ({created} created)");
        assert!(tally.throttled_share() <= 0.01, "{tally:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn two_replicas_share_one_quota_fairly() {
        let genesys = FakeGenesys::new(ALLOWED, WINDOW, true);
        let pacers: Vec<_> = (0..2)
            .map(|_| Arc::new(Pacer::new(1800, Duration::from_secs(180)).without_jitter()))
            .collect();
        let t0 = Instant::now();
        let tallies = drive(&pacers, &genesys, 32, secs(0.04), WINDOW * 8).await;
        let created: Vec<_> = tallies
            .iter()
            .map(|t| t.created_between(t0 + WINDOW, t0 + WINDOW * 8))
            .collect();
        let total: usize = created.iter().sum();
        let goodput = total as f64 / (7 * ALLOWED) as f64;
        assert!(goodput >= 0.90, "goodput {goodput:.3} {created:?}");
        for share in &created {
            let share = *share as f64 / total as f64;
            assert!((0.4..=0.6).contains(&share), "{created:?}");
        }
        let calls: usize = tallies.iter().map(|t| t.calls).sum();
        let throttled: usize = tallies.iter().map(|t| t.throttled).sum();
        assert!(
            throttled as f64 <= 0.03 * calls as f64,
            "{throttled} of {calls} throttled"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_429_it_converges_on_the_headers_and_stops_drawing_them() {
        let genesys = FakeGenesys::new(ALLOWED, WINDOW, true);
        let pacer = Arc::new(Pacer::new(1800, Duration::from_secs(180)).without_jitter());
        // 13 s in, someone else spends what is left of the second window: the pacer draws 429s.
        let thief = tokio::spawn({
            let genesys = genesys.clone();
            async move {
                tokio::time::sleep(secs(13.0)).await;
                genesys.spend_the_rest(Instant::now());
            }
        });
        let first = drive(std::slice::from_ref(&pacer), &genesys, 32, secs(0.04), WINDOW * 3)
            .await
            .remove(0);
        thief.await.unwrap();
        assert!(first.throttled > 0, "{first:?}");
        // A handful only: the pause stopped every worker until the reset.
        assert!(first.throttled <= 5, "{first:?}");
        // From then on the headers set the pace again: no more 429s, the whole quota used.
        let t1 = Instant::now();
        let later = drive(&[pacer], &genesys, 32, secs(0.04), WINDOW * 4).await.remove(0);
        assert_eq!(later.throttled, 0, "{later:?}");
        let created = later.created_between(t1, t1 + WINDOW * 4);
        assert!(created as f64 >= 0.97 * (4 * ALLOWED) as f64, "{later:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn without_headers_a_429_pause_lasts_until_the_reset_and_costs_little() {
        // No inin-ratelimit-* at all, Genesys's real 300 per minute, and a configured rate twice
        // that: only 429s and Retry-After teach the pacer. Each window ends in one short 429
        // episode whose pause lasts until the reset, so the quota is still used.
        let minute = Duration::from_secs(60);
        let genesys = FakeGenesys::new(ALLOWED, minute, false);
        let pacer = Arc::new(Pacer::new(600, Duration::from_secs(180)).without_jitter());
        let t0 = Instant::now();
        let tally = drive(std::slice::from_ref(&pacer), &genesys, 32, secs(0.04), minute * 6)
            .await
            .remove(0);
        let created = tally.created_between(t0 + minute, t0 + minute * 6);
        assert!(created as f64 >= 0.95 * (5 * ALLOWED) as f64, "{tally:?}");
        assert!(tally.throttled_share() <= 0.02, "{tally:?}");
    }
}
