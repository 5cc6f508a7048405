//! Process-wide logging and tracing setup, from the standard environment variables only.
//!
//! | variable | effect |
//! | --- | --- |
//! | `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) | where spans go; unset = no export |
//! | `OTEL_EXPORTER_OTLP_PROTOCOL` (or `…_TRACES_PROTOCOL`) | `http/protobuf` (default, as the OTLP spec says) or `http/json` |
//! | `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES` | the resource (service name defaults to `guest-session-worker`) |
//! | `OTEL_SDK_DISABLED=true` | no export even with an endpoint |
//! | `OTEL_BSP_*`, `OTEL_EXPORTER_OTLP_HEADERS`, `…_TIMEOUT` | read by the SDK and exporter themselves |

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::{Resource, trace::SdkTracerProvider};
use tracing::Level;
use tracing_subscriber::{
    EnvFilter, Layer,
    filter::{FilterExt, LevelFilter, Targets, filter_fn},
    layer::{Filter, SubscriberExt},
    util::SubscriberInitExt,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Json,
    Pretty,
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    // The causes are in the messages, not error sources: `main` prints the chain, which would
    // show them twice.
    #[error("cannot build the OTLP exporter (check OTEL_EXPORTER_OTLP_ENDPOINT and OTEL_EXPORTER_OTLP_PROTOCOL): {0}")]
    Exporter(opentelemetry_otlp::ExporterBuildError),
    #[error(
        "{var}={value} is not supported: this build exports OTLP over HTTP; use `http/protobuf` (the default) or `http/json`, and the collector's HTTP port (usually 4318)"
    )]
    UnsupportedProtocol { var: &'static str, value: String },
    #[error("a global tracing subscriber is already installed: {0}")]
    AlreadyInstalled(tracing_subscriber::util::TryInitError),
}

impl From<opentelemetry_otlp::ExporterBuildError> for TelemetryError {
    fn from(error: opentelemetry_otlp::ExporterBuildError) -> Self {
        TelemetryError::Exporter(error)
    }
}

impl From<tracing_subscriber::util::TryInitError> for TelemetryError {
    fn from(error: tracing_subscriber::util::TryInitError) -> Self {
        TelemetryError::AlreadyInstalled(error)
    }
}

/// Keeps the tracer provider alive; [`Telemetry::shutdown`] flushes pending spans.
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// Installs the global subscriber: logs to stderr in `format`, filtered by `RUST_LOG`
    /// (else `default_filter`, e.g. `info`), and spans to OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set. Without an endpoint no OpenTelemetry layer is
    /// installed at all (it costs a tenth of the worker's CPU); the upstream trace context is then
    /// passed through to everything the worker publishes, or a fresh one started when the request
    /// had none (see [`super::propagation::with_upstream`]).
    pub fn init(format: LogFormat, default_filter: &str) -> Result<Self, TelemetryError> {
        let provider = tracer_provider()?;
        let otel = export_configured().then(|| {
            tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("guest-session-worker"))
                .with_filter(traced())
        });
        // RUST_LOG sets how much is logged, not what is traced: turning logs down to `warn` must
        // not break traces.
        let rust_log = std::env::var("RUST_LOG").ok();
        let invalid_rust_log = rust_log
            .as_deref()
            .and_then(|value| EnvFilter::try_new(value).err().map(|error| error.to_string()));
        let log_filter = log_filter(rust_log.as_deref(), default_filter);
        let fmt = match format {
            LogFormat::Json => tracing_subscriber::fmt::layer()
                .json()
                .with_writer(std::io::stderr)
                .boxed(),
            LogFormat::Pretty => tracing_subscriber::fmt::layer().with_writer(std::io::stderr).boxed(),
        };
        tracing_subscriber::registry()
            .with(fmt.with_filter(log_filter))
            .with(otel)
            .try_init()?;
        if let Some(error) = invalid_rust_log {
            tracing::warn!(%error, default = default_filter, "RUST_LOG is not a valid filter; logging at the default level");
        }
        Ok(Self { provider })
    }

    /// Exports what is still buffered. Call once, on the way out (after the worker has settled
    /// its in-flight requests, so their spans are complete).
    pub fn shutdown(self) {
        if let Err(error) = self.provider.force_flush() {
            tracing::warn!(%error, "flushing spans failed");
        }
        let _ = self.provider.shutdown();
    }
}

/// lapin logs every message the broker returns (an unroutable `session.created` event, say) at
/// WARN with its whole body: guest ids and attributes, raw PII. The worker reports unroutable
/// publishes itself, without the body.
const RETURNED_MESSAGES: &str = "lapin::returned_messages";

/// The log filter: `rust_log` (else `default_filter`), with [`RETURNED_MESSAGES`] always off. The
/// `off` directive wins over a directive for the same target in `rust_log`; the target check
/// also covers span directives (`[consume]=debug`), which EnvFilter lets override per-target
/// ones.
fn log_filter<S: tracing::Subscriber + 'static>(
    rust_log: Option<&str>,
    default_filter: &str,
) -> impl Filter<S> + Send + Sync + 'static {
    let env = rust_log
        .and_then(|value| EnvFilter::try_new(value).ok())
        .unwrap_or_else(|| EnvFilter::new(default_filter));
    let env = match format!("{RETURNED_MESSAGES}=off").parse() {
        Ok(directive) => env.add_directive(directive),
        Err(_) => env,
    };
    // A filter without a level hint makes the global maximum level TRACE: every disabled span and
    // event callsite is then checked at run time, and libraries that test `level_enabled!` (lapin
    // formats a marker string for every promise) do their TRACE work for nothing. The target check
    // only ever removes events, so the EnvFilter's hint holds for the pair.
    let hint = Filter::<S>::max_level_hint(&env).unwrap_or(LevelFilter::TRACE);
    env.and(filter_fn(|metadata| !metadata.target().starts_with(RETURNED_MESSAGES)).with_max_level_hint(hint))
}

/// Only this crate's spans (and the events inside them) are exported: libraries' own spans, such
/// as lapin's connection-long `io_loop`, would start stray root traces in the collector. The
/// `audit` target is left out too: the record already travels on the audit exchange.
fn traced() -> Targets {
    Targets::new().with_target(env!("CARGO_CRATE_NAME"), Level::INFO)
}

fn env_value(var: &str) -> Option<String> {
    std::env::var(var)
        .ok()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

fn export_configured() -> bool {
    let disabled = env_value("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    !disabled
        && ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
            .iter()
            .any(|var| env_value(var).is_some())
}

/// The OTLP protocol from the standard variables. The exporter crate alone would fall back to
/// JSON when both HTTP encodings are compiled in, and silently to JSON for `grpc`; the OTLP spec
/// says `http/protobuf` by default, and a protocol we cannot speak should stop the start.
fn protocol() -> Result<Protocol, TelemetryError> {
    for var in ["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"] {
        if let Some(value) = env_value(var) {
            return match value.to_ascii_lowercase().as_str() {
                "http/protobuf" => Ok(Protocol::HttpBinary),
                "http/json" => Ok(Protocol::HttpJson),
                _ => Err(TelemetryError::UnsupportedProtocol { var, value }),
            };
        }
    }
    Ok(Protocol::HttpBinary)
}

fn tracer_provider() -> Result<SdkTracerProvider, TelemetryError> {
    // Resource::builder() reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; our default name
    // applies only when neither names the service (the SDK's own default is `unknown_service`).
    let named = env_value("OTEL_SERVICE_NAME").is_some()
        || env_value("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|attrs| {
            attrs
                .split(',')
                .any(|pair| pair.split('=').next().is_some_and(|k| k.trim() == "service.name"))
        });
    let resource = if named {
        Resource::builder().build()
    } else {
        Resource::builder().with_service_name("guest-session-worker").build()
    };
    let builder = SdkTracerProvider::builder().with_resource(resource);
    if !export_configured() {
        return Ok(builder.build());
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(protocol()?)
        .build()?;
    Ok(builder.with_batch_exporter(exporter).build())
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Captured;

        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    fn logged(rust_log: Option<&str>) -> String {
        let captured = Captured::default();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .with_writer(captured.clone())
                .with_filter(log_filter(rust_log, "info")),
        );
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(target: "lapin::returned_messages", message = "guest-id-g-123", "Server returned us a message");
            tracing::info_span!("consume").in_scope(|| {
                tracing::warn!(target: "lapin::returned_messages", message = "guest-id-g-456", "Server returned us a message");
                tracing::warn!(target: "lapin::channels", "still logged");
            });
        });
        String::from_utf8(captured.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn lapins_returned_messages_are_never_logged_whatever_rust_log_says() {
        for rust_log in [
            None,
            Some("trace"),
            Some("warn,lapin::returned_messages=warn"),
            Some("lapin=trace,lapin::returned_messages=trace"),
            Some("[consume]=trace"),
        ] {
            let out = logged(rust_log);
            assert!(!out.contains("guest-id-g-"), "RUST_LOG={rust_log:?}: {out}");
            assert!(
                out.contains("still logged"),
                "RUST_LOG={rust_log:?}: other lapin logs stay: {out}"
            );
        }
    }
}
