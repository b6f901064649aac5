//! Validation rules shared by the TOML and the environment loaders.
//!
//! Each rule takes a raw value and an [`At`] (the key, and the line when it comes from a file)
//! and returns the checked value or a [`ConfigError`] that names the key and says what to do.
//! No rule ever puts a secret into its message: values are echoed only through [`shown`].

use std::collections::HashMap;
use std::net::SocketAddr;
use url::{Host, Url};

use super::defaults;
use super::error::ConfigError;
use super::raw::ApiKind;
use super::types::{Config, DomainPattern, Secret, SmtpTls, StreamFormat, UpstreamSettings};

/// Where a value came from: its key and, for a file, its 1-based line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct At {
    pub(crate) key: String,
    pub(crate) line: Option<usize>,
}

impl At {
    /// A key without a line (environment variables).
    pub(crate) fn key(key: impl Into<String>) -> Self {
        At {
            key: key.into(),
            line: None,
        }
    }

    /// A key on a line of a file.
    pub(crate) fn on_line(key: impl Into<String>, line: usize) -> Self {
        At {
            key: key.into(),
            line: Some(line),
        }
    }

    /// The error for this key.
    pub(crate) fn err(&self, message: impl Into<String>) -> ConfigError {
        ConfigError::new(self.key.clone(), message).with_line(self.line)
    }

    /// `KEY` or `KEY, line N`, for pointing at another place in a message.
    pub(crate) fn describe(&self) -> String {
        match self.line {
            Some(line) => format!("{}, line {line}", self.key),
            None => self.key.clone(),
        }
    }
}

/// A value quoted for an error message, unless it might be a secret.
///
/// Anything that looks like an OpenAI key (`sk-`) or is suspiciously long is withheld, so a key
/// pasted into the wrong field (`assistant_id`, `DOMAINS`) is not printed either.
pub(crate) fn shown(value: &str) -> String {
    if value.to_ascii_lowercase().contains("sk-") || value.chars().count() > 80 {
        "(value not shown: it looks like a secret)".to_string()
    } else {
        format!("{value:?}")
    }
}

/// Allowed range and default of an integer setting.
pub(crate) struct Bounds {
    pub(crate) min: u64,
    pub(crate) max: u64,
    pub(crate) default: u64,
    pub(crate) unit: &'static str,
}

const fn bounds(min: u64, max: u64, default: u64, unit: &'static str) -> Bounds {
    Bounds {
        min,
        max,
        default,
        unit,
    }
}

use defaults as d;
pub(crate) const THREADS: Bounds = bounds(1, 1024, d::THREADS as u64, "threads");
pub(crate) const GRACE_SECONDS: Bounds = bounds(0, 3600, d::GRACE_PERIOD_SECONDS, "seconds");
/// `server.drain_timeout_seconds` (and its older name).
pub(crate) const DRAIN_SECONDS: Bounds = bounds(1, 3600, d::DRAIN_TIMEOUT_SECONDS, "seconds");
const MS: &str = "milliseconds";
pub(crate) const CLIENT_TIMEOUT_SECONDS: [Bounds; 4] = [
    bounds(1, 3600, d::KEEPALIVE_TIMEOUT_SECONDS, "seconds"),
    bounds(1, 3600, d::REQUEST_HEADER_TIMEOUT_SECONDS, "seconds"),
    bounds(1, 3600, d::REQUEST_BODY_TIMEOUT_SECONDS, "seconds"),
    bounds(1, 3600, d::STALLED_READER_TIMEOUT_SECONDS, "seconds"),
];
pub(crate) const ADDRESS_CONNECT_TIMEOUT_MS: Bounds =
    bounds(1, 3_600_000, d::ADDRESS_CONNECT_TIMEOUT_MS, MS);
pub(crate) const CONNECT_TIMEOUT_MS: Bounds = bounds(1, 3_600_000, d::CONNECT_TIMEOUT_MS, MS);
pub(crate) const FIRST_BYTE_TIMEOUT_MS: Bounds = bounds(1, 3_600_000, d::FIRST_BYTE_TIMEOUT_MS, MS);
pub(crate) const IDLE_TIMEOUT_MS: Bounds = bounds(1, 3_600_000, d::IDLE_TIMEOUT_MS, MS);
pub(crate) const POOL_IDLE_TIMEOUT_MS: Bounds = bounds(1, 3_600_000, d::POOL_IDLE_TIMEOUT_MS, MS);
pub(crate) const POOL_SIZE: Bounds = bounds(1, 100_000, d::POOL_SIZE as u64, "connections");
pub(crate) const BODY_BYTES: Bounds = bounds(1, 10 << 20, d::MAX_BODY_BYTES as u64, "bytes");
pub(crate) const MESSAGE_CHARS: Bounds =
    bounds(1, 1_000_000, d::MAX_MESSAGE_CHARS as u64, "characters");
pub(crate) const SMTP_PORT: Bounds = bounds(1, 65_535, d::SMTP_PORT as u64, "(port number)");
pub(crate) const SMTP_TIMEOUT_MS: Bounds = bounds(1, 600_000, d::SMTP_TIMEOUT_MS, MS);
pub(crate) const LEADS_PER_CONVERSATION: Bounds =
    bounds(1, 1_000, d::MAX_LEADS_PER_CONVERSATION as u64, "e-mails");
pub(crate) const LEADS_PER_HOUR: Bounds = bounds(
    1,
    100_000,
    d::MAX_LEADS_PER_TENANT_PER_HOUR as u64,
    "e-mails",
);
pub(crate) const TOOL_ROUNDS: Bounds = bounds(1, 20, d::MAX_TOOL_ROUNDS as u64, "rounds");
pub(crate) const SEND_TIMEOUT_MS: Bounds = bounds(1, 60_000, d::LEAD_SEND_TIMEOUT_MS, MS);
// request limits
pub(crate) const STREAMS_PER_IP: Bounds = bounds(
    0,
    100_000,
    d::MAX_STREAMS_PER_IP as u64,
    "streams (0: no limit)",
);
// token budgets
/// A tenant's tokens per UTC day; 0 (the default) is no budget.
pub(crate) const DAILY_TOKENS: Bounds = bounds(0, 1_000_000_000_000, 0, "tokens (0: no budget)");
// leads under abuse
pub(crate) const LEADS_PER_ADDRESS_PER_DAY: Bounds = bounds(
    1,
    100_000,
    d::MAX_LEADS_PER_ADDRESS_PER_DAY as u64,
    "e-mails",
);
// bot check (Turnstile)
pub(crate) const TURNSTILE_TIMEOUT_MS: Bounds = bounds(1, 60_000, d::TURNSTILE_TIMEOUT_MS, MS);
// conversation handles
pub(crate) const CONVERSATION_TTL_HOURS: Bounds =
    bounds(1, 24 * 90, d::CONVERSATION_TTL_HOURS, "hours");
pub(crate) const MESSAGES_PER_CONVERSATION: Bounds = bounds(
    1,
    100_000,
    d::MAX_MESSAGES_PER_CONVERSATION as u64,
    "messages",
);

/// An integer inside `bounds`.
pub(crate) fn in_bounds(value: i64, bounds: &Bounds, at: &At) -> Result<u64, ConfigError> {
    match u64::try_from(value) {
        Ok(v) if (bounds.min..=bounds.max).contains(&v) => Ok(v),
        _ => Err(at.err(format!(
            "{value} is out of range: use a value from {} to {} {} (the default is {}), or \
             remove the key to get the default",
            bounds.min, bounds.max, bounds.unit, bounds.default
        ))),
    }
}

/// A port number given as text (`PORT`, `SMTP_PORT`).
pub(crate) fn port_text(raw: &str, at: &At) -> Result<u16, ConfigError> {
    let raw = raw.trim();
    match raw.parse::<u16>() {
        Ok(port) if port > 0 => Ok(port),
        _ => Err(at.err(format!(
            "{} is not a port number: use a number from 1 to 65535, e.g. 3000",
            shown(raw)
        ))),
    }
}

/// Longest path of a Unix socket (`sun_path` holds 108 bytes with the final NUL).
const MAX_UNIX_SOCKET_PATH: usize = 107;

/// `server.upgrade_sock`: a Unix socket path the old and the new process agree on.
pub(crate) fn upgrade_sock(raw: &str, at: &At) -> Result<String, ConfigError> {
    let path = raw.trim();
    if path.is_empty() || path.chars().any(char::is_control) {
        return Err(at.err(format!(
            "must be a plain file path for a Unix socket, e.g. \"{}\" (the default)",
            defaults::UPGRADE_SOCK
        )));
    }
    if path.len() > MAX_UNIX_SOCKET_PATH {
        return Err(at.err(format!(
            "is {} bytes long, more than a Unix socket path may hold ({MAX_UNIX_SOCKET_PATH}): \
             choose a shorter path, e.g. \"{}\"",
            path.len(),
            defaults::UPGRADE_SOCK
        )));
    }
    Ok(path.to_string())
}

/// The route prefix: starts with `/`, no trailing `/`, no `?`, `#` or whitespace; `/` alone
/// gives the empty prefix.
pub(crate) fn prefix(raw: &str, at: &At) -> Result<String, ConfigError> {
    if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(at.err(format!(
            "{} contains spaces: write a path such as \"/open-ai\" (or \"/\" for no prefix)",
            shown(raw)
        )));
    }
    if raw.contains(['?', '#']) {
        return Err(at.err(format!(
            "{} contains '?' or '#': the prefix is a plain path such as \"/open-ai\"",
            shown(raw)
        )));
    }
    if !raw.starts_with('/') {
        return Err(at.err(format!(
            "{} must start with '/': write e.g. \"/open-ai\" (or \"/\" for no prefix)",
            shown(raw)
        )));
    }
    Ok(raw.trim_end_matches('/').to_string())
}

/// The listen address: an IP address and a port from 1 to 65535. Returned in canonical form.
pub(crate) fn listen(raw: &str, at: &At) -> Result<String, ConfigError> {
    let raw = raw.trim();
    if raw.parse::<u64>().is_ok() {
        return Err(at.err(format!(
            "{} is only a port: write host:port, e.g. \"0.0.0.0:{raw}\" (all interfaces) \
             or \"127.0.0.1:{raw}\" (this machine only)",
            shown(raw)
        )));
    }
    match raw.parse::<SocketAddr>() {
        Ok(addr) if addr.port() == 0 => {
            Err(at
                .err("port 0 is not allowed: choose a port from 1 to 65535, e.g. \"0.0.0.0:3000\""))
        }
        Ok(addr) => Ok(addr.to_string()),
        Err(_) => {
            let port_part = raw.rsplit_once(':').map(|(_, port)| port);
            let hint = match port_part.map(str::parse::<u64>) {
                Some(Ok(port)) if port > 65_535 || port == 0 => {
                    "the port must be from 1 to 65535".to_string()
                }
                Some(Ok(_)) => "the host must be an IP address: \"0.0.0.0\" (all interfaces), \
                                \"127.0.0.1\" (this machine only) or \"[::]\" (IPv6)"
                    .to_string(),
                _ => "write host:port, e.g. \"0.0.0.0:3000\" or \"[::]:3000\"".to_string(),
            };
            Err(at.err(format!("{} is not a socket address: {hint}", shown(raw))))
        }
    }
}

/// The metrics endpoint's address: checked like [`listen`], and it must not take the proxy's
/// own listener, `listen` (canonical), which `listen_is` describes for the message. The two
/// clash when their ports are equal and their addresses are too, or either is a wildcard.
pub(crate) fn metrics_listen(
    raw: &str,
    at: &At,
    listen: &str,
    listen_is: &str,
) -> Result<String, ConfigError> {
    let addr = self::listen(raw, at)?;
    let clash = match (addr.parse::<SocketAddr>(), listen.parse::<SocketAddr>()) {
        (Ok(metrics), Ok(proxy)) => {
            metrics.port() == proxy.port()
                && (metrics.ip() == proxy.ip()
                    || metrics.ip().is_unspecified()
                    || proxy.ip().is_unspecified())
        }
        _ => addr == listen,
    };
    if clash {
        return Err(at.err(format!(
            "{} takes the port of the proxy's own listener ({listen_is}): the metrics endpoint \
             needs a port of its own, e.g. \"127.0.0.1:9090\"",
            shown(&addr)
        )));
    }
    Ok(addr)
}

/// The upstream base URL; fills `base_url`, `tls`, `host`, `port` and `base_path`.
///
/// The URL itself is never echoed: it might carry credentials.
pub(crate) fn base_url(
    raw: &str,
    at: &At,
    upstream: &mut UpstreamSettings,
) -> Result<(), ConfigError> {
    const EXAMPLE: &str =
        "e.g. \"https://api.openai.com/v1\" or \"http://127.0.0.1:8090/v1\" (the stub)";
    let raw = raw.trim();
    if raw.is_empty() {
        return Err(at.err(format!("is empty: give the API's base URL, {EXAMPLE}")));
    }
    let url = Url::parse(raw).map_err(|e| {
        at.err(format!(
            "is not an absolute URL ({e}): write scheme, host and path, {EXAMPLE}"
        ))
    })?;
    let tls = match url.scheme() {
        "https" => true,
        "http" => false,
        other => {
            return Err(at.err(format!(
                "has scheme {other:?}: only http and https are supported, {EXAMPLE}"
            )))
        }
    };
    if !url.username().is_empty() || url.password().is_some() {
        return Err(at.err(
            "must not contain a user name or password: remove the \"user:pass@\" part \
             (the API key belongs in the tenants' api_key_env / api_key)",
        ));
    }
    if url.query().is_some() {
        return Err(at.err(format!(
            "must not have a query (\"?...\"): remove it, {EXAMPLE}"
        )));
    }
    if url.fragment().is_some() {
        return Err(at.err(format!(
            "must not have a fragment (\"#...\"): remove it, {EXAMPLE}"
        )));
    }
    let host = match url.host() {
        Some(Host::Domain(domain)) => domain.to_ascii_lowercase(),
        Some(Host::Ipv4(ip)) => ip.to_string(),
        Some(Host::Ipv6(ip)) => ip.to_string(),
        None => return Err(at.err(format!("has no host: {EXAMPLE}"))),
    };
    if host.is_empty() {
        return Err(at.err(format!("has no host: {EXAMPLE}")));
    }
    let Some(port) = url.port_or_known_default() else {
        return Err(at.err(format!("has no port: {EXAMPLE}")));
    };
    upstream.base_url = raw.to_string();
    upstream.tls = tls;
    upstream.host = host;
    upstream.port = port;
    upstream.base_path = url.path().trim_end_matches('/').to_string();
    Ok(())
}

// bot check (Turnstile)
/// `limits.turnstile_verify_url` / `TURNSTILE_VERIFY_URL`: an absolute http(s) URL without
/// credentials, query or fragment; fills `base_url`, `tls`, `host`, `port` and `base_path`
/// (the whole path, posted to as it is). The URL itself is never echoed.
pub(crate) fn verify_url(
    raw: &str,
    at: &At,
    endpoint: &mut UpstreamSettings,
) -> Result<(), ConfigError> {
    let raw = raw.trim();
    let usable = Url::parse(raw).ok().and_then(|url| {
        let clean = matches!(url.scheme(), "http" | "https")
            && url.username().is_empty()
            && url.password().is_none()
            && url.query().is_none()
            && url.fragment().is_none();
        let host = match url.host()? {
            Host::Domain(domain) => domain.to_ascii_lowercase(),
            Host::Ipv4(ip) => ip.to_string(),
            Host::Ipv6(ip) => ip.to_string(),
        };
        let port = url.port_or_known_default()?;
        (clean && !host.is_empty()).then_some((url, host, port))
    });
    let Some((url, host, port)) = usable else {
        return Err(at.err(format!(
            "is not a usable siteverify URL (value not shown): write an absolute http or https \
             URL without user, query or fragment, e.g. \"{}\" (the default; tests use a local \
             fake)",
            d::TURNSTILE_VERIFY_URL
        )));
    };
    endpoint.tls = url.scheme() == "https";
    endpoint.host = host;
    endpoint.port = port;
    endpoint.base_path = url.path().to_string();
    endpoint.base_url = raw.to_string();
    Ok(())
}

/// A tenant's Turnstile secret key: a single word of visible ASCII, never shown. `what` names
/// its source (e.g. "the Turnstile secret in ACME_TURNSTILE").
pub(crate) fn turnstile_secret(raw: &str, what: &str, at: &At) -> Result<Secret, ConfigError> {
    let secret = raw.trim();
    if secret.is_empty() {
        return Err(at.err(format!(
            "{what} is empty: paste the widget's secret key from the Cloudflare dashboard \
             (Turnstile > Settings), or remove the key to turn the bot check off"
        )));
    }
    if !secret.chars().all(|c| c.is_ascii_graphic()) {
        return Err(at.err(format!(
            "{what} contains spaces, line breaks or non-ASCII characters (value not shown): \
             paste the secret key again as one word"
        )));
    }
    Ok(Secret::new(secret))
}

/// A tenant's Turnstile site key (public): one word of letters, digits, `-` and `_`, as the
/// Cloudflare dashboard shows it; `""` is none.
pub(crate) fn turnstile_site_key(raw: &str, at: &At) -> Result<Option<String>, ConfigError> {
    let key = raw.trim();
    if key.is_empty() {
        return Ok(None);
    }
    let word = key
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !word || key.len() > 100 {
        return Err(at.err(format!(
            "{} is not a Turnstile site key: paste the site key (not the secret) from the \
             Cloudflare dashboard (Turnstile > Settings), e.g. 0x4AAAAAAA...",
            shown(key)
        )));
    }
    Ok(Some(key.to_string()))
}

/// `tenants[i].max_output_tokens` / `MAX_OUTPUT_TOKENS`: 16 (OpenAI refuses fewer) to 1,000,000.
/// There is no default: without the setting the upstream's own limit applies.
pub(crate) fn output_tokens(value: i64, at: &At) -> Result<u32, ConfigError> {
    const MIN: i64 = 16;
    const MAX: i64 = 1_000_000;
    if !(MIN..=MAX).contains(&value) {
        return Err(at.err(format!(
            "{value} is out of range: use a number of tokens from {MIN} to {MAX}, or remove the \
             setting to leave the limit to the upstream"
        )));
    }
    Ok(value as u32)
}

/// `limits.session_secret` / `SESSION_SECRET` (or the variable `session_secret_env` names):
/// at least [`crate::handle::MIN_SECRET_LEN`] bytes once trimmed. Only its length is ever shown.
pub(crate) fn session_secret(raw: &str, what: &str, at: &At) -> Result<Secret, ConfigError> {
    let secret = raw.trim();
    let min = crate::handle::MIN_SECRET_LEN;
    if secret.len() < min {
        return Err(at.err(format!(
            "{what} is {} bytes long (value not shown), but conversation handles need a secret \
             of at least {min} bytes: generate one with `openssl rand -hex 32`, or remove the \
             setting to have one generated and kept in the leads directory",
            secret.len()
        )));
    }
    Ok(Secret::new(secret))
}

/// `limits.redis_url` / `REDIS_URL`: `redis://` or `rediss://`, with a host. The value is never
/// shown (it may hold a password).
pub(crate) fn redis_url(raw: &Secret, at: &At) -> Result<Secret, ConfigError> {
    let text = raw.expose().trim();
    match Url::parse(text) {
        Ok(url) if matches!(url.scheme(), "redis" | "rediss") && url.host().is_some() => {
            Ok(Secret::new(text))
        }
        _ => Err(at.err(
            "is not a Redis URL (value not shown): write e.g. redis://127.0.0.1:6379/0, \
             redis://:PASSWORD@redis.internal:6379 or rediss://... for TLS",
        )),
    }
}

/// One entry of `limits.trusted_proxies` / `TRUSTED_PROXIES`: a network (`10.0.0.0/8`,
/// `2001:db8::/32`) or one address.
pub(crate) fn trusted_proxy(raw: &str, at: &At) -> Result<ipnet::IpNet, ConfigError> {
    let text = raw.trim();
    text.parse::<ipnet::IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map(|net| net.trunc())
        .map_err(|_| {
            at.err(format!(
                "is not a network or an IP address (got {}): write e.g. \"10.0.0.0/8\", \
                 \"2001:db8::/32\" or \"203.0.113.7\"",
                shown(raw)
            ))
        })
}

/// A request limit (`rate_limit_ip`, `rate_limit`): `N/sec`, `N/min`, `N/hour` or `N/day`, or
/// `off` (`None`).
pub(crate) fn rate(raw: &str, at: &At) -> Result<Option<crate::rate::Rate>, ConfigError> {
    crate::rate::parse_optional(raw).map_err(|why| at.err(format!("{why}, or \"off\"")))
}

/// One entry of `upstream.resolve` / `OPENAI_RESOLVE`: an IP address (an IPv6 one with or
/// without brackets), no port.
pub(crate) fn resolve_address(raw: &str, at: &At) -> Result<std::net::IpAddr, ConfigError> {
    let text = raw.trim();
    let bare = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    bare.parse().map_err(|_| {
        at.err(format!(
            "is not an IP address (got {}): write e.g. \"203.0.113.7\" or \"2001:db8::7\", \
             without a port (base_url's port is used)",
            shown(raw)
        ))
    })
}

/// `upstream.address_connect_timeout_ms`, which must not exceed `connect_timeout_ms` (that one
/// bounds the whole attempt, all addresses together). Unset: the default, capped the same way.
pub(crate) fn address_connect_timeout(
    value: Option<(u64, &At)>,
    connect_timeout_ms: u64,
) -> Result<u64, ConfigError> {
    match value {
        None => Ok(d::ADDRESS_CONNECT_TIMEOUT_MS.min(connect_timeout_ms)),
        Some((ms, at)) if ms > connect_timeout_ms => Err(at.err(format!(
            "is {ms}, more than upstream.connect_timeout_ms ({connect_timeout_ms}), which bounds \
             the whole connection attempt: lower it, or raise connect_timeout_ms"
        ))),
        Some((ms, _)) => Ok(ms),
    }
}

/// A domain entry, trimmed and lowercase, parsed by the one domain rule ([`DomainPattern`]).
/// Returns the entry as written (trimmed, lowercase: a tenant's default name) and the pattern.
pub(crate) fn domain(raw: &str, at: &At) -> Result<(String, DomainPattern), ConfigError> {
    let text = raw.trim().to_lowercase();
    DomainPattern::parse(&text)
        .map(|pattern| (text.clone(), pattern))
        .map_err(|why| match shown(&text) {
            _ if text.is_empty() => at.err(why),
            quoted if quoted.starts_with('"') => at.err(format!("{quoted} {why}")),
            // The reason may quote the entry, which looks like a secret.
            withheld => at.err(format!(
                "{withheld} is not a host name: write one such as \"example.com\" or \
                 \"*.example.com\""
            )),
        })
}

/// An OpenAI API key: trimmed, non-empty, a single word of visible ASCII.
///
/// `what` names the key's source in the message (e.g. "the API key in ACME_KEY").
pub(crate) fn api_key(raw: &str, what: &str, at: &At) -> Result<Secret, ConfigError> {
    let key = raw.trim();
    if key.is_empty() {
        return Err(at.err(format!(
            "{what} is empty: paste the OpenAI API key (it starts with \"sk-\")"
        )));
    }
    if !key.chars().all(|c| c.is_ascii_graphic()) {
        return Err(at.err(format!(
            "{what} contains spaces, line breaks or non-ASCII characters (value not shown): \
             paste the key again as one word"
        )));
    }
    Ok(Secret::new(key))
}

/// An assistant id: `asst_` followed by letters, digits, `_` or `-`.
pub(crate) fn assistant_id(raw: &str, at: &At) -> Result<String, ConfigError> {
    let id = raw.trim();
    if id.is_empty() {
        return Err(
            at.err("is empty: copy the assistant's id (\"asst_...\") from the OpenAI dashboard")
        );
    }
    let well_formed = id.len() > "asst_".len()
        && id.starts_with("asst_")
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !well_formed {
        return Err(at.err(format!(
            "{} is not an assistant id: it must start with \"asst_\" followed by letters \
             and digits; copy it from the OpenAI dashboard",
            shown(id)
        )));
    }
    Ok(id.to_string())
}

/// One e-mail address (basic check: exactly one `@` with text on both sides, no spaces).
pub(crate) fn recipient(raw: &str, at: &At) -> Result<String, ConfigError> {
    let address = raw.trim();
    let well_formed = match address.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.is_empty()
                && !domain.contains('@')
                && !address.chars().any(|c| c.is_whitespace() || c == ',')
        }
        None => false,
    };
    if !well_formed {
        return Err(at.err(format!(
            "{} is not one e-mail address: write a single address such as \
             \"sales@example.com\" per entry",
            shown(address)
        )));
    }
    Ok(address.to_string())
}

/// A tenant name: trimmed, non-empty, no control characters.
pub(crate) fn tenant_name(raw: &str, at: &At) -> Result<String, ConfigError> {
    let name = raw.trim();
    if name.is_empty() {
        return Err(
            at.err("is empty: give the tenant a name, or remove the key to use its first domain")
        );
    }
    if name.chars().any(char::is_control) {
        return Err(at.err("contains control characters: use a plain name such as \"acme\""));
    }
    Ok(name.to_string())
}

/// The name of an environment variable (for `api_key_env`, `password_env`).
pub(crate) fn env_var_name(raw: &str, at: &At) -> Result<String, ConfigError> {
    let name = raw.trim();
    if name.to_ascii_lowercase().starts_with("sk-") {
        return Err(at.err(
            "looks like an API key, not the name of an environment variable (value not shown): \
             put the key in an environment variable, e.g. ACME_OPENAI_KEY, and write that \
             name here",
        ));
    }
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-');
    if !valid {
        return Err(at.err(format!(
            "{} is not an environment variable name: use letters, digits and '_', \
             e.g. \"ACME_OPENAI_KEY\"",
            shown(name)
        )));
    }
    Ok(name.to_string())
}

/// The value of environment variable `name`, which must be set and not blank.
///
/// `purpose` says what the variable holds (e.g. "the OpenAI API key of tenant \"acme\"").
pub(crate) fn env_value(
    env: &HashMap<String, String>,
    name: &str,
    purpose: &str,
    at: &At,
) -> Result<String, ConfigError> {
    match env.get(name) {
        Some(value) if !value.trim().is_empty() => Ok(value.clone()),
        Some(_) => Err(at.err(format!(
            "environment variable {name} is empty: set it to {purpose} before starting \
             chatbot-proxy"
        ))),
        None => Err(at.err(format!(
            "environment variable {name} is not set: export {name} with {purpose} before \
             starting chatbot-proxy"
        ))),
    }
}

/// The SMTP user: trimmed, not blank.
pub(crate) fn smtp_user(raw: &str, at: &At) -> Result<String, ConfigError> {
    match raw.trim() {
        "" => Err(at.err("is empty: give the SMTP user name, or remove the key")),
        user => Ok(user.to_string()),
    }
}

/// The SMTP password: not blank; kept as written.
pub(crate) fn smtp_password(raw: &Secret, at: &At) -> Result<Secret, ConfigError> {
    if raw.expose().trim().is_empty() {
        return Err(at.err("is empty: give the SMTP password, or remove the key"));
    }
    Ok(raw.clone())
}

/// The SMTP host: non-empty, a host name only.
pub(crate) fn smtp_host(raw: &str, at: &At) -> Result<String, ConfigError> {
    let host = raw.trim();
    if host.is_empty() || host.contains('/') || host.chars().any(char::is_whitespace) {
        return Err(at.err(format!(
            "{} is not a host name: write e.g. \"smtp.example.com\" (the port goes in its own key)",
            shown(host)
        )));
    }
    Ok(host.to_string())
}

/// `api`: `"assistants"` or `"responses"`.
impl TryFrom<String> for ApiKind {
    type Error = String;

    fn try_from(raw: String) -> Result<Self, String> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "assistants" => Ok(ApiKind::Assistants),
            "responses" => Ok(ApiKind::Responses),
            _ => Err(format!(
                "{} is not an API: write \"assistants\" (with assistant_id) or \"responses\" \
                 (with model), or remove the key to choose by which of the two is set",
                shown(raw.trim())
            )),
        }
    }
}

/// A model name for the Responses API: non-empty, one word.
pub(crate) fn model(raw: &str, at: &At) -> Result<String, ConfigError> {
    let model = raw.trim();
    if model.is_empty() {
        return Err(at.err("is empty: write the model that answers, e.g. \"gpt-5.4\""));
    }
    if model.to_ascii_lowercase().starts_with("sk-") {
        return Err(at.err(
            "looks like an API key, not a model name (value not shown): write the model, e.g. \
             \"gpt-5.4\", and put the key in api_key_env / api_key",
        ));
    }
    if model.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(at.err(format!(
            "{} contains spaces: write one model name, e.g. \"gpt-5.4\"",
            shown(model)
        )));
    }
    Ok(model.to_string())
}

/// System instructions: any text that is not blank. Returned without surrounding whitespace.
pub(crate) fn instructions(raw: &str, what: &str, at: &At) -> Result<String, ConfigError> {
    let text = raw.trim();
    if text.is_empty() {
        return Err(at.err(format!(
            "{what} is empty: write the instructions for the model, or remove the key to \
             send none"
        )));
    }
    Ok(text.to_string())
}

/// The name of a function tool (`lead_tool`): 1 to 64 letters, digits, `_` or `-`, as OpenAI
/// requires.
pub(crate) fn function_name(raw: &str, at: &At) -> Result<String, ConfigError> {
    let name = raw.trim();
    if name.to_ascii_lowercase().starts_with("sk-") {
        return Err(at.err(format!(
            "looks like an API key, not a function name (value not shown): write e.g. \"{}\"",
            defaults::LEAD_TOOL
        )));
    }
    let valid = (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !valid {
        return Err(at.err(format!(
            "{} is not a function name: use 1 to 64 letters, digits, '_' or '-', e.g. \
             \"{}\" (the default)",
            shown(name),
            defaults::LEAD_TOOL
        )));
    }
    Ok(name.to_string())
}

/// `stream_format`: `"openai"` or `"widget-v1"`.
impl TryFrom<String> for StreamFormat {
    type Error = String;

    fn try_from(raw: String) -> Result<Self, String> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "openai" => Ok(StreamFormat::OpenAi),
            "widget-v1" => Ok(StreamFormat::WidgetV1),
            _ => Err(format!(
                "{} is not a stream format: write \"openai\" (the upstream events unchanged, \
                 the default) or \"widget-v1\" (the old service's framing for the embedded \
                 widget)",
                shown(raw.trim())
            )),
        }
    }
}

/// One tool definition passed through to the Responses API: a JSON object with a string
/// `type`; a function tool must not take the name of the tenant's lead tool.
pub(crate) fn tool(value: &serde_json::Value, lead_tool: &str, at: &At) -> Result<(), ConfigError> {
    const EXAMPLE: &str = "{ type = \"file_search\", vector_store_ids = [\"vs_...\"] }";
    let Some(object) = value.as_object() else {
        return Err(at.err(format!(
            "must be a table with a \"type\", e.g. {EXAMPLE}, not {}",
            json_kind(value)
        )));
    };
    let kind = match object.get("type") {
        Some(serde_json::Value::String(kind)) if !kind.trim().is_empty() => kind.trim(),
        Some(serde_json::Value::String(_)) => {
            return Err(at.err(format!("has an empty type: write e.g. {EXAMPLE}")))
        }
        Some(other) => {
            return Err(at.err(format!(
                "has a type that is {}, not a string: write e.g. {EXAMPLE}",
                json_kind(other)
            )))
        }
        None => return Err(at.err(format!("has no type: every tool needs one, e.g. {EXAMPLE}"))),
    };
    if kind == "function" {
        let name = object.get("name").or_else(|| {
            object
                .get("function")
                .and_then(|function| function.get("name"))
        });
        if name.and_then(serde_json::Value::as_str) == Some(lead_tool) {
            return Err(at.err(format!(
                "is a function named {}, the tenant's lead_tool: the proxy adds that tool \
                 itself; remove this entry, or set lead_tool to another name",
                shown(lead_tool)
            )));
        }
    }
    Ok(())
}

/// "a string", "an array", ... for JSON values in messages.
pub(crate) fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// The lead journal directory: a non-empty path without control characters.
pub(crate) fn leads_dir(raw: &str, at: &At) -> Result<std::path::PathBuf, ConfigError> {
    let dir = raw.trim();
    if dir.is_empty() {
        return Err(at.err(format!(
            "is empty: write a directory for the lead journal, e.g. \"{}\" (the default, \
             relative to the working directory)",
            defaults::LEADS_DIR
        )));
    }
    if dir.chars().any(char::is_control) {
        return Err(at.err(
            "contains control characters: write a plain directory path, e.g. \"data\" or \
             \"/var/lib/chatbot-proxy\"",
        ));
    }
    Ok(dir.into())
}

/// `smtp.tls` / `SMTP_TLS`.
impl TryFrom<String> for SmtpTls {
    type Error = String;

    fn try_from(raw: String) -> Result<Self, String> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "implicit" => Ok(SmtpTls::Implicit),
            "starttls" => Ok(SmtpTls::StartTls),
            "opportunistic" => Ok(SmtpTls::Opportunistic),
            "none" => Ok(SmtpTls::None),
            _ => Err(format!(
                "{} is not a TLS mode: write \"implicit\" (TLS from the start, port 465), \
                 \"starttls\" (required), \"opportunistic\" (STARTTLS when offered) or \
                 \"none\"; without the key it is implicit on port 465 and opportunistic \
                 otherwise",
                shown(raw.trim())
            )),
        }
    }
}

/// Whether `text` is a bare e-mail address (basic check: `local@domain`, one `@`, no
/// whitespace, no `<>`, `,`, `;` or quotes).
fn is_address(text: &str) -> bool {
    match text.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.is_empty()
                && !domain.contains('@')
                && !text
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control() || "<>,;\"".contains(c))
        }
        None => false,
    }
}

/// A `From` mailbox: `Name <addr@domain>`, `"Name, Inc." <addr@domain>` or `addr@domain`
/// (basic check: one `@`, no line breaks or control characters).
pub(crate) fn mailbox(raw: &str, at: &At) -> Result<String, ConfigError> {
    const EXAMPLE: &str = "write e.g. \"AI Bot <bot@example.com>\" or \"bot@example.com\"";
    let text = raw.trim();
    if text.is_empty() {
        return Err(at.err(format!("is empty: {EXAMPLE}, or remove the key")));
    }
    let bad = |why: &str| {
        at.err(format!(
            "{} is not a mailbox ({why}): {EXAMPLE}",
            shown(text)
        ))
    };
    if raw.chars().any(char::is_control) {
        return Err(bad("it contains a line break or another control character"));
    }
    if text.matches('@').count() != 1 {
        return Err(bad("it must contain exactly one '@'"));
    }
    let address = match text.split_once('<') {
        Some((name, rest)) => {
            let Some(address) = rest.strip_suffix('>') else {
                return Err(bad("the address in <...> must come last"));
            };
            let name = name.trim();
            let quoted = name.len() >= 2 && name.starts_with('"') && name.ends_with('"');
            if quoted {
                if name[1..name.len() - 1].contains('"') {
                    return Err(bad("the quoted name contains a quote"));
                }
            } else if name.contains(['"', ',', ';', ':', '>', '(', ')', '[', ']', '\\']) {
                return Err(bad("a name with punctuation must be in double quotes, \
                     e.g. \"\\\"Acme, Inc.\\\" <bot@acme.com>\""));
            }
            address
        }
        None => text,
    };
    if !is_address(address) {
        return Err(bad("the address must be local@domain without spaces"));
    }
    Ok(text.to_string())
}

/// The default `From`: `AI Bot <user>` when the SMTP user is an e-mail address, otherwise
/// `AI Bot <chatbot@host>` (with a warning when a user is set, naming the key of `at`).
pub(crate) fn default_from(user: Option<&str>, host: &str, at: &At) -> Result<String, ConfigError> {
    let name = defaults::FROM_NAME;
    let from = match user {
        Some(user) if is_address(user) => format!("{name} <{user}>"),
        _ => format!("{name} <{}@{host}>", defaults::FROM_LOCAL_PART),
    };
    if user.is_some_and(|user| !is_address(user)) {
        log::warn!(
            "the SMTP user is not an e-mail address, so lead e-mails are sent from {from}: \
             set {} if the server wants another sender",
            at.key
        );
    }
    mailbox(&from, at).map_err(|_| {
        at.err(format!(
            "is missing and cannot be derived from the SMTP host ({}): write e.g. \
             \"AI Bot <bot@example.com>\"",
            shown(host)
        ))
    })
}

/// Records which tenant lists which site, so that no site belongs to two tenants. Entries
/// are compared by the one domain rule: `www.example.com` and `Example.com.` are the same site.
#[derive(Default)]
pub(crate) struct DomainOwners {
    /// Per site: the tenant's number, its label, the entry as written, and where.
    seen: HashMap<DomainPattern, (usize, String, String, At)>,
}

impl DomainOwners {
    /// Claims the site of `pattern` (written `text`, at `at`) for tenant number `tenant`,
    /// described as `label` in messages; `false` when that tenant has it already. Within one
    /// tenant only a repeated entry is refused: two spellings of one site (`example.com`,
    /// `www.example.com`) are harmless there.
    pub(crate) fn claim(
        &mut self,
        text: &str,
        pattern: &DomainPattern,
        tenant: usize,
        label: &str,
        at: &At,
    ) -> Result<bool, ConfigError> {
        let Some((owner, owner_label, owner_text, owner_at)) = self.seen.get(pattern) else {
            let entry = (tenant, label.to_string(), text.to_string(), at.clone());
            self.seen.insert(pattern.clone(), entry);
            return Ok(true);
        };
        if *owner != tenant {
            let spelled = if owner_text == text {
                String::new()
            } else {
                format!(", written {}", shown(owner_text))
            };
            return Err(at.err(format!(
                "{} is listed by two tenants: {owner_label} ({}{spelled}) and {label} (here), \
                 which would both serve the site {}; a domain may belong to one tenant only, \
                 remove it from one of them",
                shown(text),
                owner_at.describe(),
                shown(&pattern.to_string()),
            )));
        }
        if owner_text == text {
            return Err(at.err(format!(
                "{} is listed twice in the same tenant (also at {}): remove one of them",
                shown(text),
                owner_at.describe()
            )));
        }
        Ok(false)
    }
}

/// SMTP user and password come together or not at all.
pub(crate) fn smtp_credentials(
    user: Option<&str>,
    password: Option<&Secret>,
    user_at: &At,
    password_at: &At,
) -> Result<(), ConfigError> {
    match (user, password) {
        (Some(_), None) => Err(password_at.err(
            "is missing while the SMTP user is set: give the password too, or remove the user \
             for a server without authentication",
        )),
        (None, Some(_)) => Err(user_at.err(
            "is missing while the SMTP password is set: give the user name too, or remove the \
             password for a server without authentication",
        )),
        _ => Ok(()),
    }
}

/// Last look at a complete configuration: warnings for settings that are legal but odd.
pub(crate) fn finish(config: &Config) {
    let exposed = config
        .metrics_listen
        .as_deref()
        .and_then(|addr| addr.parse::<SocketAddr>().ok())
        .filter(|addr| !addr.ip().is_loopback());
    if let Some(addr) = exposed {
        log::warn!(
            "the metrics endpoint listens on {addr}, reachable from other machines: \
             firewall its port, or listen on 127.0.0.1 if the scraper runs on this machine"
        );
    }
    if config.limits.max_message_chars > config.limits.max_body_bytes {
        log::warn!(
            "limits.max_message_chars ({}) is larger than limits.max_body_bytes ({}): \
             long messages will be refused as body_too_large before their length is checked",
            config.limits.max_message_chars,
            config.limits.max_body_bytes
        );
    }
    if let Some(smtp) = &config.smtp {
        let implicit_port = smtp.port == defaults::SMTP_IMPLICIT_TLS_PORT;
        match smtp.tls {
            SmtpTls::Implicit if !implicit_port => log::warn!(
                "SMTP tls is \"implicit\" on port {}: servers on ports other than 465 usually \
                 expect STARTTLS (\"starttls\" or \"opportunistic\")",
                smtp.port
            ),
            SmtpTls::StartTls | SmtpTls::Opportunistic if implicit_port => log::warn!(
                "SMTP tls is STARTTLS on port 465: that port usually expects \"implicit\" TLS"
            ),
            SmtpTls::None if smtp.password.is_some() => log::warn!(
                "SMTP tls is \"none\": the SMTP password is sent to {} unencrypted",
                smtp.host
            ),
            _ => {}
        }
    }
    if config.smtp.is_none() && config.tenants.iter().any(|t| !t.lead_recipients.is_empty()) {
        log::warn!(
            "lead recipients are configured but SMTP is not: no lead e-mail can be sent until \
             an [smtp] table (or SMTP_HOST) is configured"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at() -> At {
        At::key("k")
    }

    #[test]
    fn prefix_rules() {
        assert_eq!(prefix("/open-ai", &at()).unwrap(), "/open-ai");
        assert_eq!(prefix("/open-ai/", &at()).unwrap(), "/open-ai");
        assert_eq!(prefix("/", &at()).unwrap(), "");
        assert_eq!(prefix("/a/b//", &at()).unwrap(), "/a/b");
        for bad in ["open-ai", "", "/open ai", "/chat?x=1", "/chat#top", " /x"] {
            assert!(prefix(bad, &at()).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn metrics_listen_rules() {
        let check = |raw, listen| metrics_listen(raw, &at(), listen, "server.listen");
        assert_eq!(
            check(" 127.0.0.1:9090 ", "0.0.0.0:3000").unwrap(),
            "127.0.0.1:9090"
        );
        assert_eq!(check("[::1]:3000", "127.0.0.1:3000").unwrap(), "[::1]:3000");
        assert_eq!(
            check("127.0.0.1:3000", "10.0.0.1:3000").unwrap(),
            "127.0.0.1:3000"
        );
        for (raw, listen) in [
            ("0.0.0.0:3000", "0.0.0.0:3000"),
            ("127.0.0.1:3000", "0.0.0.0:3000"),
            ("0.0.0.0:3000", "127.0.0.1:3000"),
            ("[::]:3000", "127.0.0.1:3000"),
            ("127.0.0.1:3000", "127.0.0.1:3000"),
        ] {
            let err = check(raw, listen).unwrap_err().to_string();
            assert!(
                err.starts_with("k: ") && err.contains("port of its own"),
                "{raw} beside {listen}: {err}"
            );
            assert!(err.contains("(server.listen)"), "{err}");
        }
        let only_port = check("9090", "0.0.0.0:3000").unwrap_err().to_string();
        assert!(only_port.contains("\"127.0.0.1:9090\""), "{only_port}");
        assert!(check("localhost:9090", "0.0.0.0:3000").is_err());
        assert!(check("127.0.0.1:0", "0.0.0.0:3000").is_err());
    }

    #[test]
    fn listen_rules() {
        assert_eq!(listen("0.0.0.0:3000", &at()).unwrap(), "0.0.0.0:3000");
        assert_eq!(listen("[::]:8080", &at()).unwrap(), "[::]:8080");
        assert_eq!(listen(" 127.0.0.1:1 ", &at()).unwrap(), "127.0.0.1:1");
        let only_port = listen("3000", &at()).unwrap_err().to_string();
        assert!(only_port.contains("0.0.0.0:3000"), "{only_port}");
        let zero = listen("0.0.0.0:0", &at()).unwrap_err().to_string();
        assert!(zero.contains("1 to 65535"), "{zero}");
        let big = listen("0.0.0.0:70000", &at()).unwrap_err().to_string();
        assert!(big.contains("1 to 65535"), "{big}");
        let name = listen("localhost:3000", &at()).unwrap_err().to_string();
        assert!(name.contains("IP address"), "{name}");
        assert!(listen("nonsense", &at()).is_err());
    }

    #[test]
    fn base_url_rules() {
        let mut up = UpstreamSettings::default();
        base_url("http://LOCALHOST:8090/v1/", &at(), &mut up).unwrap();
        assert_eq!(
            (up.tls, up.host.as_str(), up.port, up.base_path.as_str()),
            (false, "localhost", 8090, "/v1")
        );
        base_url("https://[::1]/", &at(), &mut up).unwrap();
        assert_eq!(
            (up.tls, up.host.as_str(), up.port, up.base_path.as_str()),
            (true, "::1", 443, "")
        );
        base_url("http://10.0.0.1", &at(), &mut up).unwrap();
        assert_eq!((up.host.as_str(), up.port), ("10.0.0.1", 80));
        for bad in [
            "",
            "api.openai.com/v1",
            "ftp://example.com/v1",
            "https://example.com/v1?x=1",
            "https://example.com/v1#x",
            "https://user@example.com/v1",
            "unix:/run/sock",
        ] {
            assert!(
                base_url(bad, &at(), &mut up).is_err(),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn base_url_with_credentials_is_refused_without_echoing_them() {
        let mut up = UpstreamSettings::default();
        let err = base_url("https://bob:hunter22@example.com/v1", &at(), &mut up)
            .unwrap_err()
            .to_string();
        assert!(!err.contains("hunter22"), "{err}");
        assert!(err.contains("user name or password"), "{err}");
    }

    #[test]
    fn domain_rules() {
        let (text, pattern) = domain("  Shop.Example.COM ", &at()).unwrap();
        assert_eq!(
            (text.as_str(), pattern),
            ("shop.example.com", "shop.example.com".parse().unwrap())
        );
        let (text, pattern) = domain("*.example.com", &at()).unwrap();
        assert_eq!(
            (text.as_str(), pattern.to_string().as_str()),
            ("*.example.com", "*.example.com")
        );
        // Written as it is (lowercase), compared by the one domain rule.
        let (text, pattern) = domain(" WWW.Example.com.", &at()).unwrap();
        assert_eq!(
            (text.as_str(), pattern.to_string().as_str()),
            ("www.example.com.", "example.com")
        );
        let url = domain("https://example.com", &at())
            .unwrap_err()
            .to_string();
        assert!(url.contains("bare host name"), "{url}");
        assert!(domain("example.com:8080", &at()).is_err());
        assert!(domain("example.com/shop", &at()).is_err());
        assert!(domain("a.com b.com", &at()).is_err());
        assert!(domain("  ", &at()).is_err());
    }

    #[test]
    fn assistant_and_recipient_rules() {
        assert_eq!(assistant_id(" asst_abc123 ", &at()).unwrap(), "asst_abc123");
        for bad in ["", "asst_", "abc123", "asst_abc 123", "ASST_abc"] {
            assert!(
                assistant_id(bad, &at()).is_err(),
                "{bad:?} should be refused"
            );
        }
        assert_eq!(
            recipient(" sales@acme.com ", &at()).unwrap(),
            "sales@acme.com"
        );
        for bad in [
            "",
            "sales",
            "@acme.com",
            "sales@",
            "a@b@c",
            "a@b.com, c@d.com",
            "a b@c.d",
        ] {
            assert!(recipient(bad, &at()).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn secret_looking_values_are_not_echoed() {
        let err = assistant_id("sk-live-abcdef", &at())
            .unwrap_err()
            .to_string();
        assert!(!err.contains("sk-live-abcdef"), "{err}");
        let err = api_key("sk-live abc", "the API key", &at())
            .unwrap_err()
            .to_string();
        assert!(!err.contains("sk-live"), "{err}");
        let err = env_var_name("sk-live-abcdef", &at())
            .unwrap_err()
            .to_string();
        assert!(!err.contains("sk-live-abcdef"), "{err}");
    }

    #[test]
    fn model_rules() {
        assert_eq!(model(" gpt-5.4 ", &at()).unwrap(), "gpt-5.4");
        assert_eq!(
            model("ft:gpt-4o:acme::x1", &at()).unwrap(),
            "ft:gpt-4o:acme::x1"
        );
        for bad in ["", "  ", "gpt 5", "gpt-5\tmini", "gpt\u{7}5"] {
            assert!(model(bad, &at()).is_err(), "{bad:?} should be refused");
        }
        let err = model("sk-SECRET-key", &at()).unwrap_err().to_string();
        assert!(err.contains("looks like an API key"), "{err}");
        assert!(!err.contains("SECRET"), "{err}");
    }

    #[test]
    fn function_name_rules() {
        assert_eq!(function_name("sendEmail", &at()).unwrap(), "sendEmail");
        assert_eq!(
            function_name(" capture_lead-2 ", &at()).unwrap(),
            "capture_lead-2"
        );
        assert_eq!(function_name(&"a".repeat(64), &at()).unwrap().len(), 64);
        for bad in [
            "".to_string(),
            "a".repeat(65),
            "send email".into(),
            "send.email".into(),
            "envoyé".into(),
        ] {
            assert!(
                function_name(&bad, &at()).is_err(),
                "{bad:?} should be refused"
            );
        }
        let err = function_name("sk-SECRET", &at()).unwrap_err().to_string();
        assert!(!err.contains("SECRET"), "{err}");
    }

    #[test]
    fn enumerations() {
        fn parse<T: TryFrom<String, Error = String>>(raw: &str) -> Result<T, String> {
            T::try_from(raw.to_string())
        }
        assert_eq!(parse("assistants"), Ok(ApiKind::Assistants));
        assert_eq!(parse(" Responses "), Ok(ApiKind::Responses));
        assert!(parse::<ApiKind>("chat").is_err());
        assert_eq!(
            parse::<StreamFormat>("openai").unwrap(),
            StreamFormat::OpenAi
        );
        assert_eq!(
            parse::<StreamFormat>("widget-v1").unwrap(),
            StreamFormat::WidgetV1
        );
        let err = parse::<StreamFormat>("widget").unwrap_err();
        assert!(
            err.contains("\"openai\"") && err.contains("\"widget-v1\""),
            "{err}"
        );
        assert_eq!(parse::<SmtpTls>("implicit").unwrap(), SmtpTls::Implicit);
        assert_eq!(parse::<SmtpTls>("STARTTLS").unwrap(), SmtpTls::StartTls);
        assert_eq!(
            parse::<SmtpTls>("opportunistic").unwrap(),
            SmtpTls::Opportunistic
        );
        assert_eq!(parse::<SmtpTls>("none").unwrap(), SmtpTls::None);
        let err = parse::<SmtpTls>("ssl").unwrap_err();
        assert!(err.contains("port 465"), "{err}");
    }

    #[test]
    fn mailbox_rules() {
        for good in [
            "AI Bot <bot@example.com>",
            "bot@example.com",
            "<bot@example.com>",
            "\"Acme, Inc.\" <bot@acme.com>",
            "  Jürgen Bot <j@bot.example>  ",
            "Bot. Jr <bot@example.com>",
        ] {
            assert_eq!(mailbox(good, &at()).unwrap(), good.trim(), "{good:?}");
        }
        for bad in [
            "",
            "AI Bot",
            "bot@example.com\r\nBcc: victim@example.com",
            "AI Bot <bot@example.com>\n",
            "a@b@example.com",
            "AI Bot <bot@example.com> trailing",
            "AI Bot <bot@example.com",
            "AI <Bot> <bot@example.com>",
            "Acme, Inc. <bot@acme.com>",
            "AI Bot (leads) <bot@acme.com>",
            "AI Bot <bot @example.com>",
            "AI Bot <@example.com>",
            "bot@",
            "bot@example.com, other@example.com",
        ] {
            assert!(mailbox(bad, &at()).is_err(), "{bad:?} should be refused");
        }
        let err = mailbox("bot\r\n@x.com", &at()).unwrap_err().to_string();
        assert!(err.contains("line break"), "{err}");
        let err = mailbox("sk-SECRET-abcdef", &at()).unwrap_err().to_string();
        assert!(!err.contains("SECRET"), "{err}");
    }

    #[test]
    fn default_from_uses_the_user_or_the_host() {
        let from = |user, host| default_from(user, host, &At::key("smtp.from"));
        assert_eq!(
            from(Some("bot@acme.com"), "smtp.acme.com").unwrap(),
            "AI Bot <bot@acme.com>"
        );
        assert_eq!(
            from(None, "smtp.acme.com").unwrap(),
            "AI Bot <chatbot@smtp.acme.com>"
        );
        assert_eq!(
            from(Some("apikey"), "smtp.acme.com").unwrap(),
            "AI Bot <chatbot@smtp.acme.com>",
            "a user that is no address falls back to the host"
        );
    }

    #[test]
    fn tool_rules() {
        use serde_json::json;
        let ok = |value: serde_json::Value| tool(&value, "sendEmail", &at());
        assert!(ok(json!({"type": "file_search", "vector_store_ids": ["vs_1"]})).is_ok());
        assert!(ok(json!({"type": "function", "name": "lookupOrder"})).is_ok());
        assert!(ok(json!({"type": "web_search"})).is_ok());
        for (bad, expected) in [
            (json!("file_search"), "must be a table"),
            (json!([{"type": "x"}]), "must be a table"),
            (json!({"vector_store_ids": []}), "has no type"),
            (json!({"type": 5}), "not a string"),
            (json!({"type": " "}), "empty type"),
            (
                json!({"type": "function", "name": "sendEmail"}),
                "lead_tool",
            ),
            (
                json!({"type": "function", "function": {"name": "sendEmail"}}),
                "lead_tool",
            ),
        ] {
            let err = ok(bad.clone()).expect_err(&bad.to_string()).to_string();
            assert!(err.contains(expected), "{bad}: {err}");
        }
        assert!(tool(
            &json!({"type": "function", "name": "sendEmail"}),
            "captureLead",
            &at()
        )
        .is_ok());
    }

    #[test]
    fn leads_dir_rules() {
        assert_eq!(
            leads_dir(" /var/lib/leads ", &at()).unwrap(),
            std::path::PathBuf::from("/var/lib/leads")
        );
        assert!(leads_dir(" ", &at()).is_err());
        assert!(leads_dir("data\n", &at()).is_ok(), "trimmed");
        assert!(leads_dir("da\u{0}ta", &at()).is_err());
    }

    #[test]
    fn bounds_are_enforced_with_the_range_in_the_message() {
        assert_eq!(in_bounds(2, &THREADS, &at()).unwrap(), 2);
        let err = in_bounds(0, &THREADS, &at()).unwrap_err().to_string();
        assert!(err.contains("from 1 to 1024"), "{err}");
        assert!(in_bounds(-5, &GRACE_SECONDS, &at()).is_err());
        assert_eq!(in_bounds(0, &GRACE_SECONDS, &at()).unwrap(), 0);
        assert!(in_bounds(10 * 1024 * 1024 + 1, &BODY_BYTES, &at()).is_err());
        assert!(in_bounds(0, &CONNECT_TIMEOUT_MS, &at()).is_err());
        assert!(in_bounds(20, &TOOL_ROUNDS, &at()).is_ok());
        let err = in_bounds(21, &TOOL_ROUNDS, &at()).unwrap_err().to_string();
        assert!(err.contains("from 1 to 20 rounds"), "{err}");
        assert!(in_bounds(60_001, &SEND_TIMEOUT_MS, &at()).is_err());
    }
}
