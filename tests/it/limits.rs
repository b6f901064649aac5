//! Request limits through the real binary: requests per client address (on by default),
//! concurrent streams per address, requests per tenant; the client address behind trusted
//! proxies and spoofed forwarding headers from anyone else; and a fleet of two proxies on one
//! real `redis-server` sharing one limit, surviving Redis's loss and sharing again once it is
//! back.
//!
//! Every proxy here reads its time from a file the test writes
//! (`CHATBOT_PROXY_TEST_CLOCK_FILE`), frozen inside one window, so no count restarts halfway
//! through a test and every `Retry-After` is known in advance.

use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use crate::harness::*;
use crate::redis_server::RedisServer;
use serde_json::json;

/// 2024-03-01T12:00:15Z: 45 s before the minute ends, 3585 s before the hour ends.
const NOW: u64 = 1_709_294_415_000;

/// A clock file for the proxies of one test, standing at `unix_ms`.
struct TestClock {
    dir: tempfile::TempDir,
}

impl TestClock {
    fn at(unix_ms: u64) -> TestClock {
        let clock = TestClock {
            dir: tempfile::tempdir().expect("a temporary directory for the clock"),
        };
        clock.set(unix_ms);
        clock
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("now")
    }

    fn set(&self, unix_ms: u64) {
        std::fs::write(self.path(), unix_ms.to_string()).expect("write the clock file");
    }
}

/// The two standard tenants against `stub`, with `limits` in `[limits]` and `tenant_a` added
/// to tenant A's table.
fn limits_toml(stub: &Stub, server: &str, limits: &str, tenant_a: &str) -> String {
    format!(
        r#"[server]
{server}

[upstream]
base_url = "{base}"

[limits]
{limits}

[[tenants]]
name = "tenant-a"
domains = ["shop.example.com", "*.a-tenant.test"]
api_key = "{KEY_A}"
assistant_id = "{ASSISTANT_A}"
{tenant_a}

[[tenants]]
name = "tenant-b"
domains = ["b-tenant.test"]
api_key = "{KEY_B}"
assistant_id = "{ASSISTANT_B}"
"#,
        base = stub.base_url()
    )
}

/// A proxy in TOML mode on `clock`.
fn start_proxy(toml: &str, clock: &Path) -> Proxy {
    Proxy::launch()
        .toml(toml)
        .env("CHATBOT_PROXY_TEST_CLOCK_FILE", clock.to_str().unwrap())
        .start()
}

/// `GET create-thread` from `origin` with extra `headers`.
fn create_thread_with(proxy: &Proxy, origin: &str, headers: &[(&str, &str)]) -> Resp {
    let mut req = proxy.get(&format!("{PREFIX}/create-thread")).origin(origin);
    for (name, value) in headers {
        req = req.header(name, value);
    }
    req.send()
}

/// `create-thread` from the visitor `ip`, forwarded by a trusted proxy on 127.0.0.1.
fn create_thread_as(proxy: &Proxy, ip: &str) -> Resp {
    create_thread_with(proxy, ORIGIN_A, &[("X-Forwarded-For", ip)])
}

/// The stub's create-thread requests so far.
fn threads_created(stub: &Stub) -> usize {
    stub.requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path == "/v1/threads")
        .count()
}

/// Asserts a 429 `rate_limited` with `Retry-After: retry_after`, CORS for `origin`, and a
/// message containing `says`.
fn assert_limited(resp: &Resp, origin: &str, retry_after: &str, says: &str) {
    resp.assert_error(429, "rate_limited");
    assert_eq!(
        resp.header("retry-after"),
        Some(retry_after),
        "{:?}",
        resp.headers
    );
    assert_acao(&resp.headers, origin, "a refused request");
    let message = resp.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(message.contains(says), "{message}");
}

/// The value of `chatbot_proxy_store_errors_total` on the metrics listener at `port`.
fn store_errors(port: u16) -> u64 {
    let scrape = Req::new("GET", &format!("http://127.0.0.1:{port}/metrics")).send();
    assert_eq!(scrape.status, 200, "{}", scrape.body);
    scrape
        .body
        .lines()
        .find_map(|l| l.strip_prefix("chatbot_proxy_store_errors_total "))
        .unwrap_or_else(|| panic!("no store error counter in:\n{}", scrape.body))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn a_hundred_create_threads_from_one_address_stop_at_the_default_limit() {
    let clock = TestClock::at(NOW);
    let stub = Stub::start();
    // No [limits] at all: the default of 60 requests a minute applies.
    let proxy = start_proxy(&two_tenant_toml(&stub.base_url()), &clock.path());

    let statuses: Vec<u16> = (0..100)
        .map(|_| proxy.try_create_thread(ORIGIN_A).status)
        .collect();
    assert!(
        statuses[..60].iter().all(|s| *s == 200),
        "the first 60 pass: {statuses:?}"
    );
    assert!(
        statuses[60..].iter().all(|s| *s == 429),
        "the other 40 are refused: {statuses:?}"
    );
    assert_eq!(
        threads_created(&stub),
        60,
        "nothing past the limit upstream"
    );

    let refused = proxy.try_create_thread(ORIGIN_A);
    assert_limited(&refused, ORIGIN_A, "45", "60 per minute");
    // process-message counts with create-thread, from any site of any tenant: refused
    // before its body is read, so even a malformed one is a 429, not a 400.
    stub.clear_requests();
    let message = proxy.try_post_message(ORIGIN_B, "thread_whatever", "hello");
    assert_limited(&message, ORIGIN_B, "45", "your address");
    let garbage = proxy
        .post(&format!("{PREFIX}/process-message"))
        .origin(ORIGIN_A)
        .body("application/json", b"{not json")
        .send();
    garbage.assert_error(429, "rate_limited");
    stub.assert_no_requests("over the limit");
    // A site that is not whitelisted is still told so first; a preflight is not counted.
    proxy
        .try_create_thread(EVIL_ORIGIN)
        .assert_error(403, "origin_not_allowed");
    let preflight = proxy
        .options(&format!("{PREFIX}/create-thread"))
        .origin(ORIGIN_A)
        .header("Access-Control-Request-Method", "GET")
        .send();
    assert_eq!(preflight.status, 204);

    // Retry-After was honest: in the next minute the address may ask again.
    clock.set(NOW + 45_000);
    let thread_id = proxy.create_thread(ORIGIN_A);
    let answer = proxy.send_message(ORIGIN_A, &thread_id, "hello again");
    assert_eq!(answer.status, 200, "{}", answer.text());
}

#[test]
fn spoofed_forwarding_headers_from_an_untrusted_peer_change_nothing() {
    let clock = TestClock::at(NOW);
    let stub = Stub::start();
    let proxy = start_proxy(
        &limits_toml(&stub, "", "rate_limit_ip = \"3/hour\"", ""),
        &clock.path(),
    );
    let spoofs: [&[(&str, &str)]; 6] = [
        &[("X-Forwarded-For", "198.51.100.1")],
        &[("Forwarded", "for=198.51.100.2")],
        &[("X-Forwarded-For", "198.51.100.3, 198.51.100.4")],
        &[("X-Real-IP", "198.51.100.5")],
        &[
            ("Forwarded", "for=\"[2001:db8::6]\""),
            ("X-Forwarded-For", "198.51.100.6"),
        ],
        &[("X-Forwarded-For", "127.0.0.2")],
    ];
    for (i, headers) in spoofs.iter().enumerate() {
        let resp = create_thread_with(&proxy, ORIGIN_A, headers);
        if i < 3 {
            assert_eq!(resp.status, 200, "request {i}: {}", resp.body);
        } else {
            assert_limited(&resp, ORIGIN_A, "3585", "3 per hour");
        }
    }
    assert_eq!(threads_created(&stub), 3);
    // The access log names the peer, whatever the headers claimed.
    let lines = proxy.wait_for_log_lines(6, |l| l.contains("route=create-thread"));
    assert_eq!(lines.len(), 6, "{}", proxy.logs());
    for line in &lines {
        assert!(line.contains("access client=127.0.0.1:"), "{line}");
        assert!(
            !line.contains("198.51.100") && !line.contains(" via="),
            "{line}"
        );
    }
}

#[test]
fn behind_a_trusted_proxy_each_forwarded_visitor_has_its_own_count() {
    let clock = TestClock::at(NOW);
    let stub = Stub::start();
    let limits = "rate_limit_ip = \"2/min\"\ntrusted_proxies = [\"127.0.0.1/32\"]";
    let proxy = start_proxy(&limits_toml(&stub, "", limits, ""), &clock.path());

    for _ in 0..2 {
        assert_eq!(create_thread_as(&proxy, "198.51.100.1").status, 200);
    }
    assert_limited(
        &create_thread_as(&proxy, "198.51.100.1"),
        ORIGIN_A,
        "45",
        "2 per minute",
    );
    // Another visitor behind the same proxy is counted apart.
    assert_eq!(create_thread_as(&proxy, "198.51.100.2").status, 200);
    // A visitor who prepends a fake address is still counted under the address the trusted
    // proxy appended: the rightmost untrusted one.
    let prepended = create_thread_as(&proxy, "203.0.113.99, 198.51.100.1");
    prepended.assert_error(429, "rate_limited");
    // Forwarded (RFC 7239) names the same visitors.
    let forwarded = create_thread_with(&proxy, ORIGIN_A, &[("Forwarded", "for=198.51.100.2")]);
    assert_eq!(forwarded.status, 200, "{}", forwarded.body);
    let third = create_thread_with(
        &proxy,
        ORIGIN_A,
        &[("Forwarded", "for=203.0.113.99, for=\"198.51.100.2:4711\"")],
    );
    third.assert_error(429, "rate_limited");
    // Without forwarding headers the request counts under the proxy's own address.
    assert_eq!(create_thread_with(&proxy, ORIGIN_A, &[]).status, 200);
    assert_eq!(threads_created(&stub), 5);

    // The access log names the visitor and the proxy it came through.
    let lines = proxy.wait_for_log_lines(8, |l| l.contains("route=create-thread"));
    assert_eq!(lines.len(), 8, "{}", proxy.logs());
    assert!(
        lines[0].contains("access client=198.51.100.1 via=127.0.0.1:"),
        "{}",
        lines[0]
    );
    assert!(
        lines[5].contains("access client=198.51.100.2 via=127.0.0.1:"),
        "{}",
        lines[5]
    );
    assert!(
        lines[7].contains("access client=127.0.0.1:") && !lines[7].contains(" via="),
        "{}",
        lines[7]
    );
}

#[test]
fn the_third_concurrent_stream_is_refused_until_one_ends() {
    let clock = TestClock::at(NOW);
    let stub = Stub::start();
    let limits = "rate_limit_ip = \"off\"\nmax_streams_per_ip = 2";
    let proxy = start_proxy(&limits_toml(&stub, "", limits, ""), &clock.path());
    let threads: Vec<String> = (0..4).map(|_| proxy.create_thread(ORIGIN_A)).collect();
    let words = "[stub:slow=200] one two three four five six";

    let first = proxy.open_message_stream(ORIGIN_A, &threads[0], words);
    let second = proxy.open_message_stream(ORIGIN_A, &threads[1], words);
    assert_eq!((first.status, second.status), (200, 200));
    stub.clear_requests();
    let third = proxy.send_message(ORIGIN_A, &threads[2], words).to_resp();
    assert_limited(&third, ORIGIN_A, "2", "at most 2");
    stub.assert_no_requests("the third stream");
    // Other limits are per address: another tenant's site from the same address is refused
    // too, since streams count per visitor.
    let other = proxy.send_message(ORIGIN_B, "thread_x", "hi").to_resp();
    other.assert_error(429, "rate_limited");

    // A stream that ends frees its slot.
    let first = first.read_response();
    assert_eq!(first.status, 200);
    assert!(
        first.text().contains("thread.run.completed"),
        "{}",
        first.text()
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    let third = loop {
        let attempt = proxy.send_message(ORIGIN_A, &threads[2], "[stub:slow=200] again");
        if attempt.status == 200 || Instant::now() > deadline {
            break attempt;
        }
        thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(third.status, 200, "{}", third.text());
    drop(second);
    // A client that goes away frees its slot as well.
    let gone = proxy.open_message_stream(ORIGIN_A, &threads[3], words);
    gone.abort();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut open = Vec::new();
    while open.len() < 2 {
        assert!(Instant::now() < deadline, "slots were not freed");
        let thread_id = proxy.create_thread(ORIGIN_A);
        let mut conn = RawConn::send(
            proxy.port,
            &RawRequest::new("POST", &format!("{PREFIX}/process-message"))
                .header("Origin", ORIGIN_A)
                .json(&json!({"threadId": thread_id, "message": words})),
        );
        conn.read_head();
        if conn.status == 200 {
            open.push(conn);
        } else {
            thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn a_tenant_limit_counts_every_visitor_of_its_sites_together() {
    let clock = TestClock::at(NOW);
    let stub = Stub::start();
    let limits = "trusted_proxies = [\"127.0.0.1/32\"]";
    let toml = limits_toml(&stub, "", limits, "rate_limit = \"3/hour\"");
    let proxy = start_proxy(&toml, &clock.path());
    for (i, visitor) in ["198.51.100.1", "198.51.100.2", "198.51.100.3"]
        .iter()
        .enumerate()
    {
        let origin = [ORIGIN_A, ORIGIN_A_SUB, ORIGIN_A][i];
        let resp = create_thread_with(&proxy, origin, &[("X-Forwarded-For", visitor)]);
        assert_eq!(resp.status, 200, "{}", resp.body);
    }
    let fourth = create_thread_with(&proxy, ORIGIN_A_SUB, &[("X-Forwarded-For", "198.51.100.4")]);
    assert_limited(&fourth, ORIGIN_A_SUB, "3585", "This site's assistant");
    assert_eq!(threads_created(&stub), 3);
    // Tenant B has no limit of its own.
    for i in 0..5 {
        let visitor = format!("198.51.100.{}", 10 + i);
        let resp = create_thread_with(&proxy, ORIGIN_B, &[("X-Forwarded-For", &visitor)]);
        assert_eq!(resp.status, 200, "{}", resp.body);
    }
    clock.set(NOW + 3_585_000);
    assert_eq!(
        create_thread_as(&proxy, "198.51.100.4").status,
        200,
        "a new hour"
    );
}

#[test]
fn the_environment_sets_every_limit() {
    let clock = TestClock::at(NOW);
    let stub = Stub::start();
    let proxy = Proxy::launch()
        .env("DOMAINS", r#"["shop.example.com","b-tenant.test"]"#)
        .env("OPENAI_API_KEYS", &format!(r#"["{KEY_A}","{KEY_B}"]"#))
        .env(
            "ASSISTANT_IDS",
            &format!(r#"["{ASSISTANT_A}","{ASSISTANT_B}"]"#),
        )
        .env("OPENAI_BASE_URL", &stub.base_url())
        .env("TRUSTED_PROXIES", r#"["127.0.0.1/32"]"#)
        .env("RATE_LIMIT_IP", "3/min")
        .env("RATE_LIMIT_TENANT", "4/min")
        .env("MAX_STREAMS_PER_IP", "1")
        .env(
            "CHATBOT_PROXY_TEST_CLOCK_FILE",
            clock.path().to_str().unwrap(),
        )
        .start();
    // Per address: 3 a minute.
    for _ in 0..3 {
        assert_eq!(create_thread_as(&proxy, "198.51.100.1").status, 200);
    }
    assert_limited(
        &create_thread_as(&proxy, "198.51.100.1"),
        ORIGIN_A,
        "45",
        "3 per minute",
    );
    // Per tenant: 4 a minute (a request refused per address is not counted), for each
    // tenant.
    let third = create_thread_as(&proxy, "198.51.100.2");
    assert_eq!(third.status, 200, "{}", third.body);
    assert_limited(
        &create_thread_as(&proxy, "198.51.100.3"),
        ORIGIN_A,
        "45",
        "This site's assistant",
    );
    let b = create_thread_with(&proxy, ORIGIN_B, &[("X-Forwarded-For", "198.51.100.4")]);
    assert_eq!(b.status, 200, "{}", b.body);
    // One stream per address.
    let thread_b = b.json()["id"].as_str().unwrap().to_string();
    let words = "[stub:slow=200] one two three four";
    let mut first = RawConn::send(
        proxy.port,
        &RawRequest::new("POST", &format!("{PREFIX}/process-message"))
            .header("Origin", ORIGIN_B)
            .header("X-Forwarded-For", "198.51.100.4")
            .json(&json!({"threadId": thread_b, "message": words})),
    );
    first.read_head();
    assert_eq!(first.status, 200);
    let second = proxy.raw(
        &RawRequest::new("POST", &format!("{PREFIX}/process-message"))
            .header("Origin", ORIGIN_B)
            .header("X-Forwarded-For", "198.51.100.4")
            .json(&json!({"threadId": thread_b, "message": "hi"})),
    );
    assert_limited(&second.to_resp(), ORIGIN_B, "2", "at most 1");
}

/// Sends `create-thread` as `visitor` through `proxy` and returns the status, which must not
/// be a 5xx whatever happens to Redis.
fn status_as(proxy: &Proxy, visitor: &str) -> u16 {
    let resp = create_thread_as(proxy, visitor);
    assert!(
        resp.status < 500,
        "a {} from Redis's state: {}",
        resp.status,
        resp.body
    );
    resp.status
}

/// Waits until `proxy` logs that Redis is back, sending requests as fresh visitors (a call
/// made while Redis is down is what checks whether it is back).
fn wait_until_back(proxy: &Proxy, pokes: &mut u32) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !proxy.logs().contains("is back; limits are shared") {
        assert!(
            Instant::now() < deadline,
            "the proxy never went back to Redis:\n{}",
            proxy.logs()
        );
        *pokes += 1;
        assert_eq!(status_as(proxy, &format!("203.0.113.{}", *pokes)), 200);
        thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn two_proxies_on_one_redis_share_one_limit_and_survive_its_loss() {
    const PASSWORD: &str = "fleet-redis-Pa55word";
    const VISITOR: &str = "198.51.100.7";
    let clock = TestClock::at(NOW);
    let stub = Stub::start();
    let mut redis = RedisServer::start_with_password(Some(PASSWORD));
    let limits = format!(
        "rate_limit_ip = \"6/hour\"\ntrusted_proxies = [\"127.0.0.1/32\"]\nredis_url = \"{}\"",
        redis.url()
    );
    let metrics = [free_port(), free_port()];
    let proxies: Vec<Proxy> = metrics
        .iter()
        .map(|port| {
            let server = format!("metrics_listen = \"127.0.0.1:{port}\"");
            start_proxy(&limits_toml(&stub, &server, &limits, ""), &clock.path())
        })
        .collect();
    let [a, b] = &proxies[..] else { unreachable!() };

    // One limit for the fleet: 3 through each proxy, then the 7th is refused on either.
    for i in 0..6 {
        let proxy = [a, b][i % 2];
        assert_eq!(status_as(proxy, VISITOR), 200, "request {i}");
    }
    for proxy in [a, b] {
        assert_limited(
            &create_thread_as(proxy, VISITOR),
            ORIGIN_A,
            "3585",
            "6 per hour",
        );
    }
    assert_eq!(threads_created(&stub), 6);
    assert_eq!(
        redis
            .keys("chatbot-proxy:hit:3600000:*:ip:198.51.100.7")
            .len(),
        1
    );
    assert_eq!((store_errors(metrics[0]), store_errors(metrics[1])), (0, 0));

    // Redis dies: both proxies go on answering, counting in their own process.
    redis.stop();
    for proxy in [a, b] {
        for _ in 0..2 {
            assert_eq!(status_as(proxy, VISITOR), 200, "{}", proxy.logs());
        }
    }
    for (proxy, port) in [a, b].into_iter().zip(metrics) {
        let lines = proxy.wait_for_log_lines(1, |l| {
            l.contains("counting limits in this process until it is back")
        });
        assert_eq!(lines.len(), 1, "one warning per outage:\n{}", proxy.logs());
        assert!(lines[0].contains("redis://:***@127.0.0.1"), "{}", lines[0]);
        assert!(store_errors(port) > 0, "the failure is counted");
    }

    // Redis is back (empty): both proxies return to it and share one limit again.
    redis.restart();
    let mut pokes = 0;
    for proxy in [a, b] {
        wait_until_back(proxy, &mut pokes);
    }
    for i in 0..6 {
        let proxy = [b, a][i % 2];
        assert_eq!(
            status_as(proxy, VISITOR),
            200,
            "request {i} after the restart"
        );
    }
    for proxy in [a, b] {
        create_thread_as(proxy, VISITOR).assert_error(429, "rate_limited");
    }
    for proxy in [a, b] {
        assert!(!proxy.logs().contains(PASSWORD), "{}", proxy.logs());
    }
}
