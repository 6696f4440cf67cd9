//! One service binary as a separate process: configured only through
//! environment variables (as docker-compose configures it), logging JSON
//! lines to a file tests can search, and handed its gRPC and admin sockets
//! already bound (systemd-style `LISTEN_FDS`), so that no port is probed,
//! released and raced for.

use std::{
    net::{SocketAddr, TcpListener},
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use command_fds::{CommandFdExt as _, FdMapping};
use tokio::process::{Child, Command};
use tonic::transport::Channel;

use crate::{binaries::binary, health::wait_until_serving};

/// The sockets a service process is handed: bound by the harness, kept
/// while the process runs (and across a restart that reuses them).
struct Sockets {
    grpc: TcpListener,
    admin: TcpListener,
}

impl Sockets {
    fn bind(grpc: SocketAddr, admin: SocketAddr) -> std::io::Result<Sockets> {
        Ok(Sockets {
            grpc: TcpListener::bind(grpc)?,
            admin: TcpListener::bind(admin)?,
        })
    }

    /// Copies for the child, as fds 3 (gRPC) and 4 (admin).
    fn for_child(&self) -> std::io::Result<Vec<FdMapping>> {
        Ok(vec![
            FdMapping {
                parent_fd: OwnedFd::from(self.grpc.try_clone()?),
                child_fd: 3,
            },
            FdMapping {
                parent_fd: OwnedFd::from(self.admin.try_clone()?),
                child_fd: 4,
            },
        ])
    }
}

/// A listener on 127.0.0.1 at a port below the kernel's ephemeral range
/// (`net.ipv4.ip_local_port_range`). A port from that range, once its
/// service is killed or stopped, can be taken by any outgoing connection
/// (of this test, or of another running beside it) before the service
/// restarts on it, as a CI run saw ("ports ... taken" at a restart); below
/// the range only another bind can take it. Falls back to a port the
/// kernel picks when the range leaves no room below it.
fn bind_below_ephemeral() -> std::io::Result<TcpListener> {
    use std::hash::{BuildHasher as _, Hasher as _};

    const FIRST: u64 = 10_000;
    let low: u64 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768);
    let localhost = std::net::Ipv4Addr::LOCALHOST;
    if low < FIRST + 1_000 {
        return TcpListener::bind((localhost, 0));
    }
    // Random without a dependency: std's hasher keys are random per process.
    let mut next = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    for _ in 0..200 {
        next = next
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let port = FIRST + (next >> 33) % (low - FIRST);
        match TcpListener::bind((localhost, port as u16)) {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
            bound => return bound,
        }
    }
    TcpListener::bind((localhost, 0))
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
    dir: PathBuf,
    child: Option<Child>,
    sockets: Option<Sockets>,
    tls: Option<tonic::transport::ClientTlsConfig>,
}

impl Service {
    /// Starts `binary` with `env` (and nothing else from the test's
    /// environment) on fresh ports, logging JSON to `<dir>/<binary>.log`;
    /// returns once it answers SERVING.
    pub async fn start(binary: &str, dir: &Path, env: &[(&str, String)]) -> Service {
        Service::start_tls(binary, binary, dir, env, None).await
    }

    /// [`Service::start`] for one of several replicas of `binary`: `label`
    /// names its log file.
    pub async fn start_as(
        label: &str,
        binary: &str,
        dir: &Path,
        env: &[(&str, String)],
    ) -> Service {
        Service::start_tls(label, binary, dir, env, None).await
    }

    /// [`Service::start_as`] for a server that speaks TLS: the test's own
    /// channels (health checks included) use `tls`.
    pub async fn start_tls(
        label: &str,
        binary_name: &str,
        dir: &Path,
        env: &[(&str, String)],
        tls: Option<tonic::transport::ClientTlsConfig>,
    ) -> Service {
        let sockets = Sockets {
            grpc: bind_below_ephemeral().expect("bind the gRPC port"),
            admin: bind_below_ephemeral().expect("bind the admin port"),
        };
        let addr = sockets.grpc.local_addr().expect("bound");
        let admin = sockets.admin.local_addr().expect("bound");
        let mut env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        // Informational: the sockets are handed in (LISTEN_FDS).
        env.push(("GRPC_ADDR".into(), addr.to_string()));
        env.push(("ADMIN_ADDR".into(), admin.to_string()));
        env.push(("HEALTH_CHECK_INTERVAL".into(), "200ms".into()));
        env.push(("LOG_FORMAT".into(), "json".into()));
        // Tests read the log as it is written; the default delay is the
        // subject of user-service's binary test and the writer's own.
        if !env.iter().any(|(k, _)| k == "LOG_FLUSH_DELAY") {
            env.push(("LOG_FLUSH_DELAY".into(), "0s".into()));
        }
        if !env.iter().any(|(k, _)| k == "RUST_LOG") {
            env.push((
                "RUST_LOG".into(),
                "info,shop_server=debug,shop_client=debug,sqlx=warn".into(),
            ));
        }
        let mut service = Service {
            name: label.to_owned(),
            binary: binary(binary_name),
            env,
            addr,
            admin,
            log: dir.join(format!("{label}.log")),
            dir: dir.to_owned(),
            child: None,
            sockets: Some(sockets),
            tls,
        };
        service.spawn();
        service.wait_until_serving().await;
        service
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let sockets = self
            .sockets
            .as_ref()
            .expect("sockets bound before spawning");
        let mut command = Command::new(&self.binary);
        command
            .current_dir(&self.dir)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("LISTEN_FDS", "2")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        command
            .fd_mappings(sockets.for_child().expect("duplicate the sockets"))
            .expect("distinct child fds");
        let child = command
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

    async fn wait_until_serving(&mut self) {
        let channel = self.channel();
        let name = self.name.clone();
        let log = self.log.clone();
        let child = self.child.as_mut().expect("started");
        wait_until_serving(channel, "", Duration::from_secs(30), || {
            match child.try_wait() {
                Ok(Some(status)) => Err(format!(
                    "{name} exited during start-up ({status}):\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )),
                _ => Ok(()),
            }
        })
        .await;
    }

    /// Sends SIGTERM and waits for the exit status (at most `within`). The
    /// ports close with the process.
    pub async fn terminate(&mut self, within: Duration) -> std::process::ExitStatus {
        self.sockets = None;
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

    /// Kills the process (SIGKILL: a crash, no drain) and reaps it; its
    /// ports close (connections are refused until a restart).
    pub async fn kill(&mut self) {
        self.sockets = None;
        let mut child = self.child.take().expect("running");
        child.kill().await.expect("kill");
    }

    /// Starts the same binary again, same environment and ports.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "terminate or kill first");
        self.sockets = Some(Sockets::bind(self.addr, self.admin).unwrap_or_else(|e| {
            panic!(
                "{}: ports {} and {} taken: {e}",
                self.name, self.addr, self.admin
            )
        }));
        self.spawn();
        self.wait_until_serving().await;
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

    /// Waits (at most `within`) until `count` log events satisfy `pred`;
    /// whether they did.
    pub async fn wait_for_logs(
        &self,
        within: Duration,
        count: usize,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if self.log_events().iter().filter(|e| pred(e)).count() >= count {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
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
