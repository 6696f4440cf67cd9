//! The inventory repository suite, run against SQLite and PostgreSQL: every
//! check is written once and instantiated per backend by `repo_suite!`.

use std::sync::Arc;

use chrono::{DateTime, Duration, SubsecRound as _, Utc};
use inventory_service::{
    domain::{ProductDraft, ReservationStatus, ReserveItem, Sku, StockChange},
    repo::{Adjusted, ConnectOptions, InventoryRepo, ProductCache, Reserved, connect},
};
use shop_core::currency::CurrencyCode;
use uuid::Uuid;

use crate::helpers::Backend;

/// A store on a fresh, migrated database on `backend`.
async fn store(backend: Backend) -> (Arc<dyn InventoryRepo>, tempfile::TempDir) {
    let (store, _url, dir) = store_and_url(backend).await;
    (store, dir)
}

/// [`store`], and the URL of its database for a look beneath the store.
async fn store_and_url(backend: Backend) -> (Arc<dyn InventoryRepo>, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = backend.database_url("inventory", dir.path()).await;
    // Through the cache, as the service runs it: every check also shows
    // that a cached read never hides a write made through the store.
    let cache = ProductCache {
        capacity: 1000,
        max_age: std::time::Duration::from_secs(60),
    };
    let store = connect(&url, ConnectOptions::new(5, None), cache)
        .await
        .expect("connect and migrate");
    (store, url, dir)
}

pub(crate) fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

pub(crate) fn sku(s: &str) -> Sku {
    Sku::parse(s).unwrap()
}

pub(crate) async fn product(store: &dyn InventoryRepo, name: &str, price: i64, units: i64) {
    store
        .put_product(
            &ProductDraft {
                sku: sku(name),
                name: name.into(),
                unit_price_cents: price,
                currency: CurrencyCode::parse("EUR").unwrap(),
                active: true,
            },
            now(),
        )
        .await
        .unwrap();
    let adjusted = store
        .adjust_stock(
            &StockChange {
                sku: sku(name),
                delta: units,
                reason: "stock".into(),
                request_id: format!("initial-{name}"),
            },
            now(),
        )
        .await
        .unwrap();
    assert!(matches!(adjusted, Adjusted::Applied(_)));
}

pub(crate) fn items(list: &[(&str, i64)]) -> Vec<ReserveItem> {
    list.iter()
        .map(|(s, q)| ReserveItem {
            sku: sku(s),
            quantity: *q,
        })
        .collect()
}

pub(crate) async fn products_are_put_read_and_listed_by_sku(store: &dyn InventoryRepo) {
    for name in ["b", "a", "c"] {
        product(store, name, 100, 1).await;
    }
    let listed = store.list_products(None, true, 2).await.unwrap();
    assert_eq!(
        listed.iter().map(|p| p.sku.as_str()).collect::<Vec<_>>(),
        ["a", "b"]
    );
    let rest = store.list_products(Some("b"), true, 2).await.unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].sku, "c");
    let a = store.get_product(&sku("a")).await.unwrap().unwrap();
    assert_eq!((a.on_hand, a.reserved, a.available()), (1, 0, 1));
    assert!(store.get_product(&sku("zz")).await.unwrap().is_none());
}

pub(crate) async fn stock_changes_apply_once_and_keep_a_floor(store: &dyn InventoryRepo) {
    product(store, "p", 100, 10).await;
    let change = |delta, id: &str| StockChange {
        sku: sku("p"),
        delta,
        reason: String::new(),
        request_id: id.into(),
    };
    let again = store
        .adjust_stock(&change(10, "initial-p"), now())
        .await
        .unwrap();
    assert!(
        matches!(again, Adjusted::Repeated { same: true, .. }),
        "{again:?}"
    );
    let other = store
        .adjust_stock(&change(3, "initial-p"), now())
        .await
        .unwrap();
    assert!(matches!(other, Adjusted::Repeated { same: false, .. }));
    store
        .reserve(
            Uuid::now_v7(),
            &items(&[("p", 8)]),
            now() + Duration::minutes(5),
            now(),
        )
        .await
        .unwrap();
    let below = store
        .adjust_stock(&change(-3, "shrink"), now())
        .await
        .unwrap();
    assert!(matches!(below, Adjusted::BelowReserved(_)), "{below:?}");
    let missing = StockChange {
        sku: sku("nope"),
        ..change(1, "x")
    };
    assert_eq!(
        store.adjust_stock(&missing, now()).await.unwrap(),
        Adjusted::NotFound
    );
}

pub(crate) async fn reservations_hold_all_or_nothing_once_per_order(store: &dyn InventoryRepo) {
    product(store, "a", 250, 5).await;
    product(store, "b", 1000, 1).await;
    let order = Uuid::now_v7();
    let later = now() + Duration::minutes(5);
    let short = store
        .reserve(order, &items(&[("a", 2), ("b", 2)]), later, now())
        .await
        .unwrap();
    assert!(matches!(&short, Reserved::Short(s) if s.len() == 1 && s[0].sku == "b"));
    assert_eq!(
        store
            .get_product(&sku("a"))
            .await
            .unwrap()
            .unwrap()
            .reserved,
        0
    );

    let other = Uuid::now_v7();
    let Reserved::Held(held) = store
        .reserve(other, &items(&[("b", 1), ("a", 2)]), later, now())
        .await
        .unwrap()
    else {
        panic!("held");
    };
    assert_eq!(held.currency_code, "EUR");
    assert_eq!(held.lines.len(), 2);
    let again = store
        .reserve(other, &items(&[("a", 2), ("b", 1)]), later, now())
        .await
        .unwrap();
    assert!(matches!(again, Reserved::Existing(_)));
    // A repeat whose units are still there finds the reservation after
    // holding them, and gives them back.
    let again = store
        .reserve(other, &items(&[("a", 2)]), later, now())
        .await
        .unwrap();
    assert!(
        matches!(again, Reserved::Existing(ref r) if r.lines.len() == 2),
        "{again:?}"
    );
    assert_eq!(
        store
            .get_product(&sku("a"))
            .await
            .unwrap()
            .unwrap()
            .reserved,
        2
    );
}

pub(crate) async fn confirm_release_and_expiry_move_the_units(store: &dyn InventoryRepo) {
    product(store, "a", 250, 5).await;
    let (kept, expiring) = (Uuid::now_v7(), Uuid::now_v7());
    let later = now() + Duration::minutes(5);
    store
        .reserve(kept, &items(&[("a", 2)]), later, now())
        .await
        .unwrap();
    store
        .reserve(
            expiring,
            &items(&[("a", 1)]),
            now() + Duration::milliseconds(1),
            now(),
        )
        .await
        .unwrap();

    let confirmed = store.confirm(kept, now()).await.unwrap().unwrap();
    assert_eq!(confirmed.status, ReservationStatus::Confirmed);
    let a = store.get_product(&sku("a")).await.unwrap().unwrap();
    assert_eq!((a.on_hand, a.reserved), (3, 1));

    let expired = store
        .expire_due(now() + Duration::seconds(1))
        .await
        .unwrap();
    assert_eq!(expired, 1);
    let late = store.confirm(expiring, now()).await.unwrap().unwrap();
    assert_eq!(late.status, ReservationStatus::Expired);
    let a = store.get_product(&sku("a")).await.unwrap().unwrap();
    assert_eq!((a.on_hand, a.reserved), (3, 0));

    let released = store.release(kept, now()).await.unwrap();
    assert_eq!(released.status, ReservationStatus::Released);
    assert_eq!(
        store.get_product(&sku("a")).await.unwrap().unwrap().on_hand,
        5
    );
    let twice = store.release(kept, now()).await.unwrap();
    assert_eq!(twice.status, ReservationStatus::Released);
    assert_eq!(
        store.get_product(&sku("a")).await.unwrap().unwrap().on_hand,
        5
    );

    let never = store.release(Uuid::now_v7(), now()).await.unwrap();
    assert_eq!(never.status, ReservationStatus::Released);
    assert!(never.lines.is_empty());
    store.ping().await.unwrap();
}

async fn price_in(store: &dyn InventoryRepo, name: &str, currency: &str) {
    store
        .put_product(
            &ProductDraft {
                sku: sku(name),
                name: name.into(),
                unit_price_cents: 100,
                currency: CurrencyCode::parse(currency).unwrap(),
                active: true,
            },
            now(),
        )
        .await
        .unwrap();
}

pub(crate) async fn a_reservation_is_in_its_products_currency_and_never_in_two(
    store: &dyn InventoryRepo,
) {
    product(store, "euro", 100, 5).await;
    product(store, "dollar", 100, 5).await;
    price_in(store, "dollar", "USD").await;
    let later = now() + Duration::minutes(5);

    // Stored as held: read back, the reservation has the currency of the
    // product as it is now.
    let order = Uuid::now_v7();
    let held = store
        .reserve(order, &items(&[("dollar", 1)]), later, now())
        .await
        .unwrap();
    assert!(matches!(&held, Reserved::Held(r) if r.currency_code == "USD"));
    let stored = store.get_reservation(order).await.unwrap().unwrap();
    assert_eq!(stored.currency_code, "USD");

    let mixed = Uuid::now_v7();
    let refused = store
        .reserve(mixed, &items(&[("euro", 1), ("dollar", 1)]), later, now())
        .await
        .unwrap();
    assert!(matches!(refused, Reserved::MixedCurrencies));
    assert!(store.get_reservation(mixed).await.unwrap().is_none());
    for (name, reserved) in [("euro", 0), ("dollar", 1)] {
        let product = store.get_product(&sku(name)).await.unwrap().unwrap();
        assert_eq!(product.reserved, reserved, "{name}: nothing more held");
    }

    // Repriced in euros: the next reservation of it is in euros.
    price_in(store, "dollar", "EUR").await;
    let next = Uuid::now_v7();
    let held = store
        .reserve(next, &items(&[("euro", 1), ("dollar", 1)]), later, now())
        .await
        .unwrap();
    assert!(matches!(&held, Reserved::Held(r) if r.currency_code == "EUR"));
    let stored = store.get_reservation(next).await.unwrap().unwrap();
    assert_eq!(stored.currency_code, "EUR");
    assert_eq!(stored.lines.len(), 2);
}

/// A batch longer than one statement's id list (`IDS_PER_STATEMENT`),
/// with a reservation past its expiry that no sweep has seen, one of two
/// lines, and an id never reserved: each is confirmed (or expired) as
/// `confirm` would, and the units move once.
pub(crate) async fn a_long_batch_confirms_each_reservation_with_its_lines(
    store: &dyn InventoryRepo,
) {
    product(store, "a", 250, 100).await;
    product(store, "b", 100, 100).await;
    let later = now() + Duration::minutes(5);
    let count = shop_storage::IDS_PER_STATEMENT + 8;
    let mut asked: Vec<Uuid> = Vec::new();
    for n in 0..count {
        let order = Uuid::now_v7();
        let lines: &[(&str, i64)] = if n % 2 == 0 {
            &[("a", 1), ("b", 2)]
        } else {
            &[("a", 1)]
        };
        store
            .reserve(order, &items(lines), later, now())
            .await
            .unwrap();
        asked.push(order);
    }
    let lapsed = Uuid::now_v7();
    store
        .reserve(
            lapsed,
            &items(&[("b", 5)]),
            now() + Duration::milliseconds(1),
            now(),
        )
        .await
        .unwrap();
    asked.insert(3, lapsed);
    asked.insert(count / 2, Uuid::now_v7());

    let after = store
        .confirm_all(&asked, now() + Duration::seconds(1))
        .await
        .unwrap();
    let mut expected: Vec<Uuid> = asked.clone();
    expected.remove(count / 2);
    assert_eq!(
        after.iter().map(|r| r.order_id).collect::<Vec<_>>(),
        expected,
        "in the order asked, the unknown id left out"
    );
    for r in &after {
        if r.order_id == lapsed {
            assert_eq!(r.status, ReservationStatus::Expired);
            assert_eq!(r.lines.len(), 1);
        } else {
            assert_eq!(r.status, ReservationStatus::Confirmed, "{r:?}");
            let skus: Vec<_> = r
                .lines
                .iter()
                .map(|l| (l.sku.as_str(), l.quantity))
                .collect();
            assert!(
                skus == [("a", 1), ("b", 2)] || skus == [("a", 1)],
                "its own lines: {skus:?}"
            );
        }
    }
    let a = store.get_product(&sku("a")).await.unwrap().unwrap();
    let b = store.get_product(&sku("b")).await.unwrap().unwrap();
    let b_taken = 2 * count.div_ceil(2) as i64;
    assert_eq!(
        (a.on_hand, a.reserved, b.on_hand, b.reserved),
        (100 - count as i64, 0, 100 - b_taken, 0),
        "confirmed units taken, the lapsed ones back"
    );
}

shop_testkit::repo_suite!(
    store;
    products_are_put_read_and_listed_by_sku,
    stock_changes_apply_once_and_keep_a_floor,
    reservations_hold_all_or_nothing_once_per_order,
    confirm_release_and_expiry_move_the_units,
    a_reservation_is_in_its_products_currency_and_never_in_two,
    a_long_batch_confirms_each_reservation_with_its_lines,
);

/// Orders holding one product in the same group-commit batch, each in a
/// savepoint of its own, leave no MultiXact on the product's row versions:
/// their lines' product is checked at commit (deferred), so no turn locks
/// the row that the next turn's hold updates. Read from the page itself
/// (pageinspect): a version whose `xmax` is a MultiXact has
/// `HEAP_XMAX_IS_MULTI` (0x1000) in its infomask.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_of_one_product_in_one_batch_record_no_multixact_on_postgres() {
    const ORDERS: usize = 32;
    let (store, url, _dir) = store_and_url(Backend::Postgres).await;
    product(store.as_ref(), "a", 100, 1000).await;
    let holds = (0..ORDERS).map(|_| {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            store
                .reserve(
                    Uuid::now_v7(),
                    &items(&[("a", 1)]),
                    now() + Duration::minutes(5),
                    now(),
                )
                .await
        })
    });
    for held in futures_util::future::join_all(holds).await {
        assert!(matches!(held.unwrap().unwrap(), Reserved::Held(_)));
    }

    let admin = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::query("CREATE EXTENSION IF NOT EXISTS pageinspect")
        .execute(&admin)
        .await
        .unwrap();
    let (versions, multi): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE t_infomask & 4096 <> 0) \
         FROM heap_page_items(get_raw_page('products', 0)) WHERE t_xmin IS NOT NULL",
    )
    .fetch_one(&admin)
    .await
    .unwrap();
    // Each hold left the version it updated on the page (not yet pruned),
    // so the count below looks at every one of them.
    assert!(versions > ORDERS as i64, "{versions} versions of the row");
    assert_eq!(multi, 0, "versions with a MultiXact, of {versions}");
}
