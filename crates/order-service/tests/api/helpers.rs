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

/// user-service on `listeners` with its database and key in `dir`,
/// serving.
pub(crate) async fn start_user_service(listeners: Listeners, dir: &Path, extra: &[&str]) -> App {
    let db = format!("sqlite://{}", dir.join("users.db").display());
    let config = apps::user_service_config(&db, &dir.join("user-data"), extra);
    let app = App::launch(user_service::run, config, listeners);
    app.wait_until_serving().await;
    app
}

/// order-service on `listeners`, talking to user-service at `users`,
/// serving.
pub(crate) async fn start_order_service(
    listeners: Listeners,
    users: SocketAddr,
    database_url: &str,
    dir: &Path,
    extra: &[&str],
) -> App {
    let config = apps::order_service_config(database_url, &dir.join("order-data"), users, extra);
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

/// user-service and order-service wired together, with clients.
pub(crate) struct Stack {
    pub(crate) user_service: App,
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

    /// Both services with extra flags; order-service on `backend`.
    pub(crate) async fn spawn_with(
        backend: Backend,
        user_flags: &[&str],
        order_flags: &[&str],
    ) -> Stack {
        let dir = tempfile::tempdir().unwrap();
        let orders_db = backend.database_url("orders", dir.path()).await;
        let user_service = start_user_service(listeners().await, dir.path(), user_flags).await;
        let order_service = start_order_service(
            listeners().await,
            user_service.addr,
            &orders_db,
            dir.path(),
            order_flags,
        )
        .await;
        Stack {
            users: UserServiceClient::new(user_service.channel()),
            orders: OrderServiceClient::new(order_service.channel()),
            user_service,
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
