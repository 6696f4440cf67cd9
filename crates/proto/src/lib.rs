//! Generated gRPC code for shop's protos, the encoded descriptor set that
//! reflection serves, and the per-method policy table built from the protos'
//! method options.
//!
//! The crate owns the protos' generated code and nothing else (the
//! console-api pattern): services, middleware and clients all depend on it,
//! so a change to `proto/` is seen by every crate at once.
//!
//! Generation runs in `build.rs` with protox; no system `protoc` is used.

#![allow(missing_docs, unreachable_pub, clippy::all)]

pub mod codec;

/// `shop.options.v1`: the custom method options (who may call an RPC).
pub mod options {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("shop.options.v1");
    }
}

/// `shop.user.v1`: UserService.
pub mod user {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("shop.user.v1");
    }
}

/// `shop.auth.v1`: AuthService (the token issuer's API).
pub mod auth {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("shop.auth.v1");
    }
}

/// `shop.order.v1`: OrderService.
pub mod order {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("shop.order.v1");
    }
}

pub mod policy;

/// A generated gRPC server of the shop protos, as the server kit registers
/// it: its name (from `NamedService`, for health and reflection) and its
/// message size limits. Implemented by build.rs for every service, so no
/// shared crate needs to name one.
pub trait GeneratedServer: tonic::server::NamedService {
    /// The server with `max` bytes as its receive and send limit.
    fn with_message_limit(self, max: usize) -> Self;
}

include!(concat!(env!("OUT_DIR"), "/generated_servers.rs"));

/// The encoded `FileDescriptorSet` of every shop proto and its imports, with
/// custom options kept; register it with gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/shop_descriptor.bin"));
