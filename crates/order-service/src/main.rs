//! The order-service binary. All the work is in the library's
//! [`order_service::run`]; [`shop_server::binary::service_main`] does
//! configuration, telemetry, the sockets, signals and exit codes.
//!
//! Unlike the other services it keeps the system allocator: it holds the
//! idle WatchOrder streams, and with mimalloc each cost 11.5 KB of
//! resident memory instead of 9.9 KB (10,000 streams, scripts/bench.sh),
//! over the 10 KiB per stream docs/performance.md budgets.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    shop_server::binary::service_main::<order_service::Config, _, _>(order_service::run).await
}
