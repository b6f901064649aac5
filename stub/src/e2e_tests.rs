//! End-to-end tests of the stub over real loopback TCP: requests go through
//! Pingora's HTTP/1 server stack (`ServerApp::process_new`, keep-alive loop
//! included) and are read back by a minimal HTTP/1.1 client that keeps the
//! chunk boundaries.

use std::sync::Arc;
use std::time::Duration;

use pingora::apps::ServerApp;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::timeout;

use super::StubApp;

const LIMIT: Duration = Duration::from_secs(10);

/// Start a stub on an ephemeral port; returns its address and the
/// shutdown switch.
async fn start() -> (String, watch::Sender<bool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = watch::channel(false);
    let app = Arc::new(StubApp::new());
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let app = app.clone();
            let rx = rx.clone();
            tokio::spawn(async move {
                let stream: pingora::protocols::Stream =
                    Box::new(pingora::protocols::l4::stream::Stream::from(sock));
                app.process_new(stream, &rx).await;
            });
        }
    });
    (addr, tx)
}

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    /// Body chunks as received (one element for a Content-Length body).
    chunks: Vec<Vec<u8>>,
    /// The body ended properly (terminating chunk / full length).
    complete: bool,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn body(&self) -> String {
        String::from_utf8(self.chunks.concat()).unwrap()
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body()).unwrap()
    }

    /// Event names of an SSE body.
    fn event_names(&self) -> Vec<String> {
        self.body()
            .lines()
            .filter_map(|l| l.strip_prefix("event: "))
            .map(|s| s.trim_end_matches('\r').to_string())
            .collect()
    }
}

struct Client {
    sock: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    async fn connect(addr: &str) -> Client {
        Client {
            sock: TcpStream::connect(addr).await.unwrap(),
            buf: Vec::new(),
        }
    }

    /// Read more bytes; false on EOF or error.
    async fn fill(&mut self) -> bool {
        let mut tmp = [0u8; 8192];
        match self.sock.read(&mut tmp).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&tmp[..n]);
                true
            }
        }
    }

    async fn line(&mut self) -> Option<String> {
        loop {
            if let Some(pos) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..pos]).into_owned();
                self.buf.drain(..pos + 2);
                return Some(line);
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    async fn take(&mut self, n: usize) -> Option<Vec<u8>> {
        while self.buf.len() < n {
            if !self.fill().await {
                return None;
            }
        }
        Some(self.buf.drain(..n).collect())
    }

    async fn send(&mut self, method: &str, path: &str, key: &str, body: &str) {
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: stub\r\nAuthorization: Bearer {key}\r\n\
             OpenAI-Beta: assistants=v2\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.sock.write_all(req.as_bytes()).await.unwrap();
    }

    async fn read(&mut self) -> Option<Response> {
        let status_line = self.line().await?;
        let status = status_line.split(' ').nth(1)?.parse().ok()?;
        let mut headers = Vec::new();
        loop {
            let line = self.line().await?;
            if line.is_empty() {
                break;
            }
            let (k, v) = line.split_once(':')?;
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
        let mut resp = Response {
            status,
            headers,
            chunks: Vec::new(),
            complete: false,
        };
        if let Some(len) = resp.header("content-length") {
            let len: usize = len.parse().ok()?;
            resp.chunks.push(self.take(len).await?);
            resp.complete = true;
        } else if resp.header("transfer-encoding") == Some("chunked") {
            loop {
                let Some(size_line) = self.line().await else {
                    return Some(resp);
                };
                let size = usize::from_str_radix(size_line.trim(), 16).ok()?;
                if size == 0 {
                    self.line().await?;
                    resp.complete = true;
                    break;
                }
                let Some(data) = self.take(size).await else {
                    return Some(resp);
                };
                resp.chunks.push(data);
                self.line().await?;
            }
        } else {
            resp.complete = true;
        }
        Some(resp)
    }

    async fn call(&mut self, method: &str, path: &str, key: &str, body: &str) -> Response {
        self.send(method, path, key, body).await;
        timeout(LIMIT, self.read())
            .await
            .expect("response in time")
            .expect("a response")
    }
}

async fn new_thread_with(addr: &str, message: &str) -> (Client, String) {
    let mut c = Client::connect(addr).await;
    let t = c.call("POST", "/v1/threads", "sk-test", "").await;
    assert_eq!(t.status, 200);
    let tid = t.json()["id"].as_str().unwrap().to_string();
    let body = serde_json::json!({"role": "user", "content": message}).to_string();
    let m = c
        .call(
            "POST",
            &format!("/v1/threads/{tid}/messages"),
            "sk-test",
            &body,
        )
        .await;
    assert_eq!(m.status, 200, "{}", m.body());
    (c, tid)
}

const RUN_BODY: &str = r#"{"assistant_id":"asst_1","stream":true}"#;

#[tokio::test]
async fn keep_alive_and_streamed_run() {
    let (addr, _tx) = start().await;
    let (mut c, tid) = new_thread_with(&addr, "hello there").await;
    let run = c
        .call(
            "POST",
            &format!("/v1/threads/{tid}/runs"),
            "sk-test",
            RUN_BODY,
        )
        .await;
    assert_eq!(run.status, 200);
    assert!(run.complete);
    assert_eq!(
        run.header("content-type"),
        Some("text/event-stream; charset=utf-8")
    );
    assert_eq!(run.header("cache-control"), Some("no-cache"));
    assert_eq!(run.header("openai-organization"), Some("org-stub"));
    assert!(run.header("x-request-id").unwrap().starts_with("req_"));
    assert!(run.header("content-length").is_none());
    // One event per chunk.
    for chunk in &run.chunks {
        let text = String::from_utf8(chunk.clone()).unwrap();
        assert!(
            text.starts_with("event: ") && text.ends_with("\n\n"),
            "{text:?}"
        );
        assert_eq!(text.matches("event: ").count(), 1);
    }
    let names = run.event_names();
    assert_eq!(
        names.first().map(String::as_str),
        Some("thread.run.created")
    );
    assert_eq!(names.last().map(String::as_str), Some("done"));
    assert_eq!(
        names
            .iter()
            .filter(|n| *n == "thread.message.delta")
            .count(),
        4
    );
    assert!(run
        .body()
        .contains(r#""value":"You said: hello there","annotations":[]"#));
    // Same connection again: the request log holds the key used.
    let log = c.call("GET", "/__stub/requests", "sk-test", "").await;
    let entries = log.json();
    let last = entries.as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["method"], "POST");
    assert_eq!(last["path"], format!("/v1/threads/{tid}/runs"));
    assert_eq!(last["headers"]["authorization"], "Bearer sk-test");
    assert_eq!(last["body"], RUN_BODY);
    // The run is over: a new message is accepted.
    let body = r#"{"role":"user","content":"again"}"#;
    let m = c
        .call(
            "POST",
            &format!("/v1/threads/{tid}/messages"),
            "sk-test",
            body,
        )
        .await;
    assert_eq!(m.status, 200);
}

#[tokio::test]
async fn cut_closes_mid_body() {
    let (addr, _tx) = start().await;
    let (mut c, tid) = new_thread_with(&addr, "bye [stub:cut]").await;
    let run = c
        .call(
            "POST",
            &format!("/v1/threads/{tid}/runs"),
            "sk-test",
            RUN_BODY,
        )
        .await;
    assert_eq!(run.status, 200);
    assert!(!run.complete, "the terminating chunk must be missing");
    assert_eq!(
        run.event_names().last().map(String::as_str),
        Some("thread.message.delta")
    );
}

#[tokio::test]
async fn split_and_crlf_framing() {
    let (addr, _tx) = start().await;
    let (mut c, tid) = new_thread_with(&addr, "x [stub:chunking=split] [stub:crlf]").await;
    let run = c
        .call(
            "POST",
            &format!("/v1/threads/{tid}/runs"),
            "sk-test",
            RUN_BODY,
        )
        .await;
    assert!(run.complete);
    let names = run.event_names();
    assert_eq!(run.chunks.len(), names.len() * 2);
    assert!(run.body().contains("event: done\r\ndata: [DONE]\r\n\r\n"));
    assert!(!String::from_utf8(run.chunks[0].clone())
        .unwrap()
        .ends_with('\n'));
}

#[tokio::test]
async fn special_keys_and_errors() {
    let (addr, tx) = start().await;
    let mut c = Client::connect(&addr).await;
    let r = c.call("POST", "/v1/threads", "sk-stub-429", "").await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("7"));
    let r = c.call("POST", "/v1/threads", "sk-stub-401", "").await;
    assert_eq!(r.status, 401);
    let r = c.call("GET", "/v1/unknown", "sk-x", "").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
    let r = c.call("POST", "/v1/threads", "sk-x", "{not json").await;
    assert_eq!(r.status, 400);
    // The hanging key answers nothing and lets go at shutdown.
    let mut h = Client::connect(&addr).await;
    h.send("POST", "/v1/threads", "sk-stub-hang", "").await;
    let waited = timeout(Duration::from_millis(300), h.read()).await;
    assert!(waited.is_err(), "no answer expected yet");
    tx.send(true).unwrap();
    let after = timeout(Duration::from_secs(5), h.read()).await;
    assert!(matches!(after, Ok(None)), "closed without a response");
}

#[tokio::test]
async fn hang_after_ends_when_client_leaves() {
    let (addr, _tx) = start().await;
    let (mut c, tid) = new_thread_with(&addr, "x [stub:hang_after=2]").await;
    c.send(
        "POST",
        &format!("/v1/threads/{tid}/runs"),
        "sk-test",
        RUN_BODY,
    )
    .await;
    // Headers and two events arrive, then silence.
    let head = timeout(LIMIT, c.line()).await.unwrap().unwrap();
    assert!(head.contains("200"));
    let mut got = String::new();
    while got.matches("event: ").count() < 2 {
        assert!(timeout(LIMIT, c.fill()).await.unwrap());
        got = String::from_utf8_lossy(&c.buf).into_owned();
    }
    // Meanwhile the run blocks the thread.
    let mut other = Client::connect(&addr).await;
    let body = r#"{"role":"user","content":"more"}"#;
    let path = format!("/v1/threads/{tid}/messages");
    assert_eq!(other.call("POST", &path, "sk-test", body).await.status, 400);
    drop(c);
    // The stub notices the close and commits the run's end.
    let mut ok = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if other.call("POST", &path, "sk-test", body).await.status == 200 {
            ok = true;
            break;
        }
    }
    assert!(ok, "thread still blocked after the client left");
}

#[tokio::test]
async fn responses_function_call_round_trip() {
    let (addr, _tx) = start().await;
    let mut c = Client::connect(&addr).await;
    let conv = c.call("POST", "/v1/conversations", "sk-test", "{}").await;
    let cid = conv.json()["id"].as_str().unwrap().to_string();
    let text = r#"mail [stub:tool_calls=[{"name":"sendEmail","arguments":"{\"name\":\"Ann\"}"}]]"#;
    let body = serde_json::json!({"model":"gpt-5.4","conversation":cid,"input":text,"stream":true});
    let r = c
        .call("POST", "/v1/responses", "sk-test", &body.to_string())
        .await;
    assert!(r.complete);
    let names = r.event_names();
    assert!(names.contains(&"response.function_call_arguments.delta".to_string()));
    assert_eq!(names.last().map(String::as_str), Some("response.completed"));
    let items = c
        .call(
            "GET",
            &format!("/v1/conversations/{cid}/items"),
            "sk-test",
            "",
        )
        .await
        .json();
    let call_id = items["data"][1]["call_id"].as_str().unwrap().to_string();
    let body = serde_json::json!({"model":"gpt-5.4","conversation":cid,"stream":true,
        "input":[{"type":"function_call_output","call_id":call_id,"output":"sent"}]});
    let r = c
        .call("POST", "/v1/responses", "sk-test", &body.to_string())
        .await;
    assert!(r.body().contains(r#""text":"Tool output: sent""#));
}
