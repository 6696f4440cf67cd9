//! The light part every shop program shares, servers and clients alike:
//! no server stack, no telemetry exporter, no TLS. A command-line client
//! (shopctl), a load generator or another team's tool links this and the
//! generated code, nothing more.
//!
//! - [`context`]: the request context (deadline, caller's token, request
//!   id, trace headers) that a request carries into every call made while
//!   serving it, and [`context::Propagate`], the client layer that puts it
//!   on the wire.
//! - [`error`]: [`error::AppError`], why a use case failed, in the terms
//!   every service shares, and its one mapping to gRPC statuses.
//! - [`grpc_timeout`]: the `grpc-timeout` header.
//! - [`frames`]: the length prefixes of a gRPC byte stream, read as it
//!   arrives.
//! - [`status`]: building and reading `tonic::Status` the same way
//!   everywhere (field violations, internal errors that are logged but
//!   never sent, the `grpc-status` header).
//! - [`validation`]: collecting every invalid field of a request.
//! - [`pagination`]: page sizes and opaque, tamper-proof page tokens.
//! - [`config`]: one-line configuration errors with exit code 64.
//! - [`signals`]: SIGTERM/SIGINT as the future a program stops on.

pub mod config;
pub mod context;
pub mod currency;
pub mod error;
pub mod frames;
pub mod grpc_timeout;
pub mod pagination;
pub mod signals;
pub mod status;
pub mod validation;
