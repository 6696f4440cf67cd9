//! `shop.order.v1.OrderService`.

use std::time::Duration;

use shop_auth::Principal;
use shop_core::{
    error::AppError,
    pagination::{PageTokenCodec, page_size},
};
use shop_proto::order::v1::{self as pb, order_service_server::OrderService};
use shop_server::{
    principal,
    streams::{ResponseStream, Streams, guarded},
};
use tonic::{Request, Response, Status, Streaming};
use uuid::Uuid;

use super::convert::{order_to_proto, parse_id, status_from_proto};
use crate::{
    app::{Orders, PlaceOrder, Repeat, StatusChange},
    domain::{
        CurrencyCode, Order, OrderFilter, OrderStatus, RequestId, Violations, validate_items,
    },
};

/// Orders read per database round trip while streaming a user's orders.
const STREAM_PAGE: u32 = 100;
/// Most orders in one BatchCreateOrders stream.
pub(crate) const MAX_BATCH_ORDERS: usize = 1000;

/// Longest cancellation reason, in characters.
const MAX_REASON_CHARS: usize = 500;

/// The OrderService implementation: decodes requests into the values the
/// use cases take ([`Orders`]), calls them, encodes what they return.
#[derive(Clone, Debug)]
pub struct OrderGrpc {
    orders: Orders,
    page_tokens: PageTokenCodec,
    streams: Streams,
    watch_resync: Duration,
}

impl OrderGrpc {
    /// The service over the use cases `orders`. Watchers re-read their
    /// order every `watch_resync` even without a change notice, as a
    /// safety net.
    pub fn new(
        orders: Orders,
        page_tokens: PageTokenCodec,
        streams: Streams,
        watch_resync: Duration,
    ) -> OrderGrpc {
        OrderGrpc {
            orders,
            page_tokens,
            streams,
            watch_resync,
        }
    }

    async fn list(
        &self,
        caller: &Principal,
        req: pb::ListOrdersRequest,
    ) -> Result<pb::ListOrdersResponse, AppError> {
        let mut v = Violations::new();
        let user_id = whose(caller, &req.user_id, &mut v);
        let page_size = page_size(req.page_size, &mut v);
        let status = v.check("status", status_from_proto(req.status)).flatten();
        let Some(user_id) = user_id else {
            v.into_result()?;
            return Err(AppError::invalid("user_id", "is required"));
        };
        let scope = format!(
            "shop.order.v1.ListOrders|{user_id}|{}",
            status.map(OrderStatus::as_str).unwrap_or("")
        );
        let before = self
            .page_tokens
            .decode_id(scope.as_bytes(), &req.page_token, &mut v);
        v.into_result()?;

        let filter = OrderFilter { user_id, status };
        let mut orders = self
            .orders
            .list(caller, &filter, before, page_size + 1)
            .await?;
        let next_page_token =
            self.page_tokens
                .next_page(scope.as_bytes(), &mut orders, page_size, |o| o.id);
        Ok(pb::ListOrdersResponse {
            orders: orders.iter().map(order_to_proto).collect(),
            next_page_token,
        })
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
        match self
            .orders
            .change_status(caller, id, to, None, Repeat::Refuse)
            .await
        {
            Ok(StatusChange::Done(moved)) => Ok(pb::ProcessOrderResponse {
                order_id: req.order_id.clone(),
                success: true,
                error_message: String::new(),
                order: Some(order_to_proto(&moved)),
            }),
            Ok(StatusChange::Refused { order, why }) => Ok(refused(Some(&order), why)),
            Err(AppError::NotFound(_)) => Ok(refused(None, "order not found".into())),
            Err(AppError::Aborted(why)) => Ok(refused(None, why.into())),
            Err(other) => Err(other.into()),
        }
    }
}

/// Whose orders a list or stream is about: the named user, or the caller
/// when none is named.
fn whose(caller: &Principal, user_id: &str, v: &mut Violations) -> Option<Uuid> {
    if user_id.is_empty() {
        Uuid::parse_str(&caller.user_id).ok()
    } else {
        v.check("user_id", parse_id(user_id))
    }
}

/// Decodes a CreateOrderRequest, every invalid field at once.
fn decode_order(req: pb::CreateOrderRequest) -> Result<PlaceOrder, AppError> {
    let mut v = Violations::new();
    let user_id = v.check("user_id", parse_id(&req.user_id));
    let items = validate_items(
        req.items
            .into_iter()
            .map(|i| (i.product_id, i.quantity, i.unit_price_cents)),
        &mut v,
    );
    // Optional: the catalogue's currency when empty.
    let currency = if req.currency_code.is_empty() {
        None
    } else {
        v.check("currency_code", CurrencyCode::parse(&req.currency_code))
    };
    let request_id = if req.request_id.is_empty() {
        Some(RequestId::generate())
    } else {
        v.check("request_id", RequestId::parse(&req.request_id))
    };
    v.into_result()?;
    let (Some(user_id), Some(request_id)) = (user_id, request_id) else {
        unreachable!("every field parsed when there is no violation");
    };
    Ok(PlaceOrder {
        user_id,
        items,
        currency,
        request_id,
    })
}

/// Decodes a CancelOrderRequest: the order and the optional reason.
fn decode_cancel(req: &pb::CancelOrderRequest) -> Result<(Uuid, Option<&str>), AppError> {
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
    Ok((id, (!reason.is_empty()).then_some(reason)))
}

fn order_update(order: &Order) -> pb::OrderUpdate {
    pb::OrderUpdate {
        order: Some(order_to_proto(order)),
        updated_at: Some(super::convert::timestamp(order.updated_at)),
    }
}

#[tonic::async_trait]
impl OrderService for OrderGrpc {
    async fn create_order(
        &self,
        request: Request<pb::CreateOrderRequest>,
    ) -> Result<Response<pb::Order>, Status> {
        let caller = principal(&request)?.clone();
        let order = decode_order(request.into_inner())?;
        let placed = self.orders.place(&caller, order).await?;
        Ok(Response::new(order_to_proto(&placed)))
    }

    async fn get_order(
        &self,
        request: Request<pb::GetOrderRequest>,
    ) -> Result<Response<pb::Order>, Status> {
        let caller = principal(&request)?;
        let id =
            parse_id(&request.get_ref().order_id).map_err(|e| AppError::invalid("order_id", &e))?;
        let order = self.orders.get(caller, id).await?;
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
        let req = request.get_ref();
        let mut v = Violations::new();
        let user_id = whose(&caller, &req.user_id, &mut v);
        let status = v.check("status", status_from_proto(req.status)).flatten();
        v.into_result().map_err(AppError::from)?;
        let user_id = user_id.ok_or_else(|| AppError::invalid("user_id", "is required"))?;
        let filter = OrderFilter { user_id, status };
        self.orders.authorize_list(&caller, &filter)?;
        let orders = self.orders.clone();
        let stream = self.streams.open(move |tx| async move {
            // Newest first, a page at a time: memory stays bounded however
            // many orders there are, and the send waits for the client.
            let mut before = None;
            loop {
                let page = orders.list(&caller, &filter, before, STREAM_PAGE).await?;
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
        let id =
            parse_id(&request.get_ref().order_id).map_err(|e| AppError::invalid("order_id", &e))?;
        let mut watch = self.orders.watch(&caller, id, self.watch_resync).await?;
        let stream = self.streams.open(move |tx| async move {
            let first = watch.current();
            if tx.send(order_update(first)).await.is_err() || first.status.is_terminal() {
                return Ok(());
            }
            loop {
                let states = tokio::select! {
                    states = watch.changes() => states?,
                    _ = tx.closed() => return Ok(()),
                };
                for order in &states {
                    if tx.send(order_update(order)).await.is_err() || order.status.is_terminal() {
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
                let placed = match decode_order(item) {
                    Ok(order) => this.orders.place(&caller, order).await,
                    Err(invalid) => Err(invalid),
                };
                match placed {
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
        let stream = self.streams.open(move |tx| async move {
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
        let caller = principal(&request)?;
        let (id, reason) = decode_cancel(request.get_ref())?;
        match self
            .orders
            .change_status(caller, id, OrderStatus::Cancelled, reason, Repeat::Accept)
            .await?
        {
            StatusChange::Done(order) => Ok(Response::new(order_to_proto(&order))),
            StatusChange::Refused { why, .. } => Err(AppError::FailedPrecondition(why).into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;
    use shop_core::pagination::MAX_TOKEN_CHARS;

    use super::*;
    use crate::domain::{MAX_ITEMS, MAX_PRODUCT_ID_CHARS, MAX_QUANTITY, MAX_REQUEST_ID_CHARS};

    /// The `max_request_bytes` the proto declares for `method`.
    fn declared(method: &str) -> usize {
        shop_proto::policy::lookup(&format!("/shop.order.v1.OrderService/{method}"))
            .expect("a declared method")
            .max_request_bytes as usize
    }

    /// The widest character UTF-8 has: 4 bytes.
    const WIDE: char = '\u{1D11E}';

    #[test]
    fn the_largest_valid_requests_fit_their_declared_limits() {
        let id = Uuid::now_v7().to_string();
        let largest_order = pb::CreateOrderRequest {
            user_id: id.clone(),
            items: vec![
                pb::OrderItem {
                    // Skus are ASCII.
                    product_id: "s".repeat(MAX_PRODUCT_ID_CHARS),
                    quantity: MAX_QUANTITY,
                    // The largest price whose total still fits.
                    unit_price_cents: i64::MAX / (i64::from(MAX_QUANTITY) * MAX_ITEMS as i64),
                };
                MAX_ITEMS
            ],
            currency_code: "USD".into(),
            request_id: "~".repeat(MAX_REQUEST_ID_CHARS),
        };
        assert!(decode_order(largest_order.clone()).is_ok(), "valid");
        for method in ["CreateOrder", "BatchCreateOrders"] {
            assert!(
                largest_order.encoded_len() <= declared(method),
                "{method}: {} > {}",
                largest_order.encoded_len(),
                declared(method)
            );
        }

        let largest_cancel = pb::CancelOrderRequest {
            order_id: id.clone(),
            reason: WIDE.to_string().repeat(MAX_REASON_CHARS),
        };
        assert!(decode_cancel(&largest_cancel).is_ok(), "valid");
        assert!(largest_cancel.encoded_len() <= declared("CancelOrder"));

        let largest_list = pb::ListOrdersRequest {
            user_id: id.clone(),
            page_size: i32::MAX,
            page_token: "A".repeat(MAX_TOKEN_CHARS),
            status: i32::MAX,
        };
        assert!(largest_list.encoded_len() <= declared("ListOrders"));
        let by_id = pb::GetOrderRequest {
            order_id: id.clone(),
        }
        .encoded_len();
        for method in ["GetOrder", "WatchOrder", "StreamOrders", "ProcessOrders"] {
            // An id and at most an enum or a small integer besides.
            assert!(by_id + 16 <= declared(method), "{method}");
        }
    }
}
