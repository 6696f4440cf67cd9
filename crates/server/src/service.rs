//! What the kit needs to know about a service, declared once in the
//! service's crate: its [`ServiceInfo`] (name, default ports, database) and
//! its configuration type ([`ServiceConfig`]), and the sockets it serves on
//! ([`Listeners`]).
//!
//! Configuration is parsed through [`parse_from`] (or [`parse_or_exit`] in
//! a binary) so that the service's own defaults (ports, SQLite file) show
//! in `--help`.

use std::{ffi::OsString, net::SocketAddr};

use clap::Parser;
use tokio::net::TcpListener;

use crate::args::ServiceArgs;

/// A service's identity and defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceInfo {
    /// Its name, also its binary's (`billing-service`): logs, spans,
    /// `service.name`.
    pub name: &'static str,
    /// Its default gRPC port.
    pub grpc_port: u16,
    /// Its default admin HTTP port.
    pub admin_port: u16,
    /// Its database's name: the SQLite file `data/<database>.db` by
    /// default, the database name on PostgreSQL.
    pub database: &'static str,
}

impl ServiceInfo {
    /// The service `name` on its default `grpc_port` and `admin_port`, with
    /// the database `database`.
    pub const fn new(
        name: &'static str,
        grpc_port: u16,
        admin_port: u16,
        database: &'static str,
    ) -> ServiceInfo {
        ServiceInfo {
            name,
            grpc_port,
            admin_port,
            database,
        }
    }

    /// `sqlite://data/<database>.db`.
    pub fn default_database_url(&self) -> String {
        format!("sqlite://data/{}.db", self.database)
    }
}

/// A service's configuration: its own flags plus the flattened
/// [`ServiceArgs`].
pub trait ServiceConfig: Parser + Send + 'static {
    /// Who the service is.
    const SERVICE: ServiceInfo;

    /// The settings every service shares.
    fn service_args(&self) -> &ServiceArgs;
}

/// Implements [`ServiceConfig`] for a service's configuration `$config`
/// whose flattened [`ServiceArgs`] field is `$field`, for the service
/// `$service`: `shop_server::service_config!(Config, crate::SERVICE, service);`.
#[macro_export]
macro_rules! service_config {
    ($config:ty, $service:expr, $field:ident) => {
        impl $crate::ServiceConfig for $config {
            const SERVICE: $crate::ServiceInfo = $service;

            fn service_args(&self) -> &$crate::ServiceArgs {
                &self.$field
            }
        }
    };
}

/// The sockets a service serves on, bound by its caller (the binary,
/// devstack, a test), so that nothing races for a port.
#[derive(Debug)]
pub struct Listeners {
    /// gRPC.
    pub grpc: TcpListener,
    /// Admin HTTP.
    pub admin: TcpListener,
}

impl Listeners {
    /// Binds both on 127.0.0.1 with ports the OS picks (tests).
    pub async fn ephemeral() -> std::io::Result<Listeners> {
        Ok(Listeners {
            grpc: TcpListener::bind("127.0.0.1:0").await?,
            admin: TcpListener::bind("127.0.0.1:0").await?,
        })
    }

    /// Binds the addresses `config` asks for.
    pub async fn bind<C: ServiceConfig>(config: &C) -> Result<Listeners, crate::ConfigError> {
        let args = config.service_args();
        let grpc = bind(args.grpc_addr(&C::SERVICE), "GRPC_ADDR").await?;
        let admin = bind(args.admin_addr(&C::SERVICE), "ADMIN_ADDR").await?;
        Ok(Listeners { grpc, admin })
    }

    /// The gRPC address.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The admin address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
            .local_addr()
            .expect("a bound listener has an address")
    }
}

async fn bind(addr: SocketAddr, setting: &str) -> Result<TcpListener, crate::ConfigError> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| crate::ConfigError(format!("{setting} {addr}: {e}")))
}

/// The clap command of `C` with the service's defaults filled in.
pub fn command<C: ServiceConfig>() -> clap::Command {
    let service = C::SERVICE;
    C::command()
        .mut_arg("grpc_addr", |a| {
            a.default_value(format!("0.0.0.0:{}", service.grpc_port))
        })
        .mut_arg("admin_addr", |a| {
            a.default_value(format!("0.0.0.0:{}", service.admin_port))
        })
        .mut_arg("database_url", |a| {
            a.default_value(service.default_database_url())
        })
}

/// Parses `C` from `args` (the first is the program name) and the
/// environment, with the service's defaults.
pub fn parse_from<C, I, T>(args: I) -> Result<C, clap::Error>
where
    C: ServiceConfig,
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let mut matches = command::<C>().try_get_matches_from(args)?;
    C::from_arg_matches_mut(&mut matches)
}

/// Parses `C` from the environment with `overrides` (pairs of environment
/// variable name and value) taking precedence; an override the service has
/// no setting for is skipped, so a host of several services (devstack)
/// can hand every service the same list.
pub fn parse_with_overrides<C: ServiceConfig>(
    overrides: &[(String, String)],
) -> Result<C, clap::Error> {
    let command = command::<C>();
    let mut args = vec![OsString::from(C::SERVICE.name)];
    for (name, value) in overrides {
        let known = command
            .get_arguments()
            .find(|a| a.get_env().is_some_and(|env| env == name.as_str()));
        if let Some(long) = known.and_then(clap::Arg::get_long) {
            // One `--name=value` word: a value that starts with `-` (a
            // generated password) is still a value, not a flag.
            args.push(format!("--{long}={value}").into());
        }
    }
    parse_from::<C, _, _>(args)
}

/// Parses `C` from the command line and environment, or exits (help and
/// version with code 0, a bad setting with one line and code 64).
pub fn parse_or_exit<C: ServiceConfig>() -> C {
    match parse_from::<C, _, _>(std::env::args_os()) {
        Ok(config) => config,
        Err(err) => shop_core::config::exit_on_parse_error(err),
    }
}
