//! The whole flow a client goes through, across both processes.

use shop_proto::order::v1::{
    CancelOrderRequest, GetOrderRequest, ListOrdersRequest, OrderStatus,
    order_service_client::OrderServiceClient,
};
use shop_testkit::{Backend, Stack, authed};
use tonic::Code;

use crate::{ORDERS, customer, order};

async fn sign_up_order_repeat_list_cancel_and_hide(stack: &Stack) {
    let (alice, token) = customer(stack, "alice").await;
    let mut orders = OrderServiceClient::new(stack.service(ORDERS).channel());

    let first = orders
        .create_order(authed(order(&alice.id, "checkout-1"), &token))
        .await
        .expect("create order")
        .into_inner();
    assert_eq!(first.total_cents, 1497);
    assert_eq!(first.status, OrderStatus::Pending as i32);

    let repeat = orders
        .create_order(authed(order(&alice.id, "checkout-1"), &token))
        .await
        .expect("repeat with the same request_id")
        .into_inner();
    assert_eq!(repeat, first, "the same order, not a second one");

    let got = orders
        .get_order(authed(
            GetOrderRequest {
                order_id: first.id.clone(),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, first);

    for i in 2..=5 {
        orders
            .create_order(authed(order(&alice.id, &format!("checkout-{i}")), &token))
            .await
            .unwrap();
    }
    let mut listed = Vec::new();
    let mut page_token = String::new();
    let mut pages = 0;
    loop {
        let page = orders
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
        pages += 1;
        listed.extend(page.orders.into_iter().map(|o| o.id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(
        (listed.len(), pages),
        (5, 3),
        "five orders over three pages"
    );
    assert_eq!(listed.last(), Some(&first.id), "newest first");

    let cancelled = orders
        .cancel_order(authed(
            CancelOrderRequest {
                order_id: first.id.clone(),
                reason: "changed my mind".into(),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cancelled.status, OrderStatus::Cancelled as i32);

    let (_, mallory) = customer(stack, "mallory").await;
    let hidden = orders
        .get_order(authed(
            GetOrderRequest {
                order_id: first.id.clone(),
            },
            &mallory,
        ))
        .await
        .unwrap_err();
    assert_eq!(hidden.code(), Code::NotFound);
    let hidden_list = orders
        .list_orders(authed(
            ListOrdersRequest {
                user_id: alice.id.clone(),
                ..Default::default()
            },
            &mallory,
        ))
        .await
        .unwrap_err();
    assert_eq!(hidden_list.code(), Code::NotFound);
}

#[tokio::test]
async fn the_whole_flow_on_sqlite() {
    let stack = Stack::start(Backend::Sqlite, &[]).await;
    sign_up_order_repeat_list_cancel_and_hide(&stack).await;
}

#[tokio::test]
async fn the_whole_flow_on_postgres() {
    let stack = Stack::start(Backend::Postgres, &[]).await;
    sign_up_order_repeat_list_cancel_and_hide(&stack).await;
}
