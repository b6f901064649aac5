//! Test harness for the black-box integration tests.
//!
//! Every test starts the real `chatbot-proxy` binary twice: once as the stub OpenAI upstream
//! (`chatbot-proxy stub`) and once as the proxy, each on its own ephemeral port, and kills both
//! when the test ends. The proxy's stdout and stderr are captured so tests can read its log.
//! [`Setup`] starts the usual trio in one go: the stub, a test SMTP server if the test needs
//! one, and a proxy configured with their addresses.
//!
//! Two HTTP clients are provided:
//! - [`Req`] (built on `ureq`) for ordinary request/response exchanges;
//! - [`RawConn`], a small hand-written HTTP/1.1 client over a `TcpStream`, for everything where
//!   the bytes or the timing matter: SSE streams (each chunk is time-stamped as it arrives),
//!   client aborts, chunked uploads and header values that a normal client refuses to send.
//!
//! No read in this file can block forever: every socket has a read timeout, and running out
//! of time panics with a message that says what was being waited for.

use std::collections::{BTreeMap, HashSet};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub mod browser;
mod handles;
mod self_tests;
mod setup;

pub use handles::{safety_identifier, upstream_id};
pub use setup::{Rig, Setup};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_chatbot-proxy");

/// Default route prefix of the widget API.
pub const PREFIX: &str = "/open-ai";

/// Tenant A: `shop.example.com` exactly, plus every subdomain of `a-tenant.test`.
pub const ORIGIN_A: &str = "https://shop.example.com";
/// A subdomain matched by tenant A's `*.a-tenant.test` entry.
pub const ORIGIN_A_SUB: &str = "https://chat.a-tenant.test";
pub const KEY_A: &str = "sk-tenant-a";
pub const ASSISTANT_A: &str = "asst_A";

/// Tenant B: `b-tenant.test` exactly.
pub const ORIGIN_B: &str = "https://b-tenant.test";
pub const KEY_B: &str = "sk-tenant-b";
pub const ASSISTANT_B: &str = "asst_B";

/// An origin no tenant owns.
pub const EVIL_ORIGIN: &str = "https://evil.net";

/// How long a process gets to become ready.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest wait for any single network read or for a whole ordinary exchange.
pub const IO_TIMEOUT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

/// The ports [`free_port`] must not return: every one it returned, and those a test server
/// keeps for itself while it does not listen (see [`keep_port`]).
fn handed_out() -> std::sync::MutexGuard<'static, HashSet<u16>> {
    static HANDED_OUT: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let set = HANDED_OUT.get_or_init(Default::default);
    set.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A port nobody listens on right now, never handed out twice by this test binary.
pub fn free_port() -> u16 {
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local_addr").port();
        drop(listener);
        if handed_out().insert(port) {
            return port;
        }
    }
}

/// Keeps `port` (a test server's own, which it closes and opens again) from ever being
/// returned by [`free_port`] to another test of this binary.
pub fn keep_port(port: u16) {
    handed_out().insert(port);
}

/// Everything a child process printed on stdout and stderr, interleaved as it arrived.
#[derive(Clone, Default)]
pub struct Output(Arc<Mutex<Vec<u8>>>);

impl Output {
    fn drain(&self, mut pipe: impl Read + Send + 'static) -> JoinHandle<()> {
        let buf = self.0.clone();
        thread::spawn(move || {
            let mut chunk = [0u8; 8192];
            loop {
                match pipe.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.lock().unwrap().extend_from_slice(&chunk[..n]),
                }
            }
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// A child process whose output is being captured; killed on drop.
struct Running {
    child: Child,
    output: Output,
    drains: Vec<JoinHandle<()>>,
}

impl Running {
    fn spawn(cmd: &mut Command) -> Running {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {BIN}: {e}"));
        let output = Output::default();
        let drains = vec![
            output.drain(child.stdout.take().unwrap()),
            output.drain(child.stderr.take().unwrap()),
        ];
        Running {
            child,
            output,
            drains,
        }
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A command for the binary with a clean environment: only PATH and HOME are inherited, so a
/// developer's own `DOMAINS`, `OPENAI_API_KEYS`, ... can never leak into a test.
fn base_command(dir: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir).env_clear();
    for name in ["PATH", "HOME"] {
        if let Some(value) = std::env::var_os(name) {
            cmd.env(name, value);
        }
    }
    cmd.env("RUST_LOG", "info");
    cmd
}

/// Polls `GET path` until it answers 200. Err if the process exits or time runs out.
fn wait_ready(proc: &mut Running, port: u16, path: &str) -> Result<(), (bool, String)> {
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    loop {
        if let Some(status) = proc.exited() {
            return Err((true, format!("exited early with {status}")));
        }
        if probe(port, path) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err((false, format!("GET {path} did not answer 200 within 20 s")));
        }
        thread::sleep(Duration::from_millis(50));
    }
}

fn probe(port: u16, path: &str) -> bool {
    let Ok(mut stream) =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(500))
    else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    let mut got = 0;
    while got < head.len() {
        match stream.read(&mut head[got..]) {
            Ok(0) | Err(_) => return false,
            Ok(n) => got += n,
        }
    }
    &head == b"HTTP/1.1 200"
}

/// Starts a process on a fresh port; retries on another port if it exits early (e.g. the
/// port was taken in between), panics with all captured output if it never becomes ready.
fn start_on_free_port(
    what: &str,
    ready_path: &str,
    mut make: impl FnMut(u16) -> Command,
) -> (Running, u16) {
    let mut failures = String::new();
    for attempt in 1..=3 {
        let port = free_port();
        let mut proc = Running::spawn(&mut make(port));
        match wait_ready(&mut proc, port, ready_path) {
            Ok(()) => return (proc, port),
            Err((exited, why)) => {
                drop_and_settle(&mut proc);
                failures.push_str(&format!(
                    "attempt {attempt} on port {port}: {why}\n--- output ---\n{}\n",
                    proc.output.text()
                ));
                if !exited {
                    break;
                }
            }
        }
    }
    panic!("{what} did not start:\n{failures}");
}

/// Kills the process and gives the pipe readers a moment to collect its last words.
fn drop_and_settle(proc: &mut Running) {
    let _ = proc.child.kill();
    let _ = proc.child.wait();
    for drain in proc.drains.drain(..) {
        let _ = drain.join();
    }
}

// ---------------------------------------------------------------------------------------------
// The stub upstream
// ---------------------------------------------------------------------------------------------

/// The stub OpenAI upstream (`chatbot-proxy stub`).
pub struct Stub {
    /// Held for its `Drop`: the stub process ends with the test.
    _proc: Running,
    pub port: u16,
}

/// One request the stub received, as reported by `GET /__stub/requests`.
#[derive(Debug, Clone)]
pub struct StubRequest {
    pub method: String,
    pub path: String,
    /// Lowercase header names.
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

impl StubRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(|s| s.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| {
            panic!(
                "upstream request {} {} has a non-JSON body ({e}): {:?}",
                self.method, self.path, self.body
            )
        })
    }
}

impl Stub {
    pub fn start() -> Stub {
        let dir = std::env::temp_dir();
        let (proc, port) = start_on_free_port("stub", "/__stub/health", |port| {
            let mut cmd = base_command(&dir);
            cmd.args(["stub", "--listen", &format!("127.0.0.1:{port}")]);
            cmd
        });
        Stub { _proc: proc, port }
    }

    /// The value for `[upstream] base_url` / `OPENAI_BASE_URL`.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }

    fn admin(&self, method: &str, path: &str) -> Resp {
        Req::new(method, &format!("http://127.0.0.1:{}{path}", self.port)).send()
    }

    /// Every request the stub received since start or the last [`Stub::clear_requests`].
    pub fn requests(&self) -> Vec<StubRequest> {
        let resp = self.admin("GET", "/__stub/requests");
        assert_eq!(resp.status, 200, "GET /__stub/requests: {}", resp.body);
        let list = resp.json();
        let list = list
            .as_array()
            .unwrap_or_else(|| panic!("/__stub/requests is not an array: {list}"));
        list.iter()
            .map(|r| StubRequest {
                method: r["method"].as_str().unwrap_or_default().to_string(),
                path: r["path"].as_str().unwrap_or_default().to_string(),
                headers: r["headers"]
                    .as_object()
                    .map(|h| {
                        h.iter()
                            .map(|(k, v)| {
                                let v = v.as_str().map(str::to_string).unwrap_or(v.to_string());
                                (k.to_ascii_lowercase(), v)
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                body: r["body"].as_str().unwrap_or_default().to_string(),
            })
            .collect()
    }

    pub fn clear_requests(&self) {
        let resp = self.admin("DELETE", "/__stub/requests");
        assert!(
            (200..300).contains(&resp.status),
            "DELETE /__stub/requests: {} {}",
            resp.status,
            resp.body
        );
    }

    /// Asserts that the stub received nothing (since the last clear).
    pub fn assert_no_requests(&self, context: &str) {
        let got = self.requests();
        assert!(
            got.is_empty(),
            "{context}: expected nothing sent upstream, the stub got {} request(s): {:?}",
            got.len(),
            got.iter()
                .map(|r| format!("{} {}", r.method, r.path))
                .collect::<Vec<_>>()
        );
    }

    /// Number of SSE streams the stub is writing right now (`GET /__stub/stats`).
    pub fn open_streams(&self) -> u64 {
        let resp = self.admin("GET", "/__stub/stats");
        assert_eq!(resp.status, 200, "GET /__stub/stats: {}", resp.body);
        let stats = resp.json();
        stats["open_streams"]
            .as_u64()
            .unwrap_or_else(|| panic!("/__stub/stats has no numeric open_streams: {stats}"))
    }

    /// Polls [`Stub::open_streams`] until it equals `want` or `within` passes; returns the
    /// last value seen.
    pub fn wait_open_streams(&self, want: u64, within: Duration) -> u64 {
        let deadline = Instant::now() + within;
        loop {
            let now = self.open_streams();
            if now == want || Instant::now() > deadline {
                return now;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Talks to the stub directly (no proxy) the way the proxy should: bearer key and
    /// `OpenAI-Beta: assistants=v2`.
    fn direct(&self, method: &str, path: &str, key: &str, body: Option<&Value>) -> Streamed {
        let mut req = RawRequest::new(method, path)
            .header("Authorization", format!("Bearer {key}"))
            .header("OpenAI-Beta", "assistants=v2");
        if let Some(body) = body {
            req = req.json(body);
        }
        RawConn::send(self.port, &req).read_response()
    }

    /// What the stub itself streams for `message` on a fresh thread: the reference that the
    /// proxy's output is compared with.
    pub fn direct_run_stream(&self, key: &str, assistant: &str, message: &str) -> Vec<u8> {
        let thread = self.direct("POST", "/v1/threads", key, Some(&json!({})));
        assert_eq!(
            thread.status,
            200,
            "direct create thread: {}",
            thread.text()
        );
        let thread_id = thread.json()["id"].as_str().unwrap().to_string();
        let posted = self.direct(
            "POST",
            &format!("/v1/threads/{thread_id}/messages"),
            key,
            Some(&json!({"role": "user", "content": message})),
        );
        assert_eq!(posted.status, 200, "direct post message: {}", posted.text());
        let run = self.direct(
            "POST",
            &format!("/v1/threads/{thread_id}/runs"),
            key,
            Some(&json!({"assistant_id": assistant, "stream": true})),
        );
        assert_eq!(run.status, 200, "direct run: {}", run.text());
        run.body
    }
}

// ---------------------------------------------------------------------------------------------
// The proxy
// ---------------------------------------------------------------------------------------------

/// The proxy under test, running in its own temporary working directory.
pub struct Proxy {
    proc: Running,
    pub port: u16,
    // Dropped after `proc`, so the directory outlives the process.
    dir: tempfile::TempDir,
}

/// How to launch the binary: TOML or environment mode, extra variables, a `.env` file.
#[derive(Default, Clone)]
pub struct Launch {
    toml: Option<String>,
    env: Vec<(String, String)>,
    dotenv: Option<String>,
}

/// How a run of the binary that was expected to exit ended.
#[derive(Debug)]
pub struct Exited {
    pub code: Option<i32>,
    pub output: String,
}

impl Launch {
    /// TOML mode: the text becomes `config.toml` in the working directory.
    pub fn toml(mut self, text: &str) -> Self {
        self.toml = Some(text.to_string());
        self
    }

    /// A process environment variable.
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_string(), value.to_string()));
        self
    }

    /// A `.env` file in the working directory, written verbatim.
    pub fn dotenv(mut self, contents: &str) -> Self {
        self.dotenv = Some(contents.to_string());
        self
    }

    fn prepare(&self, toml_text: Option<String>) -> (tempfile::TempDir, Command) {
        let dir = tempfile::tempdir().expect("tempdir");
        if let Some(contents) = &self.dotenv {
            std::fs::write(dir.path().join(".env"), contents).expect("write .env");
        }
        let mut cmd = base_command(dir.path());
        if let Some(text) = toml_text {
            let path = dir.path().join("config.toml");
            std::fs::write(&path, text).expect("write config.toml");
            cmd.arg("--config").arg(&path);
        }
        for (name, value) in &self.env {
            cmd.env(name, value);
        }
        (dir, cmd)
    }

    /// Starts the proxy on a free port and waits until `/healthz` answers.
    ///
    /// In TOML mode the harness owns `[server] listen`; in environment mode it sets `PORT`.
    pub fn start(self) -> Proxy {
        let mut dir_slot = None;
        let (proc, port) = start_on_free_port("proxy", "/healthz", |port| {
            let toml = self.toml.as_deref().map(|t| with_listen(t, port));
            let (dir, mut cmd) = self.prepare(toml);
            if self.toml.is_none() {
                cmd.env("PORT", port.to_string());
            }
            dir_slot = Some(dir);
            cmd
        });
        Proxy {
            proc,
            port,
            dir: dir_slot.unwrap(),
        }
    }

    /// Runs `chatbot-proxy [--config config.toml] --test` (TOML written verbatim, so line
    /// numbers in messages are the test's own) and waits for it to exit.
    pub fn check(self) -> Exited {
        let (_dir, mut cmd) = self.prepare(self.toml.clone());
        cmd.arg("--test");
        run_to_exit(&mut cmd)
    }

    /// Runs the proxy itself (no `--test`) and expects it to refuse to start.
    pub fn run_expecting_exit(self) -> Exited {
        let (_dir, mut cmd) = self.prepare(self.toml.clone());
        if self.toml.is_none() {
            cmd.env("PORT", free_port().to_string());
        }
        run_to_exit(&mut cmd)
    }

    /// Like [`Launch::check`] but with `--config` pointing at `path` instead of a written file.
    pub fn check_config_path(self, path: &Path) -> Exited {
        let (_dir, mut cmd) = self.prepare(None);
        cmd.arg("--config").arg(path).arg("--test");
        run_to_exit(&mut cmd)
    }
}

fn run_to_exit(cmd: &mut Command) -> Exited {
    let mut proc = Running::spawn(cmd);
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    loop {
        if let Some(status) = proc.exited() {
            for drain in proc.drains.drain(..) {
                let _ = drain.join();
            }
            return Exited {
                code: status.code(),
                output: proc.output.text(),
            };
        }
        if Instant::now() > deadline {
            drop_and_settle(&mut proc);
            panic!(
                "the binary did not exit within 20 s; output:\n{}",
                proc.output.text()
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Puts `listen = "127.0.0.1:PORT"` into the `[server]` table (adding one if needed).
fn with_listen(toml: &str, port: u16) -> String {
    let listen = format!("listen = \"127.0.0.1:{port}\"");
    let mut out = String::new();
    let mut placed = false;
    for line in toml.lines() {
        out.push_str(line);
        out.push('\n');
        if !placed && line.trim() == "[server]" {
            out.push_str(&listen);
            out.push('\n');
            placed = true;
        }
    }
    if placed {
        out
    } else {
        format!("[server]\n{listen}\n\n{out}")
    }
}

impl Proxy {
    pub fn launch() -> Launch {
        Launch::default()
    }

    pub fn start_with_toml(toml: &str) -> Proxy {
        Launch::default().toml(toml).start()
    }

    /// Environment mode: `vars` as the process environment, optionally a `.env` file.
    pub fn start_with_env(vars: &[(&str, &str)], dotenv: Option<&str>) -> Proxy {
        let mut launch = Launch::default();
        for (name, value) in vars {
            launch = launch.env(name, value);
        }
        if let Some(contents) = dotenv {
            launch = launch.dotenv(contents);
        }
        launch.start()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn working_dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// Everything the proxy printed so far.
    pub fn logs(&self) -> String {
        self.proc.output.text()
    }

    /// Waits (up to 5 s) until the log holds at least `count` lines matching `pred`; returns
    /// the matching lines.
    pub fn wait_for_log_lines(&self, count: usize, pred: impl Fn(&str) -> bool) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let lines: Vec<String> = self
                .logs()
                .lines()
                .filter(|l| pred(l))
                .map(str::to_string)
                .collect();
            if lines.len() >= count || Instant::now() > deadline {
                return lines;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn request(&self, method: &str, path: &str) -> Req {
        Req::new(method, &self.url(path))
    }

    pub fn get(&self, path: &str) -> Req {
        self.request("GET", path)
    }

    pub fn post(&self, path: &str) -> Req {
        self.request("POST", path)
    }

    pub fn options(&self, path: &str) -> Req {
        self.request("OPTIONS", path)
    }

    /// `GET {prefix}/create-thread` from `origin`, whatever the answer.
    pub fn try_create_thread(&self, origin: &str) -> Resp {
        self.get(&format!("{PREFIX}/create-thread"))
            .origin(origin)
            .send()
    }

    /// `POST {prefix}/process-message` from `origin`, read whole, whatever the answer.
    pub fn try_post_message(&self, origin: &str, thread_id: &str, message: &str) -> Resp {
        self.post(&format!("{PREFIX}/process-message"))
            .origin(origin)
            .json(&serde_json::json!({"threadId": thread_id, "message": message}))
            .send()
    }

    /// `GET {prefix}/create-thread` from `origin`; asserts 200 and returns the thread id.
    pub fn create_thread(&self, origin: &str) -> String {
        let resp = self.try_create_thread(origin);
        assert_eq!(
            resp.status, 200,
            "create-thread from {origin}: {}",
            resp.body
        );
        resp.json()["id"]
            .as_str()
            .unwrap_or_else(|| panic!("create-thread answer has no id: {}", resp.body))
            .to_string()
    }

    /// Sends `process-message` over a raw connection and returns once the response head has
    /// arrived; the body is then read from the returned connection.
    pub fn open_message_stream(&self, origin: &str, thread_id: &str, message: &str) -> RawConn {
        let req = RawRequest::new("POST", &format!("{PREFIX}/process-message"))
            .header("Origin", origin)
            .json(&json!({"threadId": thread_id, "message": message}));
        let mut conn = RawConn::send(self.port, &req);
        conn.read_head();
        conn
    }

    /// Sends `process-message` and reads the whole response, time-stamping every chunk.
    pub fn send_message(&self, origin: &str, thread_id: &str, message: &str) -> Streamed {
        let req = RawRequest::new("POST", &format!("{PREFIX}/process-message"))
            .header("Origin", origin)
            .json(&json!({"threadId": thread_id, "message": message}));
        RawConn::send(self.port, &req).read_response()
    }

    /// Sends an arbitrary raw request to the proxy and reads the whole response.
    pub fn raw(&self, req: &RawRequest) -> Streamed {
        RawConn::send(self.port, req).read_response()
    }
}

// ---------------------------------------------------------------------------------------------
// Configuration texts
// ---------------------------------------------------------------------------------------------

/// The standard two-tenant configuration against `upstream_base` (a `.../v1` URL), with short
/// upstream timeouts so timeout tests finish quickly.
pub fn two_tenant_toml(upstream_base: &str) -> String {
    two_tenant_toml_with_key_a(upstream_base, KEY_A)
}

/// [`two_tenant_toml`] with tenant A using `key_a` (e.g. one of the stub's special keys).
pub fn two_tenant_toml_with_key_a(upstream_base: &str, key_a: &str) -> String {
    format!(
        r#"[upstream]
base_url = "{upstream_base}"
connect_timeout_ms = 1000
first_byte_timeout_ms = 1500
idle_timeout_ms = 1500

[[tenants]]
name = "tenant-a"
domains = ["shop.example.com", "*.a-tenant.test"]
api_key = "{key_a}"
assistant_id = "{ASSISTANT_A}"

[[tenants]]
name = "tenant-b"
domains = ["b-tenant.test"]
api_key = "{KEY_B}"
assistant_id = "{ASSISTANT_B}"
"#
    )
}

/// A stub and a proxy with the standard two tenants.
pub fn start_pair() -> (Stub, Proxy) {
    let stub = Stub::start();
    let proxy = Proxy::start_with_toml(&two_tenant_toml(&stub.base_url()));
    (stub, proxy)
}

// ---------------------------------------------------------------------------------------------
// Ordinary HTTP exchanges (ureq)
// ---------------------------------------------------------------------------------------------

/// Response headers, names lowercase, in arrival order.
#[derive(Debug, Clone, Default)]
pub struct Headers(pub Vec<(String, String)>);

impl Headers {
    pub fn get(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.0
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }
}

/// A request built in test code and sent with ureq.
pub struct Req {
    method: String,
    url: String,
    headers: Vec<(String, String)>,
    body: Option<Vec<u8>>,
}

/// A complete response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Headers,
    pub body: String,
}

impl Req {
    pub fn new(method: &str, url: &str) -> Req {
        Req {
            method: method.to_string(),
            url: url.to_string(),
            headers: Vec::new(),
            body: None,
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn origin(self, origin: &str) -> Self {
        self.header("Origin", origin)
    }

    pub fn json(self, body: &Value) -> Self {
        self.body("application/json", body.to_string().as_bytes())
    }

    pub fn body(mut self, content_type: &str, bytes: &[u8]) -> Self {
        self.headers
            .push(("Content-Type".to_string(), content_type.to_string()));
        self.body = Some(bytes.to_vec());
        self
    }

    pub fn send(self) -> Resp {
        let agent = ureq::AgentBuilder::new()
            .timeout(IO_TIMEOUT)
            .max_idle_connections(0)
            .redirects(0)
            .build();
        let mut req = agent.request(&self.method, &self.url);
        for (name, value) in &self.headers {
            req = req.set(name, value);
        }
        let result = match (&self.body, self.method.as_str()) {
            (Some(body), _) => req.send_bytes(body),
            (None, "POST" | "PUT" | "PATCH") => req.send_bytes(&[]),
            (None, _) => req.call(),
        };
        let resp = match result {
            Ok(resp) | Err(ureq::Error::Status(_, resp)) => resp,
            Err(e) => panic!("{} {} failed: {e}", self.method, self.url),
        };
        let status = resp.status();
        let mut headers = Vec::new();
        let mut seen = HashSet::new();
        for name in resp.headers_names() {
            if seen.insert(name.clone()) {
                for value in resp.all(&name) {
                    headers.push((name.clone(), value.to_string()));
                }
            }
        }
        let body = resp
            .into_string()
            .unwrap_or_else(|e| panic!("{} {}: reading body: {e}", self.method, self.url));
        Resp {
            status,
            headers: Headers(headers),
            body,
        }
    }
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {}: body is not JSON ({e}): {:?}",
                self.status, self.body
            )
        })
    }

    /// Asserts the contract's error shape: `status`, a JSON content type and
    /// `{"error":{"code": code, "message": "<non-empty>"}}`.
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(
            self.status, status,
            "expected {status} {code}, got {}: {}",
            self.status, self.body
        );
        let content_type = self.header("content-type").unwrap_or_default();
        assert!(
            content_type.starts_with("application/json"),
            "error {status} {code} has content-type {content_type:?}"
        );
        let body = self.json();
        assert_eq!(
            body["error"]["code"].as_str(),
            Some(code),
            "wrong error code in {}",
            self.body
        );
        let message = body["error"]["message"].as_str();
        assert!(
            message.is_some_and(|m| !m.trim().is_empty()),
            "error has no message: {}",
            self.body
        );
    }

    /// Asserts nothing of the upstream's own error answer or headers came through.
    pub fn assert_no_upstream_leak(&self) {
        assert_no_upstream_leak(&self.headers, &self.body);
    }
}

/// The stub marks every answer with `openai-organization: org-stub` and `x-request-id`, and
/// its error bodies use OpenAI's `type`/`param` fields: none of it may reach the client.
pub fn assert_no_upstream_leak(headers: &Headers, body: &str) {
    for name in [
        "openai-organization",
        "x-request-id",
        "openai-processing-ms",
    ] {
        assert!(
            !headers.has(name),
            "upstream header {name} echoed to the client: {:?}",
            headers.get(name)
        );
    }
    for needle in ["org-stub", "invalid_request_error", "\"param\"", "req_"] {
        assert!(
            !body.contains(needle),
            "upstream error body echoed to the client ({needle:?} found): {body}"
        );
    }
}

/// Asserts the response carries `Access-Control-Allow-Origin` equal to `origin`.
pub fn assert_acao(headers: &Headers, origin: &str, context: &str) {
    assert_eq!(
        headers.get("access-control-allow-origin"),
        Some(origin),
        "{context}: Access-Control-Allow-Origin must echo the whitelisted origin"
    );
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP/1.1 over TCP
// ---------------------------------------------------------------------------------------------

/// A request written byte by byte; header values may hold any bytes.
#[derive(Clone)]
pub struct RawRequest {
    method: String,
    path: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    chunked: bool,
}

impl RawRequest {
    pub fn new(method: &str, path: &str) -> RawRequest {
        RawRequest {
            method: method.to_string(),
            path: path.to_string(),
            headers: Vec::new(),
            body: Vec::new(),
            chunked: false,
        }
    }

    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.headers
            .push((name.to_string(), value.as_ref().to_vec()));
        self
    }

    pub fn json(self, body: &Value) -> Self {
        self.body("application/json", body.to_string().as_bytes())
    }

    pub fn body(mut self, content_type: &str, bytes: &[u8]) -> Self {
        self.headers
            .push(("Content-Type".to_string(), content_type.as_bytes().to_vec()));
        self.body = bytes.to_vec();
        self
    }

    /// Send the body with `Transfer-Encoding: chunked` (in 4 KiB chunks) instead of a length.
    pub fn chunked(mut self) -> Self {
        self.chunked = true;
        self
    }

    pub fn to_bytes(&self, port: u16) -> Vec<u8> {
        let mut out = format!("{} {} HTTP/1.1\r\n", self.method, self.path).into_bytes();
        out.extend_from_slice(
            format!("Host: 127.0.0.1:{port}\r\nConnection: close\r\n").as_bytes(),
        );
        for (name, value) in &self.headers {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        if self.chunked {
            out.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
            for piece in self.body.chunks(4096) {
                out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
                out.extend_from_slice(piece);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"0\r\n\r\n");
        } else {
            let has_body = !self.body.is_empty() || self.method != "GET";
            if has_body {
                out.extend_from_slice(
                    format!("Content-Length: {}\r\n", self.body.len()).as_bytes(),
                );
            }
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(&self.body);
        }
        out
    }
}

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Chunked,
    Length(usize),
    UntilClose,
    None,
}

/// How a response body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The body was complete: the final zero-size chunk, the full Content-Length, or (for a
    /// close-delimited body) the connection closed.
    Complete,
    /// The connection closed before the body was complete.
    Cut,
}

/// Body bytes as they arrived.
#[derive(Debug, Clone)]
pub struct Chunk {
    pub bytes: Vec<u8>,
    pub at: Instant,
}

/// One piece of a body read with [`RawConn::next_chunk`].
#[derive(Debug)]
pub enum Piece {
    Data(Chunk),
    End(Ending, Instant),
}

/// A hand-written HTTP/1.1 client connection (one request, `Connection: close`).
pub struct RawConn {
    stream: Option<TcpStream>,
    buf: Vec<u8>,
    eof: bool,
    framing: Framing,
    remaining: usize,
    finished: bool,
    /// When the request was written.
    pub sent_at: Instant,
    pub status: u16,
    pub headers: Headers,
}

impl RawConn {
    /// Connects to 127.0.0.1:`port` and writes the request. Write errors are ignored (a
    /// server may answer and close before reading an oversized body); the answer is what
    /// the tests look at.
    pub fn send(port: u16, req: &RawRequest) -> RawConn {
        Self::send_bytes(port, &req.to_bytes(port))
    }

    pub fn send_bytes(port: u16, bytes: &[u8]) -> RawConn {
        let mut stream =
            TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(5))
                .unwrap_or_else(|e| panic!("connect to 127.0.0.1:{port}: {e}"));
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        let _ = stream.write_all(bytes);
        let _ = stream.flush();
        RawConn {
            stream: Some(stream),
            buf: Vec::new(),
            eof: false,
            framing: Framing::None,
            remaining: 0,
            finished: false,
            sent_at: Instant::now(),
            status: 0,
            headers: Headers::default(),
        }
    }

    /// Reads more bytes into the buffer; false on EOF (or a reset, which ends the body just
    /// the same for a client).
    fn fill(&mut self, waiting_for: &str) -> bool {
        if self.eof {
            return false;
        }
        let stream = self.stream.as_mut().expect("connection already aborted");
        let mut chunk = [0u8; 16384];
        match stream.read(&mut chunk) {
            Ok(0) => {
                self.eof = true;
                false
            }
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!(
                    "no data from the server for {} s while waiting for {waiting_for} \
                     (a request hangs); received so far: {:?}",
                    IO_TIMEOUT.as_secs(),
                    String::from_utf8_lossy(&self.buf)
                )
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => true,
            Err(_) => {
                self.eof = true;
                false
            }
        }
    }

    fn take_line(&mut self) -> Option<Vec<u8>> {
        let pos = self.buf.windows(2).position(|w| w == b"\r\n")?;
        let line = self.buf[..pos].to_vec();
        self.buf.drain(..pos + 2);
        Some(line)
    }

    fn read_line(&mut self, waiting_for: &str) -> Option<Vec<u8>> {
        loop {
            if let Some(line) = self.take_line() {
                return Some(line);
            }
            if !self.fill(waiting_for) {
                return None;
            }
        }
    }

    /// Reads the status line and headers (panics if the connection closes first).
    pub fn read_head(&mut self) {
        let status_line = self
            .read_line("the status line")
            .unwrap_or_else(|| panic!("connection closed before a response status line"));
        let status_line = String::from_utf8_lossy(&status_line).into_owned();
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or_default();
        assert!(
            version.starts_with("HTTP/1."),
            "not an HTTP/1.x status line: {status_line:?}"
        );
        self.status = parts
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let mut headers = Vec::new();
        loop {
            let line = self
                .read_line("response headers")
                .unwrap_or_else(|| panic!("connection closed inside the response headers"));
            if line.is_empty() {
                break;
            }
            let line = String::from_utf8_lossy(&line).into_owned();
            let (name, value) = line
                .split_once(':')
                .unwrap_or_else(|| panic!("malformed header line {line:?}"));
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
        self.headers = Headers(headers);
        let chunked = self
            .headers
            .get("transfer-encoding")
            .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
        self.framing =
            if self.status == 204 || self.status == 304 || (100..200).contains(&self.status) {
                Framing::None
            } else if chunked {
                Framing::Chunked
            } else if let Some(len) = self.headers.get("content-length") {
                let len = len
                    .parse()
                    .unwrap_or_else(|_| panic!("bad content-length {len:?}"));
                self.remaining = len;
                Framing::Length(len)
            } else {
                Framing::UntilClose
            };
    }

    fn end(&mut self, ending: Ending) -> Piece {
        self.finished = true;
        Piece::End(ending, Instant::now())
    }

    /// The next piece of the body: a chunk of data (time-stamped on arrival) or its end.
    pub fn next_chunk(&mut self) -> Piece {
        assert!(!self.finished, "body already ended");
        match self.framing {
            Framing::None => self.end(Ending::Complete),
            Framing::Length(_) => {
                if self.remaining == 0 {
                    return self.end(Ending::Complete);
                }
                if self.buf.is_empty() && !self.fill("the response body") {
                    return self.end(Ending::Cut);
                }
                let n = self.buf.len().min(self.remaining);
                let bytes: Vec<u8> = self.buf.drain(..n).collect();
                self.remaining -= n;
                Piece::Data(Chunk {
                    bytes,
                    at: Instant::now(),
                })
            }
            Framing::UntilClose => {
                if self.buf.is_empty() && !self.fill("the response body") {
                    return self.end(Ending::Complete);
                }
                let bytes = std::mem::take(&mut self.buf);
                Piece::Data(Chunk {
                    bytes,
                    at: Instant::now(),
                })
            }
            Framing::Chunked => {
                let Some(size_line) = self.read_line("a chunk size line") else {
                    return self.end(Ending::Cut);
                };
                let size_text = String::from_utf8_lossy(&size_line).into_owned();
                let size_text = size_text.split(';').next().unwrap_or_default().trim();
                let size = usize::from_str_radix(size_text, 16)
                    .unwrap_or_else(|_| panic!("bad chunk size line {size_text:?}"));
                if size == 0 {
                    // Trailers (if any) up to the blank line.
                    loop {
                        match self.read_line("the end of the chunked body") {
                            Some(line) if line.is_empty() => break,
                            Some(_) => continue,
                            None => return self.end(Ending::Cut),
                        }
                    }
                    return self.end(Ending::Complete);
                }
                while self.buf.len() < size + 2 {
                    if !self.fill("chunk data") {
                        return self.end(Ending::Cut);
                    }
                }
                let bytes: Vec<u8> = self.buf.drain(..size).collect();
                let crlf: Vec<u8> = self.buf.drain(..2).collect();
                assert_eq!(crlf, b"\r\n", "chunk data not followed by CRLF");
                Piece::Data(Chunk {
                    bytes,
                    at: Instant::now(),
                })
            }
        }
    }

    /// Reads the head (if not read yet) and the rest of the body.
    pub fn read_response(mut self) -> Streamed {
        if self.status == 0 {
            self.read_head();
        }
        let mut chunks = Vec::new();
        let mut body = Vec::new();
        let (ending, ended_at) = loop {
            match self.next_chunk() {
                Piece::Data(chunk) => {
                    body.extend_from_slice(&chunk.bytes);
                    chunks.push(chunk);
                }
                Piece::End(ending, at) => break (ending, at),
            }
        };
        Streamed {
            status: self.status,
            headers: self.headers.clone(),
            body,
            chunks,
            ending,
            sent_at: self.sent_at,
            ended_at,
        }
    }

    /// The client goes away: both directions of the socket are shut down and closed.
    pub fn abort(mut self) {
        if let Some(stream) = self.stream.take() {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

/// A response read completely over a [`RawConn`].
#[derive(Debug)]
pub struct Streamed {
    pub status: u16,
    pub headers: Headers,
    pub body: Vec<u8>,
    pub chunks: Vec<Chunk>,
    pub ending: Ending,
    pub sent_at: Instant,
    pub ended_at: Instant,
}

impl Streamed {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {}: body is not JSON ({e}): {:?}",
                self.status,
                self.text()
            )
        })
    }

    pub fn events(&self) -> Vec<SseEvent> {
        parse_sse(&self.body)
    }

    pub fn duration(&self) -> Duration {
        self.ended_at - self.sent_at
    }

    /// The same response as a [`Resp`], to use its assertions.
    pub fn to_resp(&self) -> Resp {
        Resp {
            status: self.status,
            headers: self.headers.clone(),
            body: self.text(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Server-sent events
// ---------------------------------------------------------------------------------------------

/// One dispatched server-sent event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field; `None` means the default type `message`.
    pub event: Option<String>,
    pub data: String,
}

impl SseEvent {
    pub fn name(&self) -> &str {
        self.event.as_deref().unwrap_or("message")
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| {
            panic!(
                "event {} carries non-JSON data ({e}): {:?}",
                self.name(),
                self.data
            )
        })
    }
}

/// Parses a stream the way a browser's EventSource does (WHATWG HTML, "event stream
/// interpretation"): lines end in CRLF, LF or CR; a blank line dispatches the event; an
/// unterminated last event is not dispatched.
pub fn parse_sse(bytes: &[u8]) -> Vec<SseEvent> {
    let text = String::from_utf8_lossy(bytes);
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let mut events = Vec::new();
    let mut event_type: Option<String> = None;
    let mut data = String::new();
    let mut rest = text;
    while let Some(pos) = rest.find(['\r', '\n']) {
        let line = &rest[..pos];
        let skip = if rest[pos..].starts_with("\r\n") {
            2
        } else {
            1
        };
        rest = &rest[pos + skip..];
        if line.is_empty() {
            if !data.is_empty() {
                data.pop(); // the trailing '\n'
                events.push(SseEvent {
                    event: event_type.take(),
                    data: std::mem::take(&mut data),
                });
            }
            event_type = None;
            continue;
        }
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => event_type = Some(value.to_string()),
            "data" => {
                data.push_str(value);
                data.push('\n');
            }
            _ => {}
        }
    }
    events
}

pub fn event_names(events: &[SseEvent]) -> Vec<&str> {
    events.iter().map(SseEvent::name).collect()
}

/// The text of all `thread.message.delta` events, concatenated.
pub fn delta_text(events: &[SseEvent]) -> String {
    events
        .iter()
        .filter(|e| e.name() == "thread.message.delta")
        .flat_map(|e| {
            let v = e.json();
            v["delta"]["content"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter_map(|c| c["text"]["value"].as_str().map(str::to_string))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Masks what legitimately differs between two runs of the same stub stream: generated ids
/// (`"thread_…"`, `"run_…"`, `"msg_…"`, `"step_…"`, `"call_…"` string values, and the
/// Responses API's `"conv_…"`, `"resp_…"`, `"fc_…"`) and timestamps (runs of 9 or more digits). Everything else, including field order, number formatting,
/// whitespace and line endings, is kept.
pub fn normalize_stream(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::with_capacity(text.len());
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    'outer: while i < chars.len() {
        if chars[i] == '"' {
            for prefix in [
                "thread_", "run_", "msg_", "step_", "call_", "conv_", "resp_", "fc_",
            ] {
                let p: Vec<char> = prefix.chars().collect();
                if chars[i + 1..].starts_with(&p) {
                    let start = i + 1 + p.len();
                    let mut end = start;
                    while end < chars.len() && chars[end].is_ascii_alphanumeric() {
                        end += 1;
                    }
                    let is_value = end > start
                        && chars.get(end) == Some(&'"')
                        && chars.get(end + 1) != Some(&':');
                    if is_value {
                        out.push('"');
                        out.push_str(prefix);
                        out.push_str("ID\"");
                        i = end + 1;
                        continue 'outer;
                    }
                }
            }
        }
        if chars[i].is_ascii_digit() {
            let mut end = i;
            while end < chars.len() && chars[end].is_ascii_digit() {
                end += 1;
            }
            if end - i >= 9 {
                out.push('N');
            } else {
                out.extend(&chars[i..end]);
            }
            i = end;
            continue;
        }
        out.push(chars[i]);
        i += 1;
    }
    out
}

/// Polls `cond` every 50 ms for up to `within`.
pub fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// For a stream of `events` events that the stub wrote 300 ms apart (`[stub:slow=300]`): the
/// first chunk holds the first event (`first_event`) and arrived about a stream-length before
/// the end (an unbuffered relay), and the events arrived spread out, not in a few bursts.
pub fn assert_delivered_as_paced(stream: &Streamed, events: usize, first_event: &str) {
    let first = stream.chunks.first().expect("no body chunk arrived");
    assert!(
        String::from_utf8_lossy(&first.bytes).contains(first_event),
        "the first chunk should hold the first event: {:?}",
        String::from_utf8_lossy(&first.bytes)
    );
    let first_to_end = stream.ended_at - first.at;
    let upstream_span = Duration::from_millis(300 * (events as u64 - 1));
    assert!(
        first_to_end + Duration::from_millis(900) >= upstream_span,
        "the first event arrived only {first_to_end:?} before the end, but the upstream \
         spends {upstream_span:?} writing the stream: the relay buffers"
    );
    let mut bursts = 1;
    for pair in stream.chunks.windows(2) {
        if pair[1].at - pair[0].at >= Duration::from_millis(150) {
            bursts += 1;
        }
    }
    assert!(
        bursts * 2 >= events,
        "{events} events arrived in only {bursts} bursts"
    );
}
