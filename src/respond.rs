//! Writing answers to the browser: JSON bodies, errors, CORS preflights and the header of an
//! event stream. Every answer to a whitelisted origin carries its `Access-Control-Allow-Origin`
//! (the origin itself, never `*`) and `Vary: Origin`.

use crate::errors::ApiError;
use bytes::Bytes;
use http::HeaderValue;
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;

/// How long browsers may cache a preflight answer, in seconds.
const PREFLIGHT_MAX_AGE: &str = "600";

/// What was written: the status and the number of body bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Written {
    pub status: u16,
    pub bytes: usize,
}

fn header(status: u16, cors_origin: Option<&str>) -> ResponseHeader {
    // Only a status outside 100..=999 can fail here, and we never pass one.
    let mut h = ResponseHeader::build(status, Some(8)).expect("valid status");
    if let Some(origin) = cors_origin.and_then(|o| HeaderValue::from_str(o).ok()) {
        put(&mut h, "Access-Control-Allow-Origin", origin);
    }
    put_static(&mut h, "Vary", "Origin");
    put_static(&mut h, "X-Content-Type-Options", "nosniff");
    h
}

/// Adds a header the answer does not have yet (appending skips the search for one to
/// replace).
fn put(h: &mut ResponseHeader, name: &'static str, value: HeaderValue) {
    let _ = h.append_header(name, value);
}

/// [`put`] with a constant value (not checked again at run time).
fn put_static(h: &mut ResponseHeader, name: &'static str, value: &'static str) {
    put(h, name, HeaderValue::from_static(value));
}

/// The header of a JSON answer of `len` bytes, never cached.
fn json_header(status: u16, cors_origin: Option<&str>, len: usize) -> ResponseHeader {
    let mut h = header(status, cors_origin);
    put_static(&mut h, "Content-Type", "application/json");
    put(&mut h, "Content-Length", HeaderValue::from(len));
    put_static(&mut h, "Cache-Control", "no-store");
    h
}

/// A JSON answer with a known length.
pub async fn json(
    session: &mut ServerSession,
    status: u16,
    body: Vec<u8>,
    cors_origin: Option<&str>,
    extra: &[(&'static str, String)],
) -> Written {
    let mut h = json_header(status, cors_origin, body.len());
    for (name, value) in extra {
        let _ = h.insert_header(*name, value.as_str());
    }
    let head_only = session.req_header().method == http::Method::HEAD;
    let bytes = body.len();
    let ok = session.write_response_header(Box::new(h)).await.is_ok()
        && (head_only
            || session
                .write_response_body(Bytes::from(body), true)
                .await
                .is_ok());
    if !ok {
        session.set_keepalive(None);
    }
    Written { status, bytes }
}

/// An [`ApiError`] as JSON.
pub async fn error(
    session: &mut ServerSession,
    err: &ApiError,
    cors_origin: Option<&str>,
) -> Written {
    let mut extra = Vec::new();
    if let Some(retry) = &err.retry_after {
        extra.push(("Retry-After", retry.clone()));
        if cors_origin.is_some() {
            // The widget's script may read it, to say when to try again.
            extra.push(("Access-Control-Expose-Headers", "Retry-After".into()));
        }
    }
    if err.status == 413 {
        // The rest of an oversized body is not read: the connection cannot be reused.
        session.set_keepalive(None);
    }
    json(session, err.status, err.body(), cors_origin, &extra).await
}

/// An [`ApiError`] to a request whose header could not be read (so nothing of it is known:
/// no CORS). The connection closes after it.
pub async fn refusal(session: &mut ServerSession, err: &ApiError) -> Written {
    let body = err.body();
    let bytes = body.len();
    let h = json_header(err.status, None, bytes);
    let _ = session.write_error_response(h, Bytes::from(body)).await;
    Written {
        status: err.status,
        bytes,
    }
}

/// `204` to a CORS preflight from a whitelisted origin.
pub async fn preflight(session: &mut ServerSession, origin: &str) -> Written {
    preflight_allowing(session, origin, "Content-Type").await
}

/// [`preflight`] allowing the request headers `headers` (e.g. `Content-Type,
/// CF-Turnstile-Response` for a tenant with a bot check).
pub async fn preflight_allowing(
    session: &mut ServerSession,
    origin: &str,
    headers: &str,
) -> Written {
    let mut h = header(204, Some(origin));
    let _ = h.insert_header("Access-Control-Allow-Methods", "GET, POST, OPTIONS");
    let _ = h.insert_header("Access-Control-Allow-Headers", headers);
    let _ = h.insert_header("Access-Control-Max-Age", PREFLIGHT_MAX_AGE);
    let _ = h.insert_header("Content-Length", "0");
    if session.write_response_header(Box::new(h)).await.is_err() {
        session.set_keepalive(None);
    }
    Written {
        status: 204,
        bytes: 0,
    }
}

/// The header of an event stream; its body follows chunk by chunk.
pub fn event_stream_header(cors_origin: Option<&str>, chunked: bool) -> ResponseHeader {
    let mut h = header(200, cors_origin);
    put_static(&mut h, "Content-Type", "text/event-stream");
    put_static(&mut h, "Cache-Control", "no-cache");
    put_static(&mut h, "X-Accel-Buffering", "no");
    if chunked {
        put_static(&mut h, "Transfer-Encoding", "chunked");
    }
    h
}
