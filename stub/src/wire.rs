//! Wire-level building blocks shared by both APIs: server-sent events and
//! their framing, planned streams, OpenAI-style error bodies, list objects,
//! and the [`Reply`] a handler hands to the HTTP layer.

use bytes::Bytes;
use serde::Serialize;

use super::directives::Directives;

/// One server-sent event: `event: NAME` / `data: DATA`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub name: String,
    pub data: String,
}

impl Event {
    /// An event whose data is `value` serialized as compact JSON (field order
    /// is the declaration order of the serialized structs).
    pub fn json<T: Serialize>(name: &str, value: &T) -> Event {
        let data = serde_json::to_string(value).unwrap_or_else(|_| "{}".to_string());
        Event {
            name: name.to_string(),
            data,
        }
    }

    /// The Assistants API terminator `event: done` / `data: [DONE]`.
    pub fn done() -> Event {
        Event {
            name: "done".to_string(),
            data: "[DONE]".to_string(),
        }
    }

    /// The event as written on the wire (`\n` or `\r\n` line ends).
    pub fn to_wire(&self, crlf: bool) -> String {
        let nl = if crlf { "\r\n" } else { "\n" };
        format!("event: {}{nl}data: {}{nl}{nl}", self.name, self.data)
    }

    /// The body writes for this event: one, or two cut in the middle of the
    /// `data:` line when `split` is set.
    pub fn frames(&self, crlf: bool, split: bool) -> Vec<Bytes> {
        let wire = self.to_wire(crlf).into_bytes();
        if !split {
            return vec![Bytes::from(wire)];
        }
        let nl_len = if crlf { 2 } else { 1 };
        let data_line_start = "event: ".len() + self.name.len() + nl_len;
        let data_line_len = "data: ".len() + self.data.len();
        let cut = (data_line_start + data_line_len / 2).clamp(1, wire.len() - 1);
        let wire = Bytes::from(wire);
        vec![wire.slice(..cut), wire.slice(cut..)]
    }
}

/// How a planned stream ends after its last event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Terminating chunk; the connection may be reused.
    Finish,
    /// The TCP connection is closed without the terminating chunk.
    Cut,
}

/// A whole stream decided up front.
#[derive(Debug, Clone)]
pub struct Plan {
    pub events: Vec<Event>,
    pub ending: Ending,
    /// Index of the event before which the final state is committed (the
    /// event that reveals it, e.g. `thread.run.completed`), so a client that
    /// has seen it never finds the old state; `events.len()` commits after
    /// the last event.
    pub commit_at: usize,
}

#[cfg(test)]
impl Plan {
    /// The event names, in order.
    pub fn names(&self) -> Vec<&str> {
        self.events.iter().map(|e| e.name.as_str()).collect()
    }
}

/// Timing and framing of a stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pacing {
    pub slow_ms: u64,
    pub hang_after: Option<usize>,
    pub split: bool,
    pub crlf: bool,
}

impl Pacing {
    /// Pacing asked for by `d`; `with_hang` says whether `hang_after` applies
    /// to this stream (only the stream carrying the text answer).
    pub fn from_directives(d: &Directives, with_hang: bool) -> Pacing {
        Pacing {
            slow_ms: d.slow_ms,
            hang_after: if with_hang { d.hang_after } else { None },
            split: d.split,
            crlf: d.crlf,
        }
    }
}

/// Runs a closure exactly once when dropped: state updates that must
/// happen however a stream ends (completed, client gone, task dropped).
pub struct Finalizer(Option<Box<dyn FnOnce() + Send>>);

impl Finalizer {
    pub fn new(f: impl FnOnce() + Send + 'static) -> Finalizer {
        Finalizer(Some(Box::new(f)))
    }

    /// Run the closure now (no-op if it already ran).
    pub fn fire(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

impl Drop for Finalizer {
    fn drop(&mut self) {
        self.fire();
    }
}

impl std::fmt::Debug for Finalizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Finalizer")
    }
}

/// A streamed reply.
#[derive(Debug)]
pub struct StreamJob {
    pub plan: Plan,
    pub pacing: Pacing,
    pub finalizer: Finalizer,
}

/// What a handler asks the HTTP layer to send.
#[derive(Debug)]
pub enum Reply {
    /// A JSON body with a status and extra headers.
    Json {
        status: u16,
        body: Vec<u8>,
        headers: Vec<(&'static str, String)>,
    },
    /// `204 No Content`.
    NoContent,
    /// An event stream.
    Stream(StreamJob),
    /// Never answer (special key `sk-stub-hang`).
    Hang,
}

impl Reply {
    /// `status` with `value` serialized as JSON.
    pub fn json<T: Serialize>(status: u16, value: &T) -> Reply {
        Reply::Json {
            status,
            body: serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec()),
            headers: Vec::new(),
        }
    }

    /// An OpenAI-style error of type `invalid_request_error`.
    pub fn invalid(
        status: u16,
        message: impl Into<String>,
        param: Option<&str>,
        code: Option<&str>,
    ) -> Reply {
        Reply::error(status, message, "invalid_request_error", param, code)
    }

    /// An OpenAI-style error.
    pub fn error(
        status: u16,
        message: impl Into<String>,
        kind: &str,
        param: Option<&str>,
        code: Option<&str>,
    ) -> Reply {
        let body = ErrorBody {
            error: ErrorDetail {
                message: message.into(),
                kind: kind.to_string(),
                param: param.map(str::to_string),
                code: code.map(str::to_string),
            },
        };
        Reply::json(status, &body)
    }

    /// Add a response header (JSON replies only).
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Reply {
        if let Reply::Json { headers, .. } = &mut self {
            headers.push((name, value.into()));
        }
        self
    }
}

/// `{"error":{"message","type","param","code"}}`
#[derive(Debug, Serialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize)]
pub struct ErrorDetail {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub param: Option<String>,
    pub code: Option<String>,
}

/// `{"object":"list","data":[...],"first_id","last_id","has_more":false}`
#[derive(Debug, Serialize)]
pub struct ListObject<T: Serialize> {
    pub object: &'static str,
    pub data: Vec<T>,
    pub first_id: Option<String>,
    pub last_id: Option<String>,
    pub has_more: bool,
}

impl<T: Serialize> ListObject<T> {
    /// A complete list; `id_of` gives the id of an element.
    pub fn new(data: Vec<T>, id_of: impl Fn(&T) -> String) -> ListObject<T> {
        ListObject {
            object: "list",
            first_id: data.first().map(&id_of),
            last_id: data.last().map(&id_of),
            data,
            has_more: false,
        }
    }
}

/// Text of a message `content`: a string, or an array of parts whose
/// `text` fields (a string, or `{"value": ...}`) are concatenated.
pub fn content_text(content: &serde_json::Value) -> Option<String> {
    use serde_json::Value;
    match content {
        Value::String(s) => Some(s.clone()),
        Value::Array(parts) => {
            let mut out = String::new();
            for part in parts {
                match part.get("text") {
                    Some(Value::String(s)) => out.push_str(s),
                    Some(Value::Object(o)) => {
                        if let Some(Value::String(s)) = o.get("value") {
                            out.push_str(s);
                        }
                    }
                    _ => {}
                }
            }
            Some(out)
        }
        _ => None,
    }
}

/// `value[key]` as an object, or `{}` when absent or of another type.
pub fn object_or_empty(value: &serde_json::Value, key: &str) -> serde_json::Value {
    match value.get(key) {
        Some(v @ serde_json::Value::Object(_)) => v.clone(),
        _ => serde_json::Value::Object(Default::default()),
    }
}

/// A missing or mistyped required parameter.
pub fn missing_param(param: &str) -> Reply {
    Reply::invalid(
        400,
        format!("Missing required parameter: '{param}'."),
        Some(param),
        Some("missing_required_parameter"),
    )
}

/// `"stream": true` is the only mode the stub implements.
pub fn stream_required() -> Reply {
    Reply::invalid(
        400,
        "The stub only implements streaming: set \"stream\": true.",
        Some("stream"),
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev() -> Event {
        Event {
            name: "thread.message.delta".into(),
            data: r#"{"a":"bcdef"}"#.into(),
        }
    }

    #[test]
    fn wire_format() {
        assert_eq!(
            ev().to_wire(false),
            "event: thread.message.delta\ndata: {\"a\":\"bcdef\"}\n\n"
        );
        assert_eq!(
            ev().to_wire(true),
            "event: thread.message.delta\r\ndata: {\"a\":\"bcdef\"}\r\n\r\n"
        );
        assert_eq!(
            Event::done().to_wire(false),
            "event: done\ndata: [DONE]\n\n"
        );
    }

    #[test]
    fn split_cuts_the_data_line() {
        for crlf in [false, true] {
            let frames = ev().frames(crlf, true);
            assert_eq!(frames.len(), 2);
            let first = String::from_utf8(frames[0].to_vec()).unwrap();
            assert!(first.contains("data: "), "{first:?}");
            assert!(!first.ends_with('\n'));
            let joined: Vec<u8> = frames.iter().flat_map(|b| b.to_vec()).collect();
            assert_eq!(joined, ev().to_wire(crlf).into_bytes());
        }
        assert_eq!(ev().frames(false, false).len(), 1);
    }

    #[test]
    fn error_body_shape() {
        let Reply::Json { status, body, .. } = Reply::invalid(404, "nope", None, Some("not_found"))
        else {
            panic!("json reply expected");
        };
        assert_eq!(status, 404);
        assert_eq!(
            String::from_utf8(body).unwrap(),
            r#"{"error":{"message":"nope","type":"invalid_request_error","param":null,"code":"not_found"}}"#
        );
    }

    #[test]
    fn content_text_forms() {
        use serde_json::json;
        assert_eq!(content_text(&json!("hi")).as_deref(), Some("hi"));
        assert_eq!(
            content_text(&json!([{"type":"text","text":"a"},{"type":"input_text","text":"b"}]))
                .as_deref(),
            Some("ab")
        );
        assert_eq!(
            content_text(&json!([{"type":"text","text":{"value":"v"}}])).as_deref(),
            Some("v")
        );
        assert_eq!(content_text(&json!(3)), None);
    }

    #[test]
    fn finalizer_runs_once_on_drop() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        let n = Arc::new(AtomicUsize::new(0));
        let n2 = n.clone();
        let mut f = Finalizer::new(move || {
            n2.fetch_add(1, Ordering::SeqCst);
        });
        f.fire();
        drop(f);
        assert_eq!(n.load(Ordering::SeqCst), 1);
    }
}
