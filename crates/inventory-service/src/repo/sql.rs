//! The inventory store: one SQL text for SQLite and PostgreSQL (see
//! `shop-storage`), but for opening a reservation and its holds, which
//! PostgreSQL does in fewer statements (see `Opening`, `hold`). Each
//! transaction that writes starts with a write, so SQLite takes its write
//! lock at once instead of failing to upgrade a read lock under
//! contention; PostgreSQL's conditional updates re-check their condition
//! on the locked row. Skus are locked in sku order, so two reservations
//! never wait on each other in a cycle.

use std::{
    collections::{BTreeMap, HashMap},
    sync::LazyLock,
};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use shop_storage::{
    Backend, Db, IDS_PER_STATEMENT, Notice, Notices, Query, Row, StoreError, Tx, id_list_sql, query,
};
use tokio::sync::broadcast;
use uuid::Uuid;

use super::{Adjusted, InventoryRepo, RepoError, Reserved};
use crate::domain::{
    Product, ProductDraft, Reservation, ReservationLine, ReservationStatus, ReserveItem, Shortage,
    Sku, StockChange, items_fingerprint,
};

/// The channel every change of a product's row is announced on (payload:
/// the sku), for stock watches and the product caches of every replica.
const CHANNEL: &str = "shop_stock_changes";

/// How many change notices a slow watcher may fall behind before it must
/// re-read everything it watches.
pub(super) const CHANGE_FEED_CAPACITY: usize = 1024;

/// Inserts a pending reservation ($1 order, $2 items hash, $3 expiry, $4
/// time) in the currency of its first product ($5 sku) unless it exists,
/// returning that currency: both ways of opening one start with it.
macro_rules! insert_reservation {
    () => {
        "INSERT INTO reservations (order_id, status, currency_code, items_hash, expires_at, \
         created_at, updated_at) VALUES ($1, 'pending', \
         COALESCE((SELECT currency_code FROM products WHERE sku = $5), ''), $2, $3, $4, $4) \
         ON CONFLICT (order_id) DO NOTHING RETURNING currency_code"
    };
}

/// Holds $1 of the stock of product $3 at time $2 if it is for sale and
/// has that much available, returning its price and currency: with or
/// without the reservation line in the same statement.
macro_rules! hold_stock {
    () => {
        "UPDATE products SET reserved = reserved + $1, updated_at = $2 \
         WHERE sku = $3 AND active AND on_hand - reserved >= $1 \
         RETURNING unit_price_cents, currency_code"
    };
}

/// A reservation about to be opened: its row, and the first item (in sku
/// order) whose product's currency it starts in.
struct Opening<'a> {
    order_id: Uuid,
    items_hash: &'a str,
    expires_at: DateTime<Utc>,
    now: DateTime<Utc>,
    first: &'a ReserveItem,
}

/// What opening a reservation found: its stored currency and, when the
/// first hold was made with it, that hold's outcome ([`hold`]'s).
type Opened = (String, Option<Option<(i64, String)>>);

impl Opening<'_> {
    /// `statement` with the reservation's row bound to `$1` to `$5`
    /// (order, items hash, expiry, time, first sku), as both ways of
    /// opening number them.
    fn bind_row(&self, statement: Query) -> Query {
        statement
            .bind(self.order_id)
            .bind(self.items_hash)
            .bind(self.expires_at)
            .bind(self.now)
            .bind(self.first.sku.as_str())
    }

    /// Inserts the pending reservation (nothing when it exists: `None`),
    /// in the currency of its first product as it is now: the holds read
    /// every product's, and only if one differs (a mixed order, or a
    /// currency changed meanwhile) does the row need a second write.
    async fn insert(&self, tx: &mut Tx) -> Result<Option<Opened>, StoreError> {
        self.bind_row(query(insert_reservation!()))
            .fetch_optional(tx, |row| Ok((row.get::<String>("currency_code")?, None)))
            .await
    }

    /// [`Opening::insert`] and [`hold`] of the first item (with its line)
    /// as one PostgreSQL statement (data-modifying `WITH`): the hold
    /// happens only if the reservation was inserted.
    async fn insert_and_hold_first(&self, tx: &mut Tx) -> Result<Option<Opened>, StoreError> {
        self.bind_row(query(concat!(
            "WITH reservation AS (",
            insert_reservation!(),
            "), held AS (UPDATE products SET reserved = reserved + $6, updated_at = $4 \
             WHERE sku = $5 AND active AND on_hand - reserved >= $6 \
             AND EXISTS (SELECT 1 FROM reservation) \
             RETURNING unit_price_cents, currency_code), \
             line AS (INSERT INTO reservation_lines (order_id, sku, quantity, unit_price_cents) \
             SELECT $1, $5, $6, unit_price_cents FROM held) \
             SELECT reservation.currency_code AS reserved_in, \
             held.unit_price_cents, held.currency_code \
             FROM reservation LEFT JOIN held ON true"
        )))
        .bind(self.first.quantity)
        .fetch_optional(tx, |row| {
            let held = match (
                row.get::<Option<i64>>("unit_price_cents")?,
                row.get::<Option<String>>("currency_code")?,
            ) {
                (Some(price), Some(currency)) => Some((price, currency)),
                _ => None,
            };
            Ok((row.get::<String>("reserved_in")?, Some(held)))
        })
        .await
    }
}

/// Holds `item`'s quantity of its product's stock for `order_id` if the
/// product is for sale and has that much available: its price and
/// currency, or `None`. With `record_line`, the same statement (data-
/// modifying `WITH`, PostgreSQL only) also inserts the reservation line;
/// otherwise the caller does, after every hold.
async fn hold(
    tx: &mut Tx,
    order_id: Uuid,
    item: &ReserveItem,
    now: DateTime<Utc>,
    record_line: bool,
) -> Result<Option<(i64, String)>, StoreError> {
    let sql = if record_line {
        concat!(
            "WITH held AS (",
            hold_stock!(),
            "), line AS (INSERT INTO reservation_lines (order_id, sku, quantity, unit_price_cents) \
             SELECT $4, $3, $1, unit_price_cents FROM held) \
             SELECT unit_price_cents, currency_code FROM held"
        )
    } else {
        hold_stock!()
    };
    let mut statement = query(sql)
        .bind(item.quantity)
        .bind(now)
        .bind(item.sku.as_str());
    if record_line {
        statement = statement.bind(order_id);
    }
    statement
        .fetch_optional(tx, |row| {
            Ok((
                row.get::<i64>("unit_price_cents")?,
                row.get::<String>("currency_code")?,
            ))
        })
        .await
}

/// A page of the catalogue after the cursor, in sku order. The cursor is
/// always a bound (`sku > COALESCE(cursor, '')`, below every sku), never
/// a condition that a NULL switches off (`$1 IS NULL OR sku > $1`): in
/// the plan PostgreSQL keeps for a prepared statement from its sixth run
/// on (generic, for every value) such a condition cannot start the index
/// scan at the cursor, and each page read every product before it.
const LIST_PRODUCTS: &str = "SELECT sku, name, unit_price_cents, currency_code, active, on_hand, \
     reserved, updated_at FROM products WHERE sku > COALESCE($1, '') AND (active OR NOT $2) \
     ORDER BY sku LIMIT $3";

/// [`InventoryRepo`] on SQLite or PostgreSQL.
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

    /// The store's change notices (skus), unrelayed.
    pub(super) fn notices(&self) -> Notices {
        self.changes.clone()
    }

    async fn reservation_in(on: &mut Tx, order_id: Uuid) -> Result<Option<Reservation>, RepoError> {
        let Some(mut reservation) = query(
            "SELECT order_id, status, currency_code, items_hash, expires_at \
             FROM reservations WHERE order_id = $1",
        )
        .bind(order_id)
        .fetch_optional(&mut *on, reservation)
        .await?
        else {
            return Ok(None);
        };
        reservation.lines = lines_in(on, order_id).await?;
        Ok(Some(reservation))
    }
}

fn product(row: Row<'_>) -> Result<Product, StoreError> {
    Ok(Product {
        sku: row.get("sku")?,
        name: row.get("name")?,
        unit_price_cents: row.get("unit_price_cents")?,
        currency_code: row.get("currency_code")?,
        active: row.get("active")?,
        on_hand: row.get("on_hand")?,
        reserved: row.get("reserved")?,
        updated_at: row.get("updated_at")?,
    })
}

fn reservation(row: Row<'_>) -> Result<Reservation, StoreError> {
    let order_id: Uuid = row.get("order_id")?;
    let status: String = row.get("status")?;
    Ok(Reservation {
        order_id,
        lines: Vec::new(),
        currency_code: row.get("currency_code")?,
        status: ReservationStatus::parse(&status).ok_or_else(|| {
            StoreError::Corrupt(format!("reservation {order_id} status {status:?}"))
        })?,
        expires_at: row.get("expires_at")?,
        items_hash: row.get("items_hash")?,
    })
}

fn line(row: Row<'_>) -> Result<ReservationLine, StoreError> {
    Ok(ReservationLine {
        sku: row.get("sku")?,
        quantity: row.get("quantity")?,
        unit_price_cents: row.get("unit_price_cents")?,
    })
}

async fn lines_in(on: &mut Tx, order_id: Uuid) -> Result<Vec<ReservationLine>, RepoError> {
    query(
        "SELECT sku, quantity, unit_price_cents FROM reservation_lines \
         WHERE order_id = $1 ORDER BY sku",
    )
    .bind(order_id)
    .fetch_all(on, line)
    .await
}

/// Moves the reservation of `order_id` from `from` to `to` if it is in
/// `from` (compare-and-set); whether it was.
async fn move_reservation(
    tx: &mut Tx,
    order_id: Uuid,
    from: ReservationStatus,
    to: ReservationStatus,
    now: DateTime<Utc>,
) -> Result<bool, RepoError> {
    let moved = query(
        "UPDATE reservations SET status = $1, updated_at = $2 \
         WHERE order_id = $3 AND status = $4",
    )
    .bind(to.as_str())
    .bind(now)
    .bind(order_id)
    .bind(from.as_str())
    .execute(&mut *tx)
    .await?;
    Ok(moved == 1)
}

/// Gives back the held units of a pending reservation's lines.
async fn unhold(
    tx: &mut Tx,
    lines: &[ReservationLine],
    now: DateTime<Utc>,
) -> Result<(), RepoError> {
    for line in lines {
        query("UPDATE products SET reserved = reserved - $1, updated_at = $2 WHERE sku = $3")
            .bind(line.quantity)
            .bind(now)
            .bind(&line.sku)
            .execute(&mut *tx)
            .await?;
        tx.notify(CHANNEL, &line.sku).await?;
    }
    Ok(())
}

/// Confirms, within `tx`, those of `order_ids` whose reservations are
/// pending and not expired at `now`: a few statements for the whole list
/// (see `shop_storage::id_list_sql`), each reservation coming back from
/// the update itself with its lines. On the hot path every order confirms,
/// and each statement saved is a round trip less on the batch's
/// connection while the products' rows are locked.
async fn confirm_pending(
    tx: &mut Tx,
    order_ids: &[Uuid],
    now: DateTime<Utc>,
) -> Result<HashMap<Uuid, Reservation>, RepoError> {
    static CONFIRM: LazyLock<String> = LazyLock::new(|| {
        id_list_sql(
            "UPDATE reservations SET status = 'confirmed', updated_at = $1 \
             WHERE status = 'pending' AND expires_at > $1 AND order_id IN ({ids}) \
             RETURNING order_id, status, currency_code, items_hash, expires_at",
            2,
        )
    });
    static LINES: LazyLock<String> = LazyLock::new(|| {
        id_list_sql(
            "SELECT order_id, sku, quantity, unit_price_cents FROM reservation_lines \
             WHERE order_id IN ({ids}) ORDER BY order_id, sku",
            1,
        )
    });
    let mut confirmed = HashMap::with_capacity(order_ids.len());
    for chunk in order_ids.chunks(IDS_PER_STATEMENT) {
        let updated = query(&CONFIRM)
            .bind(now)
            .bind_ids(chunk)
            .fetch_all(&mut *tx, reservation)
            .await?;
        let ids: Vec<Uuid> = updated.iter().map(|r| r.order_id).collect();
        confirmed.extend(updated.into_iter().map(|r| (r.order_id, r)));
        if ids.is_empty() {
            continue;
        }
        let lines = query(&LINES)
            .bind_ids(&ids)
            .fetch_all(&mut *tx, |row| {
                Ok((row.get::<Uuid>("order_id")?, line(row)?))
            })
            .await?;
        for (order_id, line) in lines {
            if let Some(reservation) = confirmed.get_mut(&order_id) {
                reservation.lines.push(line);
            }
        }
    }
    Ok(confirmed)
}

/// A reservation [`confirm_pending`] did not confirm, within `tx`: expired
/// now if it is pending past its expiry and not swept yet, then read as
/// it is. None when there is none.
async fn settle_unconfirmed(
    tx: &mut Tx,
    order_id: Uuid,
    now: DateTime<Utc>,
) -> Result<Option<Reservation>, RepoError> {
    if let Some(due) = SqlStore::reservation_in(tx, order_id).await?
        && due.status == ReservationStatus::Pending
        && move_reservation(
            tx,
            order_id,
            ReservationStatus::Pending,
            ReservationStatus::Expired,
            now,
        )
        .await?
    {
        unhold(tx, &due.lines, now).await?;
    }
    SqlStore::reservation_in(tx, order_id).await
}

#[async_trait]
impl InventoryRepo for SqlStore {
    async fn put_product(
        &self,
        draft: &ProductDraft,
        now: DateTime<Utc>,
    ) -> Result<Product, RepoError> {
        let mut tx = self.db.begin().await?;
        let product = query(
            "INSERT INTO products (sku, name, unit_price_cents, currency_code, active, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (sku) DO UPDATE SET name = excluded.name, \
             unit_price_cents = excluded.unit_price_cents, \
             currency_code = excluded.currency_code, active = excluded.active, \
             updated_at = excluded.updated_at \
             RETURNING sku, name, unit_price_cents, currency_code, active, on_hand, reserved, \
             updated_at",
        )
        .bind(draft.sku.as_str())
        .bind(&draft.name)
        .bind(draft.unit_price_cents)
        .bind(draft.currency.as_str())
        .bind(draft.active)
        .bind(now)
        .fetch_one(&mut tx, product)
        .await?;
        tx.notify(CHANNEL, &product.sku).await?;
        tx.commit().await?;
        Ok(product)
    }

    async fn get_product(&self, sku: &Sku) -> Result<Option<Product>, RepoError> {
        query(
            "SELECT sku, name, unit_price_cents, currency_code, active, on_hand, reserved, \
             updated_at FROM products WHERE sku = $1",
        )
        .bind(sku.as_str())
        .fetch_optional(&self.db, product)
        .await
    }

    async fn list_products(
        &self,
        after: Option<&str>,
        active_only: bool,
        limit: u32,
    ) -> Result<Vec<Product>, RepoError> {
        query(LIST_PRODUCTS)
            .bind(after)
            .bind(active_only)
            .bind(i64::from(limit))
            .fetch_all(&self.db, product)
            .await
    }

    async fn adjust_stock(
        &self,
        change: &StockChange,
        now: DateTime<Utc>,
    ) -> Result<Adjusted, RepoError> {
        let sku = change.sku.as_str();
        let mut tx = self.db.begin().await?;
        // The product must exist before its id is recorded (foreign key);
        // a write first, as everywhere here.
        let touched = query("UPDATE products SET updated_at = updated_at WHERE sku = $1")
            .bind(sku)
            .execute(&mut tx)
            .await?;
        if touched == 0 {
            tx.rollback().await?;
            return Ok(Adjusted::NotFound);
        }
        let recorded = query(
            "INSERT INTO stock_adjustments (request_id, sku, delta, reason, created_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (request_id) DO NOTHING",
        )
        .bind(&change.request_id)
        .bind(sku)
        .bind(change.delta)
        .bind(&change.reason)
        .bind(now)
        .execute(&mut tx)
        .await?;
        if recorded == 0 {
            let (earlier_sku, earlier_delta): (String, i64) =
                query("SELECT sku, delta FROM stock_adjustments WHERE request_id = $1")
                    .bind(&change.request_id)
                    .fetch_one(&mut tx, |row| Ok((row.get("sku")?, row.get("delta")?)))
                    .await?;
            tx.rollback().await?;
            let product = self
                .get_product(&change.sku)
                .await?
                .ok_or_else(|| StoreError::Corrupt("adjusted product vanished".into()))?;
            return Ok(Adjusted::Repeated {
                product,
                same: earlier_sku == sku && earlier_delta == change.delta,
            });
        }
        let updated = query(
            "UPDATE products SET on_hand = on_hand + $1, updated_at = $2 \
             WHERE sku = $3 AND on_hand + $1 >= reserved \
             RETURNING sku, name, unit_price_cents, currency_code, active, on_hand, reserved, \
             updated_at",
        )
        .bind(change.delta)
        .bind(now)
        .bind(sku)
        .fetch_optional(&mut tx, product)
        .await?;
        let Some(product) = updated else {
            tx.rollback().await?;
            let product = self
                .get_product(&change.sku)
                .await?
                .ok_or_else(|| StoreError::Corrupt("adjusted product vanished".into()))?;
            return Ok(Adjusted::BelowReserved(product));
        };
        tx.notify(CHANNEL, sku).await?;
        tx.commit().await?;
        Ok(Adjusted::Applied(product))
    }

    async fn reserve(
        &self,
        order_id: Uuid,
        items: &[ReserveItem],
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Reserved, RepoError> {
        let items_hash = items_fingerprint(items);
        let mut sorted: Vec<&ReserveItem> = items.iter().collect();
        sorted.sort_by(|a, b| a.sku.cmp(&b.sku));
        let Some(&first) = sorted.first() else {
            return Err(StoreError::Corrupt("a reservation of no items".into()));
        };
        let mut tx = self.db.begin().await?;
        // On PostgreSQL, where every statement is a round trip, the
        // reservation row, the first hold and its line are one statement,
        // and each further hold records its line; SQLite's lines follow
        // the holds.
        let postgres = self.db.backend() == Backend::Postgres;
        let opening = Opening {
            order_id,
            items_hash: &items_hash,
            expires_at,
            now,
            first,
        };
        let opened = if postgres {
            opening.insert_and_hold_first(&mut tx).await?
        } else {
            opening.insert(&mut tx).await?
        };
        let Some((stored_currency, mut first_hold)) = opened else {
            let existing = SqlStore::reservation_in(&mut tx, order_id)
                .await?
                .ok_or_else(|| StoreError::Corrupt("reservation conflicted but is gone".into()))?;
            tx.rollback().await?;
            return Ok(Reserved::Existing(existing));
        };

        let mut lines = Vec::with_capacity(sorted.len());
        let mut short = Vec::new();
        let mut currencies = Vec::new();
        for item in sorted {
            let held = match first_hold.take() {
                Some(held) => held,
                None => hold(&mut tx, order_id, item, now, postgres).await?,
            };
            match held {
                Some((unit_price_cents, currency)) => {
                    currencies.push(currency);
                    lines.push(ReservationLine {
                        sku: item.sku.as_str().to_owned(),
                        quantity: item.quantity,
                        unit_price_cents,
                    });
                }
                None => short.push(item),
            }
        }
        if !short.is_empty() {
            tx.rollback().await?;
            let mut shortages = Vec::with_capacity(short.len());
            for item in short {
                let description = match self.get_product(&item.sku).await? {
                    None => "no such product".to_owned(),
                    Some(p) if !p.active => "the product is not for sale".to_owned(),
                    Some(p) => format!("{} requested, {} available", item.quantity, p.available()),
                };
                shortages.push(Shortage {
                    sku: item.sku.as_str().to_owned(),
                    description,
                });
            }
            return Ok(Reserved::Short(shortages));
        }
        currencies.dedup();
        let [currency] = currencies.as_slice() else {
            tx.rollback().await?;
            return Ok(Reserved::MixedCurrencies);
        };
        if *currency != stored_currency {
            query("UPDATE reservations SET currency_code = $1 WHERE order_id = $2")
                .bind(currency.as_str())
                .bind(order_id)
                .execute(&mut tx)
                .await?;
        }
        for line in &lines {
            if !postgres {
                query(
                    "INSERT INTO reservation_lines (order_id, sku, quantity, unit_price_cents) \
                     VALUES ($1, $2, $3, $4)",
                )
                .bind(order_id)
                .bind(&line.sku)
                .bind(line.quantity)
                .bind(line.unit_price_cents)
                .execute(&mut tx)
                .await?;
            }
            tx.notify(CHANNEL, &line.sku).await?;
        }
        tx.commit().await?;
        Ok(Reserved::Held(Reservation {
            order_id,
            lines,
            currency_code: currency.clone(),
            status: ReservationStatus::Pending,
            expires_at,
            items_hash,
        }))
    }

    async fn get_reservation(&self, order_id: Uuid) -> Result<Option<Reservation>, RepoError> {
        let mut tx = self.db.begin().await?;
        let found = SqlStore::reservation_in(&mut tx, order_id).await?;
        tx.rollback().await?;
        Ok(found)
    }

    async fn confirm(
        &self,
        order_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<Option<Reservation>, RepoError> {
        let mut confirmed = self.confirm_all(&[order_id], now).await?;
        Ok(confirmed.pop())
    }

    async fn confirm_all(
        &self,
        order_ids: &[Uuid],
        now: DateTime<Utc>,
    ) -> Result<Vec<Reservation>, RepoError> {
        let mut tx = self.db.begin().await?;
        let mut confirmed = confirm_pending(&mut tx, order_ids, now).await?;
        let mut taken = BTreeMap::<String, i64>::new();
        for line in confirmed.values().flat_map(|r| &r.lines) {
            *taken.entry(line.sku.clone()).or_default() += line.quantity;
        }
        let mut after = Vec::with_capacity(order_ids.len());
        for &order_id in order_ids {
            match confirmed.remove(&order_id) {
                Some(reservation) => after.push(reservation),
                None => after.extend(settle_unconfirmed(&mut tx, order_id, now).await?),
            }
        }
        // One update per product for the whole batch, in sku order (the
        // order reservations lock them in).
        for (sku, quantity) in &taken {
            // Available is unchanged: the units leave both columns.
            query(
                "UPDATE products SET on_hand = on_hand - $1, reserved = reserved - $1, \
                 updated_at = $2 WHERE sku = $3",
            )
            .bind(*quantity)
            .bind(now)
            .bind(sku.as_str())
            .execute(&mut tx)
            .await?;
            // For the product caches (on_hand and reserved moved); stock
            // watches re-read and find nothing to send. The batch's notices
            // leave in one statement with its commit.
            tx.notify(CHANNEL, sku).await?;
        }
        tx.commit().await?;
        Ok(after)
    }

    async fn release(&self, order_id: Uuid, now: DateTime<Utc>) -> Result<Reservation, RepoError> {
        let mut tx = self.db.begin().await?;
        if move_reservation(
            &mut tx,
            order_id,
            ReservationStatus::Pending,
            ReservationStatus::Released,
            now,
        )
        .await?
        {
            let lines = lines_in(&mut tx, order_id).await?;
            unhold(&mut tx, &lines, now).await?;
        } else if move_reservation(
            &mut tx,
            order_id,
            ReservationStatus::Confirmed,
            ReservationStatus::Released,
            now,
        )
        .await?
        {
            for line in lines_in(&mut tx, order_id).await? {
                query("UPDATE products SET on_hand = on_hand + $1, updated_at = $2 WHERE sku = $3")
                    .bind(line.quantity)
                    .bind(now)
                    .bind(&line.sku)
                    .execute(&mut tx)
                    .await?;
                tx.notify(CHANNEL, &line.sku).await?;
            }
        } else {
            // Never reserved: record the release, so that a ReserveStock
            // arriving late (a retry overtaken by the release) holds nothing.
            query(
                "INSERT INTO reservations (order_id, status, currency_code, items_hash, \
                 expires_at, created_at, updated_at) \
                 VALUES ($1, 'released', '', '', $2, $2, $2) ON CONFLICT (order_id) DO NOTHING",
            )
            .bind(order_id)
            .bind(now)
            .execute(&mut tx)
            .await?;
        }
        let after = SqlStore::reservation_in(&mut tx, order_id)
            .await?
            .ok_or_else(|| StoreError::Corrupt("released reservation is gone".into()))?;
        tx.commit().await?;
        Ok(after)
    }

    async fn expire_due(&self, now: DateTime<Utc>) -> Result<u64, RepoError> {
        let mut tx = self.db.begin().await?;
        let due: Vec<Uuid> = query(
            "UPDATE reservations SET status = 'expired', updated_at = $1 \
             WHERE status = 'pending' AND expires_at <= $1 RETURNING order_id",
        )
        .bind(now)
        .fetch_all(&mut tx, |row| row.get("order_id"))
        .await?;
        for order_id in &due {
            let lines = lines_in(&mut tx, *order_id).await?;
            unhold(&mut tx, &lines, now).await?;
        }
        tx.commit().await?;
        Ok(due.len() as u64)
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

    use super::LIST_PRODUCTS;
    use crate::repo::{ConnectOptions, ProductCache, connect};

    /// A page of the catalogue after a cursor deep in it reads about a page
    /// of rows from `products` in the plan PostgreSQL keeps for the
    /// statement (generic, from the sixth run on), not every product before
    /// the cursor.
    #[tokio::test]
    async fn a_page_of_products_after_a_cursor_reads_a_page_on_postgres() {
        let url = fresh_postgres_database("products_page").await;
        connect(&url, ConnectOptions::new(1, None), ProductCache::OFF)
            .await
            .expect("connect and migrate");
        let admin = sqlx::PgPool::connect(&url).await.unwrap();
        sqlx::query(
            "INSERT INTO products (sku, name, unit_price_cents, currency_code, active, \
             updated_at) SELECT 'sku-' || lpad(n::text, 5, '0'), 'Product', 100, 'EUR', true, \
             now() FROM generate_series(1, 20000) AS n",
        )
        .execute(&admin)
        .await
        .unwrap();
        let read = rows_read_by_generic_plan(
            &url,
            LIST_PRODUCTS,
            "text, bool, int8",
            "'sku-15000', false, 20",
            "products",
        )
        .await;
        assert_eq!(
            read, 20,
            "rows read for the page after the 15,000th of 20,000 products"
        );
    }
}
