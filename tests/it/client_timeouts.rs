//! Deadlines on the browser side, on real sockets: an idle keep-alive connection is closed, a
//! request header or body trickled in too slowly is cut at its total deadline (not per read),
//! and a browser that stops reading a stream is dropped, which frees the upstream stream and
//! the conversation. Each test sets the deadline it checks to one second.

use crate::harness::*;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

/// A stub and a proxy whose `[server]` table holds `server_keys` (and `extra` after the
/// standard two tenants' configuration).
fn start(server_keys: &str, extra: &str) -> (Stub, Proxy) {
    let stub = Stub::start();
    let toml = format!(
        "[server]\n{server_keys}\n\n{}\n{extra}",
        // A huge message takes the (debug-built) stub a while to start answering.
        two_tenant_toml(&stub.base_url()).replace(
            "first_byte_timeout_ms = 1500",
            "first_byte_timeout_ms = 30000"
        )
    );
    let proxy = Proxy::start_with_toml(&toml);
    (stub, proxy)
}

fn connect(proxy: &Proxy) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", proxy.port)).expect("connect to the proxy");
    stream.set_nodelay(true).unwrap();
    stream
}

/// Whether the server has closed `stream` (EOF or reset), looking for up to `wait`; bytes that
/// arrive meanwhile are appended to `seen`.
fn closed_within(stream: &mut TcpStream, wait: Duration, seen: &mut Vec<u8>) -> bool {
    let deadline = Instant::now() + wait;
    stream
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut buf = [0u8; 65536];
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return true,
        }
    }
    false
}

/// Reads one `GET /healthz` answer (it has a `Content-Length`) from a kept-alive connection.
fn read_health_answer(stream: &mut TcpStream) -> String {
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains(r#"{"status":"ok"}"#) {
        let n = stream.read(&mut buf).expect("read the health answer");
        assert!(
            n > 0,
            "closed before the answer: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

const HEALTH: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: proxy.test\r\n\r\n";

#[test]
fn an_idle_keepalive_connection_is_closed_after_the_keepalive_timeout() {
    let (_stub, proxy) = start("keepalive_timeout_seconds = 1", "");
    let mut conn = connect(&proxy);
    conn.write_all(HEALTH).unwrap();
    assert!(read_health_answer(&mut conn).starts_with("HTTP/1.1 200"));

    // Within the timeout the connection is reused...
    thread::sleep(Duration::from_millis(400));
    conn.write_all(HEALTH).unwrap();
    assert!(read_health_answer(&mut conn).starts_with("HTTP/1.1 200"));

    // ...and then it is closed once idle for the timeout, not kept forever.
    let idle_from = Instant::now();
    let mut rest = Vec::new();
    assert!(
        closed_within(&mut conn, Duration::from_secs(6), &mut rest),
        "an idle keep-alive connection was still open after 6 s"
    );
    assert!(
        idle_from.elapsed() >= Duration::from_millis(800),
        "closed after {:?}, before the 1 s keep-alive timeout",
        idle_from.elapsed()
    );
    assert!(rest.is_empty(), "nothing more is sent: {rest:?}");
}

#[test]
fn a_connection_that_never_sends_a_request_is_closed_too() {
    let (_stub, proxy) = start("keepalive_timeout_seconds = 1", "");
    let mut conn = connect(&proxy);
    let mut seen = Vec::new();
    assert!(closed_within(&mut conn, Duration::from_secs(6), &mut seen));
}

#[test]
fn a_header_trickled_in_is_cut_at_the_header_deadline_from_its_first_byte() {
    let (_stub, proxy) = start("request_header_timeout_seconds = 1", "");

    // A header that completes within the deadline, in small pieces, is answered.
    let mut conn = connect(&proxy);
    for piece in [
        &b"GET /healthz HTTP/1.1\r\n"[..],
        b"Host: proxy.test\r\n",
        b"\r\n",
    ] {
        conn.write_all(piece).unwrap();
        thread::sleep(Duration::from_millis(150));
    }
    assert!(read_health_answer(&mut conn).starts_with("HTTP/1.1 200"));

    // One header line every 200 ms never ends: each read is quick, the total is not.
    let mut conn = connect(&proxy);
    let started = Instant::now();
    conn.write_all(b"GET /healthz HTTP/1.1\r\n").unwrap();
    let mut seen = Vec::new();
    let mut cut = false;
    while started.elapsed() < Duration::from_secs(8) {
        if conn.write_all(b"X-Slow: a\r\n").is_err()
            || closed_within(&mut conn, Duration::from_millis(200), &mut seen)
        {
            cut = true;
            break;
        }
    }
    assert!(cut, "a header trickled for 8 s was still being read");
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "cut after {:?}, before the 1 s deadline",
        started.elapsed()
    );
    assert!(
        !String::from_utf8_lossy(&seen).contains("200 OK"),
        "the request was not answered"
    );
}

#[test]
fn a_body_trickled_in_gets_408_at_the_body_deadline_and_nothing_goes_upstream() {
    let (stub, proxy) = start("request_body_timeout_seconds = 1", "");
    let thread_id = proxy.create_thread(ORIGIN_A);
    stub.clear_requests();

    let body = format!(r#"{{"threadId":"{thread_id}","message":"hello there, slowly"}}"#);
    let mut conn = connect(&proxy);
    let head = format!(
        "POST {PREFIX}/process-message HTTP/1.1\r\nHost: proxy.test\r\nOrigin: {ORIGIN_A}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    let mut closed = false;
    // One byte every 100 ms: each chunk is quick, the whole body would take seconds.
    for byte in body.as_bytes() {
        if conn.write_all(&[*byte]).is_err()
            || closed_within(&mut conn, Duration::from_millis(100), &mut answer)
        {
            closed = true;
            break;
        }
    }
    if !closed {
        closed = closed_within(&mut conn, Duration::from_secs(5), &mut answer);
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "answer: {answer}");
    assert!(
        answer.contains(r#""code":"request_timeout""#),
        "answer: {answer}"
    );
    assert!(closed, "the connection is closed after a 408");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the body deadline is total: answered after {:?}",
        started.elapsed()
    );
    assert!(
        !stub
            .requests()
            .iter()
            .any(|r| r.path.contains("/messages") || r.path.contains("/runs")),
        "nothing was sent upstream"
    );
}

/// A message whose echoed answer (one event per word) is far larger than the socket buffers.
fn huge_message() -> String {
    "word ".repeat(40_000)
}

const HUGE_LIMITS: &str = "[limits]\nmax_body_bytes = 1048576\nmax_message_chars = 400000\n";

/// Opens the answer stream of a huge message and lets `reader` (not) read it; then checks that
/// the proxy dropped the stream, the upstream stream was closed and the conversation is free.
fn stalled_stream_is_dropped(reader: impl FnOnce(&mut TcpStream) + Send + 'static) {
    let (stub, proxy) = start("stalled_reader_timeout_seconds = 1", HUGE_LIMITS);
    let thread_id = proxy.create_thread(ORIGIN_A);
    let body = serde_json::json!({"threadId": thread_id, "message": huge_message()}).to_string();
    let mut conn = connect(&proxy);
    let head = format!(
        "POST {PREFIX}/process-message HTTP/1.1\r\nHost: proxy.test\r\nOrigin: {ORIGIN_A}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).unwrap();
    conn.write_all(body.as_bytes()).unwrap();
    let slow = thread::spawn(move || {
        reader(&mut conn);
        conn
    });

    let deadline = Instant::now() + Duration::from_secs(20);
    let mut line = None;
    while line.is_none() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
        line = proxy
            .logs()
            .lines()
            .find(|l| l.contains("route=process-message") && l.contains("outcome="))
            .map(str::to_string);
    }
    let line = line.expect("the stalled stream was never ended");
    assert!(line.contains("outcome=client_gone"), "access line: {line}");
    assert_eq!(
        stub.wait_open_streams(0, Duration::from_secs(10)),
        0,
        "the upstream stream is closed"
    );

    // The conversation is free again: a new message is answered, not refused as busy.
    let answer = proxy.try_post_message(ORIGIN_A, &thread_id, "are you there?");
    assert_eq!(answer.status, 200, "{}", answer.body);

    // And the stalled client really got a cut stream, not the whole answer.
    let mut conn = slow.join().unwrap();
    let mut rest = Vec::new();
    closed_within(&mut conn, Duration::from_secs(10), &mut rest);
    assert!(
        !String::from_utf8_lossy(&rest).contains("[DONE]"),
        "the stalled client must not have received the whole answer"
    );
}

#[test]
fn a_client_that_stops_reading_is_dropped_and_frees_the_conversation() {
    stalled_stream_is_dropped(|_conn| thread::sleep(Duration::from_secs(4)));
}

#[test]
fn a_client_that_reads_a_byte_now_and_then_is_dropped_too() {
    stalled_stream_is_dropped(|conn| {
        conn.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let mut byte = [0u8; 1];
        for _ in 0..20 {
            if !matches!(conn.read(&mut byte), Ok(1)) {
                break;
            }
            thread::sleep(Duration::from_millis(200));
        }
    });
}
