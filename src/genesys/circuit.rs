//! A circuit breaker over Genesys calls, so that a Genesys outage pauses the worker instead of
//! cycling every queued request through its retries into the dead-letter queue.
//!
//! - **Closed** (healthy): every call goes. Consecutive failures (5xx except 501, 408, timeouts,
//!   connection errors) are counted; any answer that shows Genesys is up (2xx, 4xx, 429) resets
//!   the count.
//! - **Open**: after [`CircuitSettings::failures_to_open`] consecutive failures spanning at least
//!   [`CircuitSettings::min_failure_span`] (so a burst of concurrent failures is one blip, not an
//!   outage). No call goes for `open_for` (2 s, doubling up to `max_open_for`, 5 s, while probes
//!   keep failing).
//! - **Half-open**: one call, the *probe*, goes; the others wait for its verdict. Success closes
//!   the circuit, failure opens it again for longer.
//!
//! The circuit never makes a request fail sooner: a call that arrives while it is open *waits*
//! (within its own retry budget, which the caller enforces) rather than failing. The worker asks
//! [`Circuit::accepting`] before taking a new delivery, so new work stays in the queue meanwhile.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::{Instant, sleep_until};

/// When the circuit opens, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitSettings {
    /// Consecutive failed calls that open the circuit ...
    pub failures_to_open: u32,
    /// ... provided the first and the last of them are at least this far apart.
    pub min_failure_span: Duration,
    /// How long the circuit stays open the first time.
    pub open_for: Duration,
    /// Each failed probe doubles the open time, up to this.
    pub max_open_for: Duration,
}

impl Default for CircuitSettings {
    fn default() -> Self {
        Self {
            failures_to_open: 5,
            min_failure_span: Duration::from_secs(1),
            open_for: Duration::from_secs(2),
            max_open_for: Duration::from_secs(5),
        }
    }
}

/// The circuit's state, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    Closed,
    Open { remaining: Duration },
    HalfOpen,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Closed,
    Open { until: Instant },
    HalfOpen { probing: bool },
}

#[derive(Debug)]
struct State {
    mode: Mode,
    /// Consecutive failures, and when the first of them happened.
    streak: u32,
    streak_since: Option<Instant>,
    /// The next open period.
    open_for: Duration,
    /// Callers waiting in [`Circuit::admit`].
    waiting: usize,
}

impl State {
    /// The mode at `now` (an open circuit whose time is up is half-open).
    fn mode_at(&mut self, now: Instant) -> Mode {
        if let Mode::Open { until } = self.mode
            && until <= now
        {
            self.mode = Mode::HalfOpen { probing: false };
        }
        self.mode
    }
}

/// A circuit breaker shared by every call of one client.
#[derive(Debug)]
pub struct Circuit {
    state: Mutex<State>,
    changed: Notify,
    settings: CircuitSettings,
}

/// The permission to make one call. Report the outcome with [`Pass::succeeded`] or
/// [`Pass::failed`]; dropping it says nothing about Genesys's health (the call was abandoned or
/// failed for a reason of its own).
#[derive(Debug)]
#[must_use = "report the call's outcome to the circuit"]
pub struct Pass<'a> {
    circuit: &'a Circuit,
    probe: bool,
    settled: bool,
}

impl Pass<'_> {
    /// Genesys answered (any status that is not a server failure).
    pub fn succeeded(mut self) {
        self.settled = true;
        self.circuit.on_success();
    }

    /// The call failed in a way that suggests Genesys is down (5xx, 408, timeout, connection).
    pub fn failed(mut self) {
        self.settled = true;
        self.circuit.on_failure(self.probe, Instant::now());
    }
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        if !self.settled && self.probe {
            self.circuit.on_abandoned_probe();
        }
    }
}

enum Admission {
    Go { probe: bool },
    Wait(Instant),
    AwaitProbe,
}

/// Counts a caller waiting in `admit` for as long as it waits (also when it is cancelled).
struct Waiting<'a>(&'a Circuit);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.lock().waiting -= 1;
    }
}

impl Circuit {
    pub fn new(settings: CircuitSettings) -> Self {
        Self {
            state: Mutex::new(State {
                mode: Mode::Closed,
                streak: 0,
                streak_since: None,
                open_for: settings.open_for,
                waiting: 0,
            }),
            changed: Notify::new(),
            settings,
        }
    }

    /// Waits until a call may go: at once while closed; while open, until the half-open probe is
    /// let through or has succeeded. Cancel-safe.
    pub async fn admit(&self) -> Pass<'_> {
        self.lock().waiting += 1;
        let _waiting = Waiting(self);
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            match self.try_admit(Instant::now()) {
                Admission::Go { probe } => {
                    return Pass {
                        circuit: self,
                        probe,
                        settled: false,
                    };
                }
                Admission::Wait(until) => {
                    tokio::select! {
                        () = sleep_until(until) => {}
                        () = &mut changed => {}
                    }
                }
                Admission::AwaitProbe => changed.await,
            }
        }
    }

    /// Resolves when new work is welcome: the circuit is closed, or it is half-open and no call
    /// is already waiting to be the probe (then the new work may bring one).
    pub async fn accepting(&self) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let wait = {
                let mut s = self.lock();
                match s.mode_at(Instant::now()) {
                    Mode::Closed => return,
                    Mode::HalfOpen { probing: false } if s.waiting == 0 => return,
                    Mode::Open { until } => Some(until),
                    Mode::HalfOpen { .. } => None,
                }
            };
            match wait {
                Some(until) => {
                    tokio::select! {
                        () = sleep_until(until) => {}
                        () = &mut changed => {}
                    }
                }
                None => changed.await,
            }
        }
    }

    pub fn state(&self) -> CircuitState {
        let now = Instant::now();
        match self.lock().mode_at(now) {
            Mode::Closed => CircuitState::Closed,
            Mode::Open { until } => CircuitState::Open { remaining: until - now },
            Mode::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }

    fn try_admit(&self, now: Instant) -> Admission {
        let mut s = self.lock();
        match s.mode_at(now) {
            Mode::Closed => Admission::Go { probe: false },
            Mode::Open { until } => Admission::Wait(until),
            Mode::HalfOpen { probing: true } => Admission::AwaitProbe,
            Mode::HalfOpen { probing: false } => {
                s.mode = Mode::HalfOpen { probing: true };
                Admission::Go { probe: true }
            }
        }
    }

    fn on_success(&self) {
        {
            let mut s = self.lock();
            s.streak = 0;
            s.streak_since = None;
            // Any answer, the probe's or a late one's, shows that Genesys is back.
            if s.mode != Mode::Closed {
                tracing::info!("Genesys answers again: circuit closed, taking new requests");
                s.mode = Mode::Closed;
                s.open_for = self.settings.open_for;
            }
        }
        self.changed.notify_waiters();
    }

    fn on_failure(&self, probe: bool, now: Instant) {
        {
            let mut s = self.lock();
            s.streak = s.streak.saturating_add(1);
            let since = *s.streak_since.get_or_insert(now);
            let open = match s.mode_at(now) {
                Mode::HalfOpen { .. } => probe,
                Mode::Closed => {
                    s.streak >= self.settings.failures_to_open
                        && now.saturating_duration_since(since) >= self.settings.min_failure_span
                }
                Mode::Open { .. } => false,
            };
            if open {
                let open_for = s.open_for;
                s.mode = Mode::Open { until: now + open_for };
                s.open_for = (open_for * 2).min(self.settings.max_open_for);
                tracing::warn!(
                    consecutive_failures = s.streak,
                    open_ms = u64::try_from(open_for.as_millis()).unwrap_or(u64::MAX),
                    "Genesys is failing persistently: circuit open, new requests wait in the queue"
                );
            }
        }
        self.changed.notify_waiters();
    }

    fn on_abandoned_probe(&self) {
        {
            let mut s = self.lock();
            if s.mode == (Mode::HalfOpen { probing: true }) {
                s.mode = Mode::HalfOpen { probing: false };
            }
        }
        self.changed.notify_waiters();
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update is a plain store: the state stays consistent even if a holder panicked.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn circuit() -> Arc<Circuit> {
        Arc::new(Circuit::new(CircuitSettings::default()))
    }

    /// Fails `n` calls 300 ms apart.
    async fn fail(c: &Circuit, n: u32) {
        for _ in 0..n {
            c.admit().await.failed();
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_failures_is_a_blip_but_sustained_ones_open_it() {
        let c = circuit();
        for _ in 0..20 {
            c.admit().await.failed();
        }
        assert_eq!(c.state(), CircuitState::Closed, "20 failures in no time");
        c.admit().await.succeeded();
        fail(&c, 4).await;
        assert_eq!(c.state(), CircuitState::Closed);
        fail(&c, 1).await;
        assert!(matches!(c.state(), CircuitState::Open { .. }), "{:?}", c.state());
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_circuit_makes_callers_wait_and_lets_one_probe_through() {
        let c = circuit();
        fail(&c, 5).await;
        let opened = Instant::now();
        // Three callers arrive while it is open: none goes before the open period ends, and only
        // the probe goes until it is answered.
        let passed = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let callers: Vec<_> = (0..3)
            .map(|_| {
                let (c, passed) = (c.clone(), passed.clone());
                tokio::spawn(async move {
                    let pass = c.admit().await;
                    passed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let at = Instant::now();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    pass.succeeded();
                    at
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(passed.load(std::sync::atomic::Ordering::SeqCst), 0);
        let mut times = Vec::new();
        for caller in callers {
            times.push(caller.await.unwrap());
        }
        times.sort();
        assert!(times[0] >= opened + Duration::from_secs(1), "{:?}", times[0] - opened);
        // The others went after the probe's success (100 ms later).
        assert!(times[1] >= times[0] + Duration::from_millis(100));
        assert_eq!(c.state(), CircuitState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn failed_probes_open_it_for_longer_and_accepting_waits_meanwhile() {
        let c = circuit();
        fail(&c, 5).await;
        let start = Instant::now();
        // Probe fails: open again, now for 4 s.
        c.admit().await.failed();
        let first_probe = Instant::now();
        assert!(matches!(c.state(), CircuitState::Open { remaining } if remaining == Duration::from_secs(4)));
        let accepting = tokio::spawn({
            let c = c.clone();
            async move {
                c.accepting().await;
                Instant::now()
            }
        });
        // A probe abandoned without a verdict lets the next caller probe.
        let probe = c.admit().await;
        assert!(Instant::now() >= first_probe + Duration::from_secs(4));
        drop(probe);
        let probe = c.admit().await;
        probe.succeeded();
        let accepted_at = accepting.await.unwrap();
        assert!(
            accepted_at >= first_probe + Duration::from_secs(4),
            "{:?}",
            accepted_at - start
        );
        assert_eq!(c.state(), CircuitState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn accepting_is_immediate_when_closed_and_lets_a_probe_in_when_idle() {
        let c = circuit();
        tokio::time::timeout(Duration::from_millis(1), c.accepting())
            .await
            .expect("closed: immediate");
        fail(&c, 5).await;
        // Open with nobody waiting: new work is welcome once the circuit is half-open, since it
        // is what will probe.
        let before = Instant::now();
        c.accepting().await;
        assert!(Instant::now() >= before + Duration::from_millis(1500));
        assert_eq!(c.state(), CircuitState::HalfOpen);
    }
}
