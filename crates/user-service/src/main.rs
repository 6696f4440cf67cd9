//! The user-service binary. All the work is in the library's
//! [`user_service::run`]; [`shop_server::binary::service_main`] does
//! configuration, telemetry, the sockets, signals and exit codes.

/// mimalloc: the stack allocates per call (headers, messages, spans) and
/// spends less time in it than in glibc's malloc (docs/performance-history.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    shop_server::binary::service_main::<user_service::Config, _, _>(user_service::run).await
}
