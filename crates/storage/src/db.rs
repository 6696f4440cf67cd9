//! Opening a database of either backend and running its migrations.

use std::{str::FromStr, sync::Arc, time::Duration};

use sqlx::{
    migrate::Migrator,
    postgres::{PgConnectOptions, PgPool, PgPoolOptions},
    sqlite::{
        SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
    },
};

use crate::{
    StoreError,
    group_commit::{GroupCommitStats, Writer},
    notices::LocalChannels,
    pg_group_commit::PgWriter,
    pg_read::Pipelined,
    sqlite_read::Readers,
};

/// How long a caller waits for a pooled connection (and SQLite for a
/// locked database) before the database counts as unavailable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// Which database engine a [`Db`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// PostgreSQL: containers and clusters, several replicas per database.
    Postgres,
    /// A SQLite file: the all-in-one stack and single-instance deployments.
    Sqlite,
}

impl Backend {
    /// `postgres` or `sqlite`, for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Postgres => "postgres",
            Backend::Sqlite => "sqlite",
        }
    }
}

/// A service's migrations, one directory per backend (DDL differs):
/// `Migrations { postgres: &POSTGRES, sqlite: &SQLITE }` with each a
/// `static` from `sqlx::migrate!`.
#[derive(Debug, Clone, Copy)]
pub struct Migrations {
    /// For PostgreSQL.
    pub postgres: &'static Migrator,
    /// For SQLite.
    pub sqlite: &'static Migrator,
}

/// A connection pool to one database of either backend. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Db {
    pub(crate) pool: Pool,
    pub(crate) local: Arc<LocalChannels>,
}

#[derive(Debug, Clone)]
pub(crate) enum Pool {
    Postgres(PostgresDb),
    Sqlite(SqliteDb),
}

/// A PostgreSQL database: the sqlx pool for writes outside a transaction
/// and streams (and transactions, without group commit), the group-commit
/// writer for transactions (`pg_group_commit`; `None` when off), and
/// pipelined connections for reads outside a transaction (`pg_read`;
/// `None` when pipelining is off).
#[derive(Debug, Clone)]
pub(crate) struct PostgresDb {
    pub(crate) pool: PgPool,
    pub(crate) writer: Option<PgWriter>,
    pub(crate) pipelined: Option<Arc<Pipelined>>,
}

/// How to open a database, beyond its URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectOptions {
    /// Largest number of pooled connections (PostgreSQL); on SQLite, how
    /// many idle read-only connections are kept between reads.
    pub max_connections: u32,
    /// PostgreSQL: connections every read outside a transaction shares,
    /// its queries pipelined with other callers' (0: reads take a pooled
    /// connection each). Ignored on SQLite.
    pub pipeline_connections: u32,
    /// PostgreSQL: transactions run in turn on one connection, concurrent
    /// ones sharing one commit (see `pg_group_commit`); off, each takes a
    /// pooled connection of its own. SQLite always commits in groups.
    pub group_commit: bool,
    /// How long a group-commit batch stays open for more transactions
    /// when writes arrive closer together than this, so that they share
    /// one commit (at most [`crate::MAX_BATCH_AGE`]; zero: a batch commits
    /// as soon as nobody waits to join it). SQLite, and PostgreSQL with
    /// `group_commit`: PostgreSQL's own `commit_delay` never waits for a
    /// writer that runs one transaction at a time.
    pub commit_delay: Duration,
}

impl ConnectOptions {
    /// `max_connections` pooled connections and `pipeline_connections`
    /// pipelined ones (unset, one per CPU this process may use), with group
    /// commit and [`crate::DEFAULT_COMMIT_DELAY`].
    pub fn new(max_connections: u32, pipeline_connections: Option<u32>) -> ConnectOptions {
        ConnectOptions {
            group_commit: true,
            commit_delay: crate::DEFAULT_COMMIT_DELAY,
            max_connections,
            pipeline_connections: pipeline_connections.unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
            }),
        }
    }

    /// These options with the group commit's commit delay set to `delay`.
    pub fn with_commit_delay(self, delay: Duration) -> ConnectOptions {
        ConnectOptions {
            commit_delay: delay,
            ..self
        }
    }

    /// These options with PostgreSQL's group commit on or off.
    pub fn with_group_commit(self, group_commit: bool) -> ConnectOptions {
        ConnectOptions {
            group_commit,
            ..self
        }
    }
}

/// A SQLite file: read-only connections for queries outside transactions
/// (WAL lets them read while the writer writes), used on the calling thread
/// (`sqlite_read`) and, for streams, through a sqlx pool; and the one
/// writing connection, with group commit, for every transaction and write.
#[derive(Debug, Clone)]
pub(crate) struct SqliteDb {
    pub(crate) readers: Arc<Readers>,
    pub(crate) read: SqlitePool,
    pub(crate) writer: Writer,
}

/// Opens the database named by `url` (`sqlite:` or `postgres:`) with at
/// most `max_connections` pooled connections, creating a SQLite file and
/// its directory when missing, and applies the migrations for its backend
/// ([`connect_with`] with [`ConnectOptions::new`]).
pub async fn connect(
    url: &str,
    max_connections: u32,
    migrations: &Migrations,
) -> Result<Db, StoreError> {
    connect_with(url, ConnectOptions::new(max_connections, None), migrations).await
}

/// Opens the database named by `url` as `options` say, creating a SQLite
/// file and its directory when missing, and applies the migrations for its
/// backend. An error names the URL, its password redacted.
pub async fn connect_with(
    url: &str,
    options: ConnectOptions,
    migrations: &Migrations,
) -> Result<Db, StoreError> {
    open(url, options, migrations).await.map_err(|e| match e {
        StoreError::UnsupportedUrl(_) => e,
        other => StoreError::Open {
            url: shop_core::config::redact_url(url),
            source: Box::new(other),
        },
    })
}

/// Creates the SQLite file `path` (and its missing directories) readable
/// by its owner only, unless it exists: SQLite creates its `-wal` and
/// `-shm` files with the database file's mode, so the data never gets the
/// process's default umask.
fn create_owner_only(path: &std::path::Path) -> std::io::Result<()> {
    if path.as_os_str() == ":memory:" {
        return Ok(());
    }
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
        && !dir.exists()
    {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

async fn open(
    url: &str,
    options: ConnectOptions,
    migrations: &Migrations,
) -> Result<Db, StoreError> {
    let max_connections = options.max_connections;
    let commit_delay = options.commit_delay;
    let pool = if url.starts_with("sqlite:") {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(StoreError::Database)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a committed write survives a power cut, not just a crash.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(ACQUIRE_TIMEOUT)
            .foreign_keys(true);
        create_owner_only(options.get_filename())
            .map_err(|e| StoreError::Unavailable(sqlx::Error::Io(e)))?;
        // Migrated through a pool of one (what `Migrator::run` takes),
        // which also puts the file in WAL mode for good.
        let migrating = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options.clone())
            .await?;
        migrations.sqlite.run(&migrating).await?;
        migrating.close().await;
        let writing = crate::sqlite_read::open_writer(options.get_filename(), ACQUIRE_TIMEOUT)?;
        // Readers refuse to write: every write must go through the writer
        // (and its group commit), never around it.
        let readers = Readers::open(
            options.get_filename().to_owned(),
            ACQUIRE_TIMEOUT,
            max_connections as usize,
        )?;
        let read = SqlitePoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options.pragma("query_only", "ON"))
            .await?;
        Pool::Sqlite(SqliteDb {
            readers: Arc::new(readers),
            read,
            writer: Writer::new(writing, ACQUIRE_TIMEOUT, ACQUIRE_TIMEOUT)
                .with_commit_delay(commit_delay),
        })
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect(url)
            .await?;
        migrations.postgres.run(&pool).await?;
        let pipelined =
            match Pipelined::open(url, options.pipeline_connections as usize, ACQUIRE_TIMEOUT)
                .await?
            {
                Ok(pipelined) => {
                    tracing::debug!(connections = pipelined.len(), "PostgreSQL reads pipelined");
                    Some(Arc::new(pipelined))
                }
                Err(why) => {
                    tracing::info!("PostgreSQL reads and group commit not pipelined: {why}");
                    None
                }
            };
        let writer = if options.group_commit {
            let connect = PgConnectOptions::from_str(url).map_err(StoreError::Database)?;
            let writer =
                PgWriter::new(connect, ACQUIRE_TIMEOUT).with_commit_delay(options.commit_delay);
            // On tokio-postgres wherever reads are pipelined: a turn's
            // savepoint then shares a round trip with its first statement.
            Some(match &pipelined {
                Some(pipelined) => writer.pipelined(pipelined.target()),
                None => writer,
            })
        } else {
            None
        };
        Pool::Postgres(PostgresDb {
            pool,
            writer,
            pipelined,
        })
    } else {
        return Err(StoreError::UnsupportedUrl(shop_core::config::redact_url(
            url,
        )));
    };
    Ok(Db {
        pool,
        local: Arc::default(),
    })
}

impl Db {
    /// Which engine this is.
    pub fn backend(&self) -> Backend {
        match self.pool {
            Pool::Postgres(_) => Backend::Postgres,
            Pool::Sqlite(_) => Backend::Sqlite,
        }
    }

    /// How group commit has batched so far; `None` on PostgreSQL with
    /// group commit off.
    pub fn group_commit_stats(&self) -> Option<GroupCommitStats> {
        match &self.pool {
            Pool::Postgres(pg) => pg.writer.as_ref().map(PgWriter::stats),
            Pool::Sqlite(sqlite) => Some(sqlite.writer.stats()),
        }
    }

    /// How many transactions wait for the group-commit connection (0 on
    /// PostgreSQL with group commit off); for tests that need a queue to
    /// exist.
    pub fn writers_queued(&self) -> usize {
        match &self.pool {
            Pool::Postgres(pg) => pg.writer.as_ref().map_or(0, PgWriter::queued),
            Pool::Sqlite(sqlite) => sqlite.writer.queued(),
        }
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        crate::query("SELECT 1").execute(self).await.map(drop)
    }
}
