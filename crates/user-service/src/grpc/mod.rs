//! The tonic side of user-service: decode the request into the values the
//! use cases take ([`crate::app`]), call them, encode what they return.
//! One module per proto service, plus the proto <-> domain conversions.

mod auth;
mod convert;
mod users;

pub use auth::AuthGrpc;
pub use users::UserGrpc;
