//! The configuration as written, typed but not yet checked: what the TOML file deserializes
//! into, and what the environment loader builds, so that both go through one validation
//! (`validate`).
//!
//! Every setting is optional here (defaults and "is missing" messages come later) and each
//! value remembers where it was written ([`Val`]): its span in the file, or the environment
//! variable it came from. Unknown keys are refused by serde (`deny_unknown_fields`), wrong
//! types by serde's own errors, which carry toml's span.

use std::fmt;
use std::marker::PhantomData;
use std::ops::Range;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use toml::Spanned;

use super::types::{Secret, SmtpTls, StreamFormat};

/// The key under which TOML date-times reach a deserializer that is not TOML's own.
pub(crate) const TOML_DATETIME_KEY: &str = "$__toml_private_datetime";

/// A value and where it was written.
#[derive(Debug, Clone)]
pub(crate) struct Val<T> {
    pub(crate) value: T,
    pub(crate) from: Origin,
}

/// Where a value was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Origin {
    /// Byte range in the TOML text.
    Span(Range<usize>),
    /// The environment variable (or element of one, `DOMAINS[1]`) that holds it.
    Var(String),
}

impl<T> Val<T> {
    /// A value from the environment variable (or array element) `name`.
    pub(crate) fn var(name: impl Into<String>, value: T) -> Self {
        Val {
            value,
            from: Origin::Var(name.into()),
        }
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Val<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let spanned = Spanned::<T>::deserialize(deserializer)?;
        Ok(Val {
            from: Origin::Span(spanned.span()),
            value: spanned.into_inner(),
        })
    }
}

/// An optional setting.
pub(crate) type Opt<T> = Option<Val<T>>;

/// What a [`List`] holds, for "must be an array of ..." messages.
pub(crate) trait Listed {
    const WHAT: &'static str;
}

impl Listed for String {
    const WHAT: &'static str = "an array of strings";
}

impl Listed for serde_json::Value {
    const WHAT: &'static str = "an array of tables";
}

/// An array whose elements keep their own positions (`domains[1]` on its own line).
#[derive(Debug, Clone)]
pub(crate) struct List<T>(pub(crate) Vec<Val<T>>);

impl<T> Default for List<T> {
    fn default() -> Self {
        List(Vec::new())
    }
}

impl<'de, T: Deserialize<'de> + Listed> Deserialize<'de> for List<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ListVisitor<T>(PhantomData<T>);

        impl<'de, T: Deserialize<'de> + Listed> Visitor<'de> for ListVisitor<T> {
            type Value = List<T>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(T::WHAT)
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<List<T>, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(List(items))
            }

            /// A table, or a date-time (which TOML hands over as a table of one key).
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<List<T>, A::Error> {
                let first: Option<String> = map.next_key()?;
                let found = match first.as_deref() {
                    Some(TOML_DATETIME_KEY) => de::Unexpected::Other("date-time"),
                    _ => de::Unexpected::Map,
                };
                Err(de::Error::invalid_type(found, &self))
            }
        }

        deserializer.deserialize_seq(ListVisitor(PhantomData))
    }
}

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawConfig {
    pub(crate) server: RawServer,
    pub(crate) upstream: RawUpstream,
    pub(crate) limits: RawLimits,
    pub(crate) smtp: Opt<RawSmtp>,
    pub(crate) leads: RawLeads,
    pub(crate) tenants: Opt<Vec<Val<RawTenant>>>,
}

/// `[server]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawServer {
    pub(crate) listen: Opt<String>,
    pub(crate) metrics_listen: Opt<String>,
    pub(crate) prefix: Opt<String>,
    pub(crate) threads: Opt<i64>,
    pub(crate) grace_period_seconds: Opt<i64>,
    pub(crate) drain_timeout_seconds: Opt<i64>,
    /// The older name of `drain_timeout_seconds`, still accepted (not both).
    pub(crate) graceful_shutdown_timeout_seconds: Opt<i64>,
    pub(crate) upgrade_sock: Opt<String>,
    pub(crate) keepalive_timeout_seconds: Opt<i64>,
    pub(crate) request_header_timeout_seconds: Opt<i64>,
    pub(crate) request_body_timeout_seconds: Opt<i64>,
    pub(crate) stalled_reader_timeout_seconds: Opt<i64>,
}

/// `[upstream]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawUpstream {
    pub(crate) base_url: Opt<String>,
    pub(crate) connect_timeout_ms: Opt<i64>,
    pub(crate) first_byte_timeout_ms: Opt<i64>,
    pub(crate) idle_timeout_ms: Opt<i64>,
    pub(crate) pool_idle_timeout_ms: Opt<i64>,
    pub(crate) pool_size: Opt<i64>,
    pub(crate) address_connect_timeout_ms: Opt<i64>,
    pub(crate) resolve: Opt<List<String>>,
}

/// `[limits]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawLimits {
    pub(crate) max_body_bytes: Opt<i64>,
    pub(crate) max_message_chars: Opt<i64>,
    pub(crate) redis_url: Opt<Secret>,
    pub(crate) trusted_proxies: Opt<List<String>>,
    // request limits
    pub(crate) rate_limit_ip: Opt<String>,
    pub(crate) max_streams_per_ip: Opt<i64>,
    // bot check (Turnstile)
    pub(crate) turnstile_verify_url: Opt<String>,
    pub(crate) turnstile_timeout_ms: Opt<i64>,
    // conversation handles
    pub(crate) session_secret: Opt<Secret>,
    pub(crate) session_secret_env: Opt<String>,
    pub(crate) conversation_ttl_hours: Opt<i64>,
    pub(crate) max_messages_per_conversation: Opt<i64>,
}

/// `[smtp]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawSmtp {
    pub(crate) host: Opt<String>,
    pub(crate) port: Opt<i64>,
    pub(crate) user: Opt<String>,
    pub(crate) password: Opt<Secret>,
    pub(crate) password_env: Opt<String>,
    pub(crate) tls: Opt<SmtpTls>,
    pub(crate) from: Opt<String>,
    pub(crate) timeout_ms: Opt<i64>,
}

/// `[leads]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawLeads {
    pub(crate) dir: Opt<String>,
    pub(crate) max_per_conversation: Opt<i64>,
    pub(crate) max_per_tenant_per_hour: Opt<i64>,
    pub(crate) max_tool_rounds: Opt<i64>,
    pub(crate) send_timeout_ms: Opt<i64>,
    // leads under abuse
    pub(crate) max_per_address_per_day: Opt<i64>,
}

/// One `[[tenants]]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawTenant {
    pub(crate) name: Opt<String>,
    pub(crate) domains: Opt<List<String>>,
    pub(crate) api_key: Opt<Secret>,
    pub(crate) api_key_env: Opt<String>,
    pub(crate) api: Opt<ApiKind>,
    pub(crate) assistant_id: Opt<String>,
    pub(crate) model: Opt<String>,
    pub(crate) instructions: Opt<String>,
    pub(crate) instructions_file: Opt<String>,
    /// Passed through to the upstream as written (same keys, same order).
    pub(crate) tools: Opt<List<serde_json::Value>>,
    pub(crate) lead_recipients: Opt<List<String>>,
    pub(crate) lead_tool: Opt<String>,
    pub(crate) stream_format: Opt<StreamFormat>,
    pub(crate) redact_run_objects: Opt<bool>,
    // request limits
    pub(crate) rate_limit: Opt<String>,
    // token budgets
    pub(crate) daily_token_budget: Opt<i64>,
    // bot check (Turnstile)
    pub(crate) turnstile_secret: Opt<Secret>,
    pub(crate) turnstile_secret_env: Opt<String>,
    pub(crate) turnstile_site_key: Opt<String>,
    // output tokens
    pub(crate) max_output_tokens: Opt<i64>,
}

/// Which upstream API a tenant uses, as written in `api`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub(crate) enum ApiKind {
    Assistants,
    Responses,
}
