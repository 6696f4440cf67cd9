//! SQLite's one writer, with group commit.
//!
//! SQLite allows one writer at a time and, with `synchronous=FULL`, every
//! commit waits for an fsync: one durable transaction per disk flush, a few
//! hundred a second. Here every write transaction of the process runs on one
//! connection, in turn, and consecutive transactions share one SQLite
//! transaction and so one fsync:
//!
//! - [`Writer::begin`] takes the connection (callers queue in arrival
//!   order), opens the shared transaction (`BEGIN IMMEDIATE`) if none is
//!   open, and a `SAVEPOINT` for this caller: its statements are its own
//!   and [`Turn::rollback`] (or dropping the turn) undoes only them.
//! - [`Turn::commit`] releases the savepoint and joins the open batch. If
//!   nobody is queued for the connection, or the batch is full
//!   ([`MAX_BATCH`] transactions or [`MAX_BATCH_AGE`] old), it commits the
//!   batch itself; otherwise it hands the connection to the next caller and
//!   waits. Either way it returns only once the `COMMIT` that holds its
//!   writes has returned: an acknowledged write is on disk.
//! - Whoever lets go of the connection with nobody queued commits what is
//!   open, including a caller that gave up waiting in the queue, so a batch
//!   never waits for a caller that is not coming.
//! - Except with a commit delay ([`Writer::with_commit_delay`],
//!   `DATABASE_COMMIT_DELAY`): a batch opened less than the delay after
//!   the previous `COMMIT` started (writes are arriving that close
//!   together) stays open until the delay after it opened, and a task
//!   commits it then. Transactions arriving meanwhile join it and share its
//!   flush instead of each paying one, with its wake-ups and hand-off to
//!   the blocking pool. Writes further apart than the delay commit at once,
//!   and so does every batch while the recent `COMMIT`s held
//!   [`LINGER_BELOW`] transactions or more on average: writes are then
//!   coming fast enough to share each flush without waiting, and waiting
//!   would only answer them later.
//! - [`Turn::rollback`] undoes only the turn's writes but also waits for
//!   the batch's `COMMIT`: what the turn read inside (another caller's
//!   order, found through a conflict) may come from the open batch, and
//!   must not be answered before it is durable.
//!
//! The connection is rusqlite's, and every statement of a turn runs on the
//! thread that calls it (as the readers' do, `sqlite_read`): through sqlx,
//! each statement would be handed to the connection's own thread and its
//! result handed back, two thread hand-offs that cost more CPU than the
//! statement. Only what may wait leaves the calling thread, for tokio's
//! blocking pool: `COMMIT`, which waits for the disk (one hand-off per
//! batch), and a `BEGIN IMMEDIATE` that finds the database locked by
//! another process (a backup, the `sqlite3` shell), which waits up to the
//! busy timeout for it. The batch is first opened without waiting; only
//! when that finds the lock taken does the opening move to the pool, so
//! that the runtime thread goes on serving meanwhile.
//!
//! A failed `COMMIT` fails every transaction of its batch, and one that
//! cannot even be rolled back to its savepoint (SQLite rolled the whole
//! transaction back: disk full, I/O error) breaks the batch: each member
//! that had released its savepoint gets the error and nothing of the batch
//! is acknowledged.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use rusqlite::Connection;
use tokio::sync::{OwnedMutexGuard, oneshot};

use crate::{
    StoreError,
    writer_queue::{Queue, Queued},
};

/// The most transactions one commit holds.
pub const MAX_BATCH: usize = 128;

/// How long a batch stays open for more transactions while callers keep
/// queuing; bounds the latency group commit adds to the batch's first
/// member.
pub const MAX_BATCH_AGE: Duration = Duration::from_millis(20);

/// While a writer's recent `COMMIT`s held this many transactions or more
/// on average, its batches do not wait out the commit delay: each flush is
/// shared widely enough without it. In the closed loop on SQLite (64
/// callers) commits of about 13 transactions cost as much CPU per order as
/// the delay's commits of 18, and the delay's wait made orders 11% slower
/// (docs/performance.md).
pub const LINGER_BELOW: f64 = 8.0;

/// How much one commit moves the recent average of transactions per
/// commit: an eighth, so that a commit that happens to be small or large
/// does not switch the commit delay on or off by itself.
const RECENT_WEIGHT: f64 = 1.0 / 8.0;

/// The commit delay services use unless told otherwise
/// (`DATABASE_COMMIT_DELAY`, [`Writer::with_commit_delay`]): under the
/// mix at 2,000 requests a second it halved the disk flushes and the
/// reads' p99, and writes were answered no later (docs/performance-history.md).
pub const DEFAULT_COMMIT_DELAY: Duration = Duration::from_millis(2);

/// The writing connection of a SQLite database and its open batch. Cheap
/// to clone.
#[derive(Debug, Clone)]
pub(crate) struct Writer {
    queue: Queue<State>,
    counts: Arc<Counts>,
    /// How long the connection waits for another process's lock.
    busy_timeout: Duration,
    /// The commit delay ([`Writer::with_commit_delay`]).
    commit_delay: Duration,
}

#[derive(Debug)]
pub(crate) struct State {
    /// Only ever used through `&mut State` ([`State::conn`]), never
    /// locked: the `Mutex` only makes a `State` shareable between threads
    /// (a rusqlite connection is `Send` but not `Sync`).
    conn: std::sync::Mutex<Connection>,
    batch: Option<Batch>,
    /// Batches opened so far: names the open one, for a scheduled commit.
    opened: u64,
    /// The last `COMMIT`.
    last_commit: Option<LastCommit>,
}

/// When the last `COMMIT` of a writer started, and how many transactions
/// its recent commits held on average: what the next batch's commit delay
/// depends on (here and in `pg_group_commit`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct LastCommit {
    started: Instant,
    recent_size: f64,
}

impl LastCommit {
    /// A `COMMIT` of `transactions` that started at `started`, following
    /// `previous`.
    pub(crate) fn new(
        previous: Option<LastCommit>,
        started: Instant,
        transactions: usize,
    ) -> LastCommit {
        let size = transactions as f64;
        LastCommit {
            started,
            recent_size: previous.map_or(size, |p| {
                p.recent_size + (size - p.recent_size) * RECENT_WEIGHT
            }),
        }
    }
}

/// The transactions sharing the open database transaction (here and in
/// `pg_group_commit`).
#[derive(Debug)]
pub(crate) struct Batch {
    pub(crate) opened: Instant,
    /// Savepoints taken in it (committed or not).
    pub(crate) members: usize,
    /// The callers whose writes it holds, waiting for its `COMMIT`.
    pub(crate) waiting: Vec<Done>,
    /// The writer's commit delay, when writes arrive close together: how
    /// long after opening the batch stays open for more transactions with
    /// nobody queued (zero: it commits as soon as nobody is queued).
    pub(crate) linger: Duration,
    /// Whether a task is set to commit it when its delay is up.
    pub(crate) commit_scheduled: bool,
}

impl Batch {
    pub(crate) fn new() -> Batch {
        Batch::lingering(Duration::ZERO)
    }

    /// A batch that stays open `linger` for more transactions.
    pub(crate) fn lingering(linger: Duration) -> Batch {
        Batch {
            opened: Instant::now(),
            members: 0,
            waiting: Vec::new(),
            linger,
            commit_scheduled: false,
        }
    }

    /// Whether a writer letting go of the connection with `queued`
    /// callers waiting should commit this batch: nobody is queued to add to
    /// it, or it is full.
    pub(crate) fn due(&self, queued: usize) -> bool {
        queued == 0 || self.full()
    }

    fn full(&self) -> bool {
        self.members >= MAX_BATCH || self.opened.elapsed() >= MAX_BATCH_AGE
    }

    /// The batch a writer with `commit_delay` opens after `last_commit`:
    /// lingering for the delay when that started less than the delay ago
    /// (writes are arriving that close together) and recent commits held
    /// fewer than [`LINGER_BELOW`] transactions on average (they are not
    /// yet arriving so fast that batches fill without waiting).
    pub(crate) fn after(last_commit: Option<LastCommit>, commit_delay: Duration) -> Batch {
        let writes_close = last_commit.is_some_and(|last| {
            last.started.elapsed() < commit_delay && last.recent_size < LINGER_BELOW
        });
        if writes_close {
            Batch::lingering(commit_delay)
        } else {
            Batch::new()
        }
    }

    /// Whether it waits for more transactions though nobody is queued: its
    /// commit delay is not up and it is not full.
    pub(crate) fn lingers(&self) -> bool {
        !self.linger.is_zero() && self.opened.elapsed() < self.linger && !self.full()
    }
}

/// Commits run and the transactions they held, kept for
/// [`GroupCommitStats`] and exported as metrics labelled with the backend:
/// `shop_db_commits_total`, `shop_db_committed_transactions_total` (their
/// ratio is the mean batch) and `shop_db_commit_seconds` (how long each
/// `COMMIT` took: the disk flush, on SQLite; a histogram, its buckets set
/// where the recorder is made, `shop_telemetry::init`).
#[derive(Debug)]
pub(crate) struct Counts {
    commits: AtomicU64,
    transactions: AtomicU64,
    backend: &'static str,
}

impl Counts {
    /// `backend` labels the metrics: `sqlite` or `postgres`.
    pub(crate) fn new(backend: &'static str) -> Counts {
        Counts {
            commits: AtomicU64::new(0),
            transactions: AtomicU64::new(0),
            backend,
        }
    }

    /// One commit holding `transactions` transactions, which took `took`.
    pub(crate) fn committed(&self, transactions: usize, took: Duration) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.transactions
            .fetch_add(transactions as u64, Ordering::Relaxed);
        let backend = self.backend;
        metrics::counter!("shop_db_commits_total", "backend" => backend).increment(1);
        metrics::counter!("shop_db_committed_transactions_total", "backend" => backend)
            .increment(transactions as u64);
        metrics::histogram!("shop_db_commit_seconds", "backend" => backend)
            .record(took.as_secs_f64());
    }

    pub(crate) fn stats(&self) -> GroupCommitStats {
        GroupCommitStats {
            commits: self.commits.load(Ordering::Relaxed),
            transactions: self.transactions.load(Ordering::Relaxed),
        }
    }
}

/// How many `COMMIT`s a group-commit writer ran and how many transactions
/// they held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupCommitStats {
    /// Commits (one disk flush each).
    pub commits: u64,
    /// Transactions acknowledged by those commits.
    pub transactions: u64,
}

/// One caller's turn on the writing connection: a savepoint inside the
/// open batch.
#[derive(Debug)]
pub(crate) struct Turn {
    guard: Option<OwnedMutexGuard<State>>,
    writer: Writer,
}

/// Runs one statement that takes no parameters, kept prepared.
fn run(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.raw_execute().map(drop)
}

fn failed(context: &str, err: &rusqlite::Error) -> Arc<str> {
    format!("{context}: {err}").into()
}

impl Writer {
    /// The writer over `conn` (migrated, in WAL mode, `synchronous=FULL`,
    /// waiting up to `busy_timeout` for another process's lock).
    pub(crate) fn new(
        conn: Connection,
        acquire_timeout: Duration,
        busy_timeout: Duration,
    ) -> Writer {
        Writer {
            queue: Queue::new(
                State {
                    conn: std::sync::Mutex::new(conn),
                    batch: None,
                    opened: 0,
                    last_commit: None,
                },
                acquire_timeout,
            ),
            counts: Arc::new(Counts::new("sqlite")),
            busy_timeout,
            commit_delay: Duration::ZERO,
        }
    }

    /// This writer with a commit delay: a batch opened less than `delay`
    /// after the previous `COMMIT` started (writes are arriving that
    /// closely) stays open until `delay` after it opened, even with nobody
    /// queued, so that the transactions arriving meanwhile share its disk
    /// flush. Each of them still returns only after that flush; the first
    /// waits up to `delay` longer. Writes further apart than `delay` commit
    /// as soon as nobody is queued, as with no delay. PostgreSQL's
    /// `commit_delay` is the same idea.
    pub(crate) fn with_commit_delay(mut self, delay: Duration) -> Writer {
        self.commit_delay = delay.min(MAX_BATCH_AGE);
        self
    }

    pub(crate) fn stats(&self) -> GroupCommitStats {
        self.counts.stats()
    }

    /// How many callers wait for the connection (for tests).
    pub(crate) fn queued(&self) -> usize {
        self.queue.queued()
    }

    /// Waits for the connection (at most the acquire timeout: then the
    /// database counts as unavailable) and opens a savepoint in the batch.
    pub(crate) async fn begin(&self) -> Result<Turn, StoreError> {
        let mut guard = Queue::acquire(self).await?;
        if guard.batch.is_none()
            && let Err(e) = self.open_batch_now(&mut guard)
        {
            if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy) {
                return self.open_when_unlocked(guard).await;
            }
            return Err(e.into());
        }
        // No await from here on: a caller cannot be cancelled halfway
        // through `SAVEPOINT`.
        self.clone().open(guard)
    }

    /// Opens the batch if the database's write lock is free now, without
    /// waiting for another process to let go of it (`SQLITE_BUSY` then).
    fn open_batch_now(&self, state: &mut State) -> rusqlite::Result<()> {
        state.conn().busy_timeout(Duration::ZERO)?;
        let opened = state.open_batch(self.commit_delay);
        state.conn().busy_timeout(self.busy_timeout)?;
        opened
    }

    /// Opens the batch and this turn's savepoint on the blocking pool,
    /// where `BEGIN IMMEDIATE` may wait up to the busy timeout for another
    /// process's lock. A caller that goes away meanwhile leaves the turn
    /// to be dropped, and so rolled back, where it ends up.
    async fn open_when_unlocked(&self, guard: OwnedMutexGuard<State>) -> Result<Turn, StoreError> {
        let (opened_tx, opened) = oneshot::channel();
        let writer = self.clone();
        tokio::task::spawn_blocking(move || {
            let _ = opened_tx.send(writer.open(guard));
        });
        match opened.await {
            Ok(turn) => turn,
            Err(_) => Err(batch_error("opening a turn was interrupted".into())),
        }
    }

    /// Opens the batch if none is open, then this turn's savepoint.
    fn open(self, mut guard: OwnedMutexGuard<State>) -> Result<Turn, StoreError> {
        if guard.batch.is_none() {
            guard.open_batch(self.commit_delay)?;
        }
        if let Err(e) = run(guard.conn(), "SAVEPOINT turn") {
            self.break_batch(&mut guard, failed("savepoint", &e));
            self.let_go(guard);
            return Err(e.into());
        }
        if let Some(batch) = guard.batch.as_mut() {
            batch.members += 1;
        }
        Ok(Turn {
            guard: Some(guard),
            writer: self,
        })
    }

    /// Lets go of the connection, first committing the open batch if it
    /// is due ([`Batch::due`]) and not lingering for its commit delay (then
    /// a task commits it when the delay is up).
    fn let_go(&self, mut guard: OwnedMutexGuard<State>) {
        let id = guard.opened;
        let Some(batch) = guard.batch.as_mut() else {
            return;
        };
        if !batch.due(self.queued()) {
            return;
        }
        if batch.lingers()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            if !batch.commit_scheduled {
                batch.commit_scheduled = true;
                let at = batch.opened + batch.linger;
                let writer = self.clone();
                runtime.spawn(async move {
                    tokio::time::sleep_until(at.into()).await;
                    let guard = writer.queue.lock().await;
                    if guard.opened == id && guard.batch.is_some() {
                        writer.commit_batch(guard);
                    }
                });
            }
            return;
        }
        self.commit_batch(guard);
    }

    /// Commits the open batch and answers everyone waiting for it, then
    /// lets go of the connection. The `COMMIT` waits for the disk, so it
    /// runs on the blocking pool (the connection stays taken meanwhile);
    /// the statements before it take microseconds and run where they are
    /// called.
    fn commit_batch(&self, mut guard: OwnedMutexGuard<State>) {
        let Some(batch) = guard.batch.take() else {
            return;
        };
        if batch.waiting.is_empty() {
            // Nothing released into it: nothing to make durable.
            if let Err(e) = run(guard.conn(), "ROLLBACK") {
                tracing::warn!(error = %e, "group commit: rolling back an empty batch failed");
            }
            return;
        }
        guard.last_commit = Some(LastCommit::new(
            guard.last_commit,
            Instant::now(),
            batch.waiting.len(),
        ));
        let counts = Arc::clone(&self.counts);
        let commit = move || {
            let started = Instant::now();
            let outcome = run(guard.conn(), "COMMIT").map_err(|e| failed("commit", &e));
            if outcome.is_err() {
                // A failed COMMIT may leave the transaction open.
                let _ = run(guard.conn(), "ROLLBACK");
            } else {
                counts.committed(batch.waiting.len(), started.elapsed());
            }
            drop(guard);
            for waiter in batch.waiting {
                let _ = waiter.send(outcome.clone());
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(commit)),
            // A turn dropped outside any runtime (at exit): commit here.
            Err(_) => commit(),
        }
    }

    /// Fails the open batch: rolls back whatever SQLite still has of it and
    /// answers everyone waiting with `why`.
    fn break_batch(&self, state: &mut State, why: Arc<str>) {
        let Some(batch) = state.batch.take() else {
            return;
        };
        tracing::error!(error = %why, members = batch.members, "group commit: batch failed");
        let _ = run(state.conn(), "ROLLBACK");
        for waiter in batch.waiting {
            let _ = waiter.send(Err(Arc::clone(&why)));
        }
    }

    /// Ends a turn: releases its savepoint into the batch (`keep`) or
    /// rolls back to it, and lets go of the connection. `done`, when
    /// someone waits, hears the outcome of the batch's commit.
    fn finish(&self, mut guard: OwnedMutexGuard<State>, keep: bool, done: Option<Done>) {
        let ended = if keep {
            run(guard.conn(), "RELEASE turn")
        } else {
            run(guard.conn(), "ROLLBACK TO turn").and_then(|()| run(guard.conn(), "RELEASE turn"))
        };
        match ended {
            Err(e) => {
                let why = failed("ending a savepoint", &e);
                if let Some(done) = done {
                    let _ = done.send(Err(Arc::clone(&why)));
                }
                self.break_batch(&mut guard, why);
            }
            Ok(()) => {
                if let Some(done) = done {
                    match guard.batch.as_mut() {
                        Some(batch) => batch.waiting.push(done),
                        None => {
                            let _ = done.send(Err("no open batch".into()));
                        }
                    }
                }
            }
        }
        self.let_go(guard);
    }
}

impl State {
    fn conn(&mut self) -> &Connection {
        self.conn
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Opens the batch (`BEGIN IMMEDIATE`, waiting for another process's
    /// lock as long as the connection's busy timeout says), lingering for
    /// `commit_delay` when the last commit started less than that ago.
    fn open_batch(&mut self, commit_delay: Duration) -> rusqlite::Result<()> {
        let conn = self.conn();
        if !conn.is_autocommit() {
            // A batch whose commit never ran (its runtime was shutting
            // down): nobody was told it committed.
            run(conn, "ROLLBACK")?;
        }
        run(conn, "BEGIN IMMEDIATE")?;
        self.opened += 1;
        self.batch = Some(Batch::after(self.last_commit, commit_delay));
        Ok(())
    }
}

/// Where a turn hears the outcome of its batch's commit.
pub(crate) type Done = oneshot::Sender<Result<(), Arc<str>>>;

/// A shared batch failure as a caller's error.
pub(crate) fn batch_error(why: Arc<str>) -> StoreError {
    StoreError::Database(sqlx::Error::Protocol(why.to_string()))
}

/// Waits for the outcome of the batch a turn ended in, as its caller's
/// result.
pub(crate) async fn batch_outcome(
    outcome: oneshot::Receiver<Result<(), Arc<str>>>,
) -> Result<(), StoreError> {
    match outcome.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(why)) => Err(batch_error(why)),
        Err(_) => Err(batch_error("the batch ended without an outcome".into())),
    }
}

impl Queued for Writer {
    type State = State;

    fn queue(&self) -> &Queue<State> {
        &self.queue
    }

    async fn commit_if_due(&self, guard: OwnedMutexGuard<State>) {
        self.let_go(guard);
    }
}

impl Turn {
    /// The connection, for this turn's statements.
    pub(crate) fn conn(&mut self) -> &Connection {
        self.guard
            .as_mut()
            .expect("a turn holds the connection until it ends")
            .conn()
    }

    /// Makes this turn's writes part of the batch and returns once the
    /// batch's `COMMIT` has.
    pub(crate) async fn commit(self) -> Result<(), StoreError> {
        self.end(true).await
    }

    /// Undoes this turn's writes (the rest of the batch is untouched) and
    /// returns once the batch's `COMMIT` has: what the turn read may have
    /// been written by others in the batch, and must not be acted on
    /// before it is durable.
    pub(crate) async fn rollback(self) -> Result<(), StoreError> {
        self.end(false).await
    }

    /// Ends the turn (at once: the savepoint's end and the hand-over take
    /// no await, so a caller that goes away meanwhile cannot cut short the
    /// batch of others) and waits for the batch's outcome.
    async fn end(mut self, keep: bool) -> Result<(), StoreError> {
        let guard = self.guard.take().expect("a turn ends once");
        let (done, outcome) = oneshot::channel();
        self.writer.finish(guard, keep, Some(done));
        batch_outcome(outcome).await
    }
}

impl Drop for Turn {
    /// A turn dropped without commit or rollback (an early return, a
    /// cancelled call) is rolled back there and then.
    fn drop(&mut self) {
        if let Some(guard) = self.guard.take() {
            self.writer.finish(guard, false, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(last_commit: Option<LastCommit>) -> State {
        State {
            conn: std::sync::Mutex::new(Connection::open_in_memory().unwrap()),
            batch: None,
            opened: 0,
            last_commit,
        }
    }

    /// The linger a batch gets when opened with a 20 ms commit delay after
    /// `last`.
    fn linger_after(last: Option<LastCommit>) -> Duration {
        let mut state = state(last);
        state.open_batch(MAX_BATCH_AGE).unwrap();
        state.batch.unwrap().linger
    }

    /// A first commit of `transactions`, started at `started`.
    fn commit_at(started: Instant, transactions: usize) -> Option<LastCommit> {
        Some(LastCommit::new(None, started, transactions))
    }

    #[test]
    fn a_batch_waits_out_the_commit_delay_only_when_writes_come_that_close() {
        // Right behind the last commit: writes are coming close together.
        assert_eq!(linger_after(commit_at(Instant::now(), 1)), MAX_BATCH_AGE);
        // The first write, or one a second after the last commit: nothing
        // says another is coming, so it commits at once.
        assert_eq!(linger_after(None), Duration::ZERO);
        let a_second_ago = Instant::now().checked_sub(Duration::from_secs(1)).unwrap();
        assert_eq!(linger_after(commit_at(a_second_ago, 1)), Duration::ZERO);
    }

    #[test]
    fn a_batch_does_not_wait_while_recent_commits_were_widely_shared() {
        let now = Instant::now();
        assert_eq!(linger_after(commit_at(now, 7)), MAX_BATCH_AGE);
        assert_eq!(linger_after(commit_at(now, 8)), Duration::ZERO);
        // One large commit among small ones is not enough to stop
        // waiting, nor one small among large ones to start again.
        let small = commit_at(now, 2);
        let one_large = LastCommit::new(small, now, 30);
        assert_eq!(linger_after(Some(one_large)), MAX_BATCH_AGE);
        let large = (0..20).fold(small, |last, _| Some(LastCommit::new(last, now, 13)));
        assert_eq!(linger_after(large), Duration::ZERO);
        let one_small = LastCommit::new(large, now, 1);
        assert_eq!(linger_after(Some(one_small)), Duration::ZERO);
    }

    #[test]
    fn a_lingering_batch_stops_lingering_when_full() {
        let mut batch = Batch::lingering(MAX_BATCH_AGE);
        assert!(batch.lingers());
        batch.members = MAX_BATCH;
        assert!(!batch.lingers() && batch.due(0));
        assert!(!Batch::new().lingers());
    }
}
