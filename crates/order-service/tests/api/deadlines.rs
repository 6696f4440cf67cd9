//! Deadlines across the hop: the caller's budget, not more, reaches
//! user-service; when it runs out the caller hears DEADLINE_EXCEEDED and
//! nothing is written.

use std::time::{Duration, Instant};

use shop_core::context::Propagate;
use shop_proto::order::v1::order_service_client::OrderServiceClient;
use tonic::Code;

use crate::helpers::{Backend, Stack, authed, order_request};

#[tokio::test]
async fn a_slow_user_service_turns_into_deadline_exceeded_and_no_order() {
    let stack = Stack::spawn_with(Backend::Sqlite, &["--fault-delay", "GetUser=2s"], &[]).await;
    let (user, token) = stack.customer("hurried").await;

    let mut request = authed(order_request(&user.id, "slow-1"), &token);
    request.set_timeout(Duration::from_millis(300));
    // Through the client context layer, as services and shopctl call: a
    // plain tonic channel reports its own expiry of the same 300 ms as
    // CANCELLED, and on a busy machine its timer can fire before the
    // server's DEADLINE_EXCEEDED arrives.
    let mut orders = OrderServiceClient::new(Propagate::new(stack.order_service.channel()));
    let started = Instant::now();
    let status = orders.create_order(request).await.unwrap_err();
    let elapsed = started.elapsed();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(elapsed < Duration::from_secs(1), "took {elapsed:?}");

    let list = stack.list_own_orders(&token).await;
    assert!(list.orders.is_empty(), "no order was created");
}

#[tokio::test]
async fn the_server_cap_bounds_calls_that_send_no_deadline() {
    let stack = Stack::spawn_with(
        Backend::Sqlite,
        &["--fault-delay", "GetUser=2s"],
        &["--request-timeout-cap", "300ms"],
    )
    .await;
    let (user, token) = stack.customer("uncapped").await;
    let started = Instant::now();
    let status = stack
        .orders
        .clone()
        .create_order(authed(order_request(&user.id, "cap"), &token))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn injected_errors_from_user_service_surface_as_unavailable() {
    let stack = Stack::spawn_with(
        Backend::Sqlite,
        &["--fault-error", "GetUser=unavailable"],
        &[],
    )
    .await;
    let (user, token) = stack.customer("unlucky").await;
    let status = stack
        .orders
        .clone()
        .create_order(authed(order_request(&user.id, "u"), &token))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        !status.message().contains("injected"),
        "upstream text stays home"
    );
}

#[tokio::test]
async fn a_stopped_user_service_is_unavailable_not_internal() {
    let mut stack = Stack::spawn().await;
    let (user, token) = stack.customer("orphan").await;
    stack.user_service.stop().await.unwrap();
    let mut request = authed(order_request(&user.id, "gone"), &token);
    request.set_timeout(Duration::from_secs(5));
    let status = stack
        .orders
        .clone()
        .create_order(request)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
}
