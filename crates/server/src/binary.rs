//! The `main` of every service binary, so that each binary is a few lines:
//! parse the configuration (one line and exit 64 on a bad setting),
//! initialise telemetry, take the sockets, run the service until
//! SIGTERM/SIGINT, and turn the outcome into an exit code.
//!
//! Sockets: the binary binds `GRPC_ADDR` and `ADMIN_ADDR` itself, unless
//! it is handed two listening sockets by systemd-style socket activation
//! (`LISTEN_FDS=2`, the gRPC socket first, then the admin one; `LISTEN_PID`
//! when set must be the process's own). Handing sockets in lets a
//! supervisor (systemd, a test harness) keep the ports across restarts:
//! connections made while the process restarts wait in the backlog instead
//! of being refused, and nothing races for a port.

use std::{future::Future, pin::Pin, process::ExitCode};

use shop_core::{config::exit_with_config_error, signals::shutdown_signal};
use tokio::net::TcpListener;

use crate::{
    ConfigError,
    service::{Listeners, ServiceConfig, parse_or_exit},
};

/// The shutdown signal handed to a service's `run`.
pub type Shutdown = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Runs a service binary: `run(config, listeners, shutdown)` is the
/// service library's entry point. Exit codes: 0 after a clean shutdown,
/// 64 for a configuration error (one line on stderr naming the setting),
/// 1 for any other failure (logged).
pub async fn service_main<C, F, Fut>(run: F) -> ExitCode
where
    C: ServiceConfig,
    F: FnOnce(C, Listeners, Shutdown) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let config: C = parse_or_exit();
    // Signals are taken from here on: one during start-up stops the
    // service as soon as it serves, instead of killing it half-started.
    let shutdown = shutdown_signal();
    let name = C::SERVICE.name;
    let args = config.service_args();
    args.logs.init_telemetry(name, "info,sqlx=warn");
    let listeners = match inherited_listeners() {
        Ok(Some(listeners)) => listeners,
        Ok(None) => match Listeners::bind(&config).await {
            Ok(listeners) => listeners,
            Err(e) => exit_with_config_error(&e.0),
        },
        Err(e) => exit_with_config_error(&e.0),
    };
    let outcome = run(config, listeners, Box::pin(shutdown)).await;
    let code = match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => match e.downcast_ref::<ConfigError>() {
            Some(config_error) => {
                shop_telemetry::shutdown();
                exit_with_config_error(&config_error.0)
            }
            None => {
                tracing::error!(service = name, error = format!("{e:#}"), "service failed");
                ExitCode::FAILURE
            }
        },
    };
    // Last: it writes out the log lines still queued.
    shop_telemetry::shutdown();
    code
}

/// The gRPC and admin sockets handed in through `LISTEN_FDS`, if any.
fn inherited_listeners() -> Result<Option<Listeners>, ConfigError> {
    let mut fds = listenfd::ListenFd::from_env();
    match fds.len() {
        0 => return Ok(None),
        2 => {}
        n => {
            return Err(ConfigError(format!(
                "LISTEN_FDS={n}: expected 2 sockets (gRPC, then admin)"
            )));
        }
    }
    let mut take = |index: usize, what: &str| -> Result<TcpListener, ConfigError> {
        let listener = fds
            .take_tcp_listener(index)
            .map_err(|e| ConfigError(format!("LISTEN_FDS socket {index} ({what}): {e}")))?
            .ok_or_else(|| ConfigError(format!("LISTEN_FDS socket {index} ({what}) is missing")))?;
        listener
            .set_nonblocking(true)
            .and_then(|()| TcpListener::from_std(listener))
            .map_err(|e| ConfigError(format!("LISTEN_FDS socket {index} ({what}): {e}")))
    };
    let grpc = take(0, "gRPC")?;
    let admin = take(1, "admin")?;
    Ok(Some(Listeners { grpc, admin }))
}
