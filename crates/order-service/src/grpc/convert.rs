//! Conversions between the proto messages and the domain types.

use chrono::{DateTime, Utc};
use shop_proto::order::v1 as pb;
use uuid::Uuid;

use crate::domain::{Order, OrderStatus};

pub(crate) fn timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: at.timestamp_subsec_nanos() as i32,
    }
}

pub(crate) fn order_to_proto(order: &Order) -> pb::Order {
    pb::Order {
        id: order.id.to_string(),
        user_id: order.user_id.to_string(),
        items: order
            .items
            .iter()
            .map(|item| pb::OrderItem {
                product_id: item.product_id.clone(),
                quantity: item.quantity,
                unit_price_cents: item.unit_price_cents,
            })
            .collect(),
        total_cents: order.total_cents,
        currency_code: order.currency_code.clone(),
        status: status_to_proto(order.status) as i32,
        created_at: Some(timestamp(order.created_at)),
        updated_at: Some(timestamp(order.updated_at)),
    }
}

pub(crate) fn status_to_proto(status: OrderStatus) -> pb::OrderStatus {
    match status {
        OrderStatus::Pending => pb::OrderStatus::Pending,
        OrderStatus::Confirmed => pb::OrderStatus::Confirmed,
        OrderStatus::Shipped => pb::OrderStatus::Shipped,
        OrderStatus::Delivered => pb::OrderStatus::Delivered,
        OrderStatus::Cancelled => pb::OrderStatus::Cancelled,
    }
}

/// `Ok(None)` for UNSPECIFIED.
pub(crate) fn status_from_proto(value: i32) -> Result<Option<OrderStatus>, String> {
    match pb::OrderStatus::try_from(value) {
        Ok(pb::OrderStatus::Unspecified) => Ok(None),
        Ok(pb::OrderStatus::Pending) => Ok(Some(OrderStatus::Pending)),
        Ok(pb::OrderStatus::Confirmed) => Ok(Some(OrderStatus::Confirmed)),
        Ok(pb::OrderStatus::Shipped) => Ok(Some(OrderStatus::Shipped)),
        Ok(pb::OrderStatus::Delivered) => Ok(Some(OrderStatus::Delivered)),
        Ok(pb::OrderStatus::Cancelled) => Ok(Some(OrderStatus::Cancelled)),
        Err(_) => Err(format!("{value} is not an OrderStatus")),
    }
}

pub(crate) fn parse_id(raw: &str) -> Result<Uuid, String> {
    if raw.is_empty() {
        return Err("is required".into());
    }
    Uuid::parse_str(raw).map_err(|_| "is not a valid UUID".into())
}
