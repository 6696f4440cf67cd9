//! The tonic side of order-service: decode the request, authorize, call the
//! use cases (`crate::app`), encode what they return.

mod convert;
mod orders;

pub use orders::OrderGrpc;
