//! Injected faults: latency, random 503s, outages, scripted statuses, rejections, 429 storms, token
//! revocation. Set with `POST /__sim/faults` or [`crate::sim::RunningSim::set_faults`].
//!
//! The order in which they apply to an API call is documented in the [`crate::sim`] module docs.

use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// A 429 storm: every API call is answered 429 with a fixed `Retry-After` for a while.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Storm {
    pub retry_after_secs: u64,
    pub duration_secs: f64,
}

/// Fault settings. Every field is optional; applying a `Faults` changes only the fields it sets.
///
/// Read back (`GET`/`POST /__sim/faults`), `outage_secs` and `storm.duration_secs` are the time still
/// remaining, `fail_next` the statuses not yet used, and `revoke_tokens` is absent.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Faults {
    /// Latency of every API response in ms; replaces the configured `--latency-ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    /// Fraction of API calls answered 503; replaces the configured `--error-rate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_rate: Option<f64>,
    /// Every API call is answered 503 for this long from now (0 ends an outage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outage_secs: Option<f64>,
    /// The next API calls are answered with these statuses, in order; replaces any list not yet used
    /// (an empty list clears it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_next: Option<Vec<u16>>,
    /// While non-zero, every session call is answered with this 4xx; 0 clears.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reject_status: Option<u16>,
    /// 429 with a fixed `Retry-After` for a while (`duration_secs: 0` ends a storm).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storm: Option<Storm>,
    /// `true` invalidates every token issued so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoke_tokens: Option<bool>,
}

/// Longest outage or storm accepted (a day), which keeps `Instant` arithmetic safe.
const MAX_FAULT_SECS: f64 = 86_400.0;

impl Faults {
    /// Checks every field; nothing is applied when one is invalid.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(rate) = self.error_rate
            && !(0.0..=1.0).contains(&rate)
        {
            return Err(format!("error_rate must be between 0.0 and 1.0, got {rate}"));
        }
        if let Some(secs) = self.outage_secs {
            check_secs("outage_secs", secs)?;
        }
        if let Some(bad) = self.fail_next.iter().flatten().find(|s| !(400..=599).contains(*s)) {
            return Err(format!("fail_next statuses must be 400-599, got {bad}"));
        }
        if let Some(status) = self.reject_status
            && status != 0
            && !(400..=499).contains(&status)
        {
            return Err(format!("reject_status must be 0 or a 4xx status, got {status}"));
        }
        if let Some(storm) = &self.storm {
            check_secs("storm.duration_secs", storm.duration_secs)?;
            if storm.retry_after_secs > MAX_FAULT_SECS as u64 {
                return Err("storm.retry_after_secs must be at most 86400".to_owned());
            }
        }
        Ok(())
    }
}

fn check_secs(name: &str, secs: f64) -> Result<(), String> {
    if secs.is_finite() && (0.0..=MAX_FAULT_SECS).contains(&secs) {
        Ok(())
    } else {
        Err(format!(
            "{name} must be between 0 and {MAX_FAULT_SECS} seconds, got {secs}"
        ))
    }
}

fn deadline(now: Instant, secs: f64) -> Option<Instant> {
    if secs <= 0.0 {
        return None;
    }
    Duration::try_from_secs_f64(secs).ok().and_then(|d| now.checked_add(d))
}

fn remaining(until: Instant, now: Instant) -> f64 {
    until.saturating_duration_since(now).as_secs_f64()
}

#[derive(Debug, Default)]
struct Active {
    latency_ms: Option<u64>,
    error_rate: Option<f64>,
    outage_until: Option<Instant>,
    fail_next: VecDeque<StatusCode>,
    reject_status: Option<StatusCode>,
    /// Retry-After and end of the storm.
    storm: Option<(u64, Instant)>,
}

/// The fault settings in force, shared by every request.
#[derive(Debug, Default)]
pub struct FaultState {
    active: Mutex<Active>,
}

impl FaultState {
    fn lock(&self) -> MutexGuard<'_, Active> {
        self.active.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Merges `faults` (assumed valid, see [`Faults::validate`]) into the settings in force.
    /// Token revocation is not handled here; see [`crate::sim::state::SimState::apply_faults`].
    pub fn apply(&self, faults: &Faults, now: Instant) {
        let mut a = self.lock();
        if let Some(ms) = faults.latency_ms {
            a.latency_ms = Some(ms);
        }
        if let Some(rate) = faults.error_rate {
            a.error_rate = Some(rate);
        }
        if let Some(secs) = faults.outage_secs {
            a.outage_until = deadline(now, secs);
        }
        if let Some(statuses) = &faults.fail_next {
            a.fail_next = statuses.iter().filter_map(|s| StatusCode::from_u16(*s).ok()).collect();
        }
        if let Some(status) = faults.reject_status {
            a.reject_status = StatusCode::from_u16(status).ok().filter(|s| s.is_client_error());
        }
        if let Some(storm) = &faults.storm {
            a.storm = deadline(now, storm.duration_secs).map(|until| (storm.retry_after_secs, until));
        }
    }

    /// The settings in force, in the shape `POST /__sim/faults` accepts.
    pub fn current(&self, now: Instant) -> Faults {
        let a = self.lock();
        Faults {
            latency_ms: a.latency_ms,
            error_rate: a.error_rate,
            outage_secs: a
                .outage_until
                .filter(|until| *until > now)
                .map(|until| remaining(until, now)),
            fail_next: (!a.fail_next.is_empty()).then(|| a.fail_next.iter().map(|s| s.as_u16()).collect()),
            reject_status: a.reject_status.map(|s| s.as_u16()),
            storm: a
                .storm
                .filter(|(_, until)| *until > now)
                .map(|(retry_after_secs, until)| Storm {
                    retry_after_secs,
                    duration_secs: remaining(until, now),
                }),
            revoke_tokens: None,
        }
    }

    pub fn clear(&self) {
        *self.lock() = Active::default();
    }

    /// Latency to add to an API response: the fault override, else the configured value.
    pub fn latency(&self, configured_ms: u64) -> Duration {
        Duration::from_millis(self.lock().latency_ms.unwrap_or(configured_ms))
    }

    /// The storm's `Retry-After` while a storm is on.
    pub fn storm(&self, now: Instant) -> Option<u64> {
        let a = self.lock();
        a.storm
            .filter(|(_, until)| *until > now)
            .map(|(retry_after, _)| retry_after)
    }

    /// An injected failure for this call, if any: an outage (503), else the next scripted status
    /// (consumed), else a random 503 at the error rate (fault override, else `configured_rate`).
    pub fn injected_failure(&self, now: Instant, configured_rate: f64) -> Option<StatusCode> {
        let mut a = self.lock();
        if a.outage_until.is_some_and(|until| until > now) {
            return Some(StatusCode::SERVICE_UNAVAILABLE);
        }
        if let Some(status) = a.fail_next.pop_front() {
            return Some(status);
        }
        let rate = a.error_rate.unwrap_or(configured_rate);
        (rate > 0.0 && rand::random::<f64>() < rate).then_some(StatusCode::SERVICE_UNAVAILABLE)
    }

    /// The status every session call is rejected with, while set.
    pub fn reject_status(&self) -> Option<StatusCode> {
        self.lock().reject_status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_rejects_out_of_range_values() {
        let bad = [
            Faults {
                error_rate: Some(1.5),
                ..Faults::default()
            },
            Faults {
                outage_secs: Some(-1.0),
                ..Faults::default()
            },
            Faults {
                outage_secs: Some(f64::NAN),
                ..Faults::default()
            },
            Faults {
                fail_next: Some(vec![503, 200]),
                ..Faults::default()
            },
            Faults {
                reject_status: Some(503),
                ..Faults::default()
            },
        ];
        for f in bad {
            assert!(f.validate().is_err(), "{f:?}");
        }
        assert!(
            Faults {
                reject_status: Some(0),
                ..Faults::default()
            }
            .validate()
            .is_ok()
        );
    }

    #[test]
    fn fail_next_is_consumed_in_order_and_outage_wins() {
        let state = FaultState::default();
        let now = Instant::now();
        state.apply(
            &Faults {
                fail_next: Some(vec![500, 429]),
                ..Faults::default()
            },
            now,
        );
        assert_eq!(
            state.injected_failure(now, 0.0),
            Some(StatusCode::INTERNAL_SERVER_ERROR)
        );
        assert_eq!(state.current(now).fail_next, Some(vec![429]));
        state.apply(
            &Faults {
                outage_secs: Some(10.0),
                ..Faults::default()
            },
            now,
        );
        assert_eq!(state.injected_failure(now, 0.0), Some(StatusCode::SERVICE_UNAVAILABLE));
        let later = now + Duration::from_secs(11);
        assert_eq!(state.injected_failure(later, 0.0), Some(StatusCode::TOO_MANY_REQUESTS));
        assert_eq!(state.injected_failure(later, 0.0), None);
        assert_eq!(
            state.injected_failure(later, 1.0),
            Some(StatusCode::SERVICE_UNAVAILABLE)
        );
    }

    #[test]
    fn storm_and_reject_can_be_cleared() {
        let state = FaultState::default();
        let now = Instant::now();
        let storm = Storm {
            retry_after_secs: 7,
            duration_secs: 5.0,
        };
        state.apply(
            &Faults {
                storm: Some(storm),
                reject_status: Some(422),
                ..Faults::default()
            },
            now,
        );
        assert_eq!(state.storm(now), Some(7));
        assert_eq!(state.reject_status(), Some(StatusCode::UNPROCESSABLE_ENTITY));
        let off = Storm {
            retry_after_secs: 0,
            duration_secs: 0.0,
        };
        state.apply(
            &Faults {
                storm: Some(off),
                reject_status: Some(0),
                ..Faults::default()
            },
            now,
        );
        assert_eq!(state.storm(now), None);
        assert_eq!(state.reject_status(), None);
    }
}
