//! Responses API and Conversations wire objects and the builder of a whole
//! `POST /v1/responses` stream, following `responses-create-stream.sse`:
//! text answers, `function_call` output items, `response.failed`,
//! `response.incomplete` and the `error` event.
//!
//! Objects are structs whose fields are declared in the order of the
//! example file, so the serialized JSON has the same key order.

use serde::Serialize;
use serde_json::Value;

use super::directives::{argument_pieces, word_deltas, Outcome};
use super::state::{hex_id, now, ConvItem, PendingCall, StoredConversation};
use super::wire::{Ending, Event, Plan};

/// Characters per `response.function_call_arguments.delta` piece.
const ARG_PIECE: usize = 8;
const FAIL_MESSAGE: &str = "Sorry, something went wrong.";

// ---------------------------------------------------------------- objects

#[derive(Debug, Clone, Serialize)]
pub struct ConversationObject {
    pub id: String,
    pub object: &'static str,
    pub created_at: u64,
    pub metadata: Value,
}

impl ConversationObject {
    pub fn from_conv(c: &StoredConversation) -> ConversationObject {
        ConversationObject {
            id: c.id.clone(),
            object: "conversation",
            created_at: c.created_at,
            metadata: c.metadata.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct OutputText {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub text: String,
    pub annotations: Vec<Value>,
}

fn output_text(text: &str) -> OutputText {
    OutputText {
        kind: "output_text",
        text: text.to_string(),
        annotations: Vec::new(),
    }
}

/// An output item as it appears in stream events and `response.output`.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum OutputItem {
    Message {
        id: String,
        #[serde(rename = "type")]
        kind: &'static str,
        status: &'static str,
        role: &'static str,
        content: Vec<OutputText>,
    },
    FunctionCall {
        id: String,
        #[serde(rename = "type")]
        kind: &'static str,
        status: &'static str,
        call_id: String,
        name: String,
        arguments: String,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct InputText {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub text: String,
}

/// A conversation item as listed by `GET /v1/conversations/{id}/items`.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum ItemView {
    UserMessage {
        #[serde(rename = "type")]
        kind: &'static str,
        id: String,
        status: &'static str,
        role: &'static str,
        content: Vec<InputText>,
    },
    AssistantMessage {
        #[serde(rename = "type")]
        kind: &'static str,
        id: String,
        status: &'static str,
        role: &'static str,
        content: Vec<OutputText>,
    },
    FunctionCall {
        #[serde(rename = "type")]
        kind: &'static str,
        id: String,
        status: &'static str,
        call_id: String,
        name: String,
        arguments: String,
    },
    FunctionCallOutput {
        #[serde(rename = "type")]
        kind: &'static str,
        id: String,
        status: &'static str,
        call_id: String,
        output: String,
    },
}

impl ItemView {
    pub fn from_item(item: &ConvItem) -> ItemView {
        match item {
            ConvItem::UserMessage { id, text } => ItemView::UserMessage {
                kind: "message",
                id: id.clone(),
                status: "completed",
                role: "user",
                content: vec![InputText {
                    kind: "input_text",
                    text: text.clone(),
                }],
            },
            ConvItem::AssistantMessage { id, status, text } => ItemView::AssistantMessage {
                kind: "message",
                id: id.clone(),
                status,
                role: "assistant",
                content: vec![output_text(text)],
            },
            ConvItem::FunctionCall {
                id,
                call_id,
                name,
                arguments,
            } => ItemView::FunctionCall {
                kind: "function_call",
                id: id.clone(),
                status: "completed",
                call_id: call_id.clone(),
                name: name.clone(),
                arguments: arguments.clone(),
            },
            ConvItem::FunctionCallOutput {
                id,
                call_id,
                output,
            } => ItemView::FunctionCallOutput {
                kind: "function_call_output",
                id: id.clone(),
                status: "completed",
                call_id: call_id.clone(),
                output: output.clone(),
            },
        }
    }

    pub fn id(&self) -> String {
        match self {
            ItemView::UserMessage { id, .. }
            | ItemView::AssistantMessage { id, .. }
            | ItemView::FunctionCall { id, .. }
            | ItemView::FunctionCallOutput { id, .. } => id.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Reasoning {
    pub effort: Option<String>,
    pub summary: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TextFormat {
    #[serde(rename = "type")]
    pub kind: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct TextConfig {
    pub format: TextFormat,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct OutputTokensDetails {
    pub reasoning_tokens: u64,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct ResponseUsage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub output_tokens_details: OutputTokensDetails,
    pub total_tokens: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ResponseError {
    pub code: &'static str,
    pub message: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct IncompleteDetails {
    pub reason: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct ResponseObject {
    pub id: String,
    pub object: &'static str,
    pub created_at: u64,
    pub status: &'static str,
    pub error: Option<ResponseError>,
    pub incomplete_details: Option<IncompleteDetails>,
    pub instructions: Option<String>,
    pub max_output_tokens: Option<u64>,
    pub model: String,
    pub output: Vec<OutputItem>,
    pub parallel_tool_calls: bool,
    pub previous_response_id: Option<String>,
    pub reasoning: Reasoning,
    pub store: bool,
    pub temperature: f64,
    pub text: TextConfig,
    pub tool_choice: &'static str,
    pub tools: Value,
    pub top_p: f64,
    pub truncation: &'static str,
    pub usage: Option<ResponseUsage>,
    pub user: Option<String>,
    pub metadata: Value,
}

// ---------------------------------------------------------------- events

#[derive(Serialize)]
struct ResponseEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    response: &'a ResponseObject,
}

#[derive(Serialize)]
struct ItemEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    output_index: usize,
    item: &'a OutputItem,
}

#[derive(Serialize)]
struct PartEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    item_id: &'a str,
    output_index: usize,
    content_index: usize,
    part: OutputText,
}

#[derive(Serialize)]
struct TextDeltaEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    item_id: &'a str,
    output_index: usize,
    content_index: usize,
    delta: &'a str,
}

#[derive(Serialize)]
struct TextDoneEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    item_id: &'a str,
    output_index: usize,
    content_index: usize,
    text: &'a str,
}

#[derive(Serialize)]
struct ArgsDeltaEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    item_id: &'a str,
    output_index: usize,
    delta: &'a str,
}

#[derive(Serialize)]
struct ArgsDoneEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    item_id: &'a str,
    output_index: usize,
    arguments: &'a str,
}

#[derive(Serialize)]
struct ErrorEvent {
    #[serde(rename = "type")]
    kind: &'static str,
    code: &'static str,
    message: &'static str,
    param: Option<String>,
}

// ---------------------------------------------------------------- plans

/// The request facts every response event needs.
#[derive(Debug, Clone)]
pub struct RespCtx {
    pub id: String,
    pub created_at: u64,
    pub model: String,
    pub instructions: Option<String>,
    pub tools: Value,
    pub metadata: Value,
    pub input_tokens: u64,
}

impl RespCtx {
    pub fn new(
        model: String,
        instructions: Option<String>,
        tools: Value,
        metadata: Value,
        input_tokens: u64,
    ) -> RespCtx {
        RespCtx {
            id: hex_id("resp"),
            created_at: now(),
            model,
            instructions,
            tools,
            metadata,
            input_tokens,
        }
    }

    /// A response object with the given status and output.
    pub fn response(&self, status: &'static str, output: Vec<OutputItem>) -> ResponseObject {
        ResponseObject {
            id: self.id.clone(),
            object: "response",
            created_at: self.created_at,
            status,
            error: None,
            incomplete_details: None,
            instructions: self.instructions.clone(),
            max_output_tokens: None,
            model: self.model.clone(),
            output,
            parallel_tool_calls: true,
            previous_response_id: None,
            reasoning: Reasoning {
                effort: None,
                summary: None,
            },
            store: true,
            temperature: 1.0,
            text: TextConfig {
                format: TextFormat { kind: "text" },
            },
            tool_choice: "auto",
            tools: self.tools.clone(),
            top_p: 1.0,
            truncation: "disabled",
            usage: None,
            user: None,
            metadata: self.metadata.clone(),
        }
    }

    fn usage(&self, output_tokens: u64) -> ResponseUsage {
        ResponseUsage {
            input_tokens: self.input_tokens,
            output_tokens,
            output_tokens_details: OutputTokensDetails {
                reasoning_tokens: 0,
            },
            total_tokens: self.input_tokens + output_tokens,
        }
    }
}

/// What the response does.
#[derive(Debug, Clone)]
pub enum RespAnswer {
    /// Reply with text; `outcome` decides how the stream ends
    /// (`Cancel` and `Expire` behave like `Fail` here).
    Text { text: String, outcome: Outcome },
    /// Emit these function calls (call ids already chosen).
    ToolCalls { calls: Vec<PendingCall> },
}

/// What a response leaves in its conversation.
#[derive(Debug, Clone, Default)]
pub struct RespEnd {
    /// Output items to append to the conversation.
    pub items: Vec<ConvItem>,
    /// Function calls now waiting for outputs.
    pub pending: Vec<PendingCall>,
}

fn response_event(name: &'static str, r: &ResponseObject) -> Event {
    Event::json(
        name,
        &ResponseEvent {
            kind: name,
            response: r,
        },
    )
}

/// Build the whole event stream of a response and what it leaves behind.
pub fn response_plan(ctx: &RespCtx, answer: RespAnswer) -> (Plan, RespEnd) {
    let mut events = vec![
        response_event("response.created", &ctx.response("in_progress", Vec::new())),
        response_event(
            "response.in_progress",
            &ctx.response("in_progress", Vec::new()),
        ),
    ];
    let mut end = RespEnd::default();
    let mut ending = Ending::Finish;
    let commit_at;
    match answer {
        RespAnswer::ToolCalls { calls } => {
            let mut output = Vec::new();
            for (index, call) in calls.iter().enumerate() {
                let fc_id = hex_id("fc");
                let item = |status, arguments: &str| OutputItem::FunctionCall {
                    id: fc_id.clone(),
                    kind: "function_call",
                    status,
                    call_id: call.call_id.clone(),
                    name: call.name.clone(),
                    arguments: arguments.to_string(),
                };
                events.push(item_event(
                    "response.output_item.added",
                    index,
                    &item("in_progress", ""),
                ));
                for piece in argument_pieces(&call.arguments, ARG_PIECE) {
                    let ev = ArgsDeltaEvent {
                        kind: "response.function_call_arguments.delta",
                        item_id: &fc_id,
                        output_index: index,
                        delta: &piece,
                    };
                    events.push(Event::json(ev.kind, &ev));
                }
                let ev = ArgsDoneEvent {
                    kind: "response.function_call_arguments.done",
                    item_id: &fc_id,
                    output_index: index,
                    arguments: &call.arguments,
                };
                events.push(Event::json(ev.kind, &ev));
                let done = item("completed", &call.arguments);
                events.push(item_event("response.output_item.done", index, &done));
                output.push(done);
                end.items.push(ConvItem::FunctionCall {
                    id: fc_id.clone(),
                    call_id: call.call_id.clone(),
                    name: call.name.clone(),
                    arguments: call.arguments.clone(),
                });
            }
            let mut r = ctx.response("completed", output);
            r.usage = Some(ctx.usage(calls.len() as u64 * 8));
            commit_at = events.len();
            events.push(response_event("response.completed", &r));
            end.pending = calls;
        }
        RespAnswer::Text { text, outcome } => match outcome {
            Outcome::Fail | Outcome::Cancel | Outcome::Expire => {
                let mut r = ctx.response("failed", Vec::new());
                r.error = Some(ResponseError {
                    code: "server_error",
                    message: FAIL_MESSAGE,
                });
                commit_at = events.len();
                events.push(response_event("response.failed", &r));
            }
            _ => {
                let msg_id = hex_id("msg");
                let deltas = word_deltas(&text);
                let take = match outcome {
                    Outcome::Complete => deltas.len(),
                    Outcome::Incomplete => deltas.len().min(2),
                    _ => deltas.len().min(1),
                };
                let message = |status, text: &str, with_content: bool| OutputItem::Message {
                    id: msg_id.clone(),
                    kind: "message",
                    status,
                    role: "assistant",
                    content: if with_content {
                        vec![output_text(text)]
                    } else {
                        Vec::new()
                    },
                };
                events.push(item_event(
                    "response.output_item.added",
                    0,
                    &message("in_progress", "", false),
                ));
                events.push(part_event("response.content_part.added", &msg_id, ""));
                for piece in deltas.iter().take(take) {
                    let ev = TextDeltaEvent {
                        kind: "response.output_text.delta",
                        item_id: &msg_id,
                        output_index: 0,
                        content_index: 0,
                        delta: piece,
                    };
                    events.push(Event::json(ev.kind, &ev));
                }
                match outcome {
                    Outcome::Complete | Outcome::Incomplete => {
                        let said: String = deltas[..take].concat();
                        let status = if outcome == Outcome::Complete {
                            "completed"
                        } else {
                            "incomplete"
                        };
                        let ev = TextDoneEvent {
                            kind: "response.output_text.done",
                            item_id: &msg_id,
                            output_index: 0,
                            content_index: 0,
                            text: &said,
                        };
                        events.push(Event::json(ev.kind, &ev));
                        events.push(part_event("response.content_part.done", &msg_id, &said));
                        let item = message(status, &said, true);
                        events.push(item_event("response.output_item.done", 0, &item));
                        let mut r = ctx.response(status, vec![item]);
                        r.usage = Some(ctx.usage(take as u64));
                        if outcome == Outcome::Incomplete {
                            r.incomplete_details = Some(IncompleteDetails {
                                reason: "max_output_tokens",
                            });
                        }
                        commit_at = events.len();
                        events.push(response_event(
                            if outcome == Outcome::Complete {
                                "response.completed"
                            } else {
                                "response.incomplete"
                            },
                            &r,
                        ));
                        end.items.push(ConvItem::AssistantMessage {
                            id: msg_id.clone(),
                            status,
                            text: said,
                        });
                    }
                    Outcome::ErrorEvent => {
                        commit_at = events.len();
                        let ev = ErrorEvent {
                            kind: "error",
                            code: "server_error",
                            message: FAIL_MESSAGE,
                            param: None,
                        };
                        events.push(Event::json("error", &ev));
                    }
                    _ => {
                        commit_at = events.len();
                        ending = Ending::Cut;
                    }
                }
            }
        },
    }
    (
        Plan {
            events,
            ending,
            commit_at,
        },
        end,
    )
}

fn item_event(name: &'static str, output_index: usize, item: &OutputItem) -> Event {
    Event::json(
        name,
        &ItemEvent {
            kind: name,
            output_index,
            item,
        },
    )
}

fn part_event(name: &'static str, item_id: &str, text: &str) -> Event {
    Event::json(
        name,
        &PartEvent {
            kind: name,
            item_id,
            output_index: 0,
            content_index: 0,
            part: output_text(text),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directives::ToolCallSpec;
    use crate::examples::{example, keys_in_order};
    use crate::state::new_pending;

    fn ctx() -> RespCtx {
        RespCtx::new(
            "gpt-5.4".into(),
            Some("You are a helpful assistant.".into()),
            Value::Array(Vec::new()),
            Value::Object(Default::default()),
            37,
        )
    }

    fn dedup(names: &[&str]) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for n in names {
            if out.last().map(String::as_str) != Some(*n) {
                out.push(n.to_string());
            }
        }
        out
    }

    #[test]
    fn text_stream_matches_example() {
        let (plan, end) = response_plan(
            &ctx(),
            RespAnswer::Text {
                text: "You said: Hi there".into(),
                outcome: Outcome::Complete,
            },
        );
        assert_eq!(plan.ending, Ending::Finish);
        assert_eq!(plan.commit_at, plan.events.len() - 1);
        let names = plan.names();
        assert_eq!(
            names,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        {
            let ex = example("responses-create-stream.sse");
            let ex_names: Vec<&str> = ex.iter().map(|(n, _)| n.as_str()).collect();
            assert_eq!(dedup(&names), dedup(&ex_names));
            for ev in &plan.events {
                let _: Value = serde_json::from_str(&ev.data).expect("valid JSON");
                let (_, data) = ex.iter().find(|(n, _)| *n == ev.name).unwrap();
                assert_eq!(keys_in_order(data), keys_in_order(&ev.data), "{}", ev.name);
                // The `type` field repeats the event name.
                let v: Value = serde_json::from_str(&ev.data).unwrap();
                assert_eq!(v["type"], Value::String(ev.name.clone()));
            }
        }
        assert_eq!(end.items.len(), 1);
        assert!(end.pending.is_empty());
        assert!(plan.events[11]
            .data
            .contains(r#""text":"You said: Hi there","annotations":[]"#));
    }

    #[test]
    fn function_call_stream() {
        let calls = new_pending(&[
            ToolCallSpec {
                name: "sendEmail".into(),
                arguments: r#"{"name":"Ann","email":"ann@example.com"}"#.into(),
            },
            ToolCallSpec {
                name: "noop".into(),
                arguments: String::new(),
            },
        ]);
        let (plan, end) = response_plan(
            &ctx(),
            RespAnswer::ToolCalls {
                calls: calls.clone(),
            },
        );
        let names = plan.names();
        assert_eq!(names[2], "response.output_item.added");
        assert_eq!(names.last(), Some(&"response.completed"));
        assert_eq!(
            dedup(&names),
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        let added: Value = serde_json::from_str(&plan.events[2].data).unwrap();
        assert_eq!(added["item"]["type"], "function_call");
        assert_eq!(added["item"]["status"], "in_progress");
        assert_eq!(added["item"]["arguments"], "");
        assert_eq!(
            added["item"]["call_id"],
            Value::String(calls[0].call_id.clone())
        );
        assert!(plan.events[2]
            .data
            .contains(r#""type":"function_call","status":"in_progress","call_id":"#));
        let mut args = String::new();
        for ev in plan
            .events
            .iter()
            .filter(|e| e.name == "response.function_call_arguments.delta")
        {
            let v: Value = serde_json::from_str(&ev.data).unwrap();
            args.push_str(v["delta"].as_str().unwrap());
        }
        assert_eq!(args, calls[0].arguments);
        let completed: Value = serde_json::from_str(&plan.events.last().unwrap().data).unwrap();
        assert_eq!(completed["response"]["output"].as_array().unwrap().len(), 2);
        assert_eq!(completed["response"]["output"][0]["status"], "completed");
        assert_eq!(
            completed["response"]["output"][0]["arguments"],
            calls[0].arguments.as_str()
        );
        assert_eq!(end.pending, calls);
        assert_eq!(end.items.len(), 2);
    }

    #[test]
    fn failure_outcomes() {
        let run = |outcome| {
            response_plan(
                &ctx(),
                RespAnswer::Text {
                    text: "You said: a b c".into(),
                    outcome,
                },
            )
        };
        let (plan, end) = run(Outcome::Fail);
        assert_eq!(
            plan.names(),
            [
                "response.created",
                "response.in_progress",
                "response.failed"
            ]
        );
        assert!(plan.events[2].data.contains(
            r#""status":"failed","error":{"code":"server_error","message":"Sorry, something went wrong."}"#
        ));
        assert!(end.items.is_empty());

        let (plan, end) = run(Outcome::Incomplete);
        assert_eq!(plan.names().last(), Some(&"response.incomplete"));
        assert!(plan.events.last().unwrap().data.contains(
            r#""status":"incomplete","error":null,"incomplete_details":{"reason":"max_output_tokens"}"#
        ));
        assert_eq!(end.items.len(), 1);

        let (plan, _) = run(Outcome::ErrorEvent);
        assert_eq!(plan.names().last(), Some(&"error"));
        assert_eq!(
            plan.events.last().unwrap().data,
            r#"{"type":"error","code":"server_error","message":"Sorry, something went wrong.","param":null}"#
        );

        let (plan, end) = run(Outcome::Cut);
        assert_eq!(plan.ending, Ending::Cut);
        assert_eq!(plan.commit_at, plan.events.len());
        assert_eq!(plan.names().last(), Some(&"response.output_text.delta"));
        assert!(end.items.is_empty());
    }

    #[test]
    fn item_views_put_type_first() {
        let v = ItemView::from_item(&ConvItem::UserMessage {
            id: "msg_1".into(),
            text: "hi".into(),
        });
        assert_eq!(
            serde_json::to_string(&v).unwrap(),
            r#"{"type":"message","id":"msg_1","status":"completed","role":"user","content":[{"type":"input_text","text":"hi"}]}"#
        );
        let v = ItemView::from_item(&ConvItem::FunctionCallOutput {
            id: "fco_1".into(),
            call_id: "call_1".into(),
            output: "ok".into(),
        });
        assert_eq!(
            serde_json::to_string(&v).unwrap(),
            r#"{"type":"function_call_output","id":"fco_1","status":"completed","call_id":"call_1","output":"ok"}"#
        );
    }
}
