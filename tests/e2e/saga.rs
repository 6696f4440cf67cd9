//! The stock saga across the three real binaries: a crash of order-service
//! in the middle of placing an order, inventory-service down, one caller
//! deadline covering all three hops, and orders placed together sharing
//! their calls to inventory-service.

use std::time::{Duration, Instant};

use shop_core::context::Propagate;
use shop_proto::{
    inventory::v1::{GetProductRequest, Product, inventory_service_client::InventoryServiceClient},
    order::v1::{
        GetOrderRequest, ListOrdersRequest, OrderStatus, order_service_client::OrderServiceClient,
    },
};
use shop_testkit::{Backend, Spec, Stack, authed, http_get, metric_sum};
use tonic::Code;

use crate::{
    INVENTORY, ORDERS, customer,
    deadlines::{create_order_cut_short, received_timeouts},
    order,
};

/// The development catalogue's sku-1 as inventory-service has it now.
async fn sku_1(stack: &Stack, token: &str) -> Product {
    InventoryServiceClient::new(stack.service(INVENTORY).channel())
        .get_product(authed(
            GetProductRequest {
                sku: "sku-1".into(),
            },
            token,
        ))
        .await
        .unwrap()
        .into_inner()
}

/// The units of sku-1 that can be ordered.
async fn available(stack: &Stack, token: &str) -> i64 {
    sku_1(stack, token).await.available
}

async fn orders_of(stack: &Stack, token: &str) -> Vec<shop_proto::order::v1::Order> {
    OrderServiceClient::new(stack.service(ORDERS).channel())
        .list_orders(authed(ListOrdersRequest::default(), token))
        .await
        .unwrap()
        .into_inner()
        .orders
}

/// Polls `check` every 100 ms for at most `within`.
async fn until<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "{what} not within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_crash_before_the_confirmation_leaves_no_stock_held_and_no_order_without_stock() {
    // Confirmations take 3 s at inventory-service, reservations expire
    // after 1 s: order-service is killed while its confirmation is in
    // flight, after the order was stored and answered.
    let mut stack = Stack::start(
        Backend::Sqlite,
        &[
            Spec::new(INVENTORY).envs(&[
                ("FAULT_DELAY", "ConfirmReservations=3s"),
                ("RESERVATION_TTL", "1s"),
                ("RESERVATION_SWEEP_INTERVAL", "100ms"),
            ]),
            Spec::new(ORDERS).env("STOCK_OUTBOX_INTERVAL", "200ms"),
        ],
    )
    .await;
    let (user, token) = customer(&stack, "crashy").await;
    let before = available(&stack, &token).await;

    let mut orders = OrderServiceClient::new(stack.service(ORDERS).channel());
    let placed = orders
        .create_order(authed(order(&user.id, "crash-1"), &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(placed.status, OrderStatus::Pending as i32);
    assert_eq!(available(&stack, &token).await, before - 3, "units held");
    stack.service_mut(ORDERS).kill().await;

    // The reservation expires: every unit is back without order-service.
    until(Duration::from_secs(10), "the units back", || async {
        available(&stack, &token).await == before
    })
    .await;

    // After the restart, the owed confirmation is retried from the outbox,
    // finds the reservation expired, and cancels the order: no order is
    // left without stock.
    stack.service_mut(ORDERS).restart().await;
    let id = placed.id;
    assert_eq!(orders_of(&stack, &token).await[0].id, id);
    let mut orders = OrderServiceClient::new(stack.service(ORDERS).channel());
    until(
        Duration::from_secs(20),
        "the unstocked order cancelled",
        || {
            let mut orders = orders.clone();
            let (id, token) = (id.clone(), token.clone());
            async move {
                let order = orders
                    .get_order(authed(GetOrderRequest { order_id: id }, &token))
                    .await
                    .unwrap()
                    .into_inner();
                order.status == OrderStatus::Cancelled as i32
            }
        },
    )
    .await;

    // The client's retry with the same request id: the one order, as it is.
    let retried = orders
        .create_order(authed(order(&user.id, "crash-1"), &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retried.id, id);
    assert_eq!(
        orders_of(&stack, &token).await.len(),
        1,
        "exactly one order"
    );
    assert_eq!(available(&stack, &token).await, before, "nothing held");
}

#[tokio::test]
async fn orders_placed_together_share_their_confirmation_call() {
    // Each confirmation call is held a second at inventory-service: the
    // orders answered meanwhile queue at order-service for the next call.
    let stack = Stack::start(
        Backend::Sqlite,
        &[Spec::new(INVENTORY).env("FAULT_DELAY", "ConfirmReservations=1s")],
    )
    .await;
    let (user, token) = customer(&stack, "bulk").await;
    let before = sku_1(&stack, &token).await;
    let (on_hand, reserved) = (before.on_hand, before.reserved);
    let n = 20;
    place_at_once(&stack, &user.id, &token, "bulk", n).await;
    // Each order takes 3 units of sku-1, off the shelf once confirmed.
    until(Duration::from_secs(30), "every order confirmed", || async {
        {
            let now = sku_1(&stack, &token).await;
            (now.on_hand, now.reserved) == (on_hand - 3 * n as i64, reserved)
        }
    })
    .await;
    let metrics = http_get(stack.service(INVENTORY).admin, "/metrics").await.1;
    let calls = |method| ok_calls(&metrics, method);
    let batched = calls("ConfirmReservations");
    assert!(
        (1.0..=10.0).contains(&batched),
        "{n} orders confirmed in {batched} calls:\n{metrics}"
    );
    assert_eq!(calls("ConfirmReservation"), 0.0, "none one by one");
}

/// How many calls of `method` a service answered OK, from its `metrics`.
fn ok_calls(metrics: &str, method: &str) -> f64 {
    metric_sum(
        metrics,
        "grpc_server_handled_total",
        &[("grpc_method", method), ("grpc_code", "OK")],
    )
}

/// `n` orders of sku-1 placed at once for `user`, each answered OK.
async fn place_at_once(stack: &Stack, user_id: &str, token: &str, prefix: &str, n: usize) {
    let orders = OrderServiceClient::new(stack.service(ORDERS).channel());
    let placing: Vec<_> = (0..n)
        .map(|i| {
            let mut orders = orders.clone();
            let request = authed(order(user_id, &format!("{prefix}-{i}")), token);
            tokio::spawn(async move { orders.create_order(request).await })
        })
        .collect();
    for placed in placing {
        placed.await.unwrap().unwrap();
    }
}

/// A stack where order-service makes one reservation call at a time and
/// inventory-service holds each ReserveStock (a call of its own) `delay`.
async fn one_reservation_call_at_a_time(delay: &str) -> Stack {
    Stack::start(
        Backend::Sqlite,
        &[
            Spec::new(INVENTORY).env("FAULT_DELAY", format!("ReserveStock={delay}")),
            Spec::new(ORDERS).env("STOCK_RESERVE_CALLS", "1"),
        ],
    )
    .await
}

#[tokio::test]
async fn orders_placed_together_share_their_reservation_calls() {
    // One reservation call at a time, and a reservation in a call of its
    // own held a second at inventory-service: the orders arriving
    // meanwhile wait at order-service and go together in a ReserveStocks.
    let stack = one_reservation_call_at_a_time("1s").await;
    let (user, token) = customer(&stack, "together").await;
    let before = sku_1(&stack, &token).await;
    let n = 20;
    place_at_once(&stack, &user.id, &token, "together", n).await;
    until(Duration::from_secs(30), "every order confirmed", || async {
        let now = sku_1(&stack, &token).await;
        (now.on_hand, now.reserved) == (before.on_hand - 3 * n as i64, before.reserved)
    })
    .await;

    let metrics = http_get(stack.service(INVENTORY).admin, "/metrics").await.1;
    let calls = |method| ok_calls(&metrics, method);
    let (own, shared) = (calls("ReserveStock"), calls("ReserveStocks"));
    assert!(
        shared >= 1.0 && own + shared <= 5.0,
        "{n} orders reserved in {own} calls of their own and {shared} shared:\n{metrics}"
    );
    let metrics = http_get(stack.service(ORDERS).admin, "/metrics").await.1;
    let reservations =
        |call| metric_sum(&metrics, "shop_stock_reservations_total", &[("call", call)]);
    assert_eq!(
        reservations("own") + reservations("shared"),
        n as f64,
        "{metrics}"
    );
    assert!(reservations("shared") >= 15.0, "{metrics}");
}

#[tokio::test]
async fn a_queued_reservation_whose_caller_gave_up_is_never_sent() {
    // The one reservation call is taken by a first order for 2 s; a second
    // order with 300 ms to live waits for it, gives up, and its
    // reservation is left out of the shared call that would have carried it.
    let stack = one_reservation_call_at_a_time("2s").await;
    let (user, token) = customer(&stack, "patient").await;
    let before = available(&stack, &token).await;
    let first = {
        let mut orders = OrderServiceClient::new(stack.service(ORDERS).channel());
        let request = authed(order(&user.id, "first"), &token);
        tokio::spawn(async move { orders.create_order(request).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    create_order_cut_short(
        &stack,
        &user.id,
        &token,
        "queued",
        Duration::from_millis(300),
    )
    .await;
    first.await.unwrap().unwrap();
    // Once the first call is back, the queue is looked at: nothing to send,
    // not even a call that would fail at once for want of time.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let metrics = http_get(stack.service(ORDERS).admin, "/metrics").await.1;
    let shared = metric_sum(
        &metrics,
        "grpc_client_started_total",
        &[("grpc_method", "ReserveStocks")],
    );
    assert_eq!(shared, 0.0, "{metrics}");
    assert_eq!(
        orders_of(&stack, &token).await.len(),
        1,
        "the first order only"
    );
    assert_eq!(
        available(&stack, &token).await,
        before - 3,
        "the first order's units only"
    );
}

#[tokio::test]
async fn with_inventory_down_orders_fail_fast_as_unavailable_and_nothing_is_left() {
    let mut stack = Stack::start(Backend::Sqlite, &[]).await;
    let (user, token) = customer(&stack, "patient").await;
    let before = available(&stack, &token).await;
    stack.service_mut(INVENTORY).kill().await;

    let mut orders = OrderServiceClient::new(Propagate::new(stack.service(ORDERS).channel()));
    let mut took = Vec::new();
    for i in 0..10 {
        let mut request = authed(order(&user.id, &format!("down-{i}")), &token);
        request.set_timeout(Duration::from_secs(3));
        let started = Instant::now();
        let status = orders.create_order(request).await.unwrap_err();
        took.push(started.elapsed());
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(status.message().contains("inventory-service"), "{status:?}");
    }
    assert!(
        took.iter().all(|t| *t < Duration::from_secs(3)),
        "within the caller's deadline: {took:?}"
    );
    let metrics = http_get(stack.service(ORDERS).admin, "/metrics").await.1;
    let opened = metric_sum(
        &metrics,
        "grpc_client_circuit_breaker_transitions_total",
        &[("target", "inventory-service"), ("state", "open")],
    );
    assert!(opened >= 1.0, "the breaker opened:\n{metrics}");
    assert!(
        took[9] < Duration::from_millis(200),
        "an open breaker fails fast: {took:?}"
    );
    assert!(orders_of(&stack, &token).await.is_empty(), "no order row");

    // Back up: nothing was held, and orders go through again.
    stack.service_mut(INVENTORY).restart().await;
    assert_eq!(
        available(&stack, &token).await,
        before,
        "no reservation left"
    );
    until(Duration::from_secs(70), "orders placed again", || {
        let mut orders = orders.clone();
        let (user_id, token) = (user.id.clone(), token.clone());
        async move {
            orders
                .create_order(authed(order(&user_id, "after"), &token))
                .await
                .is_ok()
        }
    })
    .await;
}

#[tokio::test]
async fn one_300ms_deadline_covers_three_services() {
    let stack = Stack::start(
        Backend::Sqlite,
        &[Spec::new(INVENTORY).env("FAULT_DELAY", "ReserveStock=2s")],
    )
    .await;
    let (user, token) = customer(&stack, "hasty").await;
    let before = available(&stack, &token).await;
    create_order_cut_short(
        &stack,
        &user.id,
        &token,
        "three-hops",
        Duration::from_millis(300),
    )
    .await;

    // inventory-service got what was left after GetUser: less than 300 ms.
    let timeouts = received_timeouts(
        &stack,
        INVENTORY,
        "/shop.inventory.v1.InventoryService/ReserveStock",
    );
    assert_eq!(timeouts.len(), 1, "{timeouts:?}");
    let carried = timeouts[0].expect("the call carried a grpc-timeout");
    assert!(
        (1..300).contains(&carried),
        "inventory-service was given {carried} ms of the caller's 300 ms"
    );
    assert!(orders_of(&stack, &token).await.is_empty(), "no order row");
    // The abandoned reservation never happened (or expired): after the
    // fault's 2 s, nothing is held.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(available(&stack, &token).await, before);
}
