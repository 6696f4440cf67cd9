//! The machinery every shop service shares, written once so that a new
//! service is a small crate.
//!
//! - [`admin`]: `/metrics`, `/healthz` and `/readyz` on the admin port.
//! - [`auth`]: the tower layer that enforces the access rules declared in the
//!   protos and hands handlers a verified [`shop_auth::Principal`].
//! - [`client`]: the channel to another service: balancing, retries,
//!   circuit breaking, context propagation.
//! - [`config`]: one-line configuration errors with exit code 64.
//! - [`context`]: deadlines, request ids, the caller's token and trace
//!   headers, carried from each request into every call it makes.
//! - [`fault`]: opt-in latency and error injection per method.
//! - [`grpc_timeout`]: the `grpc-timeout` header.
//! - [`health`]: `grpc.health.v1` per the protocol, driven by readiness.
//! - [`keys`]: verifying tokens with keys fetched from user-service.
//! - [`observe`]: one span, one set of grpc-ecosystem metrics and one access
//!   log line per call, server and client side.
//! - [`status`]: building `tonic::Status` the same way everywhere (field
//!   violations, internal errors that are logged but never sent).
//! - [`pagination`]: opaque, tamper-proof page tokens.
//! - [`protect`]: rate limits, load shedding and the panic guard.
//! - [`server`]: health, reflection and graceful shutdown for a tonic server.
//! - [`streams`]: backpressure, limits, cancellation, drain on shutdown and
//!   panic containment for every streaming RPC.
//! - [`tls`]: TLS and mTLS for servers and clients, reloaded on change.
//! - [`telemetry`]: the process-wide `tracing` subscriber.
//! - [`validation`]: collecting every invalid field of a request.
//! - [`binary`]: the `main` every service binary shares.

pub mod admin;
pub mod auth;
pub mod binary;
pub mod client;
pub mod config;
pub mod context;
pub mod fault;
pub mod grpc_timeout;
pub mod health;
pub mod keys;
pub mod observe;
pub mod pagination;
pub mod protect;
pub mod server;
pub mod status;
pub mod streams;
pub mod telemetry;
pub mod tls;
pub mod validation;
