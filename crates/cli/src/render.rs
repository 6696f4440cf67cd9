//! Printing results: aligned columns for people, one JSON object per line
//! for scripts.

use serde_json::{Value, json};
use shop_proto::{inventory::v1 as inventory, order::v1 as orders, user::v1 as users};

use crate::cli::Output;

/// One printable result: named fields in display order.
pub(crate) struct Record(Vec<(&'static str, Value)>);

impl Record {
    fn json(&self) -> Value {
        Value::Object(
            self.0
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
        )
    }
}

fn cell(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        Value::Array(items) => items.iter().map(cell).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// Prints records in the chosen format.
pub(crate) struct Printer {
    output: Output,
}

impl Printer {
    pub(crate) fn new(output: Output) -> Printer {
        Printer { output }
    }

    /// A list (or a single record) with a header, and an optional note
    /// (such as the next page token) after it.
    pub(crate) fn table(&self, records: &[Record], note: Option<(&str, String)>) {
        match self.output {
            Output::Json => {
                for record in records {
                    println!("{}", record.json());
                }
                if let Some((key, value)) = note {
                    println!("{}", json!({ key: value }));
                }
            }
            Output::Table => {
                let Some(first) = records.first() else {
                    println!("(none)");
                    return;
                };
                let headers: Vec<&str> = first.0.iter().map(|(k, _)| *k).collect();
                let rows: Vec<Vec<String>> = records
                    .iter()
                    .map(|r| r.0.iter().map(|(_, v)| cell(v)).collect())
                    .collect();
                let widths: Vec<usize> = headers
                    .iter()
                    .enumerate()
                    .map(|(i, h)| {
                        rows.iter()
                            .map(|r| r[i].chars().count())
                            .chain([h.len()])
                            .max()
                            .unwrap_or(0)
                    })
                    .collect();
                let line = |cells: Vec<String>| {
                    cells
                        .iter()
                        .zip(&widths)
                        .map(|(c, w)| format!("{c:<w$}"))
                        .collect::<Vec<_>>()
                        .join("  ")
                        .trim_end()
                        .to_owned()
                };
                println!(
                    "{}",
                    line(headers.iter().map(|h| h.to_uppercase()).collect())
                );
                for row in rows {
                    println!("{}", line(row));
                }
                if let Some((key, value)) = note.filter(|(_, v)| !v.is_empty()) {
                    println!("{key}: {value}");
                }
            }
        }
    }

    /// One record of a stream, printed as soon as it arrives.
    pub(crate) fn line(&self, record: &Record) {
        match self.output {
            Output::Json => println!("{}", record.json()),
            Output::Table => println!(
                "{}",
                record
                    .0
                    .iter()
                    .map(|(k, v)| format!("{k}={}", cell(v)))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
        }
    }
}

fn time(t: &Option<prost_types::Timestamp>) -> Value {
    t.as_ref()
        .and_then(|t| chrono::DateTime::from_timestamp(t.seconds, t.nanos as u32))
        .map(|t| Value::String(t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)))
        .unwrap_or(Value::Null)
}

/// `USER_STATUS_ACTIVE` -> `active`.
fn short(name: &str, prefix: &str) -> String {
    name.trim_start_matches(prefix).to_ascii_lowercase()
}

pub(crate) fn user(u: &users::User) -> Record {
    let status = users::UserStatus::try_from(u.status)
        .map(|s| short(s.as_str_name(), "USER_STATUS_"))
        .unwrap_or_else(|_| u.status.to_string());
    let roles: Vec<Value> = u
        .roles
        .iter()
        .map(|r| {
            users::Role::try_from(*r)
                .map(|r| Value::String(short(r.as_str_name(), "ROLE_")))
                .unwrap_or_else(|_| json!(r))
        })
        .collect();
    Record(vec![
        ("id", json!(u.id)),
        ("username", json!(u.username)),
        ("email", json!(u.email)),
        ("first_name", json!(u.first_name)),
        ("last_name", json!(u.last_name)),
        ("status", json!(status)),
        ("roles", Value::Array(roles)),
        ("bio", json!(u.bio)),
        ("created_at", time(&u.created_at)),
    ])
}

fn order_status(status: i32) -> String {
    orders::OrderStatus::try_from(status)
        .map(|s| short(s.as_str_name(), "ORDER_STATUS_"))
        .unwrap_or_else(|_| status.to_string())
}

pub(crate) fn order(o: &orders::Order) -> Record {
    let items: Vec<Value> = o
        .items
        .iter()
        .map(|i| {
            json!(format!(
                "{}:{}:{}",
                i.product_id, i.quantity, i.unit_price_cents
            ))
        })
        .collect();
    Record(vec![
        ("id", json!(o.id)),
        ("user_id", json!(o.user_id)),
        ("status", json!(order_status(o.status))),
        ("total_cents", json!(o.total_cents)),
        ("currency", json!(o.currency_code)),
        ("items", Value::Array(items)),
        ("created_at", time(&o.created_at)),
        ("updated_at", time(&o.updated_at)),
    ])
}

pub(crate) fn product(p: &inventory::Product) -> Record {
    Record(vec![
        ("sku", json!(p.sku)),
        ("name", json!(p.name)),
        ("unit_price_cents", json!(p.unit_price_cents)),
        ("currency", json!(p.currency_code)),
        ("active", json!(p.active)),
        ("on_hand", json!(p.on_hand)),
        ("reserved", json!(p.reserved)),
        ("available", json!(p.available)),
        ("updated_at", time(&p.updated_at)),
    ])
}

pub(crate) fn stock_update(u: &inventory::StockUpdate) -> Record {
    Record(vec![
        ("sku", json!(u.sku)),
        ("available", json!(u.available)),
        ("updated_at", time(&u.updated_at)),
    ])
}

pub(crate) fn order_update(u: &orders::OrderUpdate) -> Record {
    match &u.order {
        Some(o) => Record(vec![
            ("id", json!(o.id)),
            ("status", json!(order_status(o.status))),
            ("updated_at", time(&u.updated_at)),
        ]),
        None => Record(vec![("updated_at", time(&u.updated_at))]),
    }
}

pub(crate) fn processed(r: &orders::ProcessOrderResponse) -> Record {
    Record(vec![
        ("order_id", json!(r.order_id)),
        ("success", json!(r.success)),
        (
            "status",
            r.order
                .as_ref()
                .map(|o| json!(order_status(o.status)))
                .unwrap_or(Value::Null),
        ),
        ("error", json!(r.error_message)),
    ])
}

pub(crate) fn message(key: &'static str, text: impl Into<String>) -> Record {
    Record(vec![(key, json!(text.into()))])
}

/// Parses `active`, `ACTIVE` or `USER_STATUS_ACTIVE`.
pub(crate) fn parse_user_status(s: &str) -> anyhow::Result<i32> {
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("USER_STATUS_") {
        upper
    } else {
        format!("USER_STATUS_{upper}")
    };
    users::UserStatus::from_str_name(&name)
        .map(|s| s as i32)
        .ok_or_else(|| anyhow::anyhow!("unknown user status {s:?}"))
}

/// Parses `shipped`, `SHIPPED` or `ORDER_STATUS_SHIPPED`.
pub(crate) fn parse_order_status(s: &str) -> anyhow::Result<i32> {
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("ORDER_STATUS_") {
        upper
    } else {
        format!("ORDER_STATUS_{upper}")
    };
    orders::OrderStatus::from_str_name(&name)
        .map(|s| s as i32)
        .ok_or_else(|| anyhow::anyhow!("unknown order status {s:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_parse_in_every_spelling() {
        assert_eq!(
            parse_order_status("shipped").unwrap(),
            orders::OrderStatus::Shipped as i32
        );
        assert_eq!(parse_order_status("ORDER_STATUS_CANCELLED").unwrap(), 5);
        assert!(parse_order_status("lost").is_err());
        assert_eq!(parse_user_status("Suspended").unwrap(), 3);
    }

    #[test]
    fn records_render_cells() {
        let r = order(&orders::Order {
            id: "o1".into(),
            status: 3,
            items: vec![orders::OrderItem {
                product_id: "p".into(),
                quantity: 2,
                unit_price_cents: 5,
            }],
            ..Default::default()
        });
        let json = r.json();
        assert_eq!(json["status"], "shipped");
        assert_eq!(json["items"][0], "p:2:5");
        assert_eq!(cell(&json["created_at"]), "-");
    }
}
