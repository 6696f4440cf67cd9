//! PostgreSQL reads pipelined on a few shared connections.
//!
//! Through sqlx's pool every read takes a connection of its own for the
//! whole round trip: acquire, send, wait, read, release. Under load that is
//! one write and one read system call per query on each side and the
//! pool's bookkeeping, about 55 µs of the service's CPU per GetUser in the
//! profile in docs/performance.md. tokio-postgres instead lets every caller
//! send on one connection at once: queries from concurrent callers go out
//! back to back in one write, PostgreSQL answers them in order, and the
//! connection's task hands each caller its rows (the model of the fastest
//! frameworks in the TechEmpower benchmarks). So reads outside a
//! transaction (`SELECT`s) run here, on a handful of connections (one per
//! core by default, `DATABASE_PIPELINE_CONNECTIONS`) taken in turn:
//!
//! - each connection prepares a query once (per text and parameter types)
//!   and keeps the statement, as sqlx's statement cache does;
//! - each statement is its own read transaction, as on the pool: it sees
//!   every commit that returned before it was sent;
//! - writes outside a transaction and streams stay on the sqlx pool, and
//!   so do transactions without group commit (with it, they run on one
//!   connection of this kind, see `pg_group_commit`);
//! - a connection that breaks is replaced in the background, at most one
//!   attempt per [`RECONNECT_EVERY`]; until then its reads take the pool,
//!   so an outage behaves exactly as it does without pipelining;
//! - TLS: these connections never use it, so they are only opened where it
//!   cannot matter: `sslmode=disable`, or a server on this host (loopback
//!   or a Unix socket) without `sslmode=require`. Anywhere else reads stay
//!   on the pool (which negotiates TLS), and start-up says so.
//!
//! A caller that goes away (a deadline) drops its future; the connection
//! reads and discards the answer it no longer waits for.

use std::{
    collections::HashMap,
    str::FromStr,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::BytesMut;
use tokio_postgres::{
    Client, Config, NoTls, Statement,
    config::{Host, SslMode},
    types::{IsNull, ToSql, Type, to_sql_checked},
};

use crate::{StoreError, Value};

/// The `application_name` these connections show in `pg_stat_activity`
/// (unless the URL names one).
pub const APPLICATION_NAME: &str = "shop-pipelined-reads";

/// The least time between two attempts to replace a broken connection.
pub const RECONNECT_EVERY: Duration = Duration::from_secs(1);

/// Connections shared by every read outside a transaction.
#[derive(Debug)]
pub(crate) struct Pipelined {
    config: Config,
    slots: Box<[Slot]>,
    next: AtomicUsize,
}

/// One connection, or none while it is being replaced.
#[derive(Debug, Default)]
struct Slot {
    live: Mutex<Option<Arc<Connection>>>,
    reconnecting: AtomicBool,
    last_attempt: Mutex<Option<Instant>>,
}

/// One tokio-postgres connection and the statements it has prepared.
#[derive(Debug)]
pub(crate) struct Connection {
    client: Client,
    /// Prepared statements by query text and parameter types.
    statements: Mutex<HashMap<(&'static str, Vec<Type>), Statement>>,
}

impl Pipelined {
    /// Pipelined connections to the server of `url`, `count` of them, all
    /// opened now; `Ok(None)` (with the reason) when pipelining is off: a
    /// count of 0, a URL tokio-postgres does not read, or a server TLS
    /// might protect.
    pub(crate) async fn open(
        url: &str,
        count: usize,
        connect_timeout: Duration,
    ) -> Result<Result<Pipelined, &'static str>, StoreError> {
        if count == 0 {
            return Ok(Err("DATABASE_PIPELINE_CONNECTIONS is 0"));
        }
        let config = match config_without_tls(url, connect_timeout) {
            Ok(config) => config,
            Err(why) => return Ok(Err(why)),
        };
        let pipelined = Pipelined {
            config,
            slots: (0..count).map(|_| Slot::default()).collect(),
            next: AtomicUsize::new(0),
        };
        for slot in &pipelined.slots {
            let connection = pipelined.connect().await.map_err(StoreError::from)?;
            *lock(&slot.live) = Some(Arc::new(connection));
        }
        Ok(Ok(pipelined))
    }

    /// The configuration these connections are opened with.
    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    /// How many connections this keeps.
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    async fn connect(&self) -> Result<Connection, tokio_postgres::Error> {
        Connection::open(&self.config, "reads use the pool until it is replaced").await
    }

    /// The next live connection in turn; `None` when it is broken (the
    /// caller reads through the pool), after starting its replacement.
    fn pick(self: &Arc<Self>) -> Option<Arc<Connection>> {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let slot = &self.slots[index];
        {
            let live = lock(&slot.live);
            if let Some(connection) = live.as_ref()
                && !connection.client.is_closed()
            {
                return Some(Arc::clone(connection));
            }
        }
        self.replace(index);
        None
    }

    /// Starts replacing the connection of slot `index` in the background,
    /// unless that is under way or was tried within [`RECONNECT_EVERY`].
    fn replace(self: &Arc<Self>, index: usize) {
        let slot = &self.slots[index];
        {
            let mut last = lock(&slot.last_attempt);
            if last.is_some_and(|at| at.elapsed() < RECONNECT_EVERY) {
                return;
            }
            if slot.reconnecting.swap(true, Ordering::AcqRel) {
                return;
            }
            *last = Some(Instant::now());
        }
        *lock(&slot.live) = None;
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let slot = &this.slots[index];
            match this.connect().await {
                Ok(connection) => {
                    *lock(&slot.live) = Some(Arc::new(connection));
                    tracing::info!(slot = index, "pipelined PostgreSQL connection replaced");
                }
                Err(e) => {
                    tracing::warn!(slot = index, error = %e, "replacing a pipelined PostgreSQL connection failed; reads use the pool");
                }
            }
            slot.reconnecting.store(false, Ordering::Release);
        });
    }

    /// Runs the read `sql` with `args` on the next connection; `None` when
    /// that connection is broken and the caller should use the pool.
    pub(crate) async fn query(
        self: &Arc<Self>,
        sql: &'static str,
        args: &[Value],
    ) -> Option<Result<Vec<tokio_postgres::Row>, StoreError>> {
        let connection = self.pick()?;
        Some(connection.query(sql, args).await.map_err(StoreError::from))
    }
}

impl Connection {
    /// Connects as `config` says; `after_loss` says in the log what
    /// happens once the connection ends.
    pub(crate) async fn open(
        config: &Config,
        after_loss: &'static str,
    ) -> Result<Connection, tokio_postgres::Error> {
        let (client, connection) = config.connect(NoTls).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(error = %e, "PostgreSQL connection ended; {after_loss}");
            }
        });
        Ok(Connection {
            client,
            statements: Mutex::default(),
        })
    }

    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    /// The rows of `sql` with `args`.
    pub(crate) async fn query(
        &self,
        sql: &'static str,
        args: &[Value],
    ) -> Result<Vec<tokio_postgres::Row>, tokio_postgres::Error> {
        let statement = self.statement(sql, args).await?;
        self.client.query(&statement, &params(args)).await
    }

    /// Runs `sql` with `args`; how many rows it changed.
    pub(crate) async fn execute(
        &self,
        sql: &'static str,
        args: &[Value],
    ) -> Result<u64, tokio_postgres::Error> {
        let statement = self.statement(sql, args).await?;
        self.client.execute(&statement, &params(args)).await
    }

    /// The prepared statement for `sql` with the types of `args`.
    async fn statement(
        &self,
        sql: &'static str,
        args: &[Value],
    ) -> Result<Statement, tokio_postgres::Error> {
        let types: Vec<Type> = args.iter().map(Value::pg_type).collect();
        self.prepared(sql, types).await
    }

    /// The prepared statement for `sql` with parameters of `types`,
    /// prepared now if this connection has not yet. The number of texts is
    /// bounded by the code (every query text is a literal).
    pub(crate) async fn prepared(
        &self,
        sql: &'static str,
        types: Vec<Type>,
    ) -> Result<Statement, tokio_postgres::Error> {
        let key = (sql, types);
        if let Some(statement) = lock(&self.statements).get(&key) {
            return Ok(statement.clone());
        }
        let statement = self.client.prepare_typed(sql, &key.1).await?;
        lock(&self.statements).insert(key, statement.clone());
        Ok(statement)
    }
}

fn params(args: &[Value]) -> Vec<&(dyn ToSql + Sync)> {
    args.iter().map(|v| v as &(dyn ToSql + Sync)).collect()
}

/// The configuration of a connection to `url` without TLS, or why there is
/// none: a URL tokio-postgres does not read, or a server TLS might protect
/// (see the module doc).
pub(crate) fn config_without_tls(
    url: &str,
    connect_timeout: Duration,
) -> Result<Config, &'static str> {
    let Ok(mut config) = Config::from_str(url) else {
        return Err("the URL has options tokio-postgres does not read (reads use the pool)");
    };
    if !without_tls_is_fine(&config) {
        return Err(
            "the server is not on this host and sslmode is not disable: reads use the pool, which negotiates TLS",
        );
    }
    config.connect_timeout(connect_timeout);
    if config.get_application_name().is_none() {
        config.application_name(APPLICATION_NAME);
    }
    Ok(config)
}

/// True when a connection without TLS is no weaker than what the pool
/// negotiates: TLS is turned off, or every host is this machine.
fn without_tls_is_fine(config: &Config) -> bool {
    match config.get_ssl_mode() {
        SslMode::Disable => true,
        SslMode::Require => false,
        _ => {
            let local_ip = config.get_hostaddrs().iter().all(|ip| ip.is_loopback());
            let local_hosts = config.get_hosts().iter().all(|host| match host {
                Host::Tcp(name) => {
                    name == "localhost"
                        || name
                            .parse::<std::net::IpAddr>()
                            .is_ok_and(|ip| ip.is_loopback())
                }
                #[cfg(unix)]
                Host::Unix(_) => true,
            });
            local_ip && local_hosts
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Value {
    /// The parameter type PostgreSQL is told, as sqlx tells it.
    fn pg_type(&self) -> Type {
        match self {
            Value::Text(_) => Type::TEXT,
            Value::Int4(_) => Type::INT4,
            Value::Int8(_) => Type::INT8,
            Value::Bool(_) => Type::BOOL,
            Value::Id(_) => Type::UUID,
            Value::Time(_) => Type::TIMESTAMPTZ,
        }
    }
}

impl ToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Value::Text(v) => v.to_sql(ty, out),
            Value::Int4(v) => v.to_sql(ty, out),
            Value::Int8(v) => v.to_sql(ty, out),
            Value::Bool(v) => v.to_sql(ty, out),
            Value::Id(v) => v.to_sql(ty, out),
            Value::Time(v) => v.to_sql(ty, out),
        }
    }

    /// Every statement here is prepared with the types of its values
    /// ([`Value::pg_type`]), so each value is sent as the type it declared.
    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(url: &str) -> bool {
        without_tls_is_fine(&Config::from_str(url).unwrap())
    }

    #[test]
    fn tls_is_only_left_out_where_it_cannot_matter() {
        assert!(local("postgres://u@127.0.0.1:5432/db"));
        assert!(local("postgres://u@localhost/db"));
        assert!(local("postgresql://u@[::1]:5432/db"));
        assert!(local("postgres://u@db.internal/db?sslmode=disable"));
        assert!(local("host=/run/postgresql user=u dbname=db"));
        assert!(!local("postgres://u@db.internal/db"));
        assert!(!local("postgres://u@db.internal/db?sslmode=prefer"));
        assert!(!local("postgres://u@127.0.0.1/db?sslmode=require"));
    }
}
