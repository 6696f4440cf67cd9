//! What can go wrong in storage, the same for every repository: the
//! database is unreachable (callers may retry), something else failed, a
//! stored value does not parse, migrations failed, or the URL names no
//! supported database. Repositories add their own meaning on top (a unique
//! violation as "this email is taken").

use thiserror::Error;

/// A storage failure.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The database cannot be reached (pool timeout, I/O, closed pool).
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// Any other database error.
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
    /// A statement on a tokio-postgres connection failed: a pipelined
    /// read (`pg_read`) or a statement of the group-commit writer
    /// (`pg_group_commit`).
    #[error("database error: {0}")]
    Pg(#[source] tokio_postgres::Error),
    /// A SQLite statement run on the calling thread failed: a read outside
    /// a transaction (`sqlite_read`) or any statement of the writer
    /// (`group_commit`).
    #[error("database error: {0}")]
    Sqlite(#[source] rusqlite::Error),
    /// A stored value the code does not understand.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// Applying migrations failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Opening the database failed (the URL with its password redacted,
    /// and why).
    #[error("opening {url}: {source}")]
    Open {
        /// The database URL, password redacted.
        url: String,
        /// What went wrong.
        #[source]
        source: Box<StoreError>,
    },
    /// The URL names no supported database.
    #[error("unsupported DATABASE_URL scheme in {0:?}: expected sqlite: or postgres:")]
    UnsupportedUrl(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> StoreError {
        match err {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_) => StoreError::Unavailable(err),
            sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => {
                StoreError::Corrupt(err.to_string())
            }
            other => StoreError::Database(other),
        }
    }
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(err: tokio_postgres::Error) -> StoreError {
        StoreError::Pg(err)
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(err: rusqlite::Error) -> StoreError {
        match err {
            rusqlite::Error::FromSqlConversionFailure(..)
            | rusqlite::Error::IntegralValueOutOfRange(..)
            | rusqlite::Error::InvalidColumnType(..)
            | rusqlite::Error::Utf8Error(..) => StoreError::Corrupt(err.to_string()),
            other => StoreError::Sqlite(other),
        }
    }
}

impl StoreError {
    /// True when the database could not be reached, or refused this
    /// transaction for the sake of others (worth a retry later).
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Unavailable(_) => true,
            StoreError::Pg(err) => {
                err.is_closed()
                    || std::error::Error::source(err).is_some_and(|s| s.is::<std::io::Error>())
                    || err.code().is_some_and(|code| {
                        // Class 08 (connection exception), 57P01–57P03
                        // (the server is shutting down or starting), and
                        // a deadlock or serialization failure, as below.
                        let code = code.code();
                        code.starts_with("08")
                            || matches!(code, "57P01" | "57P02" | "57P03" | "40P01" | "40001")
                    })
            }
            StoreError::Sqlite(err) => matches!(
                err.sqlite_error_code(),
                Some(
                    rusqlite::ErrorCode::DatabaseBusy
                        | rusqlite::ErrorCode::DatabaseLocked
                        | rusqlite::ErrorCode::CannotOpen
                        | rusqlite::ErrorCode::SystemIoFailure
                )
            ),
            StoreError::Open { source, .. } => source.is_unavailable(),
            // A deadlock or serialization failure: PostgreSQL failed this
            // transaction so that others could go on; it may be retried.
            StoreError::Database(err) => err
                .as_database_error()
                .and_then(|db| db.code())
                .is_some_and(|code| matches!(code.as_ref(), "40P01" | "40001")),
            _ => false,
        }
    }

    /// The unique constraint a write collided on, as the backend names it:
    /// the constraint's name on PostgreSQL (`users_email_key`), the
    /// columns on SQLite (`users.email`, or `t.a, t.b` for a constraint on
    /// two columns). A repository maps both spellings to its meaning.
    pub fn unique_violation(&self) -> Option<&str> {
        if let StoreError::Sqlite(rusqlite::Error::SqliteFailure(err, Some(message))) = self {
            use rusqlite::ffi::{SQLITE_CONSTRAINT_PRIMARYKEY, SQLITE_CONSTRAINT_UNIQUE};
            return matches!(
                err.extended_code,
                SQLITE_CONSTRAINT_UNIQUE | SQLITE_CONSTRAINT_PRIMARYKEY
            )
            .then(|| message.strip_prefix("UNIQUE constraint failed: "))
            .flatten()
            .map(str::trim);
        }
        if let StoreError::Pg(err) = self {
            let db = err.as_db_error()?;
            return (*db.code() == tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
                .then(|| db.constraint())
                .flatten();
        }
        let StoreError::Database(err) = self else {
            return None;
        };
        let db = err.as_database_error()?;
        if !db.is_unique_violation() {
            return None;
        }
        db.constraint().or_else(|| {
            db.message()
                .strip_prefix("UNIQUE constraint failed: ")
                .map(str::trim)
        })
    }
}

impl From<StoreError> for shop_core::error::AppError {
    /// An unreachable database is UNAVAILABLE (retry later); anything else
    /// from storage is unexpected. The cause is logged, never sent.
    fn from(err: StoreError) -> shop_core::error::AppError {
        if err.is_unavailable() {
            shop_core::error::AppError::Unavailable(err.into())
        } else {
            shop_core::error::AppError::Internal(err.into())
        }
    }
}
