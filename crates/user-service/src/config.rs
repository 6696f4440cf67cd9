//! user-service configuration: every setting is a flag with an environment
//! variable, and every default makes `cargo run -p user-service` work with
//! no setup (SQLite file and generated signing key under `./data/`).

use std::{path::PathBuf, time::Duration};

use clap::Parser;
use shop_server::ServiceArgs;

/// shop user-service: accounts, sign-up, login and tokens over gRPC.
#[derive(Debug, Clone, Parser)]
#[command(name = "user-service", version, about, long_about = None)]
pub struct Config {
    /// Addresses, database, data directory, token checks, logs, limits,
    /// TLS: what every service is configured with.
    #[command(flatten)]
    pub service: ServiceArgs,

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

    /// Lifetime of access tokens (e.g. `15m`, `1h`).
    #[arg(long, env = "ACCESS_TOKEN_TTL", default_value = "15m", value_parser = humantime::parse_duration)]
    pub access_token_ttl: Duration,

    /// Lifetime of refresh tokens; each rotation starts a new lifetime.
    #[arg(long, env = "REFRESH_TOKEN_TTL", default_value = "7d", value_parser = humantime::parse_duration)]
    pub refresh_token_ttl: Duration,

    /// bcrypt cost (4 to 31); each step doubles the time per hash.
    #[arg(long, env = "BCRYPT_COST", default_value_t = shop_auth::password::DEFAULT_BCRYPT_COST,
          value_parser = clap::value_parser!(u32).range(4..=31))]
    pub bcrypt_cost: u32,

    /// Email of an admin account to create at start-up if it does not exist.
    /// It never promotes: an existing non-admin account with this email
    /// stays as it is, and the service refuses to start if there is then
    /// no active admin at all.
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

    /// Login attempts allowed per account (email and username count as
    /// one; an unknown identifier is its own) from one address per minute;
    /// more are RESOURCE_EXHAUSTED with RetryInfo. A stranger's guesses
    /// slow only the stranger.
    #[arg(long, env = "LOGIN_ATTEMPTS_PER_MINUTE", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub login_attempts_per_minute: u32,

    /// Login attempts allowed per account per minute from every address
    /// together: the ceiling a guesser with many addresses meets.
    #[arg(long, env = "LOGIN_ATTEMPTS_PER_ACCOUNT_PER_MINUTE", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub login_attempts_per_account_per_minute: u32,

    /// Directory of service accounts: each `<name>.secret` file (64 hex
    /// digits, as `SERVICE_SECRET_FILE` of that service) lets the service
    /// `<name>` obtain service tokens (AuthService.IssueServiceToken) for
    /// services-only RPCs. Read at each request, so accounts are added or
    /// rotated without a restart. Unset: no service accounts.
    #[arg(long, env = "SERVICE_ACCOUNTS_DIR")]
    pub service_accounts_dir: Option<PathBuf>,

    /// Users kept in the in-process read-through cache of users by id (0
    /// turns it off). A write through this replica invalidates its entry
    /// before it answers; other replicas hear of it through PostgreSQL
    /// notifications.
    #[arg(long, env = "USER_CACHE_CAPACITY", default_value_t = 100_000)]
    pub user_cache_capacity: usize,

    /// The longest a cached user is served after it was read: the bound on
    /// how stale another replica's change (a suspension) can be seen here
    /// if its notification is lost (`0s` turns the cache off).
    #[arg(long, env = "USER_CACHE_MAX_AGE", default_value = "5s", value_parser = humantime::parse_duration)]
    pub user_cache_max_age: Duration,

    /// Login, CreateUser, RefreshToken and IssueServiceToken calls one
    /// address (an IPv6 /64) may make per minute, each method counted on
    /// its own; more are RESOURCE_EXHAUSTED with RetryInfo.
    #[arg(long, env = "CREDENTIAL_CALLS_PER_ADDRESS_PER_MINUTE", default_value_t = 60,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub credential_calls_per_address_per_minute: u32,

    /// Password hashes (bcrypt) that may run at once; a sign-up or login
    /// that finds them all busy is RESOURCE_EXHAUSTED with RetryInfo at
    /// once. Default: the number of CPUs.
    #[arg(long, env = "PASSWORD_HASH_CONCURRENCY", default_value_t = cpus(),
          value_parser = clap::value_parser!(u32).range(1..))]
    pub password_hash_concurrency: u32,

    /// Activity events kept for a UserActivity subscriber that reads
    /// slowly; one that falls further behind is ended with
    /// RESOURCE_EXHAUSTED.
    #[arg(long, env = "ACTIVITY_BUFFER", default_value_t = 1024)]
    pub activity_buffer: usize,
}

/// The CPUs this process may use (at least 1).
fn cpus() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX))
}

impl Config {
    /// How users by id are cached.
    pub fn user_cache(&self) -> crate::repo::UserCache {
        crate::repo::UserCache {
            capacity: self.user_cache_capacity,
            max_age: self.user_cache_max_age,
        }
    }

    /// The signing key file: the configured one, or the generated one in
    /// the data directory.
    pub fn signing_key_path(&self) -> (PathBuf, bool) {
        match &self.jwt_private_key_file {
            Some(path) => (path.clone(), false),
            None => (self.service.data_dir.join("user-service-jwt.pem"), true),
        }
    }
}

shop_server::service_config!(Config, crate::SERVICE, service);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_setting_handed_over_by_devstack_may_start_with_a_dash() {
        // devstack's generated admin password is URL-safe base64: one in
        // 64 starts with `-`, which must not read as a flag.
        let overrides = [
            (
                "BOOTSTRAP_ADMIN_PASSWORD".to_owned(),
                "-Gq3x_secret".to_owned(),
            ),
            ("NOT_A_SETTING_HERE".to_owned(), "ignored".to_owned()),
        ];
        let config = shop_server::service::parse_with_overrides::<Config>(&overrides).unwrap();
        assert_eq!(
            config.bootstrap_admin_password.as_deref(),
            Some("-Gq3x_secret")
        );
    }

    #[test]
    fn defaults_need_no_configuration() {
        let config = shop_server::service::parse_from::<Config, _, _>(["user-service"]).unwrap();
        assert_eq!(config.access_token_ttl, Duration::from_secs(900));
        assert_eq!(config.bcrypt_cost, 12);
        assert!(
            !config.service.server.grpc_reflection,
            "reflection is off by default"
        );
        assert_eq!(
            config.service.server.request_timeout_cap,
            Duration::from_secs(30)
        );
        assert_eq!(config.service.grpc_addr.unwrap().port(), 50051);
        assert_eq!(config.service.admin_addr.unwrap().port(), 9101);
        assert_eq!(
            config.service.database_url.as_deref(),
            Some("sqlite://data/users.db")
        );
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
