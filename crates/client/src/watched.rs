//! Connections that tell when they end.
//!
//! A [`Connection`](crate::connection::Connection) whose connection closed
//! reconnects inside the next call made on it. When the peer was a replica
//! that is restarting, its address is gone: the SYN goes unanswered and
//! that call, with every call queued behind it, waits for the connect
//! timeout. The balancer avoids this by learning the moment a connection
//! ends (the server's GOAWAY after a graceful shutdown, end of stream, a
//! failed keepalive): the dialer wraps each stream it opens in [`Watched`],
//! whose drop (the connection's task drops the stream when the connection
//! is over) calls back, and the balancer then sends no calls there while
//! another endpoint is connected, and reconnects it in the background.

use std::{
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Counts the live connections of one channel and says when one ends.
#[derive(Clone)]
pub struct ConnectionWatch {
    live: Arc<AtomicUsize>,
    on_closed: Arc<dyn Fn() + Send + Sync>,
}

impl ConnectionWatch {
    /// A watch that runs `on_closed` whenever a connection it wraps ends.
    pub fn new(on_closed: impl Fn() + Send + Sync + 'static) -> ConnectionWatch {
        ConnectionWatch {
            live: Arc::default(),
            on_closed: Arc::new(on_closed),
        }
    }

    /// At least one connection it wraps is open.
    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire) > 0
    }

    /// `stream`, counted until it is dropped.
    pub fn wrap<S>(&self, stream: S) -> Watched<S> {
        self.live.fetch_add(1, Ordering::AcqRel);
        Watched {
            inner: stream,
            watch: self.clone(),
        }
    }
}

/// A stream whose end is reported to its [`ConnectionWatch`].
pub struct Watched<S> {
    inner: S,
    watch: ConnectionWatch,
}

impl<S> Drop for Watched<S> {
    fn drop(&mut self) {
        self.watch.live.fetch_sub(1, Ordering::AcqRel);
        (self.watch.on_closed)();
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use super::*;

    #[test]
    fn a_dropped_stream_is_counted_out_and_reported() {
        let ended = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&ended);
        let watch = ConnectionWatch::new(move || flag.store(true, Ordering::Release));
        assert!(!watch.is_live());
        let stream = watch.wrap(tokio::io::empty());
        assert!(watch.is_live());
        assert!(!ended.load(Ordering::Acquire));
        drop(stream);
        assert!(!watch.is_live());
        assert!(ended.load(Ordering::Acquire));
    }
}
