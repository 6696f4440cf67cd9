//! Starting a user-service for a test (the test kit's one spawn helper),
//! and calling it.

use std::path::PathBuf;

use shop_proto::{
    auth::v1::{LoginRequest, TokenPair, auth_service_client::AuthServiceClient},
    user::v1::{User, user_service_client::UserServiceClient},
};
use shop_testkit::{App, accounts};
use tempfile::TempDir;
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;

pub(crate) use shop_testkit::{
    ADMIN_EMAIL, ADMIN_PASSWORD, Backend, PASSWORD, authed, violated_fields,
};

/// A running user-service and clients connected to it.
pub(crate) struct TestApp {
    pub(crate) users: UserServiceClient<Channel>,
    pub(crate) auth: AuthServiceClient<Channel>,
    pub(crate) health: HealthClient<Channel>,
    pub(crate) channel: Channel,
    pub(crate) data_dir: PathBuf,
    app: App,
    _dir: Option<TempDir>,
}

impl TestApp {
    /// Starts user-service on SQLite with a bootstrap admin.
    pub(crate) async fn spawn() -> TestApp {
        TestApp::spawn_on(Backend::Sqlite, &[]).await
    }

    /// Starts user-service on a fresh database on `backend` with extra
    /// flags.
    pub(crate) async fn spawn_on(backend: Backend, extra_args: &[&str]) -> TestApp {
        let dir = tempfile::tempdir().unwrap();
        let database_url = backend.database_url("users", dir.path()).await;
        let data_dir = dir.path().join("data");
        let mut app = TestApp::start(&database_url, &data_dir, extra_args).await;
        app._dir = Some(dir);
        app
    }

    /// Starts user-service on an existing database and data directory (for
    /// restart tests).
    pub(crate) async fn start(
        database_url: &str,
        data_dir: &std::path::Path,
        extra_args: &[&str],
    ) -> TestApp {
        let app = shop_testkit::apps::user_service(database_url, data_dir, extra_args).await;
        let channel = app.channel();
        TestApp {
            users: UserServiceClient::new(channel.clone()),
            auth: AuthServiceClient::new(channel.clone()),
            health: HealthClient::new(channel.clone()),
            channel,
            data_dir: data_dir.to_owned(),
            app,
            _dir: None,
        }
    }

    /// A channel to the service from the loopback address `ip` (any of
    /// 127.0.0.0/8), so that a test can call as several addresses.
    pub(crate) fn channel_from(&self, ip: &str) -> Channel {
        tonic::transport::Endpoint::from_shared(format!("http://{}", self.app.addr))
            .unwrap()
            .local_address(Some(ip.parse().unwrap()))
            .connect_lazy()
    }

    /// AuthService as called from the loopback address `ip`.
    pub(crate) fn auth_from(&self, ip: &str) -> AuthServiceClient<Channel> {
        AuthServiceClient::new(self.channel_from(ip))
    }

    /// UserService as called from the loopback address `ip`.
    pub(crate) fn users_from(&self, ip: &str) -> UserServiceClient<Channel> {
        UserServiceClient::new(self.channel_from(ip))
    }

    /// Signals shutdown and waits for `run` to return.
    pub(crate) async fn stop(mut self) -> anyhow::Result<()> {
        self.app.stop().await
    }

    /// Signs up a user with [`PASSWORD`].
    pub(crate) async fn sign_up(&self, username: &str) -> User {
        accounts::sign_up(self.channel.clone(), username).await
    }

    /// Logs in and returns the token pair.
    pub(crate) async fn login(&self, identifier: &str, password: &str) -> TokenPair {
        accounts::login(self.channel.clone(), identifier, password).await
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
        accounts::customer(self.channel.clone(), username).await
    }

    /// An access token of the bootstrap admin.
    pub(crate) async fn admin_token(&self) -> String {
        accounts::admin_token(self.channel.clone()).await
    }
}
