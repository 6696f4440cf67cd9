//! order-service: orders and their state machine over gRPC, a client of
//! user-service.
//!
//! Layout (the same in every shop service):
//! - [`config`]: flags and environment variables.
//! - [`domain`]: order rules (state machine, money, idempotency), no gRPC
//!   and no SQL.
//! - [`repo`]: the storage trait with PostgreSQL and SQLite backends.
//! - [`grpc`]: the tonic service (`shop.order.v1.OrderService`).
//! - [`users`]: the user-service client, with the caller's context
//!   propagated.
//! - [`error`]: the one mapping from failures to gRPC statuses.
//!
//! [`run`] wires them together; the binary only parses the configuration,
//! binds the socket and passes the shutdown signal.

pub mod config;
pub mod domain;
pub mod error;
pub mod grpc;
pub mod repo;
pub mod users;

use std::{future::Future, sync::Arc};

use anyhow::Context as _;
use shop_auth::{KeySet, TokenVerifier, VerificationKey, load_or_generate_secret};
use shop_middleware::{
    auth::VerifyToken,
    config::redact_url,
    keys::RemoteKeys,
    pagination::PageTokenCodec,
    server::{serve_with_grace, server_layers, with_infrastructure},
    streams::Streams,
};
use shop_proto::order::v1::order_service_server::OrderServiceServer;
use tokio::net::TcpListener;
use tonic::{server::NamedService, transport::Server};
use tonic_health::{ServingStatus, server::HealthReporter};

pub use config::Config;
use grpc::OrderGrpc;

pub use shop_middleware::config::ConfigError;

/// Runs order-service on `listener` until `shutdown` completes: opens and
/// migrates the database, sets up token verification (configured keys, or
/// keys fetched from user-service in the background), then serves
/// OrderService, health and reflection. Health is NOT_SERVING until the
/// verification keys are loaded, and again while draining.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let store = repo::connect(&config.database_url, config.database_max_connections)
        .await
        .with_context(|| format!("opening {}", redact_url(&config.database_url)))?;
    let secret = load_or_generate_secret(&config.page_token_secret_path())
        .map_err(|e| ConfigError(format!("PAGE_TOKEN_SECRET_FILE: {e}")))?;
    let user_channel = users::channel(
        &config.user_service_url,
        config.user_service_connect_timeout,
    )
    .map_err(|e| {
        ConfigError(format!(
            "USER_SERVICE_URL {:?}: {e}",
            config.user_service_url
        ))
    })?;

    let keys = token_keys(&config, user_channel.clone())?;
    let streams = Streams::new("order-service", &config.server.streams);
    let orders = OrderGrpc::new(
        Arc::clone(&store),
        users::client(user_channel),
        PageTokenCodec::new(secret),
        streams.clone(),
        config.watch_resync_interval,
    );
    let max_message = config.server.max_message_bytes;
    let router = Server::builder()
        .layer(server_layers(
            "order-service",
            &config.server,
            keys.verifier(),
        ))
        .add_service(
            OrderServiceServer::new(orders)
                .max_decoding_message_size(max_message)
                .max_encoding_message_size(max_message),
        );
    let (router, health) = with_infrastructure(
        router,
        config.server.grpc_reflection,
        &[<OrderServiceServer<OrderGrpc> as NamedService>::NAME],
    )?;

    // Serve at once (health answers NOT_SERVING meanwhile), and turn
    // SERVING when the verification keys are in.
    set_status(&health, ServingStatus::NotServing).await;
    let readiness = tokio::spawn(become_ready(health.clone(), keys));
    tracing::info!(
        addr = %listener.local_addr()?,
        database = store.backend(),
        user_service = %config.user_service_url,
        "order-service serving"
    );
    let draining = async move {
        shutdown.await;
        readiness.abort();
        set_status(&health, ServingStatus::NotServing).await;
        // Open streams end with UNAVAILABLE so clients reconnect elsewhere.
        streams.drain();
        tracing::info!("order-service draining");
    };
    serve_with_grace(router, listener, draining, config.server.shutdown_grace).await?;
    tracing::info!("order-service stopped");
    Ok(())
}

/// Where token verification keys come from.
enum TokenKeys {
    /// `JWT_PUBLIC_KEY_FILES`: fixed keys.
    Local(Arc<TokenVerifier>),
    /// Fetched from user-service (the default).
    Remote(Arc<RemoteKeys>),
}

impl TokenKeys {
    fn verifier(&self) -> Arc<dyn VerifyToken> {
        match self {
            TokenKeys::Local(local) => local.clone(),
            TokenKeys::Remote(remote) => remote.clone(),
        }
    }
}

/// Configured keys when `JWT_PUBLIC_KEY_FILES` is set; otherwise keys
/// fetched from user-service.
fn token_keys(
    config: &Config,
    user_channel: tonic::transport::Channel,
) -> anyhow::Result<TokenKeys> {
    if config.jwt_public_key_files.is_empty() {
        return Ok(TokenKeys::Remote(Arc::new(RemoteKeys::new(
            user_channel,
            config.jwt_issuer.clone(),
            config.jwt_audience.clone(),
            config.jwt_leeway,
            config.jwt_key_refresh_interval,
        ))));
    }
    let mut keys = KeySet::new();
    for path in &config.jwt_public_key_files {
        keys.insert(
            VerificationKey::load(path)
                .map_err(|e| ConfigError(format!("JWT_PUBLIC_KEY_FILES: {e}")))?,
        );
    }
    Ok(TokenKeys::Local(Arc::new(TokenVerifier::new(
        keys,
        &config.jwt_issuer,
        &config.jwt_audience,
        config.jwt_leeway,
    ))))
}

async fn become_ready(health: HealthReporter, keys: TokenKeys) {
    if let TokenKeys::Remote(remote) = keys {
        remote.fetch_with_retry().await;
    }
    set_status(&health, ServingStatus::Serving).await;
    tracing::info!("order-service ready");
}

async fn set_status(health: &HealthReporter, status: ServingStatus) {
    health
        .set_service_status(
            <OrderServiceServer<OrderGrpc> as NamedService>::NAME,
            status,
        )
        .await;
    health.set_service_status("", status).await;
}
