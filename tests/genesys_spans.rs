//! The Genesys client's spans, recorded over a real call to the simulator: names, parents, HTTP
//! client attributes, and no personal data. A binary of its own (see the test).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use guest_session_worker::sim::Faults;

mod support;

use support::genesys::*;

/// A span's name and its fields as text.
type SpanRecord = (String, BTreeMap<String, String>);

#[derive(Default, Clone)]
struct Recorded(Arc<Mutex<Vec<SpanRecord>>>);

struct Recorder(Recorded);

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_string(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().to_string(), value.to_string());
    }
}

#[derive(Clone, Copy)]
struct SpanIndex(usize);

impl<S> tracing_subscriber::Layer<S> for Recorder
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let mut fields = BTreeMap::new();
        attrs.record(&mut Fields(&mut fields));
        if let Some(parent) = ctx.span(id).and_then(|s| s.parent()) {
            fields.insert("<parent>".into(), parent.name().to_string());
        }
        let mut spans = self.0.0.lock().unwrap();
        spans.push((attrs.metadata().name().to_string(), fields));
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(SpanIndex(spans.len() - 1));
        }
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let Some(index) = ctx.span(id).and_then(|s| s.extensions().get::<SpanIndex>().copied()) else {
            return;
        };
        let mut spans = self.0.0.lock().unwrap();
        values.record(&mut Fields(&mut spans[index.0].1));
    }
}

#[tokio::test]
async fn spans_carry_http_attributes_and_no_personal_data() {
    use tracing_subscriber::layer::SubscriberExt;

    let recorded = Recorded::default();
    let subscriber = tracing_subscriber::registry().with(Recorder(recorded.clone()));
    let _guard = tracing::subscriber::set_default(subscriber);
    // Alone in its test binary: a test running beside it without a subscriber could register a
    // span callsite as "never interested" while this one installs its subscriber, and hide spans.

    let (sim, client) = start(roomy_sim()).await;
    sim.set_faults(Faults {
        fail_next: Some(vec![503]),
        ..Faults::default()
    });
    client.create_session(&request("req-span")).await.expect("created");

    let spans = recorded.0.lock().unwrap().clone();
    let named = |name: &str| {
        spans
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, f)| f.clone())
            .collect::<Vec<_>>()
    };
    let create = named("genesys.create_session");
    assert_eq!(create.len(), 1, "{spans:?}");
    assert_eq!(create[0]["request_id"], "req-span");
    assert_eq!(create[0]["genesys.session_api"], "open_messaging");
    assert_eq!(create[0]["genesys.attempts"], "2");
    let tokens = named("genesys.token");
    assert_eq!(tokens.len(), 1);
    assert_eq!(tokens[0]["<parent>"], "genesys.create_session");
    assert_eq!(tokens[0]["http.response.status_code"], "200");
    let attempts = named("genesys.attempt");
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    for (index, (attempt, status)) in attempts.iter().zip(["503", "202"]).enumerate() {
        assert_eq!(attempt["<parent>"], "genesys.create_session");
        assert_eq!(attempt["otel.kind"], "client");
        assert_eq!(attempt["http.request.method"], "POST");
        assert_eq!(attempt["server.address"], "127.0.0.1");
        // The semantic conventions set resend_count on retries only.
        if index == 0 {
            assert!(!attempt.contains_key("http.request.resend_count"), "{attempt:?}");
        } else {
            assert_eq!(attempt["http.request.resend_count"], index.to_string());
        }
        assert_eq!(attempt["http.response.status_code"], status);
    }
    for (name, fields) in spans.iter().filter(|(n, _)| n.starts_with("genesys.")) {
        for value in fields.values() {
            for personal in [
                GUEST_ID,
                DISPLAY_NAME,
                "web_portal",
                "desktop",
                "question about my order",
                "demo-secret",
            ] {
                assert!(!value.contains(personal), "{name} carries {personal}: {fields:?}");
            }
        }
    }
}
