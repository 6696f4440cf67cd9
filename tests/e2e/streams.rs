//! Streams against the real binaries: a client that goes away leaves no
//! server task behind (the active-streams gauge in the logs is back at zero
//! within a second), and SIGTERM ends open streams with UNAVAILABLE while
//! the process exits within its grace period.

use std::time::{Duration, Instant};

use shop_proto::{
    order::v1::{
        CreateOrderRequest, OrderStatus, ProcessOrderRequest, StreamOrdersRequest,
        WatchOrderRequest, order_service_client::OrderServiceClient,
    },
    user::v1::{
        CreateUserRequest, StreamUsersRequest, UserActivityRequest, user_activity_request::Action,
        user_service_client::UserServiceClient,
    },
};
use shop_testkit::{ADMIN_EMAIL, ADMIN_PASSWORD, Backend, Service, Spec, Stack, authed};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

use crate::{ORDERS, USERS, customer, order};

async fn admin_token(stack: &Stack) -> String {
    shop_proto::auth::v1::auth_service_client::AuthServiceClient::new(
        stack.service(USERS).channel(),
    )
    .login(shop_proto::auth::v1::LoginRequest {
        identifier: ADMIN_EMAIL.into(),
        password: ADMIN_PASSWORD.into(),
    })
    .await
    .unwrap()
    .into_inner()
    .access_token
}

/// How many "stream opened" events `service` has logged.
fn opened(service: &Service) -> usize {
    service
        .log_events()
        .iter()
        .filter(|e| e["message"] == "stream opened")
        .count()
}

/// True when `service` has logged as many closed streams as opened ones
/// and its active-streams gauge last read zero.
fn all_closed(service: &Service) -> bool {
    let events = service.log_events();
    let count = |m: &str| events.iter().filter(|e| e["message"] == m).count();
    let last_gauge = events
        .iter()
        .rev()
        .find(|e| e["message"] == "stream opened" || e["message"] == "stream closed")
        .map(|e| e["active_streams"].clone());
    count("stream opened") == count("stream closed") && last_gauge == Some(0.into())
}

/// Runs `call` (which opens one stream on `service`) on its own task until
/// the service logs that the stream is open, then drops the call as a
/// client that goes away would, and checks that within a second every
/// stream is closed and the gauge is back at zero. (A finite stream may
/// have ended on its own before; the long-lived ones and the client
/// streams below never do.)
async fn goes_away<F>(service: &Service, what: &str, call: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let before = opened(service);
    let task = tokio::spawn(call);
    let open = service
        .wait_for_log(Duration::from_secs(5), |_| opened(service) > before)
        .await;
    assert!(
        open.is_some(),
        "{what}: the stream never opened:\n{}",
        service.logs()
    );
    task.abort();
    let gone = Instant::now();
    let closed = service
        .wait_for_log(Duration::from_secs(1), |_| all_closed(service))
        .await;
    assert!(
        closed.is_some(),
        "{what}: still open 1 s after the client left:\n{}",
        service.logs()
    );
    eprintln!("{what}: closed {:?} after the client left", gone.elapsed());
}

#[tokio::test]
async fn every_stream_is_cleaned_up_when_its_client_goes_away() {
    let stack = Stack::start(Backend::Sqlite, &[]).await;
    let (user, token) = customer(&stack, "leaver").await;
    let admin = admin_token(&stack).await;
    let users = UserServiceClient::new(stack.service(USERS).channel());
    let orders = OrderServiceClient::new(stack.service(ORDERS).channel());
    let placed = orders
        .clone()
        .create_order(authed(order(&user.id, "leave-1"), &token))
        .await
        .unwrap()
        .into_inner();

    // Server streams that stay open: a watch, and an activity feed.
    {
        let mut orders = orders.clone();
        let request = authed(
            WatchOrderRequest {
                order_id: placed.id.clone(),
            },
            &token,
        );
        goes_away(stack.service(ORDERS), "WatchOrder", async move {
            let mut watch = orders.watch_order(request).await.unwrap().into_inner();
            while watch.message().await.unwrap().is_some() {}
        })
        .await;
    }
    {
        let mut users = users.clone();
        let (tx, rx) = mpsc::channel(1);
        tx.send(UserActivityRequest {
            action: Action::Subscribe as i32,
            user_id: user.id.clone(),
        })
        .await
        .unwrap();
        let request = authed(ReceiverStream::new(rx), &token);
        goes_away(stack.service(USERS), "UserActivity", async move {
            let _keep_sending = tx;
            let mut events = users.user_activity(request).await.unwrap().into_inner();
            while events.message().await.unwrap().is_some() {}
        })
        .await;
    }
    // Streams with an end, abandoned before it: the client stops reading
    // after connecting (the server producer waits on its full buffer).
    {
        let mut users = users.clone();
        let request = authed(StreamUsersRequest::default(), &admin);
        goes_away(stack.service(USERS), "StreamUsers", async move {
            let _stream = users.stream_users(request).await.unwrap().into_inner();
            std::future::pending::<()>().await;
        })
        .await;
    }
    {
        let mut orders = orders.clone();
        let request = authed(StreamOrdersRequest::default(), &token);
        goes_away(stack.service(ORDERS), "StreamOrders", async move {
            let _stream = orders.stream_orders(request).await.unwrap().into_inner();
            std::future::pending::<()>().await;
        })
        .await;
    }
    // Client and bidi streams whose client stops mid-stream.
    {
        let mut users = users.clone();
        let (tx, rx) = mpsc::channel::<CreateUserRequest>(1);
        let request = authed(ReceiverStream::new(rx), &admin);
        goes_away(stack.service(USERS), "BulkCreateUsers", async move {
            let _keep_open = tx;
            let _ = users.bulk_create_users(request).await;
        })
        .await;
    }
    {
        let mut orders = orders.clone();
        let (tx, rx) = mpsc::channel::<CreateOrderRequest>(1);
        let request = authed(ReceiverStream::new(rx), &token);
        goes_away(stack.service(ORDERS), "BatchCreateOrders", async move {
            let _keep_open = tx;
            let _ = orders.batch_create_orders(request).await;
        })
        .await;
    }
    {
        let mut orders = orders.clone();
        let (tx, rx) = mpsc::channel::<ProcessOrderRequest>(1);
        tx.send(ProcessOrderRequest {
            order_id: placed.id.clone(),
            new_status: OrderStatus::Confirmed as i32,
        })
        .await
        .unwrap();
        let request = authed(ReceiverStream::new(rx), &admin);
        goes_away(stack.service(ORDERS), "ProcessOrders", async move {
            let _keep_open = tx;
            let mut responses = orders.process_orders(request).await.unwrap().into_inner();
            while responses.message().await.unwrap().is_some() {}
        })
        .await;
    }
}

#[tokio::test]
async fn sigterm_ends_an_open_watch_with_unavailable_and_exits_within_the_grace() {
    let mut stack = Stack::start(
        Backend::Sqlite,
        &[Spec::new(ORDERS).env("SHUTDOWN_GRACE", "3s")],
    )
    .await;
    let (user, token) = customer(&stack, "watching").await;
    let mut orders = OrderServiceClient::new(stack.service(ORDERS).channel());
    let placed = orders
        .create_order(authed(order(&user.id, "term-1"), &token))
        .await
        .unwrap()
        .into_inner();
    let mut watch = orders
        .watch_order(authed(
            WatchOrderRequest {
                order_id: placed.id,
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(
        watch.message().await.unwrap().is_some(),
        "the current state first"
    );

    let started = Instant::now();
    let exit = {
        let orders_service = stack.service_mut(ORDERS);
        let (end, exit) = tokio::join!(
            async {
                tokio::time::timeout(Duration::from_secs(5), watch.message())
                    .await
                    .expect("the watch ends before the process does")
            },
            orders_service.terminate(Duration::from_secs(5)),
        );
        let status = end.expect_err("not OK, not a reset: a status");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        exit
    };
    assert!(exit.success(), "exit status {exit}");
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "exited after {took:?}, grace is 3 s"
    );
}
