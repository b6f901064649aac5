//! A browser connection with deadlines: Pingora's transport stream wrapped so that reads fail
//! when the [`ReadClock`] says the client took too long (idle keep-alive, a header sent too
//! slowly) and writes fail when the client stopped taking bytes ([`WriteClock`]). Everything
//! else (addresses, digests, shutdown) is the wrapped stream's.

use super::deadlines::{ReadClock, Timeouts, WriteClock};
use async_trait::async_trait;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::SslDigest;
use pingora::protocols::tls::TlsRef;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// A transport stream whose reads and writes obey the connection's deadlines.
#[derive(Debug)]
pub struct GuardedStream {
    inner: Stream,
    reads: ReadClock,
    writes: WriteClock,
    /// Set by the connection loop when a request was answered and the next one may start.
    next_request: Arc<AtomicBool>,
    read_timer: Option<Pin<Box<Sleep>>>,
    write_timer: Option<Pin<Box<Sleep>>>,
}

impl GuardedStream {
    /// Wrap `inner`; storing `true` in `next_request` tells it that the next read waits for a
    /// new request.
    pub fn new(inner: Stream, timeouts: Timeouts, next_request: Arc<AtomicBool>) -> Self {
        GuardedStream {
            inner,
            reads: ReadClock::new(timeouts, Instant::now()),
            writes: WriteClock::new(timeouts.stalled_reader),
            next_request,
            read_timer: None,
            write_timer: None,
        }
    }

    /// Poll a write-like operation, failing it when the client has taken nothing for too long.
    fn poll_writing<T>(
        &mut self,
        cx: &mut Context<'_>,
        op: impl FnOnce(Pin<&mut Stream>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match op(Pin::new(&mut self.inner), cx) {
            Poll::Pending => {
                let deadline = self.writes.blocked(Instant::now());
                if timer_fired(&mut self.write_timer, deadline, cx) {
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client stopped reading",
                    )))
                } else {
                    Poll::Pending
                }
            }
            ready => {
                self.writes.progressed();
                ready
            }
        }
    }
}

/// Poll `timer` set to `deadline` (created or moved as needed); `true` once it has passed.
fn timer_fired(timer: &mut Option<Pin<Box<Sleep>>>, deadline: Instant, cx: &mut Context) -> bool {
    let sleep = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
    if sleep.deadline() != deadline {
        sleep.as_mut().reset(deadline);
    }
    sleep.as_mut().poll(cx).is_ready()
}

fn read_timed_out(reading_header: bool) -> io::Error {
    let what = if reading_header {
        "the request header"
    } else {
        "the next request"
    };
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("{what} did not arrive in time"),
    )
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.next_request.swap(false, Ordering::Relaxed) {
            this.reads.next_request(Instant::now());
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let now = Instant::now();
                this.reads.on_bytes(now, &buf.filled()[before..]);
                // A trickle of bytes never waits on the timer: check the deadline here too.
                match this.reads.deadline() {
                    Some(deadline) if now >= deadline => {
                        Poll::Ready(Err(read_timed_out(this.reads.reading_header())))
                    }
                    _ => Poll::Ready(Ok(())),
                }
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match this.reads.deadline() {
                Some(deadline) if timer_fired(&mut this.read_timer, deadline, cx) => {
                    Poll::Ready(Err(read_timed_out(this.reads.reading_header())))
                }
                _ => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .poll_writing(cx, |inner, cx| inner.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .poll_writing(cx, |inner, cx| inner.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut()
            .poll_writing(cx, |inner, cx| inner.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for GuardedStream {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for GuardedStream {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for GuardedStream {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for GuardedStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for GuardedStream {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for GuardedStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for GuardedStream {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}
