//! Starting user-service and order-service for a test, and calling them.

use std::{future::Future, net::SocketAddr, path::Path, time::Duration};

use clap::Parser as _;
use shop_proto::{
    auth::v1::{LoginRequest, auth_service_client::AuthServiceClient},
    order::v1::{CreateOrderRequest, OrderItem, order_service_client::OrderServiceClient},
    user::v1::{CreateUserRequest, User, user_service_client::UserServiceClient},
};
use tempfile::TempDir;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};

pub(crate) use shop_testkit::{authed, violated_fields};
use shop_testkit::{fresh_postgres_database, postgres_url, wait_until_serving};
use tonic::transport::Channel;

pub(crate) const ADMIN_EMAIL: &str = "root@shop.test";
pub(crate) const ADMIN_PASSWORD: &str = "admin-password-1";
pub(crate) const PASSWORD: &str = "correct horse battery";

/// Which database order-service runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    Sqlite,
    Postgres,
}

fn init_test_logging() {
    if std::env::var_os("TEST_LOG").is_some() {
        shop_middleware::telemetry::init(
            "tests",
            Default::default(),
            "debug,sqlx=warn,h2=info,hyper=info",
        );
    }
}

/// The orders database URL for a new test on `backend`, or `None` to skip.
pub(crate) async fn database_url(backend: Backend, dir: &Path) -> Option<String> {
    match backend {
        Backend::Sqlite => Some(format!("sqlite://{}", dir.join("orders.db").display())),
        Backend::Postgres => Some(fresh_postgres_database(&postgres_url()?, "orders").await),
    }
}

/// One service running in-process.
pub(crate) struct Running {
    pub(crate) addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Running {
    async fn start<F, Fut>(listener: TcpListener, run: F) -> Running
    where
        F: FnOnce(TcpListener, oneshot::Receiver<()>) -> Fut,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel();
        let handle = tokio::spawn(run(listener, rx));
        Running {
            addr,
            shutdown: Some(tx),
            handle: Some(handle),
        }
    }

    fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect_lazy()
    }

    async fn wait_until_serving(&self, service: &str) {
        let handle = self.handle.as_ref().expect("started");
        wait_until_serving(self.channel(), service, Duration::from_secs(15), || {
            if handle.is_finished() {
                Err("exited during start-up (run with TEST_LOG=1)".into())
            } else {
                Ok(())
            }
        })
        .await;
    }

    /// Signals shutdown and waits for the service to return.
    pub(crate) async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(handle) = self.handle.take() {
            tokio::time::timeout(Duration::from_secs(10), handle)
                .await
                .expect("stops within 10 s")
                .expect("did not panic")
                .expect("returned Ok");
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Starts user-service on `listener` with its database and key in `dir`.
pub(crate) async fn start_user_service(
    listener: TcpListener,
    dir: &Path,
    extra: &[&str],
) -> Running {
    let db = format!("sqlite://{}", dir.join("users.db").display());
    let data = dir.join("user-data").display().to_string();
    let mut args = vec![
        "user-service",
        "--database-url",
        &db,
        "--data-dir",
        &data,
        "--bcrypt-cost",
        "4",
        "--bootstrap-admin-email",
        ADMIN_EMAIL,
        "--bootstrap-admin-password",
        ADMIN_PASSWORD,
        "--shutdown-grace",
        "1s",
        "--admin-addr",
        "127.0.0.1:0",
        "--health-check-interval",
        "200ms",
    ];
    args.extend_from_slice(extra);
    let config = user_service::Config::try_parse_from(args).expect("valid user-service flags");
    let running = Running::start(listener, |listener, rx| {
        user_service::run(config, listener, async move {
            let _ = rx.await;
        })
    })
    .await;
    running.wait_until_serving("shop.user.v1.UserService").await;
    running
}

/// Starts order-service on `listener`, talking to user-service at `users`.
pub(crate) async fn start_order_service(
    listener: TcpListener,
    users: SocketAddr,
    database_url: &str,
    dir: &Path,
    extra: &[&str],
) -> Running {
    let user_url = format!("http://{users}");
    let data = dir.join("order-data").display().to_string();
    let mut args = vec![
        "order-service",
        "--database-url",
        database_url,
        "--data-dir",
        &data,
        "--user-service-url",
        &user_url,
        "--shutdown-grace",
        "1s",
        "--admin-addr",
        "127.0.0.1:0",
        "--health-check-interval",
        "200ms",
    ];
    args.extend_from_slice(extra);
    let config = order_service::Config::try_parse_from(args).expect("valid order-service flags");
    let running = Running::start(listener, |listener, rx| {
        order_service::run(config, listener, async move {
            let _ = rx.await;
        })
    })
    .await;
    running
        .wait_until_serving("shop.order.v1.OrderService")
        .await;
    running
}

async fn listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.unwrap()
}

/// user-service and order-service wired together, with clients.
pub(crate) struct Stack {
    pub(crate) user_service: Running,
    pub(crate) order_service: Running,
    pub(crate) users: UserServiceClient<Channel>,
    pub(crate) auth: AuthServiceClient<Channel>,
    pub(crate) orders: OrderServiceClient<Channel>,
    pub(crate) orders_db: String,
    pub(crate) dir: TempDir,
}

impl Stack {
    /// Both services on SQLite, default settings.
    pub(crate) async fn spawn() -> Stack {
        Stack::spawn_with(Backend::Sqlite, &[], &[]).await.unwrap()
    }

    /// Both services with extra flags; order-service on `backend`. `None`
    /// when the backend is unavailable (the test should return).
    pub(crate) async fn spawn_with(
        backend: Backend,
        user_flags: &[&str],
        order_flags: &[&str],
    ) -> Option<Stack> {
        init_test_logging();
        let dir = tempfile::tempdir().unwrap();
        let orders_db = database_url(backend, dir.path()).await?;
        let user_service = start_user_service(listener().await, dir.path(), user_flags).await;
        let order_service = start_order_service(
            listener().await,
            user_service.addr,
            &orders_db,
            dir.path(),
            order_flags,
        )
        .await;
        Some(Stack {
            users: UserServiceClient::new(user_service.channel()),
            auth: AuthServiceClient::new(user_service.channel()),
            orders: OrderServiceClient::new(order_service.channel()),
            user_service,
            order_service,
            orders_db,
            dir,
        })
    }

    /// Signs up `username` and returns the user with an access token.
    pub(crate) async fn customer(&self, username: &str) -> (User, String) {
        let user = self
            .users
            .clone()
            .create_user(CreateUserRequest {
                email: format!("{username}@example.com"),
                username: username.into(),
                password: PASSWORD.into(),
                first_name: "Test".into(),
                last_name: username.into(),
            })
            .await
            .expect("sign-up")
            .into_inner();
        let token = self.login(username, PASSWORD).await;
        (user, token)
    }

    /// An access token for `identifier`.
    pub(crate) async fn login(&self, identifier: &str, password: &str) -> String {
        self.auth
            .clone()
            .login(LoginRequest {
                identifier: identifier.into(),
                password: password.into(),
            })
            .await
            .expect("login")
            .into_inner()
            .access_token
    }

    /// An access token of the bootstrap admin.
    pub(crate) async fn admin_token(&self) -> String {
        self.login(ADMIN_EMAIL, ADMIN_PASSWORD).await
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
