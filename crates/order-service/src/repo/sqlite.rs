//! The SQLite store: one file in WAL mode, for the all-in-one stack and
//! single-instance deployments. Ids are stored as hyphenated UUID text.

use std::{collections::HashMap, str::FromStr, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{
    Row, Sqlite, Transaction,
    sqlite::{
        SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
        SqliteSynchronous,
    },
};
use uuid::Uuid;

use tokio::sync::broadcast;

use super::{OrderRepo, OrderRow, RepoError, assemble, change_feed, order_columns, parse_event};
use crate::domain::{
    NewOrder, Order, OrderEvent, OrderFilter, OrderItem, OrderStatus, PlacedOrder,
};

/// [`OrderRepo`] on a SQLite file. SQLite serves one process, so its change
/// feed is an in-process channel fed after each committed status change.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    changes: broadcast::Sender<Uuid>,
}

impl SqliteStore {
    /// Opens (creating when missing) the database at `url` and migrates it.
    pub async fn connect(url: &str, max_connections: u32) -> Result<SqliteStore, RepoError> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(RepoError::Database)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a committed order survives a power cut, not just a crash.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        if let Some(dir) = options.get_filename().parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(|e| RepoError::Unavailable(sqlx::Error::Io(e)))?;
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await
            .map_err(RepoError::from_sqlx)?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        Ok(SqliteStore {
            pool,
            changes: change_feed(),
        })
    }

    async fn items_for(&self, ids: &[Uuid]) -> Result<HashMap<Uuid, Vec<OrderItem>>, RepoError> {
        let ids_json = format!(
            "[{}]",
            ids.iter()
                .map(|id| format!("\"{id}\""))
                .collect::<Vec<_>>()
                .join(",")
        );
        let rows = sqlx::query(
            "SELECT order_id, product_id, quantity, unit_price_cents FROM order_items \
             WHERE order_id IN (SELECT value FROM json_each(?)) ORDER BY order_id, line_no",
        )
        .bind(ids_json)
        .fetch_all(&self.pool)
        .await
        .map_err(RepoError::from_sqlx)?;
        let mut items: HashMap<Uuid, Vec<OrderItem>> = HashMap::new();
        for row in rows {
            let order_id = parse_uuid(
                &row.try_get::<String, _>("order_id")
                    .map_err(RepoError::from_sqlx)?,
            )?;
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

fn parse_uuid(s: &str) -> Result<Uuid, RepoError> {
    Uuid::parse_str(s).map_err(|_| RepoError::Corrupt(format!("uuid {s:?}")))
}

fn order_row(row: &SqliteRow) -> Result<OrderRow, RepoError> {
    let get = |e| RepoError::from_sqlx(e);
    Ok(OrderRow {
        id: parse_uuid(&row.try_get::<String, _>("id").map_err(get)?)?,
        user_id: parse_uuid(&row.try_get::<String, _>("user_id").map_err(get)?)?,
        currency_code: row.try_get("currency_code").map_err(get)?,
        total_cents: row.try_get("total_cents").map_err(get)?,
        status: row.try_get("status").map_err(get)?,
        created_at: row.try_get("created_at").map_err(get)?,
        updated_at: row.try_get("updated_at").map_err(get)?,
        request_hash: row.try_get("request_hash").map_err(get)?,
        version: row.try_get("version").map_err(get)?,
    })
}

fn item_row(row: &SqliteRow) -> Result<OrderItem, RepoError> {
    let get = |e| RepoError::from_sqlx(e);
    Ok(OrderItem {
        product_id: row.try_get("product_id").map_err(get)?,
        quantity: row.try_get("quantity").map_err(get)?,
        unit_price_cents: row.try_get("unit_price_cents").map_err(get)?,
    })
}

async fn insert_items(tx: &mut Transaction<'_, Sqlite>, order: &NewOrder) -> Result<(), RepoError> {
    for (line_no, item) in order.items.iter().enumerate() {
        sqlx::query(
            "INSERT INTO order_items (order_id, line_no, product_id, quantity, unit_price_cents) \
             VALUES (?, ?, ?, ?, ?)",
        )
        .bind(order.id.to_string())
        .bind(line_no as i64)
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
impl OrderRepo for SqliteStore {
    async fn place_order(&self, order: &NewOrder) -> Result<PlacedOrder, RepoError> {
        let mut tx = self.pool.begin().await.map_err(RepoError::from_sqlx)?;
        let inserted = sqlx::query(concat!(
            "INSERT INTO orders (id, user_id, request_id, request_hash, currency_code, \
             total_cents, status, created_at, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending', ?7, ?7) \
             ON CONFLICT (user_id, request_id) DO NOTHING RETURNING ",
            order_columns!()
        ))
        .bind(order.id.to_string())
        .bind(order.user_id.to_string())
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
            " FROM orders WHERE user_id = ? AND request_id = ?"
        ))
        .bind(user_id.to_string())
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
            " FROM orders WHERE id = ?"
        ))
        .bind(id.to_string())
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
            " FROM orders WHERE user_id = ?1 AND (?2 IS NULL OR status = ?2) \
             AND (?3 IS NULL OR id < ?3) ORDER BY id DESC LIMIT ?4"
        ))
        .bind(filter.user_id.to_string())
        .bind(filter.status.map(OrderStatus::as_str))
        .bind(before.map(|id| id.to_string()))
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
            "UPDATE orders SET status = ?1, updated_at = ?2, version = version + 1, \
             cancel_reason = COALESCE(?3, cancel_reason) \
             WHERE id = ?4 AND status = ?5 RETURNING ",
            order_columns!()
        ))
        .bind(to.as_str())
        .bind(now)
        .bind(reason)
        .bind(id.to_string())
        .bind(from.as_str())
        .fetch_optional(&mut *tx)
        .await
        .map_err(RepoError::from_sqlx)?;
        let Some(row) = row else {
            return Ok(None);
        };
        let row = order_row(&row)?;
        sqlx::query(
            "INSERT INTO order_events (order_id, version, status, updated_at) VALUES (?, ?, ?, ?)",
        )
        .bind(id.to_string())
        .bind(row.version)
        .bind(to.as_str())
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(RepoError::from_sqlx)?;
        tx.commit().await.map_err(RepoError::from_sqlx)?;
        // Nobody listening is fine.
        let _ = self.changes.send(id);
        Ok(Some(self.load(row).await?.0))
    }

    async fn events_after(
        &self,
        order_id: Uuid,
        version: i64,
    ) -> Result<Vec<OrderEvent>, RepoError> {
        let rows = sqlx::query(
            "SELECT version, status, updated_at FROM order_events \
             WHERE order_id = ? AND version > ? ORDER BY version",
        )
        .bind(order_id.to_string())
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
        "sqlite"
    }
}
