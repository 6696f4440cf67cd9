//! The stock steps an order owes inventory-service, kept in the outbox
//! until done: confirm the reservation of a stored order, release the
//! reservation of a cancelled (or never stored) one.

use uuid::Uuid;

/// One step of the stock saga.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StockAction {
    /// ConfirmReservation(s): the order is stored.
    Confirm,
    /// ReleaseReservation: the order was cancelled or never stored.
    Release,
}

impl StockAction {
    /// The storage spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            StockAction::Confirm => "confirm",
            StockAction::Release => "release",
        }
    }

    /// Parses the storage spelling.
    pub fn parse(s: &str) -> Option<StockAction> {
        match s {
            "confirm" => Some(StockAction::Confirm),
            "release" => Some(StockAction::Release),
            _ => None,
        }
    }
}

/// A step still owed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StockStep {
    /// The order (and reservation).
    pub order_id: Uuid,
    /// What is owed.
    pub action: StockAction,
    /// Failed attempts so far.
    pub attempts: i32,
}
