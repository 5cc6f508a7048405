//! Simulator settings: one flag per setting, each also read from its env var (DESIGN §7).

use std::fmt;
use std::net::SocketAddr;

/// Default listening address of the `sim` subcommand.
pub const DEFAULT_ADDR: &str = "127.0.0.1:9000";
/// Default OAuth client id accepted by `POST /oauth/token`.
pub const DEFAULT_CLIENT_ID: &str = "demo-client";
/// Default OAuth client secret accepted by `POST /oauth/token`.
pub const DEFAULT_CLIENT_SECRET: &str = "demo-secret";
/// Default Open Messaging integration id (the only integration the simulator knows).
pub const DEFAULT_INTEGRATION_ID: &str = "5c0d1e7a-0000-4000-8000-00000000a001";
/// Default Guest Chat organization id.
pub const DEFAULT_ORGANIZATION_ID: &str = "5c0d1e7a-0000-4000-8000-00000000b001";
/// Default Guest Chat deployment id (the only deployment the simulator knows).
pub const DEFAULT_DEPLOYMENT_ID: &str = "5c0d1e7a-0000-4000-8000-00000000c001";
/// Genesys' documented default: 300 requests per minute per OAuth client.
pub const DEFAULT_QUOTA_PER_MINUTE: u32 = 300;
/// Length of one rate-limit window, in seconds.
pub const DEFAULT_QUOTA_WINDOW_SECS: f64 = 60.0;
/// Lifetime of an issued access token (Genesys issues 24 h tokens by default).
pub const DEFAULT_TOKEN_TTL_SECS: u64 = 86_400;

/// Settings of the Genesys Cloud simulator.
///
/// `Debug` is written by hand so that the client secret never reaches a log line.
#[derive(clap::Args, Clone)]
pub struct SimConfig {
    /// Address to listen on (serves both the API and the login host).
    #[arg(long = "addr", env = "SIM_ADDR", default_value = DEFAULT_ADDR)]
    pub addr: SocketAddr,

    /// OAuth client id accepted by `POST /oauth/token`.
    #[arg(long = "client-id", env = "GENESYS_CLIENT_ID", default_value = DEFAULT_CLIENT_ID)]
    pub client_id: String,

    /// OAuth client secret accepted by `POST /oauth/token` (never logged).
    #[arg(
        long = "client-secret",
        env = "GENESYS_CLIENT_SECRET",
        default_value = DEFAULT_CLIENT_SECRET,
        hide_env_values = true,
        hide_default_value = true
    )]
    pub client_secret: String,

    /// Open Messaging integration id known to the simulator (others answer 404).
    #[arg(long = "integration-id", env = "GENESYS_INTEGRATION_ID", default_value = DEFAULT_INTEGRATION_ID)]
    pub integration_id: String,

    /// Guest Chat organization id known to the simulator.
    #[arg(long = "organization-id", env = "GENESYS_ORGANIZATION_ID", default_value = DEFAULT_ORGANIZATION_ID)]
    pub organization_id: String,

    /// Guest Chat deployment id known to the simulator.
    #[arg(long = "deployment-id", env = "GENESYS_DEPLOYMENT_ID", default_value = DEFAULT_DEPLOYMENT_ID)]
    pub deployment_id: String,

    /// API requests allowed per client id (Guest Chat: per deployment id) per window.
    #[arg(long = "quota-per-minute", env = "SIM_QUOTA_PER_MINUTE", default_value_t = DEFAULT_QUOTA_PER_MINUTE)]
    pub quota_per_minute: u32,

    /// Length of a rate-limit window in seconds (shorten it to compress minutes into seconds).
    #[arg(
        long = "quota-window-secs",
        env = "SIM_QUOTA_WINDOW_SECS",
        default_value_t = DEFAULT_QUOTA_WINDOW_SECS,
        value_parser = parse_window_secs
    )]
    pub quota_window_secs: f64,

    /// Added latency of every API response, in milliseconds.
    #[arg(long = "latency-ms", env = "SIM_LATENCY_MS", default_value_t = 0)]
    pub latency_ms: u64,

    /// Fraction (0.0–1.0) of API calls answered 503.
    #[arg(long = "error-rate", env = "SIM_ERROR_RATE", default_value_t = 0.0, value_parser = parse_rate)]
    pub error_rate: f64,

    /// Lifetime of issued access tokens, in seconds (`expires_in`).
    #[arg(long = "token-ttl-secs", env = "SIM_TOKEN_TTL_SECS", default_value_t = DEFAULT_TOKEN_TTL_SECS)]
    pub token_ttl_secs: u64,

    /// A 429 storm of this many seconds (0: none): every API call is answered 429 with
    /// `--storm-retry-after-secs`, as `POST /__sim/faults {"storm": …}` does.
    #[arg(long = "storm-secs", env = "SIM_STORM_SECS", default_value_t = 0.0, value_parser = parse_fault_secs)]
    pub storm_secs: f64,

    /// The storm's `Retry-After`, in seconds.
    #[arg(
        long = "storm-retry-after-secs",
        env = "SIM_STORM_RETRY_AFTER_SECS",
        default_value_t = 30
    )]
    pub storm_retry_after_secs: u64,

    /// The storm starts this many seconds after the simulator.
    #[arg(long = "storm-after-secs", env = "SIM_STORM_AFTER_SECS", default_value_t = 0.0, value_parser = parse_fault_secs)]
    pub storm_after_secs: f64,
}

impl SimConfig {
    /// The defaults, listening on an ephemeral port of 127.0.0.1 (for tests and embedding).
    pub fn for_tests() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            client_id: DEFAULT_CLIENT_ID.to_owned(),
            client_secret: DEFAULT_CLIENT_SECRET.to_owned(),
            integration_id: DEFAULT_INTEGRATION_ID.to_owned(),
            organization_id: DEFAULT_ORGANIZATION_ID.to_owned(),
            deployment_id: DEFAULT_DEPLOYMENT_ID.to_owned(),
            quota_per_minute: DEFAULT_QUOTA_PER_MINUTE,
            quota_window_secs: DEFAULT_QUOTA_WINDOW_SECS,
            latency_ms: 0,
            error_rate: 0.0,
            token_ttl_secs: DEFAULT_TOKEN_TTL_SECS,
            storm_secs: 0.0,
            storm_retry_after_secs: 30,
            storm_after_secs: 0.0,
        }
    }

    /// Checks the values clap cannot check when the struct is built by hand.
    pub(crate) fn validate(&self) -> Result<(), String> {
        parse_window_secs(&self.quota_window_secs.to_string())?;
        parse_rate(&self.error_rate.to_string())?;
        parse_fault_secs(&self.storm_secs.to_string())?;
        parse_fault_secs(&self.storm_after_secs.to_string())?;
        if self.storm_retry_after_secs > 86_400 {
            return Err("storm Retry-After must be at most 86400 seconds".to_owned());
        }
        if self.client_id.is_empty() {
            return Err("client id must not be empty".to_owned());
        }
        Ok(())
    }
}

impl fmt::Debug for SimConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimConfig")
            .field("addr", &self.addr)
            .field("client_id", &self.client_id)
            .field("client_secret", &"[redacted]")
            .field("integration_id", &self.integration_id)
            .field("organization_id", &self.organization_id)
            .field("deployment_id", &self.deployment_id)
            .field("quota_per_minute", &self.quota_per_minute)
            .field("quota_window_secs", &self.quota_window_secs)
            .field("latency_ms", &self.latency_ms)
            .field("error_rate", &self.error_rate)
            .field("token_ttl_secs", &self.token_ttl_secs)
            .field("storm_secs", &self.storm_secs)
            .field("storm_retry_after_secs", &self.storm_retry_after_secs)
            .field("storm_after_secs", &self.storm_after_secs)
            .finish()
    }
}

fn parse_window_secs(raw: &str) -> Result<f64, String> {
    let secs: f64 = raw.trim().parse().map_err(|e| format!("not a number: {e}"))?;
    if secs.is_finite() && secs > 0.0 && secs <= 86_400.0 {
        Ok(secs)
    } else {
        Err(format!("quota window must be in (0, 86400] seconds, got {raw}"))
    }
}

/// Parses a duration of a fault in seconds, `[0, 86400]`.
fn parse_fault_secs(raw: &str) -> Result<f64, String> {
    let secs: f64 = raw.trim().parse().map_err(|e| format!("not a number: {e}"))?;
    if secs.is_finite() && (0.0..=86_400.0).contains(&secs) {
        Ok(secs)
    } else {
        Err(format!("must be between 0 and 86400 seconds, got {raw}"))
    }
}

/// Parses a fraction in `[0, 1]`.
pub(crate) fn parse_rate(raw: &str) -> Result<f64, String> {
    let rate: f64 = raw.trim().parse().map_err(|e| format!("not a number: {e}"))?;
    if (0.0..=1.0).contains(&rate) {
        Ok(rate)
    } else {
        Err(format!("error rate must be between 0.0 and 1.0, got {raw}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        sim: SimConfig,
    }

    #[test]
    fn clap_defaults_match_for_tests() {
        const VARS: [&str; 14] = [
            "GENESYS_CLIENT_ID",
            "GENESYS_CLIENT_SECRET",
            "GENESYS_INTEGRATION_ID",
            "GENESYS_ORGANIZATION_ID",
            "GENESYS_DEPLOYMENT_ID",
            "SIM_ADDR",
            "SIM_QUOTA_PER_MINUTE",
            "SIM_QUOTA_WINDOW_SECS",
            "SIM_LATENCY_MS",
            "SIM_ERROR_RATE",
            "SIM_TOKEN_TTL_SECS",
            "SIM_STORM_SECS",
            "SIM_STORM_RETRY_AFTER_SECS",
            "SIM_STORM_AFTER_SECS",
        ];
        if VARS.iter().any(|v| std::env::var_os(v).is_some()) {
            return; // the environment overrides the defaults; nothing to compare
        }
        let parsed = Cli::try_parse_from(["sim", "--addr", "127.0.0.1:0"]).map(|c| c.sim);
        let parsed = match parsed {
            Ok(p) => p,
            Err(e) => panic!("parse failed: {e}"),
        };
        let expected = SimConfig::for_tests();
        assert_eq!(format!("{parsed:?}"), format!("{expected:?}"));
        assert_eq!(parsed.client_secret, expected.client_secret);
    }

    #[test]
    fn rejects_bad_rates_and_windows() {
        assert!(Cli::try_parse_from(["sim", "--error-rate", "1.5"]).is_err());
        assert!(Cli::try_parse_from(["sim", "--quota-window-secs", "0"]).is_err());
        assert!(Cli::try_parse_from(["sim", "--quota-window-secs", "0.5"]).is_ok());
        assert!(Cli::try_parse_from(["sim", "--storm-secs", "-1"]).is_err());
        let storm = Cli::try_parse_from(["sim", "--storm-secs", "60", "--storm-retry-after-secs", "30"]);
        assert!(storm.is_ok_and(|c| c.sim.storm_secs == 60.0 && c.sim.storm_retry_after_secs == 30));
    }

    #[test]
    fn debug_redacts_the_secret() {
        let mut c = SimConfig::for_tests();
        c.client_secret = "s3cr3t-value".to_owned();
        assert!(!format!("{c:?}").contains("s3cr3t-value"));
    }
}
