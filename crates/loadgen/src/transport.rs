//! The generator's HTTP/2 connections, straight on h2 rather than through
//! tonic's `Channel`.
//!
//! hyper, under tonic's `Channel`, opens a call's stream and sends its
//! HEADERS from the connection task, and only then its body, from a task
//! of its own once the new stream has send capacity: every unary call
//! leaves as two TCP writes (HEADERS, then DATA with END_STREAM), and the
//! server is woken twice to read it. Under a closed loop the frames of
//! many calls share writes anyway; in an open loop, where calls arrive a
//! few at a time, the generator paid about 2.7 `writev` per call. Here a
//! call's DATA is queued on its stream right after its HEADERS, before the
//! connection task runs, and both go out in one write, as grpc-go and
//! h2load send them.
//!
//! A [`Connection`] is a `tower::Service` for the generated tonic clients.
//! It connects on its first call and again after its connection is lost;
//! a call's request body must be complete when it is made (every call the
//! generator makes sends one message).

use std::{
    pin::Pin,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use anyhow::{Context as _, anyhow};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{Request, Response, Uri, uri::PathAndQuery};
use http_body::Frame;
use http_body_util::BodyExt as _;

/// What a call fails with.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// hyper's client windows (what tonic's `Channel` used): 2 MiB per
/// stream, 5 MiB per connection.
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;

/// One HTTP/2 connection to a server, made on first use. Cheap to clone:
/// clones share the connection.
#[derive(Clone)]
pub struct Connection(Arc<Shared>);

struct Shared {
    /// `scheme://authority` of the server, put in front of each call's path.
    origin: Uri,
    /// `host:port` to connect to.
    address: String,
    connect_timeout: Duration,
    /// The open connection, if any, and its number (connections made so
    /// far), by which its task clears it once it has ended.
    sender: Mutex<Option<(u64, h2::client::SendRequest<Bytes>)>>,
    made: AtomicU64,
    /// Held while connecting, so that the calls waiting for a connection
    /// share one instead of each opening its own.
    connecting: tokio::sync::Mutex<()>,
}

impl Connection {
    /// A connection to `url` (`http://host:port`), made on first use.
    pub fn lazy(url: &str, connect_timeout: Duration) -> anyhow::Result<Connection> {
        let origin: Uri = url
            .parse()
            .with_context(|| format!("{url:?} is not a URL"))?;
        if origin.scheme_str() != Some("http") {
            return Err(anyhow!("{url:?}: only http:// (h2c) is supported"));
        }
        let authority = origin
            .authority()
            .ok_or_else(|| anyhow!("{url:?} has no host"))?;
        let address = match authority.port_u16() {
            Some(_) => authority.as_str().to_owned(),
            None => format!("{}:80", authority.host()),
        };
        Ok(Connection(Arc::new(Shared {
            origin,
            address,
            connect_timeout,
            sender: Mutex::new(None),
            made: AtomicU64::new(0),
            connecting: tokio::sync::Mutex::new(()),
        })))
    }

    /// The open connection's sender, connecting first if there is none.
    async fn sender(&self) -> Result<h2::client::SendRequest<Bytes>, Error> {
        if let Some(sender) = self.current() {
            return Ok(sender);
        }
        let _connecting = self.0.connecting.lock().await;
        if let Some(sender) = self.current() {
            return Ok(sender);
        }
        tokio::time::timeout(self.0.connect_timeout, self.connect())
            .await
            .map_err(|_| format!("connecting to {} timed out", self.0.address))?
    }

    fn current(&self) -> Option<h2::client::SendRequest<Bytes>> {
        let open = self.0.sender.lock().unwrap_or_else(PoisonError::into_inner);
        open.as_ref().map(|(_, sender)| sender.clone())
    }

    /// Connects, and keeps the connection until it ends: the calls made on
    /// it then fail (they are not retried), and the next one connects again.
    async fn connect(&self) -> Result<h2::client::SendRequest<Bytes>, Error> {
        let tcp = tokio::net::TcpStream::connect(&self.0.address).await?;
        tcp.set_nodelay(true)?;
        let (sender, connection) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .handshake(tcp)
            .await?;
        let number = self.0.made.fetch_add(1, Ordering::Relaxed);
        *self.0.sender.lock().unwrap_or_else(PoisonError::into_inner) =
            Some((number, sender.clone()));
        let shared = Arc::downgrade(&self.0);
        tokio::spawn(async move {
            let _ = connection.await;
            if let Some(shared) = shared.upgrade() {
                let mut open = shared.sender.lock().unwrap_or_else(PoisonError::into_inner);
                if open.as_ref().is_some_and(|(n, _)| *n == number) {
                    *open = None;
                }
            }
        });
        Ok(sender)
    }

    /// Makes one call: HEADERS and the whole body queued together.
    async fn call(self, request: Request<tonic::body::Body>) -> Result<Response<Body>, Error> {
        let (mut parts, body) = request.into_parts();
        let body = body.collect().await?.to_bytes();
        parts.uri = self.uri(parts.uri)?;
        let mut sender = self.sender().await?.ready().await?;
        let (response, mut stream) =
            sender.send_request(Request::from_parts(parts, ()), body.is_empty())?;
        if !body.is_empty() {
            stream.send_data(body, true)?;
        }
        let response = response.await?;
        Ok(response.map(|recv| Body {
            recv,
            data_done: false,
        }))
    }

    /// The call's path on this connection's origin.
    fn uri(&self, uri: Uri) -> Result<Uri, Error> {
        let path = uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let mut parts = self.0.origin.clone().into_parts();
        parts.path_and_query = Some(path);
        Ok(Uri::from_parts(parts)?)
    }
}

impl tower::Service<Request<tonic::body::Body>> for Connection {
    type Response = Response<Body>;
    type Error = Error;
    type Future = BoxFuture<'static, Result<Response<Body>, Error>>;

    /// Always ready: a call waits for a stream of its own (the server's
    /// limit on concurrent streams) once made.
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<tonic::body::Body>) -> Self::Future {
        Box::pin(self.clone().call(request))
    }
}

/// A response body: the stream's DATA frames, then its trailers (where a
/// gRPC status comes). Received data is handed back to flow control as it
/// is read.
pub struct Body {
    recv: h2::RecvStream,
    data_done: bool,
}

impl http_body::Body for Body {
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
mod tests {
    use shop_proto::user::v1::{
        GetUserRequest, get_user_request::Identifier, user_service_client::UserServiceClient,
        user_service_server::UserServiceServer,
    };
    use tokio::{net::TcpListener, sync::oneshot};
    use tonic::{Code, transport::server::TcpIncoming};

    use super::*;
    use crate::stub::{FixedUsers, fixed_user};

    /// The bare tonic server on `listener` until `stop` (then it says
    /// GOAWAY and closes its connections).
    fn serve(
        listener: TcpListener,
        users: FixedUsers,
    ) -> (oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
        let (stop, stopped) = oneshot::channel::<()>();
        let serving = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(UserServiceServer::new(users))
                .serve_with_incoming_shutdown(TcpIncoming::from(listener), async {
                    let _ = stopped.await;
                })
                .await
                .expect("serve");
        });
        (stop, serving)
    }

    fn get_user() -> GetUserRequest {
        GetUserRequest {
            identifier: Some(Identifier::UserId(fixed_user().id)),
        }
    }

    #[tokio::test]
    async fn calls_get_their_answers_and_errors_their_grpc_status() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let users = FixedUsers::default();
        let _server = serve(listener, users.clone());
        let client =
            UserServiceClient::new(Connection::lazy(&url, Duration::from_secs(5)).unwrap());

        let calls: Vec<_> = (0..20)
            .map(|_| {
                let mut client = client.clone();
                tokio::spawn(async move { client.get_user(get_user()).await })
            })
            .collect();
        for call in calls {
            let user = call.await.unwrap().expect("GetUser").into_inner();
            assert_eq!(user, fixed_user());
        }
        assert_eq!(users.get_user_calls(), 20);

        users.answer_with(Code::NotFound);
        let refused = client
            .clone()
            .get_user(get_user())
            .await
            .expect_err("scripted");
        assert_eq!(refused.code(), Code::NotFound);
        assert_eq!(refused.message(), "scripted answer");
    }

    #[tokio::test]
    async fn a_call_after_the_server_came_back_connects_again() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let (stop, serving) = serve(listener, FixedUsers::default());
        let mut client = UserServiceClient::new(
            Connection::lazy(&format!("http://{address}"), Duration::from_secs(5)).unwrap(),
        );
        client
            .get_user(get_user())
            .await
            .expect("before the restart");

        let _ = stop.send(());
        serving.await.expect("the server stopped");
        let listener = TcpListener::bind(address)
            .await
            .expect("the same port again");
        let _server = serve(listener, FixedUsers::default());
        // The first call may still find the old connection, if its task
        // has not yet seen it end; a later one must connect again.
        let mut answered = false;
        for _ in 0..50 {
            if client.get_user(get_user()).await.is_ok() {
                answered = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(answered, "no call answered once the server was back");
    }
}
