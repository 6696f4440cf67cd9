//! Seeing every call: one span, one set of metrics and one access-log line
//! per RPC, for the server ([`ObserveLayer`]) and, through
//! [`CallRecord`], for the client layer too.
//!
//! - **Spans** follow the OpenTelemetry RPC conventions (`rpc.system`,
//!   `rpc.service`, `rpc.method`, `rpc.grpc.status_code`, kind server or
//!   client); the server span's parent is the W3C `traceparent` the caller
//!   sent, so one trace covers every hop.
//! - **Metrics** use the grpc-ecosystem (go-grpc-prometheus) names and
//!   labels: `grpc_server_started_total`, `grpc_server_handled_total`,
//!   `grpc_server_handling_seconds`, `grpc_server_msg_received_total`,
//!   `grpc_server_msg_sent_total` and the `grpc_client_*` twins, plus
//!   `grpc_client_retries_total` ([`count_retry`]). Label
//!   values come from the generated method table, never from the request,
//!   so cardinality is bounded.
//! - **Access log**: one `access` line per call with method, code,
//!   duration, peer and principal, emitted when the call ends (for streams,
//!   when the stream ends).
//!
//! The final status of a call is in the response headers (trailers-only
//! answers) or in the trailers at the end of the body, so the response body
//! is wrapped to see the trailers, count messages and notice a call the
//! client abandoned (recorded as CANCELLED).

use std::{
    pin::Pin,
    sync::{Arc, Mutex, OnceLock},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use opentelemetry::{
    propagation::{Extractor, Injector},
    trace::TraceContextExt as _,
};
use tonic::{Code, body::Body, transport::server::TcpConnectInfo};
use tower::{Layer, Service};
use tracing::{Span, field::Empty};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::context::REQUEST_ID;

/// Which side of a call is being observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// This process serves the call.
    Server,
    /// This process makes the call.
    Client,
}

/// The metric labels of a method: static strings from the generated
/// method table (or `unknown`), so a caller cannot create label values.
#[derive(Debug, Clone, Copy)]
pub struct MethodLabels {
    /// `unary`, `client_stream`, `server_stream` or `bidi_stream`.
    pub grpc_type: &'static str,
    /// `package.Service`.
    pub grpc_service: &'static str,
    /// `Method`.
    pub grpc_method: &'static str,
    /// Dense index of the method (shop methods, then [`OTHER_METHODS`],
    /// then `unknown`), for per-method tables.
    slot: usize,
}

/// Methods outside the shop protos that every service serves.
const OTHER_METHODS: [(&str, &str, &str, &str); 2] = [
    (
        "/grpc.health.v1.Health/Check",
        "unary",
        "grpc.health.v1.Health",
        "Check",
    ),
    (
        "/grpc.health.v1.Health/Watch",
        "server_stream",
        "grpc.health.v1.Health",
        "Watch",
    ),
];

impl MethodLabels {
    /// Labels for the method at `path`; methods outside the shop protos
    /// (health, reflection) get their well-known names or `unknown`.
    pub fn of(path: &str) -> MethodLabels {
        if let Some(slot) = shop_proto::policy::position(path) {
            let m = &shop_proto::policy::methods()[slot];
            let grpc_type = match (m.client_streaming, m.server_streaming) {
                (false, false) => "unary",
                (true, false) => "client_stream",
                (false, true) => "server_stream",
                (true, true) => "bidi_stream",
            };
            return MethodLabels {
                grpc_type,
                grpc_service: m.service,
                grpc_method: m.method,
                slot,
            };
        }
        let shop = shop_proto::policy::methods().len();
        for (i, (p, t, s, m)) in OTHER_METHODS.into_iter().enumerate() {
            if p == path {
                return MethodLabels {
                    grpc_type: t,
                    grpc_service: s,
                    grpc_method: m,
                    slot: shop + i,
                };
            }
        }
        MethodLabels {
            grpc_type: "unknown",
            grpc_service: "unknown",
            grpc_method: "unknown",
            slot: shop + OTHER_METHODS.len(),
        }
    }

    /// How many distinct slots there are.
    fn slots() -> usize {
        shop_proto::policy::methods().len() + OTHER_METHODS.len() + 1
    }
}

/// The metric handles of one method on one side. Building a labelled key
/// and finding it in the registry costs more than the update itself, so
/// each method's handles are registered once and kept (see
/// [`MethodMetrics::of`]).
#[derive(Debug)]
struct MethodMetrics {
    labels: MethodLabels,
    side: Side,
    started: metrics::Counter,
    handling: metrics::Histogram,
    received: metrics::Counter,
    sent: metrics::Counter,
    /// `grpc_*_handled_total` per status code, registered on first use.
    handled: [OnceLock<metrics::Counter>; 17],
}

impl MethodMetrics {
    fn register(side: Side, labels: MethodLabels) -> MethodMetrics {
        let names = side.metric_names();
        let l = labels;
        let per_method = |name: &'static str| {
            metrics::counter!(name,
                "grpc_type" => l.grpc_type,
                "grpc_service" => l.grpc_service,
                "grpc_method" => l.grpc_method)
        };
        MethodMetrics {
            labels,
            side,
            started: per_method(names.started),
            handling: metrics::histogram!(names.handling,
                "grpc_type" => l.grpc_type,
                "grpc_service" => l.grpc_service,
                "grpc_method" => l.grpc_method),
            received: per_method(names.received),
            sent: per_method(names.sent),
            handled: Default::default(),
        }
    }

    /// The handles for `labels` on `side`: kept once this crate's
    /// Prometheus recorder is installed (from then on the global recorder
    /// cannot change), registered afresh before that, so that a call
    /// observed before start-up finished is not tied to a no-op handle.
    fn of(side: Side, labels: MethodLabels) -> Arc<MethodMetrics> {
        type Table = Box<[[OnceLock<Arc<MethodMetrics>>; 2]]>;
        static TABLE: OnceLock<Table> = OnceLock::new();
        if !crate::telemetry::recorder_installed() {
            return Arc::new(MethodMetrics::register(side, labels));
        }
        let table = TABLE.get_or_init(|| {
            (0..MethodLabels::slots())
                .map(|_| Default::default())
                .collect()
        });
        let side_index = match side {
            Side::Server => 0,
            Side::Client => 1,
        };
        Arc::clone(
            table[labels.slot][side_index]
                .get_or_init(|| Arc::new(MethodMetrics::register(side, labels))),
        )
    }

    fn handled(&self, code: Code) -> &metrics::Counter {
        self.handled[(code as usize).min(16)].get_or_init(|| {
            let l = self.labels;
            metrics::counter!(self.side.metric_names().handled,
                "grpc_type" => l.grpc_type, "grpc_service" => l.grpc_service,
                "grpc_method" => l.grpc_method, "grpc_code" => code_label(code))
        })
    }
}

/// The grpc-ecosystem metric names of one side.
struct MetricNames {
    started: &'static str,
    handled: &'static str,
    handling: &'static str,
    received: &'static str,
    sent: &'static str,
}

impl Side {
    fn metric_names(self) -> MetricNames {
        match self {
            Side::Server => MetricNames {
                started: "grpc_server_started_total",
                handled: "grpc_server_handled_total",
                handling: "grpc_server_handling_seconds",
                received: "grpc_server_msg_received_total",
                sent: "grpc_server_msg_sent_total",
            },
            Side::Client => MetricNames {
                started: "grpc_client_started_total",
                handled: "grpc_client_handled_total",
                handling: "grpc_client_handling_seconds",
                received: "grpc_client_msg_received_total",
                sent: "grpc_client_msg_sent_total",
            },
        }
    }
}

/// Counts one more attempt of an outgoing call of `path` after a failed
/// one, in `grpc_client_retries_total` (labelled like the other
/// `grpc_client_*` metrics).
pub fn count_retry(path: &str) {
    count_client_event("grpc_client_retries_total", path);
}

/// Counts one attempt of an outgoing call of `path` that went out to an
/// endpoint, in `grpc_client_attempts_total`.
pub fn count_attempt(path: &str) {
    count_client_event("grpc_client_attempts_total", path);
}

/// Counts an outgoing call of `path` that failed and was not retried
/// because the retry throttle said so, in
/// `grpc_client_retries_throttled_total`.
pub fn count_retry_throttled(path: &str) {
    count_client_event("grpc_client_retries_throttled_total", path);
}

/// Adds one to the per-method client counter `name` for `path`.
fn count_client_event(name: &'static str, path: &str) {
    let l = MethodLabels::of(path);
    metrics::counter!(name,
        "grpc_type" => l.grpc_type,
        "grpc_service" => l.grpc_service,
        "grpc_method" => l.grpc_method)
    .increment(1);
}

/// The caller's address, over plain TCP or TLS.
pub fn peer_addr(extensions: &http::Extensions) -> Option<std::net::SocketAddr> {
    extensions
        .get::<TcpConnectInfo>()
        .or_else(|| {
            extensions
                .get::<tonic::transport::server::TlsConnectInfo<TcpConnectInfo>>()
                .map(|tls| tls.get_ref())
        })
        .and_then(|info| info.remote_addr())
}

/// The go-grpc-prometheus spelling of a status code (`OK`, `NotFound`, ...).
pub fn code_label(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// The `grpc-status` in `headers`, if there is one.
pub fn grpc_status(headers: &HeaderMap) -> Option<Code> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map(Code::from)
}

/// tonic answers a message over the size limit with OUT_OF_RANGE; gRPC's
/// status code guide (and every other implementation) says
/// RESOURCE_EXHAUSTED. Rewrites it in place, so callers, metrics and logs
/// all see RESOURCE_EXHAUSTED.
pub fn normalize_status(headers: &mut HeaderMap) {
    if grpc_status(headers) != Some(Code::OutOfRange) {
        return;
    }
    let too_large = headers
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|m| {
            m.contains("message%20length%20too%20large") || m.contains("message length too large")
        });
    if too_large {
        headers.insert("grpc-status", HeaderValue::from_static("8"));
    }
}

/// Who made the call, filled in by the auth layer for the access log.
#[derive(Debug, Clone, Default)]
pub struct CallerSlot(Arc<Mutex<Option<String>>>);

impl CallerSlot {
    /// Records the authenticated caller.
    pub fn set(&self, principal: &str) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(principal.to_owned());
    }

    fn get(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// One observed call: started when created, finished exactly once (by the
/// status, or as CANCELLED when dropped unfinished).
#[derive(Debug)]
pub struct CallRecord {
    side: Side,
    labels: MethodLabels,
    metrics: Arc<MethodMetrics>,
    start: Instant,
    span: Span,
    request_id: String,
    peer: Option<String>,
    caller: CallerSlot,
    received: u64,
    sent: u64,
    finished: bool,
}

impl CallRecord {
    /// Starts observing a call of `path` (and counts it started).
    pub fn start(
        side: Side,
        path: &str,
        span: Span,
        request_id: String,
        peer: Option<String>,
    ) -> CallRecord {
        let labels = MethodLabels::of(path);
        let metrics = MethodMetrics::of(side, labels);
        metrics.started.increment(1);
        CallRecord {
            side,
            labels,
            metrics,
            start: Instant::now(),
            span,
            request_id,
            peer,
            caller: CallerSlot::default(),
            received: 0,
            sent: 0,
            finished: false,
        }
    }

    /// The slot the auth layer fills with the caller.
    pub fn caller_slot(&self) -> CallerSlot {
        self.caller.clone()
    }

    /// The call's span.
    pub fn span(&self) -> &Span {
        &self.span
    }

    fn count(&mut self, received: u64, sent: u64) {
        self.received += received;
        self.sent += sent;
    }

    /// Records the end of the call with `code`; later calls do nothing.
    pub fn finish(&mut self, code: Code) {
        if self.finished {
            return;
        }
        self.finished = true;
        let elapsed = self.start.elapsed();
        let l = self.labels;
        let m = &self.metrics;
        m.handled(code).increment(1);
        m.handling.record(elapsed.as_secs_f64());
        if self.received > 0 {
            m.received.increment(self.received);
        }
        if self.sent > 0 {
            m.sent.increment(self.sent);
        }
        self.span.record("rpc.grpc.status_code", code as i32);
        if code != Code::Ok {
            self.span.record("otel.status_code", "ERROR");
        }
        if self.side == Side::Server {
            let principal = self.caller.get();
            let _entered = self.span.enter();
            tracing::info!(
                target: "access",
                service = l.grpc_service,
                method = l.grpc_method,
                code = code_label(code),
                duration_ms = duration_ms(elapsed),
                peer = self.peer.as_deref().unwrap_or("-"),
                principal = principal.as_deref().unwrap_or("-"),
                request_id = %self.request_id,
                "rpc"
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

fn duration_ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

/// Counts gRPC messages in a byte stream of length-prefixed frames
/// (1 flag byte, 4 length bytes, payload), across chunk boundaries.
#[derive(Debug, Default)]
struct MessageCounter {
    /// Header bytes of the current frame seen so far (0..5).
    header: [u8; 5],
    header_len: usize,
    /// Payload bytes of the current frame still to skip.
    remaining: u64,
}

impl MessageCounter {
    /// Feeds a chunk; returns how many messages it completed the header of.
    fn feed(&mut self, mut chunk: &[u8]) -> u64 {
        let mut messages = 0;
        while !chunk.is_empty() {
            if self.remaining > 0 {
                let skip = (self.remaining as usize).min(chunk.len());
                self.remaining -= skip as u64;
                chunk = &chunk[skip..];
                continue;
            }
            let take = (5 - self.header_len).min(chunk.len());
            self.header[self.header_len..self.header_len + take].copy_from_slice(&chunk[..take]);
            self.header_len += take;
            chunk = &chunk[take..];
            if self.header_len == 5 {
                messages += 1;
                self.remaining = u64::from(u32::from_be_bytes([
                    self.header[1],
                    self.header[2],
                    self.header[3],
                    self.header[4],
                ]));
                self.header_len = 0;
            }
        }
        messages
    }
}

/// Which direction a wrapped body carries, for the counts.
#[derive(Debug, Clone, Copy)]
enum Direction {
    /// Messages to this process.
    In,
    /// Messages from this process.
    Out,
}

/// A body that counts messages and, for a response, finishes the call
/// record when the trailers (or the end) arrive.
pub struct ObservedBody {
    inner: Body,
    record: Arc<Mutex<CallRecord>>,
    counter: MessageCounter,
    direction: Direction,
    /// True for the body that carries the final status.
    finishes: bool,
}

impl ObservedBody {
    fn new(
        inner: Body,
        record: Arc<Mutex<CallRecord>>,
        direction: Direction,
        finishes: bool,
    ) -> ObservedBody {
        ObservedBody {
            inner,
            record,
            counter: MessageCounter::default(),
            direction,
            finishes,
        }
    }

    fn with_record(&self, f: impl FnOnce(&mut CallRecord)) {
        let mut record = self.record.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut record);
    }
}

impl HttpBody for ObservedBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = this.counter.feed(data);
                    if n > 0 {
                        let direction = this.direction;
                        this.with_record(|r| match direction {
                            Direction::In => r.count(n, 0),
                            Direction::Out => r.count(0, n),
                        });
                    }
                }
            }
            Poll::Ready(None) if this.finishes => this.with_record(|r| r.finish(Code::Ok)),
            Poll::Ready(Some(Err(_))) if this.finishes => {
                this.with_record(|r| r.finish(Code::Internal))
            }
            _ => {}
        }
        // Trailers: normalise and record the final status.
        match polled {
            Poll::Ready(Some(Ok(frame))) if frame.is_trailers() && this.finishes => {
                let mut trailers = frame.into_trailers().unwrap_or_default();
                normalize_status(&mut trailers);
                let code = grpc_status(&trailers).unwrap_or(Code::Unknown);
                this.with_record(|r| r.finish(code));
                Poll::Ready(Some(Ok(Frame::trailers(trailers))))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Hands the response to the call record: a trailers-only answer finishes
/// it now; otherwise its body is wrapped to count the messages that come
/// back and finish the record at the trailers.
pub(crate) fn observe_response(
    response: Response<Body>,
    record: Arc<Mutex<CallRecord>>,
    side: Side,
) -> Response<Body> {
    let (mut parts, body) = response.into_parts();
    normalize_status(&mut parts.headers);
    let body = match grpc_status(&parts.headers) {
        Some(code) => {
            record
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .finish(code);
            body
        }
        None => {
            let direction = match side {
                Side::Server => Direction::Out,
                Side::Client => Direction::In,
            };
            Body::new(ObservedBody::new(body, record, direction, true))
        }
    };
    Response::from_parts(parts, body)
}

/// Wraps a request body to count the messages it carries.
pub(crate) fn observe_request(body: Body, record: &Arc<Mutex<CallRecord>>, side: Side) -> Body {
    let direction = match side {
        Side::Server => Direction::In,
        Side::Client => Direction::Out,
    };
    Body::new(ObservedBody::new(
        body,
        Arc::clone(record),
        direction,
        false,
    ))
}

/// `http::HeaderMap` as an OpenTelemetry carrier.
pub struct HeaderCarrier<'a>(pub &'a mut HeaderMap);

impl Injector for HeaderCarrier<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::header::HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// Read-only `http::HeaderMap` as an OpenTelemetry carrier.
pub struct HeaderReader<'a>(pub &'a HeaderMap);

impl Extractor for HeaderReader<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// The trace id of `span` in hex, or empty when it has none.
pub fn trace_id(span: &Span) -> String {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    if span_context.is_valid() {
        span_context.trace_id().to_string()
    } else {
        String::new()
    }
}

/// Builds [`Observe`] services: the outermost server layer.
#[derive(Debug, Clone, Copy, Default)]
pub struct ObserveLayer;

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe { inner }
    }
}

/// See the module docs.
#[derive(Debug, Clone)]
pub struct Observe<S> {
    inner: S,
}

impl<S> Service<Request<Body>> for Observe<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Send,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Response<Body>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let (mut parts, body) = req.into_parts();
        let path = parts.uri.path().to_owned();
        let labels = MethodLabels::of(&path);

        // Request id: the caller's when it is sane, else a fresh one.
        let request_id = parts
            .headers
            .get(REQUEST_ID)
            .filter(|v| crate::context::valid_request_id(v))
            .cloned()
            .unwrap_or_else(crate::context::new_request_id);
        parts.headers.insert(REQUEST_ID, request_id.clone());
        let request_id_text = request_id.to_str().unwrap_or_default().to_owned();

        // Trace context from the caller, then the span of this call.
        let parent = opentelemetry::global::get_text_map_propagator(|p| {
            p.extract(&HeaderReader(&parts.headers))
        });
        let span = tracing::info_span!(
            "grpc.server",
            otel.name = %path.trim_start_matches('/'),
            otel.kind = "server",
            otel.status_code = Empty,
            rpc.system = "grpc",
            rpc.service = labels.grpc_service,
            rpc.method = labels.grpc_method,
            rpc.grpc.status_code = Empty,
            request_id = %request_id_text,
            trace_id = Empty,
        );
        let _ = span.set_parent(parent);
        let trace = trace_id(&span);
        if !trace.is_empty() {
            span.record("trace_id", trace.as_str());
        }

        let peer = peer_addr(&parts.extensions).map(|a| a.to_string());
        let record = CallRecord::start(Side::Server, &path, span.clone(), request_id_text, peer);
        parts.extensions.insert(record.caller_slot());
        let record = Arc::new(Mutex::new(record));

        let body = observe_request(body, &record, Side::Server);
        let future = {
            let _entered = span.enter();
            self.inner.call(Request::from_parts(parts, body))
        };
        Box::pin(tracing::Instrument::instrument(
            async move {
                let mut response = future.await?;
                response.headers_mut().insert(REQUEST_ID, request_id);
                Ok(observe_response(response, record, Side::Server))
            },
            span,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(len: u32) -> Vec<u8> {
        let mut f = vec![0u8];
        f.extend_from_slice(&len.to_be_bytes());
        f.extend(std::iter::repeat_n(7u8, len as usize));
        f
    }

    #[test]
    fn messages_are_counted_across_chunk_boundaries() {
        let mut bytes = frame(3);
        bytes.extend(frame(0));
        bytes.extend(frame(10));
        for split in 0..bytes.len() {
            let mut counter = MessageCounter::default();
            let n = counter.feed(&bytes[..split]) + counter.feed(&bytes[split..]);
            assert_eq!(n, 3, "split at {split}");
        }
        let mut counter = MessageCounter::default();
        assert_eq!(bytes.chunks(1).map(|c| counter.feed(c)).sum::<u64>(), 3);
    }

    #[test]
    fn oversized_message_status_becomes_resource_exhausted() {
        let mut h = HeaderMap::new();
        h.insert("grpc-status", HeaderValue::from_static("11"));
        h.insert(
            "grpc-message",
            HeaderValue::from_static("Error,%20decoded%20message%20length%20too%20large"),
        );
        normalize_status(&mut h);
        assert_eq!(grpc_status(&h), Some(Code::ResourceExhausted));

        let mut other = HeaderMap::new();
        other.insert("grpc-status", HeaderValue::from_static("11"));
        normalize_status(&mut other);
        assert_eq!(
            grpc_status(&other),
            Some(Code::OutOfRange),
            "only the size error"
        );
    }

    #[test]
    fn labels_come_from_the_method_table() {
        let l = MethodLabels::of("/shop.order.v1.OrderService/WatchOrder");
        assert_eq!(
            (l.grpc_type, l.grpc_service, l.grpc_method),
            ("server_stream", "shop.order.v1.OrderService", "WatchOrder")
        );
        let u = MethodLabels::of("/attacker.Controlled/Name");
        assert_eq!(u.grpc_method, "unknown");
        assert_eq!(code_label(Code::NotFound), "NotFound");
    }
}
