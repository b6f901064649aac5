//! Lead capture through the real binary: the stub upstream asks for tool calls (the
//! `[stub:tool_calls=...]` directive), the proxy answers them — e-mailing leads to a real SMTP
//! server over TCP (`smtp_server`), declining unknown tools, refusing bad arguments and leads
//! over the caps — submits every output in one request, and streams the continuation on the
//! same client response with a single final `done`. Also: delivery in the background while
//! SMTP is down, across a `kill -9` of the proxy, and for 50 conversations at once.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::harness::*;
use crate::smtp_server::{Received, SmtpServer};
use serde_json::{json, Value};

/// The widget's site (tenant A's exact domain).
const SITE: &str = ORIGIN_A;
const SMTP_USER: &str = "bot@example.com";
const SMTP_PASSWORD: &str = "s3cret-Pa55";
const LEAD_TOOL: &str = "sendEmail";

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// One tenant (`shop.example.com`) with two lead recipients, SMTP on 127.0.0.1:`smtp_port`
/// in plain text with a login, and `leads` as the body of a `[leads]` table.
fn lead_toml(stub: &Stub, smtp_port: u16, leads: &str) -> String {
    format!(
        r#"[upstream]
base_url = "{base}"

[smtp]
host = "127.0.0.1"
port = {smtp_port}
user = "{SMTP_USER}"
password = "{SMTP_PASSWORD}"
tls = "none"
timeout_ms = 3000

[leads]
{leads}

[limits]
max_body_bytes = 65536
max_message_chars = 20000

[[tenants]]
name = "shop"
domains = ["shop.example.com"]
api_key = "{KEY_A}"
assistant_id = "{ASSISTANT_A}"
lead_recipients = ["sales@shop.example.com", "owner@shop.example.com"]
"#,
        base = stub.base_url()
    )
}

/// The stub, the SMTP server of `setup` and a proxy configured by [`lead_toml`] with `leads`.
fn start(setup: Setup<SmtpServer>, leads: &str) -> Rig<SmtpServer> {
    setup.start_with_toml(|stub, smtp| lead_toml(stub, smtp.port(), leads))
}

/// The arguments string of a lead-tool call.
fn lead_args(name: &str, email: &str, message: &str) -> String {
    json!({"name": name, "email": email, "message": message}).to_string()
}

/// A user message whose run asks for `calls` (name, arguments string), plus `extra` text.
fn tool_message(calls: &[(&str, &str)], extra: &str) -> String {
    let list: Vec<Value> = calls
        .iter()
        .map(|(name, arguments)| json!({"name": name, "arguments": arguments}))
        .collect();
    format!("[stub:tool_calls={}] {extra}", Value::Array(list))
}

/// The tool outputs of `reply.rs`, as the assistant receives them.
fn sent(email: &str) -> String {
    format!("The message was sent to the team. They will reply to {email}.")
}

fn queued(email: &str) -> String {
    format!(
        "The message was saved and queued for delivery; the team will receive it shortly \
         and reply to {email}."
    )
}

fn not_available(tool: &str) -> String {
    format!("The tool `{tool}` is not available in this chat. Continue without it.")
}

fn invalid(what: &str) -> String {
    format!(
        "The message was not sent: {what}. Ask the visitor for the missing or corrected \
         details, then call {LEAD_TOOL} again."
    )
}

/// The `submit_tool_outputs` requests the stub received.
fn submissions(stub: &Stub) -> Vec<StubRequest> {
    stub.requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/submit_tool_outputs"))
        .collect()
}

/// `(tool_call_id, output)` of one submission, in order.
fn outputs_of(submission: &StubRequest) -> Vec<(String, String)> {
    let body = submission.json();
    assert_eq!(
        body["stream"],
        json!(true),
        "submit_tool_outputs must stream: {}",
        submission.body
    );
    body["tool_outputs"]
        .as_array()
        .unwrap_or_else(|| panic!("no tool_outputs array: {}", submission.body))
        .iter()
        .map(|o| {
            (
                o["tool_call_id"].as_str().unwrap_or_default().to_string(),
                o["output"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// A tool call as listed in a `thread.run.requires_action` event.
#[derive(Debug, Clone)]
struct AskedCall {
    id: String,
    name: String,
}

/// The run id and calls of every `thread.run.requires_action` in the stream.
fn requires_actions(events: &[SseEvent]) -> Vec<(String, Vec<AskedCall>)> {
    events
        .iter()
        .filter(|e| e.name() == "thread.run.requires_action")
        .map(|e| {
            let run = e.json();
            let calls = run["required_action"]["submit_tool_outputs"]["tool_calls"]
                .as_array()
                .unwrap_or_else(|| panic!("requires_action without tool calls: {}", e.data))
                .iter()
                .map(|c| AskedCall {
                    id: c["id"].as_str().unwrap_or_default().to_string(),
                    name: c["function"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                })
                .collect();
            (run["id"].as_str().unwrap_or_default().to_string(), calls)
        })
        .collect()
}

/// Asserts a completed tool-call turn: a 200 event stream, complete, no error event, the
/// continuation's text equal to `Tool output: <outputs joined by " | ">`, and exactly one
/// `done`, as the very last event.
fn assert_continued(stream: &Streamed, outputs: &[&str], context: &str) {
    let text = stream.text();
    assert_eq!(stream.status, 200, "{context}: {text}");
    assert_eq!(
        stream.ending,
        Ending::Complete,
        "{context}: body cut: {text}"
    );
    let events = stream.events();
    let names = event_names(&events);
    assert!(
        !names.contains(&"error"),
        "{context}: unexpected error event: {text}"
    );
    assert_eq!(
        names.iter().filter(|n| **n == "done").count(),
        1,
        "{context}: exactly one done expected: {names:?}"
    );
    assert_eq!(names.last(), Some(&"done"), "{context}: {names:?}");
    assert_eq!(
        names.get(names.len().wrapping_sub(2)),
        Some(&"thread.run.completed"),
        "{context}: the run must complete: {names:?}"
    );
    assert_eq!(
        names
            .iter()
            .filter(|n| **n == "thread.run.requires_action")
            .count(),
        1,
        "{context}: {names:?}"
    );
    assert_eq!(
        delta_text(&events),
        format!("Tool output: {}", outputs.join(" | ")),
        "{context}: the continuation's text"
    );
}

/// Polls the SMTP server until it holds at least `count` messages or `within` passes.
fn wait_for_mail(server: &SmtpServer, count: usize, within: Duration) -> Vec<Received> {
    let deadline = Instant::now() + within;
    loop {
        let received = server.received();
        if received.len() >= count || Instant::now() > deadline {
            return received;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

fn journal_path(working_dir: &Path) -> PathBuf {
    working_dir.join("data").join("leads.jsonl")
}

/// The journal's records (an absent file counts as empty).
fn journal(working_dir: &Path) -> Vec<Value> {
    let path = journal_path(working_dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => panic!("reading {}: {e}", path.display()),
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("journal line {l:?}: {e}")))
        .collect()
}

fn records_of_type<'a>(records: &'a [Value], kind: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["type"] == kind).collect()
}

/// The byte offset just after the event named `name` (after its blank line).
fn end_of_event(body: &[u8], name: &str) -> usize {
    let text = String::from_utf8_lossy(body);
    let start = text
        .find(&format!("event: {name}\n"))
        .unwrap_or_else(|| panic!("no {name} event in {text:?}"));
    let end = text[start..]
        .find("\n\n")
        .unwrap_or_else(|| panic!("{name} event not terminated in {text:?}"));
    start + end + 2
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn a_lead_is_emailed_and_the_continuation_streams_on_the_same_response() {
    let Rig { stub, smtp, proxy } = start(Setup::new().smtp(), "");
    let thread_id = proxy.create_thread(SITE);
    let args = lead_args(
        "Ada Lovelace",
        "ada@example.net",
        "Please call me about the engine.\nThanks!",
    );
    let message = tool_message(&[(LEAD_TOOL, &args)], "please");
    stub.clear_requests();

    let stream = proxy.send_message(SITE, &thread_id, &message);
    let expected = sent("ada@example.net");
    assert_continued(&stream, &[&expected], "lead turn");

    // The first run's bytes, up to and including requires_action, are the stub's own.
    let cut = end_of_event(&stream.body, "thread.run.requires_action");
    let reference = stub.direct_run_stream(KEY_A, ASSISTANT_A, &message);
    let reference_cut = end_of_event(&reference, "thread.run.requires_action");
    assert_eq!(
        normalize_stream(&stream.body[..cut]),
        normalize_stream(&reference[..reference_cut]),
        "the first run must be relayed unchanged up to requires_action"
    );
    assert!(
        String::from_utf8_lossy(&reference[reference_cut..]).contains("event: done"),
        "the stub's first run ends with done (held back by the proxy)"
    );
    let first = parse_sse(&stream.body[..cut]);
    assert!(
        !event_names(&first).contains(&"done"),
        "no done before the continuation: {:?}",
        event_names(&first)
    );
    let continuation = parse_sse(&stream.body[cut..]);
    let names = event_names(&continuation);
    assert_eq!(
        names.first(),
        Some(&"thread.run.step.completed"),
        "the continuation follows requires_action directly: {names:?}"
    );
    assert_eq!(names.last(), Some(&"done"));

    // One submission, for the call the client saw, streamed.
    let asked = requires_actions(&stream.events());
    assert_eq!(asked.len(), 1);
    let (run_id, calls) = &asked[0];
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].name, LEAD_TOOL);
    let submitted = submissions(&stub);
    // The reference run above never submits: only the proxy's submission is here.
    assert_eq!(submitted.len(), 1, "exactly one submit_tool_outputs");
    assert_eq!(submitted[0].method, "POST");
    assert_eq!(
        submitted[0].path,
        format!(
            "/v1/threads/{}/runs/{run_id}/submit_tool_outputs",
            upstream_id(&thread_id)
        )
    );
    assert_eq!(
        submitted[0].header("authorization"),
        Some(format!("Bearer {KEY_A}").as_str())
    );
    assert_eq!(
        outputs_of(&submitted[0]),
        vec![(calls[0].id.clone(), expected.clone())]
    );

    // The e-mail, as the SMTP server received it.
    let received = smtp.received();
    assert_eq!(received.len(), 1, "one e-mail: {received:?}");
    let mail = &received[0];
    assert_eq!(
        mail.auth,
        Some((SMTP_USER.to_string(), SMTP_PASSWORD.to_string())),
        "AUTH with the configured user and password"
    );
    assert_eq!(mail.mail_from, SMTP_USER);
    assert_eq!(
        mail.rcpt_to,
        ["sales@shop.example.com", "owner@shop.example.com"]
    );
    assert_eq!(
        mail.header("To").as_deref(),
        Some("sales@shop.example.com, owner@shop.example.com")
    );
    assert_eq!(
        mail.header("Subject").as_deref(),
        Some("New message from Ada Lovelace - ada@example.net")
    );
    assert_eq!(
        mail.header("Reply-To").as_deref(),
        Some("\"Ada Lovelace\" <ada@example.net>")
    );
    assert_eq!(
        mail.header("From").as_deref(),
        Some("\"AI Bot\" <bot@example.com>")
    );
    assert_eq!(
        mail.body(),
        format!(
            "Please call me about the engine.\r\nThanks!\r\n\r\n-- \r\n\
             Sent by the chatbot on {SITE}\r\nConversation: {}\r\n",
            upstream_id(&thread_id)
        )
    );
    assert!(
        !proxy.logs().contains(SMTP_PASSWORD),
        "the SMTP password appears in the proxy's log"
    );

    // Journaled, and marked delivered.
    let records = journal(&proxy.working_dir());
    let leads = records_of_type(&records, "lead");
    assert_eq!(leads.len(), 1, "{records:?}");
    assert_eq!(leads[0]["conversation"], json!(upstream_id(&thread_id)));
    assert_eq!(leads[0]["site"], json!(SITE));
    let delivered = records_of_type(&records, "delivered");
    assert_eq!(delivered.len(), 1, "{records:?}");
    assert_eq!(delivered[0]["id"], leads[0]["id"]);
}

#[test]
fn two_tool_calls_are_answered_in_one_submission_in_order() {
    let Rig { stub, smtp, proxy } = start(Setup::new().smtp(), "");
    let thread_id = proxy.create_thread(SITE);
    let args = lead_args("Grace Hopper", "grace@example.org", "Quote for 3 seats");
    let message = tool_message(
        &[(LEAD_TOOL, &args), ("lookupWeather", r#"{"city":"Paris"}"#)],
        "thanks",
    );
    stub.clear_requests();

    let stream = proxy.send_message(SITE, &thread_id, &message);
    let first = sent("grace@example.org");
    let second = not_available("lookupWeather");
    assert_continued(&stream, &[&first, &second], "two calls");

    let asked = requires_actions(&stream.events());
    let (_, calls) = &asked[0];
    let names: Vec<&str> = calls.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, [LEAD_TOOL, "lookupWeather"]);
    let submitted = submissions(&stub);
    assert_eq!(submitted.len(), 1, "both outputs in one submission");
    assert_eq!(
        outputs_of(&submitted[0]),
        vec![
            (calls[0].id.clone(), first.clone()),
            (calls[1].id.clone(), second.clone()),
        ]
    );

    let received = smtp.received();
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(
        received[0].header("Reply-To").as_deref(),
        Some("\"Grace Hopper\" <grace@example.org>")
    );
}

#[test]
fn an_unknown_tool_is_declined_and_the_run_goes_on() {
    let Rig { stub, smtp, proxy } = start(Setup::new().smtp(), "");
    let thread_id = proxy.create_thread(SITE);
    stub.clear_requests();

    let message = tool_message(&[("lookupWeather", r#"{"city":"Paris"}"#)], "weather?");
    let stream = proxy.send_message(SITE, &thread_id, &message);
    let expected = not_available("lookupWeather");
    assert_continued(&stream, &[&expected], "unknown tool");
    let submitted = submissions(&stub);
    assert_eq!(submitted.len(), 1);
    let asked = requires_actions(&stream.events());
    assert_eq!(
        outputs_of(&submitted[0]),
        vec![(asked[0].1[0].id.clone(), expected.clone())]
    );

    // The run is over: the thread takes the next message.
    let next = proxy.send_message(SITE, &thread_id, "and now?");
    assert_eq!(next.status, 200, "{}", next.text());
    assert_eq!(delta_text(&next.events()), "You said: and now?");

    thread::sleep(Duration::from_millis(500));
    assert!(smtp.received().is_empty(), "no e-mail for an unknown tool");
    assert!(
        journal(&proxy.working_dir()).is_empty(),
        "nothing journaled for an unknown tool"
    );
}

#[test]
fn invalid_lead_arguments_are_explained_and_nothing_is_sent_or_journaled() {
    let Rig { stub, smtp, proxy } = start(Setup::new().smtp(), "");
    let thread_id = proxy.create_thread(SITE);

    // 255 characters: one over the limit of an address.
    let long_address = format!("ada@{}.abc.com", vec!["x".repeat(60); 4].join("."));
    assert_eq!(long_address.chars().count(), 255);
    let cases: Vec<(&str, String, String)> = vec![
        (
            "missing e-mail",
            json!({"name": "Ada", "message": "hi"}).to_string(),
            invalid("the e-mail address is missing"),
        ),
        (
            "malformed e-mail",
            lead_args("Ada", "ada@", "hi"),
            invalid("the e-mail address is not valid (expected e.g. name@example.com)"),
        ),
        (
            "over-long fields",
            lead_args(&"n".repeat(201), &long_address, &"m".repeat(5001)),
            invalid(
                "the name is longer than 200 characters; the e-mail address is longer than \
                 254 characters; the message is longer than 5000 characters",
            ),
        ),
        (
            "arguments not JSON",
            "{name: Ada".to_string(),
            format!(
                "The message was not sent: the arguments were not a JSON object with the \
                 fields \"name\", \"email\" and \"message\". Call {LEAD_TOOL} again with \
                 those three fields."
            ),
        ),
    ];
    for (what, args, expected) in &cases {
        stub.clear_requests();
        let message = tool_message(&[(LEAD_TOOL, args)], "go");
        let stream = proxy.send_message(SITE, &thread_id, &message);
        assert_continued(&stream, &[expected], what);
        let submitted = submissions(&stub);
        assert_eq!(submitted.len(), 1, "{what}");
        let asked = requires_actions(&stream.events());
        assert_eq!(
            outputs_of(&submitted[0]),
            vec![(asked[0].1[0].id.clone(), expected.clone())],
            "{what}"
        );
    }

    // Give a background delivery every chance to show up: none may.
    thread::sleep(Duration::from_millis(1500));
    assert!(
        smtp.received().is_empty(),
        "invalid leads must not be e-mailed: {:?}",
        smtp.received()
    );
    assert!(
        journal(&proxy.working_dir()).is_empty(),
        "invalid leads must not be journaled: {:?}",
        journal(&proxy.working_dir())
    );
}

#[test]
fn a_lead_captured_while_smtp_is_stopped_is_queued_and_delivered_once_it_is_back() {
    let Rig {
        stub: _stub,
        mut smtp,
        proxy,
    } = start(Setup::new().smtp_stopped(), "");
    let thread_id = proxy.create_thread(SITE);
    let args = lead_args("Ada Lovelace", "ada@example.net", "Call me");

    let stream = proxy.send_message(SITE, &thread_id, &tool_message(&[(LEAD_TOOL, &args)], ""));
    let expected = queued("ada@example.net");
    assert_continued(&stream, &[&expected], "SMTP stopped");

    let records = journal(&proxy.working_dir());
    let leads = records_of_type(&records, "lead");
    assert_eq!(leads.len(), 1, "the lead is journaled: {records:?}");
    assert!(records_of_type(&records, "delivered").is_empty());
    let lead_id = leads[0]["id"].clone();

    // A retry or two fail, then the server is back.
    thread::sleep(Duration::from_millis(1500));
    smtp.restart();
    let received = wait_for_mail(&smtp, 1, Duration::from_secs(20));
    assert_eq!(
        received.len(),
        1,
        "the queued lead must be delivered once SMTP is back"
    );
    assert_eq!(
        received[0].header("Reply-To").as_deref(),
        Some("\"Ada Lovelace\" <ada@example.net>")
    );
    assert!(received[0]
        .body()
        .contains(&format!("Conversation: {}\r\n", upstream_id(&thread_id))));

    thread::sleep(Duration::from_secs(3));
    assert_eq!(smtp.received().len(), 1, "delivered exactly once");
    let marked = eventually(Duration::from_secs(5), || {
        journal(&proxy.working_dir())
            .iter()
            .any(|r| r["type"] == "delivered" && r["id"] == lead_id)
    });
    assert!(
        marked,
        "the journal must mark the lead delivered: {:?}",
        journal(&proxy.working_dir())
    );
}

#[test]
fn a_lead_refused_by_smtp_is_queued_and_delivered_once_it_accepts() {
    let Rig {
        stub: _stub,
        smtp,
        proxy,
    } = start(Setup::new().smtp_refusing("451 4.3.0 Try again later"), "");
    let thread_id = proxy.create_thread(SITE);
    let args = lead_args("Grace Hopper", "grace@example.org", "Call me");

    let stream = proxy.send_message(SITE, &thread_id, &tool_message(&[(LEAD_TOOL, &args)], ""));
    let expected = queued("grace@example.org");
    assert_continued(&stream, &[&expected], "SMTP refusing");
    assert!(smtp.received().is_empty());

    thread::sleep(Duration::from_millis(1500));
    assert!(smtp.received().is_empty(), "the server still refuses");
    smtp.accept_mail();
    let received = wait_for_mail(&smtp, 1, Duration::from_secs(20));
    assert_eq!(
        received.len(),
        1,
        "the queued lead must be delivered once SMTP accepts"
    );
    assert_eq!(
        received[0].header("Subject").as_deref(),
        Some("New message from Grace Hopper - grace@example.org")
    );
    thread::sleep(Duration::from_secs(3));
    assert_eq!(smtp.received().len(), 1, "delivered exactly once");
}

/// A proxy process run by this file itself, so it can be killed with SIGKILL and started
/// again on the same working directory (the harness's `Proxy` owns and deletes its own).
struct OwnProxy {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl OwnProxy {
    /// Starts the binary in `dir` with `toml` (plus a `listen` on a fresh port) as
    /// `config.toml`, its output going to `log`; waits until `/healthz` answers.
    fn start(dir: &Path, toml: &str, log: &Path) -> OwnProxy {
        let port = free_port();
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!("[server]\nlisten = \"127.0.0.1:{port}\"\n\n{toml}"),
        )
        .expect("write config.toml");
        let out = File::create(log).expect("create the proxy log");
        let mut cmd = Command::new(BIN);
        cmd.current_dir(dir)
            .env_clear()
            .env("RUST_LOG", "info")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("clone log file"))
            .stderr(out);
        for name in ["PATH", "HOME"] {
            if let Some(value) = std::env::var_os(name) {
                cmd.env(name, value);
            }
        }
        let child = cmd.spawn().expect("start the proxy");
        let mut proxy = OwnProxy {
            child,
            port,
            log: log.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = proxy.child.try_wait().expect("try_wait") {
                panic!("the proxy exited with {status}:\n{}", proxy.logs());
            }
            if proxy.healthy() {
                return proxy;
            }
            assert!(
                Instant::now() < deadline,
                "the proxy did not answer /healthz within 20 s:\n{}",
                proxy.logs()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn healthy(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let request = "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        if stream.write_all(request.as_bytes()).is_err() {
            return false;
        }
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        answer.starts_with(b"HTTP/1.1 200")
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn create_thread(&self, origin: &str) -> String {
        let req =
            RawRequest::new("GET", &format!("{PREFIX}/create-thread")).header("Origin", origin);
        let resp = RawConn::send(self.port, &req).read_response();
        assert_eq!(resp.status, 200, "create-thread: {}", resp.text());
        resp.json()["id"].as_str().expect("thread id").to_string()
    }

    fn send_message(&self, origin: &str, thread_id: &str, message: &str) -> Streamed {
        let req = RawRequest::new("POST", &format!("{PREFIX}/process-message"))
            .header("Origin", origin)
            .json(&json!({"threadId": thread_id, "message": message}));
        RawConn::send(self.port, &req).read_response()
    }

    /// `kill -9`: `Child::kill` sends SIGKILL on Unix; no shutdown code runs.
    fn kill_9(mut self) {
        self.child.kill().expect("SIGKILL the proxy");
        self.child.wait().expect("reap the proxy");
    }
}

impl Drop for OwnProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_pending_lead_survives_kill_9_and_is_delivered_exactly_once_after_a_restart() {
    let stub = Stub::start();
    let mut smtp = SmtpServer::start();
    smtp.stop();
    let dir = tempfile::tempdir().expect("working dir");
    let logs = tempfile::tempdir().expect("log dir");
    let toml = lead_toml(&stub, smtp.port(), "");

    // First life: SMTP is down, the lead is queued, then the process is killed.
    let first = OwnProxy::start(dir.path(), &toml, &logs.path().join("first.log"));
    let thread_id = first.create_thread(SITE);
    let args = lead_args("Ada Lovelace", "ada@example.net", "Survive this");
    let stream = first.send_message(SITE, &thread_id, &tool_message(&[(LEAD_TOOL, &args)], ""));
    assert_continued(&stream, &[&queued("ada@example.net")], "before kill -9");
    let records = journal(dir.path());
    let leads = records_of_type(&records, "lead");
    assert_eq!(leads.len(), 1, "journaled before the answer: {records:?}");
    let lead_id = leads[0]["id"].clone();
    first.kill_9();
    assert!(smtp.received().is_empty());

    // Second life, same working directory, SMTP up.
    smtp.restart();
    let second = OwnProxy::start(dir.path(), &toml, &logs.path().join("second.log"));
    let received = wait_for_mail(&smtp, 1, Duration::from_secs(20));
    assert_eq!(
        received.len(),
        1,
        "the pending lead must be delivered after the restart; log:\n{}",
        second.logs()
    );
    let mail = &received[0];
    assert_eq!(
        mail.header("Subject").as_deref(),
        Some("New message from Ada Lovelace - ada@example.net")
    );
    assert_eq!(
        mail.header("Reply-To").as_deref(),
        Some("\"Ada Lovelace\" <ada@example.net>")
    );
    assert!(mail.body().starts_with(&format!(
        "Survive this\r\n\r\n-- \r\nSent by the chatbot on {SITE}\r\nConversation: {}\r\n",
        upstream_id(&thread_id)
    )));

    thread::sleep(Duration::from_secs(4));
    assert_eq!(
        smtp.received().len(),
        1,
        "delivered exactly once; log:\n{}",
        second.logs()
    );
    let marked = eventually(Duration::from_secs(5), || {
        journal(dir.path())
            .iter()
            .any(|r| r["type"] == "delivered" && r["id"] == lead_id)
    });
    assert!(
        marked,
        "data/leads.jsonl must hold a delivered mark for {lead_id}: {:?}",
        journal(dir.path())
    );
    drop(second);
}

#[test]
fn fifty_concurrent_conversations_each_get_their_own_continuation_and_email() {
    const N: usize = 50;
    // 50 visitors' conversations, all from the test's one address: lift the per-address limits
    // (requests, streams and the daily lead cap).
    let Rig { stub, smtp, proxy } = Setup::new().smtp().start_with_toml(|stub, smtp| {
        let unlimited = "[limits]\nrate_limit_ip = \"off\"\nmax_streams_per_ip = 0\n";
        lead_toml(stub, smtp.port(), "max_per_address_per_day = 50")
            .replace("[limits]\n", unlimited)
    });
    let address = |i: usize| format!("visitor-{i:02}@example.com");
    let name = |i: usize| format!("Visitor {i:02}");

    let started = Instant::now();
    let results: Vec<(usize, String, Streamed)> = thread::scope(|scope| {
        let handles: Vec<_> = (0..N)
            .map(|i| {
                let proxy = &proxy;
                scope.spawn(move || {
                    let thread_id = proxy.create_thread(SITE);
                    let args = lead_args(&name(i), &address(i), &format!("Lead number {i}"));
                    // Events 10 ms apart, so the 50 streams really overlap.
                    let message = tool_message(&[(LEAD_TOOL, &args)], "[stub:slow=10]");
                    let stream = proxy.send_message(SITE, &thread_id, &message);
                    (i, thread_id, stream)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a conversation thread panicked"))
            .collect()
    });
    let elapsed = started.elapsed();

    let thread_ids: BTreeSet<&str> = results.iter().map(|(_, t, _)| t.as_str()).collect();
    assert_eq!(thread_ids.len(), N, "each conversation has its own thread");
    let submitted = submissions(&stub);
    assert_eq!(submitted.len(), N, "one submission per conversation");
    for (i, thread_id, stream) in &results {
        let own = address(*i);
        assert_continued(stream, &[&sent(&own)], &format!("conversation {i}"));
        let asked = requires_actions(&stream.events());
        let mine: Vec<&StubRequest> = submitted
            .iter()
            .filter(|r| {
                let thread = upstream_id(thread_id);
                r.path.starts_with(&format!("/v1/threads/{thread}/"))
            })
            .collect();
        assert_eq!(
            mine.len(),
            1,
            "conversation {i}: one submission for its thread"
        );
        assert_eq!(
            outputs_of(mine[0]),
            vec![(asked[0].1[0].id.clone(), sent(&own))],
            "conversation {i}: its own call answered with its own lead"
        );
        let text = stream.text();
        assert!(
            text.contains(&own),
            "conversation {i} lacks its own address"
        );
        for j in (0..N).filter(|j| j != i) {
            assert!(
                !text.contains(&address(j)),
                "conversation {i} ({thread_id}) received conversation {j}'s lead"
            );
        }
        for event in stream.events().iter().filter(|e| e.name() != "done") {
            if let Some(id) = event.json().get("thread_id").and_then(Value::as_str) {
                assert_eq!(
                    id,
                    upstream_id(thread_id),
                    "conversation {i}: an event of another thread"
                );
            }
        }
    }

    let received = wait_for_mail(&smtp, N, Duration::from_secs(20));
    assert_eq!(received.len(), N, "one e-mail per lead");
    let mut reply_tos = BTreeSet::new();
    for mail in &received {
        let reply_to = mail.header("Reply-To").expect("Reply-To");
        let i = (0..N)
            .find(|i| reply_to == format!("\"{}\" <{}>", name(*i), address(*i)))
            .unwrap_or_else(|| panic!("unexpected Reply-To {reply_to:?}"));
        assert!(reply_tos.insert(i), "two e-mails for lead {i}");
        assert_eq!(
            mail.header("Subject"),
            Some(format!("New message from {} - {}", name(i), address(i)))
        );
        let thread_id = &results.iter().find(|(j, _, _)| *j == i).unwrap().1;
        assert_eq!(
            mail.body(),
            format!(
                "Lead number {i}\r\n\r\n-- \r\nSent by the chatbot on {SITE}\r\n\
                 Conversation: {}\r\n",
                upstream_id(thread_id)
            ),
            "lead {i}'s e-mail names its own conversation"
        );
    }
    assert!(
        elapsed < Duration::from_secs(30),
        "50 conversations took {elapsed:?}"
    );
}

#[test]
fn a_second_lead_in_a_conversation_over_the_cap_is_refused() {
    let Rig {
        stub: _stub,
        smtp,
        proxy,
    } = start(Setup::new().smtp(), "max_per_conversation = 1");
    let thread_id = proxy.create_thread(SITE);

    let first = lead_args("Ada Lovelace", "ada@example.net", "First");
    let stream = proxy.send_message(SITE, &thread_id, &tool_message(&[(LEAD_TOOL, &first)], ""));
    assert_continued(&stream, &[&sent("ada@example.net")], "first lead");

    let second = lead_args("Ada Again", "ada.again@example.net", "Second");
    let stream = proxy.send_message(SITE, &thread_id, &tool_message(&[(LEAD_TOOL, &second)], ""));
    let cap = "The message was not sent: this conversation has already sent the most messages \
               allowed (1). Tell the visitor the team has their earlier message and will be \
               in touch; do not call the tool again in this conversation.";
    assert_continued(&stream, &[cap], "second lead");

    thread::sleep(Duration::from_millis(1000));
    let received = smtp.received();
    assert_eq!(received.len(), 1, "only the first lead is e-mailed");
    assert_eq!(
        received[0].header("Reply-To").as_deref(),
        Some("\"Ada Lovelace\" <ada@example.net>")
    );
    let records = journal(&proxy.working_dir());
    assert_eq!(
        records_of_type(&records, "lead").len(),
        1,
        "the refused lead is not journaled: {records:?}"
    );

    // The cap is per conversation: another thread may still send.
    let other = proxy.create_thread(SITE);
    let third = lead_args("Grace Hopper", "grace@example.org", "Third");
    let stream = proxy.send_message(SITE, &other, &tool_message(&[(LEAD_TOOL, &third)], ""));
    assert_continued(&stream, &[&sent("grace@example.org")], "other thread");
    assert_eq!(smtp.received().len(), 2);
}

#[test]
fn tool_rounds_beyond_the_limit_end_with_an_error_event() {
    let Rig {
        stub,
        smtp: _smtp,
        proxy,
    } = start(Setup::new().smtp(), "max_tool_rounds = 2");
    let thread_id = proxy.create_thread(SITE);
    stub.clear_requests();

    let message = tool_message(&[("lookupWeather", "{}")], "[stub:rounds=5]");
    let stream = proxy.send_message(SITE, &thread_id, &message);
    let text = stream.text();
    assert_eq!(stream.status, 200, "{text}");
    assert_eq!(stream.ending, Ending::Complete, "{text}");
    let events = stream.events();
    let names = event_names(&events);

    // Two rounds answered, the third request for tools refused.
    assert_eq!(
        names
            .iter()
            .filter(|n| **n == "thread.run.requires_action")
            .count(),
        3,
        "{names:?}"
    );
    assert_eq!(
        submissions(&stub).len(),
        2,
        "max_tool_rounds = 2 submissions"
    );
    let last = events.last().expect("events");
    assert_eq!(last.name(), "error", "{names:?}");
    assert_eq!(
        last.json()["error"]["code"],
        json!("tool_rounds_exceeded"),
        "{}",
        last.data
    );
    assert!(
        last.json()["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{}",
        last.data
    );
    assert!(
        !names.contains(&"done"),
        "no done may precede the final error: {names:?}"
    );
}
