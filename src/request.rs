//! What the widget sends to `process-message`, checked before anything goes upstream.
//!
//! Pure: bytes in, a [`ProcessMessage`] or an [`ApiError`] out. The thread-id rule depends on
//! the upstream dialect (Assistants `thread_...`, Conversations `conv_...`), so the caller
//! passes it in as an [`IdRule`]. The widget sends the conversation handle that create-thread
//! answered (`<id>.<token>`, see [`crate::handle`]): here only its shape is checked (400
//! `invalid_thread_id`); whether it is genuine is the signature's business (404).

use crate::errors::ApiError;
use crate::handle::TOKEN_CHARS;
use serde_json::Value;

/// A validated `process-message` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessMessage {
    /// The conversation to add the message to, as sent: a handle, or at least shaped like one
    /// (checked with [`IdRule::accepts_handle`]).
    pub thread_id: String,
    /// The user's message, as typed.
    pub message: String,
}

/// The shape a conversation id must have: `{prefix}` then 1 to `max_len` ASCII letters or digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRule {
    pub prefix: &'static str,
    pub max_len: usize,
}

impl IdRule {
    /// Assistants API threads: `^thread_[A-Za-z0-9]{1,64}$`.
    pub const THREAD: IdRule = IdRule {
        prefix: "thread_",
        max_len: 64,
    };

    /// Whether `id` follows the rule. Only ASCII alphanumerics after the prefix, so an id can
    /// never carry a `/`, `..`, `?` or `%` into an upstream path.
    pub fn accepts(&self, id: &str) -> bool {
        id.strip_prefix(self.prefix).is_some_and(|rest| {
            (1..=self.max_len).contains(&rest.len())
                && rest.bytes().all(|b| b.is_ascii_alphanumeric())
        })
    }

    /// The rule as a regular expression, for error messages.
    pub fn describe(&self) -> String {
        format!("^{}[A-Za-z0-9]{{1,{}}}$", self.prefix, self.max_len)
    }

    /// Whether `value` is shaped like a conversation handle of this API: an id that follows
    /// the rule, then `.` and a token of [`TOKEN_CHARS`] base64url characters. A bare id
    /// passes too (it is refused later as an unknown conversation, like a forged handle), so
    /// that only values that could never name a conversation are "malformed".
    pub fn accepts_handle(&self, value: &str) -> bool {
        match value.rsplit_once('.') {
            Some((id, token)) => {
                self.accepts(id)
                    && token.len() == TOKEN_CHARS
                    && token
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            }
            None => self.accepts(value),
        }
    }

    /// The handle's shape as a regular expression, for error messages.
    pub fn describe_handle(&self) -> String {
        format!(
            "^{}[A-Za-z0-9]{{1,{}}}\\.[A-Za-z0-9_-]{{{TOKEN_CHARS}}}$",
            self.prefix, self.max_len
        )
    }
}

/// Parse and check a `process-message` body: `{"threadId" | "thread_id": "...", "message": "..."}`.
pub fn parse_process_message(
    body: &[u8],
    max_message_chars: usize,
    rule: IdRule,
) -> Result<ProcessMessage, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        // serde's message says where (line, column) without echoing the input.
        ApiError::invalid_json(e)
    })?;
    let Value::Object(fields) = value else {
        return Err(ApiError::invalid_request(
            "The body must be a JSON object: {\"threadId\": \"...\", \"message\": \"...\"}.",
        ));
    };

    let thread_id = match (fields.get("threadId"), fields.get("thread_id")) {
        (Some(a), Some(b)) if a != b => {
            return Err(ApiError::invalid_request(
                "`threadId` and `thread_id` disagree; send one of them.",
            ))
        }
        (Some(v), _) | (None, Some(v)) => v,
        (None, None) => {
            return Err(ApiError::invalid_request(
                "`threadId` is missing: create a thread with create-thread first.",
            ))
        }
    };
    let Value::String(thread_id) = thread_id else {
        return Err(ApiError::invalid_request("`threadId` must be a string."));
    };
    if !rule.accepts_handle(thread_id) {
        return Err(ApiError::invalid_thread_id(&rule.describe_handle()));
    }

    let message = match fields.get("message") {
        None => return Err(ApiError::invalid_request("`message` is missing.")),
        Some(Value::String(m)) => m,
        Some(_) => return Err(ApiError::invalid_request("`message` must be a string.")),
    };
    if message.trim().is_empty() {
        return Err(ApiError::empty_message());
    }
    if message.chars().count() > max_message_chars {
        return Err(ApiError::message_too_long(max_message_chars));
    }

    Ok(ProcessMessage {
        thread_id: thread_id.clone(),
        message: message.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<ProcessMessage, ApiError> {
        parse_process_message(body.as_bytes(), 10, IdRule::THREAD)
    }

    fn code(body: &str) -> &'static str {
        parse(body).unwrap_err().code
    }

    #[test]
    fn accepts_both_spellings_of_the_thread_id() {
        let a = parse(r#"{"threadId":"thread_abc","message":"hi"}"#).unwrap();
        let b = parse(r#"{"thread_id":"thread_abc","message":"hi"}"#).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.thread_id, "thread_abc");
        assert_eq!(a.message, "hi");
    }

    #[test]
    fn rejects_what_is_not_a_json_object() {
        assert_eq!(code("not json"), "invalid_json");
        assert_eq!(code(""), "invalid_json");
        assert_eq!(code("[1,2]"), "invalid_request");
        assert_eq!(code("\"text\""), "invalid_request");
    }

    #[test]
    fn rejects_missing_or_mistyped_fields() {
        assert_eq!(code(r#"{"message":"hi"}"#), "invalid_request");
        assert_eq!(code(r#"{"threadId":"thread_a"}"#), "invalid_request");
        assert_eq!(code(r#"{"threadId":5,"message":"hi"}"#), "invalid_request");
        assert_eq!(
            code(r#"{"threadId":"thread_a","message":["hi"]}"#),
            "invalid_request"
        );
        assert_eq!(
            code(r#"{"threadId":"thread_a","thread_id":"thread_b","message":"hi"}"#),
            "invalid_request"
        );
    }

    #[test]
    fn rejects_empty_and_overlong_messages() {
        assert_eq!(
            code(r#"{"threadId":"thread_a","message":""}"#),
            "empty_message"
        );
        assert_eq!(
            code(r#"{"threadId":"thread_a","message":" \n\t "}"#),
            "empty_message"
        );
        assert_eq!(
            code(r#"{"threadId":"thread_a","message":"12345678901"}"#),
            "message_too_long"
        );
        // The limit counts characters, not bytes.
        assert!(parse(r#"{"threadId":"thread_a","message":"éééééééééé"}"#).is_ok());
    }

    #[test]
    fn thread_ids_cannot_smuggle_paths() {
        for bad in [
            "thread_",
            "thread_../../v1/files",
            "thread_a/runs",
            "thread_a%2F",
            "thread_a?x=1",
            "run_abc",
            "THREAD_abc",
            "thread_abc ",
            "thread_ä",
        ] {
            let body = serde_json::json!({"threadId": bad, "message": "hi"}).to_string();
            assert_eq!(code(&body), "invalid_thread_id", "{bad}");
        }
        let long = format!("thread_{}", "a".repeat(65));
        let body = serde_json::json!({"threadId": long, "message": "hi"}).to_string();
        assert_eq!(code(&body), "invalid_thread_id");
        let ok = format!("thread_{}", "a".repeat(64));
        let body = serde_json::json!({"threadId": ok, "message": "hi"}).to_string();
        assert!(parse(&body).is_ok());
    }

    #[test]
    fn handles_pass_by_shape_and_their_token_cannot_smuggle_anything() {
        let token = "AAAAAGrz4kBx-_9zQ0123456789abcde";
        assert_eq!(token.len(), TOKEN_CHARS);
        let handle = format!("thread_abc.{token}");
        let body = serde_json::json!({"threadId": handle, "message": "hi"}).to_string();
        assert_eq!(parse(&body).unwrap().thread_id, handle);
        for bad in [
            format!("thread_abc.{}", &token[1..]),
            format!("thread_abc.{token}A"),
            format!("thread_abc.{}/", &token[1..]),
            format!("thread_abc.{}=", &token[1..]),
            format!("thread_abc.{}%", &token[1..]),
            format!("thread_a.bc.{token}"),
            format!("thread_.{token}"),
            format!("thread_ab/c.{token}"),
            format!(".{token}"),
            "thread_abc.".to_string(),
        ] {
            let body = serde_json::json!({"threadId": bad, "message": "hi"}).to_string();
            assert_eq!(code(&body), "invalid_thread_id", "{bad}");
        }
        let err = parse(r#"{"threadId":"thread_a/b","message":"hi"}"#).unwrap_err();
        assert!(err.message.contains("create-thread"), "{}", err.message);
    }
}
