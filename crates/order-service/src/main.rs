//! The order-service binary. All the work is in the library's
//! [`order_service::run`]; [`shop_server::binary::service_main`] does
//! configuration, telemetry, the sockets, signals and exit codes.

/// mimalloc, as in the other services: the stack allocates per call
/// (headers, messages, spans) and spends less time in it than in glibc's
/// malloc. An idle WatchOrder stream costs more resident memory with it
/// (about 9.2 KB against 7.7 KB with glibc's, still under the 10 KiB
/// budget); docs/performance-history.md has both measurements.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    shop_server::binary::service_main::<order_service::Config, _, _>(order_service::run).await
}
