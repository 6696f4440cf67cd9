//! Group commit, on SQLite and on PostgreSQL: concurrent transactions
//! share a commit, each is answered after the commit that holds it, and
//! one that fails or is abandoned takes nothing of the others with it.

use std::time::Duration;

use chrono::Utc;
use shop_storage::{ConnectOptions, Db, Migrations, StoreError, Tx, query};
use shop_testkit::Backend;
use uuid::Uuid;

static POSTGRES: sqlx::migrate::Migrator = sqlx::migrate!("./tests/migrations/postgres");
static SQLITE: sqlx::migrate::Migrator = sqlx::migrate!("./tests/migrations/sqlite");
static MIGRATIONS: Migrations = Migrations {
    postgres: &POSTGRES,
    sqlite: &SQLITE,
};

/// A fresh database of `backend`, with group commit (the default).
async fn open(backend: Backend) -> (Db, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = backend.database_url("group", dir.path()).await;
    let db = shop_storage::connect(&url, 4, &MIGRATIONS).await.unwrap();
    (db, dir)
}

async fn sqlite() -> (Db, tempfile::TempDir) {
    open(Backend::Sqlite).await
}

/// A fresh PostgreSQL database whose group commit runs on a sqlx
/// connection: with pipelining off (or a server TLS might protect),
/// rather than on tokio-postgres.
async fn sqlx_writer() -> (Db, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = Backend::Postgres.database_url("group", dir.path()).await;
    let options = ConnectOptions {
        pipeline_connections: 0,
        ..ConnectOptions::new(4, None)
    };
    let db = shop_storage::connect_with(&url, options, &MIGRATIONS)
        .await
        .unwrap();
    (db, dir)
}

async fn insert(tx: &mut Tx, name: &str) -> Result<u64, StoreError> {
    query("INSERT INTO things (id, name, quantity, created_at) VALUES ($1, $2, 1, $3)")
        .bind(Uuid::now_v7())
        .bind(name)
        .bind(Utc::now())
        .execute(tx)
        .await
}

async fn names(db: &Db) -> Vec<String> {
    query("SELECT name FROM things ORDER BY name")
        .fetch_all(db, |row| row.get("name"))
        .await
        .unwrap()
}

/// Waits until `n` transactions queue for the writer behind the one the
/// test holds.
async fn until_queued(db: &Db, n: usize) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while db.writers_queued() < n {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .expect("the writers queued");
}

async fn transactions_queued_behind_a_commit_share_one(backend: Backend) {
    let (db, _dir) = open(backend).await;
    let mut first = db.begin().await.unwrap();
    insert(&mut first, "thing-00").await.unwrap();

    let writers: Vec<_> = (1..32)
        .map(|i| {
            let db = db.clone();
            tokio::spawn(async move {
                let mut tx = db.begin().await?;
                insert(&mut tx, &format!("thing-{i:02}")).await?;
                tx.commit().await?;
                // Acknowledged: a fresh reader sees it.
                let seen: i64 = query("SELECT COUNT(*) AS n FROM things WHERE name = $1")
                    .bind(format!("thing-{i:02}"))
                    .fetch_one(&db, |row| row.get("n"))
                    .await?;
                Ok::<_, StoreError>(seen)
            })
        })
        .collect();
    until_queued(&db, 31).await;
    first.commit().await.unwrap();
    for writer in writers {
        assert_eq!(writer.await.unwrap().unwrap(), 1);
    }

    assert_eq!(names(&db).await.len(), 32);
    let stats = db.group_commit_stats().expect("group commit is on");
    assert_eq!(stats.transactions, 32);
    assert!(
        stats.commits < stats.transactions,
        "31 transactions queued behind one another, yet each had a commit of its own: {stats:?}"
    );
}

async fn a_failed_or_abandoned_transaction_takes_nothing_of_its_batch_with_it(
    (db, _dir): (Db, tempfile::TempDir),
) {
    let mut existing = db.begin().await.unwrap();
    insert(&mut existing, "taken").await.unwrap();
    existing.commit().await.unwrap();

    let mut holder = db.begin().await.unwrap();
    insert(&mut holder, "holder").await.unwrap();
    let fine = tokio::spawn({
        let db = db.clone();
        async move {
            let mut tx = db.begin().await?;
            insert(&mut tx, "fine").await?;
            tx.commit().await
        }
    });
    let duplicate = tokio::spawn({
        let db = db.clone();
        async move {
            let mut tx = db.begin().await?;
            insert(&mut tx, "half-written").await?;
            insert(&mut tx, "taken").await?;
            tx.commit().await
        }
    });
    let abandoned = tokio::spawn({
        let db = db.clone();
        async move {
            let mut tx = db.begin().await?;
            insert(&mut tx, "abandoned").await?;
            drop(tx);
            Ok::<_, StoreError>(())
        }
    });
    until_queued(&db, 3).await;
    holder.commit().await.unwrap();

    fine.await.unwrap().unwrap();
    let err = duplicate.await.unwrap().unwrap_err();
    let collided = err.unique_violation().expect("a unique violation");
    assert!(
        ["things.name", "things_name_key"].contains(&collided),
        "{collided}"
    );
    abandoned.await.unwrap().unwrap();

    // The duplicate's first insert went with its savepoint and the
    // abandoned one was rolled back (readers see committed rows only);
    // the rest of the batch committed.
    assert_eq!(names(&db).await, ["fine", "holder", "taken"]);
}

async fn a_caller_that_gives_up_waiting_does_not_hold_up_the_batch(backend: Backend) {
    let (db, _dir) = open(backend).await;
    let mut holder = db.begin().await.unwrap();
    insert(&mut holder, "holder").await.unwrap();
    let waiting = tokio::spawn({
        let db = db.clone();
        async move { db.begin().await.map(drop) }
    });
    until_queued(&db, 1).await;
    waiting.abort();
    let _ = waiting.await;

    tokio::time::timeout(Duration::from_secs(5), holder.commit())
        .await
        .expect("the commit did not wait for the caller that left")
        .unwrap();
    assert_eq!(names(&db).await, ["holder"]);
}

/// Another process holding SQLite's write lock (a backup, the `sqlite3`
/// shell) makes a transaction wait for it, up to the busy timeout, but not
/// the runtime thread the transaction was begun on: here the only one, so
/// this test's own task runs again only if the waiting does not hold it.
#[tokio::test(flavor = "current_thread")]
async fn a_transaction_waiting_for_another_process_s_lock_leaves_the_runtime_free_on_sqlite() {
    let (db, dir) = sqlite().await;
    let outside = rusqlite::Connection::open(dir.path().join("group.db")).unwrap();
    outside.execute_batch("BEGIN IMMEDIATE").unwrap();

    let writer = db.clone();
    let waiting = tokio::spawn(async move {
        let mut tx = writer.begin().await?;
        insert(&mut tx, "after the lock").await?;
        tx.commit().await
    });
    let started = std::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let held = started.elapsed();
    assert!(
        held < Duration::from_secs(2),
        "the runtime thread was held for {held:?} while the transaction waited for the lock"
    );
    assert!(!waiting.is_finished(), "the lock is still held");

    outside.execute_batch("COMMIT").unwrap();
    tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the transaction went on once the lock was free")
        .unwrap()
        .unwrap();
    assert_eq!(names(&db).await, ["after the lock"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_outside_a_transaction_commit_through_the_writer() {
    let (db, _dir) = sqlite().await;
    let changed =
        query("INSERT INTO things (id, name, quantity, created_at) VALUES ($1, $2, 1, $3)")
            .bind(Uuid::now_v7())
            .bind("alone")
            .bind(Utc::now())
            .execute(&db)
            .await
            .unwrap();
    assert_eq!(changed, 1);
    let renamed: Option<String> =
        query("UPDATE things SET name = $1 WHERE name = $2 RETURNING name")
            .bind("renamed")
            .bind("alone")
            .fetch_optional(&db, |row| row.get("name"))
            .await
            .unwrap();
    assert_eq!(renamed.as_deref(), Some("renamed"));
    assert_eq!(names(&db).await, ["renamed"]);
    let stats = db.group_commit_stats().unwrap();
    assert_eq!(stats.transactions, 2);
}

async fn a_commit_returns_only_once_the_batch_holding_it_is_committed(backend: Backend) {
    let (db, _dir) = open(backend).await;
    let mut first = db.begin().await.unwrap();
    insert(&mut first, "first").await.unwrap();
    // The next transaction joins the batch and keeps it open for a while.
    let slow = tokio::spawn({
        let db = db.clone();
        async move {
            let mut tx = db.begin().await?;
            insert(&mut tx, "slow").await?;
            tokio::time::sleep(Duration::from_millis(300)).await;
            tx.commit().await
        }
    });
    until_queued(&db, 1).await;
    first.commit().await.unwrap();
    // Acknowledged means committed: a reader sees it, though the batch it
    // joined was still open behind it.
    assert!(names(&db).await.contains(&"first".to_owned()));
    slow.await.unwrap().unwrap();
    assert_eq!(names(&db).await, ["first", "slow"]);
}

async fn callers_cancelled_at_any_point_never_stall_the_writer(
    (db, _dir): (Db, tempfile::TempDir),
) {
    for round in 0..40 {
        let mut holder = db.begin().await.unwrap();
        insert(&mut holder, &format!("held-{round:02}"))
            .await
            .unwrap();
        let cancelled = tokio::spawn({
            let db = db.clone();
            async move {
                let mut tx = db.begin().await?;
                insert(&mut tx, "cancelled").await?;
                tx.commit().await
            }
        });
        until_queued(&db, 1).await;
        let committing = tokio::spawn(holder.commit());
        // Cancelled as soon as it has the connection (while it opens its
        // savepoint), or a little later (writing, committing) in other
        // rounds.
        while db.writers_queued() > 0 {
            tokio::task::yield_now().await;
        }
        for _ in 0..round % 8 {
            tokio::task::yield_now().await;
        }
        cancelled.abort();
        let _ = cancelled.await;
        tokio::time::timeout(Duration::from_secs(5), committing)
            .await
            .unwrap_or_else(|_| panic!("round {round}: the holder's commit stalled"))
            .unwrap()
            .unwrap();
        // The writer still takes new transactions.
        let mut next = db.begin().await.unwrap();
        insert(&mut next, &format!("next-{round:02}"))
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), next.commit())
            .await
            .unwrap_or_else(|_| panic!("round {round}: the writer stalled"))
            .unwrap();
    }
    let names = names(&db).await;
    assert_eq!(names.iter().filter(|n| n.starts_with("held-")).count(), 40);
    assert_eq!(names.iter().filter(|n| n.starts_with("next-")).count(), 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_queued_behind_a_commit_share_one_on_sqlite() {
    transactions_queued_behind_a_commit_share_one(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_queued_behind_a_commit_share_one_on_postgres() {
    transactions_queued_behind_a_commit_share_one(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_or_abandoned_transaction_takes_nothing_of_its_batch_with_it_on_sqlite() {
    a_failed_or_abandoned_transaction_takes_nothing_of_its_batch_with_it(sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_or_abandoned_transaction_takes_nothing_of_its_batch_with_it_on_postgres() {
    a_failed_or_abandoned_transaction_takes_nothing_of_its_batch_with_it(
        open(Backend::Postgres).await,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_or_abandoned_transaction_takes_nothing_of_its_batch_with_it_on_postgres_through_sqlx()
 {
    a_failed_or_abandoned_transaction_takes_nothing_of_its_batch_with_it(sqlx_writer().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_gives_up_waiting_does_not_hold_up_the_batch_on_sqlite() {
    a_caller_that_gives_up_waiting_does_not_hold_up_the_batch(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_gives_up_waiting_does_not_hold_up_the_batch_on_postgres() {
    a_caller_that_gives_up_waiting_does_not_hold_up_the_batch(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_returns_only_once_the_batch_holding_it_is_committed_on_sqlite() {
    a_commit_returns_only_once_the_batch_holding_it_is_committed(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_returns_only_once_the_batch_holding_it_is_committed_on_postgres() {
    a_commit_returns_only_once_the_batch_holding_it_is_committed(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_cancelled_at_any_point_never_stall_the_writer_on_sqlite() {
    callers_cancelled_at_any_point_never_stall_the_writer(sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_cancelled_at_any_point_never_stall_the_writer_on_postgres() {
    callers_cancelled_at_any_point_never_stall_the_writer(open(Backend::Postgres).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_cancelled_at_any_point_never_stall_the_writer_on_postgres_through_sqlx() {
    callers_cancelled_at_any_point_never_stall_the_writer(sqlx_writer().await).await;
}

/// The server pid of the group-commit connection (asked inside a
/// transaction, which runs on it).
async fn writer_pid(db: &Db) -> i32 {
    let mut tx = db.begin().await.unwrap();
    let pid = query("SELECT pg_backend_pid() AS pid")
        .fetch_one(&mut tx, |row| row.get::<i32>("pid"))
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    pid
}

/// Inserts `name` inside `tx` with a statement that takes 200 ms, and
/// gives up waiting for it after 20: the statement (and, as the turn's
/// first, its savepoint) is on the wire, its answer unread.
async fn insert_cut_short(tx: &mut Tx, name: &str) {
    let slow = query(
        "INSERT INTO things (id, name, quantity, created_at) \
         SELECT $1, $2, 1, $3 FROM pg_sleep(0.2)",
    )
    .bind(Uuid::now_v7())
    .bind(name)
    .bind(Utc::now())
    .execute(tx);
    assert!(
        tokio::time::timeout(Duration::from_millis(20), slow)
            .await
            .is_err(),
        "the insert was still running"
    );
}

/// A turn's first statement goes out with its savepoint (tokio-postgres),
/// and its caller may stop waiting for it: the turn then goes on from
/// there (its savepoint's outcome read first) and what it commits is kept,
/// or, dropped, it is rolled back to that savepoint, the statement cut
/// short included. The rest of its batch is kept either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_statement_cut_short_leaves_its_turn_and_batch_whole_on_postgres() {
    let (db, _dir) = open(Backend::Postgres).await;
    for keep_going in [true, false] {
        let mut holder = db.begin().await.unwrap();
        insert(&mut holder, &format!("holder-{keep_going}"))
            .await
            .unwrap();
        let cut = tokio::spawn({
            let db = db.clone();
            async move {
                let mut tx = db.begin().await?;
                insert_cut_short(&mut tx, &format!("cut-{keep_going}")).await;
                if !keep_going {
                    drop(tx);
                    return Ok(());
                }
                insert(&mut tx, "after-the-cut").await?;
                tx.commit().await
            }
        });
        until_queued(&db, 1).await;
        let outcomes = tokio::time::timeout(Duration::from_secs(10), async {
            (holder.commit().await, cut.await.unwrap())
        });
        let (held, cut) = outcomes.await.expect("both were answered");
        held.unwrap();
        cut.unwrap();
    }
    assert_eq!(
        names(&db).await,
        ["after-the-cut", "cut-true", "holder-false", "holder-true"]
    );
}

/// The `application_name` of the group-commit connection.
async fn writer_application(db: &Db) -> String {
    query("SELECT application_name FROM pg_stat_activity WHERE pid = $1")
        .bind(writer_pid(db).await)
        .fetch_one(db, |row| row.get("application_name"))
        .await
        .unwrap()
}

/// Where reads are pipelined the group commit runs on tokio-postgres too
/// (a turn's savepoint goes out with its first statement); with
/// pipelining off it stays on sqlx.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_group_commit_connection_follows_pipelining_on_postgres() {
    let (pipelined, _dir) = open(Backend::Postgres).await;
    assert_eq!(
        writer_application(&pipelined).await,
        shop_storage::GROUP_COMMIT_APPLICATION_NAME
    );
    let (sqlx, _dir) = sqlx_writer().await;
    assert_eq!(writer_application(&sqlx).await, "");
}

async fn a_broken_connection_fails_its_batch_and_is_replaced((db, _dir): (Db, tempfile::TempDir)) {
    let before = writer_pid(&db).await;
    let terminated: bool = query("SELECT pg_terminate_backend($1) AS done")
        .bind(before)
        .fetch_one(&db, |row| row.get("done"))
        .await
        .unwrap();
    assert!(terminated);

    // The first transaction may find the connection gone and fail; the
    // next one gets a new connection.
    let mut failures = 0;
    for attempt in 0..3 {
        let outcome = async {
            let mut tx = db.begin().await?;
            insert(&mut tx, &format!("after-{attempt}")).await?;
            tx.commit().await
        }
        .await;
        match outcome {
            Ok(()) => break,
            Err(_) => failures += 1,
        }
    }
    assert!(
        failures <= 1,
        "{failures} transactions failed after one lost connection"
    );
    assert_ne!(writer_pid(&db).await, before, "a new connection");
    assert_eq!(names(&db).await.len(), 1, "exactly the one that succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_connection_fails_its_batch_and_is_replaced_on_postgres() {
    a_broken_connection_fails_its_batch_and_is_replaced(open(Backend::Postgres).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_connection_fails_its_batch_and_is_replaced_on_postgres_through_sqlx() {
    a_broken_connection_fails_its_batch_and_is_replaced(sqlx_writer().await).await;
}

/// A PostgreSQL transaction whose statement failed is aborted: committing
/// it anyway must fail it, and it alone, whether the next thing on the
/// connection is another transaction or the batch's commit.
async fn committing_after_a_failed_statement_fails_that_transaction_alone(
    (db, _dir): (Db, tempfile::TempDir),
) {
    let mut existing = db.begin().await.unwrap();
    insert(&mut existing, "taken").await.unwrap();
    existing.commit().await.unwrap();

    for followed in [true, false] {
        let mut holder = db.begin().await.unwrap();
        insert(&mut holder, &format!("holder-{followed}"))
            .await
            .unwrap();
        let stubborn = tokio::spawn({
            let db = db.clone();
            async move {
                let mut tx = db.begin().await?;
                insert(&mut tx, &format!("half-{followed}")).await?;
                assert!(insert(&mut tx, "taken").await.is_err());
                tx.commit().await
            }
        });
        until_queued(&db, 1).await;
        let next = followed.then(|| {
            let db = db.clone();
            tokio::spawn(async move {
                let mut tx = db.begin().await?;
                insert(&mut tx, "next").await?;
                tx.commit().await
            })
        });
        if followed {
            until_queued(&db, 2).await;
        }
        holder.commit().await.unwrap();
        assert!(
            stubborn.await.unwrap().is_err(),
            "an aborted transaction was acknowledged"
        );
        if let Some(next) = next {
            next.await.unwrap().unwrap();
        }
    }
    assert_eq!(
        names(&db).await,
        ["holder-false", "holder-true", "next", "taken"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committing_after_a_failed_statement_fails_that_transaction_alone_on_postgres() {
    committing_after_a_failed_statement_fails_that_transaction_alone(open(Backend::Postgres).await)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committing_after_a_failed_statement_fails_that_transaction_alone_on_postgres_through_sqlx()
{
    committing_after_a_failed_statement_fails_that_transaction_alone(sqlx_writer().await).await;
}

/// Sets `name`'s quantity inside `tx` (taking the row's lock until the
/// batch holding `tx` commits).
async fn set_quantity(tx: &mut Tx, name: &str, quantity: i32) -> Result<u64, StoreError> {
    query("UPDATE things SET quantity = $1 WHERE name = $2")
        .bind(quantity)
        .bind(name)
        .execute(tx)
        .await
}

/// Two replicas (two processes' worth of `Db` on one database, each with
/// its batching connection) whose transactions take the same two rows in
/// opposite orders: PostgreSQL breaks the deadlock by failing one
/// statement. That transaction alone fails, as unavailable (the caller
/// retries), and both replicas' batches go on committing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadlock_between_replicas_fails_one_transaction_as_unavailable_on_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let url = Backend::Postgres.database_url("deadlock", dir.path()).await;
    let one = shop_storage::connect(&url, 4, &MIGRATIONS).await.unwrap();
    let two = shop_storage::connect(&url, 4, &MIGRATIONS).await.unwrap();
    let mut setup = one.begin().await.unwrap();
    insert(&mut setup, "left").await.unwrap();
    insert(&mut setup, "right").await.unwrap();
    setup.commit().await.unwrap();

    let mut first = one.begin().await.unwrap();
    set_quantity(&mut first, "left", 10).await.unwrap();
    let mut second = two.begin().await.unwrap();
    set_quantity(&mut second, "right", 20).await.unwrap();
    // Each now waits for the row the other holds.
    let (a, b) = tokio::join!(
        async {
            set_quantity(&mut first, "right", 11).await?;
            first.commit().await
        },
        async {
            set_quantity(&mut second, "left", 21).await?;
            second.commit().await
        },
    );
    let failed = match (a, b) {
        (Ok(()), Err(e)) | (Err(e), Ok(())) => e,
        other => panic!("exactly one side of the deadlock fails: {other:?}"),
    };
    assert!(
        failed.is_unavailable(),
        "a deadlock victim is told to retry: {failed:?}"
    );

    // Both replicas' writers still work: each commits a new transaction.
    for (db, name) in [(&one, "after-one"), (&two, "after-two")] {
        let mut tx = db.begin().await.unwrap();
        insert(&mut tx, name).await.unwrap();
        tx.commit().await.unwrap();
    }
    let quantities: Vec<(String, i32)> =
        query("SELECT name, quantity FROM things WHERE name IN ('left', 'right') ORDER BY name")
            .fetch_all(&one, |row| Ok((row.get("name")?, row.get("quantity")?)))
            .await
            .unwrap();
    assert!(
        quantities == [("left".into(), 10), ("right".into(), 11)]
            || quantities == [("left".into(), 21), ("right".into(), 20)],
        "the winner's writes, all of them, and nothing of the victim's: {quantities:?}"
    );
    assert_eq!(
        names(&one).await,
        ["after-one", "after-two", "left", "right"]
    );
}

/// The notices of a batch go out with its commit, in order, a repeated
/// one once,
/// and only those of the transactions it commits: not a rolled-back one's,
/// nor those of one whose statement failed, even when it is the batch's
/// last (its notices then fail with it and the others' are sent again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_sends_the_notices_of_what_it_commits_and_nothing_else_on_postgres() {
    let (db, _dir) = open(Backend::Postgres).await;
    let notices = db.listen("batch_notices", 64).await.unwrap();
    let mut heard = notices.subscribe();
    let mut existing = db.begin().await.unwrap();
    insert(&mut existing, "taken").await.unwrap();
    existing.commit().await.unwrap();

    let mut first = db.begin().await.unwrap();
    insert(&mut first, "first").await.unwrap();
    first.notify("batch_notices", "first").await.unwrap();
    first.notify("batch_notices", "twice").await.unwrap();
    first.notify("batch_notices", "twice").await.unwrap();
    let turn = |name: &'static str| {
        let db = db.clone();
        tokio::spawn(async move {
            let mut tx = db.begin().await?;
            tx.notify("batch_notices", name).await?;
            match name {
                "rolled-back" => {
                    insert(&mut tx, name).await?;
                    return tx.rollback().await;
                }
                "failed" => assert!(insert(&mut tx, "taken").await.is_err()),
                _ => {
                    insert(&mut tx, name).await?;
                }
            }
            tx.commit().await
        })
    };
    let mut queued = Vec::new();
    for (n, name) in ["second", "rolled-back", "failed"].into_iter().enumerate() {
        queued.push(turn(name));
        until_queued(&db, n + 1).await;
    }
    first.commit().await.unwrap();
    let outcomes: Vec<_> = futures_util::future::join_all(queued)
        .await
        .into_iter()
        .map(|joined| joined.unwrap().is_ok())
        .collect();
    assert_eq!(outcomes, [true, true, false], "second, rolled-back, failed");
    assert_eq!(names(&db).await, ["first", "second", "taken"]);

    let mut got = Vec::new();
    while got.len() < 3 {
        let notice = tokio::time::timeout(Duration::from_secs(10), heard.recv())
            .await
            .expect("the batch's notices within 10 s")
            .unwrap();
        got.push(notice);
    }
    assert_eq!(
        got,
        ["first", "twice", "second"].map(|p| shop_storage::Notice::Changed(p.into()))
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        heard.try_recv().is_err(),
        "nothing more: {:?}",
        heard.try_recv()
    );
}

/// A database whose writer keeps a batch open `delay` when writes come
/// close together (`DATABASE_COMMIT_DELAY`).
async fn with_commit_delay(backend: Backend, delay: Duration) -> (Db, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = backend.database_url("delayed", dir.path()).await;
    let options = shop_storage::ConnectOptions::new(4, None).with_commit_delay(delay);
    let db = shop_storage::connect_with(&url, options, &MIGRATIONS)
        .await
        .unwrap();
    (db, dir)
}

async fn write_alone(db: &Db, name: &str) -> Result<(), StoreError> {
    let mut tx = db.begin().await?;
    insert(&mut tx, name).await?;
    tx.commit().await
}

/// Writes `first`, and `second` 2 ms after `first` has written its row
/// and gone on to commit; returns how many commits the two took.
async fn two_writes_a_moment_apart(db: &Db, first: &str, second: &str) -> u64 {
    let before = db.group_commit_stats().unwrap();
    let (written, committing) = tokio::sync::oneshot::channel();
    let first = tokio::spawn({
        let db = db.clone();
        let name = first.to_owned();
        async move {
            let mut tx = db.begin().await?;
            insert(&mut tx, &name).await?;
            let _ = written.send(());
            tx.commit().await
        }
    });
    committing.await.unwrap();
    tokio::time::sleep(Duration::from_millis(2)).await;
    write_alone(db, second).await.unwrap();
    first.await.unwrap().unwrap();
    let after = db.group_commit_stats().unwrap();
    assert_eq!(after.transactions - before.transactions, 2);
    after.commits - before.commits
}

/// Commits each of three pairs of writes a moment apart took, stopping at
/// the first pair that took `wanted`: a machine busy enough to stall one
/// task for milliseconds can blur one pair, not three.
async fn commits_per_pair(db: &Db, wanted: u64) -> Vec<u64> {
    write_alone(db, "primer").await.unwrap();
    let mut commits = Vec::new();
    for round in 0..3 {
        let took =
            two_writes_a_moment_apart(db, &format!("a-{round}"), &format!("b-{round}")).await;
        commits.push(took);
        if took == wanted {
            break;
        }
    }
    commits
}

async fn with_a_commit_delay_writes_a_moment_apart_share_one_commit(backend: Backend) {
    // The primer's commit makes the next batch wait out the delay (20 ms)
    // for more: the second write, 2 ms behind, joins it.
    let (db, _dir) = with_commit_delay(backend, shop_storage::MAX_BATCH_AGE).await;
    let commits = commits_per_pair(&db, 1).await;
    assert_eq!(commits.last(), Some(&1), "commits per pair: {commits:?}");
    // Both were acknowledged, so both are there for a fresh reader.
    let names = names(&db).await;
    let round = commits.len() - 1;
    assert!(names.contains(&format!("a-{round}")) && names.contains(&format!("b-{round}")));
}

async fn without_a_commit_delay_a_write_nobody_waits_behind_commits_alone(backend: Backend) {
    // The first write commits as soon as it lets go of the connection;
    // the second finds it committed or committing and takes its own.
    let (db, _dir) = with_commit_delay(backend, Duration::ZERO).await;
    let commits = commits_per_pair(&db, 2).await;
    assert_eq!(commits.last(), Some(&2), "commits per pair: {commits:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_commit_delay_writes_a_moment_apart_share_one_commit_on_sqlite() {
    with_a_commit_delay_writes_a_moment_apart_share_one_commit(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_commit_delay_writes_a_moment_apart_share_one_commit_on_postgres() {
    with_a_commit_delay_writes_a_moment_apart_share_one_commit(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_commit_delay_a_write_nobody_waits_behind_commits_alone_on_sqlite() {
    without_a_commit_delay_a_write_nobody_waits_behind_commits_alone(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_commit_delay_a_write_nobody_waits_behind_commits_alone_on_postgres() {
    without_a_commit_delay_a_write_nobody_waits_behind_commits_alone(Backend::Postgres).await;
}
