//! W3C trace and span ids for spans that nothing exports.
//!
//! Every call's log lines carry a trace id and every outgoing call a
//! `traceparent`, whether or not spans go to a collector. When they do,
//! tracing-opentelemetry gives the ids, by building an OpenTelemetry span
//! for every application span (its attributes converted one by one, an
//! OpenTelemetry context attached each time the span is entered) and
//! handing it to the exporter when it closes. Without an exporter all of
//! that is thrown away: about a dozen allocations per call and its largest
//! single per-call cost on a profile (docs/performance-history.md). [`TraceIdLayer`]
//! takes its place then. It keeps only a span's [`SpanContext`] in the
//! span's extensions: a new span id, and the trace id and sampling flag of
//! its parent span, or of the caller once [`crate::propagation::set_parent`]
//! has run, or a new trace (sampled, as the default sampler would) when it
//! has neither.
//!
//! [`crate::propagation`] reads the ids from whichever of the two layers
//! runs, so the observe layers do not care which.

use opentelemetry::trace::{SpanContext, TraceFlags, TraceState};
use opentelemetry_sdk::trace::{IdGenerator as _, RandomIdGenerator};
use tracing::{Span, Subscriber, span};
use tracing_subscriber::{
    Registry,
    layer::{Context, Layer},
    registry::LookupSpan,
};

/// Gives every span it sees a [`SpanContext`]; see the module docs.
#[derive(Debug, Default)]
pub struct TraceIdLayer {
    ids: RandomIdGenerator,
}

/// A span's trace context, kept in its extensions by [`TraceIdLayer`], and
/// for a call's span the fields that name the call ([`CallFields`]).
#[derive(Debug, Clone)]
struct TraceIds(SpanContext, Option<CallFields>);

/// What names a call a server answers, kept typed beside its span's ids
/// rather than formatted into the span's fields when it starts: JSON lines
/// write them as its span's first fields, so only the lines that are
/// written pay for their text (`crate::call::server_span`).
#[derive(Debug, Clone)]
pub(crate) struct CallFields {
    /// `package.Service`, from the method table.
    pub(crate) service: &'static str,
    /// `Method`, from the method table.
    pub(crate) method: &'static str,
    /// The call's request id (checked by the server: no byte to escape).
    pub(crate) request_id: http::HeaderValue,
}

impl<S> Layer<S> for TraceIdLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        // The transport's spans, recorded when RUST_LOG asks for them, are
        // not part of any trace.
        if !crate::filter::is_application_span(attrs.metadata()) {
            return;
        }
        let parent = if let Some(parent) = attrs.parent() {
            ctx.span(parent)
        } else if attrs.is_contextual() {
            ctx.lookup_current()
        } else {
            None
        };
        // The nearest span with ids: a transport span between the two has
        // none.
        let inherited = parent.and_then(|p| {
            p.scope()
                .find_map(|s| s.extensions().get::<TraceIds>().map(|ids| ids.0.clone()))
        });
        let span_id = self.ids.new_span_id();
        let context = match inherited {
            Some(parent) => child_of(&parent, span_id),
            None => SpanContext::new(
                self.ids.new_trace_id(),
                span_id,
                TraceFlags::SAMPLED,
                false,
                TraceState::NONE,
            ),
        };
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(TraceIds(context, None));
        }
    }
}

/// The context of a span with `span_id` under `parent`: its trace, its
/// sampling decision and its vendors' trace state.
fn child_of(parent: &SpanContext, span_id: opentelemetry::trace::SpanId) -> SpanContext {
    SpanContext::new(
        parent.trace_id(),
        span_id,
        parent.trace_flags(),
        false,
        parent.trace_state().clone(),
    )
}

/// Whether the current subscriber runs [`TraceIdLayer`] (`init`'s does
/// when nothing exports spans; a test's or a host application's may not).
pub(crate) fn layer_is_current() -> bool {
    tracing::dispatcher::get_default(|dispatch| dispatch.downcast_ref::<TraceIdLayer>().is_some())
}

/// The context [`TraceIdLayer`] gave `span`; `None` when the layer does not
/// run (spans are exported, or telemetry is not initialised) or did not see
/// the span.
pub(crate) fn of(span: &Span) -> Option<SpanContext> {
    with_ids(span, |ids| ids.0.clone())
}

/// The trace id [`TraceIdLayer`] gave the span whose `extensions` these
/// are, for a log line that writes it.
pub(crate) fn trace_id_in(
    extensions: &tracing_subscriber::registry::Extensions<'_>,
) -> Option<opentelemetry::trace::TraceId> {
    let ids = &extensions.get::<TraceIds>()?.0;
    ids.is_valid().then(|| ids.trace_id())
}

/// The call fields kept with the span whose `extensions` these are, for a
/// log line that writes them.
pub(crate) fn call_in<'a>(
    extensions: &'a tracing_subscriber::registry::Extensions<'_>,
) -> Option<&'a CallFields> {
    extensions.get::<TraceIds>()?.1.as_ref()
}

/// Puts `span` under `parent` (a caller's span, from its headers), keeping
/// its own span id. False when [`TraceIdLayer`] does not keep `span`'s ids.
/// Spans created under `span` before this keep the trace they started in.
pub(crate) fn set_parent(span: &Span, parent: &SpanContext) -> bool {
    with_ids(span, |ids| ids.set_parent(parent)).is_some()
}

/// [`set_parent`], and keeps `call` with `span`'s ids. False, and nothing
/// kept, when [`TraceIdLayer`] does not keep `span`'s ids.
pub(crate) fn start_call(span: &Span, parent: &SpanContext, call: CallFields) -> bool {
    with_ids(span, |ids| {
        ids.set_parent(parent);
        ids.1 = Some(call);
    })
    .is_some()
}

impl TraceIds {
    fn set_parent(&mut self, parent: &SpanContext) {
        if parent.is_valid() {
            self.0 = child_of(parent, self.0.span_id());
        }
    }
}

fn with_ids<R>(span: &Span, f: impl FnOnce(&mut TraceIds) -> R) -> Option<R> {
    span.with_subscriber(|(id, dispatch)| {
        let registry = dispatch.downcast_ref::<Registry>()?;
        let data = registry.span(id)?;
        let mut extensions = data.extensions_mut();
        extensions.get_mut::<TraceIds>().map(f)
    })
    .flatten()
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{SpanId, TraceId};
    use tracing_subscriber::prelude::*;

    use super::*;

    fn with_layer(test: impl FnOnce()) {
        let subscriber = Registry::default().with(TraceIdLayer::default());
        tracing::subscriber::with_default(subscriber, test);
    }

    #[test]
    fn a_root_span_starts_a_sampled_trace_and_its_children_share_it() {
        with_layer(|| {
            let root = tracing::info_span!("root");
            let root_ids = of(&root).expect("the layer keeps the root's ids");
            assert!(root_ids.is_valid());
            assert!(root_ids.is_sampled());

            let child = root.in_scope(|| tracing::info_span!("child"));
            let explicit = tracing::info_span!(parent: &root, "explicit");
            for span in [child, explicit] {
                let ids = of(&span).unwrap();
                assert_eq!(ids.trace_id(), root_ids.trace_id());
                assert_ne!(ids.span_id(), root_ids.span_id());
            }

            let other = tracing::info_span!(parent: None, "other root");
            assert_ne!(of(&other).unwrap().trace_id(), root_ids.trace_id());
        });
    }

    #[test]
    fn a_span_put_under_a_caller_joins_the_caller_s_trace_with_its_own_span_id() {
        with_layer(|| {
            let span = tracing::info_span!("server");
            let own = of(&span).unwrap().span_id();
            let caller = SpanContext::new(
                TraceId::from(0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736),
                SpanId::from(0x00f0_67aa_0ba9_02b7),
                TraceFlags::default(),
                true,
                TraceState::NONE,
            );
            assert!(set_parent(&span, &caller));
            let ids = of(&span).unwrap();
            assert_eq!(ids.trace_id(), caller.trace_id());
            assert_eq!(ids.span_id(), own);
            assert!(!ids.is_sampled(), "the caller's sampling decision stands");
            assert!(!ids.is_remote());

            let child = span.in_scope(|| tracing::info_span!("client"));
            assert_eq!(of(&child).unwrap().trace_id(), caller.trace_id());

            // A caller without a valid context leaves the span's own trace.
            let before = of(&child).unwrap();
            assert!(set_parent(&child, &SpanContext::empty_context()));
            assert_eq!(of(&child).unwrap(), before);
        });
    }

    #[test]
    fn a_transport_span_has_no_ids_and_what_it_encloses_keeps_the_call_s_trace() {
        with_layer(|| {
            let call = tracing::info_span!("call");
            let frame = call.in_scope(|| tracing::info_span!(target: "h2::proto", "frame"));
            assert!(of(&frame).is_none());
            let inner = frame.in_scope(|| tracing::info_span!("inner"));
            assert_eq!(
                of(&inner).unwrap().trace_id(),
                of(&call).unwrap().trace_id()
            );
        });
    }

    #[test]
    fn the_layer_is_found_in_the_current_subscriber_only_when_it_runs() {
        assert!(!layer_is_current(), "no subscriber");
        with_layer(|| assert!(layer_is_current()));
        let other = Registry::default().with(tracing_subscriber::fmt::layer());
        tracing::subscriber::with_default(other, || assert!(!layer_is_current()));
    }

    #[test]
    fn without_the_layer_nothing_is_kept() {
        let span = tracing::info_span!("no subscriber");
        assert!(of(&span).is_none());
        assert!(!set_parent(&span, &SpanContext::empty_context()));
    }
}
