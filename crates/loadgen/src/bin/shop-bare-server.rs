//! `shop-bare-server`: the yardstick for shop's numbers. Bare tonic, no
//! middleware, no database, no auth: `UserService.GetUser` answers a fixed
//! user (the same message shop's GetUser returns). `scripts/bench.sh` puts
//! the same load on it as on the real services, in the same run, so every
//! figure is also a ratio to what tonic alone does on that machine.

use std::net::SocketAddr;

use clap::Parser as _;
use shop_loadgen::stub::FixedUsers;
use shop_proto::user::v1::user_service_server::UserServiceServer;

/// A bare tonic UserService that answers GetUser with a fixed user.
#[derive(Debug, clap::Parser)]
#[command(name = "shop-bare-server", version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "BARE_ADDR", default_value = "127.0.0.1:50060")]
    addr: SocketAddr,
}

/// The services' allocator, so that the yardstick differs from them only
/// in what tonic alone does.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shop_loadgen::quiet::tracing_off();
    let args = Args::parse();
    eprintln!("shop-bare-server: listening on {}", args.addr);
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(UserServiceServer::new(FixedUsers::default()))
        .serve_with_shutdown(args.addr, shop_core::signals::shutdown_signal())
        .await?;
    Ok(())
}
