//! Opening a broker connection, with an error that tells the operator what to do.

use lapin::{Connection, ConnectionProperties};

pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

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
    Connection::connect(url, properties)
        .await
        .map_err(|source| ConnectError::Unreachable {
            url: redact_url(url),
            source,
        })
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
