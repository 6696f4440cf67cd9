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
//! as after a crash. When the service stops, what is queued is confirmed
//! before it exits, so that a restart later than the reservations' time
//! to live does not find them lapsed.

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

/// Confirms what `queued` receives, in batches, until `stop` completes (or
/// every [`ConfirmQueue`] is dropped); then takes nothing more in, confirms
/// what is still queued and returns. The batch in flight when `stop`
/// completes finishes first. Spawn it beside the server and, once the
/// server has stopped, give it a bounded time to finish
/// (`CONFIRM_DRAIN_TIMEOUT`): what it does not get to stays in the outbox.
pub async fn confirm_queued(
    orders: Orders,
    mut queued: QueuedConfirmations,
    stop: impl Future<Output = ()>,
) {
    let mut batch = Vec::with_capacity(MAX_CONFIRM_BATCH);
    let mut stop = std::pin::pin!(stop);
    loop {
        tokio::select! {
            biased;
            () = &mut stop => break,
            received = queued.receiver.recv_many(&mut batch, MAX_CONFIRM_BATCH) => {
                if received == 0 {
                    return;
                }
                confirm(&orders, &mut batch).await;
            }
        }
    }
    queued.receiver.close();
    let owed = queued.receiver.len();
    if owed > 0 {
        tracing::info!(owed, "stopping: confirming the orders still queued");
    }
    while queued
        .receiver
        .recv_many(&mut batch, MAX_CONFIRM_BATCH)
        .await
        > 0
    {
        confirm(&orders, &mut batch).await;
    }
}

/// Confirms the orders in `batch` in one call, leaving `batch` empty.
async fn confirm(orders: &Orders, batch: &mut Vec<Uuid>) {
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
