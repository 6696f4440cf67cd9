//! The server side of the request context: the incoming `grpc-timeout`
//! becomes the call's deadline (capped for unary calls), and the rest of
//! the stack runs inside a task-local [`RequestContext`] that outgoing
//! calls read (see `shop_core::context::Propagate`). When the deadline
//! passes, the handler's future is dropped (and with it every downstream
//! call it was waiting on) and the caller gets DEADLINE_EXCEEDED.

use std::{
    borrow::Cow,
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use http::{HeaderValue, Request, Response};
use shop_core::{context::RequestContext, grpc_timeout};
use tokio::{
    task::futures::TaskLocalFuture,
    time::{Instant, Timeout},
};
use tonic::{Status, body::Body};
use tower::{Layer, Service};

use super::call_facts;

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
    type Future = InContext<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let start = call_facts::started_of(&req);
        let method = call_facts::method_of(&req);
        // Only known unary methods get the cap: streams (including health
        // Watch and reflection, which are not in the shop protos) may last.
        let unary = method.is_some_and(|m| !m.client_streaming && !m.server_streaming);
        // The method table's own copy of a shop method's path; only other
        // paths are copied.
        let path = match method {
            Some(m) => Cow::Borrowed(m.path),
            None => Cow::Owned(req.uri().path().to_owned()),
        };
        let sent = grpc_timeout::parse(req.headers());
        let budget = match (sent, unary) {
            (Some(sent), true) => sent.min(self.unary_cap),
            (Some(sent), false) => sent,
            (None, true) => self.unary_cap,
            (None, false) => NO_DEADLINE,
        };
        let request_id = call_facts::request_id_of(&req);
        let ctx = RequestContext::from_headers(req.headers(), request_id.clone(), start + budget);
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
        InContext {
            inner: ctx.scope(tokio::time::timeout_at(deadline, future)),
            guard: AbandonGuard {
                path,
                start,
                request_id,
                finished: false,
            },
        }
    }
}

pin_project_lite::pin_project! {
    /// The inner call's answer, run inside its request context and cut
    /// short at its deadline.
    pub struct InContext<F> {
        #[pin]
        inner: TaskLocalFuture<RequestContext, Timeout<F>>,
        guard: AbandonGuard,
    }
}

impl<F, E> Future for InContext<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let guard = this.guard;
        guard.finished = true;
        Poll::Ready(match result {
            Ok(answer) => answer,
            Err(_) => {
                tracing::info!(
                    rpc.method = %guard.path,
                    request_id = guard.request_id.to_str().unwrap_or_default(),
                    elapsed_ms = guard.start.elapsed().as_millis() as u64,
                    "deadline exceeded; handler dropped"
                );
                Ok(Status::deadline_exceeded("deadline exceeded").into_http())
            }
        })
    }
}

/// Logs when a request's future is dropped before it finished: the client
/// went away (or the connection broke), and everything the handler was
/// waiting on was dropped with it.
struct AbandonGuard {
    path: Cow<'static, str>,
    start: Instant,
    request_id: HeaderValue,
    finished: bool,
}

impl Drop for AbandonGuard {
    fn drop(&mut self) {
        if !self.finished {
            tracing::info!(
                rpc.method = %self.path,
                request_id = self.request_id.to_str().unwrap_or_default(),
                elapsed_ms = self.start.elapsed().as_millis() as u64,
                "request cancelled by the client; handler dropped"
            );
        }
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

    use http::header::AUTHORIZATION;
    use shop_core::status::grpc_status;
    use tonic::Code;
    use tower::{ServiceExt as _, service_fn};

    use super::*;

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
        assert!(
            shop_core::context::valid_request_id(&ctx.request_id),
            "a request id generated for a call without one: {:?}",
            ctx.request_id
        );
        assert!(response.status().is_success());
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
        assert_eq!(
            grpc_status(response.headers()),
            Some(Code::DeadlineExceeded)
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(
            dropped.load(Ordering::SeqCst),
            "the handler future was dropped"
        );
    }
}
