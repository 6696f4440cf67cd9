//! Accepting connections, at most `MAX_CONNECTIONS` at once.
//!
//! tonic accepts every connection it is offered, and each one costs file
//! descriptors, buffers and (with TLS) a handshake, so a client that opens
//! connections without end exhausts the process. Here a connection takes a
//! permit when it is accepted, before any TLS handshake, and gives it back
//! when it closes; one accepted over the limit is closed at once (the
//! client sees the connection reset and, being a gRPC client, backs off
//! and retries), counted in `grpc_server_connections_refused_total`. The
//! open ones are the `grpc_server_open_connections` gauge.
//!
//! A connection is also closed here, by force, once it has lived
//! `MAX_CONNECTION_AGE` plus `MAX_CONNECTION_AGE_GRACE`. tonic asks it to
//! go (GOAWAY) at `MAX_CONNECTION_AGE`, but only when it is given no grace:
//! with one, tonic 0.14 skips the GOAWAY and only closes at age + grace.
//! So tonic gets the age alone and the grace is enforced here.

use std::{
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use futures_util::{Stream, StreamExt as _};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore, mpsc},
    time::Sleep,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::{args::ServerArgs, coalesce::Coalesced};

/// How long accepting pauses after the listener fails (out of file
/// descriptors, say), so that the failure is not a busy loop.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// One accepted connection holding its place among the open ones, until
/// it closes or its time is up.
#[derive(Debug)]
pub struct Limited<IO> {
    io: IO,
    info: ConnectionInfo,
    _permit: OpenConnection,
    closes_at: Pin<Box<Sleep>>,
}

/// What each request served on an accepted connection knows of it (tonic
/// puts it in the request's extensions): its addresses, and what is
/// shared by every call on that one connection. Read the caller's address
/// with `crate::peer::peer_addr`: `tonic::Request::remote_addr` knows
/// only tonic's own `TcpConnectInfo`.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    tcp: TcpConnectInfo,
    request_id_name_sent: Arc<AtomicBool>,
}

impl ConnectionInfo {
    /// A connection with `tcp`'s addresses, as it is accepted.
    pub(crate) fn new(tcp: TcpConnectInfo) -> ConnectionInfo {
        ConnectionInfo {
            tcp,
            request_id_name_sent: Arc::default(),
        }
    }

    /// The caller's address.
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        self.tcp.remote_addr()
    }

    /// True for the first call on this connection that asks: the one
    /// whose answer carries its `x-request-id` where HPACK may index it,
    /// so that the header's name is in the connection's tables for every
    /// later answer (see `crate::layers::observe`).
    pub fn first_to_send_request_id_name(&self) -> bool {
        !self.request_id_name_sent.load(Ordering::Relaxed)
            && !self.request_id_name_sent.swap(true, Ordering::Relaxed)
    }
}

impl<IO> Limited<IO> {
    /// An error once the connection's time is up; the server is always
    /// reading, so the timer wakes it then.
    fn poll_time_up(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        match self.closes_at.as_mut().poll(cx) {
            Poll::Ready(()) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the connection outlived MAX_CONNECTION_AGE and its grace",
            )),
            Poll::Pending => Ok(()),
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Limited<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.poll_time_up(cx)?;
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Limited<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_time_up(cx)?;
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
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

impl Connected for Limited<TcpStream> {
    type ConnectInfo = ConnectionInfo;

    fn connect_info(&self) -> ConnectionInfo {
        self.info.clone()
    }
}

/// A place among the open connections; the gauge follows it.
#[derive(Debug)]
struct OpenConnection {
    permit: Option<OwnedSemaphorePermit>,
    limit: Arc<Semaphore>,
    max: usize,
    service: &'static str,
}

impl OpenConnection {
    fn record(&self) {
        let open = self.max - self.limit.available_permits();
        metrics::gauge!("grpc_server_open_connections", "service" => self.service).set(open as f64);
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        drop(self.permit.take());
        self.record();
    }
}

/// The connections `listener` accepts, each holding one of `max` places
/// for as long as it is open and closed by force after `lifetime`; with
/// every place taken, a new connection is closed as soon as it is
/// accepted. Accepting stops when the stream is dropped.
pub fn accept(
    listener: TcpListener,
    max: usize,
    lifetime: Duration,
    service: &'static str,
) -> impl Stream<Item = (Limited<TcpStream>, SocketAddr)> + Send + Unpin + 'static {
    let limit = Arc::new(Semaphore::new(max));
    // Room for a burst of accepted connections waiting to be served.
    let (sender, receiver) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = sender.closed() => return,
            };
            let (tcp, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(ACCEPT_RETRY).await;
                    continue;
                }
            };
            let Ok(permit) = Arc::clone(&limit).try_acquire_owned() else {
                metrics::counter!("grpc_server_connections_refused_total", "service" => service)
                    .increment(1);
                tracing::debug!(%peer, max, "connection refused: MAX_CONNECTIONS are open");
                drop(tcp);
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let open = OpenConnection {
                permit: Some(permit),
                limit: Arc::clone(&limit),
                max,
                service,
            };
            open.record();
            let connection = Limited {
                info: ConnectionInfo::new(tcp.connect_info()),
                io: tcp,
                _permit: open,
                closes_at: Box::pin(tokio::time::sleep(lifetime)),
            };
            if sender.send((connection, peer)).await.is_err() {
                return;
            }
        }
    });
    ReceiverStream::new(receiver)
}

/// [`accept`] with the limits `args` sets: `MAX_CONNECTIONS` places, and a
/// lifetime of `MAX_CONNECTION_AGE` plus `MAX_CONNECTION_AGE_GRACE`.
pub fn accept_configured(
    listener: TcpListener,
    args: &ServerArgs,
    service: &'static str,
) -> impl Stream<Item = (Limited<TcpStream>, SocketAddr)> + Send + Unpin + 'static + use<> {
    accept(
        listener,
        args.max_connections as usize,
        args.max_connection_age + args.max_connection_age_grace,
        service,
    )
}

/// The connections `Server::serve` serves over plain TCP: accepted as
/// [`accept_configured`] says, their writes coalesced as
/// `COALESCE_WRITES` says. Benchmarks serve the stack through this too,
/// so they measure the connections services have.
pub fn plain_incoming(
    listener: TcpListener,
    args: &ServerArgs,
    service: &'static str,
) -> impl Stream<Item = io::Result<Coalesced<Limited<TcpStream>>>> + Send + Unpin + 'static + use<>
{
    let coalesce = args.coalesce_writes;
    accept_configured(listener, args, service)
        .map(move |(connection, _peer)| Ok(Coalesced::new(connection, coalesce)))
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt as _;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    /// True when the server closed `client` (end of stream or reset).
    async fn closed(client: &mut TcpStream) -> bool {
        let mut byte = [0u8; 1];
        matches!(
            tokio::time::timeout(Duration::from_secs(5), client.read(&mut byte)).await,
            Ok(Ok(0) | Err(_))
        )
    }

    #[tokio::test]
    async fn connections_over_the_limit_are_closed_and_places_come_back() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut accepted = accept(listener, 2, Duration::from_secs(3600), "test");

        let mut first = TcpStream::connect(addr).await.unwrap();
        let (mut served_first, _) = accepted.next().await.unwrap();
        let _second = TcpStream::connect(addr).await.unwrap();
        let (served_second, _) = accepted.next().await.unwrap();

        let mut third = TcpStream::connect(addr).await.unwrap();
        assert!(closed(&mut third).await, "the third connection is closed");

        // The open ones still work.
        first.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        served_first.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");

        // A closed connection gives its place back.
        drop(served_first);
        let _fourth = TcpStream::connect(addr).await.unwrap();
        let (mut served_fourth, peer) =
            tokio::time::timeout(Duration::from_secs(5), accepted.next())
                .await
                .expect("the fourth connection is accepted")
                .unwrap();
        assert_eq!(
            served_fourth.connect_info().remote_addr(),
            Some(peer),
            "connect info is the TCP stream's"
        );
        let info = served_fourth.connect_info();
        assert!(info.first_to_send_request_id_name());
        assert!(
            !served_fourth.connect_info().first_to_send_request_id_name(),
            "once per connection, whichever of its calls asks"
        );
        assert!(
            served_second.connect_info().first_to_send_request_id_name(),
            "each connection has its own"
        );
        served_fourth.write_all(b"ok").await.unwrap();
    }

    #[tokio::test]
    async fn a_connection_is_closed_when_its_time_is_up() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut accepted = accept(listener, 2, Duration::from_millis(200), "test");
        let _client = TcpStream::connect(addr).await.unwrap();
        let (mut served, _) = accepted.next().await.unwrap();
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), served.read(&mut byte))
            .await
            .expect("the read ends when the time is up");
        assert_eq!(read.unwrap_err().kind(), io::ErrorKind::TimedOut);
    }
}
