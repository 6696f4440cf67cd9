//! The order-service binary: configuration, logging, socket, signal. All
//! the work is in the library's [`order_service::run`].

use std::process::ExitCode;

use order_service::{Config, ConfigError};
use shop_middleware::{
    config::{exit_with_config_error, parse_or_exit},
    server::shutdown_signal,
    telemetry,
};
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> ExitCode {
    let config: Config = parse_or_exit();
    telemetry::init(config.log_format, "info,sqlx=warn");

    let listener = match TcpListener::bind(config.grpc_addr).await {
        Ok(listener) => listener,
        Err(e) => exit_with_config_error(&format!("GRPC_ADDR {}: {e}", config.grpc_addr)),
    };
    match order_service::run(config, listener, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => match e.downcast_ref::<ConfigError>() {
            Some(config_error) => exit_with_config_error(&config_error.0),
            None => {
                tracing::error!(error = format!("{e:#}"), "order-service failed");
                ExitCode::FAILURE
            }
        },
    }
}
