//! The use cases of order-service: they take domain values, apply the
//! rules, talk to storage and to user-service, and return domain errors
//! ([`AppError`]); no gRPC type crosses into here. The gRPC handlers
//! decode requests into the values these take and encode what they
//! return.

mod confirmer;
mod orders;
mod stock;

pub use confirmer::{ConfirmQueue, QueuedConfirmations, confirm_queue, confirm_queued};
pub use orders::{ActiveUsers, OrderWatch, Orders, PlaceOrder, Repeat, StatusChange};
pub use shop_core::error::AppError;
pub use stock::{Reserved, Settled, Stock, settle_every};
