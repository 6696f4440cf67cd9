//! The admin HTTP endpoint every service runs beside its gRPC port:
//!
//! - `GET /metrics`: Prometheus text exposition (the process's CPU,
//!   memory, descriptors and runtimes, the write lane's included, read
//!   fresh for each scrape);
//! - `GET /healthz`: 200 while the process runs (liveness);
//! - `GET /readyz`: 200 when the service should get traffic (its database
//!   answers and it is not draining), else 503 (readiness).

use std::future::Future;

use axum::{Router, http::StatusCode, response::IntoResponse, routing::get};
use tokio::net::TcpListener;

use crate::health::Readiness;

/// Serves the admin endpoints on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    readiness: Readiness,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let ready = readiness.is_ready();
                async move {
                    if ready {
                        (StatusCode::OK, "ready\n")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                    }
                }
            }),
        );
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn metrics() -> impl IntoResponse {
    shop_telemetry::record_process_metrics();
    crate::layers::write_lane::record_metrics();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        shop_telemetry::prometheus().render(),
    )
}
