//! Storage of products, stock and reservations.
//!
//! One trait, [`InventoryRepo`], with one SQL implementation for SQLite
//! and PostgreSQL alike ([`SqlStore`], through `shop-storage`). Every
//! change that could make stock negative is a conditional update inside a
//! transaction, so concurrent reservations of the last unit cannot both
//! win on either backend.

mod cached;
mod sql;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::domain::{Product, ProductDraft, Reservation, ReserveItem, Shortage, Sku, StockChange};

pub use cached::{CachedStore, ProductCache};
pub use shop_storage::{Notice, StoreError as RepoError};
pub use sql::SqlStore;

/// What an AdjustStock did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Adjusted {
    /// Applied; the product after it.
    Applied(Product),
    /// The request id was applied before; the product now, and whether the
    /// earlier change was the same (sku and delta).
    Repeated {
        /// The product now.
        product: Product,
        /// The earlier change had the same sku and delta.
        same: bool,
    },
    /// No such product.
    NotFound,
    /// on_hand would fall below what is reserved (or below zero).
    BelowReserved(Product),
}

/// What a ReserveStock did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reserved {
    /// The units are held.
    Held(Reservation),
    /// The order already has a reservation (in whatever state).
    Existing(Reservation),
    /// Nothing is held: these items cannot be had.
    Short(Vec<Shortage>),
    /// Nothing is held: the products are priced in different currencies.
    MixedCurrencies,
}

/// Products, stock and reservations.
#[async_trait]
pub trait InventoryRepo: Send + Sync {
    /// Creates a product with no stock, or replaces its catalogue fields.
    async fn put_product(
        &self,
        draft: &ProductDraft,
        now: DateTime<Utc>,
    ) -> Result<Product, RepoError>;

    /// One product.
    async fn get_product(&self, sku: &Sku) -> Result<Option<Product>, RepoError>;

    /// Up to `limit` products with a sku after `after`, by sku.
    async fn list_products(
        &self,
        after: Option<&str>,
        active_only: bool,
        limit: u32,
    ) -> Result<Vec<Product>, RepoError>;

    /// Applies a stock change once per request id.
    async fn adjust_stock(
        &self,
        change: &StockChange,
        now: DateTime<Utc>,
    ) -> Result<Adjusted, RepoError>;

    /// Holds every item for `order_id` (one or more, each sku once), or
    /// nothing.
    async fn reserve(
        &self,
        order_id: Uuid,
        items: &[ReserveItem],
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Reserved, RepoError>;

    /// The reservation of an order.
    async fn get_reservation(&self, order_id: Uuid) -> Result<Option<Reservation>, RepoError>;

    /// Confirms a pending reservation that has not expired at `now`; the
    /// reservation after (unchanged when it was not pending).
    async fn confirm(
        &self,
        order_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<Option<Reservation>, RepoError>;

    /// Confirms each of `order_ids` as [`InventoryRepo::confirm`] would, in
    /// one transaction; the reservations after, in the order given,
    /// without the ids that have none.
    async fn confirm_all(
        &self,
        order_ids: &[Uuid],
        now: DateTime<Utc>,
    ) -> Result<Vec<Reservation>, RepoError>;

    /// Releases a pending or confirmed reservation (returning its units),
    /// or records an empty released one for an order never reserved; the
    /// reservation after.
    async fn release(&self, order_id: Uuid, now: DateTime<Utc>) -> Result<Reservation, RepoError>;

    /// Expires the pending reservations due at `now`, returning their
    /// units; how many.
    async fn expire_due(&self, now: DateTime<Utc>) -> Result<u64, RepoError>;

    /// Notices of products whose availability may have changed (their skus),
    /// from this process and, on PostgreSQL, every replica.
    fn changes(&self) -> broadcast::Receiver<Notice>;

    /// Checks that the database answers.
    async fn ping(&self) -> Result<(), RepoError>;

    /// "postgres" or "sqlite", for logs.
    fn backend(&self) -> &'static str;
}

/// inventory-service's migrations, per backend.
static MIGRATIONS: shop_storage::Migrations = shop_storage::migrations!();

pub use shop_storage::ConnectOptions;

/// Opens the database named by `url`, applies migrations, starts
/// listening for stock changes and caches products by sku as `cache` says.
pub async fn connect(
    url: &str,
    options: ConnectOptions,
    cache: ProductCache,
) -> Result<Arc<dyn InventoryRepo>, RepoError> {
    let db = shop_storage::connect_with(url, options, &MIGRATIONS).await?;
    let store = SqlStore::new(db).await?;
    if !cache.is_on() {
        return Ok(Arc::new(store));
    }
    Ok(Arc::new(CachedStore::new(store, cache)))
}
