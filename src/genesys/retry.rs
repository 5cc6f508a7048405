//! Retrying one session creation (DESIGN §3), on top of `backon` (maintained, unlike `backoff`).
//!
//! - Exponential backoff from `initial_backoff` doubling to `max_backoff`, with *full jitter*
//!   (a uniform wait between zero and the exponential value), so replicas that failed together do
//!   not retry together.
//! - A `Retry-After` (on a 429, or any transient response) replaces the backoff: the wait is
//!   `Retry-After` plus a little jitter, never less. On a 429, a `Retry-After` above
//!   `max_retry_after` ends the retries at once, as the official SDKs do (they retry a 429 only
//!   when `Retry-After` is at most 180 s): retrying earlier than Genesys asked would only earn
//!   another 429. On a 5xx, which the SDKs retry whatever it says, such a wait is cut to
//!   `max_retry_after`: an outage's estimate is not a quota.
//! - A 401 is retried at once, a single time, after the token was invalidated.
//! - Everything is bounded by `retry_budget`, counted from the first attempt: a backoff wait is
//!   shortened to end within it, a `Retry-After` wait that would end past it is not started, and
//!   the last transient error becomes [`CreateError::RetriesExhausted`].

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use rand::Rng;
use tokio::time::Instant;

/// How late a tokio sleep may end: its timers tick every millisecond and fire on the tick after
/// the deadline, and the woken task still has to be scheduled. A wait must end this much before
/// the budget for the attempt after it to start within the budget.
const TIMER_SLACK: Duration = Duration::from_millis(2);

use super::error::CreateError;

/// How an attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// 429, 408, 5xx except 501, timeouts, connection and token-endpoint errors.
    Transient,
    /// The API answered 401 for the first time: retry now with a fresh token.
    Reauthenticate,
    /// Any other non-2xx: dead letter at once.
    Permanent,
    /// The budget ran out before the attempt could even be sent (waiting for the pacer or the
    /// circuit); carries the last transient failure when there was one.
    BudgetSpent,
}

/// One failed attempt. `message` holds no body value other than Genesys's own `message` of a
/// permanent rejection (kept out of [`CreateError`]'s Display text), and never a token.
#[derive(Debug, Clone)]
pub(crate) struct AttemptError {
    pub failure: Failure,
    pub status: Option<u16>,
    pub code: Option<String>,
    pub message: String,
    pub context_id: Option<String>,
    pub retry_after: Option<Duration>,
}

impl AttemptError {
    pub fn transient(status: Option<u16>, message: impl Into<String>) -> Self {
        Self::new(Failure::Transient, status, message)
    }

    /// An attempt that failed this way, with no error code, context id or `Retry-After`.
    pub fn new(failure: Failure, status: Option<u16>, message: impl Into<String>) -> Self {
        Self {
            failure,
            status,
            code: None,
            message: message.into(),
            context_id: None,
            retry_after: None,
        }
    }

    fn is_retryable(&self) -> bool {
        matches!(self.failure, Failure::Transient | Failure::Reauthenticate)
    }

    /// `refused_wait`: the retries ended because Genesys asked to wait this long, past the cap.
    pub fn into_create_error(self, attempts: u32, refused_wait: Option<Duration>) -> CreateError {
        match self.failure {
            Failure::Permanent => CreateError::Rejected {
                status: self.status.unwrap_or(0),
                code: self.code,
                message: self.message,
                context_id: self.context_id,
                attempts,
            },
            Failure::Transient | Failure::Reauthenticate | Failure::BudgetSpent => CreateError::RetriesExhausted {
                last_error: self.message,
                status: self.status,
                context_id: self.context_id,
                attempts,
                refused_wait,
            },
        }
    }
}

/// The retry schedule of one client.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RetryPolicy {
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub budget: Duration,
    pub max_retry_after: Duration,
}

impl RetryPolicy {
    /// The exponential schedule; jitter and the budget are applied in [`Self::next_delay`].
    fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::new()
            .with_min_delay(self.initial_backoff)
            .with_max_delay(self.max_backoff)
            .with_factor(2.0)
            .without_max_times()
    }

    /// The wait before the next attempt, or `None` to stop (the wait would end past the budget).
    /// `exponential` is backon's next un-jittered delay.
    pub fn next_delay(
        &self,
        error: &AttemptError,
        exponential: Option<Duration>,
        elapsed: Duration,
    ) -> Option<Duration> {
        let delay = match (error.failure, error.retry_after) {
            (Failure::Reauthenticate, _) => Duration::ZERO,
            (_, Some(retry_after)) if retry_after > self.max_retry_after && matches!(error.status, Some(500..=599)) => {
                with_small_jitter(self.max_retry_after)
            }
            (_, Some(retry_after)) if self.refused_wait(error).is_some() => {
                tracing::warn!(
                    retry_after_secs = retry_after.as_secs(),
                    max_retry_after_secs = self.max_retry_after.as_secs(),
                    "genesys asked to wait longer than GENESYS_MAX_RETRY_AFTER_SECS; not retrying"
                );
                return None;
            }
            (_, Some(retry_after)) => with_small_jitter(retry_after),
            (_, None) => {
                // A backoff wait is ours to choose: near the end of the budget, shorten it to what
                // is left, so the budget is used to its end rather than given up early.
                let left = self.budget.saturating_sub(elapsed).saturating_sub(TIMER_SLACK);
                if left.is_zero() {
                    return None;
                }
                full_jitter(exponential.unwrap_or(self.max_backoff)).min(left)
            }
        };
        (elapsed.saturating_add(delay).saturating_add(TIMER_SLACK) <= self.budget).then_some(delay)
    }

    /// The `Retry-After` of a transient failure that is not waited for: longer than
    /// `max_retry_after`, on anything but a 5xx (see the module comment).
    fn refused_wait(&self, error: &AttemptError) -> Option<Duration> {
        error.retry_after.filter(|wait| {
            error.failure == Failure::Transient
                && *wait > self.max_retry_after
                && !matches!(error.status, Some(500..=599))
        })
    }

    /// Runs `op` until it succeeds, fails permanently, or the budget is spent. `attempts` is
    /// counted by `op` itself (it knows what it actually sent).
    pub async fn run<T, F, Fut>(&self, started: Instant, attempts: &AtomicU32, op: F) -> Result<T, CreateError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, AttemptError>>,
    {
        op.retry(self.backoff())
            .sleep(tokio::time::sleep)
            .when(AttemptError::is_retryable)
            .adjust(|error, exponential| self.next_delay(error, exponential, started.elapsed()))
            .notify(|error, delay| {
                tracing::info!(
                    // POSTs sent so far: a try that failed on its token sent none.
                    attempts_sent = attempts.load(Ordering::Relaxed),
                    status = error.status,
                    code = error.code.as_deref(),
                    context_id = error.context_id.as_deref(),
                    error = %error.message,
                    delay_ms = delay.as_millis() as u64,
                    "genesys call failed transiently; retrying"
                );
            })
            .await
            .map_err(|error| {
                let refused_wait = self.refused_wait(&error);
                error.into_create_error(attempts.load(Ordering::Relaxed), refused_wait)
            })
    }
}

/// A uniform wait in `[0, cap]`.
pub fn full_jitter(cap: Duration) -> Duration {
    let cap_micros = u64::try_from(cap.as_micros()).unwrap_or(u64::MAX);
    Duration::from_micros(rand::rng().random_range(0..=cap_micros))
}

/// `wait` plus up to a tenth of it (at most 1 s, at least up to 50 ms): never less than `wait`.
pub fn with_small_jitter(wait: Duration) -> Duration {
    let spread = (wait / 10).clamp(Duration::from_millis(50), Duration::from_secs(1));
    wait + full_jitter(spread)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    fn policy(budget_secs: u64) -> RetryPolicy {
        RetryPolicy {
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
            budget: Duration::from_secs(budget_secs),
            max_retry_after: Duration::from_secs(180),
        }
    }

    fn error(failure: Failure, status: u16, retry_after: Option<u64>) -> AttemptError {
        AttemptError {
            failure,
            status: Some(status),
            code: None,
            message: format!("HTTP {status}"),
            context_id: Some("ctx".into()),
            retry_after: retry_after.map(Duration::from_secs),
        }
    }

    #[test]
    fn backoff_is_full_jitter_under_the_exponential_cap() {
        let p = policy(600);
        for _ in 0..200 {
            let d = p
                .next_delay(
                    &error(Failure::Transient, 503, None),
                    Some(Duration::from_secs(4)),
                    Duration::ZERO,
                )
                .unwrap();
            assert!(d <= Duration::from_secs(4), "{d:?}");
        }
    }

    #[test]
    fn retry_after_is_a_lower_bound_and_one_above_the_maximum_ends_the_retries() {
        let p = policy(600);
        for _ in 0..200 {
            let d = p
                .next_delay(
                    &error(Failure::Transient, 429, Some(2)),
                    Some(Duration::from_millis(200)),
                    Duration::ZERO,
                )
                .unwrap();
            assert!(d >= Duration::from_secs(2) && d <= Duration::from_millis(2200), "{d:?}");
            let d = p
                .next_delay(&error(Failure::Transient, 429, Some(180)), None, Duration::ZERO)
                .unwrap();
            assert!(d >= Duration::from_secs(180) && d <= Duration::from_secs(181), "{d:?}");
        }
        assert_eq!(
            p.next_delay(&error(Failure::Transient, 429, Some(181)), None, Duration::ZERO),
            None
        );
    }

    #[test]
    fn a_long_retry_after_on_a_5xx_is_cut_to_the_maximum() {
        let p = policy(600);
        for _ in 0..200 {
            let d = p
                .next_delay(&error(Failure::Transient, 503, Some(300)), None, Duration::ZERO)
                .expect("a 503 is retried whatever its Retry-After");
            assert!(d >= Duration::from_secs(180) && d <= Duration::from_secs(181), "{d:?}");
        }
        assert_eq!(
            p.next_delay(
                &error(Failure::Transient, 503, Some(300)),
                None,
                Duration::from_secs(500)
            ),
            None,
            "the budget still bounds it"
        );
    }

    #[test]
    fn a_backoff_wait_near_the_end_is_shortened_to_what_is_left_of_the_budget() {
        let p = policy(10);
        let e = error(Failure::Transient, 503, None);
        for _ in 0..200 {
            let d = p
                .next_delay(&e, Some(Duration::from_secs(30)), Duration::from_millis(9_000))
                .expect("a second is left");
            assert!(d <= Duration::from_millis(998), "{d:?}");
        }
        assert_eq!(
            p.next_delay(&e, Some(Duration::from_secs(30)), Duration::from_millis(9_999)),
            None
        );
    }

    #[test]
    fn no_wait_may_end_past_the_budget() {
        let p = policy(10);
        let e = error(Failure::Transient, 429, Some(5));
        assert!(p.next_delay(&e, None, Duration::from_secs(4)).is_some());
        assert_eq!(p.next_delay(&e, None, Duration::from_secs(6)), None);
        let reauth = error(Failure::Reauthenticate, 401, None);
        assert_eq!(
            p.next_delay(&reauth, Some(Duration::from_secs(1)), Duration::from_secs(9)),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn final_errors_map_to_the_dead_letter_kinds() {
        let rejected = error(Failure::Permanent, 400, None).into_create_error(1, None);
        assert_eq!(rejected.kind(), "genesys_rejected");
        assert_eq!(rejected.context_id(), Some("ctx"));
        for failure in [Failure::Transient, Failure::BudgetSpent, Failure::Reauthenticate] {
            let exhausted = error(failure, 503, None).into_create_error(4, None);
            assert_eq!(exhausted.kind(), "retries_exhausted");
            assert_eq!(exhausted.attempts(), 4);
        }
    }

    /// Real-clock runs with a fast schedule (1 ms doubling to 20 ms).
    fn fast(budget: Duration) -> RetryPolicy {
        RetryPolicy {
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(20),
            budget,
            max_retry_after: Duration::from_secs(180),
        }
    }

    /// Plays a script of outcomes (then 503s forever); records when each attempt started.
    async fn play(p: RetryPolicy, script: Vec<Result<(), AttemptError>>) -> (Result<(), CreateError>, Vec<Duration>) {
        let started = Instant::now();
        let attempts = AtomicU32::new(0);
        let times = Mutex::new(Vec::new());
        let script = Mutex::new(script.into_iter());
        let result = p
            .run(started, &attempts, || async {
                attempts.fetch_add(1, Ordering::Relaxed);
                times.lock().unwrap().push(started.elapsed());
                script
                    .lock()
                    .unwrap()
                    .next()
                    .unwrap_or_else(|| Err(error(Failure::Transient, 503, None)))
            })
            .await;
        (result, times.into_inner().unwrap())
    }

    #[tokio::test]
    async fn transient_failures_are_retried_until_success() {
        let script = vec![
            Err(error(Failure::Transient, 503, None)),
            Err(error(Failure::Transient, 502, None)),
            Err(error(Failure::Reauthenticate, 401, None)),
            Ok(()),
        ];
        let (result, times) = play(fast(Duration::from_secs(60)), script).await;
        assert!(result.is_ok());
        assert_eq!(times.len(), 4);
    }

    #[tokio::test]
    async fn permanent_failures_are_not_retried() {
        let (result, times) = play(
            fast(Duration::from_secs(60)),
            vec![Err(error(Failure::Permanent, 400, None))],
        )
        .await;
        let err = result.unwrap_err();
        assert_eq!(err.kind(), "genesys_rejected");
        assert_eq!(err.attempts(), 1);
        assert_eq!(times.len(), 1);
    }

    #[tokio::test]
    async fn retry_after_delays_the_next_attempt() {
        let mut throttled = error(Failure::Transient, 429, None);
        throttled.retry_after = Some(Duration::from_millis(300));
        let (result, times) = play(fast(Duration::from_secs(60)), vec![Err(throttled), Ok(())]).await;
        assert!(result.is_ok());
        assert!(times[1] >= Duration::from_millis(300), "{times:?}");
    }

    // Paused time: the policy's arithmetic is under test, not how late a loaded machine wakes a
    // sleeper (in CI a wake-up 2 ms late put the last attempt past the budget).
    #[tokio::test(start_paused = true)]
    async fn the_budget_bounds_the_whole_call() {
        let budget = Duration::from_millis(300);
        let (result, times) = play(fast(budget), vec![]).await;
        let err = result.unwrap_err();
        assert_eq!(err.kind(), "retries_exhausted");
        assert_eq!(err.attempts() as usize, times.len());
        assert!(times.len() > 5, "{times:?}");
        assert!(*times.last().unwrap() <= budget, "{times:?}");
    }

    #[tokio::test]
    async fn a_retry_after_past_the_budget_is_not_waited_for() {
        let mut throttled = error(Failure::Transient, 429, None);
        throttled.retry_after = Some(Duration::from_secs(120));
        let started = std::time::Instant::now();
        let (result, times) = play(fast(Duration::from_secs(60)), vec![Err(throttled)]).await;
        let err = result.unwrap_err();
        assert_eq!(err.status(), Some(429));
        assert!(err.to_string().contains("retry budget ran out"), "{err}");
        assert_eq!(times.len(), 1);
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn a_429_asking_for_more_than_the_maximum_says_so_rather_than_blaming_the_budget() {
        let throttled = error(Failure::Transient, 429, Some(600));
        let (result, times) = play(fast(Duration::from_secs(3600)), vec![Err(throttled)]).await;
        let err = result.unwrap_err();
        assert_eq!(err.kind(), "retries_exhausted");
        assert_eq!(times.len(), 1);
        let text = err.to_string();
        assert!(
            text.contains("asked to wait 600 s") && !text.contains("budget"),
            "{text}"
        );
    }
}
