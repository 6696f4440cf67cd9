//! order-service configuration: every setting is a flag with an environment
//! variable, and every default makes `cargo run -p order-service` work next
//! to a local user-service with no setup (SQLite file under `./data/`).

use std::time::Duration;

use clap::Parser;
use shop_client::{ClientArgs, keys::IssuerArgs, service_token::ServiceAccountArgs};
use shop_server::ServiceArgs;

/// shop order-service: orders and their state machine over gRPC.
#[derive(Debug, Clone, Parser)]
#[command(name = "order-service", version, about, long_about = None)]
pub struct Config {
    /// Addresses, database, data directory, token checks, logs, limits,
    /// TLS: what every service is configured with.
    #[command(flatten)]
    pub service: ServiceArgs,

    /// user-service: users are checked there, and the token verification
    /// keys come from there.
    #[command(flatten)]
    pub issuer: IssuerArgs,

    /// inventory-service, where prices and stock come from: one endpoint
    /// URL, several separated by commas, or `dns:///host:port`.
    #[arg(
        long,
        env = "INVENTORY_SERVICE_URL",
        default_value = "http://127.0.0.1:50053"
    )]
    pub inventory_service_url: String,

    /// Connections, balancing, retries and circuit breaking of the
    /// channels to user-service and inventory-service.
    #[command(flatten)]
    pub client: ClientArgs,

    /// This service's service account (its service tokens open
    /// inventory-service's reservation RPCs).
    #[command(flatten)]
    pub service_account: ServiceAccountArgs,

    /// Most reservation calls to inventory-service in flight at once. A
    /// reservation goes in a ReserveStock call of its own while fewer are;
    /// beyond that it waits, and the reservations waiting go together in
    /// one ReserveStocks call as soon as a call ends, so that under load
    /// orders share calls. A large value sends every reservation in a call
    /// of its own.
    #[arg(long, env = "STOCK_RESERVE_CALLS", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    pub stock_reserve_calls: u32,

    /// Most reservations one shared ReserveStocks call carries.
    #[arg(long, env = "STOCK_RESERVE_BATCH", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=crate::stock::MAX_BATCH as i64))]
    pub stock_reserve_batch: u32,

    /// How often the stock steps orders still owe inventory-service
    /// (confirmations, releases that failed or were interrupted by a
    /// crash) are retried; each step also backs off on its own.
    #[arg(long, env = "STOCK_OUTBOX_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub stock_outbox_interval: Duration,

    /// When the service stops, how long the reservation confirmations
    /// still queued may take to be sent, after the server has stopped; what
    /// is not sent by then stays in the outbox for the next start (or
    /// another replica on the same database).
    #[arg(long, env = "CONFIRM_DRAIN_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub confirm_drain_timeout: Duration,

    /// How long user-service's "this user is active" answer is trusted
    /// before CreateOrder asks again (`0s`: ask for every order). This is
    /// the most a suspension can lag for new orders.
    #[arg(long, env = "USER_STATUS_CACHE_MAX_AGE", default_value = "1s", value_parser = humantime::parse_duration)]
    pub user_status_cache_max_age: Duration,

    /// Users whose active status is kept (0: none, ask for every order).
    #[arg(long, env = "USER_STATUS_CACHE_CAPACITY", default_value_t = 100_000)]
    pub user_status_cache_capacity: usize,

    /// How often a WatchOrder stream re-reads its order even without a
    /// change notice: a safety net for notices lost while the database
    /// connection was down (they are normally resynced on reconnect).
    #[arg(long, env = "WATCH_RESYNC_INTERVAL", default_value = "60s", value_parser = humantime::parse_duration)]
    pub watch_resync_interval: Duration,
}

shop_server::service_config!(Config, crate::SERVICE, service);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_need_no_configuration() {
        let config = shop_server::service::parse_from::<Config, _, _>(["order-service"]).unwrap();
        assert_eq!(config.service.grpc_addr.unwrap().port(), 50052);
        assert_eq!(config.service.admin_addr.unwrap().port(), 9102);
        assert_eq!(config.issuer.user_service_url, "http://127.0.0.1:50051");
        assert_eq!(config.inventory_service_url, "http://127.0.0.1:50053");
        assert!(config.issuer.keys.jwt_public_key_files.is_empty());
        assert_eq!(config.stock_reserve_calls, 4);
        assert_eq!(config.stock_reserve_batch, 32);
    }

    #[test]
    fn reservation_sharing_is_checked_at_start_up() {
        for bad in [
            ["--stock-reserve-calls", "0"],
            ["--stock-reserve-batch", "0"],
            ["--stock-reserve-batch", "33"],
        ] {
            let args = std::iter::once("order-service").chain(bad);
            assert!(Config::try_parse_from(args).is_err(), "{bad:?}");
        }
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
        assert_ne!(config.service.server.fault_error, Default::default());
    }
}
