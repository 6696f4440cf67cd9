//! `shop.inventory.v1.InventoryService`: decode and validate, call a use
//! case, encode.

mod convert;

use std::collections::HashSet;

use shop_core::{
    currency::CurrencyCode,
    error::AppError,
    pagination::{PageTokenCodec, page_size},
    status,
};
use shop_proto::inventory::v1::{self as pb, inventory_service_server::InventoryService};
use shop_server::{
    principal, service_caller,
    streams::{ResponseStream, Streams},
};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use convert::{product_to_proto, reservation_to_proto, stock_update};

use crate::{
    app::Inventory,
    domain::{
        MAX_CONFIRMATIONS, MAX_ITEMS, MAX_NAME_CHARS, MAX_QUANTITY, MAX_REASON_CHARS,
        MAX_REQUEST_ID_CHARS, MAX_RESERVATIONS, MAX_STOCK_DELTA, MAX_UNIT_PRICE_CENTS,
        MAX_WATCHED_SKUS, ProductDraft, ReservationStatus, ReserveItem, Sku, StockChange,
        Violations,
    },
};

/// The InventoryService implementation.
#[derive(Clone, Debug)]
pub struct InventoryGrpc {
    inventory: Inventory,
    page_tokens: PageTokenCodec,
    streams: Streams,
}

impl InventoryGrpc {
    /// The service over the use cases `inventory`.
    pub fn new(inventory: Inventory, page_tokens: PageTokenCodec, streams: Streams) -> Self {
        InventoryGrpc {
            inventory,
            page_tokens,
            streams,
        }
    }
}

fn sku(field: &str, raw: &str) -> Result<Sku, AppError> {
    Sku::parse(raw).map_err(|e| AppError::invalid(field, &e))
}

fn order_id(raw: &str) -> Result<Uuid, AppError> {
    Uuid::parse_str(raw).map_err(|_| AppError::invalid("order_id", "must be a UUID"))
}

/// The order ids of a ConfirmReservations: 1..=[`MAX_CONFIRMATIONS`], each
/// a UUID, each once.
fn decode_order_ids(raw: &[String]) -> Result<Vec<Uuid>, AppError> {
    if raw.is_empty() || raw.len() > MAX_CONFIRMATIONS {
        return Err(AppError::invalid(
            "order_ids",
            &format!("must hold 1..={MAX_CONFIRMATIONS} order ids"),
        ));
    }
    let mut v = Violations::new();
    let mut ids = Vec::with_capacity(raw.len());
    let mut seen = HashSet::with_capacity(raw.len());
    for (i, id) in raw.iter().enumerate() {
        match Uuid::parse_str(id) {
            Ok(id) if seen.insert(id) => ids.push(id),
            Ok(_) => v.add(format!("order_ids[{i}]"), "is repeated"),
            Err(_) => v.add(format!("order_ids[{i}]"), "must be a UUID"),
        }
    }
    v.into_result()?;
    Ok(ids)
}

fn decode_draft(req: pb::PutProductRequest) -> Result<ProductDraft, AppError> {
    let mut v = Violations::new();
    let sku = v.check("sku", Sku::parse(&req.sku));
    let name = req.name.trim();
    if name.is_empty() {
        v.add("name", "is required");
    } else if name.chars().count() > MAX_NAME_CHARS {
        v.add(
            "name",
            format!("must be at most {MAX_NAME_CHARS} characters"),
        );
    }
    if !(1..=MAX_UNIT_PRICE_CENTS).contains(&req.unit_price_cents) {
        v.add(
            "unit_price_cents",
            format!("must be 1..={MAX_UNIT_PRICE_CENTS}"),
        );
    }
    let currency = v.check("currency_code", CurrencyCode::parse(&req.currency_code));
    v.into_result()?;
    match (sku, currency) {
        (Some(sku), Some(currency)) => Ok(ProductDraft {
            sku,
            name: name.to_owned(),
            unit_price_cents: req.unit_price_cents,
            currency,
            active: req.active,
        }),
        _ => Err(AppError::internal("violations recorded without a report")),
    }
}

fn decode_change(req: pb::AdjustStockRequest) -> Result<StockChange, AppError> {
    let mut v = Violations::new();
    let sku = v.check("sku", Sku::parse(&req.sku));
    if req.delta == 0 || req.delta.abs() > MAX_STOCK_DELTA {
        v.add(
            "delta",
            format!("must be non-zero and within +-{MAX_STOCK_DELTA}"),
        );
    }
    if req.reason.chars().count() > MAX_REASON_CHARS {
        v.add(
            "reason",
            format!("must be at most {MAX_REASON_CHARS} characters"),
        );
    }
    if req.request_id.is_empty() {
        v.add("request_id", "is required");
    } else if req.request_id.chars().count() > MAX_REQUEST_ID_CHARS {
        v.add(
            "request_id",
            format!("must be at most {MAX_REQUEST_ID_CHARS} characters"),
        );
    }
    v.into_result()?;
    let sku = sku.ok_or_else(|| AppError::internal("violations recorded without a report"))?;
    Ok(StockChange {
        sku,
        delta: req.delta,
        reason: req.reason,
        request_id: req.request_id,
    })
}

fn decode_reserve(req: &pb::ReserveStockRequest) -> Result<(Uuid, Vec<ReserveItem>), AppError> {
    let mut v = Violations::new();
    let id = v.check(
        "order_id",
        Uuid::parse_str(&req.order_id).map_err(|_| "must be a UUID".to_owned()),
    );
    if req.items.is_empty() || req.items.len() > MAX_ITEMS {
        // Checked before any item is looked at.
        return Err(AppError::invalid(
            "items",
            &format!("must hold 1..={MAX_ITEMS} items"),
        ));
    }
    let mut items = Vec::with_capacity(req.items.len());
    let mut seen = std::collections::HashSet::new();
    for (i, item) in req.items.iter().enumerate() {
        let sku = v.check(&format!("items[{i}].sku"), Sku::parse(&item.sku));
        if !(1..=MAX_QUANTITY).contains(&item.quantity) {
            v.add(
                format!("items[{i}].quantity"),
                format!("must be 1..={MAX_QUANTITY}"),
            );
        }
        if let Some(sku) = sku {
            if !seen.insert(sku.clone()) {
                v.add(format!("items[{i}].sku"), "appears more than once");
            }
            items.push(ReserveItem {
                sku,
                quantity: item.quantity,
            });
        }
    }
    v.into_result()?;
    let id = id.ok_or_else(|| AppError::internal("violations recorded without a report"))?;
    Ok((id, items))
}

/// Refuses a ReserveStocks whose list is not 1..=[`MAX_RESERVATIONS`]
/// long (before any reservation is looked at) or names an order id twice.
/// Each reservation's own checks are its result's, see [`reserve_one`].
fn check_reservations(asked: &[pb::ReserveStockRequest]) -> Result<(), AppError> {
    if asked.is_empty() || asked.len() > MAX_RESERVATIONS {
        return Err(AppError::invalid(
            "reservations",
            &format!("must hold 1..={MAX_RESERVATIONS} reservations"),
        ));
    }
    let mut v = Violations::new();
    let mut seen = HashSet::with_capacity(asked.len());
    for (i, reservation) in asked.iter().enumerate() {
        if !seen.insert(reservation.order_id.as_str()) {
            v.add(format!("reservations[{i}].order_id"), "is repeated");
        }
    }
    v.into_result().map_err(AppError::from)
}

impl InventoryGrpc {
    /// One reservation of a ReserveStocks, as ReserveStock answers it: the
    /// reservation, or ReserveStock's error as a `google.rpc.Status` (its
    /// details kept, an internal cause hidden as at the edge).
    /// Each one held is logged as ReserveStock logs it.
    async fn reserve_one(
        &self,
        asked: &pb::ReserveStockRequest,
        service: &str,
    ) -> pb::ReserveStockResult {
        let reserved = match decode_reserve(asked) {
            Ok((id, items)) => {
                let reserved = self.inventory.reserve(id, &items).await;
                if reserved.is_ok() {
                    tracing::info!(order_id = %id, service, "stock reserved");
                }
                reserved
            }
            Err(invalid) => Err(invalid),
        };
        let result = match reserved {
            Ok(reservation) => {
                pb::reserve_stock_result::Result::Reservation(reservation_to_proto(&reservation))
            }
            Err(error) => pb::reserve_stock_result::Result::Error(status::to_proto(&error.into())),
        };
        pb::ReserveStockResult {
            result: Some(result),
        }
    }
}

#[tonic::async_trait]
impl InventoryService for InventoryGrpc {
    async fn put_product(
        &self,
        request: Request<pb::PutProductRequest>,
    ) -> Result<Response<pb::Product>, Status> {
        let draft = decode_draft(request.into_inner())?;
        let product = self.inventory.put_product(&draft).await?;
        Ok(Response::new(product_to_proto(&product)))
    }

    async fn adjust_stock(
        &self,
        request: Request<pb::AdjustStockRequest>,
    ) -> Result<Response<pb::Product>, Status> {
        let change = decode_change(request.into_inner())?;
        let product = self.inventory.adjust_stock(&change).await?;
        Ok(Response::new(product_to_proto(&product)))
    }

    async fn get_product(
        &self,
        request: Request<pb::GetProductRequest>,
    ) -> Result<Response<pb::Product>, Status> {
        let sku = sku("sku", &request.get_ref().sku)?;
        let product = self.inventory.get_product(&sku).await?;
        Ok(Response::new(product_to_proto(&product)))
    }

    async fn list_products(
        &self,
        request: Request<pb::ListProductsRequest>,
    ) -> Result<Response<pb::ListProductsResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let size = page_size(req.page_size, &mut v);
        let scope = format!("shop.inventory.v1.ListProducts|{}", req.active_only);
        let after = if req.page_token.is_empty() {
            None
        } else {
            match self.page_tokens.decode(scope.as_bytes(), &req.page_token) {
                Ok(cursor) => String::from_utf8(cursor)
                    .map_err(|_| v.add("page_token", "is malformed"))
                    .ok(),
                Err(e) => {
                    v.add("page_token", e.to_string());
                    None
                }
            }
        };
        v.into_result().map_err(AppError::from)?;
        let mut products = self
            .inventory
            .list_products(after.as_deref(), req.active_only, size + 1)
            .await?;
        let mut next_page_token = String::new();
        if products.len() > size as usize {
            products.truncate(size as usize);
            if let Some(last) = products.last() {
                next_page_token = self
                    .page_tokens
                    .encode(scope.as_bytes(), last.sku.as_bytes());
            }
        }
        Ok(Response::new(pb::ListProductsResponse {
            products: products.iter().map(product_to_proto).collect(),
            next_page_token,
        }))
    }

    async fn reserve_stock(
        &self,
        request: Request<pb::ReserveStockRequest>,
    ) -> Result<Response<pb::Reservation>, Status> {
        let service = service_caller(&request)?.name.clone();
        let user = principal(&request).ok().map(|p| p.user_id.clone());
        let (id, items) = decode_reserve(request.get_ref())?;
        let reservation = self.inventory.reserve(id, &items).await?;
        tracing::info!(order_id = %id, service, user, "stock reserved");
        Ok(Response::new(reservation_to_proto(&reservation)))
    }

    async fn reserve_stocks(
        &self,
        request: Request<pb::ReserveStocksRequest>,
    ) -> Result<Response<pb::ReserveStocksResponse>, Status> {
        let service = service_caller(&request)?.name.clone();
        let asked = &request.get_ref().reservations;
        check_reservations(asked)?;
        // Together, so that their writes share the writer's batches.
        let results =
            futures_util::future::join_all(asked.iter().map(|r| self.reserve_one(r, &service)))
                .await;
        Ok(Response::new(pb::ReserveStocksResponse { results }))
    }

    async fn confirm_reservation(
        &self,
        request: Request<pb::ConfirmReservationRequest>,
    ) -> Result<Response<pb::Reservation>, Status> {
        let service = service_caller(&request)?.name.clone();
        let id = order_id(&request.get_ref().order_id)?;
        let reservation = self.inventory.confirm(id).await?;
        tracing::info!(order_id = %id, service, "reservation confirmed");
        Ok(Response::new(reservation_to_proto(&reservation)))
    }

    async fn confirm_reservations(
        &self,
        request: Request<pb::ConfirmReservationsRequest>,
    ) -> Result<Response<pb::ConfirmReservationsResponse>, Status> {
        let service = service_caller(&request)?.name.clone();
        let ids = decode_order_ids(&request.get_ref().order_ids)?;
        let reservations = self.inventory.confirm_all(&ids).await?;
        let confirmed = reservations
            .iter()
            .filter(|r| r.status == ReservationStatus::Confirmed)
            .count();
        tracing::info!(
            asked = ids.len(),
            confirmed,
            service,
            "reservations confirmed"
        );
        Ok(Response::new(pb::ConfirmReservationsResponse {
            reservations: reservations.iter().map(reservation_to_proto).collect(),
        }))
    }

    async fn release_reservation(
        &self,
        request: Request<pb::ReleaseReservationRequest>,
    ) -> Result<Response<pb::Reservation>, Status> {
        let service = service_caller(&request)?.name.clone();
        let id = order_id(&request.get_ref().order_id)?;
        let reservation = self.inventory.release(id).await?;
        tracing::info!(order_id = %id, service, "reservation released");
        Ok(Response::new(reservation_to_proto(&reservation)))
    }

    type WatchStockStream = ResponseStream<pb::StockUpdate>;

    async fn watch_stock(
        &self,
        request: Request<pb::WatchStockRequest>,
    ) -> Result<Response<Self::WatchStockStream>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        if req.skus.is_empty() || req.skus.len() > MAX_WATCHED_SKUS {
            return Err(AppError::invalid(
                "skus",
                &format!("must hold 1..={MAX_WATCHED_SKUS} skus"),
            )
            .into());
        }
        let mut skus = Vec::with_capacity(req.skus.len());
        for (i, raw) in req.skus.iter().enumerate() {
            if let Some(sku) = v.check(&format!("skus[{i}]"), Sku::parse(raw)) {
                if skus.contains(&sku) {
                    v.add(format!("skus[{i}]"), "appears more than once");
                }
                skus.push(sku);
            }
        }
        v.into_result().map_err(AppError::from)?;
        let mut watch = self.inventory.watch(skus).await?;
        let stream = self.streams.open(move |tx| async move {
            for current in watch.current() {
                if tx.send(stock_update(&current)).await.is_err() {
                    return Ok(());
                }
            }
            loop {
                let changed = tokio::select! {
                    changed = watch.changes() => changed?,
                    _ = tx.closed() => return Ok(()),
                };
                for availability in &changed {
                    if tx.send(stock_update(availability)).await.is_err() {
                        return Ok(());
                    }
                }
            }
        })?;
        Ok(Response::new(stream))
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;

    fn declared(method: &str) -> usize {
        shop_proto::policy::lookup(&format!("/shop.inventory.v1.InventoryService/{method}"))
            .expect("a declared method")
            .max_request_bytes as usize
    }

    #[test]
    fn the_largest_valid_requests_fit_their_declared_limits() {
        let sku = "s".repeat(crate::domain::MAX_SKU_CHARS);
        let put = pb::PutProductRequest {
            sku: sku.clone(),
            name: "\u{10348}".repeat(MAX_NAME_CHARS),
            unit_price_cents: MAX_UNIT_PRICE_CENTS,
            currency_code: "USD".into(),
            active: true,
        };
        assert!(
            put.encoded_len() <= declared("PutProduct"),
            "{}",
            put.encoded_len()
        );
        let adjust = pb::AdjustStockRequest {
            sku: sku.clone(),
            delta: -MAX_STOCK_DELTA,
            reason: "\u{10348}".repeat(MAX_REASON_CHARS),
            request_id: "\u{10348}".repeat(MAX_REQUEST_ID_CHARS),
        };
        assert!(
            adjust.encoded_len() <= declared("AdjustStock"),
            "{}",
            adjust.encoded_len()
        );
        let reserve = pb::ReserveStockRequest {
            order_id: Uuid::nil().to_string(),
            items: (0..MAX_ITEMS)
                .map(|_| pb::ReserveItem {
                    sku: sku.clone(),
                    quantity: MAX_QUANTITY,
                })
                .collect(),
        };
        assert!(
            reserve.encoded_len() <= declared("ReserveStock"),
            "{}",
            reserve.encoded_len()
        );
        let many = pb::ReserveStocksRequest {
            reservations: vec![reserve.clone(); MAX_RESERVATIONS],
        };
        assert!(
            many.encoded_len() <= declared("ReserveStocks"),
            "{}",
            many.encoded_len()
        );
        let watch = pb::WatchStockRequest {
            skus: (0..MAX_WATCHED_SKUS).map(|_| sku.clone()).collect(),
        };
        assert!(
            watch.encoded_len() <= declared("WatchStock"),
            "{}",
            watch.encoded_len()
        );
        let id = pb::ConfirmReservationRequest {
            order_id: Uuid::nil().to_string(),
        };
        assert!(id.encoded_len() <= declared("ConfirmReservation"));
        let many = pb::ConfirmReservationsRequest {
            order_ids: vec![Uuid::nil().to_string(); MAX_CONFIRMATIONS],
        };
        assert!(
            many.encoded_len() <= declared("ConfirmReservations"),
            "{}",
            many.encoded_len()
        );
        assert!(id.encoded_len() <= declared("ReleaseReservation"));
    }

    #[test]
    fn a_huge_item_list_is_one_violation_and_no_item_is_looked_at() {
        let req = pb::ReserveStockRequest {
            order_id: Uuid::nil().to_string(),
            items: vec![pb::ReserveItem::default(); MAX_ITEMS + 1],
        };
        let Err(AppError::InvalidArgument(violations)) = decode_reserve(&req) else {
            panic!("refused");
        };
        assert_eq!(violations.len(), 1);
        assert_eq!(violations[0].field, "items");
    }
}
