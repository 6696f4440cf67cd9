//! user-service tests, as one test binary (one link instead of many):
//! service tests start the real service in-process on an OS-assigned port
//! and call it through the generated clients; the repository suite runs the
//! same checks against SQLite and PostgreSQL.
//!
//! PostgreSQL tests need `SHOP_TEST_POSTGRES_URL` (scripts/test.sh starts a
//! throwaway cluster and sets it); without it they are skipped with a
//! message, unless `REQUIRE_POSTGRES=1`, which makes them fail.
//! `TEST_LOG=1` shows the service's logs.

mod auth;
mod binary;
mod bootstrap;
mod cache;
mod helpers;
mod infra;
mod protection;
mod repo_suite;
mod service_tokens;
mod streams;
mod users;
