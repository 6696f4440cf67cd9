//! PostgreSQL reads pipelined on a few shared connections.
//!
//! Through sqlx's pool every read takes a connection of its own for the
//! whole round trip: acquire, send, wait, read, release. Under load that is
//! one write and one read system call per query on each side and the
//! pool's bookkeeping, about 55 µs of the service's CPU per GetUser in the
//! profile in docs/performance-history.md. tokio-postgres instead lets every caller
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
//! - TLS: negotiated as the pool negotiates it for the same URL, every
//!   `sslmode` and certificate parameter included (`pg_tls`).
//!
//! A caller that goes away (a deadline) drops its future; the connection
//! reads and discards the answer it no longer waits for.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::BytesMut;
use futures_util::TryStreamExt;
use tokio_postgres::{
    Client, NoTls, Statement,
    types::{IsNull, ToSql, Type, to_sql_checked},
};

use crate::{
    StoreError, Value,
    pg_tls::{self, Target},
};

/// The `application_name` these connections show in `pg_stat_activity`
/// (unless the URL names one).
pub const APPLICATION_NAME: &str = "shop-pipelined-reads";

/// The least time between two attempts to replace a broken connection.
pub const RECONNECT_EVERY: Duration = Duration::from_secs(1);

/// Connections shared by every read outside a transaction.
#[derive(Debug)]
pub(crate) struct Pipelined {
    target: Target,
    slots: Box<[Slot]>,
    next: AtomicUsize,
    /// The runtime that opened the connections, which drives their
    /// replacements too: a read that finds one broken may run on another
    /// (the server's write lane, at a lower priority), and the reads'
    /// connections must not be left to its threads.
    runtime: tokio::runtime::Handle,
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
    statements: Mutex<Statements>,
}

/// Prepared statements by query text and parameter types.
///
/// Every query text is a literal (`&'static str`), so where it lives and
/// its length name it: a look-up hashes two numbers and compares the
/// types with the values' own, where hashing the text (SipHash over a few
/// hundred bytes) and collecting the types into a key cost about 700
/// instructions more a read (callgrind, uncached GetUser). Two equal texts
/// at two addresses are prepared twice, which is harmless and bounded by
/// the code.
#[derive(Debug, Default)]
struct Statements(HashMap<TextAt, Vec<(Vec<Type>, Statement)>>);

/// A `&'static str` by address and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct TextAt(usize, usize);

impl TextAt {
    fn of(sql: &'static str) -> TextAt {
        TextAt(sql.as_ptr() as usize, sql.len())
    }
}

impl Statements {
    /// The statement prepared for `sql` with parameters of `types`.
    fn find<I>(&self, sql: &'static str, types: I) -> Option<Statement>
    where
        I: Iterator<Item = Type> + Clone,
    {
        self.0
            .get(&TextAt::of(sql))?
            .iter()
            .find(|(theirs, _)| theirs.iter().cloned().eq(types.clone()))
            .map(|(_, statement)| statement.clone())
    }

    /// Keeps `statement` unless callers that missed together prepared
    /// the same one first (dropped, tokio-postgres closes it).
    fn insert(&mut self, sql: &'static str, types: Vec<Type>, statement: Statement) {
        let prepared = self.0.entry(TextAt::of(sql)).or_default();
        if !prepared.iter().any(|(theirs, _)| *theirs == types) {
            prepared.push((types, statement));
        }
    }
}

impl Pipelined {
    /// Pipelined connections to the server of `url`, `count` of them, all
    /// opened now; `Ok(Err(why))` when pipelining is off: a count of 0, a
    /// URL tokio-postgres does not read, or TLS settings it cannot use.
    pub(crate) async fn open(
        url: &str,
        count: usize,
        connect_timeout: Duration,
    ) -> Result<Result<Pipelined, String>, StoreError> {
        if count == 0 {
            return Ok(Err("DATABASE_PIPELINE_CONNECTIONS is 0".to_owned()));
        }
        let mut target = match pg_tls::target(url, connect_timeout) {
            Ok(target) => target,
            Err(why) => return Ok(Err(format!("{why} (reads use the pool)"))),
        };
        if target.config.get_application_name().is_none() {
            target.config.application_name(APPLICATION_NAME);
        }
        let pipelined = Pipelined {
            target,
            slots: (0..count).map(|_| Slot::default()).collect(),
            next: AtomicUsize::new(0),
            runtime: tokio::runtime::Handle::current(),
        };
        for slot in &pipelined.slots {
            let connection = pipelined.connect().await.map_err(StoreError::from)?;
            *lock(&slot.live) = Some(Arc::new(connection));
        }
        Ok(Ok(pipelined))
    }

    /// Where these connections go and how they use TLS.
    pub(crate) fn target(&self) -> &Target {
        &self.target
    }

    /// How many connections this keeps.
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    async fn connect(&self) -> Result<Connection, tokio_postgres::Error> {
        let after_loss = "reads use the pool until it is replaced";
        Connection::open(&self.target, Senders::Many, after_loss).await
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
        self.runtime.spawn(async move {
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

/// Who sends on a connection, which decides how its task runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Senders {
    /// Many callers at once (the reads): each wake-up of the connection's
    /// task is deferred ([`each_wake_deferred`]) so that theirs go out
    /// together.
    Many,
    /// One at a time (a group commit's writer, whose statements follow
    /// one another): nothing to gather, so the task runs when woken.
    One,
}

impl Connection {
    /// Connects to `target`, for `senders`; `after_loss` says in the log
    /// what happens once the connection ends.
    pub(crate) async fn open(
        target: &Target,
        senders: Senders,
        after_loss: &'static str,
    ) -> Result<Connection, tokio_postgres::Error> {
        let client = match &target.tls {
            Some(tls) => {
                let (client, connection) = target.config.connect(tls.clone()).await?;
                drive(connection, senders, after_loss);
                client
            }
            None => {
                let (client, connection) = target.config.connect(NoTls).await?;
                drive(connection, senders, after_loss);
                client
            }
        };
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
        self.client
            .query_raw(&statement, args)
            .await?
            .try_collect()
            .await
    }

    /// Runs `sql` with `args`; how many rows it changed.
    pub(crate) async fn execute(
        &self,
        sql: &'static str,
        args: &[Value],
    ) -> Result<u64, tokio_postgres::Error> {
        let statement = self.statement(sql, args).await?;
        self.client.execute_raw(&statement, args).await
    }

    /// The prepared statement for `sql` with the types of `args`.
    async fn statement(
        &self,
        sql: &'static str,
        args: &[Value],
    ) -> Result<Statement, tokio_postgres::Error> {
        let types = args.iter().map(Value::pg_type);
        if let Some(statement) = lock(&self.statements).find(sql, types.clone()) {
            return Ok(statement);
        }
        self.prepared(sql, types.collect()).await
    }

    /// The prepared statement for `sql` with parameters of `types`,
    /// prepared now if this connection has not yet. The number of texts is
    /// bounded by the code (every query text is a literal).
    pub(crate) async fn prepared(
        &self,
        sql: &'static str,
        types: Vec<Type>,
    ) -> Result<Statement, tokio_postgres::Error> {
        if let Some(statement) = lock(&self.statements).find(sql, types.iter().cloned()) {
            return Ok(statement);
        }
        let statement = self.client.prepare_typed(sql, &types).await?;
        lock(&self.statements).insert(sql, types, statement.clone());
        Ok(statement)
    }
}

/// Runs `connection`'s task until the connection ends, as `senders` need.
fn drive<F>(connection: F, senders: Senders, after_loss: &'static str)
where
    F: Future<Output = Result<(), tokio_postgres::Error>> + Send + 'static,
{
    let ended = move |result: Result<(), tokio_postgres::Error>| {
        if let Err(e) = result {
            tracing::warn!(error = %e, "PostgreSQL connection ended; {after_loss}");
        }
    };
    match senders {
        Senders::Many => tokio::spawn(async move { ended(each_wake_deferred(connection).await) }),
        Senders::One => tokio::spawn(async move { ended(connection.await) }),
    };
}

/// `connection` (a tokio-postgres connection's task), polled one turn of
/// the runtime's queue after each wake-up rather than at once.
///
/// A caller's query wakes the connection's task, and tokio runs the task
/// a wake-up names next (its LIFO slot): the task then wrote that one
/// query alone, and the callers woken with it each had their own write,
/// about 0.6 `sendto` a GetUser with 256 calls in flight (`perf stat`),
/// where pipelining should have sent them together. Woken, the task now
/// wakes itself and steps aside, which puts it at the back of the queue
/// (tokio's `yield_now`): the callers ready before it add their queries
/// first, and the connection writes them all in one go (it drains every
/// queued request before it flushes). A lone query waits for nothing but
/// that one extra turn.
async fn each_wake_deferred<F: Future>(connection: F) -> F::Output {
    let mut connection = std::pin::pin!(connection);
    let mut deferred = false;
    std::future::poll_fn(move |cx| {
        if !deferred {
            deferred = true;
            cx.waker().wake_by_ref();
            return std::task::Poll::Pending;
        }
        deferred = false;
        connection.as_mut().poll(cx)
    })
    .await
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
    use std::{
        sync::{Arc, Mutex},
        task::Poll,
    };

    use tokio::sync::{mpsc, oneshot};

    use super::each_wake_deferred;

    /// A stand-in for tokio-postgres's connection task: each poll takes
    /// every request queued (as it drains its requests before it flushes)
    /// and answers them; `batches` records how many each poll took.
    fn connection(
        mut requests: mpsc::UnboundedReceiver<oneshot::Sender<()>>,
        batches: Arc<Mutex<Vec<usize>>>,
    ) -> impl Future<Output = ()> {
        std::future::poll_fn(move |cx| {
            let mut batch = Vec::new();
            loop {
                match requests.poll_recv(cx) {
                    Poll::Ready(Some(reply)) => batch.push(reply),
                    Poll::Ready(None) => return Poll::Ready(()),
                    Poll::Pending => break,
                }
            }
            if !batch.is_empty() {
                batches.lock().unwrap().push(batch.len());
                for reply in batch {
                    let _ = reply.send(());
                }
            }
            Poll::Pending
        })
    }

    /// One worker, as the services have on one core: callers that are
    /// ready together reach the connection together. Without the deferral
    /// the connection's task ran as soon as the first caller woke it (the
    /// runtime's LIFO slot) and took the requests one or two at a time.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn callers_ready_together_reach_the_connection_in_one_batch() {
        const CALLERS: usize = 32;
        let (send, requests) = mpsc::unbounded_channel();
        let batches = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&batches);
        tokio::spawn(async move {
            tokio::spawn(each_wake_deferred(connection(requests, seen)));
            // Until the connection's task has run and waits, idle.
            for _ in 0..2 {
                tokio::task::yield_now().await;
            }
            // Spawned from a task on the worker, the callers wait in its
            // queue until that task waits: then all of them are ready.
            let callers: Vec<_> = (0..CALLERS)
                .map(|_| {
                    let send = send.clone();
                    tokio::spawn(async move {
                        let (reply, answer) = oneshot::channel();
                        send.send(reply).unwrap();
                        answer.await.unwrap();
                    })
                })
                .collect();
            for caller in callers {
                caller.await.unwrap();
            }
        })
        .await
        .unwrap();
        assert_eq!(*batches.lock().unwrap(), [CALLERS]);
    }
}
