//! The order-service store: one SQL text for SQLite and PostgreSQL (see
//! `shop-storage` for what differs between them and where that is handled),
//! except placing an order and changing its status, which PostgreSQL does
//! in one statement where SQLite takes one per row (see
//! `insert_order_in_one_statement`, `StatusChange`). Its change feed is
//! `shop-storage`'s notices: each status change notifies in its own
//! transaction, so the notice reaches every replica sharing a PostgreSQL
//! database (or every watcher of the one process on SQLite) when, and only
//! if, it commits.

use std::sync::{LazyLock, OnceLock};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use shop_storage::{
    Backend, Db, IDS_PER_STATEMENT, Notice, Notices, On, Query, Row, StoreError, id_list_sql, query,
};
use tokio::sync::broadcast;
use uuid::Uuid;

use super::{OrderRepo, RepoError};
use crate::domain::{
    MAX_ITEMS, NewOrder, Order, OrderEvent, OrderFilter, OrderItem, OrderStatus, PlacedOrder,
    StockAction, StockStep,
};

/// The channel status changes are announced on.
const CHANNEL: &str = "shop_order_events";

/// How many change notices a slow watcher may fall behind before it must
/// re-read (it never loses a change: the events table is the truth).
const CHANGE_FEED_CAPACITY: usize = 1024;

/// The columns every order query selects, as a literal for `concat!`.
macro_rules! order_columns {
    () => {
        "id, user_id, currency_code, total_cents, status, created_at, updated_at, request_hash, version"
    };
}

/// Inserts an order's row ($1 to $7: id, user, request id and hash,
/// currency, total, time) unless its request id is taken, returning what
/// follows: both ways of placing an order start with it.
macro_rules! insert_order_row {
    () => {
        "INSERT INTO orders (id, user_id, request_id, request_hash, currency_code, \
         total_cents, status, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7, $7) \
         ON CONFLICT (user_id, request_id) DO NOTHING RETURNING "
    };
}

/// Moves an order ($4) from status $5 to $1 at time $2 (with the cancel
/// reason $3, if any), returning what follows: both ways of changing a
/// status start with it.
macro_rules! change_status {
    () => {
        "UPDATE orders SET status = $1, updated_at = $2, version = version + 1, \
         cancel_reason = COALESCE($3, cancel_reason) \
         WHERE id = $4 AND status = $5 RETURNING "
    };
}

/// Orders (`$where` picks them, its placeholders bound by the caller)
/// joined with their items in one statement, so that a page and its items
/// come from one snapshot: one row per item, orders in `$order`, items in
/// line order.
macro_rules! orders_with_items {
    ($where:literal, $order:literal) => {
        concat!(
            "SELECT o.id, o.user_id, o.currency_code, o.total_cents, o.status, o.created_at, \
             o.updated_at, o.request_hash, o.version, \
             i.product_id, i.quantity, i.unit_price_cents \
             FROM (SELECT ",
            order_columns!(),
            " FROM orders WHERE ",
            $where,
            ") o LEFT JOIN order_items i ON i.order_id = o.id ORDER BY ",
            $order,
            ", i.line_no"
        )
    };
}

/// A page of a user's orders, newest first, before the cursor: a text
/// without the status filter and one with it, and the cursor always a
/// bound (`id < COALESCE(cursor, an id above every id)`), never a
/// condition that a NULL switches off (`$n IS NULL OR ...`). PostgreSQL
/// plans a prepared statement once for all values after its fifth run (a
/// generic plan), and in such a plan an index cannot serve a condition a
/// value may switch off: each page read every order of the user and
/// sorted them (1.5 ms a page at 900 orders, growing with the user's
/// history), where these read the page's rows from `orders_user_id_idx`.
const LIST_ORDERS: &str = orders_with_items!(
    "user_id = $1 AND id < COALESCE($2, 'ffffffff-ffff-ffff-ffff-ffffffffffff') \
     ORDER BY id DESC LIMIT $3",
    "o.id DESC"
);

/// [`LIST_ORDERS`] of the orders in one status.
const LIST_ORDERS_IN_STATUS: &str = orders_with_items!(
    "user_id = $1 AND status = $2 \
     AND id < COALESCE($3, 'ffffffff-ffff-ffff-ffff-ffffffffffff') \
     ORDER BY id DESC LIMIT $4",
    "o.id DESC"
);

/// [`OrderRepo`] on SQLite or PostgreSQL.
#[derive(Debug, Clone)]
pub struct SqlStore {
    db: Db,
    changes: Notices,
}

impl SqlStore {
    /// The store on `db` (connected and migrated), listening for changes.
    pub async fn new(db: Db) -> Result<SqlStore, RepoError> {
        let changes = db.listen(CHANNEL, CHANGE_FEED_CAPACITY).await?;
        Ok(SqlStore { db, changes })
    }

    /// The items of one order, in line order.
    async fn items(&self, order_id: Uuid) -> Result<Vec<OrderItem>, RepoError> {
        query(
            "SELECT product_id, quantity, unit_price_cents FROM order_items \
             WHERE order_id = $1 ORDER BY line_no",
        )
        .bind(order_id)
        .fetch_all(&self.db, item)
        .await
    }

    /// The orders a query of [`orders_with_items`] returns, with their
    /// request fingerprints, in its order.
    async fn orders<'a>(
        on: impl Into<On<'a>>,
        joined: shop_storage::Query,
    ) -> Result<Vec<(Order, String)>, RepoError> {
        let rows = joined
            .fetch_all(on, |row| {
                let item = match row.get::<Option<String>>("product_id")? {
                    Some(_) => Some(item(row)?),
                    None => None,
                };
                Ok((order(row)?, item))
            })
            .await?;
        let mut orders: Vec<(Order, String)> = Vec::new();
        for ((order, hash), item) in rows {
            match orders.last_mut() {
                Some((last, _)) if last.id == order.id => last.items.extend(item),
                _ => {
                    let mut order = order;
                    order.items.extend(item);
                    orders.push((order, hash));
                }
            }
        }
        Ok(orders)
    }
}

/// An `orders` row (selected with [`order_columns`]) as an [`Order`]
/// without its items, and its request fingerprint.
fn order(row: Row<'_>) -> Result<(Order, String), StoreError> {
    let id: Uuid = row.get("id")?;
    let status: String = row.get("status")?;
    Ok((
        Order {
            id,
            user_id: row.get("user_id")?,
            items: Vec::new(),
            total_cents: row.get("total_cents")?,
            currency_code: row.get("currency_code")?,
            status: OrderStatus::parse(&status)
                .ok_or_else(|| StoreError::Corrupt(format!("order {id} status {status:?}")))?,
            created_at: row.get("created_at")?,
            updated_at: row.get("updated_at")?,
            version: row.get("version")?,
        },
        row.get("request_hash")?,
    ))
}

/// Puts a stock step in the outbox within `tx`, due at once.
async fn owe(
    tx: &mut shop_storage::Tx,
    order_id: Uuid,
    action: StockAction,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    query(
        "INSERT INTO stock_outbox (order_id, action, next_attempt_at, created_at) \
         VALUES ($1, $2, $3, $3) ON CONFLICT (order_id, action) DO NOTHING",
    )
    .bind(order_id)
    .bind(action.as_str())
    .bind(now)
    .execute(tx)
    .await
    .map(drop)
}

/// `statement` with the new order's row bound to `$1` to `$7` (id, user,
/// request id and hash, currency, total, time), as both ways of placing
/// an order number them.
fn with_order_row(statement: Query, new: &NewOrder) -> Query {
    statement
        .bind(new.id)
        .bind(new.user_id)
        .bind(new.request_id.as_str())
        .bind(&new.request_hash)
        .bind(new.currency_code.as_str())
        .bind(new.total_cents)
        .bind(new.now)
}

/// Inserts `new`, its items and the confirmation it owes inventory
/// (nothing when its request id is taken: `None`), one statement each.
async fn insert_order(
    tx: &mut shop_storage::Tx,
    new: &NewOrder,
) -> Result<Option<(Order, String)>, StoreError> {
    let inserted = with_order_row(query(concat!(insert_order_row!(), order_columns!())), new)
        .fetch_optional(&mut *tx, order)
        .await?;
    if inserted.is_none() {
        return Ok(None);
    }
    for (line_no, item) in new.items.iter().enumerate() {
        query(
            "INSERT INTO order_items (order_id, line_no, product_id, quantity, \
             unit_price_cents) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(new.id)
        .bind(line_no as i32)
        .bind(&item.product_id)
        .bind(item.quantity)
        .bind(item.unit_price_cents)
        .execute(&mut *tx)
        .await?;
    }
    owe(tx, new.id, StockAction::Confirm, new.now).await?;
    Ok(inserted)
}

/// [`insert_order`] as one PostgreSQL statement (data-modifying `WITH`
/// clauses, which SQLite lacks). On PostgreSQL every statement of a
/// transaction is a round trip on the group-commit connection that every
/// writer of the process waits behind: an order took three or more (the
/// order, each item, the outbox row) and now takes one.
async fn insert_order_in_one_statement(
    tx: &mut shop_storage::Tx,
    new: &NewOrder,
) -> Result<Option<(Order, String)>, StoreError> {
    let mut statement = with_order_row(query(place_order_sql(new.items.len())), new)
        .bind(StockAction::Confirm.as_str());
    for (line_no, item) in new.items.iter().enumerate() {
        statement = statement
            .bind(line_no as i32)
            .bind(&item.product_id)
            .bind(item.quantity)
            .bind(item.unit_price_cents);
    }
    statement.fetch_optional(tx, order).await
}

/// The statement [`insert_order_in_one_statement`] runs for an order of
/// `items` items (1 to [`MAX_ITEMS`]), built once per item count.
fn place_order_sql(items: usize) -> &'static str {
    static BY_ITEMS: [OnceLock<String>; MAX_ITEMS] = [const { OnceLock::new() }; MAX_ITEMS];
    assert!(
        (1..=MAX_ITEMS).contains(&items),
        "an order has 1 to {MAX_ITEMS} items"
    );
    BY_ITEMS[items - 1].get_or_init(|| {
        // $1..$8 as in `insert_order` (and $8 the outbox action), then
        // four per item: line, product, quantity, unit price.
        let lines: Vec<String> = (0..items)
            .map(|i| {
                let p = 9 + 4 * i;
                format!("(${p}, ${}, ${}, ${})", p + 1, p + 2, p + 3)
            })
            .collect();
        format!(
            concat!(
                "WITH placed AS (",
                insert_order_row!(),
                order_columns!(),
                "), items AS (\
                 INSERT INTO order_items (order_id, line_no, product_id, quantity, \
                 unit_price_cents) \
                 SELECT placed.id, line.no, line.product_id, line.quantity, line.unit_price_cents \
                 FROM placed, (VALUES {}) AS line (no, product_id, quantity, unit_price_cents)\
                 ), owed AS (\
                 INSERT INTO stock_outbox (order_id, action, next_attempt_at, created_at) \
                 SELECT id, $8, $7, $7 FROM placed ON CONFLICT (order_id, action) DO NOTHING\
                 ) SELECT ",
                order_columns!(),
                " FROM placed"
            ),
            lines.join(", ")
        )
    })
}

/// A compare-and-set of an order's status, with the event it records
/// and the stock step it may owe (`OrderRepo::update_status`).
struct StatusChange<'a> {
    id: Uuid,
    from: OrderStatus,
    to: OrderStatus,
    reason: Option<&'a str>,
    owes: Option<StockAction>,
    now: DateTime<Utc>,
}

impl StatusChange<'_> {
    /// Changes the status if it is still `from` (else `None`), records
    /// the event and owes the step: one statement each.
    async fn apply(
        &self,
        tx: &mut shop_storage::Tx,
    ) -> Result<Option<(Order, String)>, StoreError> {
        let updated = query(concat!(change_status!(), order_columns!()))
            .bind(self.to.as_str())
            .bind(self.now)
            .bind(self.reason)
            .bind(self.id)
            .bind(self.from.as_str())
            .fetch_optional(&mut *tx, order)
            .await?;
        let Some((changed, _)) = &updated else {
            return Ok(None);
        };
        query(
            "INSERT INTO order_events (order_id, version, status, updated_at) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(self.id)
        .bind(changed.version)
        .bind(self.to.as_str())
        .bind(self.now)
        .execute(&mut *tx)
        .await?;
        if let Some(action) = self.owes {
            owe(tx, self.id, action, self.now).await?;
        }
        Ok(updated)
    }

    /// [`StatusChange::apply`] as one PostgreSQL statement (data-modifying
    /// `WITH`): a round trip on the group-commit connection instead of
    /// two or three.
    async fn apply_in_one_statement(
        &self,
        tx: &mut shop_storage::Tx,
    ) -> Result<Option<(Order, String)>, StoreError> {
        query(concat!(
            "WITH changed AS (",
            change_status!(),
            order_columns!(),
            "), event AS (\
             INSERT INTO order_events (order_id, version, status, updated_at) \
             SELECT id, version, status, updated_at FROM changed\
             ), owed AS (\
             INSERT INTO stock_outbox (order_id, action, next_attempt_at, created_at) \
             SELECT id, $6, $2, $2 FROM changed WHERE $6 IS NOT NULL \
             ON CONFLICT (order_id, action) DO NOTHING\
             ) SELECT ",
            order_columns!(),
            " FROM changed"
        ))
        .bind(self.to.as_str())
        .bind(self.now)
        .bind(self.reason)
        .bind(self.id)
        .bind(self.from.as_str())
        .bind(self.owes.map(StockAction::as_str))
        .fetch_optional(tx, order)
        .await
    }
}

fn item(row: Row<'_>) -> Result<OrderItem, StoreError> {
    Ok(OrderItem {
        product_id: row.get("product_id")?,
        quantity: row.get("quantity")?,
        unit_price_cents: row.get("unit_price_cents")?,
    })
}

fn event(row: Row<'_>) -> Result<OrderEvent, StoreError> {
    let status: String = row.get("status")?;
    Ok(OrderEvent {
        version: row.get("version")?,
        status: OrderStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("event status {status:?}")))?,
        updated_at: row.get("updated_at")?,
    })
}

#[async_trait]
impl OrderRepo for SqlStore {
    async fn place_order(&self, new: &NewOrder) -> Result<PlacedOrder, RepoError> {
        let mut tx = self.db.begin().await?;
        // A concurrent insert of the same key waits on the unique index
        // (PostgreSQL) or the write lock (SQLite) until the first commits,
        // then does nothing: one order, always.
        let inserted = match self.db.backend() {
            Backend::Postgres => insert_order_in_one_statement(&mut tx, new).await?,
            Backend::Sqlite => insert_order(&mut tx, new).await?,
        };
        let Some((mut created, _)) = inserted else {
            tx.rollback().await?;
            let (order, request_hash) = self
                .find_by_request_id(new.user_id, new.request_id.as_str())
                .await?
                .ok_or_else(|| {
                    StoreError::Corrupt("request id conflicted but no order has it".into())
                })?;
            return Ok(PlacedOrder::Existing {
                order,
                request_hash,
            });
        };
        tx.commit().await?;
        created.items = new.items.clone();
        Ok(PlacedOrder::Created(created))
    }

    async fn find_by_request_id(
        &self,
        user_id: Uuid,
        request_id: &str,
    ) -> Result<Option<(Order, String)>, RepoError> {
        let joined = query(orders_with_items!(
            "user_id = $1 AND request_id = $2",
            "o.id"
        ))
        .bind(user_id)
        .bind(request_id);
        Ok(SqlStore::orders(&self.db, joined).await?.pop())
    }

    async fn get_order(&self, id: Uuid) -> Result<Option<Order>, RepoError> {
        let joined = query(orders_with_items!("id = $1", "o.id")).bind(id);
        Ok(SqlStore::orders(&self.db, joined)
            .await?
            .pop()
            .map(|(order, _)| order))
    }

    async fn list_orders(
        &self,
        filter: &OrderFilter,
        before: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<Order>, RepoError> {
        let joined = match filter.status {
            None => query(LIST_ORDERS)
                .bind(filter.user_id)
                .bind(before)
                .bind(i64::from(limit)),
            Some(status) => query(LIST_ORDERS_IN_STATUS)
                .bind(filter.user_id)
                .bind(status.as_str())
                .bind(before)
                .bind(i64::from(limit)),
        };
        Ok(SqlStore::orders(&self.db, joined)
            .await?
            .into_iter()
            .map(|(order, _)| order)
            .collect())
    }

    async fn update_status(
        &self,
        id: Uuid,
        from: OrderStatus,
        to: OrderStatus,
        reason: Option<&str>,
        owes: Option<StockAction>,
        now: DateTime<Utc>,
    ) -> Result<Option<Order>, RepoError> {
        let mut tx = self.db.begin().await?;
        let change = StatusChange {
            id,
            from,
            to,
            reason,
            owes,
            now,
        };
        let updated = match self.db.backend() {
            Backend::Postgres => change.apply_in_one_statement(&mut tx).await?,
            Backend::Sqlite => change.apply(&mut tx).await?,
        };
        let Some((mut order, _)) = updated else {
            return Ok(None);
        };
        tx.notify(CHANNEL, &id.to_string()).await?;
        tx.commit().await?;
        order.items = self.items(id).await?;
        Ok(Some(order))
    }

    async fn events_after(
        &self,
        order_id: Uuid,
        version: i64,
    ) -> Result<Vec<OrderEvent>, RepoError> {
        query(
            "SELECT version, status, updated_at FROM order_events \
             WHERE order_id = $1 AND version > $2 ORDER BY version",
        )
        .bind(order_id)
        .bind(version)
        .fetch_all(&self.db, event)
        .await
    }

    async fn owe_stock_step(
        &self,
        order_id: Uuid,
        action: StockAction,
        now: DateTime<Utc>,
    ) -> Result<(), RepoError> {
        let mut tx = self.db.begin().await?;
        owe(&mut tx, order_id, action, now).await?;
        tx.commit().await
    }

    async fn due_stock_steps(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<StockStep>, RepoError> {
        query(
            "SELECT order_id, action, attempts FROM stock_outbox \
             WHERE next_attempt_at <= $1 ORDER BY next_attempt_at LIMIT $2",
        )
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&self.db, |row| {
            let action: String = row.get("action")?;
            Ok(StockStep {
                order_id: row.get("order_id")?,
                action: StockAction::parse(&action)
                    .ok_or_else(|| StoreError::Corrupt(format!("outbox action {action:?}")))?,
                attempts: row.get("attempts")?,
            })
        })
        .await
    }

    async fn stock_steps_done(
        &self,
        order_ids: &[Uuid],
        action: StockAction,
    ) -> Result<(), RepoError> {
        static DELETE_DONE: LazyLock<String> = LazyLock::new(|| {
            id_list_sql(
                "DELETE FROM stock_outbox WHERE action = $1 AND order_id IN ({ids})",
                2,
            )
        });
        if order_ids.is_empty() {
            return Ok(());
        }
        let mut tx = self.db.begin().await?;
        for chunk in order_ids.chunks(IDS_PER_STATEMENT) {
            query(&DELETE_DONE)
                .bind(action.as_str())
                .bind_ids(chunk)
                .execute(&mut tx)
                .await?;
        }
        tx.commit().await
    }

    async fn stock_steps_failed(
        &self,
        action: StockAction,
        put_off: &[(Uuid, DateTime<Utc>)],
    ) -> Result<(), RepoError> {
        let mut tx = self.db.begin().await?;
        for (order_id, next) in put_off {
            query(
                "UPDATE stock_outbox SET attempts = attempts + 1, next_attempt_at = $1 \
                 WHERE order_id = $2 AND action = $3",
            )
            .bind(*next)
            .bind(*order_id)
            .bind(action.as_str())
            .execute(&mut tx)
            .await?;
        }
        tx.commit().await
    }

    fn changes(&self) -> broadcast::Receiver<Notice> {
        self.changes.subscribe()
    }

    async fn ping(&self) -> Result<(), RepoError> {
        self.db.ping().await
    }

    fn backend(&self) -> &'static str {
        self.db.backend().as_str()
    }
}

#[cfg(test)]
mod tests {
    use shop_testkit::{fresh_postgres_database, rows_read_by_generic_plan};
    use uuid::Uuid;

    use super::{LIST_ORDERS, LIST_ORDERS_IN_STATUS};
    use crate::repo::{ConnectOptions, connect};

    /// A page of a user's orders reads about a page of rows from `orders`
    /// in the plan PostgreSQL keeps for the statement (a generic plan, from
    /// the sixth run on), with and without a status, not every order the
    /// user ever placed.
    #[tokio::test]
    async fn a_page_of_orders_reads_a_page_not_the_users_history_on_postgres() {
        let url = fresh_postgres_database("orders_page").await;
        connect(&url, ConnectOptions::new(1, None))
            .await
            .expect("connect and migrate");
        let admin = sqlx::PgPool::connect(&url).await.unwrap();
        let user = Uuid::now_v7();
        sqlx::query(
            "INSERT INTO orders (id, user_id, request_id, request_hash, currency_code, \
             total_cents, status, created_at, updated_at) \
             SELECT gen_random_uuid(), $1, 'request-' || n, 'hash', 'EUR', 100, \
             CASE WHEN n % 2 = 0 THEN 'pending' ELSE 'cancelled' END, now(), now() \
             FROM generate_series(1, 600) AS n",
        )
        .bind(user)
        .execute(&admin)
        .await
        .unwrap();

        let all = rows_read_by_generic_plan(
            &url,
            LIST_ORDERS,
            "uuid, uuid, int8",
            &format!("'{user}', NULL, 20"),
            "orders",
        )
        .await;
        let pending = rows_read_by_generic_plan(
            &url,
            LIST_ORDERS_IN_STATUS,
            "uuid, text, uuid, int8",
            &format!("'{user}', 'pending', NULL, 20"),
            "orders",
        )
        .await;
        assert_eq!(all, 20, "rows read of the user's 600 orders");
        // Half of them pending, every other one: the scan passes over as
        // many others on its way to a page.
        assert!(
            pending <= 3 * 20,
            "{pending} rows read of the user's 600 orders"
        );
    }
}
