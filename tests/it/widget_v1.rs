//! The "widget-v1" stream framing: the old NestJS service's wire format, which the chatbot
//! widget already embedded on customers' sites parses.
//!
//! Two halves:
//! - golden tests, pure and through the library: every reference stream of
//!   `tests/fixtures/openai-wire/*.sse` translated the way the relay does it, compared line for
//!   line with the hand-written `tests/fixtures/widget-v1/<name>.golden`;
//! - end-to-end tests through the real binary and the stub upstream: a plain answer ending in
//!   `end` with the thread's messages, one event per HTTP chunk (also when the upstream splits
//!   events or uses CRLF; events that arrive together merged as `widget::coalesce` does), tool calls and their continuation, tool outputs that cannot be
//!   submitted, every failure path ending in `system.error` without hanging, env-only mode,
//!   and a Responses API tenant.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::harness::*;
use chatbot_proxy::dialect::{Dialect, Signal};
use chatbot_proxy::sse::SseParser;
use chatbot_proxy::widget;
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------------
// Golden tests (pure)
// ---------------------------------------------------------------------------------------------

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The reference streams, by name (file stem), sorted.
fn wire_fixtures() -> Vec<(String, String)> {
    let dir = fixtures_dir().join("openai-wire");
    let mut out: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "sse"))
        .map(|path| {
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
            (name, text)
        })
        .collect();
    out.sort();
    out
}

fn golden(name: &str) -> String {
    let path = fixtures_dir().join(format!("widget-v1/{name}.golden"));
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("no golden file {} ({e})", path.display()))
}

/// The stream without the `...` lines that mark events the spec left out (each with the
/// blank line after it): they are not part of the wire format.
fn without_placeholders(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut after_placeholder = false;
    for line in text.split_inclusive('\n') {
        let bare = line.trim_end_matches(['\r', '\n']);
        if bare == "..." {
            after_placeholder = true;
            continue;
        }
        if after_placeholder && bare.is_empty() {
            after_placeholder = false;
            continue;
        }
        after_placeholder = false;
        out.push_str(line);
    }
    out
}

/// Which upstream API a reference stream belongs to.
fn dialect_of(name: &str) -> Dialect {
    if name.starts_with("assistants-") {
        Dialect::Assistants
    } else if name.starts_with("responses-") {
        Dialect::Responses
    } else {
        panic!("reference stream {name}: no dialect known for this name")
    }
}

/// What the relay writes in widget-v1 for one upstream stream fed in `chunks`: the
/// translation of each event, one write each, up to and including a requires_action (the
/// rest of such a leg is held back).
fn widget_writes<'a>(
    dialect: Dialect,
    chunks: impl IntoIterator<Item = &'a [u8]>,
    name: &str,
) -> Vec<String> {
    let mut parser = SseParser::new();
    let mut reader = dialect.reader();
    let mut writes = Vec::new();
    for chunk in chunks {
        let events = parser
            .push(chunk)
            .unwrap_or_else(|e| panic!("{name}: the reference stream does not parse: {e:?}"));
        for event in &events {
            let signal = reader.observe(event);
            if let Some(bytes) = widget::translate(dialect, event, &signal, false) {
                let text = String::from_utf8(bytes.to_vec())
                    .unwrap_or_else(|e| panic!("{name}: a widget event is not UTF-8: {e}"));
                writes.push(text);
            }
            if signal == Signal::RequiresAction {
                return writes;
            }
        }
    }
    assert!(
        !parser.has_partial(),
        "{name}: the reference stream ends inside an event"
    );
    writes
}

/// Asserts `write` is one widget-v1 event: `data: <json object>` and a blank line, nothing else.
fn assert_one_frame(write: &str, context: &str) {
    let data = write
        .strip_prefix("data: ")
        .and_then(|rest| rest.strip_suffix("\n\n"))
        .unwrap_or_else(|| panic!("{context}: not one `data: <json>\\n\\n` event: {write:?}"));
    assert!(
        !data.contains(['\n', '\r']),
        "{context}: more than one line in one write: {write:?}"
    );
    let value: Value = serde_json::from_str(data)
        .unwrap_or_else(|e| panic!("{context}: event data is not JSON ({e}): {data:?}"));
    assert!(
        value.get("event").is_some_and(Value::is_string),
        "{context}: event without an `event` name: {data}"
    );
}

/// Compares `got` with the golden text line by line, then byte for byte.
fn assert_matches_golden(name: &str, got: &str, golden: &str) {
    let got_lines: Vec<&str> = got.lines().collect();
    let want_lines: Vec<&str> = golden.lines().collect();
    for (i, (g, w)) in got_lines.iter().zip(&want_lines).enumerate() {
        assert_eq!(g, w, "{name}: line {} differs from {name}.golden", i + 1);
    }
    assert_eq!(
        got_lines.len(),
        want_lines.len(),
        "{name}: {} lines, {name}.golden has {}:\n{got}",
        got_lines.len(),
        want_lines.len()
    );
    assert_eq!(got, golden, "{name}: same lines, different line ends");
}

#[test]
fn golden_every_reference_stream_translates_to_its_golden_file() {
    let fixtures = wire_fixtures();
    let names: Vec<&str> = fixtures.iter().map(|(n, _)| n.as_str()).collect();
    for expected in [
        "assistants-create-run-requires-action",
        "assistants-create-run-stream",
        "assistants-submit-tool-outputs-stream",
        "responses-create-stream",
    ] {
        assert!(
            names.contains(&expected),
            "reference stream {expected}.sse is missing: {names:?}"
        );
    }
    for (name, text) in &fixtures {
        let wire = without_placeholders(text);
        assert!(
            !wire.lines().any(|l| l.trim() == "..."),
            "{name}: placeholder left"
        );
        let writes = widget_writes(dialect_of(name), [wire.as_bytes()], name);
        for (i, write) in writes.iter().enumerate() {
            assert_one_frame(write, &format!("{name}: write {i}"));
        }
        assert_matches_golden(name, &writes.concat(), &golden(name));
    }
}

#[test]
fn golden_translation_does_not_depend_on_line_ends_or_chunking() {
    for (name, text) in wire_fixtures() {
        let want = golden(&name);
        let lf = without_placeholders(&text);
        for line_end in ["\n", "\r\n", "\r"] {
            let wire = lf.replace('\n', line_end);
            let bytes = wire.as_bytes();
            let context = format!("{name} with {line_end:?} line ends");
            let whole = widget_writes(dialect_of(&name), [bytes], &context);
            assert_matches_golden(&context, &whole.concat(), &want);
            let context = format!("{context}, one byte at a time");
            let bytewise = widget_writes(dialect_of(&name), bytes.chunks(1), &context);
            assert_eq!(bytewise, whole, "{context}");
        }
    }
}

#[test]
fn golden_files_hold_only_widget_v1_events() {
    const PASSED: [&str; 5] = [
        "thread.run.created",
        "thread.run.requires_action",
        "thread.message.delta",
        "thread.message.completed",
        "thread.run.completed",
    ];
    let dir = fixtures_dir().join("widget-v1");
    let wire_names: Vec<String> = wire_fixtures().into_iter().map(|(n, _)| n).collect();
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).expect("tests/fixtures/widget-v1") {
        let path = entry.expect("directory entry").path();
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let name = file
            .strip_suffix(".golden")
            .unwrap_or_else(|| panic!("unexpected file {file} in {}", dir.display()));
        assert!(
            wire_names.iter().any(|n| n == name),
            "{file} has no reference stream {name}.sse"
        );
        count += 1;
        let text = std::fs::read_to_string(&path).unwrap();
        let frames: Vec<&str> = text.split_inclusive("\n\n").collect();
        assert!(!frames.is_empty(), "{file} is empty");
        for frame in frames {
            assert_one_frame(frame, &file);
            let value: Value = serde_json::from_str(&frame[6..frame.len() - 2]).unwrap();
            let event = value["event"].as_str().unwrap();
            assert!(PASSED.contains(&event), "{file}: {event} is not forwarded");
            let keys: Vec<&str> = value
                .as_object()
                .unwrap()
                .keys()
                .map(|k| k.as_str())
                .collect();
            let order = ["event", "status", "content", "delta"];
            let expected: Vec<&str> = order.iter().copied().filter(|k| keys.contains(k)).collect();
            assert_eq!(keys, expected, "{file}: fields of {event}");
        }
    }
    assert_eq!(
        count,
        wire_names.len(),
        "one golden file per reference stream"
    );
}

// ---------------------------------------------------------------------------------------------
// End to end: configuration and helpers
// ---------------------------------------------------------------------------------------------

/// The Responses API tenant of [`widget_toml`].
const ORIGIN_R: &str = "https://bistro.test";
const KEY_R: &str = "sk-tenant-r";
const MODEL_R: &str = "gpt-test";

/// The tool output the proxy gives for a tool it does not know.
fn not_available(tool: &str) -> String {
    format!("The tool `{tool}` is not available in this chat. Continue without it.")
}

/// The exact event the issue asks for when tool outputs cannot be submitted.
const SUBMIT_FAILED: &str =
    r#"{"event":"system.error","status":"error","content":"Error submitting tool outputs"}"#;

/// Two widget-v1 tenants: an assistant (tenant A's domains) and a Responses API model
/// (`bistro.test`). `tables` goes between `[upstream]` and the tenants, `tenant_extra` into
/// each tenant.
fn widget_toml(upstream_base: &str, tables: &str, tenant_extra: &str) -> String {
    format!(
        r#"[upstream]
base_url = "{upstream_base}"
connect_timeout_ms = 1000
first_byte_timeout_ms = 3000
idle_timeout_ms = 1500

{tables}

[[tenants]]
name = "widget-assistants"
domains = ["shop.example.com", "*.a-tenant.test"]
api_key = "{KEY_A}"
assistant_id = "{ASSISTANT_A}"
stream_format = "widget-v1"
{tenant_extra}

[[tenants]]
name = "widget-responses"
domains = ["bistro.test"]
api_key = "{KEY_R}"
model = "{MODEL_R}"
stream_format = "widget-v1"
{tenant_extra}
"#
    )
}

fn start_widget_pair() -> (Stub, Proxy) {
    let stub = Stub::start();
    let proxy = Proxy::start_with_toml(&widget_toml(&stub.base_url(), "", ""));
    (stub, proxy)
}

/// A request straight to the stub with `key` (and the Assistants beta header).
fn stub_request(
    stub: &Stub,
    method: &str,
    path: &str,
    key: &str,
    body: Option<&Value>,
) -> Streamed {
    let mut req = RawRequest::new(method, path)
        .header("Authorization", format!("Bearer {key}"))
        .header("OpenAI-Beta", "assistants=v2");
    if let Some(body) = body {
        req = req.json(body);
    }
    RawConn::send(stub.port, &req).read_response()
}

fn stub_get(stub: &Stub, path: &str, key: &str) -> Value {
    let resp = stub_request(stub, "GET", path, key, None);
    assert_eq!(resp.status, 200, "GET {path} at the stub: {}", resp.text());
    resp.json()
}

/// The data of each HTTP chunk, asserting that every chunk holds exactly one
/// `data: <json>\n\n` event (no `event:` or `id:` lines, nothing split or merged).
fn widget_frames(chunks: &[Chunk], context: &str) -> Vec<String> {
    chunks
        .iter()
        .enumerate()
        .map(|(i, chunk)| {
            let text = String::from_utf8(chunk.bytes.clone())
                .unwrap_or_else(|e| panic!("{context}: chunk {i} is not UTF-8: {e}"));
            assert_one_frame(&text, &format!("{context}: HTTP chunk {i}"));
            text["data: ".len()..text.len() - 2].to_string()
        })
        .collect()
}

/// Status, content type and a complete chunked body; then [`widget_frames`].
fn widget_response(resp: &Streamed, context: &str) -> Vec<String> {
    assert_eq!(resp.status, 200, "{context}: {}", resp.text());
    assert_widget_head(resp.status, &resp.headers, context);
    assert_eq!(
        resp.ending,
        Ending::Complete,
        "{context}: the body must end with its final chunk; got {:?}",
        resp.text()
    );
    widget_frames(&resp.chunks, context)
}

fn assert_widget_head(status: u16, headers: &Headers, context: &str) {
    assert_eq!(status, 200, "{context}: status");
    let content_type = headers.get("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("text/event-stream"),
        "{context}: content-type {content_type:?}"
    );
    // Without chunked framing "one event per chunk" could not be observed at all.
    assert!(
        headers
            .get("transfer-encoding")
            .is_some_and(|te| te.to_ascii_lowercase().contains("chunked")),
        "{context}: the stream must be chunked: {headers:?}"
    );
}

fn event_of(frame: &str) -> String {
    let value: Value = serde_json::from_str(frame).unwrap();
    value["event"].as_str().unwrap().to_string()
}

fn names(frames: &[String]) -> Vec<String> {
    frames.iter().map(|f| event_of(f)).collect()
}

/// `frames` without its last event equals `want`, event for event, byte for byte, except
/// that events the relay had at the same moment are merged the way [`widget::coalesce`] does
/// (issue 12: the old widget takes each read as one event, so what is ready at once goes out
/// as one write). Which events arrive together depends on timing, so any split of `want` into
/// consecutive moments is accepted, each moment's writes compared byte for byte.
fn assert_frames_before_last(frames: &[String], want: &[String], context: &str) {
    assert!(
        !frames.is_empty(),
        "{context}: no events at all (expected {} before the last)",
        want.len()
    );
    let got = &frames[..frames.len() - 1];
    assert!(
        is_coalescing_of(got, want),
        "{context}: the events before the last are not {want:#?}\nwith the events of each \
         moment merged; all events: {frames:#?}"
    );
}

/// Whether `got` is `want` split into consecutive moments, each moment as the writes that
/// [`widget::coalesce`] makes of it.
fn is_coalescing_of(got: &[String], want: &[String]) -> bool {
    if want.is_empty() {
        return got.is_empty();
    }
    (1..=want.len()).any(|k| {
        let moment: Vec<Value> = want[..k]
            .iter()
            .map(|e| serde_json::from_str(e).expect("an expected event is JSON"))
            .collect();
        let writes: Vec<String> = widget::coalesce(moment)
            .iter()
            .map(Value::to_string)
            .collect();
        got.starts_with(&writes) && is_coalescing_of(&got[writes.len()..], &want[k..])
    })
}

/// Asserts `frame` is `{"event":"system.error","status":"error","content":"<sentence>"}`
/// with a sentence meant for people (not an error code, not JSON).
fn assert_system_error(frame: &str, context: &str) {
    let value: Value = serde_json::from_str(frame).unwrap();
    let keys: Vec<&str> = value
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    assert_eq!(
        keys,
        ["event", "status", "content"],
        "{context}: fields of {frame}"
    );
    assert_eq!(value["event"], "system.error", "{context}: {frame}");
    assert_eq!(value["status"], "error", "{context}: {frame}");
    let content = value["content"].as_str().unwrap_or_else(|| {
        panic!("{context}: system.error content must be a string: {frame}");
    });
    assert!(
        content.contains(' ')
            && content.chars().next().is_some_and(char::is_uppercase)
            && !content.contains(['_', '{', '}']),
        "{context}: system.error content is not a human-readable sentence: {content:?}"
    );
}

fn created() -> String {
    r#"{"event":"thread.run.created","status":"queued"}"#.to_string()
}

fn requires_action() -> String {
    r#"{"event":"thread.run.requires_action","status":"requires_action"}"#.to_string()
}

fn run_completed() -> String {
    r#"{"event":"thread.run.completed","status":"completed"}"#.to_string()
}

fn json_str(text: &str) -> String {
    serde_json::to_string(text).unwrap()
}

/// `text` as the stub streams it: the first word, then each further word with the space
/// before it (texts with single spaces only).
fn words(text: &str) -> Vec<String> {
    text.split(' ')
        .enumerate()
        .map(|(i, w)| {
            if i == 0 {
                w.to_string()
            } else {
                format!(" {w}")
            }
        })
        .collect()
}

/// The widget's deltas for an Assistants text: `data.delta` unchanged, i.e. the first one
/// with `"annotations":[]` as the upstream sends it.
fn assistants_deltas(text: &str) -> Vec<String> {
    words(text)
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let annotations = if i == 0 { r#","annotations":[]"# } else { "" };
            format!(
                r#"{{"event":"thread.message.delta","delta":{{"content":[{{"index":0,"type":"text","text":{{"value":{}{annotations}}}}}]}}}}"#,
                json_str(w)
            )
        })
        .collect()
}

/// The widget's deltas for a Responses text (`response.output_text.delta` -> content[0].text.value).
fn responses_deltas(text: &str) -> Vec<String> {
    words(text)
        .iter()
        .map(|w| {
            format!(
                r#"{{"event":"thread.message.delta","delta":{{"content":[{{"index":0,"type":"text","text":{{"value":{}}}}}]}}}}"#,
                json_str(w)
            )
        })
        .collect()
}

fn message_completed(text: &str) -> String {
    format!(
        r#"{{"event":"thread.message.completed","status":"completed","content":[{{"type":"text","text":{{"value":{},"annotations":[]}}}}]}}"#,
        json_str(text)
    )
}

/// The events of a completed Assistants text answer before `end`.
fn assistants_answer(text: &str) -> Vec<String> {
    let mut want = vec![created()];
    want.extend(assistants_deltas(text));
    want.push(message_completed(text));
    want.push(run_completed());
    want
}

/// Asserts the last frame is `{"event":"end","messages":[...]}` and returns the messages.
fn end_messages(frames: &[String], context: &str) -> Value {
    let last = frames
        .last()
        .unwrap_or_else(|| panic!("{context}: no events"));
    let value: Value = serde_json::from_str(last).unwrap();
    let keys: Vec<&str> = value
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    assert_eq!(keys, ["event", "messages"], "{context}: last event {last}");
    assert_eq!(value["event"], "end", "{context}: last event {last}");
    assert!(value["messages"].is_array(), "{context}: {last}");
    value["messages"].clone()
}

/// The stub's own message list of `thread` (`GET /v1/threads/{id}/messages`), its `data`.
fn thread_messages(stub: &Stub, thread: &str, key: &str) -> Value {
    let thread = upstream_id(thread);
    let list = stub_get(stub, &format!("/v1/threads/{thread}/messages"), key);
    list["data"].clone()
}

/// A plain answer on a fresh thread of `origin`: exact events, then `end` with exactly the
/// stub's message list.
fn assert_plain_answer(stub: &Stub, proxy: &Proxy, origin: &str, key: &str, context: &str) {
    let thread = proxy.create_thread(origin);
    let resp = proxy.send_message(origin, &thread, "Hello widget");
    let frames = widget_response(&resp, context);
    assert_frames_before_last(
        &frames,
        &assistants_answer("You said: Hello widget"),
        context,
    );
    let messages = end_messages(&frames, context);

    let requests = stub.requests();
    let last = requests.last().expect("requests at the stub");
    assert_eq!(
        (last.method.as_str(), last.path.as_str()),
        (
            "GET",
            format!("/v1/threads/{}/messages", upstream_id(&thread)).as_str()
        ),
        "{context}: after the run the proxy lists the thread's messages"
    );
    assert_eq!(
        last.header("authorization"),
        Some(format!("Bearer {key}").as_str())
    );

    let listed = thread_messages(stub, &thread, key);
    assert_eq!(
        messages, listed,
        "{context}: `end` carries the thread's message list"
    );
    assert_eq!(listed.as_array().map(Vec::len), Some(2), "{listed}");
    assert_eq!(listed[0]["role"], "assistant");
    assert_eq!(
        listed[0]["content"][0]["text"]["value"],
        "You said: Hello widget"
    );
}

// ---------------------------------------------------------------------------------------------
// End to end: answers
// ---------------------------------------------------------------------------------------------

#[test]
fn plain_answer_is_the_exact_event_sequence_ending_with_the_thread_messages() {
    let (stub, proxy) = start_widget_pair();
    assert_plain_answer(&stub, &proxy, ORIGIN_A, KEY_A, "plain answer");
}

#[test]
fn every_http_chunk_holds_one_event_when_upstream_splits_events_or_uses_crlf() {
    let (stub, proxy) = start_widget_pair();
    for directives in [
        "",
        "[stub:chunking=split]",
        "[stub:crlf]",
        "[stub:chunking=split] [stub:crlf]",
        "[stub:slow=5]",
    ] {
        let context = format!("upstream {directives:?}");
        let thread = proxy.create_thread(ORIGIN_A);
        let resp = proxy.send_message(ORIGIN_A, &thread, &format!("One event {directives}"));
        // widget_response checks every chunk: exactly one `data: <json>\n\n`.
        let frames = widget_response(&resp, &context);
        assert_frames_before_last(&frames, &assistants_answer("You said: One event"), &context);
        let messages = end_messages(&frames, &context);
        assert_eq!(
            messages,
            thread_messages(&stub, &thread, KEY_A),
            "{context}"
        );
    }
}

#[test]
fn tool_call_shows_requires_action_then_the_continuation_and_end() {
    let (stub, proxy) = start_widget_pair();
    let thread = proxy.create_thread(ORIGIN_A);
    let resp = proxy.send_message(
        ORIGIN_A,
        &thread,
        r#"Look it up [stub:tool_calls=[{"name":"lookup","arguments":"{}"}]]"#,
    );
    let frames = widget_response(&resp, "tool call");
    let reply = format!("Tool output: {}", not_available("lookup"));
    let mut want = vec![created(), requires_action()];
    want.extend(assistants_deltas(&reply));
    want.push(message_completed(&reply));
    want.push(run_completed());
    assert_frames_before_last(&frames, &want, "tool call");
    let messages = end_messages(&frames, "tool call");
    assert_eq!(messages, thread_messages(&stub, &thread, KEY_A));

    let submits: Vec<StubRequest> = stub
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/submit_tool_outputs"))
        .collect();
    assert_eq!(submits.len(), 1, "one submission: {submits:?}");
    assert_eq!(
        submits[0].json()["tool_outputs"][0]["output"],
        not_available("lookup")
    );
}

#[test]
fn tool_rounds_beyond_the_limit_end_with_system_error() {
    let stub = Stub::start();
    let proxy = Proxy::start_with_toml(&widget_toml(
        &stub.base_url(),
        "[leads]\nmax_tool_rounds = 1\n",
        "",
    ));
    let thread = proxy.create_thread(ORIGIN_A);
    let resp = proxy.send_message(
        ORIGIN_A,
        &thread,
        r#"Again and again [stub:tool_calls=[{"name":"lookup","arguments":"{}"}]] [stub:rounds=3]"#,
    );
    let frames = widget_response(&resp, "too many tool rounds");
    assert_frames_before_last(
        &frames,
        &[created(), requires_action(), requires_action()],
        "too many tool rounds",
    );
    assert_system_error(frames.last().unwrap(), "too many tool rounds");
    assert!(
        resp.duration() < Duration::from_secs(5),
        "{:?}",
        resp.duration()
    );
}

#[test]
fn env_only_stream_format_applies_to_every_tenant() {
    let stub = Stub::start();
    let base = stub.base_url();
    let proxy = Proxy::start_with_env(
        &[
            ("DOMAINS", r#"["shop.example.com","b-tenant.test"]"#),
            ("OPENAI_API_KEYS", r#"["sk-env-a","sk-env-b"]"#),
            ("ASSISTANT_IDS", r#"["asst_EA","asst_EB"]"#),
            ("OPENAI_BASE_URL", &base),
            ("STREAM_FORMAT", "widget-v1"),
        ],
        None,
    );
    assert_plain_answer(
        &stub,
        &proxy,
        ORIGIN_A,
        "sk-env-a",
        "env mode, first tenant",
    );
    assert_plain_answer(
        &stub,
        &proxy,
        ORIGIN_B,
        "sk-env-b",
        "env mode, second tenant",
    );
}

#[test]
fn responses_tenant_gets_the_same_events_and_end_with_thread_shaped_messages() {
    let (stub, proxy) = start_widget_pair();
    let conversation = proxy.create_thread(ORIGIN_R);
    assert!(conversation.starts_with("conv_"), "{conversation}");
    let resp = proxy.send_message(ORIGIN_R, &conversation, "Hello bistro");
    let frames = widget_response(&resp, "responses");
    let reply = "You said: Hello bistro";
    let mut want = vec![created()];
    want.extend(responses_deltas(reply));
    want.push(message_completed(reply));
    want.push(run_completed());
    assert_frames_before_last(&frames, &want, "responses");
    let messages = end_messages(&frames, "responses");

    let requests = stub.requests();
    let last = requests.last().expect("requests at the stub");
    assert_eq!(last.method, "GET");
    assert!(
        last.path.starts_with(&format!(
            "/v1/conversations/{}/items",
            upstream_id(&conversation)
        )),
        "after the response the proxy lists the conversation: {}",
        last.path
    );

    // The conversation's message items, newest first, as thread messages.
    let items = stub_get(
        &stub,
        &format!(
            "/v1/conversations/{}/items?order=desc",
            upstream_id(&conversation)
        ),
        KEY_R,
    );
    let message_items: Vec<&Value> = items["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["type"] == "message")
        .collect();
    let messages = messages.as_array().unwrap();
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert_eq!(messages.len(), message_items.len(), "{items}");
    for (message, (item, (role, text))) in messages.iter().zip(
        message_items
            .iter()
            .zip([("assistant", reply), ("user", "Hello bistro")]),
    ) {
        assert_eq!(message["id"], item["id"], "{message}");
        assert_eq!(message["object"], "thread.message", "{message}");
        assert_eq!(message["role"], role, "{message}");
        assert_eq!(
            message["content"],
            json!([{"type": "text", "text": {"value": text, "annotations": []}}]),
            "{message}"
        );
    }
}

#[test]
fn responses_tool_call_shows_requires_action_then_the_continuation_and_end() {
    let (_stub, proxy) = start_widget_pair();
    let conversation = proxy.create_thread(ORIGIN_R);
    let message = r#"Look it up [stub:tool_calls=[{"name":"lookup","arguments":"{}"}]]"#;
    let resp = proxy.send_message(ORIGIN_R, &conversation, message);
    let context = "responses tool call";
    // As with the Assistants API (whose continuation is the same run, without a second
    // `thread.run.created`): requires_action, then the continuation's deltas, completion, end.
    let frames = widget_response(&resp, context);
    let reply = format!("Tool output: {}", not_available("lookup"));
    let mut want = vec![created(), requires_action()];
    want.extend(responses_deltas(&reply));
    want.push(message_completed(&reply));
    want.push(run_completed());
    assert_frames_before_last(&frames, &want, context);
    let messages = end_messages(&frames, context);
    let texts: Vec<&str> = messages
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            m["content"][0]["text"]["value"]
                .as_str()
                .unwrap_or_default()
        })
        .collect();
    // The user's item is the message as the upstream stored it (the stub keeps directives).
    assert_eq!(
        texts,
        [reply.as_str(), message],
        "{context}: message items only, newest first"
    );
}

// ---------------------------------------------------------------------------------------------
// End to end: tool outputs that cannot be submitted
// ---------------------------------------------------------------------------------------------

/// An SMTP server that accepts connections and never says a word: the first delivery attempt
/// of a lead then lasts `[leads] send_timeout_ms`, which holds the tool round that long.
struct SilentSmtp {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl SilentSmtp {
    fn start() -> SilentSmtp {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let held = Arc::new(Mutex::new(Vec::<TcpStream>::new()));
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            for conn in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(conn) = conn {
                    held.lock().unwrap().push(conn);
                }
            }
        });
        SilentSmtp {
            port,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for SilentSmtp {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A lead-tool call the proxy accepts (so it tries to e-mail the lead).
const LEAD_MESSAGE: &str = r#"Call me [stub:tool_calls=[{"name":"sendEmail","arguments":"{\"name\":\"Ada Lovelace\",\"email\":\"ada@example.net\",\"message\":\"Please call me back.\"}"}]]"#;

/// Stub and proxy where a lead's delivery attempt holds the tool round for 2.5 s.
fn start_lead_pair(smtp: &SilentSmtp) -> (Stub, Proxy) {
    let stub = Stub::start();
    let tables = format!(
        r#"[smtp]
host = "127.0.0.1"
port = {}
tls = "none"
from = "AI Bot <bot@example.com>"
timeout_ms = 30000

[leads]
send_timeout_ms = 2500
"#,
        smtp.port
    );
    let proxy = Proxy::start_with_toml(&widget_toml(
        &stub.base_url(),
        &tables,
        r#"lead_recipients = ["sales@example.com"]"#,
    ));
    (stub, proxy)
}

/// Reads HTTP chunks until one holds `thread.run.requires_action`; returns them.
fn read_through_requires_action(conn: &mut RawConn, context: &str) -> Vec<Chunk> {
    let mut chunks = Vec::new();
    loop {
        match conn.next_chunk() {
            Piece::Data(chunk) => {
                let seen = String::from_utf8_lossy(&chunk.bytes).contains("requires_action");
                chunks.push(chunk);
                if seen {
                    return chunks;
                }
            }
            Piece::End(ending, _) => panic!(
                "{context}: the body ended ({ending:?}) before requires_action: {:?}",
                chunks
                    .iter()
                    .map(|c| String::from_utf8_lossy(&c.bytes).into_owned())
                    .collect::<Vec<_>>()
            ),
        }
    }
}

fn wait_for_capture(proxy: &Proxy, context: &str) {
    let captured = proxy.wait_for_log_lines(1, |l| l.contains("captured for tenant"));
    assert_eq!(
        captured.len(),
        1,
        "{context}: the lead was not captured; log:\n{}",
        proxy.logs()
    );
}

#[test]
fn tool_outputs_that_cannot_reach_the_upstream_end_with_the_submit_error() {
    let smtp = SilentSmtp::start();
    let (stub, proxy) = start_lead_pair(&smtp);
    let context = "submit to a vanished upstream";
    let thread = proxy.create_thread(ORIGIN_A);
    let mut conn = proxy.open_message_stream(ORIGIN_A, &thread, LEAD_MESSAGE);
    assert_widget_head(conn.status, &conn.headers, context);
    let mut chunks = read_through_requires_action(&mut conn, context);
    // The proxy now delivers the lead (2.5 s against the silent SMTP server); meanwhile the
    // upstream goes away, so the tool outputs cannot be submitted.
    wait_for_capture(&proxy, context);
    drop(stub);
    let rest = conn.read_response();
    chunks.extend(rest.chunks.iter().cloned());
    assert_eq!(rest.ending, Ending::Complete, "{context}: body not ended");
    let frames = widget_frames(&chunks, context);
    assert_eq!(
        frames,
        [created(), requires_action(), SUBMIT_FAILED.to_string()],
        "{context}"
    );
    assert!(
        rest.duration() < Duration::from_secs(10),
        "{context}: the response took {:?} to end",
        rest.duration()
    );
}

#[test]
fn tool_outputs_refused_by_the_upstream_end_with_the_submit_error() {
    // Responses API: while the proxy delivers the lead, another client answers the pending
    // call in the same conversation, so the upstream refuses the proxy's output (400).
    let smtp = SilentSmtp::start();
    let (stub, proxy) = start_lead_pair(&smtp);
    let context = "submit refused";
    let conversation = proxy.create_thread(ORIGIN_R);
    let mut conn = proxy.open_message_stream(ORIGIN_R, &conversation, LEAD_MESSAGE);
    assert_widget_head(conn.status, &conn.headers, context);
    let mut chunks = read_through_requires_action(&mut conn, context);
    wait_for_capture(&proxy, context);

    let items = stub_get(
        &stub,
        &format!("/v1/conversations/{}/items", upstream_id(&conversation)),
        KEY_R,
    );
    let call_id = items["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["type"] == "function_call")
        .and_then(|i| i["call_id"].as_str())
        .unwrap_or_else(|| panic!("{context}: no pending function call: {items}"))
        .to_string();
    let other = stub_request(
        &stub,
        "POST",
        "/v1/responses",
        KEY_R,
        Some(&json!({
            "model": MODEL_R,
            "conversation": upstream_id(&conversation),
            "input": [{"type": "function_call_output", "call_id": call_id, "output": "answered elsewhere"}],
            "stream": true,
        })),
    );
    assert_eq!(other.status, 200, "{context}: {}", other.text());

    let rest = conn.read_response();
    chunks.extend(rest.chunks.iter().cloned());
    assert_eq!(rest.ending, Ending::Complete, "{context}: body not ended");
    let frames = widget_frames(&chunks, context);
    assert_eq!(
        frames,
        [created(), requires_action(), SUBMIT_FAILED.to_string()],
        "{context}"
    );

    // The proxy did submit, and was refused.
    let submitted: Vec<StubRequest> = stub
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path == "/v1/responses")
        .filter(|r| r.header("authorization") == Some(&format!("Bearer {KEY_R}")))
        .filter(|r| {
            r.json()["input"].as_array().is_some_and(|input| {
                input.iter().any(|i| {
                    i["type"] == "function_call_output"
                        && i["call_id"] == call_id.as_str()
                        && i["output"] != "answered elsewhere"
                })
            })
        })
        .collect();
    assert_eq!(submitted.len(), 1, "{context}: the proxy's submission");
}

// ---------------------------------------------------------------------------------------------
// End to end: failures end with system.error, never hang
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Api {
    Assistants,
    Responses,
}

/// Sends `Hello <directive>` and asserts: the stream starts with `thread.run.created`, holds
/// only forwarded events, ends with one `system.error` and the end of the chunked body, within
/// `bound`. When `before` is given, the events before the `system.error` are exactly those.
fn assert_failure_path(api: Api, directive: &str, bound: Duration, before: Option<Vec<String>>) {
    let context = format!("{api:?} {directive}");
    let (_stub, proxy) = start_widget_pair();
    let origin = match api {
        Api::Assistants => ORIGIN_A,
        Api::Responses => ORIGIN_R,
    };
    let conversation = proxy.create_thread(origin);
    let resp = proxy.send_message(origin, &conversation, &format!("Hello {directive}"));
    let frames = widget_response(&resp, &context);
    assert!(
        resp.duration() < bound,
        "{context}: the response took {:?} to end (bound {bound:?})",
        resp.duration()
    );
    let names = names(&frames);
    assert_eq!(
        names.first().map(String::as_str),
        Some("thread.run.created"),
        "{context}: {frames:#?}"
    );
    assert_eq!(
        names.last().map(String::as_str),
        Some("system.error"),
        "{context}: {frames:#?}"
    );
    for name in &names[..names.len() - 1] {
        assert!(
            [
                "thread.run.created",
                "thread.message.delta",
                "thread.message.completed",
            ]
            .contains(&name.as_str()),
            "{context}: {name} before the system.error: {frames:#?}"
        );
    }
    assert_system_error(frames.last().unwrap(), &context);
    if let Some(before) = before {
        assert_frames_before_last(&frames, &before, &context);
    }
}

const QUICK: Duration = Duration::from_secs(5);
/// `idle_timeout_ms = 1500`, plus room for a busy machine; far below the stub's 120 s silence.
const AFTER_IDLE: Duration = Duration::from_secs(8);

fn first_assistants_delta() -> Vec<String> {
    vec![created(), assistants_deltas("You said: Hello").remove(0)]
}

fn first_responses_delta() -> Vec<String> {
    vec![created(), responses_deltas("You said: Hello").remove(0)]
}

#[test]
fn failure_assistants_run_failed() {
    assert_failure_path(Api::Assistants, "[stub:fail]", QUICK, Some(vec![created()]));
}

#[test]
fn failure_assistants_run_cancelled() {
    assert_failure_path(
        Api::Assistants,
        "[stub:cancel]",
        QUICK,
        Some(vec![created()]),
    );
}

#[test]
fn failure_assistants_run_expired() {
    assert_failure_path(
        Api::Assistants,
        "[stub:expire]",
        QUICK,
        Some(vec![created()]),
    );
}

#[test]
fn failure_assistants_run_incomplete() {
    assert_failure_path(
        Api::Assistants,
        "[stub:incomplete]",
        QUICK,
        Some(vec![created()]),
    );
}

#[test]
fn failure_assistants_error_event() {
    assert_failure_path(
        Api::Assistants,
        "[stub:error_event]",
        QUICK,
        Some(first_assistants_delta()),
    );
}

#[test]
fn failure_assistants_cut_stream() {
    assert_failure_path(
        Api::Assistants,
        "[stub:cut]",
        QUICK,
        Some(first_assistants_delta()),
    );
}

#[test]
fn failure_assistants_silent_upstream_hits_the_idle_timeout() {
    // Two events (created, queued), then 120 s of silence.
    assert_failure_path(
        Api::Assistants,
        "[stub:hang_after=2]",
        AFTER_IDLE,
        Some(vec![created()]),
    );
}

#[test]
fn failure_responses_failed() {
    assert_failure_path(Api::Responses, "[stub:fail]", QUICK, Some(vec![created()]));
}

#[test]
fn failure_responses_incomplete() {
    // Two deltas and the partial message come before the system.error; which of them the
    // widget sees is not pinned by the issue, so only the general shape is asserted.
    assert_failure_path(Api::Responses, "[stub:incomplete]", QUICK, None);
}

#[test]
fn failure_responses_error_event() {
    assert_failure_path(
        Api::Responses,
        "[stub:error_event]",
        QUICK,
        Some(first_responses_delta()),
    );
}

#[test]
fn failure_responses_cut_stream() {
    assert_failure_path(
        Api::Responses,
        "[stub:cut]",
        QUICK,
        Some(first_responses_delta()),
    );
}

#[test]
fn failure_responses_silent_upstream_hits_the_idle_timeout() {
    // Two events (created, in_progress), then 120 s of silence.
    assert_failure_path(
        Api::Responses,
        "[stub:hang_after=2]",
        AFTER_IDLE,
        Some(vec![created()]),
    );
}
