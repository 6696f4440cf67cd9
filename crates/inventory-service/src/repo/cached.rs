//! Products by sku, cached in front of the database: GetProduct is the
//! catalogue's hottest read, and each stock watch re-reads its products on
//! every change notice.
//!
//! Consistency (see `shop_storage::ReadThrough`): a write through this
//! store invalidates the products it touched before it answers; a write
//! through another replica reaches this one as its change notice
//! (PostgreSQL `NOTIFY`, sent by the writing transaction, for every change
//! of a product's row); and no entry is served longer than
//! `PRODUCT_CACHE_MAX_AGE` after it was read, notices or not. Stock
//! watches hear each notice only after the cache has dropped its product,
//! so the re-read they make on it is never the old row.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use shop_storage::{CacheBounds, Notice, Notices, ReadThrough};
use tokio::sync::broadcast;
use uuid::Uuid;

use super::{Adjusted, InventoryRepo, RepoError, Reserved, SqlStore, sql::CHANGE_FEED_CAPACITY};
use crate::domain::{Product, ProductDraft, Reservation, ReserveItem, Sku, StockChange};

/// How products are cached: `PRODUCT_CACHE_CAPACITY` entries at most, each
/// served for at most `PRODUCT_CACHE_MAX_AGE`.
pub type ProductCache = CacheBounds;

/// [`SqlStore`] with products by sku cached.
#[derive(Debug, Clone)]
pub struct CachedStore {
    inner: SqlStore,
    products: Arc<ReadThrough<Sku, Product>>,
    /// The store's change notices, each relayed once the cache has acted
    /// on it.
    changes: Notices,
}

impl CachedStore {
    /// Caches `inner`'s products as `bounds` say, dropping entries as its
    /// change notices arrive.
    pub fn new(inner: SqlStore, bounds: ProductCache) -> CachedStore {
        let products = ReadThrough::new(bounds.capacity, bounds.max_age);
        let changes = products.follow_and_relay(
            inner.notices(),
            |sku| Sku::parse(sku).ok(),
            CHANGE_FEED_CAPACITY,
        );
        CachedStore {
            inner,
            products,
            changes,
        }
    }

    /// Drops the cached products of `skus` (a write's, before it answers).
    fn forget<'a>(&self, skus: impl IntoIterator<Item = &'a str>) {
        for sku in skus {
            match Sku::parse(sku) {
                Ok(sku) => self.products.invalidate(&sku),
                // Not a sku this store could have cached; be safe anyway.
                Err(_) => self.products.clear(),
            }
        }
    }

    /// Drops the cached products of every line of `reservations`.
    fn forget_lines<'a>(&self, reservations: impl IntoIterator<Item = &'a Reservation>) {
        self.forget(
            reservations
                .into_iter()
                .flat_map(|r| &r.lines)
                .map(|line| line.sku.as_str()),
        );
    }
}

#[async_trait]
impl InventoryRepo for CachedStore {
    async fn put_product(
        &self,
        draft: &ProductDraft,
        now: DateTime<Utc>,
    ) -> Result<Product, RepoError> {
        let put = self.inner.put_product(draft, now).await;
        self.products.invalidate(&draft.sku);
        put
    }

    async fn get_product(&self, sku: &Sku) -> Result<Option<Product>, RepoError> {
        self.products
            .get_or_load(sku, || self.inner.get_product(sku))
            .await
    }

    async fn list_products(
        &self,
        after: Option<&str>,
        active_only: bool,
        limit: u32,
    ) -> Result<Vec<Product>, RepoError> {
        self.inner.list_products(after, active_only, limit).await
    }

    async fn adjust_stock(
        &self,
        change: &StockChange,
        now: DateTime<Utc>,
    ) -> Result<Adjusted, RepoError> {
        let adjusted = self.inner.adjust_stock(change, now).await;
        self.products.invalidate(&change.sku);
        adjusted
    }

    async fn reserve(
        &self,
        order_id: Uuid,
        items: &[ReserveItem],
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Reserved, RepoError> {
        let reserved = self.inner.reserve(order_id, items, expires_at, now).await;
        for item in items {
            self.products.invalidate(&item.sku);
        }
        reserved
    }

    async fn get_reservation(&self, order_id: Uuid) -> Result<Option<Reservation>, RepoError> {
        self.inner.get_reservation(order_id).await
    }

    async fn confirm(
        &self,
        order_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<Option<Reservation>, RepoError> {
        let confirmed = self.inner.confirm(order_id, now).await?;
        self.forget_lines(&confirmed);
        Ok(confirmed)
    }

    async fn confirm_all(
        &self,
        order_ids: &[Uuid],
        now: DateTime<Utc>,
    ) -> Result<Vec<Reservation>, RepoError> {
        // On an error nobody is owed their write yet; the notices of
        // whatever did commit clear it.
        let confirmed = self.inner.confirm_all(order_ids, now).await?;
        self.forget_lines(&confirmed);
        Ok(confirmed)
    }

    async fn release(&self, order_id: Uuid, now: DateTime<Utc>) -> Result<Reservation, RepoError> {
        let released = self.inner.release(order_id, now).await?;
        self.forget_lines([&released]);
        Ok(released)
    }

    async fn expire_due(&self, now: DateTime<Utc>) -> Result<u64, RepoError> {
        // No caller waits to read what the sweep changed: its notices
        // clear the cache.
        self.inner.expire_due(now).await
    }

    fn changes(&self) -> broadcast::Receiver<Notice> {
        self.changes.subscribe()
    }

    async fn ping(&self) -> Result<(), RepoError> {
        self.inner.ping().await
    }

    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
}
