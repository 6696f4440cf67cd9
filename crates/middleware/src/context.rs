//! The request context: what a request carries into every call made while
//! serving it.
//!
//! On the server, [`ContextLayer`] turns the incoming `grpc-timeout` into a
//! deadline (capped for unary calls), picks up `authorization`,
//! `x-request-id` (generated when absent and echoed back) and the W3C trace
//! headers, and runs the rest of the stack inside a task-local
//! [`RequestContext`]. When the deadline passes, the handler's future is
//! dropped (and with it every downstream call it was waiting on) and the
//! caller gets DEADLINE_EXCEEDED.
//!
//! On the client, [`PropagateLayer`] wraps a channel: every call made
//! inside a request context carries the remaining budget (never more), the
//! caller's token, request id and trace headers, without the handler doing
//! anything; a call whose budget is already spent fails at once with
//! DEADLINE_EXCEEDED, without touching the network.
//!
//! The context is task-local: work spawned onto another task must carry it
//! along with [`RequestContext::scope`].

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use http::{HeaderMap, HeaderValue, Request, Response, header::AUTHORIZATION};
use tokio::time::Instant;
use tonic::{Status, body::Body};
use tower::{Layer, Service};

use std::sync::{Arc, Mutex};

use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::{
    grpc_timeout,
    observe::{CallRecord, HeaderCarrier, MethodLabels, Side, observe_request, observe_response},
};

/// Header carrying the request id.
pub const REQUEST_ID: &str = "x-request-id";
/// W3C trace context headers, passed through unchanged.
const TRACE_HEADERS: [&str; 2] = ["traceparent", "tracestate"];

tokio::task_local! {
    static CURRENT: RequestContext;
}

/// What the request being served carries into its outgoing calls.
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// When the caller stops waiting.
    pub deadline: Instant,
    /// The caller's `authorization` header, forwarded so that downstream
    /// services authorize on behalf of the end user.
    pub authorization: Option<HeaderValue>,
    /// The request id, received or generated.
    pub request_id: HeaderValue,
    /// `traceparent` and `tracestate`, as received.
    pub trace: Vec<(&'static str, HeaderValue)>,
}

impl RequestContext {
    /// The context of the request the current task is serving, if any.
    pub fn current() -> Option<RequestContext> {
        CURRENT.try_with(Clone::clone).ok()
    }

    /// Time left before the deadline (zero once it has passed).
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// Runs `future` with this context as the current one; use it to carry
    /// the context into a spawned task.
    pub async fn scope<F: Future>(self, future: F) -> F::Output {
        CURRENT.scope(self, future).await
    }

    /// The request id as text.
    pub fn request_id(&self) -> &str {
        self.request_id.to_str().unwrap_or("")
    }
}

/// Builds [`ServerContext`] services.
#[derive(Debug, Clone, Copy)]
pub struct ContextLayer {
    unary_cap: Duration,
}

impl ContextLayer {
    /// `unary_cap` bounds every unary call: the deadline is the caller's
    /// `grpc-timeout` or this cap, whichever is sooner. Streaming calls are
    /// bounded only by the caller's `grpc-timeout`, since a watch may
    /// legitimately last for hours.
    pub fn new(unary_cap: Duration) -> ContextLayer {
        ContextLayer { unary_cap }
    }
}

impl<S> Layer<S> for ContextLayer {
    type Service = ServerContext<S>;

    fn layer(&self, inner: S) -> ServerContext<S> {
        ServerContext {
            inner,
            unary_cap: self.unary_cap,
        }
    }
}

/// The server side of the request context; see the module docs.
#[derive(Debug, Clone)]
pub struct ServerContext<S> {
    inner: S,
    unary_cap: Duration,
}

/// Far enough in the future to mean "no deadline" without overflowing.
const NO_DEADLINE: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

impl<S, ReqBody> Service<Request<ReqBody>> for ServerContext<S>
where
    S: Service<Request<ReqBody>, Response = Response<Body>> + Send,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let start = Instant::now();
        let path = req.uri().path().to_owned();
        // Only known unary methods get the cap: streams (including health
        // Watch and reflection, which are not in the shop protos) may last.
        let unary = shop_proto::policy::lookup(&path)
            .is_some_and(|m| !m.client_streaming && !m.server_streaming);
        let sent = grpc_timeout::parse(req.headers());
        let budget = match (sent, unary) {
            (Some(sent), true) => sent.min(self.unary_cap),
            (Some(sent), false) => sent,
            (None, true) => self.unary_cap,
            (None, false) => NO_DEADLINE,
        };
        let request_id = req
            .headers()
            .get(REQUEST_ID)
            .filter(|v| valid_request_id(v))
            .cloned()
            .unwrap_or_else(new_request_id);
        let ctx = RequestContext {
            deadline: start + budget,
            authorization: req.headers().get(AUTHORIZATION).cloned(),
            request_id: request_id.clone(),
            trace: trace_headers(req.headers()),
        };
        tracing::debug!(
            rpc.method = %path,
            request_id = ctx.request_id(),
            grpc.timeout_ms = sent.map(|d| d.as_millis() as u64),
            budget_ms = budget.as_millis() as u64,
            "request received"
        );
        req.extensions_mut().insert(ctx.clone());

        // Tonic's own grpc-timeout guard wraps this layer and answers
        // CANCELLED when it fires, and the caller's tonic channel does the
        // same at its end: answering a little earlier (5%, at most 20 ms)
        // lets DEADLINE_EXCEEDED reach the caller first.
        let margin = (budget / 20).min(Duration::from_millis(20));
        let deadline = ctx.deadline - margin;
        let future = self.inner.call(req);
        Box::pin(async move {
            let mut guard = AbandonGuard {
                path,
                start,
                request_id: ctx.request_id().to_owned(),
                finished: false,
            };
            let result = CURRENT
                .scope(ctx, tokio::time::timeout_at(deadline, future))
                .await;
            guard.finished = true;
            let mut response = match result {
                Ok(response) => response?,
                Err(_) => {
                    tracing::info!(
                        rpc.method = %guard.path,
                        request_id = %guard.request_id,
                        elapsed_ms = start.elapsed().as_millis() as u64,
                        "deadline exceeded; handler dropped"
                    );
                    Status::deadline_exceeded("deadline exceeded").into_http()
                }
            };
            response.headers_mut().insert(REQUEST_ID, request_id);
            Ok(response)
        })
    }
}

/// Logs when a request's future is dropped before it finished: the client
/// went away (or the connection broke), and everything the handler was
/// waiting on was dropped with it.
struct AbandonGuard {
    path: String,
    start: Instant,
    request_id: String,
    finished: bool,
}

impl Drop for AbandonGuard {
    fn drop(&mut self) {
        if !self.finished {
            tracing::info!(
                rpc.method = %self.path,
                request_id = %self.request_id,
                elapsed_ms = self.start.elapsed().as_millis() as u64,
                "request cancelled by the client; handler dropped"
            );
        }
    }
}

pub(crate) fn valid_request_id(value: &HeaderValue) -> bool {
    let len = value.len();
    (1..=128).contains(&len)
        && value
            .as_bytes()
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// A fresh random (version 4) UUID. Request ids correlate, they do not
/// authorize, so a fast thread-local generator is enough: no system call
/// per request.
pub(crate) fn new_request_id() -> HeaderValue {
    let id = uuid::Builder::from_random_bytes(fastrand::u128(..).to_le_bytes()).into_uuid();
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    HeaderValue::from_str(id.hyphenated().encode_lower(&mut text))
        .expect("a UUID is a valid header value")
}

fn trace_headers(headers: &HeaderMap) -> Vec<(&'static str, HeaderValue)> {
    TRACE_HEADERS
        .iter()
        .filter_map(|name| headers.get(*name).map(|v| (*name, v.clone())))
        .collect()
}

/// Builds [`Propagate`] services around a client channel.
#[derive(Debug, Clone, Copy, Default)]
pub struct PropagateLayer;

impl<S> Layer<S> for PropagateLayer {
    type Service = Propagate<S>;

    fn layer(&self, inner: S) -> Propagate<S> {
        Propagate { inner }
    }
}

/// The client side of the request context; see the module docs.
#[derive(Debug, Clone)]
pub struct Propagate<S> {
    inner: S,
}

impl<S> Propagate<S> {
    /// Wraps `inner` (usually a `tonic::transport::Channel`).
    pub fn new(inner: S) -> Propagate<S> {
        Propagate { inner }
    }

    /// The wrapped service.
    pub fn inner(&self) -> &S {
        &self.inner
    }
}

/// True when `error` (or its cause) is tonic's "grpc-timeout expired".
pub(crate) fn is_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = cause {
        if e.is::<tonic::TimeoutExpired>() {
            return true;
        }
        cause = e.source();
    }
    false
}

impl<S> Service<Request<Body>> for Propagate<S>
where
    S: Service<Request<Body>, Response = Response<Body>>,
    S::Future: Send + 'static,
    S::Error: std::error::Error + Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let path = req.uri().path().to_owned();
        let ctx = RequestContext::current();
        if let Some(ctx) = &ctx {
            let remaining = ctx.remaining();
            if remaining.is_zero() {
                tracing::debug!(
                    rpc.method = %path,
                    request_id = ctx.request_id(),
                    "deadline already spent; call not made"
                );
                return Box::pin(std::future::ready(Ok(Status::deadline_exceeded(
                    "deadline exceeded before the call was made",
                )
                .into_http())));
            }
            let headers = req.headers_mut();
            let timeout = grpc_timeout::parse(headers).map_or(remaining, |t| t.min(remaining));
            headers.insert(grpc_timeout::GRPC_TIMEOUT, grpc_timeout::encode(timeout));
            if let Some(auth) = &ctx.authorization
                && !headers.contains_key(AUTHORIZATION)
            {
                headers.insert(AUTHORIZATION, auth.clone());
            }
            headers.insert(REQUEST_ID, ctx.request_id.clone());
            for (name, value) in &ctx.trace {
                headers.insert(*name, value.clone());
            }
        }

        // The client span, child of whatever this task is doing (the
        // server span of the request being served), and its trace context
        // on the wire.
        let labels = MethodLabels::of(&path);
        let span = tracing::info_span!(
            "grpc.client",
            otel.name = %path.trim_start_matches('/'),
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            rpc.system = "grpc",
            rpc.service = labels.grpc_service,
            rpc.method = labels.grpc_method,
            rpc.grpc.status_code = tracing::field::Empty,
        );
        opentelemetry::global::get_text_map_propagator(|p| {
            p.inject_context(&span.context(), &mut HeaderCarrier(req.headers_mut()));
        });
        let request_id = ctx
            .as_ref()
            .map(|c| c.request_id().to_owned())
            .unwrap_or_default();
        let record = Arc::new(Mutex::new(CallRecord::start(
            Side::Client,
            &path,
            span.clone(),
            request_id,
            None,
        )));
        let (parts, body) = req.into_parts();
        let req = Request::from_parts(parts, observe_request(body, &record, Side::Client));
        let deadline = ctx.map(|c| c.deadline);
        let future = {
            let _entered = span.enter();
            self.inner.call(req)
        };
        Box::pin(tracing::Instrument::instrument(
            async move {
                let result = match deadline {
                    Some(deadline) => match tokio::time::timeout_at(deadline, future).await {
                        Ok(result) => result,
                        Err(_) => Ok(Status::deadline_exceeded("deadline exceeded").into_http()),
                    },
                    None => future.await,
                };
                // tonic's channel enforces grpc-timeout itself and reports
                // its own expiry as a transport error that surfaces as
                // CANCELLED; it is a deadline, so say so.
                let response = match result {
                    Err(e) if is_timeout(&e) => {
                        Status::deadline_exceeded("deadline exceeded").into_http()
                    }
                    other => other?,
                };
                Ok(observe_response(response, record, Side::Client))
            },
            span,
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::{
        convert::Infallible,
        sync::{
            Arc, Mutex,
            atomic::{AtomicBool, Ordering},
        },
    };

    use tonic::Code;
    use tower::{ServiceExt as _, service_fn};

    use super::*;

    fn status_of(response: &Response<Body>) -> Option<Code> {
        response
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i32>().ok())
            .map(Code::from)
    }

    fn request(path: &str, timeout: Option<&str>) -> Request<Body> {
        let mut builder = Request::builder().uri(format!("http://test{path}"));
        if let Some(t) = timeout {
            builder = builder.header(grpc_timeout::GRPC_TIMEOUT, t);
        }
        builder
            .header(AUTHORIZATION, "Bearer caller-token")
            .header(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            )
            .body(Body::empty())
            .unwrap()
    }

    fn context(deadline_in: Duration) -> RequestContext {
        RequestContext {
            deadline: Instant::now() + deadline_in,
            authorization: Some(HeaderValue::from_static("Bearer caller-token")),
            request_id: HeaderValue::from_static("req-1"),
            trace: vec![("traceparent", HeaderValue::from_static("00-abc-def-01"))],
        }
    }

    #[test]
    fn request_ids_are_checked_and_generated() {
        assert!(valid_request_id(&HeaderValue::from_static("abc-123_x.y:z")));
        assert!(!valid_request_id(&HeaderValue::from_static("has space")));
        assert!(!valid_request_id(&HeaderValue::from_static("")));
        let id = new_request_id();
        assert!(valid_request_id(&id));
        assert_eq!(id.len(), 36);
        assert_ne!(new_request_id(), id);
    }

    #[tokio::test]
    async fn context_is_visible_inside_its_scope_only() {
        assert!(RequestContext::current().is_none());
        let seen = context(Duration::from_secs(1))
            .scope(async { RequestContext::current().map(|c| c.request_id().to_owned()) })
            .await;
        assert_eq!(seen.as_deref(), Some("req-1"));
        assert!(RequestContext::current().is_none());
    }

    #[tokio::test]
    async fn the_server_runs_the_handler_inside_the_callers_context() {
        let seen = Arc::new(Mutex::new(None));
        let seen_in = seen.clone();
        let handler = service_fn(move |_req: Request<Body>| {
            let seen = seen_in.clone();
            async move {
                *seen.lock().unwrap() = RequestContext::current();
                Ok::<_, Infallible>(Response::new(Body::empty()))
            }
        });
        let service = ContextLayer::new(Duration::from_secs(30)).layer(handler);
        let response = service
            .oneshot(request("/shop.user.v1.UserService/GetUser", Some("300m")))
            .await
            .unwrap();
        let ctx = seen
            .lock()
            .unwrap()
            .clone()
            .expect("context inside the handler");
        let remaining = ctx.remaining();
        assert!(remaining <= Duration::from_millis(300), "{remaining:?}");
        assert!(remaining > Duration::from_millis(200), "{remaining:?}");
        assert_eq!(ctx.authorization.unwrap(), "Bearer caller-token");
        assert_eq!(ctx.trace[0].0, "traceparent");
        let echoed = response
            .headers()
            .get(REQUEST_ID)
            .expect("request id echoed");
        assert_eq!(echoed, &ctx.request_id, "generated id is echoed back");
    }

    #[tokio::test]
    async fn unary_calls_are_capped_and_streams_are_not() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen_in = seen.clone();
        let handler = service_fn(move |_req: Request<Body>| {
            let seen = seen_in.clone();
            async move {
                seen.lock()
                    .unwrap()
                    .push(RequestContext::current().unwrap().remaining());
                Ok::<_, Infallible>(Response::new(Body::empty()))
            }
        });
        let service = ContextLayer::new(Duration::from_secs(2)).layer(handler);
        for (path, timeout) in [
            ("/shop.user.v1.UserService/GetUser", None),
            ("/shop.user.v1.UserService/GetUser", Some("1H")),
            ("/shop.order.v1.OrderService/WatchOrder", None),
            ("/shop.order.v1.OrderService/WatchOrder", Some("1H")),
        ] {
            service
                .clone()
                .oneshot(request(path, timeout))
                .await
                .unwrap();
        }
        let seen = seen.lock().unwrap();
        assert!(
            seen[0] <= Duration::from_secs(2),
            "no timeout sent: the cap"
        );
        assert!(
            seen[1] <= Duration::from_secs(2),
            "a longer timeout is capped"
        );
        assert!(
            seen[2] > Duration::from_secs(3600 * 24),
            "streams have no cap"
        );
        assert!(seen[3] > Duration::from_secs(3500) && seen[3] <= Duration::from_secs(3600));
    }

    #[tokio::test]
    async fn an_expired_deadline_answers_deadline_exceeded_and_drops_the_handler() {
        struct SetOnDrop(Arc<AtomicBool>);
        impl Drop for SetOnDrop {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let dropped = Arc::new(AtomicBool::new(false));
        let dropped_in = dropped.clone();
        let handler = service_fn(move |_req: Request<Body>| {
            let guard = SetOnDrop(dropped_in.clone());
            async move {
                tokio::time::sleep(Duration::from_secs(10)).await;
                drop(guard);
                Ok::<_, Infallible>(Response::new(Body::empty()))
            }
        });
        let service = ContextLayer::new(Duration::from_secs(30)).layer(handler);
        let started = Instant::now();
        let response = service
            .oneshot(request("/shop.user.v1.UserService/GetUser", Some("100m")))
            .await
            .unwrap();
        assert_eq!(status_of(&response), Some(Code::DeadlineExceeded));
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(
            dropped.load(Ordering::SeqCst),
            "the handler future was dropped"
        );
    }

    #[tokio::test]
    async fn outgoing_calls_carry_the_remaining_budget_token_request_id_and_trace() {
        let sent = Arc::new(Mutex::new(None));
        let sent_in = sent.clone();
        let channel = service_fn(move |req: Request<Body>| {
            *sent_in.lock().unwrap() = Some(req.headers().clone());
            async { Ok::<_, Infallible>(Response::new(Body::empty())) }
        });
        let client = PropagateLayer.layer(channel);
        context(Duration::from_millis(250))
            .scope(client.oneshot(Request::new(Body::empty())))
            .await
            .unwrap();
        let headers = sent.lock().unwrap().clone().unwrap();
        let timeout = grpc_timeout::parse(&headers).expect("grpc-timeout set");
        assert!(timeout <= Duration::from_millis(250), "{timeout:?}");
        assert!(timeout > Duration::from_millis(150), "{timeout:?}");
        assert_eq!(headers[AUTHORIZATION], "Bearer caller-token");
        assert_eq!(headers[REQUEST_ID], "req-1");
        assert_eq!(headers["traceparent"], "00-abc-def-01");
    }

    #[tokio::test]
    async fn a_shorter_timeout_set_by_the_caller_is_kept() {
        let sent = Arc::new(Mutex::new(None));
        let sent_in = sent.clone();
        let channel = service_fn(move |req: Request<Body>| {
            *sent_in.lock().unwrap() = grpc_timeout::parse(req.headers());
            async { Ok::<_, Infallible>(Response::new(Body::empty())) }
        });
        let mut req = Request::new(Body::empty());
        req.headers_mut()
            .insert(grpc_timeout::GRPC_TIMEOUT, HeaderValue::from_static("50m"));
        context(Duration::from_secs(10))
            .scope(PropagateLayer.layer(channel).oneshot(req))
            .await
            .unwrap();
        assert_eq!(*sent.lock().unwrap(), Some(Duration::from_millis(50)));
    }

    #[tokio::test]
    async fn a_spent_budget_fails_without_calling_the_network() {
        let calls = Arc::new(AtomicBool::new(false));
        let calls_in = calls.clone();
        let channel = service_fn(move |_req: Request<Body>| {
            calls_in.store(true, Ordering::SeqCst);
            async { Ok::<_, Infallible>(Response::new(Body::empty())) }
        });
        let ctx = RequestContext {
            deadline: Instant::now() - Duration::from_millis(1),
            ..context(Duration::ZERO)
        };
        let response = ctx
            .scope(
                PropagateLayer
                    .layer(channel)
                    .oneshot(Request::new(Body::empty())),
            )
            .await
            .unwrap();
        assert_eq!(status_of(&response), Some(Code::DeadlineExceeded));
        assert!(!calls.load(Ordering::SeqCst), "the channel was not called");
    }

    #[tokio::test]
    async fn a_channels_own_timeout_expiry_is_reported_as_deadline_exceeded() {
        #[derive(Debug)]
        struct TransportError(tonic::TimeoutExpired);
        impl std::fmt::Display for TransportError {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("transport error")
            }
        }
        impl std::error::Error for TransportError {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let channel = service_fn(|_req: Request<Body>| async {
            Err::<Response<Body>, _>(TransportError(tonic::TimeoutExpired(())))
        });
        let response = PropagateLayer
            .layer(channel)
            .oneshot(Request::new(Body::empty()))
            .await
            .expect("mapped to a response, not an error");
        assert_eq!(status_of(&response), Some(Code::DeadlineExceeded));
    }

    #[tokio::test]
    async fn outside_a_request_calls_pass_through_untouched() {
        let sent = Arc::new(Mutex::new(None));
        let sent_in = sent.clone();
        let channel = service_fn(move |req: Request<Body>| {
            *sent_in.lock().unwrap() = Some(req.headers().clone());
            async { Ok::<_, Infallible>(Response::new(Body::empty())) }
        });
        PropagateLayer
            .layer(channel)
            .oneshot(Request::new(Body::empty()))
            .await
            .unwrap();
        assert!(sent.lock().unwrap().as_ref().unwrap().is_empty());
    }
}
