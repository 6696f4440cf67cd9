//! Test support shared by every shop test suite, and the harness of the
//! end-to-end tests in `e2e/`.
//!
//! - A fresh PostgreSQL database per test ([`postgres_url`],
//!   [`fresh_postgres_database`]), skipped loudly when no server is
//!   configured and a failure under `REQUIRE_POSTGRES=1`.
//! - Waiting for a server through `grpc.health.v1` instead of sleeping
//!   ([`wait_until_serving`]), and small call helpers ([`authed`],
//!   [`violated_fields`]).
//! - Running the real binaries ([`Service`], [`Stack`]): each service a
//!   separate process on its own port with its own database and data
//!   directory, configured only through the environment variables that
//!   docker-compose sets, logging JSON lines to a file tests can search.
//!   The binaries come from the target directory of the running test;
//!   `scripts/test.sh` (or `cargo test --workspace`) builds them.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use tokio::process::{Child, Command};
use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// Where cargo put the workspace binaries (`target/<profile>/`).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary knows its path");
    // target/<profile>/deps/e2e-<hash> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps");
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.exists(),
        "{} is missing: run scripts/test.sh, or `cargo build -p {name}` before `cargo test -p shop-testkit`",
        path.display()
    );
    path
}

/// A free port on 127.0.0.1. The OS picks it; the service binds it a
/// moment later (the binaries do not accept an inherited socket).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("an ephemeral port")
        .port()
}

/// The PostgreSQL server URL for tests, if one is configured.
///
/// # Panics
/// When `REQUIRE_POSTGRES=1` and none is configured.
pub fn postgres_url() -> Option<String> {
    match std::env::var("SHOP_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var("REQUIRE_POSTGRES").as_deref() != Ok("1"),
                "REQUIRE_POSTGRES=1 but SHOP_TEST_POSTGRES_URL is not set"
            );
            eprintln!("SKIPPED: PostgreSQL end-to-end test (run scripts/test.sh)");
            None
        }
    }
}

/// Polls `grpc.health.v1.Health/Check` for `service` on `channel` until it
/// answers SERVING, for at most `within`. `still_starting` is asked between
/// polls and returns an error when the server died, to fail fast with it.
///
/// # Panics
/// When the server does not serve in time or `still_starting` fails.
pub async fn wait_until_serving(
    channel: Channel,
    service: &str,
    within: Duration,
    mut still_starting: impl FnMut() -> Result<(), String>,
) {
    let mut health = HealthClient::new(channel);
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let answer = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await;
        if matches!(&answer, Ok(r) if r.get_ref().status == ServingStatus::Serving as i32) {
            return;
        }
        if let Err(why) = still_starting() {
            panic!("{service} is not starting: {why}");
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{service} not serving after {within:?}: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The fields named in the `google.rpc.BadRequest` details of `status`.
pub fn violated_fields(status: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt as _;
    status
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default()
}

/// A plain HTTP/1.1 GET (no client library needed): the status code and
/// the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// A TCP proxy to `target` that can be switched off, cutting every open
/// connection and refusing new ones, and on again: a database outage on
/// demand.
pub struct TcpProxy {
    /// Where to connect instead of `target`.
    pub addr: SocketAddr,
    enabled: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    /// Starts forwarding to `target`.
    pub async fn start(target: SocketAddr) -> TcpProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (enabled, watch) = tokio::sync::watch::channel(true);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if !*watch.borrow() {
                    drop(inbound);
                    continue;
                }
                let mut off = watch.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = off.wait_for(|on| !*on) => {}
                    }
                });
            }
        });
        TcpProxy {
            addr,
            enabled,
            task,
        }
    }

    /// Cuts every connection and refuses new ones (`false`), or forwards
    /// again (`true`).
    pub fn set_enabled(&self, on: bool) {
        self.enabled.send_replace(on);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The `google.rpc.RetryInfo` delay in the details of `status`, if any.
pub fn retry_delay(status: &tonic::Status) -> Option<Duration> {
    use tonic_types::StatusExt as _;
    status
        .get_error_details()
        .retry_info()
        .and_then(|r| r.retry_delay)
}

/// A fresh, empty PostgreSQL database on the test server; returns its URL.
pub async fn fresh_postgres_database(server_url: &str, prefix: &str) -> String {
    use sqlx::Connection as _;
    let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(server_url)
        .await
        .expect("connect to the test PostgreSQL server");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("create a test database");
    let (base, _) = server_url
        .rsplit_once('/')
        .expect("URL ends with /<database>");
    format!("{base}/{name}")
}

/// One service process.
pub struct Service {
    name: String,
    binary: PathBuf,
    env: Vec<(String, String)>,
    /// Its gRPC address.
    pub addr: SocketAddr,
    /// Its admin HTTP address (`/metrics`, `/healthz`, `/readyz`).
    pub admin: SocketAddr,
    log: PathBuf,
    child: Option<Child>,
    tls: Option<tonic::transport::ClientTlsConfig>,
}

impl Service {
    /// Starts `binary` with `env` (and nothing else from the test's
    /// environment), listening on a fresh port, logging JSON to a file in
    /// `dir`; returns once it answers SERVING for `health_service`.
    pub async fn start(
        name: &str,
        dir: &Path,
        env: &[(&str, String)],
        health_service: &str,
    ) -> Service {
        Service::start_as(name, name, dir, env, health_service).await
    }

    /// [`Service::start`] for one of several replicas of `binary_name`:
    /// `label` names its log file.
    pub async fn start_as(
        label: &str,
        binary_name: &str,
        dir: &Path,
        env: &[(&str, String)],
        health_service: &str,
    ) -> Service {
        Service::start_tls(label, binary_name, dir, env, health_service, None).await
    }

    /// [`Service::start_as`] for a server that speaks TLS: the test's own
    /// channels (health checks included) use `tls`.
    pub async fn start_tls(
        label: &str,
        binary_name: &str,
        dir: &Path,
        env: &[(&str, String)],
        health_service: &str,
        tls: Option<tonic::transport::ClientTlsConfig>,
    ) -> Service {
        let name = label;
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        env.push(("GRPC_ADDR".into(), addr.to_string()));
        env.push(("ADMIN_ADDR".into(), admin.to_string()));
        env.push(("HEALTH_CHECK_INTERVAL".into(), "200ms".into()));
        env.push(("LOG_FORMAT".into(), "json".into()));
        if !env.iter().any(|(k, _)| k == "RUST_LOG") {
            env.push((
                "RUST_LOG".into(),
                "info,shop_middleware=debug,sqlx=warn".into(),
            ));
        }
        let mut service = Service {
            name: name.to_owned(),
            binary: binary(binary_name),
            env,
            addr,
            admin,
            log: dir.join(format!("{name}.log")),
            child: None,
            tls,
        };
        service.spawn(dir).await;
        service.wait_until_serving(health_service).await;
        service
    }

    async fn spawn(&mut self, dir: &Path) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let child = Command::new(&self.binary)
            .current_dir(dir)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.binary.display()));
        self.child = Some(child);
    }

    /// A lazily connected channel to the service (over TLS when it was
    /// started with TLS).
    pub fn channel(&self) -> Channel {
        match &self.tls {
            None => Channel::from_shared(format!("http://{}", self.addr))
                .unwrap()
                .connect_lazy(),
            Some(tls) => self.channel_with(tls.clone()),
        }
    }

    /// A lazily connected TLS channel to the service with `tls`.
    pub fn channel_with(&self, tls: tonic::transport::ClientTlsConfig) -> Channel {
        Channel::from_shared(format!("https://{}", self.addr))
            .unwrap()
            .tls_config(tls)
            .expect("TLS settings")
            .connect_lazy()
    }

    async fn wait_until_serving(&mut self, health_service: &str) {
        let channel = self.channel();
        let name = self.name.clone();
        let log = self.log.clone();
        let child = self.child.as_mut().expect("started");
        wait_until_serving(
            channel,
            health_service,
            Duration::from_secs(30),
            || match child.try_wait() {
                Ok(Some(status)) => Err(format!(
                    "{name} exited during start-up ({status}):\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )),
                _ => Ok(()),
            },
        )
        .await;
    }

    /// Sends SIGTERM and waits for the exit status (at most `within`).
    pub async fn terminate(&mut self, within: Duration) -> std::process::ExitStatus {
        let child = self.child.as_mut().expect("running");
        let pid = child.id().expect("running").to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .expect("kill(1) runs");
        assert!(sent.success());
        let status = tokio::time::timeout(within, child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} did not exit within {within:?}", self.name))
            .expect("wait");
        self.child = None;
        status
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Sends `signal` (a kill(1) name such as `HUP`) to the process.
    pub async fn signal(&self, signal: &str) {
        let pid = self
            .child
            .as_ref()
            .and_then(Child::id)
            .expect("running")
            .to_string();
        let sent = Command::new("kill")
            .args([format!("-{signal}"), pid])
            .status()
            .await
            .expect("kill(1) runs");
        assert!(sent.success());
    }

    /// Kills the process (SIGKILL: a crash, no drain) and reaps it.
    pub async fn kill(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().await.expect("kill");
    }

    /// Starts the same binary again, same environment and port.
    pub async fn restart(&mut self, dir: &Path, health_service: &str) {
        assert!(self.child.is_none(), "terminate first");
        self.spawn(dir).await;
        self.wait_until_serving(health_service).await;
    }

    /// Everything the service logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The JSON log lines so far (non-JSON lines are skipped).
    pub fn log_events(&self) -> Vec<serde_json::Value> {
        self.logs()
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// Waits (at most `within`) for a log event that satisfies `pred`.
    pub async fn wait_for_log(
        &self,
        within: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Option<serde_json::Value> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(event) = self.log_events().into_iter().find(|e| pred(e)) {
                return Some(event);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// The environment docker-compose gives user-service, for a local process.
pub fn user_service_env(database_url: String, data_dir: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("DATABASE_URL", database_url),
        ("DATA_DIR", data_dir.display().to_string()),
        ("BOOTSTRAP_ADMIN_EMAIL", ADMIN_EMAIL.into()),
        ("BOOTSTRAP_ADMIN_PASSWORD", ADMIN_PASSWORD.into()),
        // Test speed: bcrypt at its minimum cost.
        ("BCRYPT_COST", "4".into()),
        ("SHUTDOWN_GRACE", "5s".into()),
    ]
}

/// The environment docker-compose gives order-service, for a local process.
pub fn order_service_env(
    database_url: String,
    data_dir: &Path,
    user_service: SocketAddr,
) -> Vec<(&'static str, String)> {
    vec![
        ("DATABASE_URL", database_url),
        ("DATA_DIR", data_dir.display().to_string()),
        ("USER_SERVICE_URL", format!("http://{user_service}")),
        ("SHUTDOWN_GRACE", "5s".into()),
    ]
}

/// The sum of every sample of the Prometheus metric `name` whose labels
/// include all of `labels` (0 when there is none).
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let rest = series.strip_prefix(name)?;
            if !(rest.is_empty() || rest.starts_with('{')) {
                return None;
            }
            labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

/// The bootstrap admin's email in every end-to-end stack.
pub const ADMIN_EMAIL: &str = "admin@e2e.test";
/// The bootstrap admin's password in every end-to-end stack.
pub const ADMIN_PASSWORD: &str = "e2e-admin-password";

/// `message` with `authorization: Bearer <token>`.
pub fn authed<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ASCII token"),
    );
    request
}

/// Which database engine the services run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file per service.
    Sqlite,
    /// A database per service on the test PostgreSQL server.
    Postgres,
}

/// user-service and order-service as separate processes, wired to each
/// other the way docker-compose wires them.
pub struct Stack {
    /// Working directory of both processes (databases, keys, logs).
    pub dir: tempfile::TempDir,
    /// The user-service process.
    pub users: Service,
    /// The order-service process.
    pub orders: Service,
}

impl Stack {
    /// Starts both services on `backend` with extra environment variables
    /// for each; `None` when the backend is not available.
    pub async fn start(
        backend: Backend,
        user_env: &[(&'static str, &str)],
        order_env: &[(&'static str, &str)],
    ) -> Option<Stack> {
        let dir = tempfile::tempdir().unwrap();
        let (users_db, orders_db) = match backend {
            Backend::Sqlite => (
                format!("sqlite://{}", dir.path().join("users.db").display()),
                format!("sqlite://{}", dir.path().join("orders.db").display()),
            ),
            Backend::Postgres => {
                let server = postgres_url()?;
                (
                    fresh_postgres_database(&server, "e2e_users").await,
                    fresh_postgres_database(&server, "e2e_orders").await,
                )
            }
        };
        let mut env = user_service_env(users_db, &dir.path().join("user-data"));
        env.extend(user_env.iter().map(|(k, v)| (*k, (*v).to_owned())));
        let users =
            Service::start("user-service", dir.path(), &env, "shop.user.v1.UserService").await;

        let mut env = order_service_env(orders_db, &dir.path().join("order-data"), users.addr);
        env.extend(order_env.iter().map(|(k, v)| (*k, (*v).to_owned())));
        let orders = Service::start(
            "order-service",
            dir.path(),
            &env,
            "shop.order.v1.OrderService",
        )
        .await;
        Some(Stack { dir, users, orders })
    }
}
