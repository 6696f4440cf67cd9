//! The streaming RPCs of OrderService: StreamOrders, WatchOrder (also
//! across two replicas on one PostgreSQL), BatchCreateOrders and
//! ProcessOrders; stream limits.

use std::time::Duration;

use shop_proto::order::v1::{
    CancelOrderRequest, CreateOrderRequest, ListOrdersRequest, OrderStatus, ProcessOrderRequest,
    StreamOrdersRequest, WatchOrderRequest, order_service_client::OrderServiceClient,
};
use tonic::{Code, transport::Channel};

use shop_server::Listeners;

use crate::helpers::{Backend, Stack, authed, order_request, start_order_service};

/// Reads a server stream to its end: the messages, then the final status
/// (`None` for OK).
async fn drain<T>(mut stream: tonic::Streaming<T>) -> (Vec<T>, Option<tonic::Status>) {
    let mut items = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.message()).await {
            Ok(Ok(Some(item))) => items.push(item),
            Ok(Ok(None)) => return (items, None),
            Ok(Err(status)) => return (items, Some(status)),
            Err(_) => panic!("the stream neither sent nor ended within 10 s"),
        }
    }
}

fn process(order_id: &str, to: OrderStatus) -> ProcessOrderRequest {
    ProcessOrderRequest {
        order_id: order_id.into(),
        new_status: to as i32,
    }
}

#[tokio::test]
async fn stream_orders_sends_a_users_orders_newest_first() {
    let stack = Stack::spawn().await;
    let (user, token) = stack.customer("streamer").await;
    let mut orders = stack.orders.clone();
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            orders
                .create_order(authed(order_request(&user.id, &format!("s{i}")), &token))
                .await
                .unwrap()
                .into_inner()
                .id,
        );
    }
    orders
        .cancel_order(authed(
            CancelOrderRequest {
                order_id: ids[0].clone(),
                reason: String::new(),
            },
            &token,
        ))
        .await
        .unwrap();
    ids.reverse();

    let stream = orders
        .stream_orders(authed(StreamOrdersRequest::default(), &token))
        .await
        .unwrap()
        .into_inner();
    let (got, end) = drain(stream).await;
    assert!(end.is_none(), "{end:?}");
    assert_eq!(got.iter().map(|o| o.id.clone()).collect::<Vec<_>>(), ids);

    let cancelled = orders
        .stream_orders(authed(
            StreamOrdersRequest {
                user_id: user.id.clone(),
                status: OrderStatus::Cancelled as i32,
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    let (got, _) = drain(cancelled).await;
    assert_eq!(got.len(), 1);
}

#[tokio::test]
async fn stream_orders_checks_its_request_and_its_caller() {
    let stack = Stack::spawn().await;
    let (alice, _) = stack.customer("alice").await;
    let (_, bob) = stack.customer("bob").await;
    let mut orders = stack.orders.clone();
    let invalid = orders
        .stream_orders(authed(
            StreamOrdersRequest {
                user_id: "nope".into(),
                status: 99,
            },
            &bob,
        ))
        .await
        .unwrap_err();
    assert_eq!(invalid.code(), Code::InvalidArgument);
    assert_eq!(
        crate::helpers::violated_fields(&invalid),
        ["user_id", "status"]
    );
    let foreign = orders
        .stream_orders(authed(
            StreamOrdersRequest {
                user_id: alice.id.clone(),
                status: 0,
            },
            &bob,
        ))
        .await
        .unwrap_err();
    assert_eq!(foreign.code(), Code::NotFound);
    let anonymous = orders
        .stream_orders(tonic::Request::new(StreamOrdersRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn watch_order_sends_the_current_state_then_every_change_then_ends() {
    let stack = Stack::spawn().await;
    let (user, token) = stack.customer("watcher").await;
    let admin = stack.admin_token().await;
    let mut orders = stack.orders.clone();
    let order = orders
        .create_order(authed(order_request(&user.id, "w1"), &token))
        .await
        .unwrap()
        .into_inner();
    let mut watch = orders
        .watch_order(authed(
            WatchOrderRequest {
                order_id: order.id.clone(),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(
        first.order.as_ref().unwrap(),
        &order,
        "the current state first"
    );

    // Move it through the whole machine with ProcessOrders (admin).
    let requests = tokio_stream::iter(vec![
        process(&order.id, OrderStatus::Confirmed),
        process(&order.id, OrderStatus::Shipped),
        process(&order.id, OrderStatus::Delivered),
    ]);
    let (responses, end) = drain(
        orders
            .process_orders(authed(requests, &admin))
            .await
            .unwrap()
            .into_inner(),
    )
    .await;
    assert!(end.is_none());
    assert!(responses.iter().all(|r| r.success), "{responses:?}");

    let (updates, end) = drain(watch).await;
    assert!(end.is_none(), "ends OK after a terminal state: {end:?}");
    let states: Vec<_> = updates
        .iter()
        .map(|u| u.order.as_ref().unwrap().status)
        .collect();
    assert_eq!(
        states,
        [
            OrderStatus::Confirmed as i32,
            OrderStatus::Shipped as i32,
            OrderStatus::Delivered as i32
        ]
    );
}

#[tokio::test]
async fn watch_order_misses_nothing_committed_while_it_subscribes() {
    let stack = Stack::spawn().await;
    let (user, token) = stack.customer("racer").await;
    let admin = stack.admin_token().await;
    let mut orders = stack.orders.clone();
    for round in 0..5 {
        let order = orders
            .create_order(authed(
                order_request(&user.id, &format!("race{round}")),
                &token,
            ))
            .await
            .unwrap()
            .into_inner();
        // Start the watch and the moves at the same time.
        let watch = {
            let mut orders = orders.clone();
            let request = authed(
                WatchOrderRequest {
                    order_id: order.id.clone(),
                },
                &token,
            );
            tokio::spawn(async move {
                drain(orders.watch_order(request).await.unwrap().into_inner()).await
            })
        };
        let moves = tokio_stream::iter(vec![
            process(&order.id, OrderStatus::Confirmed),
            process(&order.id, OrderStatus::Shipped),
            process(&order.id, OrderStatus::Delivered),
        ]);
        drain(
            orders
                .process_orders(authed(moves, &admin))
                .await
                .unwrap()
                .into_inner(),
        )
        .await;
        let (updates, end) = watch.await.unwrap();
        assert!(end.is_none());
        let states: Vec<i32> = updates
            .iter()
            .map(|u| u.order.as_ref().unwrap().status)
            .collect();
        // Whatever state the first message shows, every later state follows
        // without a gap, up to DELIVERED.
        let chain = [
            OrderStatus::Pending as i32,
            OrderStatus::Confirmed as i32,
            OrderStatus::Shipped as i32,
            OrderStatus::Delivered as i32,
        ];
        let start = chain.iter().position(|s| *s == states[0]).unwrap();
        assert_eq!(states, chain[start..], "round {round}");
    }
}

#[tokio::test]
async fn watch_order_is_for_the_owner_and_checks_the_id() {
    let stack = Stack::spawn().await;
    let (alice, alice_token) = stack.customer("alice").await;
    let (_, bob) = stack.customer("bob").await;
    let mut orders = stack.orders.clone();
    let order = orders
        .create_order(authed(order_request(&alice.id, "private"), &alice_token))
        .await
        .unwrap()
        .into_inner();
    let foreign = orders
        .watch_order(authed(WatchOrderRequest { order_id: order.id }, &bob))
        .await
        .unwrap_err();
    assert_eq!(foreign.code(), Code::NotFound);
    let garbled = orders
        .watch_order(authed(
            WatchOrderRequest {
                order_id: "x".into(),
            },
            &bob,
        ))
        .await
        .unwrap_err();
    assert_eq!(garbled.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn a_change_through_one_replica_reaches_a_watcher_on_another_on_postgres() {
    let stack = Stack::spawn_with(Backend::Postgres, &[], &[]).await;
    // A second order-service process on the same database.
    let replica = start_order_service(
        Listeners::ephemeral().await.unwrap(),
        stack.user_service.addr,
        stack.inventory_service.addr,
        &stack.orders_db,
        stack.dir.path(),
        &["--watch-resync-interval", "1h"],
    )
    .await;
    let mut on_replica = OrderServiceClient::new(
        Channel::from_shared(format!("http://{}", replica.addr))
            .unwrap()
            .connect_lazy(),
    );
    let (user, token) = stack.customer("spread").await;
    let order = stack
        .orders
        .clone()
        .create_order(authed(order_request(&user.id, "x1"), &token))
        .await
        .unwrap()
        .into_inner();
    let mut watch = on_replica
        .watch_order(authed(
            WatchOrderRequest {
                order_id: order.id.clone(),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch
            .message()
            .await
            .unwrap()
            .unwrap()
            .order
            .unwrap()
            .status,
        OrderStatus::Pending as i32
    );

    // Cancel through the first replica; the watcher on the second sees it
    // (notified through PostgreSQL, not by its own resync, set to an hour).
    stack
        .orders
        .clone()
        .cancel_order(authed(
            CancelOrderRequest {
                order_id: order.id.clone(),
                reason: "elsewhere".into(),
            },
            &token,
        ))
        .await
        .unwrap();
    let update = tokio::time::timeout(Duration::from_secs(5), watch.message())
        .await
        .expect("the change arrives within 5 s")
        .unwrap()
        .unwrap();
    assert_eq!(update.order.unwrap().status, OrderStatus::Cancelled as i32);
    assert!(
        watch.message().await.unwrap().is_none(),
        "ends OK after CANCELLED"
    );
}

#[tokio::test]
async fn process_orders_answers_every_request_in_order_without_stopping() {
    let stack = Stack::spawn().await;
    let (user, token) = stack.customer("processed").await;
    let admin = stack.admin_token().await;
    let mut orders = stack.orders.clone();
    let order = orders
        .create_order(authed(order_request(&user.id, "p1"), &token))
        .await
        .unwrap()
        .into_inner();
    let requests = tokio_stream::iter(vec![
        process(&order.id, OrderStatus::Confirmed),
        process("not-an-id", OrderStatus::Shipped),
        process(&order.id, OrderStatus::Unspecified),
        process(&order.id, OrderStatus::Shipped),
        process(&order.id, OrderStatus::Cancelled),
        process(&uuid::Uuid::now_v7().to_string(), OrderStatus::Confirmed),
        process(&order.id, OrderStatus::Delivered),
    ]);
    let (responses, end) = drain(
        orders
            .process_orders(authed(requests, &admin))
            .await
            .unwrap()
            .into_inner(),
    )
    .await;
    assert!(end.is_none(), "{end:?}");
    let outcome: Vec<(bool, String)> = responses
        .iter()
        .map(|r| (r.success, r.order_id.clone()))
        .collect();
    assert_eq!(outcome.len(), 7, "one response per request");
    assert_eq!(
        responses.iter().map(|r| r.success).collect::<Vec<_>>(),
        [true, false, false, true, false, false, true]
    );
    assert_eq!(responses[1].order_id, "not-an-id");
    assert!(
        responses[4].error_message.contains("SHIPPED"),
        "{:?}",
        responses[4]
    );
    assert_eq!(
        responses[4].order.as_ref().unwrap().status,
        OrderStatus::Shipped as i32,
        "a refused move reports the order as it is"
    );
    assert_eq!(responses[5].error_message, "order not found");
    assert_eq!(
        responses[6].order.as_ref().unwrap().status,
        OrderStatus::Delivered as i32
    );

    let not_admin = orders
        .process_orders(authed(
            tokio_stream::iter(vec![process(&order.id, OrderStatus::Confirmed)]),
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(not_admin.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn batch_create_orders_reports_each_item_and_keeps_idempotency() {
    let stack = Stack::spawn().await;
    let (user, token) = stack.customer("batcher").await;
    let (other, _) = stack.customer("other").await;
    let mut orders = stack.orders.clone();
    let mut invalid = order_request(&user.id, "b-bad");
    invalid.items[0].quantity = 0;
    let mut reused = order_request(&user.id, "b-1");
    reused.currency_code = "USD".into();
    let items = vec![
        order_request(&user.id, "b-1"),
        invalid,
        order_request(&user.id, "b-1"),
        reused,
        order_request(&other.id, "b-2"),
        order_request(&user.id, "b-3"),
    ];
    let response = orders
        .batch_create_orders(authed(tokio_stream::iter(items), &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.success_count, 3);
    assert_eq!(response.failure_count, 3);
    assert_eq!(
        response.orders[0], response.orders[1],
        "a repeated request_id gives the first order"
    );
    let errors: Vec<(i32, i32)> = response.errors.iter().map(|e| (e.index, e.code)).collect();
    assert_eq!(
        errors,
        [
            (1, Code::InvalidArgument as i32),
            (3, Code::AlreadyExists as i32),
            (4, Code::PermissionDenied as i32)
        ]
    );
    assert!(
        response.errors[0].message.contains("items[0].quantity"),
        "{:?}",
        response.errors[0]
    );
}

#[tokio::test]
async fn batch_create_orders_refuses_more_than_a_thousand_items() {
    let stack = Stack::spawn().await;
    let (user, token) = stack.customer("greedy").await;
    // Invalid items: cheap to send, no user-service round trip.
    let items: Vec<CreateOrderRequest> = (0..1001)
        .map(|_| CreateOrderRequest {
            user_id: user.id.clone(),
            ..Default::default()
        })
        .collect();
    let status = stack
        .orders
        .clone()
        .batch_create_orders(authed(tokio_stream::iter(items), &token))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("1000"), "{}", status.message());
}

#[tokio::test]
async fn streams_beyond_the_per_caller_limit_are_resource_exhausted() {
    let stack = Stack::spawn_with(Backend::Sqlite, &[], &["--stream-max-per-principal", "2"]).await;
    let (user, token) = stack.customer("hoarder").await;
    let mut orders = stack.orders.clone();
    let order = orders
        .create_order(authed(order_request(&user.id, "h"), &token))
        .await
        .unwrap()
        .into_inner();
    let watch = || {
        authed(
            WatchOrderRequest {
                order_id: order.id.clone(),
            },
            &token,
        )
    };
    let first = orders.watch_order(watch()).await.unwrap().into_inner();
    let _second = orders.watch_order(watch()).await.unwrap().into_inner();
    let third = orders.watch_order(watch()).await.unwrap_err();
    assert_eq!(third.code(), Code::ResourceExhausted);

    // Closing one frees its place (within a second).
    drop(first);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    loop {
        match orders.watch_order(watch()).await {
            Ok(_) => break,
            Err(s) if s.code() == Code::ResourceExhausted => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the place was not freed within 1 s"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(other) => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn a_suspended_user_loses_the_watch_within_the_recheck_interval() {
    // order-service asks user-service, with the stream's own token.
    let stack = Stack::spawn_with(
        Backend::Sqlite,
        &[],
        &["--stream-recheck-interval", "200ms"],
    )
    .await;
    let (user, token) = stack.customer("suspect").await;
    let admin = stack.admin_token().await;
    let mut orders = stack.orders.clone();
    let order = orders
        .create_order(authed(order_request(&user.id, "s1"), &token))
        .await
        .unwrap()
        .into_inner();
    let mut watch = orders
        .watch_order(authed(
            WatchOrderRequest {
                order_id: order.id.clone(),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    watch.message().await.unwrap().expect("the current state");

    stack
        .users
        .clone()
        .update_user(authed(
            shop_proto::user::v1::UpdateUserRequest {
                user_id: user.id.clone(),
                status: Some(shop_proto::user::v1::UserStatus::Suspended as i32),
                ..Default::default()
            },
            &admin,
        ))
        .await
        .unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match watch.message().await {
                Ok(Some(_)) => {}
                Ok(None) => panic!("ended with OK"),
                Err(status) => return status,
            }
        }
    })
    .await
    .expect("the watch ended within 5 s");
    assert_eq!(ended.code(), Code::PermissionDenied, "{ended:?}");
}

#[tokio::test]
async fn open_client_streams_do_not_starve_unary_calls() {
    // Two unary permits, three client streams held open by their clients:
    // before, each stream held a permit until its client ended it.
    let stack = Stack::spawn_with(Backend::Sqlite, &[], &["--max-concurrent-requests", "2"]).await;
    let (user, token) = stack.customer("batcher").await;
    let mut held = Vec::new();
    for i in 0..3 {
        let (tx, rx) = tokio::sync::mpsc::channel::<CreateOrderRequest>(1);
        tx.send(order_request(&user.id, &format!("held-{i}")))
            .await
            .unwrap();
        let mut orders = stack.orders.clone();
        let token = token.clone();
        let call = tokio::spawn(async move {
            orders
                .batch_create_orders(authed(
                    tokio_stream::wrappers::ReceiverStream::new(rx),
                    &token,
                ))
                .await
        });
        held.push((tx, call));
    }
    // Wait until all three are in their handlers: a batch places each
    // order as it arrives, so the user then has three orders. (The
    // active-streams gauge is shared by every stack in this test process,
    // so it cannot tell.)
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let listed = stack
            .orders
            .clone()
            .list_orders(authed(
                ListOrdersRequest {
                    user_id: user.id.clone(),
                    page_size: 10,
                    ..Default::default()
                },
                &token,
            ))
            .await;
        if matches!(&listed, Ok(page) if page.get_ref().orders.len() == 3) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the three streams never all reached their handlers: {listed:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut orders = stack.orders.clone();
    for i in 0..5 {
        orders
            .create_order(authed(
                order_request(&user.id, &format!("unary-{i}")),
                &token,
            ))
            .await
            .expect("a unary call is served while the streams stay open");
    }
    // Ending the streams lets them answer.
    for (tx, call) in held {
        drop(tx);
        let response = call.await.unwrap().expect("the batch answers").into_inner();
        assert_eq!(response.success_count, 1);
    }
}

#[tokio::test]
async fn a_client_stream_whose_client_goes_quiet_ends_at_the_idle_timeout() {
    let stack = Stack::spawn_with(Backend::Sqlite, &[], &["--stream-idle-timeout", "300ms"]).await;
    let (user, token) = stack.customer("dawdler").await;
    let (tx, rx) = tokio::sync::mpsc::channel::<CreateOrderRequest>(1);
    tx.send(order_request(&user.id, "quiet-1")).await.unwrap();
    let answer = tokio::time::timeout(
        Duration::from_secs(5),
        stack.orders.clone().batch_create_orders(authed(
            tokio_stream::wrappers::ReceiverStream::new(rx),
            &token,
        )),
    )
    .await
    .expect("answered within 5 s while the client still holds the stream");
    let status = answer.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    drop(tx);
}
