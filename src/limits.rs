//! Request limits: how often one visitor may call create-thread and process-message
//! (`RATE_LIMIT_IP`), how many answers may stream to one visitor at once
//! (`MAX_STREAMS_PER_IP`), and how often one tenant's sites may call them, all visitors
//! together (`RATE_LIMIT_TENANT`).
//!
//! A visitor is its client address ([`crate::client_addr`]: the socket peer, or behind
//! trusted proxies the address they forwarded); IPv6 addresses count per /64 network, since
//! one subscriber usually holds a whole /64 and could otherwise take a fresh address for every
//! request. Counts are kept on the shared [`Store`](crate::store::Store), in fixed windows
//! aligned to the epoch (`60/min` allows 60 requests in each calendar minute), so every
//! replica on one Redis enforces one limit. [`admit`] runs once the calling site and its
//! tenant are known and before the body is read: a refused request costs a counter increment,
//! and nothing is sent upstream.

use std::net::IpAddr;
use std::time::Duration;

use crate::app::AppState;
use crate::config::Tenant;
use crate::errors::ApiError;
use crate::rate::Rate;
use crate::routes::Route;
use crate::store::{Count, Held, Window};

/// How long a stream's slot outlives a replica that crashed while holding it; renewed every
/// third of it while the answer streams.
const STREAM_LEASE: Duration = Duration::from_secs(30);

/// `Retry-After` when every stream slot is taken: answers take seconds, and a slot frees the
/// moment one ends.
const STREAMS_RETRY_AFTER_SECS: u64 = 2;

/// Whether a widget request may go on: `Err` is the 429 to answer. For process-message,
/// `Ok(Some)` holds one of the visitor's stream slots; keep it until the answer has ended.
pub(crate) async fn admit(
    state: &AppState,
    route: Route,
    tenant: &Tenant,
    client: Option<IpAddr>,
) -> Result<Option<Held>, ApiError> {
    let limits = &state.config.limits;
    let store = &state.store;
    let visitor = client.map(visitor);
    if let (Some(rate), Some(visitor)) = (limits.rate_limit_ip, &visitor) {
        let count = store.hit(&format!("ip:{visitor}"), 1, window(rate)).await;
        if let Some(refusal) = over(count, rate, Scope::Address) {
            log::debug!("limits: {visitor} is over its rate limit {rate}");
            return Err(refusal);
        }
    }
    if let Some(rate) = tenant.rate_limit {
        let key = format!("tenant:{}", tenant.name);
        let count = store.hit(&key, 1, window(rate)).await;
        if let Some(refusal) = over(count, rate, Scope::Tenant) {
            log::debug!(
                "limits: tenant {} is over its rate limit {rate}",
                tenant.name
            );
            return Err(refusal);
        }
    }
    let max = limits.max_streams_per_ip;
    let (Route::ProcessMessage, Some(visitor), true) = (route, &visitor, max > 0) else {
        return Ok(None);
    };
    let key = format!("streams:{visitor}");
    match store.hold_slot(&key, max, STREAM_LEASE).await {
        Some(slot) => Ok(Some(slot)),
        None => {
            log::debug!("limits: {visitor} already has {max} streams");
            Err(too_many_streams(max))
        }
    }
}

/// Whose limit a count is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// One visitor's address.
    Address,
    /// One tenant, all its visitors together.
    Tenant,
}

/// What limits count a client address under: an IPv4 address itself, an IPv6 address's /64
/// network (`2001:db8:1:2::/64`).
fn visitor(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => ipnet::Ipv6Net::new(v6, 64)
                .map(|net| net.trunc().to_string())
                .unwrap_or_else(|_| v6.to_string()),
        },
    }
}

/// The counting window of a rate.
fn window(rate: Rate) -> Window {
    Window::from_duration(rate.window).unwrap_or(Window::SECOND)
}

/// The 429 for a count over `rate`, or `None` within it.
fn over(count: Count, rate: Rate, scope: Scope) -> Option<ApiError> {
    if count.total <= rate.count {
        return None;
    }
    let secs = count.retry_after_secs();
    let mut refusal = ApiError::rate_limited(Some(secs.to_string()));
    let (count, per) = (rate.count, per(rate.window));
    refusal.message = match scope {
        Scope::Address => format!(
            "Too many requests from your address (at most {count} per {per}); try again in \
             {secs} seconds."
        ),
        Scope::Tenant => format!(
            "This site's assistant is receiving too many requests (at most {count} per {per}); \
             try again in {secs} seconds."
        ),
    };
    Some(refusal)
}

/// The 429 when every stream slot of an address is taken.
fn too_many_streams(max: u32) -> ApiError {
    let mut refusal = ApiError::rate_limited(Some(STREAMS_RETRY_AFTER_SECS.to_string()));
    refusal.message = format!(
        "Too many answers are streaming to your address at once (at most {max}); wait for one \
         to finish."
    );
    refusal
}

/// A window's length in words: `second`, `minute`, `hour`, `day`.
fn per(window: Duration) -> String {
    match window.as_secs() {
        1 => "second".into(),
        60 => "minute".into(),
        3_600 => "hour".into(),
        86_400 => "day".into(),
        secs => format!("{secs} seconds"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn count(total: u64, resets_in_ms: u64) -> Count {
        Count {
            total,
            resets_in: Duration::from_millis(resets_in_ms),
        }
    }

    #[test]
    fn ipv4_addresses_count_alone_and_ipv6_ones_per_64() {
        assert_eq!(visitor(ip("198.51.100.7")), "198.51.100.7");
        assert_eq!(visitor(ip("::ffff:198.51.100.7")), "198.51.100.7");
        let a = visitor(ip("2001:db8:1:2:aaaa::1"));
        assert_eq!(a, "2001:db8:1:2::/64");
        assert_eq!(visitor(ip("2001:db8:1:2:ffff:ffff:ffff:ffff")), a);
        assert_ne!(visitor(ip("2001:db8:1:3::1")), a, "another /64");
        assert_eq!(visitor(ip("::1")), "::/64");
    }

    #[test]
    fn a_rate_counts_in_its_own_window() {
        for (text, window) in [
            ("5/sec", Window::SECOND),
            ("60/min", Window::MINUTE),
            ("100/hour", Window::HOUR),
            ("1000/day", Window::DAY),
        ] {
            assert_eq!(super::window(text.parse().unwrap()), window, "{text}");
        }
    }

    #[test]
    fn the_limit_itself_passes_and_one_more_is_refused_until_the_window_ends() {
        let rate: Rate = "60/min".parse().unwrap();
        assert_eq!(over(count(1, 59_000), rate, Scope::Address), None);
        assert_eq!(over(count(60, 59_000), rate, Scope::Address), None);
        let refusal = over(count(61, 44_200), rate, Scope::Address).expect("61 > 60");
        assert_eq!(refusal.status, 429);
        assert_eq!(refusal.code, "rate_limited");
        assert_eq!(refusal.retry_after.as_deref(), Some("45"));
        assert!(
            refusal.message.contains("your address")
                && refusal.message.contains("60 per minute")
                && refusal.message.contains("45 seconds"),
            "{}",
            refusal.message
        );
        let tenant = over(count(11, 1), "10/hour".parse().unwrap(), Scope::Tenant).unwrap();
        assert_eq!(tenant.retry_after.as_deref(), Some("1"));
        assert!(
            tenant.message.contains("This site's assistant")
                && tenant.message.contains("10 per hour"),
            "{}",
            tenant.message
        );
    }

    #[test]
    fn a_full_set_of_streams_says_how_many_and_when_to_retry() {
        let refusal = too_many_streams(4);
        assert_eq!((refusal.status, refusal.code), (429, "rate_limited"));
        assert_eq!(refusal.retry_after.as_deref(), Some("2"));
        assert!(refusal.message.contains("at most 4"), "{}", refusal.message);
    }

    mod config {
        use crate::config::{from_env_map, from_toml_str, Config};
        use crate::rate::Rate;
        use std::collections::HashMap;

        fn rate(text: &str) -> Option<Rate> {
            Some(text.parse().unwrap())
        }

        fn toml(limits: &str, tenant_b: &str) -> Result<Config, String> {
            let text = format!(
                "[limits]\n{limits}\n\n[[tenants]]\nname = \"a\"\ndomains = [\"a.test\"]\n\
                 api_key = \"sk-a-0000\"\nassistant_id = \"asst_a\"\n\n[[tenants]]\n\
                 name = \"b\"\ndomains = [\"b.test\"]\napi_key = \"sk-b-0000\"\n\
                 assistant_id = \"asst_b\"\n{tenant_b}\n"
            );
            from_toml_str(&text, "limits.toml", &HashMap::new()).map_err(|e| e.to_string())
        }

        fn env(extra: &[(&str, &str)]) -> Result<Config, String> {
            let mut vars: HashMap<String, String> = [
                ("DOMAINS", r#"["a.test","b.test"]"#),
                ("OPENAI_API_KEYS", r#"["sk-a-0000","sk-b-0000"]"#),
                ("ASSISTANT_IDS", r#"["asst_a","asst_b"]"#),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
            vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
            from_env_map(&vars).map_err(|e| e.to_string())
        }

        #[test]
        fn on_by_default_per_address_off_per_tenant() {
            for config in [toml("", "").unwrap(), env(&[]).unwrap()] {
                assert_eq!(config.limits.rate_limit_ip, rate("60/min"));
                assert_eq!(config.limits.max_streams_per_ip, 4);
                assert!(config.tenants.iter().all(|t| t.rate_limit.is_none()));
            }
        }

        #[test]
        fn toml_keys_set_each_limit_and_off_turns_one_off() {
            let config = toml(
                "rate_limit_ip = \"100/hour\"\nmax_streams_per_ip = 2",
                "rate_limit = \"500/day\"",
            )
            .unwrap();
            assert_eq!(config.limits.rate_limit_ip, rate("100/hour"));
            assert_eq!(config.limits.max_streams_per_ip, 2);
            assert_eq!(config.tenants[0].rate_limit, None);
            assert_eq!(config.tenants[1].rate_limit, rate("500/day"));
            let off = toml(
                "rate_limit_ip = \"off\"\nmax_streams_per_ip = 0",
                "rate_limit = \"off\"",
            )
            .unwrap();
            assert_eq!(off.limits.rate_limit_ip, None);
            assert_eq!(off.limits.max_streams_per_ip, 0);
            assert_eq!(off.tenants[1].rate_limit, None);
        }

        #[test]
        fn bad_toml_values_name_the_key_and_line() {
            let err = toml("rate_limit_ip = \"60/week\"", "").unwrap_err();
            assert!(err.contains("line 2: limits.rate_limit_ip"), "{err}");
            assert!(err.contains("N/sec, N/min, N/hour or N/day"), "{err}");
            assert!(err.contains("\"off\""), "{err}");
            let err = toml("max_streams_per_ip = -1", "").unwrap_err();
            assert!(err.contains("limits.max_streams_per_ip"), "{err}");
            assert!(err.contains("0 to 100000"), "{err}");
            let err = toml("", "rate_limit = \"lots\"").unwrap_err();
            assert!(err.contains("tenants[1].rate_limit"), "{err}");
        }

        #[test]
        fn env_sets_each_limit_and_the_tenant_one_for_every_tenant() {
            let config = env(&[
                ("RATE_LIMIT_IP", "5/sec"),
                ("MAX_STREAMS_PER_IP", "1"),
                ("RATE_LIMIT_TENANT", "1000/hour"),
            ])
            .unwrap();
            assert_eq!(config.limits.rate_limit_ip, rate("5/sec"));
            assert_eq!(config.limits.max_streams_per_ip, 1);
            for tenant in &config.tenants {
                assert_eq!(tenant.rate_limit, rate("1000/hour"), "{}", tenant.name);
            }
            let off = env(&[("RATE_LIMIT_IP", "off"), ("MAX_STREAMS_PER_IP", "0")]).unwrap();
            assert_eq!(off.limits.rate_limit_ip, None);
            assert_eq!(off.limits.max_streams_per_ip, 0);
        }

        #[test]
        fn bad_env_values_name_the_variable() {
            let err = env(&[("RATE_LIMIT_IP", "sixty")]).unwrap_err();
            assert!(err.starts_with("RATE_LIMIT_IP"), "{err}");
            let err = env(&[("RATE_LIMIT_TENANT", "10/fortnight")]).unwrap_err();
            assert!(err.contains("RATE_LIMIT_TENANT"), "{err}");
            let err = env(&[("MAX_STREAMS_PER_IP", "four")]).unwrap_err();
            assert!(err.starts_with("MAX_STREAMS_PER_IP"), "{err}");
        }
    }

    #[test]
    fn windows_in_words() {
        assert_eq!(per(Duration::from_secs(1)), "second");
        assert_eq!(per(Duration::from_secs(86_400)), "day");
        assert_eq!(per(Duration::from_secs(90)), "90 seconds");
    }
}
