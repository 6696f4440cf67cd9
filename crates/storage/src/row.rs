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
    /// transaction, and the writer's statements), with its columns' names
    /// ([`lite_names`]).
    Lite(&'r rusqlite::Row<'r>, &'r [&'r str]),
}

/// The names of `row`'s columns, in order, for [`Row::Lite`]. rusqlite
/// finds a column by name by asking SQLite for each column's name (a C
/// string, measured with `strlen`) until one matches, on every `get`:
/// for a row of n columns read whole, about n²/2 of those. Read once per
/// row here, each `get` compares Rust strings instead.
pub(crate) fn lite_names<'r>(row: &'r rusqlite::Row<'_>) -> Vec<&'r str> {
    let statement = row.as_ref();
    (0..statement.column_count())
        .map(|i| statement.column_name(i).unwrap_or_default())
        .collect()
}

impl Row<'_> {
    /// The column `name` as a `T`.
    pub fn get<T: Column>(&self, name: &str) -> Result<T, StoreError> {
        match self {
            Row::Pg(row) => T::from_pg(row, name),
            Row::PgPipelined(row) => T::from_pg_pipelined(row, name),
            Row::Sqlite(row) => T::from_sqlite(row, name),
            Row::Lite(row, names) => {
                // As rusqlite matches names: ASCII case aside.
                match names.iter().position(|n| n.eq_ignore_ascii_case(name)) {
                    Some(index) => T::from_lite(row, index),
                    None => Err(rusqlite::Error::InvalidColumnName(name.to_owned()).into()),
                }
            }
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
    /// From a SQLite row read on the calling thread: its column `index`.
    fn from_lite(row: &rusqlite::Row<'_>, index: usize) -> Result<Self, ColumnError>;
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
                fn from_lite(row: &rusqlite::Row<'_>, index: usize) -> Result<Self, ColumnError> {
                    Ok(row.get(index)?)
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
    fn from_lite(row: &rusqlite::Row<'_>, index: usize) -> Result<Self, ColumnError> {
        time_from_text(&row.get::<_, String>(index)?)
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
    fn from_lite(row: &rusqlite::Row<'_>, index: usize) -> Result<Self, ColumnError> {
        row.get::<_, Option<String>>(index)?
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
    fn from_lite(row: &rusqlite::Row<'_>, index: usize) -> Result<Self, ColumnError> {
        Ok(Uuid::parse_str(&row.get::<_, String>(index)?)?)
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
    fn from_lite(row: &rusqlite::Row<'_>, index: usize) -> Result<Self, ColumnError> {
        Ok(row
            .get::<_, Option<String>>(index)?
            .as_deref()
            .map(Uuid::parse_str)
            .transpose()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_columns_are_found_by_name_as_rusqlite_finds_them() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        let mut statement = conn
            .prepare("SELECT 7 AS n, 'x' AS \"Label\", NULL AS gone, 8 AS n")
            .unwrap();
        let mut rows = statement.raw_query();
        let row = rows.next().unwrap().unwrap();
        let names = lite_names(row);
        assert_eq!(names, ["n", "Label", "gone", "n"]);
        let row = Row::Lite(row, &names);
        // The first of two columns of one name, as rusqlite answers.
        assert_eq!(row.get::<i64>("n").unwrap(), 7);
        // ASCII case does not matter, as in SQL.
        assert_eq!(row.get::<String>("label").unwrap(), "x");
        assert_eq!(row.get::<Option<String>>("gone").unwrap(), None);
        let missing = row.get::<i64>("absent").unwrap_err().to_string();
        assert!(missing.contains("absent"), "{missing}");
        // A value of another type is an error, not a panic.
        assert!(row.get::<i64>("Label").is_err());
    }

    #[test]
    fn times_read_in_both_sqlite_spellings() {
        let rfc = time_from_text("2026-12-02T19:32:27.123456+00:00").unwrap();
        assert_eq!(rfc.to_rfc3339(), "2026-12-02T19:32:27.123456+00:00");
        let sqlite = time_from_text("2026-12-02 19:32:27").unwrap();
        assert_eq!(sqlite.to_rfc3339(), "2026-12-02T19:32:27+00:00");
        assert!(time_from_text("yesterday").is_err());
    }
}
