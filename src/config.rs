//! Worker settings read from flags or their environment variables (DESIGN §7). Broker settings
//! live in [`crate::amqp::AmqpArgs`], Genesys settings in [`crate::genesys::GenesysArgs`].

use std::{net::SocketAddr, time::Duration};

use secrecy::SecretString;

use crate::{
    amqp::{AmqpArgs, Topology, TopologyOptions, topology::DEFAULT_DELIVERY_LIMIT},
    pipeline::WorkerSettings,
    request::{DEFAULT_PII_PATTERNS, ValidationPolicy},
};

#[derive(clap::Args, Clone)]
pub struct WorkerArgs {
    /// Requests in flight per replica; the prefetch follows it.
    #[arg(long, env = "WORKER_CONCURRENCY", default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,
    /// Seconds from SIGTERM until unfinished work is back in the queue (the last second, or the
    /// last quarter of a shorter grace, is kept for acking and nacking); 0–86400.
    #[arg(long, env = "WORKER_SHUTDOWN_GRACE_SECS", default_value_t = 25, value_parser = clap::value_parser!(u64).range(0..=86_400))]
    pub shutdown_grace_secs: u64,
    /// Confirm-mode publisher channels (each driven by one task) for replies; the events, the audit
    /// records and the dead letters, all mandatory, get as many of their own per exchange (4 × N
    /// channels in all).
    #[arg(long, env = "WORKER_PUBLISHER_CHANNELS", default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub publisher_channels: u16,
    /// Redeliveries after which the broker dead-letters a message (poison-message guard).
    #[arg(long, env = "AMQP_DELIVERY_LIMIT", default_value_t = DEFAULT_DELIVERY_LIMIT)]
    pub delivery_limit: u32,
    /// Comma-separated substrings that mark an attribute key as PII.
    #[arg(long, env = "PII_KEY_PATTERNS", default_value_t = DEFAULT_PII_PATTERNS.join(","))]
    pub pii_key_patterns: String,
    /// Key for the audit pseudonym of guest ids (HMAC-SHA256). Required by `run`.
    #[arg(long, env = "AUDIT_HMAC_KEY", hide_env_values = true)]
    pub audit_hmac_key: Option<String>,
    /// Seconds `run` waits at start for a broker that does not answer yet (refused or timed-out
    /// connections, a host name that does not resolve yet), unready meanwhile; then it exits
    /// non-zero (0: one attempt). Wrong credentials, vhost, TLS or topology exit at once.
    #[arg(long, env = "WORKER_STARTUP_WAIT_SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(0..=86_400))]
    pub startup_wait_secs: u64,
    /// A queue to declare and bind to the CRM exchange for `session.created` (named under
    /// AMQP_NAME_PREFIX), for a stack with no CRM consumer of its own; empty: none. Without any
    /// bound queue every event is unroutable and its request dead-lettered.
    #[arg(long, env = "AMQP_CRM_QUEUE", default_value = "")]
    pub crm_queue: String,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "HEALTH_ADDR", default_value = "0.0.0.0:8080")]
    pub health_addr: SocketAddr,
}

impl std::fmt::Debug for WorkerArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerArgs")
            .field("concurrency", &self.concurrency)
            .field("shutdown_grace_secs", &self.shutdown_grace_secs)
            .field("publisher_channels", &self.publisher_channels)
            .field("delivery_limit", &self.delivery_limit)
            .field("pii_key_patterns", &self.pii_key_patterns)
            .field("audit_hmac_key", &self.audit_hmac_key.as_ref().map(|_| "<redacted>"))
            .field("startup_wait_secs", &self.startup_wait_secs)
            .field("crm_queue", &self.crm_queue)
            .field("health_addr", &self.health_addr)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "AUDIT_HMAC_KEY is not set: the worker needs a secret key to pseudonymise guest ids in audit records. Set it (e.g. `export AUDIT_HMAC_KEY=$(openssl rand -hex 32)`) and keep it stable across restarts so guest_ref values stay comparable."
    )]
    MissingAuditKey,
    #[error(
        "PII_KEY_PATTERNS holds no pattern ({0:?}): every attribute key would pass the PII rule. Unset it for the default ({default}), or list the patterns to block, comma-separated.",
        default = DEFAULT_PII_PATTERNS.join(",")
    )]
    NoPiiPatterns(String),
    #[error("AMQP_CRM_QUEUE with AMQP_NAME_PREFIX makes a queue name of {0} bytes; RabbitMQ allows at most 255")]
    CrmQueueTooLong(usize),
    #[error("AMQP_CRM_QUEUE may hold only printable ASCII characters, without spaces")]
    CrmQueueCharacters,
}

impl WorkerArgs {
    pub fn topology(&self, amqp: &AmqpArgs) -> Topology {
        Topology::with_options(
            &amqp.name_prefix,
            TopologyOptions {
                delivery_limit: self.delivery_limit,
            },
        )
    }

    /// `AMQP_CRM_QUEUE` under the prefix, checked as the broker will (a longer name would be
    /// refused at declaration, after start-up).
    fn crm_queue(&self, amqp: &AmqpArgs) -> Result<Option<String>, ConfigError> {
        if self.crm_queue.is_empty() {
            return Ok(None);
        }
        let name = format!("{}{}", amqp.name_prefix, self.crm_queue);
        if !name.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ConfigError::CrmQueueCharacters);
        }
        if name.len() > 255 {
            return Err(ConfigError::CrmQueueTooLong(name.len()));
        }
        Ok(Some(name))
    }

    pub fn settings(&self, amqp: &AmqpArgs) -> Result<WorkerSettings, ConfigError> {
        let key = self
            .audit_hmac_key
            .clone()
            .filter(|k| !k.is_empty())
            .ok_or(ConfigError::MissingAuditKey)?;
        // An empty list is most likely a templating slip; it would switch a privacy control off.
        let policy = ValidationPolicy::from_csv(&self.pii_key_patterns);
        if policy.blocks_nothing() {
            return Err(ConfigError::NoPiiPatterns(self.pii_key_patterns.clone()));
        }
        Ok(WorkerSettings {
            amqp_url: amqp.url.clone(),
            topology: self.topology(amqp),
            concurrency: usize::from(self.concurrency),
            publisher_lanes: usize::from(self.publisher_channels),
            shutdown_grace: Duration::from_secs(self.shutdown_grace_secs),
            policy,
            audit_key: SecretString::from(key),
            crm_queue: self.crm_queue(amqp)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Args {
        #[command(flatten)]
        worker: WorkerArgs,
        #[command(flatten)]
        amqp: AmqpArgs,
    }

    fn settings(argv: &[&str]) -> Result<WorkerSettings, ConfigError> {
        let args = Args::try_parse_from([&["t", "--audit-hmac-key", "k"], argv].concat()).expect("parses");
        args.worker.settings(&args.amqp)
    }

    #[test]
    fn the_crm_queue_is_named_under_the_prefix_and_checked_as_the_broker_would() {
        let ok = settings(&["--amqp-name-prefix", "t1.", "--crm-queue", "crm"]).expect("settings");
        assert_eq!(ok.crm_queue.as_deref(), Some("t1.crm"));
        assert_eq!(settings(&[]).expect("settings").crm_queue, None);
        let long = "q".repeat(250);
        let Err(err) = settings(&["--amqp-name-prefix", "prefix.", "--crm-queue", &long]) else {
            panic!("a 257-byte queue name was accepted");
        };
        assert!(err.to_string().contains("257 bytes"), "{err}");
        let Err(err) = settings(&["--crm-queue", "crm queue"]) else {
            panic!("a queue name with a space was accepted");
        };
        assert!(err.to_string().contains("printable ASCII"), "{err}");
    }
}
