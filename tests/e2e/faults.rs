//! Fault tests of order-service's channel to user-service with the real
//! binaries: a replica killed (SIGKILL) and another restarted (SIGTERM)
//! under load, every replica killed, responses
//! lost after the work was done, and answers that must never be retried.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use shop_client::{self as client, ClientArgs, IdempotencyKey};
use shop_proto::order::v1::{
    GetOrderRequest, ListOrdersRequest, Order, order_service_client::OrderServiceClient,
};
use shop_testkit::{Backend, Service, Spec, Stack, authed, http_get, metric_sum};
use tonic::Code;

use crate::{ORDERS, USERS, customer, customer_on, order};

/// `n` user-service replicas on one database and one key directory, and
/// an order-service balancing over all of them that asks user-service for
/// every order (no cached user status: the calls to the replicas are what
/// these tests watch).
async fn replicated(n: usize) -> Stack {
    Stack::start(
        Backend::Sqlite,
        &[
            Spec::new(USERS).replicas(n),
            // Every CreateOrder asks user-service; and a replica that comes
            // back is reconnected within the backoff's ceiling (120 s by
            // default: after a long outage on a busy machine the next
            // attempt could fall past these tests' 15 s windows).
            Spec::new(ORDERS)
                .env("USER_STATUS_CACHE_MAX_AGE", "0s")
                .env("CLIENT_RECONNECT_BACKOFF_MAX", "2s"),
        ],
    )
    .await
}

/// order-service's metrics.
async fn order_metrics(stack: &Stack) -> String {
    http_get(stack.service(ORDERS).admin, "/metrics").await.1
}

/// Polls `condition` every 50 ms for at most `within`; whether it held.
async fn eventually(within: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    condition()
}

/// CreateOrder calls order-service has answered OK so far.
fn orders_placed(stack: &Stack) -> usize {
    stack
        .service(ORDERS)
        .log_events()
        .iter()
        .filter(|e| {
            e["target"] == "access" && e["span"]["rpc.method"] == "CreateOrder" && e["code"] == "OK"
        })
        .count()
}

/// GetUser access lines `replica` has logged so far.
fn get_user_calls(replica: &Service) -> usize {
    replica
        .log_events()
        .iter()
        .filter(|e| e["target"] == "access" && e["span"]["rpc.method"] == "GetUser")
        .count()
}

fn create(
    user_id: &str,
    request_id: &str,
    token: &str,
) -> tonic::Request<shop_proto::order::v1::CreateOrderRequest> {
    let mut request = authed(order(user_id, request_id), token);
    request.set_timeout(Duration::from_secs(5));
    request
}

#[tokio::test]
async fn replicas_killed_or_restarted_under_load_fail_no_order_and_get_traffic_again() {
    let mut stack = replicated(2).await;
    let (user, token) = customer_on(&stack.replicas(USERS)[0], "steady").await;

    let stop = Arc::new(AtomicBool::new(false));
    let mut callers = Vec::new();
    for worker in 0..3 {
        let (stop, user_id, token) = (Arc::clone(&stop), user.id.clone(), token.clone());
        let mut orders = OrderServiceClient::new(stack.service(ORDERS).channel());
        callers.push(tokio::spawn(async move {
            let (mut ok, mut failures) = (0u32, Vec::new());
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                match orders
                    .create_order(create(&user_id, &format!("w{worker}-{i}"), &token))
                    .await
                {
                    Ok(_) => ok += 1,
                    Err(status) => {
                        failures.push(format!("{:?}: {}", status.code(), status.message()))
                    }
                }
                // Stay under the per-caller rate limit.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (ok, failures)
        }));
    }

    assert!(
        eventually(Duration::from_secs(10), || get_user_calls(
            &stack.replicas(USERS)[1]
        ) > 0)
        .await,
        "replica 1 took no traffic"
    );
    let killed = format!("http://{}/", stack.replicas(USERS)[1].addr);
    stack.replicas_mut(USERS)[1].kill().await;
    // Load goes on against the one replica left for a while.
    let orders_so_far = orders_placed(&stack);
    assert!(
        eventually(Duration::from_secs(15), || orders_placed(&stack)
            >= orders_so_far + 20)
        .await,
        "orders stopped while replica 1 was down"
    );
    let before_restart = get_user_calls(&stack.replicas(USERS)[1]);
    stack.replicas_mut(USERS)[1].restart().await;
    let restarted = Instant::now();
    let back = eventually(Duration::from_secs(15), || {
        get_user_calls(&stack.replicas(USERS)[1]) > before_restart
    })
    .await;
    let back_after = back.then(|| restarted.elapsed());
    // Then a rolling restart of the other one: SIGTERM (GOAWAY, drain),
    // start again.
    let exit = stack.replicas_mut(USERS)[0]
        .terminate(Duration::from_secs(10))
        .await;
    assert!(exit.success(), "{exit}");
    stack.replicas_mut(USERS)[0].restart().await;
    let orders_so_far = orders_placed(&stack);
    assert!(
        eventually(Duration::from_secs(15), || orders_placed(&stack)
            >= orders_so_far + 10)
        .await,
        "orders stopped after the rolling restart"
    );
    stop.store(true, Ordering::Relaxed);

    let (mut ok, mut failures) = (0, Vec::new());
    for caller in callers {
        let (o, f) = caller.await.unwrap();
        ok += o;
        failures.extend(f);
    }
    assert!(
        failures.is_empty(),
        "{} of {} CreateOrder failed: {failures:?}",
        failures.len(),
        ok as usize + failures.len()
    );
    assert!(ok > 30, "the load ran ({ok} orders)");
    let back_after = back_after.expect("the restarted replica got no GetUser within 15 s");
    eprintln!(
        "{ok} orders, none failed; the restarted replica took traffic again {back_after:?} after it was serving"
    );

    // The kill was noticed, not missed: order-service saw the connection
    // end (and kept calls off the endpoint while it reconnected), or an
    // attempt on it failed and was retried on the other replica.
    let metrics = order_metrics(&stack).await;
    let retries = metric_sum(
        &metrics,
        "grpc_client_retries_total",
        &[("grpc_method", "GetUser")],
    );
    let noticed = stack.service(ORDERS).log_events().iter().any(|e| {
        e["message"] == "connection ended; reconnecting in the background"
            && e["endpoint"] == killed.as_str()
    });
    assert!(
        noticed || retries >= 1.0,
        "order-service never noticed the kill:\n{metrics}"
    );
}

#[tokio::test]
async fn with_every_replica_down_calls_fail_fast_within_the_retry_budget_and_recover() {
    let mut stack = replicated(2).await;
    let (user, token) = customer_on(&stack.replicas(USERS)[0], "outage").await;
    let mut orders = OrderServiceClient::new(stack.service(ORDERS).channel());
    orders
        .create_order(create(&user.id, "before", &token))
        .await
        .unwrap();

    for replica in stack.replicas_mut(USERS) {
        replica.kill().await;
    }
    let before = order_metrics(&stack).await;
    let mut took = Vec::new();
    for i in 0..20 {
        let started = Instant::now();
        let status = orders
            .create_order(create(&user.id, &format!("down-{i}"), &token))
            .await
            .unwrap_err();
        took.push(started.elapsed());
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    }
    let after = order_metrics(&stack).await;
    let delta = |name: &str| {
        metric_sum(&after, name, &[("grpc_method", "GetUser")])
            - metric_sum(&before, name, &[("grpc_method", "GetUser")])
    };
    let (calls, attempts, retries) = (
        delta("grpc_client_started_total"),
        delta("grpc_client_attempts_total"),
        delta("grpc_client_retries_total"),
    );
    eprintln!(
        "20 CreateOrder: {calls} GetUser calls, {attempts} attempts sent, {retries} retries; times {took:?}"
    );
    assert!(calls >= 1.0, "{after}");
    // The throttle: 10 tokens, one per failure, no retries at half.
    assert!(retries <= 5.0, "{retries} retries against a dead target");
    assert!(attempts <= 2.0 + 5.0, "{attempts} attempts went out");
    assert!(
        metric_sum(
            &after,
            "grpc_client_circuit_breaker_transitions_total",
            &[("state", "open")]
        ) >= 1.0,
        "the breaker opened:\n{after}"
    );
    // Once open, calls fail at once instead of waiting on the 5 s deadline.
    for t in &took[10..] {
        assert!(
            *t < Duration::from_millis(500),
            "a call took {t:?} with the breaker open"
        );
    }

    // One replica returns: orders work again within seconds.
    stack.replicas_mut(USERS)[0].restart().await;
    let back = Instant::now();
    let mut i = 0;
    loop {
        i += 1;
        if orders
            .create_order(create(&user.id, &format!("up-{i}"), &token))
            .await
            .is_ok()
        {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(8),
            "not recovered 8 s after a replica returned"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "recovered {:?} after a replica was serving again",
        back.elapsed()
    );
}

#[tokio::test]
async fn lost_replies_retried_with_the_same_request_id_make_one_order_each() {
    // Every third reply is lost (deterministically: some are, always).
    let stack = Stack::start(
        Backend::Sqlite,
        &[Spec::new(ORDERS).env("FAULT_ERROR", "CreateOrder=drop:1/3")],
    )
    .await;
    let (user, token) = customer(&stack, "dropped").await;
    let args = ClientArgs {
        client_retry_max_attempts: 5,
        client_retry_throttle_max_tokens: 1000,
        client_breaker_failures: 0,
        ..ClientArgs::default()
    };
    let channel = client::connect(
        "order-service",
        &format!("http://{}", stack.service(ORDERS).addr),
        &args,
    )
    .unwrap();
    let mut orders = OrderServiceClient::new(channel);

    let mut replies: Vec<Vec<Order>> = Vec::new();
    for i in 0..10 {
        let request_id = format!("lost-{i}");
        let mut got = Vec::new();
        let mut calls = 0;
        // Each request id until two replies arrived: the client retries by
        // itself, and the test calls again when all its attempts were lost.
        while got.len() < 2 {
            calls += 1;
            assert!(calls < 30, "{request_id}: no reply in 30 calls");
            let mut request = create(&user.id, &request_id, &token);
            request.extensions_mut().insert(IdempotencyKey);
            match orders.create_order(request).await {
                Ok(order) => got.push(order.into_inner()),
                Err(status) => assert_eq!(status.code(), Code::Unavailable, "{status:?}"),
            }
        }
        assert_eq!(got[0], got[1], "{request_id}: different replies");
        replies.push(got);
    }

    let listed = orders
        .list_orders(authed(
            ListOrdersRequest {
                user_id: user.id.clone(),
                page_size: 100,
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner()
        .orders;
    assert_eq!(listed.len(), 10, "exactly one order per request id");
    for got in &replies {
        assert!(listed.iter().any(|o| o.id == got[0].id));
    }
    // Replies were really lost (and so retried) on the way.
    let (_, metrics) = http_get(stack.service(ORDERS).admin, "/metrics").await;
    let dropped = metric_sum(
        &metrics,
        "grpc_server_handled_total",
        &[("grpc_method", "CreateOrder"), ("grpc_code", "Unavailable")],
    );
    assert!(dropped >= 1.0, "no reply was dropped:\n{metrics}");
}

#[tokio::test]
async fn invalid_argument_not_found_and_permission_denied_are_never_retried() {
    let stack = Stack::start(Backend::Sqlite, &[]).await;
    let (alice, alice_token) = customer(&stack, "alice-nr").await;
    let (bob, _) = customer(&stack, "bob-nr").await;
    let channel = client::connect(
        "order-service",
        &format!("http://{}", stack.service(ORDERS).addr),
        &ClientArgs::default(),
    )
    .unwrap();
    let mut orders = OrderServiceClient::new(channel);

    let mut bad = order(&alice.id, "nr-bad");
    bad.items[0].quantity = 0;
    let mut keyed = authed(bad, &alice_token);
    keyed.extensions_mut().insert(IdempotencyKey);
    let invalid = orders.create_order(keyed).await.unwrap_err();
    assert_eq!(invalid.code(), Code::InvalidArgument);

    let missing = orders
        .get_order(authed(
            GetOrderRequest {
                order_id: uuid::Uuid::now_v7().to_string(),
            },
            &alice_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);

    let mut for_bob = authed(order(&bob.id, "nr-bob"), &alice_token);
    for_bob.extensions_mut().insert(IdempotencyKey);
    let denied = orders.create_order(for_bob).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);

    // Each reached order-service exactly once.
    let (_, metrics) = http_get(stack.service(ORDERS).admin, "/metrics").await;
    for (method, code) in [
        ("CreateOrder", "InvalidArgument"),
        ("GetOrder", "NotFound"),
        ("CreateOrder", "PermissionDenied"),
    ] {
        let handled = metric_sum(
            &metrics,
            "grpc_server_handled_total",
            &[("grpc_method", method), ("grpc_code", code)],
        );
        assert_eq!(handled, 1.0, "{method} {code} handled {handled} times");
    }
    // And through the inter-service hop: GetUser's NOT_FOUND from
    // user-service (an order for a user id nobody has, placed by an admin).
    let admin_token = shop_proto::auth::v1::auth_service_client::AuthServiceClient::new(
        stack.service(USERS).channel(),
    )
    .login(shop_proto::auth::v1::LoginRequest {
        identifier: shop_testkit::ADMIN_EMAIL.into(),
        password: shop_testkit::ADMIN_PASSWORD.into(),
    })
    .await
    .unwrap()
    .into_inner()
    .access_token;
    let nobody = uuid::Uuid::now_v7().to_string();
    let status = orders
        .create_order(authed(order(&nobody, "nr-nobody"), &admin_token))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    let (_, users_metrics) = http_get(stack.service(USERS).admin, "/metrics").await;
    assert_eq!(
        metric_sum(
            &users_metrics,
            "grpc_server_handled_total",
            &[("grpc_method", "GetUser"), ("grpc_code", "NotFound")]
        ),
        1.0
    );
    let (_, order_metrics) = http_get(stack.service(ORDERS).admin, "/metrics").await;
    assert_eq!(
        metric_sum(
            &order_metrics,
            "grpc_client_retries_total",
            &[("grpc_method", "GetUser")]
        ),
        0.0
    );
}
