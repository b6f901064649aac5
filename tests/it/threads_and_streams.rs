//! The happy paths: creating threads, posting a message and relaying the run's event stream,
//! with each tenant's own key and assistant, byte for byte and without buffering; and a client
//! that goes away mid-stream.

use std::time::Duration;

use crate::harness::*;
use serde_json::json;

/// The event sequence of a plain text run (assistants-create-run-stream.sse), with the
/// `thread.message.delta` events collapsed into one entry.
const TEXT_RUN_EVENTS: &[&str] = &[
    "thread.run.created",
    "thread.run.queued",
    "thread.run.in_progress",
    "thread.run.step.created",
    "thread.run.step.in_progress",
    "thread.message.created",
    "thread.message.in_progress",
    "thread.message.delta",
    "thread.message.completed",
    "thread.run.step.completed",
    "thread.run.completed",
    "done",
];

fn collapsed_names(events: &[SseEvent]) -> Vec<&str> {
    let mut names = event_names(events);
    names.dedup_by(|a, b| *a == "thread.message.delta" && *b == "thread.message.delta");
    names
}

fn assert_thread_object(resp: &Resp) {
    let content_type = resp.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("application/json"),
        "create-thread content-type {content_type:?}"
    );
    let thread = resp.json();
    let id = thread["id"].as_str().expect("thread id");
    assert!(
        upstream_id(id).starts_with("thread_") && upstream_id(id).len() > "thread_".len(),
        "unexpected thread id {id:?}"
    );
    assert_eq!(
        thread["thread_id"].as_str(),
        Some(id),
        "thread_id must equal id"
    );
    assert_eq!(thread["object"], "thread");
    assert!(thread["created_at"].is_u64(), "created_at: {thread}");
    assert_eq!(thread["metadata"], json!({}));
    resp.assert_no_upstream_leak();
}

#[test]
fn create_thread_returns_the_upstream_thread_plus_thread_id() {
    let (stub, proxy) = start_pair();
    let resp = proxy
        .get(&format!("{PREFIX}/create-thread"))
        .origin(ORIGIN_A)
        .send();
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert_thread_object(&resp);

    let upstream = stub.requests();
    assert_eq!(upstream.len(), 1, "{upstream:?}");
    assert_eq!(upstream[0].method, "POST");
    assert_eq!(upstream[0].path, "/v1/threads");
    assert_eq!(
        upstream[0].header("authorization"),
        Some(format!("Bearer {KEY_A}").as_str())
    );
    assert_eq!(upstream[0].header("openai-beta"), Some("assistants=v2"));
}

#[test]
fn create_thread_accepts_post_too() {
    let (stub, proxy) = start_pair();
    let resp = proxy
        .post(&format!("{PREFIX}/create-thread"))
        .origin(ORIGIN_B)
        .send();
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert_thread_object(&resp);
    let upstream = stub.requests();
    assert_eq!(upstream.len(), 1);
    assert_eq!(
        (upstream[0].method.as_str(), upstream[0].path.as_str()),
        ("POST", "/v1/threads")
    );
    assert_eq!(
        upstream[0].header("authorization"),
        Some(format!("Bearer {KEY_B}").as_str())
    );
}

#[test]
fn process_message_adds_the_message_then_streams_a_run() {
    let (stub, proxy) = start_pair();
    let thread_id = proxy.create_thread(ORIGIN_A);
    stub.clear_requests();

    let stream = proxy.send_message(ORIGIN_A, &thread_id, "hello there");
    assert_eq!(stream.status, 200, "{}", stream.text());
    let content_type = stream.headers.get("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("text/event-stream"),
        "content-type {content_type:?}"
    );
    assert_eq!(stream.headers.get("cache-control"), Some("no-cache"));
    assert_eq!(stream.headers.get("x-accel-buffering"), Some("no"));
    assert_no_upstream_leak(&stream.headers, "");
    assert_eq!(
        stream.ending,
        Ending::Complete,
        "the stream must end cleanly"
    );

    let events = stream.events();
    assert_eq!(
        collapsed_names(&events),
        TEXT_RUN_EVENTS,
        "{}",
        stream.text()
    );
    assert_eq!(delta_text(&events), "You said: hello there");
    assert_eq!(events.last().unwrap().data, "[DONE]");
    let run = events[0].json();
    assert_eq!(run["assistant_id"], ASSISTANT_A);
    assert_eq!(run["thread_id"].as_str(), Some(upstream_id(&thread_id)));

    let upstream = stub.requests();
    let calls: Vec<(&str, &str)> = upstream
        .iter()
        .map(|r| (r.method.as_str(), r.path.as_str()))
        .collect();
    let messages_path = format!("/v1/threads/{}/messages", upstream_id(&thread_id));
    let runs_path = format!("/v1/threads/{}/runs", upstream_id(&thread_id));
    assert_eq!(
        calls,
        [
            ("POST", messages_path.as_str()),
            ("POST", runs_path.as_str())
        ]
    );
    assert_eq!(
        upstream[0].json(),
        json!({"role": "user", "content": "hello there"})
    );
    assert_eq!(
        upstream[1].json(),
        json!({"assistant_id": ASSISTANT_A, "stream": true})
    );
    for call in &upstream {
        assert_eq!(
            call.header("authorization"),
            Some(format!("Bearer {KEY_A}").as_str()),
            "{} {}",
            call.method,
            call.path
        );
        assert_eq!(call.header("openai-beta"), Some("assistants=v2"));
    }
}

#[test]
fn thread_id_may_be_spelled_snake_case() {
    let (stub, proxy) = start_pair();
    let thread_id = proxy.create_thread(ORIGIN_B);
    stub.clear_requests();
    let req = RawRequest::new("POST", &format!("{PREFIX}/process-message"))
        .header("Origin", ORIGIN_B)
        .json(&json!({"thread_id": thread_id, "message": "snake"}));
    let stream = proxy.raw(&req);
    assert_eq!(stream.status, 200, "{}", stream.text());
    assert_eq!(
        collapsed_names(&stream.events()),
        TEXT_RUN_EVENTS,
        "{}",
        stream.text()
    );
    assert_eq!(delta_text(&stream.events()), "You said: snake");
    let upstream = stub.requests();
    assert_eq!(
        upstream[0].path,
        format!("/v1/threads/{}/messages", upstream_id(&thread_id))
    );
}

#[test]
fn each_tenant_uses_its_own_key_and_assistant() {
    let (stub, proxy) = start_pair();
    let rounds = [
        (ORIGIN_A, KEY_A, ASSISTANT_A),
        (ORIGIN_B, KEY_B, ASSISTANT_B),
        (ORIGIN_A_SUB, KEY_A, ASSISTANT_A),
        ("https://www.b-tenant.test", KEY_B, ASSISTANT_B),
    ];
    for (origin, key, assistant) in rounds {
        stub.clear_requests();
        let thread_id = proxy.create_thread(origin);
        let stream = proxy.send_message(origin, &thread_id, "which tenant am I");
        assert_eq!(stream.status, 200, "{origin}: {}", stream.text());
        assert_eq!(stream.events()[0].json()["assistant_id"], assistant);

        let upstream = stub.requests();
        assert_eq!(upstream.len(), 3, "{origin}: {upstream:?}");
        let other_key = if key == KEY_A { KEY_B } else { KEY_A };
        for call in &upstream {
            assert_eq!(
                call.header("authorization"),
                Some(format!("Bearer {key}").as_str()),
                "{origin}: {} {} used the wrong key",
                call.method,
                call.path
            );
            let everything = format!("{:?} {}", call.headers, call.body);
            assert!(
                !everything.contains(other_key),
                "{origin}: the other tenant's key appears upstream: {everything}"
            );
        }
        assert_eq!(upstream[2].json()["assistant_id"], assistant);
    }
}

#[test]
fn a_client_authorization_header_never_replaces_the_tenant_key() {
    let (stub, proxy) = start_pair();
    let resp = proxy
        .get(&format!("{PREFIX}/create-thread"))
        .origin(ORIGIN_B)
        .header("Authorization", "Bearer sk-client-attempt")
        .send();
    assert_eq!(resp.status, 200, "{}", resp.body);
    let thread_id = resp.json()["id"].as_str().unwrap().to_string();

    let req = RawRequest::new("POST", &format!("{PREFIX}/process-message"))
        .header("Origin", ORIGIN_B)
        .header("Authorization", "Bearer sk-client-attempt")
        .json(&json!({"threadId": thread_id, "message": "hi"}));
    let stream = proxy.raw(&req);
    assert_eq!(stream.status, 200, "{}", stream.text());

    let upstream = stub.requests();
    assert_eq!(upstream.len(), 3);
    for call in &upstream {
        assert_eq!(
            call.header("authorization"),
            Some(format!("Bearer {KEY_B}").as_str())
        );
        assert!(
            !format!("{:?}", call.headers).contains("sk-client-attempt"),
            "the client's credential was forwarded: {:?}",
            call.headers
        );
    }
}

/// The proxy's body must be exactly what the stub sends for the same message (up to the
/// generated ids and timestamps).
fn assert_passthrough(message: &str) -> Streamed {
    let (stub, proxy) = start_pair();
    let thread_id = proxy.create_thread(ORIGIN_A);
    let stream = proxy.send_message(ORIGIN_A, &thread_id, message);
    assert_eq!(stream.status, 200, "{}", stream.text());
    assert_eq!(stream.ending, Ending::Complete);
    let reference = stub.direct_run_stream(KEY_A, ASSISTANT_A, message);
    assert!(!reference.is_empty(), "the stub sent nothing");
    let got = normalize_stream(&stream.body);
    let want = normalize_stream(&reference);
    assert!(
        got == want,
        "the relayed stream differs from what the upstream sends\n--- relayed ---\n{got:?}\n--- upstream ---\n{want:?}"
    );
    stream
}

#[test]
fn the_stream_is_relayed_byte_for_byte() {
    let stream = assert_passthrough("relay me exactly");
    assert_eq!(
        collapsed_names(&stream.events()),
        TEXT_RUN_EVENTS,
        "{}",
        stream.text()
    );
}

#[test]
fn split_writes_and_crlf_line_ends_are_relayed_unchanged() {
    let stream = assert_passthrough("[stub:chunking=split] [stub:crlf] framing");
    assert!(
        stream.body.windows(2).any(|w| w == b"\r\n"),
        "the CRLF line ends did not survive: {:?}",
        stream.text()
    );
    assert_eq!(collapsed_names(&stream.events()), TEXT_RUN_EVENTS);
}

#[test]
fn events_are_delivered_as_the_upstream_sends_them() {
    let (_stub, proxy) = start_pair();
    let thread_id = proxy.create_thread(ORIGIN_A);
    let stream = proxy.send_message(ORIGIN_A, &thread_id, "[stub:slow=300] one two three");
    assert_eq!(stream.status, 200, "{}", stream.text());
    let events = stream.events();
    assert_eq!(
        collapsed_names(&events),
        TEXT_RUN_EVENTS,
        "{}",
        stream.text()
    );

    // The stub waits 300 ms between events, so it writes its last event at least
    // (events - 1) * 300 ms after its first. A relay that forwards each chunk on arrival
    // delivers the first event that long before the end of the response.
    assert_delivered_as_paced(&stream, events.len(), "thread.run.created");
}

#[test]
fn a_client_that_disconnects_releases_the_upstream_stream() {
    let (stub, proxy) = start_pair();
    let thread_id = proxy.create_thread(ORIGIN_A);
    // About 40 events at 300 ms: the stub would stream for 12 s if nobody hung up.
    let words = (1..=30)
        .map(|i| format!("w{i}"))
        .collect::<Vec<_>>()
        .join(" ");
    let mut conn =
        proxy.open_message_stream(ORIGIN_A, &thread_id, &format!("[stub:slow=300] {words}"));
    assert_eq!(conn.status, 200);
    match conn.next_chunk() {
        Piece::Data(chunk) => assert!(!chunk.bytes.is_empty()),
        Piece::End(ending, _) => panic!("the stream ended ({ending:?}) before the first event"),
    }
    assert_eq!(
        stub.wait_open_streams(1, Duration::from_secs(5)),
        1,
        "the stub should be writing exactly one stream while the client listens"
    );

    conn.abort();

    let left = stub.wait_open_streams(0, Duration::from_secs(5));
    assert_eq!(
        left, 0,
        "5 s after the client disconnected the upstream stream is still open"
    );

    // The proxy is unharmed and serves the next conversation.
    let thread_id = proxy.create_thread(ORIGIN_A);
    let stream = proxy.send_message(ORIGIN_A, &thread_id, "still there?");
    assert_eq!(stream.status, 200);
    assert_eq!(collapsed_names(&stream.events()), TEXT_RUN_EVENTS);
}
