//! devstack: every shop service in one process, each on its usual port with
//! its own SQLite file under `./data/`, talking to each other over real gRPC
//! on loopback with the same middleware as in production. No Docker, no
//! setup: `cargo run -p devstack`.
//!
//! Each service keeps reading its own environment variables (see the
//! README), except the address, database and upstream URL, which devstack
//! sets.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::Parser;
use shop_middleware::{config::parse_or_exit, server::shutdown_signal, telemetry};
use tokio::{net::TcpListener, sync::watch, task::JoinSet};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// Runs every shop service in one process (SQLite under DATA_DIR).
#[derive(Debug, Parser)]
#[command(name = "devstack", version, about)]
struct Args {
    /// Directory for the SQLite files and generated keys.
    #[arg(long, env = "DATA_DIR", default_value = "data")]
    data_dir: PathBuf,

    /// Interface the services listen on; 127.0.0.1 keeps them local.
    #[arg(long, env = "DEVSTACK_HOST", default_value = "127.0.0.1")]
    host: std::net::IpAddr,

    /// user-service gRPC port.
    #[arg(long, env = "USER_SERVICE_PORT", default_value_t = 50051)]
    user_service_port: u16,

    /// order-service gRPC port.
    #[arg(long, env = "ORDER_SERVICE_PORT", default_value_t = 50052)]
    order_service_port: u16,

    /// user-service admin HTTP port (/metrics, /healthz, /readyz).
    #[arg(long, env = "USER_SERVICE_ADMIN_PORT", default_value_t = 9101)]
    user_service_admin_port: u16,

    /// order-service admin HTTP port (/metrics, /healthz, /readyz).
    #[arg(long, env = "ORDER_SERVICE_ADMIN_PORT", default_value_t = 9102)]
    order_service_admin_port: u16,

    /// Admin account created on first start; its password is generated and
    /// kept in `<DATA_DIR>/devstack-admin-password` unless
    /// BOOTSTRAP_ADMIN_PASSWORD is set.
    #[arg(
        long,
        env = "BOOTSTRAP_ADMIN_EMAIL",
        default_value = "admin@shop.local"
    )]
    admin_email: String,

    /// Log line format: `pretty` or `json`. Filter with `RUST_LOG`. Traces
    /// are exported over OTLP/gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT` is
    /// set (with the standard `OTEL_SERVICE_NAME`,
    /// `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`).
    #[arg(long, env = "LOG_FORMAT", default_value = "pretty")]
    log_format: telemetry::LogFormat,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Args = parse_or_exit();
    telemetry::init("devstack", args.log_format, "info,sqlx=warn");
    let outcome = run(args).await;
    telemetry::shutdown();
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "devstack failed");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let admin_password = admin_password(&args)?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let mut services = JoinSet::new();

    let user_addr = SocketAddr::new(args.host, args.user_service_port);
    let user_listener = TcpListener::bind(user_addr)
        .await
        .with_context(|| format!("binding user-service to {user_addr} (USER_SERVICE_PORT)"))?;
    let data_dir = args.data_dir.display().to_string();
    let user_config = user_service::Config::try_parse_from([
        "user-service",
        "--grpc-addr",
        &user_addr.to_string(),
        "--admin-addr",
        &SocketAddr::new(args.host, args.user_service_admin_port).to_string(),
        "--database-url",
        &format!("sqlite://{data_dir}/users.db"),
        "--data-dir",
        &data_dir,
        "--bootstrap-admin-email",
        &args.admin_email,
        "--bootstrap-admin-password",
        &admin_password,
    ])
    .context("user-service configuration")?;
    let user_stop = stop_rx.clone();
    services.spawn(async move {
        let result = user_service::run(user_config, user_listener, stopped(user_stop)).await;
        ("user-service", result)
    });

    let order_addr = SocketAddr::new(args.host, args.order_service_port);
    let order_listener = TcpListener::bind(order_addr)
        .await
        .with_context(|| format!("binding order-service to {order_addr} (ORDER_SERVICE_PORT)"))?;
    let order_config = order_service::Config::try_parse_from([
        "order-service",
        "--grpc-addr",
        &order_addr.to_string(),
        "--admin-addr",
        &SocketAddr::new(args.host, args.order_service_admin_port).to_string(),
        "--database-url",
        &format!("sqlite://{data_dir}/orders.db"),
        "--data-dir",
        &data_dir,
        "--user-service-url",
        &format!("http://{user_addr}"),
    ])
    .context("order-service configuration")?;
    services.spawn(async move {
        let result = order_service::run(order_config, order_listener, stopped(stop_rx)).await;
        ("order-service", result)
    });

    wait_until_serving(user_addr, "shop.user.v1.UserService").await?;
    wait_until_serving(order_addr, "shop.order.v1.OrderService").await?;
    print_banner(&args, user_addr, order_addr, &admin_password);

    tokio::select! {
        _ = shutdown_signal() => {}
        Some(done) = services.join_next() => {
            let (name, result) = done.context("a service task panicked")?;
            result.with_context(|| format!("{name} stopped unexpectedly"))?;
            anyhow::bail!("{name} stopped unexpectedly");
        }
    }
    let _ = stop_tx.send(true);
    while let Some(done) = services.join_next().await {
        let (name, result) = done.context("a service task panicked")?;
        result.with_context(|| format!("{name} failed while stopping"))?;
    }
    println!("devstack stopped");
    Ok(())
}

/// BOOTSTRAP_ADMIN_PASSWORD if set, else the password generated on first
/// start and kept in the data directory (never in the repository).
fn admin_password(args: &Args) -> anyhow::Result<String> {
    if let Ok(password) = std::env::var("BOOTSTRAP_ADMIN_PASSWORD") {
        return Ok(password);
    }
    let path = args.data_dir.join("devstack-admin-password");
    if let Ok(password) = std::fs::read_to_string(&path) {
        return Ok(password.trim().to_owned());
    }
    use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
    let password = URL_SAFE_NO_PAD.encode(shop_auth::random_bytes::<18>());
    write_private(&path, &password).with_context(|| format!("writing {}", path.display()))?;
    Ok(password)
}

#[cfg(unix)]
fn write_private(path: &std::path::Path, contents: &str) -> std::io::Result<()> {
    use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents.as_bytes())
}

#[cfg(not(unix))]
fn write_private(path: &std::path::Path, contents: &str) -> std::io::Result<()> {
    std::fs::write(path, contents)
}

/// Polls grpc.health.v1 until `service` answers SERVING (30 s at most).
async fn wait_until_serving(addr: SocketAddr, service: &str) -> anyhow::Result<()> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?.connect_lazy();
    let mut health = HealthClient::new(channel);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let answer = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await;
        if matches!(&answer, Ok(r) if r.get_ref().status == ServingStatus::Serving as i32) {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{service} at {addr} not serving after 30 s: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn print_banner(args: &Args, user_addr: SocketAddr, order_addr: SocketAddr, admin_password: &str) {
    println!(
        "\n\
         shop devstack is up (data directory: {data})\n\
         \n\
         \x20 user-service   grpc://{user_addr}   (UserService, AuthService, health, reflection)\n\
         \x20                http://{user_admin}/metrics  /healthz  /readyz\n\
         \x20 order-service  grpc://{order_addr}   (OrderService, health, reflection)\n\
         \x20                http://{order_admin}/metrics  /healthz  /readyz\n\
         \n\
         \x20 admin login   {email} / {admin_password}\n\
         \n\
         Try it (grpcurl, https://github.com/fullstorydev/grpcurl):\n\
         \x20 grpcurl -plaintext {user_addr} list\n\
         \x20 grpcurl -plaintext -d '{{\"email\":\"ada@example.com\",\"username\":\"ada\",\"password\":\"correct horse\",\"first_name\":\"Ada\",\"last_name\":\"Lovelace\"}}' \\\n\
         \x20   {user_addr} shop.user.v1.UserService/CreateUser\n\
         \x20 TOKEN=$(grpcurl -plaintext -d '{{\"identifier\":\"ada\",\"password\":\"correct horse\"}}' {user_addr} shop.auth.v1.AuthService/Login | jq -r .accessToken)\n\
         \x20 grpcurl -plaintext -H \"authorization: Bearer $TOKEN\" -d '{{\"items\":[{{\"product_id\":\"sku-1\",\"quantity\":2,\"unit_price_cents\":499}}],\"currency_code\":\"EUR\",\"request_id\":\"first-order\",\"user_id\":\"<id from CreateUser>\"}}' \\\n\
         \x20   {order_addr} shop.order.v1.OrderService/CreateOrder\n\
         \n\
         Ctrl-C stops everything.\n",
        data = args.data_dir.display(),
        email = args.admin_email,
        user_admin = SocketAddr::new(args.host, args.user_service_admin_port),
        order_admin = SocketAddr::new(args.host, args.order_service_admin_port),
    );
}
