//! OrderService over gRPC: placing orders (validation, catalogue prices
//! and stock, the user check, idempotency), reading, listing and
//! cancelling them, and who may do what.

use chrono::Utc;
use order_service::{domain::OrderStatus as Status, repo};
use shop_proto::{
    inventory::v1::{GetProductRequest, Product, inventory_service_client::InventoryServiceClient},
    order::v1::{
        CancelOrderRequest, CreateOrderRequest, GetOrderRequest, ListOrdersRequest, OrderItem,
        OrderStatus,
    },
    user::v1::{UpdateUserRequest, UserStatus},
};
use tonic::{Code, Request};
use tonic_types::StatusExt as _;

use crate::helpers::{Backend, Stack, authed, order_request, violated_fields};

#[tokio::test]
async fn an_order_is_placed_with_a_server_computed_total() {
    let stack = Stack::spawn().await;
    let (user, token) = stack.customer("ada").await;
    let mut request = order_request(&user.id, "r-1");
    request.currency_code = "eur".into();
    let order = stack
        .orders
        .clone()
        .create_order(authed(request.clone(), &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(order.user_id, user.id);
    assert_eq!(order.total_cents, 1500);
    assert_eq!(order.currency_code, "EUR");
    assert_eq!(order.status, OrderStatus::Pending as i32);
    assert_eq!(order.items, request.items);
    assert_eq!(
        uuid::Uuid::parse_str(&order.id).unwrap().get_version_num(),
        7
    );
}

#[tokio::test]
async fn every_invalid_field_is_reported_with_its_item_index() {
    let stack = Stack::spawn().await;
    let (user, token) = stack.customer("bad").await;
    let request = CreateOrderRequest {
        user_id: user.id.clone(),
        items: vec![
            OrderItem {
                product_id: "ok".into(),
                quantity: 1,
                unit_price_cents: 1,
            },
            OrderItem {
                product_id: String::new(),
                quantity: 1001,
                unit_price_cents: -1,
            },
        ],
        currency_code: "XYZ".into(),
        request_id: "has space".into(),
    };
    let status = stack
        .orders
        .clone()
        .create_order(authed(request, &token))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        violated_fields(&status),
        [
            "items[1].product_id",
            "items[1].quantity",
            "items[1].unit_price_cents",
            "currency_code",
            "request_id"
        ]
    );

    let empty = stack
        .orders
        .clone()
        .create_order(authed(
            CreateOrderRequest {
                user_id: "not-a-uuid".into(),
                items: vec![],
                currency_code: "USD".into(),
                request_id: String::new(),
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&empty), ["user_id", "items"]);
}

/// The product `sku` as inventory-service has it now.
async fn product(stack: &Stack, token: &str, sku: &str) -> Product {
    InventoryServiceClient::new(stack.inventory_service.channel())
        .get_product(authed(GetProductRequest { sku: sku.into() }, token))
        .await
        .unwrap()
        .into_inner()
}

/// The units of `sku` that can still be ordered.
async fn available(stack: &Stack, token: &str, sku: &str) -> i64 {
    product(stack, token, sku).await.available
}

#[tokio::test]
async fn prices_and_currency_come_from_the_catalogue() {
    let stack = Stack::spawn().await;
    let (user, token) = stack.customer("thrifty").await;
    let mut request = order_request(&user.id, "catalogue");
    // No prices and no currency: the catalogue's.
    for item in &mut request.items {
        item.unit_price_cents = 0;
    }
    request.currency_code.clear();
    let before = available(&stack, &token, "sku-apple").await;
    let order = stack
        .orders
        .clone()
        .create_order(authed(request, &token))
        .await
        .unwrap()
        .into_inner();
    let prices: Vec<_> = order.items.iter().map(|i| i.unit_price_cents).collect();
    assert_eq!(prices, [250, 1000]);
    assert_eq!(
        (order.total_cents, order.currency_code.as_str()),
        (1500, "EUR")
    );
    assert_eq!(available(&stack, &token, "sku-apple").await, before - 2);
}

#[tokio::test]
async fn a_price_or_currency_that_is_not_the_catalogues_is_refused_and_holds_nothing() {
    let stack = Stack::spawn().await;
    let (user, token) = stack.customer("bargainer").await;
    let before = available(&stack, &token, "sku-apple").await;

    let mut cheaper = order_request(&user.id, "cheaper");
    cheaper.items[0].unit_price_cents = 1;
    let mut dollars = order_request(&user.id, "dollars");
    dollars.currency_code = "USD".into();
    for request in [cheaper, dollars] {
        let status = stack
            .orders
            .clone()
            .create_order(authed(request, &token))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        assert!(status.message().starts_with("price changed"), "{status:?}");
    }
    let list = stack.list_own_orders(&token).await;
    assert!(list.orders.is_empty(), "no order was stored");
    assert_eq!(
        available(&stack, &token, "sku-apple").await,
        before,
        "the reservations were released"
    );
}

#[tokio::test]
async fn an_unknown_product_is_a_failed_precondition_naming_it() {
    let stack = Stack::spawn().await;
    let (user, token) = stack.customer("dreamer").await;
    let mut request = order_request(&user.id, "");
    request.items[1].product_id = "sku-unicorn".into();
    let status = stack
        .orders
        .clone()
        .create_order(authed(request, &token))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    let failure = status
        .get_details_precondition_failure()
        .expect("a PreconditionFailure");
    let named: Vec<_> = failure
        .violations
        .iter()
        .map(|v| v.subject.as_str())
        .collect();
    assert_eq!(named, ["sku-unicorn"]);
}

/// `n` customers race to order the last units of sku-rare (5 in stock),
/// one unit each.
async fn race_for_the_last_units(backend: Backend) {
    let stack = Stack::spawn_with(backend, &[], &[]).await;
    let n = 12;
    let mut customers = Vec::new();
    for i in 0..n {
        customers.push(stack.customer(&format!("racer{i}")).await);
    }
    let placing = customers.iter().map(|(user, token)| {
        let mut orders = stack.orders.clone();
        let mut request = order_request(&user.id, "last-unit");
        request.items = vec![OrderItem {
            product_id: "sku-rare".into(),
            quantity: 1,
            unit_price_cents: 0,
        }];
        let request = authed(request, token);
        async move { orders.create_order(request).await }
    });
    let answers = futures_util::future::join_all(placing).await;
    let placed = answers.iter().filter(|a| a.is_ok()).count();
    let short = answers
        .iter()
        .filter(|a| matches!(a, Err(s) if s.code() == Code::FailedPrecondition))
        .count();
    assert_eq!((placed, short), (5, n - 5), "{answers:?}");
    assert_eq!(available(&stack, &customers[0].1, "sku-rare").await, 0);
}

#[tokio::test]
async fn concurrent_orders_for_the_last_units_place_exactly_as_many_as_there_are() {
    race_for_the_last_units(Backend::Sqlite).await;
}

#[tokio::test]
async fn concurrent_orders_for_the_last_units_place_exactly_as_many_as_there_are_on_postgres() {
    race_for_the_last_units(Backend::Postgres).await;
}

/// sku-apple's (on_hand, reserved).
async fn apples(stack: &Stack, token: &str) -> (i64, i64) {
    let apples = product(stack, token, "sku-apple").await;
    (apples.on_hand, apples.reserved)
}

/// Waits up to 30 s for sku-apple's (on_hand, reserved) to be `want`:
/// the confirmations owed have all gone through.
async fn until_apples_are(stack: &Stack, token: &str, want: (i64, i64)) {
    let started = std::time::Instant::now();
    while apples(stack, token).await != want {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "not all confirmed: {:?}, want {want:?}",
            apples(stack, token).await
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Places `n` orders for `user_id` at once (request ids `{prefix}-{i}`),
/// each answered PENDING.
async fn place_at_once(stack: &Stack, user_id: &str, token: &str, prefix: &str, n: i64) {
    let placing = (0..n).map(|i| {
        let mut orders = stack.orders.clone();
        let request = authed(order_request(user_id, &format!("{prefix}-{i}")), token);
        async move { orders.create_order(request).await }
    });
    for answer in futures_util::future::join_all(placing).await {
        assert_eq!(
            answer.unwrap().into_inner().status,
            OrderStatus::Pending as i32
        );
    }
}

/// Orders placed together have their reservations confirmed after their
/// answers: inventory-service holds each ConfirmReservations call for a
/// second, and the orders placed meanwhile wait in the queue. (That they
/// share calls is counted by the e2e suite, where each service has its
/// own metrics.)
async fn placed_orders_are_confirmed_after_their_answers(backend: Backend) {
    let stack = Stack::spawn_full(
        backend,
        &[],
        &["--fault-delay", "ConfirmReservations=1s"],
        &[],
    )
    .await;
    let (user, token) = stack.customer("bulk").await;
    let (on_hand, reserved) = apples(&stack, &token).await;
    let n = 20;
    place_at_once(&stack, &user.id, &token, "bulk", n).await;
    // Each order takes 2 apples. The last orders' confirmation is still
    // held at inventory-service: the answers did not wait for it.
    let (_, held) = apples(&stack, &token).await;
    assert!(held > reserved, "every order confirmed before its answer");
    until_apples_are(&stack, &token, (on_hand - 2 * n, reserved)).await;
}

#[tokio::test]
async fn placed_orders_are_confirmed_off_the_request_path() {
    placed_orders_are_confirmed_after_their_answers(Backend::Sqlite).await;
}

#[tokio::test]
async fn placed_orders_are_confirmed_off_the_request_path_on_postgres() {
    placed_orders_are_confirmed_after_their_answers(Backend::Postgres).await;
}

/// Stopping order-service sends the confirmations still queued before it
/// exits: inventory-service holds each ConfirmReservations call for half a
/// second, so when the stop comes most of the orders just placed are still
/// queued behind the first call, and the outbox worker is too slow to be
/// the one that confirms them.
#[tokio::test]
async fn stopping_confirms_the_orders_still_queued() {
    let mut stack = Stack::spawn_full(
        Backend::Sqlite,
        &[],
        &["--fault-delay", "ConfirmReservations=500ms"],
        &["--stock-outbox-interval", "1h"],
    )
    .await;
    let (user, token) = stack.customer("leaving").await;
    let (on_hand, reserved) = apples(&stack, &token).await;
    let n = 20;
    place_at_once(&stack, &user.id, &token, "leaving", n).await;
    let (_, held) = apples(&stack, &token).await;
    assert!(held > reserved, "every order confirmed before the stop");
    stack.order_service.stop().await.unwrap();
    assert_eq!(apples(&stack, &token).await, (on_hand - 2 * n, reserved));
}

/// A confirmation whose call fails stays in the outbox, and the outbox
/// worker confirms it later: inventory-service refuses the first three of
/// every four ConfirmReservations calls, and order-service does not retry
/// a call by itself.
#[tokio::test]
async fn a_failed_confirmation_is_confirmed_later_from_the_outbox() {
    let stack = Stack::spawn_full(
        Backend::Sqlite,
        &[],
        &["--fault-error", "ConfirmReservations=unavailable:3/4"],
        &[
            "--stock-outbox-interval",
            "100ms",
            "--client-retry-max-attempts",
            "1",
        ],
    )
    .await;
    let (user, token) = stack.customer("unlucky").await;
    let (on_hand, reserved) = apples(&stack, &token).await;
    let order = stack
        .orders
        .clone()
        .create_order(authed(order_request(&user.id, "unlucky-1"), &token))
        .await
        .unwrap()
        .into_inner();
    until_apples_are(&stack, &token, (on_hand - 2, reserved)).await;
    let stored = stack
        .orders
        .clone()
        .get_order(authed(GetOrderRequest { order_id: order.id }, &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stored.status, OrderStatus::Pending as i32, "not cancelled");
}

#[tokio::test]
async fn cancelling_an_order_gives_its_stock_back() {
    let stack = Stack::spawn().await;
    let (user, token) = stack.customer("regretful").await;
    let before = available(&stack, &token, "sku-pear").await;
    let order = stack
        .orders
        .clone()
        .create_order(authed(order_request(&user.id, "regret"), &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(available(&stack, &token, "sku-pear").await, before - 1);
    stack
        .orders
        .clone()
        .cancel_order(authed(
            CancelOrderRequest {
                order_id: order.id,
                reason: "changed my mind".into(),
            },
            &token,
        ))
        .await
        .unwrap();
    assert_eq!(available(&stack, &token, "sku-pear").await, before);
}

#[tokio::test]
async fn ordering_for_someone_else_is_denied_unless_admin() {
    let stack = Stack::spawn().await;
    let (alice, _) = stack.customer("alice").await;
    let (_, bob_token) = stack.customer("bob").await;
    let status = stack
        .orders
        .clone()
        .create_order(authed(order_request(&alice.id, "x"), &bob_token))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);

    let admin = stack.admin_token().await;
    let order = stack
        .orders
        .clone()
        .create_order(authed(order_request(&alice.id, "x"), &admin))
        .await
        .expect("admins order for anyone; user-service sees the admin's token")
        .into_inner();
    assert_eq!(order.user_id, alice.id);

    let anonymous = stack
        .orders
        .clone()
        .create_order(Request::new(order_request(&alice.id, "y")))
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn only_active_users_can_order() {
    let max_age = std::time::Duration::from_millis(500);
    let stack =
        Stack::spawn_with(Backend::Sqlite, &[], &["--user-status-cache-max-age=500ms"]).await;
    let (user, token) = stack.customer("suspendme").await;
    let admin = stack.admin_token().await;
    // Active: ordering works, and order-service now trusts that answer for
    // up to the max age.
    stack
        .orders
        .clone()
        .create_order(authed(order_request(&user.id, "before"), &token))
        .await
        .unwrap();
    stack
        .users
        .clone()
        .update_user(authed(
            UpdateUserRequest {
                user_id: user.id.clone(),
                status: Some(UserStatus::Suspended as i32),
                ..Default::default()
            },
            &admin,
        ))
        .await
        .unwrap();
    // Suspended: refused once the cached answer is older than its bound
    // (the answer was read before the suspension).
    tokio::time::sleep(max_age).await;
    let status = stack
        .orders
        .clone()
        .create_order(authed(order_request(&user.id, "s"), &token))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);

    // An admin ordering for a user id that does not exist.
    let ghost = uuid::Uuid::now_v7().to_string();
    let status = stack
        .orders
        .clone()
        .create_order(authed(order_request(&ghost, "g"), &admin))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
}

#[tokio::test]
async fn a_repeated_request_id_returns_the_first_order() {
    let stack = Stack::spawn().await;
    let (user, token) = stack.customer("retrier").await;
    let mut orders = stack.orders.clone();
    let first = orders
        .create_order(authed(order_request(&user.id, "same-key"), &token))
        .await
        .unwrap()
        .into_inner();
    let again = orders
        .create_order(authed(order_request(&user.id, "same-key"), &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, first, "same id, same response");

    let mut different = order_request(&user.id, "same-key");
    different.items[0].quantity = 3;
    let reused = orders
        .create_order(authed(different, &token))
        .await
        .unwrap_err();
    assert_eq!(reused.code(), Code::AlreadyExists);

    let list = orders
        .list_orders(authed(ListOrdersRequest::default(), &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.orders.len(), 1, "never a second order");
}

async fn concurrent_repeats_create_one_order(stack: &Stack) {
    let (user, token) = stack.customer("racer").await;
    let attempts = (0..10).map(|_| {
        let mut orders = stack.orders.clone();
        let request = authed(order_request(&user.id, "race-key"), &token);
        tokio::spawn(async move { orders.create_order(request).await.map(|r| r.into_inner()) })
    });
    let results: Vec<_> = futures_util::future::join_all(attempts)
        .await
        .into_iter()
        .map(|joined| joined.unwrap())
        .collect();
    let ids: std::collections::HashSet<_> = results
        .into_iter()
        .map(|r| r.expect("every repeat succeeds").id)
        .collect();
    assert_eq!(ids.len(), 1, "all repeats got the same order");
    let list = stack.list_own_orders(&token).await;
    assert_eq!(list.orders.len(), 1);
}

#[tokio::test]
async fn concurrent_repeats_create_one_order_on_sqlite() {
    concurrent_repeats_create_one_order(&Stack::spawn().await).await;
}

#[tokio::test]
async fn concurrent_repeats_create_one_order_on_postgres() {
    let stack = Stack::spawn_with(Backend::Postgres, &[], &[]).await;
    concurrent_repeats_create_one_order(&stack).await;
}

#[tokio::test]
async fn without_a_request_id_each_call_is_a_new_order() {
    let stack = Stack::spawn().await;
    let (user, token) = stack.customer("noid").await;
    let mut orders = stack.orders.clone();
    let a = orders
        .create_order(authed(order_request(&user.id, ""), &token))
        .await
        .unwrap()
        .into_inner();
    let b = orders
        .create_order(authed(order_request(&user.id, ""), &token))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(a.id, b.id);
}

#[tokio::test]
async fn other_users_orders_are_not_found() {
    let stack = Stack::spawn().await;
    let (alice, alice_token) = stack.customer("alice").await;
    let (bob, bob_token) = stack.customer("bob").await;
    let order = stack
        .orders
        .clone()
        .create_order(authed(order_request(&alice.id, "a"), &alice_token))
        .await
        .unwrap()
        .into_inner();
    let mut orders = stack.orders.clone();

    let get = orders
        .get_order(authed(
            GetOrderRequest {
                order_id: order.id.clone(),
            },
            &bob_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(get.code(), Code::NotFound);
    let cancel = orders
        .cancel_order(authed(
            CancelOrderRequest {
                order_id: order.id.clone(),
                reason: String::new(),
            },
            &bob_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(cancel.code(), Code::NotFound);
    let list = orders
        .list_orders(authed(
            ListOrdersRequest {
                user_id: alice.id.clone(),
                ..Default::default()
            },
            &bob_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(list.code(), Code::NotFound);

    // Bob's own (empty) list is fine; the owner and admins see the order.
    let own = orders
        .list_orders(authed(
            ListOrdersRequest {
                user_id: bob.id.clone(),
                ..Default::default()
            },
            &bob_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(own.orders.is_empty());
    let admin = stack.admin_token().await;
    for token in [&alice_token, &admin] {
        let got = orders
            .get_order(authed(
                GetOrderRequest {
                    order_id: order.id.clone(),
                },
                token,
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got, order);
    }
    let bad = orders
        .get_order(authed(
            GetOrderRequest {
                order_id: "x".into(),
            },
            &alice_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
}

async fn lists_pages_newest_first(stack: &Stack) {
    let (user, token) = stack.customer("lister").await;
    let mut created = Vec::new();
    for i in 0..5 {
        created.push(
            stack
                .orders
                .clone()
                .create_order(authed(order_request(&user.id, &format!("k{i}")), &token))
                .await
                .unwrap()
                .into_inner()
                .id,
        );
    }
    created.reverse();
    let mut seen = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = stack
            .orders
            .clone()
            .list_orders(authed(
                ListOrdersRequest {
                    page_size: 2,
                    page_token: page_token.clone(),
                    ..Default::default()
                },
                &token,
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(page.orders.len() <= 2);
        seen.extend(page.orders.into_iter().map(|o| o.id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(seen, created, "newest first, each once");
}

#[tokio::test]
async fn list_orders_pages_newest_first() {
    lists_pages_newest_first(&Stack::spawn().await).await;
}

#[tokio::test]
async fn list_orders_pages_newest_first_on_postgres() {
    let stack = Stack::spawn_with(Backend::Postgres, &[], &[]).await;
    lists_pages_newest_first(&stack).await;
}

#[tokio::test]
async fn list_orders_filters_by_status_and_refuses_foreign_page_tokens() {
    let stack = Stack::spawn().await;
    let (alice, alice_token) = stack.customer("alice").await;
    let (bob, bob_token) = stack.customer("bob").await;
    let mut orders = stack.orders.clone();
    for (user, token) in [(&alice, &alice_token), (&bob, &bob_token)] {
        for i in 0..3 {
            orders
                .create_order(authed(order_request(&user.id, &format!("{i}")), token))
                .await
                .unwrap();
        }
    }
    let first = orders
        .list_orders(authed(ListOrdersRequest::default(), &alice_token))
        .await
        .unwrap()
        .into_inner();
    orders
        .cancel_order(authed(
            CancelOrderRequest {
                order_id: first.orders[0].id.clone(),
                reason: "changed my mind".into(),
            },
            &alice_token,
        ))
        .await
        .unwrap();

    let cancelled = orders
        .list_orders(authed(
            ListOrdersRequest {
                status: OrderStatus::Cancelled as i32,
                ..Default::default()
            },
            &alice_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cancelled.orders.len(), 1);
    let pending = orders
        .list_orders(authed(
            ListOrdersRequest {
                status: OrderStatus::Pending as i32,
                ..Default::default()
            },
            &alice_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pending.orders.len(), 2);

    // Alice's page token is worthless for Bob's list, and garbage is refused.
    let alice_page = orders
        .list_orders(authed(
            ListOrdersRequest {
                page_size: 1,
                ..Default::default()
            },
            &alice_token,
        ))
        .await
        .unwrap()
        .into_inner();
    for page_token in [alice_page.next_page_token.clone(), "garbage!".into()] {
        let status = orders
            .list_orders(authed(
                ListOrdersRequest {
                    user_id: bob.id.clone(),
                    page_size: 1,
                    page_token,
                    ..Default::default()
                },
                &bob_token,
            ))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(violated_fields(&status), ["page_token"]);
    }
}

#[tokio::test]
async fn cancel_follows_the_state_machine_and_is_idempotent() {
    let stack = Stack::spawn().await;
    let (user, token) = stack.customer("canceller").await;
    let mut orders = stack.orders.clone();
    let order = orders
        .create_order(authed(order_request(&user.id, "c1"), &token))
        .await
        .unwrap()
        .into_inner();
    let cancel = |reason: &str| {
        authed(
            CancelOrderRequest {
                order_id: order.id.clone(),
                reason: reason.into(),
            },
            &token,
        )
    };
    let too_long = orders
        .cancel_order(cancel(&"x".repeat(501)))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&too_long), ["reason"]);

    let cancelled = orders
        .cancel_order(cancel("no longer needed"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cancelled.status, OrderStatus::Cancelled as i32);
    let again = orders.cancel_order(cancel("")).await.unwrap().into_inner();
    assert_eq!(
        again, cancelled,
        "a retried cancel returns the cancelled order"
    );

    // A shipped order cannot be cancelled. Nothing in the API ships orders
    // yet (ProcessOrders), so move one through the store directly.
    let shipped = orders
        .create_order(authed(order_request(&user.id, "c2"), &token))
        .await
        .unwrap()
        .into_inner();
    let store = repo::connect(&stack.orders_db, repo::ConnectOptions::new(1, None))
        .await
        .unwrap();
    let id = uuid::Uuid::parse_str(&shipped.id).unwrap();
    store
        .update_status(
            id,
            Status::Pending,
            Status::Confirmed,
            None,
            None,
            Utc::now(),
        )
        .await
        .unwrap()
        .unwrap();
    store
        .update_status(
            id,
            Status::Confirmed,
            Status::Shipped,
            None,
            None,
            Utc::now(),
        )
        .await
        .unwrap()
        .unwrap();
    let refused = orders
        .cancel_order(authed(
            CancelOrderRequest {
                order_id: shipped.id.clone(),
                reason: String::new(),
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(
        refused.message().contains("SHIPPED"),
        "{}",
        refused.message()
    );
}

#[tokio::test]
async fn orders_survive_a_restart_of_order_service() {
    let mut stack = Stack::spawn().await;
    let (user, token) = stack.customer("durable").await;
    let mut placed = Vec::new();
    for i in 0..3 {
        placed.push(
            stack
                .orders
                .clone()
                .create_order(authed(order_request(&user.id, &format!("d{i}")), &token))
                .await
                .unwrap()
                .into_inner(),
        );
    }
    let addr = stack.order_service.addr;
    stack.order_service.stop().await.unwrap();
    stack.order_service = crate::helpers::start_order_service(
        crate::helpers::rebind(addr).await,
        stack.user_service.addr,
        stack.inventory_service.addr,
        &stack.orders_db,
        stack.dir.path(),
        &[],
    )
    .await;
    for order in &placed {
        let got = stack
            .orders
            .clone()
            .get_order(authed(
                GetOrderRequest {
                    order_id: order.id.clone(),
                },
                &token,
            ))
            .await
            .expect("the order is still there after the restart")
            .into_inner();
        assert_eq!(&got, order);
    }
}
