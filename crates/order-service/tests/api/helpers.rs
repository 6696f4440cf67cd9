//! Starting user-service and order-service for a test (the test kit's
//! spawn helpers), and calling them.

use std::{net::SocketAddr, path::Path};

use shop_proto::{
    order::v1::{CreateOrderRequest, OrderItem, order_service_client::OrderServiceClient},
    user::v1::{User, user_service_client::UserServiceClient},
};
use shop_server::Listeners;
use shop_testkit::{App, accounts, apps};
use tempfile::TempDir;
use tonic::transport::Channel;

pub(crate) use shop_testkit::{Backend, PASSWORD, authed, violated_fields};

/// The products every order-service test can order: sku, EUR cents,
/// units (plenty).
pub(crate) const PRODUCTS: &[(&str, i64, i64)] = &[
    ("sku-apple", 250, 100_000),
    ("sku-pear", 1000, 100_000),
    // Scarce: for races for the last units.
    ("sku-rare", 4200, 5),
];

/// user-service on `listeners` with its database and key in `dir`, and
/// order-service (started with the same `dir`) as a service account,
/// serving.
pub(crate) async fn start_user_service(listeners: Listeners, dir: &Path, extra: &[&str]) -> App {
    let db = format!("sqlite://{}", dir.join("users.db").display());
    let accounts = service_accounts(dir);
    let mut flags = vec!["--service-accounts-dir", accounts.as_str()];
    flags.extend_from_slice(extra);
    let config = apps::user_service_config(&db, &dir.join("user-data"), &flags);
    let app = App::launch(user_service::run, config, listeners);
    app.wait_until_serving().await;
    app
}

/// An inventory-service address for tests that place no order (nothing
/// listens there; channels connect lazily).
pub(crate) const NO_INVENTORY: &str = "127.0.0.1:9";

/// Where order-service's service account secret is kept for a test in
/// `dir`: user-service's accounts directory.
fn service_accounts(dir: &Path) -> String {
    dir.join("service-accounts").display().to_string()
}

/// inventory-service on its own database on `backend` (files in `dir`)
/// with [`PRODUCTS`], taking token keys from user-service at `users`,
/// serving.
pub(crate) async fn start_inventory_service(
    backend: Backend,
    users: SocketAddr,
    dir: &Path,
    extra: &[&str],
) -> App {
    let db = backend.database_url("inventory", dir).await;
    apps::seed_products(&db, PRODUCTS).await;
    apps::inventory_service(&db, &dir.join("inventory-data"), users, extra).await
}

/// order-service on `listeners`, talking to user-service at `users` and
/// inventory-service at `inventory`, serving.
pub(crate) async fn start_order_service(
    listeners: Listeners,
    users: SocketAddr,
    inventory: SocketAddr,
    database_url: &str,
    dir: &Path,
    extra: &[&str],
) -> App {
    let secret = format!("{}/order-service.secret", service_accounts(dir));
    let mut flags = vec!["--service-secret-file", secret.as_str()];
    flags.extend_from_slice(extra);
    let config = apps::order_service_config(
        database_url,
        &dir.join("order-data"),
        users,
        inventory,
        &flags,
    );
    let app = App::launch(order_service::run, config, listeners);
    app.wait_until_serving().await;
    app
}

/// Sockets on `grpc` (a service's old address, to restart it there) and a
/// fresh admin port.
pub(crate) async fn rebind(grpc: SocketAddr) -> Listeners {
    Listeners {
        grpc: tokio::net::TcpListener::bind(grpc).await.unwrap(),
        admin: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
    }
}

async fn listeners() -> Listeners {
    Listeners::ephemeral().await.unwrap()
}

/// user-service, inventory-service and order-service wired together, with
/// clients.
pub(crate) struct Stack {
    pub(crate) user_service: App,
    pub(crate) inventory_service: App,
    pub(crate) order_service: App,
    pub(crate) users: UserServiceClient<Channel>,
    pub(crate) orders: OrderServiceClient<Channel>,
    pub(crate) orders_db: String,
    pub(crate) dir: TempDir,
}

impl Stack {
    /// Both services on SQLite, default settings.
    pub(crate) async fn spawn() -> Stack {
        Stack::spawn_with(Backend::Sqlite, &[], &[]).await
    }

    /// The services with extra flags; order-service on `backend`.
    pub(crate) async fn spawn_with(
        backend: Backend,
        user_flags: &[&str],
        order_flags: &[&str],
    ) -> Stack {
        Stack::spawn_full(backend, user_flags, &[], order_flags).await
    }

    /// The services with extra flags for each; order-service and
    /// inventory-service on `backend`.
    pub(crate) async fn spawn_full(
        backend: Backend,
        user_flags: &[&str],
        inventory_flags: &[&str],
        order_flags: &[&str],
    ) -> Stack {
        let dir = tempfile::tempdir().unwrap();
        let orders_db = backend.database_url("orders", dir.path()).await;
        let user_service = start_user_service(listeners().await, dir.path(), user_flags).await;
        let inventory_service =
            start_inventory_service(backend, user_service.addr, dir.path(), inventory_flags).await;
        let order_service = start_order_service(
            listeners().await,
            user_service.addr,
            inventory_service.addr,
            &orders_db,
            dir.path(),
            order_flags,
        )
        .await;
        Stack {
            users: UserServiceClient::new(user_service.channel()),
            orders: OrderServiceClient::new(order_service.channel()),
            user_service,
            inventory_service,
            order_service,
            orders_db,
            dir,
        }
    }

    /// Signs up `username` and returns the user with an access token.
    pub(crate) async fn customer(&self, username: &str) -> (User, String) {
        accounts::customer(self.user_service.channel(), username).await
    }

    /// An access token for `identifier`.
    pub(crate) async fn login(&self, identifier: &str, password: &str) -> String {
        accounts::login(self.user_service.channel(), identifier, password)
            .await
            .access_token
    }

    /// The orders of the holder of `token` (the first page).
    pub(crate) async fn list_own_orders(
        &self,
        token: &str,
    ) -> shop_proto::order::v1::ListOrdersResponse {
        self.orders
            .clone()
            .list_orders(authed(
                shop_proto::order::v1::ListOrdersRequest::default(),
                token,
            ))
            .await
            .unwrap()
            .into_inner()
    }

    /// An access token of the bootstrap admin.
    pub(crate) async fn admin_token(&self) -> String {
        accounts::admin_token(self.user_service.channel()).await
    }
}

/// A valid order for `user_id`: 2 x 250 + 1 x 1000 = 1500 cents.
pub(crate) fn order_request(user_id: &str, request_id: &str) -> CreateOrderRequest {
    CreateOrderRequest {
        user_id: user_id.into(),
        items: vec![
            OrderItem {
                product_id: "sku-apple".into(),
                quantity: 2,
                unit_price_cents: 250,
            },
            OrderItem {
                product_id: "sku-pear".into(),
                quantity: 1,
                unit_price_cents: 1000,
            },
        ],
        currency_code: "EUR".into(),
        request_id: request_id.into(),
    }
}
