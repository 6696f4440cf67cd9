//! TLS and mutual TLS with the real binaries and certificates made by
//! `scripts/gen-certs.sh`: who gets in, both hops over mTLS, and
//! certificates rotated without a restart.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use shop_proto::order::v1::order_service_client::OrderServiceClient;
use shop_testkit::{
    Service, authed, http_get, metric_sum,
    stack::{base_env, url_setting},
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::{INVENTORY, ORDERS, USERS, customer_on, order};

/// Runs scripts/gen-certs.sh into `dir` for `names`.
fn gen_certs(dir: &Path, names: &[&str]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/gen-certs.sh");
    let status = std::process::Command::new("bash")
        .arg(script)
        .arg(dir)
        .args(names)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("bash runs");
    assert!(status.success(), "gen-certs.sh failed");
}

fn read(path: PathBuf) -> Vec<u8> {
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A client trusting `ca_dir`'s CA, presenting `identity` (dir, name).
fn client_tls(ca_dir: &Path, identity: Option<(&Path, &str)>) -> ClientTlsConfig {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(ca_dir.join("ca.pem"))))
        .domain_name("localhost");
    if let Some((dir, name)) = identity {
        tls = tls.identity(Identity::from_pem(
            read(dir.join(format!("{name}.pem"))),
            read(dir.join(format!("{name}-key.pem"))),
        ));
    }
    tls
}

/// The client TLS settings of `name`'s channels: our CA, its own
/// certificate.
fn client_tls_env(certs: &Path, name: &str) -> Vec<(&'static str, String)> {
    vec![
        (
            "CLIENT_TLS_CA_FILE",
            certs.join("ca.pem").display().to_string(),
        ),
        (
            "CLIENT_TLS_CERT_FILE",
            certs.join(format!("{name}.pem")).display().to_string(),
        ),
        (
            "CLIENT_TLS_KEY_FILE",
            certs.join(format!("{name}-key.pem")).display().to_string(),
        ),
    ]
}

async fn health(channel: Channel) -> Result<i32, tonic::Status> {
    let mut request = tonic::Request::new(HealthCheckRequest {
        service: String::new(),
    });
    request.set_timeout(Duration::from_secs(2));
    HealthClient::new(channel)
        .check(request)
        .await
        .map(|r| r.into_inner().status)
}

fn server_tls_env(
    certs: &Path,
    name: &str,
    mutual: bool,
    reload: &str,
) -> Vec<(&'static str, String)> {
    let mut env = vec![
        (
            "TLS_CERT_FILE",
            certs.join(format!("{name}.pem")).display().to_string(),
        ),
        (
            "TLS_KEY_FILE",
            certs.join(format!("{name}-key.pem")).display().to_string(),
        ),
        ("TLS_RELOAD_INTERVAL", reload.to_owned()),
    ];
    if mutual {
        env.push((
            "TLS_CLIENT_CA_FILE",
            certs.join("ca.pem").display().to_string(),
        ));
    }
    env
}

#[tokio::test]
async fn with_mtls_required_only_clients_with_a_certificate_of_our_ca_get_in() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let other = dir.path().join("other-ca");
    gen_certs(
        &certs,
        &[
            "user-service",
            "inventory-service",
            "order-service",
            "client",
        ],
    );
    gen_certs(&other, &["client"]);
    let accounts = dir.path().join("service-accounts");

    let mut env = base_env(
        format!("sqlite://{}", dir.path().join("users.db").display()),
        &dir.path().join("user-data"),
    );
    env.extend(server_tls_env(&certs, "user-service", true, "1h"));
    env.push(("SERVICE_ACCOUNTS_DIR", accounts.display().to_string()));
    let ours = client_tls(&certs, Some((&certs, "client")));
    let users = Service::start_tls(USERS, USERS, dir.path(), &env, Some(ours.clone())).await;
    // The certificate carries IP:127.0.0.1, so the address is the name.
    let users_url = (
        url_setting(USERS),
        format!("https://127.0.0.1:{}", users.addr.port()),
    );

    let mut env = base_env(
        format!("sqlite://{}", dir.path().join("inventory.db").display()),
        &dir.path().join("inventory-data"),
    );
    env.extend(server_tls_env(&certs, INVENTORY, true, "1h"));
    env.extend(client_tls_env(&certs, INVENTORY));
    env.push((users_url.0.as_str(), users_url.1.clone()));
    env.push(("SEED_CATALOGUE", "true".into()));
    let inventory =
        Service::start_tls(INVENTORY, INVENTORY, dir.path(), &env, Some(ours.clone())).await;

    let inventory_url = url_setting(INVENTORY);
    let mut env = base_env(
        format!("sqlite://{}", dir.path().join("orders.db").display()),
        &dir.path().join("order-data"),
    );
    env.extend(server_tls_env(&certs, "order-service", true, "1h"));
    env.extend(client_tls_env(&certs, "order-service"));
    env.extend([
        (users_url.0.as_str(), users_url.1.clone()),
        (
            inventory_url.as_str(),
            format!("https://127.0.0.1:{}", inventory.addr.port()),
        ),
        (
            "SERVICE_SECRET_FILE",
            accounts.join("order-service.secret").display().to_string(),
        ),
    ]);
    let orders = Service::start_tls(ORDERS, ORDERS, dir.path(), &env, Some(ours.clone())).await;

    // The right certificate gets in, and CreateOrder crosses every mTLS
    // hop (order-service started serving only after fetching the token
    // keys from user-service over mTLS; it reserves the stock at
    // inventory-service with a service token fetched the same way).
    let (user, token) = customer_on(&users, "tls-user").await;
    OrderServiceClient::new(orders.channel())
        .create_order(authed(order(&user.id, "tls-1"), &token))
        .await
        .expect("CreateOrder over mTLS");

    for service in [&users, &inventory, &orders] {
        // No certificate at all.
        let refused = health(service.channel_with(client_tls(&certs, None))).await;
        assert!(
            refused.is_err(),
            "no client certificate got in: {refused:?}"
        );
        // A certificate from another CA.
        let stranger =
            health(service.channel_with(client_tls(&certs, Some((&other, "client"))))).await;
        assert!(
            stranger.is_err(),
            "another CA's certificate got in: {stranger:?}"
        );
        // Plaintext.
        let plain = Channel::from_shared(format!("http://{}", service.addr))
            .unwrap()
            .connect_lazy();
        assert!(health(plain).await.is_err(), "plaintext got in");
        // And ours, to be sure the refusals were about the certificate.
        assert!(health(service.channel()).await.is_ok());
    }
    let refusals = users
        .log_events()
        .iter()
        .filter(|e| e["message"] == "TLS handshake refused")
        .count();
    assert!(
        refusals >= 2,
        "user-service logged {refusals} refused handshakes"
    );
    let (_, metrics) = http_get(users.admin, "/metrics").await;
    let counted = metric_sum(
        &metrics,
        "grpc_server_tls_handshake_failures_total",
        &[("reason", "refused")],
    );
    assert!(
        counted as usize >= refusals,
        "{refusals} refused handshakes logged, {counted} counted"
    );
    // The served certificate's expiry: scripts/gen-certs.sh issues it for
    // 397 days from now.
    let expires = metric_sum(
        &metrics,
        "grpc_server_tls_certificate_expiry_timestamp_seconds",
        &[],
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let days = (expires - now) / 86_400.0;
    assert!(
        (396.0..=398.0).contains(&days),
        "the certificate expires in {days} days"
    );
}

#[tokio::test]
async fn with_allowed_names_only_the_named_peers_certificates_get_in() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    // All four certificates come from the same CA, and each also names
    // localhost and 127.0.0.1: only the pinned service names may differ.
    gen_certs(
        &certs,
        &[
            "user-service",
            "order-service",
            "client",
            "inventory-service",
        ],
    );

    let mut env = base_env(
        format!("sqlite://{}", dir.path().join("users.db").display()),
        &dir.path().join("user-data"),
    );
    env.extend(server_tls_env(&certs, "user-service", true, "1h"));
    env.push(("TLS_CLIENT_ALLOWED_NAMES", "order-service, client".into()));
    let ours = client_tls(&certs, Some((&certs, "client")));
    let users = Service::start_tls(USERS, USERS, dir.path(), &env, Some(ours)).await;

    for allowed in ["order-service", "client"] {
        let answer = health(users.channel_with(client_tls(&certs, Some((&certs, allowed))))).await;
        assert!(answer.is_ok(), "{allowed} was refused: {answer:?}");
    }
    for other in ["inventory-service", "user-service"] {
        let answer = health(users.channel_with(client_tls(&certs, Some((&certs, other))))).await;
        assert!(
            answer.is_err(),
            "{other}, not in TLS_CLIENT_ALLOWED_NAMES, got in"
        );
    }
    let refused = |e: &serde_json::Value| e["message"] == "TLS handshake refused";
    users
        .wait_for_logs(Duration::from_secs(5), 2, refused)
        .await;
    let refusals: Vec<String> = users
        .log_events()
        .iter()
        .filter(|e| refused(e))
        .map(|e| e["error"].to_string())
        .collect();
    assert_eq!(refusals.len(), 2, "refused handshakes: {refusals:?}");
    assert!(
        refusals.iter().all(|e| e.contains("NotValidForName")),
        "refused for another reason than the name: {refusals:?}"
    );
}

/// Waits until a client trusting `ca_dir` gets an answer from `service`.
async fn wait_until_trusted(service: &Service, ca_dir: &Path, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if health(service.channel_with(client_tls(ca_dir, None)))
            .await
            .is_ok()
        {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "new certificate not served within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Copies `name`'s certificate and key from `from` over the ones in `to`.
fn rotate(from: &Path, to: &Path, name: &str) {
    for file in [format!("{name}-key.pem"), format!("{name}.pem")] {
        std::fs::copy(from.join(&file), to.join(&file)).unwrap();
    }
}

#[tokio::test]
async fn certificates_are_reloaded_on_sighup_and_on_change_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (dir.path().join("old"), dir.path().join("new"));
    gen_certs(&old, &["user-service"]);
    gen_certs(&new, &["user-service"]);

    let mut replicas = Vec::new();
    for (label, reload) in [
        ("user-service-sighup", "1h"),
        ("user-service-polling", "200ms"),
    ] {
        let live = dir.path().join(label);
        std::fs::create_dir_all(&live).unwrap();
        for file in ["ca.pem", "user-service.pem", "user-service-key.pem"] {
            std::fs::copy(old.join(file), live.join(file)).unwrap();
        }
        let mut env = base_env(
            format!(
                "sqlite://{}",
                dir.path().join(format!("{label}.db")).display()
            ),
            &dir.path().join(format!("{label}-data")),
        );
        env.extend(server_tls_env(&live, "user-service", false, reload));
        let service =
            Service::start_tls(label, USERS, dir.path(), &env, Some(client_tls(&old, None))).await;
        assert!(
            health(service.channel_with(client_tls(&new, None)))
                .await
                .is_err()
        );
        rotate(&new, &live, "user-service");
        replicas.push(service);
    }

    // Polling notices the new files by itself.
    let polled = wait_until_trusted(&replicas[1], &new, Duration::from_secs(5)).await;
    // Without polling, nothing changes until SIGHUP.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        health(replicas[0].channel_with(client_tls(&new, None)))
            .await
            .is_err(),
        "reloaded without a signal"
    );
    replicas[0].signal("HUP").await;
    let signalled = wait_until_trusted(&replicas[0], &new, Duration::from_secs(5)).await;
    eprintln!(
        "new certificate served {polled:?} after the files changed (polling), {signalled:?} after SIGHUP"
    );
    // The old certificate is gone, and the processes never restarted.
    for replica in &replicas {
        assert!(
            health(replica.channel_with(client_tls(&old, None)))
                .await
                .is_err()
        );
        assert!(replica.logs().contains("TLS configuration reloaded"));
    }
}
