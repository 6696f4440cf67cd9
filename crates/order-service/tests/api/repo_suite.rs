//! One repository suite, run against SQLite and PostgreSQL: every check is
//! written once and instantiated per backend by the test kit's
//! `repo_suite!`.

use std::sync::Arc;

use chrono::{DateTime, SubsecRound as _, Utc};
use order_service::{
    domain::{
        CurrencyCode, MAX_ITEMS, NewOrder, OrderFilter, OrderItem, OrderStatus, PlacedOrder,
        RequestId, StockAction, fingerprint,
    },
    repo::{ConnectOptions, OrderRepo, connect},
};
use uuid::Uuid;

use shop_testkit::Backend;

/// A store on a fresh, migrated database on `backend`.
async fn store(backend: Backend) -> (Arc<dyn OrderRepo>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = backend.database_url("orders", dir.path()).await;
    let store = connect(&url, ConnectOptions::new(5, None))
        .await
        .expect("connect and migrate");
    (store, dir)
}

fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

fn new_order(user_id: Uuid, request_id: &str, quantity: i32) -> NewOrder {
    let items = vec![
        OrderItem {
            product_id: "sku-1".into(),
            quantity,
            unit_price_cents: 199,
        },
        OrderItem {
            product_id: "sku-2".into(),
            quantity: 1,
            unit_price_cents: 1,
        },
    ];
    let currency = CurrencyCode::parse("USD").unwrap();
    NewOrder {
        id: Uuid::now_v7(),
        user_id,
        request_id: RequestId::parse(request_id).unwrap(),
        request_hash: fingerprint(user_id, Some(currency), &items),
        total_cents: i64::from(quantity) * 199 + 1,
        items,
        currency_code: currency,
        now: now(),
    }
}

fn created(placed: PlacedOrder) -> order_service::domain::Order {
    match placed {
        PlacedOrder::Created(order) => order,
        other => panic!("expected a new order, got {other:?}"),
    }
}

pub(crate) async fn places_and_reads_orders_with_their_items(store: &dyn OrderRepo) {
    let user = Uuid::now_v7();
    let new = new_order(user, "r1", 3);
    let order = created(store.place_order(&new).await.unwrap());
    assert_eq!(order.id, new.id);
    assert_eq!(order.status, OrderStatus::Pending);
    assert_eq!(order.total_cents, 598);
    assert_eq!(order.created_at, new.now);
    let read = store.get_order(new.id).await.unwrap().unwrap();
    assert_eq!(read, order);
    assert_eq!(read.items, new.items, "items keep their order");
    assert!(store.get_order(Uuid::now_v7()).await.unwrap().is_none());
}

/// The largest order there may be: every item stored, in its line. (On
/// PostgreSQL the order and its items are one statement whose parameters
/// are numbered per item.)
pub(crate) async fn an_order_of_the_most_items_keeps_every_item_in_line(store: &dyn OrderRepo) {
    let user = Uuid::now_v7();
    let mut new = new_order(user, "big", 1);
    new.items = (0..MAX_ITEMS)
        .map(|i| OrderItem {
            product_id: format!("sku-{i:03}"),
            quantity: i as i32 + 1,
            unit_price_cents: 100 + i as i64,
        })
        .collect();
    new.total_cents = new
        .items
        .iter()
        .map(|i| i64::from(i.quantity) * i.unit_price_cents)
        .sum();
    new.request_hash = fingerprint(user, Some(new.currency_code), &new.items);
    let order = created(store.place_order(&new).await.unwrap());
    assert_eq!(order.items, new.items);
    let read = store.get_order(new.id).await.unwrap().unwrap();
    assert_eq!(read.items, new.items, "every item, in its line");
    assert_eq!(read.total_cents, new.total_cents);
}

pub(crate) async fn a_repeated_request_id_finds_the_first_order(store: &dyn OrderRepo) {
    let user = Uuid::now_v7();
    let first = created(store.place_order(&new_order(user, "dup", 1)).await.unwrap());
    let repeat = new_order(user, "dup", 2);
    match store.place_order(&repeat).await.unwrap() {
        PlacedOrder::Existing {
            order,
            request_hash,
        } => {
            assert_eq!(order, first);
            assert_ne!(request_hash, repeat.request_hash, "a different payload");
        }
        other => panic!("expected the existing order, got {other:?}"),
    }
    let (found, hash) = store
        .find_by_request_id(user, "dup")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found, first);
    assert_eq!(hash, new_order(user, "dup", 1).request_hash);

    // Request ids are per user.
    let other_user = created(
        store
            .place_order(&new_order(Uuid::now_v7(), "dup", 1))
            .await
            .unwrap(),
    );
    assert_ne!(other_user.id, first.id);
}

pub(crate) async fn concurrent_places_with_one_request_id_create_one_order(store: &dyn OrderRepo) {
    let user = Uuid::now_v7();
    let attempts: Vec<_> = (0..8).map(|_| new_order(user, "race", 1)).collect();
    // Polled together, so the inserts really race.
    let results =
        futures_util::future::join_all(attempts.iter().map(|o| store.place_order(o))).await;
    let created = results
        .iter()
        .filter(|r| matches!(r, Ok(PlacedOrder::Created(_))))
        .count();
    assert_eq!(created, 1, "{results:?}");
    let ids: std::collections::HashSet<_> = results
        .into_iter()
        .map(|r| match r.unwrap() {
            PlacedOrder::Created(o) | PlacedOrder::Existing { order: o, .. } => o.id,
        })
        .collect();
    assert_eq!(ids.len(), 1);
    let filter = OrderFilter {
        user_id: user,
        status: None,
    };
    assert_eq!(store.list_orders(&filter, None, 10).await.unwrap().len(), 1);
}

pub(crate) async fn lists_newest_first_with_status_and_cursor(store: &dyn OrderRepo) {
    let user = Uuid::now_v7();
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(
            created(
                store
                    .place_order(&new_order(user, &format!("l{i}"), 1))
                    .await
                    .unwrap(),
            )
            .id,
        );
    }
    store
        .place_order(&new_order(Uuid::now_v7(), "noise", 1))
        .await
        .unwrap();
    store
        .update_status(
            ids[1],
            OrderStatus::Pending,
            OrderStatus::Cancelled,
            Some("why"),
            None,
            now(),
        )
        .await
        .unwrap()
        .unwrap();

    let all = OrderFilter {
        user_id: user,
        status: None,
    };
    let page1 = store.list_orders(&all, None, 2).await.unwrap();
    assert_eq!(
        page1.iter().map(|o| o.id).collect::<Vec<_>>(),
        [ids[3], ids[2]]
    );
    let page2 = store.list_orders(&all, Some(ids[2]), 2).await.unwrap();
    assert_eq!(
        page2.iter().map(|o| o.id).collect::<Vec<_>>(),
        [ids[1], ids[0]]
    );
    assert!(
        page2.iter().all(|o| o.items.len() == 2),
        "items come with every order"
    );

    let cancelled = OrderFilter {
        user_id: user,
        status: Some(OrderStatus::Cancelled),
    };
    let only = store.list_orders(&cancelled, None, 10).await.unwrap();
    assert_eq!(only.len(), 1);
    assert_eq!(only[0].id, ids[1]);
}

pub(crate) async fn status_changes_are_compare_and_set(store: &dyn OrderRepo) {
    let order = created(
        store
            .place_order(&new_order(Uuid::now_v7(), "cas", 1))
            .await
            .unwrap(),
    );
    let later = now() + chrono::Duration::seconds(1);
    let confirmed = store
        .update_status(
            order.id,
            OrderStatus::Pending,
            OrderStatus::Confirmed,
            None,
            None,
            later,
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(confirmed.status, OrderStatus::Confirmed);
    assert_eq!(confirmed.updated_at, later);
    assert_eq!(confirmed.items, order.items);
    assert!(
        store
            .update_status(
                order.id,
                OrderStatus::Pending,
                OrderStatus::Cancelled,
                None,
                None,
                later
            )
            .await
            .unwrap()
            .is_none(),
        "the order is no longer PENDING"
    );
    assert!(
        store
            .update_status(
                Uuid::now_v7(),
                OrderStatus::Pending,
                OrderStatus::Confirmed,
                None,
                None,
                later
            )
            .await
            .unwrap()
            .is_none()
    );
    store.ping().await.unwrap();
}

pub(crate) async fn stock_steps_are_owed_with_the_change_that_owes_them(store: &dyn OrderRepo) {
    let order = created(
        store
            .place_order(&new_order(Uuid::now_v7(), "owed", 1))
            .await
            .unwrap(),
    );
    let steps = |due: Vec<order_service::domain::StockStep>| {
        due.into_iter()
            .filter(|s| s.order_id == order.id)
            .map(|s| (s.action, s.attempts))
            .collect::<Vec<_>>()
    };
    // A stored order owes its confirmation.
    let due = store.due_stock_steps(now(), 100).await.unwrap();
    assert_eq!(steps(due), [(StockAction::Confirm, 0)]);
    // A failed attempt is counted and put off.
    let later = now() + chrono::Duration::seconds(60);
    store
        .stock_steps_failed(StockAction::Confirm, &[(order.id, later)])
        .await
        .unwrap();
    assert!(steps(store.due_stock_steps(now(), 100).await.unwrap()).is_empty());
    assert_eq!(
        steps(store.due_stock_steps(later, 100).await.unwrap()),
        [(StockAction::Confirm, 1)]
    );
    store
        .stock_steps_done(&[order.id], StockAction::Confirm)
        .await
        .unwrap();
    assert!(steps(store.due_stock_steps(later, 100).await.unwrap()).is_empty());
    // A cancellation owes the release, in the same transaction.
    store
        .update_status(
            order.id,
            OrderStatus::Pending,
            OrderStatus::Cancelled,
            Some("changed my mind"),
            Some(StockAction::Release),
            now(),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        steps(store.due_stock_steps(later, 100).await.unwrap()),
        [(StockAction::Release, 0)]
    );
    // Owing it again does not add a second one.
    store
        .owe_stock_step(order.id, StockAction::Release, now())
        .await
        .unwrap();
    assert_eq!(
        steps(store.due_stock_steps(later, 100).await.unwrap()).len(),
        1
    );
}

/// More done steps than one statement's id list takes
/// (`IDS_PER_STATEMENT`): each is removed, and nothing else is (another
/// order's step, or another action of one of them).
pub(crate) async fn a_long_list_of_done_steps_removes_each_and_no_other(store: &dyn OrderRepo) {
    let user = Uuid::now_v7();
    let mut placed = Vec::new();
    for n in 0..shop_storage::IDS_PER_STATEMENT + 8 {
        let order = created(
            store
                .place_order(&new_order(user, &format!("many-{n}"), 1))
                .await
                .unwrap(),
        );
        placed.push(order.id);
    }
    let kept = placed.pop().unwrap();
    store
        .owe_stock_step(placed[0], StockAction::Release, now())
        .await
        .unwrap();
    store
        .stock_steps_done(&placed, StockAction::Confirm)
        .await
        .unwrap();
    let mut left: Vec<_> = store
        .due_stock_steps(now(), 1000)
        .await
        .unwrap()
        .into_iter()
        .filter(|s| s.order_id == kept || placed.contains(&s.order_id))
        .map(|s| (s.order_id, s.action))
        .collect();
    left.sort_by_key(|(id, _)| *id);
    assert_eq!(
        left,
        [
            (placed[0], StockAction::Release),
            (kept, StockAction::Confirm)
        ]
    );
}

shop_testkit::repo_suite!(
    store;
    stock_steps_are_owed_with_the_change_that_owes_them,
    places_and_reads_orders_with_their_items,
    an_order_of_the_most_items_keeps_every_item_in_line,
    a_repeated_request_id_finds_the_first_order,
    concurrent_places_with_one_request_id_create_one_order,
    lists_newest_first_with_status_and_cursor,
    status_changes_are_compare_and_set,
    a_long_list_of_done_steps_removes_each_and_no_other,
);
