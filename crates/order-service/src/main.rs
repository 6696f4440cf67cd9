//! The order-service binary. All the work is in the library's
//! [`order_service::run`]; [`shop_server::binary::service_main`] does
//! configuration, telemetry, the sockets, signals and exit codes.

/// mimalloc: the stack allocates per call (headers, messages, spans) and
/// spends less time in it than in glibc's malloc (docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    shop_server::binary::service_main::<order_service::Config, _, _>(order_service::run).await
}
