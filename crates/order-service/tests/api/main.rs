//! order-service tests, as one test binary: service tests run the real
//! user-service and order-service in-process on OS-assigned ports, talking
//! over real gRPC; the repository suite runs against SQLite and PostgreSQL.
//!
//! PostgreSQL tests need `SHOP_TEST_POSTGRES_URL` (scripts/test.sh sets
//! it); without it they are skipped with a message, unless
//! `REQUIRE_POSTGRES=1`. `TEST_LOG=1` shows the services' logs.

mod deadlines;
mod helpers;
mod keys;
mod orders;
mod repo_suite;
mod streams;
