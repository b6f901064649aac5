//! Lead capture end to end: `LeadDesk` against a real SMTP exchange over TCP (the test
//! server in `smtp_server`), with its journal in a temporary directory and its background
//! delivery service run on the test's runtime under a shutdown signal the test controls.
//!
//! The SMTP password's protection also goes through the real binary: with
//! `CHATBOT_PROXY_SMTP_LOOPBACK_IS_REMOTE=1` the test server on 127.0.0.1 counts as remote,
//! so `opportunistic` without STARTTLS must refuse to log in (no AUTH reaches the server, the
//! lead stays queued, a log line and `lead_delivery_refused_total` say why), while
//! `tls = "none"` logs in, and without the variable loopback is trusted as before.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::smtp_server::{Received, SmtpServer};
use chatbot_proxy::config::{
    LeadSettings, Secret, SmtpSettings, SmtpTls, StreamFormat, Tenant, UpstreamApi,
};
use chatbot_proxy::leads::{LeadDesk, LeadSource};
use chatbot_proxy::store::{ManualClock, Store};
use pingora::services::background::BackgroundService;
use tokio::sync::watch;

use crate::harness::{
    delta_text, eventually, free_port, Proxy, Req, Stub, ASSISTANT_A, KEY_A, ORIGIN_A,
};

const ADA: &str = r#"{"name":"Ada Lovelace","email":"ada@example.net","message":"Please call me about the engine.\nThanks!"}"#;
const SENT: &str = "The message was sent to the team. They will reply to ada@example.net.";
const QUEUED: &str = "The message was saved and queued for delivery; the team will receive it \
                      shortly and reply to ada@example.net.";
const DEFERRED: &str = "The message was saved and will be delivered to the team later: this \
                        website has received many messages in the last hour, so it goes out \
                        within the next hours. The team will reply to ada@example.net.";
/// 2024-03-01T10:00:00Z.
const TEN_AM: u64 = 1_709_287_200_000;

fn tenant() -> Tenant {
    Tenant {
        name: "acme".into(),
        domains: vec!["www.example.com".parse().unwrap()],
        api_key: Secret::new("sk-test"),
        api: UpstreamApi::Assistants {
            assistant_id: "asst_test".into(),
        },
        lead_recipients: vec![
            "sales@example.com".into(),
            "Owner <owner@example.com>".into(),
        ],
        lead_tool: "sendEmail".into(),
        stream_format: StreamFormat::OpenAi,
        redact_run_objects: false,
        rate_limit: None,
        daily_token_budget: None,
        turnstile_secret: None,
        turnstile_site_key: None,
        max_output_tokens: None,
    }
}

fn settings(dir: &Path) -> LeadSettings {
    LeadSettings {
        dir: dir.join("data"),
        max_per_conversation: 3,
        max_per_tenant_per_hour: 100,
        max_tool_rounds: 5,
        send_timeout: Duration::from_secs(5),
        max_per_address_per_day: 5,
    }
}

fn smtp(server: &SmtpServer) -> SmtpSettings {
    SmtpSettings {
        host: "127.0.0.1".into(),
        port: server.port(),
        user: Some("bot@example.com".into()),
        password: Some(Secret::new("s3cret")),
        tls: SmtpTls::None,
        from: "AI Bot <bot@example.com>".into(),
        timeout: Duration::from_secs(5),
    }
}

fn source<'a>(tenant: &'a Tenant, conversation: &'a str) -> LeadSource<'a> {
    LeadSource {
        tenant,
        site: "https://www.example.com",
        conversation,
        client_ip: None,
    }
}

/// The journal's lines.
fn journal_lines(settings: &LeadSettings) -> Vec<String> {
    std::fs::read_to_string(settings.dir.join("leads.jsonl"))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// The desk's delivery service, running until [`Service::stop`].
struct Service {
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

fn run_service(desk: &Arc<LeadDesk>) -> Service {
    let (shutdown, watch) = watch::channel(false);
    let service = desk.delivery_service();
    let task = tokio::spawn(async move { service.start(watch).await });
    Service { shutdown, task }
}

impl Service {
    async fn stop(self) {
        self.shutdown.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the service stops on shutdown")
            .unwrap();
    }
}

/// Waits (up to 15 s) until the server has `count` messages; returns them.
async fn wait_for(server: &SmtpServer, count: usize) -> Vec<Received> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let received = server.received();
        if received.len() >= count || Instant::now() > deadline {
            return received;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (up to 5 s) until the desk has no pending lead.
async fn wait_until_empty(desk: &LeadDesk) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while desk.pending_count() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(desk.pending_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lead_is_emailed_to_the_tenant() {
    let server = SmtpServer::start();
    let dir = tempfile::tempdir().unwrap();
    let settings = settings(dir.path());
    let desk = LeadDesk::open(&settings, Some(&smtp(&server))).unwrap();
    let tenant = tenant();

    let output = desk.capture(&source(&tenant, "thread_abc"), ADA).await;

    assert_eq!(output, SENT);
    let received = server.received();
    assert_eq!(received.len(), 1);
    let mail = &received[0];
    assert_eq!(mail.auth, Some(("bot@example.com".into(), "s3cret".into())));
    assert_eq!(mail.mail_from, "bot@example.com");
    assert_eq!(mail.rcpt_to, ["sales@example.com", "owner@example.com"]);
    assert_eq!(
        mail.header("Subject").as_deref(),
        Some("New message from Ada Lovelace - ada@example.net")
    );
    assert_eq!(
        mail.header("From").as_deref(),
        Some("\"AI Bot\" <bot@example.com>")
    );
    assert_eq!(
        mail.header("To").as_deref(),
        Some("sales@example.com, Owner <owner@example.com>")
    );
    assert_eq!(
        mail.header("Reply-To").as_deref(),
        Some("\"Ada Lovelace\" <ada@example.net>")
    );
    assert_eq!(
        mail.body(),
        "Please call me about the engine.\r\nThanks!\r\n\r\n-- \r\n\
         Sent by the chatbot on https://www.example.com\r\nConversation: thread_abc\r\n"
    );
    assert_eq!(desk.pending_count(), 0);

    // The journal holds the lead and the mark that it was delivered.
    let lines = journal_lines(&settings);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[0].starts_with(r#"{"type":"lead","id":"lead_"#),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].starts_with(r#"{"type":"delivered","id":"lead_"#),
        "{}",
        lines[1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lead_captured_while_smtp_is_down_is_delivered_once_when_it_is_back() {
    let mut server = SmtpServer::start();
    server.stop();
    let dir = tempfile::tempdir().unwrap();
    let desk = LeadDesk::open(&settings(dir.path()), Some(&smtp(&server))).unwrap();
    let service = run_service(&desk);
    let tenant = tenant();

    let output = desk.capture(&source(&tenant, "thread_abc"), ADA).await;
    assert_eq!(output, QUEUED);
    assert_eq!(desk.pending_count(), 1);

    server.restart();
    let received = wait_for(&server, 1).await;
    assert_eq!(received.len(), 1);
    wait_until_empty(&desk).await;
    // Later retries must not send it again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(server.received().len(), 1);
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_server_is_retried_until_it_accepts() {
    for refusal in ["451 4.3.0 Try again later", "554 5.7.1 Not now"] {
        let server = SmtpServer::start();
        server.refuse_mail(refusal);
        let dir = tempfile::tempdir().unwrap();
        let desk = LeadDesk::open(&settings(dir.path()), Some(&smtp(&server))).unwrap();
        let service = run_service(&desk);
        let tenant = tenant();

        assert_eq!(
            desk.capture(&source(&tenant, "thread_abc"), ADA).await,
            QUEUED
        );
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert!(server.received().is_empty());
        assert_eq!(desk.pending_count(), 1);

        server.accept_mail();
        assert_eq!(wait_for(&server, 1).await.len(), 1, "after {refusal}");
        wait_until_empty(&desk).await;
        service.stop().await;
        assert_eq!(server.received().len(), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_lead_is_delivered_exactly_once_after_a_restart() {
    let mut server = SmtpServer::start();
    server.stop();
    let dir = tempfile::tempdir().unwrap();
    let settings = settings(dir.path());
    let tenant = tenant();

    // First run: SMTP is down, and the process dies (no service, no goodbye)...
    let desk = LeadDesk::open(&settings, Some(&smtp(&server))).unwrap();
    assert_eq!(
        desk.capture(&source(&tenant, "thread_abc"), ADA).await,
        QUEUED
    );
    drop(desk);
    // ...in the middle of writing another record.
    let journal = settings.dir.join("leads.jsonl");
    let mut text = std::fs::read_to_string(&journal).unwrap();
    text.push_str(r#"{"type":"lead","id":"lead_torn","at":17"#);
    std::fs::write(&journal, text).unwrap();

    // Second run: SMTP is back; the lead is delivered.
    server.restart();
    let desk = LeadDesk::open(&settings, Some(&smtp(&server))).unwrap();
    assert_eq!(desk.pending_count(), 1);
    let service = run_service(&desk);
    let received = wait_for(&server, 1).await;
    assert_eq!(received.len(), 1);
    assert_eq!(
        received[0].header("Subject").as_deref(),
        Some("New message from Ada Lovelace - ada@example.net")
    );
    wait_until_empty(&desk).await;
    service.stop().await;
    drop(desk);

    // Third run: nothing left to send.
    let desk = LeadDesk::open(&settings, Some(&smtp(&server))).unwrap();
    assert_eq!(desk.pending_count(), 0);
    let service = run_service(&desk);
    tokio::time::sleep(Duration::from_millis(500)).await;
    service.stop().await;
    assert_eq!(server.received().len(), 1);
    assert!(journal_lines(&settings).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_first_attempt_is_not_repeated_by_the_service() {
    let server = SmtpServer::start();
    server.delay_data_reply(Duration::from_millis(1500));
    let dir = tempfile::tempdir().unwrap();
    let mut settings = settings(dir.path());
    settings.send_timeout = Duration::from_millis(200);
    let desk = LeadDesk::open(&settings, Some(&smtp(&server))).unwrap();
    let service = run_service(&desk);
    let tenant = tenant();

    // The answer cannot wait for the slow server: the lead is reported queued...
    assert_eq!(
        desk.capture(&source(&tenant, "thread_abc"), ADA).await,
        QUEUED
    );
    // ...while the first attempt goes on, and the service leaves it alone.
    assert_eq!(wait_for(&server, 1).await.len(), 1);
    wait_until_empty(&desk).await;
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(server.received().len(), 1);
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_arguments_are_explained_and_nothing_is_stored_or_sent() {
    let server = SmtpServer::start();
    let dir = tempfile::tempdir().unwrap();
    let settings = settings(dir.path());
    let desk = LeadDesk::open(&settings, Some(&smtp(&server))).unwrap();
    let tenant = tenant();
    let from = source(&tenant, "thread_abc");

    assert_eq!(
        desk.capture(&from, "{not json").await,
        "The message was not sent: the arguments were not a JSON object with the fields \
         \"name\", \"email\" and \"message\". Call sendEmail again with those three fields."
    );
    assert_eq!(
        desk.capture(&from, r#"{"name":"Ada","message":"hi"}"#)
            .await,
        "The message was not sent: the e-mail address is missing. Ask the visitor for the \
         missing or corrected details, then call sendEmail again."
    );
    assert_eq!(
        desk.capture(&from, r#"{"name":"Ada","email":"ada@","message":"hi"}"#)
            .await,
        "The message was not sent: the e-mail address is not valid (expected e.g. \
         name@example.com). Ask the visitor for the missing or corrected details, then call \
         sendEmail again."
    );
    let long_name = serde_json::json!({
        "name": "x".repeat(201), "email": "ada@example.net", "message": "hi"
    });
    assert!(desk
        .capture(&from, &long_name.to_string())
        .await
        .contains("the name is longer than 200 characters"));
    let injection = serde_json::json!({
        "name": "Eve\r\nBcc: victim@example.org", "email": "eve@example.net", "message": "hi"
    });
    assert!(desk
        .capture(&from, &injection.to_string())
        .await
        .contains("the name must be a single line"));

    assert!(server.received().is_empty());
    assert_eq!(desk.pending_count(), 0);
    assert!(journal_lines(&settings).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caps_refuse_a_chatty_conversation_and_defer_leads_over_the_tenants_hour() {
    // Issue 10 changed this test: a lead over the tenant's hourly cap used to be refused and
    // lost; now it is journaled at once and e-mailed when the next hour begins.
    let server = SmtpServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut settings = settings(dir.path());
    settings.max_per_conversation = 2;
    settings.max_per_tenant_per_hour = 3;
    let clock = ManualClock::new(TEN_AM);
    let store = Store::local(clock.clone());
    let desk = LeadDesk::open_with_store(&settings, Some(&smtp(&server)), store).unwrap();
    let service = run_service(&desk);
    let tenant = tenant();

    let chatty = source(&tenant, "thread_chatty");
    assert_eq!(desk.capture(&chatty, ADA).await, SENT);
    assert_eq!(desk.capture(&chatty, ADA).await, SENT);
    assert_eq!(
        desk.capture(&chatty, ADA).await,
        "The message was not sent: this conversation has already sent the most messages \
         allowed (2). Tell the visitor the team has their earlier message and will be in \
         touch; do not call the tool again in this conversation."
    );

    assert_eq!(desk.capture(&source(&tenant, "thread_2"), ADA).await, SENT);
    assert_eq!(
        desk.capture(&source(&tenant, "thread_3"), ADA).await,
        DEFERRED
    );
    // Saved, not sent: three leads and three delivered marks, then the fourth lead.
    assert_eq!(journal_lines(&settings).len(), 7);
    assert_eq!(desk.pending_count(), 1);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(server.received().len(), 3, "nothing more within the hour");

    // The next hour begins: the saved lead is e-mailed, once.
    clock.set(TEN_AM + 3_600_000);
    assert_eq!(wait_for(&server, 4).await.len(), 4);
    wait_until_empty(&desk).await;
    assert_eq!(journal_lines(&settings).len(), 8);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(server.received().len(), 4);
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_over_its_daily_cap_is_refused_honestly_and_others_are_not() {
    let server = SmtpServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut settings = settings(dir.path());
    settings.max_per_address_per_day = 2;
    let desk = LeadDesk::open(&settings, Some(&smtp(&server))).unwrap();
    let tenant = tenant();
    let from = |conversation, ip: &str| LeadSource {
        client_ip: Some(ip.parse().unwrap()),
        ..source(&tenant, conversation)
    };

    assert_eq!(
        desk.capture(&from("thread_1", "198.51.100.9"), ADA).await,
        SENT
    );
    assert_eq!(
        desk.capture(&from("thread_2", "198.51.100.9"), ADA).await,
        SENT
    );
    assert_eq!(
        desk.capture(&from("thread_3", "198.51.100.9"), ADA).await,
        "The message was not sent: this visitor already sent 2 messages today, the most \
         allowed. Tell the visitor the team has their earlier messages and will be in touch; \
         do not call the tool again today."
    );
    assert_eq!(
        desk.capture(&from("thread_4", "198.51.100.10"), ADA).await,
        SENT
    );
    assert_eq!(server.received().len(), 3);
    assert_eq!(
        journal_lines(&settings).len(),
        6,
        "the refused lead is not journaled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_smtp_leads_are_saved_and_queued() {
    let dir = tempfile::tempdir().unwrap();
    let settings = settings(dir.path());
    let desk = LeadDesk::open(&settings, None).unwrap();
    let service = run_service(&desk);
    let tenant = tenant();

    assert_eq!(
        desk.capture(&source(&tenant, "conv_abc"), ADA).await,
        QUEUED
    );
    assert_eq!(desk.pending_count(), 1);
    let lines = journal_lines(&settings);
    assert_eq!(lines.len(), 1);
    assert!(
        lines[0].contains(r#""conversation":"conv_abc""#),
        "{}",
        lines[0]
    );
    service.stop().await;
    drop(desk);

    // Once SMTP is configured, the saved lead goes out.
    let server = SmtpServer::start();
    let desk = LeadDesk::open(&settings, Some(&smtp(&server))).unwrap();
    let service = run_service(&desk);
    assert_eq!(wait_for(&server, 1).await.len(), 1);
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_without_recipients_keeps_its_leads_without_retrying() {
    let server = SmtpServer::start();
    let dir = tempfile::tempdir().unwrap();
    let desk = LeadDesk::open(&settings(dir.path()), Some(&smtp(&server))).unwrap();
    let service = run_service(&desk);
    let mut tenant = tenant();
    tenant.lead_recipients.clear();

    assert_eq!(
        desk.capture(&source(&tenant, "thread_abc"), ADA).await,
        QUEUED
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(server.received().is_empty());
    assert_eq!(desk.pending_count(), 1);
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opportunistic_tls_to_a_loopback_server_without_starttls_logs_in_and_delivers() {
    let server = SmtpServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut smtp = smtp(&server);
    smtp.tls = SmtpTls::Opportunistic;
    let desk = LeadDesk::open(&settings(dir.path()), Some(&smtp)).unwrap();
    let tenant = tenant();

    assert_eq!(
        desk.capture(&source(&tenant, "thread_abc"), ADA).await,
        SENT
    );
    let received = server.received();
    assert_eq!(received.len(), 1);
    assert_eq!(
        received[0].auth,
        Some(("bot@example.com".into(), "s3cret".into()))
    );
    assert_eq!(desk.pending_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_starttls_that_fails_is_never_followed_by_a_plain_text_login() {
    // Even on loopback: a server that offers STARTTLS and then fails it is a failure (retried
    // later), never a reason to go on unencrypted.
    let server = SmtpServer::start();
    server.offer_broken_starttls();
    let dir = tempfile::tempdir().unwrap();
    let mut smtp = smtp(&server);
    smtp.tls = SmtpTls::Opportunistic;
    let desk = LeadDesk::open(&settings(dir.path()), Some(&smtp)).unwrap();
    let tenant = tenant();

    assert_eq!(
        desk.capture(&source(&tenant, "thread_abc"), ADA).await,
        QUEUED
    );
    assert_eq!(desk.pending_count(), 1);
    let sessions = server.sessions();
    assert!(!sessions.is_empty());
    for session in &sessions {
        assert_eq!(&session[..2], ["EHLO", "STARTTLS"], "{sessions:?}");
        assert!(
            !session.iter().any(|verb| verb == "AUTH" || verb == "MAIL"),
            "{sessions:?}"
        );
    }
    assert!(server.received().is_empty());
}

// ---------------------------------------------------------------------------------------------
// The SMTP password through the real binary
// ---------------------------------------------------------------------------------------------

const LOOPBACK_IS_REMOTE: &str = "CHATBOT_PROXY_SMTP_LOOPBACK_IS_REMOTE";
const BINARY_SMTP_PASSWORD: &str = "binary-smtp-Pa55";
const REFUSED_SERIES: &str =
    r#"chatbot_proxy_lead_delivery_refused_total{reason="plaintext_auth"}"#;

/// One tenant (`shop.example.com`) whose leads go to the test SMTP server with `tls`, with a
/// login or without; the metrics endpoint on `metrics_port`.
fn binary_toml(stub: &Stub, smtp_port: u16, metrics_port: u16, tls: &str, login: bool) -> String {
    let login = if login {
        format!("user = \"bot@example.com\"\npassword = \"{BINARY_SMTP_PASSWORD}\"\n")
    } else {
        String::new()
    };
    format!(
        r#"[server]
metrics_listen = "127.0.0.1:{metrics_port}"

[upstream]
base_url = "{base}"

[smtp]
host = "127.0.0.1"
port = {smtp_port}
{login}tls = "{tls}"
from = "AI Bot <bot@example.com>"
timeout_ms = 3000

[[tenants]]
name = "shop"
domains = ["shop.example.com"]
api_key = "{KEY_A}"
assistant_id = "{ASSISTANT_A}"
lead_recipients = ["sales@shop.example.com"]
"#,
        base = stub.base_url()
    )
}

/// A visitor leaves a lead through the widget API; returns the tool output the assistant got.
fn leave_a_lead(proxy: &Proxy) -> String {
    let thread_id = proxy.create_thread(ORIGIN_A);
    let call = serde_json::json!([{"name": "sendEmail", "arguments": ADA}]);
    let stream = proxy.send_message(
        ORIGIN_A,
        &thread_id,
        &format!("[stub:tool_calls={call}] hi"),
    );
    assert_eq!(stream.status, 200, "{}", stream.text());
    let text = delta_text(&stream.events());
    text.strip_prefix("Tool output: ")
        .unwrap_or_else(|| panic!("no tool output in the continuation: {text:?}"))
        .to_string()
}

/// The value of `series` in a scrape of the metrics endpoint.
fn metric(metrics_port: u16, series: &str) -> Option<f64> {
    let resp = Req::new("GET", &format!("http://127.0.0.1:{metrics_port}/metrics")).send();
    assert_eq!(resp.status, 200, "{}", resp.body);
    resp.body.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}

/// The journal's records, as JSON values.
fn journal_records(proxy: &Proxy) -> Vec<serde_json::Value> {
    std::fs::read_to_string(proxy.working_dir().join("data/leads.jsonl"))
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// Whether any session of `server` logged in.
fn any_auth(server: &SmtpServer) -> bool {
    server
        .sessions()
        .iter()
        .any(|session| session.iter().any(|verb| verb == "AUTH"))
}

#[test]
fn opportunistic_tls_to_a_remote_server_without_starttls_never_sends_the_password() {
    let stub = Stub::start();
    let server = SmtpServer::start();
    let metrics_port = free_port();
    let proxy = Proxy::launch()
        .toml(&binary_toml(
            &stub,
            server.port(),
            metrics_port,
            "opportunistic",
            true,
        ))
        .env(LOOPBACK_IS_REMOTE, "1")
        .start();

    assert_eq!(leave_a_lead(&proxy), QUEUED);
    // The first attempt and a retry (about a second later) reached the server...
    assert!(
        eventually(Duration::from_secs(10), || server.sessions().len() >= 2),
        "no retry: {:?}",
        server.sessions()
    );
    // ...and neither went further than EHLO: no AUTH, no MAIL, nothing delivered.
    let sessions = server.sessions();
    for session in &sessions {
        assert_eq!(
            session.first().map(String::as_str),
            Some("EHLO"),
            "{sessions:?}"
        );
        assert!(
            !session.iter().any(|verb| verb == "AUTH" || verb == "MAIL"),
            "{sessions:?}"
        );
    }
    assert!(server.received().is_empty());

    // The lead stays queued in the journal.
    let records = journal_records(&proxy);
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["type"], "lead");

    // The log and the metrics say why; the password appears in neither.
    let lines = proxy.wait_for_log_lines(2, |line| line.contains("refused by the proxy"));
    assert!(lines.len() >= 2, "{}", proxy.logs());
    assert!(
        lines[0].contains("not encrypted") && lines[0].contains("stays queued"),
        "{}",
        lines[0]
    );
    assert!(
        eventually(Duration::from_secs(5), || metric(
            metrics_port,
            REFUSED_SERIES
        )
        .is_some_and(|refused| refused >= 2.0)),
        "{REFUSED_SERIES}: {:?}",
        metric(metrics_port, REFUSED_SERIES)
    );
    assert!(!proxy.logs().contains(BINARY_SMTP_PASSWORD));
    assert!(!any_auth(&server));
}

#[test]
fn tls_none_sends_the_password_in_plain_text_as_chosen() {
    let stub = Stub::start();
    let server = SmtpServer::start();
    let metrics_port = free_port();
    let proxy = Proxy::launch()
        .toml(&binary_toml(
            &stub,
            server.port(),
            metrics_port,
            "none",
            true,
        ))
        .env(LOOPBACK_IS_REMOTE, "1")
        .start();

    assert_eq!(leave_a_lead(&proxy), SENT);
    let received = server.received();
    assert_eq!(received.len(), 1);
    assert_eq!(
        received[0].auth,
        Some(("bot@example.com".into(), BINARY_SMTP_PASSWORD.into()))
    );
    assert!(any_auth(&server));
    assert_eq!(metric(metrics_port, REFUSED_SERIES), Some(0.0));
}

#[test]
fn opportunistic_tls_without_a_login_sends_to_a_remote_server_without_starttls() {
    let stub = Stub::start();
    let server = SmtpServer::start();
    let metrics_port = free_port();
    let proxy = Proxy::launch()
        .toml(&binary_toml(
            &stub,
            server.port(),
            metrics_port,
            "opportunistic",
            false,
        ))
        .env(LOOPBACK_IS_REMOTE, "1")
        .start();

    assert_eq!(leave_a_lead(&proxy), SENT);
    let received = server.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].auth, None);
    assert!(!any_auth(&server));
    assert_eq!(metric(metrics_port, REFUSED_SERIES), Some(0.0));
}

#[test]
fn opportunistic_tls_to_a_loopback_server_logs_in_by_default() {
    let stub = Stub::start();
    let server = SmtpServer::start();
    let metrics_port = free_port();
    let proxy = Proxy::launch()
        .toml(&binary_toml(
            &stub,
            server.port(),
            metrics_port,
            "opportunistic",
            true,
        ))
        .start();

    assert_eq!(leave_a_lead(&proxy), SENT);
    let received = server.received();
    assert_eq!(received.len(), 1);
    assert_eq!(
        received[0].auth,
        Some(("bot@example.com".into(), BINARY_SMTP_PASSWORD.into()))
    );
    assert_eq!(metric(metrics_port, REFUSED_SERIES), Some(0.0));
}
