//! Starting a user-service for a test, and calling it.

use std::{path::PathBuf, time::Duration};

use clap::Parser as _;

use shop_proto::{
    auth::v1::{LoginRequest, TokenPair, auth_service_client::AuthServiceClient},
    user::v1::{CreateUserRequest, User, user_service_client::UserServiceClient},
};
use tempfile::TempDir;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::{Request, transport::Channel};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use user_service::Config;

pub(crate) const ADMIN_EMAIL: &str = "root@shop.test";
pub(crate) const ADMIN_PASSWORD: &str = "admin-password-1";
pub(crate) const PASSWORD: &str = "correct horse battery";

/// Which database a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    Sqlite,
    Postgres,
}

/// A running user-service and clients connected to it.
pub(crate) struct TestApp {
    pub(crate) users: UserServiceClient<Channel>,
    pub(crate) auth: AuthServiceClient<Channel>,
    pub(crate) health: HealthClient<Channel>,
    pub(crate) channel: Channel,
    pub(crate) data_dir: PathBuf,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
    _dir: Option<TempDir>,
}

fn init_test_logging() {
    if std::env::var_os("TEST_LOG").is_some() {
        shop_middleware::telemetry::init(Default::default(), "debug,sqlx=warn,h2=info,hyper=info");
    }
}

/// The PostgreSQL server URL for tests, if one is configured.
///
/// # Panics
/// When `REQUIRE_POSTGRES=1` and none is configured.
pub(crate) fn postgres_url() -> Option<String> {
    match std::env::var("SHOP_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var("REQUIRE_POSTGRES").as_deref() != Ok("1"),
                "REQUIRE_POSTGRES=1 but SHOP_TEST_POSTGRES_URL is not set"
            );
            eprintln!(
                "SKIPPED: PostgreSQL test (set SHOP_TEST_POSTGRES_URL or run scripts/test.sh)"
            );
            None
        }
    }
}

/// A fresh, empty PostgreSQL database for one test; returns its URL.
pub(crate) async fn fresh_postgres_database(server_url: &str) -> String {
    use sqlx::Connection as _;
    let name = format!("test_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(server_url)
        .await
        .expect("connect to the test PostgreSQL server");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("create a test database");
    let (base, _) = server_url
        .rsplit_once('/')
        .expect("SHOP_TEST_POSTGRES_URL ends with /<database>");
    format!("{base}/{name}")
}

/// The database URL for a new test on `backend`, or `None` to skip.
pub(crate) async fn database_url(backend: Backend, dir: &TempDir) -> Option<String> {
    match backend {
        Backend::Sqlite => Some(format!(
            "sqlite://{}",
            dir.path().join("users.db").display()
        )),
        Backend::Postgres => Some(fresh_postgres_database(&postgres_url()?).await),
    }
}

impl TestApp {
    /// Starts user-service on SQLite with a bootstrap admin.
    pub(crate) async fn spawn() -> TestApp {
        TestApp::spawn_on(Backend::Sqlite, &[])
            .await
            .expect("SQLite is always available")
    }

    /// Starts user-service on `backend` with extra flags; `None` when the
    /// backend is not available (the test should return).
    pub(crate) async fn spawn_on(backend: Backend, extra_args: &[&str]) -> Option<TestApp> {
        let dir = tempfile::tempdir().unwrap();
        let database_url = database_url(backend, &dir).await?;
        let data_dir = dir.path().join("data");
        let mut app = TestApp::start(&database_url, &data_dir, extra_args).await;
        app._dir = Some(dir);
        Some(app)
    }

    /// Starts user-service on an existing database and data directory (for
    /// restart tests).
    pub(crate) async fn start(
        database_url: &str,
        data_dir: &std::path::Path,
        extra_args: &[&str],
    ) -> TestApp {
        init_test_logging();
        let data_dir_arg = data_dir.display().to_string();
        let mut args = vec![
            "user-service",
            "--database-url",
            database_url,
            "--data-dir",
            &data_dir_arg,
            "--bcrypt-cost",
            "4",
            "--bootstrap-admin-email",
            ADMIN_EMAIL,
            "--bootstrap-admin-password",
            ADMIN_PASSWORD,
            "--shutdown-grace",
            "2s",
        ];
        args.extend_from_slice(extra_args);
        let config = Config::try_parse_from(args).expect("valid test configuration");

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(user_service::run(config, listener, async move {
            let _ = shutdown_rx.await;
        }));

        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy();
        let app = TestApp {
            users: UserServiceClient::new(channel.clone()),
            auth: AuthServiceClient::new(channel.clone()),
            health: HealthClient::new(channel.clone()),
            channel,
            data_dir: data_dir.to_owned(),
            shutdown: Some(shutdown_tx),
            handle: Some(handle),
            _dir: None,
        };
        app.wait_until_serving().await;
        app
    }

    /// Polls grpc.health.v1 until the service answers SERVING, for at most
    /// ten seconds.
    async fn wait_until_serving(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut health = self.health.clone();
        loop {
            let answer = health
                .check(HealthCheckRequest {
                    service: "shop.user.v1.UserService".into(),
                })
                .await;
            if let Ok(response) = &answer
                && response.get_ref().status == ServingStatus::Serving as i32
            {
                return;
            }
            if let Some(handle) = &self.handle
                && handle.is_finished()
            {
                panic!("user-service exited during start-up (run with TEST_LOG=1)");
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "user-service not serving after 10 s: {answer:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Signals shutdown and waits for `run` to return.
    pub(crate) async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let handle = self.handle.take().expect("stopped once");
        tokio::time::timeout(Duration::from_secs(10), handle)
            .await
            .expect("user-service stops within 10 s")
            .expect("user-service task did not panic")
    }

    /// Signs up a user with [`PASSWORD`].
    pub(crate) async fn sign_up(&self, username: &str) -> User {
        self.users
            .clone()
            .create_user(CreateUserRequest {
                email: format!("{username}@example.com"),
                username: username.into(),
                password: PASSWORD.into(),
                first_name: "Test".into(),
                last_name: username.into(),
            })
            .await
            .expect("sign-up succeeds")
            .into_inner()
    }

    /// Logs in and returns the token pair.
    pub(crate) async fn login(&self, identifier: &str, password: &str) -> TokenPair {
        self.auth
            .clone()
            .login(LoginRequest {
                identifier: identifier.into(),
                password: password.into(),
            })
            .await
            .expect("login succeeds")
            .into_inner()
    }

    /// Signs up `username` and returns the user with an access token.
    pub(crate) async fn customer(&self, username: &str) -> (User, String) {
        let user = self.sign_up(username).await;
        let tokens = self.login(username, PASSWORD).await;
        (user, tokens.access_token)
    }

    /// An access token of the bootstrap admin.
    pub(crate) async fn admin_token(&self) -> String {
        self.login(ADMIN_EMAIL, ADMIN_PASSWORD).await.access_token
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// `message` with `authorization: Bearer <token>`.
pub(crate) fn authed<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ASCII token"),
    );
    request
}

/// The fields named in the `google.rpc.BadRequest` details of `status`.
pub(crate) fn violated_fields(status: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt as _;
    status
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default()
}
