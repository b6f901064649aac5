//! A lead flood through the real binary: one address sends 30 leads, then three real
//! visitors send theirs. The flood is stopped per visitor (the per-address daily cap, with an
//! honest tool output), and the real visitors' leads are all journaled and e-mailed to the
//! test SMTP server, those over the tenant's hourly cap included: they are delivered when the
//! next hour begins.
//!
//! Time is the proxy's test clock (`CHATBOT_PROXY_TEST_CLOCK_FILE`, unix milliseconds re-read
//! on every call), set at 10:00 UTC and moved to 11:00 to open the tenant's next hour. Each
//! visitor is named by `X-Forwarded-For`, which counts because the test's own address is a
//! trusted proxy (`TRUSTED_PROXIES`).

use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use crate::harness::*;
use crate::smtp_server::{Received, SmtpServer};
use serde_json::{json, Value};

const SITE: &str = ORIGIN_A;
const FLOODER: &str = "203.0.113.66";
const VISITORS: [&str; 3] = ["198.51.100.1", "198.51.100.2", "198.51.100.3"];
const PER_TENANT_PER_HOUR: usize = 10;
const PER_ADDRESS_PER_DAY: usize = 9;
/// 2024-03-01T10:00:00Z.
const TEN_AM: u64 = 1_709_287_200_000;
const HOUR: u64 = 3_600_000;

fn toml(stub: &Stub, smtp: &SmtpServer) -> String {
    format!(
        r#"[upstream]
base_url = "{base}"

[smtp]
host = "127.0.0.1"
port = {smtp_port}
user = "bot@example.com"
password = "s3cret-Flood"
tls = "none"
timeout_ms = 3000

[leads]
max_per_tenant_per_hour = {PER_TENANT_PER_HOUR}
max_per_address_per_day = {PER_ADDRESS_PER_DAY}

[limits]
trusted_proxies = ["127.0.0.1/32"]

[[tenants]]
name = "shop"
domains = ["shop.example.com"]
api_key = "{KEY_A}"
assistant_id = "{ASSISTANT_A}"
lead_recipients = ["sales@shop.example.com"]
"#,
        base = stub.base_url(),
        smtp_port = smtp.port()
    )
}

/// Sets the proxy's clock (written whole, then renamed, so it is never read half-written).
fn set_clock(path: &Path, unix_ms: u64) {
    let partial = path.with_extension("partial");
    std::fs::write(&partial, unix_ms.to_string()).unwrap();
    std::fs::rename(&partial, path).unwrap();
}

/// A new conversation from `ip` whose answer calls the lead tool for `email`; the tool output
/// the proxy handed back (the stub's continuation says `Tool output: ...`).
fn leave_lead(proxy: &Proxy, ip: &str, email: &str) -> String {
    let created = proxy
        .get(&format!("{PREFIX}/create-thread"))
        .origin(SITE)
        .header("X-Forwarded-For", ip)
        .send();
    assert_eq!(created.status, 200, "{}", created.body);
    let thread_id = created.json()["id"].as_str().unwrap().to_string();
    let arguments = json!({"name": "Visitor", "email": email, "message": "Please call me."});
    let calls = json!([{"name": "sendEmail", "arguments": arguments.to_string()}]);
    let req = RawRequest::new("POST", &format!("{PREFIX}/process-message"))
        .header("Origin", SITE)
        .header("X-Forwarded-For", ip)
        .json(&json!({"threadId": thread_id, "message": format!("[stub:tool_calls={calls}] hi")}));
    let stream = proxy.raw(&req);
    assert_eq!(stream.status, 200, "{}", stream.text());
    let text = delta_text(&stream.events());
    text.strip_prefix("Tool output: ")
        .unwrap_or_else(|| panic!("no tool output in {text:?}"))
        .to_string()
}

fn sent(email: &str) -> String {
    format!("The message was sent to the team. They will reply to {email}.")
}

fn deferred(email: &str) -> String {
    format!(
        "The message was saved and will be delivered to the team later: this website has \
         received many messages in the last hour, so it goes out within the next hours. The \
         team will reply to {email}."
    )
}

/// The journal's records of `kind` (`lead` or `delivered`).
fn journal(proxy: &Proxy, kind: &str) -> Vec<Value> {
    let path = proxy.working_dir().join("data").join("leads.jsonl");
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["type"] == kind)
        .collect()
}

/// Polls the SMTP server until it holds at least `count` messages or `within` passes.
fn wait_for_mail(server: &SmtpServer, count: usize, within: Duration) -> Vec<Received> {
    let deadline = Instant::now() + within;
    loop {
        let received = server.received();
        if received.len() >= count || Instant::now() > deadline {
            return received;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

fn reply_tos(mails: &[Received]) -> Vec<String> {
    mails
        .iter()
        .map(|m| m.header("Reply-To").unwrap_or_default())
        .collect()
}

#[test]
fn a_flood_from_one_address_leaves_real_visitors_leads_saved_and_delivered() {
    let clock_dir = tempfile::tempdir().unwrap();
    let clock = clock_dir.path().join("clock");
    set_clock(&clock, TEN_AM);
    let smtp = SmtpServer::start();
    let stub = Stub::start();
    let proxy = Proxy::launch()
        .toml(&toml(&stub, &smtp))
        .env("CHATBOT_PROXY_TEST_CLOCK_FILE", clock.to_str().unwrap())
        .start();

    // The flood: 30 leads from one address, each in a conversation of its own.
    let refused = format!(
        "The message was not sent: this visitor already sent {PER_ADDRESS_PER_DAY} messages \
         today, the most allowed. Tell the visitor the team has their earlier messages and \
         will be in touch; do not call the tool again today."
    );
    for i in 0..30 {
        let email = format!("flood-{i:02}@example.org");
        let output = leave_lead(&proxy, FLOODER, &email);
        let expected = match i < PER_ADDRESS_PER_DAY {
            true => sent(&email),
            false => refused.clone(),
        };
        assert_eq!(output, expected, "flood lead {i}");
    }
    assert_eq!(journal(&proxy, "lead").len(), PER_ADDRESS_PER_DAY);

    // Real visitors: the tenant's hour has one e-mail left, then the leads wait, saved.
    let emails: Vec<String> = (1..=3)
        .map(|i| format!("visitor-{i}@example.net"))
        .collect();
    let outputs: Vec<String> = VISITORS
        .iter()
        .zip(&emails)
        .map(|(ip, email)| leave_lead(&proxy, ip, email))
        .collect();
    assert_eq!(
        outputs,
        [sent(&emails[0]), deferred(&emails[1]), deferred(&emails[2])]
    );
    let leads = journal(&proxy, "lead");
    assert_eq!(leads.len(), PER_ADDRESS_PER_DAY + 3);
    for email in &emails {
        assert!(
            leads.iter().any(|l| l["lead"]["email"] == email.as_str()),
            "{email} is not journaled: {leads:?}"
        );
    }
    let received = wait_for_mail(&smtp, PER_TENANT_PER_HOUR, Duration::from_secs(10));
    assert_eq!(received.len(), PER_TENANT_PER_HOUR);
    thread::sleep(Duration::from_millis(2000));
    assert_eq!(
        smtp.received().len(),
        PER_TENANT_PER_HOUR,
        "no more than the hourly cap within the hour"
    );

    // 11:00: the tenant's next hour; the waiting leads go out, once each.
    set_clock(&clock, TEN_AM + HOUR);
    let received = wait_for_mail(&smtp, PER_TENANT_PER_HOUR + 2, Duration::from_secs(15));
    assert_eq!(
        received.len(),
        PER_TENANT_PER_HOUR + 2,
        "{:?}",
        reply_tos(&received)
    );
    let delivered_to = reply_tos(&received);
    for email in &emails {
        let reply_to = format!("Visitor <{email}>");
        assert_eq!(
            delivered_to.iter().filter(|r| **r == reply_to).count(),
            1,
            "{email} delivered once: {delivered_to:?}"
        );
    }
    assert!(eventually(Duration::from_secs(5), || {
        journal(&proxy, "delivered").len() == PER_ADDRESS_PER_DAY + 3
    }));
    thread::sleep(Duration::from_millis(1500));
    assert_eq!(smtp.received().len(), PER_TENANT_PER_HOUR + 2);
    let logs = proxy.logs();
    assert!(logs.contains("Address { limit: 9 } reached"), "{logs}");
    assert!(
        !logs.contains("s3cret-Flood"),
        "the SMTP password is in the log"
    );
}
