//! PostgreSQL reads outside a transaction run on the pipelined connections
//! (`pg_read`), not on the pool: they need no pooled connection, many
//! callers share a few connections, and a connection that breaks is
//! replaced while reads go on.

use std::time::{Duration, Instant};

use chrono::{SubsecRound as _, Utc};
use shop_storage::{
    ConnectOptions, Db, GROUP_COMMIT_APPLICATION_NAME, Migrations, PIPELINED_APPLICATION_NAME, Tx,
    Value, connect_with, query,
};
use uuid::Uuid;

static POSTGRES: sqlx::migrate::Migrator = sqlx::migrate!("./tests/migrations/postgres");
static SQLITE: sqlx::migrate::Migrator = sqlx::migrate!("./tests/migrations/sqlite");
static MIGRATIONS: Migrations = Migrations {
    postgres: &POSTGRES,
    sqlite: &SQLITE,
};

async fn open_db(max_connections: u32, pipeline_connections: u32) -> Db {
    let url = shop_testkit::fresh_postgres_database("pipelined").await;
    connect_with(
        &url,
        ConnectOptions {
            max_connections,
            pipeline_connections,
            // Transactions on the pool, which some tests hold to show that
            // reads do not need it.
            group_commit: false,
            commit_delay: Duration::ZERO,
        },
        &MIGRATIONS,
    )
    .await
    .unwrap()
}

async fn insert(db: &Db, name: &str) -> Uuid {
    let id = Uuid::now_v7();
    query(
        "INSERT INTO things (id, name, nickname, quantity, created_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(id)
    .bind(name)
    .bind(None::<&str>)
    .bind(7_i32)
    .bind(Utc::now().trunc_subsecs(6))
    .execute(db)
    .await
    .unwrap();
    id
}

async fn name_of(db: &Db, id: Uuid) -> Result<Option<String>, shop_storage::StoreError> {
    query("SELECT name FROM things WHERE id = $1")
        .bind(id)
        .fetch_optional(db, |row| row.get::<String>("name"))
        .await
}

/// The server pids of this database's pipelined connections (asked inside
/// a transaction, so on a pooled connection).
async fn pipelined_pids(db: &Db) -> Vec<i32> {
    let mut tx: Tx = db.begin().await.unwrap();
    let pids = query(
        "SELECT pid FROM pg_stat_activity \
         WHERE application_name = $1 AND datname = current_database() ORDER BY pid",
    )
    .bind(PIPELINED_APPLICATION_NAME)
    .fetch_all(&mut tx, |row| row.get::<i32>("pid"))
    .await
    .unwrap();
    tx.rollback().await.unwrap();
    pids
}

#[tokio::test]
async fn reads_outside_a_transaction_need_no_pooled_connection_on_postgres() {
    let db = open_db(1, 1).await;
    let id = insert(&db, "kept").await;
    // The pool's only connection is held by this transaction.
    let tx = db.begin().await.unwrap();
    let read = tokio::time::timeout(Duration::from_secs(2), name_of(&db, id)).await;
    assert_eq!(
        read.expect("a pipelined read does not wait for the pool")
            .unwrap()
            .as_deref(),
        Some("kept")
    );
    tx.rollback().await.unwrap();

    // The same with pipelining off: the read waits for the pool.
    let pooled = open_db(1, 0).await;
    let id = insert(&pooled, "kept").await;
    let tx = pooled.begin().await.unwrap();
    let read = tokio::time::timeout(Duration::from_millis(500), name_of(&pooled, id)).await;
    assert!(read.is_err(), "without pipelining the read needs the pool");
    tx.rollback().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reads_share_the_pipelined_connections_on_postgres() {
    let db = open_db(2, 2).await;
    let ids: Vec<Uuid> = insert_ten(&db).await;
    assert_eq!(pipelined_pids(&db).await.len(), 2);
    let reads: Vec<_> = (0..400)
        .map(|i| {
            let db = db.clone();
            let id = ids[i % ids.len()];
            tokio::spawn(async move { (id, name_of(&db, id).await) })
        })
        .collect();
    for read in reads {
        let (id, name) = read.await.unwrap();
        let want = format!("thing-{}", ids.iter().position(|x| *x == id).unwrap());
        assert_eq!(name.unwrap(), Some(want));
    }
    assert_eq!(
        pipelined_pids(&db).await.len(),
        2,
        "400 concurrent reads opened no connection of their own"
    );
}

/// What PostgreSQL was told `$1` is, for a value of each kind.
async fn type_of(db: &Db, value: Value) -> String {
    query("SELECT pg_typeof($1)::text AS t")
        .bind(value)
        .fetch_one(db, |row| row.get::<String>("t"))
        .await
        .unwrap()
}

/// A connection keeps a statement per query text and parameter types:
/// the same text bound with a value of another type is prepared again, not
/// run as the first (which would send the value's bytes as the first
/// type's), and callers that miss together keep one statement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_text_is_prepared_once_for_each_list_of_types_on_postgres() {
    let db = open_db(2, 1).await;
    let first: Vec<_> = (0..32).map(|_| type_of(&db, Value::from("a"))).collect();
    for answer in futures_util::future::join_all(first).await {
        assert_eq!(answer, "text");
    }
    assert_eq!(type_of(&db, Value::from(7_i32)).await, "integer");
    assert_eq!(type_of(&db, Value::from(true)).await, "boolean");
    assert_eq!(type_of(&db, Value::from("b")).await, "text");
    // Asked on the one pipelined connection itself, about its own session.
    let kept = query(
        "SELECT count(*)::int4 AS n FROM pg_prepared_statements \
         WHERE statement LIKE 'SELECT pg_typeof%'",
    )
    .fetch_one(&db, |row| row.get::<i32>("n"))
    .await
    .unwrap();
    assert_eq!(
        kept, 3,
        "one statement for each of text, integer and boolean"
    );
}

async fn insert_ten(db: &Db) -> Vec<Uuid> {
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(insert(db, &format!("thing-{i}")).await);
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_pipelined_connection_is_replaced_while_reads_go_on_on_postgres() {
    let db = open_db(2, 2).await;
    let id = insert(&db, "kept").await;
    let before = pipelined_pids(&db).await;
    assert_eq!(before.len(), 2);

    let mut tx = db.begin().await.unwrap();
    let terminated = query(
        "SELECT pg_terminate_backend(pid) AS gone FROM pg_stat_activity \
         WHERE application_name = $1 AND datname = current_database()",
    )
    .bind(PIPELINED_APPLICATION_NAME)
    .fetch_all(&mut tx, |row| row.get::<bool>("gone"))
    .await
    .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(terminated, [true, true]);

    // Reads go on (on the pool while the connections are replaced); a read
    // already sent on a connection as it was cut may fail, as unavailable.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut ok, mut unavailable) = (0, 0);
    let after = loop {
        match name_of(&db, id).await {
            Ok(name) => {
                assert_eq!(name.as_deref(), Some("kept"));
                ok += 1;
            }
            Err(e) => {
                assert!(e.is_unavailable(), "{e}");
                unavailable += 1;
            }
        }
        let now = pipelined_pids(&db).await;
        if now.len() == 2 && now.iter().all(|pid| !before.contains(pid)) {
            break now;
        }
        assert!(
            Instant::now() < deadline,
            "not replaced within 10 s: {before:?} → {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(unavailable <= 2, "{unavailable} reads failed, {ok} passed");
    assert_eq!(after.len(), 2);
    assert_eq!(name_of(&db, id).await.unwrap().as_deref(), Some("kept"));
}

/// With TLS checked in full (`sslmode=verify-full`, the test server's CA),
/// reads are still pipelined and transactions still share the group-commit
/// connection: both negotiate TLS as the pool does, and every connection
/// of the database uses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_and_group_commit_connections_use_tls_as_the_pool_does_on_postgres_with_tls() {
    let ca = std::env::var("SHOP_TEST_POSTGRES_CA")
        .expect("SHOP_TEST_POSTGRES_CA names the test server's CA (scripts/test.sh sets it)");
    let url = shop_testkit::fresh_postgres_database("pipelined_tls").await;
    let url = format!("{url}?sslmode=verify-full&sslrootcert={ca}");
    let options = ConnectOptions {
        max_connections: 2,
        pipeline_connections: 2,
        group_commit: true,
        commit_delay: Duration::ZERO,
    };
    let db = connect_with(&url, options, &MIGRATIONS).await.unwrap();
    let id = Uuid::now_v7();
    let mut tx = db.begin().await.unwrap();
    query(
        "INSERT INTO things (id, name, nickname, quantity, created_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(id)
    .bind("sealed")
    .bind(None::<&str>)
    .bind(7_i32)
    .bind(Utc::now().trunc_subsecs(6))
    .execute(&mut tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(name_of(&db, id).await.unwrap().as_deref(), Some("sealed"));

    let connections = query(
        "SELECT a.application_name AS name, s.ssl AS ssl FROM pg_stat_activity a \
         JOIN pg_stat_ssl s USING (pid) WHERE a.datname = current_database() \
         ORDER BY a.application_name",
    )
    .fetch_all(&db, |row| {
        Ok((row.get::<String>("name")?, row.get::<bool>("ssl")?))
    })
    .await
    .unwrap();
    let with = |name: &str| {
        connections
            .iter()
            .filter(|(n, ssl)| n == name && *ssl)
            .count()
    };
    assert_eq!(with(PIPELINED_APPLICATION_NAME), 2, "{connections:?}");
    assert_eq!(with(GROUP_COMMIT_APPLICATION_NAME), 1, "{connections:?}");
    assert!(
        connections.iter().all(|(_, ssl)| *ssl),
        "a connection without TLS: {connections:?}"
    );
}
