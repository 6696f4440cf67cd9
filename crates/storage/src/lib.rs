//! One SQL text for SQLite and PostgreSQL, so that each repository is
//! written once.
//!
//! A query is written with `$1`, `$2`, ... placeholders (both backends
//! read them) in SQL both dialects accept, and run on a [`Db`] or inside a
//! [`Tx`]; values are bound through [`Value`] and rows read through
//! [`Row`], which is where the two backends differ, and the only place:
//!
//! - **ids**: a UUID is a `uuid` column on PostgreSQL and hyphenated
//!   lower-case text on SQLite (text order is time order for UUID v7);
//! - **integers**: `Value::Int4` for `INTEGER` columns, `Value::Int8` for
//!   `BIGINT` (PostgreSQL types parameters; SQLite does not care);
//! - **unique violations**: [`StoreError::unique_violation`] names the
//!   constraint (PostgreSQL) or the columns (SQLite, `users.email`);
//! - **pool options and start-up**: [`connect`] opens either (a SQLite file
//!   is created with its directory, in WAL mode with `synchronous=FULL`)
//!   and runs the service's migrations for that backend (DDL differs, so
//!   each service keeps one migration directory per backend);
//! - **who writes**: on PostgreSQL, transactions run in turn on one
//!   connection and concurrent ones share a commit (see `pg_group_commit`;
//!   `ConnectOptions::group_commit` off: any pooled connection), writes
//!   outside a transaction on any pooled connection, and reads outside a
//!   transaction are pipelined on a few shared connections (see
//!   `pg_read`). On SQLite, reads
//!   outside a transaction run on the calling thread on read-only
//!   connections (no thread hand-off per query; see `sqlite_read`), and every
//!   transaction and every write statement runs on the one writing
//!   connection, where concurrent transactions share a commit (group
//!   commit: one fsync for many, each caller answered after the commit
//!   that holds its writes; see `group_commit`). A statement is a read
//!   when its text starts with `SELECT`;
//! - **change notices**: [`Db::listen`] and [`Tx::notify`] are
//!   `LISTEN`/`NOTIFY` on PostgreSQL (every replica hears, when the
//!   transaction commits) and an in-process channel on SQLite (one
//!   process per file).
//!
//! [`ReadThrough`] caches hot rows in front of all this, invalidated by
//! writes in-process and by change notices across replicas.
//!
//! What is not portable (arrays, `::` casts, `pg_notify`, `json_each`) is
//! not used in query text; a query that truly must differ is written twice
//! and says why. A statement over a list of ids takes them as a fixed
//! `IN (...)` list instead of an array ([`id_list_sql`]).

mod cache;
mod db;
mod error;
mod group_commit;
mod id_list;
mod notices;
mod pg_group_commit;
mod pg_notices;
mod pg_read;
mod pg_tls;
mod query;
mod row;
mod sqlite_read;
mod value;
mod writer_queue;

pub use cache::{CacheBounds, ReadThrough};
pub use db::{Backend, ConnectOptions, Db, Migrations, connect, connect_with};
pub use error::StoreError;
pub use group_commit::{
    DEFAULT_COMMIT_DELAY, GroupCommitStats, LINGER_BELOW, MAX_BATCH, MAX_BATCH_AGE,
};
pub use id_list::{IDS_PER_STATEMENT, id_list_sql};
pub use notices::{Notice, Notices};
pub use pg_group_commit::APPLICATION_NAME as GROUP_COMMIT_APPLICATION_NAME;
pub use pg_read::{
    APPLICATION_NAME as PIPELINED_APPLICATION_NAME, RECONNECT_EVERY as PIPELINED_RECONNECT_EVERY,
};
pub use query::{MAX_NOTICE_PAYLOAD, On, Query, Tx, query};
pub use row::{Column, ColumnError, Row};
pub use value::Value;

/// A service's [`Migrations`] from its `migrations/postgres` and
/// `migrations/sqlite` directories (embedded at build time), for a
/// `static`: `static MIGRATIONS: Migrations = shop_storage::migrations!();`.
/// The service crate depends on `sqlx` for the embedding.
#[macro_export]
macro_rules! migrations {
    () => {
        $crate::Migrations {
            postgres: {
                static POSTGRES: ::sqlx::migrate::Migrator =
                    ::sqlx::migrate!("./migrations/postgres");
                &POSTGRES
            },
            sqlite: {
                static SQLITE: ::sqlx::migrate::Migrator = ::sqlx::migrate!("./migrations/sqlite");
                &SQLITE
            },
        }
    };
}
