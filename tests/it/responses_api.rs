//! Tenants on the Responses + Conversations API (OpenAI retires the Assistants API on
//! 2026-08-26): configuration (TOML `api`/`model`/`instructions`/`tools`, the environment's
//! `MODELS`/`INSTRUCTIONS`), the mapping of the widget's two routes onto `POST /conversations`
//! and streamed `POST /responses`, the unchanged and unbuffered relay, one answer at a time
//! per conversation, lead capture through `function_call` items answered on the same client
//! response, responses that end badly, the upstream status mapping, and a widget-v1 smoke test.
//! The widget's side does not change: same routes, same fields, same error codes.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::harness::*;
use crate::smtp_server::SmtpServer;
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------------
// Tenants
// ---------------------------------------------------------------------------------------------

/// `bistro`: `api = "responses"`, model, inline instructions, a `file_search` tool, no leads.
const ORIGIN_R: &str = "https://bistro.example";
const KEY_R: &str = "sk-bistro-responses";
const MODEL_R: &str = "gpt-5.4";
/// As the TOML below writes it (a basic string with a `\n` escape).
const INSTRUCTIONS_R: &str = "You are the assistant of Bistro Example.\nAnswer briefly.";
const VECTOR_STORE: &str = "vs_bistro0123456789";

/// `cafe`: no `api` key (the model alone selects the Responses API), no instructions, no
/// tools, lead recipients (so the proxy offers the lead tool).
const ORIGIN_C: &str = "https://cafe.example";
const KEY_C: &str = "sk-cafe-responses";
const MODEL_C: &str = "gpt-5.4-mini";
const RECIPIENT_C: &str = "owner@cafe.example";

/// `widget`: the Responses API with the old widget's framing.
const ORIGIN_W: &str = "https://widget.example";
const KEY_W: &str = "sk-widget-responses";

/// Any answer, error or stream, must arrive within this (upstream timeouts are 1.5 s).
const PROMPT: Duration = Duration::from_secs(8);

/// Ann's lead, as the model would hand it over.
const ANN_CALL: &str = r#"[stub:tool_calls=[{"name":"sendEmail","arguments":"{\"name\":\"Ann\",\"email\":\"ann@example.com\",\"message\":\"hi\"}"}]]"#;
const ANN_SENT: &str = "The message was sent to the team. They will reply to ann@example.com.";

/// The event sequence of a text answer (responses-create-stream.sse), deltas collapsed.
const TEXT_EVENTS: &[&str] = &[
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
];

/// The event sequence of a response asking for one function call, deltas collapsed.
const CALL_EVENTS: &[&str] = &[
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.function_call_arguments.delta",
    "response.function_call_arguments.done",
    "response.output_item.done",
    "response.completed",
];

fn upstream_toml(base: &str) -> String {
    format!(
        r#"[upstream]
base_url = "{base}"
connect_timeout_ms = 1000
first_byte_timeout_ms = 1500
idle_timeout_ms = 1500
"#
    )
}

fn bistro_tenant(key: &str) -> String {
    format!(
        r#"
[[tenants]]
name = "bistro"
domains = ["bistro.example"]
api_key = "{key}"
api = "responses"
model = "{MODEL_R}"
instructions = "You are the assistant of Bistro Example.\nAnswer briefly."
tools = [{{ type = "file_search", vector_store_ids = ["{VECTOR_STORE}"] }}]
"#
    )
}

fn cafe_tenant() -> String {
    format!(
        r#"
[[tenants]]
name = "cafe"
domains = ["cafe.example"]
api_key = "{KEY_C}"
model = "{MODEL_C}"
lead_recipients = ["{RECIPIENT_C}"]
"#
    )
}

fn widget_tenant() -> String {
    format!(
        r#"
[[tenants]]
name = "widget"
domains = ["widget.example"]
api_key = "{KEY_W}"
api = "responses"
model = "{MODEL_R}"
stream_format = "widget-v1"
"#
    )
}

/// An Assistants API tenant beside the Responses ones.
fn shop_tenant() -> String {
    format!(
        r#"
[[tenants]]
name = "shop"
domains = ["shop.example.com"]
api_key = "{KEY_A}"
assistant_id = "{ASSISTANT_A}"
"#
    )
}

/// bistro, cafe, widget (Responses API) and shop (Assistants API).
fn standard_toml(base: &str) -> String {
    format!(
        "{}{}{}{}{}",
        upstream_toml(base),
        bistro_tenant(KEY_R),
        cafe_tenant(),
        widget_tenant(),
        shop_tenant()
    )
}

fn start_standard() -> (Stub, Proxy) {
    let stub = Stub::start();
    let proxy = Proxy::start_with_toml(&standard_toml(&stub.base_url()));
    (stub, proxy)
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Creates a conversation through the proxy; asserts it is one (`conv_...`).
fn new_conversation(proxy: &Proxy, origin: &str) -> String {
    let id = proxy.create_thread(origin);
    assert!(
        id.starts_with("conv_") && id.len() > "conv_".len(),
        "create-thread from {origin} should make a conversation, got id {id:?}"
    );
    id
}

/// The upstream `POST /v1/responses` requests, oldest first.
fn response_requests(stub: &Stub) -> Vec<StubRequest> {
    stub.requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path == "/v1/responses")
        .collect()
}

/// A request straight to the stub, as a client of the Responses API would send it.
fn direct(stub: &Stub, path: &str, key: &str, body: &Value) -> Streamed {
    let req = RawRequest::new("POST", path)
        .header("Authorization", format!("Bearer {key}"))
        .json(body);
    RawConn::send(stub.port, &req).read_response()
}

fn direct_conversation(stub: &Stub, key: &str) -> String {
    let resp = direct(stub, "/v1/conversations", key, &json!({}));
    assert_eq!(resp.status, 200, "direct conversation: {}", resp.text());
    resp.json()["id"].as_str().unwrap().to_string()
}

/// What the stub streams for `body` (with its `conversation` replaced by `conversation`).
fn direct_response(stub: &Stub, key: &str, body: &Value, conversation: &str) -> Streamed {
    let mut body = body.clone();
    body["conversation"] = json!(conversation);
    let resp = direct(stub, "/v1/responses", key, &body);
    assert_eq!(resp.status, 200, "direct response: {}", resp.text());
    resp
}

fn assert_same_stream(relayed: &[u8], upstream: &[u8], context: &str) {
    assert!(!upstream.is_empty(), "{context}: the stub sent nothing");
    let got = normalize_stream(relayed);
    let want = normalize_stream(upstream);
    assert!(
        got == want,
        "{context}: the relayed stream differs from what the upstream sends\n\
         --- relayed ---\n{got:?}\n--- upstream ---\n{want:?}"
    );
}

/// Event names with runs of text or argument deltas collapsed into one entry.
fn collapsed(events: &[SseEvent]) -> Vec<&str> {
    let mut names = event_names(events);
    names.dedup_by(|a, b| {
        a == b
            && (*a == "response.output_text.delta"
                || *a == "response.function_call_arguments.delta")
    });
    names
}

/// The text of all `response.output_text.delta` events, concatenated.
fn output_text(events: &[SseEvent]) -> String {
    events
        .iter()
        .filter(|e| e.name() == "response.output_text.delta")
        .map(|e| e.json()["delta"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Splits a stream's events after each `response.completed` / `.failed` / `.incomplete`:
/// one slice per upstream response.
fn legs(events: &[SseEvent]) -> Vec<Vec<SseEvent>> {
    let mut out = vec![Vec::new()];
    for event in events {
        out.last_mut().unwrap().push(event.clone());
        if matches!(
            event.name(),
            "response.completed" | "response.failed" | "response.incomplete"
        ) {
            out.push(Vec::new());
        }
    }
    if out.last().is_some_and(Vec::is_empty) {
        out.pop();
    }
    out
}

/// The `function_call` items of a response's `response.output_item.done` events.
fn function_calls(events: &[SseEvent]) -> Vec<Value> {
    events
        .iter()
        .filter(|e| e.name() == "response.output_item.done")
        .map(|e| e.json()["item"].clone())
        .filter(|item| item["type"] == "function_call")
        .collect()
}

fn assert_stream_ok(stream: &Streamed, context: &str) {
    assert_eq!(stream.status, 200, "{context}: {}", stream.text());
    let content_type = stream.headers.get("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("text/event-stream"),
        "{context}: content-type {content_type:?}"
    );
    assert_eq!(
        stream.ending,
        Ending::Complete,
        "{context}: the response must end cleanly: {:?}",
        stream.text()
    );
    assert!(
        stream.duration() < PROMPT,
        "{context}: the stream took {:?}",
        stream.duration()
    );
    assert_no_upstream_leak(&stream.headers, "");
}

/// Asserts the lead tool's function definition: `name`, and parameters name/email/message,
/// all strings, all required, nothing else.
fn assert_lead_tool(tool: &Value, name: &str) {
    assert_eq!(tool["type"], "function", "lead tool: {tool}");
    assert_eq!(tool["name"], name, "lead tool: {tool}");
    let params = &tool["parameters"];
    assert_eq!(params["type"], "object", "lead tool parameters: {tool}");
    let properties = params["properties"]
        .as_object()
        .unwrap_or_else(|| panic!("lead tool without properties: {tool}"));
    let fields: BTreeSet<&str> = properties.keys().map(String::as_str).collect();
    let expected: BTreeSet<&str> = ["name", "email", "message"].into_iter().collect();
    assert_eq!(fields, expected, "lead tool properties: {tool}");
    for field in &expected {
        assert_eq!(
            properties[*field]["type"], "string",
            "lead tool property {field}: {tool}"
        );
    }
    let required: BTreeSet<&str> = params["required"]
        .as_array()
        .unwrap_or_else(|| panic!("lead tool without required: {tool}"))
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(required, expected, "every lead field is required: {tool}");
}

fn assert_mapped(resp: &Resp, status: u16, code: &str, origin: &str, context: &str) {
    resp.assert_error(status, code);
    resp.assert_no_upstream_leak();
    assert_acao(&resp.headers, origin, context);
}

fn assert_rejected(exited: &Exited, names: &[&str], context: &str) {
    assert_eq!(
        exited.code,
        Some(1),
        "{context}: --test must exit 1; output:\n{}",
        exited.output
    );
    for name in names {
        assert!(
            exited.output.contains(name),
            "{context}: the message must name {name:?}; output:\n{}",
            exited.output
        );
    }
    assert!(
        !exited.output.contains("configuration OK"),
        "{context}: {}",
        exited.output
    );
}

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

#[test]
fn check_mode_accepts_responses_tenants_beside_an_assistants_tenant() {
    let exited = Proxy::launch()
        .toml(&standard_toml("http://127.0.0.1:9/v1"))
        .check();
    assert_eq!(exited.code, Some(0), "{}", exited.output);
    assert!(
        exited.output.contains("configuration OK: 4 tenants"),
        "{}",
        exited.output
    );
    for key in [KEY_R, KEY_C, KEY_W, KEY_A] {
        assert!(!exited.output.contains(key), "{}", exited.output);
    }
}

#[test]
fn the_api_follows_from_which_of_assistant_id_and_model_is_set() {
    let (stub, proxy) = start_standard();
    // cafe has only `model`, no `api`: a conversation.
    new_conversation(&proxy, ORIGIN_C);
    // shop has only `assistant_id`: a thread, as before.
    let thread_id = proxy.create_thread(ORIGIN_A);
    assert!(thread_id.starts_with("thread_"), "{thread_id}");
    let calls: Vec<(String, String)> = stub
        .requests()
        .iter()
        .map(|r| (r.method.clone(), r.path.clone()))
        .collect();
    assert_eq!(
        calls,
        [
            ("POST".to_string(), "/v1/conversations".to_string()),
            ("POST".to_string(), "/v1/threads".to_string())
        ]
    );

    // And the Assistants tenant still runs its assistant.
    let stream = proxy.send_message(ORIGIN_A, &thread_id, "still assistants?");
    assert_stream_ok(&stream, "shop");
    let events = stream.events();
    assert_eq!(events[0].json()["assistant_id"], ASSISTANT_A);
    assert_eq!(event_names(&events).last().copied(), Some("done"));
}

#[test]
fn assistant_id_and_model_together_are_an_error_naming_the_tenant() {
    let toml = format!(
        r#"{}
[[tenants]]
name = "bistro"
domains = ["bistro.example"]
api_key = "{KEY_R}"
assistant_id = "asst_bistro"
model = "{MODEL_R}"
"#,
        upstream_toml("http://127.0.0.1:9/v1")
    );
    let exited = Proxy::launch().toml(&toml).check();
    assert_rejected(
        &exited,
        &["bistro", "assistant_id", "model", "not both"],
        "both",
    );
    assert!(!exited.output.contains(KEY_R), "{}", exited.output);
    // The proxy itself refuses to start with it too.
    let run = Proxy::launch().toml(&toml).run_expecting_exit();
    assert_eq!(run.code, Some(1), "{}", run.output);
    assert!(run.output.contains("bistro"), "{}", run.output);
}

#[test]
fn neither_assistant_id_nor_model_is_an_error_naming_the_tenant() {
    let toml = format!(
        r#"{}
[[tenants]]
name = "bistro"
domains = ["bistro.example"]
api_key = "{KEY_R}"
"#,
        upstream_toml("http://127.0.0.1:9/v1")
    );
    let exited = Proxy::launch().toml(&toml).check();
    assert_rejected(&exited, &["bistro", "assistant_id", "model"], "neither");
}

#[test]
fn an_explicit_api_needs_its_own_setting_and_refuses_the_other() {
    let tenant = |lines: &str| {
        format!(
            "{}\n[[tenants]]\nname = \"bistro\"\ndomains = [\"bistro.example\"]\n\
             api_key = \"{KEY_R}\"\n{lines}\n",
            upstream_toml("http://127.0.0.1:9/v1")
        )
    };
    let no_model = Proxy::launch().toml(&tenant("api = \"responses\"")).check();
    assert_rejected(&no_model, &["tenants[0].model", "responses"], "no model");
    let with_assistant = Proxy::launch()
        .toml(&tenant(
            "api = \"responses\"\nmodel = \"gpt-5.4\"\nassistant_id = \"asst_x\"",
        ))
        .check();
    assert_rejected(
        &with_assistant,
        &["tenants[0].assistant_id", "responses"],
        "responses with assistant_id",
    );
    let instructions_on_assistants = Proxy::launch()
        .toml(&tenant(
            "api = \"assistants\"\nassistant_id = \"asst_x\"\ninstructions = \"Be nice.\"",
        ))
        .check();
    assert_rejected(
        &instructions_on_assistants,
        &["tenants[0].instructions"],
        "assistants with instructions",
    );
    let ok = Proxy::launch()
        .toml(&tenant("api = \"responses\"\nmodel = \"gpt-5.4\""))
        .check();
    assert_eq!(ok.code, Some(0), "{}", ok.output);
}

#[test]
fn instructions_file_is_read_and_sent_as_the_instructions() {
    let dir = tempfile::tempdir().unwrap();
    let text = "You work for the file bistro.\nSpeak French if asked.";
    std::fs::write(dir.path().join("prompt.txt"), format!("\n{text}\n")).unwrap();
    let stub = Stub::start();
    let toml = format!(
        r#"{}
[[tenants]]
name = "filebistro"
domains = ["bistro.example"]
api_key = "{KEY_R}"
model = "{MODEL_R}"
instructions_file = "{}"
"#,
        upstream_toml(&stub.base_url()),
        dir.path().join("prompt.txt").display()
    );
    let proxy = Proxy::start_with_toml(&toml);
    let conv = new_conversation(&proxy, ORIGIN_R);
    stub.clear_requests();
    let stream = proxy.send_message(ORIGIN_R, &conv, "bonjour");
    assert_stream_ok(&stream, "instructions_file");
    let sent = response_requests(&stub);
    assert_eq!(sent.len(), 1);
    assert_eq!(
        sent[0].json(),
        json!({"model": MODEL_R, "conversation": upstream_id(&conv), "input": "bonjour",
               "stream": true, "instructions": text,
               "safety_identifier": safety_identifier(&conv)})
    );

    // A relative path starts from the configuration file's directory.
    let config = dir.path().join("relative.toml");
    std::fs::write(
        &config,
        toml.replace(
            &dir.path().join("prompt.txt").display().to_string(),
            "prompt.txt",
        ),
    )
    .unwrap();
    let exited = Proxy::launch().check_config_path(&config);
    assert_eq!(exited.code, Some(0), "{}", exited.output);
    // A missing file, or instructions given twice, are errors naming the key.
    let missing = dir.path().join("missing.toml");
    std::fs::write(&missing, toml.replace("prompt.txt", "nowhere.txt")).unwrap();
    assert_rejected(
        &Proxy::launch().check_config_path(&missing),
        &["tenants[0].instructions_file"],
        "missing instructions file",
    );
    let twice = dir.path().join("twice.toml");
    std::fs::write(
        &twice,
        toml.replace(
            "instructions_file",
            "instructions = \"Hi.\"\ninstructions_file",
        ),
    )
    .unwrap();
    assert_rejected(
        &Proxy::launch().check_config_path(&twice),
        &["instructions_file", "instructions"],
        "instructions twice",
    );
}

/// The environment of the old service with MODELS instead of ASSISTANT_IDS.
fn env_launch(stub: &Stub, extra: &[(&str, &str)]) -> Launch {
    let mut launch = Proxy::launch()
        .env("DOMAINS", r#"["bistro.example","cafe.example"]"#)
        .env("OPENAI_API_KEYS", &format!(r#"["{KEY_R}","{KEY_C}"]"#))
        .env("OPENAI_BASE_URL", &stub.base_url());
    for (name, value) in extra {
        launch = launch.env(name, value);
    }
    launch
}

#[test]
fn env_models_with_one_entry_serves_every_domain_with_the_instructions() {
    let stub = Stub::start();
    let proxy = env_launch(
        &stub,
        &[
            ("MODELS", r#"["gpt-5.4"]"#),
            ("INSTRUCTIONS", r#"["Be brief.\nBe kind."]"#),
        ],
    )
    .start();
    for (origin, domain, key) in [
        (ORIGIN_R, "bistro.example", KEY_R),
        (ORIGIN_C, "cafe.example", KEY_C),
    ] {
        stub.clear_requests();
        let conv = new_conversation(&proxy, origin);
        let stream = proxy.send_message(origin, &conv, "env mode");
        assert_stream_ok(&stream, origin);
        assert_eq!(output_text(&stream.events()), "You said: env mode");
        let upstream = stub.requests();
        assert_eq!(upstream.len(), 2, "{origin}: {upstream:?}");
        assert_eq!(upstream[0].path, "/v1/conversations");
        assert_eq!(upstream[0].json(), json!({"metadata": {"tenant": domain}}));
        assert_eq!(upstream[1].path, "/v1/responses");
        assert_eq!(
            upstream[1].json(),
            json!({"model": "gpt-5.4", "conversation": upstream_id(&conv), "input": "env mode",
                   "stream": true, "instructions": "Be brief.\nBe kind.",
                   "safety_identifier": safety_identifier(&conv)}),
            "{origin}: no EMAIL_TO, so no lead tool"
        );
        for call in &upstream {
            assert_eq!(
                call.header("authorization"),
                Some(format!("Bearer {key}").as_str())
            );
        }
    }
}

#[test]
fn env_models_per_domain_and_email_to_offer_the_lead_tool() {
    let stub = Stub::start();
    let proxy = env_launch(
        &stub,
        &[
            ("MODELS", r#"["gpt-5.4","gpt-5.4-mini"]"#),
            ("EMAIL_TO", r#"["sales@example.com"]"#),
        ],
    )
    .start();
    for (origin, model) in [(ORIGIN_R, "gpt-5.4"), (ORIGIN_C, "gpt-5.4-mini")] {
        let conv = new_conversation(&proxy, origin);
        stub.clear_requests();
        let stream = proxy.send_message(origin, &conv, "which model");
        assert_stream_ok(&stream, origin);
        let sent = response_requests(&stub);
        assert_eq!(sent.len(), 1, "{origin}");
        let mut body = sent[0].json();
        let tools = body
            .as_object_mut()
            .unwrap()
            .remove("tools")
            .unwrap_or_else(|| panic!("{origin}: EMAIL_TO is set, the lead tool is missing"));
        assert_eq!(
            body,
            json!({"model": model, "conversation": upstream_id(&conv), "input": "which model",
                   "stream": true, "safety_identifier": safety_identifier(&conv)}),
            "{origin}: no INSTRUCTIONS, so none sent"
        );
        let tools = tools.as_array().unwrap();
        assert_eq!(tools.len(), 1, "{origin}: {tools:?}");
        assert_lead_tool(&tools[0], "sendEmail");
    }
}

#[test]
fn env_models_and_assistant_ids_together_are_an_error() {
    let exited = Proxy::launch()
        .env("DOMAINS", r#"["bistro.example"]"#)
        .env("OPENAI_API_KEYS", &format!(r#"["{KEY_R}"]"#))
        .env("ASSISTANT_IDS", r#"["asst_x"]"#)
        .env("MODELS", r#"["gpt-5.4"]"#)
        .check();
    assert_rejected(&exited, &["MODELS", "ASSISTANT_IDS"], "both in env");
    assert!(!exited.output.contains(KEY_R), "{}", exited.output);

    let exited = Proxy::launch()
        .env("DOMAINS", r#"["bistro.example","cafe.example"]"#)
        .env("OPENAI_API_KEYS", r#"["sk-1","sk-2"]"#)
        .env("MODELS", r#"["gpt-5.4"]"#)
        .env("INSTRUCTIONS", r#"["a"]"#)
        .check();
    assert_eq!(exited.code, Some(0), "{}", exited.output);
    assert!(
        exited.output.contains("configuration OK: 2 tenants"),
        "{}",
        exited.output
    );
}

// ---------------------------------------------------------------------------------------------
// create-thread and process-message
// ---------------------------------------------------------------------------------------------

#[test]
fn create_thread_creates_a_conversation_naming_the_tenant() {
    let (stub, proxy) = start_standard();
    for method in ["GET", "POST"] {
        stub.clear_requests();
        let resp = proxy
            .request(method, &format!("{PREFIX}/create-thread"))
            .origin(ORIGIN_R)
            .send();
        assert_eq!(resp.status, 200, "{method}: {}", resp.body);
        let content_type = resp.header("content-type").unwrap_or_default();
        assert!(
            content_type.starts_with("application/json"),
            "{content_type}"
        );
        assert_acao(&resp.headers, ORIGIN_R, "create-thread");
        resp.assert_no_upstream_leak();
        let conv = resp.json();
        let id = conv["id"].as_str().expect("conversation id");
        let upstream_id = upstream_id(id);
        assert!(
            upstream_id.starts_with("conv_")
                && upstream_id[5..].chars().all(|c| c.is_ascii_alphanumeric()),
            "{conv}"
        );
        assert_eq!(conv["thread_id"].as_str(), Some(id), "thread_id = id");
        assert_eq!(conv["object"], "conversation");
        assert!(conv["created_at"].is_u64(), "{conv}");
        assert_eq!(conv["metadata"], json!({"tenant": "bistro"}));
        let keys: Vec<&str> = conv
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys.iter().copied().collect::<BTreeSet<_>>(),
            ["created_at", "id", "metadata", "object", "thread_id"]
                .into_iter()
                .collect(),
            "the conversation object plus thread_id: {conv}"
        );

        let upstream = stub.requests();
        assert_eq!(upstream.len(), 1, "{upstream:?}");
        assert_eq!(
            (upstream[0].method.as_str(), upstream[0].path.as_str()),
            ("POST", "/v1/conversations")
        );
        assert_eq!(
            upstream[0].json(),
            json!({"metadata": {"tenant": "bistro"}})
        );
        assert_eq!(
            upstream[0].header("authorization"),
            Some(format!("Bearer {KEY_R}").as_str())
        );
        assert_eq!(
            upstream[0].header("openai-beta"),
            None,
            "the Conversations API needs no Assistants beta header"
        );
    }
}

#[test]
fn process_message_is_one_streamed_response_in_the_conversation() {
    let (stub, proxy) = start_standard();
    let conv = new_conversation(&proxy, ORIGIN_R);
    stub.clear_requests();

    let stream = proxy.send_message(ORIGIN_R, &conv, "hello there");
    assert_stream_ok(&stream, "bistro");
    assert_eq!(stream.headers.get("cache-control"), Some("no-cache"));
    assert_acao(&stream.headers, ORIGIN_R, "process-message");
    let events = stream.events();
    assert_eq!(collapsed(&events), TEXT_EVENTS, "{}", stream.text());
    assert_eq!(output_text(&events), "You said: hello there");
    let created = events[0].json();
    assert_eq!(created["response"]["model"], MODEL_R);
    assert_eq!(created["response"]["instructions"], INSTRUCTIONS_R);

    // Nothing but the response: no message is added first, as with threads.
    let upstream = stub.requests();
    assert_eq!(upstream.len(), 1, "{upstream:?}");
    let call = &upstream[0];
    assert_eq!(
        (call.method.as_str(), call.path.as_str()),
        ("POST", "/v1/responses")
    );
    assert_eq!(
        call.json(),
        json!({
            "model": MODEL_R,
            "instructions": INSTRUCTIONS_R,
            "conversation": upstream_id(&conv),
            "input": "hello there",
            "tools": [{"type": "file_search", "vector_store_ids": [VECTOR_STORE]}],
            "stream": true,
            "safety_identifier": safety_identifier(&conv)
        })
    );
    assert_eq!(
        call.header("authorization"),
        Some(format!("Bearer {KEY_R}").as_str())
    );
    assert_eq!(call.header("openai-beta"), None);
    let everything = format!("{:?} {}", call.headers, call.body);
    for other in [KEY_A, KEY_C, KEY_W] {
        assert!(
            !everything.contains(other),
            "another tenant's key: {everything}"
        );
    }
}

#[test]
fn a_tenant_with_lead_recipients_is_offered_the_lead_tool() {
    let stub = Stub::start();
    let toml = format!(
        r#"{}{}{}
[[tenants]]
name = "deli"
domains = ["deli.example"]
api_key = "sk-deli"
model = "{MODEL_R}"
tools = [{{ type = "web_search" }}]
lead_recipients = ["deli@example.com"]
lead_tool = "saveLead"
"#,
        upstream_toml(&stub.base_url()),
        bistro_tenant(KEY_R),
        cafe_tenant()
    );
    let proxy = Proxy::start_with_toml(&toml);
    for (origin, model, configured, lead_tool) in [
        (ORIGIN_C, MODEL_C, json!([]), Some("sendEmail")),
        (
            "https://deli.example",
            MODEL_R,
            json!([{"type": "web_search"}]),
            Some("saveLead"),
        ),
        (
            ORIGIN_R,
            MODEL_R,
            json!([{"type": "file_search", "vector_store_ids": [VECTOR_STORE]}]),
            None,
        ),
    ] {
        let conv = new_conversation(&proxy, origin);
        stub.clear_requests();
        let stream = proxy.send_message(origin, &conv, "tools?");
        assert_stream_ok(&stream, origin);
        let sent = response_requests(&stub);
        assert_eq!(sent.len(), 1);
        let body = sent[0].json();
        assert_eq!(body["model"], model, "{origin}");
        let tools = body["tools"]
            .as_array()
            .unwrap_or_else(|| panic!("{origin}: no tools in {body}"))
            .clone();
        let configured = configured.as_array().unwrap();
        match lead_tool {
            Some(name) => {
                assert_eq!(tools.len(), configured.len() + 1, "{origin}: {tools:?}");
                assert_eq!(&tools[..configured.len()], &configured[..], "{origin}");
                assert_lead_tool(tools.last().unwrap(), name);
            }
            None => assert_eq!(&tools, configured, "{origin}: no recipients, no lead tool"),
        }
    }
}

#[test]
fn conversation_ids_must_look_like_conversation_ids() {
    let (stub, proxy) = start_standard();
    let too_long = format!("conv_{}", "a".repeat(81));
    let bad = [
        "thread_abc123".to_string(),
        "conv_".to_string(),
        too_long,
        "conv_ab-c".to_string(),
        "conv_abc/../x".to_string(),
        "conv_abc%2F".to_string(),
        "CONV_abc".to_string(),
        " conv_abc".to_string(),
        "conv_abc\n".to_string(),
        "resp_abc".to_string(),
    ];
    stub.clear_requests();
    for id in &bad {
        let resp = proxy.try_post_message(ORIGIN_R, id, "hi");
        resp.assert_error(400, "invalid_thread_id");
        assert_acao(&resp.headers, ORIGIN_R, id);
    }
    // The Assistants tenant beside it does not take conversation ids either.
    let resp = proxy.try_post_message(ORIGIN_A, "conv_abc123", "hi");
    resp.assert_error(400, "invalid_thread_id");
    stub.assert_no_requests("malformed conversation ids");

    // The longest valid id goes upstream (where it does not exist), in either spelling.
    let longest = format!("conv_{}", "Z9".repeat(40));
    let resp = proxy.try_post_message(ORIGIN_R, &proxy.mint_handle("bistro", &longest), "hi");
    assert_mapped(&resp, 404, "thread_not_found", ORIGIN_R, "longest id");
    let sent = response_requests(&stub);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].json()["conversation"], longest.as_str());

    let conv = new_conversation(&proxy, ORIGIN_R);
    let req = RawRequest::new("POST", &format!("{PREFIX}/process-message"))
        .header("Origin", ORIGIN_R)
        .json(&json!({"thread_id": conv, "message": "snake"}));
    let stream = proxy.raw(&req);
    assert_stream_ok(&stream, "thread_id spelling");
    assert_eq!(output_text(&stream.events()), "You said: snake");
}

#[test]
fn the_stream_is_relayed_unchanged() {
    let (stub, proxy) = start_standard();
    for message in [
        "relay me exactly",
        "[stub:chunking=split] [stub:crlf] framing",
    ] {
        let conv = new_conversation(&proxy, ORIGIN_R);
        stub.clear_requests();
        let stream = proxy.send_message(ORIGIN_R, &conv, message);
        assert_stream_ok(&stream, message);
        assert_eq!(
            collapsed(&stream.events()),
            TEXT_EVENTS,
            "{}",
            stream.text()
        );
        let sent = response_requests(&stub);
        let reference = direct_response(
            &stub,
            KEY_R,
            &sent[0].json(),
            &direct_conversation(&stub, KEY_R),
        );
        assert_same_stream(&stream.body, &reference.body, message);
    }
    // The CRLF line ends of the second stream survived.
    let conv = new_conversation(&proxy, ORIGIN_R);
    let stream = proxy.send_message(ORIGIN_R, &conv, "[stub:crlf] again");
    assert!(
        stream.body.windows(2).any(|w| w == b"\r\n"),
        "{:?}",
        stream.text()
    );
}

#[test]
fn events_are_delivered_as_the_upstream_sends_them() {
    let (_stub, proxy) = start_standard();
    let conv = new_conversation(&proxy, ORIGIN_R);
    let stream = proxy.send_message(ORIGIN_R, &conv, "[stub:slow=300] one two three");
    assert_eq!(stream.status, 200, "{}", stream.text());
    assert_eq!(stream.ending, Ending::Complete);
    let events = stream.events();
    assert_eq!(collapsed(&events), TEXT_EVENTS, "{}", stream.text());

    // The stub waits 300 ms between events: it writes its last event at least
    // (events - 1) * 300 ms after its first. An unbuffered relay delivers the first event
    // about that long before the response ends.
    assert_delivered_as_paced(&stream, events.len(), "response.created");
}

// ---------------------------------------------------------------------------------------------
// One answer at a time
// ---------------------------------------------------------------------------------------------

#[test]
fn a_second_message_while_a_response_streams_is_409_run_active() {
    let (_stub, proxy) = start_standard();
    let conv = new_conversation(&proxy, ORIGIN_R);
    let first = proxy.open_message_stream(ORIGIN_R, &conv, "[stub:slow=300] a b c d e f");
    assert_eq!(first.status, 200);

    let second = proxy.try_post_message(ORIGIN_R, &conv, "me too");
    assert_mapped(&second, 409, "run_active", ORIGIN_R, "second message");

    // Another conversation of the same tenant is not blocked.
    let other = new_conversation(&proxy, ORIGIN_R);
    let stream = proxy.send_message(ORIGIN_R, &other, "meanwhile");
    assert_stream_ok(&stream, "other conversation");

    // The first answer is not disturbed.
    let first = first.read_response();
    assert_eq!(first.ending, Ending::Complete);
    let events = first.events();
    assert_eq!(collapsed(&events), TEXT_EVENTS, "{}", first.text());
    assert_eq!(output_text(&events), "You said: a b c d e f");

    // Once it is over, the conversation takes messages again.
    let mut last_status = 0;
    let accepted = eventually(Duration::from_secs(3), || {
        let stream = proxy.send_message(ORIGIN_R, &conv, "now?");
        last_status = stream.status;
        stream.status == 200
    });
    assert!(
        accepted,
        "after the response ended, a message got {last_status}"
    );
}

#[test]
fn a_conversation_busy_upstream_is_409_run_active_too() {
    // Two proxy instances share the upstream (and the secret of conversation handles, but no
    // store): the second one learns that the conversation is busy only from the upstream's
    // `conversation_locked` answer.
    let stub = Stub::start();
    let toml = format!(
        "[limits]\nsession_secret = \"{}\"\n{}",
        "s".repeat(32),
        standard_toml(&stub.base_url())
    );
    let one = Proxy::start_with_toml(&toml);
    let two = Proxy::start_with_toml(&toml);
    let conv = new_conversation(&one, ORIGIN_R);
    let first = one.open_message_stream(ORIGIN_R, &conv, "[stub:slow=300] a b c d e f");
    assert_eq!(first.status, 200);
    stub.clear_requests();

    let second = two.try_post_message(ORIGIN_R, &conv, "me too");
    assert_mapped(&second, 409, "run_active", ORIGIN_R, "busy upstream");
    assert!(
        !second.body.contains("Another process"),
        "the upstream's message was echoed: {}",
        second.body
    );
    assert_eq!(
        response_requests(&stub).len(),
        1,
        "the second instance asked the upstream"
    );
    let first = first.read_response();
    assert_eq!(first.ending, Ending::Complete);
    assert_eq!(collapsed(&first.events()), TEXT_EVENTS);
}

// ---------------------------------------------------------------------------------------------
// Lead capture
// ---------------------------------------------------------------------------------------------

/// bistro and cafe, with SMTP at `smtp_port` and extra `[leads]` lines.
fn leads_toml(base: &str, smtp_port: u16, leads: &str) -> String {
    format!(
        r#"{}
[smtp]
host = "127.0.0.1"
port = {smtp_port}
tls = "none"
from = "AI Bot <bot@cafe.example>"
timeout_ms = 5000

[leads]
{leads}
{}{}"#,
        upstream_toml(base),
        bistro_tenant(KEY_R),
        cafe_tenant()
    )
}

/// The stub, a test SMTP server and a proxy configured by [`leads_toml`] with `leads`.
fn start_with_leads(leads: &str) -> Rig<SmtpServer> {
    Setup::new()
        .smtp()
        .start_with_toml(|stub, smtp| leads_toml(&stub.base_url(), smtp.port(), leads))
}

#[test]
fn a_lead_function_call_is_emailed_and_answered_on_the_same_stream() {
    let Rig { stub, smtp, proxy } = start_with_leads("");
    let conv = new_conversation(&proxy, ORIGIN_C);
    stub.clear_requests();

    let message = format!("call me back {ANN_CALL}");
    let stream = proxy.send_message(ORIGIN_C, &conv, &message);
    assert_stream_ok(&stream, "lead");
    let events = stream.events();
    let legs = legs(&events);
    assert_eq!(
        legs.len(),
        2,
        "two responses on one stream: {}",
        stream.text()
    );
    assert_eq!(collapsed(&legs[0]), CALL_EVENTS, "{}", stream.text());
    assert_eq!(collapsed(&legs[1]), TEXT_EVENTS, "{}", stream.text());
    let calls = function_calls(&legs[0]);
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0]["name"], "sendEmail");
    let call_id = calls[0]["call_id"].as_str().unwrap().to_string();
    assert_eq!(output_text(&legs[1]), format!("Tool output: {ANN_SENT}"));

    // Upstream: the turn, then the outputs in the same conversation with the same settings.
    let sent = response_requests(&stub);
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert_eq!(stub.requests().len(), 2, "nothing else goes upstream");
    let first = sent[0].json();
    assert_eq!(first["input"], message.as_str());
    let tools = first["tools"].clone();
    assert_eq!(tools.as_array().map(Vec::len), Some(1), "{first}");
    assert_lead_tool(&tools[0], "sendEmail");
    assert_eq!(
        sent[1].json(),
        json!({
            "model": MODEL_C,
            "conversation": upstream_id(&conv),
            "input": [{"type": "function_call_output", "call_id": call_id, "output": ANN_SENT}],
            "tools": tools,
            "stream": true,
            "safety_identifier": safety_identifier(&conv)
        })
    );
    for call in &sent {
        assert_eq!(
            call.header("authorization"),
            Some(format!("Bearer {KEY_C}").as_str())
        );
    }

    // The e-mail went out.
    let mails = smtp.received();
    assert_eq!(mails.len(), 1, "{mails:?}");
    assert_eq!(mails[0].rcpt_to, [RECIPIENT_C]);
    assert_eq!(
        mails[0].header("Subject").as_deref(),
        Some("New message from Ann - ann@example.com")
    );
    let body = mails[0].body();
    assert!(body.starts_with("hi\r\n"), "{body:?}");
    let upstream_conv = upstream_id(&conv);
    assert!(
        body.contains(&format!("Conversation: {upstream_conv}")),
        "{body:?}"
    );
    assert!(body.contains(ORIGIN_C), "{body:?}");
    // And the journal holds it.
    let journal = std::fs::read_to_string(proxy.working_dir().join("data/leads.jsonl"))
        .expect("the lead journal");
    assert!(journal.contains(upstream_conv), "{journal}");

    // Both responses reach the client as the upstream sends them.
    let reference_conv = direct_conversation(&stub, KEY_C);
    let leg1 = direct_response(&stub, KEY_C, &first, &reference_conv);
    let ref_call = function_calls(&leg1.events())[0]["call_id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut continuation = sent[1].json();
    continuation["input"][0]["call_id"] = json!(ref_call);
    let leg2 = direct_response(&stub, KEY_C, &continuation, &reference_conv);
    let mut reference = leg1.body.clone();
    reference.extend_from_slice(&leg2.body);
    assert_same_stream(&stream.body, &reference, "lead turn");
}

#[test]
fn invalid_leads_and_leads_over_the_cap_are_answered_without_mail() {
    let Rig { stub, smtp, proxy } = start_with_leads("max_per_conversation = 1");
    let conv = new_conversation(&proxy, ORIGIN_C);

    let invalid = r#"[stub:tool_calls=[{"name":"sendEmail","arguments":"{\"name\":\"Ann\",\"email\":\"ann@\",\"message\":\"hi\"}"}]]"#;
    let outputs = |stub: &Stub| -> Vec<String> {
        response_requests(stub)
            .iter()
            .filter_map(|r| r.json()["input"][0]["output"].as_str().map(str::to_string))
            .collect()
    };
    stub.clear_requests();
    let stream = proxy.send_message(ORIGIN_C, &conv, invalid);
    assert_stream_ok(&stream, "invalid lead");
    let out = outputs(&stub);
    assert_eq!(out.len(), 1, "{out:?}");
    assert!(
        out[0].contains("the e-mail address is not valid"),
        "{out:?}"
    );
    assert!(smtp.received().is_empty());
    assert_eq!(
        output_text(&legs(&stream.events())[1]),
        format!("Tool output: {}", out[0])
    );

    // One valid lead is sent; the next one in the same conversation is over the cap.
    for round in 0..2 {
        stub.clear_requests();
        let stream = proxy.send_message(ORIGIN_C, &conv, ANN_CALL);
        assert_stream_ok(&stream, "lead");
        let out = outputs(&stub);
        assert_eq!(out.len(), 1);
        if round == 0 {
            assert_eq!(out[0], ANN_SENT);
        } else {
            assert!(
                out[0].contains("already sent the most messages allowed (1)"),
                "{out:?}"
            );
        }
    }
    assert_eq!(smtp.received().len(), 1, "only the first lead is mailed");
}

#[test]
fn tool_rounds_are_bounded() {
    let Rig { stub, smtp, proxy } = start_with_leads("max_tool_rounds = 2");
    let weather =
        r#"[stub:tool_calls=[{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}]]"#;
    let declined = "The tool `get_weather` is not available in this chat. Continue without it.";

    // Two rounds are answered...
    let conv = new_conversation(&proxy, ORIGIN_C);
    stub.clear_requests();
    let stream = proxy.send_message(ORIGIN_C, &conv, &format!("{weather} [stub:rounds=2]"));
    assert_stream_ok(&stream, "two rounds");
    let events = stream.events();
    let answered = legs(&events);
    assert_eq!(answered.len(), 3, "{}", stream.text());
    assert_eq!(
        output_text(&answered[2]),
        format!("Tool output: {declined}")
    );
    let sent = response_requests(&stub);
    assert_eq!(sent.len(), 3);
    for continuation in &sent[1..] {
        let body = continuation.json();
        assert_eq!(body["input"][0]["output"], declined);
        assert_eq!(body["conversation"], upstream_id(&conv));
    }

    // ...a third is refused with a final error event.
    let conv = new_conversation(&proxy, ORIGIN_C);
    stub.clear_requests();
    let stream = proxy.send_message(ORIGIN_C, &conv, &format!("{weather} [stub:rounds=3]"));
    assert_stream_ok(&stream, "three rounds");
    let mut events = stream.events();
    let last = events.pop().expect("events");
    assert_eq!(last.name(), "error", "{}", stream.text());
    assert_eq!(last.json()["error"]["code"], "tool_rounds_exceeded");
    assert_eq!(legs(&events).len(), 3, "{}", stream.text());
    assert_eq!(response_requests(&stub).len(), 3);

    // A tenant without recipients declines the lead tool instead of mailing.
    let conv = new_conversation(&proxy, ORIGIN_R);
    stub.clear_requests();
    let stream = proxy.send_message(ORIGIN_R, &conv, ANN_CALL);
    assert_stream_ok(&stream, "no recipients");
    let sent = response_requests(&stub);
    assert_eq!(sent.len(), 2);
    let output = sent[1].json()["input"][0]["output"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(output.contains("no lead recipients"), "{output}");
    assert!(smtp.received().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Responses that end badly
// ---------------------------------------------------------------------------------------------

#[test]
fn failed_incomplete_and_error_responses_end_the_stream() {
    let (stub, proxy) = start_standard();
    for (directive, terminal) in [
        ("[stub:fail]", "response.failed"),
        ("[stub:incomplete]", "response.incomplete"),
        ("[stub:error_event]", "error"),
    ] {
        let conv = new_conversation(&proxy, ORIGIN_R);
        stub.clear_requests();
        let message = format!("{directive} go on then");
        let started = Instant::now();
        let stream = proxy.send_message(ORIGIN_R, &conv, &message);
        assert_stream_ok(&stream, directive);
        assert!(started.elapsed() < PROMPT, "{directive}");
        let events = stream.events();
        assert_eq!(
            event_names(&events).last().copied(),
            Some(terminal),
            "{directive}: {}",
            stream.text()
        );
        let last = events.last().unwrap().json();
        match terminal {
            "response.failed" => assert_eq!(last["response"]["error"]["code"], "server_error"),
            "response.incomplete" => {
                assert_eq!(
                    last["response"]["incomplete_details"]["reason"],
                    "max_output_tokens"
                );
                assert_eq!(output_text(&events), "You said:");
            }
            _ => assert_eq!(last["code"], "server_error"),
        }
        // Relayed as the upstream sent it, nothing added.
        let sent = response_requests(&stub);
        let reference = direct_response(
            &stub,
            KEY_R,
            &sent[0].json(),
            &direct_conversation(&stub, KEY_R),
        );
        assert_same_stream(&stream.body, &reference.body, directive);

        // The conversation is free again.
        let after = proxy.send_message(ORIGIN_R, &conv, "and now?");
        assert_stream_ok(&after, directive);
        assert_eq!(output_text(&after.events()), "You said: and now?");
    }
}

#[test]
fn a_cut_or_silent_response_stream_ends_with_an_error_event() {
    let (_stub, proxy) = start_standard();
    for (directive, code) in [
        ("[stub:cut]", "upstream_stream_failed"),
        ("[stub:hang_after=3]", "upstream_stream_failed"),
    ] {
        let conv = new_conversation(&proxy, ORIGIN_R);
        let stream = proxy.send_message(ORIGIN_R, &conv, &format!("{directive} bye"));
        assert_stream_ok(&stream, directive);
        let mut events = stream.events();
        let last = events.pop().expect("events");
        assert_eq!(last.name(), "error", "{directive}: {}", stream.text());
        assert_eq!(last.json()["error"]["code"], code, "{directive}");
        assert_eq!(
            events.first().map(SseEvent::name),
            Some("response.created"),
            "{directive}: the events before the failure reach the client"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Upstream statuses
// ---------------------------------------------------------------------------------------------

/// One Responses tenant per special key of the stub (`https://k401.test`, ...), plus bistro.
fn start_special_keys() -> (Stub, Proxy) {
    let stub = Stub::start();
    let mut toml = format!(
        "{}{}",
        upstream_toml(&stub.base_url()),
        bistro_tenant(KEY_R)
    );
    for special in ["401", "403", "429", "500", "hang"] {
        toml.push_str(&format!(
            "\n[[tenants]]\nname = \"k{special}\"\ndomains = [\"k{special}.test\"]\n\
             api_key = \"sk-stub-{special}\"\nmodel = \"{MODEL_R}\"\n"
        ));
    }
    let proxy = Proxy::start_with_toml(&toml);
    (stub, proxy)
}

fn both_routes(proxy: &Proxy, origin: &str) -> [(&'static str, Resp, Duration); 2] {
    let started = Instant::now();
    let created = proxy.try_create_thread(origin);
    let create_took = started.elapsed();
    let started = Instant::now();
    // A genuine handle (of tenant `k401` for `https://k401.test`, ...) the upstream refuses.
    let tenant = origin
        .trim_start_matches("https://")
        .trim_end_matches(".test");
    let handle = proxy.mint_handle(tenant, "conv_abc123");
    let posted = proxy.try_post_message(origin, &handle, "hi");
    [
        ("create-thread", created, create_took),
        ("process-message", posted, started.elapsed()),
    ]
}

#[test]
fn upstream_401_and_403_become_502_upstream_auth_failed() {
    let (_stub, proxy) = start_special_keys();
    for special in ["401", "403"] {
        let origin = format!("https://k{special}.test");
        for (route, resp, _) in both_routes(&proxy, &origin) {
            assert_mapped(&resp, 502, "upstream_auth_failed", &origin, route);
            assert!(!resp.body.contains("sk-stub"), "{}", resp.body);
        }
    }
    assert_eq!(proxy.try_create_thread(ORIGIN_R).status, 200);
}

#[test]
fn upstream_429_becomes_429_with_its_retry_after() {
    let (_stub, proxy) = start_special_keys();
    let origin = "https://k429.test";
    for (route, resp, _) in both_routes(&proxy, origin) {
        assert_mapped(&resp, 429, "rate_limited", origin, route);
        assert_eq!(resp.header("retry-after"), Some("7"), "{route}");
    }
}

#[test]
fn upstream_500_becomes_502_upstream_error() {
    let (_stub, proxy) = start_special_keys();
    let origin = "https://k500.test";
    for (route, resp, _) in both_routes(&proxy, origin) {
        assert_mapped(&resp, 502, "upstream_error", origin, route);
    }
}

#[test]
fn a_silent_upstream_becomes_504_upstream_timeout() {
    let (_stub, proxy) = start_special_keys();
    let origin = "https://khang.test";
    for (route, resp, took) in both_routes(&proxy, origin) {
        assert!(took < PROMPT, "{route} took {took:?}");
        assert_mapped(&resp, 504, "upstream_timeout", origin, route);
    }
}

#[test]
fn an_unknown_conversation_becomes_404_thread_not_found() {
    let (stub, proxy) = start_special_keys();
    let handle = proxy.mint_handle("bistro", "conv_doesnotexist0");
    let resp = proxy.try_post_message(ORIGIN_R, &handle, "hi");
    assert_mapped(
        &resp,
        404,
        "thread_not_found",
        ORIGIN_R,
        "unknown conversation",
    );
    assert!(
        !resp.body.contains("Conversation with id"),
        "the upstream's message was echoed: {}",
        resp.body
    );
    assert_eq!(response_requests(&stub).len(), 1);
}

// ---------------------------------------------------------------------------------------------
// widget-v1
// ---------------------------------------------------------------------------------------------

#[test]
fn widget_v1_framing_works_for_a_responses_tenant() {
    let (stub, proxy) = start_standard();
    let conv = new_conversation(&proxy, ORIGIN_W);
    stub.clear_requests();
    let stream = proxy.send_message(ORIGIN_W, &conv, "hello widget");
    assert_stream_ok(&stream, "widget-v1");
    let text = stream.text();
    assert!(
        !text.contains("event:"),
        "widget-v1 has data lines only: {text}"
    );
    let events: Vec<Value> = stream.events().iter().map(SseEvent::json).collect();
    let names: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(names.first().copied(), Some("thread.run.created"), "{text}");
    assert_eq!(
        events[0],
        json!({"event": "thread.run.created", "status": "queued"})
    );
    assert_eq!(
        &names[names.len() - 3..],
        ["thread.message.completed", "thread.run.completed", "end"],
        "{text}"
    );
    // Deltas that arrive together with the completed message are superseded by it (issue
    // 12): the deltas sent spell the start of the text, the completed message all of it.
    let said: String = events
        .iter()
        .filter(|e| e["event"] == "thread.message.delta")
        .map(|e| {
            e["delta"]["content"][0]["text"]["value"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert!("You said: hello widget".starts_with(&said), "{text}");
    let completed = &events[names.len() - 3]["content"][0]["text"]["value"];
    assert_eq!(completed, "You said: hello widget");
    let messages = events.last().unwrap()["messages"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert_eq!(messages[0]["role"], "assistant");
    assert_eq!(
        messages[0]["content"][0]["text"]["value"],
        "You said: hello widget"
    );
    assert_eq!(messages[1]["role"], "user");
    let listed = stub.requests().iter().any(|r| {
        r.method == "GET"
            && r.path
                .starts_with(&format!("/v1/conversations/{}/items", upstream_id(&conv)))
    });
    assert!(listed, "the end event needs the conversation's items");
}
