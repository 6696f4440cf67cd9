//! inventory-service tests, as one test binary: the service runs
//! in-process on OS-assigned ports next to a real user-service (which
//! issues the customers', admins' and order-service's tokens), and is
//! called through the generated client.
//!
//! PostgreSQL tests need `SHOP_TEST_POSTGRES_URL` (scripts/test.sh starts a
//! throwaway cluster and sets it).

mod cache;
mod helpers;
mod products;
mod repo_suite;
mod reservations;
