//! `shop.order.v1.OrderService`.

use std::{pin::Pin, sync::Arc};

use chrono::{SubsecRound as _, Utc};
use shop_auth::Principal;
use shop_middleware::{auth::principal, pagination::PageTokenCodec};
use shop_proto::order::v1::{self as pb, order_service_server::OrderService};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};
use uuid::Uuid;

use super::convert::{order_to_proto, parse_id, status_from_proto};
use crate::{
    domain::{
        CurrencyCode, NewOrder, Order, OrderFilter, OrderStatus, PlacedOrder, RequestId,
        Violations, fingerprint, total_cents, validate_items,
    },
    error::ServiceError,
    repo::OrderRepo,
    users::{UserClient, ensure_active},
};

/// Default ListOrders page size.
const DEFAULT_PAGE_SIZE: u32 = 50;
/// Largest ListOrders page size; larger requests are clamped.
const MAX_PAGE_SIZE: u32 = 100;
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
}

impl std::fmt::Debug for OrderGrpc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrderGrpc")
            .field("backend", &self.store.backend())
            .finish_non_exhaustive()
    }
}

impl OrderGrpc {
    /// A service over `store` that checks users through `users`.
    pub fn new(
        store: Arc<dyn OrderRepo>,
        users: UserClient,
        page_tokens: PageTokenCodec,
    ) -> OrderGrpc {
        OrderGrpc {
            store,
            users,
            page_tokens,
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
        let page_size = match req.page_size {
            n if n < 0 => {
                v.add("page_size", "must not be negative");
                DEFAULT_PAGE_SIZE
            }
            0 => DEFAULT_PAGE_SIZE,
            n => (n as u32).min(MAX_PAGE_SIZE),
        };
        let status = v.check("status", status_from_proto(req.status)).flatten();
        let Some(user_id) = user_id else {
            v.into_result()?;
            return Err(ServiceError::invalid("user_id", "is required"));
        };
        let scope = format!(
            "shop.order.v1.ListOrders|{user_id}|{}",
            status.map(OrderStatus::as_str).unwrap_or("")
        );
        let before = if req.page_token.is_empty() {
            None
        } else {
            match self.page_tokens.decode(scope.as_bytes(), &req.page_token) {
                Ok(cursor) => match Uuid::from_slice(&cursor) {
                    Ok(id) => Some(id),
                    Err(_) => {
                        v.add("page_token", "page_token is malformed");
                        None
                    }
                },
                Err(e) => {
                    v.add("page_token", e.to_string());
                    None
                }
            }
        };
        v.into_result()?;
        if !caller.may_act_for(&user_id.to_string()) {
            return Err(ServiceError::NotFound("orders"));
        }

        let filter = OrderFilter { user_id, status };
        let mut orders = self
            .store
            .list_orders(&filter, before, page_size + 1)
            .await?;
        let next_page_token = if orders.len() > page_size as usize {
            orders.truncate(page_size as usize);
            let last = orders.last().map(|o| o.id).unwrap_or(Uuid::nil());
            self.page_tokens.encode(scope.as_bytes(), last.as_bytes())
        } else {
            String::new()
        };
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

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

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
        _request: Request<pb::StreamOrdersRequest>,
    ) -> Result<Response<Self::StreamOrdersStream>, Status> {
        Err(Status::unimplemented("StreamOrders is not implemented yet"))
    }

    type WatchOrderStream = ResponseStream<pb::OrderUpdate>;

    async fn watch_order(
        &self,
        _request: Request<pb::WatchOrderRequest>,
    ) -> Result<Response<Self::WatchOrderStream>, Status> {
        Err(Status::unimplemented("WatchOrder is not implemented yet"))
    }

    async fn batch_create_orders(
        &self,
        _request: Request<Streaming<pb::CreateOrderRequest>>,
    ) -> Result<Response<pb::BatchCreateOrdersResponse>, Status> {
        Err(Status::unimplemented(
            "BatchCreateOrders is not implemented yet",
        ))
    }

    type ProcessOrdersStream = ResponseStream<pb::ProcessOrderResponse>;

    async fn process_orders(
        &self,
        _request: Request<Streaming<pb::ProcessOrderRequest>>,
    ) -> Result<Response<Self::ProcessOrdersStream>, Status> {
        Err(Status::unimplemented(
            "ProcessOrders is not implemented yet",
        ))
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
