//! The Assistants API (threads, messages, runs): OpenAI's original API for assistants,
//! sunset on 2026-08-26 but still spoken by compatible servers and our stub.
//!
//! Every call carries `OpenAI-Beta: assistants=v2`. A widget turn is two calls: add the
//! user's message to the thread, then start a streamed run of the tenant's assistant.

use super::{fields_of, Signal, ToolCall, ToolOutput, ToolRound, Usage};
use crate::request::IdRule;
use crate::sse::SseEvent;
use crate::upstream::UpstreamRequest;
use serde::Deserialize;
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

/// `POST /threads/{id}/runs` with `stream: true`: the assistant's answer as events, at most
/// `max_completion_tokens` long when given (the run then ends `incomplete`; the tool-output
/// submissions of the run are bound by it too and do not take it).
pub fn start_run(
    thread_id: &str,
    assistant_id: &str,
    max_completion_tokens: Option<u32>,
) -> UpstreamRequest {
    let mut body = json!({"assistant_id": assistant_id, "stream": true});
    if let Some(max) = max_completion_tokens {
        body["max_completion_tokens"] = max.into();
    }
    UpstreamRequest::post(format!("/threads/{thread_id}/runs"), &body)
        .header(BETA.0, BETA.1)
        .streaming()
}

/// `POST /threads/{id}/runs/{run}/submit_tool_outputs` with `stream: true`: the run goes on.
pub fn submit_tool_outputs(
    thread_id: &str,
    run_id: &str,
    outputs: &[ToolOutput],
) -> UpstreamRequest {
    let outputs: Vec<_> = outputs
        .iter()
        .map(|o| json!({"tool_call_id": o.call_id, "output": o.output}))
        .collect();
    UpstreamRequest::post(
        format!("/threads/{thread_id}/runs/{run_id}/submit_tool_outputs"),
        &json!({"tool_outputs": outputs, "stream": true}),
    )
    .header(BETA.0, BETA.1)
    .streaming()
}

/// `POST /threads/{id}/runs/{run}/cancel`: stop a run nobody will read.
pub fn cancel_run(thread_id: &str, run_id: &str) -> UpstreamRequest {
    UpstreamRequest::post(
        format!("/threads/{thread_id}/runs/{run_id}/cancel"),
        &json!({}),
    )
    .header(BETA.0, BETA.1)
}

/// `GET /threads/{id}/messages`: the thread's messages, newest first.
pub fn list_messages(thread_id: &str) -> UpstreamRequest {
    UpstreamRequest::get(format!("/threads/{thread_id}/messages")).header(BETA.0, BETA.1)
}

/// Follows one run stream; keeps the tool calls of a `thread.run.requires_action`, the run's
/// id and the usage of its last terminal event.
#[derive(Debug, Default)]
pub struct Reader {
    round: Option<ToolRound>,
    run_id: Option<String>,
    usage: Option<Usage>,
}

impl Reader {
    pub fn observe(&mut self, event: &SseEvent) -> Signal {
        let signal = classify(event);
        if signal == Signal::RequiresAction {
            self.round = Some(tool_round(&event.data));
        }
        if self.run_id.is_none() && is_run_event(event) {
            self.run_id = run_id(&event.data);
        }
        if matches!(
            signal,
            Signal::Completed | Signal::RequiresAction | Signal::Ended(_)
        ) {
            self.usage = run_usage(&event.data).or(self.usage);
        }
        signal
    }

    pub fn take_tool_calls(&mut self) -> Option<ToolRound> {
        self.round.take()
    }

    /// The run's usage in the last terminal event (`completed`, `requires_action`, `failed`,
    /// ...) that had one: all the run's streams so far, not this stream's alone.
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// The run's id, from the first run event (`thread.run.created` for a new run).
    pub fn run_id(&self) -> Option<&str> {
        self.run_id.as_deref()
    }
}

/// Whether the event's data is a run object (`thread.run.*`, not a run step's).
fn is_run_event(event: &SseEvent) -> bool {
    event.event.starts_with("thread.run.") && !event.event.starts_with("thread.run.step.")
}

/// The `id` of a run object.
fn run_id(data: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Run {
        id: Option<String>,
    }
    let id = fields_of::<Run>(data)?.id?;
    id.starts_with("run_").then_some(id)
}

/// The `usage` of a run object (`prompt_tokens`, `completion_tokens`, `total_tokens`);
/// `None` when it is null or missing.
pub fn run_usage(data: &str) -> Option<Usage> {
    #[derive(Deserialize)]
    struct Run {
        usage: Option<serde_json::Value>,
    }
    let usage = fields_of::<Run>(data)?.usage?;
    Usage::from_json(&usage, "prompt_tokens", "completion_tokens")
}

/// Whether the event carries a piece of the answer's text.
pub fn is_text_delta(event: &SseEvent) -> bool {
    event.event == "thread.message.delta"
}

/// The run id and tool calls of a `thread.run.requires_action` event. Calls that are not
/// functions, or lack an id, are left out (nothing could answer them).
fn tool_round(data: &str) -> ToolRound {
    let run: serde_json::Value = serde_json::from_str(data).unwrap_or_default();
    let calls = run
        .pointer("/required_action/submit_tool_outputs/tool_calls")
        .and_then(|c| c.as_array())
        .map(|calls| {
            calls
                .iter()
                .filter_map(|call| {
                    Some(ToolCall {
                        call_id: call.get("id")?.as_str()?.to_string(),
                        name: call.pointer("/function/name")?.as_str()?.to_string(),
                        arguments: call
                            .pointer("/function/arguments")
                            .and_then(|a| a.as_str())
                            .unwrap_or_default()
                            .to_string(),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    ToolRound {
        run_id: run.get("id").and_then(|i| i.as_str()).map(str::to_string),
        calls,
    }
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
        let run = start_run("thread_a", "asst_b", None);
        assert_eq!(run.path, "/threads/thread_a/runs");
        assert!(run.stream);
        assert!(run.headers.contains(&("OpenAI-Beta", "assistants=v2")));
        let body: serde_json::Value = serde_json::from_slice(run.body.as_ref().unwrap()).unwrap();
        assert_eq!(body, json!({"assistant_id": "asst_b", "stream": true}));
    }

    #[test]
    fn a_run_carries_the_tenant_output_limit() {
        let run = start_run("thread_a", "asst_b", Some(300));
        let body: serde_json::Value = serde_json::from_slice(run.body.as_ref().unwrap()).unwrap();
        assert_eq!(
            body,
            json!({"assistant_id": "asst_b", "stream": true, "max_completion_tokens": 300})
        );
    }

    #[test]
    fn requires_action_yields_the_run_and_its_calls() {
        let example = include_str!(
            "../../tests/fixtures/openai-wire/assistants-create-run-requires-action.sse"
        );
        let mut parser = crate::sse::SseParser::new();
        let mut reader = Reader::default();
        let signals: Vec<Signal> = parser
            .push(example.replace("...\n\n", "").as_bytes())
            .unwrap()
            .iter()
            .map(|e| reader.observe(e))
            .collect();
        assert_eq!(
            signals[signals.len() - 2..],
            [Signal::RequiresAction, Signal::Done]
        );
        let round = reader.take_tool_calls().unwrap();
        assert_eq!(round.run_id.as_deref(), Some("run_123"));
        assert_eq!(
            round.calls,
            [ToolCall {
                call_id: "call_XXNp8YGaFrjrSjgqxtC8JJ1B".into(),
                name: "get_current_weather".into(),
                arguments: r#"{"location":"San Francisco, CA","unit":"fahrenheit"}"#.into(),
            }]
        );
        assert!(reader.take_tool_calls().is_none());
    }

    #[test]
    fn tool_outputs_are_submitted_in_one_streamed_request() {
        let req = submit_tool_outputs(
            "thread_a",
            "run_b",
            &[
                ToolOutput {
                    call_id: "call_1".into(),
                    output: "sent".into(),
                },
                ToolOutput {
                    call_id: "call_2".into(),
                    output: "no".into(),
                },
            ],
        );
        assert_eq!(req.path, "/threads/thread_a/runs/run_b/submit_tool_outputs");
        assert!(req.stream);
        let body: serde_json::Value = serde_json::from_slice(req.body.as_ref().unwrap()).unwrap();
        assert_eq!(
            body,
            json!({"tool_outputs": [
                {"tool_call_id": "call_1", "output": "sent"},
                {"tool_call_id": "call_2", "output": "no"}
            ], "stream": true})
        );
    }

    /// Every event of a fixture stream, through one reader.
    fn read_fixture(text: &str) -> Reader {
        let mut parser = crate::sse::SseParser::new();
        let mut reader = Reader::default();
        for event in parser.push(text.replace("...\n\n", "").as_bytes()).unwrap() {
            reader.observe(&event);
        }
        reader
    }

    #[test]
    fn the_completed_runs_usage_and_the_run_id_are_kept() {
        let reader = read_fixture(include_str!(
            "../../tests/fixtures/openai-wire/assistants-create-run-stream.sse"
        ));
        assert_eq!(
            reader.usage(),
            Some(Usage {
                input: 20,
                output: 11,
                total: 31
            })
        );
        assert_eq!(reader.run_id(), Some("run_123"));
    }

    #[test]
    fn a_requires_action_run_reports_its_usage_too() {
        let reader = read_fixture(include_str!(
            "../../tests/fixtures/openai-wire/assistants-create-run-requires-action.sse"
        ));
        assert_eq!(
            reader.usage(),
            Some(Usage {
                input: 345,
                output: 11,
                total: 356
            })
        );
    }

    #[test]
    fn usage_is_read_from_run_objects_only_when_present() {
        let usage = |data: serde_json::Value| run_usage(&data.to_string());
        assert_eq!(usage(json!({"id": "run_1", "usage": null})), None);
        assert_eq!(usage(json!({"id": "run_1"})), None);
        assert_eq!(
            usage(json!({"usage": {"prompt_tokens": 5, "completion_tokens": 2}})),
            Some(Usage {
                input: 5,
                output: 2,
                total: 7
            }),
            "a missing total is the sum"
        );
        assert_eq!(
            usage(json!({"usage": {"prompt_tokens": "5", "completion_tokens": 2}})),
            None
        );
        assert_eq!(run_usage("not json"), None);
        // Events that end nothing are not counted, even with a usage.
        let mut reader = Reader::default();
        let step = SseEvent {
            event: "thread.run.step.completed".into(),
            data: json!({"id": "step_1", "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}).to_string(),
            id: None,
        };
        reader.observe(&step);
        assert_eq!(reader.usage(), None);
        assert_eq!(reader.run_id(), None, "a step's id is not the run's");
    }

    #[test]
    fn cancel_names_the_thread_and_run() {
        let req = cancel_run("thread_a", "run_b");
        assert_eq!(req.method, http::Method::POST);
        assert_eq!(req.path, "/threads/thread_a/runs/run_b/cancel");
        assert!(!req.stream);
        assert!(req.headers.contains(&("OpenAI-Beta", "assistants=v2")));
    }

    #[test]
    fn recognizes_the_run_active_error() {
        let body = json!({"error": {"message": "Can't add messages to thread_a while a run run_b is active."}});
        assert!(is_run_active_error(&body));
        assert!(!is_run_active_error(&json!({"error": {"message": "nope"}})));
    }
}
