//! Cost control through the real binary: daily token budgets per tenant (`daily_token_budget`,
//! `DAILY_TOKEN_BUDGETS`) counted from the usage in the upstream's terminal events, tool-call
//! continuations included and a run's usage counted once; 429 `budget_exhausted` with
//! `Retry-After` until midnight UTC (on the file clock of `CHATBOT_PROXY_TEST_CLOCK_FILE`),
//! served again after midnight, other tenants unaffected; the token and time-to-first-token
//! metrics; and upstream work cancelled when nobody will read it (a visitor who leaves, an
//! answer past `max_tool_rounds`), as the stub sees it.
//!
//! Token counts are predicted from the stub's documented counting (stub/src/lib.rs, "Token
//! usage"): an Assistants stream adds 20 + the message's words of prompt, and 8 per function
//! call or one per word delta of completion, to its run's usage; a response reports its own.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::harness::*;

/// 2024-03-01T00:00:00Z, in unix milliseconds.
const DAY: u64 = 1_709_251_200_000;
const DAY_MS: u64 = 86_400_000;
/// 23:59:00 UTC on `DAY`: one minute before the budgets reset.
const A_MINUTE_TO_MIDNIGHT: u64 = DAY + DAY_MS - 60_000;
/// 00:00:05 UTC the next day.
const JUST_AFTER_MIDNIGHT: u64 = DAY + DAY_MS + 5_000;

/// `hi there`: 20 + 2 prompt tokens, and `You said: hi there` is 4 word deltas.
const HI: &str = "hi there";
const HI_INPUT: u64 = 22;
const HI_OUTPUT: u64 = 4;

/// The Responses tenant.
const ORIGIN_R: &str = "https://bistro.example";

/// A clock file the proxy reads its time from.
struct ClockFile {
    dir: tempfile::TempDir,
}

impl ClockFile {
    fn at(unix_ms: u64) -> ClockFile {
        let clock = ClockFile {
            dir: tempfile::tempdir().expect("tempdir"),
        };
        clock.set(unix_ms);
        clock
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("now")
    }

    /// Moves the proxy's time; written whole (a rename), so it never reads half a number.
    fn set(&self, unix_ms: u64) {
        let next = self.dir.path().join("next");
        std::fs::write(&next, unix_ms.to_string()).expect("write the clock");
        std::fs::rename(&next, self.path()).expect("move the clock");
    }
}

/// Tenant A (Assistants) with `budget_a` tokens a day, tenant B (Assistants) with none, the
/// bistro (Responses) with none; the metrics endpoint on `metrics_port`.
fn toml(stub: &Stub, metrics_port: u16, budget_a: u64, leads: &str) -> String {
    format!(
        r#"[server]
metrics_listen = "127.0.0.1:{metrics_port}"

[upstream]
base_url = "{base}"
connect_timeout_ms = 1000
first_byte_timeout_ms = 1500
idle_timeout_ms = 1500

[leads]
{leads}

[[tenants]]
name = "tenant-a"
domains = ["shop.example.com"]
api_key = "{KEY_A}"
assistant_id = "{ASSISTANT_A}"
daily_token_budget = {budget_a}

[[tenants]]
name = "tenant-b"
domains = ["b-tenant.test"]
api_key = "{KEY_B}"
assistant_id = "{ASSISTANT_B}"

[[tenants]]
name = "bistro"
domains = ["bistro.example"]
api_key = "sk-bistro-responses"
model = "gpt-5.4"
"#,
        base = stub.base_url()
    )
}

/// A stub and a proxy on `clock`, tenant A's budget `budget_a`; and the metrics port.
fn start(clock: &Path, budget_a: u64, leads: &str) -> (Stub, Proxy, u16) {
    let stub = Stub::start();
    let metrics_port = free_port();
    let proxy = Proxy::launch()
        .toml(&toml(&stub, metrics_port, budget_a, leads))
        .env("CHATBOT_PROXY_TEST_CLOCK_FILE", clock.to_str().unwrap())
        .start();
    (stub, proxy, metrics_port)
}

/// The answer to `message` in a new conversation of `origin`, asserted complete.
fn answer(proxy: &Proxy, origin: &str, message: &str) -> Streamed {
    let thread = proxy.create_thread(origin);
    let stream = proxy.send_message(origin, &thread, message);
    assert_eq!(stream.status, 200, "{message}: {}", stream.text());
    assert!(
        !stream.text().contains("event: error"),
        "{message}: the answer failed: {}",
        stream.text()
    );
    stream
}

/// The value of the series named exactly `series` in a scrape of `port`, if present.
fn metric(port: u16, series: &str) -> Option<f64> {
    let scrape = Req::new("GET", &format!("http://127.0.0.1:{port}/metrics")).send();
    assert_eq!(scrape.status, 200, "GET /metrics: {}", scrape.body);
    scrape.body.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}

fn tokens(port: u16, tenant: &str, kind: &str) -> Option<f64> {
    metric(
        port,
        &format!(r#"chatbot_proxy_tokens_total{{tenant="{tenant}",type="{kind}"}}"#),
    )
}

/// Asserts a 429 `budget_exhausted` with `Retry-After: retry_after`, and that nothing went
/// upstream for it.
fn assert_refused(stub: &Stub, resp: &Resp, retry_after: &str, context: &str) {
    resp.assert_error(429, "budget_exhausted");
    assert_eq!(resp.header("retry-after"), Some(retry_after), "{context}");
    stub.assert_no_requests(context);
}

#[test]
fn a_spent_budget_refuses_until_midnight_utc_and_spares_other_tenants() {
    let clock = ClockFile::at(A_MINUTE_TO_MIDNIGHT);
    // Two answers of 26 tokens: the first leaves 24 of 50, the second spends the rest.
    let (stub, proxy, metrics) = start(&clock.path(), 50, "");
    answer(&proxy, ORIGIN_A, HI);
    let thread = proxy.create_thread(ORIGIN_A);
    let stream = proxy.send_message(ORIGIN_A, &thread, HI);
    assert_eq!(
        stream.status,
        200,
        "still within the budget: {}",
        stream.text()
    );

    stub.clear_requests();
    let refused = proxy.try_post_message(ORIGIN_A, &thread, HI);
    assert_refused(&stub, &refused, "60", "a message over the budget");
    let refused = proxy.try_create_thread(ORIGIN_A);
    assert_refused(&stub, &refused, "60", "a conversation over the budget");

    // Tenant B has no budget and its own count.
    answer(&proxy, ORIGIN_B, HI);
    answer(&proxy, ORIGIN_B, HI);
    answer(&proxy, ORIGIN_B, HI);

    assert_eq!(
        tokens(metrics, "tenant-a", "input"),
        Some((2 * HI_INPUT) as f64)
    );
    assert_eq!(
        tokens(metrics, "tenant-a", "output"),
        Some((2 * HI_OUTPUT) as f64)
    );
    assert_eq!(
        tokens(metrics, "tenant-b", "input"),
        Some((3 * HI_INPUT) as f64)
    );

    // A new UTC day: tenant A is served again.
    clock.set(JUST_AFTER_MIDNIGHT);
    let thread = proxy.create_thread(ORIGIN_A);
    let stream = proxy.send_message(ORIGIN_A, &thread, HI);
    assert_eq!(stream.status, 200, "after midnight: {}", stream.text());
}

#[test]
fn a_tool_call_continuation_counts_and_a_run_is_counted_once() {
    let clock = ClockFile::at(DAY + 12 * 3_600_000);
    // The tool round alone (30 tokens) stays under 40; with the answer the run uses 66.
    let (stub, proxy, metrics) = start(&clock.path(), 40, "");
    let stream = answer(
        &proxy,
        ORIGIN_A,
        r#"look up [stub:tool_calls=[{"name":"lookup","arguments":"{}"}]]"#,
    );
    let events = stream.events();
    assert!(
        event_names(&events).contains(&"thread.run.requires_action"),
        "a tool round: {}",
        stream.text()
    );
    let deltas = events
        .iter()
        .filter(|e| e.name() == "thread.message.delta")
        .count() as f64;
    assert!(deltas > 0.0, "the continuation answered: {}", stream.text());
    // Prompt 22 in each of the two streams; 8 for the call, then one per word delta. The
    // run's final usage covers both streams: counting it on top of the first would say
    // 66 and 30.
    assert_eq!(tokens(metrics, "tenant-a", "input"), Some(44.0));
    assert_eq!(tokens(metrics, "tenant-a", "output"), Some(8.0 + deltas));

    stub.clear_requests();
    let refused = proxy.try_create_thread(ORIGIN_A);
    refused.assert_error(429, "budget_exhausted");
    let retry_after: u64 = refused
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("a Retry-After in seconds");
    assert_eq!(retry_after, 12 * 3600, "until midnight UTC");
    stub.assert_no_requests("over the budget");
}

#[test]
fn responses_usage_and_time_to_first_token_are_in_the_metrics() {
    let clock = ClockFile::at(DAY + 3_600_000);
    let (_stub, proxy, metrics) = start(&clock.path(), 1_000, "");
    answer(&proxy, ORIGIN_R, HI);
    assert_eq!(tokens(metrics, "bistro", "input"), Some(HI_INPUT as f64));
    assert_eq!(tokens(metrics, "bistro", "output"), Some(HI_OUTPUT as f64));
    answer(&proxy, ORIGIN_A, HI);
    for tenant in ["bistro", "tenant-a"] {
        let samples = metric(
            metrics,
            &format!(r#"chatbot_proxy_time_to_first_token_seconds_count{{tenant="{tenant}"}}"#),
        );
        assert_eq!(samples, Some(1.0), "{tenant}: one time to first token");
    }
}

#[test]
fn env_mode_reads_daily_token_budgets() {
    let clock = ClockFile::at(A_MINUTE_TO_MIDNIGHT);
    let stub = Stub::start();
    let proxy = Proxy::launch()
        .env("DOMAINS", r#"["shop.example.com", "b-tenant.test"]"#)
        .env("OPENAI_API_KEYS", &format!(r#"["{KEY_A}", "{KEY_B}"]"#))
        .env(
            "ASSISTANT_IDS",
            &format!(r#"["{ASSISTANT_A}", "{ASSISTANT_B}"]"#),
        )
        .env("OPENAI_BASE_URL", &stub.base_url())
        .env("DAILY_TOKEN_BUDGETS", "[1, 0]")
        .env(
            "CHATBOT_PROXY_TEST_CLOCK_FILE",
            clock.path().to_str().unwrap(),
        )
        .start();
    answer(&proxy, ORIGIN_A, HI);
    stub.clear_requests();
    assert_refused(
        &stub,
        &proxy.try_create_thread(ORIGIN_A),
        "60",
        "DAILY_TOKEN_BUDGETS[0] is spent",
    );
    answer(&proxy, ORIGIN_B, HI);
    answer(&proxy, ORIGIN_B, HI);
}

// ---------------------------------------------------------------------------------------------
// Cancelling what nobody reads
// ---------------------------------------------------------------------------------------------

/// 30 words at 200 ms an event: the stub would stream for about 8 s.
fn long_slow_message() -> String {
    let words: Vec<String> = (1..=30).map(|i| format!("w{i}")).collect();
    format!("[stub:slow=200] {}", words.join(" "))
}

/// Reads `conn` until the `thread.run.created` event has arrived; the run's id.
fn read_run_id(conn: &mut RawConn) -> String {
    let mut body = Vec::new();
    loop {
        match conn.next_chunk() {
            Piece::Data(chunk) => body.extend_from_slice(&chunk.bytes),
            Piece::End(ending, _) => panic!(
                "the stream ended ({ending:?}) before thread.run.created: {}",
                String::from_utf8_lossy(&body)
            ),
        }
        if let Some(created) = parse_sse(&body)
            .iter()
            .find(|e| e.name() == "thread.run.created")
        {
            return created.json()["id"].as_str().expect("run id").to_string();
        }
    }
}

/// Waits until the stub received `POST /v1/threads/{thread}/runs/{run}/cancel`.
fn assert_cancelled_upstream(stub: &Stub, thread: &str, run: &str) {
    // The upstream knows the thread by its own id, not by the handle the widget holds.
    let thread = upstream_id(thread);
    let path = format!("/v1/threads/{thread}/runs/{run}/cancel");
    let seen = eventually(Duration::from_secs(5), || {
        stub.requests()
            .iter()
            .any(|r| r.method == "POST" && r.path == path)
    });
    let sent: Vec<String> = stub
        .requests()
        .iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert!(seen, "the stub never received POST {path}; it got {sent:?}");
    let cancel = stub
        .requests()
        .into_iter()
        .find(|r| r.path == path)
        .unwrap();
    assert_eq!(
        cancel.header("authorization"),
        Some(format!("Bearer {KEY_A}").as_str()),
        "the cancel goes with the tenant's key"
    );
    assert_eq!(cancel.header("openai-beta"), Some("assistants=v2"));
    // The stub shows the run cancelled, not completed or still running.
    let run = Req::new(
        "GET",
        &format!("{}/threads/{thread}/runs/{run}", stub.base_url()),
    )
    .header("Authorization", &format!("Bearer {KEY_A}"))
    .header("OpenAI-Beta", "assistants=v2")
    .send();
    assert_eq!(run.json()["status"], "cancelled", "{}", run.body);
}

/// The conversation takes a new message: within moments, not once the run expires.
fn assert_free(proxy: &Proxy, thread: &str) {
    let mut last = None;
    let free = eventually(Duration::from_secs(5), || {
        let stream = proxy.send_message(ORIGIN_A, thread, HI);
        let ok = stream.status == 200 && !stream.text().contains("event: error");
        last = Some((stream.status, stream.text()));
        ok
    });
    assert!(free, "the conversation stays locked: {last:?}");
}

#[test]
fn a_visitor_who_leaves_mid_answer_cancels_the_run() {
    let clock = ClockFile::at(DAY + 3_600_000);
    let (stub, proxy, _metrics) = start(&clock.path(), 0, "");
    let thread = proxy.create_thread(ORIGIN_A);
    let mut conn = proxy.open_message_stream(ORIGIN_A, &thread, &long_slow_message());
    assert_eq!(conn.status, 200);
    let run = read_run_id(&mut conn);
    conn.abort();

    assert_cancelled_upstream(&stub, &thread, &run);
    assert_eq!(
        stub.wait_open_streams(0, Duration::from_secs(5)),
        0,
        "the upstream stream is closed once the run is cancelled"
    );
    let line = proxy.wait_for_log_lines(1, |l| l.contains("outcome=client_gone"));
    assert_eq!(line.len(), 1, "access line with outcome=client_gone");
    assert_free(&proxy, &thread);
}

#[test]
fn an_answer_past_the_tool_rounds_cancels_the_run() {
    let clock = ClockFile::at(DAY + 3_600_000);
    let (stub, proxy, _metrics) = start(&clock.path(), 0, "max_tool_rounds = 1");
    let thread = proxy.create_thread(ORIGIN_A);
    let stream = proxy.send_message(
        ORIGIN_A,
        &thread,
        r#"go [stub:tool_calls=[{"name":"lookup","arguments":"{}"}]] [stub:rounds=3]"#,
    );
    assert_eq!(stream.status, 200);
    let events = stream.events();
    let error = events
        .iter()
        .find(|e| e.name() == "error")
        .unwrap_or_else(|| panic!("no error event: {}", stream.text()));
    assert_eq!(error.json()["error"]["code"], "tool_rounds_exceeded");
    let run = events
        .iter()
        .find(|e| e.name() == "thread.run.created")
        .expect("thread.run.created")
        .json()["id"]
        .as_str()
        .unwrap()
        .to_string();

    // Left alone, the run would wait for tool outputs (and lock the thread) for 10 minutes.
    assert_cancelled_upstream(&stub, &thread, &run);
    assert_free(&proxy, &thread);
}

#[test]
fn a_visitor_who_leaves_a_response_closes_its_upstream_stream() {
    let clock = ClockFile::at(DAY + 3_600_000);
    let (stub, proxy, _metrics) = start(&clock.path(), 0, "");
    let conversation = proxy.create_thread(ORIGIN_R);
    let mut conn = proxy.open_message_stream(ORIGIN_R, &conversation, &long_slow_message());
    assert_eq!(conn.status, 200);
    match conn.next_chunk() {
        Piece::Data(chunk) => assert!(!chunk.bytes.is_empty()),
        Piece::End(ending, _) => panic!("the stream ended ({ending:?}) before the first event"),
    }
    assert_eq!(
        stub.wait_open_streams(1, Duration::from_secs(5)),
        1,
        "one response streams while the visitor reads"
    );
    conn.abort();

    assert_eq!(
        stub.wait_open_streams(0, Duration::from_secs(5)),
        0,
        "the upstream connection is closed when the visitor leaves"
    );
    assert!(
        stub.requests().iter().all(|r| !r.path.contains("cancel")),
        "a response is stopped by closing its stream, not by a cancel call"
    );
    // The conversation answers again.
    let stream = proxy.send_message(ORIGIN_R, &conversation, HI);
    assert_eq!(stream.status, 200, "{}", stream.text());
    assert!(
        event_names(&stream.events()).contains(&"response.completed"),
        "{}",
        stream.text()
    );
}
