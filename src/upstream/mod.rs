//! The HTTP client that talks to OpenAI (or the stub).
//!
//! Built on Pingora's own `TransportConnector` (TCP, rustls); the pool of idle connections
//! (`pool`) and the HTTP/1 exchange on a connection are ours: the request goes out in one write, the response header
//! is parsed by `head` and the body decoded by `body`, without a read buffer kept between two
//! reads (Pingora's HTTP/1 client keeps 64 KiB per response, the bulk of a held stream's
//! memory). Every call gets a fresh request header with the tenant's key; the response is
//! either read whole (small JSON answers) or chunk by chunk (streams), with a first-byte
//! timeout and an idle timeout between chunks. A connection goes back to the pool only when
//! its response was read to the end (by its framing, with nothing behind it, and a header
//! that allows keep-alive).
//!
//! The host's addresses (from DNS, or static ones from `[upstream] resolve`) are tried one
//! after the other until one connects, each within `address_connect_timeout` and all of them
//! within `connect_timeout`; the one that connected is tried first next time (`addresses`).
//! Idle connections are kept by address: a request reuses only connections to the address it
//! is trying, a response goes back with the address it came from, and when another address
//! takes over, the old one's idle connections are left to expire (`pool_idle_timeout`) rather
//! than reused. At most `pool_size` idle connections are kept in all (the least recently used
//! are closed first); a pooled connection keeps no buffer, only its socket.

mod addresses;
mod body;
mod dns;
mod head;
mod pool;

use crate::config::{Secret, UpstreamSettings};
use bytes::{Bytes, BytesMut};
use http::Method;
use pingora::connectors::{ConnectorOptions, TransportConnector};
use pingora::protocols::Stream;
use pingora::upstreams::peer::HttpPeer;
use pingora::ErrorType;
use std::fmt;
use std::future::Future;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;
// Every exchange arms a few timeouts (connecting, sending, the first byte, each chunk) that
// almost never fire. Pingora's fast timeouts share one timer per 10 ms tick and arm it only
// when the future first waits; a Tokio timer would be armed each time and, being the earliest,
// wake the runtime's driver with a write (an `eventfd` syscall per request).
use pingora_timeout::fast_timeout::fast_timeout as timeout;

use addresses::{attempt_order, Preferred};
use body::BodyDecoder;
use head::{Head, Parsed};
use pool::IdlePool;

pub use dns::Resolver;

/// Largest non-streamed upstream body read into memory.
const MAX_JSON_BODY: usize = 4 * 1024 * 1024;

/// Why a body that should be JSON was refused.
pub const NOT_JSON: &str = "the body is not JSON";

/// One request to the upstream API.
#[derive(Debug, Clone)]
pub struct UpstreamRequest {
    pub method: Method,
    /// Path below the base URL, e.g. `/threads/thread_abc/runs`.
    pub path: String,
    /// JSON body, if any.
    pub body: Option<Bytes>,
    /// Extra headers, e.g. `OpenAI-Beta`.
    pub headers: Vec<(&'static str, &'static str)>,
    /// Whether an event stream is expected (sets `Accept: text/event-stream`).
    pub stream: bool,
}

impl UpstreamRequest {
    /// A JSON `POST`.
    pub fn post(path: impl Into<String>, body: &serde_json::Value) -> Self {
        UpstreamRequest {
            method: Method::POST,
            path: path.into(),
            body: Some(Bytes::from(body.to_string())),
            headers: Vec::new(),
            stream: false,
        }
    }

    /// A form `POST` (`application/x-www-form-urlencoded`; `body` already encoded).
    pub fn form(path: impl Into<String>, body: String) -> Self {
        UpstreamRequest {
            method: Method::POST,
            path: path.into(),
            body: Some(Bytes::from(body)),
            headers: vec![("Content-Type", "application/x-www-form-urlencoded")],
            stream: false,
        }
    }

    /// A `GET`.
    pub fn get(path: impl Into<String>) -> Self {
        UpstreamRequest {
            method: Method::GET,
            path: path.into(),
            body: None,
            headers: Vec::new(),
            stream: false,
        }
    }

    pub fn header(mut self, name: &'static str, value: &'static str) -> Self {
        self.headers.push((name, value));
        self
    }

    pub fn streaming(mut self) -> Self {
        self.stream = true;
        self
    }
}

/// Why an upstream exchange failed (never carries upstream bodies or headers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamError {
    /// The upstream could not be resolved or connected to.
    Unreachable(String),
    /// A timeout expired; the text names the stage.
    Timeout(&'static str),
    /// The connection broke or the upstream spoke bad HTTP.
    Broken(String),
    /// A non-streamed body was larger than we accept.
    TooLarge,
}

impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpstreamError::Unreachable(why) => write!(f, "upstream unreachable: {why}"),
            UpstreamError::Timeout(stage) => write!(f, "upstream timed out {stage}"),
            UpstreamError::Broken(why) => write!(f, "upstream connection failed: {why}"),
            UpstreamError::TooLarge => f.write_str("upstream body too large"),
        }
    }
}

/// The shared upstream client: one per process.
pub struct UpstreamClient {
    /// Pingora's TCP/TLS connector (HTTP/1 is ours: see [`UpstreamResponse`]).
    connector: TransportConnector,
    /// Idle connections, by address.
    pool: IdlePool,
    settings: UpstreamSettings,
    resolver: Resolver,
    /// The static addresses of `[upstream] resolve`, if any: used instead of DNS.
    pinned: Option<Arc<[SocketAddr]>>,
    /// The address that last connected.
    preferred: Preferred,
    /// The `Host` header of every request: the host, and the port unless it is the scheme's.
    host_header: String,
}

impl UpstreamClient {
    pub fn new(settings: UpstreamSettings) -> Arc<Self> {
        let pinned: Option<Arc<[SocketAddr]>> = (!settings.resolve.is_empty()).then(|| {
            let port = settings.port;
            settings
                .resolve
                .iter()
                .map(|ip| SocketAddr::new(*ip, port))
                .collect()
        });
        if let Some(pinned) = &pinned {
            log::info!(
                "upstream {}: static addresses {pinned:?} (resolve), not DNS",
                settings.host
            );
        }
        let default_port = if settings.tls { 443 } else { 80 };
        let host_header = if settings.port == default_port {
            host_for_header(&settings.host)
        } else {
            format!("{}:{}", host_for_header(&settings.host), settings.port)
        };
        Arc::new(UpstreamClient {
            host_header,
            connector: TransportConnector::new(Some(connector_options())),
            pool: IdlePool::new(settings.pool_size, settings.pool_idle_timeout),
            settings,
            resolver: Resolver::new(),
            pinned,
            preferred: Preferred::default(),
        })
    }

    pub fn settings(&self) -> &UpstreamSettings {
        &self.settings
    }

    /// The peer for `addr`: TCP connect within `tcp`, TCP and TLS within `total`.
    fn peer(&self, addr: SocketAddr, tcp: Duration, total: Duration) -> HttpPeer {
        let s = &self.settings;
        let mut peer = HttpPeer::new(addr, s.tls, s.host.clone());
        peer.options.connection_timeout = Some(tcp);
        peer.options.total_connection_timeout = Some(total);
        peer
    }

    /// The addresses to try for one request, in order.
    async fn candidates(&self) -> Result<Vec<SocketAddr>, UpstreamError> {
        let s = &self.settings;
        let unresolved = |e| UpstreamError::Unreachable(format!("resolving {}: {e}", s.host));
        let all = match &self.pinned {
            Some(pinned) => pinned.clone(),
            None => self
                .resolver
                .resolve(&s.host, s.port)
                .await
                .map_err(unresolved)?,
        };
        Ok(attempt_order(&all, self.preferred.get()))
    }

    /// A connection to the first of `candidates` that connects (a pooled one counts), whether
    /// it was pooled, and its pool's key. Each address but the last gets
    /// `address_connect_timeout`; all together get `connect_timeout`. A failed address is
    /// logged and the next one tried; only when none is left does the request fail, with the
    /// last address's error (a timeout when the time ran out).
    async fn connect(
        &self,
        candidates: &[SocketAddr],
    ) -> Result<(Stream, bool, SocketAddr), UpstreamError> {
        let s = &self.settings;
        let deadline = Instant::now() + s.connect_timeout;
        let mut failure = UpstreamError::Unreachable(format!("{} has no address", s.host));
        for (i, &addr) in candidates.iter().enumerate() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                failure = UpstreamError::Timeout("connecting");
                break;
            }
            let next = candidates.get(i + 1);
            let tcp = match next {
                Some(_) => s.address_connect_timeout.min(left),
                None => left,
            };
            if let Some(stream) = self.pool.take(addr) {
                self.preferred.worked(addr);
                return Ok((stream, true, addr));
            }
            let peer = self.peer(addr, tcp, left);
            // Boxed: Pingora's connect future (TCP, TLS) is several KiB, and every future that
            // awaits a request would otherwise carry that much for as long as it lives, a
            // held stream included.
            let connecting = Box::pin(self.connector.new_stream(&peer));
            let why = match timeout(left, connecting).await {
                Ok(Ok(stream)) => {
                    if let Some(old) = self.preferred.worked(addr) {
                        log::info!("upstream {}: now connecting to {addr} (was {old})", s.host);
                    }
                    return Ok((stream, false, addr));
                }
                Ok(Err(e)) => {
                    failure = classify_connect_error(&e);
                    e.etype().as_str()
                }
                Err(_) => {
                    failure = UpstreamError::Timeout("connecting");
                    "timed out"
                }
            };
            match next {
                Some(next) => log::warn!(
                    "upstream {}: connecting to {addr} failed ({why}); trying {next}",
                    s.host
                ),
                None if candidates.len() > 1 => log::warn!(
                    "upstream {}: connecting to {addr} failed ({why}); no address left",
                    s.host
                ),
                None => {}
            }
        }
        Err(failure)
    }

    /// `req` on the wire, header and body in one buffer, so that it goes out in one write
    /// (one segment on the loopback or LAN, where a header and a body written apart cost two
    /// sends and two wake-ups of the upstream). Headers in this order: `Host`,
    /// `Authorization`, `User-Agent`, `Accept`, the request's own, `Content-Type`,
    /// `Content-Length`.
    fn request_bytes(
        &self,
        req: &UpstreamRequest,
        key: Option<&Secret>,
    ) -> Result<Vec<u8>, UpstreamError> {
        let s = &self.settings;
        let bad = |what: &str| UpstreamError::Broken(format!("building request: {what}"));
        let target = [s.base_path.as_bytes(), req.path.as_bytes()];
        if target.iter().any(|part| !valid_target(part)) {
            return Err(bad("the path has a byte a request line cannot carry"));
        }
        let body = req.body.as_deref().unwrap_or_default();
        let mut wire = Vec::with_capacity(256 + req.path.len() + body.len());
        let method = req.method.as_str().as_bytes();
        for part in [method, b" ", target[0], target[1], b" HTTP/1.1\r\n"] {
            wire.extend_from_slice(part);
        }
        let mut header = |name: &str, value: &[&[u8]]| {
            wire.extend_from_slice(name.as_bytes());
            wire.extend_from_slice(b": ");
            value.iter().for_each(|v| wire.extend_from_slice(v));
            wire.extend_from_slice(b"\r\n");
        };
        header("Host", &[self.host_header.as_bytes()]);
        if let Some(key) = key {
            let key = key.expose().as_bytes();
            if !valid_header_value(key) {
                return Err(bad("the API key has a byte a header cannot carry"));
            }
            header("Authorization", &[b"Bearer ", key]);
        }
        header("User-Agent", &[USER_AGENT.as_bytes()]);
        let accept = if req.stream {
            "text/event-stream"
        } else {
            "application/json"
        };
        header("Accept", &[accept.as_bytes()]);
        for (name, value) in &req.headers {
            if !valid_header_name(name) || !valid_header_value(value.as_bytes()) {
                return Err(bad("a header has a byte it cannot carry"));
            }
            header(name, &[value.as_bytes()]);
        }
        match &req.body {
            Some(body) => {
                let typed = req
                    .headers
                    .iter()
                    .any(|(name, _)| name.eq_ignore_ascii_case("content-type"));
                if !typed {
                    header("Content-Type", &[b"application/json"]);
                }
                let length = body.len().to_string();
                header("Content-Length", &[length.as_bytes()]);
            }
            None if req.method == Method::POST => header("Content-Length", &[b"0"]),
            None => {}
        }
        wire.extend_from_slice(b"\r\n");
        wire.extend_from_slice(body);
        Ok(wire)
    }

    /// Send `req` with the tenant's `key` and wait for the response header.
    ///
    /// The host's addresses are tried in turn until one connects (see [`Self::connect`]); only
    /// connecting is repeated there, never a request. A pooled connection that turns out to
    /// be dead before any response byte is retried once on a fresh connection.
    pub async fn send(
        self: &Arc<Self>,
        req: &UpstreamRequest,
        key: &Secret,
    ) -> Result<UpstreamResponse, UpstreamError> {
        self.send_with(req, Some(key)).await
    }

    /// [`Self::send`] without an `Authorization` header, for endpoints that take their
    /// credentials in the body (Turnstile's siteverify).
    pub async fn send_without_key(
        self: &Arc<Self>,
        req: &UpstreamRequest,
    ) -> Result<UpstreamResponse, UpstreamError> {
        self.send_with(req, None).await
    }

    async fn send_with(
        self: &Arc<Self>,
        req: &UpstreamRequest,
        key: Option<&Secret>,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let candidates = self.candidates().await?;
            let (stream, reused, pool_key) = self.connect(&candidates).await?;
            match self.exchange(stream, req, key).await {
                Ok((stream, head, mut body, preread)) => {
                    let mut pending = BytesMut::new();
                    let fed = body.feed(&preread, |data| pending.extend_from_slice(data));
                    let deferred = fed.err().map(|e| body_error(&e.to_string()));
                    let mut response = UpstreamResponse {
                        client: self.clone(),
                        stream: Some(stream),
                        pool_key,
                        keep_alive: head.keep_alive,
                        body,
                        pending: (!pending.is_empty()).then_some(pending),
                        status: head.status,
                        retry_after: head.retry_after,
                        finished: false,
                        deferred,
                    };
                    if response.deferred.is_some() {
                        response.stream = None;
                    } else if response.body.is_done() {
                        response.finished = true;
                        response.release().await;
                    }
                    return Ok(response);
                }
                Err(Failed {
                    error,
                    safe_to_retry,
                }) if reused && safe_to_retry && attempt == 1 => {
                    log::debug!(
                        "pooled upstream connection failed ({error}); retrying on a new one"
                    );
                    continue;
                }
                Err(Failed { error, .. }) => return Err(error),
            }
        }
    }

    /// Send the request and read the response header. A failure says whether repeating the
    /// request on a fresh connection is safe: only when the upstream cannot have acted on it
    /// (a pooled connection that failed while we wrote, or closed before answering a byte),
    /// so that a POST is never done twice.
    ///
    /// The request is written by us in one write ([`Self::request_bytes`]); the response
    /// header is read and parsed here too ([`head`]), into a buffer dropped as soon as it is
    /// parsed. What came behind the header (the start of the body) is returned with it.
    async fn exchange(
        &self,
        mut stream: Stream,
        req: &UpstreamRequest,
        key: Option<&Secret>,
    ) -> Result<(Stream, Head, BodyDecoder, BytesMut), Failed> {
        let s = &self.settings;
        let wire = self.request_bytes(req, key).map_err(Failed::final_)?;
        let write = async {
            stream.write_all(&wire).await?;
            stream.flush().await
        };
        let written = async {
            write.await.map_err(|e| {
                pingora::Error::because(ErrorType::WriteError, "writing the request", e)
            })
        };
        within(s.first_byte_timeout, "sending the request", written)
            .await
            .map_err(Failed::while_sending)?;
        drop(wire);
        let stage = "waiting for the response";
        match timeout(s.first_byte_timeout, read_head(&mut stream)).await {
            Ok(Ok((head, preread))) => {
                let body = BodyDecoder::new(head.framing);
                Ok((stream, head, body, preread))
            }
            Ok(Err(failure)) => Err(failure.during(stage)),
            Err(_) => Err(Failed::final_(UpstreamError::Timeout(stage))),
        }
    }
}

/// Read and parse the response header from `stream`, skipping informational ones: the final
/// header and the bytes read behind it.
async fn read_head(stream: &mut Stream) -> Result<(Head, BytesMut), HeadFailure> {
    let mut buf = BytesMut::new();
    let mut read = 0;
    loop {
        match head::parse(&buf) {
            Ok(Parsed::Partial) => {}
            Ok(Parsed::Interim(len)) => {
                let _ = buf.split_to(len);
                continue;
            }
            Ok(Parsed::Final(head, len)) => {
                let _ = buf.split_to(len);
                return Ok((head, buf));
            }
            Err(why) => return Err(HeadFailure::Bad(why)),
        }
        buf.reserve(HEAD_READ);
        match stream.read_buf(&mut buf).await {
            Ok(0) => return Err(HeadFailure::Closed { read }),
            Ok(n) => read += n,
            Err(_) => return Err(HeadFailure::Io),
        }
    }
}

/// Bytes read at a time for a response header. Most of OpenAI's are about 1 KiB, but what
/// follows arrives with it (a small JSON body, the first events of a stream): room for as much
/// as a body read takes saves a read. The buffer lives only until the header is parsed (the
/// bytes behind it are handed to the body decoder), and only what arrived is touched.
const HEAD_READ: usize = BODY_READ;

/// Why no response header was read.
enum HeadFailure {
    /// The upstream closed the connection after `read` bytes.
    Closed { read: usize },
    /// Reading failed.
    Io,
    /// What came is not a response header we can use.
    Bad(&'static str),
}

impl HeadFailure {
    /// The request was written: repeat it only if the peer closed the (pooled) connection
    /// before a single byte of answer, the race of a server closing an idle connection just
    /// as it is reused.
    fn during(self, stage: &'static str) -> Failed {
        let (why, safe_to_retry) = match self {
            HeadFailure::Closed { read } => ("ConnectionClosed", read == 0),
            HeadFailure::Io => ("ReadError", false),
            HeadFailure::Bad(why) => (why, false),
        };
        Failed {
            error: UpstreamError::Broken(format!("{stage}: {why}")),
            safe_to_retry,
        }
    }
}

/// A failed exchange, and whether it may be repeated on a fresh connection.
struct Failed {
    error: UpstreamError,
    safe_to_retry: bool,
}

impl Failed {
    fn final_(error: UpstreamError) -> Self {
        Failed {
            error,
            safe_to_retry: false,
        }
    }

    /// The request was not (completely) written: the upstream cannot have acted on it.
    fn while_sending((error, _): (UpstreamError, Option<Box<pingora::Error>>)) -> Self {
        let safe_to_retry = !matches!(error, UpstreamError::Timeout(_));
        Failed {
            error,
            safe_to_retry,
        }
    }
}

/// Run a Pingora I/O future under a timeout, mapping both failure kinds; a Pingora error
/// comes along, for the retry decision.
async fn within<T>(
    limit: Duration,
    stage: &'static str,
    fut: impl Future<Output = pingora::Result<T>>,
) -> Result<T, (UpstreamError, Option<Box<pingora::Error>>)> {
    match timeout(limit, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err((
            UpstreamError::Broken(format!("{stage}: {}", e.etype().as_str())),
            Some(e),
        )),
        Err(_) => Err((UpstreamError::Timeout(stage), None)),
    }
}

fn classify_connect_error(e: &pingora::Error) -> UpstreamError {
    use pingora::ErrorType::*;
    match e.etype() {
        ConnectTimedout | TLSHandshakeTimedout => UpstreamError::Timeout("connecting"),
        other => UpstreamError::Unreachable(other.as_str().to_string()),
    }
}

/// The `User-Agent` of every upstream request.
const USER_AGENT: &str = concat!("chatbot-proxy/", env!("CARGO_PKG_VERSION"));

/// Whether `part` of a request target can go in a request line (what Pingora refuses there).
fn valid_target(part: &[u8]) -> bool {
    !part
        .iter()
        .any(|&b| matches!(b, 0x00 | b'\n' | b'\r' | b' '))
}

/// Whether `value` can be a header's value as is (what `http::HeaderValue` accepts).
fn valid_header_value(value: &[u8]) -> bool {
    value
        .iter()
        .all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// Whether `name` is a header name (an RFC 9110 token).
fn valid_header_name(name: &str) -> bool {
    !name.is_empty() && http::HeaderName::from_bytes(name.as_bytes()).is_ok()
}

fn host_for_header(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// Most bytes one [`UpstreamResponse::next_chunk`] gathers from chunks already received.
const MAX_GATHERED: usize = 64 * 1024;

/// Most bytes taken from the connection in one read of the body. The read goes into a buffer
/// on the stack, for the length of one poll: between two reads a response holds no buffer.
const BODY_READ: usize = 16 * 1024;

/// A failed read of the body.
fn body_error(why: &str) -> UpstreamError {
    UpstreamError::Broken(format!("reading the body: {why}"))
}

/// What one read of the body gave.
enum BodyRead {
    /// Bytes (maybe only framing: no payload).
    Bytes,
    /// The connection closed.
    Closed,
}

/// Read once from `stream` into a buffer on the stack and decode what came with `body`,
/// appending the payload to `out`. Polled within one `poll`: the buffer is never held while
/// waiting.
fn poll_body(
    cx: &mut Context<'_>,
    stream: &mut Stream,
    body: &mut BodyDecoder,
    out: &mut BytesMut,
) -> Poll<Result<BodyRead, UpstreamError>> {
    let mut raw = [MaybeUninit::<u8>::uninit(); BODY_READ];
    let mut buf = ReadBuf::uninit(&mut raw);
    match Pin::new(stream).poll_read(cx, &mut buf) {
        Poll::Pending => Poll::Pending,
        Poll::Ready(Err(_)) => Poll::Ready(Err(body_error("ReadError"))),
        Poll::Ready(Ok(())) if buf.filled().is_empty() => Poll::Ready(Ok(BodyRead::Closed)),
        Poll::Ready(Ok(())) => {
            let read = buf.filled();
            out.reserve(read.len());
            let fed = body.feed(read, |data| out.extend_from_slice(data));
            Poll::Ready(match fed {
                Ok(()) => Ok(BodyRead::Bytes),
                Err(e) => Err(body_error(&e.to_string())),
            })
        }
    }
}

/// An upstream response whose header has arrived; its body is read from here.
///
/// The body is read and decoded by us ([`body`]): Pingora's HTTP/1 client would keep a
/// 64 KiB buffer per response for as long as it is read, the bulk of a held stream's memory.
/// Between two reads a response holds its connection and a few words of decoding state.
pub struct UpstreamResponse {
    client: Arc<UpstreamClient>,
    /// The connection, until the body has ended or failed.
    stream: Option<Stream>,
    /// The address of the connection, the pool's key for it.
    pool_key: SocketAddr,
    /// The header allows reusing the connection.
    keep_alive: bool,
    body: BodyDecoder,
    /// Payload read with the header, not yet handed out.
    pending: Option<BytesMut>,
    /// HTTP status of the upstream answer.
    pub status: u16,
    /// The upstream `Retry-After`, raw (sanitize before passing on).
    pub retry_after: Option<String>,
    /// The body has ended.
    finished: bool,
    /// A failure met while gathering chunks, told on the next read.
    deferred: Option<UpstreamError>,
}

impl UpstreamResponse {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The next body bytes, `None` at the end of the body. Waits at most the idle timeout for
    /// the first bytes; what has already arrived behind them comes along in the same piece (up
    /// to [`MAX_GATHERED`] bytes), never waiting for more. An event stream comes one HTTP chunk
    /// per event, and each piece is one write to the browser: this way a burst of events costs
    /// one send, not one per event.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, UpstreamError> {
        let mut out = self.pending.take().unwrap_or_default();
        if out.is_empty() {
            if let Some(e) = self.deferred.take() {
                return Err(e);
            }
            let idle = self.client.settings.idle_timeout;
            let waiting = std::future::poll_fn(|cx| self.poll_payload(cx, &mut out));
            let waited = timeout(idle, waiting).await;
            match waited {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    self.stream = None;
                    return Err(e);
                }
                Err(_) => {
                    self.stream = None;
                    return Err(UpstreamError::Timeout("between two chunks of the body"));
                }
            }
        }
        // Gather what has already arrived, without waiting.
        while out.len() < MAX_GATHERED
            && self.stream.is_some()
            && !self.finished
            && self.deferred.is_none()
        {
            let step = std::future::poll_fn(|cx| match self.poll_step(cx, &mut out) {
                Poll::Pending => Poll::Ready(None),
                Poll::Ready(r) => Poll::Ready(Some(r)),
            })
            .await;
            match step {
                None => break,
                Some(Ok(())) => {}
                Some(Err(e)) => {
                    // Told on the next call, after the bytes that came before it.
                    self.stream = None;
                    self.deferred = Some(e);
                }
            }
        }
        if self.finished {
            self.release().await;
        }
        Ok((!out.is_empty()).then(|| out.freeze()))
    }

    /// Read until some payload is in `out` or the body has ended.
    fn poll_payload(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut BytesMut,
    ) -> Poll<Result<(), UpstreamError>> {
        while out.is_empty() && !self.finished && self.stream.is_some() {
            match self.poll_step(cx, out) {
                Poll::Ready(Ok(())) => {}
                other => return other,
            }
        }
        Poll::Ready(Ok(()))
    }

    /// One read of the body; marks the body finished at its end.
    fn poll_step(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut BytesMut,
    ) -> Poll<Result<(), UpstreamError>> {
        let Some(stream) = self.stream.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        match poll_body(cx, stream, &mut self.body, out) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(BodyRead::Bytes)) => {
                if self.body.is_done() {
                    self.finished = true;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Ok(BodyRead::Closed)) => {
                self.stream = None;
                match self.body.eof() {
                    Ok(()) => {
                        self.finished = true;
                        Poll::Ready(Ok(()))
                    }
                    Err(_) => Poll::Ready(Err(body_error("ConnectionClosed"))),
                }
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        }
    }

    /// Read the whole (JSON) body.
    pub async fn read_all(mut self) -> Result<Bytes, UpstreamError> {
        let mut body = BytesMut::new();
        while let Some(chunk) = self.next_chunk().await? {
            if body.len() + chunk.len() > MAX_JSON_BODY {
                return Err(UpstreamError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    }

    /// Read the whole body as JSON.
    pub async fn json(self) -> Result<serde_json::Value, UpstreamError> {
        let body = self.read_all().await?;
        serde_json::from_slice(&body).map_err(|_| UpstreamError::Broken(NOT_JSON.into()))
    }

    /// Finish with the response: a completed one goes back to the pool (when its header
    /// allows it and nothing came behind its body), one that was left half-read is closed
    /// (its remaining body is of no use to anyone).
    pub async fn release(&mut self) {
        if let Some(stream) = self.stream.take() {
            if self.finished && self.keep_alive && self.body.reusable() {
                self.client.pool.put(self.pool_key, stream);
            }
        }
    }

    /// After the last event we care about: give the upstream a moment to end the body so the
    /// connection can be pooled, without keeping the caller waiting.
    pub fn release_in_background(mut self) {
        if self.stream.is_none() {
            return;
        }
        tokio::spawn(async move {
            let grace = Duration::from_secs(2);
            let _ = timeout(grace, async {
                while let Ok(Some(_)) = self.next_chunk().await {}
            })
            .await;
            self.release().await;
        });
    }
}

/// The connector's options: the trusted roots read from one bundle file where there is one
/// (see [`crate::ca_roots`]). Its own pool is not used (see `pool`).
fn connector_options() -> ConnectorOptions {
    let mut options = ConnectorOptions::new(0);
    options.ca_file = crate::ca_roots::bundle_file();
    options
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::task::JoinHandle;

    fn settings(port: u16) -> UpstreamSettings {
        UpstreamSettings {
            base_url: format!("http://127.0.0.1:{port}/v1"),
            tls: false,
            host: "127.0.0.1".into(),
            port,
            base_path: "/v1".into(),
            connect_timeout: Duration::from_secs(2),
            first_byte_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(2),
            pool_idle_timeout: Duration::from_secs(30),
            pool_size: 128,
            address_connect_timeout: Duration::from_secs(1),
            resolve: Vec::new(),
        }
    }

    /// Read one request (header and a `Content-Length` body) from `conn`.
    async fn read_request(conn: &mut TcpStream) -> Option<String> {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let text = String::from_utf8_lossy(&buf).to_string();
            if let Some(end) = text.find("\r\n\r\n") {
                let length = text
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Length: "))
                    .and_then(|n| n.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if buf.len() >= end + 4 + length {
                    return Some(text);
                }
            }
            let n = conn.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";

    /// A server whose every connection answers one request, then either closes while idle
    /// (`then_close_idle`) or reads the next request and dies mid-answer.
    async fn server(then_close_idle: bool) -> (u16, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (connections, requests) =
            (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (c, r) = (connections.clone(), requests.clone());
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                let r = r.clone();
                tokio::spawn(async move {
                    if read_request(&mut conn).await.is_none() {
                        return;
                    }
                    r.fetch_add(1, Ordering::SeqCst);
                    conn.write_all(OK).await.unwrap();
                    if then_close_idle {
                        return; // dropped: the pooled connection is dead
                    }
                    if read_request(&mut conn).await.is_some() {
                        r.fetch_add(1, Ordering::SeqCst);
                        let _ = conn.write_all(b"HTTP/1.1 200 O").await;
                    }
                });
            }
        });
        (port, connections, requests)
    }

    fn post() -> UpstreamRequest {
        UpstreamRequest::post("/threads/thread_a/messages", &serde_json::json!({"x": 1}))
    }

    /// A client that has made one successful request to `server(then_close_idle)`, its
    /// connection now pooled.
    async fn after_one_request(
        then_close_idle: bool,
    ) -> (Arc<UpstreamClient>, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let (port, connections, requests) = server(then_close_idle).await;
        let client = UpstreamClient::new(settings(port));
        let first = client.send(&post(), &key()).await.unwrap();
        first.read_all().await.unwrap();
        (client, connections, requests)
    }

    fn key() -> Secret {
        Secret::new("sk-test")
    }

    #[tokio::test]
    async fn a_request_is_one_buffer_its_header_then_its_body() {
        let client = UpstreamClient::new(settings(8080));
        let req = post().header("OpenAI-Beta", "assistants=v2");
        let wire = client.request_bytes(&req, Some(&key())).unwrap();
        assert_eq!(
            String::from_utf8(wire).unwrap(),
            format!(
                "POST /v1/threads/thread_a/messages HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\
                 Authorization: Bearer sk-test\r\nUser-Agent: {USER_AGENT}\r\n\
                 Accept: application/json\r\nOpenAI-Beta: assistants=v2\r\n\
                 Content-Type: application/json\r\nContent-Length: 7\r\n\r\n{{\"x\":1}}"
            )
        );
        let get = UpstreamRequest::get("/threads/thread_a/messages").streaming();
        let wire = client.request_bytes(&get, None).unwrap();
        let wire = String::from_utf8(wire).unwrap();
        assert!(wire.starts_with("GET /v1/threads/thread_a/messages HTTP/1.1\r\n"));
        assert!(
            wire.ends_with("Accept: text/event-stream\r\n\r\n"),
            "{wire}"
        );
        assert!(!wire.contains("Content-Length"), "{wire}");
    }

    #[tokio::test]
    async fn a_key_or_path_that_would_split_the_request_is_refused() {
        let client = UpstreamClient::new(settings(8080));
        let smuggling = Secret::new("sk-a\r\nX-Injected: 1");
        assert!(matches!(
            client.request_bytes(&post(), Some(&smuggling)),
            Err(UpstreamError::Broken(_))
        ));
        let spaced = UpstreamRequest::get("/threads/a b");
        assert!(matches!(
            client.request_bytes(&spaced, Some(&key())),
            Err(UpstreamError::Broken(_))
        ));
    }

    /// A server that answers every request on every connection with `writes`, 50 ms apart,
    /// and then closes the connection if `close`; counts connections.
    async fn scripted_server(
        writes: &'static [&'static str],
        close: bool,
    ) -> (u16, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let c = connections.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    while read_request(&mut conn).await.is_some() {
                        for write in writes {
                            if conn.write_all(write.as_bytes()).await.is_err() {
                                return;
                            }
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        if close {
                            return;
                        }
                    }
                });
            }
        });
        (port, connections)
    }

    #[tokio::test]
    async fn a_length_body_split_over_writes_is_read_whole_and_pooled() {
        let writes = &["HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n{\"a\"", ":1}"];
        let (port, connections) = scripted_server(writes, false).await;
        let client = UpstreamClient::new(settings(port));
        for _ in 0..2 {
            let resp = client.send(&post(), &key()).await.unwrap();
            assert_eq!(resp.json().await.unwrap(), serde_json::json!({"a": 1}));
        }
        assert_eq!(connections.load(Ordering::SeqCst), 1, "pooled");
    }

    #[tokio::test]
    async fn a_close_delimited_body_runs_to_the_close_and_is_not_pooled() {
        let writes = &["HTTP/1.1 200 OK\r\n\r\ndata: 1\n\n", "data: 2\n\n"];
        let (port, connections) = scripted_server(writes, true).await;
        let client = UpstreamClient::new(settings(port));
        for _ in 0..2 {
            let resp = client.send(&post(), &key()).await.unwrap();
            let body = resp.read_all().await.unwrap();
            assert_eq!(&body[..], b"data: 1\n\ndata: 2\n\n");
        }
        assert_eq!(connections.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_chunked_body_cut_short_fails_after_the_bytes_that_came() {
        let writes = &["HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"];
        let (port, _) = scripted_server(writes, true).await;
        let client = UpstreamClient::new(settings(port));
        let mut resp = client.send(&post(), &key()).await.unwrap();
        assert_eq!(
            resp.next_chunk().await.unwrap().as_deref(),
            Some(&b"abc"[..])
        );
        assert!(matches!(
            resp.next_chunk().await,
            Err(UpstreamError::Broken(_))
        ));
    }

    #[tokio::test]
    async fn a_malformed_header_is_a_broken_upstream() {
        let (port, _) = scripted_server(&["SSH-2.0-OpenSSH_9.6\r\n\r\n"], true).await;
        let client = UpstreamClient::new(settings(port));
        let result = client.send(&post(), &key()).await;
        assert!(matches!(result.err(), Some(UpstreamError::Broken(_))));
    }

    #[tokio::test]
    async fn chunks_already_arrived_come_in_one_piece_and_later_ones_apart() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (connections, requests, _server) = {
            let (c, r) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
            let (c2, r2) = (c.clone(), r.clone());
            let task = tokio::spawn(async move {
                while let Ok((mut conn, _)) = listener.accept().await {
                    c2.fetch_add(1, Ordering::SeqCst);
                    let r = r2.clone();
                    tokio::spawn(async move {
                        while read_request(&mut conn).await.is_some() {
                            r.fetch_add(1, Ordering::SeqCst);
                            let head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
                            let burst = format!("{head}3\r\nabc\r\n3\r\ndef\r\n");
                            conn.write_all(burst.as_bytes()).await.unwrap();
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            conn.write_all(b"3\r\nghi\r\n0\r\n\r\n").await.unwrap();
                        }
                    });
                }
            });
            (c, r, task)
        };
        let client = UpstreamClient::new(settings(port));
        for _ in 0..2 {
            let mut resp = client.send(&post(), &key()).await.unwrap();
            let piece = |b: &[u8]| Some(Bytes::copy_from_slice(b));
            assert_eq!(resp.next_chunk().await.unwrap(), piece(b"abcdef"));
            assert_eq!(resp.next_chunk().await.unwrap(), piece(b"ghi"));
            assert_eq!(resp.next_chunk().await.unwrap(), None);
        }
        assert_eq!(requests.load(Ordering::SeqCst), 2);
        assert_eq!(
            connections.load(Ordering::SeqCst),
            1,
            "read to its end: pooled"
        );
    }

    #[tokio::test]
    async fn a_pooled_connection_closed_while_idle_is_retried_on_a_fresh_one() {
        let (client, connections, requests) = after_one_request(true).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let second = client.send(&post(), &key()).await.expect("retried");
        assert_eq!(second.status, 200);
        assert_eq!(connections.load(Ordering::SeqCst), 2);
        assert_eq!(requests.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_form_without_key_has_no_authorization_and_its_own_content_type() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let request = read_request(&mut conn).await.unwrap();
            conn.write_all(OK).await.unwrap();
            request
        });
        let mut settings = settings(port);
        settings.base_path = "/turnstile/v0/siteverify".into();
        let client = UpstreamClient::new(settings);
        let form = UpstreamRequest::form("", "secret=s&response=t".into());
        let resp = client.send_without_key(&form).await.unwrap();
        assert_eq!(resp.status, 200);
        let request = seen.await.unwrap();
        assert!(
            request.starts_with("POST /turnstile/v0/siteverify HTTP/1.1\r\n"),
            "{request}"
        );
        let lower = request.to_ascii_lowercase();
        assert!(!lower.contains("authorization"), "{request}");
        assert!(
            lower.contains("content-type: application/x-www-form-urlencoded\r\n"),
            "{request}"
        );
        assert_eq!(lower.matches("content-type").count(), 1, "{request}");
        assert!(
            request.ends_with("\r\n\r\nsecret=s&response=t"),
            "{request}"
        );
    }

    #[tokio::test]
    async fn a_request_the_upstream_started_answering_is_never_repeated() {
        let (client, connections, requests) = after_one_request(false).await;
        let second = client.send(&post(), &key()).await;
        assert!(
            second.is_err(),
            "a half-answered POST must fail, not be sent again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            requests.load(Ordering::SeqCst),
            2,
            "the POST was sent twice"
        );
        assert_eq!(connections.load(Ordering::SeqCst), 1);
    }

    /// Answers every request on every connection of `listener` with `OK`; counts connections
    /// and requests. Aborting the returned task closes the listener and every connection.
    fn keep_alive_server(
        listener: TcpListener,
    ) -> (Arc<AtomicUsize>, Arc<AtomicUsize>, JoinHandle<()>) {
        let (connections, requests) =
            (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (c, r) = (connections.clone(), requests.clone());
        let task = tokio::spawn(async move {
            let mut open = tokio::task::JoinSet::new();
            while let Ok((mut conn, _)) = listener.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                let r = r.clone();
                open.spawn(async move {
                    while read_request(&mut conn).await.is_some() {
                        r.fetch_add(1, Ordering::SeqCst);
                        if conn.write_all(OK).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (connections, requests, task)
    }

    /// A listener on `ip:port` that never accepts, with its queue (backlog 0: one connection)
    /// already full, so that connecting to it hangs (the kernel drops the SYN).
    async fn blackhole(ip: &str, port: u16) -> (TcpListener, TcpStream) {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket
            .bind(format!("{ip}:{port}").parse().unwrap())
            .unwrap();
        let listener = socket.listen(0).unwrap();
        let filler = TcpStream::connect((ip, port)).await.unwrap();
        (listener, filler)
    }

    /// Settings for the name `api.test` with the static addresses `resolve`.
    fn named(port: u16, resolve: &[&str]) -> UpstreamSettings {
        UpstreamSettings {
            base_url: format!("http://api.test:{port}/v1"),
            host: "api.test".into(),
            resolve: resolve.iter().map(|ip| ip.parse().unwrap()).collect(),
            ..settings(port)
        }
    }

    #[tokio::test]
    async fn a_refused_address_is_skipped_and_the_one_that_worked_is_remembered() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (connections, ..) = keep_alive_server(listener);
        let up: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let client = UpstreamClient::new(named(port, &["::1", "127.0.0.1"]));
        assert_eq!(
            client.candidates().await.unwrap()[0].to_string(),
            format!("[::1]:{port}")
        );
        for _ in 0..3 {
            let resp = client
                .send(&post(), &key())
                .await
                .expect("the second address works");
            assert_eq!(resp.status, 200);
            resp.read_all().await.unwrap();
        }
        assert_eq!(client.preferred.get(), Some(up));
        assert_eq!(
            client.candidates().await.unwrap()[0],
            up,
            "tried first from now on"
        );
        assert_eq!(
            connections.load(Ordering::SeqCst),
            1,
            "the connection was pooled"
        );
    }

    #[tokio::test]
    async fn an_address_that_hangs_costs_only_the_per_address_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        keep_alive_server(listener);
        let _hole = blackhole("127.0.0.3", port).await;
        let mut settings = named(port, &["127.0.0.3", "127.0.0.1"]);
        settings.connect_timeout = Duration::from_secs(2);
        settings.address_connect_timeout = Duration::from_millis(200);
        let client = UpstreamClient::new(settings);
        let resp = client.send(&post(), &key()).await;
        assert_eq!(
            resp.expect("the second address within the budget").status,
            200
        );
    }

    #[tokio::test]
    async fn connect_timeout_bounds_all_addresses_together() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (connections, ..) = keep_alive_server(listener);
        let _holes = (
            blackhole("127.0.0.3", port).await,
            blackhole("127.0.0.4", port).await,
        );
        // 400 ms on the first hole, the 200 ms left on the second: none for the server.
        let mut settings = named(port, &["127.0.0.3", "127.0.0.4", "127.0.0.1"]);
        settings.connect_timeout = Duration::from_millis(600);
        settings.address_connect_timeout = Duration::from_millis(400);
        let client = UpstreamClient::new(settings);
        let result = client.send(&post(), &key()).await;
        assert_eq!(result.err(), Some(UpstreamError::Timeout("connecting")));
        assert_eq!(connections.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn the_last_address_gets_all_the_time_that_is_left() {
        // A single address whose queue frees up after 300 ms, well past the per-address
        // timeout: the kernel's SYN retry (after 1 s) gets through within connect_timeout.
        let port = TcpListener::bind("127.0.0.3:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let (listener, filler) = blackhole("127.0.0.3", port).await;
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let queued = listener.accept().await.unwrap();
            drop((queued, filler));
            keep_alive_server(listener);
        });
        let mut settings = named(port, &["127.0.0.3"]);
        settings.connect_timeout = Duration::from_secs(4);
        settings.address_connect_timeout = Duration::from_millis(100);
        let client = UpstreamClient::new(settings);
        let resp = client.send(&post(), &key()).await;
        assert_eq!(resp.expect("connected on the SYN retry").status, 200);
    }

    #[tokio::test]
    async fn when_the_remembered_address_goes_down_the_next_one_takes_over_pool_and_all() {
        let a = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = a.local_addr().unwrap().port();
        let b = TcpListener::bind(("127.0.0.2", port)).await.unwrap();
        let (a_connections, a_requests, a_task) = keep_alive_server(a);
        let (b_connections, b_requests, _b_task) = keep_alive_server(b);
        let client = UpstreamClient::new(named(port, &["127.0.0.1", "127.0.0.2"]));
        let send = || async {
            let resp = client
                .send(&post(), &key())
                .await
                .expect("an address works");
            assert_eq!(resp.status, 200);
            resp.read_all().await.unwrap();
        };
        send().await;
        send().await;
        assert_eq!(a_connections.load(Ordering::SeqCst), 1, "pooled");
        assert_eq!(b_connections.load(Ordering::SeqCst), 0);

        // A goes away, its pooled connection with it: B takes over, and stays.
        a_task.abort();
        tokio::time::sleep(Duration::from_millis(100)).await;
        send().await;
        send().await;
        let b_addr: SocketAddr = format!("127.0.0.2:{port}").parse().unwrap();
        assert_eq!(client.preferred.get(), Some(b_addr));
        assert_eq!(b_connections.load(Ordering::SeqCst), 1, "pooled");
        assert_eq!(b_requests.load(Ordering::SeqCst), 2);
        assert_eq!(a_requests.load(Ordering::SeqCst), 2, "no POST sent twice");
    }
}
