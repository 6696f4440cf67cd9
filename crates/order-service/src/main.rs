//! The order-service binary. All the work is in the library's
//! [`order_service::run`]; [`shop_middleware::binary::service_main`] does
//! configuration, logging, the socket, signals and exit codes.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    shop_middleware::binary::service_main::<order_service::Config, _, _>(
        "order-service",
        order_service::run,
    )
    .await
}
