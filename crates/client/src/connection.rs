//! One HTTP/2 connection to one endpoint, straight on h2 rather than
//! through tonic's `Channel`.
//!
//! Under a `Channel`, a call crosses three tasks before it reaches the
//! socket: tower's buffer worker, hyper's connection task, and a task of
//! its own that pipes the request body once the new stream has send
//! capacity, which h2 grants only after the stream's HEADERS are out. Every
//! unary call therefore left as two TCP writes (HEADERS, then DATA with
//! END_STREAM) and woke the server twice. Here the calling task opens the
//! stream itself and queues whatever of the body is ready at once behind
//! its HEADERS, before the connection task runs: a unary call is one write,
//! as grpc-go and h2load send it, and the only task it wakes is the
//! connection's. What of a streamed body is not ready at once is piped by a
//! task of its own, with h2's flow control as backpressure.
//!
//! A [`Connection`] connects on its first call (or at once, with
//! [`Connection::connect`]); a call that finds its connection gone (closed,
//! or refusing new streams after the server's GOAWAY) connects again, once.
//! A keepalive PING every interval that goes unanswered for the timeout
//! drops the connection, so that a peer that vanished without a FIN is
//! noticed.

use std::{
    future::poll_fn,
    io,
    pin::Pin,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll, Waker},
};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use h2::client::{ResponseFuture, SendRequest};
use http::{HeaderMap, Request, Response, Uri, uri::PathAndQuery};
use http_body::{Body as _, Frame};
use http_body_util::BodyExt as _;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::oneshot,
};
use tonic::body::Body;

use crate::dial::DialSettings;

/// Why a call got no response.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// A byte stream a connection runs on: TCP, or TLS over TCP.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// Opens a new byte stream to the endpoint.
pub type Connector = Arc<dyn Fn() -> BoxFuture<'static, io::Result<Box<dyn Io>>> + Send + Sync>;

/// hyper's client settings, which tonic's `Channel` used: windows of 2 MiB
/// per stream and 5 MiB per connection; at most 16 KiB of response headers
/// (h2's own limit is 16 MiB: a hostile peer's to fill); 100 streams open
/// before the server's SETTINGS say how many it takes (h2 opens any
/// number, which a server refuses); 1 MiB buffered per stream before its
/// sender waits; 1,024 streams reset for the peer's protocol errors before
/// the connection is given up.
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;
const MAX_HEADER_LIST: u32 = 16 * 1024;
const INITIAL_MAX_SEND_STREAMS: usize = 100;
const MAX_SEND_BUFFER: usize = 1024 * 1024;
const MAX_LOCAL_ERROR_RESETS: usize = 1024;

/// At most this much of a streamed body is queued with its HEADERS; the
/// rest waits for flow control (the peer's initial stream window).
const EAGER_BODY: usize = 64 * 1024;

/// An HTTP/2 connection to one endpoint. Cheap to clone: clones share it.
#[derive(Clone)]
pub struct Connection(Arc<Shared>);

struct Shared {
    /// `scheme://authority`, put in front of each call's path.
    origin: Uri,
    connector: Connector,
    settings: DialSettings,
    /// The open connection, if any, with its number, by which its task
    /// clears it once it has ended (and not a newer one).
    open: Mutex<Option<(u64, SendRequest<Bytes>)>>,
    made: AtomicU64,
    /// Held while connecting, so that the calls waiting for a connection
    /// share one instead of each opening its own.
    connecting: tokio::sync::Mutex<()>,
}

impl Connection {
    /// A connection to `origin` through `connector`, made on first use.
    pub fn lazy(origin: Uri, connector: Connector, settings: DialSettings) -> Connection {
        Connection(Arc::new(Shared {
            origin,
            connector,
            settings,
            open: Mutex::new(None),
            made: AtomicU64::new(0),
            connecting: tokio::sync::Mutex::new(()),
        }))
    }

    /// A connection made now, or why it could not be.
    pub async fn connect(
        origin: Uri,
        connector: Connector,
        settings: DialSettings,
    ) -> Result<Connection, Error> {
        let connection = Connection::lazy(origin, connector, settings);
        connection.connect_once().await?;
        Ok(connection)
    }

    fn current(&self) -> Option<(u64, SendRequest<Bytes>)> {
        self.0
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Clears connection `number` if it is still the current one.
    fn forget(shared: &Shared, number: u64) {
        let mut open = shared.open.lock().unwrap_or_else(PoisonError::into_inner);
        if open.as_ref().is_some_and(|(n, _)| *n == number) {
            *open = None;
        }
    }

    /// The open connection, or a new one if there is none.
    async fn connect_once(&self) -> Result<(u64, SendRequest<Bytes>), Error> {
        let _connecting = self.0.connecting.lock().await;
        if let Some(open) = self.current() {
            return Ok(open);
        }
        let timeout = self.0.settings.connect_timeout;
        tokio::time::timeout(timeout, self.open())
            .await
            .map_err(|_| {
                format!(
                    "connecting to {} timed out after {timeout:?}",
                    self.0.origin
                )
            })?
    }

    /// Opens a connection, makes it the current one, and runs it on a task
    /// of its own until it ends.
    async fn open(&self) -> Result<(u64, SendRequest<Bytes>), Error> {
        let io = (self.0.connector)().await?;
        let (sender, mut connection) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_header_list_size(MAX_HEADER_LIST)
            .initial_max_send_streams(INITIAL_MAX_SEND_STREAMS)
            .max_send_buffer_size(MAX_SEND_BUFFER)
            .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS))
            .enable_push(false)
            .handshake::<_, Bytes>(io)
            .await?;
        let number = self.0.made.fetch_add(1, Ordering::Relaxed);
        *self.0.open.lock().unwrap_or_else(PoisonError::into_inner) =
            Some((number, sender.clone()));
        let ping_pong = connection.ping_pong();
        let settings = self.0.settings;
        let shared = Arc::downgrade(&self.0);
        tokio::spawn(async move {
            let keepalive = async move {
                match ping_pong {
                    Some(ping_pong) => keepalive(ping_pong, settings).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                result = &mut connection => {
                    if let Err(error) = result {
                        tracing::debug!(%error, "HTTP/2 connection ended");
                    }
                }
                () = keepalive => tracing::debug!("keepalive PING unanswered; connection dropped"),
            }
            // The connection (and with it the byte stream) is dropped here.
            drop(connection);
            if let Some(shared) = shared.upgrade() {
                Connection::forget(&shared, number);
            }
        });
        Ok((number, sender))
    }

    /// A sender ready for a new stream: on the open connection, or on a new
    /// one when there is none or the open one takes no more streams.
    async fn ready_sender(&self) -> Result<SendRequest<Bytes>, Error> {
        let (number, sender) = match self.current() {
            Some(open) => open,
            None => self.connect_once().await?,
        };
        match sender.ready().await {
            Ok(ready) => Ok(ready),
            Err(_) => {
                Connection::forget(&self.0, number);
                let (_, sender) = self.connect_once().await?;
                Ok(sender.ready().await?)
            }
        }
    }

    /// Makes one call: HEADERS and whatever of the body is ready at once
    /// queued together; the rest of a streamed body piped after them.
    async fn call(self, request: Request<Body>) -> Result<Response<Body>, Error> {
        let (mut parts, mut body) = request.into_parts();
        parts.uri = self.uri(&parts.uri)?;
        let mut sender = self.ready_sender().await?;
        let ready = ReadyBody::take(&mut body)?;
        let ends_now = ready.chunks.is_empty() && ready.end == End::Body;
        let (response, mut stream) =
            sender.send_request(Request::from_parts(parts, ()), ends_now)?;
        let last = ready.chunks.len();
        for (n, chunk) in ready.chunks.into_iter().enumerate() {
            stream.send_data(chunk, n + 1 == last && ready.end == End::Body)?;
        }
        match ready.end {
            End::Body => return respond(response, None).await,
            End::Trailers(trailers) => {
                stream.send_trailers(trailers)?;
                return respond(response, None).await;
            }
            End::NotYet => {}
        }
        // The pipe stops when the response's body is dropped (the caller
        // went away, or the answer is complete), whichever comes first.
        let (answered, abandoned) = oneshot::channel();
        tokio::spawn(pipe(body, stream, abandoned));
        respond(response, Some(answered)).await
    }

    /// The call's path on this connection's origin.
    fn uri(&self, uri: &Uri) -> Result<Uri, Error> {
        let path = uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let mut parts = self.0.origin.clone().into_parts();
        parts.path_and_query = Some(path);
        Ok(Uri::from_parts(parts)?)
    }
}

impl tower::Service<Request<Body>> for Connection {
    type Response = Response<Body>;
    type Error = Error;
    type Future = BoxFuture<'static, Result<Response<Body>, Error>>;

    /// Always ready: a call waits for a stream of its own (the server's
    /// limit on concurrent streams) once made.
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        Box::pin(self.clone().call(request))
    }
}

/// Sends a PING every interval; returns when one goes unanswered for the
/// timeout (or the connection can no longer send one).
async fn keepalive(mut ping_pong: h2::PingPong, settings: DialSettings) {
    loop {
        tokio::time::sleep(settings.keepalive_interval).await;
        match tokio::time::timeout(
            settings.keepalive_timeout,
            ping_pong.ping(h2::Ping::opaque()),
        )
        .await
        {
            Ok(Ok(_pong)) => {}
            Ok(Err(_)) | Err(_) => return,
        }
    }
}

/// How the part of a body that was ready at once ended.
#[derive(Debug, PartialEq)]
enum End {
    /// The body is complete.
    Body,
    /// The body is complete with these trailers.
    Trailers(HeaderMap),
    /// More is to come.
    NotYet,
}

/// The frames of a body that were ready without waiting.
struct ReadyBody {
    chunks: Vec<Bytes>,
    end: End,
}

impl ReadyBody {
    /// Polls `body` without waiting (a unary call's one message is always
    /// ready) until it would wait, ends, or [`EAGER_BODY`] bytes are taken.
    fn take(body: &mut Body) -> Result<ReadyBody, Error> {
        let mut cx = Context::from_waker(Waker::noop());
        let mut chunks = Vec::new();
        let mut taken = 0;
        loop {
            if body.is_end_stream() {
                return Ok(ReadyBody {
                    chunks,
                    end: End::Body,
                });
            }
            if taken >= EAGER_BODY {
                break;
            }
            match Pin::new(&mut *body).poll_frame(&mut cx) {
                Poll::Ready(None) => {
                    return Ok(ReadyBody {
                        chunks,
                        end: End::Body,
                    });
                }
                Poll::Ready(Some(frame)) => match frame?.into_data() {
                    Ok(data) => {
                        taken += data.len();
                        if !data.is_empty() {
                            chunks.push(data);
                        }
                    }
                    Err(frame) => {
                        let trailers = frame.into_trailers().unwrap_or_default();
                        return Ok(ReadyBody {
                            chunks,
                            end: End::Trailers(trailers),
                        });
                    }
                },
                Poll::Pending => break,
            }
        }
        Ok(ReadyBody {
            chunks,
            end: End::NotYet,
        })
    }
}

/// Sends the rest of a streamed request body, a frame at a time as the
/// peer's window allows; resets the stream if the body fails or the caller
/// drops the response, and stops if the peer resets it.
async fn pipe(
    mut body: Body,
    mut stream: h2::SendStream<Bytes>,
    mut abandoned: oneshot::Receiver<()>,
) {
    loop {
        // Wait until what was sent so far is out and one more byte fits.
        stream.reserve_capacity(1);
        let step = tokio::select! {
            sendable = poll_fn(|cx| sendable(&mut stream, cx)) => {
                if !sendable {
                    return;
                }
                tokio::select! {
                    frame = body.frame() => Step::Frame(frame),
                    _ = &mut abandoned => Step::Abandoned,
                }
            }
            _ = &mut abandoned => Step::Abandoned,
        };
        let sent = match step {
            Step::Abandoned => {
                stream.send_reset(h2::Reason::CANCEL);
                return;
            }
            Step::Frame(None) => stream.send_data(Bytes::new(), true).map(|()| true),
            Step::Frame(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => {
                    let ends = body.is_end_stream();
                    stream.send_data(data, ends).map(|()| ends)
                }
                Err(frame) => stream
                    .send_trailers(frame.into_trailers().unwrap_or_default())
                    .map(|()| true),
            },
            Step::Frame(Some(Err(error))) => {
                tracing::debug!(%error, "request body failed; stream reset");
                stream.send_reset(h2::Reason::CANCEL);
                return;
            }
        };
        if !matches!(sent, Ok(false)) {
            return;
        }
    }
}

/// What the body pipe does next.
enum Step {
    Frame(Option<Result<Frame<Bytes>, tonic::Status>>),
    Abandoned,
}

/// Ready with `true` when `stream` has capacity to send, with `false` when
/// it can send no more (the peer reset it, or the connection ended).
fn sendable(stream: &mut h2::SendStream<Bytes>, cx: &mut Context<'_>) -> Poll<bool> {
    if stream.poll_reset(cx).is_ready() {
        return Poll::Ready(false);
    }
    stream
        .poll_capacity(cx)
        .map(|capacity| matches!(capacity, Some(Ok(_))))
}

/// Waits for the response headers; the response body, when dropped, tells
/// a body pipe (through `answered`) that nobody waits for the answer.
async fn respond(
    response: ResponseFuture,
    answered: Option<oneshot::Sender<()>>,
) -> Result<Response<Body>, Error> {
    let response = response.await?;
    Ok(response.map(|recv| {
        Body::new(ResponseBody {
            recv,
            data_done: false,
            _answered: answered,
        })
    }))
}

/// A response body: the stream's DATA frames, then its trailers (where a
/// gRPC status comes). Received data is handed back to flow control as it
/// is read.
struct ResponseBody {
    recv: h2::RecvStream,
    data_done: bool,
    _answered: Option<oneshot::Sender<()>>,
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        if !self.data_done {
            match std::task::ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(error)) => return Poll::Ready(Some(Err(error))),
                None => self.data_done = true,
            }
        }
        match std::task::ready!(self.recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(error) => Poll::Ready(Some(Err(error))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }
}

#[cfg(test)]
mod tests;
