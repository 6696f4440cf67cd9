//! order-service configuration: every setting is a flag with an environment
//! variable, and every default makes `cargo run -p order-service` work next
//! to a local user-service with no setup (SQLite file under `./data/`).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Parser;
use shop_middleware::{
    binary::ServiceConfig, client::ClientArgs, server::ServerArgs, telemetry::LogFormat,
};

/// shop order-service: orders and their state machine over gRPC.
#[derive(Debug, Clone, Parser)]
#[command(name = "order-service", version, about, long_about = None)]
pub struct Config {
    /// Address the gRPC server listens on.
    #[arg(long, env = "GRPC_ADDR", default_value = "0.0.0.0:50052")]
    pub grpc_addr: SocketAddr,

    /// Address of the admin HTTP endpoint (`/metrics`, `/healthz`,
    /// `/readyz`).
    #[arg(long, env = "ADMIN_ADDR", default_value = "0.0.0.0:9102")]
    pub admin_addr: SocketAddr,

    /// Database URL: `sqlite://path/to/file.db` (created when missing) or
    /// `postgres://user:password@host/db`.
    #[arg(long, env = "DATABASE_URL", default_value = "sqlite://data/orders.db")]
    pub database_url: String,

    /// Largest number of pooled database connections.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 10)]
    pub database_max_connections: u32,

    /// Directory for state the service generates itself (the page token
    /// secret).
    #[arg(long, env = "DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,

    /// user-service: one endpoint URL, several separated by commas (calls
    /// are balanced over them), or `dns:///host:port` for every address of
    /// a DNS name, re-resolved every CLIENT_DNS_REFRESH_INTERVAL. Users are
    /// checked there, and the token verification keys come from there.
    #[arg(
        long,
        env = "USER_SERVICE_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    pub user_service_url: String,

    /// Connections, balancing, retries and circuit breaking of the channel
    /// to user-service.
    #[command(flatten)]
    pub client: ClientArgs,

    /// Comma-separated PEM files of the public keys that verify access
    /// tokens. When unset (the default), keys are fetched from
    /// user-service's GetPublicKeys and re-fetched when a token names an
    /// unknown key.
    #[arg(long, env = "JWT_PUBLIC_KEY_FILES", value_delimiter = ',')]
    pub jwt_public_key_files: Vec<PathBuf>,

    /// Shortest time between two re-fetches of the keys triggered by
    /// tokens with an unknown `kid`.
    #[arg(long, env = "JWT_KEY_REFRESH_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub jwt_key_refresh_interval: Duration,

    /// The only `iss` accepted in access tokens.
    #[arg(long, env = "JWT_ISSUER", default_value = "shop.user-service")]
    pub jwt_issuer: String,

    /// The only `aud` accepted in access tokens.
    #[arg(long, env = "JWT_AUDIENCE", default_value = "shop")]
    pub jwt_audience: String,

    /// Clock skew tolerated when checking a token's `exp` and `nbf`.
    #[arg(long, env = "JWT_LEEWAY", default_value = "30s", value_parser = humantime::parse_duration)]
    pub jwt_leeway: Duration,

    /// File with the secret (64 hex digits) that signs page tokens; give
    /// every replica the same one. Generated at
    /// `<DATA_DIR>/order-service-page-token.key` when unset.
    #[arg(long, env = "PAGE_TOKEN_SECRET_FILE")]
    pub page_token_secret_file: Option<PathBuf>,

    /// How often a WatchOrder stream re-reads its order even without a
    /// change notice: a safety net for notices lost while the database
    /// connection was down (they are normally resynced on reconnect).
    #[arg(long, env = "WATCH_RESYNC_INTERVAL", default_value = "60s", value_parser = humantime::parse_duration)]
    pub watch_resync_interval: Duration,

    /// Reflection, shutdown grace, timeouts, limits, fault injection.
    #[command(flatten)]
    pub server: ServerArgs,

    /// Log line format: `pretty` or `json`. Filter with `RUST_LOG`. Traces
    /// are exported over OTLP/gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT` is
    /// set (with the standard `OTEL_SERVICE_NAME`,
    /// `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`).
    #[arg(long, env = "LOG_FORMAT", default_value = "pretty")]
    pub log_format: LogFormat,
}

impl Config {
    /// The page token secret file: configured, or generated in the data
    /// directory.
    pub fn page_token_secret_path(&self) -> PathBuf {
        self.page_token_secret_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("order-service-page-token.key"))
    }
}

impl ServiceConfig for Config {
    fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    fn log_format(&self) -> LogFormat {
        self.log_format
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_need_no_configuration() {
        let config = Config::try_parse_from(["order-service"]).unwrap();
        assert_eq!(config.grpc_addr.port(), 50052);
        assert_eq!(config.user_service_url, "http://127.0.0.1:50051");
        assert!(config.jwt_public_key_files.is_empty());
        assert_eq!(
            config.page_token_secret_path(),
            PathBuf::from("data/order-service-page-token.key")
        );
    }

    #[test]
    fn fault_rules_are_checked_at_start_up() {
        assert!(Config::try_parse_from(["order-service", "--fault-delay", "GetUser"]).is_err());
        let config = Config::try_parse_from([
            "order-service",
            "--fault-error",
            "CreateOrder=unavailable:0.5",
        ])
        .unwrap();
        assert_ne!(config.server.fault_error, Default::default());
    }
}
