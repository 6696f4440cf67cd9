//! Serving a router until shutdown, gracefully but bounded: the health
//! and reflection services every server adds, the grace period tonic lacks
//! (it would wait for open streams forever), and SIGHUP taken for as long
//! as the server runs.

use std::{future::Future, time::Duration};

use bytes::Bytes;
use http::{Request, Response};
use tonic::{body::Body, server::NamedService, service::Routes, transport::server::Router};
use tower::{Layer, Service};

use crate::health::Health;

/// Health and reflection services are part of the serving infrastructure
/// and answer without a token; these are their service names, for
/// the auth and rate-limit layers.
pub fn infrastructure_services() -> [&'static str; 3] {
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
/// `shop_tls`); here it is only logged.
pub(crate) async fn log_hangups(service: &'static str) {
    #[cfg(unix)]
    if let Ok(mut hangups) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
    {
        while hangups.recv().await.is_some() {
            tracing::info!(service, "SIGHUP received (TLS files, if any, are reloaded)");
        }
    }
}
