//! What both server benchmarks share: bare tonic and the shop stack
//! serving the same `UserService.GetUser` handler (the workspace's stand-in
//! `FixedUsers`: a fixed answer, no database) on loopback, a client of
//! each, and a caller's token.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use clap::Parser as _;
use shop_auth::{KeySet, Role, SigningKey, TokenIssuer, TokenVerifier};
use shop_loadgen::stub::FixedUsers;
use shop_proto::user::v1::{
    self as pb, user_service_client::UserServiceClient, user_service_server::UserServiceServer,
};
use shop_server::connections::plain_incoming;
use shop_server::{
    Server, ServiceArgs, ServiceInfo,
    layers::{observe::ObserveLayer, policy_layers},
    serve::infrastructure_services,
    streams::Streams,
};
use tokio::net::TcpListener;
use tonic::{
    Request,
    transport::{Channel, server::TcpIncoming},
};

/// Telemetry as in production (JSON log lines filtered to warnings, spans
/// with trace ids, the Prometheus recorder), or, with
/// `BENCH_NO_TELEMETRY=1`, a subscriber interested in nothing: no
/// subscriber at all would make every disabled span of h2, hyper and
/// tonic consult `log` (see `shop_loadgen::quiet`). Must run inside the
/// benchmark's runtime.
pub(crate) fn telemetry() {
    if std::env::var_os("BENCH_NO_TELEMETRY").is_none() {
        shop_telemetry::init(
            "bench",
            shop_telemetry::LogFormat::Json,
            shop_telemetry::DEFAULT_LOG_FLUSH_DELAY,
            "warn",
        );
    } else {
        shop_loadgen::quiet::tracing_off();
    }
}

/// The single-threaded runtime client and servers share, and both
/// servers started on it (telemetry first, see [`telemetry`]).
pub(crate) fn started() -> (tokio::runtime::Runtime, Setup) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let setup = runtime.block_on(async {
        telemetry();
        setup().await
    });
    (runtime, setup)
}

/// In-flight calls per batch.
pub(crate) const CONCURRENCY: usize = 32;

#[derive(clap::Parser)]
struct Args {
    #[command(flatten)]
    service: ServiceArgs,
}

const BENCH: ServiceInfo = ServiceInfo::new("bench", 0, 0, "bench");

/// What the benchmarks serve as "the shop stack" (`BENCH_STACK`): the
/// whole of it (`whole`, the default: `Server`'s layers, the gRPC-Web and
/// REST pass-through included, on connections accepted as services accept
/// them), or one of its two parts on bare tonic's listener,
/// to tell their costs apart: `observe` (the observe layer: request id,
/// span, metrics, access line) or `policies` (every layer below it: size,
/// deadline, auth, limits, panic guard, fault injection, write lane).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StackPart {
    Whole,
    Observe,
    Policies,
}

impl StackPart {
    /// `BENCH_STACK`'s part; anything else stops the benchmark.
    pub(crate) fn from_env() -> StackPart {
        match std::env::var("BENCH_STACK").as_deref() {
            Err(_) | Ok("whole") => StackPart::Whole,
            Ok("observe") => StackPart::Observe,
            Ok("policies") => StackPart::Policies,
            Ok(other) => panic!("BENCH_STACK is whole, observe or policies, not {other:?}"),
        }
    }

    /// How the benchmark's output names it.
    pub(crate) fn label(self) -> &'static str {
        match self {
            StackPart::Whole => "shop stack",
            StackPart::Observe => "observe layer",
            StackPart::Policies => "policy layers",
        }
    }
}

/// A client of each server, and a token the shop stack accepts.
pub(crate) struct Setup {
    pub(crate) bare: UserServiceClient<Channel>,
    pub(crate) full: UserServiceClient<Channel>,
    pub(crate) token: String,
}

/// Accepted connections with TCP_NODELAY, as `Server::serve` does in
/// production (a plain listener stream leaves Nagle on).
fn incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// Starts both servers on this runtime.
pub(crate) async fn setup() -> Setup {
    let bare_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bare_addr = bare_listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(UserServiceServer::new(FixedUsers::default()))
            .serve_with_incoming(incoming(bare_listener)),
    );

    let key = Arc::new(SigningKey::generate());
    let keys: KeySet = [key.verification_key().clone()].into_iter().collect();
    let verifier = Arc::new(TokenVerifier::new(
        keys,
        "bench",
        "bench",
        Duration::from_secs(30),
    ));
    let token = TokenIssuer::new(key, "bench", "bench", Duration::from_secs(3600))
        .issue("01a20000-0000-7000-8000-000000000000", &[Role::Customer])
        .unwrap()
        .token;
    // Production settings, except limits a benchmark would trip.
    let mut args = Args::parse_from(["bench"]).service;
    args.server.rate_limit_per_second = 1e9;
    args.server.rate_limit_burst = u32::MAX;
    let full_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let full_addr = full_listener.local_addr().unwrap();
    let handler = UserServiceServer::new(FixedUsers::default());
    match StackPart::from_env() {
        StackPart::Whole => {
            let mut server = Server::new(BENCH, &args, verifier);
            server.add(handler);
            let router = server.into_router().expect("the REST routes of the protos");
            tokio::spawn(router.serve_with_incoming(plain_incoming(
                full_listener,
                &args.server,
                BENCH.name,
            )));
        }
        StackPart::Observe => {
            let router = tonic::transport::Server::builder()
                .layer(ObserveLayer)
                .add_service(handler);
            tokio::spawn(router.serve_with_incoming(incoming(full_listener)));
        }
        StackPart::Policies => {
            let streams = Streams::new(BENCH.name, &args.server.streams);
            let policies = policy_layers(
                BENCH.name,
                &args.server,
                verifier,
                &infrastructure_services(),
                streams,
                None,
            );
            let router = tonic::transport::Server::builder()
                .layer(policies)
                .add_service(handler);
            tokio::spawn(router.serve_with_incoming(incoming(full_listener)));
        }
    }

    let channel = |addr| {
        Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy()
    };
    Setup {
        bare: UserServiceClient::new(channel(bare_addr)),
        full: UserServiceClient::new(channel(full_addr)),
        token,
    }
}

/// Makes `n` GetUser calls, [`CONCURRENCY`] at a time, and returns how
/// long they took.
pub(crate) async fn calls(client: &UserServiceClient<Channel>, token: &str, n: u64) -> Duration {
    let started = Instant::now();
    let mut remaining = n;
    while remaining > 0 {
        let batch = remaining.min(CONCURRENCY as u64);
        let calls: Vec<_> = (0..batch)
            .map(|_| {
                let mut client = client.clone();
                let mut request = Request::new(pb::GetUserRequest {
                    identifier: Some(pb::get_user_request::Identifier::Username("bench".into())),
                });
                request
                    .metadata_mut()
                    .insert("authorization", format!("Bearer {token}").parse().unwrap());
                async move { client.get_user(request).await.expect("call succeeds") }
            })
            .collect();
        futures_util::future::join_all(calls).await;
        remaining -= batch;
    }
    started.elapsed()
}
