//! The inventory-service binary: the kit's `service_main` over
//! [`inventory_service::run`].

/// mimalloc: the stack allocates per call (headers, messages, spans) and
/// spends less time in it than in glibc's malloc (docs/performance-history.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    shop_server::binary::service_main::<inventory_service::Config, _, _>(inventory_service::run)
        .await
}
