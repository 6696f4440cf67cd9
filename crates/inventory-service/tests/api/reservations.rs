//! The reservation saga's steps as order-service takes them: services
//! only, all or nothing, idempotent by order id, prices from the
//! catalogue, expiry, and the race for the last units.

use std::time::Duration;

use shop_proto::inventory::v1::{
    ConfirmReservationRequest, ConfirmReservationsRequest, ReleaseReservationRequest,
    ReservationStatus, ReserveItem, ReserveStockRequest, ReserveStocksRequest,
    reserve_stock_result::Result as Outcome,
};
use tonic::Code;
use tonic_types::StatusExt as _;
use uuid::Uuid;

use crate::helpers::{Backend, Fixture, authed};

fn reserve(order_id: Uuid, items: &[(&str, i64)]) -> ReserveStockRequest {
    ReserveStockRequest {
        order_id: order_id.to_string(),
        items: items
            .iter()
            .map(|(sku, quantity)| ReserveItem {
                sku: (*sku).into(),
                quantity: *quantity,
            })
            .collect(),
    }
}

fn confirm(order_id: Uuid) -> ConfirmReservationRequest {
    ConfirmReservationRequest {
        order_id: order_id.to_string(),
    }
}

fn release(order_id: Uuid) -> ReleaseReservationRequest {
    ReleaseReservationRequest {
        order_id: order_id.to_string(),
    }
}

#[tokio::test]
async fn customers_and_admins_cannot_reserve_only_services_can() {
    let f = Fixture::spawn().await;
    f.product("sku-1", 250, 5).await;
    let mut inventory = f.inventory.clone();
    for token in [&f.customer, &f.admin] {
        let refused = inventory
            .reserve_stock(authed(reserve(Uuid::now_v7(), &[("sku-1", 1)]), token))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied);
    }
    // A user's token offered as a service token is no better.
    let mut forged = authed(reserve(Uuid::now_v7(), &[("sku-1", 1)]), &f.customer);
    forged
        .metadata_mut()
        .insert("x-service-token", f.customer.parse().unwrap());
    let refused = inventory.reserve_stock(forged).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert_eq!(f.get("sku-1").await.available, 5, "nothing held");
}

#[tokio::test]
async fn a_reservation_holds_everything_at_catalogue_prices_once_per_order() {
    let f = Fixture::spawn().await;
    f.product("sku-1", 250, 5).await;
    f.product("sku-2", 1000, 2).await;
    let mut inventory = f.inventory.clone();
    let order = Uuid::now_v7();
    let held = inventory
        .reserve_stock(f.as_service(reserve(order, &[("sku-2", 1), ("sku-1", 2)])))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(held.status, ReservationStatus::Pending as i32);
    assert_eq!(held.currency_code, "EUR");
    let prices: Vec<_> = held
        .lines
        .iter()
        .map(|l| (l.sku.as_str(), l.quantity, l.unit_price_cents))
        .collect();
    assert_eq!(prices, [("sku-1", 2, 250), ("sku-2", 1, 1000)]);
    let p = f.get("sku-1").await;
    assert_eq!((p.on_hand, p.reserved, p.available), (5, 2, 3));

    // The same again: the same reservation, nothing more held.
    let again = inventory
        .reserve_stock(f.as_service(reserve(order, &[("sku-1", 2), ("sku-2", 1)])))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.lines, held.lines);
    assert_eq!(f.get("sku-1").await.available, 3);
    // Other items under the same order id.
    let other = inventory
        .reserve_stock(f.as_service(reserve(order, &[("sku-1", 1)])))
        .await
        .unwrap_err();
    assert_eq!(other.code(), Code::AlreadyExists);

    // Confirm takes the units off the shelf; confirming again changes
    // nothing.
    for _ in 0..2 {
        let confirmed = inventory
            .confirm_reservation(f.as_service(confirm(order)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(confirmed.status, ReservationStatus::Confirmed as i32);
    }
    let p = f.get("sku-1").await;
    assert_eq!((p.on_hand, p.reserved, p.available), (3, 0, 3));
    // Releasing a confirmed reservation (a cancelled order) puts them back.
    for _ in 0..2 {
        let released = inventory
            .release_reservation(f.as_service(release(order)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(released.status, ReservationStatus::Released as i32);
    }
    let p = f.get("sku-1").await;
    assert_eq!((p.on_hand, p.reserved, p.available), (5, 0, 5));
    let refused = inventory
        .confirm_reservation(f.as_service(confirm(order)))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
}

#[tokio::test]
async fn short_stock_holds_nothing_and_names_each_short_sku() {
    let f = Fixture::spawn().await;
    f.product("sku-1", 250, 5).await;
    f.product("sku-2", 1000, 1).await;
    let refused = f
        .inventory
        .clone()
        .reserve_stock(f.as_service(reserve(
            Uuid::now_v7(),
            &[("sku-1", 2), ("sku-2", 3), ("sku-404", 1)],
        )))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    let failure = refused
        .get_details_precondition_failure()
        .expect("a PreconditionFailure");
    let subjects: Vec<_> = failure
        .violations
        .iter()
        .map(|v| (v.subject.as_str(), v.description.as_str()))
        .collect();
    assert_eq!(
        subjects,
        [
            ("sku-2", "3 requested, 1 available"),
            ("sku-404", "no such product")
        ]
    );
    assert_eq!(f.get("sku-1").await.available, 5, "all or nothing");
}

#[tokio::test]
async fn a_release_that_overtakes_its_reservation_leaves_nothing_held() {
    let f = Fixture::spawn().await;
    f.product("sku-1", 250, 5).await;
    let order = Uuid::now_v7();
    let mut inventory = f.inventory.clone();
    let released = inventory
        .release_reservation(f.as_service(release(order)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(released.status, ReservationStatus::Released as i32);
    let late = inventory
        .reserve_stock(f.as_service(reserve(order, &[("sku-1", 1)])))
        .await
        .unwrap_err();
    assert_eq!(late.code(), Code::FailedPrecondition);
    assert_eq!(f.get("sku-1").await.available, 5);
}

#[tokio::test]
async fn an_unconfirmed_reservation_expires_and_its_units_come_back() {
    let f = Fixture::spawn_with(
        Backend::Sqlite,
        &[
            "--reservation-ttl",
            "300ms",
            "--reservation-sweep-interval",
            "100ms",
        ],
    )
    .await;
    f.product("sku-1", 250, 5).await;
    let order = Uuid::now_v7();
    let mut inventory = f.inventory.clone();
    inventory
        .reserve_stock(f.as_service(reserve(order, &[("sku-1", 4)])))
        .await
        .unwrap();
    assert_eq!(f.get("sku-1").await.available, 1);
    let started = std::time::Instant::now();
    while f.get("sku-1").await.available != 5 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "units not back 5 s after a 300 ms TTL"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let late = inventory
        .confirm_reservation(f.as_service(confirm(order)))
        .await
        .unwrap_err();
    assert_eq!(late.code(), Code::FailedPrecondition);
    assert!(late.message().contains("expired"), "{}", late.message());
}

fn confirm_all(order_ids: &[Uuid]) -> ConfirmReservationsRequest {
    ConfirmReservationsRequest {
        order_ids: order_ids.iter().map(Uuid::to_string).collect(),
    }
}

/// Several orders' reservations confirmed in one call: each as
/// ConfirmReservation would, the units taken once per product, the
/// released one and the unknown one answered as they are.
async fn confirm_many_at_once(backend: Backend) {
    let f = Fixture::spawn_with(backend, &[]).await;
    f.product("sku-1", 250, 10).await;
    f.product("sku-2", 1000, 10).await;
    let mut inventory = f.inventory.clone();
    let orders: Vec<Uuid> = (0..4).map(|_| Uuid::now_v7()).collect();
    for (order, items) in orders.iter().zip([
        &[("sku-1", 1), ("sku-2", 2)][..],
        &[("sku-1", 3)],
        &[("sku-2", 1)],
        &[("sku-1", 2)],
    ]) {
        inventory
            .reserve_stock(f.as_service(reserve(*order, items)))
            .await
            .unwrap();
    }
    inventory
        .release_reservation(f.as_service(release(orders[3])))
        .await
        .unwrap();
    let never = Uuid::now_v7();

    // Twice: confirming again changes nothing.
    let asked = [orders[2], never, orders[0], orders[3], orders[1]];
    for _ in 0..2 {
        let after = inventory
            .confirm_reservations(f.as_service(confirm_all(&asked)))
            .await
            .unwrap()
            .into_inner()
            .reservations;
        let statuses: Vec<_> = after
            .iter()
            .map(|r| (r.order_id.clone(), r.status))
            .collect();
        assert_eq!(
            statuses,
            [
                (orders[2].to_string(), ReservationStatus::Confirmed as i32),
                (orders[0].to_string(), ReservationStatus::Confirmed as i32),
                (orders[3].to_string(), ReservationStatus::Released as i32),
                (orders[1].to_string(), ReservationStatus::Confirmed as i32),
            ],
            "in the order asked, the unknown id left out"
        );
        let one = f.get("sku-1").await;
        let two = f.get("sku-2").await;
        assert_eq!(
            (one.on_hand, one.reserved, two.on_hand, two.reserved),
            (6, 0, 7, 0),
            "units taken once, the released ones back"
        );
    }
}

#[tokio::test]
async fn many_reservations_are_confirmed_in_one_call() {
    confirm_many_at_once(Backend::Sqlite).await;
}

#[tokio::test]
async fn many_reservations_are_confirmed_in_one_call_on_postgres() {
    confirm_many_at_once(Backend::Postgres).await;
}

/// The (field, description) pairs of an INVALID_ARGUMENT's BadRequest.
fn field_violations(refused: &tonic::Status) -> Vec<(String, String)> {
    refused
        .get_details_bad_request()
        .expect("a BadRequest")
        .field_violations
        .into_iter()
        .map(|v| (v.field, v.description))
        .collect()
}

#[tokio::test]
async fn a_batch_confirmation_is_for_services_and_names_each_bad_id() {
    let f = Fixture::spawn().await;
    let mut inventory = f.inventory.clone();
    let order = Uuid::now_v7();
    let refused = inventory
        .confirm_reservations(authed(confirm_all(&[order]), &f.customer))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);

    let bad = ConfirmReservationsRequest {
        order_ids: vec![order.to_string(), "not-a-uuid".into(), order.to_string()],
    };
    let refused = inventory
        .confirm_reservations(f.as_service(bad))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    let fields = field_violations(&refused);
    assert_eq!(
        fields,
        [
            ("order_ids[1]".to_owned(), "must be a UUID".to_owned()),
            ("order_ids[2]".to_owned(), "is repeated".to_owned()),
        ]
    );
    for count in [0, 257] {
        let ids: Vec<Uuid> = (0..count).map(|_| Uuid::now_v7()).collect();
        let refused = inventory
            .confirm_reservations(f.as_service(confirm_all(&ids)))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{count} ids");
    }
}

fn reserve_all(reservations: Vec<ReserveStockRequest>) -> ReserveStocksRequest {
    ReserveStocksRequest { reservations }
}

/// Several orders' reservations in one call, each as ReserveStock would
/// answer it on its own: held, short, malformed, other items under a known
/// order id, the same again; a refused one holds nothing and holds back
/// no other.
async fn reserve_many_at_once(backend: Backend) {
    let f = Fixture::spawn_with(backend, &[]).await;
    f.product("sku-1", 250, 10).await;
    f.product("sku-2", 1000, 1).await;
    let mut inventory = f.inventory.clone();
    let (known, repeated) = (Uuid::now_v7(), Uuid::now_v7());
    for order in [known, repeated] {
        inventory
            .reserve_stock(f.as_service(reserve(order, &[("sku-1", 1)])))
            .await
            .unwrap();
    }
    let held = Uuid::now_v7();
    let last = Uuid::now_v7();
    let asked = vec![
        reserve(held, &[("sku-1", 2)]),
        reserve(Uuid::now_v7(), &[("sku-1", 1), ("sku-2", 3)]),
        reserve(Uuid::now_v7(), &[("not a sku", 1)]),
        reserve(known, &[("sku-1", 5)]),
        reserve(repeated, &[("sku-1", 1)]),
        reserve(last, &[("sku-2", 1)]),
    ];
    // Twice: the held ones are the same reservations, nothing more held.
    for _ in 0..2 {
        let results = inventory
            .reserve_stocks(f.as_service(reserve_all(asked.clone())))
            .await
            .unwrap()
            .into_inner()
            .results;
        let outcomes: Vec<_> = results
            .into_iter()
            .map(|r| match r.result.expect("a result") {
                Outcome::Reservation(r) => Ok((r.order_id, r.lines.len())),
                Outcome::Error(e) => Err((Code::from(e.code), e.message)),
            })
            .collect();
        assert!(
            matches!(&outcomes[..], [
                Ok((h, 1)),
                Err((Code::FailedPrecondition, _)),
                Err((Code::InvalidArgument, _)),
                Err((Code::AlreadyExists, _)),
                Ok((r, 1)),
                Ok((l, 1)),
            ] if *h == held.to_string() && *r == repeated.to_string() && *l == last.to_string()),
            "{outcomes:?}"
        );
        let one = f.get("sku-1").await;
        let two = f.get("sku-2").await;
        assert_eq!(
            (one.reserved, two.reserved),
            (2 + 2, 1),
            "the earlier two, the held one and the last unit of sku-2"
        );
    }
    // A refusal carries what ReserveStock's would: each short sku named.
    let results = inventory
        .reserve_stocks(f.as_service(reserve_all(vec![reserve(Uuid::now_v7(), &[("sku-2", 3)])])))
        .await
        .unwrap()
        .into_inner()
        .results;
    let Some(Outcome::Error(short)) = results[0].result.clone() else {
        panic!("{results:?}");
    };
    let status = tonic::Status::with_details(
        Code::from(short.code),
        short.message.clone(),
        prost::Message::encode_to_vec(&short).into(),
    );
    let subjects: Vec<_> = status
        .get_details_precondition_failure()
        .expect("a PreconditionFailure")
        .violations
        .into_iter()
        .map(|v| (v.subject, v.description))
        .collect();
    assert_eq!(
        subjects,
        [("sku-2".to_owned(), "3 requested, 0 available".to_owned())]
    );
}

#[tokio::test]
async fn many_reservations_are_held_in_one_call() {
    reserve_many_at_once(Backend::Sqlite).await;
}

#[tokio::test]
async fn many_reservations_are_held_in_one_call_on_postgres() {
    reserve_many_at_once(Backend::Postgres).await;
}

#[tokio::test]
async fn a_shared_reservation_call_is_for_services_and_checks_its_list() {
    let f = Fixture::spawn().await;
    f.product("sku-1", 250, 100).await;
    let mut inventory = f.inventory.clone();
    let one = || reserve(Uuid::now_v7(), &[("sku-1", 1)]);
    let refused = inventory
        .reserve_stocks(authed(reserve_all(vec![one()]), &f.customer))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);

    let twice = one();
    let refused = inventory
        .reserve_stocks(f.as_service(reserve_all(vec![twice.clone(), one(), twice])))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    let fields = field_violations(&refused);
    assert_eq!(
        fields,
        [(
            "reservations[2].order_id".to_owned(),
            "is repeated".to_owned()
        )]
    );
    for count in [0, 33] {
        let refused = inventory
            .reserve_stocks(f.as_service(reserve_all((0..count).map(|_| one()).collect())))
            .await
            .unwrap_err();
        assert_eq!(
            refused.code(),
            Code::InvalidArgument,
            "{count} reservations"
        );
    }
    assert_eq!(f.get("sku-1").await.reserved, 0, "nothing held");
}

/// `n` reservations of one unit each race for `stock` units.
async fn race_for_the_last_units(backend: Backend) {
    let f = Fixture::spawn_with(backend, &[]).await;
    let (stock, n) = (5, 24);
    f.product("sku-1", 250, stock).await;
    let calls = (0..n).map(|_| {
        let mut inventory = f.inventory.clone();
        let request = f.as_service(reserve(Uuid::now_v7(), &[("sku-1", 1)]));
        async move { inventory.reserve_stock(request).await }
    });
    let answers = futures_util::future::join_all(calls).await;
    let held = answers.iter().filter(|a| a.is_ok()).count();
    let short = answers
        .iter()
        .filter(|a| matches!(a, Err(s) if s.code() == Code::FailedPrecondition))
        .count();
    assert_eq!(
        (held, short),
        (stock as usize, n - stock as usize),
        "{answers:?}"
    );
    let p = f.get("sku-1").await;
    assert_eq!((p.on_hand, p.reserved, p.available), (stock, stock, 0));
}

#[tokio::test]
async fn concurrent_reservations_of_the_last_units_never_oversell() {
    race_for_the_last_units(Backend::Sqlite).await;
}

#[tokio::test]
async fn concurrent_reservations_of_the_last_units_never_oversell_on_postgres() {
    race_for_the_last_units(Backend::Postgres).await;
}
