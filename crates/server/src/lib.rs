//! The server kit: everything a shop gRPC service has besides its own
//! handlers, so that a new service is its domain plus a few lines of
//! wiring.
//!
//! - [`service`]: what the kit knows of a service ([`ServiceInfo`],
//!   [`ServiceConfig`]) and the sockets it serves on ([`Listeners`]).
//! - [`args`]: the settings every service shares ([`ServiceArgs`]),
//!   flattened into each service's configuration.
//! - [`server`]: [`Server`], one registration call per generated gRPC
//!   server, then a graceful, bounded `serve`.
//! - [`layers`]: the tower layers of every call (observe, context, auth,
//!   rate limit, concurrency limit, panic guard, fault injection, the
//!   write lane), stacked in one function that says why in that order.
//! - [`health`]: `grpc.health.v1` per the protocol, driven by readiness.
//! - [`peer`]: the caller's address as per-address limits key it (IPv6
//!   by /64).
//! - [`admin`]: `/metrics`, `/healthz` and `/readyz` on the admin port.
//! - [`streams`]: backpressure, limits, cancellation, drain on shutdown and
//!   panic containment for every streaming RPC.
//! - [`serve`]: health and reflection, and serving with a grace period.
//! - [`binary`]: the `main` every service binary shares.
//!
//! No service is named here: each registers its generated servers, and
//! per-method rules (who may call, what may be retried) come from the
//! protos' options through `shop-proto`.

pub mod admin;
pub mod args;
pub mod background;
pub mod binary;
pub mod coalesce;
pub mod connections;
pub mod health;
pub mod layers;
pub mod peer;
pub mod serve;
pub mod server;
pub mod service;
pub mod streams;

pub use args::{ServerArgs, ServiceArgs, TokenArgs};
pub use background::BackgroundTask;
pub use layers::auth::{SERVICE_TOKEN_HEADER, principal, principal_of, service_caller};
pub use server::Server;
pub use service::{Listeners, ServiceConfig, ServiceInfo};
pub use shop_core::config::ConfigError;
