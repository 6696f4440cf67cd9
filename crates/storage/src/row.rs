//! Reading a row of either backend by column name, with the one difference
//! that matters: ids are `uuid` on PostgreSQL and text on SQLite.

use chrono::{DateTime, Utc};
use sqlx::{Row as _, postgres::PgRow, sqlite::SqliteRow};
use uuid::Uuid;

use crate::StoreError;

/// A row of the result of a query, on either backend.
#[derive(Debug, Clone, Copy)]
pub enum Row<'r> {
    /// A PostgreSQL row.
    Pg(&'r PgRow),
    /// A SQLite row.
    Sqlite(&'r SqliteRow),
}

impl Row<'_> {
    /// The column `name` as a `T`.
    pub fn get<T: Column>(&self, name: &str) -> Result<T, StoreError> {
        match self {
            Row::Pg(row) => T::from_pg(row, name),
            Row::Sqlite(row) => T::from_sqlite(row, name),
        }
        .map_err(|e| StoreError::Corrupt(format!("column {name}: {e}")))
    }
}

/// A type a column can be read as, on both backends.
pub trait Column: Sized {
    /// From a PostgreSQL row.
    fn from_pg(row: &PgRow, name: &str) -> Result<Self, sqlx::Error>;
    /// From a SQLite row.
    fn from_sqlite(row: &SqliteRow, name: &str) -> Result<Self, sqlx::Error>;
}

/// Types both backends decode alike.
macro_rules! same_on_both {
    ($($ty:ty),* $(,)?) => {
        $(
            impl Column for $ty {
                fn from_pg(row: &PgRow, name: &str) -> Result<Self, sqlx::Error> {
                    row.try_get(name)
                }
                fn from_sqlite(row: &SqliteRow, name: &str) -> Result<Self, sqlx::Error> {
                    row.try_get(name)
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
    DateTime<Utc>,
    Option<DateTime<Utc>>,
);

impl Column for Uuid {
    fn from_pg(row: &PgRow, name: &str) -> Result<Self, sqlx::Error> {
        row.try_get(name)
    }
    fn from_sqlite(row: &SqliteRow, name: &str) -> Result<Self, sqlx::Error> {
        row.try_get::<uuid::fmt::Hyphenated, _>(name)
            .map(uuid::fmt::Hyphenated::into_uuid)
    }
}

impl Column for Option<Uuid> {
    fn from_pg(row: &PgRow, name: &str) -> Result<Self, sqlx::Error> {
        row.try_get(name)
    }
    fn from_sqlite(row: &SqliteRow, name: &str) -> Result<Self, sqlx::Error> {
        row.try_get::<Option<uuid::fmt::Hyphenated>, _>(name)
            .map(|id| id.map(uuid::fmt::Hyphenated::into_uuid))
    }
}
