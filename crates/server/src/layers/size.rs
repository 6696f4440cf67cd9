//! Refusing a request message larger than its method accepts, from its
//! length prefix, before it is read.
//!
//! tonic has one decoding limit per service. A method whose valid requests
//! are a few hundred bytes would then accept megabytes, and decoding a
//! message of a million empty list items costs far more memory and CPU than
//! the message itself. Each RPC declares its largest request in its proto
//! (`shop.options.v1.max_request_bytes`, see `shop_proto::policy`); this
//! layer reads every request message's 5-byte prefix as the bytes arrive
//! and ends the call with RESOURCE_EXHAUSTED as soon as a declared length
//! is over the method's limit, before the payload is buffered or decoded.
//! For client streams the limit holds for each message.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::Request;
use http_body::{Body as HttpBody, Frame, SizeHint};
use shop_core::frames::FrameHeaders;
use shop_proto::policy::MethodPolicy;
use tonic::{Status, body::Body};
use tower::{Layer, Service};

/// The limit for requests of methods no shop proto declares (health,
/// reflection): their requests are a name or two.
pub const UNDECLARED_MAX_REQUEST_BYTES: u32 = 4 * 1024;

/// The largest request message `path` accepts: its declared
/// `max_request_bytes`, or [`UNDECLARED_MAX_REQUEST_BYTES`], and never more
/// than `cap` (the server's `MAX_MESSAGE_BYTES`).
pub fn max_request_bytes(path: &str, cap: usize) -> u32 {
    limit_of(shop_proto::policy::lookup(path), cap)
}

/// [`max_request_bytes`] of a method whose policy is `method`.
fn limit_of(method: Option<&MethodPolicy>, cap: usize) -> u32 {
    let declared = method
        .map(|m| m.max_request_bytes)
        .filter(|&n| n > 0)
        .unwrap_or(UNDECLARED_MAX_REQUEST_BYTES);
    declared.min(u32::try_from(cap).unwrap_or(u32::MAX))
}

/// Builds [`RequestSize`] services.
#[derive(Debug, Clone, Copy)]
pub struct RequestSizeLayer {
    cap: usize,
}

impl RequestSizeLayer {
    /// Per-method limits, none above `cap` bytes.
    pub fn new(cap: usize) -> RequestSizeLayer {
        RequestSizeLayer { cap }
    }
}

impl<S> Layer<S> for RequestSizeLayer {
    type Service = RequestSize<S>;

    fn layer(&self, inner: S) -> RequestSize<S> {
        RequestSize {
            inner,
            cap: self.cap,
        }
    }
}

/// See [`RequestSizeLayer`].
#[derive(Debug, Clone)]
pub struct RequestSize<S> {
    inner: S,
    cap: usize,
}

impl<S> Service<Request<Body>> for RequestSize<S>
where
    S: Service<Request<Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let limit = limit_of(super::call_facts::method_of(&req), self.cap);
        self.inner
            .call(req.map(|body| Body::new(SizeLimitedBody::new(body, limit))))
    }
}

/// A request body that fails with RESOURCE_EXHAUSTED at the first message
/// prefix declaring more than `limit` bytes.
pub struct SizeLimitedBody {
    inner: Body,
    frames: FrameHeaders,
    limit: u32,
    refused: bool,
}

impl SizeLimitedBody {
    /// Wraps `inner` with a per-message limit of `limit` bytes.
    pub fn new(inner: Body, limit: u32) -> SizeLimitedBody {
        SizeLimitedBody {
            inner,
            frames: FrameHeaders::default(),
            limit,
            refused: false,
        }
    }
}

impl HttpBody for SizeLimitedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        if this.refused {
            return Poll::Ready(None);
        }
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            let limit = this.limit;
            let checked = this.frames.feed(data, |len| {
                if len > limit {
                    Err(Status::resource_exhausted(format!(
                        "request message of {len} bytes is larger than this method accepts \
                         ({limit} bytes)"
                    )))
                } else {
                    Ok(())
                }
            });
            if let Err(refusal) = checked {
                this.refused = true;
                return Poll::Ready(Some(Err(refusal)));
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.refused || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt as _;
    use tonic::Code;

    use super::*;

    fn message(len: u32) -> Bytes {
        let mut bytes = vec![0u8];
        bytes.extend_from_slice(&len.to_be_bytes());
        bytes.resize(5 + len as usize, 1);
        Bytes::from(bytes)
    }

    #[test]
    fn each_method_gets_its_declared_limit_under_the_cap() {
        assert_eq!(
            max_request_bytes("/shop.order.v1.OrderService/CreateOrder", 4 << 20),
            32 * 1024
        );
        assert_eq!(
            max_request_bytes("/shop.order.v1.OrderService/CreateOrder", 1000),
            1000
        );
        assert_eq!(
            max_request_bytes("/grpc.health.v1.Health/Watch", 4 << 20),
            UNDECLARED_MAX_REQUEST_BYTES
        );
    }

    #[tokio::test]
    async fn a_message_within_the_limit_passes_untouched() {
        let body = SizeLimitedBody::new(Body::new(http_body_util::Full::new(message(100))), 100);
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(bytes, message(100));
    }

    #[tokio::test]
    async fn a_larger_message_is_refused_from_its_prefix() {
        // Only the prefix arrives: the refusal does not wait for the rest.
        let prefix = message(1_000_000).slice(..5);
        let mut body = SizeLimitedBody::new(Body::new(http_body_util::Full::new(prefix)), 32768);
        let refused = body.frame().await.unwrap().unwrap_err();
        assert_eq!(refused.code(), Code::ResourceExhausted);
        assert!(refused.message().contains("1000000"), "{refused:?}");
        assert!(body.frame().await.is_none(), "nothing after the refusal");
    }
}
