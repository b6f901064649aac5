//! Idle upstream connections kept for the next request: at most `pool_size` in all, the
//! least recently used closed first, none older than `pool_idle_timeout`.
//!
//! Pingora's pool watches every idle connection with a task of its own (spawned at each
//! release) and asks the kernel for the peer's address at each reuse. Ours does neither: a
//! connection is checked when it is put back and when it is taken (a read that must find
//! nothing: a closed connection reads its end, one with stray bytes is of no use), and the
//! expired ones go when the pool is next used. What an upstream closed while idle therefore
//! waits for the next request to be dropped, bounded by `pool_size`; the client retries a
//! pooled connection that fails before answering on a fresh one.

use pingora::protocols::Stream;
use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::time::Instant;

/// Idle connections, oldest first.
pub struct IdlePool {
    max: usize,
    idle_timeout: Duration,
    idle: Mutex<VecDeque<Idle>>,
}

struct Idle {
    addr: SocketAddr,
    stream: Stream,
    since: Instant,
}

impl IdlePool {
    pub fn new(max: usize, idle_timeout: Duration) -> Self {
        IdlePool {
            max,
            idle_timeout,
            idle: Mutex::new(VecDeque::new()),
        }
    }

    /// The most recently used idle connection to `addr` that is still open, if any.
    pub fn take(&self, addr: SocketAddr) -> Option<Stream> {
        loop {
            let (found, expired) = {
                let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
                let expired = self.expire(&mut idle, Instant::now());
                let at = idle.iter().rposition(|c| c.addr == addr);
                (at.and_then(|at| idle.remove(at)), expired)
            };
            // Closed, and checked (a dead one dropped), outside the lock.
            drop(expired);
            let mut stream = found?.stream;
            if still_open(&mut stream) {
                return Some(stream);
            }
        }
    }

    /// Keep `stream`, whose last response was read to its end, for the next request to
    /// `addr`. The oldest idle connection is closed when the pool is full.
    pub fn put(&self, addr: SocketAddr, mut stream: Stream) {
        if self.max == 0 || !still_open(&mut stream) {
            return;
        }
        let now = Instant::now();
        let dropped = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            let mut dropped = self.expire(&mut idle, now);
            while idle.len() >= self.max {
                dropped.extend(idle.pop_front());
            }
            idle.push_back(Idle {
                addr,
                stream,
                since: now,
            });
            dropped
        };
        drop(dropped); // closed outside the lock
    }

    /// How many idle connections are kept now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Takes the connections idle for longer than the timeout out of `idle` (the oldest are at
    /// the front), for the caller to close.
    fn expire(&self, idle: &mut VecDeque<Idle>, now: Instant) -> Vec<Idle> {
        let mut expired = Vec::new();
        while idle
            .front()
            .is_some_and(|c| now.saturating_duration_since(c.since) >= self.idle_timeout)
        {
            expired.extend(idle.pop_front());
        }
        expired
    }
}

/// Whether an idle connection can carry a request: a read now must find nothing to read (an
/// upstream never speaks first; a closed connection reads its end at once). Costs no system
/// call while the runtime knows the socket has nothing to read.
fn still_open(stream: &mut Stream) -> bool {
    let mut byte = [0u8; 1];
    // Unconstrained: a read that is ready must not be turned into "not yet" by the task's
    // budget.
    now_or_never(tokio::task::unconstrained(stream.read(&mut byte))).is_none()
}

/// The future's output if it is ready at its first poll.
fn now_or_never<F: Future>(future: F) -> Option<F::Output> {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(future).poll(&mut cx) {
        Poll::Ready(output) => Some(output),
        Poll::Pending => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    /// A connected pair: our end as a Pingora stream, and the server's end.
    async fn pair(listener: &TcpListener) -> (Stream, TcpStream) {
        let addr = listener.local_addr().unwrap();
        let (ours, theirs) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let ours: pingora::protocols::l4::stream::Stream = ours.unwrap().into();
        (Box::new(ours), theirs.unwrap().0)
    }

    async fn listener() -> (TcpListener, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        (listener, addr)
    }

    #[tokio::test]
    async fn a_connection_put_back_is_taken_again_for_its_address_only() {
        let (listener, addr) = listener().await;
        let pool = IdlePool::new(4, Duration::from_secs(60));
        let (stream, _server) = pair(&listener).await;
        pool.put(addr, stream);
        let other: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert!(pool.take(other).is_none());
        assert!(pool.take(addr).is_some());
        assert!(pool.take(addr).is_none());
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_is_not_taken() {
        let (listener, addr) = listener().await;
        let pool = IdlePool::new(4, Duration::from_secs(60));
        let (stream, server) = pair(&listener).await;
        pool.put(addr, stream);
        drop(server);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(pool.take(addr).is_none());
        assert_eq!(pool.len(), 0);
    }

    #[tokio::test]
    async fn a_connection_with_unread_bytes_is_not_kept() {
        let (listener, addr) = listener().await;
        let pool = IdlePool::new(4, Duration::from_secs(60));
        let (stream, mut server) = pair(&listener).await;
        server.write_all(b"HTTP/1.1 200 OK\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        pool.put(addr, stream);
        assert_eq!(pool.len(), 0);
    }

    #[tokio::test]
    async fn the_oldest_is_closed_when_full_and_the_newest_is_taken_first() {
        let (listener, addr) = listener().await;
        let pool = IdlePool::new(2, Duration::from_secs(60));
        let mut servers = Vec::new();
        let mut ids = Vec::new();
        for _ in 0..3 {
            let (stream, server) = pair(&listener).await;
            ids.push(stream.id());
            servers.push(server);
            pool.put(addr, stream);
        }
        assert_eq!(pool.len(), 2);
        assert_eq!(pool.take(addr).map(|s| s.id()), Some(ids[2]));
        assert_eq!(pool.take(addr).map(|s| s.id()), Some(ids[1]));
        assert!(pool.take(addr).is_none());
        // The first one was closed: its server end reads the end of the stream.
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), servers[0].read(&mut byte));
        assert_eq!(read.await.unwrap().unwrap(), 0);
    }

    #[tokio::test]
    async fn an_idle_connection_expires() {
        let (listener, addr) = listener().await;
        let pool = IdlePool::new(4, Duration::from_millis(30));
        let (stream, _server) = pair(&listener).await;
        pool.put(addr, stream);
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(pool.take(addr).is_none());
        assert_eq!(pool.len(), 0);
    }

    #[tokio::test]
    async fn a_pool_of_size_zero_keeps_nothing() {
        let (listener, addr) = listener().await;
        let pool = IdlePool::new(0, Duration::from_secs(60));
        let (stream, _server) = pair(&listener).await;
        pool.put(addr, stream);
        assert_eq!(pool.len(), 0);
    }
}
