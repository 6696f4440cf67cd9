//! The rules of orders, free of gRPC and SQL: the state machine, money and
//! currencies, what a valid order is, and the idempotency fingerprint.

mod currency;
mod order;
mod status;

pub use currency::CurrencyCode;
pub use order::{
    MAX_ITEMS, MAX_PRODUCT_ID_CHARS, MAX_QUANTITY, MAX_REQUEST_ID_CHARS, NewOrder, Order,
    OrderFilter, OrderItem, PlacedOrder, RequestId, fingerprint, total_cents, validate_items,
};
pub use status::{OrderStatus, TransitionError};

/// One invalid field of a request: its name as in the proto (with the item
/// index, e.g. `items[2].quantity`), and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// The proto field name.
    pub field: String,
    /// What is wrong with it.
    pub description: String,
}

/// Collects every invalid field of a request so they are reported at once.
#[derive(Debug, Default)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    /// A new, empty collection.
    pub fn new() -> Violations {
        Violations::default()
    }

    /// Records a violation of `field`.
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation {
            field: field.into(),
            description: description.into(),
        });
    }

    /// Keeps the parsed value, or records why `field` did not parse.
    pub fn check<T>(&mut self, field: &str, parsed: Result<T, String>) -> Option<T> {
        parsed.map_err(|why| self.add(field, why)).ok()
    }

    /// True when nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Ok when nothing was recorded.
    pub fn into_result(self) -> Result<(), Vec<FieldViolation>> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self.0)
        }
    }
}
