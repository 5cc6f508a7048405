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

/// Writes the trace context of the current tracing span into `table`.
pub fn inject_current(table: &mut FieldTable) {
    let context = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&context, &mut HeaderInjector(table));
}

/// Headers carrying only the current trace context.
pub fn current_headers() -> FieldTable {
    let mut table = FieldTable::default();
    inject_current(&mut table);
    table
}

/// The current trace id in hex, when the current span is being traced.
pub fn current_trace_id() -> Option<String> {
    let context = tracing::Span::current().context();
    let span = context.span();
    let span_context = span.span_context();
    span_context.is_valid().then(|| span_context.trace_id().to_string())
}
