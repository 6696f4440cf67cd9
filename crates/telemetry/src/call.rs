//! One observed call: its span, its grpc-ecosystem metrics and, on the
//! server, its `access` log line, finished exactly once; and the span a
//! server gives each call it answers ([`server_span`]).

use std::{
    fmt,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use http::HeaderValue;
use opentelemetry::{Context, trace::TraceContextExt as _};
use tonic::Code;
use tracing::{Span, field::Empty};

use crate::{
    labels::{MethodLabels, Protocol, code_label},
    metrics::{MethodMetrics, Side},
    propagation, text,
    trace_ids::{self, CallFields},
};

/// The span of a call a server answers: `grpc.server`, with the
/// OpenTelemetry RPC attributes and `request_id`, under `parent` (the
/// caller's trace context, from its headers), and its trace id where the
/// log lines read it (`propagation::record_trace_id`).
///
/// When the log lines are JSON, no exporter runs and `init`'s subscriber
/// is the current one (it runs the trace-id layer: [`crate::init()`]),
/// what names the call (service, method, request id) is kept typed with
/// the span's ids instead, and each JSON line written in the call writes
/// it as the span's first fields, as they would have been recorded: the
/// span no longer formats them into text when it starts, which every call
/// paid for whether or not a line was written in it (about 1,900 of the
/// observe layer's 15,600 instructions a call, callgrind). The lines read
/// the same.
pub fn server_span(
    path: &str,
    labels: MethodLabels,
    request_id: &HeaderValue,
    parent: Context,
) -> Span {
    if crate::init::lines_write_trace_ids() && trace_ids::layer_is_current() {
        typed_server_span(labels, request_id, parent)
    } else {
        declared_server_span(path, labels, request_id, parent)
    }
}

/// [`server_span`] with its fields recorded in the span.
pub(crate) fn declared_server_span(
    path: &str,
    labels: MethodLabels,
    request_id: &HeaderValue,
    parent: Context,
) -> Span {
    let span = tracing::info_span!(
        "grpc.server",
        otel.name = %path.trim_start_matches('/'),
        otel.kind = "server",
        otel.status_code = Empty,
        rpc.system = "grpc",
        rpc.service = labels.grpc_service,
        rpc.method = labels.grpc_method,
        rpc.grpc.status_code = Empty,
        request_id = request_id.to_str().unwrap_or_default(),
        trace_id = Empty,
    );
    propagation::set_parent(&span, parent);
    propagation::record_trace_id(&span);
    span
}

/// [`server_span`] with its call's fields kept typed with its ids, under
/// a subscriber that runs the trace-id layer.
pub(crate) fn typed_server_span(
    labels: MethodLabels,
    request_id: &HeaderValue,
    parent: Context,
) -> Span {
    let span = tracing::info_span!("grpc.server");
    let call = CallFields {
        service: labels.grpc_service,
        method: labels.grpc_method,
        request_id: request_id.clone(),
    };
    let kept = trace_ids::start_call(&span, parent.span().span_context(), call);
    debug_assert!(kept, "the trace-id layer keeps the ids of every call span");
    span
}

/// The authenticated caller, as the access log names them (the auth
/// layer's principal, shared rather than copied).
pub type Caller = Arc<dyn fmt::Display + Send + Sync>;

/// Where the auth layer names a call's caller for its access line: a
/// handle on the call's shared record ([`CallerSlot::of`]), so that the
/// name lands in the record itself rather than in a place of its own. A
/// default slot belongs to no call and keeps nothing (for layers tested
/// without the observation).
#[derive(Clone, Default)]
pub struct CallerSlot(Option<Arc<Mutex<CallRecord>>>);

impl fmt::Debug for CallerSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `try_lock`: the record may be locked by whoever is formatting.
        let caller = match &self.0 {
            None => None,
            Some(record) => match record.try_lock() {
                Ok(record) => Some(record.caller.to_string()),
                Err(_) => Some("(locked)".to_owned()),
            },
        };
        f.debug_tuple("CallerSlot").field(&caller).finish()
    }
}

impl CallerSlot {
    /// The slot of the call `record` observes.
    pub fn of(record: &Arc<Mutex<CallRecord>>) -> CallerSlot {
        CallerSlot(Some(Arc::clone(record)))
    }

    /// Records the authenticated caller.
    pub fn set(&self, caller: Caller) {
        if let Some(record) = &self.0 {
            record.lock().unwrap_or_else(|p| p.into_inner()).caller = CallerName(Some(caller));
        }
    }
}

/// One observed call: started when created, finished exactly once (by the
/// status, or as CANCELLED when dropped unfinished).
#[derive(Debug)]
pub struct CallRecord {
    side: Side,
    metrics: Arc<MethodMetrics>,
    start: Instant,
    span: Span,
    peer: Option<SocketAddr>,
    caller: CallerName,
    received: u64,
    sent: u64,
    finished: bool,
}

impl CallRecord {
    /// Starts observing a call of the method that `labels` names
    /// ([`MethodLabels::of`] the call's path), which came in over
    /// `protocol` (a client's: [`Protocol::Grpc`]) at `started`, and counts
    /// it started. Its
    /// access line is logged in `span`, which carries the service, method,
    /// request id and trace id: each field once per line.
    pub fn start(
        side: Side,
        protocol: Protocol,
        labels: MethodLabels,
        span: Span,
        peer: Option<SocketAddr>,
        started: Instant,
    ) -> CallRecord {
        let metrics = MethodMetrics::of(side, labels, protocol);
        metrics.started.increment(1);
        CallRecord {
            side,
            metrics,
            start: started,
            span,
            peer,
            caller: CallerName(None),
            received: 0,
            sent: 0,
            finished: false,
        }
    }

    /// The call's span.
    pub fn span(&self) -> &Span {
        &self.span
    }

    /// Gives the record the call's span, for a record started with
    /// [`Span::none`] by an observer that held the span itself until then
    /// (one handle on the span rather than two: each costs a clone and a
    /// close through every layer of the subscriber).
    pub fn set_span(&mut self, span: Span) {
        self.span = span;
    }

    /// One message received, `len` bytes long as framed (compressed, if
    /// it was).
    pub(crate) fn received_message(&mut self, len: u32) {
        self.received += 1;
        self.metrics.received_size.record(f64::from(len));
    }

    /// One message sent, `len` bytes long as framed.
    pub(crate) fn sent_message(&mut self, len: u32) {
        self.sent += 1;
        self.metrics.sent_size.record(f64::from(len));
    }

    /// Records the end of the call with `code`; later calls do nothing.
    pub fn finish(&mut self, code: Code) {
        if self.finished {
            return;
        }
        self.finished = true;
        let elapsed = self.start.elapsed();
        let m = &self.metrics;
        m.handled(code).increment(1);
        m.handling.record(elapsed.as_secs_f64());
        if self.received > 0 {
            m.received.increment(self.received);
        }
        if self.sent > 0 {
            m.sent.increment(self.sent);
        }
        // The status is a span attribute for an exporter; a span that only
        // the log lines read would repeat the access line's `code`.
        if !crate::init::spans_only_logged() {
            self.span.record("rpc.grpc.status_code", code as i32);
            if code != Code::Ok {
                self.span.record("otel.status_code", "ERROR");
            }
        }
        if self.side == Side::Server {
            // Formatted on the stack and logged as text (see `text`).
            let peer = self.peer.map(text::socket_address);
            // The span as the line's parent, not entered: entering and
            // leaving it would ask every layer about it twice more. The
            // message as a `&str` field rather than a format string: it
            // reads the same and is copied, not formatted. The service and
            // method are the span's `rpc.service` and `rpc.method`, which
            // the line carries with the span: each field once.
            tracing::info!(
                target: "access",
                parent: &self.span,
                message = "rpc",
                code = code_label(code),
                duration_ms = duration_ms(elapsed),
                peer = peer.as_ref().map_or("-", |peer| peer.as_str()),
                principal = %self.caller,
            );
        }
    }
}

impl Drop for CallRecord {
    fn drop(&mut self) {
        // Dropped unfinished: the response was abandoned (client gone).
        self.finish(Code::Cancelled);
    }
}

/// The caller in the access line, `-` when the call was anonymous.
struct CallerName(Option<Caller>);

impl fmt::Display for CallerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(caller) => caller.fmt(f),
            None => f.write_str("-"),
        }
    }
}

impl fmt::Debug for CallerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

fn duration_ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}
