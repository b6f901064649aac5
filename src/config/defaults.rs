//! Default values of every optional setting, and `Default` for the settings structs.
//!
//! Both loaders (TOML and environment) start from these, so the two modes cannot drift apart.

use std::time::Duration;

use super::check::{self, At};
use super::error::ConfigError;
use super::types::{
    LeadSettings, Limits, ServerSettings, SmtpTls, TurnstileSettings, UpstreamSettings,
};

pub(crate) const LISTEN: &str = "0.0.0.0:3000";
pub(crate) const PREFIX: &str = "/open-ai";
pub(crate) const THREADS: usize = 2;
pub(crate) const GRACE_PERIOD_SECONDS: u64 = 0;
pub(crate) const DRAIN_TIMEOUT_SECONDS: u64 = 25;
pub(crate) const UPGRADE_SOCK: &str = "/tmp/chatbot-proxy-upgrade.sock";
pub(crate) const KEEPALIVE_TIMEOUT_SECONDS: u64 = 60;
pub(crate) const REQUEST_HEADER_TIMEOUT_SECONDS: u64 = 10;
pub(crate) const REQUEST_BODY_TIMEOUT_SECONDS: u64 = 15;
pub(crate) const STALLED_READER_TIMEOUT_SECONDS: u64 = 30;
pub(crate) const BASE_URL: &str = "https://api.openai.com/v1";
pub(crate) const CONNECT_TIMEOUT_MS: u64 = 5_000;
pub(crate) const FIRST_BYTE_TIMEOUT_MS: u64 = 60_000;
pub(crate) const IDLE_TIMEOUT_MS: u64 = 60_000;
pub(crate) const POOL_IDLE_TIMEOUT_MS: u64 = 90_000;
/// Idle upstream connections kept (Pingora's own default): enough for a steady stream of
/// requests, few enough that an idle proxy holds little (a pooled connection is a socket and a
/// small task, no buffers).
pub(crate) const POOL_SIZE: usize = 128;
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
// request limits
/// Requests per client address: a visitor typing sends a message every few seconds at most
/// (plus one create-thread per conversation), so 60 a minute never stops a person, while a
/// script is held to one OpenAI call a second.
pub(crate) const RATE_LIMIT_IP: crate::rate::Rate = crate::rate::Rate {
    count: 60,
    window: Duration::from_secs(60),
};
/// Answers streaming to one address at once: a few tabs, or a household behind one NAT.
pub(crate) const MAX_STREAMS_PER_IP: u32 = 4;
// leads under abuse
pub(crate) const MAX_LEADS_PER_ADDRESS_PER_DAY: u32 = 5;
// bot check (Turnstile)
pub(crate) const TURNSTILE_VERIFY_URL: &str =
    "https://challenges.cloudflare.com/turnstile/v0/siteverify";
pub(crate) const TURNSTILE_TIMEOUT_MS: u64 = 3_000;
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
            drain_timeout_seconds: DRAIN_TIMEOUT_SECONDS,
            upgrade_sock: UPGRADE_SOCK.to_string(),
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
            // request limits
            rate_limit_ip: Some(RATE_LIMIT_IP),
            max_streams_per_ip: MAX_STREAMS_PER_IP,
            turnstile: TurnstileSettings::default(),
        }
    }
}

impl Default for TurnstileSettings {
    /// Cloudflare's siteverify endpoint, 3 s.
    fn default() -> Self {
        let timeout = Duration::from_millis(TURNSTILE_TIMEOUT_MS);
        TurnstileSettings {
            endpoint: TurnstileSettings::endpoint(
                UpstreamSettings {
                    base_url: TURNSTILE_VERIFY_URL.to_string(),
                    host: "challenges.cloudflare.com".to_string(),
                    base_path: "/turnstile/v0/siteverify".to_string(),
                    ..UpstreamSettings::default()
                },
                timeout,
            ),
            timeout,
        }
    }
}

impl TurnstileSettings {
    /// `endpoint` (scheme, host, port and path already set) with every timeout `timeout`.
    pub(crate) fn endpoint(endpoint: UpstreamSettings, timeout: Duration) -> UpstreamSettings {
        UpstreamSettings {
            connect_timeout: timeout,
            first_byte_timeout: timeout,
            idle_timeout: timeout,
            address_connect_timeout: timeout.min(Duration::from_millis(ADDRESS_CONNECT_TIMEOUT_MS)),
            ..endpoint
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
            max_per_address_per_day: MAX_LEADS_PER_ADDRESS_PER_DAY,
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
            pool_size: POOL_SIZE,
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
        assert_eq!(leads.max_per_address_per_day, 5);
    }

    #[test]
    fn default_turnstile_endpoint_is_cloudflares_with_three_second_timeouts() {
        let turnstile = TurnstileSettings::default();
        let mut parsed = UpstreamSettings::default();
        let at = At::key("limits.turnstile_verify_url");
        check::verify_url(TURNSTILE_VERIFY_URL, &at, &mut parsed).unwrap();
        let parsed = TurnstileSettings::endpoint(parsed, Duration::from_secs(3));
        assert_eq!(turnstile.endpoint, parsed);
        assert_eq!(turnstile.timeout, Duration::from_secs(3));
        let e = &turnstile.endpoint;
        assert!(e.tls);
        assert_eq!(
            (e.host.as_str(), e.port, e.base_path.as_str()),
            ("challenges.cloudflare.com", 443, "/turnstile/v0/siteverify")
        );
        assert_eq!(e.connect_timeout, Duration::from_secs(3));
        assert_eq!(e.first_byte_timeout, Duration::from_secs(3));
        assert_eq!(e.address_connect_timeout, Duration::from_secs(1));
    }

    #[test]
    fn smtp_tls_defaults_by_port() {
        assert_eq!(smtp_tls(465), SmtpTls::Implicit);
        assert_eq!(smtp_tls(587), SmtpTls::Opportunistic);
        assert_eq!(smtp_tls(25), SmtpTls::Opportunistic);
        assert_eq!(smtp_tls(2525), SmtpTls::Opportunistic);
    }
}
