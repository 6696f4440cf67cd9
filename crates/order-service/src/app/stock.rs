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
const OUTBOX_BATCH: u32 = 256;
/// Most confirmations in one ConfirmReservations call (inventory-service
/// takes up to 256).
pub(super) const MAX_CONFIRM_BATCH: usize = 256;
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

    /// Confirms the reservations of `order_ids` in one call: how each
    /// ended, in the order given; an error means "try them all again
    /// later".
    async fn confirm_all(&self, order_ids: &[Uuid]) -> Result<Vec<Settled>, AppError>;

    /// Releases the reservation of `order_id`; an error means "try again
    /// later".
    async fn release(&self, order_id: Uuid) -> Result<Settled, AppError>;
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
    /// Releases the reservation of `order_id` once (the release is owed in
    /// the outbox already): done, it leaves the outbox; failed, it is put
    /// off with backoff for the outbox worker.
    pub(super) async fn release_now(&self, order_id: Uuid) {
        let step = StockStep {
            order_id,
            action: StockAction::Release,
            attempts: 0,
        };
        self.release_step(&step).await;
    }

    async fn release_step(&self, step: &StockStep) {
        match self.stock.release(step.order_id).await {
            Ok(_) => {
                self.steps_done(&[step.order_id], StockAction::Release)
                    .await
            }
            Err(error) => self.steps_failed(std::slice::from_ref(step), &error).await,
        }
    }

    /// Tries the owed confirmations of `steps` in one call: the done ones
    /// leave the outbox together; a confirmation with nothing to confirm
    /// cancels its order (it has no stock); if the call fails, each is put
    /// off with backoff for the outbox worker.
    pub(super) async fn confirm_steps(&self, steps: &[StockStep]) {
        let ids: Vec<Uuid> = steps.iter().map(|step| step.order_id).collect();
        match self.stock.confirm_all(&ids).await {
            Ok(outcomes) => {
                let mut done = Vec::with_capacity(ids.len());
                for (&order_id, outcome) in ids.iter().zip(outcomes) {
                    match outcome {
                        Settled::Done => done.push(order_id),
                        Settled::Gone => {
                            if let Err(error) = self.cancel_unstocked(order_id).await {
                                tracing::warn!(%order_id, %error, "could not cancel an order without stock");
                            }
                        }
                    }
                }
                self.steps_done(&done, StockAction::Confirm).await;
            }
            Err(error) => self.steps_failed(steps, &error).await,
        }
    }

    async fn steps_done(&self, order_ids: &[Uuid], action: StockAction) {
        if order_ids.is_empty() {
            return;
        }
        if let Err(error) = self.store.stock_steps_done(order_ids, action).await {
            tracing::warn!(steps = order_ids.len(), action = action.as_str(), %error, "could not record stock steps as done; they will be tried again");
        }
    }

    /// Puts off each of `steps`, all of one action, whose attempt failed
    /// with `error`: each backs off on its own (0.5 s doubling up to
    /// [`MAX_STEP_BACKOFF`], full jitter) and waits for the outbox worker.
    async fn steps_failed(&self, steps: &[StockStep], error: &AppError) {
        let Some(first) = steps.first() else {
            return;
        };
        let now = Utc::now().trunc_subsecs(6);
        let put_off: Vec<_> = steps
            .iter()
            .map(|step| {
                let attempt = u32::try_from(step.attempts).unwrap_or(0).saturating_add(1);
                let wait = shop_client::backoff::full_jitter(
                    Duration::from_millis(500),
                    MAX_STEP_BACKOFF,
                    2.0,
                    attempt,
                )
                .max(Duration::from_millis(100));
                let wait = chrono::Duration::from_std(wait)
                    .unwrap_or_else(|_| chrono::Duration::seconds(1));
                (step.order_id, now + wait)
            })
            .collect();
        tracing::warn!(
            steps = steps.len(),
            order_id = %first.order_id,
            action = first.action.as_str(),
            attempt = first.attempts + 1,
            %error,
            "stock steps failed; will retry"
        );
        if let Err(error) = self.store.stock_steps_failed(first.action, &put_off).await {
            tracing::warn!(steps = steps.len(), action = first.action.as_str(), %error, "could not record stock steps' failure");
        }
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
            .stock_steps_done(&[order_id], StockAction::Confirm)
            .await
    }

    /// Settles every owed step that is due: the confirmations in batches
    /// of up to [`MAX_CONFIRM_BATCH`], the releases one by one; how many
    /// were tried.
    pub async fn settle_due(&self) -> Result<usize, AppError> {
        let due = self
            .store
            .due_stock_steps(Utc::now().trunc_subsecs(6), OUTBOX_BATCH)
            .await?;
        let (confirms, releases): (Vec<_>, Vec<_>) = due
            .iter()
            .cloned()
            .partition(|step| step.action == StockAction::Confirm);
        for batch in confirms.chunks(MAX_CONFIRM_BATCH) {
            self.confirm_steps(batch).await;
        }
        for step in &releases {
            self.release_step(step).await;
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
