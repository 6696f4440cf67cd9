//! The rules of the catalogue and the stock, free of gRPC and SQL: what a
//! sku, a product and a stock change are, and the life of a reservation.

use chrono::{DateTime, Utc};
use shop_core::{currency::CurrencyCode, validation::echo};
use uuid::Uuid;

pub use shop_core::validation::Violations;

/// Longest sku.
pub const MAX_SKU_CHARS: usize = 64;
/// Longest product name, in characters.
pub const MAX_NAME_CHARS: usize = 200;
/// Highest unit price, in minor units (a million of the currency).
pub const MAX_UNIT_PRICE_CENTS: i64 = 100_000_000;
/// Largest stock change in one AdjustStock.
pub const MAX_STOCK_DELTA: i64 = 1_000_000;
/// Longest stock change reason, in characters.
pub const MAX_REASON_CHARS: usize = 200;
/// Longest AdjustStock request id.
pub const MAX_REQUEST_ID_CHARS: usize = 64;
/// Most items in one reservation (as in one order).
pub const MAX_ITEMS: usize = 100;
/// Most reservations one ReserveStocks holds.
pub const MAX_RESERVATIONS: usize = 32;
/// Most reservations one ConfirmReservations confirms.
pub const MAX_CONFIRMATIONS: usize = 256;
/// Most units of one item in one reservation (as in one order).
pub const MAX_QUANTITY: i64 = 1000;
/// Most skus one WatchStock follows.
pub const MAX_WATCHED_SKUS: usize = 100;

/// A product id: 1..=64 of `[A-Za-z0-9._-]`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Sku(String);

impl Sku {
    /// Accepts a well-formed sku.
    pub fn parse(raw: &str) -> Result<Sku, String> {
        if raw.is_empty() {
            return Err("is required".into());
        }
        if raw.len() > MAX_SKU_CHARS {
            return Err(format!("must be at most {MAX_SKU_CHARS} characters"));
        }
        if !raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(format!(
                "{} may hold only letters, digits, '.', '_' and '-'",
                echo(raw)
            ));
        }
        Ok(Sku(raw.to_owned()))
    }

    /// The sku.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A product as stored: catalogue fields and stock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Product {
    /// Its id.
    pub sku: String,
    /// What customers see.
    pub name: String,
    /// Price of one unit, minor units.
    pub unit_price_cents: i64,
    /// ISO 4217 code.
    pub currency_code: String,
    /// Whether it can be reserved.
    pub active: bool,
    /// Units in the warehouse, reserved ones included.
    pub on_hand: i64,
    /// Units held by pending reservations.
    pub reserved: i64,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

impl Product {
    /// What can still be reserved.
    pub fn available(&self) -> i64 {
        self.on_hand - self.reserved
    }
}

/// A PutProduct: the catalogue fields of a product.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductDraft {
    /// Its id.
    pub sku: Sku,
    /// 1..=200 characters.
    pub name: String,
    /// 1..=MAX_UNIT_PRICE_CENTS.
    pub unit_price_cents: i64,
    /// A known currency.
    pub currency: CurrencyCode,
    /// Whether it can be reserved.
    pub active: bool,
}

/// An AdjustStock: a change of the stock on hand, idempotent by request id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StockChange {
    /// The product.
    pub sku: Sku,
    /// Units added (positive) or removed (negative), never 0.
    pub delta: i64,
    /// Why.
    pub reason: String,
    /// The idempotency key.
    pub request_id: String,
}

/// One item to reserve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReserveItem {
    /// The product.
    pub sku: Sku,
    /// 1..=MAX_QUANTITY.
    pub quantity: i64,
}

/// The fingerprint of a reservation's items (sorted by sku), so that a
/// repeated ReserveStock can tell "the same again" from "other items".
pub fn items_fingerprint(items: &[ReserveItem]) -> String {
    let mut parts: Vec<String> = items
        .iter()
        .map(|i| format!("{}:{}", i.sku.as_str(), i.quantity))
        .collect();
    parts.sort();
    parts.join(",")
}

/// Where a reservation is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReservationStatus {
    /// Holding units.
    Pending,
    /// Units taken off the stock on hand.
    Confirmed,
    /// Given back.
    Released,
    /// Not confirmed in time; units given back.
    Expired,
}

impl ReservationStatus {
    /// The storage spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ReservationStatus::Pending => "pending",
            ReservationStatus::Confirmed => "confirmed",
            ReservationStatus::Released => "released",
            ReservationStatus::Expired => "expired",
        }
    }

    /// Parses the storage spelling.
    pub fn parse(s: &str) -> Option<ReservationStatus> {
        Some(match s {
            "pending" => ReservationStatus::Pending,
            "confirmed" => ReservationStatus::Confirmed,
            "released" => ReservationStatus::Released,
            "expired" => ReservationStatus::Expired,
            _ => return None,
        })
    }
}

/// One reserved item, at the price it was reserved at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservationLine {
    /// The product.
    pub sku: String,
    /// Units.
    pub quantity: i64,
    /// The catalogue price when reserved.
    pub unit_price_cents: i64,
}

/// The stock held for one order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// The order.
    pub order_id: Uuid,
    /// What is held, by sku.
    pub lines: Vec<ReservationLine>,
    /// The currency of the prices ("" for a release recorded before any
    /// reservation).
    pub currency_code: String,
    /// Where it is in its life.
    pub status: ReservationStatus,
    /// When a pending reservation expires.
    pub expires_at: DateTime<Utc>,
    /// The fingerprint of the reserved items.
    pub items_hash: String,
}

/// Why an item cannot be reserved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shortage {
    /// The item's sku.
    pub sku: String,
    /// What is wrong with it.
    pub description: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skus_are_short_and_plain() {
        assert!(Sku::parse("sku-1").is_ok());
        assert!(Sku::parse("A.b_c-9").is_ok());
        for bad in ["", "a b", "sku/1", "é", &"a".repeat(65)] {
            assert!(Sku::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_fingerprint_ignores_item_order() {
        let item = |sku: &str, quantity| ReserveItem {
            sku: Sku::parse(sku).unwrap(),
            quantity,
        };
        assert_eq!(
            items_fingerprint(&[item("b", 1), item("a", 2)]),
            items_fingerprint(&[item("a", 2), item("b", 1)])
        );
        assert_ne!(
            items_fingerprint(&[item("a", 1)]),
            items_fingerprint(&[item("a", 2)])
        );
    }

    #[test]
    fn statuses_round_trip() {
        for s in [
            ReservationStatus::Pending,
            ReservationStatus::Confirmed,
            ReservationStatus::Released,
            ReservationStatus::Expired,
        ] {
            assert_eq!(ReservationStatus::parse(s.as_str()), Some(s));
        }
    }
}
