//! Default values of every optional setting, and `Default` for the settings structs.
//!
//! Both loaders (TOML and environment) start from these, so the two modes cannot drift apart.

use std::time::Duration;

use super::check::{self, At};
use super::error::ConfigError;
use super::types::{LeadSettings, Limits, ServerSettings, SmtpTls, UpstreamSettings};

pub(crate) const LISTEN: &str = "0.0.0.0:3000";
pub(crate) const PREFIX: &str = "/open-ai";
pub(crate) const THREADS: usize = 2;
pub(crate) const GRACE_PERIOD_SECONDS: u64 = 30;
pub(crate) const GRACEFUL_SHUTDOWN_TIMEOUT_SECONDS: u64 = 10;
pub(crate) const KEEPALIVE_TIMEOUT_SECONDS: u64 = 60;
pub(crate) const REQUEST_HEADER_TIMEOUT_SECONDS: u64 = 10;
pub(crate) const REQUEST_BODY_TIMEOUT_SECONDS: u64 = 15;
pub(crate) const STALLED_READER_TIMEOUT_SECONDS: u64 = 30;
pub(crate) const BASE_URL: &str = "https://api.openai.com/v1";
pub(crate) const CONNECT_TIMEOUT_MS: u64 = 5_000;
pub(crate) const FIRST_BYTE_TIMEOUT_MS: u64 = 60_000;
pub(crate) const IDLE_TIMEOUT_MS: u64 = 60_000;
pub(crate) const POOL_IDLE_TIMEOUT_MS: u64 = 90_000;
/// Per-address connect timeout; never more than the connect timeout.
pub(crate) const ADDRESS_CONNECT_TIMEOUT_MS: u64 = 1_000;
pub(crate) const MAX_BODY_BYTES: usize = 32 * 1024;
pub(crate) const MAX_MESSAGE_CHARS: usize = 4_000;
pub(crate) const SMTP_PORT: u16 = 587;
/// The port of implicit TLS ("submissions"); any other port defaults to opportunistic STARTTLS.
pub(crate) const SMTP_IMPLICIT_TLS_PORT: u16 = 465;
pub(crate) const SMTP_TIMEOUT_MS: u64 = 10_000;
/// Display name of the default `From` mailbox.
pub(crate) const FROM_NAME: &str = "AI Bot";
/// Local part of the default `From` address when there is no SMTP user.
pub(crate) const FROM_LOCAL_PART: &str = "chatbot";
pub(crate) const LEADS_DIR: &str = "data";
pub(crate) const MAX_LEADS_PER_CONVERSATION: u32 = 3;
pub(crate) const MAX_LEADS_PER_TENANT_PER_HOUR: u32 = 100;
pub(crate) const MAX_TOOL_ROUNDS: u32 = 5;
pub(crate) const LEAD_SEND_TIMEOUT_MS: u64 = 5_000;
pub(crate) const LEAD_TOOL: &str = "sendEmail";
// conversation handles
pub(crate) const CONVERSATION_TTL_HOURS: u64 = 24;
pub(crate) const MAX_MESSAGES_PER_CONVERSATION: u32 = 50;

/// Transport security when none is configured: implicit TLS on port 465, opportunistic
/// STARTTLS on any other port.
pub(crate) fn smtp_tls(port: u16) -> SmtpTls {
    if port == SMTP_IMPLICIT_TLS_PORT {
        SmtpTls::Implicit
    } else {
        SmtpTls::Opportunistic
    }
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            listen: LISTEN.to_string(),
            prefix: PREFIX.to_string(),
            threads: THREADS,
            grace_period_seconds: GRACE_PERIOD_SECONDS,
            graceful_shutdown_timeout_seconds: GRACEFUL_SHUTDOWN_TIMEOUT_SECONDS,
            timeouts: Default::default(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: MAX_BODY_BYTES,
            max_message_chars: MAX_MESSAGE_CHARS,
            redis_url: None,
            trusted_proxies: Vec::new(),
            // conversation handles
            session_secret: None,
            conversation_ttl: Duration::from_secs(CONVERSATION_TTL_HOURS * 3600),
            max_messages_per_conversation: MAX_MESSAGES_PER_CONVERSATION,
        }
    }
}

impl Default for LeadSettings {
    fn default() -> Self {
        LeadSettings {
            dir: LEADS_DIR.into(),
            max_per_conversation: MAX_LEADS_PER_CONVERSATION,
            max_per_tenant_per_hour: MAX_LEADS_PER_TENANT_PER_HOUR,
            max_tool_rounds: MAX_TOOL_ROUNDS,
            send_timeout: Duration::from_millis(LEAD_SEND_TIMEOUT_MS),
        }
    }
}

impl Default for UpstreamSettings {
    /// OpenAI itself with the default timeouts.
    fn default() -> Self {
        UpstreamSettings {
            base_url: BASE_URL.to_string(),
            tls: true,
            host: "api.openai.com".to_string(),
            port: 443,
            base_path: "/v1".to_string(),
            connect_timeout: Duration::from_millis(CONNECT_TIMEOUT_MS),
            first_byte_timeout: Duration::from_millis(FIRST_BYTE_TIMEOUT_MS),
            idle_timeout: Duration::from_millis(IDLE_TIMEOUT_MS),
            pool_idle_timeout: Duration::from_millis(POOL_IDLE_TIMEOUT_MS),
            address_connect_timeout: Duration::from_millis(ADDRESS_CONNECT_TIMEOUT_MS),
            resolve: Vec::new(),
        }
    }
}

#[allow(dead_code)] // for the `demo` command and tests; the TOML and env loaders do not need it
impl UpstreamSettings {
    /// The default timeouts against another base URL (e.g. the stub at
    /// `http://127.0.0.1:8090/v1`), checked like `upstream.base_url`.
    pub fn with_base_url(base_url: &str) -> Result<Self, ConfigError> {
        let mut upstream = UpstreamSettings::default();
        check::base_url(base_url, &At::key("upstream.base_url"), &mut upstream)?;
        Ok(upstream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_upstream_agrees_with_parsing_the_default_base_url() {
        let parsed = UpstreamSettings::with_base_url(BASE_URL).unwrap();
        assert_eq!(parsed, UpstreamSettings::default());
    }

    #[test]
    fn with_base_url_points_at_the_stub() {
        let stub = UpstreamSettings::with_base_url("http://127.0.0.1:8090/v1").unwrap();
        assert!(!stub.tls);
        assert_eq!(
            (stub.host.as_str(), stub.port, stub.base_path.as_str()),
            ("127.0.0.1", 8090, "/v1")
        );
        assert_eq!(stub.connect_timeout, Duration::from_millis(5_000));
    }

    #[test]
    fn lead_settings_defaults() {
        let leads = LeadSettings::default();
        assert_eq!(leads.dir, std::path::PathBuf::from("data"));
        assert_eq!(leads.max_per_conversation, 3);
        assert_eq!(leads.max_per_tenant_per_hour, 100);
        assert_eq!(leads.max_tool_rounds, 5);
        assert_eq!(leads.send_timeout, Duration::from_secs(5));
    }

    #[test]
    fn smtp_tls_defaults_by_port() {
        assert_eq!(smtp_tls(465), SmtpTls::Implicit);
        assert_eq!(smtp_tls(587), SmtpTls::Opportunistic);
        assert_eq!(smtp_tls(25), SmtpTls::Opportunistic);
        assert_eq!(smtp_tls(2525), SmtpTls::Opportunistic);
    }
}
