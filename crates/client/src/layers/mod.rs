//! The tower layers of every client channel, each in its own module; the
//! crate root stacks them (see `connect_with_resolver` for the order and
//! why). The context layer is `shop_core::context::Propagate`, shared with
//! clients that need nothing else.

pub mod breaker;
pub mod observe;
pub mod retry;
