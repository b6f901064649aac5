//! The validated configuration the proxy runs with.
//!
//! These types are what the rest of the program reads; how they are built (a TOML file,
//! or the old service's environment variables and `.env` file) lives in the sibling
//! modules. Every value here has already been checked: a `Config` that exists is usable.

use std::fmt;
use std::time::Duration;

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
    /// Seconds between SIGTERM and the start of the graceful shutdown (Pingora's grace period).
    pub grace_period_seconds: u64,
    /// Seconds that running streams get to finish once the shutdown starts.
    pub graceful_shutdown_timeout_seconds: u64,
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
}

/// Limits on requests from browsers.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Largest request body accepted, in bytes (default 32 KiB).
    pub max_body_bytes: usize,
    /// Longest message accepted, in characters (default 4,000).
    pub max_message_chars: usize,
}

/// One website (or group of websites) served with one OpenAI key and assistant.
#[derive(Debug, Clone, PartialEq)]
pub struct Tenant {
    /// Name used in logs and metrics; never a secret.
    pub name: String,
    /// Domain patterns as configured, lowercase: `example.com` or `*.example.com`.
    pub domains: Vec<String>,
    /// The OpenAI API key.
    pub api_key: Secret,
    /// The assistant that answers (`asst_...`).
    pub assistant_id: String,
    /// Recipients of lead e-mails.
    pub lead_recipients: Vec<String>,
}

/// SMTP settings for lead e-mails.
#[derive(Debug, Clone, PartialEq)]
pub struct SmtpSettings {
    pub host: String,
    pub port: u16,
    pub user: Option<String>,
    pub password: Option<Secret>,
}

/// A secret (API key, password) that never shows itself in `Debug` or `Display` output.
#[derive(Clone, PartialEq, Eq)]
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
