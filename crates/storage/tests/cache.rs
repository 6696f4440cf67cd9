//! The read-through cache: what it serves, when it reads again, and that
//! it forgets everything when the notices it follows may have been missed.

use std::{
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use shop_storage::{Migrations, ReadThrough, query};
use shop_testkit::Backend;

static POSTGRES: sqlx::migrate::Migrator = sqlx::migrate!("./tests/migrations/postgres");
static SQLITE: sqlx::migrate::Migrator = sqlx::migrate!("./tests/migrations/sqlite");
static MIGRATIONS: Migrations = Migrations {
    postgres: &POSTGRES,
    sqlite: &SQLITE,
};

/// A load that counts its calls and returns `value`.
async fn load(calls: &AtomicUsize, value: &str) -> Result<Option<String>, ()> {
    calls.fetch_add(1, Ordering::SeqCst);
    Ok(Some(value.to_owned()))
}

#[tokio::test]
async fn serves_what_it_read_until_invalidated_or_too_old() {
    let cache = ReadThrough::<u32, String>::new(10, Duration::from_millis(200));
    let calls = AtomicUsize::new(0);
    for _ in 0..3 {
        let got = cache.get_or_load(&1, || load(&calls, "one")).await;
        assert_eq!(got, Ok(Some("one".into())));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "read once, then served");
    assert_eq!(cache.counts(), (2, 1));

    cache.invalidate(&1);
    let got = cache.get_or_load(&1, || load(&calls, "uno")).await;
    assert_eq!(got, Ok(Some("uno".into())));
    assert_eq!(calls.load(Ordering::SeqCst), 2, "read again after a write");

    tokio::time::sleep(Duration::from_millis(250)).await;
    cache.get_or_load(&1, || load(&calls, "ein")).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 3, "read again once too old");
}

#[tokio::test]
async fn a_read_that_raced_a_write_is_not_kept() {
    let cache = ReadThrough::<u32, String>::new(10, Duration::from_secs(60));
    let calls = AtomicUsize::new(0);
    // The write commits (and invalidates) while the read is under way: the
    // value read may be the old one, so it is returned but not cached.
    let got = cache
        .get_or_load(&1, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            cache.invalidate(&1);
            Ok::<_, ()>(Some("old".to_owned()))
        })
        .await;
    assert_eq!(got, Ok(Some("old".into())));
    cache.get_or_load(&1, || load(&calls, "new")).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn capacity_zero_reads_every_time() {
    let cache = ReadThrough::<u32, String>::new(0, Duration::from_secs(60));
    let calls = AtomicUsize::new(0);
    for _ in 0..3 {
        cache.get_or_load(&1, || load(&calls, "one")).await.unwrap();
    }
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

async fn follows_notices_and_clears_when_the_listener_drops(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let url = backend.database_url("storage_cache", dir.path()).await;
    let db = shop_storage::connect(&url, 4, &MIGRATIONS).await.unwrap();
    let cache = ReadThrough::<u32, String>::new(10, Duration::from_secs(600));
    cache.follow(db.listen("cache_test", 16).await.unwrap(), |p| {
        p.parse().ok()
    });
    let calls = AtomicUsize::new(0);
    cache.get_or_load(&1, || load(&calls, "one")).await.unwrap();
    cache.get_or_load(&2, || load(&calls, "two")).await.unwrap();

    // A committed change of key 1 drops key 1 only.
    let mut tx = db.begin().await.unwrap();
    tx.notify("cache_test", "1").await.unwrap();
    tx.commit().await.unwrap();
    until_forgotten(&cache, 1, &calls).await;
    let calls_before = calls.load(Ordering::SeqCst);
    cache.get_or_load(&2, || load(&calls, "two")).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), calls_before, "key 2 kept");

    if backend == Backend::Postgres {
        // The listening connection dies: notices may be lost from now on,
        // so everything goes.
        let killed: i64 = query(
            "SELECT COUNT(pg_terminate_backend(pid)) AS n FROM pg_stat_activity \
             WHERE datname = current_database() AND query LIKE 'LISTEN%'",
        )
        .fetch_one(&db, |row| row.get("n"))
        .await
        .unwrap();
        assert!(killed >= 1, "no listening connection found");
        until_forgotten(&cache, 2, &calls).await;
    }
}

/// Polls until `cache` reads `key` again, at most 10 s.
async fn until_forgotten(cache: &ReadThrough<u32, String>, key: u32, calls: &AtomicUsize) {
    let before = calls.load(Ordering::SeqCst);
    for _ in 0..1000 {
        cache
            .get_or_load(&key, || load(calls, "again"))
            .await
            .unwrap();
        if calls.load(Ordering::SeqCst) > before {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the cache still serves key {key}");
}

#[tokio::test]
async fn follows_notices_on_sqlite() {
    follows_notices_and_clears_when_the_listener_drops(Backend::Sqlite).await;
}

#[tokio::test]
async fn follows_notices_and_clears_when_the_listener_drops_on_postgres() {
    follows_notices_and_clears_when_the_listener_drops(Backend::Postgres).await;
}
