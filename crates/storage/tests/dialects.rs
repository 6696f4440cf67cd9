//! The same SQL text on SQLite and PostgreSQL: what the dialect seam
//! promises, checked on both backends.

use std::time::Duration;

use chrono::{SubsecRound as _, Utc};
use shop_storage::{Db, Migrations, Notice, query};
use shop_testkit::Backend;
use uuid::Uuid;

static POSTGRES: sqlx::migrate::Migrator = sqlx::migrate!("./tests/migrations/postgres");
static SQLITE: sqlx::migrate::Migrator = sqlx::migrate!("./tests/migrations/sqlite");
static MIGRATIONS: Migrations = Migrations {
    postgres: &POSTGRES,
    sqlite: &SQLITE,
};

async fn db(backend: Backend) -> (Db, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = backend.database_url("storage", dir.path()).await;
    let db = shop_storage::connect(&url, 4, &MIGRATIONS).await.unwrap();
    (db, dir)
}

async fn insert(
    db: &Db,
    id: Uuid,
    name: &str,
    nickname: Option<&str>,
) -> Result<u64, shop_storage::StoreError> {
    query(
        "INSERT INTO things (id, name, nickname, quantity, created_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(id)
    .bind(name)
    .bind(nickname)
    .bind(3_i32)
    .bind(Utc::now().trunc_subsecs(6))
    .execute(db)
    .await
}

async fn ids_times_and_typed_nulls_round_trip(backend: Backend) {
    let (db, _dir) = db(backend).await;
    let ids: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
    for (i, id) in ids.iter().enumerate() {
        let nickname = (i == 1).then_some("middle");
        assert_eq!(
            insert(&db, *id, &format!("thing-{i}"), nickname)
                .await
                .unwrap(),
            1
        );
    }
    // `$1 IS NULL OR ...` with a NULL that knows it is text, and an id
    // cursor that compares in time order on both backends.
    let after_first: Vec<(Uuid, Option<String>, i32)> = query(
        "SELECT id, nickname, quantity FROM things \
         WHERE ($1 IS NULL OR nickname = $1) AND ($2 IS NULL OR id > $2) ORDER BY id",
    )
    .bind(None::<&str>)
    .bind(Some(ids[0]))
    .fetch_all(&db, |row| {
        Ok((row.get("id")?, row.get("nickname")?, row.get("quantity")?))
    })
    .await
    .unwrap();
    assert_eq!(
        after_first,
        vec![(ids[1], Some("middle".to_owned()), 3), (ids[2], None, 3)]
    );
    let count: i64 = query("SELECT COUNT(*) AS n FROM things WHERE nickname = $1")
        .bind("middle")
        .fetch_one(&db, |row| row.get("n"))
        .await
        .unwrap();
    assert_eq!(count, 1);
}

/// Placeholders are bound by their number, not their position (SQLite
/// reads `$1` as a name), and a time bound for a read compares equal to
/// the same time stored by a write.
async fn values_bind_by_number_and_times_compare_equal(backend: Backend) {
    let (db, _dir) = db(backend).await;
    let created = Utc::now().trunc_subsecs(6);
    let id = Uuid::now_v7();
    query(
        "INSERT INTO things (id, name, nickname, quantity, created_at) VALUES ($1, $2, NULL, $3, $4)",
    )
    .bind(id)
    .bind("timed")
    .bind(7_i32)
    .bind(created)
    .execute(&db)
    .await
    .unwrap();
    let found: Option<(Uuid, chrono::DateTime<Utc>, Option<String>)> = query(
        "SELECT id, created_at, nickname FROM things \
         WHERE quantity = $3 AND created_at = $2 AND name = $1 AND ($4 IS NULL OR id = $4)",
    )
    .bind("timed")
    .bind(created)
    .bind(7_i32)
    .bind(Some(id))
    .fetch_optional(&db, |row| {
        Ok((row.get("id")?, row.get("created_at")?, row.get("nickname")?))
    })
    .await
    .unwrap();
    assert_eq!(found, Some((id, created, None)));
    let missing = query("SELECT name FROM things WHERE name = $1")
        .bind("absent")
        .fetch_one(&db, |row| row.get::<String>("name"))
        .await;
    assert!(missing.is_err(), "fetch_one of no row is an error");
}

/// A read outside a transaction sees every commit that returned before it,
/// does not wait for a transaction that is open, and does not see it.
async fn reads_see_what_committed_and_nothing_open(backend: Backend) {
    let (db, _dir) = db(backend).await;
    let count = |db: Db| async move {
        query("SELECT COUNT(*) AS n FROM things")
            .fetch_one(&db, |row| row.get::<i64>("n"))
            .await
            .unwrap()
    };
    for i in 0..20 {
        insert(&db, Uuid::now_v7(), &format!("seen-{i}"), None)
            .await
            .unwrap();
        assert_eq!(count(db.clone()).await, i + 1);
    }
    let mut open = db.begin().await.unwrap();
    query("INSERT INTO things (id, name, nickname, quantity, created_at) VALUES ($1, $2, NULL, 1, $3)")
        .bind(Uuid::now_v7())
        .bind("uncommitted")
        .bind(Utc::now())
        .execute(&mut open)
        .await
        .unwrap();
    let read = tokio::time::timeout(Duration::from_secs(5), count(db.clone()))
        .await
        .expect("a read does not wait for an open transaction");
    assert_eq!(read, 20, "an open transaction's write is not seen");
    open.commit().await.unwrap();
    assert_eq!(count(db.clone()).await, 21);
}

async fn unique_violations_name_what_collided(backend: Backend) {
    let (db, _dir) = db(backend).await;
    insert(&db, Uuid::now_v7(), "taken", None).await.unwrap();
    let err = insert(&db, Uuid::now_v7(), "taken", None)
        .await
        .unwrap_err();
    let name = err.unique_violation().expect("a unique violation");
    assert!(matches!(name, "things_name_key" | "things.name"), "{name}");
    assert!(!err.is_unavailable());
}

async fn notices_arrive_on_commit_only(backend: Backend) {
    let (db, _dir) = db(backend).await;
    let notices = db.listen("storage_test", 16).await.unwrap();
    let mut heard = notices.subscribe();

    let mut rolled_back = db.begin().await.unwrap();
    rolled_back.notify("storage_test", "never").await.unwrap();
    rolled_back.rollback().await.unwrap();

    let mut tx = db.begin().await.unwrap();
    // PostgreSQL's limit, on both backends: refused at once, and the
    // transaction goes on.
    let too_long = "x".repeat(shop_storage::MAX_NOTICE_PAYLOAD + 1);
    assert!(tx.notify("storage_test", &too_long).await.is_err());
    let longest = "y".repeat(shop_storage::MAX_NOTICE_PAYLOAD);
    tx.notify("storage_test", &longest).await.unwrap();
    let id = Uuid::now_v7();
    query("INSERT INTO things (id, name, nickname, quantity, created_at) VALUES ($1, $2, NULL, 1, $3)")
        .bind(id)
        .bind("noticed")
        .bind(Utc::now())
        .execute(&mut tx)
        .await
        .unwrap();
    tx.notify("storage_test", &id.to_string()).await.unwrap();
    tx.commit().await.unwrap();

    let notice = tokio::time::timeout(Duration::from_secs(10), heard.recv())
        .await
        .expect("a notice within 10 s")
        .unwrap();
    assert_eq!(notice, Notice::Changed(longest.into()));
    let notice = tokio::time::timeout(Duration::from_secs(10), heard.recv())
        .await
        .expect("a notice within 10 s")
        .unwrap();
    assert_eq!(notice, Notice::Changed(id.to_string().into()));
    assert!(
        heard.try_recv().is_err(),
        "nothing from the rolled-back transaction"
    );
}

#[tokio::test]
async fn ids_times_and_typed_nulls_round_trip_on_sqlite() {
    ids_times_and_typed_nulls_round_trip(Backend::Sqlite).await;
}

#[tokio::test]
async fn ids_times_and_typed_nulls_round_trip_on_postgres() {
    ids_times_and_typed_nulls_round_trip(Backend::Postgres).await;
}

#[tokio::test]
async fn values_bind_by_number_and_times_compare_equal_on_sqlite() {
    values_bind_by_number_and_times_compare_equal(Backend::Sqlite).await;
}

#[tokio::test]
async fn values_bind_by_number_and_times_compare_equal_on_postgres() {
    values_bind_by_number_and_times_compare_equal(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_see_what_committed_and_nothing_open_on_sqlite() {
    reads_see_what_committed_and_nothing_open(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_see_what_committed_and_nothing_open_on_postgres() {
    reads_see_what_committed_and_nothing_open(Backend::Postgres).await;
}

#[tokio::test]
async fn unique_violations_name_what_collided_on_sqlite() {
    unique_violations_name_what_collided(Backend::Sqlite).await;
}

#[tokio::test]
async fn unique_violations_name_what_collided_on_postgres() {
    unique_violations_name_what_collided(Backend::Postgres).await;
}

#[tokio::test]
async fn notices_arrive_on_commit_only_on_sqlite() {
    notices_arrive_on_commit_only(Backend::Sqlite).await;
}

#[tokio::test]
async fn notices_arrive_on_commit_only_on_postgres() {
    notices_arrive_on_commit_only(Backend::Postgres).await;
}

#[tokio::test]
async fn an_unknown_url_scheme_is_refused_without_its_password() {
    let err = shop_storage::connect("mysql://u:secret@h/db", 1, &MIGRATIONS)
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("unsupported"), "{text}");
    assert!(!text.contains("secret"), "{text}");
}

#[cfg(unix)]
#[tokio::test]
async fn a_new_sqlite_database_is_owner_only() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("nested/data.db");
    let db = shop_storage::connect(&format!("sqlite://{}", file.display()), 2, &MIGRATIONS)
        .await
        .unwrap();
    insert(&db, Uuid::now_v7(), "kept", None).await.unwrap();
    let mode =
        |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&file), 0o600, "the database file");
    let wal = dir.path().join("nested/data.db-wal");
    assert!(wal.exists(), "WAL mode writes a -wal file");
    assert_eq!(mode(&wal), 0o600, "SQLite gives the WAL the file's mode");
    assert_eq!(
        mode(file.parent().unwrap()),
        0o700,
        "the directory it created"
    );
}
