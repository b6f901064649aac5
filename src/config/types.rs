//! The validated configuration the proxy runs with.
//!
//! These types are what the rest of the program reads; how they are built (a TOML file,
//! or the old service's environment variables and `.env` file) lives in the sibling
//! modules. Every value here has already been checked: a `Config` that exists is usable.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

pub use crate::domain::DomainPattern;

/// Everything the proxy needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listener, path prefix and Pingora's own server settings.
    pub server: ServerSettings,
    /// Where OpenAI (or the stub) is, and how long to wait for it.
    pub upstream: UpstreamSettings,
    /// Limits on what a browser may send.
    pub limits: Limits,
    /// The websites served, in configuration order.
    pub tenants: Vec<Tenant>,
    /// Outgoing mail for captured leads; `None` when not configured.
    pub smtp: Option<SmtpSettings>,
    /// Lead capture: where leads are journaled, caps, tool-call rounds.
    pub leads: LeadSettings,
    /// Address of the Prometheus endpoint (`[server] metrics_listen`, `METRICS_LISTEN`), a
    /// listener apart from `server.listen`; `None`: no metrics endpoint.
    pub metrics_listen: Option<String>,
}

/// The listener and Pingora's server settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerSettings {
    /// Address to listen on, e.g. `0.0.0.0:3000`.
    pub listen: String,
    /// Path prefix of the widget routes, e.g. `/open-ai`: starts with `/`, no trailing `/`.
    pub prefix: String,
    /// Worker threads of the proxy service.
    pub threads: usize,
    /// Seconds between SIGTERM and the start of the drain, during which the listener still
    /// accepts (for load balancers that need time to take the instance out; default 0).
    pub grace_period_seconds: u64,
    /// Longest wait, once the drain starts, for requests in flight to finish (default 25);
    /// the process exits as soon as nothing is in flight. `graceful_shutdown_timeout_seconds`
    /// is accepted as an older name.
    pub drain_timeout_seconds: u64,
    /// The Unix socket on which a new process started with `--upgrade` receives the
    /// listening sockets from the running one (`[server] upgrade_sock`).
    pub upgrade_sock: String,
    /// How long browsers may take at each step of a connection.
    pub timeouts: ClientTimeouts,
}

/// Deadlines on the browser side of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientTimeouts {
    /// Longest wait for the next request on an open connection (default 60 s).
    pub keepalive: Duration,
    /// Longest time from a request's first byte to the end of its header (default 10 s).
    pub request_header: Duration,
    /// Longest time to receive a whole request body, in total (default 15 s).
    pub request_body: Duration,
    /// Longest time a response write may make no progress because the browser stopped
    /// reading (default 30 s).
    pub stalled_reader: Duration,
}

impl Default for ClientTimeouts {
    fn default() -> Self {
        ClientTimeouts {
            keepalive: Duration::from_secs(60),
            request_header: Duration::from_secs(10),
            request_body: Duration::from_secs(15),
            stalled_reader: Duration::from_secs(30),
        }
    }
}

/// The upstream API and its timeouts.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamSettings {
    /// The base URL as configured, e.g. `https://api.openai.com/v1`.
    pub base_url: String,
    /// `true` for `https`.
    pub tls: bool,
    /// Host name or IP literal (without brackets), lowercase.
    pub host: String,
    /// Port, defaulted from the scheme.
    pub port: u16,
    /// The path part of the base URL without trailing `/`, e.g. `/v1` (may be empty).
    pub base_path: String,
    /// TCP (and TLS) connect timeout.
    pub connect_timeout: Duration,
    /// Longest wait for the response header after the request is sent.
    pub first_byte_timeout: Duration,
    /// Longest silence between two chunks of a streamed body.
    pub idle_timeout: Duration,
    /// How long an idle pooled upstream connection is kept.
    pub pool_idle_timeout: Duration,
    /// Most idle upstream connections kept for reuse (the least recently used go first).
    pub pool_size: usize,
    /// Connect timeout of one address when there are several (at most `connect_timeout`,
    /// which bounds the whole attempt; the last address gets whatever is left of it).
    pub address_connect_timeout: Duration,
    /// Static addresses of `host`, tried in this order instead of resolving it (`[upstream]
    /// resolve`, `OPENAI_RESOLVE`, like curl's `--resolve`); empty: resolve by DNS.
    pub resolve: Vec<std::net::IpAddr>,
}

/// Limits on requests from browsers.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Largest request body accepted, in bytes (default 32 KiB).
    pub max_body_bytes: usize,
    /// Longest message accepted, in characters (default 4,000).
    pub max_message_chars: usize,
    /// Where counters, budgets and locks are shared by a fleet (`REDIS_URL`); `None`: kept
    /// in this process.
    pub redis_url: Option<Secret>,
    /// Proxies (load balancers, CDNs) whose forwarding headers name the client
    /// (`TRUSTED_PROXIES`); from anyone else those headers are ignored.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    // conversation handles
    /// The key that signs conversation handles (`SESSION_SECRET`, at least 32 bytes); `None`:
    /// one is generated once and kept in the leads directory (`session.key`).
    pub session_secret: Option<Secret>,
    /// How long a conversation handle is accepted after create-thread issued it
    /// (`CONVERSATION_TTL_HOURS`, default 24 h).
    pub conversation_ttl: Duration,
    /// Most messages one conversation may take (`MAX_MESSAGES_PER_CONVERSATION`, default 50).
    pub max_messages_per_conversation: u32,
    // request limits
    /// Requests to create-thread and process-message together that one client address may
    /// make (`rate_limit_ip`, `RATE_LIMIT_IP`; default 60/min); `None`: no limit.
    pub rate_limit_ip: Option<crate::rate::Rate>,
    /// Answers streaming to one client address at once (`max_streams_per_ip`,
    /// `MAX_STREAMS_PER_IP`; default 4); 0: no limit.
    pub max_streams_per_ip: u32,
    // bot check (Turnstile)
    /// Where and how fast bot-check tokens are verified (`turnstile_verify_url`,
    /// `turnstile_timeout_ms`); used only for tenants with a `turnstile_secret`.
    pub turnstile: TurnstileSettings,
}

/// The Turnstile siteverify endpoint that bot-check tokens are posted to.
#[derive(Debug, Clone, PartialEq)]
pub struct TurnstileSettings {
    /// The endpoint as an upstream (`TURNSTILE_VERIFY_URL`, default Cloudflare's
    /// `https://challenges.cloudflare.com/turnstile/v0/siteverify`); its path is the whole
    /// request path. Its connect, first-byte and idle timeouts are `timeout`.
    pub endpoint: UpstreamSettings,
    /// Longest wait for a verdict, all of it (default 3 s): then the check is unavailable
    /// (503), never passed.
    pub timeout: Duration,
}

/// One website (or group of websites) served with one OpenAI key and assistant.
#[derive(Debug, Clone, PartialEq)]
pub struct Tenant {
    /// Name used in logs and metrics; never a secret.
    pub name: String,
    /// Domain patterns, parsed and normalized: `example.com`, `*.example.com`, `127.0.0.1`.
    /// No other tenant lists the same site.
    pub domains: Vec<DomainPattern>,
    /// The OpenAI API key.
    pub api_key: Secret,
    /// Which upstream API answers, and with what (assistant, or model and instructions).
    pub api: UpstreamApi,
    /// Recipients of lead e-mails.
    pub lead_recipients: Vec<String>,
    /// Name of the function tool that captures a lead (default `sendEmail`).
    pub lead_tool: String,
    /// How the event stream is framed for the browser.
    pub stream_format: StreamFormat,
    /// Blank `instructions` and `tools` in the run objects of the `openai` stream format, so
    /// the system prompt never reaches browsers (default off: the bytes pass unchanged).
    pub redact_run_objects: bool,
    // request limits
    /// Requests to create-thread and process-message that this tenant's sites may make, all
    /// visitors together (`rate_limit`, `RATE_LIMIT_TENANT`); `None` (the default): no limit.
    pub rate_limit: Option<crate::rate::Rate>,
    // token budgets
    /// Most tokens the tenant may use per UTC day (`daily_token_budget`,
    /// `DAILY_TOKEN_BUDGETS`); `None`: no budget.
    pub daily_token_budget: Option<u64>,
    // bot check (Turnstile)
    /// The Turnstile secret key (`turnstile_secret` / `turnstile_secret_env`,
    /// `TURNSTILE_SECRETS`): when set, create-thread needs a valid `CF-Turnstile-Response`
    /// token; `None`: no bot check.
    pub turnstile_secret: Option<Secret>,
    /// The Turnstile site key (`turnstile_site_key`, `TURNSTILE_SITE_KEYS`): public, handed to
    /// the proxy's own widget by `widget-config` so it can render the challenge.
    pub turnstile_site_key: Option<String>,
    // output tokens
    /// Most tokens one answer may generate (`max_completion_tokens` on Assistants runs,
    /// `max_output_tokens` on Responses requests); `None`: the upstream's own limit.
    pub max_output_tokens: Option<u32>,
}

/// The upstream API a tenant talks to.
#[derive(Debug, Clone, PartialEq)]
pub enum UpstreamApi {
    /// The Assistants API (threads, messages, runs): sunset by OpenAI on 2026-08-26.
    Assistants {
        /// The assistant that answers (`asst_...`).
        assistant_id: String,
    },
    /// The Responses + Conversations API.
    Responses {
        /// The model, e.g. `gpt-5.4`.
        model: String,
        /// System instructions (inline text, or read from the configured file at start-up).
        instructions: Option<String>,
        /// Extra tool definitions passed through as they are (e.g. `file_search`).
        tools: Vec<serde_json::Value>,
    },
}

/// How the answer stream is framed for the browser.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(try_from = "String")]
pub enum StreamFormat {
    /// Upstream event-stream bytes unchanged (`"openai"`, the default).
    #[default]
    OpenAi,
    /// The old service's framing that the embedded widget parses (`"widget-v1"`).
    WidgetV1,
}

/// Lead capture settings (global).
#[derive(Debug, Clone, PartialEq)]
pub struct LeadSettings {
    /// Directory of the lead journal (default `data`, relative to the working directory).
    pub dir: std::path::PathBuf,
    /// Most lead e-mails one conversation may send (default 3).
    pub max_per_conversation: u32,
    /// Most lead e-mails one tenant may send per hour (default 100); leads over it are saved
    /// and delivered in a later hour.
    pub max_per_tenant_per_hour: u32,
    /// Most leads one visitor address may leave per UTC day, across conversations (default
    /// 5); the per-tenant hourly cap only delays delivery, this one refuses.
    pub max_per_address_per_day: u32,
    /// Most tool-output rounds in one answer (default 5).
    pub max_tool_rounds: u32,
    /// How long a lead's first delivery attempt may hold the answer before the lead is
    /// reported as queued (default 5 s).
    pub send_timeout: Duration,
}

/// SMTP settings for lead e-mails.
#[derive(Debug, Clone, PartialEq)]
pub struct SmtpSettings {
    pub host: String,
    pub port: u16,
    pub user: Option<String>,
    pub password: Option<Secret>,
    /// Transport security (default: implicit on port 465, opportunistic otherwise).
    pub tls: SmtpTls,
    /// The `From` mailbox (default `AI Bot <SMTP user>`, or `AI Bot <chatbot@SMTP host>`
    /// without a user).
    pub from: String,
    /// Timeout of one SMTP exchange (default 10 s).
    pub timeout: Duration,
}

/// How the SMTP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum SmtpTls {
    /// TLS from the first byte (port 465).
    Implicit,
    /// STARTTLS required.
    StartTls,
    /// STARTTLS when the server offers it, plain otherwise.
    Opportunistic,
    /// Plain text (local relays, tests).
    None,
}

/// A secret (API key, password) that never shows itself in `Debug` or `Display` output.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself: only for putting it on the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}
