//! inventory-service: the catalogue (products and prices) and the stock,
//! with reservations that order-service takes for each order (reserve,
//! then confirm or release; a reservation left pending expires).
//!
//! Layout (the same in every shop service):
//! - [`config`]: flags and environment variables.
//! - [`domain`]: skus, products, stock changes, reservations; no gRPC,
//!   no SQL.
//! - [`app`]: the use cases, the expiry sweeper and stock watches.
//! - [`repo`]: the storage trait, one SQL text for SQLite and PostgreSQL.
//! - [`grpc`]: the tonic service (`shop.inventory.v1.InventoryService`).

pub mod app;
pub mod config;
pub mod domain;
pub mod grpc;
pub mod repo;

use std::{future::Future, sync::Arc};

use shop_client::keys::Expected;
use shop_proto::inventory::v1::inventory_service_server::InventoryServiceServer;
use shop_server::{BackgroundTask, Listeners, Server, ServiceInfo};

pub use config::Config;

/// inventory-service as the kit, devstack and deployments know it.
pub const SERVICE: ServiceInfo = ServiceInfo::new("inventory-service", 50053, 9103, "inventory");

/// Runs inventory-service on `listeners` until `shutdown` completes: opens
/// and migrates the database, fetches token keys from user-service in the
/// background, sweeps expired reservations, and serves InventoryService.
/// Health is NOT_SERVING until the keys are loaded and the database
/// answers, and again while draining.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let store = repo::connect(
        &config.service.database_url(&SERVICE),
        config.service.database_options(),
        config.product_cache(),
    )
    .await?;
    let page_tokens = config.service.page_tokens(&SERVICE)?;
    let tokens = &config.service.tokens;
    let expected = Expected::new(&tokens.jwt_issuer, &tokens.jwt_audience, tokens.jwt_leeway);
    let (_users, keys) = config.issuer.connect(&config.client, expected)?;

    let mut server = Server::new(SERVICE, &config.service, keys.verifier());
    let inventory = app::Inventory::new(Arc::clone(&store), config.reservation_ttl);
    if config.seed_catalogue {
        inventory
            .seed_catalogue(config.seed_catalogue_units)
            .await?;
    }
    let _sweeping = BackgroundTask::spawn(app::expire_every(
        inventory.clone(),
        config.reservation_sweep_interval,
    ));
    server.add(InventoryServiceServer::new(grpc::InventoryGrpc::new(
        inventory,
        page_tokens,
        server.streams(),
    )));

    let _fetching = keys.fetch_in_background();
    let ready = move || {
        let store = Arc::clone(&store);
        let keys_loaded = keys.loaded();
        async move { keys_loaded && store.ping().await.is_ok() }
    };
    server.serve(listeners, ready, shutdown).await
}
