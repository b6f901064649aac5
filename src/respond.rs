//! Writing answers to the browser: JSON bodies, errors, CORS preflights and the header of an
//! event stream. Every answer to a whitelisted origin carries its `Access-Control-Allow-Origin`
//! (the origin itself, never `*`) and `Vary: Origin`.

use crate::errors::ApiError;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora_proxy::Session;

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
    if let Some(origin) = cors_origin {
        let _ = h.insert_header("Access-Control-Allow-Origin", origin);
    }
    let _ = h.insert_header("Vary", "Origin");
    let _ = h.insert_header("X-Content-Type-Options", "nosniff");
    h
}

/// A JSON answer with a known length.
pub async fn json(
    session: &mut Session,
    status: u16,
    body: Vec<u8>,
    cors_origin: Option<&str>,
    extra: &[(&'static str, String)],
) -> Written {
    let mut h = header(status, cors_origin);
    let _ = h.insert_header("Content-Type", "application/json");
    let _ = h.insert_header("Content-Length", body.len().to_string());
    let _ = h.insert_header("Cache-Control", "no-store");
    for (name, value) in extra {
        let _ = h.insert_header(*name, value.as_str());
    }
    let head_only = session.req_header().method == http::Method::HEAD;
    let bytes = body.len();
    let ok = if head_only {
        session
            .write_response_header(Box::new(h), true)
            .await
            .is_ok()
    } else {
        session
            .write_response_header(Box::new(h), false)
            .await
            .is_ok()
            && session
                .write_response_body(Some(Bytes::from(body)), true)
                .await
                .is_ok()
    };
    if !ok {
        session.set_keepalive(None);
    }
    Written { status, bytes }
}

/// An [`ApiError`] as JSON.
pub async fn error(session: &mut Session, err: &ApiError, cors_origin: Option<&str>) -> Written {
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

/// `204` to a CORS preflight from a whitelisted origin.
pub async fn preflight(session: &mut Session, origin: &str) -> Written {
    preflight_allowing(session, origin, "Content-Type").await
}

/// [`preflight`] allowing the request headers `headers` (e.g. `Content-Type,
/// CF-Turnstile-Response` for a tenant with a bot check).
pub async fn preflight_allowing(session: &mut Session, origin: &str, headers: &str) -> Written {
    let mut h = header(204, Some(origin));
    let _ = h.insert_header("Access-Control-Allow-Methods", "GET, POST, OPTIONS");
    let _ = h.insert_header("Access-Control-Allow-Headers", headers);
    let _ = h.insert_header("Access-Control-Max-Age", PREFLIGHT_MAX_AGE);
    let _ = h.insert_header("Content-Length", "0");
    if session
        .write_response_header(Box::new(h), true)
        .await
        .is_err()
    {
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
    let _ = h.insert_header("Content-Type", "text/event-stream");
    let _ = h.insert_header("Cache-Control", "no-cache");
    let _ = h.insert_header("X-Accel-Buffering", "no");
    if chunked {
        let _ = h.insert_header("Transfer-Encoding", "chunked");
    }
    h
}
