//! Assistants API endpoints (`/v1/threads...`): thread and message CRUD,
//! streamed runs, `submit_tool_outputs`, cancel, and the run state machine
//! (a thread is blocked while a run streams or waits for tool outputs).
//!
//! Handlers are synchronous: they update the [`Store`] under its lock and
//! return a [`Reply`]; streamed replies carry a [`Finalizer`] that commits
//! the run's final state.

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::Value;

use super::assistants::{run_plan, Answer, MessageObject, RunCtx, RunEnd, Start, ThreadObject};
use super::directives::{parse, Directives};
use super::state::{alnum_id, new_pending, now, RunStatus, Store, StoredMessage, StoredRun};
use super::wire::{
    content_text, missing_param, object_or_empty, stream_required, Finalizer, ListObject, Pacing,
    Reply, StreamJob,
};

const DEFAULT_MODEL: &str = "gpt-4o";

fn thread_not_found(id: &str) -> Reply {
    Reply::invalid(404, format!("No thread found with id '{id}'."), None, None)
}

fn run_not_found(id: &str) -> Reply {
    Reply::invalid(404, format!("No run found with id '{id}'."), None, None)
}

/// `(role, text)` of a message creation body.
fn message_input(v: &Value) -> Result<(&'static str, String), Reply> {
    let role = match v.get("role").and_then(Value::as_str) {
        Some("user") => "user",
        Some("assistant") => "assistant",
        Some(other) => {
            return Err(Reply::invalid(
                400,
                format!("Invalid value: '{other}'. Supported values are: 'user' and 'assistant'."),
                Some("role"),
                Some("invalid_value"),
            ))
        }
        None => return Err(missing_param("role")),
    };
    let text = v
        .get("content")
        .and_then(content_text)
        .ok_or_else(|| missing_param("content"))?;
    Ok((role, text))
}

/// `POST /v1/threads` (optional `messages`, `metadata`).
pub fn create_thread(store: &Store, body: &Value) -> Reply {
    let mut initial = Vec::new();
    if let Some(messages) = body.get("messages") {
        let Some(list) = messages.as_array() else {
            return missing_param("messages");
        };
        for m in list {
            match message_input(m) {
                Ok(pair) => initial.push(pair),
                Err(reply) => return reply,
            }
        }
    }
    let mut inner = store.lock();
    let thread = inner.create_thread(object_or_empty(body, "metadata"), initial);
    Reply::json(200, &ThreadObject::from_thread(thread))
}

/// `GET /v1/threads/{id}`
pub fn get_thread(store: &Store, tid: &str) -> Reply {
    let inner = store.lock();
    match inner.threads.get(tid) {
        Some(t) => Reply::json(200, &ThreadObject::from_thread(t)),
        None => thread_not_found(tid),
    }
}

/// `POST /v1/threads/{id}/messages`
pub fn add_message(store: &Store, tid: &str, body: &Value) -> Reply {
    let (role, text) = match message_input(body) {
        Ok(pair) => pair,
        Err(reply) => return reply,
    };
    let mut inner = store.lock();
    let Some(thread) = inner.threads.get_mut(tid) else {
        return thread_not_found(tid);
    };
    if let Some(run_id) = thread.blocking_run() {
        return Reply::invalid(
            400,
            format!("Can't add messages to {tid} while a run {run_id} is active."),
            None,
            None,
        );
    }
    let msg = StoredMessage {
        id: alnum_id("msg"),
        created_at: now(),
        role,
        text,
        assistant_id: None,
        run_id: None,
    };
    let obj = MessageObject::from_stored(tid, &msg);
    thread.messages.push(msg);
    Reply::json(200, &obj)
}

/// `GET /v1/threads/{id}/messages` (newest first; `?order=asc` for oldest first).
pub fn list_messages(store: &Store, tid: &str, query: Option<&str>) -> Reply {
    let inner = store.lock();
    let Some(thread) = inner.threads.get(tid) else {
        return thread_not_found(tid);
    };
    let mut data: Vec<MessageObject> = thread
        .messages
        .iter()
        .map(|m| MessageObject::from_stored(tid, m))
        .collect();
    if query_param(query, "order") != Some("asc") {
        data.reverse();
    }
    Reply::json(200, &ListObject::new(data, |m| m.id.clone()))
}

/// The value of `name` in a query string (no percent-decoding needed for
/// the stub's parameters).
pub fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// `POST /v1/threads/{id}/runs` with `"stream": true`.
pub fn create_run(store: &Arc<Store>, tid: &str, body: &Value) -> Reply {
    let Some(assistant_id) = body.get("assistant_id").and_then(Value::as_str) else {
        return missing_param("assistant_id");
    };
    if body.get("stream").and_then(Value::as_bool) != Some(true) {
        return stream_required();
    }
    let mut inner = store.lock();
    let Some(thread) = inner.threads.get_mut(tid) else {
        return thread_not_found(tid);
    };
    if let Some(run_id) = thread.blocking_run() {
        return Reply::invalid(
            400,
            format!("Thread {tid} already has an active run {run_id}."),
            None,
            None,
        );
    }
    let directives = thread
        .messages
        .iter()
        .rev()
        .find(|m| m.role == "user")
        .map(|m| parse(&m.text))
        .unwrap_or_default();
    let mut run = StoredRun {
        id: alnum_id("run"),
        thread_id: tid.to_string(),
        assistant_id: assistant_id.to_string(),
        model: body
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or(DEFAULT_MODEL)
            .to_string(),
        instructions: body
            .get("instructions")
            .and_then(Value::as_str)
            .map(str::to_string),
        metadata: object_or_empty(body, "metadata"),
        created_at: now(),
        started_at: None,
        ended_at: None,
        status: RunStatus::InProgress,
        directives: directives.clone(),
        rounds_done: 0,
        pending: Vec::new(),
        tool_step_id: None,
        tool_step_created_at: 0,
        usage: (0, 0),
    };
    let (answer, with_hang) = if directives.tool_calls.is_empty() {
        let answer = Answer::Text {
            text: format!("You said: {}", directives.text),
            outcome: directives.outcome,
        };
        (answer, true)
    } else {
        run.rounds_done = 1;
        let calls = new_pending(&directives.tool_calls);
        (Answer::ToolCalls { calls }, false)
    };
    let ctx = RunCtx::from_run(&run);
    let run_id = run.id.clone();
    thread.active_run = Some(run_id.clone());
    thread.runs.insert(run_id.clone(), run);
    drop(inner);
    let (plan, end) = run_plan(&ctx, Start::Create, answer);
    stream_reply(store, tid, &run_id, &directives, with_hang, plan, end)
}

fn stream_reply(
    store: &Arc<Store>,
    tid: &str,
    rid: &str,
    directives: &Directives,
    with_hang: bool,
    plan: super::wire::Plan,
    end: RunEnd,
) -> Reply {
    let store = store.clone();
    let (tid, rid) = (tid.to_string(), rid.to_string());
    Reply::Stream(StreamJob {
        plan,
        pacing: Pacing::from_directives(directives, with_hang),
        finalizer: Finalizer::new(move || finish_run(&store, &tid, &rid, end)),
    })
}

/// Commit the state a run stream leaves behind.
fn finish_run(store: &Store, tid: &str, rid: &str, end: RunEnd) {
    let mut inner = store.lock();
    let Some(thread) = inner.threads.get_mut(tid) else {
        return;
    };
    let Some(run) = thread.runs.get_mut(rid) else {
        return;
    };
    // A run cancelled while it streamed stays cancelled.
    if run.status == RunStatus::InProgress {
        run.status = end.status;
        run.started_at = Some(end.started_at);
        run.pending = end.pending;
        if let Some((step_id, created_at)) = end.tool_step {
            run.tool_step_id = Some(step_id);
            run.tool_step_created_at = created_at;
        }
        if let Some(usage) = end.usage {
            run.usage = (usage.prompt_tokens, usage.completion_tokens);
        }
        if !run.is_active() {
            run.ended_at = Some(end.ended_at);
        }
        if let Some(msg) = end.message {
            thread.messages.push(msg);
        }
    }
    let still_active = thread.runs.get(rid).is_some_and(StoredRun::is_active);
    if !still_active && thread.active_run.as_deref() == Some(rid) {
        thread.active_run = None;
    }
}

/// `GET /v1/threads/{tid}/runs/{rid}`
pub fn get_run(store: &Store, tid: &str, rid: &str) -> Reply {
    let inner = store.lock();
    let Some(thread) = inner.threads.get(tid) else {
        return thread_not_found(tid);
    };
    match thread.runs.get(rid) {
        Some(run) => Reply::json(200, &RunCtx::from_run(run).run_for_state(run)),
        None => run_not_found(rid),
    }
}

/// `POST /v1/threads/{tid}/runs/{rid}/cancel`: an active run becomes
/// `cancelled` at once.
pub fn cancel_run(store: &Store, tid: &str, rid: &str) -> Reply {
    let mut inner = store.lock();
    let Some(thread) = inner.threads.get_mut(tid) else {
        return thread_not_found(tid);
    };
    let Some(run) = thread.runs.get_mut(rid) else {
        return run_not_found(rid);
    };
    if !run.is_active() {
        return Reply::invalid(
            400,
            format!("Cannot cancel run with status '{}'.", run.status.as_str()),
            None,
            None,
        );
    }
    run.status = RunStatus::Cancelled;
    run.ended_at = Some(now());
    run.pending.clear();
    let obj = RunCtx::from_run(run).run_for_state(run);
    if thread.active_run.as_deref() == Some(rid) {
        thread.active_run = None;
    }
    Reply::json(200, &obj)
}

/// `POST /v1/threads/{tid}/runs/{rid}/submit_tool_outputs` with `"stream": true`.
pub fn submit_tool_outputs(store: &Arc<Store>, tid: &str, rid: &str, body: &Value) -> Reply {
    let Some(list) = body.get("tool_outputs").and_then(Value::as_array) else {
        return missing_param("tool_outputs");
    };
    let mut given: Vec<(String, String)> = Vec::new();
    for item in list {
        let Some(id) = item.get("tool_call_id").and_then(Value::as_str) else {
            return missing_param("tool_outputs[].tool_call_id");
        };
        let output = match item.get("output") {
            Some(Value::String(s)) => s.clone(),
            None | Some(Value::Null) => String::new(),
            Some(other) => other.to_string(),
        };
        given.push((id.to_string(), output));
    }
    if body.get("stream").and_then(Value::as_bool) != Some(true) {
        return stream_required();
    }
    let mut inner = store.lock();
    let Some(thread) = inner.threads.get_mut(tid) else {
        return thread_not_found(tid);
    };
    let Some(run) = thread.runs.get_mut(rid) else {
        return run_not_found(rid);
    };
    if run.status != RunStatus::RequiresAction {
        return Reply::invalid(
            400,
            format!(
                "Runs in status \"{}\" do not accept tool outputs.",
                run.status.as_str()
            ),
            None,
            None,
        );
    }
    let expected: Vec<&str> = run.pending.iter().map(|c| c.call_id.as_str()).collect();
    let got: Vec<&str> = given.iter().map(|(id, _)| id.as_str()).collect();
    let got_set: HashSet<&str> = got.iter().copied().collect();
    let exact = got.len() == expected.len()
        && got_set.len() == got.len()
        && expected.iter().all(|id| got_set.contains(id));
    if !exact {
        return Reply::invalid(
            400,
            format!("Expected tool outputs for call_ids {expected:?}, got {got:?}"),
            Some("tool_outputs"),
            None,
        );
    }
    // Outputs in the order of the calls.
    let outputs: Vec<String> = run
        .pending
        .iter()
        .map(|c| {
            given
                .iter()
                .find(|(id, _)| *id == c.call_id)
                .map(|(_, out)| out.clone())
                .unwrap_or_default()
        })
        .collect();
    let calls = std::mem::take(&mut run.pending);
    let directives = run.directives.clone();
    let (answer, with_hang) = if run.rounds_done < directives.rounds {
        run.rounds_done += 1;
        let next = new_pending(&directives.tool_calls);
        (Answer::ToolCalls { calls: next }, false)
    } else {
        let answer = Answer::Text {
            text: format!("Tool output: {}", outputs.join(" | ")),
            outcome: directives.outcome,
        };
        (answer, true)
    };
    let start = Start::Continue {
        tool_step_id: run.tool_step_id.clone().unwrap_or_else(|| alnum_id("step")),
        tool_step_created_at: run.tool_step_created_at,
        started_at: run.started_at.unwrap_or(run.created_at),
        calls,
        outputs,
    };
    run.status = RunStatus::InProgress;
    let ctx = RunCtx::from_run(run);
    thread.active_run = Some(rid.to_string());
    drop(inner);
    let (plan, end) = run_plan(&ctx, start, answer);
    stream_reply(store, tid, rid, &directives, with_hang, plan, end)
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

    fn status_of(reply: &Reply) -> u16 {
        match reply {
            Reply::Json { status, .. } => *status,
            Reply::Stream(_) => 200,
            _ => 0,
        }
    }

    fn new_thread(store: &Arc<Store>) -> String {
        let t = body_of(&create_thread(store, &json!({})));
        t["id"].as_str().unwrap().to_string()
    }

    fn run_stream(reply: Reply) -> StreamJob {
        match reply {
            Reply::Stream(job) => job,
            other => panic!("stream expected, got {other:?}"),
        }
    }

    #[test]
    fn thread_object_shape() {
        let store = Arc::new(Store::default());
        let Reply::Json { body, .. } = create_thread(&store, &json!({})) else {
            panic!("json expected")
        };
        let text = String::from_utf8(body).unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        let expected = format!(
            r#"{{"id":"{}","object":"thread","created_at":{},"metadata":{{}},"tool_resources":{{}}}}"#,
            v["id"].as_str().unwrap(),
            v["created_at"]
        );
        assert_eq!(text, expected);
        assert!(v["id"].as_str().unwrap().starts_with("thread_"));
    }

    #[test]
    fn run_blocks_messages_until_committed() {
        let store = Arc::new(Store::default());
        let tid = new_thread(&store);
        assert_eq!(
            status_of(&add_message(
                &store,
                &tid,
                &json!({"role":"user","content":"hi"})
            )),
            200
        );
        let mut job = run_stream(create_run(
            &store,
            &tid,
            &json!({"assistant_id":"asst_1","stream":true}),
        ));
        let blocked = add_message(&store, &tid, &json!({"role":"user","content":"again"}));
        assert_eq!(status_of(&blocked), 400);
        let msg = body_of(&blocked)["error"]["message"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(msg.starts_with(&format!("Can't add messages to {tid} while a run run_")));
        assert!(msg.ends_with(" is active."));
        assert_eq!(
            status_of(&create_run(
                &store,
                &tid,
                &json!({"assistant_id":"a","stream":true})
            )),
            400
        );
        job.finalizer.fire();
        let list = body_of(&list_messages(&store, &tid, None));
        assert_eq!(list["data"][0]["role"], "assistant");
        assert_eq!(
            list["data"][0]["content"][0]["text"]["value"],
            "You said: hi"
        );
        assert_eq!(list["first_id"], list["data"][0]["id"]);
        assert_eq!(
            status_of(&add_message(
                &store,
                &tid,
                &json!({"role":"user","content":"again"})
            )),
            200
        );
    }

    #[test]
    fn unknown_thread_and_validation() {
        let store = Arc::new(Store::default());
        let r = add_message(&store, "thread_nope", &json!({"role":"user","content":"x"}));
        assert_eq!(status_of(&r), 404);
        assert_eq!(
            body_of(&r)["error"]["message"],
            "No thread found with id 'thread_nope'."
        );
        let tid = new_thread(&store);
        assert_eq!(
            status_of(&add_message(&store, &tid, &json!({"role":"user"}))),
            400
        );
        assert_eq!(
            status_of(&create_run(&store, &tid, &json!({"assistant_id":"a"}))),
            400
        );
        assert_eq!(
            status_of(&create_run(&store, &tid, &json!({"stream":true}))),
            400
        );
    }

    #[test]
    fn tool_call_rounds() {
        let store = Arc::new(Store::default());
        let tid = new_thread(&store);
        let content = r#"go [stub:tool_calls=[{"name":"f","arguments":"{}"},{"name":"g","arguments":"{\"a\":1}"}]] [stub:rounds=2]"#;
        add_message(&store, &tid, &json!({"role":"user","content":content}));
        let mut job = run_stream(create_run(
            &store,
            &tid,
            &json!({"assistant_id":"asst_1","stream":true}),
        ));
        assert_eq!(job.plan.names().last(), Some(&"done"));
        job.finalizer.fire();
        let (rid, ids) = {
            let inner = store.lock();
            let thread = &inner.threads[&tid];
            let rid = thread.active_run.clone().unwrap();
            let run = &thread.runs[&rid];
            assert_eq!(run.status, RunStatus::RequiresAction);
            let ids: Vec<String> = run.pending.iter().map(|c| c.call_id.clone()).collect();
            (rid, ids)
        };
        assert_eq!(ids.len(), 2);
        // Messages are refused while the run waits for outputs.
        assert_eq!(
            status_of(&add_message(
                &store,
                &tid,
                &json!({"role":"user","content":"x"})
            )),
            400
        );
        // Wrong ids, missing ids and duplicates are refused.
        for outputs in [
            json!([{"tool_call_id":"call_x","output":"1"}]),
            json!([{"tool_call_id":ids[0],"output":"1"}]),
            json!([{"tool_call_id":ids[0],"output":"1"},{"tool_call_id":ids[0],"output":"1"}]),
        ] {
            let r = submit_tool_outputs(
                &store,
                &tid,
                &rid,
                &json!({"tool_outputs":outputs,"stream":true}),
            );
            assert_eq!(status_of(&r), 400, "{outputs}");
        }
        // Round 2 asks again.
        let body = json!({"tool_outputs":[{"tool_call_id":ids[1],"output":"B"},{"tool_call_id":ids[0],"output":"A"}],"stream":true});
        let mut job = run_stream(submit_tool_outputs(&store, &tid, &rid, &body));
        let names = job.plan.names();
        assert_eq!(names[0], "thread.run.step.completed");
        assert_eq!(names[names.len() - 2], "thread.run.requires_action");
        job.finalizer.fire();
        let ids2: Vec<String> = {
            let inner = store.lock();
            let run = &inner.threads[&tid].runs[&rid];
            assert_eq!(run.status, RunStatus::RequiresAction);
            run.pending.iter().map(|c| c.call_id.clone()).collect()
        };
        assert_ne!(ids, ids2);
        // Old ids are no longer accepted.
        assert_eq!(
            status_of(&submit_tool_outputs(&store, &tid, &rid, &body)),
            400
        );
        let body = json!({"tool_outputs":[{"tool_call_id":ids2[0],"output":"one"},{"tool_call_id":ids2[1],"output":{"x":2}}],"stream":true});
        let mut job = run_stream(submit_tool_outputs(&store, &tid, &rid, &body));
        assert_eq!(
            job.plan.names()[job.plan.names().len() - 2],
            "thread.run.completed"
        );
        job.finalizer.fire();
        let list = body_of(&list_messages(&store, &tid, None));
        assert_eq!(
            list["data"][0]["content"][0]["text"]["value"],
            r#"Tool output: one | {"x":2}"#
        );
        // Completed run: no more outputs.
        assert_eq!(
            status_of(&submit_tool_outputs(&store, &tid, &rid, &body)),
            400
        );
        assert_eq!(body_of(&get_run(&store, &tid, &rid))["status"], "completed");
    }

    /// The `usage` of the run event named `name` in `job`'s stream.
    fn run_usage(job: &StreamJob, name: &str) -> Value {
        let event = job.plan.events.iter().find(|e| e.name == name).unwrap();
        serde_json::from_str::<Value>(&event.data).unwrap()["usage"].clone()
    }

    #[test]
    fn a_runs_usage_adds_up_its_streams() {
        let store = Arc::new(Store::default());
        let tid = new_thread(&store);
        // Prompt: 20 + 2 words ("look up"); a round: 8 per call; the answer: 1 per word.
        let content = r#"look up [stub:tool_calls=[{"name":"f","arguments":"{}"}]]"#;
        add_message(&store, &tid, &json!({"role":"user","content":content}));
        let mut job = run_stream(create_run(
            &store,
            &tid,
            &json!({"assistant_id":"asst_1","stream":true}),
        ));
        assert_eq!(
            run_usage(&job, "thread.run.requires_action"),
            json!({"prompt_tokens": 22, "completion_tokens": 8, "total_tokens": 30})
        );
        job.finalizer.fire();
        let (rid, call) = {
            let inner = store.lock();
            let thread = &inner.threads[&tid];
            let rid = thread.active_run.clone().unwrap();
            let call = thread.runs[&rid].pending[0].call_id.clone();
            (rid, call)
        };
        let body = json!({"tool_outputs":[{"tool_call_id":call,"output":"done"}],"stream":true});
        let job = run_stream(submit_tool_outputs(&store, &tid, &rid, &body));
        // "Tool output: done" is 3 words; the run's usage holds both streams.
        assert_eq!(
            run_usage(&job, "thread.run.completed"),
            json!({"prompt_tokens": 44, "completion_tokens": 11, "total_tokens": 55})
        );
    }

    #[test]
    fn cancel_requires_action_run() {
        let store = Arc::new(Store::default());
        let tid = new_thread(&store);
        add_message(
            &store,
            &tid,
            &json!({"role":"user","content":"[stub:tool_calls=[{\"name\":\"f\",\"arguments\":\"{}\"}]]"}),
        );
        let job = run_stream(create_run(
            &store,
            &tid,
            &json!({"assistant_id":"a","stream":true}),
        ));
        drop(job);
        let rid = store.lock().threads[&tid].active_run.clone().unwrap();
        let r = cancel_run(&store, &tid, &rid);
        assert_eq!(body_of(&r)["status"], "cancelled");
        assert_eq!(status_of(&cancel_run(&store, &tid, &rid)), 400);
        assert_eq!(
            status_of(&add_message(
                &store,
                &tid,
                &json!({"role":"user","content":"x"})
            )),
            200
        );
    }

    #[test]
    fn query_params() {
        assert_eq!(query_param(Some("a=1&order=asc"), "order"), Some("asc"));
        assert_eq!(query_param(None, "order"), None);
    }
}
