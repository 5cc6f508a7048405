//! Everything the simulator's handlers share: configuration, counters, faults, quota, tokens and
//! received messages. One `Arc<SimState>` per running simulator; every part is safe to use from
//! many requests at once.

use super::config::SimConfig;
use super::faults::{FaultState, Faults};
use super::messages::MessageStore;
use super::quota::Quota;
use super::stats::{Counters, SimStats};
use super::tokens::TokenStore;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct SimState {
    pub config: SimConfig,
    pub counters: Counters,
    pub faults: FaultState,
    pub quota: Quota,
    pub tokens: TokenStore,
    pub messages: MessageStore,
}

impl SimState {
    pub fn new(config: SimConfig) -> Self {
        let window = Duration::try_from_secs_f64(config.quota_window_secs).unwrap_or(Duration::from_secs(60));
        Self {
            quota: Quota::new(config.quota_per_minute, window),
            config,
            counters: Counters::default(),
            faults: FaultState::default(),
            tokens: TokenStore::default(),
            messages: MessageStore::default(),
        }
    }

    pub fn stats(&self) -> SimStats {
        self.counters.snapshot()
    }

    /// Validates and merges `faults`, revoking tokens if asked; returns the settings now in force.
    pub fn apply_faults(&self, faults: &Faults) -> Result<Faults, String> {
        faults.validate()?;
        let now = Instant::now();
        self.faults.apply(faults, now);
        if faults.revoke_tokens == Some(true) {
            self.tokens.revoke_all();
        }
        Ok(self.faults.current(now))
    }

    /// Zeroes the counters, clears every fault and forgets the quota windows. Issued tokens and
    /// received messages are kept.
    pub fn reset(&self) {
        self.counters.reset();
        self.faults.clear();
        self.quota.clear();
    }
}
