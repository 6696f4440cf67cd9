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
    auth::VerifyToken, client, client::ClientChannel, config::redact_url, keys::RemoteKeys,
    pagination::PageTokenCodec, server::ServiceDefaults,
};
use shop_proto::order::v1::order_service_server::OrderServiceServer;
use tokio::net::TcpListener;
use tonic::server::NamedService;

pub use config::Config;
use grpc::OrderGrpc;

pub use shop_middleware::config::ConfigError;

/// Runs order-service on `listener` (and its admin endpoint on
/// `config.admin_addr`) until `shutdown` completes: opens and migrates the
/// database, sets up token verification (configured keys, or keys fetched
/// from user-service in the background), then serves OrderService with the
/// shop defaults. Health is NOT_SERVING until the verification keys are
/// loaded and the database answers, and again while draining.
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
    let user_channel = client::connect("user-service", &config.user_service_url, &config.client)
        .map_err(|e| ConfigError(format!("USER_SERVICE_URL: {e}")))?;

    let keys = token_keys(&config, user_channel.clone())?;
    let admin = TcpListener::bind(config.admin_addr)
        .await
        .map_err(|e| ConfigError(format!("ADMIN_ADDR {}: {e}", config.admin_addr)))?;
    let defaults = ServiceDefaults::new(
        "order-service",
        &config.server,
        keys.verifier(),
        &[<OrderServiceServer<OrderGrpc> as NamedService>::NAME],
    );
    let orders = OrderGrpc::new(
        Arc::clone(&store),
        users::client(user_channel),
        PageTokenCodec::new(secret),
        defaults.streams(),
        config.watch_resync_interval,
    );
    let router = defaults
        .server()
        .add_service(defaults.limited(OrderServiceServer::new(orders)));

    // Serve at once; health is NOT_SERVING until the verification keys are
    // in and the database answers.
    let fetching = match &keys {
        TokenKeys::Remote(remote) => {
            let remote = Arc::clone(remote);
            Some(tokio::spawn(async move { remote.fetch_with_retry().await }))
        }
        TokenKeys::Local(_) => None,
    };
    tracing::info!(
        database = store.backend(),
        user_service = %config.user_service_url,
        "order-service starting"
    );
    let ready = move || {
        let store = Arc::clone(&store);
        let keys_loaded = keys.loaded();
        async move { keys_loaded && store.ping().await.is_ok() }
    };
    let served = defaults
        .serve(router, listener, admin, ready, shutdown)
        .await;
    if let Some(fetching) = fetching {
        fetching.abort();
    }
    served
}

/// Where token verification keys come from.
enum TokenKeys {
    /// `JWT_PUBLIC_KEY_FILES`: fixed keys.
    Local(Arc<TokenVerifier>),
    /// Fetched from user-service (the default).
    Remote(Arc<RemoteKeys>),
}

impl TokenKeys {
    fn loaded(&self) -> bool {
        match self {
            TokenKeys::Local(_) => true,
            TokenKeys::Remote(remote) => remote.is_loaded(),
        }
    }

    fn verifier(&self) -> Arc<dyn VerifyToken> {
        match self {
            TokenKeys::Local(local) => local.clone(),
            TokenKeys::Remote(remote) => remote.clone(),
        }
    }
}

/// Configured keys when `JWT_PUBLIC_KEY_FILES` is set; otherwise keys
/// fetched from user-service.
fn token_keys(config: &Config, user_channel: ClientChannel) -> anyhow::Result<TokenKeys> {
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
