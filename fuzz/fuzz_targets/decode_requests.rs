//! Every request message of every service, decoded from arbitrary bytes:
//! decoding never panics, and what decodes encodes back to a message that
//! decodes to the same value (no input the server reads two ways).
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use shop_proto::{
    auth::v1 as auth, inventory::v1 as inventory, order::v1 as order, user::v1 as user,
};

fn round_trip<M: Message + Default + PartialEq + std::fmt::Debug>(data: &[u8]) {
    if let Ok(message) = M::decode(data) {
        let again =
            M::decode(message.encode_to_vec().as_slice()).expect("our own encoding decodes");
        assert_eq!(again, message);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, message)) = data.split_first() else {
        return;
    };
    // One byte picks the message type, so that the corpus of one type
    // teaches the fuzzer the others' shared field numbers too.
    match which % 28 {
        0 => round_trip::<user::CreateUserRequest>(message),
        1 => round_trip::<user::GetUserRequest>(message),
        2 => round_trip::<user::UpdateUserRequest>(message),
        3 => round_trip::<user::DeleteUserRequest>(message),
        4 => round_trip::<user::ListUsersRequest>(message),
        5 => round_trip::<user::StreamUsersRequest>(message),
        6 => round_trip::<user::UserActivityRequest>(message),
        7 => round_trip::<auth::LoginRequest>(message),
        8 => round_trip::<auth::RefreshTokenRequest>(message),
        9 => round_trip::<auth::LogoutRequest>(message),
        10 => round_trip::<order::CreateOrderRequest>(message),
        11 => round_trip::<order::GetOrderRequest>(message),
        12 => round_trip::<order::ListOrdersRequest>(message),
        13 => round_trip::<order::StreamOrdersRequest>(message),
        14 => round_trip::<order::WatchOrderRequest>(message),
        15 => round_trip::<order::ProcessOrderRequest>(message),
        16 => round_trip::<order::CancelOrderRequest>(message),
        17 => round_trip::<auth::IssueServiceTokenRequest>(message),
        18 => round_trip::<inventory::PutProductRequest>(message),
        19 => round_trip::<inventory::AdjustStockRequest>(message),
        20 => round_trip::<inventory::GetProductRequest>(message),
        21 => round_trip::<inventory::ListProductsRequest>(message),
        22 => round_trip::<inventory::ReserveStockRequest>(message),
        23 => round_trip::<inventory::ConfirmReservationRequest>(message),
        24 => round_trip::<inventory::ReleaseReservationRequest>(message),
        25 => round_trip::<inventory::ConfirmReservationsRequest>(message),
        26 => round_trip::<inventory::ReserveStocksRequest>(message),
        _ => round_trip::<inventory::WatchStockRequest>(message),
    }
});
