//! REST/JSON on the gRPC port, from the protos' `google.api.http` options.
//!
//! A request that is not gRPC (nor gRPC-Web) is matched against the routes
//! of the served services ([`routes`]), its path, query and JSON body
//! become the RPC's request message ([`transcode`]), and it goes on as a
//! native gRPC call through the same layers as any other: auth (the
//! `Authorization` header), the deadline (`grpc-timeout`, e.g. `2S`),
//! size and rate limits, metrics (labelled `protocol="http"`), traces and
//! the access log. The answer comes back as JSON: the response message,
//! or for a failure the `google.rpc.Status` with its details under the
//! HTTP status `google/rpc/code.proto` gives the code ([`status`]). A
//! server-streaming RPC answers newline-delimited JSON
//! (`application/x-ndjson`): one `{"result": …}` line per message, and an
//! `{"error": …}` line if the stream fails after it started.
//!
//! `GET /openapi.json` answers the OpenAPI 3 document of the server's
//! routes ([`openapi`]), generated from the same descriptors.
//!
//! What is refused before the call is made (no route, a method the path
//! does not have, a body over its limit, JSON that does not fit the
//! message) never reaches the layers below, and is counted in
//! `shop_rest_refused_total{reason}` instead.

pub mod openapi;
pub mod routes;
pub mod status;
pub mod transcode;

use std::{
    convert::Infallible,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
};

use bytes::Bytes;
use futures_util::future::{BoxFuture, Either};
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version, header,
};
use http_body::Frame;
use http_body_util::{BodyExt as _, Full, Limited, StreamBody};
use prost_reflect::{DescriptorPool, MessageDescriptor};
use shop_telemetry::labels::Protocol;
use tonic::{Code, Status, body::Body};
use tower::{Layer, Service};

use self::{
    routes::{Found, Routes},
    status::{error_response, status_json},
    transcode::{Frames, frame, message_json, request_message},
};

/// How many times its protobuf limit (`max_request_bytes`) a method's JSON
/// body may be: field names, quoted numbers and base64 make JSON bigger
/// than the same message in protobuf. `MAX_MESSAGE_BYTES` caps it too.
pub const JSON_EXPANSION: usize = 8;

/// The shop protos' descriptors, decoded once.
pub fn descriptor_pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(shop_proto::FILE_DESCRIPTOR_SET)
            .expect("shop-proto's build script wrote a valid descriptor set")
    })
}

/// Serves the REST routes of the named services in front of the gRPC
/// stack.
#[derive(Debug, Clone)]
pub struct RestLayer {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    routes: Routes,
    openapi: Bytes,
    max_message_bytes: usize,
}

/// Where each server serves the OpenAPI document of its routes.
pub const OPENAPI_PATH: &str = "/openapi.json";

impl RestLayer {
    /// The routes of `services` (full names) served by the server named
    /// `server`; an error names a binding in the protos that cannot be
    /// served.
    pub fn new(
        server: &str,
        services: &[&str],
        max_message_bytes: usize,
    ) -> Result<RestLayer, String> {
        let routes = Routes::of_services(descriptor_pool(), services)?;
        let openapi = Bytes::from(openapi::document(server, &routes).to_string());
        Ok(RestLayer {
            shared: Arc::new(Shared {
                routes,
                openapi,
                max_message_bytes,
            }),
        })
    }
}

impl<S> Layer<S> for RestLayer {
    type Service = Rest<S>;

    fn layer(&self, inner: S) -> Rest<S> {
        Rest {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// The service of [`RestLayer`].
#[derive(Debug, Clone)]
pub struct Rest<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Service<Request<Body>> for Rest<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Either<S::Future, BoxFuture<'static, Result<Response<Body>, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        if is_grpc(request.headers()) {
            return Either::Left(self.inner.call(request));
        }
        // The service that was made ready goes with the call.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        Either::Right(Box::pin(call(Arc::clone(&self.shared), inner, request)))
    }
}

/// gRPC and gRPC-Web (`application/grpc…`) go straight through.
fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

fn refused(reason: &'static str, status: &Status) -> Response<Body> {
    metrics::counter!("shop_rest_refused_total", "reason" => reason).increment(1);
    tracing::debug!(reason, code = ?status.code(), message = status.message(), "REST request refused");
    error_response(status, descriptor_pool(), HeaderMap::new())
}

async fn call<S>(
    shared: Arc<Shared>,
    mut inner: S,
    request: Request<Body>,
) -> Result<Response<Body>, S::Error>
where
    S: Service<Request<Body>, Response = Response<Body>>,
{
    let (parts, body) = request.into_parts();
    if parts.method == Method::GET && parts.uri.path() == OPENAPI_PATH {
        return Ok(json_response(
            StatusCode::OK,
            HeaderMap::new(),
            Body::new(Full::new(shared.openapi.clone())),
            false,
        ));
    }
    let (route, captures) = match shared.routes.find(&parts.method, parts.uri.path()) {
        Found::Route(route, captures) => (route, captures),
        Found::OtherMethods(methods) => {
            let status = Status::unimplemented(format!(
                "{} is not served for {}",
                parts.method,
                parts.uri.path()
            ));
            let mut response = refused("method", &status);
            *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
            let allow = methods
                .iter()
                .map(Method::as_str)
                .collect::<Vec<_>>()
                .join(", ");
            if let Ok(allow) = HeaderValue::from_str(&allow) {
                response.headers_mut().insert(header::ALLOW, allow);
            }
            return Ok(response);
        }
        Found::Nothing => {
            let status = Status::not_found(format!(
                "no route for {} {}",
                parts.method,
                parts.uri.path()
            ));
            return Ok(refused("no_route", &status));
        }
    };

    let limit = shared.max_message_bytes.min(
        JSON_EXPANSION
            * crate::layers::size::max_request_bytes(&route.grpc_path, shared.max_message_bytes)
                as usize,
    );
    let body = match Limited::new(body, limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            let status = Status::resource_exhausted(format!(
                "the request body is over {limit} bytes, the limit of {} {}",
                route.method, route.template
            ));
            return Ok(refused("too_large", &status));
        }
        Err(e) => {
            let status = Status::cancelled(format!("reading the request body: {e}"));
            return Ok(refused("body", &status));
        }
    };
    let message = match request_message(route, &captures, parts.uri.query(), &body) {
        Ok(message) => message,
        Err(status) => return Ok(refused("invalid", &status)),
    };

    let mut grpc = Request::new(Body::new(Full::new(frame(&message))));
    *grpc.method_mut() = Method::POST;
    *grpc.uri_mut() = Uri::try_from(route.grpc_path.as_str()).expect("a path from the protos");
    // tonic-web, next inside, passes only HTTP/2 through as gRPC.
    *grpc.version_mut() = Version::HTTP_2;
    *grpc.headers_mut() = forwarded_headers(parts.headers);
    *grpc.extensions_mut() = parts.extensions;
    grpc.extensions_mut().insert(Protocol::Http);

    let (parts, body) = inner.call(grpc).await?.into_parts();
    let headers = answer_headers(&parts.headers);
    // A call that failed before answering anything (trailers only).
    if let Some(status) = Status::from_header_map(&parts.headers)
        && status.code() != Code::Ok
    {
        return Ok(error_response(&status, descriptor_pool(), headers));
    }
    let output = route.rpc.output();
    if route.rpc.is_server_streaming() {
        Ok(stream_response(headers, body, output))
    } else {
        Ok(unary_response(headers, body, output, shared.max_message_bytes).await)
    }
}

/// The caller's headers for the gRPC call: its token, deadline, request
/// id and trace context go on; what described the HTTP body does not.
fn forwarded_headers(mut headers: HeaderMap) -> HeaderMap {
    for name in [
        header::CONTENT_TYPE,
        header::CONTENT_LENGTH,
        header::CONTENT_ENCODING,
        header::TRANSFER_ENCODING,
        header::ACCEPT,
        header::ACCEPT_ENCODING,
        header::CONNECTION,
        header::TE,
        header::UPGRADE,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("grpc-encoding"),
        HeaderName::from_static("grpc-accept-encoding"),
    ] {
        headers.remove(name);
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert(header::TE, HeaderValue::from_static("trailers"));
    headers
}

/// The gRPC answer's headers a REST caller keeps (`x-request-id`, …).
fn answer_headers(headers: &HeaderMap) -> HeaderMap {
    let mut kept = HeaderMap::new();
    for (name, value) in headers {
        if name == header::CONTENT_TYPE
            || name == header::CONTENT_LENGTH
            || name.as_str().starts_with("grpc-")
        {
            continue;
        }
        kept.append(name, value.clone());
    }
    kept
}

fn json_response(
    status: StatusCode,
    headers: HeaderMap,
    body: Body,
    ndjson: bool,
) -> Response<Body> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(if ndjson {
            "application/x-ndjson"
        } else {
            "application/json"
        }),
    );
    response
}

async fn unary_response(
    headers: HeaderMap,
    body: Body,
    output: MessageDescriptor,
    max_message_bytes: usize,
) -> Response<Body> {
    let pool = descriptor_pool();
    // The service's own send limit bounds its message; this bounds the rest.
    let collected = match Limited::new(body, max_message_bytes + 1024).collect().await {
        Ok(collected) => collected,
        Err(e) => {
            let status = match e.downcast::<Status>() {
                Ok(status) => *status,
                Err(_) => Status::internal("the service's answer was cut short"),
            };
            return error_response(&status, pool, headers);
        }
    };
    let status = collected
        .trailers()
        .and_then(Status::from_header_map)
        .unwrap_or_else(|| Status::internal("the service's answer ended without a status"));
    if status.code() != Code::Ok {
        return error_response(&status, pool, headers);
    }
    let mut frames = Frames::default();
    frames.push(&collected.to_bytes());
    let json = match frames.next_message() {
        Ok(Some(payload)) => message_json(output, payload),
        Ok(None) => Err(Status::internal("the service answered no message")),
        Err(status) => Err(status),
    };
    match json {
        Ok(json) => json_response(
            StatusCode::OK,
            headers,
            Body::new(Full::new(Bytes::from(json.to_string()))),
            false,
        ),
        Err(status) => {
            tracing::error!(
                error = status.message(),
                "REST: the service's answer could not be written as JSON"
            );
            error_response(&Status::internal("internal error"), pool, headers)
        }
    }
}

/// A server stream as newline-delimited JSON. Nothing is read from the
/// service ahead of the caller (backpressure), and a caller that goes away
/// drops the body and with it the call.
fn stream_response(headers: HeaderMap, body: Body, output: MessageDescriptor) -> Response<Body> {
    struct State {
        body: Body,
        frames: Frames,
        output: MessageDescriptor,
        done: bool,
    }
    let state = State {
        body,
        frames: Frames::default(),
        output,
        done: false,
    };
    let lines = futures_util::stream::unfold(state, |mut state| async move {
        let error_line = |status: &Status| {
            let mut line =
                serde_json::json!({ "error": status_json(status, descriptor_pool()) }).to_string();
            line.push('\n');
            Ok::<_, Infallible>(Frame::data(Bytes::from(line)))
        };
        loop {
            if state.done {
                return None;
            }
            match state.frames.next_message() {
                Ok(Some(payload)) => {
                    return match message_json(state.output.clone(), payload) {
                        Ok(json) => {
                            let mut line = serde_json::json!({ "result": json }).to_string();
                            line.push('\n');
                            Some((Ok(Frame::data(Bytes::from(line))), state))
                        }
                        Err(status) => {
                            tracing::error!(
                                error = status.message(),
                                "REST: a streamed message could not be written as JSON"
                            );
                            state.done = true;
                            Some((error_line(&Status::internal("internal error")), state))
                        }
                    };
                }
                Ok(None) => {}
                Err(status) => {
                    state.done = true;
                    return Some((error_line(&status), state));
                }
            }
            match state.body.frame().await {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => state.frames.push(&data),
                    Err(frame) => {
                        state.done = true;
                        let status = frame
                            .trailers_ref()
                            .and_then(Status::from_header_map)
                            .unwrap_or_else(|| {
                                Status::unknown("the stream ended without a status")
                            });
                        if status.code() != Code::Ok {
                            return Some((error_line(&status), state));
                        }
                    }
                },
                Some(Err(status)) => {
                    state.done = true;
                    return Some((error_line(&status), state));
                }
                None => return None,
            }
        }
    });
    json_response(
        StatusCode::OK,
        headers,
        Body::new(StreamBody::new(lines)),
        true,
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http_body_util::BodyExt as _;
    use prost::Message as _;
    use tonic_types::{ErrorDetails, StatusExt as _};
    use tower::ServiceExt as _;

    use super::*;

    /// What the gRPC side of the layer saw.
    #[derive(Debug, Default, Clone)]
    struct Seen {
        path: String,
        content_type: String,
        grpc_timeout: String,
        authorization: String,
        protocol: Option<Protocol>,
        body: Vec<u8>,
    }

    /// The layer in front of a service that records the call and answers
    /// `answer`.
    async fn through(
        request: Request<Body>,
        answer: fn() -> Response<Body>,
    ) -> (Seen, Response<Body>) {
        let seen = Arc::new(std::sync::Mutex::new(Seen::default()));
        let recorder = Arc::clone(&seen);
        let inner = tower::service_fn(move |request: Request<Body>| {
            let recorder = Arc::clone(&recorder);
            async move {
                let (parts, body) = request.into_parts();
                let header = |name: &str| {
                    parts
                        .headers
                        .get(name)
                        .map(|v| v.to_str().unwrap().to_owned())
                        .unwrap_or_default()
                };
                let mut seen = Seen {
                    path: parts.uri.path().to_owned(),
                    content_type: header("content-type"),
                    grpc_timeout: header("grpc-timeout"),
                    authorization: header("authorization"),
                    protocol: parts.extensions.get::<Protocol>().copied(),
                    body: Vec::new(),
                };
                seen.body = body.collect().await.unwrap().to_bytes().to_vec();
                *recorder.lock().unwrap() = seen;
                Ok::<_, Infallible>(answer())
            }
        });
        let layer = RestLayer::new("user-service", &["shop.user.v1.UserService"], 1 << 20).unwrap();
        let response = layer.layer(inner).oneshot(request).await.unwrap();
        let seen = seen.lock().unwrap().clone();
        (seen, response)
    }

    fn get(path: &str) -> Request<Body> {
        Request::builder()
            .uri(path)
            .header("authorization", "Bearer t0ken")
            .header("grpc-timeout", "2S")
            .body(Body::default())
            .unwrap()
    }

    #[tokio::test]
    async fn a_rest_call_becomes_the_grpc_call_and_its_failure_a_status_with_retry_after() {
        let (seen, response) = through(get("/v1/users/u-1"), || {
            let details = ErrorDetails::with_retry_info(Some(Duration::from_millis(2500)));
            Status::with_error_details(Code::ResourceExhausted, "slow down", details).into_http()
        })
        .await;
        assert_eq!(seen.path, "/shop.user.v1.UserService/GetUser");
        assert_eq!(seen.content_type, "application/grpc");
        assert_eq!(seen.grpc_timeout, "2S", "the deadline goes on");
        assert_eq!(seen.authorization, "Bearer t0ken");
        assert_eq!(seen.protocol, Some(Protocol::Http));
        let request = shop_proto::user::v1::GetUserRequest::decode(&seen.body[5..]).unwrap();
        assert_eq!(
            request.identifier,
            Some(shop_proto::user::v1::get_user_request::Identifier::UserId(
                "u-1".into()
            ))
        );

        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "3");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["code"], 8);
        assert_eq!(
            json["details"][0]["@type"],
            "type.googleapis.com/google.rpc.RetryInfo"
        );
        assert_eq!(json["details"][0]["retryDelay"], "2.500s");
    }

    #[tokio::test]
    async fn grpc_goes_straight_through_and_an_answer_becomes_json() {
        let grpc = Request::builder()
            .uri("/shop.user.v1.UserService/GetUser")
            .header("content-type", "application/grpc")
            .body(Body::default())
            .unwrap();
        let (seen, _) = through(grpc, || Response::new(Body::default())).await;
        assert_eq!(seen.protocol, None, "native calls are not marked here");

        let (_, response) = through(get("/v1/users/u-1"), || {
            let user = shop_proto::user::v1::User {
                id: "u-1".into(),
                email: "ada@example.com".into(),
                ..Default::default()
            };
            let mut body = vec![0u8];
            body.extend_from_slice(&(user.encoded_len() as u32).to_be_bytes());
            body.extend_from_slice(&user.encode_to_vec());
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("0"));
            let frames = futures_util::stream::iter([
                Ok::<_, Infallible>(Frame::data(Bytes::from(body))),
                Ok(Frame::trailers(trailers)),
            ]);
            let mut response = Response::new(Body::new(StreamBody::new(frames)));
            response
                .headers_mut()
                .insert("x-request-id", HeaderValue::from_static("r-1"));
            response
        })
        .await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["x-request-id"], "r-1");
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"id": "u-1", "email": "ada@example.com"})
        );
    }

    #[tokio::test]
    async fn the_openapi_document_is_served_and_other_paths_are_404() {
        let (_, response) = through(get(OPENAPI_PATH), || unreachable!()).await;
        assert_eq!(response.status(), StatusCode::OK);
        let (_, response) = through(get("/v1/orders"), || unreachable!()).await;
        assert_eq!(
            response.status(),
            StatusCode::NOT_FOUND,
            "not a route of this server"
        );
    }
}
