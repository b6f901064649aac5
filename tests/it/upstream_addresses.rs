//! Upstream address failover through the real binary. The upstream is named `api.test`, and
//! `[upstream] resolve` (or `OPENAI_RESOLVE`) gives that name two addresses, the first one dead
//! (nothing listens there) and the second the stub's. Every request succeeds; the dead address
//! is tried once, by the first request, and never again because the working one is remembered;
//! the failed attempt counts as no upstream error; the stub sees the name in `Host`, not an IP.

use crate::harness::*;

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

const TENANT: &str = "shop";
const HOST: &str = "api.test";

/// Panics unless connecting to `addr` is refused (the premise of these tests).
fn assert_nothing_listens(addr: SocketAddr) {
    match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
        other => panic!("{addr} was expected to refuse connections: {other:?}"),
    }
}

/// One tenant against `http://api.test:{stub port}/v1` with the static addresses `resolve`,
/// and the metrics endpoint on `metrics_port`.
fn named_upstream_toml(stub: &Stub, resolve: &[&str], metrics_port: u16) -> String {
    let resolve: Vec<String> = resolve.iter().map(|ip| format!("{ip:?}")).collect();
    format!(
        r#"[server]
metrics_listen = "127.0.0.1:{metrics_port}"

[upstream]
base_url = "http://{HOST}:{port}/v1"
resolve = [{resolve}]
connect_timeout_ms = 2000
address_connect_timeout_ms = 500

[[tenants]]
name = "{TENANT}"
domains = ["shop.example.com"]
api_key = "{KEY_A}"
assistant_id = "{ASSISTANT_A}"
"#,
        port = stub.port,
        resolve = resolve.join(", "),
    )
}

/// The log lines that say connecting to `addr` failed.
fn failed_attempts(proxy: &Proxy, addr: SocketAddr) -> Vec<String> {
    let needle = format!("connecting to {addr} failed");
    proxy
        .logs()
        .lines()
        .filter(|l| l.contains(&needle))
        .map(str::to_string)
        .collect()
}

/// Waits until the access log holds `count` lines, so every earlier line is in too.
fn wait_for_access_lines(proxy: &Proxy, count: usize) {
    let lines = proxy.wait_for_log_lines(count, |l| l.contains("access client="));
    assert!(
        lines.len() >= count,
        "expected {count} access log lines, got {}:\n{}",
        lines.len(),
        proxy.logs()
    );
}

/// Every upstream request the stub got named the host `api.test:{port}`.
fn assert_host_header_is_the_name(stub: &Stub) {
    let want = format!("{HOST}:{}", stub.port);
    let requests = stub.requests();
    assert!(!requests.is_empty(), "the stub got nothing");
    for r in requests {
        assert_eq!(
            r.header("host"),
            Some(want.as_str()),
            "{} {}",
            r.method,
            r.path
        );
    }
}

#[test]
fn a_dead_ipv6_address_is_tried_once_and_the_ipv4_one_remembered() {
    let stub = Stub::start();
    let dead: SocketAddr = format!("[::1]:{}", stub.port).parse().unwrap();
    assert_nothing_listens(dead);
    let metrics_port = free_port();
    let proxy = Proxy::start_with_toml(&named_upstream_toml(
        &stub,
        &["::1", "127.0.0.1"],
        metrics_port,
    ));

    let mut requests = 0;
    for _ in 0..3 {
        let thread = proxy.create_thread(ORIGIN_A);
        let answer = proxy.send_message(ORIGIN_A, &thread, "hello");
        assert_eq!(answer.status, 200, "{}", answer.text());
        requests += 2;
    }
    wait_for_access_lines(&proxy, requests);

    let failed = failed_attempts(&proxy, dead);
    assert_eq!(
        failed.len(),
        1,
        "the dead address should be tried by the first request only:\n{}",
        proxy.logs()
    );
    assert!(
        failed[0].contains(&format!("trying 127.0.0.1:{}", stub.port)),
        "{}",
        failed[0]
    );
    assert_host_header_is_the_name(&stub);

    // The failed attempt is not an upstream error: no request failed.
    let scrape = Req::new("GET", &format!("http://127.0.0.1:{metrics_port}/metrics")).send();
    assert_eq!(scrape.status, 200, "{}", scrape.body);
    for line in scrape.body.lines() {
        if line.starts_with("chatbot_proxy_upstream_errors_total{") {
            assert!(
                line.ends_with(" 0"),
                "an upstream error was counted: {line}"
            );
        }
    }
    for line in proxy
        .logs()
        .lines()
        .filter(|l| l.contains("access client="))
    {
        assert!(line.contains(" status=200 "), "{line}");
    }
}

#[test]
fn openai_resolve_in_env_mode_skips_a_dead_address() {
    let stub = Stub::start();
    let dead: SocketAddr = format!("127.0.0.2:{}", stub.port).parse().unwrap();
    assert_nothing_listens(dead);
    let base_url = format!("http://{HOST}:{}/v1", stub.port);
    let proxy = Proxy::start_with_env(
        &[
            ("DOMAINS", r#"["shop.example.com"]"#),
            ("OPENAI_API_KEYS", &format!(r#"["{KEY_A}"]"#)),
            ("ASSISTANT_IDS", &format!(r#"["{ASSISTANT_A}"]"#)),
            ("OPENAI_BASE_URL", &base_url),
            ("OPENAI_RESOLVE", r#"["127.0.0.2", "127.0.0.1"]"#),
        ],
        None,
    );
    for _ in 0..4 {
        proxy.create_thread(ORIGIN_A);
    }
    wait_for_access_lines(&proxy, 4);
    assert_eq!(
        failed_attempts(&proxy, dead).len(),
        1,
        "the dead address should be tried by the first request only:\n{}",
        proxy.logs()
    );
    assert_host_header_is_the_name(&stub);
}

#[test]
fn when_no_address_answers_the_request_fails_as_unreachable() {
    let port = free_port();
    for addr in [format!("[::1]:{port}"), format!("127.0.0.2:{port}")] {
        assert_nothing_listens(addr.parse().unwrap());
    }
    let proxy = Proxy::start_with_toml(&format!(
        r#"[upstream]
base_url = "http://{HOST}:{port}/v1"
resolve = ["::1", "127.0.0.2"]

[[tenants]]
name = "{TENANT}"
domains = ["shop.example.com"]
api_key = "{KEY_A}"
assistant_id = "{ASSISTANT_A}"
"#
    ));
    let resp = proxy.try_create_thread(ORIGIN_A);
    resp.assert_error(502, "upstream_unreachable");
    resp.assert_no_upstream_leak();
    // The log lines reach the test through a pipe: wait for them rather than race the answer.
    for addr in [format!("[::1]:{port}"), format!("127.0.0.2:{port}")] {
        let wanted = format!("connecting to {addr} failed");
        let lines = proxy.wait_for_log_lines(1, |l| l.contains(&wanted));
        assert!(!lines.is_empty(), "no {wanted:?} in {}", proxy.logs());
    }
}
