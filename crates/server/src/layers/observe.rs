//! Seeing every call a server answers: the request id (the caller's when
//! sane, else a new one, echoed back), the `grpc.server` span with the
//! OpenTelemetry RPC attributes and the caller's W3C trace context as its
//! parent, the grpc-ecosystem metrics and the `access` log line (see
//! `shop_telemetry` for the machinery). Outermost layer, so that refusals
//! by the layers below are seen too; it leaves what it found about the
//! call for them (see [`super::call_facts`]).
//!
//! The echoed request id is unique to its call, so HPACK is told never to
//! index it (`unique_to_the_call`), except in the first answer on each
//! connection (`ConnectionInfo::first_to_send_request_id_name`): that one
//! enters the connection's header tables, so that every later answer
//! sends the header's name as an index into them (h2 does so for a
//! never-indexed value whose name is in its table) rather than as a
//! literal that the caller decodes and allocates again on every call.

use std::{
    future::Future,
    mem,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll, ready},
};

use http::{HeaderValue, Request, Response};
use shop_core::context::{REQUEST_ID, request_id_of, unique_to_the_call};
use shop_telemetry::{
    body::{observe_request, observe_response},
    call::{CallRecord, CallerSlot, server_span},
    labels::{MethodLabels, Protocol},
    metrics::Side,
    propagation::HeaderReader,
};
use tonic::body::Body;
use tower::{Layer, Service};
use tracing::Span;

use crate::{
    connections::ConnectionInfo,
    layers::call_facts::CallFacts,
    peer::{connection_of, peer_addr},
};

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
        let started = tokio::time::Instant::now();
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

        let connection = connection_of(&parts.extensions);
        let peer = match connection {
            Some(connection) => connection.remote_addr(),
            None => peer_addr(&parts.extensions),
        };
        let request_id_indexed =
            connection.is_some_and(ConnectionInfo::first_to_send_request_id_name);
        let protocol = parts
            .extensions
            .get::<Protocol>()
            .copied()
            .unwrap_or_default();
        // The record gets the span when the answer is ready (or the call
        // is dropped): until then the span is `Observed`'s.
        let record = Arc::new(Mutex::new(CallRecord::start(
            Side::Server,
            protocol,
            labels,
            Span::none(),
            peer,
            started.into_std(),
        )));
        parts.extensions.insert(CallFacts {
            started,
            method: labels.declared(),
            request_id: request_id.clone(),
            caller: CallerSlot::of(&record),
        });

        let body = observe_request(body, &record, Side::Server);
        let future = {
            let _entered = span.enter();
            self.inner.call(Request::from_parts(parts, body))
        };
        Observed {
            inner: Some(future),
            span,
            answer: Some(Answer {
                request_id,
                request_id_indexed,
                record,
            }),
        }
    }
}

pin_project_lite::pin_project! {
    /// The inner call's answer, run in the call's span, then observed: the
    /// request id echoed and the body counted until its status.
    ///
    /// The span is entered around each poll, and around the inner future's
    /// drop, as `tracing::Instrumented` does; it is held here until the
    /// answer is ready, then handed to the call's record, which logs the
    /// access line in it.
    pub struct Observed<F> {
        #[pin]
        inner: Option<F>,
        span: Span,
        answer: Option<Answer>,
    }

    impl<F> PinnedDrop for Observed<F> {
        fn drop(this: Pin<&mut Self>) {
            let mut this = this.project();
            {
                let _entered = this.span.enter();
                this.inner.set(None);
            }
            // Dropped before its answer: the record logs the call cancelled,
            // in its span.
            if let Some(answer) = this.answer.take() {
                answer.give_span(mem::replace(this.span, Span::none()));
            }
        }
    }
}

/// What an [`Observed`] call's answer is given and handed to.
struct Answer {
    request_id: HeaderValue,
    /// Whether HPACK may index the echoed request id (see the module docs).
    request_id_indexed: bool,
    record: Arc<Mutex<CallRecord>>,
}

impl Answer {
    fn give_span(&self, span: Span) {
        self.record
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set_span(span);
    }
}

impl<F, E> Future for Observed<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let polled = {
            let _entered = this.span.enter();
            this.inner
                .as_pin_mut()
                .expect("an Observed future is not polled after it is done")
                .poll(cx)
        };
        let mut response = ready!(polled)?;
        let answer = this
            .answer
            .take()
            .expect("an Observed future is not polled after it is done");
        answer.give_span(mem::replace(this.span, Span::none()));
        let echoed = if answer.request_id_indexed {
            answer.request_id
        } else {
            unique_to_the_call(answer.request_id)
        };
        response.headers_mut().insert(REQUEST_ID, echoed);
        Poll::Ready(Ok(observe_response(response, answer.record, Side::Server)))
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
    async fn only_the_first_answer_on_a_connection_lets_hpack_index_its_request_id() {
        let handler = service_fn(|_req: Request<Body>| async {
            Ok::<_, Infallible>(Response::new(Body::empty()))
        });
        let service = ObserveLayer.layer(handler);
        let echoed_on = |connection: Option<&ConnectionInfo>| {
            let mut request = Request::builder()
                .uri("http://test/shop.user.v1.UserService/GetUser")
                .body(Body::empty())
                .unwrap();
            if let Some(connection) = connection {
                request.extensions_mut().insert(connection.clone());
            }
            let service = service.clone();
            async move { service.oneshot(request).await.unwrap().headers()[REQUEST_ID].clone() }
        };
        let peer = |port| tonic::transport::server::TcpConnectInfo {
            local_addr: None,
            remote_addr: Some(std::net::SocketAddr::from(([127, 0, 0, 1], port))),
        };
        let (one, other) = (
            ConnectionInfo::new(peer(1000)),
            ConnectionInfo::new(peer(1001)),
        );
        assert!(
            !echoed_on(Some(&one)).await.is_sensitive(),
            "the first on one"
        );
        assert!(echoed_on(Some(&one)).await.is_sensitive(), "a later one");
        assert!(echoed_on(Some(&one)).await.is_sensitive());
        assert!(
            !echoed_on(Some(&other)).await.is_sensitive(),
            "the first on another"
        );
        assert!(
            echoed_on(None).await.is_sensitive(),
            "never indexed where the connection is unknown"
        );
    }

    /// An `access` line as the test sees it: the name of the span it was
    /// logged in, and its code.
    type AccessLine = (Option<&'static str>, String);

    /// Every `access` line logged.
    #[derive(Clone, Default)]
    struct AccessLines(Arc<Mutex<Vec<AccessLine>>>);

    impl<S> tracing_subscriber::Layer<S> for AccessLines
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        fn on_event(
            &self,
            event: &tracing::Event<'_>,
            ctx: tracing_subscriber::layer::Context<'_, S>,
        ) {
            struct Code(String);
            impl tracing::field::Visit for Code {
                fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
                    if field.name() == "code" {
                        self.0 = value.to_owned();
                    }
                }
                fn record_debug(&mut self, _: &tracing::field::Field, _: &dyn std::fmt::Debug) {}
            }
            if event.metadata().target() == "access" {
                let mut code = Code(String::new());
                event.record(&mut code);
                let span = ctx.event_span(event).map(|span| span.name());
                self.0.lock().unwrap().push((span, code.0));
            }
        }
    }

    #[tokio::test]
    async fn the_access_line_is_logged_in_the_call_s_span_whether_answered_or_dropped() {
        use tracing_subscriber::layer::SubscriberExt as _;

        let lines = AccessLines::default();
        let _logging =
            tracing::subscriber::set_default(tracing_subscriber::registry().with(lines.clone()));
        let request = || {
            Request::builder()
                .uri("http://test/shop.user.v1.UserService/GetUser")
                .body(Body::empty())
                .unwrap()
        };

        let answers = service_fn(|_req: Request<Body>| async {
            let mut response = Response::new(Body::empty());
            response
                .headers_mut()
                .insert("grpc-status", HeaderValue::from_static("0"));
            Ok::<_, Infallible>(response)
        });
        ObserveLayer
            .layer(answers)
            .oneshot(request())
            .await
            .unwrap();

        let never_answers = service_fn(|_req: Request<Body>| {
            std::future::pending::<Result<Response<Body>, Infallible>>()
        });
        let mut call = Box::pin(ObserveLayer.layer(never_answers).oneshot(request()));
        let waited = tokio::time::timeout(std::time::Duration::from_millis(20), &mut call).await;
        assert!(waited.is_err(), "the handler never answers");
        drop(call);

        assert_eq!(
            *lines.0.lock().unwrap(),
            [
                (Some("grpc.server"), "OK".to_owned()),
                (Some("grpc.server"), "Canceled".to_owned())
            ]
        );
    }

    #[tokio::test]
    async fn an_unusable_request_id_is_replaced_and_the_replacement_echoed() {
        let (seen, echoed) = ids("two words").await;
        assert_ne!(seen, "two words");
        assert!(valid_request_id(&seen), "{seen:?}");
        assert_eq!(echoed, seen);
    }
}
