//! The browser side of every connection: deadlines that Pingora's HTTP/1 server does not
//! enforce by itself.
//!
//! Pingora makes keep-alive "infinite" after an HTTP/1.1 request, times out each read of a
//! header separately (a header sent one byte at a time never ends) and each write separately
//! (a client that reads a byte now and then pins a stream). [`GuardedHttp`] runs the proxy's
//! connection loop itself, over a [`GuardedStream`] whose reads and writes obey
//! [`Timeouts`]: an idle keep-alive limit, a total deadline for a request header, and a
//! stalled-reader limit on writes. The request body's total deadline is enforced where the
//! body is read (the request handler).

mod deadlines;
mod stream;

pub use deadlines::Timeouts;
pub use stream::GuardedStream;

use async_trait::async_trait;
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// An HTTP/1 server app (the proxy) whose connections obey [`Timeouts`].
pub struct GuardedHttp<A> {
    app: Arc<A>,
    timeouts: Timeouts,
}

impl<A> GuardedHttp<A> {
    pub fn new(app: A, timeouts: Timeouts) -> Self {
        GuardedHttp {
            app: Arc::new(app),
            timeouts,
        }
    }
}

#[async_trait]
impl<A> ServerApp for GuardedHttp<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let next_request = Arc::new(AtomicBool::new(false));
        let stream: Stream = Box::new(GuardedStream::new(
            stream,
            self.timeouts,
            next_request.clone(),
        ));
        let mut session = ServerSession::new_http1(stream);
        // Our deadlines rule; Pingora's keep-alive only says whether to reuse the connection.
        session.set_keepalive(if *shutdown.borrow() { None } else { Some(0) });
        let mut reused = self.app.process_new_http(session, shutdown).await;
        while let Some((stream, settings)) = reused.map(|r| r.consume()) {
            next_request.store(true, Ordering::Relaxed);
            let mut session = ServerSession::new_http1(stream);
            if let Some(settings) = settings {
                settings.apply_to_session(&mut session);
            }
            reused = self.app.process_new_http(session, shutdown).await;
        }
        None
    }

    async fn cleanup(&self) {
        self.app.http_cleanup().await;
    }
}
