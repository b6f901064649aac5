//! The JSON errors the proxy answers with.
//!
//! Every error a browser can see is `{"error":{"code":"...","message":"..."}}` with a stable
//! machine-readable `code` and a sentence for humans. Upstream bodies and headers are never
//! echoed: they carry organisation ids. Constructors here are the only place codes are spelled.

use serde_json::json;

/// An error answered to the widget, before any streamed byte was sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// Stable machine-readable code, e.g. `origin_not_allowed`.
    pub code: &'static str,
    /// A sentence saying what went wrong and, where possible, what to do.
    pub message: String,
    /// `Retry-After` to pass on (for 429), already checked to be harmless.
    pub retry_after: Option<String>,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// The JSON body.
    pub fn body(&self) -> Vec<u8> {
        json!({"error": {"code": self.code, "message": self.message}})
            .to_string()
            .into_bytes()
    }

    pub fn origin_not_allowed(reason: impl std::fmt::Display) -> Self {
        Self::new(
            403,
            "origin_not_allowed",
            format!("This site is not allowed to use this chatbot: {reason}."),
        )
    }

    pub fn not_found() -> Self {
        Self::new(404, "not_found", "No such route.")
    }

    pub fn method_not_allowed(allowed: &str) -> Self {
        Self::new(
            405,
            "method_not_allowed",
            format!("Method not allowed here; use {allowed}."),
        )
    }

    // bot check (Turnstile)
    /// The create-thread's Turnstile token is missing, invalid, used before, or solved on
    /// another site.
    pub fn bot_check_failed() -> Self {
        Self::new(
            403,
            "bot_check_failed",
            "The bot check failed: reload the page, complete the check and try again.",
        )
    }

    /// Turnstile's siteverify could not give a verdict (down, unreadable, too slow).
    pub fn bot_check_unavailable() -> Self {
        Self::new(
            503,
            "bot_check_unavailable",
            "The bot check cannot be completed right now; try again in a moment.",
        )
    }

    pub fn body_too_large(limit: usize) -> Self {
        Self::new(
            413,
            "body_too_large",
            format!("The request body is larger than {limit} bytes."),
        )
    }

    pub fn invalid_json(detail: impl std::fmt::Display) -> Self {
        Self::new(
            400,
            "invalid_json",
            format!("The request body is not valid JSON: {detail}."),
        )
    }

    pub fn invalid_request(detail: impl Into<String>) -> Self {
        Self::new(400, "invalid_request", detail)
    }

    pub fn empty_message() -> Self {
        Self::new(400, "empty_message", "`message` must not be empty.")
    }

    pub fn message_too_long(limit: usize) -> Self {
        Self::new(
            400,
            "message_too_long",
            format!("`message` is longer than {limit} characters."),
        )
    }

    pub fn invalid_thread_id(rule: &str) -> Self {
        Self::new(
            400,
            "invalid_thread_id",
            format!(
                "The thread id is malformed: send the id that create-thread answered (it must \
                 match {rule})."
            ),
        )
    }

    /// A conversation handle that is not genuine, belongs to another site, or has expired.
    pub fn conversation_not_found() -> Self {
        Self::new(
            404,
            "conversation_not_found",
            "No such conversation, or it has expired: start a new one with create-thread.",
        )
    }

    pub fn thread_not_found() -> Self {
        Self::new(
            404,
            "thread_not_found",
            "No such thread: create a new one with create-thread.",
        )
    }

    pub fn run_active() -> Self {
        Self::new(
            409,
            "run_active",
            "The assistant is still answering the previous message in this thread; wait for it to finish.",
        )
    }

    pub fn rate_limited(retry_after: Option<String>) -> Self {
        let mut e = Self::new(
            429,
            "rate_limited",
            "The assistant is receiving too many requests; try again shortly.",
        );
        e.retry_after = retry_after;
        e
    }

    /// The tenant used its daily token budget; `retry_after_secs`: until midnight UTC.
    pub fn budget_exhausted(retry_after_secs: u64) -> Self {
        let mut e = Self::new(
            429,
            "budget_exhausted",
            "This site's assistant has used its allowance for today; try again tomorrow.",
        );
        e.retry_after = Some(retry_after_secs.to_string());
        e
    }

    pub fn upstream_auth_failed() -> Self {
        Self::new(
            502,
            "upstream_auth_failed",
            "The assistant service rejected this site's credentials; the site owner must check the proxy configuration.",
        )
    }

    pub fn upstream_error(detail: impl std::fmt::Display) -> Self {
        Self::new(
            502,
            "upstream_error",
            format!("The assistant service failed: {detail}."),
        )
    }

    pub fn upstream_unreachable() -> Self {
        Self::new(
            502,
            "upstream_unreachable",
            "The assistant service cannot be reached.",
        )
    }

    pub fn upstream_timeout() -> Self {
        Self::new(
            504,
            "upstream_timeout",
            "The assistant service did not answer in time.",
        )
    }
}

/// Keep a `Retry-After` value only if it is a plain number of seconds or an HTTP date:
/// anything else could smuggle upstream data to the browser.
pub fn sanitize_retry_after(value: &str) -> Option<String> {
    let v = value.trim();
    let ok = !v.is_empty()
        && v.len() <= 40
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b' ' || b == b',' || b == b':');
    ok.then(|| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_the_documented_shape() {
        let body: serde_json::Value =
            serde_json::from_slice(&ApiError::run_active().body()).unwrap();
        assert_eq!(body["error"]["code"], "run_active");
        assert!(body["error"]["message"].as_str().unwrap().contains("wait"));
    }

    #[test]
    fn retry_after_keeps_seconds_and_dates_only() {
        assert_eq!(sanitize_retry_after(" 7 "), Some("7".into()));
        assert_eq!(
            sanitize_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some("Wed, 21 Oct 2015 07:28:00 GMT".into())
        );
        assert_eq!(sanitize_retry_after("7\r\nSet-Cookie: x"), None);
        assert_eq!(sanitize_retry_after(""), None);
    }
}
