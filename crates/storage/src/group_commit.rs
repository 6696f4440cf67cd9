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
//! - [`Turn::rollback`] undoes only the turn's writes but also waits for
//!   the batch's `COMMIT`: what the turn read inside (another caller's
//!   order, found through a conflict) may come from the open batch, and
//!   must not be answered before it is durable.
//!
//! A failed `COMMIT` fails every transaction of its batch, and one that
//! cannot even be rolled back to its savepoint (SQLite rolled the whole
//! transaction back: disk full, I/O error) breaks the batch: each member
//! that had released its savepoint gets the error and nothing of the batch
//! is acknowledged.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use sqlx::{Executor as _, SqliteConnection};
use tokio::sync::{Mutex, OwnedMutexGuard, oneshot};

use crate::StoreError;

/// The most transactions one commit holds.
pub const MAX_BATCH: usize = 128;

/// How long a batch stays open for more transactions while callers keep
/// queuing; bounds the latency group commit adds to the batch's first
/// member.
pub const MAX_BATCH_AGE: Duration = Duration::from_millis(20);

/// The writing connection of a SQLite database and its open batch. Cheap
/// to clone.
#[derive(Debug, Clone)]
pub(crate) struct Writer {
    state: Arc<Mutex<State>>,
    /// Callers waiting for the connection.
    queued: Arc<AtomicUsize>,
    counts: Arc<Counts>,
    acquire_timeout: Duration,
}

#[derive(Debug)]
struct State {
    conn: SqliteConnection,
    batch: Option<Batch>,
}

/// The transactions sharing the open SQLite transaction.
#[derive(Debug)]
struct Batch {
    opened: Instant,
    /// Savepoints taken in it (committed or not).
    members: usize,
    /// The callers whose writes it holds, waiting for its `COMMIT`.
    waiting: Vec<Done>,
}

#[derive(Debug, Default)]
struct Counts {
    commits: AtomicU64,
    transactions: AtomicU64,
}

/// How many `COMMIT`s the writer ran and how many transactions they held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupCommitStats {
    /// SQLite commits (one fsync each).
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

/// Counts a caller in the queue until it gets the connection; one that
/// gives up waiting commits the open batch if it was the last one queued.
struct Ticket<'a>(Option<&'a Writer>);

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let Some(writer) = self.0 else { return };
        if writer.queued.fetch_sub(1, Ordering::AcqRel) == 1 {
            let writer = writer.clone();
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    let guard = Arc::clone(&writer.state).lock_owned().await;
                    writer.let_go(guard).await;
                });
            }
        }
    }
}

fn failed(context: &str, err: &sqlx::Error) -> Arc<str> {
    format!("{context}: {err}").into()
}

impl Writer {
    /// The writer over `conn` (migrated, in WAL mode).
    pub(crate) fn new(conn: SqliteConnection, acquire_timeout: Duration) -> Writer {
        Writer {
            state: Arc::new(Mutex::new(State { conn, batch: None })),
            queued: Arc::default(),
            counts: Arc::default(),
            acquire_timeout,
        }
    }

    pub(crate) fn stats(&self) -> GroupCommitStats {
        GroupCommitStats {
            commits: self.counts.commits.load(Ordering::Relaxed),
            transactions: self.counts.transactions.load(Ordering::Relaxed),
        }
    }

    /// How many callers wait for the connection (for tests).
    pub(crate) fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// Waits for the connection (at most the acquire timeout: then the
    /// database counts as unavailable) and opens a savepoint in the batch.
    pub(crate) async fn begin(&self) -> Result<Turn, StoreError> {
        self.queued.fetch_add(1, Ordering::AcqRel);
        let mut ticket = Ticket(Some(self));
        let locked =
            tokio::time::timeout(self.acquire_timeout, Arc::clone(&self.state).lock_owned()).await;
        let guard = locked.map_err(|_| StoreError::Unavailable(sqlx::Error::PoolTimedOut))?;
        ticket.0 = None;
        self.queued.fetch_sub(1, Ordering::AcqRel);
        // On a task of its own: a caller cancelled halfway through `BEGIN`
        // or `SAVEPOINT` must not leave the connection between states. If
        // the caller is gone, the finished turn is dropped, and so rolled
        // back, with the task's output.
        tokio::spawn(self.clone().open(guard))
            .await
            .unwrap_or_else(|e| Err(batch_error(format!("opening a turn: {e}").into())))
    }

    /// Opens the batch if none is open, then this turn's savepoint.
    async fn open(self, mut guard: OwnedMutexGuard<State>) -> Result<Turn, StoreError> {
        if guard.batch.is_none() {
            guard.conn.execute("BEGIN IMMEDIATE").await?;
            guard.batch = Some(Batch {
                opened: Instant::now(),
                members: 0,
                waiting: Vec::new(),
            });
        }
        if let Err(e) = guard.conn.execute("SAVEPOINT turn").await {
            self.break_batch(&mut guard, failed("savepoint", &e)).await;
            self.let_go(guard).await;
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

    /// Lets go of the connection, first committing the open batch when
    /// nobody is queued to add to it or it is full.
    async fn let_go(&self, mut guard: OwnedMutexGuard<State>) {
        let due = guard.batch.as_ref().is_some_and(|batch| {
            self.queued() == 0
                || batch.members >= MAX_BATCH
                || batch.opened.elapsed() >= MAX_BATCH_AGE
        });
        if due {
            self.commit_batch(&mut guard).await;
        }
    }

    /// Commits the open batch and answers everyone waiting for it.
    async fn commit_batch(&self, state: &mut State) {
        let Some(batch) = state.batch.take() else {
            return;
        };
        if batch.waiting.is_empty() {
            // Nothing released into it: nothing to make durable.
            if let Err(e) = state.conn.execute("ROLLBACK").await {
                tracing::warn!(error = %e, "group commit: rolling back an empty batch failed");
            }
            return;
        }
        let outcome = state
            .conn
            .execute("COMMIT")
            .await
            .map(drop)
            .map_err(|e| failed("commit", &e));
        if outcome.is_err() {
            // A failed COMMIT may leave the transaction open.
            let _ = state.conn.execute("ROLLBACK").await;
        } else {
            self.counts.commits.fetch_add(1, Ordering::Relaxed);
            self.counts
                .transactions
                .fetch_add(batch.waiting.len() as u64, Ordering::Relaxed);
        }
        for waiter in batch.waiting {
            let _ = waiter.send(outcome.clone());
        }
    }

    /// Fails the open batch: rolls back whatever SQLite still has of it and
    /// answers everyone waiting with `why`.
    async fn break_batch(&self, state: &mut State, why: Arc<str>) {
        let Some(batch) = state.batch.take() else {
            return;
        };
        tracing::error!(error = %why, members = batch.members, "group commit: batch failed");
        let _ = state.conn.execute("ROLLBACK").await;
        for waiter in batch.waiting {
            let _ = waiter.send(Err(Arc::clone(&why)));
        }
    }
}

impl Writer {
    /// Ends a turn: releases its savepoint into the batch (`keep`) or
    /// rolls back to it, and lets go of the connection. `done`, when
    /// someone waits, hears the outcome of the batch's commit.
    async fn finish(self, mut guard: OwnedMutexGuard<State>, keep: bool, done: Option<Done>) {
        let ended = if keep {
            guard.conn.execute("RELEASE turn").await.map(drop)
        } else {
            match guard.conn.execute("ROLLBACK TO turn").await {
                Ok(_) => guard.conn.execute("RELEASE turn").await.map(drop),
                Err(e) => Err(e),
            }
        };
        match ended {
            Err(e) => {
                let why = failed("ending a savepoint", &e);
                if let Some(done) = done {
                    let _ = done.send(Err(Arc::clone(&why)));
                }
                self.break_batch(&mut guard, why).await;
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
        self.let_go(guard).await;
    }
}

/// Where a turn hears the outcome of its batch's commit.
type Done = oneshot::Sender<Result<(), Arc<str>>>;

/// A shared batch failure as a caller's error.
fn batch_error(why: Arc<str>) -> StoreError {
    StoreError::Database(sqlx::Error::Protocol(why.to_string()))
}

impl Turn {
    /// The connection, for this turn's statements.
    pub(crate) fn conn(&mut self) -> &mut SqliteConnection {
        &mut self
            .guard
            .as_mut()
            .expect("a turn holds the connection until it ends")
            .conn
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

    /// Ends the turn on a task of its own, so that a caller that goes away
    /// meanwhile does not cut short the batch of others, and waits for the
    /// batch's outcome.
    async fn end(mut self, keep: bool) -> Result<(), StoreError> {
        let guard = self.guard.take().expect("a turn ends once");
        let (done, outcome) = oneshot::channel();
        tokio::spawn(self.writer.clone().finish(guard, keep, Some(done)));
        match outcome.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(why)) => Err(batch_error(why)),
            Err(_) => Err(batch_error("the batch ended without an outcome".into())),
        }
    }
}

impl Drop for Turn {
    /// A turn dropped without commit or rollback (an early return, a
    /// cancelled call) is rolled back on a task of its own.
    fn drop(&mut self) {
        let Some(guard) = self.guard.take() else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(self.writer.clone().finish(guard, false, None));
        }
    }
}
