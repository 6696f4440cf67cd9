//! PostgreSQL's group commit, for transactions that take the same rows.
//!
//! PostgreSQL shares one WAL flush between concurrent commits, but not
//! between transactions that update the same row: each waits for the row's
//! lock, which the one before holds until its commit is on disk. A hot row
//! (inventory's stock of a product that sells) then takes one transaction
//! per disk flush: pgbench with 32 clients on this project's 2-vCPU VM ran
//! 820 single-row updates a second against 5,548 independent inserts.
//! `NOTIFY` does the same to every transaction that sends one: committing
//! it takes a database-wide lock held through the flush (980 a second).
//!
//! With `DATABASE_GROUP_COMMIT` on, every transaction of the process
//! ([`crate::Db::begin`]) runs in turn on one connection, and consecutive
//! ones share one PostgreSQL transaction, a `SAVEPOINT` each, and one
//! commit, exactly as SQLite's writer does (see `group_commit`, whose
//! batching rules these are): a turn's statements are its own and
//! rolling back undoes only them; a turn that commits is answered once the
//! `COMMIT` that holds its writes has returned. The notices of the turns
//! a batch keeps go out in one statement just before its `COMMIT`
//! (`pg_notices`).
//!
//! Unlike SQLite's, each step here waits for the network, so a caller
//! could be cancelled halfway through one. Every step that others depend
//! on (opening the batch and the savepoint, ending a turn, committing the
//! batch) therefore runs in a task of its own that finishes whatever
//! happens to the caller; a turn dropped mid-statement is rolled back to
//! its savepoint by such a task (sqlx first reads what the interrupted
//! statement left on the wire).
//!
//! A broken connection breaks the batch: every member that had released
//! its savepoint into it hears the error, nothing of it is acknowledged,
//! and the next turn connects afresh. A deadlock with another process
//! (replicas whose batches take the same rows in different orders) fails
//! one statement after PostgreSQL's `deadlock_timeout`; its turn rolls back
//! to its savepoint and its caller sees UNAVAILABLE (retry), while the rest
//! of the batch goes on.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use sqlx::{Connection as _, Executor as _, PgConnection, postgres::PgConnectOptions, raw_sql};
use tokio::sync::{OwnedMutexGuard, oneshot};

use crate::{
    StoreError,
    group_commit::{
        Batch, Counts, Done, GroupCommitStats, MAX_BATCH_AGE, batch_error, batch_outcome,
    },
    pg_notices::{self, Outgoing},
    writer_queue::{Queue, Queued},
};

/// The batching connection of a PostgreSQL database. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct PgWriter {
    queue: Queue<State>,
    counts: Arc<Counts>,
    options: Arc<PgConnectOptions>,
    acquire_timeout: Duration,
    /// The commit delay ([`PgWriter::with_commit_delay`]).
    commit_delay: Duration,
}

#[derive(Debug, Default)]
pub(crate) struct State {
    /// None until the first turn, and after the connection broke.
    conn: Option<PgConnection>,
    batch: Option<Batch>,
    /// The notices of the turns released into the open batch, sent just
    /// before its `COMMIT` (see `pg_notices`).
    notices: Vec<Outgoing>,
    /// The last turn, when it kept its writes, and its notices: its
    /// `RELEASE` goes out with the next statement (the next `SAVEPOINT` or
    /// the `COMMIT`), a round trip saved per transaction. Its caller joins
    /// those waiting for the commit once the release succeeded.
    unreleased: Option<Unreleased>,
    /// Batches opened so far: names the open one, for a scheduled commit.
    opened: u64,
    /// When the last `COMMIT` started.
    last_commit: Option<Instant>,
}

#[derive(Debug)]
struct Unreleased {
    done: Done,
    notices: Vec<Outgoing>,
}

type Guard = OwnedMutexGuard<State>;

/// One caller's turn on the batching connection: a savepoint inside the
/// open batch.
#[derive(Debug)]
pub(crate) struct PgTurn {
    guard: Option<Guard>,
    writer: PgWriter,
}

fn failed(context: &str, err: &sqlx::Error) -> Arc<str> {
    format!("{context}: {err}").into()
}

impl PgWriter {
    /// A writer that connects as `options` say when it is first used.
    pub(crate) fn new(options: PgConnectOptions, acquire_timeout: Duration) -> PgWriter {
        PgWriter {
            queue: Queue::new(State::default(), acquire_timeout),
            counts: Arc::new(Counts::new("postgres")),
            options: Arc::new(options),
            acquire_timeout,
            commit_delay: Duration::ZERO,
        }
    }

    /// This writer with a commit delay, as SQLite's has
    /// (`group_commit::Writer::with_commit_delay`): a batch opened less
    /// than `delay` after the previous `COMMIT` started stays open until
    /// `delay` after it opened, so that the transactions arriving meanwhile
    /// share its commit (one WAL flush, one round trip) instead of each
    /// paying one. PostgreSQL's own `commit_delay` cannot do this here: it
    /// waits only when other transactions are open, and this writer runs
    /// one at a time.
    pub(crate) fn with_commit_delay(mut self, delay: Duration) -> PgWriter {
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
    pub(crate) async fn begin(&self) -> Result<PgTurn, StoreError> {
        let guard = Queue::acquire(self).await?;

        // Opened in a task of its own, and handed over as a turn: if the
        // caller goes away meanwhile, the turn is dropped wherever it is
        // (in the task, or unread in the channel) and rolls itself back.
        let (opened_tx, opened) = oneshot::channel();
        let writer = self.clone();
        tokio::spawn(async move {
            let turn = writer.open(guard).await.map(|guard| PgTurn {
                guard: Some(guard),
                writer: writer.clone(),
            });
            let _ = opened_tx.send(turn);
        });
        match opened.await {
            Ok(turn) => turn,
            Err(_) => Err(batch_error("opening a turn was interrupted".into())),
        }
    }

    /// Connects if need be, opens the batch if none is open, then this
    /// turn's savepoint (after releasing the last turn's, see
    /// [`State::unreleased`]: one round trip for both).
    async fn open(&self, mut guard: Guard) -> Result<Guard, StoreError> {
        if guard.conn.is_none() {
            let connecting = PgConnection::connect_with(&self.options);
            let conn = tokio::time::timeout(self.acquire_timeout, connecting)
                .await
                .map_err(|_| StoreError::Unavailable(sqlx::Error::PoolTimedOut))??;
            guard.conn = Some(conn);
        }
        if guard.unreleased.is_some() {
            let opened = guard
                .conn_mut()
                .execute(raw_sql("RELEASE turn; SAVEPOINT turn"))
                .await;
            if opened.is_ok() {
                return Ok(self.joined(guard));
            }
            // The last turn could not be released: undo it, then open
            // this one as if it had not been there.
            if !self.settle_unreleased(&mut guard).await {
                self.let_go(guard).await;
                return Err(batch_error("the batch failed".into()));
            }
        }
        let opening = guard.batch.is_none();
        self.savepoint(guard, opening).await
    }

    /// Opens the batch (`opening`) and this turn's savepoint.
    async fn savepoint(&self, mut guard: Guard, opening: bool) -> Result<Guard, StoreError> {
        let sql = if opening {
            "BEGIN; SAVEPOINT turn"
        } else {
            "SAVEPOINT turn"
        };
        match guard.conn_mut().execute(raw_sql(sql)).await {
            Ok(_) => Ok(self.joined(guard)),
            Err(error) => {
                let why = failed("opening a savepoint", &error);
                self.break_batch(&mut guard, why).await;
                if opening {
                    // Whatever the connection's state, nothing is open now.
                    guard.conn = None;
                }
                self.let_go(guard).await;
                Err(error.into())
            }
        }
    }

    /// Counts a turn whose savepoint is open into the batch (opening it),
    /// and the last turn, released, among those waiting for its commit.
    fn joined(&self, mut guard: Guard) -> Guard {
        let state = &mut *guard;
        if state.batch.is_none() {
            state.opened += 1;
        }
        let commit_delay = self.commit_delay;
        let last_commit = state.last_commit;
        let batch = state
            .batch
            .get_or_insert_with(|| Batch::after(last_commit, commit_delay));
        batch.members += 1;
        if let Some(released) = state.unreleased.take() {
            batch.waiting.push(released.done);
            state.notices.extend(released.notices);
        }
        guard
    }

    /// After a statement that began with `RELEASE turn` failed: undoes the
    /// last turn instead (one of its statements had failed, so it could not
    /// be released) and tells its caller so. False when even that failed:
    /// the batch is broken (and everyone in it told).
    async fn settle_unreleased(&self, guard: &mut Guard) -> bool {
        let Some(Unreleased { done, .. }) = guard.unreleased.take() else {
            return true;
        };
        match undo_turn(guard.conn_mut()).await {
            Ok(_) => {
                let _ = done.send(Err(
                    "a statement of the transaction failed before its commit".into(),
                ));
                true
            }
            Err(error) => {
                let why = failed("ending a savepoint", &error);
                let _ = done.send(Err(Arc::clone(&why)));
                self.break_batch(guard, why).await;
                false
            }
        }
    }

    /// Lets go of the connection, first committing the open batch if it
    /// is due ([`Batch::due`]) and not lingering for its commit delay
    /// (then a task commits it when the delay is up).
    async fn let_go(&self, mut guard: Guard) {
        let id = guard.opened;
        let Some(batch) = guard.batch.as_mut() else {
            return;
        };
        if !batch.due(self.queued()) {
            return;
        }
        if batch.lingers() {
            if !batch.commit_scheduled {
                batch.commit_scheduled = true;
                let at = batch.opened + batch.linger;
                let writer = self.clone();
                tokio::spawn(async move {
                    tokio::time::sleep_until(at.into()).await;
                    let guard = writer.queue.lock().await;
                    if guard.opened == id && guard.batch.is_some() {
                        writer.commit_batch(guard).await;
                    }
                });
            }
            return;
        }
        self.commit_batch(guard).await;
    }

    /// Commits the open batch (releasing the last turn in the same round
    /// trip) and answers everyone waiting for it, then lets go of the
    /// connection.
    async fn commit_batch(&self, mut guard: Guard) {
        if guard.batch.is_none() {
            return;
        }
        let started = Instant::now();
        if guard.unreleased.is_some() || guard.batch.as_ref().is_some_and(|b| !b.waiting.is_empty())
        {
            guard.last_commit = Some(started);
        }
        let mut outcome = Ok(());
        let state = &mut *guard;
        if let Some(last) = state.unreleased.as_ref() {
            // Every notice of the batch goes out inside the last turn's
            // savepoint: if one of its statements had failed, this fails
            // too, and is undone with it.
            let notices = state.notices.iter().chain(&last.notices);
            let conn = state
                .conn
                .as_mut()
                .expect("a turn holds an open connection");
            let committed = match pg_notices::send(conn, notices).await {
                Ok(()) => conn
                    .execute(raw_sql("RELEASE turn; COMMIT"))
                    .await
                    .map(drop),
                Err(error) => Err(error),
            };
            match committed {
                Ok(()) => {
                    let last = guard.unreleased.take();
                    if let Some(batch) = guard.batch.as_mut() {
                        batch.waiting.extend(last.map(|last| last.done));
                    }
                }
                // The notices or the release failed (the batch is still
                // open: undo the last turn and commit the rest) or the
                // commit did (the transaction is gone, and so is the
                // savepoint: the batch breaks).
                Err(_) if self.settle_unreleased(&mut guard).await => {
                    outcome = self.commit(&mut guard).await;
                }
                Err(_) => return,
            }
        } else {
            outcome = self.commit(&mut guard).await;
        }
        guard.notices.clear();
        let Some(batch) = guard.batch.take() else {
            return;
        };
        if outcome.is_ok() && !batch.waiting.is_empty() {
            self.counts
                .committed(batch.waiting.len(), started.elapsed());
        }
        drop(guard);
        for waiter in batch.waiting {
            let _ = waiter.send(outcome.clone());
        }
    }

    /// Sends the batch's notices and `COMMIT`s (`ROLLBACK` when no turn of
    /// the batch kept its writes).
    async fn commit(&self, guard: &mut Guard) -> Result<(), Arc<str>> {
        let empty = guard
            .batch
            .as_ref()
            .is_none_or(|batch| batch.waiting.is_empty());
        let state = &mut **guard;
        let conn = state
            .conn
            .as_mut()
            .expect("a turn holds an open connection");
        if !empty && let Err(error) = pg_notices::send(conn, &state.notices).await {
            // The transaction may be aborted, and a `COMMIT` would then
            // roll it back without an error: close the connection instead,
            // which aborts it for certain.
            state.conn = None;
            return Err(failed("sending the batch's notices", &error));
        }
        let sql = if empty { "ROLLBACK" } else { "COMMIT" };
        match conn.execute(raw_sql(sql)).await {
            Ok(_) => Ok(()),
            Err(error) => {
                // Whether it committed is unknown to us: tell nobody it did,
                // and start again on a fresh connection.
                state.conn = None;
                Err(failed("commit", &error))
            }
        }
    }

    /// Fails the open batch: rolls back what PostgreSQL still has of it
    /// and answers everyone waiting with `why`.
    async fn break_batch(&self, state: &mut State, why: Arc<str>) {
        let unreleased = state.unreleased.take().map(|last| last.done);
        state.notices.clear();
        let Some(batch) = state.batch.take() else {
            return;
        };
        tracing::error!(error = %why, members = batch.members, "group commit: batch failed");
        if let Some(conn) = state.conn.as_mut()
            && conn.execute(raw_sql("ROLLBACK")).await.is_err()
        {
            state.conn = None;
        }
        for waiter in batch.waiting.into_iter().chain(unreleased) {
            let _ = waiter.send(Err(Arc::clone(&why)));
        }
    }

    /// Ends a turn: keeps its writes in the batch (`keep`; its savepoint
    /// is released by the next round trip, [`State::unreleased`]) or rolls
    /// back to its savepoint, and lets go of the connection. `done`, when
    /// someone waits, hears the outcome of the batch's commit; `notices`
    /// go out with the batch if the turn's writes do.
    async fn finish(
        &self,
        mut guard: Guard,
        keep: bool,
        done: Option<Done>,
        notices: Vec<Outgoing>,
    ) {
        if keep && let Some(done) = done {
            guard.unreleased = Some(Unreleased { done, notices });
            self.let_go(guard).await;
            return;
        }
        if let Err(error) = undo_turn(guard.conn_mut()).await {
            let why = failed("ending a savepoint", &error);
            if let Some(done) = done {
                let _ = done.send(Err(Arc::clone(&why)));
            }
            self.break_batch(&mut guard, why).await;
            self.let_go(guard).await;
            return;
        }
        if let Some(done) = done {
            match guard.batch.as_mut() {
                Some(batch) => batch.waiting.push(done),
                None => {
                    let _ = done.send(Err("no open batch".into()));
                }
            }
        }
        self.let_go(guard).await;
    }
}

/// Rolls back to the turn's savepoint and releases it. A statement of the
/// turn cut short (its caller went away) may have left its answer on the
/// wire, and sqlx reports an error among it on the next statement: a
/// database error is therefore tried once more.
async fn undo_turn(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    const UNDO: &str = "ROLLBACK TO turn; RELEASE turn";
    match conn.execute(raw_sql(UNDO)).await {
        Err(sqlx::Error::Database(_)) => conn.execute(raw_sql(UNDO)).await.map(drop),
        other => other.map(drop),
    }
}

impl Queued for PgWriter {
    type State = State;

    fn queue(&self) -> &Queue<State> {
        &self.queue
    }

    async fn commit_if_due(&self, guard: Guard) {
        self.let_go(guard).await;
    }
}

impl State {
    fn conn_mut(&mut self) -> &mut PgConnection {
        self.conn.as_mut().expect("a turn holds an open connection")
    }
}

impl PgTurn {
    /// The connection, for this turn's statements.
    pub(crate) fn conn(&mut self) -> &mut PgConnection {
        self.guard
            .as_mut()
            .expect("a turn holds the connection until it ends")
            .conn_mut()
    }

    /// Makes this turn's writes (and `notices`, sent with the batch's
    /// commit) part of the batch and returns once the batch's `COMMIT` has.
    pub(crate) async fn commit(self, notices: Vec<Outgoing>) -> Result<(), StoreError> {
        self.end(true, notices).await
    }

    /// Undoes this turn's writes (the rest of the batch is untouched) and
    /// returns once the batch's `COMMIT` has: what the turn read may have
    /// been written by others in the batch, and must not be acted on
    /// before it is durable.
    pub(crate) async fn rollback(self) -> Result<(), StoreError> {
        self.end(false, Vec::new()).await
    }

    /// Ends the turn in a task of its own (a caller that goes away
    /// meanwhile cannot cut short the batch of others) and waits for the
    /// batch's outcome.
    async fn end(mut self, keep: bool, notices: Vec<Outgoing>) -> Result<(), StoreError> {
        let guard = self.guard.take().expect("a turn ends once");
        let (done, outcome) = oneshot::channel();
        let writer = self.writer.clone();
        tokio::spawn(async move { writer.finish(guard, keep, Some(done), notices).await });
        batch_outcome(outcome).await
    }
}

impl Drop for PgTurn {
    /// A turn dropped without commit or rollback (an early return, a
    /// cancelled call) is rolled back to its savepoint by a task; outside
    /// any runtime (at exit) the connection is closed instead, which
    /// aborts the whole batch, and its members hear so.
    fn drop(&mut self) {
        let Some(mut guard) = self.guard.take() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let writer = self.writer.clone();
                runtime.spawn(async move { writer.finish(guard, false, None, Vec::new()).await });
            }
            Err(_) => {
                guard.conn = None;
                let unreleased = guard.unreleased.take().map(|last| last.done);
                if let Some(batch) = guard.batch.take() {
                    for waiter in batch.waiting.into_iter().chain(unreleased) {
                        let _ = waiter.send(Err("the batch was abandoned at exit".into()));
                    }
                }
            }
        }
    }
}
