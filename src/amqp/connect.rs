//! Opening a broker connection, with an error that tells the operator what to do.

use std::str::FromStr;

use lapin::{
    Connection, ConnectionProperties,
    protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError},
    uri::AMQPUri,
};

pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// Heartbeat asked for when `AMQP_URL` sets none (`?heartbeat=N` overrides it).
pub const DEFAULT_HEARTBEAT_SECS: u16 = 15;

/// Broker settings shared by every subcommand.
#[derive(clap::Args, Clone)]
pub struct AmqpArgs {
    /// Broker URL (amqp:// or amqps://).
    #[arg(long = "amqp-url", env = "AMQP_URL", default_value = DEFAULT_AMQP_URL, hide_env_values = true)]
    pub url: String,
    /// Prefix for every exchange and queue name (isolates tests and tenants): at most
    /// 200 bytes of printable ASCII without spaces.
    #[arg(long = "amqp-name-prefix", env = "AMQP_NAME_PREFIX", default_value = "", value_parser = name_prefix)]
    pub name_prefix: String,
}

/// The longest `AMQP_NAME_PREFIX`: AMQP names are at most 255 bytes (lapin panics beyond), and the
/// longest name the worker builds adds a few dozen bytes to the prefix.
pub const MAX_NAME_PREFIX_BYTES: usize = 200;

/// Checks `AMQP_NAME_PREFIX` before it reaches lapin.
fn name_prefix(value: &str) -> Result<String, String> {
    if value.len() > MAX_NAME_PREFIX_BYTES {
        return Err(format!(
            "AMQP_NAME_PREFIX is {} bytes long; at most {MAX_NAME_PREFIX_BYTES} are allowed (RabbitMQ names are limited to 255 bytes)",
            value.len()
        ));
    }
    if !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("AMQP_NAME_PREFIX may hold only printable ASCII characters, without spaces".to_string());
    }
    Ok(value.to_string())
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
    /// `cause` is shown once, in the message, rather than again as an error source.
    #[error("cannot connect to the RabbitMQ broker at {url} ({cause}). {hint}", hint = unreachable_hint(cause))]
    Unreachable { url: String, cause: lapin::Error },
}

impl ConnectError {
    /// True when the broker did not answer yet (see [`may_clear_up`]); false for a URL,
    /// credentials or vhost the broker will refuse however long one waits.
    pub fn is_unanswered(&self) -> bool {
        match self {
            ConnectError::InvalidUrl { .. } => false,
            ConnectError::Unreachable { cause, .. } => may_clear_up(cause),
        }
    }
}

/// A broker error that waiting may clear: the network or the broker not answering yet (refused,
/// reset, timed out, a host name that does not resolve yet, as a StatefulSet's until its pod is
/// ready), the broker closing connections while it stops or starts, a vhost still starting, a
/// connection limit. Not: TLS or protocol mismatches (`amqps://` to a plain port, the HTTP port),
/// refused credentials, a missing vhost, a precondition.
pub fn may_clear_up(error: &lapin::Error) -> bool {
    match error.kind() {
        lapin::ErrorKind::IOError(io) => !matches!(
            io.kind(),
            std::io::ErrorKind::InvalidData
                | std::io::ErrorKind::InvalidInput
                | std::io::ErrorKind::PermissionDenied
                | std::io::ErrorKind::Unsupported
        ),
        lapin::ErrorKind::MissingHeartbeatError
        | lapin::ErrorKind::InvalidConnectionState(_)
        | lapin::ErrorKind::InvalidChannelState(..) => true,
        lapin::ErrorKind::ProtocolError(e) => match e.kind() {
            AMQPErrorKind::Hard(AMQPHardError::CONNECTIONFORCED) => true,
            AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED) => {
                let message = e.get_message().as_str();
                message.contains("is down") || message.contains("limit")
            }
            _ => false,
        },
        _ => false,
    }
}

/// What to check, from what the broker (or the network) said.
fn unreachable_hint(cause: &lapin::Error) -> &'static str {
    let refused =
        |wanted: &AMQPErrorKind| matches!(cause.kind(), lapin::ErrorKind::ProtocolError(e) if e.kind() == wanted);
    if refused(&AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED)) {
        "The broker refused the user name or password in AMQP_URL (amqp://user:password@host:port/vhost; \
         URL-encode special characters in the password)."
    } else if refused(&AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED)) && !may_clear_up(cause) {
        "The vhost in AMQP_URL does not exist or the user may not use it (the vhost is URL-encoded: %2f \
         for /)."
    } else {
        "Check AMQP_URL (it must be amqp://user:password@host:port/vhost, with the vhost URL-encoded, \
         e.g. %2f for /), and that a broker is running there: start one with `rabbitmq-server -detached`, \
         or `docker run -d -p 5672:5672 rabbitmq:3-management`."
    }
}

/// Connects once; callers that must survive broker restarts loop around this (see `pipeline::supervisor`).
pub async fn connect(url: &str, connection_name: &str) -> Result<Connection, ConnectError> {
    let properties = ConnectionProperties::default().with_connection_name(connection_name.into());
    let unreachable = |cause| ConnectError::Unreachable {
        url: redact_url(url),
        cause,
    };
    let mut uri = AMQPUri::from_str(url).map_err(|reason| ConnectError::InvalidUrl {
        url: redact_url(url),
        // The parser's message may quote the whole URL, password and all.
        reason: reason.replace(url, &redact_url(url)),
    })?;
    // The broker's default (60 s) means a silently hung broker is noticed after ~2 minutes.
    if uri.query.heartbeat.is_none() {
        uri.query.heartbeat = Some(DEFAULT_HEARTBEAT_SECS);
    }
    Connection::connect_uri(uri, properties).await.map_err(unreachable)
}

/// `amqp://user:secret@host/vhost` → `amqp://user:***@host/vhost`.
///
/// The userinfo ends at the *last* `@` of the authority (the part before the first `/`, `?` or
/// `#`), so a password with an unencoded `@` is hidden whole. If an `@` only comes later, the
/// password itself may hold an unencoded `/`, `?` or `#`: then everything up to the last `@` is
/// hidden, rather than guessing where the password ends.
pub fn redact_url(url: &str) -> String {
    // Without a scheme (a mistyped URL such as `guest:secret@host`) the user info still goes.
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), url),
    };
    let (authority, tail) = rest.split_at(rest.find(['/', '?', '#']).unwrap_or(rest.len()));
    if let Some((userinfo, host)) = authority.rsplit_once('@') {
        let user = userinfo.split(':').next().unwrap_or_default();
        return format!("{scheme}{user}:***@{host}{tail}");
    }
    match rest.rsplit_once('@') {
        Some((_, after)) => format!("{scheme}***@{after}"),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::{
        AMQPErrorKind, AMQPHardError, AMQPSoftError, MAX_NAME_PREFIX_BYTES, may_clear_up, name_prefix, redact_url,
    };

    #[test]
    fn name_prefixes_are_short_printable_ascii() {
        for ok in ["", "it-1a2b.", "tenant_a/", &"p".repeat(MAX_NAME_PREFIX_BYTES)] {
            assert_eq!(name_prefix(ok).as_deref(), Ok(ok));
        }
        let long = name_prefix(&"p".repeat(MAX_NAME_PREFIX_BYTES + 1)).unwrap_err();
        assert!(long.contains("201 bytes") && long.contains("at most 200"), "{long}");
        for bad in ["a b", "tab\t", "é.", "nl\n"] {
            assert!(name_prefix(bad).unwrap_err().contains("printable ASCII"), "{bad:?}");
        }
    }

    #[test]
    fn passwords_never_appear_in_redacted_urls() {
        assert_eq!(
            redact_url("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(redact_url("amqps://broker/vh"), "amqps://broker/vh");
        assert_eq!(
            redact_url("amqp://guest:p@ss@w0rd@host:5672/%2f"),
            "amqp://guest:***@host:5672/%2f",
            "an unencoded @ in the password"
        );
        assert_eq!(redact_url("amqps://user@host/vh"), "amqps://user:***@host/vh");
        assert_eq!(
            redact_url("guest:Sup3rS3cret@127.0.0.1"),
            "guest:***@127.0.0.1",
            "a URL without a scheme"
        );
        assert_eq!(
            redact_url("amqps://u:s3cr@t@host?heartbeat=10"),
            "amqps://u:***@host?heartbeat=10"
        );
        for (url, secret) in [
            ("amqp://u:se/cr@et@host/vh", "cr@et"),
            ("amqp://u:se?cret@host/vh", "cret"),
            ("amqp://u:se#cr@et@host", "cr@et"),
        ] {
            let redacted = redact_url(url);
            assert!(
                !redacted.contains(secret) && !redacted.contains("se"),
                "{url} → {redacted}"
            );
            assert!(
                redacted.ends_with("@host/vh") || redacted.ends_with("@host"),
                "{redacted}"
            );
        }
    }

    #[test]
    fn only_what_waiting_may_clear_is_waited_for() {
        use lapin::protocol::AMQPError;
        let io = |kind| lapin::Error::from(std::io::Error::new(kind, "x"));
        let amqp = |kind, message: &str| {
            lapin::Error::from(lapin::ErrorKind::ProtocolError(AMQPError::new(kind, message.into())))
        };
        use std::io::ErrorKind as Io;
        for (error, waited) in [
            (io(Io::ConnectionRefused), true),
            (io(Io::ConnectionReset), true),
            (io(Io::TimedOut), true),
            // A host name that does not resolve (yet): tokio reports it as an uncategorised error.
            (io(Io::Other), true),
            // TLS against a plain port, or the wrong protocol.
            (io(Io::InvalidData), false),
            (
                amqp(
                    AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED),
                    "ACCESS_REFUSED - Login was refused",
                ),
                false,
            ),
            (
                amqp(
                    AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED),
                    "NOT_ALLOWED - vhost x not found",
                ),
                false,
            ),
            (
                amqp(
                    AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED),
                    "NOT_ALLOWED - vhost '/' is down",
                ),
                true,
            ),
            (
                amqp(
                    AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED),
                    "NOT_ALLOWED - connection limit (10) is reached",
                ),
                true,
            ),
            (
                amqp(
                    AMQPErrorKind::Hard(AMQPHardError::CONNECTIONFORCED),
                    "CONNECTION_FORCED - broker forced",
                ),
                true,
            ),
            (
                amqp(
                    AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED),
                    "PRECONDITION_FAILED",
                ),
                false,
            ),
            (lapin::Error::from(lapin::ErrorKind::MissingHeartbeatError), true),
        ] {
            assert_eq!(may_clear_up(&error), waited, "{error}");
        }
    }
}
