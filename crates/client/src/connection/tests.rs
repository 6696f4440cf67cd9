//! The connection against a tonic server (answers, errors, a server that
//! restarts) and against a bare h2 peer (a streamed body and its
//! backpressure, a caller that goes away, keepalive).

use std::{
    sync::atomic::{AtomicBool, AtomicUsize},
    time::Duration,
};

use futures_util::{StreamExt as _, stream};
use http_body_util::StreamBody;
use shop_loadgen::stub::{FixedUsers, fixed_user};
use shop_proto::user::v1::{
    GetUserRequest, get_user_request::Identifier, user_service_client::UserServiceClient,
    user_service_server::UserServiceServer,
};
use tokio::{net::TcpListener, sync::mpsc, task::JoinHandle};
use tonic::{Code, transport::server::TcpIncoming};
use tower::ServiceExt as _;

use super::*;
use crate::{dial::tcp_connector, watched::ConnectionWatch};

fn settings() -> DialSettings {
    DialSettings {
        connect_timeout: Duration::from_secs(5),
        keepalive_interval: Duration::from_secs(30),
        keepalive_timeout: Duration::from_secs(20),
    }
}

/// A listener on a free loopback port, and its address.
async fn listen() -> (TcpListener, std::net::SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    (listener, address)
}

fn origin(address: std::net::SocketAddr) -> Uri {
    format!("http://{address}").parse().unwrap()
}

fn lazy(address: std::net::SocketAddr) -> Connection {
    let origin = origin(address);
    Connection::lazy(origin.clone(), tcp_connector(origin), settings())
}

/// The bare tonic server on `listener` until `stop` (then it says GOAWAY
/// and closes its connections).
fn serve(listener: TcpListener, users: FixedUsers) -> (oneshot::Sender<()>, JoinHandle<()>) {
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
    let (listener, address) = listen().await;
    let users = FixedUsers::default();
    let _server = serve(listener, users.clone());
    let client = UserServiceClient::new(lazy(address));

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
    let (listener, address) = listen().await;
    let (stop, serving) = serve(listener, FixedUsers::default());
    let mut client = UserServiceClient::new(lazy(address));
    client
        .get_user(get_user())
        .await
        .expect("before the restart");

    let _ = stop.send(());
    serving.await.expect("the server stopped");
    let listener = TcpListener::bind(address).await.expect("the same port");
    let _server = serve(listener, FixedUsers::default());
    client
        .get_user(get_user())
        .await
        .expect("a call after the restart connects again");
}

#[tokio::test]
async fn connect_fails_at_once_when_nothing_listens() {
    let (listener, address) = listen().await;
    drop(listener);
    let origin = origin(address);
    let refused = Connection::connect(origin.clone(), tcp_connector(origin), settings()).await;
    assert!(refused.is_err(), "connected to a closed port");
}

/// A bare h2 server on `listener`: each request it accepts, with the
/// handle to answer it, goes to the returned channel. Its streams' window
/// is `window` bytes.
fn h2_peer(
    listener: TcpListener,
    window: u32,
) -> mpsc::UnboundedReceiver<(
    http::Request<h2::RecvStream>,
    h2::server::SendResponse<Bytes>,
)> {
    let (requests, received) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let (socket, _) = listener.accept().await.unwrap();
        let mut connection = h2::server::Builder::new()
            .initial_window_size(window)
            .handshake::<_, Bytes>(socket)
            .await
            .unwrap();
        while let Some(Ok(request)) = connection.accept().await {
            let _ = requests.send(request);
        }
    });
    received
}

fn request(body: Body) -> Request<Body> {
    Request::builder()
        .uri("/test.v1.Test/Stream")
        .header("content-type", "application/grpc")
        .body(body)
        .unwrap()
}

fn answer(mut respond: h2::server::SendResponse<Bytes>) {
    let mut stream = respond
        .send_response(Response::new(()), false)
        .expect("response headers");
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", "0".parse().unwrap());
    stream.send_trailers(trailers).expect("trailers");
}

#[tokio::test]
async fn a_streamed_body_goes_at_the_pace_the_peer_reads_it_and_arrives_whole() {
    const CHUNK: usize = 4 * 1024;
    const CHUNKS: usize = 64;
    let (listener, address) = listen().await;
    let mut requests = h2_peer(listener, 16 * 1024);

    let pulled = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&pulled);
    let chunks = stream::iter(0..CHUNKS).map(move |n| {
        counted.fetch_add(1, Ordering::AcqRel);
        Ok::<_, tonic::Status>(Frame::data(Bytes::from(vec![n as u8; CHUNK])))
    });
    let call = tokio::spawn(lazy(address).oneshot(request(Body::new(StreamBody::new(chunks)))));

    let (request, respond) = requests.recv().await.expect("a request");
    // The peer reads nothing yet: what the body gives up is bounded by
    // what goes with the HEADERS, not the whole body.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let early = pulled.load(Ordering::Acquire);
    assert!(
        early <= EAGER_BODY / CHUNK + 1,
        "{early} of {CHUNKS} chunks taken while the peer read nothing"
    );

    let mut body = request.into_body();
    let mut received = Vec::new();
    while let Some(data) = body.data().await {
        let data = data.expect("body data");
        let _ = body.flow_control().release_capacity(data.len());
        received.extend_from_slice(&data);
    }
    let expected: Vec<u8> = (0..CHUNKS).flat_map(|n| vec![n as u8; CHUNK]).collect();
    assert_eq!(received.len(), expected.len());
    assert!(received == expected, "the body arrived out of order");

    answer(respond);
    let response = call.await.unwrap().expect("the answer");
    let trailers = response
        .into_body()
        .collect()
        .await
        .unwrap()
        .trailers()
        .cloned();
    assert_eq!(trailers.unwrap()["grpc-status"], "0");
}

#[tokio::test]
async fn a_caller_that_goes_away_resets_its_stream() {
    let (listener, address) = listen().await;
    let mut requests = h2_peer(listener, 64 * 1024);

    // One message, then a body that never ends.
    let body =
        stream::once(async { Ok::<_, tonic::Status>(Frame::data(Bytes::from_static(b"first"))) })
            .chain(stream::pending());
    let call = tokio::spawn(lazy(address).oneshot(request(Body::new(StreamBody::new(body)))));

    let (request, _respond) = requests.recv().await.expect("a request");
    let mut body = request.into_body();
    let first = body.data().await.expect("the first message").unwrap();
    assert_eq!(&first[..], b"first");

    call.abort();
    let after = tokio::time::timeout(Duration::from_secs(5), body.data())
        .await
        .expect("the stream stayed open after its caller went away");
    let reason = after
        .expect("a reset, not the end of the body")
        .expect_err("a reset, not more data")
        .reason();
    assert_eq!(reason, Some(h2::Reason::CANCEL));
}

/// A connection to `address` with keepalive PINGs every 50 ms, each
/// answered within 200 ms or the connection dropped; `ended` is set when
/// its byte stream is dropped.
async fn kept_alive(address: std::net::SocketAddr, ended: Arc<AtomicBool>) -> Connection {
    let watch = ConnectionWatch::new(move || ended.store(true, Ordering::Release));
    let origin = origin(address);
    let plain = tcp_connector(origin.clone());
    let connector: Connector = Arc::new(move || {
        let (plain, watch) = (Arc::clone(&plain), watch.clone());
        Box::pin(async move { Ok(Box::new(watch.wrap(plain().await?)) as Box<dyn Io>) })
    });
    let settings = DialSettings {
        keepalive_interval: Duration::from_millis(50),
        keepalive_timeout: Duration::from_millis(200),
        ..settings()
    };
    Connection::connect(origin, connector, settings)
        .await
        .expect("connected")
}

#[tokio::test]
async fn a_peer_that_answers_no_ping_is_dropped_and_one_that_does_is_kept() {
    // Accepts the TCP connection and never speaks HTTP/2.
    let (silent, silent_address) = listen().await;
    let _held = tokio::spawn(async move {
        let (socket, _) = silent.accept().await.unwrap();
        std::future::pending::<()>().await;
        drop(socket);
    });
    let (listener, answering_address) = listen().await;
    let _server = serve(listener, FixedUsers::default());

    let silent_ended = Arc::new(AtomicBool::new(false));
    let answering_ended = Arc::new(AtomicBool::new(false));
    let _silent = kept_alive(silent_address, Arc::clone(&silent_ended)).await;
    let answering = kept_alive(answering_address, Arc::clone(&answering_ended)).await;

    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        silent_ended.load(Ordering::Acquire),
        "a connection whose PINGs went unanswered for 1 s was kept"
    );
    assert!(
        !answering_ended.load(Ordering::Acquire),
        "a connection whose PINGs were answered was dropped"
    );
    UserServiceClient::new(answering)
        .get_user(get_user())
        .await
        .expect("a call on the kept connection");
}

#[tokio::test]
async fn response_headers_over_16_kib_fail_the_call() {
    let (listener, address) = listen().await;
    let mut requests = h2_peer(listener, 64 * 1024);
    let call = tokio::spawn(lazy(address).oneshot(request(Body::empty())));

    let (_request, mut respond) = requests.recv().await.expect("a request");
    let mut response = Response::new(());
    response.headers_mut().insert(
        "x-filler",
        http::HeaderValue::from_str(&"a".repeat(20 * 1024)).unwrap(),
    );
    let _ = respond.send_response(response, true);
    let answered = tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .expect("the call neither failed nor answered")
        .unwrap();
    assert!(
        answered.is_err(),
        "a response with 20 KiB of headers was taken"
    );
}
