//! What an order is, how a valid one is built from a request, its total,
//! and the fingerprint that makes `request_id` idempotent.

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{CurrencyCode, OrderStatus, Violations};

/// Most items in one order.
pub const MAX_ITEMS: usize = 100;
/// Largest quantity of one item.
pub const MAX_QUANTITY: i32 = 1000;
/// Longest product id, in characters.
pub const MAX_PRODUCT_ID_CHARS: usize = 64;
/// Longest client request id, in characters.
pub const MAX_REQUEST_ID_CHARS: usize = 128;

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OrderItem {
    /// Product identifier.
    pub product_id: String,
    /// 1..=1000.
    pub quantity: i32,
    /// Positive, in minor units.
    pub unit_price_cents: i64,
}

/// An order as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    /// UUID v7.
    pub id: Uuid,
    /// Owner.
    pub user_id: Uuid,
    /// Lines, in request order.
    pub items: Vec<OrderItem>,
    /// Sum of quantity * unit price.
    pub total_cents: i64,
    /// Currency of every amount.
    pub currency_code: String,
    /// State.
    pub status: OrderStatus,
    /// Placement time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// 1 at placement, one more at every status change.
    pub version: i64,
}

impl Order {
    /// The order after `event`.
    pub fn apply(&mut self, event: &OrderEvent) {
        self.status = event.status;
        self.updated_at = event.updated_at;
        self.version = event.version;
    }
}

/// One status change of an order, as recorded with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderEvent {
    /// The order's version after the change.
    pub version: i64,
    /// The new state.
    pub status: OrderStatus,
    /// When it changed.
    pub updated_at: DateTime<Utc>,
}

/// A client's idempotency key: 1 to 128 printable ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(String);

impl RequestId {
    /// Checks the rules.
    pub fn parse(raw: &str) -> Result<RequestId, String> {
        if raw.len() > MAX_REQUEST_ID_CHARS {
            return Err(format!("must be at most {MAX_REQUEST_ID_CHARS} characters"));
        }
        if raw.is_empty() || !raw.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("must be printable ASCII without spaces".into());
        }
        Ok(RequestId(raw.to_owned()))
    }

    /// A server-generated key, for requests that sent none (no
    /// deduplication then: each such request is a new order).
    pub fn generate() -> RequestId {
        RequestId(format!("srv-{}", Uuid::new_v4()))
    }

    /// The key.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A validated order, ready to store.
#[derive(Debug, Clone)]
pub struct NewOrder {
    /// Chosen by the service.
    pub id: Uuid,
    /// Owner.
    pub user_id: Uuid,
    /// Idempotency key, unique per user.
    pub request_id: RequestId,
    /// Fingerprint of the payload, to tell a retry from a different
    /// request that reuses the key.
    pub request_hash: String,
    /// Lines.
    pub items: Vec<OrderItem>,
    /// Currency.
    pub currency_code: CurrencyCode,
    /// Computed total.
    pub total_cents: i64,
    /// Placement time.
    pub now: DateTime<Utc>,
}

/// What storing a [`NewOrder`] came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlacedOrder {
    /// A new order.
    Created(Order),
    /// The user already placed an order with this request id; the stored
    /// fingerprint tells whether it was the same request.
    Existing {
        /// The first order.
        order: Order,
        /// Its payload fingerprint.
        request_hash: String,
    },
}

/// Which of a user's orders a list covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrderFilter {
    /// Owner.
    pub user_id: Uuid,
    /// Only this state; `None` for any.
    pub status: Option<OrderStatus>,
}

/// Checks the items of a request, recording problems by index. Too many
/// items is the one violation reported for the list: its items are not
/// looked at (nor copied), and neither are items once `v` is full.
pub fn validate_items(
    items: impl ExactSizeIterator<Item = (String, i32, i64)>,
    v: &mut Violations,
) -> Vec<OrderItem> {
    if items.len() == 0 {
        v.add("items", "must hold at least one item");
    }
    if items.len() > MAX_ITEMS {
        v.add(
            "items",
            format!("must hold at most {MAX_ITEMS} items, not {}", items.len()),
        );
        return Vec::new();
    }
    let mut out = Vec::with_capacity(items.len());
    for (i, (product_id, quantity, unit_price_cents)) in items.enumerate() {
        if v.is_full() {
            break;
        }
        let chars = product_id.chars().take(MAX_PRODUCT_ID_CHARS + 1).count();
        if chars == 0 || chars > MAX_PRODUCT_ID_CHARS {
            v.add(
                format!("items[{i}].product_id"),
                format!("must be 1 to {MAX_PRODUCT_ID_CHARS} characters"),
            );
        } else if !product_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            // Product ids are inventory-service's skus.
            v.add(
                format!("items[{i}].product_id"),
                "may hold only letters, digits, '.', '_' and '-'",
            );
        }
        if !(1..=MAX_QUANTITY).contains(&quantity) {
            v.add(
                format!("items[{i}].quantity"),
                format!("must be between 1 and {MAX_QUANTITY}"),
            );
        }
        if unit_price_cents < 0 {
            v.add(
                format!("items[{i}].unit_price_cents"),
                "must be positive, or 0 to take the catalogue price",
            );
        }
        out.push(OrderItem {
            product_id,
            quantity,
            unit_price_cents,
        });
    }
    out
}

/// Sum of quantity * unit price, or `None` on overflow.
pub fn total_cents(items: &[OrderItem]) -> Option<i64> {
    items.iter().try_fold(0i64, |total, item| {
        i64::from(item.quantity)
            .checked_mul(item.unit_price_cents)
            .and_then(|line| total.checked_add(line))
    })
}

/// SHA-256 over the payload that defines an order (owner, currency and
/// items, in order), hex-encoded. Two requests with the same request id and
/// the same fingerprint are the same request.
pub fn fingerprint(user_id: Uuid, currency: Option<CurrencyCode>, items: &[OrderItem]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"shop.order.v1.CreateOrder\0");
    hasher.update(user_id.as_bytes());
    hasher.update(currency.map(CurrencyCode::as_str).unwrap_or("").as_bytes());
    for item in items {
        hasher.update((item.product_id.len() as u64).to_be_bytes());
        hasher.update(item.product_id.as_bytes());
        hasher.update(item.quantity.to_be_bytes());
        hasher.update(item.unit_price_cents.to_be_bytes());
    }
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(product: &str, quantity: i32, price: i64) -> OrderItem {
        OrderItem {
            product_id: product.into(),
            quantity,
            unit_price_cents: price,
        }
    }

    #[test]
    fn totals_are_exact_and_overflow_is_caught() {
        assert_eq!(
            total_cents(&[item("a", 3, 250), item("b", 1, 1)]),
            Some(751)
        );
        assert_eq!(total_cents(&[item("a", 2, i64::MAX / 2 + 1)]), None);
        assert_eq!(
            total_cents(&[item("a", 1, i64::MAX), item("b", 1, 1)]),
            None
        );
    }

    #[test]
    fn every_bad_item_is_reported_with_its_index() {
        let mut v = Violations::new();
        validate_items(
            [
                ("ok".into(), 1, 100),
                (String::new(), 0, 0),
                ("with space".into(), 1001, -5),
            ]
            .into_iter(),
            &mut v,
        );
        let fields: Vec<_> = v
            .into_result()
            .unwrap_err()
            .into_iter()
            .map(|f| f.field)
            .collect();
        assert_eq!(
            fields,
            [
                "items[1].product_id",
                "items[1].quantity",
                "items[2].product_id",
                "items[2].quantity",
                "items[2].unit_price_cents",
            ]
        );
    }

    #[test]
    fn item_count_is_bounded() {
        let mut v = Violations::new();
        validate_items(std::iter::empty(), &mut v);
        assert!(!v.is_empty());
        let mut v = Violations::new();
        let many: Vec<_> = (0..=MAX_ITEMS).map(|i| (format!("p{i}"), 1, 1)).collect();
        validate_items(many.into_iter(), &mut v);
        assert!(!v.is_empty());
    }

    #[test]
    fn too_many_items_is_one_violation_and_no_item_is_looked_at() {
        // A million empty items: one report for the list, none per item.
        let mut v = Violations::new();
        let looked_at = std::cell::Cell::new(0usize);
        let items = (0..1_000_000).map(|_| {
            looked_at.set(looked_at.get() + 1);
            (String::new(), 0, 0)
        });
        let kept = validate_items(items, &mut v);
        assert!(kept.is_empty());
        assert_eq!(looked_at.get(), 0);
        let report = v.into_result().unwrap_err();
        assert_eq!(report.len(), 1, "{report:?}");
        assert_eq!(
            report[0].description,
            format!("must hold at most {MAX_ITEMS} items, not 1000000")
        );
    }

    #[test]
    fn bad_items_stop_being_looked_at_once_the_report_is_full() {
        let mut v = Violations::new();
        let looked_at = std::cell::Cell::new(0usize);
        let items = (0..MAX_ITEMS).map(|_| {
            looked_at.set(looked_at.get() + 1);
            (String::new(), 0, -1)
        });
        validate_items(items, &mut v);
        // Three violations per item: the report fills during the 7th.
        assert_eq!(looked_at.get(), 8);
        assert_eq!(
            v.into_result().unwrap_err().len(),
            shop_core::validation::MAX_REPORTED_VIOLATIONS + 1
        );
    }

    #[test]
    fn fingerprints_change_with_any_part_of_the_payload() {
        let user = Uuid::now_v7();
        let usd = Some(CurrencyCode::parse("USD").unwrap());
        let base = fingerprint(user, usd, &[item("a", 1, 100)]);
        assert_ne!(base, fingerprint(user, None, &[item("a", 1, 100)]));
        assert_ne!(base, fingerprint(user, usd, &[item("a", 1, 0)]));
        assert_eq!(base, fingerprint(user, usd, &[item("a", 1, 100)]));
        assert_ne!(base, fingerprint(user, usd, &[item("a", 2, 100)]));
        assert_ne!(base, fingerprint(user, usd, &[item("a", 1, 101)]));
        assert_ne!(
            base,
            fingerprint(user, CurrencyCode::parse("EUR").ok(), &[item("a", 1, 100)])
        );
        assert_ne!(base, fingerprint(Uuid::now_v7(), usd, &[item("a", 1, 100)]));
        assert_ne!(
            fingerprint(user, usd, &[item("ab", 1, 1)]),
            fingerprint(user, usd, &[item("a", 1, 1), item("b", 1, 1)])
        );
    }

    #[test]
    fn request_ids_are_bounded_printable_ascii() {
        assert!(RequestId::parse("order-2026-11-22#1").is_ok());
        assert!(RequestId::parse("").is_err());
        assert!(RequestId::parse("has space").is_err());
        assert!(RequestId::parse(&"x".repeat(129)).is_err());
        assert_ne!(RequestId::generate(), RequestId::generate());
    }
}
