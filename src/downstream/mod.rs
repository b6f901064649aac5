//! The browser side of every connection: its request loop, and deadlines that Pingora's
//! HTTP/1 server does not enforce by itself.
//!
//! [`GuardedHttp`] reads each request header with Pingora's HTTP/1 session and hands it to a
//! [`Handler`] (the proxy), then reads the next one on the same connection; a header that is
//! not HTTP gets the handler's refusal and the connection closes.
//!
//! Pingora makes keep-alive "infinite" after an HTTP/1.1 request, times out each read of a
//! header separately (a header sent one byte at a time never ends) and each write separately
//! (a client that reads a byte now and then pins a stream). The loop runs over a
//! [`GuardedStream`] whose reads and writes obey [`Timeouts`]: an idle keep-alive limit, a
//! total deadline for a request header, and a stalled-reader limit on writes. The request body's total deadline is enforced where the
//! body is read (the request handler).

mod deadlines;
mod stream;

pub use deadlines::Timeouts;
pub use stream::GuardedStream;

use crate::errors::ApiError;
use async_trait::async_trait;
use bytes::BytesMut;
use pingora::apps::ServerApp;
use pingora::protocols::http::ServerSession;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use pingora::ErrorType;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::Notify;

/// What answers the requests of a browser connection, one at a time.
pub trait Handler: Send + Sync + 'static {
    /// Answer the request whose header `session` has read.
    fn serve(&self, session: &mut ServerSession) -> impl Future<Output = ()> + Send;
    /// Answer a request whose header could not be read (`err`); the connection closes after.
    /// The session has no request header: nothing may ask for it.
    fn refuse(
        &self,
        session: &mut ServerSession,
        err: &ApiError,
    ) -> impl Future<Output = ()> + Send;
}

/// The request loop of a browser connection, whose reads and writes obey [`Timeouts`]: read a
/// request header, let the [`Handler`] answer it, and go on with the next request on the same
/// connection while both sides keep it alive.
pub struct GuardedHttp<H> {
    handler: H,
    timeouts: Timeouts,
    /// Set when the service shuts down: a connection waiting for its next request closes.
    stopping: AtomicBool,
    stopped: Notify,
}

impl<H> GuardedHttp<H> {
    pub fn new(handler: H, timeouts: Timeouts) -> Self {
        GuardedHttp {
            handler,
            timeouts,
            stopping: AtomicBool::new(false),
            stopped: Notify::new(),
        }
    }

    /// Resolves once the service shuts down.
    async fn stopping(&self) {
        let stopped = self.stopped.notified();
        tokio::pin!(stopped);
        // Registered before the flag is read: a shutdown in between still wakes us.
        stopped.as_mut().enable();
        if !self.stopping.load(Ordering::Acquire) {
            stopped.await;
        }
    }
}

impl<H: Handler> GuardedHttp<H> {
    /// Read the next request header and answer it. The connection to read the request after
    /// it from (with what was already read of it), if the connection stays open.
    async fn one_request(
        &self,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<(Stream, Option<BytesMut>)> {
        let read = tokio::select! {
            // Biased: a request already sent is answered even when the service is stopping.
            biased;
            read = session.read_request() => read,
            _ = self.stopping() => return None,
        };
        match read {
            Ok(true) => {}
            Ok(false) => return None, // closed between requests
            Err(e) if e.etype() == &ErrorType::InvalidHTTPHeader => {
                log::debug!("refused a malformed request header: {e}");
                self.handler.refuse(&mut session, &bad_header(&e)).await;
                session.shutdown().await;
                return None;
            }
            Err(e) => {
                log::debug!("browser connection ended while a request header was read: {e}");
                return None;
            }
        }
        if *shutdown.borrow() {
            session.set_keepalive(None);
        }
        self.handler.serve(&mut session).await;
        let reusable = session.finish().await.ok().flatten()?;
        Some(reusable.into_parts())
    }
}

/// The answer to a request header Pingora's parser refused: 431 for one too large (so a
/// client knows to send less), 400 for any other.
fn bad_header(e: &pingora::Error) -> ApiError {
    let why = e.context.as_ref().map(|c| c.as_str()).unwrap_or_default();
    if why.contains("larger than") {
        ApiError::new(431, "header_too_large", "the request header is too large")
    } else {
        ApiError::new(400, "bad_request", "the request is not valid HTTP/1.1")
    }
}

#[async_trait]
impl<H: Handler> ServerApp for GuardedHttp<H> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let next_request = Arc::new(AtomicBool::new(false));
        let mut stream: Stream = Box::new(GuardedStream::new(
            stream,
            self.timeouts,
            next_request.clone(),
        ));
        let mut already_read = None;
        loop {
            let mut session = ServerSession::new_http1(stream);
            // Our deadlines rule; Pingora's keep-alive only says whether to reuse the connection.
            session.set_keepalive(Some(0));
            if let Some(prefix) = already_read {
                session.set_pipelined_prefix(prefix);
            }
            (stream, already_read) = self.one_request(session, shutdown).await?;
            next_request.store(true, Ordering::Relaxed);
        }
    }

    async fn cleanup(&self) {
        self.stopping.store(true, Ordering::Release);
        self.stopped.notify_waiters();
    }
}
