//! SQLite reads on the calling thread.
//!
//! sqlx runs every SQLite connection on a thread of its own: each query is
//! sent to that thread and its rows sent back, two thread hand-offs that
//! cost more CPU than the query (about 55 µs per GetUser in the profile in
//! docs/performance.md, against a few µs for a point read of a cached
//! page). So a read outside a transaction runs here instead, synchronously
//! on the thread that asks, on a read-only connection of its own:
//!
//! - connections wait in a free list; a read takes one, runs, and puts it
//!   back. A connection is out only while a thread is inside a query, so at
//!   most as many are in use as threads read at once, and nobody ever waits
//!   for one: when the list is empty a new one is opened (and one beyond
//!   the list's bound is closed when put back);
//! - each connection keeps its prepared statements (`prepare_cached`), so
//!   a hot query is parsed once per connection;
//! - every statement is its own read transaction (WAL: it sees every
//!   commit that returned before it started, and never blocks the writer);
//! - the price: the thread is busy for as long as the query runs. A point
//!   read by key is a few µs; a query that scans a large table (a `LIKE`
//!   filter, a count) holds its runtime thread for the whole scan.
//!
//! The writer (`group_commit`) runs its statements the same way, through
//! [`rows`] and [`execute`], on its one writing connection.
//!
//! Queries are written with `$n` placeholders for both backends; SQLite
//! reads `$1` as a *named* parameter, so values are bound by the number in
//! each parameter's name, as sqlx does, not by position.

use std::{
    path::{Path, PathBuf},
    sync::{Mutex, PoisonError},
    time::Duration,
};

use chrono::SecondsFormat;
use rusqlite::{
    Connection, OpenFlags, Statement, ToSql,
    types::{ToSqlOutput, ValueRef},
};

use crate::{StoreError, Value};

/// Prepared statements kept per connection.
const STATEMENTS_PER_CONNECTION: usize = 64;

/// Read-only connections to one SQLite file, used on the calling thread.
#[derive(Debug)]
pub(crate) struct Readers {
    path: PathBuf,
    busy_timeout: Duration,
    idle: Mutex<Vec<Connection>>,
    max_idle: usize,
}

impl Readers {
    /// Readers of the database file `path`, keeping at most `max_idle`
    /// connections open between reads; opens one now, so that a file that
    /// cannot be read fails at start-up rather than on the first call.
    pub(crate) fn open(
        path: PathBuf,
        busy_timeout: Duration,
        max_idle: usize,
    ) -> Result<Readers, StoreError> {
        let readers = Readers {
            path,
            busy_timeout,
            idle: Mutex::new(Vec::new()),
            max_idle: max_idle.max(1),
        };
        let first = readers.connect()?;
        readers.put_back(first);
        Ok(readers)
    }

    fn connect(&self) -> Result<Connection, StoreError> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        // Readers refuse to write: every write goes through the writer and
        // its group commit, never around it.
        conn.pragma_update(None, "query_only", true)?;
        conn.busy_timeout(self.busy_timeout)?;
        conn.set_prepared_statement_cache_capacity(STATEMENTS_PER_CONNECTION);
        Ok(conn)
    }

    fn take(&self) -> Result<Connection, StoreError> {
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        match idle {
            Some(conn) => Ok(conn),
            None => self.connect(),
        }
    }

    fn put_back(&self, conn: Connection) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < self.max_idle {
            idle.push(conn);
        }
    }

    /// Runs `run` on one of these connections.
    pub(crate) fn with<T>(
        &self,
        run: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let conn = self.take()?;
        let done = run(&conn);
        // Whatever `run` ran was reset when it finished, which ended its
        // read transaction: the connection holds no snapshot now.
        self.put_back(conn);
        done
    }
}

/// Opens the one writing connection of the SQLite file `path` (already
/// migrated and in WAL mode) as sqlx opens its own: every commit on disk
/// before it returns (`synchronous=FULL`: a committed write survives a
/// power cut, not just a crash), foreign keys enforced, a locked database
/// waited for up to `busy_timeout`.
pub(crate) fn open_writer(path: &Path, busy_timeout: Duration) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(busy_timeout)?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;",
    )?;
    conn.set_prepared_statement_cache_capacity(STATEMENTS_PER_CONNECTION);
    Ok(conn)
}

/// Runs `sql` with `args` on `conn`, on the calling thread, and hands each
/// row to `each` until it returns `false`; the statement is kept prepared
/// in `conn`'s cache. Used by the readers above and by the writer
/// (`group_commit`) for every statement of a transaction.
pub(crate) fn rows(
    conn: &Connection,
    sql: &str,
    args: &[Value],
    mut each: impl FnMut(&rusqlite::Row<'_>) -> Result<bool, StoreError>,
) -> Result<(), StoreError> {
    let mut statement = conn.prepare_cached(sql)?;
    bind(&mut statement, args)?;
    let mut rows = statement.raw_query();
    while let Some(row) = rows.next()? {
        if !each(row)? {
            break;
        }
    }
    Ok(())
}

/// Runs the statement `sql` with `args` on `conn` to its end; how many
/// rows it inserted, updated or deleted (0 for a `SELECT`).
pub(crate) fn execute(conn: &Connection, sql: &str, args: &[Value]) -> Result<u64, StoreError> {
    let before = conn.total_changes();
    rows(conn, sql, args, |_| Ok(true))?;
    // `changes` is the last INSERT, UPDATE or DELETE's count, which is not
    // this statement's when it changed nothing (a SELECT, or no row
    // matched): then the total did not move.
    Ok(if conn.total_changes() == before {
        0
    } else {
        conn.changes()
    })
}

/// Binds `args` to `statement`'s `$n` (or `?n`) parameters by their
/// numbers.
fn bind(statement: &mut Statement<'_>, args: &[Value]) -> Result<(), StoreError> {
    for index in 1..=statement.parameter_count() {
        let number = statement
            .parameter_name(index)
            .and_then(|name| name.strip_prefix(['$', '?']))
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(index);
        let value = number
            .checked_sub(1)
            .and_then(|i| args.get(i))
            .ok_or(rusqlite::Error::InvalidParameterCount(number, args.len()))?;
        statement.raw_bind_parameter(index, value)?;
    }
    Ok(())
}

/// Values in the form sqlx's SQLite encoding writes them, so that a value
/// bound here compares equal to the one stored through sqlx.
impl ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        use rusqlite::types::Value as Owned;
        Ok(match self {
            Value::Text(Some(v)) => ToSqlOutput::Borrowed(ValueRef::Text(v.as_bytes())),
            Value::Int4(Some(v)) => ToSqlOutput::Owned(Owned::Integer(i64::from(*v))),
            Value::Int8(Some(v)) => ToSqlOutput::Owned(Owned::Integer(*v)),
            Value::Bool(Some(v)) => ToSqlOutput::Owned(Owned::Integer(i64::from(*v))),
            Value::Id(Some(v)) => ToSqlOutput::Owned(Owned::Text(v.hyphenated().to_string())),
            Value::Time(Some(v)) => {
                ToSqlOutput::Owned(Owned::Text(v.to_rfc3339_opts(SecondsFormat::AutoSi, false)))
            }
            Value::Text(None)
            | Value::Int4(None)
            | Value::Int8(None)
            | Value::Bool(None)
            | Value::Id(None)
            | Value::Time(None) => ToSqlOutput::Owned(Owned::Null),
        })
    }
}
