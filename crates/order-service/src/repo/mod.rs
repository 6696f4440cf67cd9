//! Storage of orders.
//!
//! One trait, [`OrderRepo`], with one SQL implementation for SQLite and
//! PostgreSQL alike ([`SqlStore`], through `shop-storage`); [`connect`]
//! opens the database the `DATABASE_URL` names and runs that backend's
//! embedded migrations. SQL lives only here; errors are [`RepoError`]s
//! that the service maps to statuses.

mod sql;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::domain::{
    NewOrder, Order, OrderEvent, OrderFilter, OrderStatus, PlacedOrder, StockAction, StockStep,
};

pub use shop_storage::{Notice, StoreError as RepoError};
pub use sql::SqlStore;

/// Orders and their items.
#[async_trait]
pub trait OrderRepo: Send + Sync {
    /// Stores a new order with its items and the stock confirmation it
    /// owes (in the outbox), atomically, unless the user already has an
    /// order with the same request id: then that order is returned with
    /// its fingerprint. Safe under concurrent identical requests: exactly
    /// one order is created.
    async fn place_order(&self, order: &NewOrder) -> Result<PlacedOrder, RepoError>;

    /// The user's order with `request_id` and its fingerprint.
    async fn find_by_request_id(
        &self,
        user_id: Uuid,
        request_id: &str,
    ) -> Result<Option<(Order, String)>, RepoError>;

    /// One order.
    async fn get_order(&self, id: Uuid) -> Result<Option<Order>, RepoError>;

    /// Up to `limit` orders matching `filter` with an id below `before`,
    /// newest first.
    async fn list_orders(
        &self,
        filter: &OrderFilter,
        before: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<Order>, RepoError>;

    /// Moves an order from `from` to `to` if it is still in `from`
    /// (compare-and-set), bumping its version and recording an
    /// [`OrderEvent`] in the same transaction, then notifies the change
    /// feed; `None` when it is not in `from` (moved meanwhile, or missing).
    /// `reason` is kept for cancellations; `owes` is a stock step the move
    /// owes, put in the outbox in the same transaction.
    async fn update_status(
        &self,
        id: Uuid,
        from: OrderStatus,
        to: OrderStatus,
        reason: Option<&str>,
        owes: Option<StockAction>,
        now: DateTime<Utc>,
    ) -> Result<Option<Order>, RepoError>;

    /// Puts a stock step in the outbox (once: a step already owed stays
    /// as it is).
    async fn owe_stock_step(
        &self,
        order_id: Uuid,
        action: StockAction,
        now: DateTime<Utc>,
    ) -> Result<(), RepoError>;

    /// Up to `limit` owed stock steps due at `now`, oldest first.
    async fn due_stock_steps(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<StockStep>, RepoError>;

    /// Removes the `action` steps of `order_ids`, which are done, in one
    /// transaction.
    async fn stock_steps_done(
        &self,
        order_ids: &[Uuid],
        action: StockAction,
    ) -> Result<(), RepoError>;

    /// Counts a failed attempt at the `action` step of each order in
    /// `put_off` and puts it off until the time beside it, in one
    /// transaction.
    async fn stock_steps_failed(
        &self,
        action: StockAction,
        put_off: &[(Uuid, DateTime<Utc>)],
    ) -> Result<(), RepoError>;

    /// The status changes of an order after `version`, oldest first.
    async fn events_after(
        &self,
        order_id: Uuid,
        version: i64,
    ) -> Result<Vec<OrderEvent>, RepoError>;

    /// Notices of changed orders (their ids as text), from this process
    /// and, on PostgreSQL, from every replica sharing the database;
    /// [`Notice::Resync`] means "re-read everything you watch". A notice
    /// only says where to look: the events table says what changed.
    fn changes(&self) -> broadcast::Receiver<Notice>;

    /// Checks that the database answers.
    async fn ping(&self) -> Result<(), RepoError>;

    /// "postgres" or "sqlite", for logs.
    fn backend(&self) -> &'static str;
}

/// order-service's migrations, per backend.
static MIGRATIONS: shop_storage::Migrations = shop_storage::migrations!();

pub use shop_storage::ConnectOptions;

/// Opens the database named by `url` (`sqlite:` or `postgres:`), creating a
/// SQLite file and its directory when missing, applies migrations and
/// starts listening for order changes.
pub async fn connect(url: &str, options: ConnectOptions) -> Result<Arc<dyn OrderRepo>, RepoError> {
    let db = shop_storage::connect_with(url, options, &MIGRATIONS).await?;
    Ok(Arc::new(SqlStore::new(db).await?))
}
