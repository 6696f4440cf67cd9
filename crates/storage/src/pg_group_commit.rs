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
//! Every caller of the process waits for this one connection, so its
//! round trips are what a turn costs. Where reads are pipelined
//! (`pg_read`, with TLS as the pool's, `pg_tls`) the connection is a
//! tokio-postgres one, and a turn's savepoint goes out with its first
//! statement, both sent before either answer is read: one round trip for
//! both instead of two (sqlx, used otherwise, sends nothing before it has
//! the last answer). The savepoint's outcome is read right
//! after the statement's; if it failed, so did the statement (PostgreSQL
//! runs nothing in an aborted transaction).
//!
//! Unlike SQLite's, each step here waits for the network, so a caller
//! could be cancelled halfway through one. Every step that others depend
//! on (opening the batch and the savepoint, ending a turn, committing the
//! batch) therefore runs in a task of its own that finishes whatever
//! happens to the caller; a turn dropped mid-statement is rolled back to
//! its savepoint by such a task (sqlx first reads what the interrupted
//! statement left on the wire; a savepoint sent with that statement is
//! settled first).
//!
//! A broken connection breaks the batch: every member that had released
//! its savepoint into it hears the error, nothing of it is acknowledged,
//! and the next turn connects afresh. A deadlock with another process
//! (replicas whose batches take the same rows in different orders) fails
//! one statement after PostgreSQL's `deadlock_timeout`; its turn rolls back
//! to its savepoint and its caller sees UNAVAILABLE (retry), while the rest
//! of the batch goes on.

use std::{
    future::Future,
    sync::{Arc, Mutex, PoisonError},
    task::Poll,
    time::{Duration, Instant},
};

use futures_util::future::BoxFuture;
use sqlx::{Connection as _, Executor as _, PgConnection, postgres::PgConnectOptions, raw_sql};
use tokio::sync::{OwnedMutexGuard, oneshot};

use crate::{
    StoreError,
    group_commit::{
        Batch, Counts, Done, GroupCommitStats, LastCommit, MAX_BATCH_AGE, batch_error,
        batch_outcome,
    },
    pg_notices::{self, Outgoing},
    pg_read::{self, Connection, Senders},
    pg_tls::Target,
    writer_queue::{Queue, Queued},
};

/// The `application_name` of the batching connection when it is a
/// tokio-postgres one (unless the URL names one).
pub const APPLICATION_NAME: &str = "shop-group-commit";

/// The batching connection of a PostgreSQL database. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct PgWriter {
    queue: Queue<State>,
    counts: Arc<Counts>,
    options: Arc<PgConnectOptions>,
    /// Where the connection is a tokio-postgres one, where it goes
    /// ([`PgWriter::pipelined`]).
    pipelined: Option<Arc<Target>>,
    acquire_timeout: Duration,
    /// The commit delay ([`PgWriter::with_commit_delay`]).
    commit_delay: Duration,
}

#[derive(Debug, Default)]
pub(crate) struct State {
    /// None until the first turn, and after the connection broke.
    conn: Option<Conn>,
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
    /// The last `COMMIT`.
    last_commit: Option<LastCommit>,
}

/// The batching connection. sqlx waits for each answer before it sends
/// anything else, so a turn's savepoint and its first statement take a
/// round trip each; tokio-postgres sends both before either answer is
/// read, one round trip, which is most of a turn's time on this
/// connection that every writer of the process waits for.
#[derive(Debug)]
enum Conn {
    Sqlx(PgConnection),
    Pipelined(Arc<Connection>),
}

#[derive(Debug)]
struct Unreleased {
    done: Done,
    notices: Vec<Outgoing>,
}

type Guard = OwnedMutexGuard<State>;

/// What opens a turn: its savepoint, after whatever else is due first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Opening {
    /// The batch's `BEGIN`, then the savepoint.
    Batch,
    /// The savepoint, in the open batch.
    Savepoint,
    /// The last turn's `RELEASE` ([`State::unreleased`]), then the
    /// savepoint.
    AfterRelease,
}

impl Opening {
    /// What the next turn on `state` sends first.
    fn next(state: &State) -> Opening {
        if state.unreleased.is_some() {
            Opening::AfterRelease
        } else if state.batch.is_none() {
            Opening::Batch
        } else {
            Opening::Savepoint
        }
    }

    fn sql(self) -> &'static str {
        match self {
            Opening::Batch => "BEGIN; SAVEPOINT turn",
            Opening::Savepoint => "SAVEPOINT turn",
            Opening::AfterRelease => "RELEASE turn; SAVEPOINT turn",
        }
    }
}

/// What became of a turn's [`Opening`].
enum Opened {
    /// The savepoint is in place.
    Open(Guard),
    /// The last turn could not be released and was undone instead (its
    /// caller told so): nothing of this turn happened, and it opens again.
    Again(Guard),
    /// The batch broke (and everyone in it was told): nothing of this
    /// turn happened.
    Failed(Guard, StoreError),
}

/// Where a turn's savepoint is.
enum Savepoint {
    /// Not sent yet: it goes out with the turn's first statement (on a
    /// tokio-postgres connection).
    Pending(Opening),
    /// Sent with a statement that has not been answered (or whose caller
    /// went away): its outcome is still to be read.
    InFlight(Opening, Sending),
    /// In place.
    Open,
    /// Never made, as the batch broke: nothing of the turn to undo.
    Gone,
}

/// A savepoint on its way. In a mutex only to be `Sync`, as a transaction
/// must be (futures that hold one across an await are sent between
/// threads); it is only ever reached through `&mut`, without locking.
type Sending = std::sync::Mutex<BoxFuture<'static, Result<(), tokio_postgres::Error>>>;

/// The outcome of `sending`, once it has arrived.
async fn sent(sending: &mut Sending) -> Result<(), StoreError> {
    let sending = sending.get_mut().unwrap_or_else(PoisonError::into_inner);
    Ok(sending.as_mut().await?)
}

impl std::fmt::Debug for Savepoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Savepoint::Pending(opening) => f.debug_tuple("Pending").field(opening).finish(),
            Savepoint::InFlight(opening, _) => f.debug_tuple("InFlight").field(opening).finish(),
            Savepoint::Open => f.write_str("Open"),
            Savepoint::Gone => f.write_str("Gone"),
        }
    }
}

/// One caller's turn on the batching connection: a savepoint inside the
/// open batch.
#[derive(Debug)]
pub(crate) struct PgTurn {
    guard: Option<Guard>,
    savepoint: Savepoint,
    /// On a tokio-postgres connection (see [`Conn`]).
    pipelined: bool,
    writer: PgWriter,
}

fn failed(context: &str, err: &StoreError) -> Arc<str> {
    format!("{context}: {err}").into()
}

impl Conn {
    /// Runs `sql`, statements without parameters, in one round trip.
    async fn simple(&mut self, sql: &'static str) -> Result<(), StoreError> {
        match self {
            Conn::Sqlx(conn) => Ok(conn.execute(raw_sql(sql)).await.map(drop)?),
            Conn::Pipelined(conn) => Ok(conn.client().batch_execute(sql).await?),
        }
    }

    /// Sends `notices` (see `pg_notices`).
    async fn notify<'a>(
        &mut self,
        notices: impl IntoIterator<Item = &'a Outgoing>,
    ) -> Result<(), StoreError> {
        match self {
            Conn::Sqlx(conn) => Ok(pg_notices::send(conn, notices).await?),
            Conn::Pipelined(conn) => Ok(pg_notices::send_pipelined(conn, notices).await?),
        }
    }

    /// Rolls back to the turn's savepoint and releases it. On sqlx, a
    /// statement of the turn cut short (its caller went away) may have
    /// left its answer on the wire, and sqlx reports an error among it on
    /// the next statement: a database error is therefore tried once more.
    /// tokio-postgres reads and drops such an answer itself.
    async fn undo_turn(&mut self) -> Result<(), StoreError> {
        const UNDO: &str = "ROLLBACK TO turn; RELEASE turn";
        match self {
            Conn::Sqlx(conn) => match conn.execute(raw_sql(UNDO)).await {
                Err(sqlx::Error::Database(_)) => Ok(conn.execute(raw_sql(UNDO)).await.map(drop)?),
                other => Ok(other.map(drop)?),
            },
            Conn::Pipelined(conn) => Ok(conn.client().batch_execute(UNDO).await?),
        }
    }
}

impl PgWriter {
    /// A writer that connects as `options` say when it is first used.
    pub(crate) fn new(options: PgConnectOptions, acquire_timeout: Duration) -> PgWriter {
        PgWriter {
            queue: Queue::new(State::default(), acquire_timeout),
            counts: Arc::new(Counts::new("postgres")),
            options: Arc::new(options),
            pipelined: None,
            acquire_timeout,
            commit_delay: Duration::ZERO,
        }
    }

    /// This writer on a tokio-postgres connection to `target` (where the
    /// pipelined reads go, with the same TLS) instead of sqlx's, so that
    /// each turn's savepoint goes out with its first statement.
    pub(crate) fn pipelined(mut self, target: &Target) -> PgWriter {
        let mut target = target.clone();
        if target.config.get_application_name() == Some(pg_read::APPLICATION_NAME) {
            target.config.application_name(APPLICATION_NAME);
        }
        self.pipelined = Some(Arc::new(target));
        self
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
    /// database counts as unavailable) and opens a savepoint in the batch
    /// (on tokio-postgres, with the turn's first statement).
    pub(crate) async fn begin(&self) -> Result<PgTurn, StoreError> {
        let guard = Queue::acquire(self).await?;
        if let Some(Conn::Pipelined(conn)) = &guard.conn
            && !conn.client().is_closed()
        {
            // Nothing to send before the turn's first statement: the turn
            // starts here, without a task to hand it over.
            let opening = Opening::next(&guard);
            return Ok(PgTurn {
                guard: Some(guard),
                savepoint: Savepoint::Pending(opening),
                pipelined: true,
                writer: self.clone(),
            });
        }

        // Opened in a task of its own, and handed over as a turn: if the
        // caller goes away meanwhile, the turn is dropped wherever it is
        // (in the task, or unread in the channel) and rolls itself back.
        let (opened_tx, opened) = oneshot::channel();
        let writer = self.clone();
        tokio::spawn(async move {
            let turn = writer.open(guard).await.map(|(guard, savepoint)| PgTurn {
                guard: Some(guard),
                pipelined: matches!(savepoint, Savepoint::Pending(_)),
                savepoint,
                writer: writer.clone(),
            });
            let _ = opened_tx.send(turn);
        });
        match opened.await {
            Ok(turn) => turn,
            Err(_) => Err(batch_error("opening a turn was interrupted".into())),
        }
    }

    /// Connects if need be; on sqlx, then opens the turn's savepoint (see
    /// [`Opening`]); on tokio-postgres, leaves it for the turn's first
    /// statement.
    async fn open(&self, mut guard: Guard) -> Result<(Guard, Savepoint), StoreError> {
        let idle = guard.batch.is_none() && guard.unreleased.is_none();
        if idle
            && let Some(Conn::Pipelined(conn)) = &guard.conn
            && conn.client().is_closed()
        {
            // Lost between batches (the server restarted, say): nothing
            // is lost with it, so connect again rather than fail a turn.
            guard.conn = None;
        }
        if guard.conn.is_none() {
            let connected = tokio::time::timeout(self.acquire_timeout, self.connect())
                .await
                .map_err(|_| StoreError::Unavailable(sqlx::Error::PoolTimedOut))??;
            guard.conn = Some(connected);
        }
        if matches!(guard.conn, Some(Conn::Pipelined(_))) {
            let opening = Opening::next(&guard);
            return Ok((guard, Savepoint::Pending(opening)));
        }
        match self.open_now(guard).await {
            Opened::Open(guard) => Ok((guard, Savepoint::Open)),
            Opened::Failed(guard, error) => {
                self.let_go(guard).await;
                Err(error)
            }
            Opened::Again(_) => unreachable!("open_now opens again itself"),
        }
    }

    async fn connect(&self) -> Result<Conn, StoreError> {
        Ok(match &self.pipelined {
            Some(target) => {
                let after_loss = "the next transaction connects afresh";
                let connection = Connection::open(target, Senders::One, after_loss).await?;
                Conn::Pipelined(Arc::new(connection))
            }
            None => Conn::Sqlx(PgConnection::connect_with(&self.options).await?),
        })
    }

    /// Opens the turn's savepoint in a round trip of its own (opening
    /// again once if the last turn could not be released).
    async fn open_now(&self, mut guard: Guard) -> Opened {
        loop {
            let opening = Opening::next(&guard);
            let sent = guard.conn_mut().simple(opening.sql()).await;
            match self.opened(guard, opening, sent).await {
                Opened::Again(again) => guard = again,
                done => return done,
            }
        }
    }

    /// What `sent`, the outcome of sending `opening`, makes of the turn:
    /// it is counted into the batch (opening it), and the last turn,
    /// released, among those waiting for its commit; or the last turn
    /// could not be released, and is undone instead; or the batch broke.
    async fn opened(
        &self,
        mut guard: Guard,
        opening: Opening,
        sent: Result<(), StoreError>,
    ) -> Opened {
        let error = match sent {
            Ok(()) => return Opened::Open(self.joined(guard)),
            Err(error) => error,
        };
        if opening == Opening::AfterRelease {
            return if self.settle_unreleased(&mut guard).await {
                Opened::Again(guard)
            } else {
                Opened::Failed(guard, batch_error("the batch failed".into()))
            };
        }
        let why = failed("opening a savepoint", &error);
        self.break_batch(&mut guard, why).await;
        if opening == Opening::Batch {
            // Whatever the connection's state, nothing is open now.
            guard.conn = None;
        }
        Opened::Failed(guard, error)
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
        match guard.conn_mut().undo_turn().await {
            Ok(()) => {
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
    async fn let_go(&self, guard: Guard) {
        if let Err(guard) = self.let_go_unless_due(guard) {
            self.commit_batch(guard).await;
        }
    }

    /// [`PgWriter::let_go`] without a round trip: hands the connection
    /// back when the open batch is to commit now.
    fn let_go_unless_due(&self, mut guard: Guard) -> Result<(), Guard> {
        let id = guard.opened;
        let Some(batch) = guard.batch.as_mut() else {
            return Ok(());
        };
        if !batch.due(self.queued()) {
            return Ok(());
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
            return Ok(());
        }
        Err(guard)
    }

    /// Commits the open batch (releasing the last turn in the same round
    /// trip) and answers everyone waiting for it, then lets go of the
    /// connection.
    async fn commit_batch(&self, mut guard: Guard) {
        if guard.batch.is_none() {
            return;
        }
        let started = Instant::now();
        let transactions = guard.batch.as_ref().map_or(0, |b| b.waiting.len())
            + usize::from(guard.unreleased.is_some());
        if transactions > 0 {
            guard.last_commit = Some(LastCommit::new(guard.last_commit, started, transactions));
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
            let committed = match conn.notify(notices).await {
                Ok(()) => conn.simple("RELEASE turn; COMMIT").await,
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
        if !empty && let Err(error) = conn.notify(&state.notices).await {
            // The transaction may be aborted, and a `COMMIT` would then
            // roll it back without an error: close the connection instead,
            // which aborts it for certain.
            state.conn = None;
            return Err(failed("sending the batch's notices", &error));
        }
        let sql = if empty { "ROLLBACK" } else { "COMMIT" };
        match conn.simple(sql).await {
            Ok(()) => Ok(()),
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
            && conn.simple("ROLLBACK").await.is_err()
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
        guard: Guard,
        savepoint: Savepoint,
        keep: bool,
        done: Option<Done>,
        notices: Vec<Outgoing>,
    ) {
        let opened = match savepoint {
            Savepoint::Open => Opened::Open(guard),
            // A statement cut short: learn whether its savepoint was made.
            Savepoint::InFlight(opening, mut sending) => {
                let sent = sent(&mut sending).await;
                self.opened(guard, opening, sent).await
            }
            // No statement ran: a turn that keeps nothing has nothing to
            // undo or wait for; one that keeps (its notices) joins now.
            Savepoint::Pending(_) if !keep || done.is_none() => {
                if let Some(done) = done {
                    let _ = done.send(Ok(()));
                }
                self.let_go(guard).await;
                return;
            }
            Savepoint::Pending(_) => self.open_now(guard).await,
            Savepoint::Gone => Opened::Failed(guard, batch_error("the batch failed".into())),
        };
        let mut guard = match opened {
            Opened::Open(guard) => guard,
            Opened::Again(guard) | Opened::Failed(guard, _) => {
                // Nothing of the turn happened (its statement, if any,
                // failed with it), and the batch has heard why.
                if let Some(done) = done {
                    let _ = done.send(Err("the transaction failed before its commit".into()));
                }
                self.let_go(guard).await;
                return;
            }
        };
        if keep && let Some(done) = done {
            guard.unreleased = Some(Unreleased { done, notices });
            self.let_go(guard).await;
            return;
        }
        if let Err(error) = guard.conn_mut().undo_turn().await {
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
    fn conn_mut(&mut self) -> &mut Conn {
        self.conn.as_mut().expect("a turn holds an open connection")
    }
}

impl PgTurn {
    /// The sqlx connection, for this turn's statements; `None` on a
    /// tokio-postgres connection, whose statements go through
    /// [`PgTurn::query`] and [`PgTurn::execute`].
    pub(crate) fn sqlx_conn(&mut self) -> Option<&mut PgConnection> {
        match self.guard.as_mut()?.conn.as_mut()? {
            Conn::Sqlx(conn) => Some(conn),
            Conn::Pipelined(_) => None,
        }
    }

    /// True when this turn's statements run on tokio-postgres.
    pub(crate) fn is_pipelined(&self) -> bool {
        self.pipelined
    }

    /// The rows of the statement `sql` with `args` (tokio-postgres).
    pub(crate) async fn query(
        &mut self,
        sql: &'static str,
        args: &[crate::Value],
    ) -> Result<Vec<tokio_postgres::Row>, StoreError> {
        self.statement(|conn| async move { conn.query(sql, args).await })
            .await
    }

    /// Runs the statement `sql` with `args` (tokio-postgres); how many
    /// rows it changed.
    pub(crate) async fn execute(
        &mut self,
        sql: &'static str,
        args: &[crate::Value],
    ) -> Result<u64, StoreError> {
        self.statement(|conn| async move { conn.execute(sql, args).await })
            .await
    }

    /// Runs a statement (`run`) on the tokio-postgres connection; the
    /// turn's first sends the savepoint ahead of it, so that both go out
    /// before either answer is read.
    async fn statement<T, F, Fut>(&mut self, run: F) -> Result<T, StoreError>
    where
        F: Fn(Arc<Connection>) -> Fut,
        Fut: Future<Output = Result<T, tokio_postgres::Error>>,
    {
        loop {
            // A statement of this turn cut short left it in flight.
            if matches!(self.savepoint, Savepoint::InFlight(..)) {
                self.settle().await?;
            }
            let conn = self.pipelined_conn()?;
            let opening = match self.savepoint {
                Savepoint::Open => return Ok(run(conn).await?),
                Savepoint::Pending(opening) => opening,
                Savepoint::Gone | Savepoint::InFlight(..) => {
                    return Err(batch_error("the transaction failed".into()));
                }
            };
            let mut sending: BoxFuture<'static, Result<(), tokio_postgres::Error>> = Box::pin({
                let conn = Arc::clone(&conn);
                async move { conn.client().batch_execute(opening.sql()).await }
            });
            // Its first poll queues the savepoint on the connection, ahead
            // of the statement.
            if let Poll::Ready(sent) = futures_util::poll!(sending.as_mut()) {
                sending = Box::pin(std::future::ready(sent));
            }
            self.savepoint = Savepoint::InFlight(opening, Mutex::new(sending));
            let ran = run(conn).await;
            let settled = self.settle().await;
            if ran.is_ok() && !matches!(settled, Ok(true)) {
                // The savepoint failed but the statement ran, which
                // PostgreSQL does not do in an aborted transaction: the
                // connection is not where the batch thinks it is. Closing
                // it undoes whatever it had open.
                self.savepoint = Savepoint::Gone;
                if let Some(guard) = self.guard.as_mut() {
                    let why: Arc<str> = "a statement ran without its savepoint".into();
                    self.writer.break_batch(guard, why).await;
                    guard.conn = None;
                }
                return Err(batch_error("the transaction failed".into()));
            }
            match settled {
                Ok(true) => return Ok(ran?),
                // The last turn was undone instead of released; this
                // statement failed with it (the transaction was aborted)
                // and runs again.
                Ok(false) => continue,
                Err(error) => return Err(error),
            }
        }
    }

    /// Reads the outcome of the savepoint in flight: true when it is in
    /// place, false when the turn is to open again (see
    /// [`Opened::Again`]). On failure the batch has broken.
    async fn settle(&mut self) -> Result<bool, StoreError> {
        let Savepoint::InFlight(opening, sending) = &mut self.savepoint else {
            return Ok(true);
        };
        let opening = *opening;
        let sent = sent(sending).await;
        let guard = self
            .guard
            .take()
            .expect("a turn holds the connection until it ends");
        if sent.is_ok() {
            // Bookkeeping only: no await between taking the guard and
            // giving it back, so the caller going away cannot lose it.
            self.guard = Some(self.writer.joined(guard));
            self.savepoint = Savepoint::Open;
            return Ok(true);
        }
        self.savepoint = Savepoint::Gone;
        // Undoing the last turn or breaking the batch takes round trips
        // that must finish whatever happens to this caller: a task of its
        // own does them and hands the connection back, or, if the caller
        // went away meanwhile, ends the turn itself.
        let (back_tx, back) = oneshot::channel();
        let writer = self.writer.clone();
        tokio::spawn(async move {
            let opened = writer.opened(guard, opening, sent).await;
            if let Err(Opened::Open(guard) | Opened::Again(guard) | Opened::Failed(guard, _)) =
                back_tx.send(opened)
            {
                writer.let_go(guard).await;
            }
        });
        match back.await {
            Ok(Opened::Again(guard)) => {
                self.savepoint = Savepoint::Pending(Opening::next(&guard));
                self.guard = Some(guard);
                Ok(false)
            }
            Ok(Opened::Failed(guard, error)) => {
                self.guard = Some(guard);
                Err(error)
            }
            Ok(Opened::Open(guard)) => {
                self.guard = Some(guard);
                Err(batch_error("the savepoint failed".into()))
            }
            Err(_) => Err(batch_error("opening a turn was interrupted".into())),
        }
    }

    fn pipelined_conn(&self) -> Result<Arc<Connection>, StoreError> {
        match self.guard.as_ref().and_then(|guard| guard.conn.as_ref()) {
            Some(Conn::Pipelined(conn)) => Ok(Arc::clone(conn)),
            _ => Err(batch_error("the connection was lost".into())),
        }
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
        let Some(mut guard) = self.guard.take() else {
            // It let go of the connection when its savepoint failed.
            return Err(batch_error("the transaction failed".into()));
        };
        if keep && matches!(self.savepoint, Savepoint::Open) {
            // Keeping the writes is bookkeeping (the release goes out
            // with the next round trip, see `State::unreleased`): done
            // here, so that the next caller has the connection at once,
            // unless the batch is to commit now.
            let (done, outcome) = oneshot::channel();
            guard.unreleased = Some(Unreleased { done, notices });
            if let Err(guard) = self.writer.let_go_unless_due(guard) {
                let writer = self.writer.clone();
                tokio::spawn(async move { writer.commit_batch(guard).await });
            }
            return batch_outcome(outcome).await;
        }
        let savepoint = std::mem::replace(&mut self.savepoint, Savepoint::Gone);
        let (done, outcome) = oneshot::channel();
        let writer = self.writer.clone();
        tokio::spawn(async move {
            writer
                .finish(guard, savepoint, keep, Some(done), notices)
                .await
        });
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
                let savepoint = std::mem::replace(&mut self.savepoint, Savepoint::Gone);
                runtime.spawn(async move {
                    writer
                        .finish(guard, savepoint, false, None, Vec::new())
                        .await
                });
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
