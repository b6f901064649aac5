//! An upstream response header, parsed from the bytes read so far (with `httparse`, as
//! Pingora's own client does), and what it means for us: the status, the `Retry-After`, how
//! the body is framed (RFC 9112, section 6.3) and whether the connection may carry another
//! request afterwards. Pure functions; reading is in `upstream`.

use super::body::Framing;

/// Most header fields of one response.
const MAX_FIELDS: usize = 128;
/// Largest response header accepted, in bytes.
pub const MAX_HEAD: usize = 64 * 1024;

/// A final (non-1xx) response header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    /// The raw `Retry-After`, if any.
    pub retry_after: Option<String>,
    pub framing: Framing,
    /// The connection may be reused once the body has ended.
    pub keep_alive: bool,
}

/// What the bytes read so far hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// More bytes are needed.
    Partial,
    /// An informational (1xx) header of this many bytes: skip it and parse what follows.
    Interim(usize),
    /// The final header, of this many bytes (the body follows).
    Final(Head, usize),
}

/// Parse the response header at the start of `buf`.
pub fn parse(buf: &[u8]) -> Result<Parsed, &'static str> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut response = httparse::Response::new(&mut fields);
    let mut config = httparse::ParserConfig::default();
    config.allow_spaces_after_header_name_in_responses(true);
    config.allow_obsolete_multiline_headers_in_responses(true);
    let len = match config.parse_response(&mut response, buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => return Err("header too large"),
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(httparse::Error::TooManyHeaders) => return Err("too many header fields"),
        Err(_) => return Err("malformed header"),
    };
    let status = response.code.unwrap_or_default();
    let http11 = response.version == Some(1);
    if (100..200).contains(&status) && status != 101 {
        return Ok(Parsed::Interim(len));
    }
    if status == 101 {
        return Err("unexpected protocol switch");
    }
    let fields = response.headers;
    let values = |name: &'static str| {
        fields
            .iter()
            .filter(move |f| f.name.eq_ignore_ascii_case(name))
            .map(|f| f.value)
    };
    let chunked = values("transfer-encoding").next().is_some();
    let framing = if status == 204 || status == 304 {
        Framing::Length(0)
    } else if chunked {
        // The last coding must be chunked for the body to be framed by it; otherwise the
        // body runs until the close (RFC 9112, section 6.3, point 4).
        let last = values("transfer-encoding")
            .flat_map(|v| v.split(|&b| b == b','))
            .map(trim)
            .rfind(|coding| !coding.is_empty());
        match last {
            Some(coding) if coding.eq_ignore_ascii_case(b"chunked") => Framing::Chunked,
            _ => Framing::UntilClose,
        }
    } else {
        match content_length(values("content-length"))? {
            Some(n) => Framing::Length(n),
            None => Framing::UntilClose,
        }
    };
    let mut keep_alive = http11;
    for token in values("connection").flat_map(|v| v.split(|&b| b == b',')) {
        let token = trim(token);
        if token.eq_ignore_ascii_case(b"close") {
            keep_alive = false;
            break;
        }
        if token.eq_ignore_ascii_case(b"keep-alive") {
            keep_alive = true;
        }
    }
    // A transfer coding in an HTTP/1.0 response: close after it (RFC 9112, section 6.1).
    if !http11 && chunked {
        keep_alive = false;
    }
    if framing == Framing::UntilClose {
        keep_alive = false;
    }
    let retry_after = values("retry-after")
        .next()
        .and_then(|v| std::str::from_utf8(v).ok())
        .map(str::to_string);
    Ok(Parsed::Final(
        Head {
            status,
            retry_after,
            framing,
            keep_alive,
        },
        len,
    ))
}

/// The body length of the `Content-Length` fields: `None` without one; identical repeats
/// (as fields or in a list) are one; different ones, or anything but digits, are an error.
fn content_length<'a>(values: impl Iterator<Item = &'a [u8]>) -> Result<Option<u64>, &'static str> {
    let mut length = None;
    for value in values.flat_map(|v| v.split(|&b| b == b',')) {
        let digits = trim(value);
        if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
            return Err("bad Content-Length");
        }
        let n = digits
            .iter()
            .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
        match length {
            Some(seen) if seen != n => return Err("conflicting Content-Length"),
            _ => length = Some(n),
        }
    }
    Ok(length)
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(wire: &str) -> Head {
        match parse(wire.as_bytes()) {
            Ok(Parsed::Final(head, len)) => {
                assert_eq!(len, wire.find("\r\n\r\n").unwrap() + 4);
                head
            }
            other => panic!("{wire:?}: {other:?}"),
        }
    }

    #[test]
    fn an_event_stream_is_chunked_and_kept_alive() {
        let h = head("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\ndata");
        assert_eq!(h.status, 200);
        assert_eq!(h.framing, Framing::Chunked);
        assert!(h.keep_alive);
        assert_eq!(h.retry_after, None);
    }

    #[test]
    fn a_length_a_retry_after_and_a_close() {
        let h = head("HTTP/1.1 429 Too Many\r\nretry-after: 7\r\ncontent-length: 2\r\nConnection: close\r\n\r\n{}");
        assert_eq!(h.status, 429);
        assert_eq!(h.retry_after.as_deref(), Some("7"));
        assert_eq!(h.framing, Framing::Length(2));
        assert!(!h.keep_alive);
    }

    #[test]
    fn chunked_wins_over_a_length_and_other_codings_run_until_the_close() {
        let h = head(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        );
        assert_eq!(h.framing, Framing::Chunked);
        let h = head("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n");
        assert_eq!(h.framing, Framing::UntilClose);
        assert!(!h.keep_alive);
    }

    #[test]
    fn without_framing_the_body_runs_until_the_close() {
        let h = head("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n");
        assert_eq!(h.framing, Framing::UntilClose);
        assert!(!h.keep_alive);
    }

    #[test]
    fn no_body_for_204_and_304() {
        for status in [204, 304] {
            let h = head(&format!("HTTP/1.1 {status} X\r\nContent-Length: 9\r\n\r\n"));
            assert_eq!(h.framing, Framing::Length(0));
            assert!(h.keep_alive);
        }
    }

    #[test]
    fn http10_keeps_alive_only_when_asked_and_never_after_chunked() {
        assert!(!head("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n").keep_alive);
        assert!(
            head("HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n")
                .keep_alive
        );
        let chunked =
            "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(!head(chunked).keep_alive);
    }

    #[test]
    fn repeated_lengths_must_agree() {
        let same = "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3, 3\r\n\r\n";
        assert_eq!(head(same).framing, Framing::Length(3));
        for bad in [
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 0x10\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
        ] {
            assert!(parse(bad.as_bytes()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_partial_header_waits_an_interim_one_is_skipped_garbage_is_an_error() {
        assert_eq!(parse(b"HTTP/1.1 200 OK\r\nContent-"), Ok(Parsed::Partial));
        assert_eq!(parse(b""), Ok(Parsed::Partial));
        assert_eq!(
            parse(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n"),
            Ok(Parsed::Interim(25))
        );
        assert!(parse(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
        assert!(parse(b"HTTP/1.1 101 Switching\r\n\r\n").is_err());
        let huge = format!("HTTP/1.1 200 OK\r\nX: {}", "a".repeat(MAX_HEAD));
        assert!(parse(huge.as_bytes()).is_err());
    }
}
