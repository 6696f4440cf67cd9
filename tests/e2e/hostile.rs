//! Hostile input against the real binaries: requests built to make a
//! service spend memory, CPU or streams out of proportion to what they
//! cost the caller. Memory is the resident growth of the service process
//! (its high-water mark where a burst matters), CPU the time until the
//! answer; the bounds are an order of magnitude or more below what each
//! attack cost before it was stopped, so a busy machine does not flake
//! them.

use std::time::{Duration, Instant};

use shop_core::context::Propagate;
use shop_loadgen::rss::{peak_resident_kib, resident_kib};
use shop_proto::order::v1::{
    CreateOrderRequest, OrderItem, order_service_client::OrderServiceClient,
};
use shop_testkit::{Backend, Spec, Stack, authed};
use tonic::Code;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::{ORDERS, USERS, customer, order};

fn pid(stack: &Stack, name: &str) -> u32 {
    stack.service(name).pid().expect("the service is running")
}

#[tokio::test]
async fn a_million_item_order_is_refused_before_it_is_read() {
    let stack = Stack::start(Backend::Sqlite, &Spec::everyone(&[])).await;
    let (user, token) = customer(&stack, "hoarder").await;
    let mut orders = OrderServiceClient::new(Propagate::new(stack.service(ORDERS).channel()));
    // Warm the path so that the baseline includes a served order.
    orders
        .create_order(authed(order(&user.id, "warm-1"), &token))
        .await
        .expect("an ordinary order");

    // A million empty items: a 2 MB message, under MAX_MESSAGE_BYTES.
    // Before per-method limits it took 17 s and ~2 GB to refuse.
    let hostile = CreateOrderRequest {
        user_id: user.id.clone(),
        items: vec![OrderItem::default(); 1_000_000],
        currency_code: "EUR".into(),
        request_id: "hostile-1".into(),
    };
    let peak_before = peak_resident_kib(pid(&stack, ORDERS)).expect("VmHWM");
    let started = Instant::now();
    let refused = orders
        .create_order(authed(hostile, &token))
        .await
        .unwrap_err();
    let took = started.elapsed();
    let peak_after = peak_resident_kib(pid(&stack, ORDERS)).expect("VmHWM");

    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("32768 bytes"),
        "says the method's limit: {refused:?}"
    );
    assert!(took < Duration::from_secs(2), "answered after {took:?}");
    let grew_mib = peak_after.saturating_sub(peak_before) / 1024;
    assert!(
        grew_mib < 32,
        "order-service's peak resident memory grew by {grew_mib} MiB"
    );
    // The service is fine and the next honest order goes through.
    orders
        .create_order(authed(order(&user.id, "after-1"), &token))
        .await
        .expect("an ordinary order after the hostile one");
}

#[tokio::test]
async fn health_watches_of_megabyte_names_leave_nothing_behind() {
    let stack = Stack::start(Backend::Sqlite, &[Spec::new(USERS)]).await;
    let users = stack.service(USERS);
    let mut health = HealthClient::new(users.channel());
    let before = resident_kib(pid(&stack, USERS)).expect("VmRSS");

    // 200 anonymous Watch calls, each naming a different 1 MB service and
    // abandoned at once. Before, each name was kept: +200 MB.
    for i in 0..200u32 {
        let mut name = format!("{i:08}");
        name.push_str(&"n".repeat(1 << 20));
        let call = health.watch(HealthCheckRequest { service: name });
        if let Ok(answer) = tokio::time::timeout(Duration::from_millis(50), call).await {
            let status = answer.unwrap_err();
            // Refused from its length prefix, before the megabyte is read:
            // the client gets the status, or, when the server's reset of
            // the stream reaches it while it is still sending, a broken
            // pipe.
            let refused = status.code() == Code::ResourceExhausted
                || (status.code() == Code::Unknown && status.message() == "transport error");
            assert!(refused, "{status:?}");
        }
    }
    // The same with names under the size limit, past the name limit, and
    // with short unknown names: answered, not kept.
    let long = health
        .check(HealthCheckRequest {
            service: "n".repeat(1000),
        })
        .await
        .unwrap_err();
    assert_eq!(long.code(), Code::InvalidArgument);
    for i in 0..2000 {
        let unknown = health
            .check(HealthCheckRequest {
                service: format!("unknown.Service{i:0>200}"),
            })
            .await
            .unwrap_err();
        assert_eq!(unknown.code(), Code::NotFound);
    }

    let after = resident_kib(pid(&stack, USERS)).expect("VmRSS");
    let grew_mib = after.saturating_sub(before) / 1024;
    assert!(grew_mib < 32, "user-service grew by {grew_mib} MiB");
    let serving = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health still answers");
    assert_eq!(serving.into_inner().status, 1, "SERVING");
}

#[tokio::test]
async fn health_watches_count_toward_the_stream_limit_per_address() {
    let stack = Stack::start(
        Backend::Sqlite,
        &[Spec::new(USERS).env("STREAM_MAX_PER_PRINCIPAL", "4")],
    )
    .await;
    let mut health = HealthClient::new(stack.service(USERS).channel());
    let mut open = Vec::new();
    for i in 0..4 {
        let mut watch = health
            .watch(HealthCheckRequest {
                service: format!("not.Served{i}"),
            })
            .await
            .expect("a watch within the limit")
            .into_inner();
        let first = watch.message().await.unwrap().unwrap();
        assert_eq!(first.status, 3, "SERVICE_UNKNOWN");
        open.push(watch);
    }
    let refused = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    drop(open.pop());
    // The place comes back once the server has seen the stream go.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match health
            .watch(HealthCheckRequest {
                service: String::new(),
            })
            .await
        {
            Ok(_) => break,
            Err(status) if status.code() == Code::ResourceExhausted => {
                assert!(Instant::now() < deadline, "the place never came back");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(other) => panic!("{other:?}"),
        }
    }
}
