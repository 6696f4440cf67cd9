//! order-service's client of inventory-service: reservations for new
//! orders ([`crate::app::Stock`]), with order-service's own service token
//! (ReserveStock, ReserveStocks, ConfirmReservations and ReleaseReservation
//! are for services only) next to the end user's forwarded token, and the
//! caller's remaining deadline. Reservations that arrive together share
//! calls ([`together`]).

mod together;

use std::{collections::HashMap, sync::Arc, time::Duration};

use async_trait::async_trait;
use shop_client::{ClientChannel, service_token::ServiceToken};
use shop_core::error::{AppError, DependencyFailure};
use shop_proto::inventory::v1::{
    ConfirmReservationsRequest, ReleaseReservationRequest, ReservationStatus, ReserveItem,
    ReserveStockRequest, inventory_service_client::InventoryServiceClient,
};
use tonic::{Code, Request, Status};
use tonic_types::StatusExt as _;
use uuid::Uuid;

pub use together::{MAX_BATCH, Sharing};

use crate::{
    app::{Reserved, Settled, Stock},
    domain::OrderItem,
};

/// inventory-service as order-service's callers know it.
const SERVICE: &str = "inventory-service";

/// Longest one call may take (the caller's remaining budget, when shorter,
/// wins).
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// The InventoryService client.
#[derive(Debug, Clone)]
pub struct StockClient {
    caller: Caller,
    together: together::Together,
}

/// The channel and the credential every call to inventory-service goes
/// out with.
#[derive(Debug, Clone)]
struct Caller {
    client: InventoryServiceClient<ClientChannel>,
    token: Arc<ServiceToken>,
}

impl Caller {
    /// `message` as a request with this service's token, that may take up
    /// to `timeout`.
    async fn request<T>(&self, message: T, timeout: Duration) -> Result<Request<T>, Status> {
        let mut request = Request::new(message);
        request.set_timeout(timeout);
        self.token.attach(&mut request).await?;
        Ok(request)
    }
}

impl StockClient {
    /// A client over `channel`, proving itself with `token`, whose
    /// reservations share calls as `sharing` says. Starts the task that
    /// sends shared calls, so call it inside the runtime.
    pub fn new(channel: ClientChannel, token: Arc<ServiceToken>, sharing: Sharing) -> StockClient {
        let caller = Caller {
            client: InventoryServiceClient::new(channel),
            token,
        };
        StockClient {
            together: together::Together::start(caller.clone(), sharing),
            caller,
        }
    }

    async fn request<T>(&self, message: T) -> Result<Request<T>, AppError> {
        self.caller
            .request(message, CALL_TIMEOUT)
            .await
            .map_err(|status| dependency(&status))
    }
}

fn dependency(status: &Status) -> AppError {
    AppError::Dependency {
        service: SERVICE,
        failure: DependencyFailure::of(status),
    }
}

#[async_trait]
impl Stock for StockClient {
    async fn reserve(&self, order_id: Uuid, items: &[OrderItem]) -> Result<Reserved, AppError> {
        let message = ReserveStockRequest {
            order_id: order_id.to_string(),
            items: items
                .iter()
                .map(|i| ReserveItem {
                    sku: i.product_id.clone(),
                    quantity: i64::from(i.quantity),
                })
                .collect(),
        };
        let answer = match self.together.own_call() {
            Some(_place) => {
                metrics::counter!("shop_stock_reservations_total", "call" => "own").increment(1);
                let request = self.request(message).await?;
                self.caller
                    .client
                    .clone()
                    .reserve_stock(request)
                    .await
                    .map(tonic::Response::into_inner)
            }
            None => self.together.shared_call(message).await,
        };
        match answer {
            Ok(reservation) => Ok(Reserved {
                currency_code: reservation.currency_code,
                prices: reservation
                    .lines
                    .into_iter()
                    .map(|l| (l.sku, l.unit_price_cents))
                    .collect(),
            }),
            // Short stock, unknown or inactive products: the caller's to
            // know, with each product named.
            Err(status) if status.code() == Code::FailedPrecondition => {
                let violations = status
                    .get_details_precondition_failure()
                    .map(|failure| {
                        failure
                            .violations
                            .into_iter()
                            .map(|v| (v.r#type, v.subject, v.description))
                            .collect()
                    })
                    .unwrap_or_default();
                Err(AppError::PreconditionsFailed {
                    message: status.message().to_owned(),
                    violations,
                })
            }
            Err(status) => Err(dependency(&status)),
        }
    }

    async fn confirm_all(&self, order_ids: &[Uuid]) -> Result<Vec<Settled>, AppError> {
        let request = self
            .request(ConfirmReservationsRequest {
                order_ids: order_ids.iter().map(Uuid::to_string).collect(),
            })
            .await?;
        let answered = self
            .caller
            .client
            .clone()
            .confirm_reservations(request)
            .await
            .map_err(|status| dependency(&status))?
            .into_inner()
            .reservations;
        let statuses: HashMap<String, i32> = answered
            .into_iter()
            .map(|reservation| (reservation.order_id, reservation.status))
            .collect();
        order_ids
            .iter()
            .map(|id| match statuses.get(&id.to_string()).copied() {
                Some(status) if status == ReservationStatus::Confirmed as i32 => Ok(Settled::Done),
                Some(status)
                    if status == ReservationStatus::Released as i32
                        || status == ReservationStatus::Expired as i32 =>
                {
                    Ok(Settled::Gone)
                }
                // Never reserved: nothing to confirm.
                None => Ok(Settled::Gone),
                Some(status) => Err(AppError::internal(format!(
                    "inventory-service left reservation {id} in status {status} after confirming it"
                ))),
            })
            .collect()
    }

    async fn release(&self, order_id: Uuid) -> Result<Settled, AppError> {
        let request = self
            .request(ReleaseReservationRequest {
                order_id: order_id.to_string(),
            })
            .await?;
        match self
            .caller
            .client
            .clone()
            .release_reservation(request)
            .await
        {
            Ok(_) => Ok(Settled::Done),
            Err(status) if matches!(status.code(), Code::FailedPrecondition | Code::NotFound) => {
                Ok(Settled::Gone)
            }
            Err(status) => Err(dependency(&status)),
        }
    }
}
