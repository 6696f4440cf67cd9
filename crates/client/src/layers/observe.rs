//! Seeing every call a service makes: the `grpc.client` span (a child of
//! whatever the task is doing, usually the server span of the request
//! being served) with the OpenTelemetry RPC attributes, its W3C trace
//! context on the wire, and the `grpc_client_*` grpc-ecosystem metrics,
//! once per call however many attempts it takes.

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use http::{Request, Response};
use shop_telemetry::{
    body::{observe_request, observe_response},
    call::CallRecord,
    labels::{MethodLabels, Protocol},
    metrics::Side,
    propagation::{HeaderCarrier, context_of},
};
use tonic::body::Body;
use tower::{Layer, Service};

/// Builds [`Observe`] services.
#[derive(Debug, Clone, Copy, Default)]
pub struct ObserveLayer;

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe { inner }
    }
}

/// See the module docs.
#[derive(Debug, Clone)]
pub struct Observe<S> {
    inner: S,
}

impl<S> Service<Request<Body>> for Observe<S>
where
    S: Service<Request<Body>, Response = Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let path = req.uri().path().to_owned();
        let labels = MethodLabels::of(&path);
        let span = tracing::info_span!(
            "grpc.client",
            otel.name = %path.trim_start_matches('/'),
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            rpc.system = "grpc",
            rpc.service = labels.grpc_service,
            rpc.method = labels.grpc_method,
            rpc.grpc.status_code = tracing::field::Empty,
        );
        opentelemetry::global::get_text_map_propagator(|p| {
            p.inject_context(&context_of(&span), &mut HeaderCarrier(req.headers_mut()));
        });
        let record = Arc::new(Mutex::new(CallRecord::start(
            Side::Client,
            Protocol::Grpc,
            labels,
            span.clone(),
            None,
            std::time::Instant::now(),
        )));
        let (parts, body) = req.into_parts();
        let req = Request::from_parts(parts, observe_request(body, &record, Side::Client));
        let future = {
            let _entered = span.enter();
            self.inner.call(req)
        };
        Box::pin(tracing::Instrument::instrument(
            async move {
                let response = future.await?;
                Ok(observe_response(response, record, Side::Client))
            },
            span,
        ))
    }
}
