//! The Responses + Conversations API: OpenAI's successor to the Assistants API.
//!
//! A widget thread is a conversation (`conv_...`); a widget turn is one streamed
//! `POST /responses` naming the conversation, with the tenant's model, instructions and tools.
//! Function calls arrive as `function_call` output items; they are answered by another
//! `POST /responses` whose input is `function_call_output` items.

use super::{Signal, ToolCall, ToolOutput, ToolRound, Usage};
use crate::config::{Tenant, UpstreamApi};
use crate::request::IdRule;
use crate::sse::SseEvent;
use crate::upstream::UpstreamRequest;
use serde_json::{json, Value};

/// Conversation ids as the Conversations API makes them.
pub const ID_RULE: IdRule = IdRule {
    prefix: "conv_",
    max_len: 80,
};

/// `POST /conversations`, with metadata naming the tenant.
pub fn create_conversation(tenant: &Tenant) -> UpstreamRequest {
    UpstreamRequest::post(
        "/conversations",
        &json!({"metadata": {"tenant": tenant.name}}),
    )
}

/// `GET /conversations/{id}/items`, newest first (as the Assistants API lists thread messages).
pub fn list_items(conversation: &str) -> UpstreamRequest {
    UpstreamRequest::get(format!(
        "/conversations/{conversation}/items?order=desc&limit=100"
    ))
}

/// The function definition of the tenant's lead tool, added to every response when the
/// tenant has lead recipients.
pub fn lead_tool_definition(name: &str) -> Value {
    json!({
        "type": "function",
        "name": name,
        "description": "Send the visitor's name, e-mail address and message to the site owner. \
                        Call it once the visitor has given all three.",
        "parameters": {
            "type": "object",
            "properties": {
                "name": {"type": "string", "description": "The visitor's name"},
                "email": {"type": "string", "description": "The visitor's e-mail address"},
                "message": {"type": "string", "description": "What the visitor wants to tell the site owner"}
            },
            "required": ["name", "email", "message"],
            "additionalProperties": false
        },
        "strict": true
    })
}

/// `input` items answering tool calls.
pub fn tool_outputs(outputs: &[ToolOutput]) -> Value {
    outputs
        .iter()
        .map(|o| json!({"type": "function_call_output", "call_id": o.call_id, "output": o.output}))
        .collect()
}

/// `POST /responses` with `stream: true` in `conversation`, for `input` (the user's message
/// as a string, or tool outputs); with the tenant's `max_output_tokens` if it has one, and
/// `safety_identifier` naming the visitor to OpenAI's abuse controls.
pub fn create_response(
    tenant: &Tenant,
    conversation: &str,
    input: Value,
    safety_identifier: &str,
) -> UpstreamRequest {
    let UpstreamApi::Responses {
        model,
        instructions,
        tools,
    } = &tenant.api
    else {
        unreachable!("create_response is only called for Responses tenants")
    };
    let mut all_tools = tools.clone();
    if !tenant.lead_recipients.is_empty() {
        all_tools.push(lead_tool_definition(&tenant.lead_tool));
    }
    let mut body = json!({
        "model": model,
        "conversation": conversation,
        "input": input,
        "stream": true,
    });
    if let Some(instructions) = instructions {
        body["instructions"] = Value::String(instructions.clone());
    }
    if !all_tools.is_empty() {
        body["tools"] = Value::Array(all_tools);
    }
    if let Some(max) = tenant.max_output_tokens {
        body["max_output_tokens"] = max.into();
    }
    body["safety_identifier"] = Value::String(safety_identifier.to_string());
    UpstreamRequest::post("/responses", &body).streaming()
}

/// Whether an error body says another response is in progress on the conversation.
pub fn is_busy_error(body: &Value) -> bool {
    body.pointer("/error/code").and_then(Value::as_str) == Some("conversation_locked")
}

/// Follows one response stream, collecting its function calls and its usage.
#[derive(Debug, Default)]
pub struct Reader {
    calls: Vec<ToolCall>,
    round: Option<ToolRound>,
    usage: Option<Usage>,
}

impl Reader {
    pub fn observe(&mut self, event: &SseEvent) -> Signal {
        let signal = self.classify(event);
        if matches!(
            signal,
            Signal::Completed | Signal::RequiresAction | Signal::Ended(_)
        ) {
            self.usage = response_usage(&event.data).or(self.usage);
        }
        signal
    }

    /// The usage of the response's terminal event (`completed`, `incomplete`, `failed`):
    /// this response's alone.
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    fn classify(&mut self, event: &SseEvent) -> Signal {
        match event.event.as_str() {
            "response.output_item.done" => {
                if let Some(call) = function_call(&event.data) {
                    self.calls.push(call);
                }
                Signal::Progress
            }
            "response.completed" if !self.calls.is_empty() => {
                self.round = Some(ToolRound {
                    run_id: None,
                    calls: std::mem::take(&mut self.calls),
                });
                Signal::RequiresAction
            }
            "response.completed" => Signal::Completed,
            "response.failed" => Signal::Ended("failed".into()),
            "response.incomplete" => Signal::Ended("incomplete".into()),
            "response.cancelled" => Signal::Ended("cancelled".into()),
            "error" => Signal::ErrorEvent,
            _ => Signal::Progress,
        }
    }

    pub fn take_tool_calls(&mut self) -> Option<ToolRound> {
        self.round.take()
    }
}

/// The `response.usage` of a terminal response event (`input_tokens`, `output_tokens`,
/// `total_tokens`); `None` when it is null or missing.
pub fn response_usage(data: &str) -> Option<Usage> {
    let event: Value = serde_json::from_str(data).ok()?;
    Usage::from_json(
        event.pointer("/response/usage")?,
        "input_tokens",
        "output_tokens",
    )
}

/// Whether the event carries a piece of the answer's text.
pub fn is_text_delta(event: &SseEvent) -> bool {
    event.event == "response.output_text.delta"
}

/// The function call in a `response.output_item.done` event, if its item is one.
fn function_call(data: &str) -> Option<ToolCall> {
    let event: Value = serde_json::from_str(data).ok()?;
    let item = event.get("item")?;
    if item.get("type")?.as_str()? != "function_call" {
        return None;
    }
    Some(ToolCall {
        call_id: item.get("call_id")?.as_str()?.to_string(),
        name: item.get("name")?.as_str()?.to_string(),
        arguments: item
            .get("arguments")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(recipients: &[&str]) -> Tenant {
        Tenant {
            api: UpstreamApi::Responses {
                model: "gpt-5.4".into(),
                instructions: Some("Be brief.".into()),
                tools: vec![json!({"type": "file_search", "vector_store_ids": ["vs_1"]})],
            },
            lead_recipients: recipients.iter().map(|r| r.to_string()).collect(),
            ..crate::tenant::test_tenant("acme", &["acme.test"])
        }
    }

    fn event(name: &str, data: Value) -> SseEvent {
        SseEvent {
            event: name.into(),
            data: data.to_string(),
            id: None,
        }
    }

    #[test]
    fn a_turn_is_one_streamed_response_in_the_conversation() {
        let req = create_response(&tenant(&["sales@acme.test"]), "conv_1", "hi".into(), "v1");
        assert_eq!(req.path, "/responses");
        assert!(req.stream);
        let body: Value = serde_json::from_slice(req.body.as_ref().unwrap()).unwrap();
        assert_eq!(body["model"], "gpt-5.4");
        assert_eq!(body["conversation"], "conv_1");
        assert_eq!(body["input"], "hi");
        assert_eq!(body["instructions"], "Be brief.");
        assert_eq!(body["stream"], true);
        assert_eq!(body["safety_identifier"], "v1");
        assert!(
            body.get("max_output_tokens").is_none(),
            "no limit configured"
        );
        let tools = body["tools"].as_array().unwrap();
        assert_eq!(tools[0]["type"], "file_search");
        assert_eq!(tools[1]["name"], "sendEmail");
        assert_eq!(
            tools[1]["parameters"]["required"],
            json!(["name", "email", "message"])
        );
    }

    #[test]
    fn every_response_carries_the_output_limit_and_the_visitor() {
        let mut limited = tenant(&[]);
        limited.max_output_tokens = Some(512);
        let outputs = tool_outputs(&[ToolOutput {
            call_id: "call_1".into(),
            output: "sent".into(),
        }]);
        for input in [Value::from("hi"), outputs] {
            let req = create_response(&limited, "conv_1", input, "ab12");
            let body: Value = serde_json::from_slice(req.body.as_ref().unwrap()).unwrap();
            assert_eq!(body["max_output_tokens"], 512);
            assert_eq!(body["safety_identifier"], "ab12");
        }
    }

    #[test]
    fn without_recipients_no_lead_tool_is_offered() {
        let req = create_response(&tenant(&[]), "conv_1", "hi".into(), "v1");
        let body: Value = serde_json::from_slice(req.body.as_ref().unwrap()).unwrap();
        assert_eq!(body["tools"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn function_calls_make_the_completion_a_tool_round() {
        let mut reader = Reader::default();
        let call = json!({"type": "response.output_item.done", "output_index": 0,
            "item": {"type": "function_call", "id": "fc_1", "call_id": "call_1",
                     "name": "sendEmail", "arguments": "{\"name\":\"Ann\"}", "status": "completed"}});
        assert_eq!(
            reader.observe(&event("response.output_item.done", call)),
            Signal::Progress
        );
        assert_eq!(
            reader.observe(&event("response.completed", json!({}))),
            Signal::RequiresAction
        );
        let round = reader.take_tool_calls().unwrap();
        assert_eq!(round.run_id, None);
        assert_eq!(round.calls[0].call_id, "call_1");
        assert_eq!(round.calls[0].arguments, "{\"name\":\"Ann\"}");
        // The next response's completion, without calls, is the end.
        assert_eq!(
            reader.observe(&event("response.completed", json!({}))),
            Signal::Completed
        );
    }

    #[test]
    fn the_example_stream_completes() {
        let example = include_str!("../../tests/fixtures/openai-wire/responses-create-stream.sse")
            .replace("...\n\n", "");
        let mut parser = crate::sse::SseParser::new();
        let mut reader = Reader::default();
        let signals: Vec<Signal> = parser
            .push(example.as_bytes())
            .unwrap()
            .iter()
            .map(|e| reader.observe(e))
            .collect();
        assert_eq!(signals.last(), Some(&Signal::Completed));
        assert!(reader.take_tool_calls().is_none());
    }

    #[test]
    fn the_completed_responses_usage_is_kept() {
        let example = include_str!("../../tests/fixtures/openai-wire/responses-create-stream.sse")
            .replace("...\n\n", "");
        let mut parser = crate::sse::SseParser::new();
        let mut reader = Reader::default();
        for event in parser.push(example.as_bytes()).unwrap() {
            reader.observe(&event);
        }
        assert_eq!(
            reader.usage(),
            Some(Usage {
                input: 37,
                output: 11,
                total: 48
            })
        );
    }

    #[test]
    fn a_tool_round_and_an_incomplete_response_report_their_usage() {
        let usage = json!({"input_tokens": 30, "output_tokens": 8, "total_tokens": 38});
        let mut reader = Reader::default();
        let call = json!({"type": "response.output_item.done", "output_index": 0,
            "item": {"type": "function_call", "id": "fc_1", "call_id": "call_1",
                     "name": "sendEmail", "arguments": "{}", "status": "completed"}});
        reader.observe(&event("response.output_item.done", call));
        let completed = json!({"type": "response.completed", "response": {"usage": usage}});
        assert_eq!(
            reader.observe(&event("response.completed", completed)),
            Signal::RequiresAction
        );
        assert_eq!(reader.usage().map(|u| u.total), Some(38));

        let mut reader = Reader::default();
        let cut = json!({"response": {"usage": {"input_tokens": 3, "output_tokens": 2}}});
        reader.observe(&event("response.incomplete", cut));
        assert_eq!(
            reader.usage(),
            Some(Usage {
                input: 3,
                output: 2,
                total: 5
            })
        );
        let failed = json!({"response": {"usage": null}});
        let mut reader = Reader::default();
        reader.observe(&event("response.failed", failed));
        assert_eq!(reader.usage(), None);
        // Usage only counts from terminal events.
        let created = json!({"response": {"usage": usage}});
        reader.observe(&event("response.created", created));
        assert_eq!(reader.usage(), None);
    }

    #[test]
    fn failures_end_the_stream() {
        let mut reader = Reader::default();
        for (name, signal) in [
            ("response.failed", Signal::Ended("failed".into())),
            ("response.incomplete", Signal::Ended("incomplete".into())),
            ("error", Signal::ErrorEvent),
        ] {
            assert_eq!(reader.observe(&event(name, json!({}))), signal);
        }
    }

    #[test]
    fn tool_outputs_become_input_items() {
        let input = tool_outputs(&[ToolOutput {
            call_id: "call_1".into(),
            output: "sent".into(),
        }]);
        assert_eq!(
            input,
            json!([{"type": "function_call_output", "call_id": "call_1", "output": "sent"}])
        );
    }
}
