//! The optional bot check on `create-thread`: Cloudflare Turnstile.
//!
//! A tenant with a `turnstile_secret` accepts a new conversation only from a browser that
//! solved the Turnstile challenge on the tenant's page: the widget sends the token it got in
//! the `CF-Turnstile-Response` header, and [`BotCheck`] posts it to the siteverify endpoint
//! (form-encoded `secret`, `response`, `remoteip`) through an [`UpstreamClient`] of its own
//! (Pingora's connector, tokio DNS, rustls: the same client as OpenAI's, with the verify URL
//! and the short `turnstile_timeout_ms` for every stage).
//!
//! The verdict ([`judge`], pure): `success` true and `hostname` the calling site's host (the
//! whitelisted `Origin`'s, so a token solved on another site does not serve) lets the request
//! through; anything else is 403 `bot_check_failed`, and so is a missing token. A siteverify
//! that cannot give a verdict (no connection, a non-2xx or unreadable answer, its own
//! `internal-error`, or no answer within the timeout) is 503 `bot_check_unavailable`: never a
//! pass, and never blamed on the visitor. Either way nothing goes upstream.
//!
//! Tenants without a secret are not checked (the old widget sends no token). The secrets are
//! registered with the log redactor when the check is built; tokens are never logged either.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::config::{Secret, Tenant, TurnstileSettings};
use crate::errors::ApiError;
use crate::upstream::{UpstreamClient, UpstreamRequest};

/// The request header that carries the widget's token.
pub const TOKEN_HEADER: &str = "CF-Turnstile-Response";
/// The request headers a preflight allows for a tenant with a bot check.
pub const PREFLIGHT_HEADERS: &str = "Content-Type, CF-Turnstile-Response";
/// Longest token accepted; Cloudflare's are at most 2048 characters.
const MAX_TOKEN_LEN: usize = 2048;
/// Error codes of siteverify that mean the operator's secret is wrong, not the visitor.
const SECRET_ERRORS: [&str; 2] = ["missing-input-secret", "invalid-input-secret"];

/// Verifies Turnstile tokens; one per process.
pub struct BotCheck {
    client: Arc<UpstreamClient>,
    timeout: Duration,
}

/// What siteverify's answer means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A fresh token, solved on the calling site.
    Human,
    /// Not a valid token for this site; `why` is for the log.
    Refused { why: String, bad_secret: bool },
    /// No verdict could be had; `why` is for the log.
    Unavailable(String),
}

impl BotCheck {
    /// The check against `settings`' endpoint; registers every tenant's secret with the log
    /// redactor.
    pub fn new(settings: &TurnstileSettings, tenants: &[Tenant]) -> BotCheck {
        let mut checked = 0;
        for secret in tenants.iter().filter_map(|t| t.turnstile_secret.as_ref()) {
            crate::logging::register_secret(secret.expose());
            checked += 1;
        }
        if checked > 0 {
            log::info!(
                "bot check (Turnstile) on for {checked} tenant(s), verified at {}",
                settings.endpoint.host
            );
        }
        BotCheck {
            client: UpstreamClient::new(settings.endpoint.clone()),
            timeout: settings.timeout,
        }
    }

    /// Admits a create-thread of `tenant` from `origin` (the whitelisted calling origin), by
    /// `client_ip`, carrying `token` (the header's bytes): at once when the tenant has no
    /// secret, else only with a token that siteverify accepts for the origin's host.
    pub async fn admit(
        &self,
        tenant: &Tenant,
        token: Option<&[u8]>,
        client_ip: Option<IpAddr>,
        origin: Option<&str>,
    ) -> Result<(), ApiError> {
        let Some(secret) = &tenant.turnstile_secret else {
            return Ok(());
        };
        let host = origin.and_then(origin_host);
        let verdict = match (usable_token(token), &host) {
            (None, _) => Verdict::Refused {
                why: "no usable token in the CF-Turnstile-Response header".into(),
                bad_secret: false,
            },
            (_, None) => Verdict::Refused {
                why: "the calling site has no host".into(),
                bad_secret: false,
            },
            (Some(token), Some(host)) => self.verify(secret, token, client_ip, host).await,
        };
        let client = client_ip.map_or_else(|| "-".to_string(), |ip| ip.to_string());
        let site = origin.unwrap_or("-");
        match verdict {
            Verdict::Human => Ok(()),
            Verdict::Refused { why, bad_secret } => {
                if bad_secret {
                    log::error!(
                        "bot check of tenant {}: siteverify refuses the tenant's secret ({why}): \
                         check its turnstile_secret (TURNSTILE_SECRETS); every new conversation \
                         is refused until it is fixed",
                        tenant.name
                    );
                } else {
                    log::info!(
                        "bot check failed for tenant {} (site {site}, client {client}): {why}",
                        tenant.name
                    );
                }
                Err(ApiError::bot_check_failed())
            }
            Verdict::Unavailable(why) => {
                log::warn!(
                    "bot check unavailable for tenant {} (site {site}, client {client}): {why}; \
                     the conversation is refused with 503",
                    tenant.name
                );
                Err(ApiError::bot_check_unavailable())
            }
        }
    }

    /// Posts the token to siteverify and judges the answer, all within the timeout.
    async fn verify(
        &self,
        secret: &Secret,
        token: &str,
        client_ip: Option<IpAddr>,
        host: &str,
    ) -> Verdict {
        // The endpoint's path is the whole request path.
        let request = UpstreamRequest::form("", form(secret, token, client_ip));
        let exchange = async {
            let response = self.client.send_without_key(&request).await?;
            let status = response.status;
            let body = response.read_all().await?;
            Ok::<_, crate::upstream::UpstreamError>((status, body))
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(Ok((status, body))) => judge(status, &body, host),
            Ok(Err(e)) => Verdict::Unavailable(format!("siteverify: {e}")),
            Err(_) => Verdict::Unavailable(format!(
                "siteverify did not answer within {} ms",
                self.timeout.as_millis()
            )),
        }
    }
}

/// The token, if the header holds one that could be valid: visible ASCII, not empty, not
/// longer than Cloudflare's.
fn usable_token(header: Option<&[u8]>) -> Option<&str> {
    let token = std::str::from_utf8(header?).ok()?.trim();
    let plausible = !token.is_empty()
        && token.len() <= MAX_TOKEN_LEN
        && token.bytes().all(|b| b.is_ascii_graphic());
    plausible.then_some(token)
}

/// The host of a serialized origin (`https://www.example.com:8443` → `www.example.com`), as
/// Turnstile names the site a challenge was solved on.
fn origin_host(origin: &str) -> Option<String> {
    let url = url::Url::parse(origin).ok()?;
    let host = url.host_str()?.trim_end_matches('.').to_ascii_lowercase();
    (!host.is_empty()).then_some(host)
}

/// The form siteverify takes: `secret`, `response` and (when known) `remoteip`.
fn form(secret: &Secret, token: &str, client_ip: Option<IpAddr>) -> String {
    let mut form = url::form_urlencoded::Serializer::new(String::new());
    form.append_pair("secret", secret.expose());
    form.append_pair("response", token);
    if let Some(ip) = client_ip {
        form.append_pair("remoteip", &ip.to_string());
    }
    form.finish()
}

/// What siteverify's answer (`status`, `body`) says about a token used on `host`.
pub fn judge(status: u16, body: &[u8], host: &str) -> Verdict {
    if !(200..300).contains(&status) {
        return Verdict::Unavailable(format!("siteverify answered HTTP {status}"));
    }
    let answer: Option<Value> = serde_json::from_slice(body).ok();
    let Some(success) = answer
        .as_ref()
        .and_then(|a| a.get("success"))
        .and_then(Value::as_bool)
    else {
        return Verdict::Unavailable("siteverify's answer has no boolean success".into());
    };
    let answer = answer.unwrap_or_default();
    if !success {
        let codes = error_codes(&answer);
        if codes.iter().any(|c| c == "internal-error") {
            return Verdict::Unavailable("siteverify reported internal-error".into());
        }
        let bad_secret = codes.iter().any(|c| SECRET_ERRORS.contains(&c.as_str()));
        let why = match codes.is_empty() {
            true => "siteverify refused the token".to_string(),
            false => format!("siteverify refused the token ({})", codes.join(", ")),
        };
        return Verdict::Refused { why, bad_secret };
    }
    let solved_on = answer
        .get("hostname")
        .and_then(Value::as_str)
        .map(|h| h.trim_end_matches('.').to_ascii_lowercase());
    match solved_on {
        Some(solved_on) if solved_on == host => Verdict::Human,
        Some(solved_on) => Verdict::Refused {
            why: format!(
                "the token was solved on {}, not on {host}",
                printable(&solved_on)
            ),
            bad_secret: false,
        },
        None => Verdict::Refused {
            why: "siteverify's answer names no hostname".into(),
            bad_secret: false,
        },
    }
}

/// The `error-codes` of an answer, made safe to log.
fn error_codes(answer: &Value) -> Vec<String> {
    answer
        .get("error-codes")
        .and_then(Value::as_array)
        .map(|codes| {
            codes
                .iter()
                .filter_map(Value::as_str)
                .take(8)
                .map(printable)
                .collect()
        })
        .unwrap_or_default()
}

/// Text from siteverify cut short and stripped to visible ASCII, for a log line.
fn printable(text: &str) -> String {
    text.chars()
        .filter(|c| c.is_ascii_graphic())
        .take(100)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: &str = "www.example.com";

    fn refused(verdict: &Verdict) -> Option<(&str, bool)> {
        match verdict {
            Verdict::Refused { why, bad_secret } => Some((why.as_str(), *bad_secret)),
            _ => None,
        }
    }

    #[test]
    fn a_successful_answer_for_the_calling_host_passes() {
        let body = br#"{"success":true,"hostname":"www.example.com","error-codes":[]}"#;
        assert_eq!(judge(200, body, HOST), Verdict::Human);
        let body = br#"{"success":true,"hostname":"WWW.Example.com."}"#;
        assert_eq!(
            judge(200, body, HOST),
            Verdict::Human,
            "case and a final dot"
        );
    }

    #[test]
    fn a_token_solved_on_another_host_is_refused() {
        let body = br#"{"success":true,"hostname":"evil.net"}"#;
        let verdict = judge(200, body, HOST);
        let (why, bad_secret) = refused(&verdict).expect("refused");
        assert!(why.contains("evil.net"), "{why}");
        assert!(!bad_secret);
        // The bare domain is another host than www.
        let body = br#"{"success":true,"hostname":"example.com"}"#;
        assert!(refused(&judge(200, body, HOST)).is_some());
        let body = br#"{"success":true}"#;
        assert!(refused(&judge(200, body, HOST)).is_some(), "no hostname");
    }

    #[test]
    fn an_unsuccessful_answer_is_refused_with_its_codes() {
        let body = br#"{"success":false,"error-codes":["timeout-or-duplicate"]}"#;
        let verdict = judge(200, body, HOST);
        assert_eq!(
            refused(&verdict),
            Some(("siteverify refused the token (timeout-or-duplicate)", false))
        );
        let body = br#"{"success":false,"error-codes":["invalid-input-secret"]}"#;
        assert_eq!(refused(&judge(200, body, HOST)).map(|r| r.1), Some(true));
        let body = br#"{"success":false}"#;
        assert!(refused(&judge(200, body, HOST)).is_some());
    }

    #[test]
    fn no_verdict_is_unavailable_never_a_pass() {
        let ok = br#"{"success":true,"hostname":"www.example.com"}"#;
        for (status, body) in [
            (500, &ok[..]),
            (302, &ok[..]),
            (429, &ok[..]),
            (200, &b"<html>"[..]),
            (200, &b""[..]),
            (
                200,
                &br#"{"success":"true","hostname":"www.example.com"}"#[..],
            ),
            (200, &br#"[true]"#[..]),
            (
                200,
                &br#"{"success":false,"error-codes":["internal-error"]}"#[..],
            ),
        ] {
            let verdict = judge(status, body, HOST);
            assert!(
                matches!(verdict, Verdict::Unavailable(_)),
                "{status} {:?}: {verdict:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn logged_codes_are_printable_and_short() {
        let body = format!(
            r#"{{"success":false,"error-codes":["bad\n{}"]}}"#,
            "x".repeat(500)
        );
        let verdict = judge(200, body.as_bytes(), HOST);
        let (why, _) = refused(&verdict).unwrap();
        assert!(!why.contains('\n'));
        assert!(why.len() < 160, "{why}");
    }

    #[test]
    fn the_form_carries_secret_response_and_remote_ip_encoded() {
        let secret = Secret::new("0x4AAA+secret/=");
        let ip: IpAddr = "198.51.100.7".parse().unwrap();
        assert_eq!(
            form(&secret, "tok en&x=1", Some(ip)),
            "secret=0x4AAA%2Bsecret%2F%3D&response=tok+en%26x%3D1&remoteip=198.51.100.7"
        );
        assert_eq!(
            form(&secret, "t", None),
            "secret=0x4AAA%2Bsecret%2F%3D&response=t"
        );
    }

    #[test]
    fn only_plausible_tokens_are_sent_to_siteverify() {
        assert_eq!(usable_token(Some(b" 0.abc-DEF_1 ")), Some("0.abc-DEF_1"));
        assert_eq!(usable_token(None), None);
        assert_eq!(usable_token(Some(b"")), None);
        assert_eq!(usable_token(Some(b"   ")), None);
        assert_eq!(usable_token(Some(b"two words")), None);
        assert_eq!(usable_token(Some(&[0xff, 0xfe])), None);
        let long = "a".repeat(MAX_TOKEN_LEN + 1);
        assert_eq!(usable_token(Some(long.as_bytes())), None);
        let max = "a".repeat(MAX_TOKEN_LEN);
        assert!(usable_token(Some(max.as_bytes())).is_some());
    }

    #[test]
    fn the_host_is_the_origins_own_with_www_and_without_port() {
        assert_eq!(
            origin_host("https://www.Example.com:8443").as_deref(),
            Some("www.example.com")
        );
        assert_eq!(
            origin_host("http://127.0.0.1:3000").as_deref(),
            Some("127.0.0.1")
        );
        assert_eq!(origin_host("not a url"), None);
    }
}
