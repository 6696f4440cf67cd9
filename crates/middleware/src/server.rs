//! What every shop gRPC server has besides its own services, assembled by
//! [`ServiceDefaults`]: the layer stack ([`server_layers`]), HTTP/2 and
//! message limits, health, reflection, the admin HTTP port, and a shutdown
//! that is graceful but bounded.

use std::{future::Future, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Request, Response};
use tokio::net::TcpListener;
use tonic::{
    body::Body,
    server::NamedService,
    service::Routes,
    transport::{
        Server,
        server::{Router, TcpIncoming},
    },
};
use tower::{
    Layer, Service, ServiceBuilder,
    layer::util::{Identity, Stack},
};

use crate::{
    auth::{AuthLayer, VerifyToken},
    context::ContextLayer,
    fault::{FaultDelays, FaultErrors, FaultLayer},
    health::{Health, Readiness},
    observe::ObserveLayer,
    protect::{ConcurrencyLimitLayer, PanicGuardLayer, RateLimitLayer},
    streams::Streams,
};

/// Server settings every shop service shares; flatten it into the
/// service's clap configuration.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// Serve gRPC reflection (v1 and v1alpha) so that grpcurl and similar
    /// tools can discover the API.
    #[arg(long, env = "GRPC_REFLECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub grpc_reflection: bool,

    /// How long in-flight calls may run after SIGTERM/SIGINT before the
    /// remaining connections are dropped.
    #[arg(long, env = "SHUTDOWN_GRACE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    /// After SIGTERM, how long to keep accepting calls while reporting
    /// NOT_SERVING, so that load balancers notice before the port closes.
    #[arg(long, env = "DRAIN_DELAY", default_value = "0s", value_parser = humantime::parse_duration)]
    pub drain_delay: Duration,

    /// How often the database (and other dependencies) are checked for
    /// readiness; health is NOT_SERVING while a check fails.
    #[arg(long, env = "HEALTH_CHECK_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub health_check_interval: Duration,

    /// Most calls in handlers at once; more are shed with UNAVAILABLE.
    #[arg(long, env = "MAX_CONCURRENT_REQUESTS", default_value_t = 1024)]
    pub max_concurrent_requests: usize,

    /// Sustained calls per second per caller (user, or peer address when
    /// anonymous); more are RESOURCE_EXHAUSTED with RetryInfo.
    #[arg(long, env = "RATE_LIMIT_PER_SECOND", default_value_t = 200.0)]
    pub rate_limit_per_second: f64,

    /// Calls a caller may make at once above the sustained rate.
    #[arg(long, env = "RATE_LIMIT_BURST", default_value_t = 400)]
    pub rate_limit_burst: u32,

    /// Concurrent HTTP/2 streams (calls) per connection.
    #[arg(long, env = "HTTP2_MAX_CONCURRENT_STREAMS", default_value_t = 1000)]
    pub http2_max_concurrent_streams: u32,

    /// Interval of HTTP/2 keepalive pings to clients.
    #[arg(long, env = "HTTP2_KEEPALIVE_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub http2_keepalive_interval: Duration,

    /// How long a keepalive ping may go unanswered before the connection
    /// is closed.
    #[arg(long, env = "HTTP2_KEEPALIVE_TIMEOUT", default_value = "20s", value_parser = humantime::parse_duration)]
    pub http2_keepalive_timeout: Duration,

    /// Longest a unary call may run: the caller's grpc-timeout is honoured
    /// up to this, and it is the deadline when the caller sends none.
    #[arg(long, env = "REQUEST_TIMEOUT_CAP", default_value = "30s", value_parser = humantime::parse_duration)]
    pub request_timeout_cap: Duration,

    /// Fault injection, off when empty: added latency per method, e.g.
    /// `GetUser=2s,*=10ms` (method name, /full/path or *).
    #[arg(long, env = "FAULT_DELAY", default_value = "")]
    pub fault_delay: FaultDelays,

    /// Fault injection, off when empty: injected errors per method with an
    /// optional probability, e.g. `GetUser=unavailable:0.25`; `panic` panics
    /// in the handler, `drop` runs the handler and answers UNAVAILABLE
    /// instead of its response.
    #[arg(long, env = "FAULT_ERROR", default_value = "")]
    pub fault_error: FaultErrors,

    /// Largest message, in bytes, the server accepts or sends; a larger
    /// one is refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "MAX_MESSAGE_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_message_bytes: usize,

    /// Stream limits and buffering.
    #[command(flatten)]
    pub streams: crate::streams::StreamArgs,

    /// TLS and mutual TLS.
    #[command(flatten)]
    pub tls: crate::tls::ServerTlsArgs,
}

/// The layers every shop server runs, outermost first.
pub type ServerLayers = ServiceBuilder<
    Stack<
        FaultLayer,
        Stack<
            PanicGuardLayer,
            Stack<
                ConcurrencyLimitLayer,
                Stack<
                    RateLimitLayer,
                    Stack<AuthLayer, Stack<ContextLayer, Stack<ObserveLayer, Identity>>>,
                >,
            >,
        >,
    >,
>;

/// The server stack, outermost first, and why in this order:
///
/// 1. observe (request id, trace context, span, metrics, access log):
///    first, so that everything below, refusals included, is counted,
///    logged with the request id and traced;
/// 2. context (the deadline): covers all the work below it, and carries
///    the caller's token, request id and trace into outgoing calls;
/// 3. auth: refuse what the caller may not call before doing any work;
/// 4. rate limit: after auth, so that the bucket is the caller's own
///    (anonymous callers share their peer address's);
/// 5. concurrency limit: sheds load that got this far, before it reaches
///    a handler;
/// 6. panic guard: right around the handler, so a panic there is one
///    INTERNAL answer;
/// 7. fault injection: next to the handler, so that it simulates a slow or
///    failing service (a caller's deadline still cuts it short).
pub fn server_layers(
    service: &str,
    args: &ServerArgs,
    verifier: Arc<dyn VerifyToken>,
) -> ServerLayers {
    let infrastructure = public_infrastructure_services();
    ServiceBuilder::new()
        .layer(ObserveLayer)
        .layer(ContextLayer::new(args.request_timeout_cap))
        .layer(AuthLayer::new(verifier, &infrastructure))
        .layer(RateLimitLayer::new(
            args.rate_limit_per_second,
            args.rate_limit_burst,
            &infrastructure,
        ))
        .layer(ConcurrencyLimitLayer::new(args.max_concurrent_requests))
        .layer(PanicGuardLayer)
        .layer(FaultLayer::new(
            service,
            args.fault_delay.clone(),
            args.fault_error.clone(),
        ))
}

/// The tonic server [`ServiceDefaults::server`] builds.
pub type ShopServer = Server<Stack<ServerLayers, Identity>>;

/// Applies the message size limit to a generated tonic server.
pub trait MessageLimits: Sized {
    /// The server with `max` bytes as its receive and send limit.
    fn limit_messages(self, max: usize) -> Self;
}

macro_rules! message_limits {
    ($($server:path => $api:path),* $(,)?) => {
        $(
            impl<T: $api> MessageLimits for $server {
                fn limit_messages(self, max: usize) -> Self {
                    self.max_decoding_message_size(max).max_encoding_message_size(max)
                }
            }
        )*
    };
}

message_limits!(
    shop_proto::user::v1::user_service_server::UserServiceServer<T> => shop_proto::user::v1::user_service_server::UserService,
    shop_proto::auth::v1::auth_service_server::AuthServiceServer<T> => shop_proto::auth::v1::auth_service_server::AuthService,
    shop_proto::order::v1::order_service_server::OrderServiceServer<T> => shop_proto::order::v1::order_service_server::OrderService,
);

/// Everything a shop server needs besides its own services, assembled in
/// one place (the `AddServiceDefaults()` of this stack): the layer stack,
/// HTTP/2 settings, message limits, stream bookkeeping, health driven by
/// readiness, the admin endpoint, and a bounded graceful shutdown.
///
/// ```text
/// let defaults = ServiceDefaults::new("user-service", &config.server, verifier, &[UserServiceServer::<UserGrpc>::NAME]);
/// let router = defaults.server().add_service(defaults.limited(UserServiceServer::new(users)));
/// defaults.serve(router, listener, admin_listener, move || async move { store.ping().await.is_ok() }, shutdown).await
/// ```
pub struct ServiceDefaults {
    name: &'static str,
    args: ServerArgs,
    verifier: Arc<dyn VerifyToken>,
    streams: Streams,
    health: Health,
    readiness: Readiness,
    served: Vec<&'static str>,
}

impl std::fmt::Debug for ServiceDefaults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceDefaults")
            .field("name", &self.name)
            .field("served", &self.served)
            .finish_non_exhaustive()
    }
}

impl ServiceDefaults {
    /// Defaults for the server `name` that serves the gRPC services
    /// `served` (by `NamedService::NAME`), verifying tokens with `verifier`.
    pub fn new(
        name: &'static str,
        args: &ServerArgs,
        verifier: Arc<dyn VerifyToken>,
        served: &[&'static str],
    ) -> ServiceDefaults {
        let health = Health::new();
        let readiness = Readiness::new(health.clone(), served);
        ServiceDefaults {
            name,
            args: args.clone(),
            verifier,
            streams: Streams::new(name, &args.streams),
            health,
            readiness,
            served: served.to_vec(),
        }
    }

    /// The stream bookkeeping handlers open their streams with.
    pub fn streams(&self) -> Streams {
        self.streams.clone()
    }

    /// Whether the server should get traffic.
    pub fn readiness(&self) -> Readiness {
        self.readiness.clone()
    }

    /// A tonic server with the shop layer stack and HTTP/2 settings.
    pub fn server(&self) -> ShopServer {
        let a = &self.args;
        Server::builder()
            .tcp_nodelay(true)
            .max_concurrent_streams(a.http2_max_concurrent_streams)
            .http2_keepalive_interval(Some(a.http2_keepalive_interval))
            .http2_keepalive_timeout(Some(a.http2_keepalive_timeout))
            .layer(server_layers(self.name, a, Arc::clone(&self.verifier)))
    }

    /// `server` with the configured message size limit.
    pub fn limited<S: MessageLimits>(&self, server: S) -> S {
        server.limit_messages(self.args.max_message_bytes)
    }

    /// Serves `router` (plus health and reflection) on `listener` and the
    /// admin endpoint on `admin`, checking readiness with `ready` every
    /// `HEALTH_CHECK_INTERVAL`, until `shutdown` completes. Then: health
    /// NOT_SERVING, `DRAIN_DELAY` of still accepting, open streams end with
    /// UNAVAILABLE, no new connections, in-flight calls finish, and after
    /// `SHUTDOWN_GRACE` whatever is left is dropped.
    pub async fn serve<L, ResBody, R, RFut>(
        self,
        router: Router<L>,
        listener: TcpListener,
        admin: TcpListener,
        ready: R,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()>
    where
        L: Layer<Routes>,
        L::Service: Service<Request<Body>, Response = Response<ResBody>> + Clone + Send + 'static,
        <L::Service as Service<Request<Body>>>::Future: Send,
        <L::Service as Service<Request<Body>>>::Error:
            Into<Box<dyn std::error::Error + Send + Sync>> + Send,
        ResBody: http_body::Body<Data = Bytes> + Send + 'static,
        ResBody::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        R: Fn() -> RFut + Send + 'static,
        RFut: Future<Output = bool> + Send,
    {
        let router = with_infrastructure(
            router,
            self.args.grpc_reflection,
            &self.served,
            &self.health,
        )?;
        let tls = crate::tls::server_tls(&self.args.tls)
            .map_err(|e| crate::config::ConfigError(format!("TLS: {e}")))?;
        let (admin_stop, admin_stopped) = tokio::sync::oneshot::channel::<()>();
        tracing::info!(
            service = self.name,
            grpc = %listener.local_addr()?,
            admin = %admin.local_addr()?,
            "serving"
        );
        let admin_task = tokio::spawn(crate::admin::serve(
            admin,
            self.readiness.clone(),
            async move {
                let _ = admin_stopped.await;
            },
        ));
        let checks = self
            .readiness
            .watch_dependencies(self.args.health_check_interval, ready);
        let hangups = tokio::spawn(log_hangups(self.name));

        let readiness = self.readiness.clone();
        let streams = self.streams.clone();
        let drain_delay = self.args.drain_delay;
        let name = self.name;
        let draining = async move {
            shutdown.await;
            readiness.start_draining();
            tracing::info!(service = name, drain_delay = ?drain_delay, "draining: NOT_SERVING");
            if !drain_delay.is_zero() {
                tokio::time::sleep(drain_delay).await;
            }
            // Open streams end with UNAVAILABLE so clients reconnect elsewhere.
            streams.drain();
        };
        if tls.is_some() {
            tracing::info!(
                service = self.name,
                mutual = self.args.tls.tls_client_ca_file.is_some(),
                "serving over TLS"
            );
        }
        let served = match tls {
            Some(tls) => {
                serve_incoming_with_grace(
                    router,
                    crate::tls::incoming(listener, tls),
                    draining,
                    self.args.shutdown_grace,
                )
                .await
            }
            None => {
                let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
                serve_incoming_with_grace(router, incoming, draining, self.args.shutdown_grace)
                    .await
            }
        };
        checks.abort();
        hangups.abort();
        let _ = admin_stop.send(());
        let _ = admin_task.await;
        tracing::info!(service = self.name, "stopped");
        served.map_err(Into::into)
    }
}

/// Health and reflection services are part of the serving infrastructure
/// and answer without a token; these are their service names, for
/// [`crate::auth::AuthLayer::new`].
pub fn public_infrastructure_services() -> [&'static str; 3] {
    [
        <tonic_health::pb::health_server::HealthServer<()> as NamedService>::NAME,
        <tonic_reflection::pb::v1::server_reflection_server::ServerReflectionServer<()> as NamedService>::NAME,
        <tonic_reflection::pb::v1alpha::server_reflection_server::ServerReflectionServer<()> as NamedService>::NAME,
    ]
}

/// Adds `grpc.health.v1.Health` (answering from `health`) and, when
/// `reflection` is on, both reflection versions (v1, and v1alpha since many
/// clients still speak only that) describing the shop protos, the health
/// service and the `google.rpc` error details (so clients can decode
/// them). Reflection lists `served` (the router's own services) and health,
/// not every service the protos define.
pub fn with_infrastructure<L>(
    router: Router<L>,
    reflection: bool,
    served: &[&'static str],
    health: &Health,
) -> Result<Router<L>, tonic_reflection::server::Error> {
    let mut router = router.add_service(health.service());
    if reflection {
        let builder = || {
            let health_name =
                <tonic_health::pb::health_server::HealthServer<()> as NamedService>::NAME;
            served.iter().chain([&health_name]).fold(
                tonic_reflection::server::Builder::configure()
                    .register_encoded_file_descriptor_set(shop_proto::FILE_DESCRIPTOR_SET)
                    .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                    // google.rpc error details, so clients can decode them.
                    .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET),
                |builder, name| builder.with_service_name(*name),
            )
        };
        router = router
            .add_service(builder().build_v1()?)
            .add_service(builder().build_v1alpha()?);
    }
    Ok(router)
}

/// Serves `router` on the connections of `incoming` (plain TCP or TLS)
/// until `shutdown` completes, then stops accepting connections and lets
/// in-flight calls finish for at most `grace`; after that the remaining
/// connections are dropped (tonic alone would wait forever for open
/// streams).
pub async fn serve_incoming_with_grace<L, ResBody, I, IO, IE>(
    router: Router<L>,
    incoming: I,
    shutdown: impl Future<Output = ()> + Send,
    grace: Duration,
) -> Result<(), tonic::transport::Error>
where
    I: futures_util::Stream<Item = Result<IO, IE>>,
    IO: tokio::io::AsyncRead
        + tokio::io::AsyncWrite
        + tonic::transport::server::Connected
        + Unpin
        + Send
        + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
    L: Layer<Routes>,
    L::Service: Service<Request<Body>, Response = Response<ResBody>> + Clone + Send + 'static,
    <L::Service as Service<Request<Body>>>::Future: Send,
    <L::Service as Service<Request<Body>>>::Error:
        Into<Box<dyn std::error::Error + Send + Sync>> + Send,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (draining_tx, draining_rx) = tokio::sync::oneshot::channel::<()>();
    let serve = router.serve_with_incoming_shutdown(incoming, async move {
        shutdown.await;
        let _ = draining_tx.send(());
    });
    tokio::pin!(serve);
    tokio::select! {
        result = &mut serve => result,
        _ = draining_rx => {
            match tokio::time::timeout(grace, &mut serve).await {
                Ok(result) => result,
                Err(_) => {
                    tracing::warn!(grace = ?grace, "grace period over; dropping the connections still open");
                    Ok(())
                }
            }
        }
    }
}

/// Takes SIGHUP for as long as the server runs, so that a `kill -HUP`
/// (log rotation habits, `docker compose kill -s HUP`) never ends the
/// process: with TLS configured it reloads the certificates (see
/// [`crate::tls`]); here it is only logged.
async fn log_hangups(service: &'static str) {
    #[cfg(unix)]
    if let Ok(mut hangups) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
    {
        while hangups.recv().await.is_some() {
            tracing::info!(service, "SIGHUP received (TLS files, if any, are reloaded)");
        }
    }
}

/// Resolves on SIGINT (Ctrl-C) or, on Unix, SIGTERM: what a binary passes
/// as its shutdown signal.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received, shutting down"),
        _ = term => tracing::info!("SIGTERM received, shutting down"),
    }
}
