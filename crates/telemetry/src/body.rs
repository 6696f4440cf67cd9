//! Seeing the messages and the end of a call: request and response bodies
//! wrapped to count gRPC messages each way and, for the response, to read
//! the final status from the trailers (or notice the call was abandoned).

use std::{
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use bytes::Bytes;
use http::Response;
use http_body::{Body as HttpBody, Frame, SizeHint};
use shop_core::status::{grpc_status, normalize_status};
use tonic::{Code, body::Body};

use crate::{call::CallRecord, metrics::Side};

/// Counts gRPC messages in a byte stream of length-prefixed frames
/// (1 flag byte, 4 length bytes, payload), across chunk boundaries.
#[derive(Debug, Default)]
struct MessageCounter {
    /// Header bytes of the current frame seen so far (0..5).
    header: [u8; 5],
    header_len: usize,
    /// Payload bytes of the current frame still to skip.
    remaining: u64,
}

impl MessageCounter {
    /// Feeds a chunk; returns how many messages it completed the header of.
    fn feed(&mut self, mut chunk: &[u8]) -> u64 {
        let mut messages = 0;
        while !chunk.is_empty() {
            if self.remaining > 0 {
                let skip = (self.remaining as usize).min(chunk.len());
                self.remaining -= skip as u64;
                chunk = &chunk[skip..];
                continue;
            }
            let take = (5 - self.header_len).min(chunk.len());
            self.header[self.header_len..self.header_len + take].copy_from_slice(&chunk[..take]);
            self.header_len += take;
            chunk = &chunk[take..];
            if self.header_len == 5 {
                messages += 1;
                self.remaining = u64::from(u32::from_be_bytes([
                    self.header[1],
                    self.header[2],
                    self.header[3],
                    self.header[4],
                ]));
                self.header_len = 0;
            }
        }
        messages
    }
}

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
    counter: MessageCounter,
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
            counter: MessageCounter::default(),
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
                    let n = this.counter.feed(data);
                    if n > 0 {
                        let direction = this.direction;
                        this.with_record(|r| match direction {
                            Direction::In => r.count(n, 0),
                            Direction::Out => r.count(0, n),
                        });
                    }
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
                normalize_status(&mut trailers);
                let code = grpc_status(&trailers).unwrap_or(Code::Unknown);
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
    normalize_status(&mut parts.headers);
    let body = match grpc_status(&parts.headers) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(len: u32) -> Vec<u8> {
        let mut f = vec![0u8];
        f.extend_from_slice(&len.to_be_bytes());
        f.extend(std::iter::repeat_n(7u8, len as usize));
        f
    }

    #[test]
    fn messages_are_counted_across_chunk_boundaries() {
        let mut bytes = frame(3);
        bytes.extend(frame(0));
        bytes.extend(frame(10));
        for split in 0..bytes.len() {
            let mut counter = MessageCounter::default();
            let n = counter.feed(&bytes[..split]) + counter.feed(&bytes[split..]);
            assert_eq!(n, 3, "split at {split}");
        }
        let mut counter = MessageCounter::default();
        assert_eq!(bytes.chunks(1).map(|c| counter.feed(c)).sum::<u64>(), 3);
    }
}
