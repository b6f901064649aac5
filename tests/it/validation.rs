//! Request validation at the edge: body size, JSON shape, message length, thread id format,
//! routes and methods. Every refusal is the contract's JSON error and reaches no upstream.

use crate::harness::*;
use serde_json::{json, Value};

fn process_message_path() -> String {
    format!("{PREFIX}/process-message")
}

fn post_raw_body(proxy: &Proxy, body: &[u8]) -> Resp {
    proxy
        .post(&process_message_path())
        .origin(ORIGIN_A)
        .body("application/json", body)
        .send()
}

fn post_json(proxy: &Proxy, body: &Value) -> Resp {
    proxy
        .post(&process_message_path())
        .origin(ORIGIN_A)
        .json(body)
        .send()
}

/// A process-message body of exactly `len` bytes (message of repeated 'x').
fn body_of_len(len: usize) -> Vec<u8> {
    let head = br#"{"threadId":"thread_abc123","message":""#;
    let tail = br#""}"#;
    let fill = len - head.len() - tail.len();
    let mut body = head.to_vec();
    body.extend(std::iter::repeat_n(b'x', fill));
    body.extend_from_slice(tail);
    assert_eq!(body.len(), len);
    body
}

fn raw_post(body: &[u8]) -> RawRequest {
    RawRequest::new("POST", &process_message_path())
        .header("Origin", ORIGIN_A)
        .body("application/json", body)
}

#[test]
fn a_body_over_32_kib_is_413() {
    let (stub, proxy) = start_pair();
    let resp = proxy.raw(&raw_post(&body_of_len(32 * 1024 + 1))).to_resp();
    resp.assert_error(413, "body_too_large");
    assert_acao(&resp.headers, ORIGIN_A, "413");

    let resp = proxy.raw(&raw_post(&body_of_len(200 * 1024))).to_resp();
    resp.assert_error(413, "body_too_large");
    stub.assert_no_requests("oversized bodies");
}

#[test]
fn a_body_of_exactly_32_kib_passes_the_size_check() {
    let (stub, proxy) = start_pair();
    // Not too large, but its message is far over 4,000 characters.
    let resp = proxy.raw(&raw_post(&body_of_len(32 * 1024))).to_resp();
    resp.assert_error(400, "message_too_long");
    stub.assert_no_requests("32 KiB body");
}

#[test]
fn a_chunked_body_over_the_limit_is_413() {
    let (stub, proxy) = start_pair();
    let req = raw_post(&body_of_len(40 * 1024)).chunked();
    let resp = proxy.raw(&req).to_resp();
    resp.assert_error(413, "body_too_large");
    stub.assert_no_requests("oversized chunked body");
}

#[test]
fn limits_come_from_the_configuration() {
    let stub = Stub::start();
    let toml = format!(
        "{}\n[limits]\nmax_body_bytes = 1024\nmax_message_chars = 10\n",
        two_tenant_toml(&stub.base_url())
    );
    let proxy = Proxy::start_with_toml(&toml);

    let resp = proxy.raw(&raw_post(&body_of_len(1025))).to_resp();
    resp.assert_error(413, "body_too_large");
    let resp = proxy.raw(&raw_post(&body_of_len(1024))).to_resp();
    resp.assert_error(400, "message_too_long");
    let resp = post_json(
        &proxy,
        &json!({"threadId": "thread_abc123", "message": "eleven char"}),
    );
    resp.assert_error(400, "message_too_long");
    stub.assert_no_requests("configured limits");

    // Ten characters (twenty bytes) is within the limit.
    let thread_id = proxy.create_thread(ORIGIN_A);
    let stream = proxy.send_message(ORIGIN_A, &thread_id, "éééééééééé");
    assert_eq!(stream.status, 200, "{}", stream.text());
}

#[test]
fn a_body_that_is_not_json_is_400_invalid_json() {
    let (stub, proxy) = start_pair();
    let cases: &[&[u8]] = &[
        b"",
        b"hello",
        b"{",
        b"{\"threadId\": \"thread_abc123\", \"message\": \"hi\"",
        b"threadId=thread_abc123&message=hi",
        b"\xff\xfe{}",
    ];
    for body in cases {
        let resp = post_raw_body(&proxy, body);
        assert_eq!(
            resp.status,
            400,
            "body {:?}: {}",
            String::from_utf8_lossy(body),
            resp.body
        );
        resp.assert_error(400, "invalid_json");
    }
    stub.assert_no_requests("non-JSON bodies");
}

#[test]
fn wrong_types_and_missing_fields_are_400_invalid_request() {
    let (stub, proxy) = start_pair();
    let cases = [
        json!(null),
        json!([]),
        json!("thread_abc123"),
        json!(42),
        json!({}),
        json!({"message": "hi"}),
        json!({"threadId": "thread_abc123"}),
        json!({"threadId": 42, "message": "hi"}),
        json!({"threadId": null, "message": "hi"}),
        json!({"threadId": ["thread_abc123"], "message": "hi"}),
        json!({"threadId": "thread_abc123", "message": 42}),
        json!({"threadId": "thread_abc123", "message": null}),
        json!({"threadId": "thread_abc123", "message": ["hi"]}),
        json!({"threadId": "thread_abc123", "message": {"text": "hi"}}),
        json!({"thread_id": "thread_abc123", "message": false}),
    ];
    for body in &cases {
        let resp = post_json(&proxy, body);
        assert_eq!(resp.status, 400, "body {body}: {}", resp.body);
        resp.assert_error(400, "invalid_request");
    }
    stub.assert_no_requests("badly typed bodies");
}

#[test]
fn an_empty_message_is_400_empty_message() {
    let (stub, proxy) = start_pair();
    for body in [
        json!({"threadId": "thread_abc123", "message": ""}),
        json!({"thread_id": "thread_abc123", "message": ""}),
    ] {
        let resp = post_json(&proxy, &body);
        resp.assert_error(400, "empty_message");
        assert_acao(&resp.headers, ORIGIN_A, "empty_message");
    }
    stub.assert_no_requests("empty messages");
}

#[test]
fn a_message_over_4000_characters_is_400_message_too_long() {
    let (stub, proxy) = start_pair();
    let resp = post_json(
        &proxy,
        &json!({"threadId": "thread_abc123", "message": "x".repeat(4001)}),
    );
    resp.assert_error(400, "message_too_long");
    let resp = post_json(
        &proxy,
        &json!({"threadId": "thread_abc123", "message": "é".repeat(4001)}),
    );
    resp.assert_error(400, "message_too_long");
    stub.assert_no_requests("long messages");
}

#[test]
fn the_message_limit_counts_characters_not_bytes() {
    let (stub, proxy) = start_pair();
    let thread_id = proxy.create_thread(ORIGIN_A);
    stub.clear_requests();
    // 4,000 characters, 8,000 bytes: within the limit.
    let message = "é".repeat(4000);
    let stream = proxy.send_message(ORIGIN_A, &thread_id, &message);
    assert_eq!(stream.status, 200, "{}", stream.text());
    let upstream = stub.requests();
    assert_eq!(
        upstream[0].json()["content"].as_str(),
        Some(message.as_str()),
        "the message must reach the upstream unchanged"
    );
}

#[test]
fn a_malformed_thread_id_is_400_invalid_thread_id() {
    let (stub, proxy) = start_pair();
    let too_long = format!("thread_{}", "a".repeat(65));
    let cases = [
        "",
        "thread_",
        "thread",
        "abc123",
        "run_abc123",
        "Thread_abc123",
        "thread_abc-123",
        "thread_abc_123",
        "thread_abc 123",
        "thread_abc123 ",
        " thread_abc123",
        "thread_abc123\n",
        "thread_../../assistants",
        "thread_abc/messages",
        "thread_abc?x=1",
        "thread_abc%2F",
        "thread_äbc",
        too_long.as_str(),
    ];
    for thread_id in cases {
        for field in ["threadId", "thread_id"] {
            let resp = post_json(&proxy, &json!({field: thread_id, "message": "hi"}));
            assert_eq!(
                resp.status, 400,
                "{field} {thread_id:?}: expected 400, got {}: {}",
                resp.status, resp.body
            );
            resp.assert_error(400, "invalid_thread_id");
        }
    }
    stub.assert_no_requests("malformed thread ids");
}

#[test]
fn a_well_formed_thread_id_of_64_characters_is_accepted() {
    let (stub, proxy) = start_pair();
    let longest = format!("thread_{}", "Ab9".repeat(21) + "Z");
    assert_eq!(longest.len(), "thread_".len() + 64);
    // In a genuine handle, it passes validation and reaches the upstream, which does not know it.
    let handle = proxy.mint_handle("tenant-a", &longest);
    let resp = post_json(&proxy, &json!({"threadId": handle, "message": "hi"}));
    resp.assert_error(404, "thread_not_found");
    let upstream = stub.requests();
    assert_eq!(upstream.len(), 1, "{upstream:?}");
    assert_eq!(upstream[0].path, format!("/v1/threads/{longest}/messages"));
}

#[test]
fn unknown_routes_are_404_and_wrong_methods_405() {
    let (stub, proxy) = start_pair();
    for path in [
        format!("{PREFIX}/nope"),
        format!("{PREFIX}/threads"),
        PREFIX.to_string(),
        "/v1/threads".to_string(),
        "/".to_string(),
    ] {
        let resp = proxy.get(&path).origin(ORIGIN_A).send();
        assert_eq!(resp.status, 404, "GET {path}: {}", resp.body);
        resp.assert_error(404, "not_found");
    }
    for (method, path) in [
        ("GET", process_message_path()),
        ("PUT", process_message_path()),
        ("DELETE", process_message_path()),
        ("PUT", format!("{PREFIX}/create-thread")),
        ("DELETE", format!("{PREFIX}/create-thread")),
    ] {
        let resp = proxy.request(method, &path).origin(ORIGIN_A).send();
        assert_eq!(resp.status, 405, "{method} {path}: {}", resp.body);
        resp.assert_error(405, "method_not_allowed");
    }
    stub.assert_no_requests("unknown routes and methods");
}

#[test]
fn a_request_that_is_not_http_gets_a_json_400_and_the_connection_closes() {
    let (stub, proxy) = start_pair();
    let cases: [&[u8]; 3] = [
        b"GARBAGE\r\n\r\n",
        b"POST /open-ai/process-message HTTP/1.1\r\nHost: x\r\nBad Header Name: 1\r\n\r\n",
        b"GET /open-ai/create-thread HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    ];
    for bytes in cases {
        let answer = RawConn::send_bytes(proxy.port, bytes).read_response();
        let what = String::from_utf8_lossy(bytes);
        answer.to_resp().assert_error(400, "bad_request");
        assert_eq!(answer.ending, Ending::Complete, "{what:?}");
        assert_eq!(
            answer.headers.get("connection"),
            Some("close"),
            "{what:?}: the connection is not reused after a request it could not read"
        );
    }
    let logs = proxy.logs();
    assert!(
        logs.contains("route=- tenant=- status=400"),
        "the refusal is in the access log: {logs}"
    );
    stub.assert_no_requests("requests that are not HTTP");
}
