//! The use cases of inventory-service: the catalogue, stock changes, the
//! reservation saga's three steps, and watching availability. They take
//! domain values and return [`AppError`]; no gRPC type crosses into here.

mod seed;
mod watch;

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, SubsecRound as _, Utc};
use uuid::Uuid;

pub use shop_core::error::AppError;
pub use watch::{Availability, StockWatch};

use crate::{
    domain::{
        Product, ProductDraft, Reservation, ReservationStatus, ReserveItem, Sku, StockChange,
        items_fingerprint,
    },
    repo::{Adjusted, InventoryRepo, Reserved},
};

/// The inventory use cases and what they share.
#[derive(Clone)]
pub struct Inventory {
    store: Arc<dyn InventoryRepo>,
    reservation_ttl: Duration,
}

impl std::fmt::Debug for Inventory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inventory")
            .field("backend", &self.store.backend())
            .field("reservation_ttl", &self.reservation_ttl)
            .finish()
    }
}

/// Now, at the precision both databases keep.
fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

impl Inventory {
    /// The use cases over `store`; pending reservations expire after
    /// `reservation_ttl`.
    pub fn new(store: Arc<dyn InventoryRepo>, reservation_ttl: Duration) -> Inventory {
        Inventory {
            store,
            reservation_ttl,
        }
    }

    /// Creates or replaces a product's catalogue fields.
    pub async fn put_product(&self, draft: &ProductDraft) -> Result<Product, AppError> {
        Ok(self.store.put_product(draft, now()).await?)
    }

    /// One product.
    pub async fn get_product(&self, sku: &Sku) -> Result<Product, AppError> {
        self.store
            .get_product(sku)
            .await?
            .ok_or(AppError::NotFound("product"))
    }

    /// Up to `limit` products after `after`, by sku.
    pub async fn list_products(
        &self,
        after: Option<&str>,
        active_only: bool,
        limit: u32,
    ) -> Result<Vec<Product>, AppError> {
        Ok(self.store.list_products(after, active_only, limit).await?)
    }

    /// Applies a stock change once per request id.
    pub async fn adjust_stock(&self, change: &StockChange) -> Result<Product, AppError> {
        match self.store.adjust_stock(change, now()).await? {
            Adjusted::Applied(product)
            | Adjusted::Repeated {
                product,
                same: true,
            } => Ok(product),
            Adjusted::Repeated { same: false, .. } => Err(AppError::AlreadyExists(
                "request_id was already used for another stock change",
            )),
            Adjusted::NotFound => Err(AppError::NotFound("product")),
            Adjusted::BelowReserved(product) => Err(AppError::FailedPrecondition(format!(
                "on_hand would fall below what is reserved ({} on hand, {} reserved)",
                product.on_hand, product.reserved
            ))),
        }
    }

    /// Holds every item for `order_id`, or nothing; a repeat with the same
    /// items answers the first reservation.
    pub async fn reserve(
        &self,
        order_id: Uuid,
        items: &[ReserveItem],
    ) -> Result<Reservation, AppError> {
        let now = now();
        let ttl = chrono::Duration::from_std(self.reservation_ttl).map_err(AppError::internal)?;
        match self.store.reserve(order_id, items, now + ttl, now).await? {
            Reserved::Held(reservation) => Ok(reservation),
            Reserved::Existing(reservation) => {
                if reservation.items_hash == items_fingerprint(items) {
                    Ok(reservation)
                } else if reservation.status == ReservationStatus::Released
                    && reservation.lines.is_empty()
                {
                    Err(AppError::FailedPrecondition(
                        "the order was released before it was reserved".into(),
                    ))
                } else {
                    Err(AppError::AlreadyExists(
                        "order_id was already reserved with other items",
                    ))
                }
            }
            Reserved::Short(shortages) => Err(AppError::PreconditionsFailed {
                message: format!(
                    "insufficient stock for {}",
                    shortages
                        .iter()
                        .map(|s| s.sku.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                violations: shortages
                    .into_iter()
                    .map(|s| ("STOCK".to_owned(), s.sku, s.description))
                    .collect(),
            }),
            Reserved::MixedCurrencies => Err(AppError::FailedPrecondition(
                "the products are priced in different currencies; order them separately".into(),
            )),
        }
    }

    /// Confirms a pending reservation; a confirmed one is answered as is.
    pub async fn confirm(&self, order_id: Uuid) -> Result<Reservation, AppError> {
        let reservation = self
            .store
            .confirm(order_id, now())
            .await?
            .ok_or(AppError::NotFound("reservation"))?;
        match reservation.status {
            ReservationStatus::Confirmed => Ok(reservation),
            ReservationStatus::Pending => Err(AppError::internal(
                "a reservation stayed pending through its confirmation",
            )),
            ReservationStatus::Released => Err(AppError::FailedPrecondition(
                "the reservation was released".into(),
            )),
            ReservationStatus::Expired => Err(AppError::FailedPrecondition(
                "the reservation has expired".into(),
            )),
        }
    }

    /// Confirms every reservation of `order_ids` that can be, in one
    /// transaction: each as it is after (confirmed, or released or expired
    /// when it could not be), in the order given, leaving out the ids
    /// never reserved.
    pub async fn confirm_all(&self, order_ids: &[Uuid]) -> Result<Vec<Reservation>, AppError> {
        Ok(self.store.confirm_all(order_ids, now()).await?)
    }

    /// Releases a reservation (or records the release of one never made).
    pub async fn release(&self, order_id: Uuid) -> Result<Reservation, AppError> {
        Ok(self.store.release(order_id, now()).await?)
    }

    /// Expires the pending reservations that are due, giving their units
    /// back; how many.
    pub async fn expire_due(&self) -> Result<u64, AppError> {
        Ok(self.store.expire_due(now()).await?)
    }

    /// Follows the availability of `skus`: subscribes to change notices,
    /// then reads every product (NOT_FOUND when one is unknown).
    pub async fn watch(&self, skus: Vec<Sku>) -> Result<StockWatch, AppError> {
        StockWatch::start(Arc::clone(&self.store), skus).await
    }
}

/// Runs [`Inventory::expire_due`] every `interval`, forever (spawn it as
/// a background task); failures are logged and retried at the next tick.
pub async fn expire_every(inventory: Inventory, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match inventory.expire_due().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(expired = n, "expired pending reservations"),
            Err(error) => tracing::warn!(%error, "expiring reservations failed"),
        }
    }
}
