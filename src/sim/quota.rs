//! The rate-limit quota: `limit` API calls per key per fixed window.
//!
//! The key is the OAuth client id behind the bearer token (Guest Chat, which has no token: the
//! deployment id). A key's window opens with its first call and lasts `window`; calls beyond the
//! limit in a window are refused (and not counted) until it ends.

use axum::http::{HeaderMap, HeaderValue};
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

pub const ALLOWED_HEADER: &str = "inin-ratelimit-allowed";
pub const COUNT_HEADER: &str = "inin-ratelimit-count";
pub const RESET_HEADER: &str = "inin-ratelimit-reset";

/// What the `inin-ratelimit-*` headers say about a key's current window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// The quota per window (`inin-ratelimit-allowed`).
    pub allowed: u32,
    /// Calls admitted in this window, this one included (`inin-ratelimit-count`).
    pub count: u32,
    /// Whole seconds until the window ends, rounded up, at least 1 (`inin-ratelimit-reset`).
    pub reset_secs: u64,
}

impl RateLimit {
    pub fn write_headers(&self, headers: &mut HeaderMap) {
        headers.insert(ALLOWED_HEADER, HeaderValue::from(self.allowed));
        headers.insert(COUNT_HEADER, HeaderValue::from(self.count));
        headers.insert(RESET_HEADER, HeaderValue::from(self.reset_secs));
    }
}

/// Outcome of asking the quota for one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Admitted(RateLimit),
    /// Over quota: answer 429 with `Retry-After: reset_secs`.
    Limited(RateLimit),
}

#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    used: u32,
}

/// Keys with a window are pruned of ended windows when there are more than this many.
const PRUNE_ABOVE: usize = 1024;

#[derive(Debug)]
pub struct Quota {
    limit: u32,
    window: Duration,
    windows: Mutex<HashMap<String, Window>>,
}

impl Quota {
    pub fn new(limit: u32, window: Duration) -> Self {
        Self {
            limit,
            window: window.max(Duration::from_millis(1)),
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one call for `key` at `now`, or refuses it when the window's quota is spent.
    pub fn admit(&self, key: &str, now: Instant) -> Admission {
        let mut windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        if windows.len() > PRUNE_ABOVE {
            let window = self.window;
            windows.retain(|_, w| now.saturating_duration_since(w.start) < window);
        }
        let w = windows.entry(key.to_owned()).or_insert(Window { start: now, used: 0 });
        if now.saturating_duration_since(w.start) >= self.window {
            *w = Window { start: now, used: 0 };
        }
        let admitted = w.used < self.limit;
        if admitted {
            w.used += 1;
        }
        let left = self.window.saturating_sub(now.saturating_duration_since(w.start));
        let limit = RateLimit {
            allowed: self.limit,
            count: w.used,
            reset_secs: ceil_secs(left),
        };
        if admitted {
            Admission::Admitted(limit)
        } else {
            Admission::Limited(limit)
        }
    }

    /// Forgets every window (used by `POST /__sim/reset`).
    pub fn clear(&self) {
        self.windows.lock().unwrap_or_else(PoisonError::into_inner).clear();
    }

    pub fn limit(&self) -> u32 {
        self.limit
    }

    pub fn window(&self) -> Duration {
        self.window
    }
}

/// Whole seconds, rounded up, at least 1.
pub fn ceil_secs(d: Duration) -> u64 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_over_quota_until_the_window_ends() {
        let q = Quota::new(2, Duration::from_millis(1500));
        let t0 = Instant::now();
        assert!(matches!(
            q.admit("a", t0),
            Admission::Admitted(RateLimit {
                count: 1,
                reset_secs: 2,
                ..
            })
        ));
        assert!(matches!(
            q.admit("a", t0),
            Admission::Admitted(RateLimit { count: 2, .. })
        ));
        assert!(matches!(
            q.admit("b", t0),
            Admission::Admitted(RateLimit { count: 1, .. })
        ));
        let later = t0 + Duration::from_millis(700);
        assert_eq!(
            q.admit("a", later),
            Admission::Limited(RateLimit {
                allowed: 2,
                count: 2,
                reset_secs: 1
            })
        );
        let next = t0 + Duration::from_millis(1500);
        assert!(matches!(
            q.admit("a", next),
            Admission::Admitted(RateLimit { count: 1, .. })
        ));
    }

    #[test]
    fn ceil_secs_rounds_up_with_a_floor_of_one() {
        assert_eq!(ceil_secs(Duration::ZERO), 1);
        assert_eq!(ceil_secs(Duration::from_millis(1)), 1);
        assert_eq!(ceil_secs(Duration::from_secs(60)), 60);
        assert_eq!(ceil_secs(Duration::from_millis(59_001)), 60);
    }
}
