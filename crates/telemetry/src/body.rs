//! Seeing the messages and the end of a call: request and response bodies
//! wrapped to count gRPC messages each way and their sizes and, for the
//! response, to read the final status from the trailers (or notice the
//! call was abandoned).

use std::{
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use bytes::Bytes;
use http::Response;
use http_body::{Body as HttpBody, Frame, SizeHint};
use shop_core::{frames::FrameHeaders, status::normalize_status};
use tonic::{Code, body::Body};

use crate::{call::CallRecord, metrics::Side};

/// Which direction a wrapped body carries, for the counts.
#[derive(Debug, Clone, Copy)]
enum Direction {
    /// Messages to this process.
    In,
    /// Messages from this process.
    Out,
}

/// A body that counts messages and, for a response, finishes the call
/// record when the trailers (or the end) arrive.
pub struct ObservedBody {
    inner: Body,
    record: Arc<Mutex<CallRecord>>,
    frames: FrameHeaders,
    direction: Direction,
    /// True for the body that carries the final status.
    finishes: bool,
}

impl ObservedBody {
    fn new(
        inner: Body,
        record: Arc<Mutex<CallRecord>>,
        direction: Direction,
        finishes: bool,
    ) -> ObservedBody {
        ObservedBody {
            inner,
            record,
            frames: FrameHeaders::default(),
            direction,
            finishes,
        }
    }

    fn with_record(&self, f: impl FnOnce(&mut CallRecord)) {
        let mut record = self.record.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut record);
    }
}

impl HttpBody for ObservedBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let (direction, shared) = (this.direction, &this.record);
                    // Locked only by a chunk that completes a message header:
                    // the chunks of a large message's payload take no lock.
                    let mut record = None;
                    let _ = this.frames.feed::<()>(data, |len| {
                        let record = record.get_or_insert_with(|| {
                            shared.lock().unwrap_or_else(|p| p.into_inner())
                        });
                        match direction {
                            Direction::In => record.received_message(len),
                            Direction::Out => record.sent_message(len),
                        }
                        Ok(())
                    });
                }
            }
            Poll::Ready(None) if this.finishes => this.with_record(|r| r.finish(Code::Ok)),
            Poll::Ready(Some(Err(_))) if this.finishes => {
                this.with_record(|r| r.finish(Code::Internal))
            }
            _ => {}
        }
        // Trailers: normalise and record the final status.
        match polled {
            Poll::Ready(Some(Ok(frame))) if frame.is_trailers() && this.finishes => {
                let mut trailers = frame.into_trailers().unwrap_or_default();
                let code = normalize_status(&mut trailers).unwrap_or(Code::Unknown);
                this.with_record(|r| r.finish(code));
                Poll::Ready(Some(Ok(Frame::trailers(trailers))))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Hands the response to the call record: a trailers-only answer finishes
/// it now; otherwise its body is wrapped to count the messages that come
/// back and finish the record at the trailers.
pub fn observe_response(
    response: Response<Body>,
    record: Arc<Mutex<CallRecord>>,
    side: Side,
) -> Response<Body> {
    let (mut parts, body) = response.into_parts();
    let body = match normalize_status(&mut parts.headers) {
        Some(code) => {
            record
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .finish(code);
            body
        }
        None => {
            let direction = match side {
                Side::Server => Direction::Out,
                Side::Client => Direction::In,
            };
            Body::new(ObservedBody::new(body, record, direction, true))
        }
    };
    Response::from_parts(parts, body)
}

/// Wraps a request body to count the messages it carries.
pub fn observe_request(body: Body, record: &Arc<Mutex<CallRecord>>, side: Side) -> Body {
    let direction = match side {
        Side::Server => Direction::In,
        Side::Client => Direction::Out,
    };
    Body::new(ObservedBody::new(
        body,
        Arc::clone(record),
        direction,
        false,
    ))
}
