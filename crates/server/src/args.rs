//! The settings every shop service shares, as one clap struct that each
//! service flattens into its own configuration: [`ServiceArgs`] (where to
//! listen, the database, the data directory, token verification, logs) and
//! the [`ServerArgs`] inside it (limits, timeouts, reflection, faults,
//! streams, TLS). A service adds only its own flags.
//!
//! The addresses and the database have per-service defaults (each service
//! its own ports and SQLite file): the fields are optional here and
//! resolved from the service's [`crate::service::ServiceInfo`], which also
//! fills them into `--help`.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use shop_core::{config::ConfigError, pagination::PageTokenCodec};
use shop_storage::ConnectOptions;
use shop_telemetry::LogFormat;

use crate::service::ServiceInfo;

/// What every service is configured with; flatten it into the service's
/// configuration (`#[command(flatten)] pub service: ServiceArgs`).
#[derive(Debug, Clone, clap::Args)]
pub struct ServiceArgs {
    /// Address the gRPC server listens on (the default is the service's
    /// own port on every interface).
    #[arg(long, env = "GRPC_ADDR")]
    pub grpc_addr: Option<SocketAddr>,

    /// Address of the admin HTTP endpoint (`/metrics`, `/healthz`,
    /// `/readyz`).
    #[arg(long, env = "ADMIN_ADDR")]
    pub admin_addr: Option<SocketAddr>,

    /// Database URL: `sqlite://path/to/file.db` (created when missing) or
    /// `postgres://user:password@host/db`.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,

    /// Largest number of pooled database connections (PostgreSQL); on
    /// SQLite, how many idle read-only connections are kept between reads.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 10)]
    pub database_max_connections: u32,

    /// PostgreSQL: connections shared by every read outside a transaction,
    /// the queries of concurrent calls pipelined on them (0: each read
    /// takes a pooled connection). Default: one per CPU. They negotiate TLS
    /// as the pool does (the URL's `sslmode`, `sslrootcert`, `sslcert`,
    /// `sslkey`). Where they are opened, the group-commit connection is a
    /// pipelined one too (a transaction's savepoint goes out with its first
    /// statement).
    #[arg(long, env = "DATABASE_PIPELINE_CONNECTIONS")]
    pub database_pipeline_connections: Option<u32>,

    /// PostgreSQL: transactions run in turn on one connection and
    /// concurrent ones share one commit (group commit), so that
    /// transactions updating the same row (a product's stock) no longer
    /// take one disk flush each. `false`: each transaction takes a pooled
    /// connection of its own. SQLite always commits in groups.
    #[arg(long, env = "DATABASE_GROUP_COMMIT", default_value_t = true, action = clap::ArgAction::Set)]
    pub database_group_commit: bool,

    /// When writes arrive closer together than this, a batch of the group
    /// commit stays open this long for more of them, so that they share
    /// one commit (SQLite: one disk flush; PostgreSQL, with group commit
    /// on: one WAL flush and round trip); each is still answered only
    /// after that commit, the first up to this much later. Writes further
    /// apart commit at once, and so do all while recent commits already
    /// held 8 or more writes on average. 0 turns it off; at most 20ms.
    #[arg(long, env = "DATABASE_COMMIT_DELAY", default_value = "2ms", value_parser = parse_commit_delay)]
    pub database_commit_delay: Duration,

    /// Directory for state the service generates itself (development keys
    /// and secrets).
    #[arg(long, env = "DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,

    /// File with the secret (64 hex digits) that signs the service's page
    /// tokens; give every replica the same one. Generated at
    /// `<DATA_DIR>/<service>-page-token.key` when unset.
    #[arg(long, env = "PAGE_TOKEN_SECRET_FILE")]
    pub page_token_secret_file: Option<PathBuf>,

    /// Access token verification.
    #[command(flatten)]
    pub tokens: TokenArgs,

    /// Log lines: their format and how long they may wait to be written.
    #[command(flatten)]
    pub logs: LogArgs,

    /// Reflection, shutdown grace, timeouts, limits, fault injection,
    /// streams, TLS.
    #[command(flatten)]
    pub server: ServerArgs,
}

impl ServiceArgs {
    /// The gRPC address: configured, or all interfaces on the service's
    /// own port.
    pub fn grpc_addr(&self, service: &ServiceInfo) -> SocketAddr {
        self.grpc_addr
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], service.grpc_port)))
    }

    /// The admin HTTP address: configured, or all interfaces on the
    /// service's own admin port.
    pub fn admin_addr(&self, service: &ServiceInfo) -> SocketAddr {
        self.admin_addr
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], service.admin_port)))
    }

    /// The codec of the service's page tokens, keyed with
    /// `PAGE_TOKEN_SECRET_FILE` (generated in `DATA_DIR` when unset).
    pub fn page_tokens(&self, service: &ServiceInfo) -> Result<PageTokenCodec, ConfigError> {
        let path = self.page_token_secret_file.clone().unwrap_or_else(|| {
            self.data_dir
                .join(format!("{}-page-token.key", service.name))
        });
        let secret = shop_auth::load_or_generate_secret(&path)
            .map_err(|e| ConfigError(format!("PAGE_TOKEN_SECRET_FILE: {e}")))?;
        Ok(PageTokenCodec::new(secret))
    }

    /// The database URL: configured, or the service's SQLite file under
    /// `data/`.
    pub fn database_url(&self, service: &ServiceInfo) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| service.default_database_url())
    }

    /// How to connect to the database: pool size, pipelined reads, group
    /// commit (`DATABASE_*`).
    pub fn database_options(&self) -> ConnectOptions {
        ConnectOptions::new(
            self.database_max_connections,
            self.database_pipeline_connections,
        )
        .with_group_commit(self.database_group_commit)
        .with_commit_delay(self.database_commit_delay)
    }
}

/// A commit delay: a duration of at most `shop_storage::MAX_BATCH_AGE`.
fn parse_commit_delay(text: &str) -> Result<Duration, String> {
    let delay = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if delay > shop_storage::MAX_BATCH_AGE {
        return Err(format!(
            "at most {} (a batch commits when it is that old)",
            humantime::format_duration(shop_storage::MAX_BATCH_AGE)
        ));
    }
    Ok(delay)
}

/// How a process logs: the services' and devstack's settings.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Log line format: `pretty` or `json`. Filter with `RUST_LOG`. Traces
    /// are exported over OTLP/gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT` is
    /// set (with the standard `OTEL_SERVICE_NAME`,
    /// `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`).
    #[arg(long, env = "LOG_FORMAT", default_value = "pretty")]
    pub log_format: LogFormat,

    /// How long log lines may wait to be written, so that lines logged
    /// close together share one write; 0 writes each as soon as the
    /// writer thread wakes. Killed outright, the process loses at most
    /// this much of its log; stopped, it writes out everything.
    #[arg(long, env = "LOG_FLUSH_DELAY", default_value = "10ms", value_parser = humantime::parse_duration)]
    pub log_flush_delay: Duration,
}

impl LogArgs {
    /// Starts logging, metrics and tracing for the process `name`
    /// (`shop_telemetry::init`) with these settings; `default_filter`
    /// applies when `RUST_LOG` is unset.
    pub fn init_telemetry(&self, name: &'static str, default_filter: &str) {
        shop_telemetry::init(name, self.log_format, self.log_flush_delay, default_filter);
    }
}

/// What an access token must say to be accepted (and, on the token
/// issuer, what it writes into the tokens it issues).
#[derive(Debug, Clone, clap::Args)]
pub struct TokenArgs {
    /// The only `iss` accepted in access tokens.
    #[arg(long, env = "JWT_ISSUER", default_value = shop_auth::token::DEFAULT_ISSUER)]
    pub jwt_issuer: String,

    /// The only `aud` accepted in access tokens.
    #[arg(long, env = "JWT_AUDIENCE", default_value = shop_auth::token::DEFAULT_AUDIENCE)]
    pub jwt_audience: String,

    /// Clock skew tolerated when checking a token's `exp` and `nbf`.
    #[arg(long, env = "JWT_LEEWAY", default_value = "30s", value_parser = humantime::parse_duration)]
    pub jwt_leeway: Duration,
}

/// Server settings every shop service shares (part of [`ServiceArgs`]).
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// Serve gRPC reflection (v1 and v1alpha) so that grpcurl and similar
    /// tools can discover the API. Off by default: it tells an anonymous
    /// caller the whole API; devstack turns it on.
    #[arg(long, env = "GRPC_REFLECTION", default_value_t = false, action = clap::ArgAction::Set)]
    pub grpc_reflection: bool,

    /// How long in-flight calls may run after SIGTERM/SIGINT before the
    /// remaining connections are dropped.
    #[arg(long, env = "SHUTDOWN_GRACE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    /// After SIGTERM, how long to keep accepting calls while reporting
    /// NOT_SERVING, so that load balancers notice before the port closes.
    #[arg(long, env = "DRAIN_DELAY", default_value = "0s", value_parser = humantime::parse_duration)]
    pub drain_delay: Duration,

    /// How often the database (and other dependencies) are checked for
    /// readiness; health is NOT_SERVING while a check fails.
    #[arg(long, env = "HEALTH_CHECK_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub health_check_interval: Duration,

    /// Most calls in handlers at once; more are shed with UNAVAILABLE.
    #[arg(long, env = "MAX_CONCURRENT_REQUESTS", default_value_t = 1024)]
    pub max_concurrent_requests: usize,

    /// How much lower (in nice values, 1 to 19) the priority of the threads
    /// running handlers of calls with side effects is than that of the
    /// threads serving reads, so that reads are not queued behind writes
    /// on a busy core; 0 runs every handler on the serving threads.
    #[arg(long, env = "WRITE_LANE_NICE", default_value_t = 10,
          value_parser = clap::value_parser!(u8).range(0..=19))]
    pub write_lane_nice: u8,

    /// Sustained calls per second per caller (user, or peer address when
    /// anonymous; a service on its own behalf is not counted); more are
    /// RESOURCE_EXHAUSTED with RetryInfo.
    #[arg(long, env = "RATE_LIMIT_PER_SECOND", default_value_t = 200.0)]
    pub rate_limit_per_second: f64,

    /// Calls a caller may make at once above the sustained rate.
    #[arg(long, env = "RATE_LIMIT_BURST", default_value_t = 400)]
    pub rate_limit_burst: u32,

    /// Concurrent HTTP/2 streams (calls) per connection; a client waits
    /// for a free one beyond this.
    #[arg(long, env = "HTTP2_MAX_CONCURRENT_STREAMS", default_value_t = 100)]
    pub http2_max_concurrent_streams: u32,

    /// Largest header list (all metadata of one call, uncompressed) a
    /// client may send; a larger one is refused before the call starts.
    #[arg(long, env = "HTTP2_MAX_HEADER_LIST_SIZE", default_value_t = 16384)]
    pub http2_max_header_list_size: u32,

    /// Streams the server may reset on one connection because the client
    /// broke the protocol on them; past this the connection is closed
    /// (GOAWAY ENHANCE_YOUR_CALM), stopping "MadeYouReset" floods.
    #[arg(long, env = "HTTP2_MAX_LOCAL_ERROR_RESETS", default_value_t = 1024)]
    pub http2_max_local_error_resets: usize,

    /// Hold each connection's first write back for one turn of the
    /// scheduler, so that the responses of calls that arrived together
    /// leave in one write (one system call and one wake-up of the client
    /// instead of one a call); false writes each as soon as it is ready.
    #[arg(long, env = "COALESCE_WRITES", default_value_t = true, action = clap::ArgAction::Set)]
    pub coalesce_writes: bool,

    /// Open client connections at once; one accepted beyond this is
    /// closed at once (before any TLS handshake).
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,

    /// A connection older than this is asked to go (GOAWAY) so clients
    /// reconnect and rebalance over replicas; its calls in flight finish.
    #[arg(long, env = "MAX_CONNECTION_AGE", default_value = "1h", value_parser = humantime::parse_duration)]
    pub max_connection_age: Duration,

    /// How long calls in flight on a connection past MAX_CONNECTION_AGE
    /// may go on before the connection is closed.
    #[arg(long, env = "MAX_CONNECTION_AGE_GRACE", default_value = "5m", value_parser = humantime::parse_duration)]
    pub max_connection_age_grace: Duration,

    /// Interval of HTTP/2 keepalive pings to clients.
    #[arg(long, env = "HTTP2_KEEPALIVE_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub http2_keepalive_interval: Duration,

    /// How long a keepalive ping may go unanswered before the connection
    /// is closed.
    #[arg(long, env = "HTTP2_KEEPALIVE_TIMEOUT", default_value = "20s", value_parser = humantime::parse_duration)]
    pub http2_keepalive_timeout: Duration,

    /// Longest a unary call may run: the caller's grpc-timeout is honoured
    /// up to this, and it is the deadline when the caller sends none.
    #[arg(long, env = "REQUEST_TIMEOUT_CAP", default_value = "30s", value_parser = humantime::parse_duration)]
    pub request_timeout_cap: Duration,

    /// Fault injection, off when empty: added latency per method, e.g.
    /// `GetThing=2s,*=10ms` (method name, /full/path or *).
    #[arg(long, env = "FAULT_DELAY", default_value = "")]
    pub fault_delay: crate::layers::fault::FaultDelays,

    /// Fault injection, off when empty: injected errors per method with an
    /// optional probability or `k/n` (the first k of every n calls), e.g.
    /// `GetThing=unavailable:0.25` or `PutThing=drop:1/3`; `panic` panics
    /// in the handler, `drop` runs the handler and answers UNAVAILABLE
    /// instead of its response.
    #[arg(long, env = "FAULT_ERROR", default_value = "")]
    pub fault_error: crate::layers::fault::FaultErrors,

    /// Largest message, in bytes, the server accepts or sends; a larger
    /// one is refused with RESOURCE_EXHAUSTED. Each RPC accepts at most
    /// its proto's max_request_bytes, under this cap.
    #[arg(long, env = "MAX_MESSAGE_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_message_bytes: usize,

    /// Web pages allowed to call this server from a browser (gRPC-Web,
    /// with CORS), as comma-separated origins, e.g.
    /// `https://shop.example.com,http://localhost:5173`. Empty (the
    /// default): no CORS headers, so pages on other origins cannot read
    /// any answer. `*` is refused.
    #[arg(long, env = "CORS_ALLOWED_ORIGINS", default_value = "")]
    pub cors_allowed_origins: crate::layers::web::AllowedOrigins,

    /// Stream limits and buffering.
    #[command(flatten)]
    pub streams: crate::streams::StreamArgs,

    /// TLS and mutual TLS.
    #[command(flatten)]
    pub tls: shop_tls::ServerTlsArgs,
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        service: ServiceArgs,
    }

    #[test]
    fn logs_wait_the_telemetry_crate_s_default_flush_delay() {
        let cli = Cli::try_parse_from(["service"]).unwrap();
        assert_eq!(
            cli.service.logs.log_flush_delay,
            shop_telemetry::DEFAULT_LOG_FLUSH_DELAY
        );
    }

    #[test]
    fn the_commit_delay_defaults_to_the_storage_crate_s_and_refuses_more_than_a_batch_s_age() {
        let cli = Cli::try_parse_from(["service"]).unwrap();
        assert_eq!(
            cli.service.database_options().commit_delay,
            shop_storage::DEFAULT_COMMIT_DELAY
        );
        let off = Cli::try_parse_from(["service", "--database-commit-delay", "0s"]).unwrap();
        assert_eq!(off.service.database_options().commit_delay, Duration::ZERO);
        let err = Cli::try_parse_from(["service", "--database-commit-delay", "50ms"]).unwrap_err();
        assert!(err.to_string().contains("at most 20ms"), "{err}");
    }
}
