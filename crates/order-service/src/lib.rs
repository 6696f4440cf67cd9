//! order-service: orders and their state machine over gRPC, a client of
//! user-service.
//!
//! Layout (the same in every shop service):
//! - [`config`]: flags and environment variables.
//! - [`domain`]: order rules (state machine, money, idempotency), no gRPC
//!   and no SQL.
//! - [`app`]: the use cases (idempotent placing, reading, status changes),
//!   free of gRPC types.
//! - [`repo`]: the storage trait, one SQL text for SQLite and PostgreSQL.
//! - [`grpc`]: the tonic service (`shop.order.v1.OrderService`): decode,
//!   call a use case, encode.
//! - [`users`]: the user-service client, with the caller's context
//!   propagated.
//! - [`stock`]: the inventory-service client (reservations, with this
//!   service's own service token).
//!
//! [`run`] wires them together; the binary is the kit's `service_main`.

pub mod app;
pub mod config;
pub mod domain;
pub mod grpc;
pub mod repo;
pub mod stock;
pub mod users;

use std::{future::Future, sync::Arc};

use shop_client::keys::Expected;
use shop_proto::order::v1::order_service_server::OrderServiceServer;
use shop_server::{BackgroundTask, Listeners, Server, ServiceInfo};
use shop_storage::ReadThrough;

use app::Orders;
pub use config::Config;
use grpc::OrderGrpc;

pub use shop_server::ConfigError;

/// order-service as the kit, devstack and deployments know it.
pub const SERVICE: ServiceInfo = ServiceInfo::new("order-service", 50052, 9102, "orders");

/// Confirmations of new orders that may wait for their batch call; beyond
/// this (inventory-service slow or down) the outbox worker confirms them.
const CONFIRM_QUEUE_CAPACITY: usize = 4096;

/// Runs order-service on `listeners` until `shutdown` completes: opens and
/// migrates the database, sets up token verification (configured keys, or
/// keys fetched from user-service in the background), then serves
/// OrderService with the shop defaults. Health is NOT_SERVING until the
/// verification keys are loaded and the database answers, and again while
/// draining.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let store = repo::connect(
        &config.service.database_url(&SERVICE),
        config.service.database_options(),
    )
    .await?;
    let page_tokens = config.service.page_tokens(&SERVICE)?;
    let tokens = &config.service.tokens;
    let expected = Expected::new(&tokens.jwt_issuer, &tokens.jwt_audience, tokens.jwt_leeway);
    let (user_channel, keys) = config.issuer.connect(&config.client, expected)?;

    let service_token = shop_client::service_token::ServiceToken::load(
        SERVICE.name,
        &config
            .service_account
            .secret_path(SERVICE.name, &config.service.data_dir),
        user_channel.clone(),
    )
    .map_err(ConfigError)?;
    let inventory_channel = shop_client::connect(
        "inventory-service",
        &config.inventory_service_url,
        &config.client,
    )
    .map_err(|e| ConfigError(format!("INVENTORY_SERVICE_URL: {e}")))?;
    let stock = Arc::new(stock::StockClient::new(
        inventory_channel,
        Arc::new(service_token),
        stock::Sharing {
            calls: config.stock_reserve_calls as usize,
            batch: config.stock_reserve_batch as usize,
        },
    ));

    let mut server = Server::new(SERVICE, &config.service, keys.verifier());
    let users = Arc::new(users::UserClient::new(
        user_channel,
        ReadThrough::new(
            config.user_status_cache_capacity,
            config.user_status_cache_max_age,
        ),
    ));
    server.stream_authority(users.clone());
    let (confirmations, queued) = app::confirm_queue(CONFIRM_QUEUE_CAPACITY);
    let orders = Orders::new(Arc::clone(&store), users, stock, confirmations);
    let (stop_confirming, confirming_stopped) = tokio::sync::oneshot::channel::<()>();
    let confirming = BackgroundTask::spawn(app::confirm_queued(orders.clone(), queued, async {
        let _ = confirming_stopped.await;
    }));
    let _settling = BackgroundTask::spawn(app::settle_every(
        orders.clone(),
        config.stock_outbox_interval,
    ));
    server.add(OrderServiceServer::new(OrderGrpc::new(
        orders,
        page_tokens,
        server.streams(),
        config.watch_resync_interval,
    )));

    // Serve at once; health is NOT_SERVING until the verification keys are
    // in and the database answers.
    let _fetching = keys.fetch_in_background();
    tracing::info!(
        database = store.backend(),
        user_service = %config.issuer.user_service_url,
        inventory_service = %config.inventory_service_url,
        "order-service starting"
    );
    let ready = move || {
        let store = Arc::clone(&store);
        let keys_loaded = keys.loaded();
        async move { keys_loaded && store.ping().await.is_ok() }
    };
    let served = server.serve(listeners, ready, shutdown).await;
    let _ = stop_confirming.send(());
    if !confirming.finish(config.confirm_drain_timeout).await {
        tracing::warn!(
            within = ?config.confirm_drain_timeout,
            "confirmations still queued are left to the outbox"
        );
    }
    served
}
