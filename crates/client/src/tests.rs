//! The client against real tonic servers on loopback: balancing, endpoints
//! taken out and back in, which answers are retried and how often, the
//! breaker failing fast, the throttle, DNS re-resolution.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use shop_loadgen::stub::FixedUsers;
use shop_proto::user::v1::{
    self as pb, user_service_client::UserServiceClient, user_service_server::UserServiceServer,
};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::{Code, Request, Response, Status, transport::server::TcpIncoming};

use super::*;

/// One running server; dropping `stop` shuts it down.
struct Replica {
    addr: SocketAddr,
    service: FixedUsers,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Replica {
    async fn start(addr: &str, service: FixedUsers) -> Replica {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = UserServiceServer::new(service.clone());
        let task = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(server)
                .serve_with_incoming_shutdown(TcpIncoming::from(listener), async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Replica {
            addr,
            service,
            stop: Some(stop),
            task,
        }
    }

    async fn kill(mut self) -> (SocketAddr, FixedUsers) {
        drop(self.stop.take());
        self.task.await.unwrap();
        (self.addr, self.service)
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Fast settings for tests: short reconnect and breaker backoffs.
fn args() -> ClientArgs {
    ClientArgs {
        client_connect_timeout: Duration::from_millis(500),
        client_reconnect_backoff_initial: Duration::from_millis(100),
        client_reconnect_backoff_max: Duration::from_millis(400),
        client_breaker_backoff_initial: Duration::from_millis(300),
        client_retry_initial_backoff: Duration::from_millis(10),
        client_retry_max_backoff: Duration::from_millis(40),
        ..ClientArgs::default()
    }
}

fn client(channel: &ClientChannel) -> UserServiceClient<ClientChannel> {
    UserServiceClient::new(channel.clone())
}

async fn get_user(channel: &ClientChannel) -> Result<pb::User, Status> {
    let mut request = Request::new(pb::GetUserRequest::default());
    request.set_timeout(Duration::from_secs(2));
    client(channel)
        .get_user(request)
        .await
        .map(Response::into_inner)
}

#[tokio::test]
async fn calls_spread_over_endpoints_and_a_dead_one_is_retried_around_then_back() {
    let a = Replica::start("127.0.0.1:0", FixedUsers::default()).await;
    let b = Replica::start("127.0.0.1:0", FixedUsers::default()).await;
    let channel = connect("users", &format!("{},{}", a.url(), b.url()), &args()).unwrap();
    for _ in 0..100 {
        get_user(&channel).await.unwrap();
    }
    let (on_a, on_b) = (a.service.get_user_calls(), b.service.get_user_calls());
    assert_eq!(on_a + on_b, 100);
    assert!(on_a >= 20 && on_b >= 20, "spread {on_a}/{on_b}");

    // b goes away: not one call fails (the ones that hit it are retried on a).
    let (b_addr, b_service) = b.kill().await;
    for _ in 0..50 {
        get_user(&channel)
            .await
            .expect("retried on the other endpoint");
    }
    // b is out of rotation: unconnected (being reconnected in the
    // background) or taken out, depending on how it was first noticed.
    let out: Vec<_> = channel
        .endpoints()
        .slots()
        .into_iter()
        .filter(|s| !s.is_up() || !s.is_connected())
        .map(|s| s.uri().to_string())
        .collect();
    assert_eq!(out, vec![format!("http://{b_addr}/")]);

    // b comes back on the same address and gets traffic again.
    let b = Replica::start(&b_addr.to_string(), b_service).await;
    let before = b.service.get_user_calls();
    let back = tokio::time::Instant::now();
    while b.service.get_user_calls() == before {
        assert!(back.elapsed() < Duration::from_secs(5), "b never came back");
        get_user(&channel).await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A TCP forwarder in front of a replica that can stop completing
/// handshakes, as a container's address does once the container is gone:
/// its accept queue (backlog 0) is filled and never drained, so further
/// SYNs go unanswered.
struct Proxy {
    addr: SocketAddr,
    listener: Arc<TcpListener>,
    accepting: JoinHandle<()>,
    fillers: Vec<tokio::net::TcpStream>,
}

impl Proxy {
    async fn start(to: SocketAddr) -> Proxy {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = Arc::new(socket.listen(0).unwrap());
        let addr = listener.local_addr().unwrap();
        let accept_on = Arc::clone(&listener);
        let accepting = tokio::spawn(async move {
            let listener = accept_on;
            loop {
                let (mut client, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        Proxy {
            addr,
            listener,
            accepting,
            fillers: Vec::new(),
        }
    }

    /// Stops accepting; new connections then hang in the TCP handshake.
    /// Connections already forwarded carry on.
    async fn stop_answering(&mut self) {
        self.accepting.abort();
        let _ = (&mut self.accepting).await;
        assert_eq!(
            self.listener.local_addr().unwrap(),
            self.addr,
            "still listening"
        );
        loop {
            let connect = tokio::net::TcpStream::connect(self.addr);
            match tokio::time::timeout(Duration::from_millis(300), connect).await {
                Ok(Ok(stream)) => self.fillers.push(stream),
                Ok(Err(e)) => panic!("the stopped proxy refused a connection: {e}"),
                Err(_) => break,
            }
            assert!(self.fillers.len() < 16, "the accept queue never filled");
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

#[tokio::test]
async fn a_replica_that_shuts_down_holds_no_call_while_its_address_stops_answering() {
    let a = Replica::start("127.0.0.1:0", FixedUsers::default()).await;
    let b = Replica::start("127.0.0.1:0", FixedUsers::default()).await;
    let mut to_a = Proxy::start(a.addr).await;
    // The connect timeout is longer than a call's deadline, as in
    // production (5 s against the callers' deadlines): a call that waited
    // for a connect to the vanished address would fail.
    let args = ClientArgs {
        client_connect_timeout: Duration::from_secs(5),
        ..args()
    };
    let channel = connect("users", &format!("{},{}", to_a.url(), b.url()), &args).unwrap();
    let connected = |channel: &ClientChannel| {
        channel
            .endpoints()
            .slots()
            .iter()
            .filter(|s| s.is_connected())
            .count()
    };
    let warm = tokio::time::Instant::now();
    while connected(&channel) < 2 {
        assert!(
            warm.elapsed() < Duration::from_secs(5),
            "never connected to both"
        );
        get_user(&channel).await.unwrap();
    }

    // a's address stops answering, then a drains and exits (GOAWAY, and the
    // connection closes): what a restarting container looks like.
    to_a.stop_answering().await;
    let _ = a.kill().await;

    for i in 0..50 {
        let mut request = Request::new(pb::GetUserRequest::default());
        request.set_timeout(Duration::from_secs(1));
        client(&channel)
            .get_user(request)
            .await
            .unwrap_or_else(|e| panic!("call {i} failed: {e:?}"));
    }
    let slot_a = channel
        .endpoints()
        .slots()
        .into_iter()
        .find(|s| s.uri().to_string() == format!("{}/", to_a.url()))
        .expect("a is still an endpoint");
    assert!(!slot_a.is_connected(), "a has no connection");
    assert!(
        slot_a.is_up(),
        "a is not taken out before its connect times out"
    );
}

#[tokio::test]
async fn a_calls_own_deadline_bounds_its_wait_for_a_connection() {
    let a = Replica::start("127.0.0.1:0", FixedUsers::default()).await;
    let mut to_a = Proxy::start(a.addr).await;
    to_a.stop_answering().await;
    let args = ClientArgs {
        client_connect_timeout: Duration::from_secs(5),
        ..args()
    };
    let channel = connect("users", &to_a.url(), &args).unwrap();
    let mut request = Request::new(pb::GetUserRequest::default());
    request.set_timeout(Duration::from_millis(300));
    let status = client(&channel).get_user(request).await.unwrap_err();
    // Not UNAVAILABLE once the 5 s connect timeout is over.
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
}

/// The value of the first sample of `name` in a Prometheus text.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "current_thread")]
async fn unavailable_is_retried_up_to_max_attempts_and_other_codes_never() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let metrics = recorder.handle();
    let _local = metrics::set_default_local_recorder(&recorder);
    let replica = Replica::start("127.0.0.1:0", FixedUsers::default()).await;
    let channel = connect("users", &replica.url(), &args()).unwrap();
    let service = &replica.service;

    service.answer_with(Code::Unavailable);
    let status = get_user(&channel).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(service.get_user_calls(), 3, "default max attempts");
    assert_eq!(
        sample(&metrics.render(), "grpc_client_retries_total"),
        Some(2.0),
        "{}",
        metrics.render()
    );

    for code in [
        Code::InvalidArgument,
        Code::NotFound,
        Code::PermissionDenied,
    ] {
        service.answer_with(code);
        let before = service.get_user_calls();
        assert_eq!(get_user(&channel).await.unwrap_err().code(), code);
        assert_eq!(service.get_user_calls() - before, 1, "{code:?} retried");
    }
}

#[tokio::test]
async fn a_method_not_marked_idempotent_is_retried_only_with_an_idempotency_key() {
    let replica = Replica::start("127.0.0.1:0", FixedUsers::default()).await;
    let channel = connect("users", &replica.url(), &args()).unwrap();
    replica.service.answer_with(Code::Unavailable);
    let calls = || replica.service.create_user_calls();

    let plain = client(&channel)
        .create_user(pb::CreateUserRequest::default())
        .await;
    assert_eq!(plain.unwrap_err().code(), Code::Unavailable);
    assert_eq!(calls(), 1, "CreateUser declares no idempotency");

    let mut keyed = Request::new(pb::CreateUserRequest::default());
    keyed.extensions_mut().insert(IdempotencyKey);
    assert_eq!(
        client(&channel)
            .create_user(keyed)
            .await
            .unwrap_err()
            .code(),
        Code::Unavailable
    );
    assert_eq!(calls(), 1 + 3);
}

#[tokio::test]
async fn a_dead_target_opens_the_breaker_and_calls_fail_fast_within_the_budget() {
    let replica = Replica::start("127.0.0.1:0", FixedUsers::default()).await;
    let channel = connect("users", &replica.url(), &args()).unwrap();
    replica.service.answer_with(Code::Unavailable);

    // Every call fails; the throttle (10 tokens, retries stop at 5) and the
    // breaker (5 consecutive failures) bound the attempts.
    for _ in 0..20 {
        assert_eq!(
            get_user(&channel).await.unwrap_err().code(),
            Code::Unavailable
        );
    }
    let attempts = replica.service.get_user_calls();
    assert!(
        (5..=8).contains(&attempts),
        "{attempts} attempts for 20 calls: breaker and throttle should stop them"
    );
    assert!(channel.breaker().is_open());
    let before = replica.service.get_user_calls();
    let status = get_user(&channel).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status.message().contains("circuit open"),
        "{}",
        status.message()
    );
    // Failing fast: the call never reached the server.
    assert_eq!(replica.service.get_user_calls(), before, "fails fast");

    // Once the downstream is back, the next probe closes the circuit.
    replica.service.answer_with(Code::Ok);
    let back = tokio::time::Instant::now();
    loop {
        if get_user(&channel).await.is_ok() {
            break;
        }
        assert!(back.elapsed() < Duration::from_secs(3), "never closed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!channel.breaker().is_open());
}

/// A resolver whose answer the test changes.
struct Switchable(Mutex<Vec<SocketAddr>>);

#[async_trait::async_trait]
impl Resolve for Switchable {
    async fn resolve(&self, _: &str, _: u16) -> std::io::Result<Vec<SocketAddr>> {
        Ok(self.0.lock().unwrap().clone())
    }
}

#[tokio::test]
async fn a_dns_target_follows_the_addresses_it_resolves_to() {
    let a = Replica::start("127.0.0.1:0", FixedUsers::default()).await;
    let b = Replica::start("127.0.0.1:0", FixedUsers::default()).await;
    let resolver = Arc::new(Switchable(Mutex::new(vec![a.addr])));
    let args = ClientArgs {
        client_dns_refresh_interval: Duration::from_millis(100),
        ..args()
    };
    let channel =
        connect_with_resolver("users", "dns:///users.test:1", &args, resolver.clone()).unwrap();
    for _ in 0..10 {
        get_user(&channel).await.unwrap();
    }
    assert_eq!(a.service.get_user_calls(), 10);

    // A new replica appears, the old one leaves: wait (polling, 5 s at
    // most) until the next resolution has replaced the endpoint.
    *resolver.0.lock().unwrap() = vec![b.addr];
    let only_b = format!("http://{}/", b.addr);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let uris: Vec<String> = channel
            .endpoints()
            .slots()
            .iter()
            .map(|s| s.uri().to_string())
            .collect();
        if uris == [only_b.clone()] {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still resolved to {uris:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..10 {
        get_user(&channel).await.unwrap();
    }
    assert_eq!(a.service.get_user_calls(), 10, "a was removed");
    assert_eq!(b.service.get_user_calls(), 10);
}

#[test]
fn settings_have_the_documented_defaults_and_bounds() {
    let defaults = ClientArgs::default();
    assert_eq!(defaults.client_retry_max_attempts, 3);
    assert_eq!(
        defaults.client_reconnect_backoff_initial,
        Duration::from_secs(1)
    );
    assert_eq!(
        defaults.client_reconnect_backoff_max,
        Duration::from_secs(120)
    );
    assert_eq!(defaults.client_breaker_failures, 5);
    #[derive(clap::Parser, Debug)]
    struct Only {
        #[command(flatten)]
        _args: ClientArgs,
    }
    use clap::Parser as _;
    assert!(Only::try_parse_from(["x", "--client-retry-max-attempts", "6"]).is_err());
    assert!(Only::try_parse_from(["x", "--client-keepalive-interval", "5s"]).is_err());
    assert!(connect("users", "users:50051", &defaults).is_err());
}
