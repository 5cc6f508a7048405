//! Settings of the Genesys client: the command-line/env flags ([`GenesysArgs`], DESIGN §7) and the
//! checked configuration they turn into ([`GenesysConfig`]).
//!
//! The client secret is a [`SecretString`] from the moment it is parsed: `Debug` and `Display` of
//! every type here print `[REDACTED]`, never the value.

use std::fmt;
use std::time::Duration;

use secrecy::SecretString;

use super::region::{HostsError, resolve_hosts};

/// Which Genesys API creates the session (DESIGN §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum SessionApiKind {
    /// Open Messaging inbound message (`open-messaging`, the default).
    OpenMessaging,
    /// Web chat v2 guest conversation (`guest-chat`, deprecated by Genesys, still used).
    GuestChat,
}

impl SessionApiKind {
    /// The value of the created-session event's `session.api`.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionApiKind::OpenMessaging => "open_messaging",
            SessionApiKind::GuestChat => "guest_chat",
        }
    }

    /// The spelling of `GENESYS_SESSION_API`.
    pub fn env_value(self) -> &'static str {
        match self {
            SessionApiKind::OpenMessaging => "open-messaging",
            SessionApiKind::GuestChat => "guest-chat",
        }
    }
}

impl fmt::Display for SessionApiKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn parse_secret(value: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(value))
}

/// Genesys flags; every one also reads the env var of DESIGN §7.
///
/// `Debug` is derived but safe: the secret is a [`SecretString`] and prints as `[REDACTED]`.
#[derive(clap::Args, Debug, Clone)]
pub struct GenesysArgs {
    /// Genesys Cloud region; picks the `api.` and `login.` hosts.
    #[arg(long = "genesys-region", env = "GENESYS_REGION", default_value = "us-east-1")]
    pub region: String,
    /// Explicit API base URL (the simulator, a proxy); overrides the region.
    #[arg(long = "genesys-api-url", env = "GENESYS_API_URL")]
    pub api_url: Option<String>,
    /// Explicit login (OAuth) base URL; defaults to the region's login host, or to the API URL
    /// when only that is given and is not a Genesys `api.` host.
    #[arg(long = "genesys-login-url", env = "GENESYS_LOGIN_URL")]
    pub login_url: Option<String>,
    /// OAuth client-credentials client id.
    #[arg(long = "genesys-client-id", env = "GENESYS_CLIENT_ID")]
    pub client_id: Option<String>,
    /// OAuth client secret. Prefer the env var: a flag is visible in the process list.
    #[arg(long = "genesys-client-secret", env = "GENESYS_CLIENT_SECRET", hide_env_values = true, value_parser = parse_secret)]
    pub client_secret: Option<SecretString>,
    /// Which API creates sessions.
    #[arg(
        long = "genesys-session-api",
        env = "GENESYS_SESSION_API",
        value_enum,
        default_value = "open-messaging"
    )]
    pub session_api: SessionApiKind,
    /// Open Messaging integration id (required for open-messaging).
    #[arg(long = "genesys-integration-id", env = "GENESYS_INTEGRATION_ID")]
    pub integration_id: Option<String>,
    /// Guest Chat organization id (required for guest-chat).
    #[arg(long = "genesys-organization-id", env = "GENESYS_ORGANIZATION_ID")]
    pub organization_id: Option<String>,
    /// Guest Chat deployment id (required for guest-chat).
    #[arg(long = "genesys-deployment-id", env = "GENESYS_DEPLOYMENT_ID")]
    pub deployment_id: Option<String>,
    /// Guest Chat default queue, used when a request names none (required for guest-chat).
    #[arg(long = "genesys-queue", env = "GENESYS_QUEUE")]
    pub queue: Option<String>,
    /// Open Messaging text when a request has no `initial_message`.
    #[arg(
        long = "genesys-initial-message",
        env = "GENESYS_INITIAL_MESSAGE",
        default_value = "Guest session started"
    )]
    pub initial_message: String,
    /// Starting quota for pacing, requests per minute; adapts to 429s and `inin-ratelimit-*`.
    #[arg(
        long = "genesys-rate-limit-per-minute",
        env = "GENESYS_RATE_LIMIT_PER_MINUTE",
        default_value_t = 300
    )]
    pub rate_limit_per_minute: u32,
    /// How long a transient failure is retried before `retries_exhausted`, in seconds (0–86400).
    #[arg(long = "retry-budget-secs", env = "WORKER_RETRY_BUDGET_SECS", default_value_t = 600, value_parser = clap::value_parser!(u64).range(0..=MAX_SETTING.as_secs()))]
    pub retry_budget_secs: u64,
    /// Longest `Retry-After` honoured, in seconds (0–86400): a request told by a 429 or another
    /// non-5xx transient answer to wait longer is not retried (`retries_exhausted`); a longer one
    /// on a 5xx is cut to this; the replica's pause after a 429 lasts at most this long.
    #[arg(
        long = "genesys-max-retry-after-secs",
        env = "GENESYS_MAX_RETRY_AFTER_SECS",
        default_value_t = 180,
        value_parser = clap::value_parser!(u64).range(0..=MAX_SETTING.as_secs())
    )]
    pub max_retry_after_secs: u64,
}

impl fmt::Display for GenesysArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "genesys(region={}, api_url={}, login_url={}, client_id={}, client_secret={}, session_api={})",
            self.region,
            self.api_url.as_deref().unwrap_or("-"),
            self.login_url.as_deref().unwrap_or("-"),
            self.client_id.as_deref().unwrap_or("-"),
            if self.client_secret.is_some() {
                "[REDACTED]"
            } else {
                "-"
            },
            self.session_api.env_value(),
        )
    }
}

/// The longest retry budget or `Retry-After` cap accepted: a day.
pub const MAX_SETTING: Duration = Duration::from_secs(86_400);

/// A configuration problem, naming the env var to fix.
#[derive(Debug, thiserror::Error)]
pub enum GenesysConfigError {
    #[error("GENESYS_SESSION_API={api} needs {}; set {}", vars.join(", "), if vars.len() == 1 { "it" } else { "them" }, api = api.env_value())]
    Missing {
        api: SessionApiKind,
        vars: Vec<&'static str>,
    },
    #[error(transparent)]
    Hosts(#[from] HostsError),
    #[error("{var} is invalid: {reason}")]
    Invalid { var: &'static str, reason: String },
    #[error("failed to build the Genesys HTTP client: {0}")]
    HttpClient(#[source] reqwest::Error),
}

/// The checked configuration of [`super::GenesysClient`]. `Debug`/`Display` redact the secret.
#[derive(Clone)]
pub struct GenesysConfig {
    /// API base URL, no trailing slash, e.g. `https://api.mypurecloud.com`.
    pub api_base_url: String,
    /// Login (OAuth) base URL, no trailing slash, e.g. `https://login.mypurecloud.com`.
    pub login_base_url: String,
    /// Empty for Guest Chat (which uses no OAuth).
    pub client_id: String,
    pub client_secret: SecretString,
    pub session_api: SessionApiKind,
    pub integration_id: Option<String>,
    pub organization_id: Option<String>,
    pub deployment_id: Option<String>,
    pub default_queue: Option<String>,
    pub initial_message: String,
    pub rate_limit_per_minute: u32,
    /// How long transient failures are retried, measured from the first attempt.
    pub retry_budget: Duration,
    /// Longest `Retry-After` honoured (longer ones are clamped).
    pub max_retry_after: Duration,
    pub connect_timeout: Duration,
    /// Per HTTP attempt (never longer than what is left of the retry budget).
    pub request_timeout: Duration,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl GenesysConfig {
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(16);
    pub const DEFAULT_INITIAL_BACKOFF: Duration = Duration::from_millis(200);
    pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(5);

    /// An Open Messaging configuration against one base URL serving both the API and `/oauth/token`
    /// (the simulator). Production defaults otherwise (300/min, 600 s budget); tests adjust the
    /// public fields.
    pub fn for_simulator(
        base_url: &str,
        client_id: impl Into<String>,
        client_secret: impl Into<String>,
        integration_id: impl Into<String>,
    ) -> Self {
        let base = base_url.trim_end_matches('/').to_string();
        Self {
            api_base_url: base.clone(),
            login_base_url: base,
            client_id: client_id.into(),
            client_secret: SecretString::from(client_secret.into()),
            session_api: SessionApiKind::OpenMessaging,
            integration_id: Some(integration_id.into()),
            organization_id: None,
            deployment_id: None,
            default_queue: None,
            initial_message: "Guest session started".to_string(),
            rate_limit_per_minute: 300,
            retry_budget: Duration::from_secs(600),
            max_retry_after: Duration::from_secs(180),
            connect_timeout: Self::DEFAULT_CONNECT_TIMEOUT,
            request_timeout: Self::DEFAULT_REQUEST_TIMEOUT,
            initial_backoff: Self::DEFAULT_INITIAL_BACKOFF,
            max_backoff: Self::DEFAULT_MAX_BACKOFF,
        }
    }

    /// Switches to Guest Chat with these deployment settings (handy with [`Self::for_simulator`]).
    pub fn with_guest_chat(
        mut self,
        organization_id: impl Into<String>,
        deployment_id: impl Into<String>,
        default_queue: impl Into<String>,
    ) -> Self {
        self.session_api = SessionApiKind::GuestChat;
        self.organization_id = Some(organization_id.into());
        self.deployment_id = Some(deployment_id.into());
        self.default_queue = Some(default_queue.into());
        self
    }

    /// Checks what [`GenesysArgs::into_config`] checks; [`super::GenesysClient::new`] calls it, so a
    /// hand-built config is held to the same rules.
    pub fn validate(&self) -> Result<(), GenesysConfigError> {
        super::region::normalize_base_url(&self.api_base_url, "GENESYS_API_URL")?;
        super::region::normalize_base_url(&self.login_base_url, "GENESYS_LOGIN_URL")?;
        let present = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.trim().is_empty());
        let mut missing = Vec::new();
        match self.session_api {
            SessionApiKind::OpenMessaging => {
                if !present(&self.integration_id) {
                    missing.push("GENESYS_INTEGRATION_ID");
                }
                if self.client_id.trim().is_empty() {
                    missing.push("GENESYS_CLIENT_ID");
                }
                if secrecy::ExposeSecret::expose_secret(&self.client_secret).is_empty() {
                    missing.push("GENESYS_CLIENT_SECRET");
                }
            }
            SessionApiKind::GuestChat => {
                if !present(&self.organization_id) {
                    missing.push("GENESYS_ORGANIZATION_ID");
                }
                if !present(&self.deployment_id) {
                    missing.push("GENESYS_DEPLOYMENT_ID");
                }
                if !present(&self.default_queue) {
                    missing.push("GENESYS_QUEUE");
                }
            }
        }
        if !missing.is_empty() {
            return Err(GenesysConfigError::Missing {
                api: self.session_api,
                vars: missing,
            });
        }
        if self.rate_limit_per_minute == 0 {
            return Err(GenesysConfigError::Invalid {
                var: "GENESYS_RATE_LIMIT_PER_MINUTE",
                reason: "must be at least 1".to_string(),
            });
        }
        // Bounded so that deadlines and pauses (now + the setting) are always representable.
        for (var, value) in [
            ("WORKER_RETRY_BUDGET_SECS", self.retry_budget),
            ("GENESYS_MAX_RETRY_AFTER_SECS", self.max_retry_after),
        ] {
            if value > MAX_SETTING {
                return Err(GenesysConfigError::Invalid {
                    var,
                    reason: format!("must be at most {} (a day)", MAX_SETTING.as_secs()),
                });
            }
        }
        if self.initial_message.trim().is_empty() {
            return Err(GenesysConfigError::Invalid {
                var: "GENESYS_INITIAL_MESSAGE",
                reason: "must not be empty".to_string(),
            });
        }
        if self.initial_backoff.is_zero() || self.max_backoff < self.initial_backoff {
            return Err(GenesysConfigError::Invalid {
                var: "initial_backoff/max_backoff",
                reason: "need 0 < initial_backoff <= max_backoff".to_string(),
            });
        }
        Ok(())
    }
}

impl GenesysArgs {
    /// Resolves hosts and checks that the chosen session API has what it needs.
    pub fn into_config(self) -> Result<GenesysConfig, GenesysConfigError> {
        let hosts = resolve_hosts(&self.region, self.api_url.as_deref(), self.login_url.as_deref())?;
        let non_empty = |v: Option<String>| v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
        let config = GenesysConfig {
            api_base_url: hosts.api_base_url,
            login_base_url: hosts.login_base_url,
            client_id: non_empty(self.client_id).unwrap_or_default(),
            client_secret: self.client_secret.unwrap_or_default(),
            session_api: self.session_api,
            integration_id: non_empty(self.integration_id),
            organization_id: non_empty(self.organization_id),
            deployment_id: non_empty(self.deployment_id),
            default_queue: non_empty(self.queue),
            initial_message: self.initial_message,
            rate_limit_per_minute: self.rate_limit_per_minute,
            retry_budget: Duration::from_secs(self.retry_budget_secs),
            max_retry_after: Duration::from_secs(self.max_retry_after_secs),
            connect_timeout: GenesysConfig::DEFAULT_CONNECT_TIMEOUT,
            request_timeout: GenesysConfig::DEFAULT_REQUEST_TIMEOUT,
            initial_backoff: GenesysConfig::DEFAULT_INITIAL_BACKOFF,
            max_backoff: GenesysConfig::DEFAULT_MAX_BACKOFF,
        };
        config.validate()?;
        Ok(config)
    }
}

/// Written by hand so that no future field can leak the secret.
impl fmt::Debug for GenesysConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GenesysConfig")
            .field("api_base_url", &self.api_base_url)
            .field("login_base_url", &self.login_base_url)
            .field("client_id", &self.client_id)
            .field("client_secret", &"[REDACTED]")
            .field("session_api", &self.session_api)
            .field("integration_id", &self.integration_id)
            .field("organization_id", &self.organization_id)
            .field("deployment_id", &self.deployment_id)
            .field("default_queue", &self.default_queue)
            .field("initial_message_chars", &self.initial_message.chars().count())
            .field("rate_limit_per_minute", &self.rate_limit_per_minute)
            .field("retry_budget", &self.retry_budget)
            .field("max_retry_after", &self.max_retry_after)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("initial_backoff", &self.initial_backoff)
            .field("max_backoff", &self.max_backoff)
            .finish()
    }
}

impl fmt::Display for GenesysConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "genesys(api={}, login={}, session_api={}, client_id={}, client_secret=[REDACTED], rate_limit_per_minute={}, retry_budget={}s)",
            self.api_base_url,
            self.login_base_url,
            self.session_api.env_value(),
            if self.client_id.is_empty() {
                "-"
            } else {
                &self.client_id
            },
            self.rate_limit_per_minute,
            self.retry_budget.as_secs(),
        )
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        genesys: GenesysArgs,
    }

    fn args(extra: &[&str]) -> GenesysArgs {
        let mut argv = vec!["test"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).unwrap().genesys
    }

    #[test]
    fn defaults_follow_design() {
        let a = args(&[]);
        assert_eq!(a.region, "us-east-1");
        assert_eq!(a.session_api, SessionApiKind::OpenMessaging);
        assert_eq!(a.initial_message, "Guest session started");
        assert_eq!(a.rate_limit_per_minute, 300);
        assert_eq!(a.retry_budget_secs, 600);
        assert_eq!(a.max_retry_after_secs, 180);
    }

    #[test]
    fn open_messaging_names_every_missing_variable() {
        let err = args(&[]).into_config().unwrap_err();
        let text = err.to_string();
        for var in ["GENESYS_INTEGRATION_ID", "GENESYS_CLIENT_ID", "GENESYS_CLIENT_SECRET"] {
            assert!(text.contains(var), "{text}");
        }
        let err = args(&["--genesys-client-id", "c", "--genesys-client-secret", "s"])
            .into_config()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "GENESYS_SESSION_API=open-messaging needs GENESYS_INTEGRATION_ID; set it"
        );
    }

    #[test]
    fn guest_chat_needs_its_deployment_not_oauth() {
        let err = args(&["--genesys-session-api", "guest-chat", "--genesys-queue", "Web"])
            .into_config()
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("GENESYS_ORGANIZATION_ID") && text.contains("GENESYS_DEPLOYMENT_ID"),
            "{text}"
        );
        assert!(!text.contains("GENESYS_QUEUE") && !text.contains("CLIENT"), "{text}");

        let config = args(&[
            "--genesys-session-api",
            "guest-chat",
            "--genesys-organization-id",
            "org",
            "--genesys-deployment-id",
            "dep",
            "--genesys-queue",
            "Web Support",
            "--genesys-region",
            "eu-central-1",
        ])
        .into_config()
        .unwrap();
        assert_eq!(config.session_api, SessionApiKind::GuestChat);
        assert_eq!(config.api_base_url, "https://api.mypurecloud.de");
        assert_eq!(config.default_queue.as_deref(), Some("Web Support"));
    }

    #[test]
    fn a_complete_open_messaging_config() {
        let config = args(&[
            "--genesys-client-id",
            "client",
            "--genesys-client-secret",
            "hunter2-secret",
            "--genesys-integration-id",
            "integ",
            "--genesys-api-url",
            "http://127.0.0.1:9999/",
            "--retry-budget-secs",
            "30",
        ])
        .into_config()
        .unwrap();
        assert_eq!(config.api_base_url, "http://127.0.0.1:9999");
        assert_eq!(config.login_base_url, "http://127.0.0.1:9999");
        assert_eq!(config.retry_budget, Duration::from_secs(30));
        assert_eq!(config.connect_timeout, Duration::from_secs(5));
        assert_eq!(config.request_timeout, Duration::from_secs(16));
        for shown in [format!("{config:?}"), config.to_string()] {
            assert!(!shown.contains("hunter2-secret"), "{shown}");
        }
    }

    #[test]
    fn zero_rate_is_refused() {
        let err = args(&[
            "--genesys-client-id",
            "c",
            "--genesys-client-secret",
            "s",
            "--genesys-integration-id",
            "i",
            "--genesys-rate-limit-per-minute",
            "0",
        ])
        .into_config()
        .unwrap_err();
        assert!(err.to_string().contains("GENESYS_RATE_LIMIT_PER_MINUTE"), "{err}");
    }

    #[test]
    fn durations_beyond_a_day_are_refused() {
        for flag in ["--retry-budget-secs", "--genesys-max-retry-after-secs"] {
            assert!(Cli::try_parse_from(["t", flag, "86400"]).is_ok(), "{flag}");
            assert!(Cli::try_parse_from(["t", flag, "86401"]).is_err(), "{flag}");
        }
        let mut config = GenesysConfig::for_simulator("http://127.0.0.1:1", "c", "s", "i");
        config.retry_budget = Duration::from_secs(u64::MAX);
        let err = config.validate().unwrap_err();
        assert!(err.to_string().contains("WORKER_RETRY_BUDGET_SECS"), "{err}");
    }

    #[test]
    fn unknown_session_api_is_a_parse_error() {
        assert!(Cli::try_parse_from(["t", "--genesys-session-api", "webchat"]).is_err());
    }
}
