//! Reading a row of either backend by column name, with the one difference
//! that matters: ids are `uuid` on PostgreSQL and text on SQLite. Each
//! backend has two drivers (sqlx, and the one its reads outside a
//! transaction use: rusqlite, tokio-postgres), so four kinds of row.

use chrono::{DateTime, NaiveDateTime, Utc};
use sqlx::{Row as _, postgres::PgRow, sqlite::SqliteRow};
use uuid::Uuid;

use crate::StoreError;

/// Why a column could not be read as the type asked for.
pub type ColumnError = Box<dyn std::error::Error + Send + Sync>;

/// A row of the result of a query, on either backend.
#[derive(Debug, Clone, Copy)]
pub enum Row<'r> {
    /// A PostgreSQL row read through sqlx (transactions, streams).
    Pg(&'r PgRow),
    /// A PostgreSQL row read on a pipelined connection (reads outside a
    /// transaction).
    PgPipelined(&'r tokio_postgres::Row),
    /// A SQLite row read through sqlx (inside a transaction, streams).
    Sqlite(&'r SqliteRow),
    /// A SQLite row read on the calling thread (reads outside a
    /// transaction).
    Lite(&'r rusqlite::Row<'r>),
}

impl Row<'_> {
    /// The column `name` as a `T`.
    pub fn get<T: Column>(&self, name: &str) -> Result<T, StoreError> {
        match self {
            Row::Pg(row) => T::from_pg(row, name),
            Row::PgPipelined(row) => T::from_pg_pipelined(row, name),
            Row::Sqlite(row) => T::from_sqlite(row, name),
            Row::Lite(row) => T::from_lite(row, name),
        }
        .map_err(|e| StoreError::Corrupt(format!("column {name}: {e}")))
    }
}

/// A type a column can be read as, on both backends.
pub trait Column: Sized {
    /// From a PostgreSQL row read through sqlx.
    fn from_pg(row: &PgRow, name: &str) -> Result<Self, ColumnError>;
    /// From a PostgreSQL row read on a pipelined connection.
    fn from_pg_pipelined(row: &tokio_postgres::Row, name: &str) -> Result<Self, ColumnError>;
    /// From a SQLite row read through sqlx.
    fn from_sqlite(row: &SqliteRow, name: &str) -> Result<Self, ColumnError>;
    /// From a SQLite row read on the calling thread.
    fn from_lite(row: &rusqlite::Row<'_>, name: &str) -> Result<Self, ColumnError>;
}

/// A column of a pipelined PostgreSQL row: tokio-postgres decodes the same
/// types as sqlx does, the same way.
fn pipelined<T>(row: &tokio_postgres::Row, name: &str) -> Result<T, ColumnError>
where
    T: for<'a> tokio_postgres::types::FromSql<'a>,
{
    Ok(row.try_get(name)?)
}

/// Types both backends decode alike.
macro_rules! same_on_both {
    ($($ty:ty),* $(,)?) => {
        $(
            impl Column for $ty {
                fn from_pg(row: &PgRow, name: &str) -> Result<Self, ColumnError> {
                    Ok(row.try_get(name)?)
                }
                fn from_pg_pipelined(row: &tokio_postgres::Row, name: &str) -> Result<Self, ColumnError> {
                    pipelined(row, name)
                }
                fn from_sqlite(row: &SqliteRow, name: &str) -> Result<Self, ColumnError> {
                    Ok(row.try_get(name)?)
                }
                fn from_lite(row: &rusqlite::Row<'_>, name: &str) -> Result<Self, ColumnError> {
                    Ok(row.get(name)?)
                }
            }
        )*
    };
}

same_on_both!(
    String,
    Option<String>,
    i32,
    Option<i32>,
    i64,
    Option<i64>,
    bool,
    Option<bool>,
);

/// Reads what sqlx's SQLite encoding wrote: RFC 3339 (`Value::Time`), or
/// SQLite's own `YYYY-MM-DD HH:MM:SS[.fff]` in UTC.
fn time_from_text(text: &str) -> Result<DateTime<Utc>, ColumnError> {
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        return Ok(time.with_timezone(&Utc));
    }
    Ok(NaiveDateTime::parse_from_str(text, "%F %T%.f")
        .map_err(|e| format!("{text:?} is not a time: {e}"))?
        .and_utc())
}

impl Column for DateTime<Utc> {
    fn from_pg(row: &PgRow, name: &str) -> Result<Self, ColumnError> {
        Ok(row.try_get(name)?)
    }
    fn from_pg_pipelined(row: &tokio_postgres::Row, name: &str) -> Result<Self, ColumnError> {
        pipelined(row, name)
    }
    fn from_sqlite(row: &SqliteRow, name: &str) -> Result<Self, ColumnError> {
        Ok(row.try_get(name)?)
    }
    fn from_lite(row: &rusqlite::Row<'_>, name: &str) -> Result<Self, ColumnError> {
        time_from_text(&row.get::<_, String>(name)?)
    }
}

impl Column for Option<DateTime<Utc>> {
    fn from_pg(row: &PgRow, name: &str) -> Result<Self, ColumnError> {
        Ok(row.try_get(name)?)
    }
    fn from_pg_pipelined(row: &tokio_postgres::Row, name: &str) -> Result<Self, ColumnError> {
        pipelined(row, name)
    }
    fn from_sqlite(row: &SqliteRow, name: &str) -> Result<Self, ColumnError> {
        Ok(row.try_get(name)?)
    }
    fn from_lite(row: &rusqlite::Row<'_>, name: &str) -> Result<Self, ColumnError> {
        row.get::<_, Option<String>>(name)?
            .as_deref()
            .map(time_from_text)
            .transpose()
    }
}

impl Column for Uuid {
    fn from_pg(row: &PgRow, name: &str) -> Result<Self, ColumnError> {
        Ok(row.try_get(name)?)
    }
    fn from_pg_pipelined(row: &tokio_postgres::Row, name: &str) -> Result<Self, ColumnError> {
        pipelined(row, name)
    }
    fn from_sqlite(row: &SqliteRow, name: &str) -> Result<Self, ColumnError> {
        Ok(row
            .try_get::<uuid::fmt::Hyphenated, _>(name)
            .map(uuid::fmt::Hyphenated::into_uuid)?)
    }
    fn from_lite(row: &rusqlite::Row<'_>, name: &str) -> Result<Self, ColumnError> {
        Ok(Uuid::parse_str(&row.get::<_, String>(name)?)?)
    }
}

impl Column for Option<Uuid> {
    fn from_pg(row: &PgRow, name: &str) -> Result<Self, ColumnError> {
        Ok(row.try_get(name)?)
    }
    fn from_pg_pipelined(row: &tokio_postgres::Row, name: &str) -> Result<Self, ColumnError> {
        pipelined(row, name)
    }
    fn from_sqlite(row: &SqliteRow, name: &str) -> Result<Self, ColumnError> {
        Ok(row
            .try_get::<Option<uuid::fmt::Hyphenated>, _>(name)
            .map(|id| id.map(uuid::fmt::Hyphenated::into_uuid))?)
    }
    fn from_lite(row: &rusqlite::Row<'_>, name: &str) -> Result<Self, ColumnError> {
        Ok(row
            .get::<_, Option<String>>(name)?
            .as_deref()
            .map(Uuid::parse_str)
            .transpose()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_in_both_sqlite_spellings() {
        let rfc = time_from_text("2026-12-02T19:32:27.123456+00:00").unwrap();
        assert_eq!(rfc.to_rfc3339(), "2026-12-02T19:32:27.123456+00:00");
        let sqlite = time_from_text("2026-12-02 19:32:27").unwrap();
        assert_eq!(sqlite.to_rfc3339(), "2026-12-02T19:32:27+00:00");
        assert!(time_from_text("yesterday").is_err());
    }
}
