//! The proxy's own widget (`GET /widget.js`, `{prefix}/widget-config`): served as a public,
//! cacheable file, then driven in headless chromium on a page of tenant A's site
//! (`http://shop.example.com:PORT/`) that embeds it with its one `<script>` tag, against the
//! stub on both upstream APIs.
//!
//! The page reaches into the widget through its open shadow root (`$w(selector)`, defined by
//! the page). Every test waits for what it checks; screenshots of the main states go to the
//! test output directory (`target/browser-screenshots/widget-*.png`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chromiumoxide::cdp::browser_protocol::accessibility::GetFullAxTreeParams;
use chromiumoxide::cdp::browser_protocol::emulation::SetDeviceMetricsOverrideParams;
use chromiumoxide::cdp::browser_protocol::input::{
    DispatchKeyEventParams, DispatchKeyEventType, InsertTextParams,
};
use chromiumoxide::Page;
use serde_json::Value;

use crate::harness::browser::{eval, screenshot, wait_until, Browser, PageServer};
use crate::harness::*;

/// How long a browser-side wait may take (a reply, a page load).
const WAIT: Duration = Duration::from_secs(20);
const SITE: &str = "shop.example.com";
const TURNSTILE_SECRET: &str = "0x4AAAAAAA-widget-test-secret";
const SITE_KEY: &str = "0x4AAAAAAA-widget-site-key";

/// Which upstream API tenant A talks to.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Api {
    Assistants,
    Responses,
}

/// Tenant A (`shop.example.com`) on `api` with `key` and the extra lines `tenant_extra`;
/// `top` goes before the tenants (e.g. a `[limits]` table).
fn toml(stub: &Stub, api: Api, key: &str, tenant_extra: &str, top: &str) -> String {
    let api_lines = match api {
        Api::Assistants => format!("assistant_id = \"{ASSISTANT_A}\""),
        Api::Responses => "api = \"responses\"\nmodel = \"gpt-test\"".to_string(),
    };
    format!(
        r#"[upstream]
base_url = "{base}"
connect_timeout_ms = 1000
first_byte_timeout_ms = 3000
idle_timeout_ms = 3000
{top}
[[tenants]]
name = "tenant-a"
domains = ["{SITE}"]
api_key = "{key}"
{api_lines}
{tenant_extra}

[[tenants]]
name = "tenant-b"
domains = ["b-tenant.test"]
api_key = "{KEY_B}"
assistant_id = "{ASSISTANT_B}"
"#,
        base = stub.base_url()
    )
}

fn start(api: Api, key: &str, tenant_extra: &str, top: &str) -> (Stub, Proxy) {
    let stub = Stub::start();
    let proxy = Proxy::start_with_toml(&toml(&stub, api, key, tenant_extra, top));
    (stub, proxy)
}

/// The helpers every test page defines before the widget's tag: `$w(selector)` finds an
/// element inside the widget; `__replies()` lists the finished answers' texts.
const PAGE_HELPERS: &str = r#"<script>
window.$w = function (sel) {
  var host = document.getElementById('chatbot-proxy-widget');
  return host && host.shadowRoot ? host.shadowRoot.querySelector(sel) : null;
};
window.$all = function (sel) {
  var host = document.getElementById('chatbot-proxy-widget');
  return host && host.shadowRoot ? Array.from(host.shadowRoot.querySelectorAll(sel)) : [];
};
window.__replies = function () {
  return $all('.cbp-assistant:not(.cbp-greeting):not(.cbp-typing)').map(function (b) { return b.textContent; });
};
window.__errors = function () {
  return $all('.cbp-error').map(function (b) { return b.getAttribute('data-kind') + ': ' + b.textContent; });
};
window.__focus = function () {
  var host = document.getElementById('chatbot-proxy-widget');
  return host && host.shadowRoot ? host.shadowRoot.activeElement : null;
};
window.__idle = function () {
  var i = $w('#cbp-input'), s = $w('.cbp-send');
  return !!i && !i.disabled && !s.disabled;
};
</script>"#;

/// An HTML page of the shop that embeds the widget served by `proxy` (as
/// `http://proxy.example:PORT/widget.js`), with `attrs` on the tag and `prelude` (HTML) first.
fn shop_page(proxy: &Proxy, heading: &str, attrs: &str, prelude: &str) -> String {
    format!(
        "<!doctype html><html lang=en><head><meta charset=utf-8>\
         <meta name=viewport content=\"width=device-width, initial-scale=1\"><title>{heading}</title></head>\
         <body><h1>{heading}</h1><p><a href=\"/second\">Second page</a></p>{PAGE_HELPERS}{prelude}\
         <script src=\"http://proxy.example:{port}/widget.js\" {attrs} async></script></body></html>",
        port = proxy.port
    )
}

/// Serves the shop's two pages (`/` and `/second`) embedding the widget.
fn shop(proxy: &Proxy, attrs: &str, prelude: &str) -> PageServer {
    let pages = PageServer::start();
    pages.put_html("/", &shop_page(proxy, "Shop", attrs, prelude));
    pages.put_html("/second", &shop_page(proxy, "Second page", attrs, prelude));
    pages
}

/// A JavaScript string literal of `text`.
fn js(text: &str) -> String {
    serde_json::to_string(text).unwrap()
}

/// Waits for the widget, then opens it with its launcher.
async fn open_widget(page: &Page) {
    wait_until(page, "$w('.cbp-launcher') !== null", WAIT).await;
    let hidden: bool = eval(page, "$w('.cbp-panel').hidden").await;
    if hidden {
        eval::<Value>(page, "$w('.cbp-launcher').click(), true").await;
    }
    wait_until(page, "!$w('.cbp-panel').hidden", WAIT).await;
}

/// Types `text` into the widget and sends it (as a mouse user would, with the button).
async fn send(page: &Page, text: &str) {
    wait_until(page, "__idle()", WAIT).await;
    let script = format!(
        "$w('#cbp-input').value = {}; $w('.cbp-send').click(); true",
        js(text)
    );
    eval::<Value>(page, &script).await;
}

/// Waits until `n` answers are complete and the input is back, and returns the last.
async fn reply(page: &Page, n: usize) -> String {
    wait_until(
        page,
        &format!("__replies().length >= {n} && __idle()"),
        WAIT,
    )
    .await;
    let replies: Vec<String> = eval(page, "__replies()").await;
    replies.last().cloned().unwrap_or_default()
}

/// Waits until `n` errors are shown and the input is back, and returns the last
/// (`kind: text`).
async fn error_shown(page: &Page, n: usize) -> String {
    wait_until(page, &format!("__errors().length >= {n} && __idle()"), WAIT).await;
    let errors: Vec<String> = eval(page, "__errors()").await;
    errors.last().cloned().unwrap_or_default()
}

/// Presses a key that types nothing (Tab, Enter, Escape) in the focused element.
async fn press(page: &Page, key: &str) {
    let (code, vk, text) = match key {
        "Tab" => ("Tab", 9, None),
        "Enter" => ("Enter", 13, Some("\r")),
        "Escape" => ("Escape", 27, None),
        other => panic!("no key code for {other}"),
    };
    let mut down = DispatchKeyEventParams::builder()
        .r#type(if text.is_some() {
            DispatchKeyEventType::KeyDown
        } else {
            DispatchKeyEventType::RawKeyDown
        })
        .key(key)
        .code(code)
        .windows_virtual_key_code(vk);
    if let Some(text) = text {
        down = down.text(text);
    }
    page.execute(down.build().unwrap()).await.unwrap();
    let up = DispatchKeyEventParams::builder()
        .r#type(DispatchKeyEventType::KeyUp)
        .key(key)
        .code(code)
        .windows_virtual_key_code(vk)
        .build()
        .unwrap();
    page.execute(up).await.unwrap();
}

/// Types `text` into the focused element.
async fn type_text(page: &Page, text: &str) {
    page.execute(InsertTextParams::new(text)).await.unwrap();
}

/// The upstream conversations the stub was asked to create.
fn conversations_created(stub: &Stub) -> usize {
    stub.requests()
        .iter()
        .filter(|r| {
            r.method == "POST" && (r.path == "/v1/threads" || r.path == "/v1/conversations")
        })
        .count()
}

// ---------------------------------------------------------------------------------------------
// The served file and the config (plain sockets)
// ---------------------------------------------------------------------------------------------

#[test]
fn widget_js_is_a_public_cacheable_file_on_any_prefix() {
    let stub = Stub::start();
    let text = toml(&stub, Api::Assistants, KEY_A, "", "").replacen(
        "[upstream]",
        "[server]\nprefix = \"/chat\"\n\n[upstream]",
        1,
    );
    let proxy = Proxy::start_with_toml(&text);

    // A script tag sends no Origin: the file is served anyway.
    let first = proxy.raw(&RawRequest::new("GET", "/widget.js"));
    assert_eq!(first.status, 200, "{}", first.text());
    let header = |name: &str| first.headers.get(name).map(str::to_string);
    assert_eq!(
        header("content-type").as_deref(),
        Some("application/javascript; charset=utf-8")
    );
    assert_eq!(
        header("cache-control").as_deref(),
        Some("public, max-age=300")
    );
    let etag = header("etag").expect("an ETag");
    assert!(etag.starts_with('"') && etag.len() > 10, "{etag}");
    let body = first.text();
    assert_eq!(
        header("content-length").as_deref(),
        Some(body.len().to_string().as_str())
    );
    assert!(body.contains(".cbp-launcher"), "the stylesheet is inside");
    assert!(!body.contains("__WIDGET_CSS__"));
    // No requests anywhere but the proxy: the only addresses are Turnstile's script (loaded
    // only for a site that needs the check) and the SVG namespace (not a request).
    for (at, _) in body.match_indices("http") {
        let rest = &body[at..];
        assert!(
            rest.starts_with("https://challenges.cloudflare.com/turnstile/")
                || rest.starts_with("http://www.w3.org/2000/svg")
                || rest.starts_with("https://PROXY/")
                || rest.starts_with("https?:\\/\\/")
                || rest.starts_with("http:\"")
                || rest.starts_with("https:\""),
            "an outside address in widget.js: {}",
            &rest[..rest.len().min(60)]
        );
    }

    // The browser's copy is current: 304, no body, the same validators.
    let again = proxy.raw(&RawRequest::new("GET", "/widget.js").header("If-None-Match", &etag));
    assert_eq!(again.status, 304);
    assert!(again.body.is_empty());
    assert_eq!(again.headers.get("etag"), Some(etag.as_str()));
    assert_eq!(
        again.headers.get("cache-control"),
        Some("public, max-age=300")
    );
    let weak = format!("\"other\", W/{etag}");
    let again = proxy.raw(&RawRequest::new("GET", "/widget.js").header("If-None-Match", &weak));
    assert_eq!(again.status, 304);
    let stale = proxy.raw(&RawRequest::new("GET", "/widget.js").header("If-None-Match", "\"x\""));
    assert_eq!(stale.status, 200);
    assert_eq!(stale.body, first.body);

    // From any site, or with the query string a cache-buster adds.
    let from_anywhere =
        proxy.raw(&RawRequest::new("GET", "/widget.js?v=2").header("Origin", EVIL_ORIGIN));
    assert_eq!(from_anywhere.status, 200);
    assert_eq!(from_anywhere.body, first.body);

    let head = proxy.raw(&RawRequest::new("HEAD", "/widget.js"));
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    let post = proxy.post("/widget.js").send();
    post.assert_error(405, "method_not_allowed");

    // The widget routes stay under the prefix.
    let config = proxy.get("/chat/widget-config").origin(ORIGIN_A).send();
    assert_eq!(config.status, 200, "{}", config.body);
    proxy
        .get("/open-ai/widget-config")
        .origin(ORIGIN_A)
        .send()
        .assert_error(404, "not_found");
    stub.assert_no_requests("serving the widget");
}

#[test]
fn widget_config_tells_a_whitelisted_site_its_site_key_and_nothing_secret() {
    let extra =
        format!("turnstile_secret = \"{TURNSTILE_SECRET}\"\nturnstile_site_key = \"{SITE_KEY}\"");
    let (stub, proxy) = start(Api::Assistants, KEY_A, &extra, "");
    let path = format!("{PREFIX}/widget-config");

    let a = proxy.get(&path).origin(ORIGIN_A).send();
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(
        a.json(),
        serde_json::json!({"turnstile_site_key": SITE_KEY})
    );
    assert_acao(&a.headers, ORIGIN_A, "widget-config");
    assert_eq!(a.header("cache-control"), Some("no-store"));
    for secret in [TURNSTILE_SECRET, KEY_A, ASSISTANT_A] {
        assert!(!a.body.contains(secret), "{secret} in {}", a.body);
    }

    let b = proxy.get(&path).origin(ORIGIN_B).send();
    assert_eq!(b.status, 200, "{}", b.body);
    assert_eq!(b.json(), serde_json::json!({"turnstile_site_key": null}));

    let evil = proxy.get(&path).origin(EVIL_ORIGIN).send();
    evil.assert_error(403, "origin_not_allowed");
    assert!(!evil.headers.has("access-control-allow-origin"));
    proxy
        .get(&path)
        .send()
        .assert_error(403, "origin_not_allowed");
    proxy
        .post(&path)
        .origin(ORIGIN_A)
        .send()
        .assert_error(405, "method_not_allowed");
    let preflight = proxy
        .options(&path)
        .origin(ORIGIN_A)
        .header("Access-Control-Request-Method", "GET")
        .send();
    assert_eq!(preflight.status, 204);
    stub.assert_no_requests("widget-config");
}

// ---------------------------------------------------------------------------------------------
// In the browser
// ---------------------------------------------------------------------------------------------

async fn streams_a_reply(api: Api) {
    let (stub, proxy) = start(api, KEY_A, "", "");
    let pages = shop(
        &proxy,
        "data-title=\"Shop helper\" data-greeting=\"Hello! How can I help?\" data-color=\"#0a7d32\"",
        "",
    );
    let browser = Browser::launch().await;
    let page = browser.open(&pages.url(SITE, "/")).await;
    open_widget(&page).await;
    let greeting: String = eval(&page, "$w('.cbp-greeting').textContent").await;
    assert_eq!(greeting, "Hello! How can I help?");
    let title: String = eval(&page, "$w('.cbp-title').textContent").await;
    assert_eq!(title, "Shop helper");
    screenshot(&page, &format!("widget-open-{api:?}").to_lowercase()).await;

    // Paced and split: the events arrive one by one, each cut in two writes.
    send(&page, "Hello **there** [stub:slow=30] [stub:split]").await;
    let text = reply(&page, 1).await;
    assert_eq!(text, "You said: Hello there");
    let bold: String = eval(
        &page,
        "$w('.cbp-assistant:not(.cbp-greeting) strong').textContent",
    )
    .await;
    assert_eq!(bold, "there");
    let user: String = eval(&page, "$all('.cbp-user')[0].textContent").await;
    assert_eq!(user, "Hello **there** [stub:slow=30] [stub:split]");
    let errors: Vec<String> = eval(&page, "__errors()").await;
    assert!(errors.is_empty(), "{errors:?}");
    screenshot(&page, &format!("widget-reply-{api:?}").to_lowercase()).await;

    // A second message goes to the same conversation.
    send(&page, "and again").await;
    assert_eq!(reply(&page, 2).await, "You said: and again");
    assert_eq!(conversations_created(&stub), 1);

    // An answer after a tool call: two upstream streams on one response, one reply.
    send(
        &page,
        r#"look it up [stub:tool_calls=[{"name":"lookup","arguments":"{}"}]]"#,
    )
    .await;
    let text = reply(&page, 3).await;
    assert!(text.starts_with("Tool output: "), "{text}");
    let errors: Vec<String> = eval(&page, "__errors()").await;
    assert!(errors.is_empty(), "{errors:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_widget_streams_a_reply_from_the_assistants_api() {
    streams_a_reply(Api::Assistants).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_widget_streams_a_reply_from_the_responses_api() {
    streams_a_reply(Api::Responses).await;
}

/// A page whose `fetch` answers process-message with `window.__chunks` (byte strings cut at
/// chosen places), so the parser meets several events in one read and one event over many.
const FAKE_STREAM: &str = r#"<script>
(function () {
  var real = window.fetch;
  window.fetch = function (url, init) {
    if (String(url).indexOf('/process-message') < 0) return real.apply(this, arguments);
    var enc = new TextEncoder();
    var chunks = window.__chunks.map(function (c) { return typeof c === 'string' ? enc.encode(c) : c; });
    var body = new ReadableStream({
      pull: function (controller) {
        return new Promise(function (r) { setTimeout(r, 15); }).then(function () {
          if (chunks.length) controller.enqueue(chunks.shift()); else controller.close();
        });
      }
    });
    return Promise.resolve(new Response(body, { status: 200, headers: { 'Content-Type': 'text/event-stream' } }));
  };
})();
</script>"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_parser_takes_several_events_per_read_and_events_split_anywhere() {
    let (_stub, proxy) = start(Api::Assistants, KEY_A, "", "");
    let pages = shop(&proxy, "", FAKE_STREAM);
    let browser = Browser::launch().await;
    let page = browser.open(&pages.url(SITE, "/")).await;
    open_widget(&page).await;

    let delta = |id: &str, text: &str| {
        let data = serde_json::json!({"id": id, "object": "thread.message.delta",
            "delta": {"content": [{"index": 0, "type": "text", "text": {"value": text}}]}});
        format!("event: thread.message.delta\ndata: {data}\n\n")
    };
    // Three events in one read (CRLF line ends, a comment), then one event cut in the middle
    // of its field name, of its JSON and of a two-byte character, then the end in one read.
    let mut all = String::new();
    all.push_str("event: thread.run.created\r\ndata: {}\r\n\r\n");
    all.push_str(": keep-alive\r\n\r\n");
    all.push_str(&delta("msg_1", "Caf").replace('\n', "\r\n"));
    let first_read = all.len();
    all.push_str(&delta("msg_1", "é **crème**"));
    all.push_str(&delta("msg_1", " brûlée"));
    all.push_str("event: thread.run.completed\ndata: {}\n\nevent: done\ndata: [DONE]\n\n");
    let bytes = all.as_bytes();
    let e_acute = first_read + all[first_read..].find('é').unwrap();
    let cuts = [
        first_read,
        first_read + 3,
        e_acute + 1,
        e_acute + 10,
        bytes.len() - 30,
    ];
    let mut chunks = Vec::new();
    let mut from = 0;
    for cut in cuts {
        chunks.push(bytes[from..cut].to_vec());
        from = cut;
    }
    chunks.push(bytes[from..].to_vec());
    let chunks: Vec<String> = chunks
        .iter()
        .map(|c| format!("new Uint8Array({:?})", c))
        .collect();
    eval::<Value>(
        &page,
        &format!("window.__chunks = [{}]; true", chunks.join(",")),
    )
    .await;

    send(&page, "dessert?").await;
    assert_eq!(reply(&page, 1).await, "Café crème brûlée");
    let bold: String = eval(
        &page,
        "$w('.cbp-assistant:not(.cbp-greeting) strong').textContent",
    )
    .await;
    assert_eq!(bold, "crème");
    let errors: Vec<String> = eval(&page, "__errors()").await;
    assert!(errors.is_empty(), "{errors:?}");

    // A stream that stops before the end of the answer says so.
    eval::<Value>(
        &page,
        &format!("window.__chunks = [{}]; true", js(&delta("msg_2", "Half"))),
    )
    .await;
    send(&page, "again").await;
    let error = error_shown(&page, 1).await;
    assert!(
        error.starts_with("stream: The answer was interrupted"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_output_never_runs_as_html_and_the_safe_subset_renders() {
    for api in [Api::Assistants, Api::Responses] {
        let (_stub, proxy) = start(api, KEY_A, "", "");
        let pages = shop(&proxy, "", "");
        let browser = Browser::launch().await;
        let page = browser.open(&pages.url(SITE, "/")).await;
        open_widget(&page).await;

        // The stub echoes the message: the model "answers" these payloads.
        let payloads = [
            "<img src=x onerror=\"window.__pwned='img'\">",
            "<script>window.__pwned='script'</script>",
            "[click](javascript:window.__pwned='link')",
            "[data](data:text/html;base64,PHNjcmlwdD5wYXJlbnQuX19wd25lZD0xPC9zY3JpcHQ+)",
            "<a href=\"javascript:window.__pwned='a'\" onclick=\"window.__pwned='click'\">a</a>",
            "<svg onload=window.__pwned='svg'>",
            "[x](https://ok.example/\"onmouseover=\"window.__pwned='attr')",
            "**bold** and _em_ and `code` and [site](https://example.com/page) and mailto:help@example.com and snake_case_name",
        ];
        let message = payloads.join(" \n ");
        send(&page, &message).await;
        let text = reply(&page, 1).await;
        assert!(
            text.contains("<img src=x onerror="),
            "shown as text: {text}"
        );
        assert!(
            text.contains("<script>window.__pwned='script'</script>"),
            "{text}"
        );

        let check = |page: Page| async move {
            let pwned: String = eval(&page, "String(window.__pwned)").await;
            assert_eq!(pwned, "undefined", "a payload ran");
            let dangerous: usize = eval(
                &page,
                "$all('.cbp-log img, .cbp-log script, .cbp-log svg, .cbp-log iframe, .cbp-log object').length",
            )
            .await;
            assert_eq!(dangerous, 0, "elements from model output");
            let handlers: usize = eval(
                &page,
                "$all('.cbp-log *').filter(function (e) { return Array.from(e.attributes).some(function (a) { return /^on/i.test(a.name) || a.name === 'style' || a.name === 'src'; }); }).length",
            )
            .await;
            assert_eq!(handlers, 0, "attributes from model output");
            let links: Vec<Value> = eval(
                &page,
                "$all('.cbp-log a').map(function (a) { return [a.protocol, a.href, a.rel, a.target, a.textContent]; })",
            )
            .await;
            for link in &links {
                let protocol = link[0].as_str().unwrap();
                assert!(["http:", "https:", "mailto:"].contains(&protocol), "{link}");
                assert_eq!(link[2], "noopener noreferrer", "{link}");
                assert_eq!(link[3], "_blank", "{link}");
            }
            let site: Vec<&Value> = links
                .iter()
                .filter(|l| l[1] == "https://example.com/page" && l[4] == "site")
                .collect();
            assert_eq!(site.len(), 1, "the safe link renders: {links:?}");
            assert!(
                links.iter().any(|l| l[1] == "mailto:help@example.com"),
                "{links:?}"
            );
            let strong: Vec<String> = eval(
                &page,
                "$all('.cbp-log strong').map(function (e) { return e.textContent; })",
            )
            .await;
            assert_eq!(
                strong,
                ["bold"],
                "only the bold text is bold (not `window.__x`)"
            );
            let em: Vec<String> = eval(
                &page,
                "$all('.cbp-log em').map(function (e) { return e.textContent; })",
            )
            .await;
            assert_eq!(em, ["em"], "snake_case_name stays text");
            let code: Vec<String> = eval(
                &page,
                "$all('.cbp-log code').map(function (e) { return e.textContent; })",
            )
            .await;
            assert!(code.contains(&"code".to_string()), "{code:?}");
            // Hovering and clicking what looks like a link does nothing either.
            eval::<Value>(
                &page,
                "$all('.cbp-log *').forEach(function (e) { e.dispatchEvent(new MouseEvent('mouseover', {bubbles: true})); e.dispatchEvent(new Event('load')); }); true",
            )
            .await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            let pwned: String = eval(&page, "String(window.__pwned)").await;
            assert_eq!(pwned, "undefined", "a payload ran");
            page
        };
        let page = check(page).await;
        screenshot(&page, &format!("widget-xss-{api:?}").to_lowercase()).await;

        // Restored from sessionStorage after a reload: still only text.
        page.reload().await.unwrap();
        wait_until(&page, "__replies().length === 1", WAIT).await;
        check(page).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_conversation_survives_navigation_and_new_conversation_starts_over() {
    let (stub, proxy) = start(Api::Assistants, KEY_A, "", "");
    let pages = shop(&proxy, "data-greeting=\"Hi!\"", "");
    let browser = Browser::launch().await;
    let page = browser.open(&pages.url(SITE, "/")).await;
    open_widget(&page).await;
    send(&page, "first message").await;
    assert_eq!(reply(&page, 1).await, "You said: first message");
    let handle: String = eval(
        &page,
        "Object.keys(sessionStorage).map(function (k) { return JSON.parse(sessionStorage[k]).handle; })[0]",
    )
    .await;
    assert!(handle.starts_with("thread_"), "{handle}");

    // Another page of the site: the widget is open again, with the conversation.
    page.goto(pages.url(SITE, "/second")).await.unwrap();
    wait_until(&page, "document.title === 'Second page'", WAIT).await;
    wait_until(&page, "$w('.cbp-panel') && !$w('.cbp-panel').hidden", WAIT).await;
    let shown: Vec<String> = eval(
        &page,
        "$all('.cbp-msg').map(function (e) { return e.textContent; })",
    )
    .await;
    assert_eq!(shown, ["Hi!", "first message", "You said: first message"]);
    send(&page, "second message").await;
    assert_eq!(reply(&page, 2).await, "You said: second message");
    screenshot(&page, "widget-after-navigation").await;

    // One conversation upstream, both messages in it.
    assert_eq!(conversations_created(&stub), 1);
    let posted: Vec<String> = stub
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/messages"))
        .map(|r| r.path.clone())
        .collect();
    assert_eq!(posted.len(), 2, "{posted:?}");
    assert_eq!(posted[0], posted[1]);
    assert_eq!(
        posted[0],
        format!("/v1/threads/{}/messages", upstream_id(&handle))
    );

    // "New conversation" starts over: empty log, a new conversation upstream.
    eval::<Value>(&page, "$w('.cbp-new').click(), true").await;
    let shown: Vec<String> = eval(
        &page,
        "$all('.cbp-msg').map(function (e) { return e.textContent; })",
    )
    .await;
    assert_eq!(shown, ["Hi!"]);
    let focused: bool = eval(&page, "__focus() === $w('#cbp-input')").await;
    assert!(focused, "the input has the focus after starting over");
    send(&page, "third message").await;
    assert_eq!(reply(&page, 1).await, "You said: third message");
    assert_eq!(conversations_created(&stub), 2);
    let new_handle: String = eval(
        &page,
        "Object.keys(sessionStorage).map(function (k) { return JSON.parse(sessionStorage[k]).handle; })[0]",
    )
    .await;
    assert_ne!(new_handle, handle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_and_budgets_are_shown_in_plain_words_and_input_comes_back() {
    let browser = Browser::launch().await;

    // The tenant's rate: create-thread and the first message use it up.
    let (_stub, proxy) = start(Api::Assistants, KEY_A, "rate_limit = \"2/hour\"", "");
    let pages = shop(&proxy, "", "");
    let page = browser.open(&pages.url(SITE, "/")).await;
    open_widget(&page).await;
    send(&page, "one").await;
    assert_eq!(reply(&page, 1).await, "You said: one");
    send(&page, "two").await;
    let error = error_shown(&page, 1).await;
    assert!(
        error.starts_with("rate_limited: Too many messages right now. Please try again in"),
        "{error}"
    );
    screenshot(&page, "widget-error-rate-limited").await;
    let typed: String = eval(&page, "$w('#cbp-input').value").await;
    assert_eq!(typed, "", "the input is cleared and usable");
    let focused: bool = eval(&page, "__focus() === $w('#cbp-input')").await;
    assert!(focused, "the focus is back in the input");
    drop(page);

    // A daily token budget of 1: the first answer spends it.
    let (_stub, proxy) = start(Api::Responses, KEY_A, "daily_token_budget = 1", "");
    let pages = shop(&proxy, "", "");
    let page = browser.open(&pages.url(SITE, "/")).await;
    open_widget(&page).await;
    send(&page, "one").await;
    assert_eq!(reply(&page, 1).await, "You said: one");
    send(&page, "two").await;
    let error = error_shown(&page, 1).await;
    assert_eq!(
        error,
        "budget_exhausted: The assistant has reached its limit for today. Please try again tomorrow."
    );
    screenshot(&page, "widget-error-budget").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_are_shown_in_plain_words_and_input_comes_back() {
    let browser = Browser::launch().await;
    for api in [Api::Assistants, Api::Responses] {
        let (_stub, proxy) = start(api, KEY_A, "", "");
        let pages = shop(&proxy, "", "");
        let page = browser.open(&pages.url(SITE, "/")).await;
        open_widget(&page).await;

        send(&page, "fail please [stub:fail]").await;
        let error = error_shown(&page, 1).await;
        assert!(
            error.starts_with("run_ended: The assistant could not finish"),
            "{error}"
        );
        send(&page, "break please [stub:error_event]").await;
        let error = error_shown(&page, 2).await;
        assert!(
            error.starts_with("stream: The answer was interrupted"),
            "{error}"
        );
        send(&page, "cut please [stub:cut]").await;
        let error = error_shown(&page, 3).await;
        assert!(
            error.starts_with("stream: The answer was interrupted"),
            "{error}"
        );
        screenshot(
            &page,
            &format!("widget-error-upstream-{api:?}").to_lowercase(),
        )
        .await;
        // And the conversation goes on.
        send(&page, "all good now").await;
        let replies: Vec<String> = {
            wait_until(&page, "__replies().some(function (r) { return r === 'You said: all good now'; }) && __idle()", WAIT).await;
            eval(&page, "__replies()").await
        };
        assert!(replies.contains(&"You said: all good now".to_string()));
    }

    // A key the upstream refuses: create-thread fails (502) every time.
    let (_stub, proxy) = start(Api::Assistants, "sk-stub-401", "", "");
    let pages = shop(&proxy, "", "");
    let page = browser.open(&pages.url(SITE, "/")).await;
    open_widget(&page).await;
    send(&page, "hello").await;
    let error = error_shown(&page, 1).await;
    assert_eq!(
        error,
        "upstream: The assistant is not available right now. Please try again in a moment."
    );
    screenshot(&page, "widget-error-upstream-down").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_thread_is_retried_once_after_a_transient_failure() {
    // The first create-thread fails in the network; the retry succeeds.
    const FLAKY: &str = r#"<script>
(function () {
  var real = window.fetch;
  window.__creates = 0;
  window.fetch = function (url) {
    if (String(url).indexOf('/create-thread') >= 0 && window.__creates++ === 0) {
      return Promise.reject(new TypeError('Failed to fetch'));
    }
    return real.apply(this, arguments);
  };
})();
</script>"#;
    let browser = Browser::launch().await;
    let (stub, proxy) = start(Api::Assistants, KEY_A, "", "");
    let pages = shop(&proxy, "", FLAKY);
    let page = browser.open(&pages.url(SITE, "/")).await;
    open_widget(&page).await;
    send(&page, "hello").await;
    assert_eq!(reply(&page, 1).await, "You said: hello");
    let creates: u32 = eval(&page, "window.__creates").await;
    assert_eq!(creates, 2);
    assert_eq!(conversations_created(&stub), 1);
    let errors: Vec<String> = eval(&page, "__errors()").await;
    assert!(errors.is_empty(), "{errors:?}");

    // The upstream fails every time (500): asked twice, then the visitor is told.
    let (_stub, proxy) = start(Api::Assistants, "sk-stub-500", "", "");
    let pages = shop(&proxy, "", "");
    let page = browser.open(&pages.url(SITE, "/")).await;
    open_widget(&page).await;
    send(&page, "hello").await;
    let error = error_shown(&page, 1).await;
    assert!(error.starts_with("upstream: "), "{error}");
    let lines = proxy.wait_for_log_lines(2, |l| {
        l.contains("access") && l.contains("route=create-thread")
    });
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines.iter().all(|l| l.contains("status=502")), "{lines:?}");
    // No third try comes later.
    let lines = proxy.wait_for_log_lines(3, |l| {
        l.contains("access") && l.contains("route=create-thread")
    });
    assert_eq!(lines.len(), 2, "{lines:?}");
}

/// A fake siteverify: `good-*` tokens pass for shop.example.com, anything else fails. Records
/// the tokens it was asked about.
struct Siteverify {
    port: u16,
    tokens: Arc<Mutex<Vec<String>>>,
}

impl Siteverify {
    fn start() -> Siteverify {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let tokens: Arc<Mutex<Vec<String>>> = Arc::default();
        let seen = tokens.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let seen = seen.clone();
                std::thread::spawn(move || {
                    let mut writer = conn.try_clone().unwrap();
                    let mut reader = BufReader::new(conn);
                    let mut length = 0;
                    let mut line = String::new();
                    while reader.read_line(&mut line).unwrap_or(0) > 0 {
                        if line == "\r\n" {
                            break;
                        }
                        let lower = line.to_ascii_lowercase();
                        if let Some(n) = lower.strip_prefix("content-length:") {
                            length = n.trim().parse().unwrap_or(0);
                        }
                        line.clear();
                    }
                    let mut body = vec![0; length];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    let form: std::collections::HashMap<String, String> =
                        url::form_urlencoded::parse(&body).into_owned().collect();
                    let token = form.get("response").cloned().unwrap_or_default();
                    seen.lock().unwrap().push(token.clone());
                    let good = token.starts_with("good-")
                        && form.get("secret").map(String::as_str) == Some(TURNSTILE_SECRET);
                    let answer = if good {
                        serde_json::json!({"success": true, "hostname": SITE, "error-codes": []})
                    } else {
                        serde_json::json!({"success": false, "error-codes": ["invalid-input-response"]})
                    }
                    .to_string();
                    let _ = write!(
                        writer,
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                        answer.len()
                    );
                });
            }
        });
        Siteverify { port, tokens }
    }

    fn tokens(&self) -> Vec<String> {
        self.tokens.lock().unwrap().clone()
    }
}

/// A stand-in for Cloudflare's `turnstile` API (no network here): renders a box and hands
/// out the tokens of `window.__tokens` in turn, one per render or reset.
const FAKE_TURNSTILE: &str = r#"<script>
window.__rendered = 0; window.__resets = 0;
window.turnstile = {
  render: function (el, opts) {
    window.__rendered++;
    window.__siteKey = opts.sitekey;
    el.textContent = 'Fake bot check';
    window.__tsCallback = opts.callback;
    setTimeout(function () { opts.callback(window.__tokens.shift()); }, 50);
    return 'w1';
  },
  reset: function () {
    window.__resets++;
    setTimeout(function () { if (window.__tokens.length) window.__tsCallback(window.__tokens.shift()); }, 50);
  }
};
</script>"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bot_check_token_goes_on_create_thread_and_a_failure_is_explained() {
    let verify = Siteverify::start();
    let top = format!(
        "\n[limits]\nturnstile_verify_url = \"http://127.0.0.1:{}/siteverify\"\n",
        verify.port
    );
    let extra =
        format!("turnstile_secret = \"{TURNSTILE_SECRET}\"\nturnstile_site_key = \"{SITE_KEY}\"");
    let (stub, proxy) = start(Api::Assistants, KEY_A, &extra, &top);
    let browser = Browser::launch().await;

    // A token Turnstile did not issue: refused, and the visitor is told.
    let prelude = format!(
        "{FAKE_TURNSTILE}<script>window.__tokens = ['forged-1', 'good-2', 'good-3'];</script>"
    );
    let pages = shop(&proxy, "", &prelude);
    let page = browser.open(&pages.url(SITE, "/")).await;
    open_widget(&page).await;
    wait_until(&page, "window.__rendered === 1", WAIT).await;
    let site_key: String = eval(&page, "window.__siteKey").await;
    assert_eq!(site_key, SITE_KEY);
    let slotted: String = eval(
        &page,
        "document.querySelector('#chatbot-proxy-widget > [slot=turnstile]').textContent",
    )
    .await;
    assert_eq!(slotted, "Fake bot check");
    send(&page, "hello").await;
    let error = error_shown(&page, 1).await;
    assert_eq!(
        error,
        "bot_check_failed: We could not confirm that you are not a robot. Please complete the check and try again."
    );
    screenshot(&page, "widget-error-bot-check").await;
    assert_eq!(conversations_created(&stub), 0);

    // The next (good) token opens the conversation.
    send(&page, "hello again").await;
    assert_eq!(reply(&page, 1).await, "You said: hello again");
    assert_eq!(conversations_created(&stub), 1);
    assert_eq!(verify.tokens(), ["forged-1", "good-2"]);
    let rendered: u32 = eval(&page, "window.__rendered").await;
    assert_eq!(rendered, 1, "the challenge is rendered once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyboard_only_use_with_visible_focus_and_accessible_names() {
    let (_stub, proxy) = start(Api::Assistants, KEY_A, "", "");
    let pages = shop(&proxy, "data-title=\"Help\"", "");
    let browser = Browser::launch().await;
    let page = browser.open(&pages.url(SITE, "/")).await;
    wait_until(&page, "$w('.cbp-launcher') !== null", WAIT).await;

    // Tab from the top of the page: the link, then the widget's launcher.
    let mut on_launcher = false;
    for _ in 0..4 {
        press(&page, "Tab").await;
        on_launcher = eval(&page, "__focus() === $w('.cbp-launcher')").await;
        if on_launcher {
            break;
        }
    }
    assert!(on_launcher, "Tab reaches the launcher");
    let outline: String = eval(&page, "getComputedStyle($w('.cbp-launcher')).outlineStyle").await;
    assert_ne!(outline, "none", "the focus is visible");
    screenshot(&page, "widget-keyboard-focus").await;

    press(&page, "Enter").await;
    wait_until(
        &page,
        "!$w('.cbp-panel').hidden && __focus() === $w('#cbp-input')",
        WAIT,
    )
    .await;
    type_text(&page, "typed by keyboard").await;
    press(&page, "Enter").await;
    assert_eq!(reply(&page, 1).await, "You said: typed by keyboard");
    wait_until(&page, "__focus() === $w('#cbp-input')", WAIT).await;

    // The accessibility tree names the controls, and the log is a polite live region.
    let tree = page.execute(GetFullAxTreeParams::default()).await.unwrap();
    let nodes: Vec<(String, String)> = tree
        .result
        .nodes
        .iter()
        .filter(|n| !n.ignored)
        .map(|n| {
            let text =
                |v: &Option<chromiumoxide::cdp::browser_protocol::accessibility::AxValue>| {
                    v.as_ref()
                        .and_then(|v| v.value.as_ref())
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string()
                };
            (text(&n.role), text(&n.name))
        })
        .collect();
    for wanted in [
        ("textbox", "Message"),
        ("button", "Send"),
        ("log", "Conversation"),
    ] {
        assert!(
            nodes.iter().any(|(r, n)| r == wanted.0 && n == wanted.1),
            "no {wanted:?} in the accessibility tree: {nodes:?}"
        );
    }
    let live: String = eval(&page, "$w('[role=log]').getAttribute('aria-live')").await;
    assert_eq!(live, "polite");

    // Shift+Tab-free tour: Tab from the input reaches Send.
    press(&page, "Tab").await;
    let on_send: bool = eval(&page, "__focus() === $w('.cbp-send')").await;
    assert!(on_send, "Tab goes from the input to Send");

    // Escape closes the panel and gives the focus back to the launcher.
    press(&page, "Escape").await;
    wait_until(
        &page,
        "$w('.cbp-panel').hidden && __focus() === $w('.cbp-launcher')",
        WAIT,
    )
    .await;
    let expanded: String = eval(&page, "$w('.cbp-launcher').getAttribute('aria-expanded')").await;
    assert_eq!(expanded, "false");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usable_on_a_360_px_wide_screen() {
    let (_stub, proxy) = start(Api::Responses, KEY_A, "", "");
    let pages = shop(&proxy, "data-position=\"bottom-left\" data-open", "");
    let browser = Browser::launch_with_width(360).await;
    let page = browser.open(&pages.url(SITE, "/")).await;
    // Headless chromium keeps windows at least 500 px wide: emulate the phone's screen.
    let phone = SetDeviceMetricsOverrideParams::new(360, 740, 2.0, true);
    page.execute(phone).await.unwrap();
    page.reload().await.unwrap();
    // data-open: open on load, without taking the focus from the page.
    wait_until(&page, "$w('.cbp-panel') && !$w('.cbp-panel').hidden", WAIT).await;
    let width: f64 = eval(&page, "window.innerWidth").await;
    assert_eq!(width, 360.0);
    send(&page, "A longer message that has to wrap on a narrow phone screen, with a link https://example.com/a/very/long/path/that/must/not/overflow").await;
    reply(&page, 1).await;
    let boxes: Vec<Vec<f64>> = eval(
        &page,
        "['.cbp-panel', '.cbp-send', '#cbp-input', '.cbp-new', '.cbp-close'].map(function (s) { var r = $w(s).getBoundingClientRect(); return [r.left, r.right, r.top, r.bottom]; })",
    )
    .await;
    let height: f64 = eval(&page, "window.innerHeight").await;
    for b in &boxes {
        assert!(
            b[0] >= 0.0 && b[1] <= width,
            "inside the screen's width: {boxes:?}"
        );
        assert!(
            b[2] >= 0.0 && b[3] <= height,
            "inside the screen's height: {boxes:?}"
        );
    }
    let overflow: bool = eval(
        &page,
        "document.documentElement.scrollWidth > window.innerWidth || $w('.cbp-log').scrollWidth > $w('.cbp-log').clientWidth",
    )
    .await;
    assert!(!overflow, "nothing scrolls sideways");
    screenshot(&page, "widget-phone-360").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_the_proxy_no_longer_knows_continues_in_a_new_one() {
    // A handle kept from an earlier visit that the proxy does not know (forged, expired, or
    // signed by a secret since replaced).
    let stale = format!("thread_{}.{}", "a".repeat(24), "A".repeat(32));
    let (stub, proxy) = start(Api::Assistants, KEY_A, "", "");
    let key = format!("chatbot-proxy:http://proxy.example:{}/open-ai", proxy.port);
    let saved = serde_json::json!({"handle": stale, "messages": [], "open": true}).to_string();
    let prelude = format!(
        "<script>sessionStorage.setItem({}, {});</script>",
        js(&key),
        js(&saved)
    );
    let pages = shop(&proxy, "", &prelude);
    let browser = Browser::launch().await;
    let page = browser.open(&pages.url(SITE, "/")).await;
    wait_until(&page, "$w('.cbp-panel') && !$w('.cbp-panel').hidden", WAIT).await;
    send(&page, "still there?").await;
    assert_eq!(reply(&page, 1).await, "You said: still there?");
    let errors: Vec<String> = eval(&page, "__errors()").await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(conversations_created(&stub), 1);
    let handle: String = eval(
        &page,
        &format!("JSON.parse(sessionStorage.getItem({})).handle", js(&key)),
    )
    .await;
    assert_ne!(handle, stale);
}

/// `chatbot-proxy demo` on free ports, in a temporary directory; killed when dropped.
struct Demo {
    child: std::process::Child,
    page_port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Demo {
    fn start() -> Demo {
        let dir = tempfile::tempdir().unwrap();
        let (proxy_port, stub_port, page_port) = (free_port(), free_port(), free_port());
        let child = std::process::Command::new(BIN)
            .current_dir(dir.path())
            .args(["demo", "--pace-ms", "5"])
            .args(["--listen", &format!("127.0.0.1:{proxy_port}")])
            .args(["--stub-listen", &format!("127.0.0.1:{stub_port}")])
            .args(["--page-listen", &format!("127.0.0.1:{page_port}")])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start the demo");
        let demo = Demo {
            child,
            page_port,
            _dir: dir,
        };
        let ready = eventually(Duration::from_secs(20), || {
            std::net::TcpStream::connect(("127.0.0.1", page_port)).is_ok()
                && std::net::TcpStream::connect(("127.0.0.1", proxy_port)).is_ok()
        });
        assert!(ready, "the demo did not start");
        demo
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_serves_a_page_where_the_widget_works() {
    let demo = Demo::start();
    let browser = Browser::launch().await;
    let url = format!("http://localhost:{}/", demo.page_port);
    let page = browser.open(&url).await;
    // The demo's page is a newcomer's: the tests' helpers are added to it.
    let helpers = PAGE_HELPERS
        .trim_start_matches("<script>")
        .trim_end_matches("</script>");
    eval::<Value>(&page, &format!("{helpers}; true")).await;
    open_widget(&page).await;
    send(&page, "Hello from the demo").await;
    assert_eq!(reply(&page, 1).await, "You said: Hello from the demo");
    screenshot(&page, "widget-demo").await;
    page.goto(format!("http://localhost:{}/about", demo.page_port))
        .await
        .unwrap();
    wait_until(&page, "document.title.indexOf('About us') === 0", WAIT).await;
    eval::<Value>(&page, &format!("{helpers}; true")).await;
    // The conversation came along to the other page.
    wait_until(&page, "__replies().length === 1", WAIT).await;
    let text: Vec<String> = eval(&page, "__replies()").await;
    assert_eq!(text, ["You said: Hello from the demo"]);
}
