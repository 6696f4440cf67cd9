//! The catalogue and stock changes: who may change them, idempotency, the
//! floor under on_hand, pagination, and watching availability.

use shop_proto::inventory::v1::{
    AdjustStockRequest, ListProductsRequest, PutProductRequest, WatchStockRequest,
};
use tonic::Code;

use crate::helpers::{Fixture, authed};

fn put(sku: &str, price: i64) -> PutProductRequest {
    PutProductRequest {
        sku: sku.into(),
        name: "A thing".into(),
        unit_price_cents: price,
        currency_code: "eur".into(),
        active: true,
    }
}

fn adjust(sku: &str, delta: i64, request_id: &str) -> AdjustStockRequest {
    AdjustStockRequest {
        sku: sku.into(),
        delta,
        reason: "count".into(),
        request_id: request_id.into(),
    }
}

#[tokio::test]
async fn only_admins_change_the_catalogue_and_everyone_signed_in_reads_it() {
    let f = Fixture::spawn().await;
    let mut inventory = f.inventory.clone();
    let refused = inventory
        .put_product(authed(put("sku-1", 100), &f.customer))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    let refused = inventory
        .put_product(tonic::Request::new(put("sku-1", 100)))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);

    let product = inventory
        .put_product(authed(put("sku-1", 100), &f.admin))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(product.currency_code, "EUR");
    assert_eq!((product.on_hand, product.available), (0, 0));
    // A second put replaces the price and keeps the stock.
    f.product("sku-1", 100, 7).await;
    let repriced = inventory
        .put_product(authed(put("sku-1", 120), &f.admin))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((repriced.unit_price_cents, repriced.on_hand), (120, 7));
    assert_eq!(f.get("sku-1").await.unit_price_cents, 120);

    let invalid = inventory
        .put_product(authed(
            PutProductRequest {
                sku: "no spaces".into(),
                name: String::new(),
                unit_price_cents: 0,
                currency_code: "XXX".into(),
                active: true,
            },
            &f.admin,
        ))
        .await
        .unwrap_err();
    assert_eq!(invalid.code(), Code::InvalidArgument);
    assert_eq!(
        shop_testkit::violated_fields(&invalid),
        ["sku", "name", "unit_price_cents", "currency_code"]
    );
}

#[tokio::test]
async fn stock_changes_apply_once_and_never_below_what_is_reserved() {
    let f = Fixture::spawn().await;
    let mut inventory = f.inventory.clone();
    f.product("sku-1", 100, 10).await;
    for _ in 0..2 {
        let product = inventory
            .adjust_stock(authed(adjust("sku-1", 5, "delivery-1"), &f.admin))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(product.on_hand, 15, "applied once");
    }
    let reused = inventory
        .adjust_stock(authed(adjust("sku-1", -5, "delivery-1"), &f.admin))
        .await
        .unwrap_err();
    assert_eq!(reused.code(), Code::AlreadyExists);
    let below = inventory
        .adjust_stock(authed(adjust("sku-1", -16, "shrinkage"), &f.admin))
        .await
        .unwrap_err();
    assert_eq!(below.code(), Code::FailedPrecondition);
    let missing = inventory
        .adjust_stock(authed(adjust("nope", 1, "x"), &f.admin))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    assert_eq!(f.get("sku-1").await.on_hand, 15);
}

#[tokio::test]
async fn products_are_listed_by_sku_one_page_at_a_time() {
    let f = Fixture::spawn().await;
    let mut inventory = f.inventory.clone();
    for i in 0..5 {
        f.product(&format!("sku-{i}"), 100 + i, 1).await;
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = inventory
            .list_products(authed(
                ListProductsRequest {
                    page_size: 2,
                    page_token: token.clone(),
                    active_only: false,
                },
                &f.customer,
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(page.products.len() <= 2);
        seen.extend(page.products.into_iter().map(|p| p.sku));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, ["sku-0", "sku-1", "sku-2", "sku-3", "sku-4"]);
    let forged = inventory
        .list_products(authed(
            ListProductsRequest {
                page_size: 2,
                page_token: token.clone() + "x",
                active_only: true,
            },
            &f.customer,
        ))
        .await
        .unwrap_err();
    assert_eq!(forged.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn a_stock_watch_sends_the_current_value_then_each_change() {
    let f = Fixture::spawn().await;
    f.product("sku-1", 100, 3).await;
    let mut updates = f
        .inventory
        .clone()
        .watch_stock(authed(
            WatchStockRequest {
                skus: vec!["sku-1".into()],
            },
            &f.customer,
        ))
        .await
        .unwrap()
        .into_inner();
    let first = updates.message().await.unwrap().unwrap();
    assert_eq!((first.sku.as_str(), first.available), ("sku-1", 3));
    f.inventory
        .clone()
        .adjust_stock(authed(adjust("sku-1", 4, "delivery"), &f.admin))
        .await
        .unwrap();
    let next = tokio::time::timeout(std::time::Duration::from_secs(5), updates.message())
        .await
        .expect("a change within 5 s")
        .unwrap()
        .unwrap();
    assert_eq!(next.available, 7);

    let unknown = f
        .inventory
        .clone()
        .watch_stock(authed(
            WatchStockRequest {
                skus: vec!["sku-404".into()],
            },
            &f.customer,
        ))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
}
