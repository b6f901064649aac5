//! Signed conversation handles and the limits of one conversation, through the real binary:
//! create-thread answers `<upstream id>.<token>`; process-message takes only a genuine,
//! unexpired handle of the calling tenant (404 `conversation_not_found` otherwise, nothing
//! sent upstream); the secret is configured or generated once and kept; a conversation takes
//! a bounded number of messages and one answer at a time, across a fleet sharing Redis; and
//! what the upstream is told (`max_completion_tokens`, `max_output_tokens`,
//! `safety_identifier`).

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};

use crate::harness::*;
use crate::redis_server::RedisServer;

/// A secret of exactly the minimum length (32 bytes).
const SECRET: &str = "correct-horse-battery-staple-32b";
const OTHER_SECRET: &str = "another-secret-of-thirty-two-byt";
const HOUR_MS: u64 = 3_600_000;

/// The standard two tenants with `limits` in a `[limits]` table.
fn with_limits(base: &str, limits: &str) -> String {
    format!("[limits]\n{limits}\n\n{}", two_tenant_toml(base))
}

fn session_secret(secret: &str) -> String {
    format!("session_secret = \"{secret}\"")
}

/// The token of `handle` (after its last `.`).
fn token(handle: &str) -> &str {
    handle.rsplit_once('.').expect("a handle").1
}

/// `handle` with the character at byte `at` replaced by another base64url character.
fn altered(handle: &str, at: usize) -> String {
    let mut bytes = handle.as_bytes().to_vec();
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).unwrap()
}

/// 24 bytes no key produced, as a token.
fn random_token() -> String {
    use std::hash::{BuildHasher, RandomState};
    let bytes: Vec<u8> = (0..3)
        .flat_map(|i: u64| RandomState::new().hash_one(i).to_be_bytes())
        .collect();
    URL_SAFE_NO_PAD.encode(bytes)
}

fn post(proxy: &Proxy, origin: &str, field: &str, handle: &str, message: &str) -> Resp {
    proxy
        .post(&format!("{PREFIX}/process-message"))
        .origin(origin)
        .json(&json!({field: handle, "message": message}))
        .send()
}

fn assert_not_found(resp: &Resp, origin: &str, context: &str) {
    assert_eq!(resp.status, 404, "{context}: {}", resp.body);
    resp.assert_error(404, "conversation_not_found");
    assert_acao(&resp.headers, origin, context);
}

fn assert_answered(stream: &Streamed, context: &str) {
    assert_eq!(stream.status, 200, "{context}: {}", stream.text());
    assert_eq!(stream.ending, Ending::Complete, "{context}");
    assert!(
        delta_text(&stream.events()).starts_with("You said:"),
        "{context}: {}",
        stream.text()
    );
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[test]
fn create_thread_answers_a_signed_handle_and_the_upstream_sees_only_its_id() {
    let (stub, proxy) = start_pair();
    let resp = proxy.try_create_thread(ORIGIN_A);
    assert_eq!(resp.status, 200, "{}", resp.body);
    let thread = resp.json();
    let handle = thread["id"].as_str().expect("id").to_string();
    assert_eq!(thread["thread_id"].as_str(), Some(handle.as_str()));
    let (id, token) = handle.rsplit_once('.').expect("<id>.<token>");
    assert!(id.starts_with("thread_"), "{handle}");
    assert_eq!(token.len(), 32, "{handle}");
    assert!(
        token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "base64url: {handle}"
    );
    // The rest of the thread object is the upstream's.
    assert_eq!(thread["object"], "thread");
    assert_eq!(thread["metadata"], json!({}));
    assert!(thread["created_at"].is_u64(), "{thread}");

    stub.clear_requests();
    assert_answered(&proxy.send_message(ORIGIN_A, &handle, "hi"), "the handle");
    let upstream = stub.requests();
    assert_eq!(upstream.len(), 2, "{upstream:?}");
    assert_eq!(upstream[0].path, format!("/v1/threads/{id}/messages"));
    assert_eq!(upstream[1].path, format!("/v1/threads/{id}/runs"));
    for request in &upstream {
        assert!(
            !request.body.contains(token) && !request.path.contains(token),
            "the handle's token went upstream: {request:?}"
        );
    }
}

#[test]
fn forged_tampered_raw_and_other_tenants_handles_are_404_and_nothing_goes_upstream() {
    let (stub, proxy) = start_pair();
    let handle_a = proxy.create_thread(ORIGIN_A);
    let handle_b = proxy.create_thread(ORIGIN_B);
    let id_a = upstream_id(&handle_a).to_string();
    let token_at = id_a.len() + 1;
    let last = handle_a.len() - 1;
    let other_key = chatbot_proxy::handle::HandleKey::new(OTHER_SECRET.as_bytes()).unwrap();
    let now = now_ms() / 1000;
    stub.clear_requests();

    let cases = [
        ("the raw upstream id", id_a.clone()),
        ("a random token", format!("{id_a}.{}", random_token())),
        (
            "another key's signature",
            other_key.issue("tenant-a", &id_a, now),
        ),
        (
            "the first token character changed",
            altered(&handle_a, token_at),
        ),
        ("the last token character changed", altered(&handle_a, last)),
        (
            "a token character in the middle changed",
            altered(&handle_a, token_at + 12),
        ),
        ("a character of the id changed", altered(&handle_a, 9)),
        (
            "the token moved to another thread",
            format!("{}.{}", upstream_id(&handle_b), token(&handle_a)),
        ),
    ];
    for (what, handle) in &cases {
        assert_ne!(handle, &handle_a, "{what}: not altered");
        for field in ["threadId", "thread_id"] {
            let resp = post(&proxy, ORIGIN_A, field, handle, "hi");
            assert_not_found(&resp, ORIGIN_A, &format!("{what} ({field}): {handle}"));
        }
    }
    // Each tenant's handle is refused by the other.
    let resp = post(&proxy, ORIGIN_B, "threadId", &handle_a, "hi");
    assert_not_found(&resp, ORIGIN_B, "tenant A's handle from tenant B's site");
    let resp = post(&proxy, ORIGIN_A, "threadId", &handle_b, "hi");
    assert_not_found(&resp, ORIGIN_A, "tenant B's handle from tenant A's site");
    stub.assert_no_requests("refused handles");

    // The genuine handles work, from any site of their own tenant.
    assert_answered(&proxy.send_message(ORIGIN_A_SUB, &handle_a, "hi"), "A");
    assert_answered(&proxy.send_message(ORIGIN_B, &handle_b, "hi"), "B");
}

#[test]
fn an_expired_handle_is_404_and_nothing_goes_upstream() {
    let stub = Stub::start();
    let clock_dir = tempfile::tempdir().unwrap();
    let clock = clock_dir.path().join("clock");
    let start = now_ms();
    std::fs::write(&clock, start.to_string()).unwrap();
    let proxy = Proxy::launch()
        .toml(&two_tenant_toml(&stub.base_url()))
        .env("CHATBOT_PROXY_TEST_CLOCK_FILE", clock.to_str().unwrap())
        .start();
    let handle = proxy.create_thread(ORIGIN_A);

    // 23 hours on, within the default 24 h, it still works.
    std::fs::write(&clock, (start + 23 * HOUR_MS).to_string()).unwrap();
    assert_answered(&proxy.send_message(ORIGIN_A, &handle, "hi"), "after 23 h");

    // 25 hours on it has expired.
    std::fs::write(&clock, (start + 25 * HOUR_MS).to_string()).unwrap();
    stub.clear_requests();
    let resp = post(&proxy, ORIGIN_A, "threadId", &handle, "hi");
    assert_not_found(&resp, ORIGIN_A, "after 25 h");
    stub.assert_no_requests("an expired handle");

    // A handle issued then lives its own 24 hours.
    let fresh = proxy.create_thread(ORIGIN_A);
    assert_answered(
        &proxy.send_message(ORIGIN_A, &fresh, "hi"),
        "a fresh handle",
    );
}

#[test]
fn the_generated_secret_is_private_and_survives_a_restart() {
    let stub = Stub::start();
    let leads = tempfile::tempdir().unwrap();
    let toml = format!(
        "{}\n[leads]\ndir = \"{}\"\n",
        two_tenant_toml(&stub.base_url()),
        leads.path().display()
    );
    let first = Proxy::start_with_toml(&toml);
    let handle = first.create_thread(ORIGIN_A);
    let path = leads.path().join("session.key");
    let secret = std::fs::read_to_string(&path).expect("session.key in the leads directory");
    let secret = secret.trim();
    assert_eq!(secret.len(), 64, "32 random bytes as hex");
    assert!(secret.bytes().all(|b| b.is_ascii_hexdigit()), "hex");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "session.key mode {mode:o}");
    let logs = first.logs();
    assert!(logs.contains("session.key"), "{logs}");
    assert!(!logs.contains(secret), "the secret is in the log:\n{logs}");
    drop(first);

    let second = Proxy::start_with_toml(&toml);
    assert_answered(
        &second.send_message(ORIGIN_A, &handle, "still mine?"),
        "a handle from before the restart",
    );
    assert_eq!(
        std::fs::read_to_string(&path).unwrap().trim(),
        secret,
        "the secret is read again, not replaced"
    );
    assert!(!second.logs().contains(secret), "{}", second.logs());

    // Another leads directory has another secret: the handle means nothing there.
    let elsewhere = Proxy::start_with_toml(&two_tenant_toml(&stub.base_url()));
    let resp = post(&elsewhere, ORIGIN_A, "threadId", &handle, "hi");
    assert_not_found(&resp, ORIGIN_A, "another secret");
}

/// A proxy in environment mode for `shop.example.com` (tenant A), with `SESSION_SECRET`.
fn env_proxy(stub: &Stub, secret: &str) -> Proxy {
    Proxy::launch()
        .env("DOMAINS", r#"["shop.example.com"]"#)
        .env("OPENAI_API_KEYS", &format!(r#"["{KEY_A}"]"#))
        .env("ASSISTANT_IDS", &format!(r#"["{ASSISTANT_A}"]"#))
        .env("OPENAI_BASE_URL", &stub.base_url())
        .env("SESSION_SECRET", secret)
        .start()
}

#[test]
fn proxies_sharing_session_secret_accept_each_others_handles() {
    let stub = Stub::start();
    let one = env_proxy(&stub, SECRET);
    let two = env_proxy(&stub, SECRET);
    let from_one = one.create_thread(ORIGIN_A);
    let from_two = two.create_thread(ORIGIN_A);
    assert_answered(
        &two.send_message(ORIGIN_A, &from_one, "hi"),
        "one's handle at two",
    );
    assert_answered(
        &one.send_message(ORIGIN_A, &from_two, "hi"),
        "two's handle at one",
    );

    let stranger = env_proxy(&stub, OTHER_SECRET);
    stub.clear_requests();
    for handle in [&from_one, &from_two] {
        let resp = post(&stranger, ORIGIN_A, "threadId", handle, "hi");
        assert_not_found(&resp, ORIGIN_A, "another SESSION_SECRET");
    }
    stub.assert_no_requests("handles of another secret");
    for proxy in [&one, &two, &stranger] {
        assert!(!proxy.logs().contains(SECRET), "{}", proxy.logs());
        assert!(!proxy.logs().contains(OTHER_SECRET), "{}", proxy.logs());
    }
    let made = std::fs::read_dir(one.working_dir().join("data"))
        .map(|dir| dir.flatten().any(|e| e.file_name() == "session.key"))
        .unwrap_or(false);
    assert!(!made, "with SESSION_SECRET no secret is generated");
}

#[test]
fn a_short_session_secret_stops_start_up_naming_the_key_not_the_value() {
    let short = "only-thirty-one-bytes-long-0000";
    assert_eq!(short.len(), 31);
    let env = || {
        Proxy::launch()
            .env("DOMAINS", r#"["shop.example.com"]"#)
            .env("OPENAI_API_KEYS", r#"["sk-short-secret-test"]"#)
            .env("ASSISTANT_IDS", r#"["asst_short"]"#)
            .env("SESSION_SECRET", short)
    };
    for exited in [env().run_expecting_exit(), env().check()] {
        assert_ne!(exited.code, Some(0), "{}", exited.output);
        assert!(
            exited
                .output
                .contains("SESSION_SECRET: the secret is 31 bytes long"),
            "{}",
            exited.output
        );
        assert!(
            exited.output.contains("at least 32 bytes"),
            "{}",
            exited.output
        );
        assert!(!exited.output.contains(short), "{}", exited.output);
    }

    let toml = with_limits("http://127.0.0.1:9/v1", &session_secret(short));
    let exited = Proxy::launch().toml(&toml).check();
    assert_eq!(exited.code, Some(1), "{}", exited.output);
    assert!(
        exited
            .output
            .contains("limits.session_secret: the secret is 31 bytes"),
        "{}",
        exited.output
    );
    assert!(!exited.output.contains(short), "{}", exited.output);
}

#[test]
fn a_conversation_takes_max_messages_then_429_until_it_expires() {
    let stub = Stub::start();
    let toml = with_limits(&stub.base_url(), "max_messages_per_conversation = 2");
    let proxy = Proxy::start_with_toml(&toml);
    let handle = proxy.create_thread(ORIGIN_A);
    assert_answered(&proxy.send_message(ORIGIN_A, &handle, "one"), "first");
    assert_answered(&proxy.send_message(ORIGIN_A, &handle, "two"), "second");

    stub.clear_requests();
    let third = post(&proxy, ORIGIN_A, "threadId", &handle, "three");
    third.assert_error(429, "rate_limited");
    assert_acao(&third.headers, ORIGIN_A, "429");
    let retry_after: u64 = third
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("Retry-After in seconds: {:?}", third.headers));
    assert!(
        (24 * 3600 - 600..=24 * 3600).contains(&retry_after),
        "the conversation's remaining lifetime: {retry_after}"
    );
    assert!(third.body.contains("limit of 2 messages"), "{}", third.body);
    stub.assert_no_requests("a message over the cap");

    // Another conversation has its own count.
    let other = proxy.create_thread(ORIGIN_A);
    assert_answered(
        &proxy.send_message(ORIGIN_A, &other, "hi"),
        "another conversation",
    );
}

#[test]
fn one_answer_at_a_time_holds_across_two_proxies_sharing_redis() {
    let redis = RedisServer::start();
    let stub = Stub::start();
    let limits = format!(
        "{}\nredis_url = \"{}\"",
        session_secret(SECRET),
        redis.url()
    );
    let toml = with_limits(&stub.base_url(), &limits);
    let one = Proxy::start_with_toml(&toml);
    let two = Proxy::start_with_toml(&toml);
    let handle = one.create_thread(ORIGIN_A);
    let id = upstream_id(&handle).to_string();

    let first = one.open_message_stream(ORIGIN_A, &handle, "[stub:slow=200] a b c d e f");
    assert_eq!(first.status, 200);
    let locks = redis.keys("chatbot-proxy:lock:*");
    assert_eq!(
        locks,
        [format!("chatbot-proxy:lock:conv:tenant-a:{id}")],
        "the lock is in Redis"
    );
    stub.clear_requests();
    let second = post(&two, ORIGIN_A, "threadId", &handle, "me too");
    second.assert_error(409, "run_active");
    assert_acao(&second.headers, ORIGIN_A, "409");
    stub.assert_no_requests("the other proxy knew from Redis");

    let first = first.read_response();
    assert_eq!(first.ending, Ending::Complete);
    assert_eq!(delta_text(&first.events()), "You said: a b c d e f");
    // The lock is gone before the stream's end reaches the browser.
    assert_answered(
        &two.send_message(ORIGIN_A, &handle, "now"),
        "after the answer",
    );
    let count = format!("chatbot-proxy:n:conv:tenant-a:{id}");
    assert_eq!(
        redis.command(&["GET", &count]),
        crate::redis_server::Reply::Bulk(Some("2".into())),
        "both proxies count the conversation's messages in Redis"
    );
    let ttl = redis.int(&["PTTL", &count]);
    assert!(
        ttl > 23 * HOUR_MS as i64 && ttl <= 24 * HOUR_MS as i64,
        "the count lives as long as the conversation: {ttl} ms"
    );
}

/// Tenant A (Assistants) with `max_output_tokens`, tenant B without, and a Responses tenant.
fn output_limits_toml(base: &str) -> String {
    format!(
        r#"[upstream]
base_url = "{base}"

[[tenants]]
name = "tenant-a"
domains = ["shop.example.com"]
api_key = "{KEY_A}"
assistant_id = "{ASSISTANT_A}"
max_output_tokens = 300

[[tenants]]
name = "tenant-b"
domains = ["b-tenant.test"]
api_key = "{KEY_B}"
assistant_id = "{ASSISTANT_B}"

[[tenants]]
name = "bistro"
domains = ["bistro.example"]
api_key = "sk-bistro"
model = "gpt-5.4"
max_output_tokens = 200
"#
    )
}

const WEATHER: &str =
    r#"[stub:tool_calls=[{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}]] weather?"#;

/// Hex SHA-256 of `text`, computed here rather than by the code under test.
fn sha256_hex(text: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, text.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn output_limits_and_the_safety_identifier_reach_the_upstream() {
    let stub = Stub::start();
    let proxy = Proxy::start_with_toml(&output_limits_toml(&stub.base_url()));

    // Assistants: the run carries max_completion_tokens; the message and the tool outputs do
    // not take it.
    let handle = proxy.create_thread(ORIGIN_A);
    stub.clear_requests();
    let stream = proxy.send_message(ORIGIN_A, &handle, WEATHER);
    assert_eq!(stream.status, 200, "{}", stream.text());
    let sent = stub.requests();
    let kinds: Vec<&str> = sent
        .iter()
        .map(|r| r.path.rsplit('/').next().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["messages", "runs", "submit_tool_outputs"],
        "{sent:?}"
    );
    assert_eq!(sent[1].json()["max_completion_tokens"], 300);
    for request in [&sent[0], &sent[2]] {
        let body = request.json();
        assert!(body.get("max_completion_tokens").is_none(), "{body}");
    }
    for request in &sent {
        assert!(
            request.json().get("safety_identifier").is_none(),
            "{request:?}"
        );
    }
    // A tenant without the setting sends none.
    let handle_b = proxy.create_thread(ORIGIN_B);
    stub.clear_requests();
    assert_answered(&proxy.send_message(ORIGIN_B, &handle_b, "hi"), "tenant B");
    let run = stub.requests()[1].json();
    assert_eq!(run, json!({"assistant_id": ASSISTANT_B, "stream": true}));

    // Responses: every request of the turn, the continuation included, carries the limit and
    // the visitor's identifier: the hash of the handle, never the handle.
    let origin = "https://bistro.example";
    let mut identifiers = BTreeSet::new();
    for _ in 0..2 {
        let conv = proxy.create_thread(origin);
        stub.clear_requests();
        let stream = proxy.send_message(origin, &conv, WEATHER);
        assert_eq!(stream.status, 200, "{}", stream.text());
        let responses: Vec<Value> = stub
            .requests()
            .iter()
            .filter(|r| r.path == "/v1/responses")
            .map(StubRequest::json)
            .collect();
        assert_eq!(responses.len(), 2, "the turn and its continuation");
        for body in &responses {
            assert_eq!(body["max_output_tokens"], 200, "{body}");
            assert_eq!(body["conversation"], upstream_id(&conv), "{body}");
            let identifier = body["safety_identifier"]
                .as_str()
                .expect("safety_identifier");
            assert_eq!(identifier, sha256_hex(&conv));
            assert!(identifier.len() <= 64);
            assert!(
                !identifier.contains(&conv) && !identifier.contains(token(&conv)),
                "{identifier}"
            );
            assert!(
                !body.to_string().contains(&conv),
                "the handle went upstream: {body}"
            );
            identifiers.insert(identifier.to_string());
        }
    }
    assert_eq!(identifiers.len(), 2, "one identifier per conversation");
}
