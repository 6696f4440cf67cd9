//! The `main` of every service binary, so that each binary is a few lines:
//! parse the configuration (one line and exit 64 on a bad setting),
//! initialise logging, bind the gRPC socket, run the service until
//! SIGTERM/SIGINT, and turn the outcome into an exit code.

use std::{future::Future, net::SocketAddr, pin::Pin, process::ExitCode};

use tokio::net::TcpListener;

use crate::{
    config::{ConfigError, exit_with_config_error, parse_or_exit},
    server::shutdown_signal,
    telemetry::{self, LogFormat},
};

/// The shutdown signal handed to a service's `run`.
pub type Shutdown = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What `service_main` needs to know about a service's configuration.
pub trait ServiceConfig: clap::Parser {
    /// Where the gRPC server listens.
    fn grpc_addr(&self) -> SocketAddr;
    /// How log lines are written.
    fn log_format(&self) -> LogFormat;
}

/// Runs a service binary: `run(config, listener, shutdown)` is the
/// service library's entry point. Exit codes: 0 after a clean shutdown,
/// 64 for a configuration error (one line on stderr naming the setting),
/// 1 for any other failure (logged).
pub async fn service_main<C, F, Fut>(name: &'static str, run: F) -> ExitCode
where
    C: ServiceConfig,
    F: FnOnce(C, TcpListener, Shutdown) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let config: C = parse_or_exit();
    telemetry::init(name, config.log_format(), "info,sqlx=warn");
    let addr = config.grpc_addr();
    let listener = match TcpListener::bind(addr).await {
        Ok(listener) => listener,
        Err(e) => exit_with_config_error(&format!("GRPC_ADDR {addr}: {e}")),
    };
    let outcome = run(config, listener, Box::pin(shutdown_signal())).await;
    telemetry::shutdown();
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => match e.downcast_ref::<ConfigError>() {
            Some(config_error) => exit_with_config_error(&config_error.0),
            None => {
                tracing::error!(service = name, error = format!("{e:#}"), "service failed");
                ExitCode::FAILURE
            }
        },
    }
}
