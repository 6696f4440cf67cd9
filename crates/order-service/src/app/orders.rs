//! Placing orders idempotently, reading them on behalf of a caller, and
//! moving them through their states.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use chrono::{SubsecRound as _, Utc};
use shop_auth::Principal;
use tokio::sync::broadcast::{self, error::RecvError};
use uuid::Uuid;

use super::{
    AppError, ConfirmQueue,
    stock::{Stock, priced},
};
use crate::{
    domain::{
        CurrencyCode, NewOrder, Order, OrderFilter, OrderItem, OrderStatus, PlacedOrder, RequestId,
        StockAction, fingerprint,
    },
    repo::{Notice, OrderRepo},
};

/// Attempts at a compare-and-set status change before giving up.
const STATUS_CAS_ATTEMPTS: usize = 3;

/// The check that the user an order is for exists and may order (the
/// user-service client, in production).
#[async_trait]
pub trait ActiveUsers: Send + Sync {
    /// Ok when `user_id` names an existing, active user, as seen by the
    /// caller of the request being served.
    async fn ensure_active(&self, user_id: Uuid) -> Result<(), AppError>;
}

/// A validated order to place.
#[derive(Debug, Clone)]
pub struct PlaceOrder {
    /// Whose order it is.
    pub user_id: Uuid,
    /// Its lines, valid; a unit price of 0 takes the catalogue's, any
    /// other must equal it.
    pub items: Vec<OrderItem>,
    /// Its currency, when the caller named one (it must be the
    /// catalogue's).
    pub currency: Option<CurrencyCode>,
    /// The idempotency key.
    pub request_id: RequestId,
}

/// What a status change does when the order is already in the target
/// state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repeat {
    /// Answer the order as it is (a retried cancel).
    Accept,
    /// Refuse it like any other move the state machine does not allow.
    Refuse,
}

/// What a status change came to, when the order exists and the caller
/// may see it.
#[derive(Debug, Clone)]
pub enum StatusChange {
    /// Moved (or, with [`Repeat::Accept`], already there).
    Done(Order),
    /// The state machine does not allow the move from where it is.
    Refused {
        /// The order as it is.
        order: Order,
        /// Why not, for the caller.
        why: String,
    },
}

/// The order use cases.
#[derive(Clone)]
pub struct Orders {
    pub(super) store: Arc<dyn OrderRepo>,
    users: Arc<dyn ActiveUsers>,
    pub(super) stock: Arc<dyn Stock>,
    confirmations: ConfirmQueue,
}

impl std::fmt::Debug for Orders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Orders")
            .field("backend", &self.store.backend())
            .finish_non_exhaustive()
    }
}

impl Orders {
    /// The use cases over `store`, checking users with `users`, taking
    /// prices and stock from `stock`, and leaving the confirmations of
    /// new orders in `confirmations` (drained by
    /// [`super::confirm_queued`]).
    pub fn new(
        store: Arc<dyn OrderRepo>,
        users: Arc<dyn ActiveUsers>,
        stock: Arc<dyn Stock>,
        confirmations: ConfirmQueue,
    ) -> Orders {
        Orders {
            store,
            users,
            stock,
            confirmations,
        }
    }

    /// Places `order` for `caller`, once per request id: a repeat with the
    /// same payload gets the first order, also under concurrent repeats; a
    /// repeat with another payload is ALREADY_EXISTS.
    pub async fn place(&self, caller: &Principal, order: PlaceOrder) -> Result<Order, AppError> {
        if !caller.may_act_for(&order.user_id.to_string()) {
            return Err(AppError::PermissionDenied(
                "orders can only be placed for yourself",
            ));
        }
        let request_hash = fingerprint(order.user_id, order.currency, &order.items);

        // A retry of an order that was placed: answer with the first result
        // at once, without asking user-service again.
        if let Some((placed, stored_hash)) = self
            .store
            .find_by_request_id(order.user_id, order.request_id.as_str())
            .await?
        {
            return same_request(placed, &stored_hash, &request_hash);
        }

        self.users.ensure_active(order.user_id).await?;

        // The saga: hold the stock (prices come back with it), store the
        // order with the confirmation it owes, confirm. A crash before the
        // order is stored leaves a reservation that expires; after, the
        // outbox confirms it.
        let id = Uuid::now_v7();
        let reserved = self.stock.reserve(id, &order.items).await?;
        let priced = match priced(&order, &reserved) {
            Ok(priced) => priced,
            Err(refused) => {
                self.release_unstored(id).await;
                return Err(refused);
            }
        };
        let new = NewOrder {
            id,
            user_id: order.user_id,
            request_id: order.request_id,
            request_hash: request_hash.clone(),
            total_cents: priced.total_cents,
            items: priced.items,
            currency_code: priced.currency,
            now: Utc::now().trunc_subsecs(6),
        };
        let placed = match self.store.place_order(&new).await {
            Ok(placed) => placed,
            Err(error) => {
                self.release_unstored(id).await;
                return Err(error.into());
            }
        };
        match placed {
            PlacedOrder::Created(order) => {
                tracing::info!(order_id = %order.id, user_id = %order.user_id, total_cents = order.total_cents, "order created");
                // The order and the confirmation it owes are stored: the
                // confirmation goes out with others, off the request path
                // (see `confirmer`).
                self.confirmations.push(order.id);
                Ok(order)
            }
            // A concurrent twin won the race: our reservation is not needed.
            PlacedOrder::Existing {
                order,
                request_hash: stored_hash,
            } => {
                self.release_unstored(id).await;
                same_request(order, &stored_hash, &request_hash)
            }
        }
    }

    /// Gives back the reservation of an order that was not stored: owed
    /// in the outbox first (so a crash cannot lose it), then tried at once;
    /// the reservation's expiry is the last resort.
    async fn release_unstored(&self, id: Uuid) {
        let now = Utc::now().trunc_subsecs(6);
        if let Err(error) = self
            .store
            .owe_stock_step(id, StockAction::Release, now)
            .await
        {
            tracing::warn!(order_id = %id, %error, "could not record the release; the reservation will expire");
            return;
        }
        self.release_now(id).await;
    }

    /// The order `id`, if `caller` may see it (NOT_FOUND otherwise).
    pub async fn get(&self, caller: &Principal, id: Uuid) -> Result<Order, AppError> {
        self.store
            .get_order(id)
            .await?
            .filter(|order| caller.may_act_for(&order.user_id.to_string()))
            .ok_or(AppError::NotFound("order"))
    }

    /// Up to `limit` of the orders `filter` selects, newest first, below
    /// the cursor `before`, if `caller` may see them.
    pub async fn list(
        &self,
        caller: &Principal,
        filter: &OrderFilter,
        before: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<Order>, AppError> {
        self.authorize_list(caller, filter)?;
        Ok(self.store.list_orders(filter, before, limit).await?)
    }

    /// NOT_FOUND unless `caller` may see the orders `filter` selects.
    pub fn authorize_list(&self, caller: &Principal, filter: &OrderFilter) -> Result<(), AppError> {
        if caller.may_act_for(&filter.user_id.to_string()) {
            Ok(())
        } else {
            Err(AppError::NotFound("orders"))
        }
    }

    /// Moves the order `id` to `to` on behalf of `caller`, as the state
    /// machine allows, with `reason` kept for a cancellation (CancelOrder
    /// and ProcessOrders both come here). The move is a
    /// compare-and-set: an order moved by someone else between the read
    /// and the write is read again (a few times), so two concurrent moves
    /// never both apply to the same state.
    pub async fn change_status(
        &self,
        caller: &Principal,
        id: Uuid,
        to: OrderStatus,
        reason: Option<&str>,
        repeat: Repeat,
    ) -> Result<StatusChange, AppError> {
        for _ in 0..STATUS_CAS_ATTEMPTS {
            let order = self.get(caller, id).await?;
            if order.status == to && repeat == Repeat::Accept {
                return Ok(StatusChange::Done(order));
            }
            let to = match order.status.transition(to) {
                Ok(to) => to,
                Err(e) => {
                    return Ok(StatusChange::Refused {
                        order,
                        why: e.to_string(),
                    });
                }
            };
            let now = Utc::now().trunc_subsecs(6);
            // A cancelled order gives its stock back.
            let owes = (to == OrderStatus::Cancelled).then_some(StockAction::Release);
            if let Some(moved) = self
                .store
                .update_status(id, order.status, to, reason, owes, now)
                .await?
            {
                tracing::info!(order_id = %id, from = %order.status, to = %to, by = %caller.user_id, "order moved");
                if owes.is_some() {
                    self.release_now(id).await;
                }
                return Ok(StatusChange::Done(moved));
            }
            // Moved by someone else between our read and our write: look again.
        }
        tracing::warn!(order_id = %id, %to, "the order kept changing while being moved");
        Err(AppError::Aborted("the order kept changing; try again"))
    }
}

impl Orders {
    /// Starts watching the order `id` on behalf of `caller`: its current
    /// state, then every change from any replica ([`OrderWatch::changes`]).
    /// The watch subscribes to change notices before it reads, so a change
    /// committed in between is not missed; `resync` is how often it
    /// re-reads without a notice, a safety net for notices lost while the
    /// database connection was down.
    pub async fn watch(
        &self,
        caller: &Principal,
        id: Uuid,
        resync: Duration,
    ) -> Result<OrderWatch, AppError> {
        let notices = self.store.changes();
        let order = self.get(caller, id).await?;
        Ok(OrderWatch {
            order,
            key: id.to_string(),
            notices,
            store: Arc::clone(&self.store),
            resync,
        })
    }
}

/// One order being watched.
pub struct OrderWatch {
    order: Order,
    key: String,
    notices: broadcast::Receiver<Notice>,
    store: Arc<dyn OrderRepo>,
    resync: Duration,
}

impl OrderWatch {
    /// The order as last seen.
    pub fn current(&self) -> &Order {
        &self.order
    }

    /// Waits for the order to change (a notice for it, a resync notice, a
    /// lagging feed, or the resync interval) and returns the states it went
    /// through since last seen, oldest first; empty when nothing changed.
    /// The events table says what changed, so a lost notice costs a
    /// re-read, never a change.
    pub async fn changes(&mut self) -> Result<Vec<Order>, AppError> {
        loop {
            tokio::select! {
                notice = self.notices.recv() => match notice {
                    Ok(Notice::Changed(changed)) if *changed == *self.key => break,
                    Ok(Notice::Resync) | Err(RecvError::Lagged(_)) => break,
                    Ok(Notice::Changed(_)) => continue,
                    Err(RecvError::Closed) => {
                        return Err(AppError::Unavailable("the order change feed closed".into()));
                    }
                },
                _ = tokio::time::sleep(self.resync) => break,
            }
        }
        let events = self
            .store
            .events_after(self.order.id, self.order.version)
            .await?;
        Ok(events
            .iter()
            .map(|event| {
                self.order.apply(event);
                self.order.clone()
            })
            .collect())
    }
}

/// The answer to a repeated request id: the first order if the payload is
/// the same, ALREADY_EXISTS if the id is being reused for something else.
fn same_request(order: Order, stored_hash: &str, request_hash: &str) -> Result<Order, AppError> {
    if stored_hash == request_hash {
        Ok(order)
    } else {
        Err(AppError::AlreadyExists(
            "request_id was already used for a different order",
        ))
    }
}
