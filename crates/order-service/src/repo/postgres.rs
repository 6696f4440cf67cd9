//! The PostgreSQL store, for containers and clusters where several replicas
//! share one database.

use std::{collections::HashMap, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{
    Postgres, Row, Transaction,
    postgres::{PgPool, PgPoolOptions, PgRow},
};
use uuid::Uuid;

use std::sync::Arc;

use sqlx::postgres::PgListener;
use tokio::sync::broadcast;

use super::{
    OrderRepo, OrderRow, RESYNC, RepoError, assemble, change_feed, order_columns, parse_event,
};
use crate::domain::{
    NewOrder, Order, OrderEvent, OrderFilter, OrderItem, OrderStatus, PlacedOrder,
};

/// The channel status changes are announced on, to every replica.
const CHANNEL: &str = "shop_order_events";

/// [`OrderRepo`] on PostgreSQL. Its change feed is `LISTEN`/`NOTIFY`: each
/// status change notifies in its own transaction, so the notice reaches
/// every replica sharing the database when (and only if) it commits.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
    changes: broadcast::Sender<Uuid>,
    _listener: Arc<ListenerTask>,
}

/// The task that relays notifications into the change feed; stopped when
/// the last store clone is dropped.
#[derive(Debug)]
struct ListenerTask(tokio::task::JoinHandle<()>);

impl Drop for ListenerTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Relays `NOTIFY shop_order_events, '<order id>'` into `changes`. When the
/// connection drops, notices may have been missed: it sends [`RESYNC`]
/// after reconnecting so that watchers re-read.
async fn relay_notifications(mut listener: PgListener, changes: broadcast::Sender<Uuid>) {
    loop {
        match listener.try_recv().await {
            Ok(Some(notification)) => {
                if let Ok(id) = Uuid::parse_str(notification.payload()) {
                    let _ = changes.send(id);
                }
            }
            Ok(None) => {
                tracing::warn!("order change feed: connection lost; reconnecting and resyncing");
                let _ = changes.send(RESYNC);
            }
            Err(e) => {
                tracing::warn!(error = %e, "order change feed: listen failed; retrying");
                let _ = changes.send(RESYNC);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

impl PostgresStore {
    /// Connects to `url` and migrates the database.
    pub async fn connect(url: &str, max_connections: u32) -> Result<PostgresStore, RepoError> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(Duration::from_secs(5))
            .connect(url)
            .await
            .map_err(RepoError::from_sqlx)?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        let mut listener = PgListener::connect_with(&pool)
            .await
            .map_err(RepoError::from_sqlx)?;
        listener
            .listen(CHANNEL)
            .await
            .map_err(RepoError::from_sqlx)?;
        let changes = change_feed();
        let relay = tokio::spawn(relay_notifications(listener, changes.clone()));
        Ok(PostgresStore {
            pool,
            changes,
            _listener: Arc::new(ListenerTask(relay)),
        })
    }

    async fn items_for(&self, ids: &[Uuid]) -> Result<HashMap<Uuid, Vec<OrderItem>>, RepoError> {
        let rows = sqlx::query(
            "SELECT order_id, product_id, quantity, unit_price_cents FROM order_items \
             WHERE order_id = ANY($1) ORDER BY order_id, line_no",
        )
        .bind(ids)
        .fetch_all(&self.pool)
        .await
        .map_err(RepoError::from_sqlx)?;
        let mut items: HashMap<Uuid, Vec<OrderItem>> = HashMap::new();
        for row in rows {
            let order_id: Uuid = row.try_get("order_id").map_err(RepoError::from_sqlx)?;
            items.entry(order_id).or_default().push(item_row(&row)?);
        }
        Ok(items)
    }

    async fn load(&self, row: OrderRow) -> Result<(Order, String), RepoError> {
        let mut items = self.items_for(&[row.id]).await?;
        let lines = items.remove(&row.id).unwrap_or_default();
        row.into_order(lines)
    }
}

fn order_row(row: &PgRow) -> Result<OrderRow, RepoError> {
    let get = |e| RepoError::from_sqlx(e);
    Ok(OrderRow {
        id: row.try_get("id").map_err(get)?,
        user_id: row.try_get("user_id").map_err(get)?,
        currency_code: row.try_get("currency_code").map_err(get)?,
        total_cents: row.try_get("total_cents").map_err(get)?,
        status: row.try_get("status").map_err(get)?,
        created_at: row.try_get("created_at").map_err(get)?,
        updated_at: row.try_get("updated_at").map_err(get)?,
        request_hash: row.try_get("request_hash").map_err(get)?,
        version: row.try_get("version").map_err(get)?,
    })
}

fn item_row(row: &PgRow) -> Result<OrderItem, RepoError> {
    let get = |e| RepoError::from_sqlx(e);
    Ok(OrderItem {
        product_id: row.try_get("product_id").map_err(get)?,
        quantity: row.try_get("quantity").map_err(get)?,
        unit_price_cents: row.try_get("unit_price_cents").map_err(get)?,
    })
}

async fn insert_items(
    tx: &mut Transaction<'_, Postgres>,
    order: &NewOrder,
) -> Result<(), RepoError> {
    for (line_no, item) in order.items.iter().enumerate() {
        sqlx::query(
            "INSERT INTO order_items (order_id, line_no, product_id, quantity, unit_price_cents) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(order.id)
        .bind(line_no as i32)
        .bind(&item.product_id)
        .bind(item.quantity)
        .bind(item.unit_price_cents)
        .execute(&mut **tx)
        .await
        .map_err(RepoError::from_sqlx)?;
    }
    Ok(())
}

#[async_trait]
impl OrderRepo for PostgresStore {
    async fn place_order(&self, order: &NewOrder) -> Result<PlacedOrder, RepoError> {
        let mut tx = self.pool.begin().await.map_err(RepoError::from_sqlx)?;
        // A concurrent insert of the same key waits on the unique index
        // until the first commits, then does nothing: one order, always.
        let inserted = sqlx::query(concat!(
            "INSERT INTO orders (id, user_id, request_id, request_hash, currency_code, \
             total_cents, status, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7, $7) \
             ON CONFLICT (user_id, request_id) DO NOTHING RETURNING ",
            order_columns!()
        ))
        .bind(order.id)
        .bind(order.user_id)
        .bind(order.request_id.as_str())
        .bind(&order.request_hash)
        .bind(order.currency_code.as_str())
        .bind(order.total_cents)
        .bind(order.now)
        .fetch_optional(&mut *tx)
        .await
        .map_err(RepoError::from_sqlx)?;

        match inserted {
            Some(row) => {
                insert_items(&mut tx, order).await?;
                tx.commit().await.map_err(RepoError::from_sqlx)?;
                let (created, _) = order_row(&row)?.into_order(order.items.clone())?;
                Ok(PlacedOrder::Created(created))
            }
            None => {
                tx.rollback().await.map_err(RepoError::from_sqlx)?;
                let (existing, request_hash) = self
                    .find_by_request_id(order.user_id, order.request_id.as_str())
                    .await?
                    .ok_or_else(|| {
                        RepoError::Corrupt("request id conflicted but no order has it".into())
                    })?;
                Ok(PlacedOrder::Existing {
                    order: existing,
                    request_hash,
                })
            }
        }
    }

    async fn find_by_request_id(
        &self,
        user_id: Uuid,
        request_id: &str,
    ) -> Result<Option<(Order, String)>, RepoError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            order_columns!(),
            " FROM orders WHERE user_id = $1 AND request_id = $2"
        ))
        .bind(user_id)
        .bind(request_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(RepoError::from_sqlx)?;
        match row {
            Some(row) => Ok(Some(self.load(order_row(&row)?).await?)),
            None => Ok(None),
        }
    }

    async fn get_order(&self, id: Uuid) -> Result<Option<Order>, RepoError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            order_columns!(),
            " FROM orders WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(RepoError::from_sqlx)?;
        match row {
            Some(row) => Ok(Some(self.load(order_row(&row)?).await?.0)),
            None => Ok(None),
        }
    }

    async fn list_orders(
        &self,
        filter: &OrderFilter,
        before: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<Order>, RepoError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            order_columns!(),
            " FROM orders WHERE user_id = $1 AND ($2::text IS NULL OR status = $2) \
             AND ($3::uuid IS NULL OR id < $3) ORDER BY id DESC LIMIT $4"
        ))
        .bind(filter.user_id)
        .bind(filter.status.map(OrderStatus::as_str))
        .bind(before)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(RepoError::from_sqlx)?;
        let rows = rows.iter().map(order_row).collect::<Result<Vec<_>, _>>()?;
        let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
        let items = self.items_for(&ids).await?;
        assemble(rows, items)
    }

    async fn update_status(
        &self,
        id: Uuid,
        from: OrderStatus,
        to: OrderStatus,
        reason: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Option<Order>, RepoError> {
        let mut tx = self.pool.begin().await.map_err(RepoError::from_sqlx)?;
        let row = sqlx::query(concat!(
            "UPDATE orders SET status = $1, updated_at = $2, version = version + 1, \
             cancel_reason = COALESCE($3, cancel_reason) \
             WHERE id = $4 AND status = $5 RETURNING ",
            order_columns!()
        ))
        .bind(to.as_str())
        .bind(now)
        .bind(reason)
        .bind(id)
        .bind(from.as_str())
        .fetch_optional(&mut *tx)
        .await
        .map_err(RepoError::from_sqlx)?;
        let Some(row) = row else {
            return Ok(None);
        };
        let row = order_row(&row)?;
        sqlx::query(
            "INSERT INTO order_events (order_id, version, status, updated_at) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(id)
        .bind(row.version)
        .bind(to.as_str())
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(RepoError::from_sqlx)?;
        // Delivered to every listener when (and only if) this commits.
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(id.to_string())
            .execute(&mut *tx)
            .await
            .map_err(RepoError::from_sqlx)?;
        tx.commit().await.map_err(RepoError::from_sqlx)?;
        Ok(Some(self.load(row).await?.0))
    }

    async fn events_after(
        &self,
        order_id: Uuid,
        version: i64,
    ) -> Result<Vec<OrderEvent>, RepoError> {
        let rows = sqlx::query(
            "SELECT version, status, updated_at FROM order_events \
             WHERE order_id = $1 AND version > $2 ORDER BY version",
        )
        .bind(order_id)
        .bind(version)
        .fetch_all(&self.pool)
        .await
        .map_err(RepoError::from_sqlx)?;
        rows.iter()
            .map(|row| {
                let get = |e| RepoError::from_sqlx(e);
                parse_event(
                    row.try_get("version").map_err(get)?,
                    &row.try_get::<String, _>("status").map_err(get)?,
                    row.try_get("updated_at").map_err(get)?,
                )
            })
            .collect()
    }

    fn changes(&self) -> broadcast::Receiver<Uuid> {
        self.changes.subscribe()
    }

    async fn ping(&self) -> Result<(), RepoError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(RepoError::from_sqlx)?;
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "postgres"
    }
}
