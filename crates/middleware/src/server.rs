//! What every shop gRPC server has besides its own services: health,
//! reflection, and a shutdown that is graceful but bounded.

use std::{future::Future, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Request, Response};
use tokio::net::TcpListener;
use tonic::{
    body::Body,
    server::NamedService,
    service::Routes,
    transport::server::{Router, TcpIncoming},
};
use tonic_health::server::HealthReporter;
use tower::{
    Layer, Service, ServiceBuilder,
    layer::util::{Identity, Stack},
};

use crate::{
    auth::{AuthLayer, VerifyToken},
    context::ContextLayer,
    fault::{FaultDelays, FaultErrors, FaultLayer},
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
    #[arg(long, env = "SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    /// Longest a unary call may run: the caller's grpc-timeout is honoured
    /// up to this, and it is the deadline when the caller sends none.
    #[arg(long, env = "REQUEST_TIMEOUT_CAP", default_value = "30s", value_parser = humantime::parse_duration)]
    pub request_timeout_cap: Duration,

    /// Fault injection, off when empty: added latency per method, e.g.
    /// `GetUser=2s,*=10ms` (method name, /full/path or *).
    #[arg(long, env = "FAULT_DELAY", default_value = "")]
    pub fault_delay: FaultDelays,

    /// Fault injection, off when empty: injected errors per method with an
    /// optional probability, e.g. `GetUser=unavailable:0.25`.
    #[arg(long, env = "FAULT_ERROR", default_value = "")]
    pub fault_error: FaultErrors,

    /// Largest message, in bytes, the server accepts or sends; a larger
    /// one is refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "MAX_MESSAGE_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_message_bytes: usize,

    /// Stream limits and buffering.
    #[command(flatten)]
    pub streams: crate::streams::StreamArgs,
}

/// The layers every shop server runs, outermost first.
pub type ServerLayers =
    ServiceBuilder<Stack<FaultLayer, Stack<AuthLayer, Stack<ContextLayer, Identity>>>>;

/// The server stack, in this order and for these reasons:
///
/// 1. context: the deadline must cover everything below it (auth that
///    fetches keys, injected delays, the handler), and the request id must
///    exist before anything logs;
/// 2. auth: refuse what the caller may not call before doing any work for
///    it;
/// 3. fault injection: next to the handler, so that it simulates a slow or
///    failing service rather than a slow network, and never lets an
///    unauthenticated call through.
pub fn server_layers(
    service: &str,
    args: &ServerArgs,
    verifier: Arc<dyn VerifyToken>,
) -> ServerLayers {
    ServiceBuilder::new()
        .layer(ContextLayer::new(args.request_timeout_cap))
        .layer(AuthLayer::new(verifier, &public_infrastructure_services()))
        .layer(FaultLayer::new(
            service,
            args.fault_delay.clone(),
            args.fault_error.clone(),
        ))
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

/// Adds `grpc.health.v1.Health` and, when `reflection` is on, both
/// reflection versions (v1, and v1alpha since many clients still speak only
/// that) describing the shop protos, the health service and the
/// `google.rpc` error details (so clients can decode them). Reflection
/// lists `served` (the router's own services, by `NamedService::NAME`) and
/// health, not every service the protos define. Returns the router and the
/// reporter that flips serving status: the caller sets each service's
/// status (unknown services answer NOT_FOUND), and the server-wide `""`
/// starts out SERVING, tonic-health's default, until the caller says
/// otherwise.
pub fn with_infrastructure<L>(
    router: Router<L>,
    reflection: bool,
    served: &[&'static str],
) -> Result<(Router<L>, HealthReporter), tonic_reflection::server::Error> {
    let (reporter, health) = tonic_health::server::health_reporter();
    let mut router = router.add_service(health);
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
    Ok((router, reporter))
}

/// Serves `router` on `listener` until `shutdown` completes, then stops
/// accepting connections and lets in-flight calls finish for at most
/// `grace`; after that the remaining connections are dropped (tonic alone
/// would wait forever for open streams).
pub async fn serve_with_grace<L, ResBody>(
    router: Router<L>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
    grace: Duration,
) -> Result<(), tonic::transport::Error>
where
    L: Layer<Routes>,
    L::Service: Service<Request<Body>, Response = Response<ResBody>> + Clone + Send + 'static,
    <L::Service as Service<Request<Body>>>::Future: Send,
    <L::Service as Service<Request<Body>>>::Error:
        Into<Box<dyn std::error::Error + Send + Sync>> + Send,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (draining_tx, draining_rx) = tokio::sync::oneshot::channel::<()>();
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
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
