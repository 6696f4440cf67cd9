//! Responses that are ready together leave in one write.
//!
//! hyper serves each HTTP/2 stream on a task of its own, and every frame
//! of the connection is written from the connection's task. A stream's
//! task that has its response ready wakes the connection's task, and
//! tokio runs a task woken that way next, before the tasks already
//! queued (its LIFO slot). So when many calls arrive in one read, the
//! connection's task writes the first response alone, then the second:
//! one `writev` a call (1.04 a call for bare tonic and for user-service
//! under h2load), each through the kernel's TCP stack and each waking the
//! client.
//!
//! [`Coalesced`] holds a connection's first write after a flush back for
//! one turn of the scheduler: it has the connection's task woken at once
//! and answers `Pending`, so that the task goes to the back of the queue,
//! the streams' tasks queued before it put their responses in, and its
//! next poll writes them together. A call that arrives alone pays one
//! more poll of its connection and no wait, nothing else being queued.
//! `COALESCE_WRITES=false` writes each as soon as it is ready
//! (docs/performance.md, "Responses ready together in one write").
//!
//! It wraps the stream the server speaks HTTP/2 on, over TLS when there is
//! TLS: beneath TLS, rustls would accept the held write into its own
//! buffer and the task would not yield.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll, ready},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// A connection whose first write after each flush waits for the tasks
/// queued before it (see the module docs).
#[derive(Debug)]
pub struct Coalesced<IO> {
    io: IO,
    /// Whether writes are held back at all (`COALESCE_WRITES`).
    enabled: bool,
    /// Whether a write has already been held back since the last flush.
    held: bool,
}

impl<IO> Coalesced<IO> {
    /// `io`, with its writes held back when `enabled`.
    pub fn new(io: IO, enabled: bool) -> Self {
        Self {
            io,
            enabled,
            held: false,
        }
    }

    /// `Pending` for the first write since the last flush, with the task
    /// woken so that it is polled again after the tasks queued before it;
    /// `Ready` for every other.
    fn hold_first_write(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.enabled && !self.held {
            self.held = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        Poll::Ready(())
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Coalesced<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Coalesced<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.hold_first_write(cx));
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        ready!(self.hold_first_write(cx));
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let flushed = ready!(Pin::new(&mut self.io).poll_flush(cx));
        self.held = false;
        Poll::Ready(flushed)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl<IO: Connected> Connected for Coalesced<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{
            Arc,
            atomic::{AtomicUsize, Ordering},
        },
        time::Duration,
    };

    use tokio::{
        net::{TcpListener, TcpStream},
        runtime::{Builder, Runtime},
    };
    use tonic::transport::{Endpoint, server::TcpConnectInfo};
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

    use super::*;

    /// A TCP stream that counts the writes that went through it.
    struct CountedWrites {
        io: TcpStream,
        writes: Arc<AtomicUsize>,
    }

    impl CountedWrites {
        fn count<T>(&self, written: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
            if let Poll::Ready(Ok(_)) = written {
                self.writes.fetch_add(1, Ordering::Relaxed);
            }
            written
        }
    }

    impl AsyncRead for CountedWrites {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for CountedWrites {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let written = Pin::new(&mut self.io).poll_write(cx, buf);
            self.count(written)
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let written = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
            self.count(written)
        }

        fn is_write_vectored(&self) -> bool {
            self.io.is_write_vectored()
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_shutdown(cx)
        }
    }

    impl Connected for CountedWrites {
        type ConnectInfo = TcpConnectInfo;

        fn connect_info(&self) -> TcpConnectInfo {
            self.io.connect_info()
        }
    }

    /// A tonic server (the health service) on a runtime of one worker
    /// thread, as on a one-core pod, its connections `Coalesced` or not;
    /// returns its address and its count of writes.
    fn serve(coalesce: bool) -> (Runtime, std::net::SocketAddr, Arc<AtomicUsize>) {
        let server = Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = server.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let writes = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&writes);
        let incoming = futures_util::stream::unfold(listener, move |listener| {
            let writes = Arc::clone(&counter);
            async move {
                let (io, _) = listener.accept().await.ok()?;
                let connection = Coalesced::new(CountedWrites { io, writes }, coalesce);
                Some((Ok::<_, io::Error>(connection), listener))
            }
        });
        let (_, health) = tonic_health::server::health_reporter();
        server.spawn(
            tonic::transport::Server::builder()
                .add_service(health)
                .serve_with_incoming(incoming),
        );
        (server, addr, writes)
    }

    /// The writes the server made to answer `calls` health checks that
    /// reached it together on one connection.
    fn writes_to_answer_a_burst(calls: usize, coalesce: bool) -> usize {
        let (server, addr, writes) = serve(coalesce);
        let client = Builder::new_current_thread().enable_all().build().unwrap();
        client.block_on(async {
            let channel = Endpoint::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect()
                .await
                .unwrap();
            let mut health = HealthClient::new(channel);
            health
                .check(HealthCheckRequest::default())
                .await
                .expect("the connection is up");
            // The server's one thread is held while the burst is sent, so
            // that the calls are all there when it reads.
            let (holding, held) = std::sync::mpsc::channel();
            server.spawn(async move {
                holding.send(()).unwrap();
                std::thread::sleep(Duration::from_millis(300));
            });
            held.recv().unwrap();
            let before = writes.load(Ordering::Relaxed);
            let answers = futures_util::future::join_all((0..calls).map(|_| {
                let mut health = health.clone();
                async move { health.check(HealthCheckRequest::default()).await }
            }))
            .await;
            assert!(answers.iter().all(Result::is_ok), "every call answered");
            writes.load(Ordering::Relaxed) - before
        })
    }

    #[test]
    fn responses_to_calls_that_arrived_together_leave_in_a_few_writes() {
        let calls = 32;
        let coalesced = writes_to_answer_a_burst(calls, true);
        let one_by_one = writes_to_answer_a_burst(calls, false);
        eprintln!("{calls} calls: {coalesced} writes coalesced, {one_by_one} not");
        assert!(
            coalesced <= calls / 8,
            "{coalesced} writes for {calls} responses"
        );
        // What the module is for: without it, nearly a write a response.
        assert!(
            one_by_one >= calls / 2,
            "{one_by_one} writes for {calls} responses, not coalesced"
        );
    }
}
