//! Deadlines and cancellation across the hop between two processes.

use std::time::{Duration, Instant};

use shop_core::context::Propagate;
use shop_proto::order::v1::{ListOrdersRequest, order_service_client::OrderServiceClient};
use shop_testkit::{Backend, Spec, Stack, authed};
use tonic::Code;

use crate::{ORDERS, USERS, customer, order};

/// The calls of `method` (its path) the service `name` logged as received
/// (debug level of the context layer), with the timeout each carried.
pub(crate) fn received_timeouts(stack: &Stack, name: &str, method: &str) -> Vec<Option<u64>> {
    stack
        .service(name)
        .log_events()
        .into_iter()
        .filter(|e| e["message"] == "request received" && e["rpc.method"] == method)
        .map(|e| e["grpc.timeout_ms"].as_u64())
        .collect()
}

/// A CreateOrder for `user_id` given `budget` (well under a second),
/// through the shop client layer as services and shopctl call (a plain
/// tonic channel reports its own grpc-timeout expiry as CANCELLED): it
/// must fail DEADLINE_EXCEEDED within a second.
pub(crate) async fn create_order_cut_short(
    stack: &Stack,
    user_id: &str,
    token: &str,
    request_id: &str,
    budget: Duration,
) {
    let mut orders = OrderServiceClient::new(Propagate::new(stack.service(ORDERS).channel()));
    let mut request = authed(order(user_id, request_id), token);
    request.set_timeout(budget);
    let started = Instant::now();
    let status = orders
        .create_order(request)
        .await
        .expect_err("the call fails");
    let elapsed = started.elapsed();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        elapsed < Duration::from_secs(1),
        "answered after {elapsed:?}"
    );
}

#[tokio::test]
async fn a_300ms_deadline_against_a_2s_user_service() {
    // order-service spends 100 ms before it calls user-service, which
    // takes 2 s: the budget user-service gets must have shrunk by those
    // 100 ms (a header passed on unchanged would still say 300).
    let stack = Stack::start(
        Backend::Sqlite,
        &[
            Spec::new(USERS).env("FAULT_DELAY", "GetUser=2s"),
            Spec::new(ORDERS).env("FAULT_DELAY", "CreateOrder=100ms"),
        ],
    )
    .await;
    let (user, token) = customer(&stack, "hurried").await;
    create_order_cut_short(
        &stack,
        &user.id,
        &token,
        "deadline-1",
        Duration::from_millis(300),
    )
    .await;

    // user-service saw the call with what was left of the budget: at most
    // 300 ms less the 100 ms order-service spent first.
    let timeouts = received_timeouts(&stack, USERS, "/shop.user.v1.UserService/GetUser");
    assert_eq!(timeouts.len(), 1, "{timeouts:?}");
    let carried = timeouts[0].expect("the call carried a grpc-timeout");
    assert!(
        (1..=200).contains(&carried),
        "user-service was given {carried} ms of the caller's 300 ms, 100 ms of which were spent"
    );

    // Nothing was written.
    let list = OrderServiceClient::new(stack.service(ORDERS).channel())
        .list_orders(authed(ListOrdersRequest::default(), &token))
        .await
        .unwrap()
        .into_inner();
    assert!(list.orders.is_empty(), "no order row");
}

#[tokio::test]
async fn a_client_that_goes_away_cancels_the_downstream_handler() {
    let stack = Stack::start(
        Backend::Sqlite,
        &[Spec::new(USERS).env("FAULT_DELAY", "GetUser=2s")],
    )
    .await;
    let (user, token) = customer(&stack, "impatient").await;
    let mut orders = OrderServiceClient::new(stack.service(ORDERS).channel());

    // No deadline: the client simply stops waiting after 200 ms and drops
    // the call, which resets the HTTP/2 stream.
    let call = orders.create_order(authed(order(&user.id, "cancel-1"), &token));
    assert!(
        tokio::time::timeout(Duration::from_millis(200), call)
            .await
            .is_err(),
        "the call is still in flight when abandoned"
    );

    let dropped = stack
        .service(USERS)
        .wait_for_log(Duration::from_secs(1), |e| {
            e["message"] == "request cancelled by the client; handler dropped"
                && e["rpc.method"] == "/shop.user.v1.UserService/GetUser"
        })
        .await;
    assert!(
        dropped.is_some(),
        "user-service's GetUser handler was not dropped:\n{}",
        stack.service(USERS).logs()
    );
    let elapsed_ms = dropped.unwrap()["elapsed_ms"].as_u64().unwrap();
    assert!(
        elapsed_ms < 1500,
        "dropped after {elapsed_ms} ms, not at the end of the delay"
    );

    let list = orders
        .list_orders(authed(ListOrdersRequest::default(), &token))
        .await
        .unwrap()
        .into_inner();
    assert!(list.orders.is_empty(), "no order row");
}
