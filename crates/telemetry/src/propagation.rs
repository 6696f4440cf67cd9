//! W3C trace context on HTTP headers: OpenTelemetry carriers for
//! `http::HeaderMap`, and a span's trace context (to send on, to log, to
//! put under a caller's) from whichever layer keeps it:
//! tracing-opentelemetry when spans are exported, [`crate::trace_ids`]
//! when not.

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::{
    Context,
    propagation::{Extractor, Injector},
    trace::{TraceContextExt as _, TraceId},
};
use shop_core::context::unique_to_the_call;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::trace_ids;

/// `http::HeaderMap` as an OpenTelemetry carrier.
pub struct HeaderCarrier<'a>(pub &'a mut HeaderMap);

impl Injector for HeaderCarrier<'_> {
    fn set(&mut self, key: &str, value: String) {
        // W3C's own names without parsing or copying them, and the value's
        // text moved in rather than copied: this runs on every outgoing call.
        let name = match key {
            "traceparent" => Ok(TRACEPARENT),
            "tracestate" => Ok(TRACESTATE),
            other => HeaderName::from_bytes(other.as_bytes()),
        };
        if let (Ok(name), Ok(value)) = (name, HeaderValue::try_from(value)) {
            // A traceparent names this call's own span: never the same twice.
            let value = if name == TRACEPARENT {
                unique_to_the_call(value)
            } else {
                value
            };
            self.0.insert(name, value);
        }
    }
}

const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// Read-only `http::HeaderMap` as an OpenTelemetry carrier.
pub struct HeaderReader<'a>(pub &'a HeaderMap);

impl Extractor for HeaderReader<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        // W3C's own names without parsing them: this runs on every call.
        let value = match key {
            "traceparent" => self.0.get(TRACEPARENT),
            "tracestate" => self.0.get(TRACESTATE),
            other => self.0.get(other),
        };
        value.and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// The trace context of `span`, to inject into an outgoing call's headers.
pub fn context_of(span: &Span) -> Context {
    match trace_ids::of(span) {
        Some(ids) => Context::new().with_remote_span_context(ids),
        None => span.context(),
    }
}

/// Puts `span` under `parent`, a caller's context extracted from its
/// headers. Call it before any span is created under `span`.
pub fn set_parent(span: &Span, parent: Context) {
    if !trace_ids::set_parent(span, parent.span().span_context()) {
        let _ = span.set_parent(parent);
    }
}

/// Links `span` to `other` (an OpenTelemetry span link) when spans are
/// exported: a call made for many callers at once (a shared reservation
/// call) names each caller's span without being under any of them. Call it
/// before `span` closes.
pub fn add_link(span: &Span, other: &Span) {
    let span_context = match trace_ids::of(other) {
        Some(ids) => ids,
        None => other.context().span().span_context().clone(),
    };
    if span_context.is_valid() {
        span.add_link(span_context);
    }
}

/// Records `span`'s trace id in its `trace_id` field, which it declares
/// `Empty`; call it after [`set_parent`]. Nothing is recorded when the log
/// lines write every span's trace id themselves, from the ids the span
/// keeps (JSON lines and no exporter: see [`crate::init()`]): recorded, the
/// id would be formatted into the span's fields on every call, and those
/// fields' text grown again to hold it.
pub fn record_trace_id(span: &Span) {
    if crate::init::lines_write_trace_ids() {
        return;
    }
    if let Some(trace) = trace_id(span) {
        span.record("trace_id", crate::text::trace_id(trace).as_str());
    }
}

/// The trace id of `span`, if it has one.
pub fn trace_id(span: &Span) -> Option<TraceId> {
    let span_context = match trace_ids::of(span) {
        Some(ids) => ids,
        None => span.context().span().span_context().clone(),
    };
    span_context.is_valid().then(|| span_context.trace_id())
}

#[cfg(test)]
mod tests {
    use opentelemetry::propagation::TextMapPropagator as _;
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use tracing_subscriber::{Registry, prelude::*};

    use super::*;
    use crate::trace_ids::TraceIdLayer;

    #[test]
    fn a_span_under_a_caller_sends_the_caller_s_trace_with_its_own_span_id() {
        let subscriber = Registry::default().with(TraceIdLayer::default());
        tracing::subscriber::with_default(subscriber, || {
            let propagator = TraceContextPropagator::new();
            let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
            let mut incoming = HeaderMap::new();
            incoming.insert(
                "traceparent",
                HeaderValue::from_str(&format!("00-{caller_trace}-00f067aa0ba902b7-01")).unwrap(),
            );
            incoming.insert("tracestate", HeaderValue::from_static("vendor=1"));

            let server = tracing::info_span!("grpc.server");
            set_parent(&server, propagator.extract(&HeaderReader(&incoming)));
            assert_eq!(trace_id(&server).unwrap().to_string(), caller_trace);

            let client = server.in_scope(|| tracing::info_span!("grpc.client"));
            let mut outgoing = HeaderMap::new();
            propagator.inject_context(&context_of(&client), &mut HeaderCarrier(&mut outgoing));
            let client_ids = crate::trace_ids::of(&client).unwrap();
            assert_eq!(
                outgoing["traceparent"],
                format!("00-{caller_trace}-{}-01", client_ids.span_id()),
                "the caller's trace, the client span's own id"
            );
            assert_ne!(client_ids.span_id().to_string(), "00f067aa0ba902b7");
            assert_eq!(
                outgoing["tracestate"], "vendor=1",
                "the caller's vendors' state"
            );
            assert!(
                outgoing["traceparent"].is_sensitive(),
                "a call's own span id is never worth a place in HPACK's table"
            );
        });
    }
}
