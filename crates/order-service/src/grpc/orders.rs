//! `shop.order.v1.OrderService`.

use std::{sync::Arc, time::Duration};

use chrono::{SubsecRound as _, Utc};
use shop_auth::Principal;
use shop_core::pagination::{PageTokenCodec, page_size};
use shop_proto::order::v1::{self as pb, order_service_server::OrderService};
use shop_server::{
    principal,
    streams::{ResponseStream, Streams, guarded},
};
use tokio::sync::broadcast::error::RecvError;
use tonic::{Request, Response, Status, Streaming};
use uuid::Uuid;

use super::convert::{order_to_proto, parse_id, status_from_proto};
use crate::{
    domain::{
        CurrencyCode, NewOrder, Order, OrderFilter, OrderStatus, PlacedOrder, RequestId,
        Violations, fingerprint, total_cents, validate_items,
    },
    error::ServiceError,
    repo::{Notice, OrderRepo},
    users::{UserClient, ensure_active},
};

/// Orders read per database round trip while streaming a user's orders.
const STREAM_PAGE: u32 = 100;
/// Most orders in one BatchCreateOrders stream.
pub(crate) const MAX_BATCH_ORDERS: usize = 1000;

/// Longest cancellation reason, in characters.
const MAX_REASON_CHARS: usize = 500;
/// Attempts at a compare-and-set status change before giving up.
const STATUS_CAS_ATTEMPTS: usize = 3;

/// The OrderService implementation.
#[derive(Clone)]
pub struct OrderGrpc {
    store: Arc<dyn OrderRepo>,
    users: UserClient,
    page_tokens: PageTokenCodec,
    streams: Streams,
    watch_resync: Duration,
}

impl std::fmt::Debug for OrderGrpc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrderGrpc")
            .field("backend", &self.store.backend())
            .finish_non_exhaustive()
    }
}

impl OrderGrpc {
    /// A service over `store` that checks users through `users`. Watchers
    /// re-read their order every `watch_resync` even without a change
    /// notice, as a safety net.
    pub fn new(
        store: Arc<dyn OrderRepo>,
        users: UserClient,
        page_tokens: PageTokenCodec,
        streams: Streams,
        watch_resync: Duration,
    ) -> OrderGrpc {
        OrderGrpc {
            store,
            users,
            page_tokens,
            streams,
            watch_resync,
        }
    }

    async fn create(
        &self,
        caller: &Principal,
        req: pb::CreateOrderRequest,
    ) -> Result<Order, ServiceError> {
        let mut v = Violations::new();
        let user_id = v.check("user_id", parse_id(&req.user_id));
        let raw_items: Vec<_> = req
            .items
            .into_iter()
            .map(|i| (i.product_id, i.quantity, i.unit_price_cents))
            .collect();
        let items = validate_items(&raw_items, &mut v);
        let currency = v.check("currency_code", CurrencyCode::parse(&req.currency_code));
        let request_id = if req.request_id.is_empty() {
            Some(RequestId::generate())
        } else {
            v.check("request_id", RequestId::parse(&req.request_id))
        };
        let total = if v.is_empty() {
            let total = total_cents(&items);
            if total.is_none() {
                v.add("items", "the order total does not fit in 64 bits");
            }
            total
        } else {
            None
        };
        v.into_result()?;
        let (Some(user_id), Some(currency), Some(request_id), Some(total)) =
            (user_id, currency, request_id, total)
        else {
            unreachable!("every field parsed when there is no violation");
        };

        if !caller.may_act_for(&user_id.to_string()) {
            return Err(ServiceError::PermissionDenied(
                "orders can only be placed for yourself",
            ));
        }
        let request_hash = fingerprint(user_id, currency, &items);

        // A retry of an order that was placed: answer with the first result
        // at once, without asking user-service again.
        if let Some((order, stored_hash)) = self
            .store
            .find_by_request_id(user_id, request_id.as_str())
            .await?
        {
            return same_request(order, &stored_hash, &request_hash);
        }

        ensure_active(&self.users, user_id).await?;

        let new = NewOrder {
            id: Uuid::now_v7(),
            user_id,
            request_id,
            request_hash: request_hash.clone(),
            items,
            currency_code: currency,
            total_cents: total,
            now: Utc::now().trunc_subsecs(6),
        };
        match self.store.place_order(&new).await? {
            PlacedOrder::Created(order) => {
                tracing::info!(order_id = %order.id, user_id = %order.user_id, total_cents = order.total_cents, "order created");
                Ok(order)
            }
            // A concurrent twin won the race.
            PlacedOrder::Existing {
                order,
                request_hash: stored_hash,
            } => same_request(order, &stored_hash, &request_hash),
        }
    }

    async fn get(
        &self,
        caller: &Principal,
        req: pb::GetOrderRequest,
    ) -> Result<Order, ServiceError> {
        let id = parse_id(&req.order_id).map_err(|e| ServiceError::invalid("order_id", &e))?;
        self.visible_order(caller, id).await
    }

    async fn visible_order(&self, caller: &Principal, id: Uuid) -> Result<Order, ServiceError> {
        self.store
            .get_order(id)
            .await?
            .filter(|order| caller.may_act_for(&order.user_id.to_string()))
            .ok_or(ServiceError::NotFound("order"))
    }

    async fn list(
        &self,
        caller: &Principal,
        req: pb::ListOrdersRequest,
    ) -> Result<pb::ListOrdersResponse, ServiceError> {
        let mut v = Violations::new();
        let user_id = if req.user_id.is_empty() {
            Uuid::parse_str(&caller.user_id).ok()
        } else {
            v.check("user_id", parse_id(&req.user_id))
        };
        let page_size = page_size(req.page_size, &mut v);
        let status = v.check("status", status_from_proto(req.status)).flatten();
        let Some(user_id) = user_id else {
            v.into_result()?;
            return Err(ServiceError::invalid("user_id", "is required"));
        };
        let scope = format!(
            "shop.order.v1.ListOrders|{user_id}|{}",
            status.map(OrderStatus::as_str).unwrap_or("")
        );
        let before = self
            .page_tokens
            .decode_id(scope.as_bytes(), &req.page_token, &mut v);
        v.into_result()?;
        if !caller.may_act_for(&user_id.to_string()) {
            return Err(ServiceError::NotFound("orders"));
        }

        let filter = OrderFilter { user_id, status };
        let mut orders = self
            .store
            .list_orders(&filter, before, page_size + 1)
            .await?;
        let next_page_token =
            self.page_tokens
                .next_page(scope.as_bytes(), &mut orders, page_size, |o| o.id);
        Ok(pb::ListOrdersResponse {
            orders: orders.iter().map(order_to_proto).collect(),
            next_page_token,
        })
    }

    async fn cancel(
        &self,
        caller: &Principal,
        req: pb::CancelOrderRequest,
    ) -> Result<Order, ServiceError> {
        let mut v = Violations::new();
        let id = v.check("order_id", parse_id(&req.order_id));
        let reason = req.reason.trim();
        if reason.chars().count() > MAX_REASON_CHARS {
            v.add(
                "reason",
                format!("must be at most {MAX_REASON_CHARS} characters"),
            );
        }
        v.into_result()?;
        let Some(id) = id else {
            unreachable!("order_id parsed when there is no violation");
        };
        let reason = (!reason.is_empty()).then_some(reason);

        for _ in 0..STATUS_CAS_ATTEMPTS {
            let order = self.visible_order(caller, id).await?;
            if order.status == OrderStatus::Cancelled {
                // Idempotent: a retried cancel gets the cancelled order.
                return Ok(order);
            }
            let to = order
                .status
                .transition(OrderStatus::Cancelled)
                .map_err(|e| ServiceError::FailedPrecondition(e.to_string()))?;
            let now = Utc::now().trunc_subsecs(6);
            if let Some(updated) = self
                .store
                .update_status(id, order.status, to, reason, now)
                .await?
            {
                tracing::info!(order_id = %id, by = %caller.user_id, "order cancelled");
                return Ok(updated);
            }
            // Moved by someone else between our read and our write: look again.
        }
        Err(ServiceError::Internal(anyhow::anyhow!(
            "order {id} kept changing while being cancelled"
        )))
    }
}

impl OrderGrpc {
    /// Validates a StreamOrders request: whose orders, which status.
    fn stream_filter(
        &self,
        caller: &Principal,
        req: &pb::StreamOrdersRequest,
    ) -> Result<OrderFilter, ServiceError> {
        let mut v = Violations::new();
        let user_id = if req.user_id.is_empty() {
            Uuid::parse_str(&caller.user_id).ok()
        } else {
            v.check("user_id", parse_id(&req.user_id))
        };
        let status = v.check("status", status_from_proto(req.status)).flatten();
        v.into_result()?;
        let user_id = user_id.ok_or_else(|| ServiceError::invalid("user_id", "is required"))?;
        if !caller.may_act_for(&user_id.to_string()) {
            return Err(ServiceError::NotFound("orders"));
        }
        Ok(OrderFilter { user_id, status })
    }

    /// One ProcessOrders request: a refused or malformed move is an error
    /// entry, not the end of the stream; only an unreachable database ends
    /// it.
    async fn process_one(
        &self,
        caller: &Principal,
        req: pb::ProcessOrderRequest,
    ) -> Result<pb::ProcessOrderResponse, Status> {
        let refused = |order: Option<&Order>, message: String| pb::ProcessOrderResponse {
            order_id: req.order_id.clone(),
            success: false,
            error_message: message,
            order: order.map(order_to_proto),
        };
        let id = match parse_id(&req.order_id) {
            Ok(id) => id,
            Err(e) => return Ok(refused(None, format!("order_id {e}"))),
        };
        let to = match status_from_proto(req.new_status) {
            Ok(Some(to)) => to,
            Ok(None) => return Ok(refused(None, "new_status is required".into())),
            Err(e) => return Ok(refused(None, format!("new_status: {e}"))),
        };
        for _ in 0..STATUS_CAS_ATTEMPTS {
            let order = match self.visible_order(caller, id).await {
                Ok(order) => order,
                Err(ServiceError::NotFound(_)) => {
                    return Ok(refused(None, "order not found".into()));
                }
                Err(other) => return Err(other.into()),
            };
            if let Err(e) = order.status.transition(to) {
                return Ok(refused(Some(&order), e.to_string()));
            }
            let now = Utc::now().trunc_subsecs(6);
            let moved = self
                .store
                .update_status(id, order.status, to, None, now)
                .await
                .map_err(|e| Status::from(ServiceError::from(e)))?;
            if let Some(updated) = moved {
                tracing::info!(order_id = %id, from = %order.status, to = %to, by = %caller.user_id, "order moved");
                return Ok(pb::ProcessOrderResponse {
                    order_id: req.order_id.clone(),
                    success: true,
                    error_message: String::new(),
                    order: Some(order_to_proto(&updated)),
                });
            }
        }
        Ok(refused(None, "the order kept changing; try again".into()))
    }
}

fn order_update(order: &Order) -> pb::OrderUpdate {
    pb::OrderUpdate {
        order: Some(order_to_proto(order)),
        updated_at: Some(super::convert::timestamp(order.updated_at)),
    }
}

fn repo_status(e: crate::repo::RepoError) -> Status {
    ServiceError::from(e).into()
}

/// The answer to a repeated request id: the first order if the payload is
/// the same, ALREADY_EXISTS if the id is being reused for something else.
fn same_request(
    order: Order,
    stored_hash: &str,
    request_hash: &str,
) -> Result<Order, ServiceError> {
    if stored_hash == request_hash {
        Ok(order)
    } else {
        Err(ServiceError::AlreadyExists(
            "request_id was already used for a different order",
        ))
    }
}

#[tonic::async_trait]
impl OrderService for OrderGrpc {
    async fn create_order(
        &self,
        request: Request<pb::CreateOrderRequest>,
    ) -> Result<Response<pb::Order>, Status> {
        let caller = principal(&request)?.clone();
        let order = self.create(&caller, request.into_inner()).await?;
        Ok(Response::new(order_to_proto(&order)))
    }

    async fn get_order(
        &self,
        request: Request<pb::GetOrderRequest>,
    ) -> Result<Response<pb::Order>, Status> {
        let caller = principal(&request)?.clone();
        let order = self.get(&caller, request.into_inner()).await?;
        Ok(Response::new(order_to_proto(&order)))
    }

    async fn list_orders(
        &self,
        request: Request<pb::ListOrdersRequest>,
    ) -> Result<Response<pb::ListOrdersResponse>, Status> {
        let caller = principal(&request)?.clone();
        Ok(Response::new(
            self.list(&caller, request.into_inner()).await?,
        ))
    }

    type StreamOrdersStream = ResponseStream<pb::Order>;

    async fn stream_orders(
        &self,
        request: Request<pb::StreamOrdersRequest>,
    ) -> Result<Response<Self::StreamOrdersStream>, Status> {
        let caller = principal(&request)?.clone();
        let filter = self.stream_filter(&caller, request.get_ref())?;
        let store = Arc::clone(&self.store);
        let stream = self.streams.open(&caller.user_id, move |tx| async move {
            // Newest first, a page at a time: memory stays bounded however
            // many orders there are, and the send waits for the client.
            let mut before = None;
            loop {
                let page = store
                    .list_orders(&filter, before, STREAM_PAGE)
                    .await
                    .map_err(repo_status)?;
                for order in &page {
                    if tx.send(order_to_proto(order)).await.is_err() {
                        return Ok(());
                    }
                }
                if page.len() < STREAM_PAGE as usize {
                    return Ok(());
                }
                before = page.last().map(|o| o.id);
            }
        })?;
        Ok(Response::new(stream))
    }

    type WatchOrderStream = ResponseStream<pb::OrderUpdate>;

    async fn watch_order(
        &self,
        request: Request<pb::WatchOrderRequest>,
    ) -> Result<Response<Self::WatchOrderStream>, Status> {
        let caller = principal(&request)?.clone();
        let id = parse_id(&request.get_ref().order_id)
            .map_err(|e| ServiceError::invalid("order_id", &e))?;
        // Subscribe before the first read: a change committed in between
        // is then both in the feed and after the version we read.
        let mut changes = self.store.changes();
        let mut order = self.visible_order(&caller, id).await?;
        let key = id.to_string();
        let store = Arc::clone(&self.store);
        let resync = self.watch_resync;
        let stream = self.streams.open(&caller.user_id, move |tx| async move {
            if tx.send(order_update(&order)).await.is_err() || order.status.is_terminal() {
                return Ok(());
            }
            loop {
                tokio::select! {
                    notice = changes.recv() => match notice {
                        Ok(Notice::Changed(changed)) if *changed == *key => {}
                        Ok(Notice::Resync) => {}
                        Ok(Notice::Changed(_)) => continue,
                        // Missed notices: the events table still has it all.
                        Err(RecvError::Lagged(_)) => {}
                        Err(RecvError::Closed) => {
                            return Err(Status::unavailable("order change feed closed"));
                        }
                    },
                    _ = tokio::time::sleep(resync) => {}
                    _ = tx.closed() => return Ok(()),
                }
                for event in store
                    .events_after(id, order.version)
                    .await
                    .map_err(repo_status)?
                {
                    order.apply(&event);
                    if tx.send(order_update(&order)).await.is_err() || order.status.is_terminal() {
                        return Ok(());
                    }
                }
            }
        })?;
        Ok(Response::new(stream))
    }

    async fn batch_create_orders(
        &self,
        request: Request<Streaming<pb::CreateOrderRequest>>,
    ) -> Result<Response<pb::BatchCreateOrdersResponse>, Status> {
        let caller = principal(&request)?.clone();
        let _permit = self.streams.admit(&caller.user_id)?;
        let mut inbound = request.into_inner();
        let this = self.clone();
        let response = guarded(async move {
            let mut response = pb::BatchCreateOrdersResponse::default();
            let mut index = 0usize;
            while let Some(item) = inbound.message().await? {
                if index == MAX_BATCH_ORDERS {
                    return Err(Status::invalid_argument(format!(
                        "a batch holds at most {MAX_BATCH_ORDERS} orders; the first \
                         {MAX_BATCH_ORDERS} were processed (retrying them is safe with request ids)"
                    )));
                }
                match this.create(&caller, item).await {
                    Ok(order) => response.orders.push(order_to_proto(&order)),
                    Err(e) => {
                        let status = Status::from(e);
                        response.errors.push(pb::BatchCreateOrderError {
                            index: index as i32,
                            code: status.code() as i32,
                            message: status.message().to_owned(),
                        });
                    }
                }
                index += 1;
            }
            response.success_count = response.orders.len() as i32;
            response.failure_count = response.errors.len() as i32;
            Ok(response)
        })
        .await?;
        Ok(Response::new(response))
    }

    type ProcessOrdersStream = ResponseStream<pb::ProcessOrderResponse>;

    async fn process_orders(
        &self,
        request: Request<Streaming<pb::ProcessOrderRequest>>,
    ) -> Result<Response<Self::ProcessOrdersStream>, Status> {
        let caller = principal(&request)?.clone();
        let mut inbound = request.into_inner();
        let this = self.clone();
        let stream = self
            .streams
            .open(&caller.user_id.clone(), move |tx| async move {
                // One response per request, in request order.
                while let Some(item) = inbound.message().await? {
                    let response = this.process_one(&caller, item).await?;
                    if tx.send(response).await.is_err() {
                        return Ok(());
                    }
                }
                Ok(())
            })?;
        Ok(Response::new(stream))
    }

    async fn cancel_order(
        &self,
        request: Request<pb::CancelOrderRequest>,
    ) -> Result<Response<pb::Order>, Status> {
        let caller = principal(&request)?.clone();
        let order = self.cancel(&caller, request.into_inner()).await?;
        Ok(Response::new(order_to_proto(&order)))
    }
}
