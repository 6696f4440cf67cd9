//! Test support shared by every shop test suite, and the harness of the
//! end-to-end tests in `e2e/`.
//!
//! - [`postgres`]: a fresh PostgreSQL database per test; tests that need
//!   one have `postgres` in their name and fail, never pass, without one.
//! - [`accounts`]: users signed up and logged in, for any test that needs
//!   callers.
//! - [`app`] and [`apps`]: a service running in the test process on
//!   sockets bound first, and one spawn helper per service.
//! - [`process`] and [`stack`]: the real binaries as separate processes,
//!   handed their sockets, configured by environment only; a [`Stack`] of
//!   every service in [`stack::SERVICES`], wired as docker-compose wires
//!   them. [`binaries`] refuses to run a binary older than its sources.
//! - [`repo_suite!`]: a repository suite instantiated on SQLite and
//!   PostgreSQL.
//! - [`FixedUsers`]: the one stand-in UserService (a fixed answer, or a
//!   scripted status), for tests of clients, not of shop's services.
//! - [`health`], [`calls`], [`proxy`]: waiting for health instead of
//!   sleeping, small call helpers, a TCP proxy that can cut connections.
//!
//! `TEST_LOG=1` turns the services' logs on for in-process tests.

pub mod accounts;
pub mod app;
pub mod apps;
pub mod binaries;
pub mod calls;
pub mod health;
pub mod postgres;
pub mod process;
pub mod proxy;
pub mod repo_suite;
pub mod stack;

pub use app::App;
pub use binaries::binary;
pub use calls::{authed, http_get, metric_sum, retry_delay, unused_address, violated_fields};
pub use health::wait_until_serving;
pub use postgres::{Backend, fresh_postgres_database, postgres_url, rows_read_by_generic_plan};
pub use process::Service;
pub use proxy::TcpProxy;
pub use shop_loadgen::stub::{FixedUsers, fixed_user};
pub use stack::{ADMIN_EMAIL, ADMIN_PASSWORD, Spec, Stack};

/// The password tests give the users they sign up.
pub const PASSWORD: &str = "correct horse battery";

/// Installs the process-wide log subscriber when `TEST_LOG` is set (once;
/// later calls do nothing).
pub fn init_test_logging() {
    if std::env::var_os("TEST_LOG").is_some() {
        shop_telemetry::init(
            "tests",
            Default::default(),
            // Written at once: a test process exits without shutdown().
            std::time::Duration::ZERO,
            "debug,sqlx=warn,h2=info,hyper=info",
        );
    }
}
