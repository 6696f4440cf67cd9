//! Stopping and restarting the processes: SIGTERM exits cleanly, and
//! nothing committed before a restart is lost.

use std::time::Duration;

use shop_proto::order::v1::{
    GetOrderRequest, ListOrdersRequest, order_service_client::OrderServiceClient,
};
use shop_testkit::{Backend, Stack, authed};

use crate::{ORDERS, USERS, customer, order};

async fn orders_survive_a_restart(backend: Backend) {
    let mut stack = Stack::start(backend, &[]).await;
    let (user, token) = customer(&stack, "durable").await;
    let mut orders = OrderServiceClient::new(stack.service(ORDERS).channel());
    let mut placed = Vec::new();
    for i in 0..10 {
        placed.push(
            orders
                .create_order(authed(order(&user.id, &format!("keep-{i}")), &token))
                .await
                .unwrap()
                .into_inner(),
        );
    }

    let status = stack
        .service_mut(ORDERS)
        .terminate(Duration::from_secs(10))
        .await;
    assert!(
        status.success(),
        "order-service exit status after SIGTERM: {status}"
    );
    stack.service_mut(ORDERS).restart().await;

    let mut orders = OrderServiceClient::new(stack.service(ORDERS).channel());
    let list = orders
        .list_orders(authed(
            ListOrdersRequest {
                page_size: 100,
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        list.orders.len(),
        placed.len(),
        "every order is still there"
    );
    for order in &placed {
        let got = orders
            .get_order(authed(
                GetOrderRequest {
                    order_id: order.id.clone(),
                },
                &token,
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(&got, order);
    }

    let status = stack
        .service_mut(USERS)
        .terminate(Duration::from_secs(10))
        .await;
    assert!(
        status.success(),
        "user-service exit status after SIGTERM: {status}"
    );
}

#[tokio::test]
async fn orders_survive_a_restart_on_sqlite() {
    orders_survive_a_restart(Backend::Sqlite).await;
}

#[tokio::test]
async fn orders_survive_a_restart_on_postgres() {
    orders_survive_a_restart(Backend::Postgres).await;
}

/// The container health check (`shop-health-probe`, in every image) exits
/// 0 only for a service that answers SERVING.
#[tokio::test]
async fn the_container_health_probe_speaks_grpc_health() {
    let stack = Stack::start(Backend::Sqlite, &[]).await;
    let probe = |addr: String, service: &'static str| async move {
        tokio::process::Command::new(shop_testkit::binary("shop-health-probe"))
            .env_clear()
            .args(["--addr", &addr, "--service", service, "--timeout", "2s"])
            .output()
            .await
            .unwrap()
    };
    let users = format!("http://{}", stack.service(USERS).addr);
    let orders = format!("http://{}", stack.service(ORDERS).addr);
    assert!(
        probe(users.clone(), "shop.user.v1.UserService")
            .await
            .status
            .success()
    );
    assert!(probe(users.clone(), "").await.status.success());
    assert!(
        probe(orders, "shop.order.v1.OrderService")
            .await
            .status
            .success()
    );

    let unknown = probe(users, "shop.nope.v1.Nope").await;
    assert_eq!(unknown.status.code(), Some(1));
    let closed = probe(format!("http://{}", shop_testkit::unused_address()), "").await;
    assert_eq!(closed.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&closed.stderr).contains("cannot connect"));
}

#[tokio::test]
async fn sighup_without_tls_is_logged_and_the_services_keep_serving() {
    let stack = Stack::start(Backend::Sqlite, &[]).await;
    for service in [stack.service(USERS), stack.service(ORDERS)] {
        service.signal("HUP").await;
        let logged = service
            .wait_for_log(Duration::from_secs(5), |e| {
                e["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("SIGHUP received"))
            })
            .await;
        assert!(logged.is_some(), "no SIGHUP line:\n{}", service.logs());
    }
    // Still there and answering.
    let (user, token) = customer(&stack, "hangup").await;
    OrderServiceClient::new(stack.service(ORDERS).channel())
        .create_order(authed(order(&user.id, "after-hup"), &token))
        .await
        .expect("order-service still serves after SIGHUP");
}
