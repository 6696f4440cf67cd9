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
//!   `STREAM_MAX_LIFETIME`, or with UNAUTHENTICATED when the access token
//!   that opened it expires, whichever comes first.
//! - **Standing**: every `STREAM_RECHECK_INTERVAL` the service's
//!   [`StreamAuthority`] is asked, once per account with open streams,
//!   whether the account is still active and which roles it holds; a
//!   stream whose token grants a role the account no longer holds, or
//!   whose account is suspended or deleted, ends with PERMISSION_DENIED.
//!
//! One sweeper task per server does the watching (every quarter of the
//! shortest of those settings, at most every second), so an idle stream
//! costs a few words of shared state rather than a timer of its own; a
//! stream ends at most one sweep after its limit. Ending a stream drops
//! the handler's response body, which drops the stream's producer (see
//! [`crate::streams`]) and everything it waited on.

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use futures_util::{StreamExt as _, future::Either, task::AtomicWaker};
use http::{HeaderMap, Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use shop_auth::{BoxFuture, Principal, Role};
use shop_core::context::RequestContext;
use shop_proto::policy::MethodPolicy;
use tokio::time::Instant;
use tonic::{Status, body::Body};
use tower::{Layer, Service};

use crate::streams::{StreamArgs, StreamPermit, Streams};

/// The health Watch method, a stream that no shop proto declares.
const HEALTH_WATCH: &str = "/grpc.health.v1.Health/Watch";
/// Longest a standing check may take before it counts as not answered.
const RECHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// Standing checks of one round run at most this many at once.
const RECHECK_CONCURRENCY: usize = 16;

/// True for a streaming RPC (client, server or bidi streaming): the
/// methods the protos declare so, health Watch and reflection.
pub fn is_streaming(path: &str) -> bool {
    streams(shop_proto::policy::lookup(path), path)
}

/// Whether `req` is a call of a streaming RPC (see [`is_streaming`]).
pub(crate) fn is_streaming_call<B>(req: &Request<B>) -> bool {
    streams(super::call_facts::method_of(req), req.uri().path())
}

/// [`is_streaming`] of the method at `path`, whose policy is `method`.
fn streams(method: Option<&MethodPolicy>, path: &str) -> bool {
    match method {
        Some(method) => method.client_streaming || method.server_streaming,
        None => path == HEALTH_WATCH || path.starts_with("/grpc.reflection."),
    }
}

/// What a service knows of the account behind a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// Active, holding these roles.
    Active(Vec<Role>),
    /// Suspended, deleted, or no longer known.
    Gone,
    /// Could not be told now (a dependency is down); asked again later.
    Unknown,
}

impl Standing {
    /// True when a stream opened with `principal`'s token may go on.
    fn allows(&self, principal: &Principal) -> bool {
        match self {
            Standing::Active(roles) => principal.roles.iter().all(|r| roles.contains(r)),
            Standing::Gone => false,
            Standing::Unknown => true,
        }
    }
}

/// Tells how the account behind a stream stands. The check runs inside
/// the request context of one of the account's streams, so a call to
/// another service carries that stream's token.
pub trait StreamAuthority: Send + Sync + 'static {
    /// The standing of `principal`'s account.
    fn standing<'a>(&'a self, principal: &'a Principal) -> BoxFuture<'a, Standing>;
}

/// Builds [`StreamLimits`] services: what they share behind one `Arc`,
/// the one atomic count tonic's per-call clone of the stack pays for it.
#[derive(Clone)]
pub struct StreamLimitsLayer(Arc<StreamLimitsState>);

struct StreamLimitsState {
    streams: Streams,
    /// Shared with the sweeper, which stops when it holds the last count.
    registry: Arc<Registry>,
}

impl std::fmt::Debug for StreamLimitsLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamLimitsLayer")
            .field("idle", &self.0.registry.idle)
            .field("lifetime", &self.0.registry.lifetime)
            .finish_non_exhaustive()
    }
}

impl StreamLimitsLayer {
    /// Streams admitted into `streams`, bounded by `args`, their accounts'
    /// standing asked of `authority` (none: only token expiry counts).
    /// Starts the sweeper; it stops once the last service built from this
    /// layer is dropped and the last of its streams has ended. Call it
    /// inside a tokio runtime.
    pub fn new(
        streams: Streams,
        args: &StreamArgs,
        authority: Option<Arc<dyn StreamAuthority>>,
    ) -> StreamLimitsLayer {
        let registry = Arc::new(Registry {
            idle: args.stream_idle_timeout,
            lifetime: args.stream_max_lifetime,
            recheck: args.stream_recheck_interval,
            authority,
            open: Mutex::new(Vec::new()),
            rechecking: AtomicBool::new(false),
        });
        tokio::spawn(sweep(Arc::clone(&registry)));
        StreamLimitsLayer(Arc::new(StreamLimitsState { streams, registry }))
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
    /// A unary call's own future; a stream's, watched (boxed: streams are
    /// few and long, unary calls many and short).
    type Future = Either<S::Future, BoxResponseFuture<S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        if !is_streaming_call(&req) {
            return Either::Left(self.inner.call(req));
        }
        let principal = crate::layers::auth::principal_in(req.extensions());
        let address = crate::peer::caller_key(req.extensions());
        let caller = match principal {
            Some(p) => format!("user:{}", p.user_id),
            None => address.clone(),
        };
        let permit = match self.layer.0.streams.admit(&caller, &address) {
            Ok(permit) => permit,
            Err(refused) => {
                return Either::Right(Box::pin(std::future::ready(Ok(refused.into_http()))));
            }
        };
        let state = self.layer.0.registry.open(&req);
        let (parts, body) = req.into_parts();
        let body = Body::new(ActiveBody {
            inner: body,
            state: Arc::clone(&state),
        });
        let mut future = Box::pin(self.inner.call(Request::from_parts(parts, body)));
        Either::Right(Box::pin(async move {
            let opened = std::future::poll_fn(|cx| {
                if let Poll::Ready(response) = future.as_mut().poll(cx) {
                    return Poll::Ready(Ok(response));
                }
                state.poll_ended(cx).map(Err)
            })
            .await;
            match opened {
                Ok(response) => {
                    let (parts, body) = response?.into_parts();
                    let body = Body::new(GuardedBody {
                        inner: Some(body),
                        state,
                        _permit: permit,
                    });
                    Ok(Response::from_parts(parts, body))
                }
                Err(ended) => Ok(ended.into_http()),
            }
        }))
    }
}

/// The open streams of one server, and the settings they are held to.
struct Registry {
    idle: Duration,
    lifetime: Duration,
    recheck: Duration,
    authority: Option<Arc<dyn StreamAuthority>>,
    open: Mutex<Vec<Weak<StreamState>>>,
    /// A round of standing checks is under way.
    rechecking: AtomicBool,
}

impl Registry {
    /// Registers the stream `req` opens.
    fn open(&self, req: &Request<Body>) -> Arc<StreamState> {
        let started = Instant::now();
        let mut ends_at = started + self.lifetime;
        let mut expires = false;
        let principal = crate::layers::auth::principal_in(req.extensions());
        if let Some(p) = principal {
            let now_unix = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let left = u64::try_from(p.expires_at)
                .unwrap_or(0)
                .saturating_sub(now_unix);
            let token_ends = started + Duration::from_secs(left);
            if token_ends < ends_at {
                ends_at = token_ends;
                expires = true;
            }
        }
        let account = match (&self.authority, principal) {
            (Some(_), Some(p)) => Some(Account {
                principal: p.clone(),
                context: req.extensions().get::<RequestContext>().cloned(),
            }),
            _ => None,
        };
        let state = Arc::new(StreamState {
            started,
            ends_at,
            expires,
            activity_ms: AtomicU64::new(0),
            account,
            ended: Mutex::new(None),
            has_ended: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        });
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Arc::downgrade(&state));
        state
    }

    /// The streams still open (forgetting the closed ones).
    fn live(&self) -> Vec<Arc<StreamState>> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let mut live = Vec::with_capacity(open.len());
        open.retain(|weak| match weak.upgrade() {
            Some(state) => {
                live.push(state);
                true
            }
            None => false,
        });
        live
    }

    /// How often the sweeper looks.
    fn tick(&self) -> Duration {
        (self.idle.min(self.lifetime).min(self.recheck) / 4)
            .clamp(Duration::from_millis(10), Duration::from_secs(1))
    }
}

/// Watches every open stream of the registry until no service can open
/// another and none is left (a stream outlives the service that opened it
/// when the server is dropped, or when a caller drops its service handle
/// after the call).
async fn sweep(registry: Arc<Registry>) {
    let mut ticks = tokio::time::interval(registry.tick());
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_recheck = Instant::now();
    loop {
        ticks.tick().await;
        let now = Instant::now();
        let live = registry.live();
        if live.is_empty() && Arc::strong_count(&registry) == 1 {
            return;
        }
        for state in &live {
            if let Some(status) = state.over_its_limits(now, registry.idle) {
                state.end(status);
            }
        }
        if registry.authority.is_some() && now >= next_recheck {
            next_recheck = now + registry.recheck;
            if !registry.rechecking.swap(true, Ordering::SeqCst) {
                tokio::spawn(recheck(Arc::clone(&registry), live));
            }
        }
    }
}

/// One round of standing checks: one per account with open streams, then
/// every stream whose token asks for more than the account now has ends.
async fn recheck(registry: Arc<Registry>, live: Vec<Arc<StreamState>>) {
    let Some(authority) = registry.authority.clone() else {
        return;
    };
    let mut by_account: HashMap<String, Vec<Arc<StreamState>>> = HashMap::new();
    for state in live {
        if let Some(account) = &state.account
            && !state.has_ended.load(Ordering::Relaxed)
        {
            by_account
                .entry(account.principal.user_id.clone())
                .or_default()
                .push(state);
        }
    }
    futures_util::stream::iter(by_account.into_values())
        .for_each_concurrent(RECHECK_CONCURRENCY, |streams| {
            let authority = Arc::clone(&authority);
            async move {
                let Some(account) = streams[0].account.as_ref() else {
                    return;
                };
                let standing = account.standing(authority.as_ref()).await;
                for state in &streams {
                    if let Some(account) = &state.account
                        && !standing.allows(&account.principal)
                    {
                        state.end(Status::permission_denied(
                            "the account that opened this stream no longer holds it",
                        ));
                    }
                }
            }
        })
        .await;
    registry.rechecking.store(false, Ordering::SeqCst);
}

/// The account behind a stream: who, and the request context to ask in.
struct Account {
    principal: Principal,
    context: Option<RequestContext>,
}

impl Account {
    /// Asks `authority`, in the stream's request context (for its token
    /// and request id) with a fresh deadline.
    async fn standing(&self, authority: &dyn StreamAuthority) -> Standing {
        let ask = async {
            tokio::time::timeout(RECHECK_TIMEOUT, authority.standing(&self.principal))
                .await
                .unwrap_or(Standing::Unknown)
        };
        match &self.context {
            Some(ctx) => {
                let mut ctx = ctx.clone();
                ctx.deadline = Instant::now() + RECHECK_TIMEOUT;
                ctx.scope(ask).await
            }
            None => ask.await,
        }
    }
}

/// What one open stream shares with the sweeper.
struct StreamState {
    started: Instant,
    /// The end of its lifetime (or of its token's, when `expires`).
    ends_at: Instant,
    expires: bool,
    /// When a message last moved, in ms after `started`.
    activity_ms: AtomicU64,
    /// Set when the service can tell how the account stands.
    account: Option<Account>,
    /// Why the stream must end, once it must.
    ended: Mutex<Option<Status>>,
    has_ended: AtomicBool,
    /// The task serving the stream, woken to end it.
    waker: AtomicWaker,
}

impl StreamState {
    fn moved(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.activity_ms.store(ms, Ordering::Relaxed);
    }

    /// The status to end with when the stream is past a limit at `now`.
    fn over_its_limits(&self, now: Instant, idle: Duration) -> Option<Status> {
        if now >= self.ends_at {
            return Some(if self.expires {
                Status::unauthenticated("the access token that opened this stream expired")
            } else {
                Status::unavailable("the stream reached its maximum lifetime; reconnect")
            });
        }
        let last = self.started + Duration::from_millis(self.activity_ms.load(Ordering::Relaxed));
        (now >= last + idle).then(|| {
            Status::deadline_exceeded(format!(
                "no message moved on this stream for {}",
                humantime::format_duration(idle)
            ))
        })
    }

    /// Ends the stream with `status` (the first reason wins).
    fn end(&self, status: Status) {
        let mut ended = self.ended.lock().unwrap_or_else(|p| p.into_inner());
        if ended.is_none() {
            *ended = Some(status);
            self.has_ended.store(true, Ordering::Release);
            drop(ended);
            self.waker.wake();
        }
    }

    /// Ready with the status to end with, once the stream must end;
    /// otherwise the task is woken when it must.
    fn poll_ended(&self, cx: &mut Context<'_>) -> Poll<Status> {
        if !self.has_ended.load(Ordering::Acquire) {
            self.waker.register(cx.waker());
            if !self.has_ended.load(Ordering::Acquire) {
                return Poll::Pending;
            }
        }
        let ended = self.ended.lock().unwrap_or_else(|p| p.into_inner());
        Poll::Ready(ended.clone().unwrap_or_else(|| Status::cancelled("ended")))
    }
}

/// A request body that records when a message arrives.
struct ActiveBody {
    inner: Body,
    state: Arc<StreamState>,
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
            self.state.moved();
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
/// records activity, and ends the stream with the sweeper's status (in
/// the trailers) when it must end, dropping the handler's body.
struct GuardedBody {
    inner: Option<Body>,
    state: Arc<StreamState>,
    _permit: StreamPermit,
}

impl GuardedBody {
    /// Ends the stream with `status` in the trailers, dropping the
    /// handler's body (and with it the stream's producer) now.
    fn end(&mut self, status: Status) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        self.inner = None;
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
        let Some(inner) = &mut this.inner else {
            return Poll::Ready(None);
        };
        if let Poll::Ready(status) = this.state.poll_ended(cx) {
            return this.end(status);
        }
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if frame.is_data() {
                    this.state.moved();
                } else {
                    this.inner = None;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(other) => {
                this.inner = None;
                Poll::Ready(other)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

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
            req.extensions_mut().insert(Arc::new(p));
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
            std::task::ready!(self.every.as_mut().poll_tick(cx));
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
        assert!((10..=11).contains(&after.as_secs()), "{after:?}");
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
        assert!((60..=61).contains(&after.as_secs()), "{after:?}");
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
        assert!((29..=31).contains(&after.as_secs()), "{after:?}");
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
                    Standing::Active(vec![])
                } else {
                    Standing::Active(vec![shop_auth::Role::Customer])
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
        assert!(
            after <= Duration::from_secs(6),
            "within one interval and a sweep: {after:?}"
        );
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
        assert!((10..=11).contains(&after.as_secs()), "{after:?}");
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
