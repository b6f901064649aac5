//! The "widget-v1" stream framing: what the old NestJS service wrote, and what the chatbot
//! widget already embedded on customers' sites parses.
//!
//! Each event is one `data: <json>` line and a blank line, written on its own: the widget
//! takes each `read()` as one event and drops a read that holds two. So events ready at the
//! same moment are first merged into as few events as possible ([`coalesce`]), and the relay
//! spaces its writes. Only five run events pass, reduced to
//! `{"event", "status", "content", "delta"}`; a finished answer ends with an `end` event
//! carrying the conversation's messages; every failure ends with a `system.error` event.
//! Responses API events are translated into the same Assistants-shaped events, so the old
//! widget works unchanged on today's API. Pure: events in, bytes out.

use crate::dialect::{Dialect, Signal};
use crate::sse::SseEvent;
use bytes::Bytes;
use serde_json::{json, Map, Value};

mod coalesce;
pub use coalesce::{coalesce, is_full_text};

/// One widget-v1 event: `data: <json>\n\n`.
pub fn frame(event: &Value) -> Bytes {
    Bytes::from(format!("data: {event}\n\n"))
}

/// The final event of a failed answer.
pub fn system_error(content: &str) -> Bytes {
    frame(&json!({"event": "system.error", "status": "error", "content": content}))
}

/// The `end` event with the conversation's messages.
pub fn end(messages: Vec<Value>) -> Bytes {
    frame(&json!({"event": "end", "messages": messages}))
}

/// The widget-v1 event for one upstream event, if it is one the widget sees. `continuation`:
/// the event belongs to a stream that continues the answer after tool outputs (for the
/// widget that is still the same run, so a new response's creation is not announced).
pub fn translate(
    dialect: Dialect,
    event: &SseEvent,
    signal: &Signal,
    continuation: bool,
) -> Option<Bytes> {
    translate_event(dialect, event, signal, continuation).map(|event| frame(&event))
}

/// As [`translate`], the event itself (not yet framed), for [`coalesce`].
pub fn translate_event(
    dialect: Dialect,
    event: &SseEvent,
    signal: &Signal,
    continuation: bool,
) -> Option<Value> {
    match dialect {
        Dialect::Assistants => translate_run_event(event),
        Dialect::Responses => translate_response_event(event, signal, continuation),
    }
}

/// Assistants API events pass through reduced to their `status`, `content` and `delta`.
fn translate_run_event(event: &SseEvent) -> Option<Value> {
    const PASSED: [&str; 5] = [
        "thread.run.created",
        "thread.run.requires_action",
        "thread.message.delta",
        "thread.message.completed",
        "thread.run.completed",
    ];
    if !PASSED.contains(&event.event.as_str()) {
        return None;
    }
    let data: Value = serde_json::from_str(&event.data).ok()?;
    let mut out = Map::new();
    out.insert("event".into(), Value::String(event.event.clone()));
    for field in ["status", "content", "delta"] {
        if let Some(value) = data.get(field) {
            out.insert(field.into(), value.clone());
        }
    }
    Some(Value::Object(out))
}

/// Responses API events become the Assistants-shaped events the widget knows.
fn translate_response_event(
    event: &SseEvent,
    signal: &Signal,
    continuation: bool,
) -> Option<Value> {
    match (event.event.as_str(), signal) {
        ("response.created", _) if continuation => None,
        ("response.created", _) => Some(json!({"event": "thread.run.created", "status": "queued"})),
        ("response.output_text.delta", _) => {
            let data: Value = serde_json::from_str(&event.data).ok()?;
            let text = data.get("delta")?.as_str()?;
            Some(json!({
                "event": "thread.message.delta",
                "delta": {"content": [{"index": 0, "type": "text", "text": {"value": text}}]}
            }))
        }
        ("response.output_item.done", _) => {
            let data: Value = serde_json::from_str(&event.data).ok()?;
            let item = data.get("item")?;
            // A message cut short (status `incomplete`) is not announced as completed: the
            // failure that follows ends the answer.
            if item.get("type")?.as_str()? != "message"
                || item.get("status").and_then(Value::as_str) != Some("completed")
            {
                return None;
            }
            Some(json!({
                "event": "thread.message.completed",
                "status": "completed",
                "content": text_content(&item_text(item)),
            }))
        }
        (_, Signal::RequiresAction) => {
            Some(json!({"event": "thread.run.requires_action", "status": "requires_action"}))
        }
        (_, Signal::Completed) => {
            Some(json!({"event": "thread.run.completed", "status": "completed"}))
        }
        _ => None,
    }
}

/// The messages of the `end` event from the upstream's message (or item) list.
pub fn messages_from_list(dialect: Dialect, list: &Value) -> Vec<Value> {
    let data = list
        .get("data")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    match dialect {
        Dialect::Assistants => data,
        Dialect::Responses => data
            .iter()
            .filter(|item| item.get("type").and_then(Value::as_str) == Some("message"))
            .map(|item| {
                json!({
                    "id": item.get("id").cloned().unwrap_or(Value::Null),
                    "object": "thread.message",
                    "role": item.get("role").cloned().unwrap_or(Value::Null),
                    "content": text_content(&item_text(item)),
                })
            })
            .collect(),
    }
}

/// Thread-message content holding one text.
fn text_content(text: &str) -> Value {
    json!([{"type": "text", "text": {"value": text, "annotations": []}}])
}

/// The text of a Responses message item (its `output_text` / `input_text` parts joined).
fn item_text(item: &Value) -> String {
    item.get("content")
        .and_then(Value::as_array)
        .map(|parts| {
            parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join("")
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(name: &str, data: Value) -> SseEvent {
        SseEvent {
            event: name.into(),
            data: data.to_string(),
            id: None,
        }
    }

    fn text(bytes: Option<Bytes>) -> Option<String> {
        bytes.map(|b| String::from_utf8(b.to_vec()).unwrap())
    }

    #[test]
    fn run_events_keep_only_status_content_and_delta() {
        let created = event(
            "thread.run.created",
            json!({"id": "run_1", "object": "thread.run", "status": "queued", "model": "gpt-4o"}),
        );
        assert_eq!(
            text(translate(
                Dialect::Assistants,
                &created,
                &Signal::Progress,
                false
            ))
            .unwrap(),
            "data: {\"event\":\"thread.run.created\",\"status\":\"queued\"}\n\n"
        );
        let step = event("thread.run.step.created", json!({"status": "in_progress"}));
        assert_eq!(
            translate(Dialect::Assistants, &step, &Signal::Progress, false),
            None
        );
        let done = SseEvent {
            event: "done".into(),
            data: "[DONE]".into(),
            id: None,
        };
        assert_eq!(
            translate(Dialect::Assistants, &done, &Signal::Done, false),
            None
        );
    }

    #[test]
    fn response_events_become_run_events() {
        let d = Dialect::Responses;
        let delta = event(
            "response.output_text.delta",
            json!({"type": "response.output_text.delta", "delta": "Hi"}),
        );
        assert_eq!(
            text(translate(d, &delta, &Signal::Progress, false)).unwrap(),
            "data: {\"event\":\"thread.message.delta\",\"delta\":{\"content\":[{\"index\":0,\"type\":\"text\",\"text\":{\"value\":\"Hi\"}}]}}\n\n"
        );
        let done = event(
            "response.output_item.done",
            json!({"item": {"type": "message", "role": "assistant", "status": "completed",
                "content": [{"type": "output_text", "text": "Hi there", "annotations": []}]}}),
        );
        assert_eq!(
            text(translate(d, &done, &Signal::Progress, false)).unwrap(),
            "data: {\"event\":\"thread.message.completed\",\"status\":\"completed\",\"content\":[{\"type\":\"text\",\"text\":{\"value\":\"Hi there\",\"annotations\":[]}}]}\n\n"
        );
        let cut_short = event(
            "response.output_item.done",
            json!({"item": {"type": "message", "status": "incomplete", "content": []}}),
        );
        assert_eq!(translate(d, &cut_short, &Signal::Progress, false), None);
        let created = event("response.created", json!({}));
        assert!(translate(d, &created, &Signal::Progress, false).is_some());
        assert_eq!(
            translate(d, &created, &Signal::Progress, true),
            None,
            "a continuation is the same run for the widget"
        );
        let call_done = event(
            "response.output_item.done",
            json!({"item": {"type": "function_call", "name": "sendEmail"}}),
        );
        assert_eq!(translate(d, &call_done, &Signal::Progress, false), None);
        let completed = event("response.completed", json!({}));
        assert!(
            text(translate(d, &completed, &Signal::RequiresAction, false))
                .unwrap()
                .contains("\"thread.run.requires_action\"")
        );
        assert!(text(translate(d, &completed, &Signal::Completed, false))
            .unwrap()
            .contains("\"thread.run.completed\""));
    }

    #[test]
    fn conversation_items_are_shaped_as_thread_messages() {
        let items = json!({"object": "list", "data": [
            {"type": "message", "id": "msg_1", "role": "user",
             "content": [{"type": "input_text", "text": "hello"}]},
            {"type": "function_call", "id": "fc_1", "name": "sendEmail"},
            {"type": "message", "id": "msg_2", "role": "assistant",
             "content": [{"type": "output_text", "text": "Hi"}]}
        ]});
        let messages = messages_from_list(Dialect::Responses, &items);
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[0]["role"], "user");
        assert_eq!(messages[0]["content"][0]["text"]["value"], "hello");
        assert_eq!(messages[1]["content"][0]["text"]["value"], "Hi");
    }

    #[test]
    fn failures_and_the_end_have_fixed_shapes() {
        assert_eq!(
            system_error("Error submitting tool outputs"),
            Bytes::from("data: {\"event\":\"system.error\",\"status\":\"error\",\"content\":\"Error submitting tool outputs\"}\n\n")
        );
        assert_eq!(
            end(vec![json!({"id": "msg_1"})]),
            Bytes::from("data: {\"event\":\"end\",\"messages\":[{\"id\":\"msg_1\"}]}\n\n")
        );
    }
}
