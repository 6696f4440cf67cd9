//! An acknowledged order is on disk: order-service is SIGKILLed while
//! callers place orders as fast as it takes them (SQLite commits them in
//! groups), restarted, and every order it answered for is still there.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use shop_proto::order::v1::{GetOrderRequest, order_service_client::OrderServiceClient};
use shop_testkit::{Backend, Spec, Stack, authed};

use crate::{ORDERS, customer, order};

const CALLERS: usize = 16;

async fn every_acknowledged_order_survives_a_sigkill_under_load(backend: Backend) {
    let unlimited = [
        ("RATE_LIMIT_PER_SECOND", "1000000"),
        ("RATE_LIMIT_BURST", "1000000"),
    ];
    let mut stack = Stack::start(backend, &Spec::everyone(&unlimited)).await;
    let (user, token) = customer(&stack, "durable").await;

    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let callers: Vec<_> = (0..CALLERS)
        .map(|caller| {
            let mut orders = OrderServiceClient::new(stack.service(ORDERS).channel());
            let (user_id, token) = (user.id.clone(), token.clone());
            let (acknowledged, stop) = (Arc::clone(&acknowledged), Arc::clone(&stop));
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Acquire) {
                    n += 1;
                    let mut request = authed(order(&user_id, &format!("c{caller}-{n}")), &token);
                    request.set_timeout(Duration::from_secs(5));
                    match orders.create_order(request).await {
                        Ok(reply) => acknowledged.lock().unwrap().push(reply.into_inner().id),
                        // The crash: calls in flight fail, and so do the
                        // ones after it until the test stops.
                        Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
            })
        })
        .collect();

    let deadline = Instant::now() + Duration::from_secs(60);
    while acknowledged.lock().unwrap().len() < 200 {
        assert!(Instant::now() < deadline, "200 orders not placed in 60 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stack.service_mut(ORDERS).kill().await;
    stop.store(true, Ordering::Release);
    for caller in callers {
        caller.await.unwrap();
    }
    let acknowledged = std::mem::take(&mut *acknowledged.lock().unwrap());

    stack.service_mut(ORDERS).restart().await;
    let mut orders = OrderServiceClient::new(stack.service(ORDERS).channel());
    let mut lost = Vec::new();
    for id in &acknowledged {
        let found = orders
            .get_order(authed(
                GetOrderRequest {
                    order_id: id.clone(),
                },
                &token,
            ))
            .await;
        match found {
            Ok(order) => assert_eq!(&order.into_inner().id, id),
            Err(status) if status.code() == tonic::Code::NotFound => lost.push(id.clone()),
            Err(status) => panic!("reading order {id} back: {status:?}"),
        }
    }
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged orders lost in the crash: {lost:?}",
        lost.len(),
        acknowledged.len()
    );
}

#[tokio::test]
async fn every_acknowledged_order_survives_a_sigkill_under_load_on_sqlite() {
    every_acknowledged_order_survives_a_sigkill_under_load(Backend::Sqlite).await;
}

#[tokio::test]
async fn every_acknowledged_order_survives_a_sigkill_under_load_on_postgres() {
    every_acknowledged_order_survives_a_sigkill_under_load(Backend::Postgres).await;
}
