//! Request counters, readable in process ([`crate::sim::RunningSim::stats`]) and at `GET /__sim/stats`.

use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of the simulator's counters.
///
/// Every answer of `POST /oauth/token` counts in `token_requests`, every answer of an `/api/v2` route in
/// `api_requests`. Each error answer of either also counts in exactly one of `rate_limited` (429),
/// `server_errors` (5xx), `unauthorized` (401) or `rejected` (any other 4xx). `sessions_created` counts
/// new Open Messaging messages and Guest Chat conversations; a repeated Open Messaging `messageId`
/// counts in `duplicates` instead.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SimStats {
    pub token_requests: u64,
    pub api_requests: u64,
    pub sessions_created: u64,
    pub duplicates: u64,
    pub rate_limited: u64,
    pub server_errors: u64,
    pub unauthorized: u64,
    /// Other 4xx answers.
    pub rejected: u64,
}

/// The live counters behind [`SimStats`].
#[derive(Debug, Default)]
pub struct Counters {
    token_requests: AtomicU64,
    api_requests: AtomicU64,
    sessions_created: AtomicU64,
    duplicates: AtomicU64,
    rate_limited: AtomicU64,
    server_errors: AtomicU64,
    unauthorized: AtomicU64,
    rejected: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    pub fn token_request(&self) {
        bump(&self.token_requests);
    }

    pub fn api_request(&self) {
        bump(&self.api_requests);
    }

    pub fn session_created(&self) {
        bump(&self.sessions_created);
    }

    pub fn duplicate(&self) {
        bump(&self.duplicates);
    }

    /// Counts an answer by its status class (nothing for 1xx–3xx).
    pub fn status(&self, status: StatusCode) {
        match status.as_u16() {
            429 => bump(&self.rate_limited),
            401 => bump(&self.unauthorized),
            400..=499 => bump(&self.rejected),
            500..=599 => bump(&self.server_errors),
            _ => {}
        }
    }

    pub fn snapshot(&self) -> SimStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        SimStats {
            token_requests: get(&self.token_requests),
            api_requests: get(&self.api_requests),
            sessions_created: get(&self.sessions_created),
            duplicates: get(&self.duplicates),
            rate_limited: get(&self.rate_limited),
            server_errors: get(&self.server_errors),
            unauthorized: get(&self.unauthorized),
            rejected: get(&self.rejected),
        }
    }

    pub fn reset(&self) {
        for c in [
            &self.token_requests,
            &self.api_requests,
            &self.sessions_created,
            &self.duplicates,
            &self.rate_limited,
            &self.server_errors,
            &self.unauthorized,
            &self.rejected,
        ] {
            c.store(0, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_statuses() {
        let c = Counters::default();
        for s in [200u16, 202, 400, 401, 404, 413, 429, 500, 503] {
            c.status(StatusCode::from_u16(s).unwrap_or(StatusCode::OK));
        }
        let s = c.snapshot();
        assert_eq!(
            (s.rejected, s.unauthorized, s.rate_limited, s.server_errors),
            (3, 1, 1, 2)
        );
        c.reset();
        assert_eq!(c.snapshot(), SimStats::default());
    }
}
