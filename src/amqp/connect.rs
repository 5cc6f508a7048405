//! Opening a broker connection, with an error that tells the operator what to do.

use std::str::FromStr;

use lapin::{Connection, ConnectionProperties, uri::AMQPUri};

pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// Heartbeat asked for when `AMQP_URL` sets none (`?heartbeat=N` overrides it).
pub const DEFAULT_HEARTBEAT_SECS: u16 = 15;

/// Broker settings shared by every subcommand.
#[derive(clap::Args, Clone)]
pub struct AmqpArgs {
    /// Broker URL (amqp:// or amqps://).
    #[arg(long = "amqp-url", env = "AMQP_URL", default_value = DEFAULT_AMQP_URL, hide_env_values = true)]
    pub url: String,
    /// Prefix for every exchange and queue name (isolates tests and tenants).
    #[arg(long = "amqp-name-prefix", env = "AMQP_NAME_PREFIX", default_value = "")]
    pub name_prefix: String,
}

impl AmqpArgs {
    pub fn new(url: impl Into<String>, name_prefix: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            name_prefix: name_prefix.into(),
        }
    }
}

/// The URL may carry a password: show only scheme, host and vhost.
impl std::fmt::Debug for AmqpArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpArgs")
            .field("url", &redact_url(&self.url))
            .field("name_prefix", &self.name_prefix)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("AMQP_URL {url} is not a valid broker URL ({reason}); expected amqp://user:password@host:port/vhost")]
    InvalidUrl { url: String, reason: String },
    #[error(
        "cannot connect to the RabbitMQ broker at {url} ({source}). Check AMQP_URL (it must be \
         amqp://user:password@host:port/vhost, with the vhost URL-encoded, e.g. %2f for /), and that \
         a broker is running there: start one with `rabbitmq-server -detached`, or \
         `docker run -d -p 5672:5672 rabbitmq:3-management`."
    )]
    Unreachable { url: String, source: lapin::Error },
}

/// Connects once; callers that must survive broker restarts loop around this (see `pipeline::supervisor`).
pub async fn connect(url: &str, connection_name: &str) -> Result<Connection, ConnectError> {
    let properties = ConnectionProperties::default().with_connection_name(connection_name.into());
    let unreachable = |source| ConnectError::Unreachable {
        url: redact_url(url),
        source,
    };
    let mut uri = AMQPUri::from_str(url).map_err(|reason| ConnectError::InvalidUrl {
        url: redact_url(url),
        reason,
    })?;
    // The broker's default (60 s) means a silently hung broker is noticed after ~2 minutes.
    if uri.query.heartbeat.is_none() {
        uri.query.heartbeat = Some(DEFAULT_HEARTBEAT_SECS);
    }
    Connection::connect_uri(uri, properties).await.map_err(unreachable)
}

/// `amqp://user:secret@host/vhost` → `amqp://user:***@host/vhost`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.split_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_never_appear_in_redacted_urls() {
        assert_eq!(
            redact_url("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(redact_url("amqps://broker/vh"), "amqps://broker/vh");
    }
}
