//! Our own embeddable chat widget, served by the proxy: `GET /widget.js` and
//! `GET {prefix}/widget-config`.
//!
//! The widget is plain JavaScript and CSS written for this project (`widget.js`,
//! `widget.css`), compiled into the binary and assembled once at start-up: the stylesheet goes
//! into the script as a string literal, so one `<script src=".../widget.js" async>` tag is the
//! whole embed. The script is a public file: served on any prefix, to any page, without an
//! `Origin` (a script tag sends none), with a strong `ETag` (a hash of the content, so a new
//! build is a new tag), `If-None-Match` answered with 304, and `Cache-Control: public,
//! max-age=300` (browsers revalidate after five minutes, so a deployment reaches every site
//! within minutes).
//!
//! `widget-config` is answered like the other widget routes, for a whitelisted calling site
//! only: the public settings the widget needs, today the tenant's Turnstile site key (`null`
//! without one). Nothing secret is ever in it.

use crate::config::Tenant;
use crate::errors::ApiError;
use crate::respond::{self, Written};
use bytes::Bytes;
use once_cell::sync::Lazy;
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;

/// The widget's source, with a placeholder where the stylesheet goes.
const SCRIPT_SOURCE: &str = include_str!("widget.js");
/// The widget's stylesheet.
const STYLESHEET: &str = include_str!("widget.css");
/// The placeholder in [`SCRIPT_SOURCE`] (a string literal) that [`STYLESHEET`] replaces.
const STYLESHEET_SLOT: &str = "\"__WIDGET_CSS__\"";

/// How long browsers and CDNs may use the script without asking again.
pub const CACHE_CONTROL: &str = "public, max-age=300";

/// The script as served, and its `ETag`; built on first use.
struct Script {
    body: Bytes,
    etag: String,
}

static SCRIPT: Lazy<Script> = Lazy::new(|| {
    let body = assemble(SCRIPT_SOURCE, STYLESHEET);
    let etag = etag_of(body.as_bytes());
    Script {
        body: Bytes::from(body),
        etag,
    }
});

/// Builds the script now (at start-up) rather than on the first request.
pub fn prepare() {
    Lazy::force(&SCRIPT);
}

/// The served script: `source` with the stylesheet put in as a JavaScript string literal.
fn assemble(source: &str, stylesheet: &str) -> String {
    // A JSON string is a valid JavaScript string literal; `</` is escaped too, so the text can
    // never close a <script> element if someone inlines the file.
    let literal = serde_json::to_string(stylesheet)
        .expect("a string serializes")
        .replace("</", "<\\/");
    source.replacen(STYLESHEET_SLOT, &literal, 1)
}

/// A strong entity tag: the first 128 bits of the content's SHA-256, hex, quoted.
fn etag_of(body: &[u8]) -> String {
    let hash = ring::digest::digest(&ring::digest::SHA256, body);
    format!("\"{}\"", hex::encode(&hash.as_ref()[..16]))
}

/// Whether an `If-None-Match` value names `etag` (a list, weak tags and `*` included: for
/// `GET` the comparison is the weak one).
fn matches(if_none_match: &str, etag: &str) -> bool {
    let opaque = etag.trim_start_matches("W/");
    if_none_match
        .split(',')
        .map(str::trim)
        .any(|candidate| candidate == "*" || candidate.trim_start_matches("W/") == opaque)
}

/// `GET /widget.js` (and `HEAD`): the script, or 304 when the browser's copy is current.
pub async fn serve_script(session: &mut ServerSession) -> Written {
    let method = session.req_header().method.clone();
    if method != http::Method::GET && method != http::Method::HEAD {
        return respond::error(session, &ApiError::method_not_allowed("GET, HEAD"), None).await;
    }
    let script = &*SCRIPT;
    let fresh = session
        .get_header("if-none-match")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| matches(v, &script.etag));
    let status = if fresh { 304 } else { 200 };
    // Only a status outside 100..=999 can fail here.
    let mut h = ResponseHeader::build(status, Some(8)).expect("valid status");
    let _ = h.insert_header("ETag", script.etag.as_str());
    let _ = h.insert_header("Cache-Control", CACHE_CONTROL);
    // Any site may load the script with a <script> tag, even one that isolates itself.
    let _ = h.insert_header("Cross-Origin-Resource-Policy", "cross-origin");
    let _ = h.insert_header("X-Content-Type-Options", "nosniff");
    let body = if fresh || method == http::Method::HEAD {
        None
    } else {
        Some(script.body.clone())
    };
    if !fresh {
        let _ = h.insert_header("Content-Type", "application/javascript; charset=utf-8");
        let _ = h.insert_header("Content-Length", script.body.len().to_string());
    }
    let bytes = body.as_ref().map_or(0, Bytes::len);
    let ok = match body {
        None => session.write_response_header(Box::new(h)).await.is_ok(),
        Some(body) => {
            session.write_response_header(Box::new(h)).await.is_ok()
                && session.write_response_body(body, true).await.is_ok()
        }
    };
    if !ok {
        session.set_keepalive(None);
    }
    Written { status, bytes }
}

/// The public settings of `tenant`'s widget, as JSON.
fn config_body(tenant: &Tenant) -> Vec<u8> {
    serde_json::json!({ "turnstile_site_key": tenant.turnstile_site_key })
        .to_string()
        .into_bytes()
}

/// `GET {prefix}/widget-config` from a whitelisted site of `tenant`.
pub async fn serve_config(
    session: &mut ServerSession,
    tenant: &Tenant,
    cors: Option<&str>,
) -> Written {
    respond::json(session, 200, config_body(tenant), cors, &[]).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stylesheet_goes_into_the_script_once_as_a_string() {
        let js = assemble(
            "var a = \"__WIDGET_CSS__\"; var b = \"__WIDGET_CSS__\";",
            "x{}\n\"</style>",
        );
        assert_eq!(
            js,
            "var a = \"x{}\\n\\\"<\\/style>\"; var b = \"__WIDGET_CSS__\";"
        );
        assert!(
            SCRIPT_SOURCE.contains(STYLESHEET_SLOT),
            "the widget has lost its slot"
        );
        let served = String::from_utf8(SCRIPT.body.to_vec()).unwrap();
        assert!(!served.contains(STYLESHEET_SLOT));
        assert!(served.contains(".cbp-launcher"));
    }

    #[test]
    fn the_etag_follows_the_content() {
        let a = etag_of(b"one");
        assert_eq!(a, etag_of(b"one"));
        assert_ne!(a, etag_of(b"two"));
        assert!(
            a.starts_with('"') && a.ends_with('"') && a.len() == 34,
            "{a}"
        );
    }

    #[test]
    fn if_none_match_lists_weak_tags_and_star() {
        let tag = "\"abc\"";
        assert!(matches("\"abc\"", tag));
        assert!(matches("W/\"abc\"", tag));
        assert!(matches("\"x\", \"abc\"", tag));
        assert!(matches("*", tag));
        assert!(!matches("\"abcd\"", tag));
        assert!(!matches("abc", tag));
        assert!(!matches("", tag));
    }

    #[test]
    fn the_config_holds_the_site_key_and_nothing_secret() {
        use crate::config::Secret;
        let mut tenant = Tenant {
            turnstile_secret: Some(Secret::new("0xSECRET")),
            turnstile_site_key: Some("0x4AAAsitekey".into()),
            ..crate::tenant::test_tenant("t", &["example.com"])
        };
        let body: serde_json::Value = serde_json::from_slice(&config_body(&tenant)).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"turnstile_site_key": "0x4AAAsitekey"})
        );
        tenant.turnstile_site_key = None;
        let body: serde_json::Value = serde_json::from_slice(&config_body(&tenant)).unwrap();
        assert_eq!(body, serde_json::json!({"turnstile_site_key": null}));
    }
}
