//! The Assistants API (threads, messages, runs): OpenAI's original API for assistants,
//! sunset on 2026-08-26 but still spoken by compatible servers and our stub.
//!
//! Every call carries `OpenAI-Beta: assistants=v2`. A widget turn is two calls: add the
//! user's message to the thread, then start a streamed run of the tenant's assistant.

use super::Signal;
use crate::request::IdRule;
use crate::sse::SseEvent;
use crate::upstream::UpstreamRequest;
use serde_json::json;

/// The header every Assistants API call needs.
const BETA: (&str, &str) = ("OpenAI-Beta", "assistants=v2");

/// Thread ids as the Assistants API makes them.
pub const ID_RULE: IdRule = IdRule::THREAD;

/// `POST /threads`: a new, empty thread.
pub fn create_thread() -> UpstreamRequest {
    UpstreamRequest::post("/threads", &json!({})).header(BETA.0, BETA.1)
}

/// `POST /threads/{id}/messages`: the user's message.
pub fn add_message(thread_id: &str, message: &str) -> UpstreamRequest {
    UpstreamRequest::post(
        format!("/threads/{thread_id}/messages"),
        &json!({"role": "user", "content": message}),
    )
    .header(BETA.0, BETA.1)
}

/// `POST /threads/{id}/runs` with `stream: true`: the assistant's answer as events.
pub fn start_run(thread_id: &str, assistant_id: &str) -> UpstreamRequest {
    UpstreamRequest::post(
        format!("/threads/{thread_id}/runs"),
        &json!({"assistant_id": assistant_id, "stream": true}),
    )
    .header(BETA.0, BETA.1)
    .streaming()
}

/// What a run event means.
pub fn classify(event: &SseEvent) -> Signal {
    match event.event.as_str() {
        "done" => Signal::Done,
        "thread.run.completed" => Signal::Completed,
        "thread.run.requires_action" => Signal::RequiresAction,
        "thread.run.failed"
        | "thread.run.cancelled"
        | "thread.run.expired"
        | "thread.run.incomplete" => {
            Signal::Ended(event.event.trim_start_matches("thread.run.").to_string())
        }
        "error" => Signal::ErrorEvent,
        _ => Signal::Progress,
    }
}

/// Whether an upstream 400 says a run is still active on the thread
/// ("Can't add messages to thread_... while a run run_... is active.").
pub fn is_run_active_error(body: &serde_json::Value) -> bool {
    body.pointer("/error/message")
        .and_then(|m| m.as_str())
        .is_some_and(|m| m.contains("while a run") && m.contains("is active"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(name: &str) -> SseEvent {
        SseEvent {
            event: name.to_string(),
            data: "{}".to_string(),
            id: None,
        }
    }

    #[test]
    fn run_events_are_classified() {
        assert_eq!(classify(&event("thread.message.delta")), Signal::Progress);
        assert_eq!(classify(&event("thread.run.completed")), Signal::Completed);
        assert_eq!(
            classify(&event("thread.run.expired")),
            Signal::Ended("expired".into())
        );
        assert_eq!(
            classify(&event("thread.run.requires_action")),
            Signal::RequiresAction
        );
        assert_eq!(classify(&event("done")), Signal::Done);
        assert_eq!(classify(&event("error")), Signal::ErrorEvent);
    }

    #[test]
    fn requests_carry_the_beta_header_and_stream_flag() {
        let run = start_run("thread_a", "asst_b");
        assert_eq!(run.path, "/threads/thread_a/runs");
        assert!(run.stream);
        assert!(run.headers.contains(&("OpenAI-Beta", "assistants=v2")));
        let body: serde_json::Value = serde_json::from_slice(run.body.as_ref().unwrap()).unwrap();
        assert_eq!(body, json!({"assistant_id": "asst_b", "stream": true}));
    }

    #[test]
    fn recognizes_the_run_active_error() {
        let body = json!({"error": {"message": "Can't add messages to thread_a while a run run_b is active."}});
        assert!(is_run_active_error(&body));
        assert!(!is_run_active_error(&json!({"error": {"message": "nope"}})));
    }
}
