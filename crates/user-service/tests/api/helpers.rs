//! Starting a user-service for a test, and calling it.

use std::{path::PathBuf, time::Duration};

use clap::Parser as _;

use shop_proto::{
    auth::v1::{LoginRequest, TokenPair, auth_service_client::AuthServiceClient},
    user::v1::{CreateUserRequest, User, user_service_client::UserServiceClient},
};
use tempfile::TempDir;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;
use user_service::Config;

pub(crate) use shop_testkit::{authed, violated_fields};
use shop_testkit::{fresh_postgres_database, postgres_url, wait_until_serving};

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
        shop_middleware::telemetry::init(
            "tests",
            Default::default(),
            "debug,sqlx=warn,h2=info,hyper=info",
        );
    }
}

/// The database URL for a new test on `backend`, or `None` to skip.
pub(crate) async fn database_url(backend: Backend, dir: &TempDir) -> Option<String> {
    match backend {
        Backend::Sqlite => Some(format!(
            "sqlite://{}",
            dir.path().join("users.db").display()
        )),
        Backend::Postgres => Some(fresh_postgres_database(&postgres_url()?, "users").await),
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
            "--admin-addr",
            "127.0.0.1:0",
            "--health-check-interval",
            "200ms",
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

    /// Waits (health polling, ten seconds at most) until the service
    /// answers SERVING.
    async fn wait_until_serving(&self) {
        let handle = self.handle.as_ref().expect("started");
        wait_until_serving(
            self.health_channel(),
            "shop.user.v1.UserService",
            Duration::from_secs(10),
            || {
                if handle.is_finished() {
                    Err("user-service exited during start-up (run with TEST_LOG=1)".into())
                } else {
                    Ok(())
                }
            },
        )
        .await;
    }

    fn health_channel(&self) -> Channel {
        self.channel.clone()
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

    /// Logs in with [`PASSWORD`], ignoring the answer (to cause a login
    /// event).
    pub(crate) async fn login_quietly(&self, identifier: &str) {
        let _ = self
            .auth
            .clone()
            .login(LoginRequest {
                identifier: identifier.into(),
                password: PASSWORD.into(),
            })
            .await;
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
