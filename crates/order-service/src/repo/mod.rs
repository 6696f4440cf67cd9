//! Storage of orders.
//!
//! One trait, [`OrderRepo`], with a PostgreSQL and a SQLite implementation;
//! [`connect`] picks one from the `DATABASE_URL` scheme and runs that
//! backend's embedded migrations. SQL lives only here; errors are
//! [`RepoError`]s that the service maps to statuses.

mod postgres;
mod sqlite;

use std::{collections::HashMap, sync::Arc};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use thiserror::Error;
use uuid::Uuid;

use tokio::sync::broadcast;

use crate::domain::{
    NewOrder, Order, OrderEvent, OrderFilter, OrderItem, OrderStatus, PlacedOrder,
};

/// How many change notices a slow watcher may fall behind before it must
/// re-read (it never loses a change: the events table is the truth).
const CHANGE_FEED_CAPACITY: usize = 1024;

/// The notice a change feed sends when it may have missed notices (its
/// database connection was re-established): every watcher re-reads.
pub const RESYNC: Uuid = Uuid::nil();

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

/// What can go wrong in storage.
#[derive(Debug, Error)]
pub enum RepoError {
    /// The database cannot be reached (pool timeout, I/O, closed pool).
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// Any other database error.
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
    /// A stored value the code does not understand.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// Applying migrations failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The URL names no supported database.
    #[error("unsupported DATABASE_URL scheme in {0:?}: expected sqlite: or postgres:")]
    UnsupportedUrl(String),
}

impl RepoError {
    fn from_sqlx(err: sqlx::Error) -> RepoError {
        match err {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_) => RepoError::Unavailable(err),
            other => RepoError::Database(other),
        }
    }
}

/// Orders and their items.
#[async_trait]
pub trait OrderRepo: Send + Sync {
    /// Stores a new order with its items, atomically, unless the user
    /// already has an order with the same request id: then that order is
    /// returned with its fingerprint. Safe under concurrent identical
    /// requests: exactly one order is created.
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
    /// `reason` is kept for cancellations.
    async fn update_status(
        &self,
        id: Uuid,
        from: OrderStatus,
        to: OrderStatus,
        reason: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Option<Order>, RepoError>;

    /// The status changes of an order after `version`, oldest first.
    async fn events_after(
        &self,
        order_id: Uuid,
        version: i64,
    ) -> Result<Vec<OrderEvent>, RepoError>;

    /// Notices of changed orders (their ids), from this process and, on
    /// PostgreSQL, from every replica sharing the database; [`RESYNC`]
    /// means "re-read everything you watch". A notice only says where to
    /// look: the events table says what changed.
    fn changes(&self) -> broadcast::Receiver<Uuid>;

    /// Checks that the database answers.
    async fn ping(&self) -> Result<(), RepoError>;

    /// "postgres" or "sqlite", for logs.
    fn backend(&self) -> &'static str;
}

/// Opens the database named by `url` (`sqlite:` or `postgres:`), creating a
/// SQLite file and its directory when missing, and applies migrations.
pub async fn connect(url: &str, max_connections: u32) -> Result<Arc<dyn OrderRepo>, RepoError> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::connect(url, max_connections).await?))
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        Ok(Arc::new(
            PostgresStore::connect(url, max_connections).await?,
        ))
    } else {
        Err(RepoError::UnsupportedUrl(shop_core::config::redact_url(
            url,
        )))
    }
}

/// The columns every order query selects, as a literal for `concat!`.
macro_rules! order_columns {
    () => {
        "id, user_id, currency_code, total_cents, status, created_at, updated_at, request_hash, version"
    };
}
use order_columns;

/// An `orders` row as both backends decode it, before its items are
/// attached.
struct OrderRow {
    id: Uuid,
    user_id: Uuid,
    currency_code: String,
    total_cents: i64,
    status: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    request_hash: String,
    version: i64,
}

impl OrderRow {
    fn into_order(self, items: Vec<OrderItem>) -> Result<(Order, String), RepoError> {
        let status = OrderStatus::parse(&self.status).ok_or_else(|| {
            RepoError::Corrupt(format!("order {} status {:?}", self.id, self.status))
        })?;
        Ok((
            Order {
                id: self.id,
                user_id: self.user_id,
                items,
                total_cents: self.total_cents,
                currency_code: self.currency_code,
                status,
                created_at: self.created_at,
                updated_at: self.updated_at,
                version: self.version,
            },
            self.request_hash,
        ))
    }
}

/// A new change feed sender.
fn change_feed() -> broadcast::Sender<Uuid> {
    broadcast::channel(CHANGE_FEED_CAPACITY).0
}

fn parse_event(
    version: i64,
    status: &str,
    updated_at: DateTime<Utc>,
) -> Result<OrderEvent, RepoError> {
    Ok(OrderEvent {
        version,
        status: OrderStatus::parse(status)
            .ok_or_else(|| RepoError::Corrupt(format!("event status {status:?}")))?,
        updated_at,
    })
}

/// Attaches items (grouped by order id) to rows, keeping the rows' order.
fn assemble(
    rows: Vec<OrderRow>,
    mut items: HashMap<Uuid, Vec<OrderItem>>,
) -> Result<Vec<Order>, RepoError> {
    rows.into_iter()
        .map(|row| {
            let lines = items.remove(&row.id).unwrap_or_default();
            row.into_order(lines).map(|(order, _)| order)
        })
        .collect()
}
