//! Long-lived streams done once, for every streaming RPC of every service.
//!
//! [`Streams::open`] runs a stream's producer on its own task and hands
//! tonic a stream (`GuardedStream`, private) that:
//!
//! - applies **backpressure**: the producer sends into a bounded channel
//!   and waits while it is full, so a client that stops reading costs at
//!   most `STREAM_BUFFER` messages of memory;
//! - enforces **limits**: at most `STREAM_MAX_PER_PRINCIPAL` open streams
//!   per caller and `STREAM_MAX_PER_PROCESS` in all; beyond them the call is
//!   RESOURCE_EXHAUSTED;
//! - **cancels**: when the client goes away, tonic drops the stream, which
//!   aborts the producer (and whatever it subscribed to) at once;
//! - **drains**: on shutdown every open stream ends with UNAVAILABLE, so
//!   clients reconnect elsewhere and the server can exit within its grace
//!   period (tonic alone would wait for the streams forever);
//! - **contains panics**: a producer that panics ends its stream with
//!   INTERNAL, never with OK and truncated data, and the process goes on.
//!
//! [`guarded`] gives the same panic containment to handlers that return a
//! single response (client streams).

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tonic::Status;

use shop_core::context::RequestContext;

/// Stream settings every shop service shares; flatten it into the
/// service's clap configuration.
#[derive(Debug, Clone, clap::Args)]
pub struct StreamArgs {
    /// Most long-lived streams (server, client or bidi streaming calls) one
    /// caller (a user, or an address for anonymous callers) may have open
    /// at once; more are RESOURCE_EXHAUSTED.
    #[arg(long, env = "STREAM_MAX_PER_PRINCIPAL", default_value_t = 32)]
    pub stream_max_per_principal: usize,

    /// Most streams open at once from one address (an IPv6 /64), whatever
    /// accounts they use; more are RESOURCE_EXHAUSTED.
    #[arg(long, env = "STREAM_MAX_PER_ADDRESS", default_value_t = 128)]
    pub stream_max_per_address: usize,

    /// Most streams open at once in this process; more are
    /// RESOURCE_EXHAUSTED.
    #[arg(long, env = "STREAM_MAX_PER_PROCESS", default_value_t = 20_000)]
    pub stream_max_per_process: usize,

    /// Messages a stream may have queued for a client that is not reading
    /// before the producer waits.
    #[arg(long, env = "STREAM_BUFFER", default_value_t = 16)]
    pub stream_buffer: usize,

    /// A stream on which no message moved either way for this long ends
    /// with DEADLINE_EXCEEDED.
    #[arg(long, env = "STREAM_IDLE_TIMEOUT", default_value = "5m",
          value_parser = humantime::parse_duration)]
    pub stream_idle_timeout: Duration,

    /// A stream ends with UNAVAILABLE (reconnect) after this long, or
    /// with UNAUTHENTICATED when the access token that opened it expires,
    /// whichever comes first.
    #[arg(long, env = "STREAM_MAX_LIFETIME", default_value = "1h",
          value_parser = humantime::parse_duration)]
    pub stream_max_lifetime: Duration,

    /// How often the account behind each stream is checked: a suspended,
    /// deleted or demoted account loses its streams (PERMISSION_DENIED)
    /// within this long.
    #[arg(long, env = "STREAM_RECHECK_INTERVAL", default_value = "30s",
          value_parser = humantime::parse_duration)]
    pub stream_recheck_interval: Duration,
}

impl Default for StreamArgs {
    fn default() -> StreamArgs {
        StreamArgs {
            stream_max_per_principal: 32,
            stream_max_per_address: 128,
            stream_max_per_process: 20_000,
            stream_buffer: 16,
            stream_idle_timeout: Duration::from_secs(300),
            stream_max_lifetime: Duration::from_secs(3600),
            stream_recheck_interval: Duration::from_secs(30),
        }
    }
}

/// The sending half a producer writes to. `send` waits while the client's
/// buffer is full (each wait counted in
/// `grpc_server_stream_backpressure_waits_total` as it starts and timed in
/// `grpc_server_stream_backpressure_wait_seconds` when it ends) and fails
/// once the client has gone away.
#[derive(Debug)]
pub struct StreamSender<T> {
    tx: mpsc::Sender<Slot<T>>,
    service: &'static str,
}

/// What the channel holds. Boxed: tokio's channel allocates its slots in
/// blocks of 32 up front, so an unboxed message (an order with its status
/// alternative is a few hundred bytes) would cost every idle stream several
/// KiB before it sends anything.
type Slot<T> = Box<Result<T, Status>>;

impl<T> Clone for StreamSender<T> {
    fn clone(&self) -> StreamSender<T> {
        StreamSender {
            tx: self.tx.clone(),
            service: self.service,
        }
    }
}

/// The client went away; the producer should stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the client went away")]
pub struct ClientGone;

impl<T> StreamSender<T> {
    /// Sends one message, waiting while the buffer is full.
    pub async fn send(&self, message: T) -> Result<(), ClientGone> {
        let slot = match self.tx.try_send(Box::new(Ok(message))) {
            Ok(()) => return Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(ClientGone),
            Err(mpsc::error::TrySendError::Full(slot)) => slot,
        };
        // The client reads slower than we produce: wait, and say so now
        // (a client that stopped reading may hold us for a long time) and
        // how long when it is over.
        metrics::counter!("grpc_server_stream_backpressure_waits_total", "service" => self.service)
            .increment(1);
        let waiting = std::time::Instant::now();
        let sent = self.tx.send(slot).await.map_err(|_| ClientGone);
        metrics::histogram!("grpc_server_stream_backpressure_wait_seconds", "service" => self.service)
            .record(waiting.elapsed().as_secs_f64());
        sent
    }

    /// Resolves when the client has gone away.
    pub async fn closed(&self) {
        self.tx.closed().await;
    }
}

/// The stream type every streaming handler returns to tonic.
pub type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Shared by every streaming handler of one server: the limits, the
/// shutdown signal and the count of open streams.
#[derive(Clone)]
pub struct Streams {
    inner: Arc<Inner>,
}

struct Inner {
    service: &'static str,
    args: StreamArgs,
    open: AtomicUsize,
    /// Open streams per caller and per address (`user:…` and `addr:…`
    /// keys cannot collide).
    per_key: Mutex<HashMap<String, usize>>,
    drain: watch::Sender<bool>,
}

impl std::fmt::Debug for Streams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Streams")
            .field("service", &self.inner.service)
            .field("active", &self.active())
            .finish_non_exhaustive()
    }
}

impl Streams {
    /// Stream bookkeeping for `service` with `args`.
    pub fn new(service: &'static str, args: &StreamArgs) -> Streams {
        let (drain, _) = watch::channel(false);
        Streams {
            inner: Arc::new(Inner {
                service,
                args: args.clone(),
                open: AtomicUsize::new(0),
                per_key: Mutex::new(HashMap::new()),
                drain,
            }),
        }
    }

    /// How many streams are open now (the active-streams gauge).
    pub fn active(&self) -> usize {
        self.inner.open.load(Ordering::SeqCst)
    }

    /// Ends every open stream with UNAVAILABLE and refuses new ones; call
    /// it when shutdown begins.
    pub fn drain(&self) {
        self.inner.drain.send_replace(true);
    }

    fn draining(&self) -> bool {
        *self.inner.drain.borrow()
    }

    /// Reserves a place for one stream of `caller` (a user, or the address
    /// for anonymous callers) from `address`, or RESOURCE_EXHAUSTED /
    /// UNAVAILABLE. The stream limits layer admits every streaming call.
    pub fn admit(&self, caller: &str, address: &str) -> Result<StreamPermit, Status> {
        if self.draining() {
            return Err(Status::unavailable("server is shutting down; reconnect"));
        }
        let args = &self.inner.args;
        let mut per_key = self
            .inner
            .per_key
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mine = per_key.get(caller).copied().unwrap_or(0);
        if mine >= args.stream_max_per_principal {
            return Err(Status::resource_exhausted(format!(
                "too many open streams for this caller (limit {})",
                args.stream_max_per_principal
            )));
        }
        // An anonymous caller is its address: counted once.
        let same = caller == address;
        let from_address = per_key.get(address).copied().unwrap_or(0);
        if !same && from_address >= args.stream_max_per_address {
            return Err(Status::resource_exhausted(format!(
                "too many open streams from this address (limit {})",
                args.stream_max_per_address
            )));
        }
        let open = self.inner.open.fetch_add(1, Ordering::SeqCst);
        if open >= args.stream_max_per_process {
            self.inner.open.fetch_sub(1, Ordering::SeqCst);
            return Err(Status::resource_exhausted(format!(
                "too many open streams on this server (limit {})",
                args.stream_max_per_process
            )));
        }
        per_key.insert(caller.to_owned(), mine + 1);
        if !same {
            per_key.insert(address.to_owned(), from_address + 1);
        }
        metrics::gauge!("grpc_server_active_streams", "service" => self.inner.service)
            .set((open + 1) as f64);
        tracing::debug!(
            service = self.inner.service,
            caller,
            address,
            active_streams = open + 1,
            "stream opened"
        );
        Ok(StreamPermit {
            streams: self.clone(),
            caller: caller.to_owned(),
            address: (!same).then(|| address.to_owned()),
        })
    }

    /// Opens a server stream: runs `produce` on its own task (inside the
    /// caller's request context) and returns the stream to hand to tonic.
    /// `produce` returns `Err(status)` to end the stream with that status;
    /// `Ok(())` ends it with OK. (Its place among the limits was taken by
    /// the stream limits layer when the call arrived.)
    pub fn open<T, F, Fut>(&self, produce: F) -> Result<ResponseStream<T>, Status>
    where
        T: Send + 'static,
        F: FnOnce(StreamSender<T>) -> Fut,
        Fut: Future<Output = Result<(), Status>> + Send + 'static,
    {
        if self.draining() {
            return Err(Status::unavailable("server is shutting down; reconnect"));
        }
        let (tx, rx) = mpsc::channel(self.inner.args.stream_buffer.max(1));
        let producer = produce(StreamSender {
            tx: tx.clone(),
            service: self.inner.service,
        });
        // Wrapped before it moves into the supervisor, so that aborting the
        // supervisor aborts the producer even if it never got to run.
        let mut producer = AbortOnDrop(match RequestContext::current() {
            Some(ctx) => tokio::spawn(ctx.scope(producer)),
            None => tokio::spawn(producer),
        });
        let mut drain = self.inner.drain.subscribe();
        let supervisor = tokio::spawn(async move {
            let ending = tokio::select! {
                joined = &mut producer.0 => match joined {
                    Ok(Ok(())) => None,
                    Ok(Err(status)) => Some(status),
                    Err(e) if e.is_panic() => {
                        tracing::error!(panic = %panic_message(e.into_panic()), "stream producer panicked");
                        Some(Status::internal("internal error"))
                    }
                    Err(_) => None,
                },
                _ = drain.wait_for(|draining| *draining) => {
                    producer.0.abort();
                    Some(Status::unavailable("server is shutting down; reconnect"))
                }
            };
            if let Some(status) = ending {
                // The client may be gone already; then nobody needs it.
                let _ = tx.send(Box::new(Err(status))).await;
            }
        });
        Ok(Box::pin(GuardedStream {
            rx,
            _supervisor: AbortOnDrop(supervisor),
        }))
    }
}

/// A place for one open stream; released on drop.
#[derive(Debug)]
pub struct StreamPermit {
    streams: Streams,
    caller: String,
    /// The address, when counted apart from the caller.
    address: Option<String>,
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        let inner = &self.streams.inner;
        let mut per_key = inner
            .per_key
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for key in std::iter::once(&self.caller).chain(&self.address) {
            if let Some(count) = per_key.get_mut(key) {
                *count -= 1;
                if *count == 0 {
                    per_key.remove(key);
                }
            }
        }
        drop(per_key);
        let open = inner.open.fetch_sub(1, Ordering::SeqCst) - 1;
        metrics::gauge!("grpc_server_active_streams", "service" => inner.service).set(open as f64);
        tracing::debug!(
            service = inner.service,
            caller = %self.caller,
            active_streams = open,
            "stream closed"
        );
    }
}

/// Aborts a task when dropped, so that dropping a stream stops its
/// producer.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The stream tonic sends from; see the module docs.
struct GuardedStream<T> {
    rx: mpsc::Receiver<Slot<T>>,
    /// Dropped with the stream: aborts the supervisor, whose own
    /// `AbortOnDrop` then aborts the producer.
    _supervisor: AbortOnDrop<()>,
}

impl<T> Stream for GuardedStream<T> {
    type Item = Result<T, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx).map(|slot| slot.map(|boxed| *boxed))
    }
}

/// Runs `work` on its own task and turns a panic into INTERNAL (logged),
/// for handlers that answer once (client streams), so that a bug ends one
/// call with a status instead of a reset connection.
pub async fn guarded<T, Fut>(work: Fut) -> Result<T, Status>
where
    T: Send + 'static,
    Fut: Future<Output = Result<T, Status>> + Send + 'static,
{
    let work = match RequestContext::current() {
        Some(ctx) => tokio::spawn(ctx.scope(work)),
        None => tokio::spawn(work),
    };
    match AbortOnDrop(work).await_result().await {
        Ok(result) => result,
        Err(e) if e.is_panic() => {
            tracing::error!(panic = %panic_message(e.into_panic()), "handler panicked");
            Err(Status::internal("internal error"))
        }
        Err(_) => Err(Status::cancelled("cancelled")),
    }
}

impl<T> AbortOnDrop<T> {
    async fn await_result(mut self) -> Result<T, tokio::task::JoinError> {
        (&mut self.0).await
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned())
}

#[cfg(test)]
mod tests {
    use std::{sync::atomic::AtomicBool, time::Duration};

    use tokio_stream::StreamExt as _;
    use tonic::Code;

    use super::*;

    /// How long a test may wait for something asynchronous to happen.
    const EVENTUALLY: Duration = Duration::from_secs(2);

    fn streams(per_principal: usize, per_process: usize, buffer: usize) -> Streams {
        Streams::new(
            "test",
            &StreamArgs {
                stream_max_per_principal: per_principal,
                stream_max_per_process: per_process,
                stream_buffer: buffer,
                ..StreamArgs::default()
            },
        )
    }

    async fn eventually(what: &str, check: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + EVENTUALLY;
        while !check() {
            assert!(tokio::time::Instant::now() < deadline, "{what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_producer_waits_for_a_slow_reader_and_the_wait_is_measured() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let metrics = recorder.handle();
        let _local = metrics::set_default_local_recorder(&recorder);
        let sample = |name: &str| {
            let prefix = format!(r#"{name}{{service="test"}} "#);
            metrics
                .render()
                .lines()
                .find_map(|l| l.strip_prefix(prefix.as_str()).map(str::to_owned))
                .map_or(0, |v| v.parse::<u64>().unwrap())
        };
        let waits = || sample("grpc_server_stream_backpressure_waits_total");
        let waits_timed = || sample("grpc_server_stream_backpressure_wait_seconds_count");
        let s = streams(4, 4, 1);
        let sent = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&sent);
        let mut stream = s
            .open::<u32, _, _>(|tx| async move {
                for i in 0..3 {
                    tx.send(i).await.ok();
                    counted.fetch_add(1, Ordering::AcqRel);
                }
                Ok(())
            })
            .unwrap();
        // One message fits; the producer then waits for the reader.
        eventually("the first message is sent", || {
            sent.load(Ordering::Acquire) == 1
        })
        .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            sent.load(Ordering::Acquire),
            1,
            "a full buffer holds the producer"
        );
        assert_eq!(waits(), 1, "the wait is counted as it starts");
        assert_eq!(waits_timed(), 0, "and timed when it ends");
        let mut got = Vec::new();
        while let Some(item) = stream.next().await {
            got.push(item.unwrap());
        }
        assert_eq!(got, [0, 1, 2]);
        assert!(waits() >= 1, "{}", metrics.render());
        assert_eq!(waits_timed(), waits(), "{}", metrics.render());
    }

    #[tokio::test]
    async fn messages_then_ok() {
        let s = streams(4, 4, 4);
        let mut stream = s
            .open::<u32, _, _>(|tx| async move {
                for i in 0..3 {
                    tx.send(i).await.ok();
                }
                Ok(())
            })
            .unwrap();
        let mut got = Vec::new();
        while let Some(item) = stream.next().await {
            got.push(item.unwrap());
        }
        assert_eq!(got, [0, 1, 2]);
    }

    #[tokio::test]
    async fn a_producer_error_ends_the_stream_with_it() {
        let s = streams(4, 4, 4);
        let mut stream = s
            .open::<u32, _, _>(|tx| async move {
                tx.send(1).await.ok();
                Err(Status::invalid_argument("bad request inside the stream"))
            })
            .unwrap();
        assert_eq!(stream.next().await.unwrap().unwrap(), 1);
        assert_eq!(
            stream.next().await.unwrap().unwrap_err().code(),
            Code::InvalidArgument
        );
        assert!(stream.next().await.is_none());
    }

    #[tokio::test]
    async fn a_panicking_producer_ends_with_internal_not_ok() {
        let s = streams(4, 4, 4);
        let mut stream = s
            .open::<u32, _, _>(|tx| async move {
                tx.send(1).await.ok();
                tx.send(2).await.ok();
                panic!("bug in the producer");
            })
            .unwrap();
        assert_eq!(stream.next().await.unwrap().unwrap(), 1);
        assert_eq!(stream.next().await.unwrap().unwrap(), 2);
        let end = stream.next().await.unwrap().unwrap_err();
        assert_eq!(end.code(), Code::Internal);
        assert!(
            !end.message().contains("bug"),
            "panic text stays in the log"
        );
        assert!(stream.next().await.is_none());
    }

    #[tokio::test]
    async fn a_client_that_does_not_read_blocks_the_producer_at_the_buffer() {
        let s = streams(4, 4, 4);
        let sent = Arc::new(AtomicUsize::new(0));
        let counter = sent.clone();
        let stream = s
            .open::<u32, _, _>(move |tx| async move {
                for i in 0..10_000u32 {
                    if tx.send(i).await.is_err() {
                        break;
                    }
                    counter.fetch_add(1, Ordering::SeqCst);
                }
                Ok(())
            })
            .unwrap();
        eventually("the producer fills the buffer", || {
            sent.load(Ordering::SeqCst) >= 4
        })
        .await;
        // Give the producer every chance to run ahead; it must not.
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(sent.load(Ordering::SeqCst), 4, "only the buffer was filled");
        drop(stream);
    }

    #[tokio::test]
    async fn dropping_the_stream_stops_the_producer_and_frees_the_place() {
        let s = streams(4, 4, 4);
        struct SetOnDrop(Arc<AtomicBool>);
        impl Drop for SetOnDrop {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let stopped = Arc::new(AtomicBool::new(false));
        let flag = stopped.clone();
        let stream = s
            .open::<u32, _, _>(move |_tx| {
                // Owned by the producer future from the start, so it is
                // dropped with it whether or not the task ever ran.
                let guard = SetOnDrop(flag);
                async move {
                    let _guard = guard;
                    std::future::pending::<()>().await;
                    Ok(())
                }
            })
            .unwrap();
        drop(stream);
        eventually("the producer was dropped", || {
            stopped.load(Ordering::SeqCst)
        })
        .await;
    }

    #[tokio::test]
    async fn limits_per_caller_per_address_and_per_process() {
        let s = Streams::new(
            "test",
            &StreamArgs {
                stream_max_per_principal: 2,
                stream_max_per_address: 3,
                stream_max_per_process: 4,
                ..StreamArgs::default()
            },
        );
        let a1 = s.admit("user:alice", "addr:1").unwrap();
        let _a2 = s.admit("user:alice", "addr:1").unwrap();
        let err = s.admit("user:alice", "addr:2").unwrap_err();
        assert_eq!(err.code(), Code::ResourceExhausted, "per caller");
        let _b1 = s.admit("user:bob", "addr:1").unwrap();
        let err = s.admit("user:carol", "addr:1").unwrap_err();
        assert_eq!(err.code(), Code::ResourceExhausted, "per address");
        assert!(err.message().contains("address"), "{err:?}");
        let _anonymous = s.admit("addr:2", "addr:2").unwrap();
        let err = s.admit("user:dave", "addr:3").unwrap_err();
        assert_eq!(err.code(), Code::ResourceExhausted, "per process");
        assert_eq!(s.active(), 4);
        drop(a1);
        let _c = s.admit("user:dave", "addr:3").expect("a place was freed");
        assert_eq!(s.active(), 4);
    }

    #[tokio::test]
    async fn an_anonymous_caller_is_counted_once_as_its_address() {
        let s = Streams::new(
            "test",
            &StreamArgs {
                stream_max_per_principal: 2,
                stream_max_per_address: 100,
                ..StreamArgs::default()
            },
        );
        let _one = s.admit("addr:9", "addr:9").unwrap();
        let _two = s.admit("addr:9", "addr:9").unwrap();
        assert!(s.admit("addr:9", "addr:9").is_err());
        assert_eq!(s.active(), 2);
    }

    #[tokio::test]
    async fn draining_ends_open_streams_with_unavailable_and_refuses_new_ones() {
        let s = streams(4, 4, 4);
        let mut stream = s
            .open::<u32, _, _>(|_tx| async {
                std::future::pending::<()>().await;
                Ok(())
            })
            .unwrap();
        s.drain();
        let end = tokio::time::timeout(EVENTUALLY, stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap_err();
        assert_eq!(end.code(), Code::Unavailable);
        assert!(stream.next().await.is_none());
        let refused = s.open::<u32, _, _>(|_tx| async { Ok(()) }).err().unwrap();
        assert_eq!(refused.code(), Code::Unavailable);
        let refused = s.admit("user:u", "addr:1").unwrap_err();
        assert_eq!(refused.code(), Code::Unavailable);
    }

    #[tokio::test]
    async fn guarded_turns_a_panic_into_internal() {
        let ok = guarded(async { Ok::<_, Status>(7) }).await.unwrap();
        assert_eq!(ok, 7);
        let err = guarded(async {
            if true {
                panic!("boom");
            }
            Ok::<u32, Status>(0)
        })
        .await
        .unwrap_err();
        assert_eq!(err.code(), Code::Internal);
    }
}
