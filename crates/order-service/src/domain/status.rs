//! The order state machine:
//!
//! ```text
//! PENDING --> CONFIRMED --> SHIPPED --> DELIVERED
//!    |            |
//!    +------------+--> CANCELLED
//! ```
//!
//! DELIVERED and CANCELLED are terminal. Every other move is refused.

use thiserror::Error;

/// A state of an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OrderStatus {
    /// Placed, not yet confirmed.
    Pending,
    /// Accepted for fulfilment.
    Confirmed,
    /// Handed to the carrier.
    Shipped,
    /// Received; terminal.
    Delivered,
    /// Cancelled before shipping; terminal.
    Cancelled,
}

/// A move the state machine does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("an order cannot move from {from} to {to}")]
pub struct TransitionError {
    /// Where the order is.
    pub from: OrderStatus,
    /// Where it was asked to go.
    pub to: OrderStatus,
}

impl OrderStatus {
    /// Every state, for exhaustive tests and listings.
    pub const ALL: [OrderStatus; 5] = [
        OrderStatus::Pending,
        OrderStatus::Confirmed,
        OrderStatus::Shipped,
        OrderStatus::Delivered,
        OrderStatus::Cancelled,
    ];

    /// True for DELIVERED and CANCELLED.
    pub fn is_terminal(self) -> bool {
        matches!(self, OrderStatus::Delivered | OrderStatus::Cancelled)
    }

    /// The state after moving to `to`, if the machine allows it.
    pub fn transition(self, to: OrderStatus) -> Result<OrderStatus, TransitionError> {
        use OrderStatus::*;
        match (self, to) {
            (Pending, Confirmed)
            | (Confirmed, Shipped)
            | (Shipped, Delivered)
            | (Pending, Cancelled)
            | (Confirmed, Cancelled) => Ok(to),
            _ => Err(TransitionError { from: self, to }),
        }
    }

    /// The storage spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "pending",
            OrderStatus::Confirmed => "confirmed",
            OrderStatus::Shipped => "shipped",
            OrderStatus::Delivered => "delivered",
            OrderStatus::Cancelled => "cancelled",
        }
    }

    /// Parses the storage spelling.
    pub fn parse(s: &str) -> Option<OrderStatus> {
        OrderStatus::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

impl std::fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.as_str().to_ascii_uppercase())
    }
}

#[cfg(test)]
mod tests {
    use super::OrderStatus::{self, *};

    /// The allowed moves, written out once; everything else is refused.
    const ALLOWED: [(OrderStatus, OrderStatus); 5] = [
        (Pending, Confirmed),
        (Confirmed, Shipped),
        (Shipped, Delivered),
        (Pending, Cancelled),
        (Confirmed, Cancelled),
    ];

    #[test]
    fn every_allowed_move_succeeds() {
        for (from, to) in ALLOWED {
            assert_eq!(from.transition(to), Ok(to), "{from} -> {to}");
        }
    }

    #[test]
    fn every_other_move_is_refused() {
        let mut refused = 0;
        for from in OrderStatus::ALL {
            for to in OrderStatus::ALL {
                if ALLOWED.contains(&(from, to)) {
                    continue;
                }
                let err = from.transition(to).unwrap_err();
                assert_eq!((err.from, err.to), (from, to));
                refused += 1;
            }
        }
        assert_eq!(refused, 25 - ALLOWED.len());
    }

    #[test]
    fn terminal_states_have_no_way_out() {
        for from in [Delivered, Cancelled] {
            assert!(from.is_terminal());
            assert!(
                OrderStatus::ALL
                    .iter()
                    .all(|to| from.transition(*to).is_err())
            );
        }
        assert!(!Pending.is_terminal() && !Confirmed.is_terminal() && !Shipped.is_terminal());
    }

    #[test]
    fn storage_spelling_round_trips() {
        for s in OrderStatus::ALL {
            assert_eq!(OrderStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(OrderStatus::parse("lost"), None);
        assert_eq!(
            Shipped.transition(Cancelled).unwrap_err().to_string(),
            "an order cannot move from SHIPPED to CANCELLED"
        );
    }
}
