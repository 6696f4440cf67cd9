//! Reservations that arrive together go to inventory-service together.
//!
//! While fewer than `STOCK_RESERVE_CALLS` reservation calls are in flight,
//! a reservation goes at once in a ReserveStock call of its own, in its
//! caller's request context (deadline, trace, request id). Beyond that it
//! waits in a queue, and one task sends what is queued (up to
//! `STOCK_RESERVE_BATCH`) in one ReserveStocks call as soon as a call ends.
//! Under load many orders then share one call: one request through each
//! side's server stack, one frame and one wake-up each way, instead of one
//! per order; inventory-service runs the reservations of a call together,
//! each on its own, so that their writes share its commits. With no load
//! an order's reservation goes out at once, as it always did.
//!
//! A queued reservation is sent only if its caller still waits for it (a
//! caller past its deadline, or whose client went away, is left out), and
//! a shared call is bounded by the longest remaining deadline among its
//! callers (and [`super::CALL_TIMEOUT`]). A shared call has a trace of its
//! own, not each caller's: its span names how many orders it carried and,
//! when spans are exported, links to each caller's span.

use std::{sync::Arc, time::Duration};

use shop_core::{context::RequestContext, status};
use shop_proto::inventory::v1::{
    Reservation, ReserveStockRequest, ReserveStocksRequest, reserve_stock_result,
};
use shop_telemetry::propagation::add_link;
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot},
    time::Instant,
};
use tonic::Status;
use tracing::Instrument as _;

use super::{CALL_TIMEOUT, Caller};

/// Reservations that may wait for a shared call; beyond this a caller
/// waits for a place (the server's concurrency limit bounds them first).
const QUEUE_CAPACITY: usize = 4096;

/// Most reservations one ReserveStocks call carries (inventory-service
/// takes up to 32).
pub const MAX_BATCH: usize = 32;

/// How reservation calls share: see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sharing {
    /// Most reservation calls in flight at once (at least 1).
    pub calls: usize,
    /// Most reservations in one shared call (1..=[`MAX_BATCH`]).
    pub batch: usize,
}

/// A reservation waiting for its shared call.
struct Queued {
    request: ReserveStockRequest,
    /// The caller's deadline, when it has one.
    deadline: Option<Instant>,
    /// The caller's span, which the shared call's links to.
    span: tracing::Span,
    answer: oneshot::Sender<Result<Reservation, Status>>,
}

/// The reservation calls in flight, and the queue of those waiting for a
/// shared one. Cheap to clone.
#[derive(Debug, Clone)]
pub(super) struct Together {
    calls: Arc<Semaphore>,
    queue: mpsc::Sender<Queued>,
}

impl std::fmt::Debug for Queued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queued")
            .field("order_id", &self.request.order_id)
            .finish_non_exhaustive()
    }
}

impl Together {
    /// Starts the task that sends shared calls through `caller`; it ends
    /// when the last clone of the returned value is dropped.
    pub(super) fn start(caller: Caller, sharing: Sharing) -> Together {
        let calls = Arc::new(Semaphore::new(sharing.calls.max(1)));
        let (queue, queued) = mpsc::channel(QUEUE_CAPACITY);
        tokio::spawn(send_shared(
            caller,
            Arc::clone(&calls),
            queued,
            sharing.batch.clamp(1, MAX_BATCH),
        ));
        Together { calls, queue }
    }

    /// A place for a call of its own, when one is free; hold it until the
    /// call returns.
    pub(super) fn own_call(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.calls).try_acquire_owned().ok()
    }

    /// Queues `request` for a shared call and waits for its answer.
    pub(super) async fn shared_call(
        &self,
        request: ReserveStockRequest,
    ) -> Result<Reservation, Status> {
        let (answer, answered) = oneshot::channel();
        let queued = Queued {
            request,
            deadline: RequestContext::current().map(|ctx| ctx.deadline),
            span: tracing::Span::current(),
            answer,
        };
        self.queue
            .send(queued)
            .await
            .map_err(|_| Status::unavailable("the reservation queue is closed"))?;
        metrics::counter!("shop_stock_reservations_total", "call" => "shared").increment(1);
        answered
            .await
            .map_err(|_| Status::unavailable("the shared reservation call was dropped"))?
    }
}

/// Sends what `queued` receives in shared calls, each once a place among
/// `calls` is free, until every [`Together`] is gone.
async fn send_shared(
    caller: Caller,
    calls: Arc<Semaphore>,
    mut queued: mpsc::Receiver<Queued>,
    batch_size: usize,
) {
    let mut batch = Vec::with_capacity(batch_size);
    while queued.recv_many(&mut batch, batch_size).await > 0 {
        let Ok(place) = Arc::clone(&calls).acquire_owned().await else {
            return;
        };
        // What arrived while waiting for the place goes too.
        while batch.len() < batch_size {
            match queued.try_recv() {
                Ok(more) => batch.push(more),
                Err(_) => break,
            }
        }
        batch.retain(|q| !q.answer.is_closed());
        if batch.is_empty() {
            continue;
        }
        let members = std::mem::replace(&mut batch, Vec::with_capacity(batch_size));
        let caller = caller.clone();
        tokio::spawn(async move {
            send(&caller, members).await;
            drop(place);
        });
    }
}

/// One shared call for `members`, each answered with its own result.
async fn send(caller: &Caller, members: Vec<Queued>) {
    let timeout = timeout_for(&members, Instant::now());
    let orders = members.len();
    let span = tracing::info_span!("reserve stock together", orders);
    for member in &members {
        add_link(&span, &member.span);
    }
    let (reservations, waiting): (Vec<_>, Vec<_>) =
        members.into_iter().map(|q| (q.request, q.answer)).unzip();
    let answers = async {
        let request = caller
            .request(ReserveStocksRequest { reservations }, timeout)
            .await?;
        let results = caller
            .client
            .clone()
            .reserve_stocks(request)
            .await?
            .into_inner()
            .results;
        if results.len() != orders {
            return Err(Status::internal(format!(
                "inventory-service answered {} results for {orders} reservations",
                results.len()
            )));
        }
        Ok(results)
    }
    .instrument(span)
    .await;
    match answers {
        Ok(results) => {
            for (answer, result) in waiting.into_iter().zip(results) {
                let _ = answer.send(match result.result {
                    Some(reserve_stock_result::Result::Reservation(reservation)) => Ok(reservation),
                    // The Status a ReserveStock of its own would have ended with.
                    Some(reserve_stock_result::Result::Error(error)) => {
                        Err(status::from_proto(error))
                    }
                    None => Err(Status::internal(
                        "inventory-service answered a reservation with no result",
                    )),
                });
            }
        }
        Err(status) => {
            for answer in waiting {
                let _ = answer.send(Err(status.clone()));
            }
        }
    }
}

/// A shared call's time: as long as the longest-waiting caller still
/// waits, at most [`CALL_TIMEOUT`] (which is also what a caller with no
/// deadline gets).
fn timeout_for(members: &[Queued], now: Instant) -> Duration {
    members
        .iter()
        .map(|q| {
            q.deadline
                .map_or(CALL_TIMEOUT, |d| d.saturating_duration_since(now))
        })
        .max()
        .unwrap_or(CALL_TIMEOUT)
        .min(CALL_TIMEOUT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queued(deadline: Option<Instant>) -> Queued {
        Queued {
            request: ReserveStockRequest::default(),
            deadline,
            span: tracing::Span::none(),
            answer: oneshot::channel().0,
        }
    }

    #[test]
    fn a_shared_call_lasts_as_long_as_its_longest_waiting_caller() {
        let now = Instant::now();
        let soon = queued(Some(now + Duration::from_millis(100)));
        let later = queued(Some(now + Duration::from_millis(300)));
        let past = queued(Some(now - Duration::from_millis(1)));
        assert_eq!(
            timeout_for(&[soon, later, past], now),
            Duration::from_millis(300)
        );
        let far = queued(Some(now + Duration::from_secs(60)));
        assert_eq!(timeout_for(&[far], now), CALL_TIMEOUT);
        assert_eq!(timeout_for(&[queued(None)], now), CALL_TIMEOUT);
    }
}
