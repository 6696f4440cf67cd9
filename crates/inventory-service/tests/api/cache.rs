//! The cache of products by sku across replicas: two stores on one
//! database (two replicas), one changes a product the other has cached.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use inventory_service::{
    app::Inventory,
    domain::{Product, StockChange},
    repo::{ConnectOptions, InventoryRepo, ProductCache, Reserved, connect},
};
use shop_testkit::Backend;
use uuid::Uuid;

use crate::repo_suite::{items, now, product, sku};

/// Two replicas (stores with a cache whose entries live `max_age`) on one
/// fresh database; the directory holds SQLite's file.
async fn two_replicas(
    backend: Backend,
    max_age: Duration,
) -> (
    tempfile::TempDir,
    Arc<dyn InventoryRepo>,
    Arc<dyn InventoryRepo>,
) {
    let dir = tempfile::tempdir().unwrap();
    let url = backend.database_url("inventory_cache", dir.path()).await;
    let cache = ProductCache {
        capacity: 100,
        max_age,
    };
    let mut replicas = Vec::new();
    for _ in 0..2 {
        let store = connect(&url, ConnectOptions::new(2, None), cache)
            .await
            .expect("connect");
        replicas.push(store);
    }
    let writer = replicas.pop().unwrap();
    (dir, replicas.pop().unwrap(), writer)
}

async fn read(store: &dyn InventoryRepo, name: &str) -> Product {
    store.get_product(&sku(name)).await.unwrap().unwrap()
}

/// Waits until `reader` shows `name` as `wanted` says (panics after
/// `within`).
async fn seen_within(
    reader: &dyn InventoryRepo,
    name: &str,
    within: Duration,
    wanted: impl Fn(&Product) -> bool,
) {
    let since = Instant::now();
    loop {
        let seen = read(reader, name).await;
        if wanted(&seen) {
            return;
        }
        assert!(
            since.elapsed() < within,
            "the other replica still serves {seen:?} after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn adjust(store: &dyn InventoryRepo, name: &str, delta: i64) {
    store
        .adjust_stock(
            &StockChange {
                sku: sku(name),
                delta,
                reason: "count".into(),
                request_id: Uuid::now_v7().to_string(),
            },
            now(),
        )
        .await
        .unwrap();
}

/// Reserves two units of "lamp" for `order`, for five minutes.
async fn hold_two_lamps(store: &dyn InventoryRepo, order: Uuid) -> Reserved {
    store
        .reserve(
            order,
            &items(&[("lamp", 2)]),
            now() + chrono::Duration::minutes(5),
            now(),
        )
        .await
        .unwrap()
}

#[tokio::test]
async fn a_cached_product_is_served_until_invalidated_and_a_write_is_read_back_at_once() {
    // Two SQLite stores on one file share no notices: what the reader
    // serves after the writer's change can only come from its cache.
    let (_dir, reader, writer) = two_replicas(Backend::Sqlite, Duration::from_secs(60)).await;
    product(&*writer, "lamp", 100, 5).await;
    assert_eq!(read(&*reader, "lamp").await.on_hand, 5);
    adjust(&*writer, "lamp", 3).await;
    assert_eq!(read(&*writer, "lamp").await.on_hand, 8);
    assert_eq!(
        read(&*reader, "lamp").await.on_hand,
        5,
        "served from the cache"
    );

    // A write through the reader itself is read back at once: each kind.
    adjust(&*reader, "lamp", 1).await;
    assert_eq!(read(&*reader, "lamp").await.on_hand, 9);
    let order = Uuid::now_v7();
    let held = hold_two_lamps(&*reader, order).await;
    assert!(matches!(held, Reserved::Held(_)), "{held:?}");
    assert_eq!(read(&*reader, "lamp").await.reserved, 2);
    reader.confirm(order, now()).await.unwrap().unwrap();
    let confirmed = read(&*reader, "lamp").await;
    assert_eq!((confirmed.on_hand, confirmed.reserved), (7, 0));
    reader.release(order, now()).await.unwrap();
    assert_eq!(read(&*reader, "lamp").await.on_hand, 9);
}

#[tokio::test]
async fn on_postgres_every_change_reaches_the_other_replicas_cache_by_notification() {
    // Entries would live a minute: only the notification can explain the
    // other replica seeing each change within seconds.
    let (_dir, reader, writer) = two_replicas(Backend::Postgres, Duration::from_secs(60)).await;
    let within = Duration::from_secs(10);
    product(&*writer, "lamp", 100, 5).await;
    seen_within(&*reader, "lamp", within, |p| p.on_hand == 5).await;

    let order = Uuid::now_v7();
    hold_two_lamps(&*writer, order).await;
    seen_within(&*reader, "lamp", within, |p| p.reserved == 2).await;
    // A confirmation leaves what is available as it was, but not on_hand
    // and reserved.
    writer.confirm(order, now()).await.unwrap().unwrap();
    seen_within(&*reader, "lamp", within, |p| {
        (p.on_hand, p.reserved) == (3, 0)
    })
    .await;
}

#[tokio::test]
async fn without_notifications_a_cached_product_is_never_older_than_the_max_age() {
    let max_age = Duration::from_millis(300);
    let (_dir, reader, writer) = two_replicas(Backend::Sqlite, max_age).await;
    product(&*writer, "lamp", 100, 5).await;
    assert_eq!(read(&*reader, "lamp").await.on_hand, 5);
    adjust(&*writer, "lamp", 3).await;
    // The bound, plus time for the polling reads themselves.
    seen_within(&*reader, "lamp", max_age + Duration::from_secs(2), |p| {
        p.on_hand == 8
    })
    .await;
}

/// A stock watch re-reads its product through the cache on each notice:
/// it must hear the notice only after the cache dropped the product, or it
/// could read the old row, send nothing and wait for a notice that has
/// already come. Each round the reader's cache holds the product (the
/// watch read it) when the writer changes it; the watch must then report
/// the new value (notices of earlier rounds may still be queued, so a
/// round may take more than one wake-up, but never a value going back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_a_stock_watch_through_the_cache_sends_every_change_of_another_replica() {
    let (_dir, reader, writer) = two_replicas(Backend::Postgres, Duration::from_secs(60)).await;
    product(&*writer, "lamp", 100, 5).await;
    let inventory = Inventory::new(reader, Duration::from_secs(300));
    let mut watch = inventory.watch(vec![sku("lamp")]).await.unwrap();
    let mut last = watch.current()[0].available;
    for round in 1..=20 {
        adjust(&*writer, "lamp", 1).await;
        let wanted = 5 + round;
        while last != wanted {
            let changed = tokio::time::timeout(Duration::from_secs(10), watch.changes())
                .await
                .unwrap_or_else(|_| panic!("round {round}: {wanted} not sent within 10 s"))
                .unwrap();
            for availability in changed {
                assert!(
                    availability.available > last,
                    "round {round}: {availability:?}"
                );
                last = availability.available;
            }
        }
    }
}
