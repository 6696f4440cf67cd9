//! The user-service binary. All the work is in the library's
//! [`user_service::run`]; [`shop_middleware::binary::service_main`] does
//! configuration, logging, the socket, signals and exit codes.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    shop_middleware::binary::service_main::<user_service::Config, _, _>(
        "user-service",
        user_service::run,
    )
    .await
}
