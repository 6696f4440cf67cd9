//! The tonic side of order-service: decode the request, authorize, call the
//! domain, the store and user-service, map errors.

mod convert;
mod orders;

pub use orders::OrderGrpc;
