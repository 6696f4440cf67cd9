//! Keeping every stream within bounds of number, time and standing, for
//! every streaming RPC of every service alike (health Watch and reflection
//! included), at the HTTP level so that no handler can forget it.
//!
//! - **Admission**: a streaming call takes a place in [`Streams`] (per
//!   caller, per address, per process) for as long as it lasts, and is
//!   RESOURCE_EXHAUSTED when there is none. Streams never hold one of the
//!   unary concurrency permits (see [`is_streaming`]), so open streams
//!   cannot starve unary calls.
//! - **Idle timeout**: a stream on which no message moved either way for
//!   `STREAM_IDLE_TIMEOUT` ends with DEADLINE_EXCEEDED (a client stream
//!   whose client stopped sending, a watch with nothing to say).
//! - **Lifetime**: a stream ends with UNAVAILABLE (reconnect) after
//!   `STREAM_MAX_LIFETIME`, or when the access token that opened it
//!   expires, whichever comes first, with UNAUTHENTICATED then.
//! - **Standing**: every `STREAM_RECHECK_INTERVAL` the service's
//!   [`StreamAuthority`] is asked whether the account that opened the
//!   stream still stands as its token says (active, and still holding
//!   every role the token grants); a suspended, deleted or demoted account
//!   loses its streams with PERMISSION_DENIED within one interval.
//!
//! Ending a stream drops the handler's response body, which drops the
//! stream's producer (see [`crate::streams`]) and everything it waited on.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll, ready},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use shop_auth::{BoxFuture, Principal};
use shop_core::context::RequestContext;
use tokio::time::{Instant, Sleep};
use tonic::{Status, body::Body};
use tower::{Layer, Service};

use crate::streams::{StreamArgs, StreamPermit, Streams};

/// The health Watch method, a stream that no shop proto declares.
const HEALTH_WATCH: &str = "/grpc.health.v1.Health/Watch";
/// Longest a standing check may take before it counts as not answered.
const RECHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// True for a streaming RPC (client, server or bidi streaming): the
/// methods the protos declare so, health Watch and reflection.
pub fn is_streaming(path: &str) -> bool {
    match shop_proto::policy::lookup(path) {
        Some(method) => method.client_streaming || method.server_streaming,
        None => path == HEALTH_WATCH || path.starts_with("/grpc.reflection."),
    }
}

/// What a service knows of an account behind a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Active and still holding every role the token grants.
    Stands,
    /// Suspended, deleted, or no longer holding a role the token grants.
    Revoked,
    /// Could not be told now (a dependency is down); asked again later.
    Unknown,
}

/// Tells whether the account behind a stream still stands as its token
/// says. The check runs inside the stream's request context, so a call to
/// another service carries the stream's own token.
pub trait StreamAuthority: Send + Sync + 'static {
    /// The standing of `principal`'s account.
    fn standing<'a>(&'a self, principal: &'a Principal) -> BoxFuture<'a, Standing>;
}

/// Builds [`StreamLimits`] services.
#[derive(Clone)]
pub struct StreamLimitsLayer {
    streams: Streams,
    idle: Duration,
    lifetime: Duration,
    recheck: Duration,
    authority: Option<Arc<dyn StreamAuthority>>,
}

impl std::fmt::Debug for StreamLimitsLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamLimitsLayer")
            .field("idle", &self.idle)
            .field("lifetime", &self.lifetime)
            .field("recheck", &self.recheck)
            .finish_non_exhaustive()
    }
}

impl StreamLimitsLayer {
    /// Streams admitted into `streams`, bounded by `args`, their accounts'
    /// standing asked of `authority` (none: only token expiry counts).
    pub fn new(
        streams: Streams,
        args: &StreamArgs,
        authority: Option<Arc<dyn StreamAuthority>>,
    ) -> StreamLimitsLayer {
        StreamLimitsLayer {
            streams,
            idle: args.stream_idle_timeout,
            lifetime: args.stream_max_lifetime,
            recheck: args.stream_recheck_interval,
            authority,
        }
    }
}

impl<S> Layer<S> for StreamLimitsLayer {
    type Service = StreamLimits<S>;

    fn layer(&self, inner: S) -> StreamLimits<S> {
        StreamLimits {
            inner,
            layer: self.clone(),
        }
    }
}

/// See the module docs.
#[derive(Debug, Clone)]
pub struct StreamLimits<S> {
    inner: S,
    layer: StreamLimitsLayer,
}

type BoxResponseFuture<E> = Pin<Box<dyn Future<Output = Result<Response<Body>, E>> + Send>>;

impl<S> Service<Request<Body>> for StreamLimits<S>
where
    S: Service<Request<Body>, Response = Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxResponseFuture<S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        if !is_streaming(req.uri().path()) {
            return Box::pin(self.inner.call(req));
        }
        let principal = req.extensions().get::<Principal>().cloned();
        let address = crate::peer::caller_key(req.extensions());
        let caller = match &principal {
            Some(p) => format!("user:{}", p.user_id),
            None => address.clone(),
        };
        let permit = match self.layer.streams.admit(&caller, &address) {
            Ok(permit) => permit,
            Err(refused) => return Box::pin(std::future::ready(Ok(refused.into_http()))),
        };
        let mut watchdog = Watchdog::new(&self.layer, principal, req.extensions());
        let (parts, body) = req.into_parts();
        let body = Body::new(ActiveBody {
            inner: body,
            activity: Arc::clone(&watchdog.activity),
            started: watchdog.started,
        });
        let mut future = Box::pin(self.inner.call(Request::from_parts(parts, body)));
        Box::pin(async move {
            let opened = std::future::poll_fn(|cx| {
                if let Poll::Ready(response) = future.as_mut().poll(cx) {
                    return Poll::Ready(Ok(response));
                }
                watchdog.poll_ended(cx).map(Err)
            })
            .await;
            match opened {
                Ok(response) => {
                    let response = response?;
                    let (parts, body) = response.into_parts();
                    let body = Body::new(GuardedBody {
                        inner: Some(body),
                        watchdog,
                        _permit: permit,
                        ended: false,
                    });
                    Ok(Response::from_parts(parts, body))
                }
                Err(ended) => Ok(ended.into_http()),
            }
        })
    }
}

/// Milliseconds from `started` to now.
fn millis_since(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Watches one stream's time, activity and standing.
struct Watchdog {
    started: Instant,
    /// When the stream last moved a message, in ms after `started`.
    activity: Arc<AtomicU64>,
    idle: Duration,
    /// The end of its lifetime, and how it ends then.
    ends_at: Instant,
    ending: fn() -> Status,
    recheck: Option<Recheck>,
    sleep: Pin<Box<Sleep>>,
}

/// The standing checks of one stream.
struct Recheck {
    authority: Arc<dyn StreamAuthority>,
    principal: Arc<Principal>,
    context: Option<RequestContext>,
    every: Duration,
    next_at: Instant,
    in_flight: Option<BoxFuture<'static, Standing>>,
}

fn lifetime_reached() -> Status {
    Status::unavailable("the stream reached its maximum lifetime; reconnect")
}

fn token_expired() -> Status {
    Status::unauthenticated("the access token that opened this stream expired")
}

impl Watchdog {
    fn new(
        layer: &StreamLimitsLayer,
        principal: Option<Principal>,
        extensions: &http::Extensions,
    ) -> Watchdog {
        let started = Instant::now();
        let mut ends_at = started + layer.lifetime;
        let mut ending: fn() -> Status = lifetime_reached;
        if let Some(p) = &principal {
            let now_unix = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let left = u64::try_from(p.expires_at)
                .unwrap_or(0)
                .saturating_sub(now_unix);
            let expires = started + Duration::from_secs(left);
            if expires < ends_at {
                ends_at = expires;
                ending = token_expired;
            }
        }
        let recheck = match (&layer.authority, principal) {
            (Some(authority), Some(principal)) => Some(Recheck {
                authority: Arc::clone(authority),
                principal: Arc::new(principal),
                context: extensions.get::<RequestContext>().cloned(),
                every: layer.recheck,
                next_at: started + layer.recheck,
                in_flight: None,
            }),
            _ => None,
        };
        Watchdog {
            started,
            activity: Arc::new(AtomicU64::new(0)),
            idle: layer.idle,
            ends_at,
            ending,
            recheck,
            sleep: Box::pin(tokio::time::sleep_until(ends_at)),
        }
    }

    /// True when the lifetime is over or a standing check is due: what can
    /// come while messages flow.
    fn due(&self, now: Instant) -> bool {
        now >= self.ends_at
            || self
                .recheck
                .as_ref()
                .is_some_and(|r| r.in_flight.is_some() || now >= r.next_at)
    }

    /// Ready with the status to end the stream with, once it must end.
    fn poll_ended(&mut self, cx: &mut Context<'_>) -> Poll<Status> {
        loop {
            let now = Instant::now();
            if now >= self.ends_at {
                return Poll::Ready((self.ending)());
            }
            let last = self.started + Duration::from_millis(self.activity.load(Ordering::Relaxed));
            let idle_at = last + self.idle;
            if now >= idle_at {
                return Poll::Ready(Status::deadline_exceeded(format!(
                    "no message moved on this stream for {}",
                    humantime::format_duration(self.idle)
                )));
            }
            let mut wake_at = self.ends_at.min(idle_at);
            if let Some(recheck) = &mut self.recheck {
                if let Some(check) = &mut recheck.in_flight {
                    match check.as_mut().poll(cx) {
                        Poll::Ready(Standing::Revoked) => {
                            return Poll::Ready(Status::permission_denied(
                                "the account that opened this stream no longer holds it",
                            ));
                        }
                        Poll::Ready(_) => {
                            recheck.in_flight = None;
                            recheck.next_at = now + recheck.every;
                        }
                        Poll::Pending => {}
                    }
                } else if now >= recheck.next_at {
                    recheck.in_flight = Some(recheck.start());
                    continue;
                }
                if recheck.in_flight.is_none() {
                    wake_at = wake_at.min(recheck.next_at);
                }
            }
            self.sleep.as_mut().reset(wake_at);
            ready!(self.sleep.as_mut().poll(cx));
        }
    }
}

impl Recheck {
    /// One standing check, in the stream's request context (for the token
    /// and request id) with a fresh deadline.
    fn start(&self) -> BoxFuture<'static, Standing> {
        let authority = Arc::clone(&self.authority);
        let principal = Arc::clone(&self.principal);
        let check = async move {
            match tokio::time::timeout(RECHECK_TIMEOUT, authority.standing(&principal)).await {
                Ok(standing) => standing,
                Err(_) => Standing::Unknown,
            }
        };
        match &self.context {
            Some(ctx) => {
                let mut ctx = ctx.clone();
                ctx.deadline = Instant::now() + RECHECK_TIMEOUT;
                Box::pin(ctx.scope(check))
            }
            None => Box::pin(check),
        }
    }
}

/// A request body that records when a message arrives.
struct ActiveBody {
    inner: Body,
    activity: Arc<AtomicU64>,
    started: Instant,
}

impl HttpBody for ActiveBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && frame.is_data()
        {
            self.activity
                .store(millis_since(self.started), Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The response body of a stream: passes the handler's messages on,
/// records activity, and ends the stream with the watchdog's status (in
/// the trailers) when it must end, dropping the handler's body.
struct GuardedBody {
    inner: Option<Body>,
    watchdog: Watchdog,
    _permit: StreamPermit,
    ended: bool,
}

impl GuardedBody {
    /// Ends the stream with `status` in the trailers, dropping the
    /// handler's body (and with it the stream's producer) now.
    fn end(&mut self, status: Status) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        self.inner = None;
        self.ended = true;
        tracing::info!(code = ?status.code(), reason = status.message(), "stream ended by its limits");
        let mut trailers = HeaderMap::new();
        if status.add_header(&mut trailers).is_err() {
            trailers.insert("grpc-status", http::HeaderValue::from_static("14"));
        }
        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
    }
}

impl HttpBody for GuardedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        // While messages flow the watchdog is asked only when something
        // is due (a lifetime end or a standing check); idleness cannot be.
        if this.watchdog.due(Instant::now())
            && let Poll::Ready(status) = this.watchdog.poll_ended(cx)
        {
            return this.end(status);
        }
        let Some(inner) = &mut this.inner else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(inner).poll_frame(cx);
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if frame.is_data() {
                    this.watchdog
                        .activity
                        .store(millis_since(this.watchdog.started), Ordering::Relaxed);
                } else {
                    this.ended = true;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(other) => {
                this.ended = true;
                Poll::Ready(other)
            }
            Poll::Pending => match this.watchdog.poll_ended(cx) {
                Poll::Ready(status) => this.end(status),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use std::{convert::Infallible, sync::Mutex};

    use http_body_util::BodyExt as _;
    use shop_core::status::grpc_status;
    use tonic::Code;
    use tower::{ServiceExt as _, service_fn};

    use super::*;

    const WATCH: &str = "/shop.order.v1.OrderService/WatchOrder";
    const BATCH: &str = "/shop.order.v1.OrderService/BatchCreateOrders";

    fn args() -> StreamArgs {
        StreamArgs {
            stream_idle_timeout: Duration::from_secs(10),
            stream_max_lifetime: Duration::from_secs(60),
            stream_recheck_interval: Duration::from_secs(5),
            ..StreamArgs::default()
        }
    }

    fn layer(args: &StreamArgs, authority: Option<Arc<dyn StreamAuthority>>) -> StreamLimitsLayer {
        StreamLimitsLayer::new(Streams::new("test", args), args, authority)
    }

    fn principal(expires_in: Duration) -> Principal {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        Principal {
            user_id: "u1".into(),
            roles: vec![shop_auth::Role::Customer],
            token_id: "t".into(),
            expires_at: (now + expires_in).as_secs() as i64,
        }
    }

    fn request(path: &str, body: Body, who: Option<Principal>) -> Request<Body> {
        let mut req = Request::builder()
            .uri(format!("http://t{path}"))
            .body(body)
            .unwrap();
        if let Some(p) = who {
            req.extensions_mut().insert(p);
        }
        req
    }

    /// A body that never ends and never sends.
    struct Silent;

    impl HttpBody for Silent {
        type Data = Bytes;
        type Error = Status;

        fn poll_frame(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
            Poll::Pending
        }
    }

    /// A body that sends a message every `every`, forever.
    struct Chatty {
        every: Pin<Box<tokio::time::Interval>>,
    }

    impl HttpBody for Chatty {
        type Data = Bytes;
        type Error = Status;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
            ready!(self.every.as_mut().poll_tick(cx));
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\0")))))
        }
    }

    fn chatty(every: Duration) -> Body {
        Body::new(Chatty {
            every: Box::pin(tokio::time::interval(every)),
        })
    }

    /// A server-streaming handler whose stream is `body`.
    fn streaming(
        body: fn() -> Body,
    ) -> impl Service<
        Request<Body>,
        Response = Response<Body>,
        Error = Infallible,
        Future = impl Send,
    > + Clone {
        service_fn(move |_req: Request<Body>| async move { Ok(Response::new(body())) })
    }

    /// The status the stream ended with: its trailers' (or headers')
    /// grpc-status, and when, after `started`.
    async fn ending(response: Response<Body>, started: Instant) -> (Code, Duration) {
        if let Some(code) = grpc_status(response.headers()) {
            return (code, started.elapsed());
        }
        let mut body = response.into_body();
        loop {
            let frame = body.frame().await.expect("a frame").expect("no error");
            if let Some(trailers) = frame.trailers_ref() {
                return (grpc_status(trailers).expect("a status"), started.elapsed());
            }
        }
    }

    #[test]
    fn streams_are_told_from_unary_calls() {
        assert!(is_streaming(WATCH));
        assert!(is_streaming(BATCH));
        assert!(is_streaming(HEALTH_WATCH));
        assert!(is_streaming(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
        ));
        assert!(!is_streaming("/shop.user.v1.UserService/GetUser"));
        assert!(!is_streaming("/grpc.health.v1.Health/Check"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_with_nothing_moving_ends_after_the_idle_timeout() {
        let service = layer(&args(), None).layer(streaming(|| Body::new(Silent)));
        let started = Instant::now();
        let response = service
            .oneshot(request(
                WATCH,
                Body::empty(),
                Some(principal(Duration::from_secs(900))),
            ))
            .await
            .unwrap();
        let (code, after) = ending(response, started).await;
        assert_eq!(code, Code::DeadlineExceeded);
        assert_eq!(after.as_secs(), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_stream_ends_at_its_lifetime_with_unavailable() {
        let service = layer(&args(), None).layer(streaming(|| chatty(Duration::from_secs(1))));
        let started = Instant::now();
        let response = service
            .oneshot(request(
                WATCH,
                Body::empty(),
                Some(principal(Duration::from_secs(900))),
            ))
            .await
            .unwrap();
        let (code, after) = ending(response, started).await;
        assert_eq!(code, Code::Unavailable);
        assert_eq!(after.as_secs(), 60);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_ends_when_the_token_that_opened_it_expires() {
        let service = layer(&args(), None).layer(streaming(|| chatty(Duration::from_secs(1))));
        let started = Instant::now();
        let response = service
            .oneshot(request(
                WATCH,
                Body::empty(),
                Some(principal(Duration::from_secs(30))),
            ))
            .await
            .unwrap();
        let (code, after) = ending(response, started).await;
        assert_eq!(code, Code::Unauthenticated);
        assert!((29..=30).contains(&after.as_secs()), "{after:?}");
    }

    /// Stands until told otherwise; counts the checks.
    struct Switch {
        revoked: Mutex<bool>,
        checks: AtomicU64,
    }

    impl StreamAuthority for Switch {
        fn standing<'a>(&'a self, _principal: &'a Principal) -> BoxFuture<'a, Standing> {
            self.checks.fetch_add(1, Ordering::SeqCst);
            let revoked = *self.revoked.lock().unwrap();
            Box::pin(async move {
                if revoked {
                    Standing::Revoked
                } else {
                    Standing::Stands
                }
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_revoked_account_loses_its_stream_within_one_recheck_interval() {
        let switch = Arc::new(Switch {
            revoked: Mutex::new(false),
            checks: AtomicU64::new(0),
        });
        let authority: Arc<dyn StreamAuthority> = switch.clone();
        let service =
            layer(&args(), Some(authority)).layer(streaming(|| chatty(Duration::from_millis(100))));
        let started = Instant::now();
        let response = service
            .oneshot(request(
                WATCH,
                Body::empty(),
                Some(principal(Duration::from_secs(900))),
            ))
            .await
            .unwrap();
        let mut body = response.into_body();
        // Still standing at the first checks: messages keep coming.
        while started.elapsed() < Duration::from_secs(12) {
            let frame = body.frame().await.unwrap().unwrap();
            assert!(frame.is_data());
        }
        assert!(switch.checks.load(Ordering::SeqCst) >= 2);
        *switch.revoked.lock().unwrap() = true;
        let revoked_at = Instant::now();
        let (code, after) = ending(Response::new(body), revoked_at).await;
        assert_eq!(code, Code::PermissionDenied);
        assert!(after <= Duration::from_secs(5), "{after:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_stream_whose_client_goes_quiet_is_ended_before_it_answers() {
        // The handler reads the whole request before it answers, as a
        // client-streaming handler does.
        let handler = service_fn(|req: Request<Body>| async move {
            let _ = req.into_body().collect().await;
            Ok::<_, Infallible>(Response::new(Body::empty()))
        });
        let service = layer(&args(), None).layer(handler);
        let started = Instant::now();
        let response = service
            .oneshot(request(
                BATCH,
                Body::new(Silent),
                Some(principal(Duration::from_secs(900))),
            ))
            .await
            .unwrap();
        let (code, after) = ending(response, started).await;
        assert_eq!(code, Code::DeadlineExceeded);
        assert_eq!(after.as_secs(), 10);
    }

    #[tokio::test]
    async fn streams_take_places_and_give_them_back() {
        let args = StreamArgs {
            stream_max_per_principal: 1,
            ..args()
        };
        let streams = Streams::new("test", &args);
        let service = StreamLimitsLayer::new(streams.clone(), &args, None)
            .layer(streaming(|| Body::new(Silent)));
        let who = principal(Duration::from_secs(900));
        let first = service
            .clone()
            .oneshot(request(WATCH, Body::empty(), Some(who.clone())))
            .await
            .unwrap();
        assert_eq!(streams.active(), 1);
        let second = service
            .clone()
            .oneshot(request(WATCH, Body::empty(), Some(who.clone())))
            .await
            .unwrap();
        assert_eq!(grpc_status(second.headers()), Some(Code::ResourceExhausted));
        // A unary call is not a stream: no place needed.
        let unary = service
            .clone()
            .oneshot(request(
                "/shop.order.v1.OrderService/GetOrder",
                Body::empty(),
                Some(who.clone()),
            ))
            .await
            .unwrap();
        assert_eq!(grpc_status(unary.headers()), None);
        drop(first);
        assert_eq!(streams.active(), 0, "the place came back with the stream");
        let again = service
            .oneshot(request(WATCH, Body::empty(), Some(who)))
            .await
            .unwrap();
        assert_eq!(grpc_status(again.headers()), None);
    }
}
