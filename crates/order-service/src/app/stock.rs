//! The stock side of placing and cancelling orders: what order-service
//! needs from inventory-service ([`Stock`]), pricing an order from its
//! reservation, and settling the steps an order owes (the outbox) until
//! they are done.

use std::{collections::HashMap, time::Duration};

use async_trait::async_trait;
use chrono::{SubsecRound as _, Utc};
use uuid::Uuid;

use super::{AppError, Orders, PlaceOrder};
use crate::domain::{CurrencyCode, OrderItem, OrderStatus, StockAction, StockStep, total_cents};

/// Most owed steps one pass of the outbox worker takes.
const OUTBOX_BATCH: u32 = 100;
/// The longest wait between attempts at one step.
const MAX_STEP_BACKOFF: Duration = Duration::from_secs(300);

/// What a reservation answered: the catalogue's prices of the reserved
/// items and their currency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reserved {
    /// ISO 4217 code of every price.
    pub currency_code: String,
    /// Unit price per product id.
    pub prices: HashMap<String, i64>,
}

/// How an owed step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Done as asked.
    Done,
    /// Nothing to confirm: the reservation expired, was released or never
    /// existed, so the order has no stock.
    Gone,
}

/// Prices and stock (inventory-service, in production).
#[async_trait]
pub trait Stock: Send + Sync {
    /// Holds every item for `order_id`, all or none; FAILED_PRECONDITION
    /// (naming each short product) when stock is short.
    async fn reserve(&self, order_id: Uuid, items: &[OrderItem]) -> Result<Reserved, AppError>;

    /// Runs an owed step for `order_id`; an error means "try again later".
    async fn settle(&self, order_id: Uuid, action: StockAction) -> Result<Settled, AppError>;
}

/// An order priced by its reservation.
pub(super) struct Priced {
    pub(super) items: Vec<OrderItem>,
    pub(super) currency: CurrencyCode,
    pub(super) total_cents: i64,
}

/// The order's items at the catalogue's prices: FAILED_PRECONDITION when a
/// price the caller sent, or the currency it named, is not the
/// catalogue's ("price changed").
pub(super) fn priced(order: &PlaceOrder, reserved: &Reserved) -> Result<Priced, AppError> {
    let currency = CurrencyCode::parse(&reserved.currency_code).map_err(AppError::internal)?;
    if let Some(asked) = order.currency
        && asked != currency
    {
        return Err(AppError::FailedPrecondition(format!(
            "price changed: the products are priced in {}, not {}",
            currency.as_str(),
            asked.as_str()
        )));
    }
    let mut items = Vec::with_capacity(order.items.len());
    for item in &order.items {
        let catalogue = *reserved
            .prices
            .get(&item.product_id)
            .ok_or_else(|| AppError::internal("a reserved item came back without a price"))?;
        if item.unit_price_cents != 0 && item.unit_price_cents != catalogue {
            return Err(AppError::FailedPrecondition(format!(
                "price changed: {} costs {catalogue} {} a unit, not {}",
                item.product_id,
                currency.as_str(),
                item.unit_price_cents
            )));
        }
        items.push(OrderItem {
            unit_price_cents: catalogue,
            ..item.clone()
        });
    }
    let total_cents = total_cents(&items)
        .ok_or_else(|| AppError::FailedPrecondition("the order total does not fit".into()))?;
    Ok(Priced {
        items,
        currency,
        total_cents,
    })
}

impl Orders {
    /// Tries an owed step once: done steps leave the outbox; a
    /// confirmation with nothing to confirm cancels the order (it has no
    /// stock); a failure is put off with backoff for the outbox worker.
    /// How it ended, None when it failed.
    pub(super) async fn settle(&self, order_id: Uuid, action: StockAction) -> Option<Settled> {
        let step = StockStep {
            order_id,
            action,
            attempts: 0,
        };
        self.settle_step(&step).await
    }

    async fn settle_step(&self, step: &StockStep) -> Option<Settled> {
        let StockStep {
            order_id, action, ..
        } = *step;
        let outcome = self.stock.settle(order_id, action).await;
        let settled = outcome.as_ref().ok().copied();
        let result = match outcome {
            Ok(Settled::Done) => self.store.stock_step_done(order_id, action).await,
            Ok(Settled::Gone) if action == StockAction::Confirm => {
                self.cancel_unstocked(order_id).await
            }
            Ok(Settled::Gone) => self.store.stock_step_done(order_id, action).await,
            Err(error) => {
                let attempt = u32::try_from(step.attempts).unwrap_or(0).saturating_add(1);
                let wait = shop_client::backoff::full_jitter(
                    Duration::from_millis(500),
                    MAX_STEP_BACKOFF,
                    2.0,
                    attempt,
                )
                .max(Duration::from_millis(100));
                tracing::warn!(%order_id, action = action.as_str(), attempt, ?wait, %error, "stock step failed; will retry");
                let next = Utc::now().trunc_subsecs(6)
                    + chrono::Duration::from_std(wait)
                        .unwrap_or_else(|_| chrono::Duration::seconds(1));
                self.store.stock_step_failed(order_id, action, next).await
            }
        };
        if let Err(error) = result {
            tracing::warn!(%order_id, action = action.as_str(), %error, "could not record a stock step's outcome");
        }
        settled
    }

    /// The order's reservation is gone before it was confirmed (it expired
    /// while order-service could not reach inventory-service): the order
    /// cannot be fulfilled, so it is cancelled, and owes nothing more.
    async fn cancel_unstocked(&self, order_id: Uuid) -> Result<(), crate::repo::RepoError> {
        let now = Utc::now().trunc_subsecs(6);
        for from in [OrderStatus::Pending, OrderStatus::Confirmed] {
            if self
                .store
                .update_status(
                    order_id,
                    from,
                    OrderStatus::Cancelled,
                    Some("stock reservation expired before it was confirmed"),
                    None,
                    now,
                )
                .await?
                .is_some()
            {
                tracing::warn!(%order_id, "order cancelled: its stock reservation expired");
                break;
            }
        }
        self.store
            .stock_step_done(order_id, StockAction::Confirm)
            .await
    }

    /// Settles every owed step that is due; how many were tried.
    pub async fn settle_due(&self) -> Result<usize, AppError> {
        let due = self
            .store
            .due_stock_steps(Utc::now().trunc_subsecs(6), OUTBOX_BATCH)
            .await?;
        for step in &due {
            self.settle_step(step).await;
        }
        Ok(due.len())
    }
}

/// Settles owed stock steps every `interval`, forever (spawn it as a
/// background task): the retry loop behind every confirmation and release
/// that did not succeed at once, including those left by a crash.
pub async fn settle_every(orders: Orders, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(error) = orders.settle_due().await {
            tracing::warn!(%error, "reading the stock outbox failed");
        }
    }
}
