//! inventory-service configuration: every setting is a flag with an
//! environment variable, and every default makes `cargo run -p
//! inventory-service` work next to a local user-service with no setup
//! (SQLite file under `./data/`).

use std::time::Duration;

use clap::Parser;
use shop_client::{ClientArgs, keys::IssuerArgs};
use shop_server::ServiceArgs;

/// shop inventory-service: products, prices, stock and reservations over
/// gRPC.
#[derive(Debug, Clone, Parser)]
#[command(name = "inventory-service", version, about, long_about = None)]
pub struct Config {
    /// Addresses, database, data directory, token checks, logs, limits,
    /// TLS: what every service is configured with.
    #[command(flatten)]
    pub service: ServiceArgs,

    /// user-service, where the token verification keys come from.
    #[command(flatten)]
    pub issuer: IssuerArgs,

    /// Connections, balancing, retries and circuit breaking of the channel
    /// to user-service.
    #[command(flatten)]
    pub client: ClientArgs,

    /// How long a reservation holds its units unless confirmed or
    /// released: the bound on stock held by an order that was never made
    /// (its maker crashed).
    #[arg(long, env = "RESERVATION_TTL", default_value = "5m", value_parser = humantime::parse_duration)]
    pub reservation_ttl: Duration,

    /// How often expired reservations are swept and their units given
    /// back: units come back at most this long after RESERVATION_TTL.
    #[arg(long, env = "RESERVATION_SWEEP_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub reservation_sweep_interval: Duration,

    /// Adds a small development catalogue at start (sku-1, sku-2, sku-3 in
    /// EUR with SEED_CATALOGUE_UNITS each) when those products do not exist
    /// yet.
    /// devstack turns it on; leave it off anywhere else.
    #[arg(long, env = "SEED_CATALOGUE", default_value_t = false, action = clap::ArgAction::Set)]
    pub seed_catalogue: bool,

    /// Units of each product SEED_CATALOGUE starts with.
    #[arg(long, env = "SEED_CATALOGUE_UNITS", default_value_t = 100,
          value_parser = clap::value_parser!(i64).range(1..=1_000_000))]
    pub seed_catalogue_units: i64,

    /// Products kept in the in-process read-through cache of products by
    /// sku, in front of GetProduct and stock watches (0 turns it off). A
    /// write through this replica invalidates the products it touched
    /// before it answers; other replicas hear of it through PostgreSQL
    /// notifications.
    #[arg(long, env = "PRODUCT_CACHE_CAPACITY", default_value_t = 100_000)]
    pub product_cache_capacity: usize,

    /// The longest a cached product is served after it was read: the bound
    /// on how stale another replica's change (a price, the stock) can be
    /// seen here if its notification is lost (`0s` turns the cache off).
    #[arg(long, env = "PRODUCT_CACHE_MAX_AGE", default_value = "5s", value_parser = humantime::parse_duration)]
    pub product_cache_max_age: Duration,
}

impl Config {
    /// How products by sku are cached.
    pub fn product_cache(&self) -> crate::repo::ProductCache {
        crate::repo::ProductCache {
            capacity: self.product_cache_capacity,
            max_age: self.product_cache_max_age,
        }
    }
}

shop_server::service_config!(Config, crate::SERVICE, service);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_need_no_configuration() {
        let config =
            shop_server::service::parse_from::<Config, _, _>(["inventory-service"]).unwrap();
        assert_eq!(config.service.grpc_addr.unwrap().port(), 50053);
        assert_eq!(config.service.admin_addr.unwrap().port(), 9103);
        assert_eq!(config.reservation_ttl, Duration::from_secs(300));
        assert!(config.product_cache().is_on());
    }
}
