//! W3C trace context (`traceparent`, `tracestate`) carried in AMQP headers, in and out.

use lapin::types::FieldTable;
use opentelemetry::{
    Context,
    propagation::{Extractor, Injector, TextMapPropagator},
    trace::TraceContextExt,
};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::amqp::headers;

struct HeaderExtractor<'a> {
    values: Vec<(&'a str, String)>,
}

impl<'a> HeaderExtractor<'a> {
    fn new(table: Option<&'a FieldTable>) -> Self {
        let values = table
            .map(|t| {
                t.inner()
                    .iter()
                    .filter_map(|(k, v)| Some((k.as_str(), headers::value_as_string(v)?)))
                    .collect()
            })
            .unwrap_or_default();
        Self { values }
    }
}

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.values
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }
    fn keys(&self) -> Vec<&str> {
        self.values.iter().map(|(k, _)| *k).collect()
    }
}

struct HeaderInjector<'a>(&'a mut FieldTable);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        headers::set_str(self.0, key, value);
    }
}

/// The remote parent carried by a message's headers (an empty context when there is none).
pub fn extract(table: Option<&FieldTable>) -> Context {
    TraceContextPropagator::new().extract(&HeaderExtractor::new(table))
}

tokio::task_local! {
    /// The upstream trace context of the message a task is processing. Without an OpenTelemetry
    /// layer (no exporter configured) spans carry no context; the worker then passes the
    /// upstream's `traceparent`/`tracestate` through unchanged, so traces stay connected across
    /// it at no cost.
    static UPSTREAM: Context;
}

/// Runs `work` with `upstream` as the fallback trace context of everything it publishes.
pub async fn with_upstream<F: std::future::Future>(upstream: Context, work: F) -> F::Output {
    UPSTREAM.scope(upstream, work).await
}

/// The context to propagate: the current span's when it is traced, else the upstream's.
fn current_context() -> Context {
    let context = tracing::Span::current().context();
    if context.span().span_context().is_valid() {
        return context;
    }
    UPSTREAM.try_with(Context::clone).unwrap_or(context)
}

/// Writes the current trace context into `table`.
pub fn inject_current(table: &mut FieldTable) {
    TraceContextPropagator::new().inject_context(&current_context(), &mut HeaderInjector(table));
}

/// Headers carrying only the current trace context.
pub fn current_headers() -> FieldTable {
    let mut table = FieldTable::default();
    inject_current(&mut table);
    table
}

/// The current trace id in hex, when the current span is being traced.
pub fn current_trace_id() -> Option<String> {
    let context = current_context();
    let span = context.span();
    let span_context = span.span_context();
    span_context.is_valid().then(|| span_context.trace_id().to_string())
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const PARENT: &str = "00f067aa0ba902b7";

    fn with_tracing<T>(f: impl FnOnce() -> T) -> T {
        // A thread-local subscriber: unit tests run in parallel and must not touch the global one.
        let provider = SdkTracerProvider::builder().build();
        let subscriber =
            tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, f)
    }

    #[test]
    fn a_child_of_the_extracted_context_injects_the_same_trace_and_its_own_span() {
        let mut incoming = FieldTable::default();
        headers::set_str(&mut incoming, "Traceparent", format!("00-{TRACE}-{PARENT}-01"));
        headers::set_str(&mut incoming, "tracestate", "vendor=kept");
        let (outgoing, trace_id) = with_tracing(|| {
            let span = tracing::info_span!("consume");
            let _ = span.set_parent(extract(Some(&incoming)));
            span.in_scope(|| (current_headers(), current_trace_id()))
        });
        let traceparent = headers::get_str(Some(&outgoing), "traceparent").expect("traceparent injected");
        let parts: Vec<&str> = traceparent.split('-').collect();
        assert_eq!(parts[1], TRACE);
        assert_ne!(parts[2], PARENT, "the worker's own span is the new parent");
        assert_eq!(parts[3], "01");
        assert_eq!(
            headers::get_str(Some(&outgoing), "tracestate").as_deref(),
            Some("vendor=kept")
        );
        assert_eq!(trace_id.as_deref(), Some(TRACE));
    }

    #[test]
    fn without_trace_headers_a_new_trace_starts() {
        assert!(!extract(None).span().span_context().is_valid());
        let (outgoing, trace_id) = with_tracing(|| {
            let span = tracing::info_span!("consume");
            let _ = span.set_parent(extract(Some(&FieldTable::default())));
            span.in_scope(|| (current_headers(), current_trace_id()))
        });
        let trace_id = trace_id.expect("a root trace");
        let traceparent = headers::get_str(Some(&outgoing), "traceparent").expect("traceparent injected");
        assert!(traceparent.contains(&trace_id));
    }
}
