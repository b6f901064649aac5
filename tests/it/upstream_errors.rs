//! What the widget sees when the upstream misbehaves: error statuses mapped before the stream
//! starts (without echoing the upstream's answer), failures in the middle of a stream, runs that
//! end badly, a thread that is busy, and no request that hangs.

use std::time::{Duration, Instant};

use crate::harness::*;

/// A valid-looking thread id for routes that fail before the thread matters (posted in a
/// genuine handle, so the proxy lets it through).
const SOME_THREAD: &str = "thread_abc123";

/// Any answer, error or stream, must arrive within this (the configured upstream timeouts
/// are 1.5 s).
const PROMPT: Duration = Duration::from_secs(8);

/// A proxy whose tenant A uses one of the stub's special keys; tenant B stays healthy.
fn start_with_key_a(key_a: &str) -> (Stub, Proxy) {
    let stub = Stub::start();
    let proxy = Proxy::start_with_toml(&two_tenant_toml_with_key_a(&stub.base_url(), key_a));
    (stub, proxy)
}

fn assert_mapped(resp: &Resp, status: u16, code: &str, context: &str) {
    resp.assert_error(status, code);
    resp.assert_no_upstream_leak();
    assert_acao(&resp.headers, ORIGIN_A, context);
}

#[test]
fn upstream_401_and_403_become_502_upstream_auth_failed() {
    for key in ["sk-stub-401", "sk-stub-403"] {
        let (_stub, proxy) = start_with_key_a(key);
        let resp = proxy.try_create_thread(ORIGIN_A);
        assert_mapped(&resp, 502, "upstream_auth_failed", key);
        let resp =
            proxy.try_post_message(ORIGIN_A, &proxy.mint_handle("tenant-a", SOME_THREAD), "hi");
        assert_mapped(&resp, 502, "upstream_auth_failed", key);
        assert!(
            !resp.body.contains(key),
            "the key appears in the answer: {}",
            resp.body
        );

        // The other tenant, with a good key, is unaffected.
        let resp = proxy.try_create_thread(ORIGIN_B);
        assert_eq!(resp.status, 200, "{key}: tenant B: {}", resp.body);
    }
}

#[test]
fn upstream_429_becomes_429_with_its_retry_after() {
    let (_stub, proxy) = start_with_key_a("sk-stub-429");
    for resp in [
        proxy.try_create_thread(ORIGIN_A),
        proxy.try_post_message(ORIGIN_A, &proxy.mint_handle("tenant-a", SOME_THREAD), "hi"),
    ] {
        assert_mapped(&resp, 429, "rate_limited", "429");
        assert_eq!(resp.header("retry-after"), Some("7"));
    }
}

#[test]
fn upstream_500_becomes_502_upstream_error() {
    let (_stub, proxy) = start_with_key_a("sk-stub-500");
    for resp in [
        proxy.try_create_thread(ORIGIN_A),
        proxy.try_post_message(ORIGIN_A, &proxy.mint_handle("tenant-a", SOME_THREAD), "hi"),
    ] {
        assert_mapped(&resp, 502, "upstream_error", "500");
    }
}

#[test]
fn refused_upstream_becomes_502_upstream_unreachable() {
    let closed = free_port();
    let proxy = Proxy::start_with_toml(&two_tenant_toml(&format!("http://127.0.0.1:{closed}/v1")));
    for resp in [
        proxy.try_create_thread(ORIGIN_A),
        proxy.try_post_message(ORIGIN_A, &proxy.mint_handle("tenant-a", SOME_THREAD), "hi"),
    ] {
        assert_mapped(&resp, 502, "upstream_unreachable", "refused");
    }
}

#[test]
fn silent_upstream_becomes_504_upstream_timeout() {
    let (_stub, proxy) = start_with_key_a("sk-stub-hang");
    let started = Instant::now();
    let resp = proxy.try_create_thread(ORIGIN_A);
    assert!(
        started.elapsed() < PROMPT,
        "create-thread took {:?}",
        started.elapsed()
    );
    assert_mapped(&resp, 504, "upstream_timeout", "hang");

    let started = Instant::now();
    let resp = proxy.try_post_message(ORIGIN_A, &proxy.mint_handle("tenant-a", SOME_THREAD), "hi");
    assert!(
        started.elapsed() < PROMPT,
        "process-message took {:?}",
        started.elapsed()
    );
    assert_mapped(&resp, 504, "upstream_timeout", "hang");
}

#[test]
fn unknown_thread_becomes_404_thread_not_found() {
    let (_stub, proxy) = start_pair();
    let handle = proxy.mint_handle("tenant-a", "thread_doesnotexist0");
    let resp = proxy.try_post_message(ORIGIN_A, &handle, "hi");
    assert_mapped(&resp, 404, "thread_not_found", "unknown thread");
    assert!(
        !resp.body.contains("No thread found"),
        "the upstream's message was echoed: {}",
        resp.body
    );
}

#[test]
fn a_second_message_during_an_active_run_is_409_run_active() {
    let (_stub, proxy) = start_pair();
    let thread_id = proxy.create_thread(ORIGIN_A);
    let first = proxy.open_message_stream(ORIGIN_A, &thread_id, "[stub:slow=300] a b c d e f");
    assert_eq!(first.status, 200);

    let second = proxy.try_post_message(ORIGIN_A, &thread_id, "me too");
    assert_mapped(&second, 409, "run_active", "second message");
    assert!(
        !second.body.contains("Can't add messages"),
        "the upstream's message was echoed: {}",
        second.body
    );

    // The first conversation is not disturbed.
    let first = first.read_response();
    assert_eq!(first.ending, Ending::Complete);
    assert_eq!(
        event_names(&first.events()).last().copied(),
        Some("done"),
        "{}",
        first.text()
    );

    // Once that run is over, the thread takes messages again.
    let mut last_status = 0;
    let accepted = eventually(Duration::from_secs(3), || {
        let stream = proxy.send_message(ORIGIN_A, &thread_id, "now?");
        last_status = stream.status;
        stream.status == 200
    });
    assert!(accepted, "after the run ended, a message got {last_status}");
}

/// The stream was accepted (200), then ends, promptly and cleanly, with a final well-formed
/// `event: error` whose data is a JSON error with a message. Returns the events before it.
fn assert_ends_with_error_event(stream: &Streamed, code: Option<&str>) -> Vec<SseEvent> {
    let text = stream.text();
    assert_eq!(stream.status, 200, "{text}");
    assert!(
        stream.duration() < PROMPT,
        "the stream took {:?} to end",
        stream.duration()
    );
    assert_eq!(
        stream.ending,
        Ending::Complete,
        "the response must be ended properly after the error event: {text:?}"
    );
    assert!(
        text.ends_with("\n\n") || text.ends_with("\r\n\r\n"),
        "the body must end with a complete event: {text:?}"
    );
    let mut events = stream.events();
    let last = events
        .pop()
        .unwrap_or_else(|| panic!("no events: {text:?}"));
    assert_eq!(
        last.name(),
        "error",
        "the final event must be `error`: {text:?}"
    );
    let error = last.json();
    assert!(
        error["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "the error event needs a message: {}",
        last.data
    );
    if let Some(code) = code {
        assert_eq!(error["error"]["code"], code, "{}", last.data);
        assert!(
            !last.data.contains("org-stub"),
            "upstream details in the error event: {}",
            last.data
        );
    }
    assert!(
        !event_names(&events).contains(&"done"),
        "an error must not follow a normal end: {text:?}"
    );
    events
}

#[test]
fn an_upstream_cut_mid_stream_ends_with_an_error_event() {
    let (_stub, proxy) = start_pair();
    let thread_id = proxy.create_thread(ORIGIN_A);
    let stream = proxy.send_message(ORIGIN_A, &thread_id, "[stub:cut] bye");
    let before = assert_ends_with_error_event(&stream, Some("upstream_stream_failed"));
    assert!(
        !before.is_empty(),
        "the events sent before the cut must reach the client"
    );
    assert_eq!(before[0].name(), "thread.run.created");
}

#[test]
fn an_upstream_error_event_ends_the_stream() {
    let (_stub, proxy) = start_pair();
    let thread_id = proxy.create_thread(ORIGIN_A);
    let stream = proxy.send_message(ORIGIN_A, &thread_id, "[stub:error_event] oops");
    let before = assert_ends_with_error_event(&stream, None);
    assert!(!before.is_empty());
    assert_eq!(before[0].name(), "thread.run.created");
}

#[test]
fn a_silent_stream_ends_with_an_error_event_after_the_idle_timeout() {
    let (_stub, proxy) = start_pair();
    let thread_id = proxy.create_thread(ORIGIN_A);
    let stream = proxy.send_message(ORIGIN_A, &thread_id, "[stub:hang_after=2] wait");
    let before = assert_ends_with_error_event(&stream, Some("upstream_stream_failed"));
    assert_eq!(
        event_names(&before),
        ["thread.run.created", "thread.run.queued"],
        "the two events sent before the silence must reach the client"
    );
    assert!(
        stream.duration() >= Duration::from_millis(1000),
        "the stream was ended after {:?}, before the idle timeout (1.5 s)",
        stream.duration()
    );
}

#[test]
fn failed_cancelled_and_expired_runs_end_the_stream() {
    let (_stub, proxy) = start_pair();
    for (directive, terminal) in [
        ("[stub:fail]", "thread.run.failed"),
        ("[stub:cancel]", "thread.run.cancelled"),
        ("[stub:expire]", "thread.run.expired"),
    ] {
        let thread_id = proxy.create_thread(ORIGIN_A);
        let stream = proxy.send_message(ORIGIN_A, &thread_id, &format!("{directive} go"));
        assert_eq!(stream.status, 200, "{directive}: {}", stream.text());
        assert!(
            stream.duration() < PROMPT,
            "{directive}: the stream took {:?}",
            stream.duration()
        );
        assert_eq!(stream.ending, Ending::Complete, "{directive}");
        let events = stream.events();
        let names = event_names(&events);
        assert!(
            names.len() >= 2 && names[names.len() - 2..] == [terminal, "done"],
            "{directive}: expected the stream to end with {terminal} and done: {names:?}"
        );
        if terminal == "thread.run.failed" {
            let run = events[events.len() - 2].json();
            assert_eq!(run["last_error"]["code"], "server_error");
        }
    }
}
