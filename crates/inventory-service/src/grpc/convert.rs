//! Domain values to and from their protobuf messages.

use chrono::{DateTime, Utc};
use shop_proto::inventory::v1 as pb;

use crate::{
    app::Availability,
    domain::{Product, Reservation, ReservationStatus},
};

pub(crate) fn timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: at.timestamp_subsec_nanos() as i32,
    }
}

pub(crate) fn product_to_proto(p: &Product) -> pb::Product {
    pb::Product {
        sku: p.sku.clone(),
        name: p.name.clone(),
        unit_price_cents: p.unit_price_cents,
        currency_code: p.currency_code.clone(),
        active: p.active,
        on_hand: p.on_hand,
        reserved: p.reserved,
        available: p.available(),
        updated_at: Some(timestamp(p.updated_at)),
    }
}

pub(crate) fn reservation_to_proto(r: &Reservation) -> pb::Reservation {
    pb::Reservation {
        order_id: r.order_id.to_string(),
        lines: r
            .lines
            .iter()
            .map(|l| pb::ReservationLine {
                sku: l.sku.clone(),
                quantity: l.quantity,
                unit_price_cents: l.unit_price_cents,
            })
            .collect(),
        currency_code: r.currency_code.clone(),
        status: match r.status {
            ReservationStatus::Pending => pb::ReservationStatus::Pending,
            ReservationStatus::Confirmed => pb::ReservationStatus::Confirmed,
            ReservationStatus::Released => pb::ReservationStatus::Released,
            ReservationStatus::Expired => pb::ReservationStatus::Expired,
        } as i32,
        expires_at: Some(timestamp(r.expires_at)),
    }
}

pub(crate) fn stock_update(a: &Availability) -> pb::StockUpdate {
    pb::StockUpdate {
        sku: a.sku.clone(),
        available: a.available,
        updated_at: Some(timestamp(a.updated_at)),
    }
}
