//! Protecting a server from its callers and from itself:
//!
//! - [`RateLimitLayer`]: a token bucket per caller (the authenticated user,
//!   else the peer address). A refusal is RESOURCE_EXHAUSTED carrying
//!   `google.rpc.RetryInfo` with the wait, and is counted in
//!   `grpc_server_rate_limited_total`. [`KeyedLimit`] is the same bucket
//!   for handler-level keys (Login per identifier).
//! - [`ConcurrencyLimitLayer`]: at most `MAX_CONCURRENT_REQUESTS` unary
//!   calls in a handler at once; beyond that the call is shed at once with
//!   UNAVAILABLE (retry elsewhere), counted in `grpc_server_load_shed_total`,
//!   instead of queueing until every caller times out. Streams are bounded
//!   by `super::stream_limits` instead.
//! - [`PanicGuardLayer`]: a panic in a handler becomes INTERNAL for that
//!   call only; the connection and the process go on.

use std::{
    cell::RefCell,
    future::Future,
    num::NonZeroU32,
    panic::AssertUnwindSafe,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};

use futures_util::{
    FutureExt as _,
    future::{CatchUnwind, Either, Ready},
};
use governor::{
    DefaultKeyedRateLimiter, Quota,
    clock::{Clock as _, DefaultClock},
};
use http::{Request, Response};
use shop_auth::ServiceCaller;
use shop_core::error::AppError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::{Status, body::Body};
use tower::{Layer, Service};

use shop_telemetry::labels::MethodLabels;

// The layers here pass a call on as it is, or answer it themselves at
// once: their futures are the inner one or a ready answer (`Either`), not a
// box of their own per call.

/// An answer given without calling the handler.
pub type Refusal<E> = Ready<Result<Response<Body>, E>>;

fn refuse<E>(status: Status) -> Refusal<E> {
    futures_util::future::ready(Ok(status.into_http()))
}

/// A token bucket per key: `per_second` sustained, `burst` at once.
#[derive(Clone)]
pub struct KeyedLimit {
    limiter: Arc<DefaultKeyedRateLimiter<String>>,
    what: &'static str,
}

impl std::fmt::Debug for KeyedLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedLimit")
            .field("what", &self.what)
            .finish_non_exhaustive()
    }
}

impl KeyedLimit {
    /// A limit of `per_second` calls per key with bursts of `burst`
    /// (`per_second` may be fractional, e.g. 0.2 for one every 5 s).
    /// `what` names it in refusals ("requests", "login attempts").
    pub fn new(per_second: f64, burst: u32, what: &'static str) -> KeyedLimit {
        let period = Duration::from_secs_f64(1.0 / per_second.max(1e-6));
        let quota = Quota::with_period(period)
            .expect("a positive period")
            .allow_burst(NonZeroU32::new(burst.max(1)).expect("burst >= 1"));
        let limiter = Arc::new(DefaultKeyedRateLimiter::keyed(quota));
        // Forget keys that are idle again, so the map does not grow with
        // every caller ever seen.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let weak = Arc::downgrade(&limiter);
            runtime.spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(60));
                loop {
                    tick.tick().await;
                    let Some(limiter) = weak.upgrade() else {
                        return;
                    };
                    limiter.retain_recent();
                    limiter.shrink_to_fit();
                }
            });
        }
        KeyedLimit { limiter, what }
    }

    /// Ok, or [`AppError::RateLimited`] saying how long to wait
    /// (RESOURCE_EXHAUSTED with `RetryInfo` once it is a status). An owned
    /// `key` is used as it is, not copied.
    pub fn check(&self, key: impl Into<String>) -> Result<(), AppError> {
        self.check_ref(&key.into())
    }

    /// [`KeyedLimit::check`] of the key that `write` writes, in a buffer
    /// this thread reuses: the key is copied only when its bucket is new.
    /// The rate limit layer checks a key on every call it counts.
    pub fn check_written(&self, write: impl FnOnce(&mut String)) -> Result<(), AppError> {
        thread_local! {
            static KEY: RefCell<String> = const { RefCell::new(String::new()) };
        }
        KEY.with_borrow_mut(|key| {
            key.clear();
            write(key);
            self.check_ref(key)
        })
    }

    fn check_ref(&self, key: &String) -> Result<(), AppError> {
        match self.limiter.check_key(key) {
            Ok(()) => Ok(()),
            Err(not_until) => Err(AppError::RateLimited {
                what: self.what,
                retry_after: not_until.wait_time_from(DefaultClock::default().now()),
            }),
        }
    }
}

/// Builds [`RateLimit`] services: what they share behind one `Arc`, the
/// one atomic count tonic's per-call clone of the stack pays for it.
#[derive(Debug, Clone)]
pub struct RateLimitLayer(Arc<RateLimitState>);

#[derive(Debug)]
struct RateLimitState {
    limit: KeyedLimit,
    exempt: Box<[&'static str]>,
}

impl RateLimitLayer {
    /// Per-caller buckets; calls to `exempt` services (health, reflection)
    /// and calls a service makes on its own behalf (a verified service
    /// token and no end user's) are not counted.
    pub fn new(per_second: f64, burst: u32, exempt: &[&'static str]) -> RateLimitLayer {
        RateLimitLayer(Arc::new(RateLimitState {
            limit: KeyedLimit::new(per_second, burst, "requests"),
            exempt: exempt.into(),
        }))
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> RateLimit<S> {
        RateLimit {
            inner,
            layer: self.clone(),
        }
    }
}

/// See [`RateLimitLayer`].
#[derive(Debug, Clone)]
pub struct RateLimit<S> {
    inner: S,
    layer: RateLimitLayer,
}

impl<S, B> Service<Request<B>> for RateLimit<S>
where
    S: Service<Request<B>, Response = Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Either<S::Future, Refusal<S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let path = req.uri().path();
        let service = path.trim_start_matches('/').split('/').next().unwrap_or("");
        if !self.layer.0.exempt.contains(&service) {
            let principal = crate::layers::auth::principal_in(req.extensions());
            // A service calling on its own behalf (a service token and no
            // end user's): what it sends is work for end users whose own
            // calls were limited where they came in (one shared
            // reservation call carries many orders), so it is bounded by
            // the concurrency limit only.
            if principal.is_none() && req.extensions().get::<ServiceCaller>().is_some() {
                return Either::Left(self.inner.call(req));
            }
            let checked = self.layer.0.limit.check_written(|key| match principal {
                Some(p) => {
                    key.push_str("user:");
                    key.push_str(&p.user_id);
                }
                None => crate::peer::write_caller_key(req.extensions(), key),
            });
            if let Err(limited) = checked {
                let labels = MethodLabels::of(path);
                metrics::counter!("grpc_server_rate_limited_total",
                    "grpc_service" => labels.grpc_service, "grpc_method" => labels.grpc_method)
                .increment(1);
                return Either::Right(refuse(Status::from(limited)));
            }
        }
        Either::Left(self.inner.call(req))
    }
}

/// Builds [`ConcurrencyLimit`] services.
#[derive(Debug, Clone)]
pub struct ConcurrencyLimitLayer {
    permits: Arc<Semaphore>,
}

impl ConcurrencyLimitLayer {
    /// At most `max` calls in handlers at once.
    pub fn new(max: usize) -> ConcurrencyLimitLayer {
        ConcurrencyLimitLayer {
            permits: Arc::new(Semaphore::new(max.max(1))),
        }
    }
}

impl<S> Layer<S> for ConcurrencyLimitLayer {
    type Service = ConcurrencyLimit<S>;

    fn layer(&self, inner: S) -> ConcurrencyLimit<S> {
        ConcurrencyLimit {
            inner,
            permits: Arc::clone(&self.permits),
        }
    }
}

/// See [`ConcurrencyLimitLayer`].
#[derive(Debug, Clone)]
pub struct ConcurrencyLimit<S> {
    inner: S,
    permits: Arc<Semaphore>,
}

impl<S, B> Service<Request<B>> for ConcurrencyLimit<S>
where
    S: Service<Request<B>, Response = Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Either<Permitted<S::Future>, Refusal<S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // Streams are bounded by the stream limits: a client stream would
        // hold a permit until its client ended it.
        if super::stream_limits::is_streaming_call(&req) {
            return Either::Left(Permitted {
                future: self.inner.call(req),
                _permit: None,
            });
        }
        let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() else {
            metrics::counter!("grpc_server_load_shed_total").increment(1);
            return Either::Right(refuse(Status::unavailable(
                "server overloaded; retry (preferably on another replica)",
            )));
        };
        Either::Left(Permitted {
            future: self.inner.call(req),
            _permit: Some(permit),
        })
    }
}

pin_project_lite::pin_project! {
    /// A call's answer, holding its concurrency permit (if it took one)
    /// until the handler has answered (for a stream: opened it).
    pub struct Permitted<F> {
        #[pin]
        future: F,
        _permit: Option<OwnedSemaphorePermit>,
    }
}

impl<F: Future> Future for Permitted<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.project().future.poll(cx)
    }
}

/// Builds [`PanicGuard`] services.
#[derive(Debug, Clone, Copy, Default)]
pub struct PanicGuardLayer;

impl<S> Layer<S> for PanicGuardLayer {
    type Service = PanicGuard<S>;

    fn layer(&self, inner: S) -> PanicGuard<S> {
        PanicGuard { inner }
    }
}

/// See [`PanicGuardLayer`].
#[derive(Debug, Clone)]
pub struct PanicGuard<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for PanicGuard<S>
where
    S: Service<Request<B>, Response = Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Either<Guarded<S::Future>, Refusal<S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    // The panic's log line names the method through the call's span (the
    // observe layer's, entered whenever the call runs).
    fn call(&mut self, req: Request<B>) -> Self::Future {
        // A panic while building the future is caught too.
        match std::panic::catch_unwind(AssertUnwindSafe(|| self.inner.call(req))) {
            Ok(future) => Either::Left(Guarded {
                future: AssertUnwindSafe(future).catch_unwind(),
            }),
            Err(panic) => {
                tracing::error!(panic = %panic_text(&panic), "handler panicked");
                Either::Right(refuse(Status::internal("internal error")))
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// A handler's answer, or INTERNAL if it panicked on the way.
    pub struct Guarded<F> {
        #[pin]
        future: CatchUnwind<AssertUnwindSafe<F>>,
    }
}

impl<F, E> Future for Guarded<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        Poll::Ready(match ready!(self.project().future.poll(cx)) {
            Ok(answer) => answer,
            Err(panic) => {
                tracing::error!(panic = %panic_text(&panic), "handler panicked");
                Ok(Status::internal("internal error").into_http())
            }
        })
    }
}

fn panic_text(payload: &Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned())
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tonic_types::StatusExt as _;
    use tower::{ServiceExt as _, service_fn};

    use super::*;
    use shop_auth::Principal;
    use shop_core::status::grpc_status;
    use tonic::Code;

    fn request() -> Request<Body> {
        Request::builder()
            .uri("http://t/shop.user.v1.UserService/GetUser")
            .body(Body::empty())
            .unwrap()
    }

    #[tokio::test]
    async fn the_bucket_refuses_with_retry_info_then_refills() {
        let limit = KeyedLimit::new(20.0, 2, "requests");
        assert!(limit.check("a").is_ok());
        assert!(limit.check("a").is_ok());
        let refused = Status::from(limit.check("a").unwrap_err());
        assert_eq!(refused.code(), Code::ResourceExhausted);
        let retry = refused
            .get_error_details()
            .retry_info()
            .cloned()
            .expect("RetryInfo");
        let delay = retry.retry_delay.expect("a delay");
        assert!(
            delay > Duration::ZERO && delay <= Duration::from_millis(50),
            "{delay:?}"
        );
        assert!(limit.check("b").is_ok(), "buckets are per key");
        tokio::time::sleep(delay + Duration::from_millis(5)).await;
        assert!(limit.check("a").is_ok(), "refilled");
    }

    #[tokio::test]
    async fn a_service_on_its_own_behalf_is_not_rate_limited_but_users_and_addresses_are() {
        let handler = service_fn(|_req: Request<Body>| async {
            Ok::<_, Infallible>(Response::new(Body::empty()))
        });
        let limited = RateLimitLayer::new(0.001, 2, &[]).layer(handler);
        let code = |request: Request<Body>| {
            let limited = limited.clone();
            async move { grpc_status(limited.oneshot(request).await.unwrap().headers()) }
        };
        fn service() -> Request<Body> {
            let mut request = request();
            request.extensions_mut().insert(ServiceCaller {
                name: "order-service".into(),
            });
            request
        }
        fn user_called(user_id: &str) -> Request<Body> {
            let mut request = service();
            request.extensions_mut().insert(Arc::new(Principal {
                user_id: user_id.into(),
                roles: Vec::new(),
                token_id: "t-1".into(),
                expires_at: 0,
            }));
            request
        }
        fn user() -> Request<Body> {
            user_called("u-1")
        }
        fn another_user() -> Request<Body> {
            user_called("u-2")
        }
        for _ in 0..5 {
            assert_eq!(code(service()).await, None, "not counted");
        }
        for make in [user, another_user, request] {
            assert_eq!(code(make()).await, None);
            assert_eq!(code(make()).await, None);
            assert_eq!(code(make()).await, Some(Code::ResourceExhausted));
        }
    }

    #[tokio::test]
    async fn a_panicking_handler_answers_internal() {
        let handler = service_fn(|_req: Request<Body>| async {
            if true {
                panic!("handler bug");
            }
            Ok::<_, Infallible>(Response::new(Body::empty()))
        });
        let response = PanicGuardLayer
            .layer(handler)
            .oneshot(request())
            .await
            .unwrap();
        assert_eq!(grpc_status(response.headers()), Some(Code::Internal));
    }

    #[tokio::test]
    async fn a_handler_that_panics_before_its_future_exists_answers_internal() {
        struct PanicsAtCall;
        impl Service<Request<Body>> for PanicsAtCall {
            type Response = Response<Body>;
            type Error = Infallible;
            type Future = std::future::Ready<Result<Response<Body>, Infallible>>;

            fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
                Poll::Ready(Ok(()))
            }

            fn call(&mut self, _req: Request<Body>) -> Self::Future {
                panic!("handler bug while building its future")
            }
        }
        let response = PanicGuardLayer
            .layer(PanicsAtCall)
            .oneshot(request())
            .await
            .unwrap();
        assert_eq!(grpc_status(response.headers()), Some(Code::Internal));
    }

    #[tokio::test]
    async fn over_the_concurrency_limit_calls_are_shed_at_once() {
        let (release, released) = tokio::sync::watch::channel(false);
        let handler = service_fn(move |_req: Request<Body>| {
            let mut released = released.clone();
            async move {
                let _ = released.wait_for(|r| *r).await;
                Ok::<_, Infallible>(Response::new(Body::empty()))
            }
        });
        let service = ConcurrencyLimitLayer::new(1).layer(handler);
        let first = tokio::spawn(service.clone().oneshot(request()));
        tokio::task::yield_now().await;
        let shed = service.clone().oneshot(request()).await.unwrap();
        assert_eq!(grpc_status(shed.headers()), Some(Code::Unavailable));
        release.send(true).unwrap();
        let ok = first.await.unwrap().unwrap();
        assert_eq!(grpc_status(ok.headers()), None);
        let again = service.oneshot(request()).await.unwrap();
        assert_eq!(grpc_status(again.headers()), None, "the permit came back");
    }
}
