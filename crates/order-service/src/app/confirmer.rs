//! Confirming the reservations of stored orders off the request path.
//!
//! CreateOrder answers once its order is stored, with the confirmation it
//! owes in the outbox (the same transaction). The confirmation itself goes
//! to a queue that one task drains: it takes everything queued (up to
//! [`MAX_CONFIRM_BATCH`]), confirms it in one ConfirmReservations call
//! and clears it from the outbox in one transaction. Under load many orders
//! share one call and one commit; with none, an order is confirmed at
//! once. What the queue cannot take (it is full, or the task is gone) and
//! what fails is confirmed by the outbox worker (`STOCK_OUTBOX_INTERVAL`),
//! as after a crash.

use tokio::sync::mpsc;
use tracing::Instrument as _;
use uuid::Uuid;

use super::{Orders, stock::MAX_CONFIRM_BATCH};
use crate::domain::{StockAction, StockStep};

/// Where CreateOrder leaves the confirmations it owes. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ConfirmQueue {
    sender: mpsc::Sender<Uuid>,
}

/// The other end of a [`ConfirmQueue`], for [`confirm_queued`].
#[derive(Debug)]
pub struct QueuedConfirmations {
    receiver: mpsc::Receiver<Uuid>,
}

/// A queue of up to `capacity` confirmations waiting for their call.
pub fn confirm_queue(capacity: usize) -> (ConfirmQueue, QueuedConfirmations) {
    let (sender, receiver) = mpsc::channel(capacity.max(1));
    (ConfirmQueue { sender }, QueuedConfirmations { receiver })
}

impl ConfirmQueue {
    /// Queues the confirmation of the stored order `order_id`; when the
    /// queue is full it is left to the outbox worker.
    pub(super) fn push(&self, order_id: Uuid) {
        if let Err(refused) = self.sender.try_send(order_id) {
            tracing::debug!(%order_id, reason = %refused, "confirmation left to the outbox worker");
        }
    }
}

/// Confirms what `queued` receives, in batches, until every
/// [`ConfirmQueue`] is dropped (spawn it as a background task).
pub async fn confirm_queued(orders: Orders, mut queued: QueuedConfirmations) {
    let mut batch = Vec::with_capacity(MAX_CONFIRM_BATCH);
    while queued
        .receiver
        .recv_many(&mut batch, MAX_CONFIRM_BATCH)
        .await
        > 0
    {
        let steps: Vec<StockStep> = batch
            .drain(..)
            .map(|order_id| StockStep {
                order_id,
                action: StockAction::Confirm,
                attempts: 0,
            })
            .collect();
        let span = tracing::info_span!("confirm queued orders", orders = steps.len());
        orders.confirm_steps(&steps).instrument(span).await;
    }
}
