//! Seeing every call a server answers: the request id (the caller's when
//! sane, else a new one, echoed back), the `grpc.server` span with the
//! OpenTelemetry RPC attributes and the caller's W3C trace context as its
//! parent, the grpc-ecosystem metrics and the `access` log line (see
//! `shop_telemetry` for the machinery). Outermost layer, so that refusals
//! by the layers below are seen too; it leaves what it found about the
//! call for them (see [`super::call_facts`]).

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll, ready},
};

use http::{HeaderValue, Request, Response};
use shop_core::context::{REQUEST_ID, request_id_of, unique_to_the_call};
use shop_telemetry::{
    body::{observe_request, observe_response},
    call::{CallRecord, server_span},
    labels::{MethodLabels, Protocol},
    metrics::Side,
    propagation::HeaderReader,
};
use tonic::body::Body;
use tower::{Layer, Service};

use crate::{layers::call_facts::CallFacts, peer::peer_addr};

/// Builds [`Observe`] services: the outermost server layer.
#[derive(Debug, Clone, Copy, Default)]
pub struct ObserveLayer;

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe { inner }
    }
}

/// The server's observation of every call; see the module docs.
#[derive(Debug, Clone)]
pub struct Observe<S> {
    inner: S,
}

impl<S> Service<Request<Body>> for Observe<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Send,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Observed<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let (mut parts, body) = req.into_parts();
        let path = parts.uri.path();
        let labels = MethodLabels::of(path);

        // Request id: the caller's when it is sane, else a fresh one.
        let request_id = request_id_of(&parts.headers);
        parts.headers.insert(REQUEST_ID, request_id.clone());

        // Trace context from the caller, then the span of this call.
        let parent = opentelemetry::global::get_text_map_propagator(|p| {
            p.extract(&HeaderReader(&parts.headers))
        });
        let span = server_span(path, labels, &request_id, parent);

        let peer = peer_addr(&parts.extensions);
        let protocol = parts
            .extensions
            .get::<Protocol>()
            .copied()
            .unwrap_or_default();
        let record = CallRecord::start(Side::Server, protocol, labels, span.clone(), peer);
        parts.extensions.insert(CallFacts {
            method: labels.declared(),
            request_id: request_id.clone(),
            caller: record.caller_slot(),
        });
        let record = Arc::new(Mutex::new(record));

        let body = observe_request(body, &record, Side::Server);
        let future = {
            let _entered = span.enter();
            self.inner.call(Request::from_parts(parts, body))
        };
        Observed {
            inner: tracing::Instrument::instrument(future, span),
            answer: Some((request_id, record)),
        }
    }
}

pin_project_lite::pin_project! {
    /// The inner call's answer, run in the call's span, then observed: the
    /// request id echoed and the body counted until its status.
    pub struct Observed<F> {
        #[pin]
        inner: tracing::instrument::Instrumented<F>,
        answer: Option<(HeaderValue, Arc<Mutex<CallRecord>>)>,
    }
}

impl<F, E> Future for Observed<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let mut response = ready!(this.inner.poll(cx))?;
        let (request_id, record) = this
            .answer
            .take()
            .expect("an Observed future is not polled after it is done");
        response
            .headers_mut()
            .insert(REQUEST_ID, unique_to_the_call(request_id));
        Poll::Ready(Ok(observe_response(response, record, Side::Server)))
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use shop_core::context::valid_request_id;
    use tower::{ServiceExt as _, service_fn};

    use super::*;

    /// The request id the handler saw and the one the response carries,
    /// for a call that sent `sent` as its `x-request-id`.
    async fn ids(sent: &'static str) -> (HeaderValue, HeaderValue) {
        let handler = service_fn(|req: Request<Body>| async move {
            let seen = req.headers()[REQUEST_ID].clone();
            let mut response = Response::new(Body::empty());
            response.extensions_mut().insert(seen);
            Ok::<_, Infallible>(response)
        });
        let request = Request::builder()
            .uri("http://test/shop.user.v1.UserService/GetUser")
            .header(REQUEST_ID, sent)
            .body(Body::empty())
            .unwrap();
        let response = ObserveLayer.layer(handler).oneshot(request).await.unwrap();
        let seen = response.extensions().get::<HeaderValue>().unwrap().clone();
        (seen, response.headers()[REQUEST_ID].clone())
    }

    #[tokio::test]
    async fn the_callers_request_id_is_used_and_echoed() {
        let (seen, echoed) = ids("order-42.retry:1").await;
        assert_eq!(seen, "order-42.retry:1");
        assert_eq!(echoed, "order-42.retry:1");
        assert!(
            echoed.is_sensitive(),
            "a request id is never worth a place in HPACK's table"
        );
    }

    #[tokio::test]
    async fn the_layers_below_find_the_method_and_request_id_it_settled() {
        let handler = service_fn(|req: Request<Body>| async move {
            let facts = req.extensions().get::<CallFacts>().cloned();
            let seen = req.headers()[REQUEST_ID].clone();
            let mut response = Response::new(Body::empty());
            response.extensions_mut().insert((facts, seen));
            Ok::<_, Infallible>(response)
        });
        let request = Request::builder()
            .uri("http://test/shop.user.v1.UserService/GetUser")
            .header(REQUEST_ID, "two words")
            .body(Body::empty())
            .unwrap();
        let response = ObserveLayer.layer(handler).oneshot(request).await.unwrap();
        let (facts, seen) = response
            .extensions()
            .get::<(Option<CallFacts>, HeaderValue)>()
            .cloned()
            .unwrap();
        let facts = facts.expect("the observe layer leaves its facts");
        assert_eq!(
            facts.method.map(|m| m.path),
            Some("/shop.user.v1.UserService/GetUser")
        );
        assert_eq!(
            facts.request_id, seen,
            "the replacement id, not the sent one"
        );
        assert!(valid_request_id(&facts.request_id));
    }

    #[tokio::test]
    async fn an_unusable_request_id_is_replaced_and_the_replacement_echoed() {
        let (seen, echoed) = ids("two words").await;
        assert_ne!(seen, "two words");
        assert!(valid_request_id(&seen), "{seen:?}");
        assert_eq!(echoed, seen);
    }
}
