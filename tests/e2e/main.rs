//! End-to-end tests: the real service binaries as separate processes, each
//! with its own database (SQLite, and PostgreSQL when scripts/test.sh
//! provides one), configured by the same environment variables
//! docker-compose sets, handed their sockets already bound.

mod database_roles;
mod deadlines;
mod durability;
mod envoy;
mod faults;
mod flow;
mod health;
mod hostile;
mod http2;
mod lifecycle;
mod loadgen;
mod observability;
mod rest;
mod saga;
mod shopctl;
mod streams;
mod tls;
mod web;

use shop_proto::user::v1::User;
use shop_testkit::Stack;

/// user-service, by name in a [`Stack`].
const USERS: &str = "user-service";
/// inventory-service, by name in a [`Stack`].
const INVENTORY: &str = "inventory-service";
/// order-service, by name in a [`Stack`].
const ORDERS: &str = "order-service";

/// Signs `username` up and logs in: the user and an access token.
async fn customer(stack: &Stack, username: &str) -> (User, String) {
    customer_on(stack.service(USERS), username).await
}

/// [`customer`] through one given user-service process.
async fn customer_on(users: &shop_testkit::Service, username: &str) -> (User, String) {
    shop_testkit::accounts::customer(users.channel(), username).await
}

/// An order for `user_id`: 3 x 499 = 1497 cents of the development
/// catalogue's sku-1.
fn order(user_id: &str, request_id: &str) -> shop_proto::order::v1::CreateOrderRequest {
    shop_proto::order::v1::CreateOrderRequest {
        user_id: user_id.into(),
        items: vec![shop_proto::order::v1::OrderItem {
            product_id: "sku-1".into(),
            quantity: 3,
            unit_price_cents: 499,
        }],
        currency_code: "EUR".into(),
        request_id: request_id.into(),
    }
}
