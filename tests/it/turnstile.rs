//! The bot check (Turnstile) through the real binary, against a fake siteverify on loopback.
//!
//! [`FakeSiteverify`] is a small HTTP/1.1 server that records every verification it gets
//! (path, content type, whether an `Authorization` header came, the form fields) and answers
//! by token, the way Cloudflare's does: a token is good once (a second use answers
//! `timeout-or-duplicate`), `invalid-*` is refused, `wrong-host-*` succeeds for another
//! hostname, `hang-*` is never answered, `http-500-*`, `garbage-*` and `internal-*` give no
//! verdict. The proxy serves tenant A (`shop.example.com`) with a secret and tenant B
//! without, behind `TRUSTED_PROXIES` so each request names its visitor in `X-Forwarded-For`.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::harness::*;

const SECRET: &str = "0x4AAAAAAA-turnstile-secret-for-tests";
const PATH: &str = "/turnstile/v0/siteverify";
/// The host Turnstile names for tokens solved on tenant A's site.
const SITE_HOST: &str = "shop.example.com";
const VISITOR: &str = "198.51.100.23";

/// One verification the fake received.
#[derive(Debug, Clone)]
struct Verification {
    path: String,
    content_type: Option<String>,
    authorization: bool,
    form: BTreeMap<String, String>,
}

/// A fake siteverify on 127.0.0.1; it stops with the test process.
struct FakeSiteverify {
    port: u16,
    seen: Arc<Mutex<Vec<Verification>>>,
}

impl FakeSiteverify {
    fn start() -> FakeSiteverify {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fake siteverify");
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let used = Arc::new(Mutex::new(HashSet::new()));
        let recorder = seen.clone();
        thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (seen, used) = (recorder.clone(), used.clone());
                thread::spawn(move || serve(conn, &seen, &used));
            }
        });
        FakeSiteverify { port, seen }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}{PATH}", self.port)
    }

    fn verifications(&self) -> Vec<Verification> {
        self.seen.lock().unwrap().clone()
    }
}

/// Answers the requests of one connection until it closes.
fn serve(conn: TcpStream, seen: &Mutex<Vec<Verification>>, used: &Mutex<HashSet<String>>) {
    let mut writer = conn.try_clone().unwrap();
    let mut reader = BufReader::new(conn);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let path = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_string();
        let mut headers = BTreeMap::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
            }
        }
        let length = headers
            .get("content-length")
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let form: BTreeMap<String, String> =
            url::form_urlencoded::parse(&body).into_owned().collect();
        let token = form.get("response").cloned().unwrap_or_default();
        seen.lock().unwrap().push(Verification {
            path,
            content_type: headers.get("content-type").cloned(),
            authorization: headers.contains_key("authorization"),
            form: form.clone(),
        });
        let first_use = used.lock().unwrap().insert(token.clone());
        let (status, answer) = if form.get("secret").map(String::as_str) != Some(SECRET) {
            (200, failure("invalid-input-secret"))
        } else if !first_use {
            (200, failure("timeout-or-duplicate"))
        } else if token.starts_with("hang-") {
            thread::sleep(Duration::from_secs(20));
            return;
        } else if token.starts_with("invalid-") {
            (200, failure("invalid-input-response"))
        } else if token.starts_with("wrong-host-") {
            (200, success("evil.example.net"))
        } else if token.starts_with("http-500-") {
            (500, "{}".to_string())
        } else if token.starts_with("garbage-") {
            (200, "<html>maintenance</html>".to_string())
        } else if token.starts_with("internal-") {
            (200, failure("internal-error"))
        } else {
            (200, success(SITE_HOST))
        };
        let head = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            answer.len()
        );
        if writer
            .write_all(format!("{head}{answer}").as_bytes())
            .is_err()
        {
            return;
        }
    }
}

fn success(hostname: &str) -> String {
    serde_json::json!({
        "success": true,
        "challenge_ts": "2024-03-01T10:00:00.000Z",
        "hostname": hostname,
        "error-codes": [],
        "action": "",
        "cdata": ""
    })
    .to_string()
}

fn failure(code: &str) -> String {
    serde_json::json!({"success": false, "error-codes": [code]}).to_string()
}

/// Tenant A (with the secret) and tenant B (without), the bot check at `verify_url`.
fn toml(stub: &Stub, verify_url: &str) -> String {
    format!(
        r#"[upstream]
base_url = "{base}"

[limits]
trusted_proxies = ["127.0.0.1/32"]
turnstile_verify_url = "{verify_url}"
turnstile_timeout_ms = 1000

[[tenants]]
name = "tenant-a"
domains = ["shop.example.com"]
api_key = "{KEY_A}"
assistant_id = "{ASSISTANT_A}"
turnstile_secret = "{SECRET}"

[[tenants]]
name = "tenant-b"
domains = ["b-tenant.test"]
api_key = "{KEY_B}"
assistant_id = "{ASSISTANT_B}"
"#,
        base = stub.base_url()
    )
}

/// The stub, the fake siteverify and a proxy using both (logging at debug).
fn start() -> (Stub, FakeSiteverify, Proxy) {
    let fake = FakeSiteverify::start();
    let stub = Stub::start();
    let proxy = Proxy::launch()
        .toml(&toml(&stub, &fake.url()))
        .env("RUST_LOG", "debug")
        .start();
    (stub, fake, proxy)
}

/// `create-thread` from `origin` by the visitor [`VISITOR`], with `token` if any.
fn create_thread(proxy: &Proxy, origin: &str, token: Option<&str>) -> Resp {
    let mut req = proxy
        .get(&format!("{PREFIX}/create-thread"))
        .origin(origin)
        .header("X-Forwarded-For", VISITOR);
    if let Some(token) = token {
        req = req.header("CF-Turnstile-Response", token);
    }
    req.send()
}

/// The create-thread requests the stub received.
fn threads_created(stub: &Stub) -> usize {
    stub.requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path == "/v1/threads")
        .count()
}

/// Asserts neither the proxy's log nor `answers` hold the secret.
fn assert_secret_kept(proxy: &Proxy, answers: &[&Resp]) {
    assert!(
        !proxy.logs().contains(SECRET),
        "the Turnstile secret appears in the proxy's log"
    );
    for answer in answers {
        assert!(!answer.body.contains(SECRET), "{}", answer.body);
        assert!(
            answer.headers.0.iter().all(|(_, v)| !v.contains(SECRET)),
            "{:?}",
            answer.headers
        );
    }
}

#[test]
fn a_valid_token_opens_a_conversation_and_siteverify_gets_secret_token_and_address() {
    let (stub, fake, proxy) = start();
    stub.clear_requests();

    let resp = create_thread(&proxy, ORIGIN_A, Some("valid-1"));
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert!(resp.json()["id"].as_str().is_some(), "{}", resp.body);
    assert_eq!(threads_created(&stub), 1);

    let seen = fake.verifications();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let check = &seen[0];
    assert_eq!(check.path, PATH);
    assert_eq!(
        check.content_type.as_deref(),
        Some("application/x-www-form-urlencoded")
    );
    assert!(!check.authorization, "no OpenAI key may go to siteverify");
    let fields: Vec<(&str, &str)> = check
        .form
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        fields,
        [
            ("remoteip", VISITOR),
            ("response", "valid-1"),
            ("secret", SECRET)
        ]
    );

    // Tenant B has no secret: no token needed, siteverify not asked.
    let b = create_thread(&proxy, ORIGIN_B, None);
    assert_eq!(b.status, 200, "{}", b.body);
    assert_eq!(fake.verifications().len(), 1);

    // A preflight for this tenant lets the widget send the token; tenant B's does not need to.
    let preflight = |origin: &str| {
        proxy
            .options(&format!("{PREFIX}/create-thread"))
            .origin(origin)
            .header("Access-Control-Request-Method", "GET")
            .header("Access-Control-Request-Headers", "cf-turnstile-response")
            .send()
    };
    let a = preflight(ORIGIN_A);
    assert_eq!(a.status, 204);
    let allowed = a.header("access-control-allow-headers").unwrap_or_default();
    assert!(
        allowed
            .to_ascii_lowercase()
            .contains("cf-turnstile-response"),
        "{allowed}"
    );
    let b = preflight(ORIGIN_B);
    assert_eq!(
        b.header("access-control-allow-headers"),
        Some("Content-Type")
    );
    assert_secret_kept(&proxy, &[&resp, &a, &b]);
}

#[test]
fn missing_invalid_reused_and_foreign_tokens_are_refused_and_nothing_goes_upstream() {
    let (stub, fake, proxy) = start();
    let first = create_thread(&proxy, ORIGIN_A, Some("valid-once"));
    assert_eq!(first.status, 200, "{}", first.body);
    stub.clear_requests();

    let mut answers = Vec::new();
    for (what, token) in [
        ("no token", None),
        ("an empty token", Some("")),
        ("an invalid token", Some("invalid-1")),
        ("a reused token", Some("valid-once")),
        ("a token solved on another site", Some("wrong-host-1")),
    ] {
        let resp = create_thread(&proxy, ORIGIN_A, token);
        resp.assert_error(403, "bot_check_failed");
        assert_acao(&resp.headers, ORIGIN_A, what);
        answers.push(resp);
    }
    stub.assert_no_requests("refused bot checks");
    assert_eq!(threads_created(&stub), 0);

    // Without a token nothing is asked of siteverify; the others were all verified.
    let tokens: Vec<String> = fake
        .verifications()
        .iter()
        .map(|v| v.form["response"].clone())
        .collect();
    assert_eq!(
        tokens,
        ["valid-once", "invalid-1", "valid-once", "wrong-host-1"]
    );
    let refusals = proxy.wait_for_log_lines(5, |l| l.contains("bot check failed"));
    assert_eq!(refusals.len(), 5, "{refusals:?}");
    let answers: Vec<&Resp> = answers.iter().collect();
    assert_secret_kept(&proxy, &answers);
}

#[test]
fn a_siteverify_that_fails_or_times_out_is_503_never_a_pass() {
    let (stub, fake, proxy) = start();
    stub.clear_requests();

    let mut answers = Vec::new();
    for token in ["http-500-1", "garbage-1", "internal-1", "hang-1"] {
        let started = Instant::now();
        let resp = create_thread(&proxy, ORIGIN_A, Some(token));
        resp.assert_error(503, "bot_check_unavailable");
        if token == "hang-1" {
            // turnstile_timeout_ms = 1000: the proxy stops waiting, it does not hang with it.
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the timeout did not apply: {:?}",
                started.elapsed()
            );
        }
        answers.push(resp);
    }
    stub.assert_no_requests("unavailable bot checks");
    assert_eq!(fake.verifications().len(), 4);
    let answers: Vec<&Resp> = answers.iter().collect();
    assert_secret_kept(&proxy, &answers);
}

#[test]
fn an_unreachable_siteverify_is_503_and_a_tenant_without_a_secret_needs_no_token() {
    // A port nobody listens on: connections are refused.
    let closed = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let stub = Stub::start();
    let url = format!("http://127.0.0.1:{closed}{PATH}");
    let proxy = Proxy::launch().toml(&toml(&stub, &url)).start();
    stub.clear_requests();

    let resp = create_thread(&proxy, ORIGIN_A, Some("valid-1"));
    resp.assert_error(503, "bot_check_unavailable");
    stub.assert_no_requests("siteverify unreachable");

    // Tenant B has no secret: the old widget, without a token, works as before.
    let resp = create_thread(&proxy, ORIGIN_B, None);
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert_eq!(threads_created(&stub), 1);
    let resp = create_thread(&proxy, ORIGIN_B, Some("anything"));
    assert_eq!(
        resp.status, 200,
        "a token is ignored without a secret: {}",
        resp.body
    );
    assert_secret_kept(&proxy, &[&resp]);
    let unavailable = proxy.wait_for_log_lines(1, |l| l.contains("bot check unavailable"));
    assert_eq!(unavailable.len(), 1, "{}", proxy.logs());
}
