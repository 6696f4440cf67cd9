//! devstack: every shop service in one process, each on its usual port with
//! its own SQLite file under `./data/`, talking to each other over real gRPC
//! on loopback with the same middleware as in production. No Docker, no
//! setup: `cargo run -p devstack`.
//!
//! The services are one table ([`services`]): adding a service to the stack
//! is one line there. For each, devstack binds the gRPC and admin ports
//! (`<NAME>_PORT`, `<NAME>_ADMIN_PORT`, e.g. `USER_SERVICE_PORT`), and hands
//! it the settings every service may take: its addresses, its SQLite file,
//! the data directory, the URL of every other service (`USER_SERVICE_URL`,
//! ...) and the bootstrap admin. Each service keeps reading its other
//! environment variables (see the README).

mod table;
mod web;

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::{ArgMatches, Command, FromArgMatches as _};
use shop_core::config::exit_on_parse_error;
use shop_core::signals::shutdown_signal;
use shop_server::Listeners;
use tokio::{net::TcpListener, sync::watch, task::JoinSet};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use table::{Entry, services};

/// Runs every shop service in one process (SQLite under DATA_DIR).
#[derive(Debug, clap::Parser)]
#[command(name = "devstack", version, about)]
struct Args {
    /// Directory for the SQLite files and generated keys.
    #[arg(long, env = "DATA_DIR", default_value = "data")]
    data_dir: PathBuf,

    /// Interface the services listen on; 127.0.0.1 keeps them local.
    #[arg(long, env = "DEVSTACK_HOST", default_value = "127.0.0.1")]
    host: std::net::IpAddr,

    /// Admin account created on first start; its password is generated and
    /// kept in `<DATA_DIR>/devstack-admin-password` unless
    /// BOOTSTRAP_ADMIN_PASSWORD is set.
    #[arg(
        long,
        env = "BOOTSTRAP_ADMIN_EMAIL",
        default_value = "admin@shop.local"
    )]
    admin_email: String,

    /// Log line format and flush delay (also the services').
    #[command(flatten)]
    logs: shop_server::args::LogArgs,

    /// Port of the web page (sign in, order, watch it live), served from
    /// --web-dir once built (`npm --prefix web ci && npm --prefix web run
    /// build`); 0 turns it off. Its origin is allowed on the services
    /// (CORS_ALLOWED_ORIGINS) unless that is set.
    #[arg(long, env = "DEVSTACK_WEB_PORT", default_value_t = 8080)]
    web_port: u16,

    /// The built web page.
    #[arg(long, env = "DEVSTACK_WEB_DIR", default_value = "web/dist")]
    web_dir: PathBuf,
}

/// Where one service of the stack listens.
struct Placement {
    grpc: SocketAddr,
    admin: SocketAddr,
}

/// The command line: [`Args`] plus a port and an admin port per service.
fn command(services: &[Entry]) -> Command {
    let mut command = <Args as clap::CommandFactory>::command();
    for entry in services {
        let name = entry.info.name;
        let env = env_prefix(name);
        command = command
            .arg(
                clap::Arg::new(format!("{name}-port"))
                    .long(format!("{name}-port"))
                    .env(format!("{env}_PORT"))
                    .value_parser(clap::value_parser!(u16))
                    .default_value(entry.info.grpc_port.to_string())
                    .help(format!("{name} gRPC port")),
            )
            .arg(
                clap::Arg::new(format!("{name}-admin-port"))
                    .long(format!("{name}-admin-port"))
                    .env(format!("{env}_ADMIN_PORT"))
                    .value_parser(clap::value_parser!(u16))
                    .default_value(entry.info.admin_port.to_string())
                    .help(format!(
                        "{name} admin HTTP port (/metrics, /healthz, /readyz)"
                    )),
            );
    }
    command
}

/// `user-service` -> `USER_SERVICE`.
fn env_prefix(name: &str) -> String {
    name.to_ascii_uppercase().replace('-', "_")
}

fn placement(matches: &ArgMatches, host: std::net::IpAddr, name: &str) -> Placement {
    let port = |arg: String| *matches.get_one::<u16>(&arg).expect("has a default");
    Placement {
        grpc: SocketAddr::new(host, port(format!("{name}-port"))),
        admin: SocketAddr::new(host, port(format!("{name}-admin-port"))),
    }
}

/// The services' allocator (see their binaries).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let services = services();
    let matches = command(&services)
        .try_get_matches()
        .unwrap_or_else(|e| exit_on_parse_error(e));
    let args = Args::from_arg_matches(&matches).unwrap_or_else(|e| exit_on_parse_error(e));
    args.logs.init_telemetry("devstack", "info,sqlx=warn");
    let outcome = run(args, &matches, services).await;
    // Said before the log's writer stops (a line logged after is lost),
    // and on stderr too, whatever the log level.
    if let Err(e) = &outcome {
        tracing::error!(error = format!("{e:#}"), "devstack failed");
        eprintln!("devstack failed: {e:#}");
    }
    shop_telemetry::shutdown();
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}

async fn run(args: Args, matches: &ArgMatches, services: Vec<Entry>) -> anyhow::Result<()> {
    let shutdown = shutdown_signal();
    shop_auth::create_private_dir(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let admin_password = admin_password(&args)?;
    let data_dir = args.data_dir.display().to_string();
    let placements: Vec<Placement> = services
        .iter()
        .map(|s| placement(matches, args.host, s.info.name))
        .collect();

    // What every service may be told: where each service is, and the
    // bootstrap admin (only the token issuer has those settings).
    let mut shared: Vec<(String, String)> = services
        .iter()
        .zip(&placements)
        .map(|(s, p)| {
            (
                format!("{}_URL", env_prefix(s.info.name)),
                format!("http://{}", p.grpc),
            )
        })
        .collect();
    shared.push(("BOOTSTRAP_ADMIN_EMAIL".into(), args.admin_email.clone()));
    shared.push(("BOOTSTRAP_ADMIN_PASSWORD".into(), admin_password.clone()));
    // Service accounts: each caller's secret is generated on first start
    // at <DATA_DIR>/service-accounts/<name>.secret (its SERVICE_SECRET_FILE
    // default), where user-service finds it.
    shared.push((
        "SERVICE_ACCOUNTS_DIR".into(),
        format!("{data_dir}/service-accounts"),
    ));
    // A catalogue to order from.
    if std::env::var_os("SEED_CATALOGUE").is_none() {
        shared.push(("SEED_CATALOGUE".into(), "true".into()));
    }
    // The web page, when it is built and its port is free; the services
    // let it call them from its origin.
    let page = if args.web_port == 0 {
        None
    } else if !web::is_built(&args.web_dir) {
        tracing::info!(
            dir = %args.web_dir.display(),
            "the web page is not built (npm --prefix web ci && npm --prefix web run build); not serving it"
        );
        None
    } else {
        let addr = SocketAddr::new(args.host, args.web_port);
        match TcpListener::bind(addr).await {
            Ok(listener) => Some(listener),
            Err(e) => {
                tracing::warn!(%addr, error = %e, "the web page's port is taken (DEVSTACK_WEB_PORT); not serving it");
                None
            }
        }
    };
    if page.is_some() && std::env::var_os("CORS_ALLOWED_ORIGINS").is_none() {
        shared.push((
            "CORS_ALLOWED_ORIGINS".into(),
            web::origins(args.host, args.web_port),
        ));
    }
    // A laptop stack is for exploring: reflection on unless told otherwise.
    if std::env::var_os("GRPC_REFLECTION").is_none() {
        shared.push(("GRPC_REFLECTION".into(), "true".into()));
    }

    // Every port is bound before any service starts: a running service's
    // outgoing connections take ephemeral ports, which could otherwise
    // take a port chosen for a service not bound yet.
    let mut bound = Vec::with_capacity(services.len());
    for (service, place) in services.iter().zip(&placements) {
        let name = service.info.name;
        bound.push(Listeners {
            grpc: bind(place.grpc, &format!("{}_PORT", env_prefix(name))).await?,
            admin: bind(place.admin, &format!("{}_ADMIN_PORT", env_prefix(name))).await?,
        });
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut running = JoinSet::new();
    for ((service, place), listeners) in services.iter().zip(&placements).zip(bound) {
        let name = service.info.name;
        let mut settings = vec![
            ("GRPC_ADDR".to_owned(), place.grpc.to_string()),
            ("ADMIN_ADDR".to_owned(), place.admin.to_string()),
            (
                "DATABASE_URL".to_owned(),
                format!("sqlite://{data_dir}/{}.db", service.info.database),
            ),
            ("DATA_DIR".to_owned(), data_dir.clone()),
        ];
        settings.extend(shared.iter().cloned());
        let mut stop = stop_rx.clone();
        let stopped = Box::pin(async move {
            let _ = stop.wait_for(|stop| *stop).await;
        });
        let serving = (service.start)(&settings, listeners, stopped)
            .with_context(|| format!("{name} configuration"))?;
        running.spawn(async move { (name, serving.await) });
    }

    for (service, place) in services.iter().zip(&placements) {
        wait_until_serving(place.grpc, service.info.name).await?;
    }
    let page_url = match page {
        Some(listener) => {
            let url = format!("http://localhost:{}/", listener.local_addr()?.port());
            let ports: Vec<(&str, u16)> = services
                .iter()
                .zip(&placements)
                .map(|(s, p)| (s.info.name, p.grpc.port()))
                .collect();
            let mut stop = stop_rx.clone();
            let dir = args.web_dir.clone();
            let config = web::config(&ports);
            running.spawn(async move {
                let stopped = async move {
                    let _ = stop.wait_for(|stop| *stop).await;
                };
                let served = web::serve(listener, dir, config, stopped).await;
                ("web page", served.map_err(anyhow::Error::from))
            });
            Some(url)
        }
        None => None,
    };
    print_banner(
        &args,
        &services,
        &placements,
        &admin_password,
        page_url.as_deref(),
    );

    tokio::select! {
        _ = shutdown => {}
        Some(done) = running.join_next() => {
            let (name, result) = done.context("a service task panicked")?;
            result.with_context(|| format!("{name} stopped unexpectedly"))?;
            anyhow::bail!("{name} stopped unexpectedly");
        }
    }
    let _ = stop_tx.send(true);
    while let Some(done) = running.join_next().await {
        let (name, result) = done.context("a service task panicked")?;
        result.with_context(|| format!("{name} failed while stopping"))?;
    }
    println!("devstack stopped");
    Ok(())
}

async fn bind(addr: SocketAddr, setting: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr} ({setting})"))
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

/// Polls grpc.health.v1 (the whole server) until it answers SERVING (30 s
/// at most).
async fn wait_until_serving(addr: SocketAddr, name: &str) -> anyhow::Result<()> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?.connect_lazy();
    let mut health = HealthClient::new(channel);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let answer = health
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await;
        if matches!(&answer, Ok(r) if r.get_ref().status == ServingStatus::Serving as i32) {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{name} at {addr} not serving after 30 s: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn print_banner(
    args: &Args,
    services: &[Entry],
    placements: &[Placement],
    admin_password: &str,
    page_url: Option<&str>,
) {
    println!(
        "\nshop devstack is up (data directory: {})\n",
        args.data_dir.display()
    );
    let reflection = std::env::var("GRPC_REFLECTION").map_or(true, |v| v == "true");
    let extras = if reflection {
        "health, reflection"
    } else {
        "health"
    };
    for (service, place) in services.iter().zip(placements) {
        println!(
            "  {:<18} grpc://{}   ({}{extras})",
            service.info.name, place.grpc, service.serves
        );
        println!(
            "  {:<18} http://{}/metrics  /healthz  /readyz",
            "", place.admin
        );
    }
    match page_url {
        Some(url) => println!("\n  {:<18} {url}", "web page"),
        None if args.web_port != 0 => println!(
            "\n  {:<18} not served (build it: npm --prefix web ci && npm --prefix web run build)",
            "web page"
        ),
        None => {}
    }
    let users = placements[0].grpc;
    let orders = services
        .iter()
        .zip(placements)
        .find(|(s, _)| s.info.name == "order-service")
        .map_or(users, |(_, p)| p.grpc);
    println!(
        "\n\
         \x20 admin login   {email} / {admin_password}\n\
         \n\
         Try it (grpcurl, https://github.com/fullstorydev/grpcurl):\n\
         \x20 grpcurl -plaintext {users} list\n\
         \x20 grpcurl -plaintext -d '{{\"email\":\"ada@example.com\",\"username\":\"ada\",\"password\":\"correct horse\",\"first_name\":\"Ada\",\"last_name\":\"Lovelace\"}}' \\\n\
         \x20   {users} shop.user.v1.UserService/CreateUser\n\
         \x20 TOKEN=$(grpcurl -plaintext -d '{{\"identifier\":\"ada\",\"password\":\"correct horse\"}}' {users} shop.auth.v1.AuthService/Login | jq -r .accessToken)\n\
         \x20 grpcurl -plaintext -H \"authorization: Bearer $TOKEN\" -d '{{\"items\":[{{\"product_id\":\"sku-1\",\"quantity\":2}}],\"request_id\":\"first-order\",\"user_id\":\"<id from CreateUser>\"}}' \\\n\
         \x20   {orders} shop.order.v1.OrderService/CreateOrder\n\
         \n\
         Or with shopctl (cargo run -p shopctl -- --help): the catalogue is sku-1, sku-2, sku-3:\n\
         \x20 shopctl login ada && shopctl orders create --item sku-1:2 && shopctl products list\n\
         \n\
         Ctrl-C stops everything.\n",
        email = args.admin_email,
    );
}
