//! The write lane: handlers of calls that change state run on threads of
//! their own, at a lower OS priority than the threads serving everything
//! else, so that reads are not queued behind writes for the CPU.
//!
//! On a busy core a read waits for whatever is running, and a write (a
//! CreateOrder is three services, three transactions and a hundred times a
//! cached read's CPU) is most of what runs: in the benchmark's mix at half
//! its peak, GetOrder's p99 was 12 to 22 ms with writes and 0.6 ms without
//! (docs/performance.md). Giving the writes' threads a higher nice value
//! lets the kernel run a woken read ahead of them, without starving them:
//!
//! - **Which calls move:** unary methods that a shop proto does not declare
//!   `NO_SIDE_EFFECTS` (the `idempotency_level` the retry policy reads
//!   too). Reads, streams, and paths no shop proto declares (health,
//!   reflection) stay on the serving threads.
//! - **What moves:** only the handler, the future below this layer. Frames,
//!   auth, limits and the access line stay on the serving threads; the
//!   handler runs in the call's span and request context (deadline, token,
//!   request id, trace), as it would inline.
//! - **The lane:** a tokio runtime with as many workers as CPUs, started
//!   with the server and stopped with it. Its threads, the blocking pool
//!   included (a SQLite `COMMIT`, bcrypt), are `WRITE_LANE_NICE` lower in
//!   priority (default 10: Linux's scheduler gives a nice-10 thread about a
//!   tenth of a nice-0 thread's share of a contended core, weights 110 and
//!   1024). An idle core runs them at full speed: only contention orders
//!   them. 0 turns the lane off (handlers run on the serving threads). On
//!   systems other than Linux, where a nice value is not per thread, the
//!   lane runs at the serving threads' priority.
//! - **Cancellation:** dropping the call (the client went away, the
//!   deadline passed) aborts the handler's task, as dropping it inline
//!   would.
//! - **Panics** resurface in the call's future, for the panic guard.
//! - **Metrics:** `/metrics` shows the lane's runtime as the
//!   `shop_runtime_*` gauges labelled `runtime="writes"` ([`record_metrics`]):
//!   writes queued for a lane thread there mean the serving threads are
//!   keeping the writes from the CPU.
//! - **Outgoing calls:** a client connection made by a call in the lane
//!   (shop-client connects on first use) runs its task there too; in
//!   order-service, whose calls to user-service and inventory-service are
//!   nearly all a CreateOrder's or a CancelOrder's, that keeps a write's
//!   calls on its own threads.
//! - **Cost:** two wake-ups across threads per write (the handler's start
//!   and its answer): measured at 4,708 against 4,298 CreateOrders a
//!   second on SQLite at saturation (-9%), about 20 µs of CPU per order
//!   over the two services whose writes move (docs/performance.md).

use std::{
    future::Future,
    num::NonZeroUsize,
    pin::Pin,
    sync::{
        Arc, Mutex, PoisonError, Weak,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, ready},
};

use futures_util::future::Either;
use http::{Request, Response};
use shop_core::context::RequestContext;
use shop_proto::policy::{self, Idempotency, MethodPolicy};
use tokio::{
    runtime::{Handle, Runtime},
    task::JoinHandle,
};
use tonic::{Status, body::Body};
use tower::{Layer, Service};
use tracing::Instrument as _;

/// The name of the lane's threads (`top -H`, `perf`).
pub const THREAD_NAME: &str = "shop-writes";

/// The lanes of this process that have not stopped, for [`record_metrics`].
static LANES: Mutex<Vec<Weak<Lane>>> = Mutex::new(Vec::new());

/// Records the runtime gauges of this process's write lanes (summed; zeros
/// when there is none) as `shop_runtime_*{runtime="writes"}`. The admin
/// endpoint calls it before each render, beside the serving runtime's.
pub fn record_metrics() {
    let handles: Vec<Handle> = {
        let mut lanes = LANES.lock().unwrap_or_else(PoisonError::into_inner);
        lanes.retain(|lane| lane.strong_count() > 0);
        lanes
            .iter()
            .filter_map(Weak::upgrade)
            .map(|lane| lane.handle.clone())
            .collect()
    };
    shop_telemetry::record_runtime_metrics("writes", handles.iter().map(Handle::metrics));
}

/// Whether a call to `path` runs in the write lane: a unary method that
/// its proto does not declare free of side effects.
pub fn moves(path: &str) -> bool {
    moves_method(policy::lookup(path))
}

/// [`moves`] for a method whose policy is `method`.
fn moves_method(method: Option<&MethodPolicy>) -> bool {
    method.is_some_and(|m| {
        !m.client_streaming && !m.server_streaming && m.idempotency != Idempotency::NoSideEffects
    })
}

/// Builds [`WriteLane`] services sharing one lane (one runtime). Cheap to
/// clone; the lane stops when the last clone, the services built from it
/// and the calls in it are dropped.
#[derive(Debug, Clone)]
pub struct WriteLaneLayer {
    lane: Option<Arc<Lane>>,
}

impl WriteLaneLayer {
    /// A lane whose threads are `nice` lower in priority than the calling
    /// process's (0: no lane, handlers run where they are called). A lane
    /// that cannot be started (no thread to be had) is logged and left out.
    pub fn new(nice: u8) -> WriteLaneLayer {
        if nice == 0 {
            return WriteLaneLayer { lane: None };
        }
        match Lane::start(nice) {
            Ok(lane) => {
                let lane = Arc::new(lane);
                LANES
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(Arc::downgrade(&lane));
                WriteLaneLayer { lane: Some(lane) }
            }
            Err(error) => {
                tracing::warn!(%error, "write lane not started; writes run on the serving threads");
                WriteLaneLayer { lane: None }
            }
        }
    }
}

impl<S> Layer<S> for WriteLaneLayer {
    type Service = WriteLane<S>;

    fn layer(&self, inner: S) -> WriteLane<S> {
        WriteLane {
            inner,
            lane: self.lane.clone(),
        }
    }
}

/// The runtime of the lane, shut down (without waiting for its tasks) when
/// dropped.
#[derive(Debug)]
struct Lane {
    handle: Handle,
    runtime: Option<Runtime>,
}

impl Lane {
    fn start(nice: u8) -> std::io::Result<Lane> {
        let workers = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
        let warned = AtomicBool::new(false);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .thread_name(THREAD_NAME)
            .enable_all()
            .on_thread_start(move || lower_priority(nice, &warned))
            .build()?;
        Ok(Lane {
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
        })
    }
}

impl Drop for Lane {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            // Dropping a runtime blocks, which an async context forbids;
            // every call using it is gone by now.
            runtime.shutdown_background();
        }
    }
}

/// Raises the calling thread's nice value by `nice` (Linux: nice values
/// are per thread). A failure (a sandbox that forbids `setpriority`) is
/// logged by the lane's first thread that meets it, not by every one.
#[cfg(target_os = "linux")]
fn lower_priority(nice: u8, warned: &AtomicBool) {
    use rustix::{process, thread};
    let tid = Some(thread::gettid());
    let lowered = process::getpriority_process(tid)
        .and_then(|now| process::setpriority_process(tid, now.saturating_add(i32::from(nice))));
    if let Err(error) = lowered
        && !warned.swap(true, Ordering::Relaxed)
    {
        tracing::warn!(%error, "write lane threads left at the serving threads' priority");
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority(_nice: u8, _warned: &AtomicBool) {}

/// See [`WriteLaneLayer`].
#[derive(Debug, Clone)]
pub struct WriteLane<S> {
    inner: S,
    lane: Option<Arc<Lane>>,
}

impl<S, B> Service<Request<B>> for WriteLane<S>
where
    S: Service<Request<B>, Response = Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Either<S::Future, InLane<S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let Some(lane) = self
            .lane
            .as_ref()
            .filter(|_| moves_method(super::call_facts::method_of(&req)))
        else {
            return Either::Left(self.inner.call(req));
        };
        // The context layer's task-local does not cross to another task;
        // it left a copy in the request.
        let context = req.extensions().get::<RequestContext>().cloned();
        let handler = self.inner.call(req).in_current_span();
        let task = lane.handle.spawn(async move {
            match context {
                Some(context) => context.scope(handler).await,
                None => handler.await,
            }
        });
        Either::Right(InLane {
            task,
            _lane: lane.clone(),
        })
    }
}

/// A handler's answer from the write lane; dropping it aborts the handler.
#[derive(Debug)]
pub struct InLane<E> {
    task: JoinHandle<Result<Response<Body>, E>>,
    /// The lane runs while a call is in it, even when the service that
    /// put it there is gone (`oneshot` drops it once called).
    _lane: Arc<Lane>,
}

impl<E> Future for InLane<E> {
    type Output = Result<Response<Body>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(match ready!(Pin::new(&mut self.task).poll(cx)) {
            Ok(answer) => answer,
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            // Aborted only with the lane itself, when the server stops.
            Err(_) => Ok(Status::unavailable("the service is stopping").into_http()),
        })
    }
}

impl<E> Drop for InLane<E> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use std::{convert::Infallible, time::Duration};

    use shop_core::context::RequestContext;
    use tokio::time::Instant;
    use tonic::Code;
    use tower::{ServiceExt as _, service_fn};

    use super::*;

    const CREATE_ORDER: &str = "/shop.order.v1.OrderService/CreateOrder";
    const GET_ORDER: &str = "/shop.order.v1.OrderService/GetOrder";
    const WATCH_ORDER: &str = "/shop.order.v1.OrderService/WatchOrder";

    fn request(path: &str) -> Request<Body> {
        let mut req = Request::builder().uri(path).body(Body::empty()).unwrap();
        let context = RequestContext::from_headers(
            req.headers(),
            http::HeaderValue::from_static("req-1"),
            Instant::now() + Duration::from_secs(5),
        );
        req.extensions_mut().insert(context);
        req
    }

    /// Where the handler ran: its thread's name, its nice value, and the
    /// request id of the request context it saw.
    #[derive(Debug)]
    struct Seen {
        thread: Option<String>,
        nice: Option<i32>,
        request_id: Option<String>,
    }

    fn nice_here() -> Option<i32> {
        #[cfg(target_os = "linux")]
        return rustix::process::getpriority_process(Some(rustix::thread::gettid())).ok();
        #[cfg(not(target_os = "linux"))]
        None
    }

    async fn seen_by_handler(layer: &WriteLaneLayer, path: &str) -> Seen {
        let (tx, rx) = std::sync::mpsc::channel();
        let service = layer.layer(service_fn(move |_req: Request<Body>| {
            let tx = tx.clone();
            async move {
                tx.send(Seen {
                    thread: std::thread::current().name().map(str::to_owned),
                    nice: nice_here(),
                    request_id: RequestContext::current().map(|c| c.request_id().to_owned()),
                })
                .unwrap();
                Ok::<_, Infallible>(Response::new(Body::empty()))
            }
        }));
        service.oneshot(request(path)).await.unwrap();
        rx.recv().unwrap()
    }

    #[test]
    fn only_unary_methods_with_side_effects_move() {
        assert!(moves(CREATE_ORDER));
        assert!(moves("/shop.order.v1.OrderService/CancelOrder"));
        assert!(moves("/shop.auth.v1.AuthService/Login"));
        assert!(!moves(GET_ORDER));
        assert!(!moves("/shop.user.v1.UserService/GetUser"));
        assert!(!moves(WATCH_ORDER), "streams stay");
        assert!(
            !moves("/grpc.health.v1.Health/Check"),
            "undeclared paths stay"
        );
    }

    #[tokio::test]
    async fn a_write_runs_in_the_lane_at_lower_priority_in_its_request_context() {
        let layer = WriteLaneLayer::new(7);
        let seen = seen_by_handler(&layer, CREATE_ORDER).await;
        assert_eq!(seen.thread.as_deref(), Some(THREAD_NAME));
        assert_eq!(seen.request_id.as_deref(), Some("req-1"));
        if cfg!(target_os = "linux") {
            let here = nice_here().unwrap();
            assert_eq!(seen.nice, Some((here + 7).min(19)));
        }
    }

    #[tokio::test]
    async fn a_read_runs_where_it_is_called() {
        let layer = WriteLaneLayer::new(7);
        let seen = seen_by_handler(&layer, GET_ORDER).await;
        assert_ne!(seen.thread.as_deref(), Some(THREAD_NAME));
        assert_eq!(seen.nice, nice_here());
    }

    #[tokio::test]
    async fn nice_zero_means_no_lane() {
        let layer = WriteLaneLayer::new(0);
        let seen = seen_by_handler(&layer, CREATE_ORDER).await;
        assert_ne!(seen.thread.as_deref(), Some(THREAD_NAME));
    }

    #[tokio::test]
    async fn dropping_the_call_aborts_the_handler() {
        let started = Arc::new(tokio::sync::Notify::new());
        let finished = Arc::new(AtomicBool::new(false));
        let service = {
            let (started, finished) = (started.clone(), finished.clone());
            WriteLaneLayer::new(5).layer(service_fn(move |_req: Request<Body>| {
                let (started, finished) = (started.clone(), finished.clone());
                async move {
                    started.notify_one();
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    finished.store(true, Ordering::SeqCst);
                    Ok::<_, Infallible>(Response::new(Body::empty()))
                }
            }))
        };
        let call = tokio::spawn(service.oneshot(request(CREATE_ORDER)));
        started.notified().await;
        call.abort();
        assert!(call.await.unwrap_err().is_cancelled());
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            !finished.load(Ordering::SeqCst),
            "the handler ran on after its call was dropped"
        );
    }

    #[tokio::test]
    async fn a_call_keeps_the_lane_running_when_its_service_is_gone() {
        // `oneshot` drops the service (and with it the last layer's share
        // of the lane) as soon as it has called it.
        let service = WriteLaneLayer::new(5).layer(service_fn(|_req: Request<Body>| async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok::<_, Infallible>(Response::new(Body::empty()))
        }));
        let answer = tokio::time::timeout(
            Duration::from_secs(10),
            service.oneshot(request(CREATE_ORDER)),
        )
        .await
        .expect("the call finished")
        .unwrap();
        assert_eq!(
            Status::from_header_map(answer.headers()).map(|status| status.code()),
            None,
            "the handler's answer, not the lane's stopping"
        );
    }

    #[tokio::test]
    async fn the_scrape_counts_the_lanes_threads_and_the_writes_in_them() {
        let (release, parked) = tokio::sync::oneshot::channel::<()>();
        let parked = Arc::new(Mutex::new(Some(parked)));
        let started = Arc::new(tokio::sync::Notify::new());
        let service = {
            let started = started.clone();
            WriteLaneLayer::new(5).layer(service_fn(move |_req: Request<Body>| {
                let (parked, started) = (parked.lock().unwrap().take(), started.clone());
                async move {
                    started.notify_one();
                    let _ = parked.unwrap().await;
                    Ok::<_, Infallible>(Response::new(Body::empty()))
                }
            }))
        };
        let call = tokio::spawn(service.oneshot(request(CREATE_ORDER)));
        tokio::time::timeout(Duration::from_secs(10), started.notified())
            .await
            .expect("the write reached its handler");

        record_metrics();
        let text = shop_telemetry::prometheus().render();
        let writes = |name: &str| {
            let series = format!(r#"{name}{{runtime="writes"}} "#);
            text.lines()
                .find_map(|line| line.strip_prefix(&series)?.parse::<f64>().ok())
        };
        let cpus = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
        // Other tests' lanes may be alive too: at least this one's.
        assert!(
            writes("shop_runtime_workers").unwrap() >= cpus as f64,
            "{text}"
        );
        assert!(writes("shop_runtime_alive_tasks").unwrap() >= 1.0, "{text}");
        release.send(()).unwrap();
        call.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_panic_in_the_lane_reaches_the_panic_guard() {
        let service = crate::layers::protect::PanicGuardLayer.layer(WriteLaneLayer::new(5).layer(
            service_fn(|_req: Request<Body>| async move {
                if true {
                    panic!("handler bug");
                }
                Ok::<_, Infallible>(Response::new(Body::empty()))
            }),
        ));
        let answer = service.oneshot(request(CREATE_ORDER)).await.unwrap();
        let status = Status::from_header_map(answer.headers()).unwrap();
        assert_eq!(status.code(), Code::Internal);
    }
}
