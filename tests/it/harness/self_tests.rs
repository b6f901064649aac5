//! Self-tests of the test harness: the raw HTTP/1.1 client, the SSE parser and the stream
//! normalizer are checked against canned server answers, so a proxy test failing (or passing)
//! is about the proxy and not about the harness.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::thread;
use std::time::Duration;

use crate::harness::*;

/// Serves one connection: reads the request head, then writes `pieces` with `pause`
/// between them and closes.
fn serve_once(pieces: Vec<Vec<u8>>, pause: Duration) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        let (mut socket, _) = listener.accept().unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if socket.read(&mut byte).unwrap_or(0) == 0 {
                return;
            }
            head.push(byte[0]);
        }
        for (i, piece) in pieces.iter().enumerate() {
            if i > 0 {
                thread::sleep(pause);
            }
            if socket.write_all(piece).is_err() {
                return;
            }
        }
    });
    port
}

fn get(port: u16) -> Streamed {
    RawConn::send(port, &RawRequest::new("GET", "/")).read_response()
}

#[test]
fn chunked_bodies_are_decoded_and_time_stamped() {
    let port = serve_once(
        vec![
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Test: a\r\n\r\n5\r\nhel".to_vec(),
            b"lo\r\n".to_vec(),
            b"6;ext=1\r\n world\r\n0\r\n\r\n".to_vec(),
        ],
        Duration::from_millis(200),
    );
    let resp = get(port);
    assert_eq!(resp.status, 200);
    assert_eq!(resp.headers.get("x-test"), Some("a"));
    assert_eq!(resp.body, b"hello world");
    assert_eq!(resp.ending, Ending::Complete);
    assert_eq!(resp.chunks.len(), 2);
    assert!(resp.chunks[1].at - resp.chunks[0].at >= Duration::from_millis(150));
}

#[test]
fn a_chunked_body_without_its_last_chunk_is_cut() {
    let port = serve_once(
        vec![b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nd".to_vec()],
        Duration::ZERO,
    );
    let resp = get(port);
    assert_eq!(resp.body, b"abc");
    assert_eq!(resp.ending, Ending::Cut);
}

#[test]
fn content_length_and_close_delimited_bodies() {
    let port = serve_once(
        vec![b"HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\n\r\nnope".to_vec()],
        Duration::ZERO,
    );
    let resp = get(port);
    assert_eq!((resp.status, resp.body.as_slice()), (404, &b"nope"[..]));
    assert_eq!(resp.ending, Ending::Complete);

    let port = serve_once(
        vec![b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort".to_vec()],
        Duration::ZERO,
    );
    assert_eq!(get(port).ending, Ending::Cut);

    let port = serve_once(
        vec![b"HTTP/1.1 200 OK\r\n\r\nuntil ".to_vec(), b"close".to_vec()],
        Duration::from_millis(50),
    );
    let resp = get(port);
    assert_eq!(resp.body, b"until close");
    assert_eq!(resp.ending, Ending::Complete);

    let port = serve_once(
        vec![b"HTTP/1.1 204 No Content\r\nVary: Origin\r\n\r\n".to_vec()],
        Duration::ZERO,
    );
    let resp = get(port);
    assert_eq!((resp.status, resp.body.len()), (204, 0));
}

#[test]
fn sse_is_parsed_like_a_browser_does() {
    let stream = b"event: a\ndata: {\"x\":1}\n\n\
                   : comment\r\nevent: b\r\ndata: one\r\ndata:two\r\n\r\n\
                   data: default type\r\r\
                   event: ignored-without-data\n\n\
                   event: partial\ndata: never dispatched";
    let events = parse_sse(stream);
    assert_eq!(
        events,
        [
            SseEvent {
                event: Some("a".into()),
                data: "{\"x\":1}".into()
            },
            SseEvent {
                event: Some("b".into()),
                data: "one\ntwo".into()
            },
            SseEvent {
                event: None,
                data: "default type".into()
            },
        ]
    );
    assert_eq!(events[0].json()["x"], 1);
    assert_eq!(events[2].name(), "message");
}

#[test]
fn an_error_appended_to_a_half_event_is_garbled() {
    // Why the proxy must close a half-written event before its own `event: error`.
    let events = parse_sse(b"event: x\ndata: {\"half\nevent: error\ndata: {}\n\n");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].name(), "error");
    assert!(serde_json::from_str::<serde_json::Value>(&events[0].data).is_err());
}

#[test]
fn normalizing_masks_only_ids_and_timestamps() {
    let a = br#"data: {"id":"run_abc123","thread_id":"thread_XyZ","created_at":1710330640,"n":3,"temperature":1.0}"#;
    let b = br#"data: {"id":"run_QQQ","thread_id":"thread_k9","created_at":1999999999,"n":3,"temperature":1.0}"#;
    assert_eq!(normalize_stream(a), normalize_stream(b));
    assert!(normalize_stream(a).contains(r#""thread_id":"thread_ID""#));
    let c = br#"data: {"id":"run_QQQ","thread_id":"thread_k9","created_at":1999999999,"n":4,"temperature":1.0}"#;
    assert_ne!(normalize_stream(a), normalize_stream(c));
    let d = br#"data: {"id":"run_QQQ","thread_id":"thread_k9","created_at":1999999999,"n":3,"temperature":1}"#;
    assert_ne!(normalize_stream(a), normalize_stream(d));
    assert_ne!(normalize_stream(b"a\r\n"), normalize_stream(b"a\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_browser_runs_a_served_page_on_a_made_up_site() {
    use crate::harness::browser::{eval, screenshot, wait_until, Browser, PageServer};
    let pages = PageServer::start();
    pages.put_html(
        "/",
        "<!doctype html><title>t</title><p id=p>x</p>\
         <script>document.getElementById('p').textContent = location.host;</script>",
    );
    let browser = Browser::launch().await;
    let page = browser.open(&pages.url("shop.example.com", "/")).await;
    wait_until(
        &page,
        "document.getElementById('p').textContent !== 'x'",
        IO_TIMEOUT,
    )
    .await;
    let host: String = eval(&page, "document.getElementById('p').textContent").await;
    assert_eq!(host, format!("shop.example.com:{}", pages.port()));
    assert!(screenshot(&page, "harness-self-test").await.exists());
}
