//! Origin whitelist and CORS: which calling sites are served, which are refused with a 403
//! before anything reaches the upstream, and the CORS headers on preflights and answers.

use crate::harness::*;
use serde_json::json;

fn create_thread_path() -> String {
    format!("{PREFIX}/create-thread")
}

/// Sends create-thread with the given headers; returns the response.
fn create_thread_with(proxy: &Proxy, headers: &[(&str, &str)]) -> Resp {
    let mut req = proxy.get(&create_thread_path());
    for (name, value) in headers {
        req = req.header(name, value);
    }
    req.send()
}

fn assert_refused(resp: &Resp, context: &str) {
    assert_eq!(
        resp.status, 403,
        "{context}: expected 403, got {}: {}",
        resp.status, resp.body
    );
    resp.assert_error(403, "origin_not_allowed");
    assert!(
        !resp.headers.has("access-control-allow-origin"),
        "{context}: a refused origin must get no Access-Control-Allow-Origin, got {:?}",
        resp.header("access-control-allow-origin")
    );
}

#[test]
fn whitelisted_origins_are_served_with_their_tenant_key() {
    let (stub, proxy) = start_pair();
    let cases = [
        // (Origin, key the upstream must see)
        ("https://shop.example.com", KEY_A),
        ("http://shop.example.com", KEY_A),
        ("https://shop.example.com:8443", KEY_A),
        ("https://SHOP.Example.COM", KEY_A),
        ("https://www.shop.example.com", KEY_A),
        ("https://chat.a-tenant.test", KEY_A),
        ("https://b-tenant.test", KEY_B),
        ("https://www.b-tenant.test", KEY_B),
        ("http://b-tenant.test:3000", KEY_B),
    ];
    for (origin, key) in cases {
        stub.clear_requests();
        let resp = proxy.get(&create_thread_path()).origin(origin).send();
        assert_eq!(resp.status, 200, "Origin {origin}: {}", resp.body);
        let upstream = stub.requests();
        assert_eq!(
            upstream.len(),
            1,
            "Origin {origin}: one upstream call expected"
        );
        assert_eq!(
            upstream[0].header("authorization"),
            Some(format!("Bearer {key}").as_str()),
            "Origin {origin} must be served with its own tenant's key"
        );
    }
}

#[test]
fn referer_is_used_when_origin_is_absent() {
    let (stub, proxy) = start_pair();
    let resp = create_thread_with(
        &proxy,
        &[("Referer", "https://www.b-tenant.test/products/42?utm=x#top")],
    );
    assert_eq!(resp.status, 200, "{}", resp.body);
    let upstream = stub.requests();
    assert_eq!(upstream.len(), 1);
    assert_eq!(
        upstream[0].header("authorization"),
        Some(format!("Bearer {KEY_B}").as_str())
    );
}

#[test]
fn origin_takes_precedence_over_referer() {
    let (stub, proxy) = start_pair();

    let resp = create_thread_with(
        &proxy,
        &[
            ("Origin", EVIL_ORIGIN),
            ("Referer", "https://shop.example.com/"),
        ],
    );
    assert_refused(&resp, "evil Origin with a whitelisted Referer");
    stub.assert_no_requests("evil Origin with a whitelisted Referer");

    let resp = create_thread_with(
        &proxy,
        &[
            ("Origin", ORIGIN_B),
            ("Referer", "https://shop.example.com/"),
        ],
    );
    assert_eq!(resp.status, 200, "{}", resp.body);
    let upstream = stub.requests();
    assert_eq!(
        upstream[0].header("authorization"),
        Some(format!("Bearer {KEY_B}").as_str()),
        "the tenant is chosen by Origin, not Referer"
    );
}

#[test]
fn refused_calling_sites_get_403_and_nothing_goes_upstream() {
    let (stub, proxy) = start_pair();
    let cases: &[(&str, &[(&str, &str)])] = &[
        ("no Origin and no Referer", &[]),
        ("Origin: null", &[("Origin", "null")]),
        ("unknown site", &[("Origin", EVIL_ORIGIN)]),
        ("unparsable Origin", &[("Origin", "not a url")]),
        ("Origin without scheme", &[("Origin", "shop.example.com")]),
        ("Origin with empty host", &[("Origin", "https://")]),
        (
            "Origin with a space in the host",
            &[("Origin", "https://shop .example.com")],
        ),
        (
            "Origin list",
            &[("Origin", "https://shop.example.com https://evil.net")],
        ),
        (
            "userinfo trick",
            &[("Origin", "https://shop.example.com@evil.net")],
        ),
        (
            "userinfo trick with password",
            &[("Origin", "https://shop.example.com:443@evil.net")],
        ),
        (
            "backslash trick",
            &[("Origin", "https://evil.net\\@shop.example.com")],
        ),
        (
            "fragment trick",
            &[("Origin", "https://evil.net#@shop.example.com")],
        ),
        (
            "path trick",
            &[("Origin", "https://evil.net/shop.example.com")],
        ),
        (
            "suffix look-alike",
            &[("Origin", "https://shop.example.com.evil.net")],
        ),
        (
            "prefix look-alike",
            &[("Origin", "https://evilshop.example.com")],
        ),
        (
            "www-prefix look-alike",
            &[("Origin", "https://wwwshop.example.com")],
        ),
        ("shorter host", &[("Origin", "https://hop.example.com")]),
        ("other TLD", &[("Origin", "https://shop.example.co")]),
        (
            "parent of an exact domain",
            &[("Origin", "https://example.com")],
        ),
        (
            "subdomain of an exact (non-wildcard) domain",
            &[("Origin", "https://sub.shop.example.com")],
        ),
        (
            "subdomain of exact tenant B",
            &[("Origin", "https://x.b-tenant.test")],
        ),
        (
            "B suffix look-alike",
            &[("Origin", "https://b-tenant.test.evil.net")],
        ),
        (
            "B prefix look-alike",
            &[("Origin", "https://evilb-tenant.test")],
        ),
        (
            "wildcard prefix look-alike",
            &[("Origin", "https://evila-tenant.test")],
        ),
        (
            "wildcard suffix look-alike",
            &[("Origin", "https://chat.a-tenant.test.evil.net")],
        ),
        (
            "wildcard apex without its own entry",
            &[("Origin", "https://a-tenant.test")],
        ),
        ("IP address", &[("Origin", "https://127.0.0.1")]),
        (
            "Referer of an unknown site",
            &[("Referer", "https://evil.net/page")],
        ),
        (
            "Referer naming a tenant in its query",
            &[("Referer", "https://evil.net/?from=https://shop.example.com")],
        ),
        (
            "Referer userinfo trick",
            &[("Referer", "https://shop.example.com@evil.net/page")],
        ),
        ("unparsable Referer", &[("Referer", "::::")]),
    ];
    for (what, headers) in cases {
        let resp = create_thread_with(&proxy, headers);
        assert_refused(&resp, what);
    }
    stub.assert_no_requests("refused calling sites");
}

#[test]
fn refused_origin_cannot_post_messages_either() {
    let (stub, proxy) = start_pair();
    let resp = proxy
        .post(&format!("{PREFIX}/process-message"))
        .origin("https://shop.example.com.evil.net")
        .json(&json!({"threadId": "thread_abc123", "message": "hello"}))
        .send();
    assert_refused(&resp, "process-message from a look-alike");
    stub.assert_no_requests("process-message from a look-alike");
}

#[test]
fn origin_header_bytes_that_are_not_a_url_are_refused() {
    let (stub, proxy) = start_pair();
    let cases: &[(&str, &[u8])] = &[
        ("non-UTF-8 byte", b"https://shop.example.com\xff"),
        ("Latin-1 host", b"https://sh\xf6p.example.com"),
        // Cyrillic 'о' (U+043E) in place of the Latin 'o': a homograph of shop.example.com.
        (
            "homograph host",
            "https://sh\u{43e}p.example.com".as_bytes(),
        ),
    ];
    for (what, origin) in cases {
        let req = RawRequest::new("GET", &create_thread_path()).header("Origin", origin);
        let resp = proxy.raw(&req).to_resp();
        assert_refused(&resp, what);
    }
    stub.assert_no_requests("Origin bytes that are not a URL");
}

#[test]
fn healthz_needs_no_origin() {
    let (stub, proxy) = start_pair();
    for resp in [
        proxy.get("/healthz").send(),
        proxy.get("/healthz").origin(EVIL_ORIGIN).send(),
        proxy.get("/healthz").origin("null").send(),
    ] {
        assert_eq!(resp.status, 200, "{}", resp.body);
        assert_eq!(resp.json(), json!({"status": "ok"}));
    }
    stub.assert_no_requests("healthz");
}

fn preflight(proxy: &Proxy, path: &str, origin: Option<&str>) -> Resp {
    let mut req = proxy
        .options(path)
        .header("Access-Control-Request-Method", "POST")
        .header("Access-Control-Request-Headers", "content-type");
    if let Some(origin) = origin {
        req = req.origin(origin);
    }
    req.send()
}

fn tokens(value: Option<&str>) -> Vec<String> {
    let mut list: Vec<String> = value
        .unwrap_or_default()
        .split(',')
        .map(|t| t.trim().to_ascii_uppercase())
        .filter(|t| !t.is_empty())
        .collect();
    list.sort();
    list
}

#[test]
fn preflight_from_whitelisted_origin_is_answered_at_the_edge() {
    let (stub, proxy) = start_pair();
    let paths = [
        format!("{PREFIX}/process-message"),
        format!("{PREFIX}/create-thread"),
    ];
    let origins = [
        ORIGIN_A,
        ORIGIN_A_SUB,
        ORIGIN_B,
        "https://www.shop.example.com",
        "https://shop.example.com:8443",
    ];
    for path in &paths {
        for origin in origins {
            let resp = preflight(&proxy, path, Some(origin));
            let context = format!("preflight {path} from {origin}");
            assert_eq!(resp.status, 204, "{context}: {}", resp.body);
            assert_acao(&resp.headers, origin, &context);
            let vary = resp.header("vary").unwrap_or_default().to_ascii_lowercase();
            assert!(
                vary.split(',').any(|v| v.trim() == "origin"),
                "{context}: Vary must include Origin, got {vary:?}"
            );
            assert_eq!(
                tokens(resp.header("access-control-allow-methods")),
                tokens(Some("GET, POST, OPTIONS")),
                "{context}: allowed methods"
            );
            assert_eq!(
                tokens(resp.header("access-control-allow-headers")),
                tokens(Some("Content-Type")),
                "{context}: allowed headers"
            );
            assert_eq!(
                resp.header("access-control-max-age"),
                Some("600"),
                "{context}: max-age"
            );
        }
    }
    stub.assert_no_requests("preflights");
}

#[test]
fn preflight_from_other_origins_is_refused_without_acao() {
    let (stub, proxy) = start_pair();
    let path = format!("{PREFIX}/process-message");
    for origin in [
        Some(EVIL_ORIGIN),
        Some("null"),
        Some("https://shop.example.com.evil.net"),
        Some("https://evilshop.example.com"),
        None,
    ] {
        let resp = preflight(&proxy, &path, origin);
        let context = format!("preflight from {origin:?}");
        assert_refused(&resp, &context);
    }
    stub.assert_no_requests("refused preflights");
}

#[test]
fn every_answer_to_a_whitelisted_origin_carries_its_acao() {
    let (_stub, proxy) = start_pair();
    let origin = ORIGIN_A_SUB;

    let created = proxy.get(&create_thread_path()).origin(origin).send();
    assert_eq!(created.status, 200, "{}", created.body);
    assert_acao(&created.headers, origin, "create-thread 200");
    let thread_id = created.json()["id"].as_str().unwrap().to_string();

    let posted = proxy.post(&create_thread_path()).origin(origin).send();
    assert_eq!(posted.status, 200, "{}", posted.body);
    assert_acao(&posted.headers, origin, "POST create-thread 200");

    let stream = proxy.send_message(origin, &thread_id, "hello");
    assert_eq!(stream.status, 200, "{}", stream.text());
    assert_acao(&stream.headers, origin, "process-message stream");

    let bad = proxy
        .post(&format!("{PREFIX}/process-message"))
        .origin(origin)
        .json(&json!({"threadId": thread_id, "message": ""}))
        .send();
    bad.assert_error(400, "empty_message");
    assert_acao(&bad.headers, origin, "400 answer");

    let missing = proxy
        .post(&format!("{PREFIX}/process-message"))
        .origin(origin)
        .json(&json!({"threadId": "thread_doesnotexist0", "message": "hi"}))
        .send();
    missing.assert_error(404, "conversation_not_found");
    assert_acao(
        &missing.headers,
        origin,
        "404 conversation_not_found answer",
    );

    let unknown = proxy.get(&format!("{PREFIX}/nope")).origin(origin).send();
    unknown.assert_error(404, "not_found");
    assert_acao(&unknown.headers, origin, "404 not_found answer");

    let wrong_method = proxy
        .get(&format!("{PREFIX}/process-message"))
        .origin(origin)
        .send();
    wrong_method.assert_error(405, "method_not_allowed");
    assert_acao(&wrong_method.headers, origin, "405 answer");
}

#[test]
fn acao_is_never_a_wildcard() {
    let (_stub, proxy) = start_pair();
    let resp = proxy.get(&create_thread_path()).origin(ORIGIN_B).send();
    assert_eq!(resp.status, 200);
    assert_ne!(resp.header("access-control-allow-origin"), Some("*"));
    let resp = preflight(&proxy, &create_thread_path(), Some(ORIGIN_B));
    assert_ne!(resp.header("access-control-allow-origin"), Some("*"));
}
