//! [`Server`]: everything a shop gRPC server has besides its own services,
//! and the one call that registers each of them.
//!
//! ```text
//! let mut server = Server::new(SERVICE, &config.service, verifier);
//! server.add(BillingServiceServer::new(billing));   // health, reflection, limits
//! server.add(RefundServiceServer::new(refunds));
//! server.serve(listeners, move || ready_check(), shutdown).await
//! ```
//!
//! `add` records the service's name for health and reflection and applies
//! the message size limit; the layer stack ([`crate::layers`]) observes,
//! authorizes and protects every registered service alike. `serve` adds
//! health and reflection, serves the admin HTTP port, checks readiness
//! every `HEALTH_CHECK_INTERVAL` and shuts down gracefully but bounded.

use futures_util::StreamExt as _;
use std::{convert::Infallible, future::Future, sync::Arc};

use http::{Request, Response};
use shop_auth::VerifyToken;
use shop_proto::GeneratedServer;
use tonic::{
    body::Body,
    service::RoutesBuilder,
    transport::{Server as TonicServer, server::Router},
};
use tonic_web::GrpcWebLayer;
use tower::{
    Service,
    layer::util::{Identity, Stack},
    util::{Either, option_layer},
};
use tower_http::cors::CorsLayer;

use crate::layers::{rest::RestLayer, web::MarkProtocolLayer};

use crate::{
    ConfigError,
    args::{ServerArgs, ServiceArgs},
    coalesce::Coalesced,
    health::{Health, Readiness},
    layers::{ServerLayers, policy_layers, server_layers, stream_limits::StreamAuthority},
    serve::{infrastructure_services, log_hangups, serve_incoming_with_grace, with_infrastructure},
    service::{Listeners, ServiceInfo},
    streams::Streams,
};

/// The shop layer stack behind gRPC-Web translation, the REST routes, the
/// protocol mark they need, and CORS (when origins are allowed), outermost
/// last.
pub type ShopLayers = Stack<
    ServerLayers,
    Stack<
        GrpcWebLayer,
        Stack<RestLayer, Stack<MarkProtocolLayer, Stack<Either<CorsLayer, Identity>, Identity>>>,
    >,
>;

/// A tonic server with [`ShopLayers`].
pub type ShopServer = TonicServer<ShopLayers>;

/// A shop server being assembled: register its services with
/// [`Server::add`], then [`Server::serve`].
pub struct Server {
    service: ServiceInfo,
    args: ServerArgs,
    verifier: Arc<dyn VerifyToken>,
    streams: Streams,
    health: Health,
    readiness: Readiness,
    routes: RoutesBuilder,
    served: Vec<&'static str>,
    authority: Option<Arc<dyn StreamAuthority>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("service", &self.service.name)
            .field("served", &self.served)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// The server of `service`, configured by `args`, verifying tokens with
    /// `verifier`.
    pub fn new(service: ServiceInfo, args: &ServiceArgs, verifier: Arc<dyn VerifyToken>) -> Server {
        let streams = Streams::new(service.name, &args.server.streams);
        let health = Health::new(streams.clone());
        let readiness = Readiness::new(health.clone(), &[]);
        Server {
            service,
            args: args.server.clone(),
            verifier,
            streams,
            health,
            readiness,
            routes: RoutesBuilder::default(),
            served: Vec::new(),
            authority: None,
        }
    }

    /// Registers a generated gRPC server: its name is served by health and
    /// reflection, and `MAX_MESSAGE_BYTES` limits what it receives and
    /// sends.
    pub fn add<S>(&mut self, server: S) -> &mut Server
    where
        S: GeneratedServer
            + Service<Request<Body>, Response = Response<Body>, Error = Infallible>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.served.push(S::NAME);
        self.readiness.register(S::NAME);
        self.routes
            .add_service(server.with_message_limit(self.args.max_message_bytes));
        self
    }

    /// Sets who tells whether the account behind a stream still stands
    /// (active, holding the roles its token grants); without one, streams
    /// end only by their limits and their token's expiry.
    pub fn stream_authority(&mut self, authority: Arc<dyn StreamAuthority>) -> &mut Server {
        self.authority = Some(authority);
        self
    }

    /// The stream bookkeeping handlers open their streams with.
    pub fn streams(&self) -> Streams {
        self.streams.clone()
    }

    /// Whether the server should get traffic.
    pub fn readiness(&self) -> Readiness {
        self.readiness.clone()
    }

    /// The registered services behind the layer stack, without health,
    /// reflection, the admin port or the graceful shutdown (the stack
    /// benchmark serves this).
    pub fn into_router(self) -> Result<Router<ShopLayers>, ConfigError> {
        Ok(self.tonic()?.add_routes(self.routes.routes()))
    }

    /// A tonic server with the shop layer stack and HTTP/2 settings; an
    /// error names a REST binding in the protos that cannot be served.
    fn tonic(&self) -> Result<ShopServer, ConfigError> {
        let a = &self.args;
        let rest = RestLayer::new(self.service.name, &self.served, a.max_message_bytes)
            .map_err(|e| ConfigError(format!("REST routes: {e}")))?;
        Ok(TonicServer::builder()
            // gRPC-Web from browsers comes over HTTP/1.1 on plain HTTP.
            .accept_http1(true)
            .tcp_nodelay(true)
            .max_concurrent_streams(a.http2_max_concurrent_streams)
            .http2_max_header_list_size(a.http2_max_header_list_size)
            .http2_max_local_error_reset_streams(Some(a.http2_max_local_error_resets))
            // The grace is enforced by `connections` (see there).
            .max_connection_age(a.max_connection_age)
            .http2_keepalive_interval(Some(a.http2_keepalive_interval))
            .http2_keepalive_timeout(Some(a.http2_keepalive_timeout))
            // Outside everything: CORS answers preflights, then REST and
            // gRPC-Web become gRPC, so the layers below see native calls
            // only.
            .layer(option_layer(crate::layers::web::cors(
                &a.cors_allowed_origins,
            )))
            .layer(crate::layers::web::mark_protocol())
            .layer(rest)
            .layer(GrpcWebLayer::new())
            .layer(server_layers(policy_layers(
                self.service.name,
                a,
                Arc::clone(&self.verifier),
                &infrastructure_services(),
                self.streams.clone(),
                self.authority.clone(),
            ))))
    }

    /// Serves the registered services (plus health and reflection) on
    /// `listeners.grpc` and the admin endpoint on `listeners.admin`,
    /// checking readiness with `ready` every `HEALTH_CHECK_INTERVAL`, until
    /// `shutdown` completes. Then: health NOT_SERVING, `DRAIN_DELAY` of
    /// still accepting, open streams end with UNAVAILABLE, no new
    /// connections, in-flight calls finish, and after `SHUTDOWN_GRACE`
    /// whatever is left is dropped.
    pub async fn serve<R, RFut>(
        self,
        listeners: Listeners,
        ready: R,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()>
    where
        R: Fn() -> RFut + Send + 'static,
        RFut: Future<Output = bool> + Send,
    {
        let name = self.service.name;
        let mut tonic = self.tonic()?;
        let router = tonic.add_routes(self.routes.routes());
        let router = with_infrastructure(
            router,
            self.args.grpc_reflection,
            &self.served,
            &self.health,
        )?;
        let tls = shop_tls::server::server_tls(&self.args.tls)
            .map_err(|e| ConfigError(format!("TLS: {e}")))?;
        let Listeners { grpc, admin } = listeners;
        let (admin_stop, admin_stopped) = tokio::sync::oneshot::channel::<()>();
        tracing::info!(
            service = name,
            grpc = %grpc.local_addr()?,
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
        let hangups = tokio::spawn(log_hangups(name));

        let readiness = self.readiness.clone();
        let streams = self.streams.clone();
        let drain_delay = self.args.drain_delay;
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
        let grace = self.args.shutdown_grace;
        let served = match tls {
            Some(tls) => {
                tracing::info!(
                    service = name,
                    mutual = self.args.tls.tls_client_ca_file.is_some(),
                    "serving over TLS"
                );
                let coalesce = self.args.coalesce_writes;
                let accepted = crate::connections::accept_configured(grpc, &self.args, name);
                let incoming = shop_tls::server::incoming(accepted, tls)
                    .map(move |handshake| handshake.map(|stream| Coalesced::new(stream, coalesce)));
                serve_incoming_with_grace(router, incoming, draining, grace).await
            }
            None => {
                let incoming = crate::connections::plain_incoming(grpc, &self.args, name);
                serve_incoming_with_grace(router, incoming, draining, grace).await
            }
        };
        checks.abort();
        hangups.abort();
        let _ = admin_stop.send(());
        let _ = admin_task.await;
        tracing::info!(service = name, "stopped");
        served.map_err(Into::into)
    }
}
