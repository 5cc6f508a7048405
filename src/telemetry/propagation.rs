//! W3C trace context (`traceparent`, `tracestate`) carried in AMQP headers, in and out.

use std::cell::OnceCell;

use lapin::types::FieldTable;
use opentelemetry::{
    Context,
    propagation::{Extractor, Injector, TextMapPropagator},
    trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState},
};
use opentelemetry_sdk::{
    propagation::TraceContextPropagator,
    trace::{IdGenerator, RandomIdGenerator},
};
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
        replace_header(self.0, key, value);
    }
}

/// Sets `key` to `value`, replacing the header whatever the case of its name (a request's
/// `Traceparent` is read case-insensitively, so it is the one being continued). An empty value
/// removes the header instead: W3C treats an empty `tracestate` as none, and a stale one must not
/// travel with a new `traceparent`.
fn replace_header(table: &mut FieldTable, key: &str, value: String) {
    let stale = |name: &str| name.eq_ignore_ascii_case(key) && (value.is_empty() || name != key);
    // Rebuilding the table (it has no `remove`) only when there is something to drop.
    if table.inner().keys().any(|name| stale(name.as_str())) {
        let mut kept = table.inner().clone();
        kept.retain(|name, _| !stale(name.as_str()));
        *table = kept.into();
    }
    if !value.is_empty() {
        headers::set_str(table, key, value);
    }
}

/// The remote parent carried by a message's headers (an empty context when there is none).
pub fn extract(table: Option<&FieldTable>) -> Context {
    TraceContextPropagator::new().extract(&HeaderExtractor::new(table))
}

tokio::task_local! {
    /// The trace context of the message a task is processing, when no span carries one. Without
    /// an OpenTelemetry layer (no exporter configured) spans carry no context; the worker then
    /// passes the upstream's `traceparent`/`tracestate` through unchanged, so traces stay
    /// connected across it at no cost. A message without one gets a fresh trace context (created
    /// on first use), so that everything published for it still shares one `traceparent`.
    static UPSTREAM: OnceCell<Context>;
}

/// Runs `work` with `upstream` as the fallback trace context of everything it publishes (a fresh
/// one when `upstream` holds none).
pub async fn with_upstream<F: std::future::Future>(upstream: Context, work: F) -> F::Output {
    let fallback = if upstream.span().span_context().is_valid() {
        OnceCell::from(upstream)
    } else {
        OnceCell::new()
    };
    UPSTREAM.scope(fallback, work).await
}

/// A new W3C trace context (`00-<trace id>-<parent id>-00`): random non-zero ids from the
/// OpenTelemetry SDK's thread-local generator (seeded once per thread, no system call per id),
/// not sampled since no span of it is recorded.
fn fresh_context() -> Context {
    let ids = RandomIdGenerator::default();
    let trace_id = loop {
        let id = ids.new_trace_id();
        if id != TraceId::INVALID {
            break id;
        }
    };
    let span_id = loop {
        let id = ids.new_span_id();
        if id != SpanId::INVALID {
            break id;
        }
    };
    let span_context = SpanContext::new(trace_id, span_id, TraceFlags::default(), true, TraceState::default());
    Context::new().with_remote_span_context(span_context)
}

/// The context to propagate: the current span's when it is traced, else the message's (the
/// upstream's, or a fresh one).
fn current_context() -> Context {
    let context = tracing::Span::current().context();
    if context.span().span_context().is_valid() {
        return context;
    }
    UPSTREAM
        .try_with(|fallback| fallback.get_or_init(fresh_context).clone())
        .unwrap_or(context)
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

/// The current trace id in hex (the span's, the upstream's or the fresh one of the message).
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
    use tracing::Instrument;
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

    /// The names of `table`'s headers that are `name` whatever their case.
    fn spellings<'a>(table: &'a FieldTable, name: &str) -> Vec<&'a str> {
        table
            .inner()
            .keys()
            .map(|k| k.as_str())
            .filter(|k| k.eq_ignore_ascii_case(name))
            .collect()
    }

    fn assert_fresh_traceparent(value: &str) -> String {
        let parts: Vec<&str> = value.split('-').collect();
        assert_eq!(parts.len(), 4, "{value}");
        assert_eq!(parts[0], "00", "{value}");
        let lower_hex =
            |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        assert!(lower_hex(parts[1], 32) && parts[1] != "0".repeat(32), "{value}");
        assert!(lower_hex(parts[2], 16) && parts[2] != "0".repeat(16), "{value}");
        assert_eq!(parts[3], "00", "nothing was recorded, so not sampled: {value}");
        parts[1].to_string()
    }

    #[tokio::test]
    async fn without_a_tracer_or_an_upstream_each_message_gets_one_fresh_trace_context() {
        let published = || (current_headers(), current_headers(), current_trace_id());
        let (first, again, first_id) = with_upstream(extract(None), async { published() }).await;
        let (second, _, second_id) = with_upstream(extract(Some(&FieldTable::default())), async { published() }).await;
        let traceparent = headers::get_str(Some(&first), "traceparent").expect("a traceparent");
        let trace_id = assert_fresh_traceparent(&traceparent);
        assert_eq!(
            first_id.as_deref(),
            Some(trace_id.as_str()),
            "the audit trace id is the header's"
        );
        assert_eq!(
            headers::get_str(Some(&again), "traceparent").as_deref(),
            Some(traceparent.as_str()),
            "everything published for one message carries the same context"
        );
        assert!(
            spellings(&first, "tracestate").is_empty(),
            "no empty tracestate: {first:?}"
        );
        let other = headers::get_str(Some(&second), "traceparent").expect("a traceparent");
        assert_ne!(assert_fresh_traceparent(&other), trace_id, "one trace per message");
        assert_eq!(second_id.as_deref(), Some(&other[3..35]));
        // Outside a message (the CLI's `enqueue`) nothing is invented.
        assert!(current_headers().inner().is_empty());
        assert_eq!(current_trace_id(), None);
    }

    #[tokio::test]
    async fn without_a_tracer_the_upstream_context_passes_through_without_an_empty_tracestate() {
        let mut incoming = FieldTable::default();
        let upstream = format!("00-{TRACE}-{PARENT}-01");
        headers::set_str(&mut incoming, "Traceparent", upstream.clone());
        let (outgoing, trace_id) = with_upstream(extract(Some(&incoming)), async {
            (current_headers(), current_trace_id())
        })
        .await;
        assert_eq!(headers::get_str(Some(&outgoing), "traceparent"), Some(upstream.clone()));
        assert!(spellings(&outgoing, "tracestate").is_empty(), "{outgoing:?}");
        assert_eq!(trace_id.as_deref(), Some(TRACE));

        // Injected into the request's own headers (a dead letter), it replaces the upstream's
        // spelling rather than adding a second traceparent, and drops a tracestate it cannot use.
        headers::set_str(&mut incoming, "TraceState", "");
        let mut dead_letter = incoming.clone();
        with_upstream(extract(Some(&incoming)), async { inject_current(&mut dead_letter) }).await;
        assert_eq!(spellings(&dead_letter, "traceparent"), ["traceparent"]);
        assert_eq!(headers::get_str(Some(&dead_letter), "traceparent"), Some(upstream));
        assert!(spellings(&dead_letter, "tracestate").is_empty(), "{dead_letter:?}");
    }

    #[tokio::test]
    async fn with_a_tracer_the_span_context_wins_over_a_fresh_one() {
        let provider = SdkTracerProvider::builder().build();
        let subscriber =
            tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        // The test's current-thread runtime polls on this thread, so a thread default suffices.
        let _guard = tracing::subscriber::set_default(subscriber);
        let span = tracing::info_span!("consume");
        let _ = span.set_parent(extract(None));
        let span_trace = span.context().span().span_context().trace_id().to_string();
        let (outgoing, trace_id) = with_upstream(extract(None), async { (current_headers(), current_trace_id()) })
            .instrument(span)
            .await;
        let traceparent = headers::get_str(Some(&outgoing), "traceparent").expect("traceparent injected");
        assert_eq!(traceparent.split('-').nth(1), Some(span_trace.as_str()));
        assert!(traceparent.ends_with("-01"), "the span is sampled: {traceparent}");
        assert_eq!(trace_id, Some(span_trace));
    }
}
