//! The request context: what a request carries into every call made while
//! serving it.
//!
//! A server (the server kit's context layer) turns each incoming request's
//! `grpc-timeout`, `authorization`, `x-request-id` and W3C trace headers
//! into a [`RequestContext`] and runs the handler inside it, task-locally.
//!
//! On the client, [`Propagate`] wraps a channel: every call made inside a
//! request context carries the remaining budget (never more), the caller's
//! token, request id and trace headers, without the handler doing
//! anything; a call whose budget is already spent fails at once with
//! DEADLINE_EXCEEDED, without touching the network. Outside a request
//! (a command-line client) calls pass through, and a channel's own
//! `grpc-timeout` expiry is reported as DEADLINE_EXCEEDED, not CANCELLED.
//!
//! The context is task-local: work spawned onto another task must carry it
//! along with [`RequestContext::scope`].

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, header::AUTHORIZATION};
use tokio::time::Instant;
use tonic::{Status, body::Body};
use tower::{Layer, Service};

use crate::grpc_timeout;

// Header names are `HeaderName`s rather than text: a name given as text is
// parsed, hashed and, when it is not a standard one, copied into a fresh
// allocation on every insert.

/// Header carrying the request id.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// W3C trace context headers, passed through unchanged.
const TRACE_HEADERS: [HeaderName; 2] = [
    HeaderName::from_static("traceparent"),
    HeaderName::from_static("tracestate"),
];

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
    pub trace: Vec<(HeaderName, HeaderValue)>,
}

impl RequestContext {
    /// The context of a request with `headers`, `request_id` (see
    /// [`request_id_of`]) and `deadline`.
    pub fn from_headers(
        headers: &HeaderMap,
        request_id: HeaderValue,
        deadline: Instant,
    ) -> RequestContext {
        RequestContext {
            deadline,
            authorization: headers.get(AUTHORIZATION).cloned(),
            request_id,
            trace: TRACE_HEADERS
                .iter()
                .filter_map(|name| headers.get(name).map(|v| (name.clone(), v.clone())))
                .collect(),
        }
    }

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
    pub fn scope<F: Future>(self, future: F) -> tokio::task::futures::TaskLocalFuture<Self, F> {
        CURRENT.scope(self, future)
    }

    /// The request id as text.
    pub fn request_id(&self) -> &str {
        self.request_id.to_str().unwrap_or("")
    }
}

/// The request id of a request with `headers`: the caller's `x-request-id`
/// when it is sane (1 to 128 of `[A-Za-z0-9-_.:]`), else a fresh one.
pub fn request_id_of(headers: &HeaderMap) -> HeaderValue {
    headers
        .get(REQUEST_ID)
        .filter(|v| valid_request_id(v))
        .cloned()
        .unwrap_or_else(new_request_id)
}

/// `value` marked never to be indexed by HPACK, for a header whose value
/// is unique to one call (a request id, a `traceparent`). Indexed, each
/// such value would take a place in the header tables at both ends of the
/// connection, evicting entries that do repeat, and the sender's encoder
/// would compare it with every earlier value of that header still in its
/// table (about fifty request ids, in h2's 4 KiB table) before adding it.
/// (http calls this flag "sensitive": a header map's `Debug` output shows
/// such a value as `Sensitive`.)
pub fn unique_to_the_call(mut value: HeaderValue) -> HeaderValue {
    value.set_sensitive(true);
    value
}

/// Whether `value` is acceptable as a request id: 1 to 128 of
/// `[A-Za-z0-9-_.:]`. Every call a server answers is checked (twice: by
/// the observation and by the context layer), so a byte is checked by one
/// look in a table rather than by six comparisons.
pub fn valid_request_id(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    (1..=128).contains(&bytes.len()) && bytes.iter().all(|&b| REQUEST_ID_BYTES[usize::from(b)])
}

/// Which bytes a request id may hold, by value.
const REQUEST_ID_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let byte = b as u8;
        table[b] = byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b':');
        b += 1;
    }
    table
};

/// A fresh random (version 4) UUID. Request ids correlate, they do not
/// authorize, so a fast thread-local generator is enough: no system call
/// per request.
///
/// The text is the value's own reference-counted buffer (`from_owner`):
/// a call's request id is cloned into its headers, its span and its
/// facts, and a value copied into a plain buffer is moved to a shared one
/// by its first clone, a second allocation.
pub fn new_request_id() -> HeaderValue {
    let id = uuid::Builder::from_random_bytes(fastrand::u128(..).to_le_bytes()).into_uuid();
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    id.hyphenated().encode_lower(&mut text);
    HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(text))
        .expect("a UUID is a valid header value")
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
    /// Wraps `inner` (a `tonic::transport::Channel`, or the client kit's
    /// inner stack).
    pub fn new(inner: S) -> Propagate<S> {
        Propagate { inner }
    }

    /// The wrapped service.
    pub fn inner(&self) -> &S {
        &self.inner
    }
}

/// True when `error` (or its cause) is tonic's "grpc-timeout expired".
pub fn is_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
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
        let ctx = RequestContext::current();
        if let Some(ctx) = &ctx {
            let remaining = ctx.remaining();
            if remaining.is_zero() {
                tracing::debug!(
                    rpc.method = %req.uri().path(),
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
            headers.insert(REQUEST_ID, unique_to_the_call(ctx.request_id.clone()));
            // A client span's own trace context, put there by an observing
            // layer outside this one, wins over the one received.
            for (name, value) in &ctx.trace {
                if !headers.contains_key(name) {
                    headers.insert(name.clone(), value.clone());
                }
            }
        }
        // The caller's deadline, or the call's own grpc-timeout when there
        // is no caller: bounds the wait for a connection too, which tonic's
        // own timer (started once a connection takes the request) does not.
        let deadline = match &ctx {
            Some(ctx) => Some(ctx.deadline),
            None => grpc_timeout::parse(req.headers()).map(|t| Instant::now() + t),
        };
        let future = self.inner.call(req);
        Box::pin(async move {
            let result = match deadline {
                Some(deadline) => match tokio::time::timeout_at(deadline, future).await {
                    Ok(result) => result,
                    Err(_) => Ok(Status::deadline_exceeded("deadline exceeded").into_http()),
                },
                None => future.await,
            };
            // tonic's channel enforces grpc-timeout itself and reports its
            // own expiry as a transport error that surfaces as CANCELLED;
            // it is a deadline, so say so.
            match result {
                Err(e) if is_timeout(&e) => {
                    Ok(Status::deadline_exceeded("deadline exceeded").into_http())
                }
                other => other,
            }
        })
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
        crate::status::grpc_status(response.headers())
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
            trace: vec![(
                HeaderName::from_static("traceparent"),
                HeaderValue::from_static("00-abc-def-01"),
            )],
        }
    }

    #[test]
    fn request_ids_are_checked_and_generated() {
        assert!(valid_request_id(&HeaderValue::from_static("abc-123_x.y:z")));
        assert!(!valid_request_id(&HeaderValue::from_static("has space")));
        assert!(!valid_request_id(&HeaderValue::from_static("")));
        assert!(valid_request_id(
            &HeaderValue::from_str(&"a".repeat(128)).unwrap()
        ));
        assert!(!valid_request_id(
            &HeaderValue::from_str(&"a".repeat(129)).unwrap()
        ));
        // Every byte a header value can hold, alone and after a valid one.
        for byte in (0x20..=0x7e).chain(0x80..=0xff).chain([b'\t']) {
            let allowed = byte.is_ascii_alphanumeric() || b"-_.:".contains(&byte);
            for text in [vec![byte], vec![b'a', byte]] {
                let value = HeaderValue::from_bytes(&text).unwrap();
                assert_eq!(valid_request_id(&value), allowed, "{text:?}");
            }
        }
        let id = new_request_id();
        assert!(valid_request_id(&id));
        assert_eq!(id.len(), 36);
        assert_ne!(new_request_id(), id);
    }

    #[test]
    fn a_context_is_read_from_the_request_headers() {
        let mut req = request("/shop.user.v1.UserService/GetUser", None);
        req.headers_mut()
            .insert(REQUEST_ID, HeaderValue::from_static("bad id with spaces"));
        let id = request_id_of(req.headers());
        assert_ne!(id, "bad id with spaces", "an insane id is replaced");
        let deadline = Instant::now() + Duration::from_secs(1);
        let ctx = RequestContext::from_headers(req.headers(), id.clone(), deadline);
        assert_eq!(ctx.authorization.unwrap(), "Bearer caller-token");
        assert_eq!(ctx.trace.len(), 1);
        assert_eq!(ctx.trace[0].0, "traceparent");
        assert_eq!(ctx.request_id, id);

        req.headers_mut()
            .insert(REQUEST_ID, HeaderValue::from_static("caller-id-1"));
        assert_eq!(request_id_of(req.headers()), "caller-id-1");
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
        assert!(
            headers[REQUEST_ID].is_sensitive(),
            "sent as never indexed: see unique_to_the_call"
        );
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
