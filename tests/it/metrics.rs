//! The metrics endpoint through the real binary: `[server] metrics_listen` opens a second
//! listener that serves `GET /metrics` (OpenMetrics text) and nothing else, while the public
//! port answers `/metrics` with the widget API's 404. After a create-thread, streamed
//! answers, a refused site, an upstream 404, a stream that goes silent and lead-tool calls
//! (sent, invalid, capped, queued while SMTP refuses), the scrape holds the matching series and values; every label
//! value is a route, a configured tenant or `-`, and no key, password, thread id, origin or
//! visitor detail appears in it.

use std::time::{Duration, Instant};

use crate::harness::*;
use serde_json::{json, Value};

/// The tenant's site and name.
const SITE: &str = ORIGIN_A;
const TENANT: &str = "shop";
const API_KEY: &str = "sk-metrics-secret-0123";
const SMTP_PASSWORD: &str = "metrics-smtp-Pa55";
const LEAD_EMAIL: &str = "ada@visitor.example";
const LEAD_MESSAGE: &str = "Call me about the analytical engine";

/// One tenant with lead e-mails over SMTP at `smtp_port`, one lead per conversation, a short
/// idle timeout (so a silent stream ends quickly), and the metrics endpoint on `metrics_port`.
fn metrics_toml(stub: &Stub, smtp_port: u16, metrics_port: u16) -> String {
    format!(
        r#"[server]
metrics_listen = "127.0.0.1:{metrics_port}"

[upstream]
base_url = "{base}"
idle_timeout_ms = 1500

[smtp]
host = "127.0.0.1"
port = {smtp_port}
user = "bot@example.com"
password = "{SMTP_PASSWORD}"
tls = "none"
timeout_ms = 3000

[leads]
max_per_conversation = 1

[[tenants]]
name = "{TENANT}"
domains = ["shop.example.com"]
api_key = "{API_KEY}"
assistant_id = "{ASSISTANT_A}"
lead_recipients = ["sales@shop.example.com"]
"#,
        base = stub.base_url()
    )
}

/// A user message whose run calls the lead tool once per entry of `leads` (arguments).
fn lead_message(leads: &[Value]) -> String {
    let calls: Vec<Value> = leads
        .iter()
        .map(|args| json!({"name": "sendEmail", "arguments": args.to_string()}))
        .collect();
    format!("[stub:tool_calls={}] contact me", Value::Array(calls))
}

fn scrape(port: u16, path: &str) -> Resp {
    Req::new("GET", &format!("http://127.0.0.1:{port}{path}")).send()
}

/// The value of the series named exactly `series` (name and labels), if present.
fn value_of(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}

/// Scrapes until every `(series, value)` holds (the access log and its metrics are written
/// just after the response ends); returns the last scrape, or panics with it.
fn scrape_until(port: u16, expected: &[(&str, f64)]) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let resp = scrape(port, "/metrics");
        assert_eq!(resp.status, 200, "GET /metrics: {}", resp.body);
        let missing: Vec<String> = expected
            .iter()
            .filter(|(series, want)| value_of(&resp.body, series) != Some(*want))
            .map(|(series, want)| {
                let got = value_of(&resp.body, series);
                format!("{series}: want {want}, got {got:?}")
            })
            .collect();
        if missing.is_empty() {
            return resp.body;
        }
        if Instant::now() > deadline {
            panic!(
                "the scrape never showed:\n{}\n--- last scrape ---\n{}",
                missing.join("\n"),
                resp.body
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `name{k="v",...}` -> the label pairs.
fn labels(line: &str) -> Vec<(String, String)> {
    let Some(start) = line.find('{') else {
        return Vec::new();
    };
    let end = line.rfind('}').expect("closing brace");
    line[start + 1..end]
        .split("\",")
        .map(|pair| {
            let (key, value) = pair.split_once("=\"").expect("key=\"value\"");
            (key.to_string(), value.trim_end_matches('"').to_string())
        })
        .collect()
}

#[test]
fn the_metrics_endpoint_counts_requests_streams_errors_and_leads() {
    let metrics_port = free_port();
    let Rig {
        stub: _stub,
        smtp,
        proxy,
    } = Setup::new()
        .smtp()
        .start_with_toml(|stub, smtp| metrics_toml(stub, smtp.port(), metrics_port));

    // Before any traffic: the endpoint answers, with the gauges and every error kind at 0.
    let first = scrape(metrics_port, "/metrics");
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(
        first.headers.get("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    assert!(first.body.ends_with("# EOF\n"), "{}", first.body);
    for series in [
        "chatbot_proxy_streams_active",
        "chatbot_proxy_leads_pending",
        r#"chatbot_proxy_upstream_errors_total{kind="timeout"}"#,
        r#"chatbot_proxy_upstream_errors_total{kind="status_5xx"}"#,
    ] {
        assert_eq!(value_of(&first.body, series), Some(0.0), "{series}");
    }

    // The traffic.
    let thread_id = proxy.create_thread(SITE);
    let hello = proxy.send_message(SITE, &thread_id, "Hello there");
    assert_eq!(hello.status, 200, "{}", hello.text());
    assert_eq!(event_names(&hello.events()).last(), Some(&"done"));

    let refused = proxy
        .get(&format!("{PREFIX}/create-thread"))
        .origin(EVIL_ORIGIN)
        .send();
    assert_eq!(refused.status, 403, "{}", refused.body);

    // A genuine handle of a thread the upstream does not know.
    let unknown_thread = proxy.mint_handle(TENANT, "thread_doesnotexist0");
    let unknown = RawRequest::new("POST", &format!("{PREFIX}/process-message"))
        .header("Origin", SITE)
        .json(&json!({"threadId": unknown_thread, "message": "hi"}));
    let unknown = proxy.raw(&unknown);
    assert_eq!(unknown.status, 404, "{}", unknown.text());

    let public = proxy.get("/metrics").send();
    assert_eq!(public.status, 404, "the public port must not serve metrics");
    assert!(!public.body.contains("chatbot_proxy_"), "{}", public.body);

    let valid = json!({"name": "Ada Lovelace", "email": LEAD_EMAIL, "message": LEAD_MESSAGE});
    let invalid = json!({"name": "Ada Lovelace", "email": "not-an-address", "message": "x"});
    let leads = proxy.send_message(SITE, &thread_id, &lead_message(&[valid.clone(), invalid]));
    assert_eq!(leads.status, 200, "{}", leads.text());
    assert_eq!(event_names(&leads.events()).last(), Some(&"done"));
    let capped = proxy.send_message(SITE, &thread_id, &lead_message(&[valid]));
    assert_eq!(capped.status, 200, "{}", capped.text());
    assert_eq!(event_names(&capped.events()).last(), Some(&"done"));
    assert_eq!(smtp.received().len(), 1, "one lead e-mailed, one capped");

    // While SMTP refuses, a lead in another conversation is queued, and pending.
    smtp.refuse_mail("451 4.3.0 Try again later");
    let queued_thread = proxy.create_thread(SITE);
    let other = json!({"name": "Grace Hopper", "email": LEAD_EMAIL, "message": LEAD_MESSAGE});
    let queued = proxy.send_message(SITE, &queued_thread, &lead_message(&[other]));
    assert_eq!(queued.status, 200, "{}", queued.text());
    assert!(
        queued.text().contains("queued for delivery"),
        "{}",
        queued.text()
    );

    // A stream that goes silent is active until the idle timeout ends it.
    let silent_thread = proxy.create_thread(SITE);
    let silent = proxy.open_message_stream(SITE, &silent_thread, "[stub:hang_after=2] wait");
    assert_eq!(silent.status, 200);
    scrape_until(metrics_port, &[("chatbot_proxy_streams_active", 1.0)]);
    let silent = silent.read_response();
    assert!(
        silent.text().contains("upstream_stream_failed"),
        "{}",
        silent.text()
    );

    let ok = |route: &str, status: u16| {
        format!(
            r#"chatbot_proxy_requests_total{{route="{route}",tenant="{TENANT}",status="{status}"}}"#
        )
    };
    let outcome = |outcome: &str| {
        format!(r#"chatbot_proxy_stream_outcomes_total{{tenant="{TENANT}",outcome="{outcome}"}}"#)
    };
    let lead = |result: &str| {
        format!(r#"chatbot_proxy_leads_total{{tenant="{TENANT}",result="{result}"}}"#)
    };
    let kind = |kind: &str| format!(r#"chatbot_proxy_upstream_errors_total{{kind="{kind}"}}"#);
    let expected: Vec<(String, f64)> = vec![
        (ok("create-thread", 200), 3.0),
        (ok("process-message", 200), 5.0),
        (ok("process-message", 404), 1.0),
        (
            r#"chatbot_proxy_requests_total{route="create-thread",tenant="-",status="403"}"#.into(),
            1.0,
        ),
        (
            r#"chatbot_proxy_requests_total{route="-",tenant="-",status="404"}"#.into(),
            1.0,
        ),
        (
            r#"chatbot_proxy_request_duration_seconds_count{route="process-message"}"#.into(),
            6.0,
        ),
        (
            r#"chatbot_proxy_request_duration_seconds_count{route="create-thread"}"#.into(),
            4.0,
        ),
        ("chatbot_proxy_streams_active".into(), 0.0),
        (outcome("completed"), 4.0),
        (outcome("upstream_broken"), 1.0),
        (kind("timeout"), 1.0),
        (kind("status_4xx"), 1.0),
        (kind("unreachable"), 0.0),
        (kind("broken"), 0.0),
        (kind("status_5xx"), 0.0),
        (lead("sent"), 1.0),
        (lead("invalid"), 1.0),
        (lead("capped"), 1.0),
        (lead("queued"), 1.0),
        ("chatbot_proxy_leads_pending".into(), 1.0),
    ];
    let expected: Vec<(&str, f64)> = expected.iter().map(|(s, v)| (s.as_str(), *v)).collect();
    let text = scrape_until(metrics_port, &expected);

    // Bounded labels: routes of the route table, the configured tenant or `-`, numbers.
    let series: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("chatbot_proxy_"))
        .collect();
    for line in &series {
        for (key, value) in labels(line) {
            let allowed = match key.as_str() {
                "route" => ["create-thread", "process-message", "healthz", "-"].contains(&&*value),
                "tenant" => value == TENANT || value == "-",
                "status" | "le" => value.parse::<f64>().is_ok() || value == "+Inf",
                "type" => ["input", "output"].contains(&&*value),
                "outcome" | "kind" | "result" | "reason" => value
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                other => panic!("unexpected label {other} in {line}"),
            };
            assert!(allowed, "label {key}={value:?} in {line}");
        }
    }

    // Nothing secret or visitor-specific.
    for leak in [
        API_KEY,
        SMTP_PASSWORD,
        thread_id.as_str(),
        silent_thread.as_str(),
        queued_thread.as_str(),
        "thread_doesnotexist0",
        "shop.example.com",
        "evil.net",
        LEAD_EMAIL,
        LEAD_MESSAGE,
        "Lovelace",
        "Hopper",
    ] {
        assert!(
            !text.contains(leak),
            "{leak:?} appears in the scrape:\n{text}"
        );
    }
}

#[test]
fn the_metrics_listener_serves_only_get_metrics() {
    let stub = Stub::start();
    let metrics_port = free_port();
    let proxy = Proxy::launch()
        .toml(&format!(
            "[server]\nmetrics_listen = \"127.0.0.1:{metrics_port}\"\n\n{}",
            two_tenant_toml(&stub.base_url())
        ))
        .start();
    let announced = format!("metrics on http://127.0.0.1:{metrics_port}/metrics");
    let lines = proxy.wait_for_log_lines(1, |l| l.contains(&announced));
    assert_eq!(lines.len(), 1, "{}", proxy.logs());
    for path in ["/", "/healthz", "/metrics/", "/open-ai/create-thread"] {
        let resp = scrape(metrics_port, path);
        assert_eq!(
            resp.status, 404,
            "GET {path} on the metrics port: {}",
            resp.body
        );
        assert!(
            !resp.body.contains("chatbot_proxy_"),
            "{path}: {}",
            resp.body
        );
    }
    let post = Req::new("POST", &format!("http://127.0.0.1:{metrics_port}/metrics")).send();
    assert_eq!(post.status, 405, "{}", post.body);
    assert_eq!(post.headers.get("allow"), Some("GET"));
    assert_eq!(scrape(metrics_port, "/metrics?x=1").status, 200);
    assert_eq!(proxy.get("/metrics").send().status, 404);
}

#[test]
fn without_metrics_listen_there_is_no_endpoint() {
    let (_stub, proxy) = start_pair();
    assert!(!proxy.logs().contains("metrics on"), "{}", proxy.logs());
    assert_eq!(proxy.get("/metrics").send().status, 404);
}

#[test]
fn metrics_listen_on_the_proxy_port_is_refused_with_key_and_line() {
    let exited = Proxy::launch()
        .toml(&format!(
            "[server]\nlisten = \"0.0.0.0:3000\"\nmetrics_listen = \"127.0.0.1:3000\"\n\n{}",
            two_tenant_toml("http://127.0.0.1:9/v1")
        ))
        .check();
    assert_ne!(exited.code, Some(0), "{}", exited.output);
    assert!(
        exited
            .output
            .contains("line 3: server.metrics_listen: \"127.0.0.1:3000\" takes the port"),
        "{}",
        exited.output
    );
}
