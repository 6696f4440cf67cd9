//! user-service configuration: every setting is a flag with an environment
//! variable, and every default makes `cargo run -p user-service` work with
//! no setup (SQLite file and generated signing key under `./data/`).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Parser;
use shop_middleware::{binary::ServiceConfig, server::ServerArgs, telemetry::LogFormat};

/// shop user-service: accounts, sign-up, login and tokens over gRPC.
#[derive(Debug, Clone, Parser)]
#[command(name = "user-service", version, about, long_about = None)]
pub struct Config {
    /// Address the gRPC server listens on.
    #[arg(long, env = "GRPC_ADDR", default_value = "0.0.0.0:50051")]
    pub grpc_addr: SocketAddr,

    /// Address of the admin HTTP endpoint (`/metrics`, `/healthz`,
    /// `/readyz`).
    #[arg(long, env = "ADMIN_ADDR", default_value = "0.0.0.0:9101")]
    pub admin_addr: SocketAddr,

    /// Database URL: `sqlite://path/to/file.db` (created when missing) or
    /// `postgres://user:password@host/db`.
    #[arg(long, env = "DATABASE_URL", default_value = "sqlite://data/users.db")]
    pub database_url: String,

    /// Largest number of pooled database connections.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 10)]
    pub database_max_connections: u32,

    /// Directory for state the service generates itself (the development
    /// signing key).
    #[arg(long, env = "DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,

    /// PEM file (PKCS#8) with the Ed25519 key that signs access tokens.
    /// When unset, a key is generated on first start and kept at
    /// `<DATA_DIR>/user-service-jwt.pem`; set it in production so that
    /// every replica signs with the same key.
    #[arg(long, env = "JWT_PRIVATE_KEY_FILE")]
    pub jwt_private_key_file: Option<PathBuf>,

    /// Comma-separated PEM files of public keys that are still accepted and
    /// published, e.g. the previous signing key during a rotation.
    #[arg(long, env = "JWT_EXTRA_PUBLIC_KEY_FILES", value_delimiter = ',')]
    pub jwt_extra_public_key_files: Vec<PathBuf>,

    /// `iss` claim of issued tokens, and the only issuer accepted.
    #[arg(long, env = "JWT_ISSUER", default_value = "shop.user-service")]
    pub jwt_issuer: String,

    /// `aud` claim of issued tokens, and the only audience accepted.
    #[arg(long, env = "JWT_AUDIENCE", default_value = "shop")]
    pub jwt_audience: String,

    /// Lifetime of access tokens (e.g. `15m`, `1h`).
    #[arg(long, env = "ACCESS_TOKEN_TTL", default_value = "15m", value_parser = humantime::parse_duration)]
    pub access_token_ttl: Duration,

    /// Lifetime of refresh tokens; each rotation starts a new lifetime.
    #[arg(long, env = "REFRESH_TOKEN_TTL", default_value = "7d", value_parser = humantime::parse_duration)]
    pub refresh_token_ttl: Duration,

    /// Clock skew tolerated when checking a token's `exp` and `nbf`.
    #[arg(long, env = "JWT_LEEWAY", default_value = "30s", value_parser = humantime::parse_duration)]
    pub jwt_leeway: Duration,

    /// bcrypt cost (4 to 31); each step doubles the time per hash.
    #[arg(long, env = "BCRYPT_COST", default_value_t = shop_auth::password::DEFAULT_BCRYPT_COST,
          value_parser = clap::value_parser!(u32).range(4..=31))]
    pub bcrypt_cost: u32,

    /// Email of an admin account to create at start-up if it does not exist
    /// (an existing account with this email is given the admin role).
    #[arg(
        long,
        env = "BOOTSTRAP_ADMIN_EMAIL",
        requires = "bootstrap_admin_password"
    )]
    pub bootstrap_admin_email: Option<String>,

    /// Password of the bootstrap admin, used only when the account is
    /// created.
    #[arg(long, env = "BOOTSTRAP_ADMIN_PASSWORD", hide_env_values = true)]
    pub bootstrap_admin_password: Option<String>,

    /// Username of the bootstrap admin, used only when the account is
    /// created.
    #[arg(long, env = "BOOTSTRAP_ADMIN_USERNAME", default_value = "admin")]
    pub bootstrap_admin_username: String,

    /// Login attempts allowed per identifier (email or username) per
    /// minute, whoever makes them; more are RESOURCE_EXHAUSTED with
    /// RetryInfo.
    #[arg(long, env = "LOGIN_ATTEMPTS_PER_MINUTE", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub login_attempts_per_minute: u32,

    /// Activity events kept for a UserActivity subscriber that reads
    /// slowly; one that falls further behind is ended with
    /// RESOURCE_EXHAUSTED.
    #[arg(long, env = "ACTIVITY_BUFFER", default_value_t = 1024)]
    pub activity_buffer: usize,

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
    /// The signing key file: the configured one, or the generated one in
    /// the data directory.
    pub fn signing_key_path(&self) -> (PathBuf, bool) {
        match &self.jwt_private_key_file {
            Some(path) => (path.clone(), false),
            None => (self.data_dir.join("user-service-jwt.pem"), true),
        }
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
        let config = Config::try_parse_from(["user-service"]).unwrap();
        assert_eq!(config.access_token_ttl, Duration::from_secs(900));
        assert_eq!(config.bcrypt_cost, 12);
        assert!(config.server.grpc_reflection);
        assert_eq!(config.server.request_timeout_cap, Duration::from_secs(30));
        assert_eq!(
            config.signing_key_path(),
            (PathBuf::from("data/user-service-jwt.pem"), true)
        );
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(Config::try_parse_from(["user-service", "--bcrypt-cost", "3"]).is_err());
        assert!(Config::try_parse_from(["user-service", "--access-token-ttl", "soon"]).is_err());
        assert!(
            Config::try_parse_from(["user-service", "--bootstrap-admin-email", "a@b.c"]).is_err(),
            "an admin email without a password must be refused"
        );
    }
}
