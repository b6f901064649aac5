//! Responses API and Conversations endpoints: `POST /v1/conversations`,
//! `GET /v1/conversations/{id}` and `/items`, and streamed
//! `POST /v1/responses` with function calls continued by
//! `function_call_output` input items.
//!
//! A conversation is locked while one of its responses streams (a second
//! one gets 400 `conversation_locked`), and while it has function calls
//! without outputs only a response that supplies exactly those outputs is
//! accepted.

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::Value;

use super::directives::{parse, Directives};
use super::responses::{response_plan, ConversationObject, ItemView, RespAnswer, RespCtx, RespEnd};
use super::state::{hex_id, new_pending, ConvItem, Store};
use super::threads::query_param;
use super::wire::{
    content_text, missing_param, object_or_empty, stream_required, Finalizer, ListObject, Pacing,
    Reply, StreamJob,
};

fn conversation_not_found(id: &str) -> Reply {
    Reply::invalid(
        404,
        format!("Conversation with id '{id}' not found."),
        None,
        None,
    )
}

/// What the `input` of a request (or the `items` of a new conversation)
/// brings.
#[derive(Debug, Default)]
struct Input {
    /// Items to append to the conversation, in input order.
    items: Vec<ConvItem>,
    /// Texts of the user messages, in order.
    user_texts: Vec<String>,
    /// `(call_id, output)` of the `function_call_output` items.
    outputs: Vec<(String, String)>,
}

fn parse_input(input: &Value) -> Result<Input, Reply> {
    let mut out = Input::default();
    match input {
        Value::String(text) => {
            out.items.push(ConvItem::UserMessage {
                id: hex_id("msg"),
                text: text.clone(),
            });
            out.user_texts.push(text.clone());
        }
        Value::Array(list) => {
            for item in list {
                let kind = item
                    .get("type")
                    .and_then(Value::as_str)
                    .unwrap_or("message");
                match kind {
                    "function_call_output" => {
                        let Some(call_id) = item.get("call_id").and_then(Value::as_str) else {
                            return Err(missing_param("input[].call_id"));
                        };
                        let output = match item.get("output") {
                            Some(Value::String(s)) => s.clone(),
                            None | Some(Value::Null) => String::new(),
                            Some(other) => other.to_string(),
                        };
                        out.items.push(ConvItem::FunctionCallOutput {
                            id: hex_id("fco"),
                            call_id: call_id.to_string(),
                            output: output.clone(),
                        });
                        out.outputs.push((call_id.to_string(), output));
                    }
                    "message" => {
                        let role = item.get("role").and_then(Value::as_str).unwrap_or("user");
                        let Some(text) = item.get("content").and_then(content_text) else {
                            return Err(missing_param("input[].content"));
                        };
                        match role {
                            "user" => {
                                out.items.push(ConvItem::UserMessage {
                                    id: hex_id("msg"),
                                    text: text.clone(),
                                });
                                out.user_texts.push(text);
                            }
                            "assistant" => out.items.push(ConvItem::AssistantMessage {
                                id: hex_id("msg"),
                                status: "completed",
                                text,
                            }),
                            // system / developer messages are not stored.
                            _ => {}
                        }
                    }
                    // Other item types are accepted and ignored.
                    _ => {}
                }
            }
        }
        _ => return Err(missing_param("input")),
    }
    Ok(out)
}

/// `POST /v1/conversations` (optional `metadata`, `items`).
pub fn create_conversation(store: &Store, body: &Value) -> Reply {
    let items = match body.get("items") {
        None | Some(Value::Null) => Vec::new(),
        Some(v @ Value::Array(_)) => match parse_input(v) {
            Ok(input) => input.items,
            Err(reply) => return reply,
        },
        Some(_) => return missing_param("items"),
    };
    let mut inner = store.lock();
    let conv = inner.create_conversation(object_or_empty(body, "metadata"), items);
    Reply::json(200, &ConversationObject::from_conv(conv))
}

/// `GET /v1/conversations/{id}`
pub fn get_conversation(store: &Store, id: &str) -> Reply {
    match store.lock().conversations.get(id) {
        Some(c) => Reply::json(200, &ConversationObject::from_conv(c)),
        None => conversation_not_found(id),
    }
}

/// `GET /v1/conversations/{id}/items` (oldest first; `?order=desc` for
/// newest first).
pub fn list_items(store: &Store, id: &str, query: Option<&str>) -> Reply {
    let inner = store.lock();
    let Some(conv) = inner.conversations.get(id) else {
        return conversation_not_found(id);
    };
    let mut data: Vec<ItemView> = conv.items.iter().map(ItemView::from_item).collect();
    if query_param(query, "order") == Some("desc") {
        data.reverse();
    }
    Reply::json(200, &ListObject::new(data, ItemView::id))
}

/// The `conversation` parameter: a string or `{"id": ...}`.
fn conversation_id(body: &Value) -> Option<&str> {
    match body.get("conversation")? {
        Value::String(s) => Some(s),
        Value::Object(o) => o.get("id").and_then(Value::as_str),
        _ => None,
    }
}

/// Check the outputs given against the pending call ids.
fn check_outputs(pending: &[&str], outputs: &[(String, String)]) -> Result<(), Reply> {
    let given: HashSet<&str> = outputs.iter().map(|(id, _)| id.as_str()).collect();
    if let Some((unknown, _)) = outputs
        .iter()
        .find(|(id, _)| !pending.contains(&id.as_str()))
    {
        return Err(Reply::invalid(
            400,
            format!("No tool call found for function call output with call_id {unknown}."),
            Some("input"),
            None,
        ));
    }
    if let Some(missing) = pending.iter().find(|id| !given.contains(*id)) {
        return Err(Reply::invalid(
            400,
            format!("No tool output found for function call {missing}."),
            Some("input"),
            None,
        ));
    }
    Ok(())
}

fn tool_output_text(outputs: &[(String, String)], order: &[String]) -> String {
    let mut texts: Vec<&str> = Vec::new();
    for id in order {
        if let Some((_, out)) = outputs.iter().find(|(cid, _)| cid == id) {
            texts.push(out);
        }
    }
    if texts.is_empty() {
        texts = outputs.iter().map(|(_, o)| o.as_str()).collect();
    }
    format!("Tool output: {}", texts.join(" | "))
}

/// `POST /v1/responses` with `"stream": true`.
pub fn create_response(store: &Arc<Store>, body: &Value) -> Reply {
    let Some(model) = body.get("model").and_then(Value::as_str) else {
        return missing_param("model");
    };
    if body.get("stream").and_then(Value::as_bool) != Some(true) {
        return stream_required();
    }
    let input = match body.get("input").map(parse_input) {
        Some(Ok(input)) => input,
        Some(Err(reply)) => return reply,
        None => return missing_param("input"),
    };
    let instructions = body
        .get("instructions")
        .and_then(Value::as_str)
        .map(str::to_string);
    let tools = match body.get("tools") {
        Some(v @ Value::Array(_)) => v.clone(),
        _ => Value::Array(Vec::new()),
    };
    let input_tokens = 20
        + input
            .user_texts
            .iter()
            .map(|t| t.split_whitespace().count() as u64)
            .sum::<u64>();
    let ctx = RespCtx::new(
        model.to_string(),
        instructions,
        tools,
        object_or_empty(body, "metadata"),
        input_tokens,
    );
    let new_turn = !input.user_texts.is_empty();

    let Some(conv_id) = conversation_id(body) else {
        if body.get("conversation").is_some_and(|v| !v.is_null()) {
            return missing_param("conversation");
        }
        // Stateless response.
        let directives = input
            .user_texts
            .last()
            .map(|t| parse(t))
            .unwrap_or_default();
        let answer = if !new_turn && !input.outputs.is_empty() {
            let order: Vec<String> = input.outputs.iter().map(|(id, _)| id.clone()).collect();
            RespAnswer::Text {
                text: tool_output_text(&input.outputs, &order),
                outcome: directives.outcome,
            }
        } else {
            answer_for_turn(&directives)
        };
        let with_hang = matches!(answer, RespAnswer::Text { .. });
        let (plan, _) = response_plan(&ctx, answer);
        return Reply::Stream(StreamJob {
            plan,
            pacing: Pacing::from_directives(&directives, with_hang),
            finalizer: Finalizer::new(|| {}),
        });
    };

    let mut inner = store.lock();
    let Some(conv) = inner.conversations.get_mut(conv_id) else {
        return conversation_not_found(conv_id);
    };
    if conv.busy {
        return Reply::invalid(
            400,
            "Another process is currently operating on this conversation. Please try again later.",
            None,
            Some("conversation_locked"),
        );
    }
    let pending_ids: Vec<String> = conv.pending.iter().map(|c| c.call_id.clone()).collect();
    let pending_refs: Vec<&str> = pending_ids.iter().map(String::as_str).collect();
    if let Err(reply) = check_outputs(&pending_refs, &input.outputs) {
        return reply;
    }
    conv.items.extend(input.items);
    conv.pending.clear();
    let answer = if new_turn {
        let last = input.user_texts.last().cloned().unwrap_or_default();
        conv.directives = parse(&last);
        conv.rounds_done = 0;
        answer_for_turn(&conv.directives)
    } else if !input.outputs.is_empty()
        && !conv.directives.tool_calls.is_empty()
        && conv.rounds_done < conv.directives.rounds
    {
        RespAnswer::ToolCalls {
            calls: new_pending(&conv.directives.tool_calls),
        }
    } else if !input.outputs.is_empty() {
        RespAnswer::Text {
            text: tool_output_text(&input.outputs, &pending_ids),
            outcome: conv.directives.outcome,
        }
    } else {
        // Neither a user message nor outputs: answer the last message again.
        answer_for_turn(&Directives {
            tool_calls: Vec::new(),
            ..conv.directives.clone()
        })
    };
    if matches!(answer, RespAnswer::ToolCalls { .. }) {
        conv.rounds_done += 1;
    }
    conv.busy = true;
    let directives = conv.directives.clone();
    drop(inner);
    let with_hang = matches!(answer, RespAnswer::Text { .. });
    let (plan, end) = response_plan(&ctx, answer);
    let store = store.clone();
    let conv_id = conv_id.to_string();
    Reply::Stream(StreamJob {
        plan,
        pacing: Pacing::from_directives(&directives, with_hang),
        finalizer: Finalizer::new(move || finish_response(&store, &conv_id, end)),
    })
}

fn answer_for_turn(d: &Directives) -> RespAnswer {
    if d.tool_calls.is_empty() {
        RespAnswer::Text {
            text: format!("You said: {}", d.text),
            outcome: d.outcome,
        }
    } else {
        RespAnswer::ToolCalls {
            calls: new_pending(&d.tool_calls),
        }
    }
}

/// Commit what a response stream leaves in its conversation.
fn finish_response(store: &Store, conv_id: &str, end: RespEnd) {
    let mut inner = store.lock();
    if let Some(conv) = inner.conversations.get_mut(conv_id) {
        conv.busy = false;
        conv.items.extend(end.items);
        conv.pending = end.pending;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body_of(reply: &Reply) -> Value {
        match reply {
            Reply::Json { body, .. } => serde_json::from_slice(body).unwrap(),
            other => panic!("json expected, got {other:?}"),
        }
    }

    fn job(reply: Reply) -> StreamJob {
        match reply {
            Reply::Stream(job) => job,
            other => panic!("stream expected, got {other:?}"),
        }
    }

    fn new_conv(store: &Arc<Store>) -> String {
        let c = body_of(&create_conversation(store, &json!({"metadata":{"k":"v"}})));
        assert_eq!(c["object"], "conversation");
        assert_eq!(c["metadata"]["k"], "v");
        c["id"].as_str().unwrap().to_string()
    }

    #[test]
    fn text_turn_lock_and_items() {
        let store = Arc::new(Store::default());
        let cid = new_conv(&store);
        let req = json!({"model":"gpt-5.4","conversation":cid,"input":"hello","stream":true});
        let mut first = job(create_response(&store, &req));
        let locked = create_response(&store, &req);
        assert_eq!(body_of(&locked)["error"]["code"], "conversation_locked");
        first.finalizer.fire();
        let items = body_of(&list_items(&store, &cid, None));
        assert_eq!(items["data"][0]["role"], "user");
        assert_eq!(items["data"][0]["content"][0]["text"], "hello");
        assert_eq!(items["data"][1]["role"], "assistant");
        assert_eq!(items["data"][1]["content"][0]["text"], "You said: hello");
        let desc = body_of(&list_items(&store, &cid, Some("order=desc")));
        assert_eq!(desc["data"][0]["role"], "assistant");
    }

    #[test]
    fn function_call_continuation() {
        let store = Arc::new(Store::default());
        let cid = new_conv(&store);
        let text =
            r#"mail [stub:tool_calls=[{"name":"sendEmail","arguments":"{\"to\":\"a@b.c\"}"}]]"#;
        let req = json!({"model":"m","conversation":{"id":cid},"input":[{"role":"user","content":[{"type":"input_text","text":text}]}],"stream":true});
        let mut j = job(create_response(&store, &req));
        assert_eq!(j.plan.names().last(), Some(&"response.completed"));
        j.finalizer.fire();
        let call_id = {
            let inner = store.lock();
            inner.conversations[&cid].pending[0].call_id.clone()
        };
        // A new message without the output is refused.
        let r = create_response(
            &store,
            &json!({"model":"m","conversation":cid,"input":"hi","stream":true}),
        );
        assert_eq!(
            body_of(&r)["error"]["message"],
            format!("No tool output found for function call {call_id}.")
        );
        // An unknown call id is refused.
        let r = create_response(
            &store,
            &json!({"model":"m","conversation":cid,"input":[{"type":"function_call_output","call_id":"call_zz","output":"x"}],"stream":true}),
        );
        assert_eq!(
            body_of(&r)["error"]["message"],
            "No tool call found for function call output with call_id call_zz."
        );
        let mut j = job(create_response(
            &store,
            &json!({"model":"m","conversation":cid,"input":[{"type":"function_call_output","call_id":call_id,"output":"sent"}],"stream":true}),
        ));
        assert!(j
            .plan
            .events
            .iter()
            .any(|e| e.data.contains("Tool output: sent")));
        j.finalizer.fire();
        let items = body_of(&list_items(&store, &cid, None));
        let kinds: Vec<&str> = items["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["type"].as_str().unwrap())
            .collect();
        assert_eq!(
            kinds,
            [
                "message",
                "function_call",
                "function_call_output",
                "message"
            ]
        );
        assert_eq!(items["data"][1]["call_id"], call_id.as_str());
        assert_eq!(items["data"][2]["call_id"], call_id.as_str());
    }

    #[test]
    fn validation() {
        let store = Arc::new(Store::default());
        let r = create_response(&store, &json!({"input":"x","stream":true}));
        assert_eq!(body_of(&r)["error"]["param"], "model");
        let r = create_response(&store, &json!({"model":"m","input":"x"}));
        assert_eq!(body_of(&r)["error"]["param"], "stream");
        let r = create_response(
            &store,
            &json!({"model":"m","input":"x","conversation":"conv_x","stream":true}),
        );
        match &r {
            Reply::Json { status, .. } => assert_eq!(*status, 404),
            _ => panic!(),
        }
        // Stateless responses work.
        let j = job(create_response(
            &store,
            &json!({"model":"m","input":"x","stream":true}),
        ));
        assert_eq!(j.plan.names().last(), Some(&"response.completed"));
    }
}
