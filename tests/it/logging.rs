//! Logging: one access line per request naming tenant, route and status; and no API key,
//! SMTP password or `Authorization` value in any log line or response, even at trace level.

use crate::harness::*;
use serde_json::json;

/// True if `line` holds `status` as a whole token (not part of a longer number or word).
fn has_status(line: &str, status: u16) -> bool {
    let status = status.to_string();
    line.split(|c: char| !c.is_ascii_alphanumeric())
        .any(|token| token == status)
}

fn access_lines(proxy: &Proxy, count: usize, route: &str, tenant: &str, status: u16) -> usize {
    proxy
        .wait_for_log_lines(count, |l| {
            l.contains(route) && l.contains(tenant) && has_status(l, status)
        })
        .len()
}

#[test]
fn every_request_gets_one_access_line_with_tenant_route_and_status() {
    let (_stub, proxy) = start_pair();

    proxy.create_thread(ORIGIN_A);
    proxy.create_thread(ORIGIN_A_SUB);
    let thread_b = proxy.create_thread(ORIGIN_B);
    let stream = proxy.send_message(ORIGIN_B, &thread_b, "log me");
    assert_eq!(stream.status, 200);
    let refused = proxy
        .get(&format!("{PREFIX}/create-thread"))
        .origin(EVIL_ORIGIN)
        .send();
    assert_eq!(refused.status, 403);
    let invalid = proxy
        .post(&format!("{PREFIX}/process-message"))
        .origin(ORIGIN_A)
        .json(&json!({"threadId": "thread_abc123", "message": ""}))
        .send();
    assert_eq!(invalid.status, 400);

    let expectations = [
        ("create-thread", "tenant-a", 200, 2),
        ("create-thread", "tenant-b", 200, 1),
        ("process-message", "tenant-b", 200, 1),
        ("process-message", "tenant-a", 400, 1),
    ];
    for (route, tenant, status, count) in expectations {
        let found = access_lines(&proxy, count, route, tenant, status);
        assert_eq!(
            found,
            count,
            "expected {count} access line(s) for {route} / {tenant} / {status}; log:\n{}",
            proxy.logs()
        );
    }
    let refused_lines =
        proxy.wait_for_log_lines(1, |l| l.contains("create-thread") && has_status(l, 403));
    assert_eq!(
        refused_lines.len(),
        1,
        "expected one access line for the refused request; log:\n{}",
        proxy.logs()
    );
}

#[test]
fn env_mode_access_lines_name_the_tenant_by_its_domain() {
    let stub = Stub::start();
    let base = stub.base_url();
    let proxy = Proxy::start_with_env(
        &[
            ("DOMAINS", r#"["shop.example.com","b-tenant.test"]"#),
            ("OPENAI_API_KEYS", r#"["sk-env-a","sk-env-b"]"#),
            ("ASSISTANT_IDS", r#"["asst_EA","asst_EB"]"#),
            ("OPENAI_BASE_URL", &base),
        ],
        None,
    );
    proxy.create_thread("https://www.b-tenant.test");
    // The tenant's name is its domain; an occurrence inside the calling site
    // ("https://www.b-tenant.test") does not count.
    let names_tenant = |line: &str| {
        line.match_indices("b-tenant.test")
            .any(|(at, _)| !line[..at].ends_with(['.', '/']))
    };
    let found = proxy.wait_for_log_lines(1, |l| {
        l.contains("create-thread") && names_tenant(l) && has_status(l, 200)
    });
    assert_eq!(found.len(), 1, "log:\n{}", proxy.logs());
}

/// Everything a client could see of a response, for secret scanning.
fn visible(headers: &Headers, body: &str) -> String {
    let mut text = String::new();
    for (name, value) in &headers.0 {
        text.push_str(&format!("{name}: {value}\n"));
    }
    text.push_str(body);
    text
}

/// Case-insensitive search for `secret` starting a word (so "sk-" finds "sk-live..." and
/// "Bearer sk-...", not "task-1").
fn contains_secret(text: &str, secret: &str) -> bool {
    let text = text.to_ascii_lowercase();
    let secret = secret.to_ascii_lowercase();
    text.match_indices(&secret).any(|(at, _)| {
        !text[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric())
    })
}

fn assert_no_secrets(what: &str, text: &str, secrets: &[&str]) {
    for secret in secrets {
        assert!(
            !contains_secret(text, secret),
            "{what} contains {secret:?}:\n{text}"
        );
    }
}

#[test]
fn no_key_password_or_authorization_in_logs_or_responses() {
    let stub = Stub::start();
    let toml = format!(
        "{}\n[smtp]\nhost = \"127.0.0.1\"\nport = 2525\nuser = \"bot@example.com\"\npassword = \"smtp-SECRET-PW\"\n",
        two_tenant_toml(&stub.base_url())
    );
    let proxy = Proxy::launch().toml(&toml).env("RUST_LOG", "trace").start();
    let secrets = [
        KEY_A,
        KEY_B,
        "sk-",
        "smtp-SECRET-PW",
        "client-SECRET-TOKEN",
        "Bearer",
    ];
    let mut seen = Vec::new();

    let created = proxy
        .get(&format!("{PREFIX}/create-thread"))
        .origin(ORIGIN_A)
        .header("Authorization", "Bearer client-SECRET-TOKEN")
        .send();
    assert_eq!(created.status, 200);
    seen.push(visible(&created.headers, &created.body));
    let thread_id = created.json()["id"].as_str().unwrap().to_string();

    let req = RawRequest::new("POST", &format!("{PREFIX}/process-message"))
        .header("Origin", ORIGIN_A)
        .header("Authorization", "Bearer client-SECRET-TOKEN")
        .json(&json!({"threadId": thread_id, "message": "secret?"}));
    let stream = proxy.raw(&req);
    assert_eq!(stream.status, 200);
    seen.push(visible(&stream.headers, &stream.text()));

    let stream = proxy.send_message(ORIGIN_A, &thread_id, "[stub:cut] cut");
    seen.push(visible(&stream.headers, &stream.text()));

    for resp in [
        proxy
            .post(&format!("{PREFIX}/process-message"))
            .origin(ORIGIN_B)
            .json(&json!({"threadId": "thread_unknown1", "message": "hi"}))
            .send(),
        proxy
            .get(&format!("{PREFIX}/create-thread"))
            .origin(EVIL_ORIGIN)
            .header("Authorization", "Bearer client-SECRET-TOKEN")
            .send(),
        proxy
            .options(&format!("{PREFIX}/process-message"))
            .origin(ORIGIN_B)
            .header("Access-Control-Request-Method", "POST")
            .send(),
    ] {
        seen.push(visible(&resp.headers, &resp.body));
    }

    // Let the last access lines be written.
    proxy.wait_for_log_lines(1, |l| l.contains("process-message") && has_status(l, 204));

    for (i, text) in seen.iter().enumerate() {
        assert_no_secrets(&format!("response #{i}"), text, &secrets);
    }
    assert_no_secrets("the log (RUST_LOG=trace)", &proxy.logs(), &secrets);
}

#[test]
fn upstream_auth_failures_are_logged_without_the_key() {
    let stub = Stub::start();
    let proxy =
        Proxy::start_with_toml(&two_tenant_toml_with_key_a(&stub.base_url(), "sk-stub-401"));
    let resp = proxy
        .get(&format!("{PREFIX}/create-thread"))
        .origin(ORIGIN_A)
        .send();
    resp.assert_error(502, "upstream_auth_failed");
    let lines = access_lines(&proxy, 1, "create-thread", "tenant-a", 502);
    assert_eq!(lines, 1, "log:\n{}", proxy.logs());
    assert_no_secrets("the log", &proxy.logs(), &["sk-stub-401", "sk-", "Bearer"]);
    assert_no_secrets(
        "the response",
        &visible(&resp.headers, &resp.body),
        &["sk-"],
    );
}
