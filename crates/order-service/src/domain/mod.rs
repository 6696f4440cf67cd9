//! The rules of orders, free of gRPC and SQL: the state machine, money and
//! currencies, what a valid order is, and the idempotency fingerprint.

mod order;
mod status;
mod stock;

pub use order::{
    MAX_ITEMS, MAX_PRODUCT_ID_CHARS, MAX_QUANTITY, MAX_REQUEST_ID_CHARS, NewOrder, Order,
    OrderEvent, OrderFilter, OrderItem, PlacedOrder, RequestId, fingerprint, total_cents,
    validate_items,
};
pub use shop_core::currency::CurrencyCode;
pub use status::{OrderStatus, TransitionError};
pub use stock::{StockAction, StockStep};

pub use shop_core::validation::{FieldViolation, Violations};
