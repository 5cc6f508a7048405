//! One shared rate-limit pacer per client, so that every in-flight call spends one quota
//! (DESIGN §3: 300 requests/minute by default, `Retry-After` on 429, `inin-ratelimit-*` headers).
//!
//! - **GCRA** (a token bucket expressed as a "theoretical arrival time"): slots are handed out at
//!   `rate_per_minute`, with a burst of a tenth of a minute's quota. A caller that must wait
//!   reserves its slot, so a hundred waiters sleep once each instead of racing.
//! - **429**: the whole pacer pauses until `Retry-After` (clamped), so concurrent calls stop too;
//!   reservations made before the pause are void and are taken again after it. The rate is cut
//!   multiplicatively (×0.7, once per pause) and grows back additively on each 2xx (AIMD).
//! - **`inin-ratelimit-allowed` / `-count` / `-reset`**: never start more than `allowed - count`
//!   requests before the window resets, whatever the rate says.
//!
//! Every HTTP attempt to the API host calls [`Pacer::acquire`] first and [`Pacer::on_response`]
//! with the response. All times are `tokio::time` instants, so tests run on a paused clock.

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::header::HeaderMap;
use tokio::time::{Instant, sleep_until};

/// Multiplicative decrease on a 429.
pub const DECREASE_FACTOR: f64 = 0.7;
/// Additive increase on a 2xx, as a fraction of the ceiling rate.
pub const INCREASE_FRACTION: f64 = 0.01;
/// The rate never drops below this fraction of the ceiling.
pub const MIN_RATE_FRACTION: f64 = 0.05;
/// Burst capacity as a fraction of the per-minute rate (30 requests at 300/min).
pub const BURST_FRACTION: f64 = 0.1;
/// Pause after a 429 that carries no `Retry-After`.
pub const DEFAULT_PAUSE: Duration = Duration::from_secs(1);
/// A 429 arriving less than this long after a pause ended does not cut the rate again: it most
/// likely answers a request sent before the pause.
pub const CUT_COOLDOWN: Duration = Duration::from_secs(2);

/// A shared, adaptive rate limiter. Cheap to call from many tasks at once (one short mutex).
#[derive(Debug)]
pub struct Pacer {
    state: Mutex<State>,
    ceiling: f64,
    max_pause: Duration,
}

#[derive(Debug)]
struct State {
    /// Current rate, requests per minute.
    rate: f64,
    /// GCRA theoretical arrival time of the next request.
    tat: Instant,
    paused_until: Option<Instant>,
    /// Bumped by every 429; a reservation taken in an older epoch is void.
    epoch: u64,
    /// 429s before this instant belong to the episode that already cut the rate.
    no_cut_until: Option<Instant>,
    window: Option<Window>,
}

/// The server's view of the current quota window, from `inin-ratelimit-*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Window {
    remaining: u64,
    resets_at: Instant,
}

/// A point-in-time view of the pacer, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PacerSnapshot {
    pub rate_per_minute: f64,
    pub paused_for: Option<Duration>,
    /// `allowed - count` of the current window (minus what was started since), if known.
    pub window_remaining: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    Go,
    Sleep(Instant),
    Reserved(Instant, u64),
}

impl Pacer {
    /// A pacer starting (and capped) at `rate_per_minute`; no pause lasts longer than `max_pause`.
    pub fn new(rate_per_minute: u32, max_pause: Duration) -> Self {
        let ceiling = f64::from(rate_per_minute.max(1));
        Self {
            state: Mutex::new(State {
                rate: ceiling,
                tat: Instant::now(),
                paused_until: None,
                epoch: 0,
                no_cut_until: None,
                window: None,
            }),
            ceiling,
            max_pause,
        }
    }

    /// Waits for a slot. Cancel-safe (a dropped caller at worst wastes its slot).
    pub async fn acquire(&self) {
        loop {
            let decision = self.try_take(Instant::now());
            match decision {
                Decision::Go => return,
                Decision::Sleep(until) => sleep_until(until).await,
                Decision::Reserved(at, epoch) => {
                    sleep_until(at).await;
                    if self.reservation_holds(epoch) {
                        return;
                    }
                    // A 429 paused everything while we slept: queue again behind the pause.
                }
            }
        }
    }

    fn reservation_holds(&self, epoch: u64) -> bool {
        self.lock().epoch == epoch
    }

    /// The pacing decision for a caller arriving at `now` (the whole logic, clock-free).
    fn try_take(&self, now: Instant) -> Decision {
        let mut s = self.lock();
        if let Some(until) = s.paused_until {
            if until > now {
                return Decision::Sleep(until);
            }
            s.paused_until = None;
        }
        if let Some(window) = s.window {
            if window.resets_at <= now {
                s.window = None;
            } else if window.remaining == 0 {
                return Decision::Sleep(window.resets_at);
            }
        }
        let (interval, tolerance) = gcra_params(s.rate);
        let tat = s.tat.max(now);
        let ahead = tat - now;
        s.tat = tat + interval;
        if let Some(window) = s.window.as_mut() {
            window.remaining -= 1;
        }
        if ahead <= tolerance {
            Decision::Go
        } else {
            Decision::Reserved(now + (ahead - tolerance), s.epoch)
        }
    }

    /// Feeds one API response back: `inin-ratelimit-*` headers, 429 pause and cut, 2xx recovery.
    pub fn on_response(&self, status: u16, headers: &HeaderMap) {
        self.on_response_at(Instant::now(), status, headers);
    }

    fn on_response_at(&self, now: Instant, status: u16, headers: &HeaderMap) {
        let mut s = self.lock();
        if let Some(window) = window_from_headers(headers, now, self.max_pause) {
            s.window = Some(match s.window {
                None => window,
                Some(current) if current.resets_at <= now => window,
                // Same window (±1 s of rounding): the smaller remaining wins.
                Some(current) if abs_diff(current.resets_at, window.resets_at) <= Duration::from_secs(1) => Window {
                    remaining: current.remaining.min(window.remaining),
                    resets_at: current.resets_at,
                },
                // A newer window.
                Some(current) if window.resets_at > current.resets_at => window,
                // A late response from an older window.
                Some(current) => current,
            });
        }
        match status {
            429 => {
                let wait = super::error::retry_after(headers)
                    .unwrap_or(DEFAULT_PAUSE)
                    .min(self.max_pause);
                let until = now + wait;
                let same_episode = s.paused_until.is_some_and(|p| p > now) || s.no_cut_until.is_some_and(|t| now < t);
                if !same_episode {
                    s.rate = (s.rate * DECREASE_FACTOR).max(self.min_rate());
                }
                if s.paused_until.is_none_or(|p| until > p) {
                    s.paused_until = Some(until);
                }
                let resume = s.paused_until.unwrap_or(until);
                s.no_cut_until = Some(resume + CUT_COOLDOWN);
                // Void every reservation and restart the schedule after the pause without a burst.
                let (_, tolerance) = gcra_params(s.rate);
                s.tat = s.tat.max(resume + tolerance);
                s.epoch += 1;
                tracing::debug!(
                    pause_ms = wait.as_millis() as u64,
                    rate_per_minute = s.rate,
                    "genesys pacer paused by 429"
                );
            }
            200..=299 => {
                s.rate = (s.rate + self.ceiling * INCREASE_FRACTION).min(self.ceiling);
            }
            _ => {}
        }
    }

    pub fn rate_per_minute(&self) -> f64 {
        self.lock().rate
    }

    pub fn snapshot(&self) -> PacerSnapshot {
        self.snapshot_at(Instant::now())
    }

    fn snapshot_at(&self, now: Instant) -> PacerSnapshot {
        let s = self.lock();
        PacerSnapshot {
            rate_per_minute: s.rate,
            paused_for: s.paused_until.filter(|p| *p > now).map(|p| p - now),
            window_remaining: s.window.filter(|w| w.resets_at > now).map(|w| w.remaining),
        }
    }

    fn min_rate(&self) -> f64 {
        (self.ceiling * MIN_RATE_FRACTION).max(1.0)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state stays consistent even if a holder panicked: every update is a plain store.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Emission interval and burst tolerance of GCRA at `rate` requests per minute.
fn gcra_params(rate: f64) -> (Duration, Duration) {
    let interval = Duration::from_secs_f64(60.0 / rate);
    let burst = (rate * BURST_FRACTION).floor().max(1.0);
    (interval, interval.mul_f64(burst - 1.0))
}

fn abs_diff(a: Instant, b: Instant) -> Duration {
    if a > b { a - b } else { b - a }
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// `inin-ratelimit-reset` is read as seconds until the reset, or as a Unix time (seconds or
/// milliseconds) when it is that large; the result never lies more than `max_pause` ahead.
fn window_from_headers(headers: &HeaderMap, now: Instant, max_pause: Duration) -> Option<Window> {
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
    Some(Window {
        remaining: allowed.saturating_sub(count),
        resets_at: now + until_reset.min(max_pause),
    })
}

#[cfg(test)]
mod tests {
    //! The pacer's logic is a function of the instant it is given, so these tests drive their own
    //! clock: `t0 + n seconds`, no sleeping (the crate's dev-dependencies lack tokio's `test-util`,
    //! which `tokio::time::pause` needs). One short real-time test covers the async `acquire` glue.

    use std::sync::Arc;

    use reqwest::header::HeaderValue;

    use super::*;

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

    /// What `acquire` does for a caller arriving at `now` if nothing else happens meanwhile:
    /// the instant it gets its slot.
    fn acquire_at(pacer: &Pacer, mut now: Instant) -> Instant {
        loop {
            match pacer.try_take(now) {
                Decision::Go => return now,
                Decision::Sleep(until) => now = until,
                Decision::Reserved(at, epoch) => {
                    if pacer.reservation_holds(epoch) {
                        return at;
                    }
                    now = at;
                }
            }
        }
    }

    fn pacer(rate: u32) -> (Pacer, Instant) {
        let pacer = Pacer::new(rate, Duration::from_secs(180));
        (pacer, Instant::now())
    }

    #[test]
    fn bursts_then_paces_at_the_rate() {
        // 60/min: one per second, burst of 6.
        let (pacer, t0) = pacer(60);
        let slots: Vec<_> = (0..9).map(|_| acquire_at(&pacer, t0) - t0).collect();
        let expected: Vec<_> = [0, 0, 0, 0, 0, 0, 1, 2, 3]
            .into_iter()
            .map(Duration::from_secs)
            .collect();
        assert_eq!(slots, expected);
        // Idle time refills the burst.
        let later = t0 + secs(60.0);
        assert!((0..6).all(|_| acquire_at(&pacer, later) == later));
        assert_eq!(acquire_at(&pacer, later) - later, secs(1.0));
    }

    #[test]
    fn default_quota_allows_thirty_at_once_then_five_per_second() {
        let (pacer, t0) = pacer(300);
        assert!((0..30).all(|_| acquire_at(&pacer, t0) == t0));
        assert_eq!(acquire_at(&pacer, t0) - t0, secs(0.2));
        assert_eq!(acquire_at(&pacer, t0) - t0, secs(0.4));
    }

    #[test]
    fn a_429_pauses_every_caller_and_voids_reservations() {
        let (pacer, t0) = pacer(60);
        for _ in 0..6 {
            assert_eq!(pacer.try_take(t0), Decision::Go);
        }
        // A waiter reserves the slot at +1 s ...
        let Decision::Reserved(at, epoch) = pacer.try_take(t0) else {
            panic!("expected a reservation")
        };
        assert_eq!(at - t0, secs(1.0));
        // ... then a concurrent call gets a 429 with Retry-After: 5.
        pacer.on_response_at(t0 + secs(0.5), 429, &headers(&[("retry-after", "5")]));
        assert_eq!(pacer.snapshot_at(t0 + secs(0.5)).paused_for, Some(secs(5.0)));
        // The waiter wakes at +1 s: its reservation is void, and it waits out the pause.
        assert!(!pacer.reservation_holds(epoch));
        let waiter = acquire_at(&pacer, at);
        assert_eq!(waiter - t0, secs(5.5));
        // A newcomer during the pause waits too, and there is no burst after it: one interval at
        // the cut rate (42/min) later.
        let newcomer = acquire_at(&pacer, t0 + secs(2.0));
        assert!(
            newcomer >= waiter + secs(60.0 / 42.0) - secs(0.001),
            "{:?}",
            newcomer - t0
        );
    }

    #[test]
    fn retry_after_is_clamped_and_defaults_to_a_second() {
        let pacer = Pacer::new(6000, Duration::from_secs(3));
        let t0 = Instant::now();
        pacer.on_response_at(t0, 429, &headers(&[("retry-after", "3600")]));
        assert_eq!(acquire_at(&pacer, t0) - t0, secs(3.0));

        let (pacer, t0) = self::pacer(6000);
        pacer.on_response_at(t0, 429, &none());
        assert_eq!(acquire_at(&pacer, t0) - t0, DEFAULT_PAUSE);
    }

    #[test]
    fn rate_is_cut_once_per_pause_and_recovers_additively() {
        let (pacer, t0) = pacer(300);
        pacer.on_response_at(t0, 429, &headers(&[("retry-after", "2")]));
        assert!((pacer.rate_per_minute() - 210.0).abs() < 1e-9);
        // More 429s from requests that were already in flight: no further cut.
        pacer.on_response_at(t0 + secs(0.1), 429, &headers(&[("retry-after", "2")]));
        pacer.on_response_at(t0 + secs(2.5), 429, &none());
        assert!((pacer.rate_per_minute() - 210.0).abs() < 1e-9);
        pacer.on_response_at(t0 + secs(3.0), 200, &none());
        assert!((pacer.rate_per_minute() - 213.0).abs() < 1e-9);
        for _ in 0..100 {
            pacer.on_response_at(t0 + secs(3.0), 201, &none());
        }
        assert_eq!(pacer.rate_per_minute(), 300.0);
        // Separate 429 episodes cut again each time, down to the floor.
        for i in 0..50 {
            pacer.on_response_at(
                t0 + secs(10.0) + CUT_COOLDOWN * i,
                429,
                &headers(&[("retry-after", "0")]),
            );
        }
        assert_eq!(pacer.rate_per_minute(), 300.0 * MIN_RATE_FRACTION);
    }

    #[test]
    fn a_cut_rate_spaces_requests_further_apart() {
        let (pacer, t0) = pacer(60);
        pacer.on_response_at(t0, 429, &headers(&[("retry-after", "0")]));
        let first = acquire_at(&pacer, t0);
        let second = acquire_at(&pacer, t0);
        assert!(
            second - first >= secs(60.0 / 42.0) - secs(0.001),
            "{:?}",
            second - first
        );
    }

    #[test]
    fn other_statuses_leave_the_rate_alone() {
        let (pacer, t0) = pacer(300);
        pacer.on_response_at(t0, 429, &none());
        let cut = pacer.rate_per_minute();
        for status in [400, 401, 404, 500, 503] {
            pacer.on_response_at(t0 + secs(5.0), status, &none());
        }
        assert_eq!(pacer.rate_per_minute(), cut);
    }

    fn window(count: &str, reset: &str) -> HeaderMap {
        headers(&[
            ("inin-ratelimit-allowed", "300"),
            ("inin-ratelimit-count", count),
            ("inin-ratelimit-reset", reset),
        ])
    }

    #[test]
    fn an_exhausted_window_waits_for_its_reset() {
        let (pacer, t0) = pacer(6000);
        pacer.on_response_at(t0, 200, &window("298", "10"));
        assert_eq!(pacer.snapshot_at(t0).window_remaining, Some(2));
        assert_eq!(acquire_at(&pacer, t0), t0);
        assert_eq!(acquire_at(&pacer, t0), t0);
        assert_eq!(acquire_at(&pacer, t0) - t0, secs(10.0));
        assert_eq!(pacer.snapshot_at(t0 + secs(10.0)).window_remaining, None);
    }

    #[test]
    fn window_headers_merge_conservatively() {
        let (pacer, t0) = pacer(6000);
        pacer.on_response_at(t0, 200, &window("100", "30"));
        // Same window, a response that left earlier (higher remaining): the smaller wins.
        pacer.on_response_at(t0, 200, &window("90", "30"));
        assert_eq!(pacer.snapshot_at(t0).window_remaining, Some(200));
        // A late response of an older window is ignored.
        pacer.on_response_at(t0, 200, &window("299", "5"));
        assert_eq!(pacer.snapshot_at(t0).window_remaining, Some(200));
        // A new window replaces it.
        pacer.on_response_at(t0, 200, &window("1", "60"));
        assert_eq!(pacer.snapshot_at(t0).window_remaining, Some(299));
        // Incomplete headers are ignored.
        pacer.on_response_at(t0, 200, &headers(&[("inin-ratelimit-allowed", "300")]));
        assert_eq!(pacer.snapshot_at(t0).window_remaining, Some(299));
        // After the reset, the next window's first response starts afresh.
        pacer.on_response_at(t0 + secs(61.0), 200, &window("250", "59"));
        assert_eq!(pacer.snapshot_at(t0 + secs(61.0)).window_remaining, Some(50));
    }

    #[test]
    fn unix_time_resets_are_understood_and_bounded() {
        let (pacer, t0) = pacer(6000);
        let unix = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 20;
        pacer.on_response_at(t0, 200, &window("300", &unix.to_string()));
        let waited = acquire_at(&pacer, t0) - t0;
        assert!(waited > secs(18.0) && waited <= secs(20.0), "{waited:?}");

        let (pacer, t0) = self::pacer(6000);
        pacer.on_response_at(t0, 200, &window("300", &((unix + 100_000) * 1000).to_string()));
        assert_eq!(acquire_at(&pacer, t0) - t0, secs(180.0));
    }

    /// The async glue on the real clock, kept short.
    #[tokio::test]
    async fn acquire_sleeps_through_a_pause_for_every_task() {
        let pacer = Arc::new(Pacer::new(60_000, Duration::from_secs(180)));
        pacer.acquire().await;
        pacer.on_response(429, &headers(&[("retry-after", "1")]));
        let start = Instant::now();
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let pacer = pacer.clone();
                tokio::spawn(async move { pacer.acquire().await })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        assert!(start.elapsed() >= Duration::from_millis(990), "{:?}", start.elapsed());
    }
}
