//! What the subscriber records: log lines as `RUST_LOG` says, and every
//! application span whatever it says.
//!
//! Application spans (INFO and above, outside the transport's libraries)
//! carry a call's trace id and request id: outgoing calls take their
//! `traceparent` from them and every log line written inside a call takes
//! its ids from them, so they are recorded even when `RUST_LOG` asks only
//! for warnings. The transport's own spans (hyper, h2 and tower instrument
//! every frame at TRACE) are recorded only when `RUST_LOG` asks for them:
//! they cost more than the calls themselves.
//!
//! [`lines_and_call_spans`] is that rule as one filter. Without an exporter
//! it filters the whole subscriber ([`Global`]), so that entering a span
//! costs no per-layer filter check (each is a span look-up in the
//! registry, on every enter and exit of every layer), nor, unless
//! `RUST_LOG` has span directives, any span bookkeeping of `EnvFilter`'s;
//! with one, it is the log lines' per-layer filter beside the exporter's
//! [`exported`].

use tracing::{Metadata, Subscriber, level_filters::LevelFilter, span, subscriber::Interest};
use tracing_subscriber::{
    EnvFilter,
    filter::{FilterExt as _, FilterFn, combinator::Or, filter_fn},
    layer::{Context, Filter, Layer},
};

/// A filter by metadata alone.
type ByMetadata = FilterFn<fn(&Metadata<'_>) -> bool>;

/// Whether `meta` is an application span: at INFO or above, outside the
/// transport's libraries.
pub(crate) fn is_application_span(meta: &Metadata<'_>) -> bool {
    meta.is_span() && *meta.level() <= tracing::Level::INFO && !is_transport(meta.target())
}

/// What the log lines see: what `env` enables, and every application span.
pub(crate) fn lines_and_call_spans<S>(env: EnvFilter) -> Or<ByMetadata, EnvFilter, S>
where
    S: Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    application_spans().or(env)
}

fn application_spans() -> ByMetadata {
    filter_fn(is_application_span as fn(&Metadata<'_>) -> bool)
        .with_max_level_hint(LevelFilter::INFO)
}

/// What an exporter sees: application spans and the events in them, but
/// not the access line (its span already carries its fields).
pub(crate) fn exported() -> ByMetadata {
    fn is_exported(meta: &Metadata<'_>) -> bool {
        *meta.level() <= tracing::Level::INFO
            && !is_transport(meta.target())
            && !(meta.is_event() && meta.target() == "access")
    }
    filter_fn(is_exported as fn(&Metadata<'_>) -> bool).with_max_level_hint(LevelFilter::INFO)
}

/// Targets of the transport and runtime libraries, whose spans describe
/// frames and polls rather than calls.
fn is_transport(target: &str) -> bool {
    const TRANSPORT: [&str; 8] = [
        "h2", "hyper", "tower", "tonic", "tokio", "mio", "rustls", "sqlx",
    ];
    TRANSPORT.iter().any(|t| {
        target == *t
            || target
                .strip_prefix(t)
                .is_some_and(|rest| rest.starts_with("::"))
    })
}

/// A per-layer [`Filter`] used as a global one: what it disables, no layer
/// of the subscriber sees.
///
/// Only a filter that follows spans is told of each span's start, entry,
/// exit and end: an `EnvFilter` does for its span directives
/// (`target[span{field=value}]=level`), and otherwise still takes a lock
/// and looks the span up at each (two or three times a call's poll).
pub(crate) struct Global<F> {
    filter: F,
    follows_spans: bool,
}

impl<F> Global<F> {
    /// `filter` as the subscriber's, built from `directives`.
    pub(crate) fn new(filter: F, directives: &str) -> Global<F> {
        Global {
            filter,
            follows_spans: has_span_directives(directives),
        }
    }
}

/// Whether `directives` (`RUST_LOG`'s syntax) name a span or its fields:
/// only those make an `EnvFilter` follow spans.
fn has_span_directives(directives: &str) -> bool {
    directives.contains('[')
}

impl<S, F> Layer<S> for Global<F>
where
    S: Subscriber,
    F: Filter<S> + 'static,
{
    fn register_callsite(&self, meta: &'static Metadata<'static>) -> Interest {
        self.filter.callsite_enabled(meta)
    }

    fn enabled(&self, meta: &Metadata<'_>, ctx: Context<'_, S>) -> bool {
        self.filter.enabled(meta, &ctx)
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        self.filter.max_level_hint()
    }

    fn event_enabled(&self, event: &tracing::Event<'_>, ctx: Context<'_, S>) -> bool {
        self.filter.event_enabled(event, &ctx)
    }

    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        if self.follows_spans {
            self.filter.on_new_span(attrs, id, ctx)
        }
    }

    fn on_record(&self, id: &span::Id, values: &span::Record<'_>, ctx: Context<'_, S>) {
        if self.follows_spans {
            self.filter.on_record(id, values, ctx)
        }
    }

    fn on_enter(&self, id: &span::Id, ctx: Context<'_, S>) {
        if self.follows_spans {
            self.filter.on_enter(id, ctx)
        }
    }

    fn on_exit(&self, id: &span::Id, ctx: Context<'_, S>) {
        if self.follows_spans {
            self.filter.on_exit(id, ctx)
        }
    }

    fn on_close(&self, id: span::Id, ctx: Context<'_, S>) {
        if self.follows_spans {
            self.filter.on_close(id, ctx)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::{Registry, prelude::*};

    use super::*;

    /// Records the names of the spans and the messages of the events it
    /// sees, and each event's innermost span.
    #[derive(Clone, Default)]
    struct Seen(Arc<Mutex<Vec<String>>>);

    impl<S> Layer<S> for Seen
    where
        S: Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        fn on_new_span(&self, attrs: &span::Attributes<'_>, _: &span::Id, _: Context<'_, S>) {
            self.0
                .lock()
                .unwrap()
                .push(format!("span {}", attrs.metadata().name()));
        }

        fn on_event(&self, event: &tracing::Event<'_>, ctx: Context<'_, S>) {
            let within = ctx
                .event_span(event)
                .map_or("none".to_owned(), |s| s.name().to_owned());
            self.0
                .lock()
                .unwrap()
                .push(format!("event {} in {within}", event.metadata().level()));
        }
    }

    fn seen_under(directives: &str, emit: impl FnOnce()) -> Vec<String> {
        let seen = Seen::default();
        let subscriber = Registry::default()
            .with(Global::new(
                lines_and_call_spans(EnvFilter::new(directives)),
                directives,
            ))
            .with(seen.clone());
        tracing::subscriber::with_default(subscriber, emit);
        seen.0.lock().unwrap().clone()
    }

    #[test]
    fn application_spans_are_recorded_under_any_directive_and_events_only_as_directed() {
        let emit = || {
            let call = tracing::info_span!("call");
            let _call = call.enter();
            let detail = tracing::debug_span!("detail");
            let _detail = detail.enter();
            tracing::info!("informed");
            tracing::warn!("warned");
        };
        assert_eq!(
            seen_under("warn", emit),
            ["span call", "event WARN in call"],
            "under warn: the info span, and only the warning"
        );
        assert_eq!(
            seen_under("debug", emit),
            [
                "span call",
                "span detail",
                "event INFO in detail",
                "event WARN in detail"
            ],
        );
        assert_eq!(seen_under("off", emit), ["span call"]);
    }

    #[test]
    fn a_span_directive_enables_what_it_names_inside_that_span_only() {
        let emit = || {
            tracing::debug!("outside");
            let call = tracing::info_span!("call");
            let _call = call.enter();
            tracing::debug!("inside");
        };
        assert!(has_span_directives("warn,[call]=debug"));
        assert_eq!(
            seen_under("warn,[call]=debug", emit),
            ["span call", "event DEBUG in call"],
            "the filter follows the span it names"
        );
        assert!(!has_span_directives("warn,shop_server=debug"));
        assert_eq!(seen_under("warn", emit), ["span call"]);
    }

    #[test]
    fn the_transport_s_spans_only_when_asked_for() {
        let emit = || {
            let frame = tracing::info_span!(target: "h2::codec", "frame");
            let _frame = frame.enter();
            tracing::info!(target: "h2::codec", "read");
        };
        assert_eq!(seen_under("warn", emit), Vec::<String>::new());
        assert_eq!(
            seen_under("info", emit),
            ["span frame", "event INFO in frame"]
        );
    }

    #[test]
    fn the_access_line_is_not_exported_but_the_call_s_other_events_are() {
        let seen = Seen::default();
        let subscriber = Registry::default().with(seen.clone().with_filter(exported()));
        tracing::subscriber::with_default(subscriber, || {
            let call = tracing::info_span!("call");
            let _call = call.enter();
            tracing::info!(target: "access", "rpc");
            tracing::warn!("warned");
            tracing::debug!("detail");
        });
        assert_eq!(*seen.0.lock().unwrap(), ["span call", "event WARN in call"]);
        assert!(is_transport("hyper::proto"));
        assert!(!is_transport("hyperion"));
    }
}
