//! Queries written once, run on either backend, on the pool ([`Db`]) or
//! inside a transaction ([`Tx`]).
//!
//! ```text
//! let user = query("SELECT id, email FROM users WHERE id = $1")
//!     .bind(id)
//!     .fetch_optional(&db, |row| Ok((row.get::<Uuid>("id")?, row.get::<String>("email")?)))
//!     .await?;
//! ```

use std::sync::Arc;

use futures_util::{StreamExt as _, stream::BoxStream};
use sqlx::{Postgres, Sqlite, Transaction, postgres::PgArguments, sqlite::SqliteArguments};

use crate::{
    Db, Row, StoreError, Value,
    db::Pool,
    group_commit::{Turn, Writer},
    notices::LocalChannels,
    pg_group_commit::PgTurn,
    pg_notices::{self, Outgoing},
    pg_read::Pipelined,
    row::lite_names,
    sqlite_read::{self, Readers},
};

/// A query: SQL text with `$n` placeholders both backends read, and the
/// values bound to them.
#[derive(Debug, Clone)]
#[must_use = "a query does nothing until it is executed or fetched"]
pub struct Query {
    sql: &'static str,
    args: Vec<Value>,
}

/// A query of `sql` (a literal: no query text is ever built from input).
pub fn query(sql: &'static str) -> Query {
    Query {
        sql,
        args: Vec::new(),
    }
}

/// Where a query runs: on the pool, or inside a transaction.
#[derive(Debug)]
pub enum On<'a> {
    /// On a pooled connection.
    Db(&'a Db),
    /// Inside a transaction.
    Tx(&'a mut Tx),
}

impl<'a> From<&'a Db> for On<'a> {
    fn from(db: &'a Db) -> On<'a> {
        On::Db(db)
    }
}

impl<'a> From<&'a mut Tx> for On<'a> {
    fn from(tx: &'a mut Tx) -> On<'a> {
        On::Tx(tx)
    }
}

/// Where a query that is not a calling-thread read runs.
enum Target<'a> {
    /// A PostgreSQL pooled connection.
    PgPool(&'a sqlx::PgPool),
    /// A PostgreSQL transaction.
    PgTx(&'a mut sqlx::PgConnection),
    /// SQLite's writer, inside a transaction.
    LiteTx(&'a mut Turn),
    /// SQLite's writer, for a write outside a transaction: a transaction
    /// of its own, joining the group commit, committed when the statement
    /// succeeds.
    LiteWrite(&'a Writer),
}

impl<'a> On<'a> {
    /// The group-commit turn this runs in when its statements go through
    /// tokio-postgres (`pg_group_commit`), not sqlx.
    fn pipelined_turn(&mut self) -> Option<&mut PgTurn> {
        match self {
            On::Tx(tx) => match &mut tx.inner {
                TxInner::PgBatched(turn) if turn.is_pipelined() => Some(turn),
                _ => None,
            },
            On::Db(_) => None,
        }
    }

    fn target(self) -> Target<'a> {
        match self {
            On::Db(db) => match &db.pool {
                Pool::Postgres(pg) => Target::PgPool(&pg.pool),
                Pool::Sqlite(sqlite) => Target::LiteWrite(&sqlite.writer),
            },
            On::Tx(tx) => match &mut tx.inner {
                TxInner::Postgres(t) => Target::PgTx(t),
                TxInner::PgBatched(turn) => Target::PgTx(
                    turn.sqlx_conn()
                        .expect("a turn on tokio-postgres runs its statements itself"),
                ),
                TxInner::Sqlite(turn) => Target::LiteTx(turn),
            },
        }
    }
}

/// Runs `$body` with `$q` the query for PostgreSQL, `$exec` its executor
/// and `$row` the [`Row`] constructor, or `$lite` with the SQLite writer's
/// connection (see [`Target`]; a SQLite read outside a transaction never
/// gets here, see [`Query::sqlite_readers`]).
macro_rules! on_backend {
    ($on:expr, $query:expr, |$q:ident, $exec:ident, $row:ident| $body:expr, |$conn:ident| $lite:expr) => {
        match $on.target() {
            Target::PgPool(pool) => {
                let ($q, $exec, $row) = ($query.postgres(), pool, Row::Pg);
                $body
            }
            Target::PgTx(conn) => {
                let ($q, $exec, $row) = ($query.postgres(), conn, Row::Pg);
                $body
            }
            Target::LiteTx(turn) => {
                let $conn = turn.conn();
                $lite
            }
            Target::LiteWrite(writer) => {
                let mut turn = writer.begin().await?;
                let done = {
                    let $conn = turn.conn();
                    $lite
                };
                match done {
                    Ok(value) => {
                        turn.commit().await?;
                        Ok(value)
                    }
                    // Dropping the turn rolls its statement back.
                    Err(e) => Err(e),
                }
            }
        }
    };
}

impl Query {
    /// Binds the next placeholder.
    pub fn bind(mut self, value: impl Into<Value>) -> Query {
        self.args.push(value.into());
        self
    }

    /// The values bound so far.
    #[cfg(test)]
    pub(crate) fn args(&self) -> &[Value] {
        &self.args
    }

    /// True for a statement that only reads (its text starts with
    /// `SELECT`): outside a transaction, SQLite runs it on the read pool.
    fn is_read(&self) -> bool {
        let sql = self.sql.trim_start();
        sql.get(..6)
            .is_some_and(|head| head.eq_ignore_ascii_case("select"))
    }

    /// The calling-thread readers to run this query on: when it is a read,
    /// outside a transaction, on SQLite.
    fn sqlite_readers<'d>(&self, on: &On<'d>) -> Option<&'d Readers> {
        let On::Db(db) = on else { return None };
        let db: &'d Db = db;
        match &db.pool {
            Pool::Sqlite(sqlite) if self.is_read() => Some(&sqlite.readers),
            _ => None,
        }
    }

    /// The pipelined PostgreSQL connections to run this query on: when it
    /// is a read, outside a transaction, on PostgreSQL with pipelining on.
    fn pipelined<'d>(&self, on: &On<'d>) -> Option<&'d std::sync::Arc<Pipelined>> {
        let On::Db(db) = on else { return None };
        let db: &'d Db = db;
        match &db.pool {
            Pool::Postgres(pg) if self.is_read() => pg.pipelined.as_ref(),
            _ => None,
        }
    }

    /// Runs this read on a pipelined connection; `None` when it must take
    /// the pool instead (not a pipelined read, or its connection is being
    /// replaced).
    async fn pipelined_rows(
        &self,
        on: &On<'_>,
    ) -> Option<Result<Vec<tokio_postgres::Row>, StoreError>> {
        self.pipelined(on)?.query(self.sql, &self.args).await
    }

    fn postgres(self) -> sqlx::query::Query<'static, Postgres, PgArguments> {
        self.args
            .into_iter()
            .fold(sqlx::query(self.sql), |q, value| match value {
                Value::Text(v) => q.bind(v),
                Value::Int4(v) => q.bind(v),
                Value::Int8(v) => q.bind(v),
                Value::Bool(v) => q.bind(v),
                Value::Id(v) => q.bind(v),
                Value::Time(v) => q.bind(v),
            })
    }

    fn sqlite(self) -> sqlx::query::Query<'static, Sqlite, SqliteArguments> {
        self.args
            .into_iter()
            .fold(sqlx::query(self.sql), |q, value| match value {
                Value::Text(v) => q.bind(v),
                Value::Int4(v) => q.bind(v),
                Value::Int8(v) => q.bind(v),
                Value::Bool(v) => q.bind(v),
                // Hyphenated lower-case text: text order is time order for
                // UUID v7, as `uuid` order is on PostgreSQL.
                Value::Id(v) => q.bind(v.map(|id| id.hyphenated())),
                Value::Time(v) => q.bind(v),
            })
    }

    /// Runs the query; how many rows it changed.
    pub async fn execute<'a>(self, on: impl Into<On<'a>>) -> Result<u64, StoreError> {
        let mut on = on.into();
        if let Some(turn) = on.pipelined_turn() {
            return turn.execute(self.sql, &self.args).await;
        }
        if let Some(readers) = self.sqlite_readers(&on) {
            return readers.with(|conn| sqlite_read::execute(conn, self.sql, &self.args));
        }
        if let Some(rows) = self.pipelined_rows(&on).await {
            return rows.map(|rows| rows.len() as u64);
        }
        on_backend!(
            on,
            self,
            |q, exec, _row| Ok(q.execute(exec).await?.rows_affected()),
            |conn| sqlite_read::execute(conn, self.sql, &self.args)
        )
    }

    /// The first row, read by `read`, if there is one.
    pub async fn fetch_optional<'a, T>(
        self,
        on: impl Into<On<'a>>,
        read: impl FnOnce(Row<'_>) -> Result<T, StoreError>,
    ) -> Result<Option<T>, StoreError> {
        let mut on = on.into();
        if let Some(turn) = on.pipelined_turn() {
            let rows = turn.query(self.sql, &self.args).await?;
            return rows.first().map(|r| read(Row::PgPipelined(r))).transpose();
        }
        if let Some(readers) = self.sqlite_readers(&on) {
            return readers.with(|conn| lite_first(conn, &self, read));
        }
        if let Some(rows) = self.pipelined_rows(&on).await {
            return rows?.first().map(|r| read(Row::PgPipelined(r))).transpose();
        }
        on_backend!(
            on,
            self,
            |q, exec, row| {
                let found = q.fetch_optional(exec).await?;
                found.as_ref().map(|r| read(row(r))).transpose()
            },
            |conn| lite_first(conn, &self, read)
        )
    }

    /// The one row, read by `read` (a missing row is an error).
    pub async fn fetch_one<'a, T>(
        self,
        on: impl Into<On<'a>>,
        read: impl FnOnce(Row<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.fetch_optional(on, read)
            .await?
            .ok_or(StoreError::Database(sqlx::Error::RowNotFound))
    }

    /// Every row, each read by `read`.
    pub async fn fetch_all<'a, T>(
        self,
        on: impl Into<On<'a>>,
        mut read: impl FnMut(Row<'_>) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        let mut on = on.into();
        if let Some(turn) = on.pipelined_turn() {
            let rows = turn.query(self.sql, &self.args).await?;
            return rows.iter().map(|r| read(Row::PgPipelined(r))).collect();
        }
        if let Some(readers) = self.sqlite_readers(&on) {
            return readers.with(|conn| lite_all(conn, &self, read));
        }
        if let Some(rows) = self.pipelined_rows(&on).await {
            return rows?.iter().map(|r| read(Row::PgPipelined(r))).collect();
        }
        on_backend!(
            on,
            self,
            |q, exec, row| {
                let rows = q.fetch_all(exec).await?;
                rows.iter().map(|r| read(row(r))).collect()
            },
            |conn| lite_all(conn, &self, read)
        )
    }

    /// The rows as a stream, read from the database as it is polled (not
    /// collected first), each read by `read`. For `SELECT`s only (on
    /// SQLite it runs on the pool of read-only sqlx connections: a stream
    /// holds its connection across awaits, which a calling-thread reader
    /// must not).
    pub fn fetch<'a, T, F>(self, db: &'a Db, mut read: F) -> BoxStream<'a, Result<T, StoreError>>
    where
        T: Send + 'a,
        F: FnMut(Row<'_>) -> Result<T, StoreError> + Send + 'a,
    {
        match &db.pool {
            Pool::Postgres(pg) => self
                .postgres()
                .fetch(&pg.pool)
                .map(move |r| {
                    r.map_err(StoreError::from)
                        .and_then(|row| read(Row::Pg(&row)))
                })
                .boxed(),
            Pool::Sqlite(sqlite) => self
                .sqlite()
                .fetch(&sqlite.read)
                .map(move |r| {
                    r.map_err(StoreError::from)
                        .and_then(|row| read(Row::Sqlite(&row)))
                })
                .boxed(),
        }
    }
}

/// The first row of `query` on SQLite's `conn`, read by `read`.
fn lite_first<T>(
    conn: &rusqlite::Connection,
    query: &Query,
    read: impl FnOnce(Row<'_>) -> Result<T, StoreError>,
) -> Result<Option<T>, StoreError> {
    let (mut read, mut found) = (Some(read), None);
    sqlite_read::rows(conn, query.sql, &query.args, |row| {
        if let Some(read) = read.take() {
            found = Some(read(Row::Lite(row, &lite_names(row)))?);
        }
        Ok(false)
    })?;
    Ok(found)
}

/// Every row of `query` on SQLite's `conn`, each read by `read`.
fn lite_all<T>(
    conn: &rusqlite::Connection,
    query: &Query,
    mut read: impl FnMut(Row<'_>) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    let mut all = Vec::new();
    sqlite_read::rows(conn, query.sql, &query.args, |row| {
        all.push(read(Row::Lite(row, &lite_names(row)))?);
        Ok(true)
    })?;
    Ok(all)
}

/// The longest payload a change notice may carry, in bytes: PostgreSQL's
/// limit (shorter than 8000), kept on SQLite too so that code behaves the
/// same on both.
pub const MAX_NOTICE_PAYLOAD: usize = 7999;

/// A transaction on either backend; dropped without [`Tx::commit`], it is
/// rolled back. On SQLite it holds the one writing connection until it
/// ends: never wait on anything slow (a network call) inside one.
#[derive(Debug)]
pub struct Tx {
    inner: TxInner,
    /// Notices to send with the commit.
    pending: Vec<Outgoing>,
    local: Arc<LocalChannels>,
}

#[derive(Debug)]
enum TxInner {
    Postgres(Transaction<'static, Postgres>),
    /// A turn in PostgreSQL's group commit (`DATABASE_GROUP_COMMIT`).
    PgBatched(PgTurn),
    Sqlite(Turn),
}

impl Db {
    /// Starts a transaction.
    pub async fn begin(&self) -> Result<Tx, StoreError> {
        let inner = match &self.pool {
            Pool::Postgres(pg) => match &pg.writer {
                Some(writer) => TxInner::PgBatched(writer.begin().await?),
                None => TxInner::Postgres(pg.pool.begin().await?),
            },
            Pool::Sqlite(sqlite) => TxInner::Sqlite(sqlite.writer.begin().await?),
        };
        Ok(Tx {
            inner,
            pending: Vec::new(),
            local: Arc::clone(&self.local),
        })
    }
}

impl Tx {
    /// Sends `payload` to the listeners of `channel` (see
    /// [`Db::listen`]) when, and only if, this transaction commits.
    /// A payload longer than [`MAX_NOTICE_PAYLOAD`] is refused here, so
    /// that it fails this call rather than the commit (on PostgreSQL, the
    /// commit of every transaction batched with this one).
    pub async fn notify(&mut self, channel: &'static str, payload: &str) -> Result<(), StoreError> {
        if payload.len() > MAX_NOTICE_PAYLOAD {
            return Err(StoreError::Database(sqlx::Error::Protocol(format!(
                "a notice payload of {} bytes (at most {MAX_NOTICE_PAYLOAD})",
                payload.len()
            ))));
        }
        // Kept until the commit on every backend: PostgreSQL would hold a
        // `NOTIFY` until the commit anyway, so sending them all in one
        // statement then saves a round trip per notice.
        self.pending.push((channel, payload.to_owned()));
        Ok(())
    }

    /// Commits with the notices: PostgreSQL delivers them at the commit, to
    /// every listening connection of every replica; on SQLite they go to
    /// this process's listeners once the commit has returned.
    pub async fn commit(self) -> Result<(), StoreError> {
        match self.inner {
            TxInner::Postgres(mut t) => {
                pg_notices::send(&mut t, &self.pending).await?;
                t.commit().await?;
            }
            TxInner::PgBatched(t) => t.commit(self.pending).await?,
            TxInner::Sqlite(t) => {
                t.commit().await?;
                for (channel, payload) in &self.pending {
                    self.local.send(channel, payload);
                }
            }
        }
        Ok(())
    }

    /// Rolls back (also what dropping it does, without waiting).
    pub async fn rollback(self) -> Result<(), StoreError> {
        match self.inner {
            TxInner::Postgres(t) => t.rollback().await?,
            TxInner::PgBatched(t) => t.rollback().await?,
            TxInner::Sqlite(t) => t.rollback().await?,
        }
        Ok(())
    }
}
