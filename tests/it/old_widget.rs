//! The widget already embedded on customers' sites, unmodified, in headless Chromium against
//! the proxy's `widget-v1` stream format: it must show exactly the complete reply, every time.
//!
//! The bundle (`../shared/chatbot-widget/ChatComponent.bundle.js`, beside the repository, MIT;
//! used from there, never copied here) takes each `read()` of the response body as one
//! `data: <json>` event and silently drops a read holding two. Each case sends 20 messages in
//! a row on one page and checks the last reply's text after its stream ended: a fast reply, a
//! paced one, a reply after a lead tool call (e-mailed to a test SMTP server), on an Assistants
//! and a Responses tenant, and the error text of a failed run.
//!
//! The page is served as the tenant's site (`http://shop.example.com:PORT/`, `bistro.test`).
//! The bundle calls the fixed `http://localhost:3000/open-ai`: the page, not the bundle, maps
//! that base onto the proxy's port with a `fetch` wrapper, which also records every `read()`
//! the bundle makes (so a failure shows what it was given) and when its stream ended.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::harness::browser::{eval, screenshot, screenshot_dir, wait_until, Browser, PageServer};
use crate::harness::*;
use crate::smtp_server::SmtpServer;
use chromiumoxide::Page;
use serde_json::Value;

/// Messages per case, in a row on one page.
const RUNS: usize = 20;

/// The Responses API tenant's site.
const SITE_R: &str = "bistro.test";
/// Tenant A's site.
const SITE_A: &str = "shop.example.com";

/// The original bundle, beside the repository. Missing: the test fails saying where it looked.
fn bundle() -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/chatbot-widget/ChatComponent.bundle.js");
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "the original widget bundle is missing at {} ({e}): the browser tests need \
             `shared/chatbot-widget/ChatComponent.bundle.js` in the directory that holds this \
             repository",
            path.display()
        )
    })
}

/// Both tenants in widget-v1, lead capture by a test SMTP server, no limit that 20 messages
/// in a row (and 20 leads) from one address would reach.
fn toml(stub: &Stub, smtp: &SmtpServer) -> String {
    format!(
        r#"[upstream]
base_url = "{base}"

[limits]
rate_limit_ip = "off"
max_message_chars = 20000
max_messages_per_conversation = 200

[smtp]
host = "127.0.0.1"
port = {smtp_port}
tls = "none"
from = "AI Bot <bot@example.com>"
timeout_ms = 3000

[leads]
max_per_conversation = 100
max_per_tenant_per_hour = 1000
max_per_address_per_day = 1000

[[tenants]]
name = "widget-assistants"
domains = ["{SITE_A}"]
api_key = "{KEY_A}"
assistant_id = "{ASSISTANT_A}"
stream_format = "widget-v1"
lead_recipients = ["sales@example.com"]

[[tenants]]
name = "widget-responses"
domains = ["{SITE_R}"]
api_key = "sk-tenant-r"
model = "gpt-test"
stream_format = "widget-v1"
lead_recipients = ["sales@example.com"]
"#,
        base = stub.base_url(),
        smtp_port = smtp.port(),
    )
}

/// The embedding page: the bundle mounted as its README says, after a `fetch` wrapper that
/// sends the bundle's fixed API base to the proxy and records the process-message reads.
fn page_html(proxy_port: u16) -> String {
    format!(
        r#"<!doctype html>
<html><head><meta charset="utf-8"><title>A shop</title>
<script>
  const api = "http://api.proxy.test:{proxy_port}/open-ai";
  const realFetch = window.fetch.bind(window);
  window.__streams = [];
  window.fetch = async (url, init) => {{
    const mapped = String(url).replace("http://localhost:3000/open-ai", api);
    const response = await realFetch(mapped, init);
    if (mapped.endsWith("/process-message") && response.body) {{
      const record = {{ reads: [], done: false }};
      window.__streams.push(record);
      const body = response.body;
      const getReader = body.getReader.bind(body);
      body.getReader = () => {{
        const reader = getReader();
        const read = reader.read.bind(reader);
        const decoder = new TextDecoder();
        reader.read = async () => {{
          const result = await read();
          if (result.done) record.done = true;
          else record.reads.push(decoder.decode(result.value, {{ stream: true }}));
          return result;
        }};
        return reader;
      }};
    }}
    return response;
  }};
</script>
<script src="/ChatComponent.bundle.js" defer></script>
<script>
  document.addEventListener("DOMContentLoaded", () =>
    ChatComponent.init({{ initialGreeting: ["Hi! Ask me anything."] }}));
</script>
</head><body><h1>A shop</h1></body></html>"#
    )
}

/// A page of `site` with the bundle mounted and its chat opened.
async fn open_widget(browser: &Browser, pages: &PageServer, site: &str) -> Page {
    let page = browser.open(&pages.url(site, "/")).await;
    wait_until(
        &page,
        "document.querySelector('.ai-bot-toggler') && document.querySelector('#send-btn')",
        Duration::from_secs(10),
    )
    .await;
    let _: bool = eval(
        &page,
        "(() => { document.querySelector('.ai-bot-toggler').click(); return true; })()",
    )
    .await;
    page
}

/// The text of the bundle's last reply bubble and whether it is shown as an error.
async fn last_reply(page: &Page) -> (String, bool) {
    let value: Value = eval(
        page,
        "(() => { const all = document.querySelectorAll('.message.incoming .markdown-container'); \
         const last = all[all.length - 1]; \
         return [last.textContent.trim(), last.classList.contains('error')]; })()",
    )
    .await;
    (
        value[0].as_str().unwrap_or_default().to_string(),
        value[1].as_bool().unwrap_or_default(),
    )
}

/// Sends `message` through the bundle's own input and button, waits for its stream to end,
/// and returns the reply it shows (text, shown as an error) and the reads it was given.
async fn send(page: &Page, message: &str, n: usize) -> ((String, bool), Vec<String>) {
    let set = format!(
        "(() => {{ const box = document.querySelector('.message-input textarea'); \
         box.value = {}; box.dispatchEvent(new Event('input')); \
         document.querySelector('#send-btn').click(); return true; }})()",
        serde_json::to_string(message).unwrap()
    );
    let _: bool = eval(page, &set).await;
    wait_until(
        page,
        &format!(
            "window.__streams.length === {n} && window.__streams[{}].done",
            n - 1
        ),
        Duration::from_secs(20),
    )
    .await;
    let reads: Vec<String> = eval(page, &format!("window.__streams[{}].reads", n - 1)).await;
    (last_reply(page).await, reads)
}

/// One case: `RUNS` messages on a fresh page of `site`; each must show exactly `want`
/// (as an error if `error`). Saves a screenshot of the last state as `old-widget-NAME`.
async fn case(
    browser: &Browser,
    pages: &PageServer,
    site: &str,
    name: &str,
    message: &str,
    want: &str,
    error: bool,
) {
    let started = Instant::now();
    // A failure screenshot of an earlier run would mislead.
    let _ = std::fs::remove_file(screenshot_dir().join(format!("old-widget-{name}-wrong.png")));
    let page = open_widget(browser, pages, site).await;
    for n in 1..=RUNS {
        let (shown, reads) = send(&page, message, n).await;
        if shown != (want.to_string(), error) {
            screenshot(&page, &format!("old-widget-{name}-wrong")).await;
        }
        assert_eq!(
            shown,
            (want.to_string(), error),
            "{name}, run {n} of {RUNS}: the widget shows the wrong text (error flag second); \
             the reads it was given: {reads:#?}"
        );
    }
    screenshot(&page, &format!("old-widget-{name}")).await;
    eprintln!("{name}: {RUNS} runs in {:?}", started.elapsed());
}

/// The stub's reply to `message` (without directives, single spaces).
fn echo(message: &str) -> String {
    format!("You said: {message}")
}

/// Starts the stub, an SMTP server, the proxy, the page server and the browser.
async fn start() -> (Rig<SmtpServer>, PageServer, Browser) {
    let rig = Setup::new().smtp().start_with_toml(toml);
    let pages = PageServer::start();
    pages.put("/ChatComponent.bundle.js", "text/javascript", bundle());
    pages.put_html("/", &page_html(rig.proxy.port));
    let browser = Browser::launch().await;
    (rig, pages, browser)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_reply_is_shown_complete_every_time_on_both_apis() {
    let (_rig, pages, browser) = start().await;
    for (site, name) in [(SITE_A, "fast-assistants"), (SITE_R, "fast-responses")] {
        let message = "What are your opening hours today";
        case(&browser, &pages, site, name, message, &echo(message), false).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paced_reply_is_shown_complete_every_time_on_both_apis() {
    let (_rig, pages, browser) = start().await;
    for (site, name) in [(SITE_A, "paced-assistants"), (SITE_R, "paced-responses")] {
        let text = "Do you ship to Norway and Sweden";
        let message = format!("{text} [stub:slow=15]");
        case(&browser, &pages, site, name, &message, &echo(text), false).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_after_a_lead_tool_call_is_shown_complete_every_time_on_both_apis() {
    let (rig, pages, browser) = start().await;
    let message = r#"Call me [stub:tool_calls=[{"name":"sendEmail","arguments":"{\"name\":\"Ada Lovelace\",\"email\":\"ada@example.net\",\"message\":\"Please call me back.\"}"}]]"#;
    let want = "Tool output: The message was sent to the team. They will reply to ada@example.net.";
    for (site, name) in [(SITE_A, "lead-assistants"), (SITE_R, "lead-responses")] {
        case(&browser, &pages, site, name, message, want, false).await;
    }
    assert!(
        rig.smtp.received().len() >= 2 * RUNS,
        "every lead was e-mailed: {} mails",
        rig.smtp.received().len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_run_shows_its_error_text_every_time_on_both_apis() {
    let (_rig, pages, browser) = start().await;
    let want = "The assistant could not finish its answer (run failed).";
    for (site, name) in [(SITE_A, "failed-assistants"), (SITE_R, "failed-responses")] {
        case(
            &browser,
            &pages,
            site,
            name,
            "Break [stub:fail]",
            want,
            true,
        )
        .await;
    }
}
