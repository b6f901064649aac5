//! Stopping and upgrading the real binary, on real sockets: SIGTERM when idle ends the process
//! at once; a stream in flight at SIGTERM completes while new connections are refused; a grace
//! period keeps the listener open; a stream longer than the drain limit is cut at the limit;
//! and a zero-downtime upgrade (`--upgrade` + SIGQUIT) hands the listener over without a
//! refused connection, lets the old process finish its stream, and delivers every lead, the
//! old process's included, exactly once.
//!
//! The processes here are run by this file itself (not by the harness's `Proxy`), because the
//! tests send them signals, wait for them to exit and start two on one working directory.

use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::harness::*;
use crate::smtp_server::SmtpServer;
use serde_json::{json, Value};

const SITE: &str = ORIGIN_A;

/// Far below the default drain limit (25 s) and the 30 s the old default grace period took:
/// an idle process that is still there after this has not exited "as soon as nothing is in
/// flight".
const IDLE_EXIT_DEADLINE: Duration = Duration::from_secs(10);

/// The log line our signal watcher writes once it listens for signals.
const READY_FOR_SIGNALS: &str = "SIGTERM drains";

// ---------------------------------------------------------------------------------------------
// A proxy process this file controls
// ---------------------------------------------------------------------------------------------

/// A `chatbot-proxy --config config.toml` process in `dir`, its output in a log file; killed
/// on drop if it is still running.
struct Node {
    child: Child,
    log: PathBuf,
    status: Option<ExitStatus>,
}

impl Node {
    /// Starts the binary in `dir` with `dir/config.toml`, `--upgrade` if asked, its output
    /// going to `log`. Does not wait for anything.
    fn spawn(dir: &Path, upgrade: bool, log: &Path) -> Node {
        let out = File::create(log).expect("create the proxy log");
        let mut cmd = Command::new(BIN);
        cmd.current_dir(dir)
            .env_clear()
            .env("RUST_LOG", "info")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("clone the log file"))
            .stderr(out);
        for name in ["PATH", "HOME"] {
            if let Some(value) = std::env::var_os(name) {
                cmd.env(name, value);
            }
        }
        if upgrade {
            cmd.arg("--upgrade");
        }
        Node {
            child: cmd.spawn().expect("start the proxy"),
            log: log.to_path_buf(),
            status: None,
        }
    }

    /// Starts the proxy and waits until it answers `/healthz` on `port` and listens for
    /// signals.
    fn start(dir: &Path, port: u16, log: &Path) -> Node {
        let mut node = Node::spawn(dir, false, log);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = node.exited() {
                panic!("the proxy exited with {status}:\n{}", node.logs());
            }
            if healthz(port) == Some(200) && node.logs().contains(READY_FOR_SIGNALS) {
                return node;
            }
            assert!(
                Instant::now() < deadline,
                "the proxy did not become ready within 20 s:\n{}",
                node.logs()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log holds `text`; panics with the log after `within`.
    fn wait_for_log(&self, text: &str, within: Duration) {
        assert!(
            eventually(within, || self.logs().contains(text)),
            "no log line with {text:?} within {within:?}:\n{}",
            self.logs()
        );
    }

    /// Sends a signal by name (`TERM`, `QUIT`, `INT`) with kill(1).
    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args(["-s", name, &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -s {name} failed");
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("try_wait");
        }
        self.status
    }

    /// Waits up to `within` for the process to exit.
    fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Asserts the process exits with status 0 within `within`.
    fn assert_exits_cleanly(&mut self, within: Duration, context: &str) {
        match self.wait_exit(within) {
            Some(status) => assert!(
                status.success(),
                "{context}: the proxy exited with {status}:\n{}",
                self.logs()
            ),
            None => panic!(
                "{context}: the proxy was still running {within:?} later:\n{}",
                self.logs()
            ),
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if self.exited().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `GET /healthz` on a fresh connection: the status, or `None` when the connection was
/// refused or closed without an answer.
fn healthz(port: u16) -> Option<u16> {
    let mut stream =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let request =
        format!("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let head = String::from_utf8_lossy(&answer);
    head.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// Whether a TCP connection to `port` is refused.
fn refused(port: u16) -> bool {
    match TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(2)) {
        Ok(_) => false,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionRefused,
    }
}

/// A working directory with `config.toml`: `listen` on `port`, the stub as upstream, one
/// tenant (tenant A's site), and `extra_server` lines in `[server]`; `tail` is appended.
fn write_config(dir: &Path, port: u16, stub: &Stub, extra_server: &str, tail: &str) {
    let text = format!(
        r#"[server]
listen = "127.0.0.1:{port}"
upgrade_sock = "{sock}"
{extra_server}

[upstream]
base_url = "{base}"

[[tenants]]
name = "shop"
domains = ["shop.example.com"]
api_key = "{KEY_A}"
assistant_id = "{ASSISTANT_A}"
lead_recipients = ["sales@shop.example.com"]

{tail}
"#,
        sock = dir.join("upgrade.sock").display(),
        base = stub.base_url(),
    );
    std::fs::write(dir.join("config.toml"), text).expect("write config.toml");
}

fn create_thread(port: u16) -> String {
    let req = RawRequest::new("GET", &format!("{PREFIX}/create-thread")).header("Origin", SITE);
    let resp = RawConn::send(port, &req).read_response();
    assert_eq!(resp.status, 200, "create-thread: {}", resp.text());
    resp.json()["id"].as_str().expect("thread id").to_string()
}

/// Sends `process-message` and returns once the response head and the first body chunk
/// have arrived: the stream is then in flight.
fn open_stream(port: u16, thread_id: &str, message: &str) -> (RawConn, Vec<u8>) {
    let req = RawRequest::new("POST", &format!("{PREFIX}/process-message"))
        .header("Origin", SITE)
        .json(&json!({"threadId": thread_id, "message": message}));
    let mut conn = RawConn::send(port, &req);
    conn.read_head();
    assert_eq!(conn.status, 200, "process-message answered {}", conn.status);
    let first = match conn.next_chunk() {
        Piece::Data(chunk) => chunk.bytes,
        Piece::End(ending, _) => panic!("the stream ended ({ending:?}) before its first event"),
    };
    (conn, first)
}

/// Reads the rest of a stream opened with [`open_stream`]: the whole body and how it ended.
fn finish_stream(mut conn: RawConn, mut body: Vec<u8>) -> (Vec<u8>, Ending) {
    loop {
        match conn.next_chunk() {
            Piece::Data(chunk) => body.extend_from_slice(&chunk.bytes),
            Piece::End(ending, _) => return (body, ending),
        }
    }
}

/// Asserts a complete answer: ended properly, the run completed and `done` came last.
fn assert_complete(body: &[u8], ending: Ending, context: &str) -> Vec<SseEvent> {
    let text = String::from_utf8_lossy(body);
    assert_eq!(
        ending,
        Ending::Complete,
        "{context}: the stream was cut: {text}"
    );
    let events = parse_sse(body);
    let names = event_names(&events);
    assert_eq!(names.last(), Some(&"done"), "{context}: {names:?}");
    assert!(
        names.contains(&"thread.run.completed"),
        "{context}: the run must complete: {names:?}"
    );
    events
}

/// A message of `words` words paced at `ms` between two events.
fn paced(words: usize, ms: u64) -> String {
    let text: Vec<String> = (1..=words).map(|i| format!("word{i}")).collect();
    format!("{} [stub:slow={ms}]", text.join(" "))
}

// ---------------------------------------------------------------------------------------------
// SIGTERM
// ---------------------------------------------------------------------------------------------

#[test]
fn an_idle_proxy_exits_at_once_on_sigterm() {
    let stub = Stub::start();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    write_config(dir.path(), port, &stub, "", "");
    let mut proxy = Node::start(dir.path(), port, &dir.path().join("proxy.log"));
    // Requests first: neither a kept-alive connection after a response nor a connection
    // that never sent anything may hold the exit up.
    create_thread(port);
    let keep_alive = kept_alive_after_a_request(port);
    let silent = TcpStream::connect(("127.0.0.1", port)).unwrap();

    proxy.signal("TERM");
    proxy.assert_exits_cleanly(IDLE_EXIT_DEADLINE, "idle SIGTERM");
    assert!(
        proxy.logs().contains("nothing in flight: exiting"),
        "{}",
        proxy.logs()
    );
    drop((keep_alive, silent));
    assert!(refused(port), "nothing may listen after the exit");
}

/// A connection on which `GET /healthz` (HTTP/1.1, keep-alive) was answered, left open.
fn kept_alive_after_a_request(port: u16) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let request = format!("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let mut chunk = [0u8; 1024];
    while !String::from_utf8_lossy(&answer).contains(r#"{"status":"ok"}"#) {
        let n = stream.read(&mut chunk).expect("the health answer");
        assert!(n > 0, "closed before the answer: {answer:?}");
        answer.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    assert!(
        !head.contains("connection: close"),
        "not kept alive: {head}"
    );
    stream
}

#[test]
fn a_stream_in_flight_at_sigterm_completes_while_new_connections_are_refused() {
    let stub = Stub::start();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    write_config(dir.path(), port, &stub, "", "");
    let mut proxy = Node::start(dir.path(), port, &dir.path().join("proxy.log"));
    let thread_id = create_thread(port);
    // About 25 events 300 ms apart: the stream runs for several seconds after SIGTERM.
    let (conn, first) = open_stream(port, &thread_id, &paced(12, 300));

    proxy.signal("TERM");
    assert!(
        eventually(Duration::from_secs(5), || refused(port)),
        "after SIGTERM (grace period 0) new connections must be refused:\n{}",
        proxy.logs()
    );
    assert!(
        proxy.exited().is_none(),
        "the proxy must still be running while the stream is in flight:\n{}",
        proxy.logs()
    );

    let (body, ending) = finish_stream(conn, first);
    let events = assert_complete(&body, ending, "stream across SIGTERM");
    let words: Vec<String> = (1..=12).map(|i| format!("word{i}")).collect();
    assert_eq!(
        delta_text(&events),
        format!("You said: {}", words.join(" "))
    );
    proxy.assert_exits_cleanly(IDLE_EXIT_DEADLINE, "after the last stream");
    assert!(proxy.logs().contains("draining: 1 request(s) in flight"));
}

#[test]
fn during_the_grace_period_the_listener_still_accepts() {
    let stub = Stub::start();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    write_config(dir.path(), port, &stub, "grace_period_seconds = 4", "");
    let mut proxy = Node::start(dir.path(), port, &dir.path().join("proxy.log"));

    proxy.signal("TERM");
    proxy.wait_for_log(
        "still accepting for the grace period",
        Duration::from_secs(5),
    );
    // Well inside the 4 s: new connections are served, a new conversation too.
    let until = Instant::now() + Duration::from_millis(1500);
    let mut served = 0;
    while Instant::now() < until {
        assert_eq!(
            healthz(port),
            Some(200),
            "during the grace period requests are served:\n{}",
            proxy.logs()
        );
        served += 1;
        thread::sleep(Duration::from_millis(50));
    }
    assert!(served > 0);
    create_thread(port);

    // Then the listener closes and the idle process exits.
    proxy.assert_exits_cleanly(
        Duration::from_secs(4) + IDLE_EXIT_DEADLINE,
        "after the grace period",
    );
    assert!(
        proxy.logs().contains("grace period over"),
        "{}",
        proxy.logs()
    );
    assert!(refused(port));
}

#[test]
fn a_stream_longer_than_the_drain_limit_is_cut_at_the_limit() {
    let stub = Stub::start();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    write_config(dir.path(), port, &stub, "drain_timeout_seconds = 2", "");
    let mut proxy = Node::start(dir.path(), port, &dir.path().join("proxy.log"));
    let thread_id = create_thread(port);
    // About 25 events 1 s apart: far longer than the 2 s drain limit.
    let (conn, first) = open_stream(port, &thread_id, &paced(12, 1000));

    proxy.signal("TERM");
    let (body, ending) = finish_stream(conn, first);
    let names_text = String::from_utf8_lossy(&body).into_owned();
    assert!(
        ending == Ending::Cut || !names_text.contains("event: done"),
        "the stream must be cut at the drain limit, not completed: {names_text}"
    );
    assert!(!names_text.contains("thread.run.completed"), "{names_text}");
    proxy.assert_exits_cleanly(IDLE_EXIT_DEADLINE, "at the drain limit");
    assert!(
        proxy.logs().contains("drain limit of 2 s reached"),
        "{}",
        proxy.logs()
    );
}

// ---------------------------------------------------------------------------------------------
// Zero-downtime upgrade
// ---------------------------------------------------------------------------------------------

/// A client that opens a new connection for `GET /healthz` every 20 ms until stopped and
/// remembers every attempt that did not get a 200.
struct Prober {
    stop: Arc<AtomicBool>,
    failures: Arc<Mutex<Vec<String>>>,
    served: Arc<Mutex<usize>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Prober {
    fn start(port: u16) -> Prober {
        let stop = Arc::new(AtomicBool::new(false));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let served = Arc::new(Mutex::new(0));
        let thread = thread::spawn({
            let (stop, failures, served) = (stop.clone(), failures.clone(), served.clone());
            move || {
                let started = Instant::now();
                while !stop.load(Ordering::SeqCst) {
                    match healthz(port) {
                        Some(200) => *served.lock().unwrap() += 1,
                        other => failures.lock().unwrap().push(format!(
                            "{:?} after {} ms",
                            other,
                            started.elapsed().as_millis()
                        )),
                    }
                    thread::sleep(Duration::from_millis(20));
                }
            }
        });
        Prober {
            stop,
            failures,
            served,
            thread: Some(thread),
        }
    }

    /// Stops the client; returns (requests served, failures).
    fn finish(mut self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            thread.join().expect("the probing client panicked");
        }
        let served = *self.served.lock().unwrap();
        let failures = self.failures.lock().unwrap().clone();
        (served, failures)
    }
}

/// A message whose run asks for the lead tool with `name` and `email`, paced at `ms`.
fn lead_message(name: &str, email: &str, ms: u64) -> String {
    let arguments = json!({"name": name, "email": email, "message": "Call me"}).to_string();
    let calls = json!([{"name": "sendEmail", "arguments": arguments}]);
    if ms == 0 {
        format!("[stub:tool_calls={calls}] hello")
    } else {
        format!("[stub:tool_calls={calls}] hello [stub:slow={ms}]")
    }
}

fn queued(email: &str) -> String {
    format!(
        "Tool output: The message was saved and queued for delivery; the team will receive \
         it shortly and reply to {email}."
    )
}

/// The lead records of one journal file, as JSON (none if it does not exist).
fn leads_in(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r["type"] == "lead")
        .collect()
}

/// Every lead record in the journal files of `dir/data` (all segments), as JSON.
fn journaled_leads(dir: &Path) -> Vec<Value> {
    let Ok(entries) = std::fs::read_dir(dir.join("data")) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|e| e == "jsonl"))
        .flat_map(|path| leads_in(&path))
        .collect()
}

#[test]
fn an_upgrade_hands_over_without_a_refused_connection_and_delivers_every_lead_once() {
    let stub = Stub::start();
    let mut smtp = SmtpServer::start();
    smtp.stop();
    let dir = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let port = free_port();
    let smtp_section = format!(
        "[smtp]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\nfrom = \"bot@example.com\"\n\
         timeout_ms = 2000\n\n[leads]\nsend_timeout_ms = 1000\n",
        smtp.port()
    );
    write_config(dir.path(), port, &stub, "", &smtp_section);

    // A serves; a client connects every 20 ms from now on.
    let mut old = Node::start(dir.path(), port, &logs.path().join("old.log"));
    let prober = Prober::start(port);

    // A stream with a lead tool call on A (SMTP is down: the lead stays queued in A's
    // journal), paced so the call comes during the hand-over and the stream still runs when
    // A stops accepting.
    let thread_a = create_thread(port);
    let (stream, first) = open_stream(
        port,
        &thread_a,
        &lead_message("Ada Lovelace", "ada@example.net", 250),
    );

    // B starts in upgrade mode on the same configuration and lead directory, then A gets
    // SIGQUIT and hands its listening socket over.
    let new = Node::spawn(dir.path(), true, &logs.path().join("new.log"));
    new.wait_for_log("waiting for the running process", Duration::from_secs(20));
    old.signal("QUIT");
    new.wait_for_log("listening sockets received", Duration::from_secs(10));
    new.wait_for_log(READY_FOR_SIGNALS, Duration::from_secs(10));
    assert!(
        eventually(Duration::from_secs(10), || !journaled_leads(dir.path())
            .is_empty()),
        "the old process must journal the lead of its stream:\n{}",
        old.logs()
    );
    let in_old = leads_in(&dir.path().join("data/leads.jsonl"));
    assert_eq!(in_old.len(), 1, "the old process's segment: {in_old:?}");
    assert_eq!(in_old[0]["lead"]["email"], "ada@example.net");

    // A stops accepting (after Pingora's 5 s overlap) but finishes its stream.
    old.wait_for_log(
        &format!("Shutting down 127.0.0.1:{port}"),
        Duration::from_secs(15),
    );
    assert!(
        old.exited().is_none(),
        "the old process must still be finishing its stream:\n{}",
        old.logs()
    );
    // Now only B accepts: a second lead, captured by B while A still runs.
    let thread_b = create_thread(port);
    let second = RawConn::send(
        port,
        &RawRequest::new("POST", &format!("{PREFIX}/process-message"))
            .header("Origin", SITE)
            .json(&json!({
                "threadId": thread_b,
                "message": lead_message("Grace Hopper", "grace@example.org", 0)
            })),
    )
    .read_response();
    assert_eq!(second.status, 200, "{}", second.text());
    let events = second.events();
    assert_eq!(delta_text(&events), queued("grace@example.org"));
    assert_eq!(
        leads_in(&dir.path().join("data/leads.jsonl")).len(),
        1,
        "the new process journals in a segment of its own"
    );
    assert_eq!(journaled_leads(dir.path()).len(), 2);

    let (body, ending) = finish_stream(stream, first);
    let events = assert_complete(&body, ending, "the old process's stream");
    assert_eq!(delta_text(&events), queued("ada@example.net"));
    old.assert_exits_cleanly(IDLE_EXIT_DEADLINE, "the old process after its stream");

    // B serves alone now, and nobody was refused during the hand-over.
    create_thread(port);
    thread::sleep(Duration::from_millis(300));
    let (served, failures) = prober.finish();
    assert!(
        failures.is_empty(),
        "requests failed during the upgrade ({served} served): {failures:?}\nold:\n{}\nnew:\n{}",
        old.logs(),
        new.logs()
    );
    assert!(served > 50, "only {served} probes were made");

    // SMTP comes back: B delivers both leads, A's included, each exactly once.
    smtp.restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    while smtp.received().len() < 2 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }
    thread::sleep(Duration::from_secs(3));
    let mut reply_to: Vec<String> = smtp
        .received()
        .iter()
        .map(|m| m.header("Reply-To").unwrap_or_default())
        .collect();
    reply_to.sort();
    assert_eq!(
        reply_to,
        [
            "\"Ada Lovelace\" <ada@example.net>",
            "\"Grace Hopper\" <grace@example.org>"
        ],
        "each lead exactly once; new:\n{}",
        new.logs()
    );
    assert!(
        !dir.path().join("data/leads.jsonl").exists(),
        "the old process's segment was adopted and deleted"
    );
    assert!(
        new.logs().contains("adopted 1 pending lead(s)"),
        "{}",
        new.logs()
    );
    drop(new);
}
