//! The old service's configuration: environment variables, plus a `.env` file.
//!
//! `DOMAINS`, `OPENAI_API_KEYS` and `ASSISTANT_IDS` are JSON arrays matched by position (one
//! tenant per domain, named after it). `MODELS` (with optional `INSTRUCTIONS`) replaces
//! `ASSISTANT_IDS` to use the Responses API; each of those two holds one entry for every
//! domain, or one per domain. `EMAIL_TO`, `SMTP_*`, `OPENAI_BASE_URL`, `PORT`,
//! `METRICS_LISTEN`, `STREAM_FORMAT`, `LEAD_TOOL`, `LEADS_DIR`, `GRACE_PERIOD_SECONDS` and
//! `DRAIN_TIMEOUT_SECONDS` are optional, and so is `DAILY_TOKEN_BUDGETS` (a JSON array of
//! numbers, one for every domain or one per domain). Everything else keeps its default.
//!
//! This module checks what only the environment has (JSON arrays, their lengths, which
//! variables go together) and builds the same typed structures as the TOML file, each value
//! named after its variable (`DOMAINS[1]`); `validate` does the rest, for both. The `.env`
//! file is parsed with Node dotenv's rules (see `dotenv`), and the process environment is
//! never modified; variables of the process win over the file.

use std::collections::HashMap;
use std::fs;
use std::io::ErrorKind;
use std::path::Path;

use serde_json::Value;

use super::check::{self, At};
use super::error::ConfigError;
use super::raw::{
    List, Opt, RawConfig, RawLeads, RawLimits, RawServer, RawSmtp, RawTenant, RawUpstream, Val,
};
use super::types::{Config, Secret};
use super::validate::{self, Source};

const DOMAINS: &str = "DOMAINS";
const OPENAI_API_KEYS: &str = "OPENAI_API_KEYS";
const ASSISTANT_IDS: &str = "ASSISTANT_IDS";
const MODELS: &str = "MODELS";
const INSTRUCTIONS: &str = "INSTRUCTIONS";
const EMAIL_TO: &str = "EMAIL_TO";
// token budgets
const DAILY_TOKEN_BUDGETS: &str = "DAILY_TOKEN_BUDGETS";
// bot check (Turnstile)
const TURNSTILE_SECRETS: &str = "TURNSTILE_SECRETS";
const TURNSTILE_SITE_KEYS: &str = "TURNSTILE_SITE_KEYS";

/// What each array looks like, for messages.
fn example(name: &str) -> &'static str {
    match name {
        DOMAINS => r#"DOMAINS='["example.com","shop.example.com"]'"#,
        OPENAI_API_KEYS => r#"OPENAI_API_KEYS='["sk-...","sk-..."]'"#,
        ASSISTANT_IDS => r#"ASSISTANT_IDS='["asst_...","asst_..."]'"#,
        MODELS => r#"MODELS='["gpt-5.4"]'"#,
        INSTRUCTIONS => r#"INSTRUCTIONS='["You are the assistant of example.com."]'"#,
        "TRUSTED_PROXIES" => r#"TRUSTED_PROXIES='["10.0.0.0/8","2001:db8::/32"]'"#,
        "OPENAI_RESOLVE" => r#"OPENAI_RESOLVE='["203.0.113.7","2001:db8::7"]'"#,
        TURNSTILE_SECRETS => r#"TURNSTILE_SECRETS='["0x4AAAAAAA...", ""]'"#,
        TURNSTILE_SITE_KEYS => r#"TURNSTILE_SITE_KEYS='["0x4AAAAAAA...", ""]'"#,
        _ => r#"EMAIL_TO='["sales@example.com"]'"#,
    }
}

/// The message when nothing at all is configured.
/// A build with the stub (the default feature) also suggests the demo; a production build has
/// no `demo` command to suggest.
#[cfg(feature = "stub")]
const NOTHING_CONFIGURED: &str = "no configuration found: pass `--config PATH` or set DOMAINS, \
     OPENAI_API_KEYS and ASSISTANT_IDS (or MODELS for the Responses API) in the environment or \
     a .env file, or run `chatbot-proxy demo` to try it against the bundled stub";
#[cfg(not(feature = "stub"))]
const NOTHING_CONFIGURED: &str = "no configuration found: pass `--config PATH` or set DOMAINS, \
     OPENAI_API_KEYS and ASSISTANT_IDS (or MODELS for the Responses API) in the environment or \
     a .env file";

/// The variable that stands for a TOML key in a message about a key that is not set.
pub(crate) fn var_for(key: &str) -> &str {
    match key {
        "server.listen" => "PORT",
        "smtp.user" => "SMTP_USER",
        "smtp.password" => "SMTP_PASS",
        "smtp.from" => "SMTP_FROM",
        other => other,
    }
}

/// Builds the configuration from environment variables (already merged with `.env`).
pub fn from_env_map(env: &HashMap<String, String>) -> Result<Config, ConfigError> {
    let present: Vec<&str> = [DOMAINS, OPENAI_API_KEYS, ASSISTANT_IDS, MODELS]
        .into_iter()
        .filter(|n| var(env, n).is_some())
        .collect();
    if present.is_empty() {
        return Err(ConfigError::general(NOTHING_CONFIGURED));
    }
    if let Some(missing) = [DOMAINS, OPENAI_API_KEYS]
        .into_iter()
        .find(|n| var(env, n).is_none())
    {
        return Err(ConfigError::new(
            missing,
            format!(
                "is not set, but {} {}: DOMAINS, OPENAI_API_KEYS and ASSISTANT_IDS (or MODELS) \
                 go together, matched by position; set e.g. {}",
                present.join(" and "),
                if present.len() == 1 { "is" } else { "are" },
                example(missing)
            ),
        ));
    }
    let responses_api = match (var(env, ASSISTANT_IDS), var(env, MODELS)) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::new(
                MODELS,
                "and ASSISTANT_IDS are both set: choose one API, ASSISTANT_IDS for the \
                 Assistants API or MODELS (with INSTRUCTIONS if wanted) for the Responses API, \
                 and remove the other",
            ))
        }
        (None, None) => {
            return Err(ConfigError::new(
                ASSISTANT_IDS,
                format!(
                    "is not set, and neither is MODELS: set one of them, ASSISTANT_IDS for the \
                     Assistants API (one assistant per domain, e.g. {}) or MODELS for the \
                     Responses API (e.g. {})",
                    example(ASSISTANT_IDS),
                    example(MODELS)
                ),
            ))
        }
        (Some(_), None) => false,
        (None, Some(_)) => true,
    };
    if !responses_api && var(env, INSTRUCTIONS).is_some() {
        return Err(ConfigError::new(
            INSTRUCTIONS,
            "is only used with MODELS (the Responses API): with ASSISTANT_IDS the instructions \
             live in each assistant on OpenAI's side; remove INSTRUCTIONS, or replace \
             ASSISTANT_IDS with MODELS",
        ));
    }

    let domains = json_strings(env, DOMAINS)?;
    let keys = json_strings(env, OPENAI_API_KEYS)?;
    for (name, list) in [(DOMAINS, &domains), (OPENAI_API_KEYS, &keys)] {
        if list.is_empty() {
            return Err(empty_array(name));
        }
    }
    let n = domains.len();
    same_length(OPENAI_API_KEYS, keys.len(), n)?;
    let (ids, models) = if responses_api {
        let models = json_strings(env, MODELS)?;
        if models.is_empty() {
            return Err(empty_array(MODELS));
        }
        one_or_all(MODELS, models.len(), n)?;
        (Vec::new(), models)
    } else {
        let ids = json_strings(env, ASSISTANT_IDS)?;
        if ids.is_empty() {
            return Err(empty_array(ASSISTANT_IDS));
        }
        same_length(ASSISTANT_IDS, ids.len(), n)?;
        (ids, Vec::new())
    };
    let instructions = json_strings(env, INSTRUCTIONS)?;
    one_or_all(INSTRUCTIONS, instructions.len(), n)?;
    let recipients = json_strings(env, EMAIL_TO)?;
    one_or_all(EMAIL_TO, recipients.len(), n)?;
    // token budgets
    let budgets = json_token_counts(env, DAILY_TOKEN_BUDGETS)?;
    one_or_all(DAILY_TOKEN_BUDGETS, budgets.len(), n)?;
    let stream_format = parsed(env, "STREAM_FORMAT")?;
    let redact_run_objects = boolean(env, "REDACT_RUN_OBJECTS")?;
    // bot check (Turnstile)
    let turnstile_secrets = secret_strings(env, TURNSTILE_SECRETS)?;
    one_or_all(TURNSTILE_SECRETS, turnstile_secrets.len(), n)?;
    let turnstile_site_keys = secret_strings(env, TURNSTILE_SITE_KEYS)?;
    one_or_all(TURNSTILE_SITE_KEYS, turnstile_site_keys.len(), n)?;
    let output_tokens = max_output_tokens(env, n)?;

    let tenants = (0..n).map(|i| {
        let domain = Val::var(format!("{DOMAINS}[{i}]"), domains[i].clone());
        let tenant = RawTenant {
            domains: Some(Val::var(DOMAINS, List(vec![domain]))),
            api_key: Some(Val::var(
                format!("{OPENAI_API_KEYS}[{i}]"),
                Secret::new(keys[i].as_str()),
            )),
            assistant_id: for_tenant(&ids, ASSISTANT_IDS, i),
            model: for_tenant(&models, MODELS, i),
            instructions: for_tenant(&instructions, INSTRUCTIONS, i),
            // Each entry may hold several comma-separated addresses.
            lead_recipients: for_tenant(&recipients, EMAIL_TO, i).map(|entry| {
                let addresses = entry.value.split(',').filter(|a| !a.trim().is_empty());
                let from = entry.from.clone();
                let list = addresses.map(|a| Val {
                    value: a.to_string(),
                    from: from.clone(),
                });
                Val {
                    value: List(list.collect()),
                    from,
                }
            }),
            lead_tool: text(env, "LEAD_TOOL"),
            stream_format: stream_format.clone(),
            redact_run_objects: redact_run_objects.clone(),
            // request limits: one value for every tenant
            rate_limit: text(env, "RATE_LIMIT_TENANT"),
            // token budgets
            daily_token_budget: token_count_for_tenant(&budgets, DAILY_TOKEN_BUDGETS, i),
            // `""`: no bot check for this domain.
            turnstile_secret: for_tenant(&turnstile_secrets, TURNSTILE_SECRETS, i)
                .filter(|entry| !entry.value.is_empty())
                .map(|entry| Val {
                    value: Secret::new(entry.value),
                    from: entry.from,
                }),
            turnstile_site_key: for_tenant(&turnstile_site_keys, TURNSTILE_SITE_KEYS, i),
            max_output_tokens: output_tokens.get(i).cloned().flatten(),
            ..RawTenant::default()
        };
        Val::var(format!("{DOMAINS}[{i}]"), tenant)
    });
    let listen = var(env, "PORT")
        .map(|port| check::port_text(port, &At::key("PORT")))
        .transpose()?
        .map(|port| Val::var("PORT", format!("0.0.0.0:{port}")));
    let raw = RawConfig {
        server: RawServer {
            listen,
            metrics_listen: text(env, "METRICS_LISTEN"),
            keepalive_timeout_seconds: int(env, "KEEPALIVE_TIMEOUT_SECONDS")?,
            request_header_timeout_seconds: int(env, "REQUEST_HEADER_TIMEOUT_SECONDS")?,
            request_body_timeout_seconds: int(env, "REQUEST_BODY_TIMEOUT_SECONDS")?,
            stalled_reader_timeout_seconds: int(env, "STALLED_READER_TIMEOUT_SECONDS")?,
            grace_period_seconds: int(env, "GRACE_PERIOD_SECONDS")?,
            drain_timeout_seconds: int(env, "DRAIN_TIMEOUT_SECONDS")?,
            ..RawServer::default()
        },
        upstream: RawUpstream {
            base_url: text(env, "OPENAI_BASE_URL"),
            resolve: string_list(env, "OPENAI_RESOLVE")?,
            pool_size: int(env, "OPENAI_POOL_SIZE")?,
            ..RawUpstream::default()
        },
        limits: RawLimits {
            redis_url: var(env, "REDIS_URL").map(|url| Val::var("REDIS_URL", Secret::new(url))),
            trusted_proxies: string_list(env, "TRUSTED_PROXIES")?,
            // request limits
            rate_limit_ip: text(env, "RATE_LIMIT_IP"),
            max_streams_per_ip: int(env, "MAX_STREAMS_PER_IP")?,
            // bot check (Turnstile)
            turnstile_verify_url: text(env, "TURNSTILE_VERIFY_URL"),
            turnstile_timeout_ms: int(env, "TURNSTILE_TIMEOUT_MS")?,
            // conversation handles
            session_secret: var(env, "SESSION_SECRET")
                .map(|secret| Val::var("SESSION_SECRET", Secret::new(secret))),
            conversation_ttl_hours: int(env, "CONVERSATION_TTL_HOURS")?,
            max_messages_per_conversation: int(env, "MAX_MESSAGES_PER_CONVERSATION")?,
            ..RawLimits::default()
        },
        smtp: smtp(env)?,
        leads: RawLeads {
            dir: text(env, "LEADS_DIR"),
            // leads under abuse
            max_per_address_per_day: int(env, "MAX_LEADS_PER_IP_PER_DAY")?,
            ..RawLeads::default()
        },
        tenants: Some(Val::var(DOMAINS, tenants.collect())),
    };
    let source = Source {
        text: None,
        env,
        dir: Path::new(""),
    };
    validate::config(raw, &source)
}

/// `SMTP_HOST` (enables mail), `SMTP_PORT` (default 587), `SMTP_USER`, `SMTP_PASS`,
/// `SMTP_TLS` (default by port), `SMTP_FROM` (default from the user or host).
fn smtp(env: &HashMap<String, String>) -> Result<Opt<RawSmtp>, ConfigError> {
    if var(env, "SMTP_HOST").is_none() {
        let others: Vec<&str> = [
            "SMTP_PORT",
            "SMTP_USER",
            "SMTP_PASS",
            "SMTP_TLS",
            "SMTP_FROM",
        ]
        .into_iter()
        .filter(|n| var(env, n).is_some())
        .collect();
        if !others.is_empty() {
            log::warn!(
                "{} set but SMTP_HOST is not: lead e-mails are disabled until SMTP_HOST is set",
                others.join(", ")
            );
        }
        return Ok(None);
    }
    let port = var(env, "SMTP_PORT")
        .map(|port| check::port_text(port, &At::key("SMTP_PORT")))
        .transpose()?;
    let smtp = RawSmtp {
        host: text(env, "SMTP_HOST"),
        port: port.map(|port| Val::var("SMTP_PORT", i64::from(port))),
        user: text(env, "SMTP_USER"),
        password: env
            .get("SMTP_PASS")
            .filter(|p| !p.trim().is_empty())
            .map(|p| Val::var("SMTP_PASS", Secret::new(p.as_str()))),
        tls: parsed(env, "SMTP_TLS")?,
        from: text(env, "SMTP_FROM"),
        ..RawSmtp::default()
    };
    Ok(Some(Val::var("SMTP_HOST", smtp)))
}

// output tokens
/// `MAX_OUTPUT_TOKENS` for each of the `domains` tenants: one whole number for every tenant
/// (`1024`), or a JSON array of whole numbers, `null` for a tenant without a limit, holding one
/// entry for every domain or one per domain (`[1024, null]`). Unset: no limit anywhere.
fn max_output_tokens(
    env: &HashMap<String, String>,
    domains: usize,
) -> Result<Vec<Opt<i64>>, ConfigError> {
    const NAME: &str = "MAX_OUTPUT_TOKENS";
    const SHAPE: &str = "write one whole number for every domain, e.g. MAX_OUTPUT_TOKENS=1024, \
                         or a JSON array matched by position with DOMAINS (null: no limit), \
                         e.g. MAX_OUTPUT_TOKENS='[1024, null]'";
    let Some(raw) = var(env, NAME) else {
        return Ok(Vec::new());
    };
    if let Ok(number) = raw.parse::<i64>() {
        return Ok(vec![Some(Val::var(NAME, number)); domains]);
    }
    let Ok(Value::Array(items)) = serde_json::from_str::<Value>(raw) else {
        return Err(ConfigError::new(
            NAME,
            format!(
                "is neither a whole number nor a JSON array of them (got {}): {SHAPE}",
                check::shown(raw)
            ),
        ));
    };
    one_or_all(NAME, items.len(), domains)?;
    let mut caps = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let name = format!("{NAME}[{i}]");
        let got = match item {
            Value::Null => {
                caps.push(None);
                continue;
            }
            Value::Number(n) => match n.as_i64() {
                Some(number) => {
                    caps.push(Some(Val::var(name, number)));
                    continue;
                }
                None => n.to_string(),
            },
            other => check::json_kind(other).to_string(),
        };
        return Err(ConfigError::new(
            name,
            format!("is {got}, not a whole number or null: {SHAPE}"),
        ));
    }
    Ok(match caps.as_slice() {
        [one] => vec![one.clone(); domains],
        _ => caps,
    })
}

/// The entry of a one-or-all list for tenant `i`: none, the only one, or the `i`-th; named
/// after its place in variable `name`.
fn for_tenant(list: &[String], name: &str, i: usize) -> Opt<String> {
    let index = if list.len() == 1 { 0 } else { i };
    let item = list.get(index)?;
    Some(Val::var(format!("{name}[{index}]"), item.clone()))
}

fn empty_array(name: &str) -> ConfigError {
    ConfigError::new(
        name,
        format!(
            "is an empty array: list at least one entry, e.g. {}",
            example(name)
        ),
    )
}

/// A list matched by position must have one entry per domain.
fn same_length(name: &str, len: usize, domains: usize) -> Result<(), ConfigError> {
    if len == domains {
        return Ok(());
    }
    Err(ConfigError::new(
        name,
        format!(
            "{DOMAINS} has {} but {name} has {len}: they are matched by position, so give \
             exactly one entry per domain",
            entries(domains)
        ),
    ))
}

/// A list that may hold one entry for every domain, or one per domain (or none).
fn one_or_all(name: &str, len: usize, domains: usize) -> Result<(), ConfigError> {
    if len <= 1 || len == domains {
        return Ok(());
    }
    Err(ConfigError::new(
        name,
        format!(
            "{DOMAINS} has {} but {name} has {len}: give one entry per domain (matched by \
             position), or a single entry that serves every domain",
            entries(domains)
        ),
    ))
}

/// "1 entry", "3 entries".
fn entries(n: usize) -> String {
    if n == 1 {
        "1 entry".to_string()
    } else {
        format!("{n} entries")
    }
}

/// A variable's value, trimmed; `None` when unset or blank.
fn var<'a>(env: &'a HashMap<String, String>, name: &str) -> Option<&'a str> {
    env.get(name).map(|v| v.trim()).filter(|v| !v.is_empty())
}

/// A variable's value (trimmed, not blank), named after it.
fn text(env: &HashMap<String, String>, name: &str) -> Opt<String> {
    var(env, name).map(|value| Val::var(name, value.to_string()))
}

/// A variable parsed into `T` (a stream format, a TLS mode), named after it.
fn parsed<T>(env: &HashMap<String, String>, name: &str) -> Result<Opt<T>, ConfigError>
where
    T: TryFrom<String, Error = String>,
{
    let Some(value) = var(env, name) else {
        return Ok(None);
    };
    let value = T::try_from(value.to_string()).map_err(|why| ConfigError::new(name, why))?;
    Ok(Some(Val::var(name, value)))
}

/// A whole number, named after its variable (bounds are checked with the TOML key's).
fn int(env: &HashMap<String, String>, name: &str) -> Result<Opt<i64>, ConfigError> {
    let Some(value) = var(env, name) else {
        return Ok(None);
    };
    let number = value.parse().map_err(|_| {
        ConfigError::new(
            name,
            format!(
                "is not a whole number (got {}): write e.g. {name}=30",
                check::shown(value)
            ),
        )
    })?;
    Ok(Some(Val::var(name, number)))
}

/// `true` or `false` (also `1`/`0`, `yes`/`no`), named after its variable.
fn boolean(env: &HashMap<String, String>, name: &str) -> Result<Opt<bool>, ConfigError> {
    let Some(value) = var(env, name) else {
        return Ok(None);
    };
    let flag = match value.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => true,
        "false" | "0" | "no" | "off" => false,
        _ => {
            return Err(ConfigError::new(
                name,
                format!(
                    "is not true or false (got {}): write {name}=true or {name}=false",
                    check::shown(value)
                ),
            ))
        }
    };
    Ok(Some(Val::var(name, flag)))
}

/// A JSON array of strings whose entries keep their positions (`NAME[1]`); unset: `None`.
fn string_list(
    env: &HashMap<String, String>,
    name: &str,
) -> Result<Opt<List<String>>, ConfigError> {
    if var(env, name).is_none() {
        return Ok(None);
    }
    let items = json_strings(env, name)?;
    let list = items
        .into_iter()
        .enumerate()
        .map(|(i, item)| Val::var(format!("{name}[{i}]"), item));
    Ok(Some(Val::var(name, List(list.collect()))))
}

/// The items of the JSON array in variable `name`, or an error saying it must look like
/// `shape`; with `secret` the value never appears in the message.
fn json_array(raw: &str, name: &str, shape: &str, secret: bool) -> Result<Vec<Value>, ConfigError> {
    let value: Value = serde_json::from_str(raw).map_err(|e| {
        let why = if secret {
            "value not shown".to_string()
        } else {
            format!("{e}; got {}", check::shown(raw))
        };
        ConfigError::new(name, format!("is not valid JSON ({why}): {shape}"))
    })?;
    match value {
        Value::Array(items) => Ok(items),
        other => Err(ConfigError::new(
            name,
            format!(
                "is JSON {}, not an array: {shape}",
                check::json_kind(&other)
            ),
        )),
    }
}

/// A JSON array of non-empty strings (trimmed). `[]` for an unset variable.
///
/// The value of `OPENAI_API_KEYS` never appears in a message.
fn json_strings(env: &HashMap<String, String>, name: &str) -> Result<Vec<String>, ConfigError> {
    let Some(raw) = var(env, name) else {
        return Ok(Vec::new());
    };
    let shape = format!(
        "it must be a JSON array of strings in double quotes, e.g. {}",
        example(name)
    );
    let items = json_array(raw, name, &shape, name == OPENAI_API_KEYS)?;
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let at = At::key(format!("{name}[{i}]"));
        match item {
            Value::String(s) if s.trim().is_empty() => {
                return Err(at.err(format!(
                    "is empty: every entry needs a value, because the arrays are matched by \
                     position with DOMAINS; {shape}"
                )))
            }
            Value::String(s) => out.push(s.trim().to_string()),
            other => {
                return Err(at.err(format!(
                    "is {}, not a string: {shape}",
                    check::json_kind(other)
                )))
            }
        }
    }
    Ok(out)
}

// token budgets
/// A JSON array of whole numbers of tokens (`DAILY_TOKEN_BUDGETS='[200000, 0]'`); `[]` for an
/// unset variable. Ranges are checked with the TOML key's.
fn json_token_counts(env: &HashMap<String, String>, name: &str) -> Result<Vec<i64>, ConfigError> {
    let Some(raw) = var(env, name) else {
        return Ok(Vec::new());
    };
    let shape = format!(
        "it must be a JSON array of whole numbers of tokens per day, one for every domain or \
         one per domain (0: no budget), e.g. {name}='[200000]'"
    );
    let items = json_array(raw, name, &shape, false)?;
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            item.as_i64().ok_or_else(|| {
                At::key(format!("{name}[{i}]")).err(format!(
                    "is {}, not a whole number: {shape}",
                    check::json_kind(item)
                ))
            })
        })
        .collect()
}

// bot check (Turnstile)
/// A JSON array of secrets matched by position, where `""` stands for none (trimmed). `[]` for
/// an unset variable. No value ever appears in a message.
fn secret_strings(env: &HashMap<String, String>, name: &str) -> Result<Vec<String>, ConfigError> {
    let Some(raw) = var(env, name) else {
        return Ok(Vec::new());
    };
    let shape = format!(
        "it must be a JSON array of strings in double quotes, \"\" for a domain without one, \
         e.g. {}",
        example(name)
    );
    let items = json_array(raw, name, &shape, true)?;
    items
        .iter()
        .enumerate()
        .map(|(i, item)| match item {
            Value::String(s) => Ok(s.trim().to_string()),
            other => Err(At::key(format!("{name}[{i}]")).err(format!(
                "is {}, not a string: {shape}",
                check::json_kind(other)
            ))),
        })
        .collect()
}

/// The entry of a one-or-all list of numbers for tenant `i`, named after its place in `name`.
fn token_count_for_tenant(list: &[i64], name: &str, i: usize) -> Opt<i64> {
    let index = if list.len() == 1 { 0 } else { i };
    let item = list.get(index)?;
    Some(Val::var(format!("{name}[{index}]"), *item))
}

/// `dir/.env` overlaid by `process_env`: the process wins. Within the file, a later line wins.
pub(crate) fn merged_with_dotenv(
    dir: &Path,
    process_env: HashMap<String, String>,
) -> Result<HashMap<String, String>, ConfigError> {
    let path = dir.join(".env");
    let Some(file_vars) = read_dotenv(&path)? else {
        return Ok(process_env);
    };
    log::debug!("read {} variables from {}", file_vars.len(), path.display());
    let mut merged: HashMap<String, String> = file_vars.into_iter().collect();
    merged.extend(process_env);
    Ok(merged)
}

/// The variables of a `.env` file in order, or `None` when there is no such file.
///
/// A line that cannot be parsed is reported by number only: it may hold a secret.
fn read_dotenv(path: &Path) -> Result<Option<Vec<(String, String)>>, ConfigError> {
    let file = path.display().to_string();
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(ConfigError::general(format!(
                "cannot be read ({e}): fix its permissions, or remove it and set the variables \
                 in the environment"
            ))
            .in_file(&file))
        }
    };
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
    let Ok(text) = std::str::from_utf8(bytes) else {
        return Err(ConfigError::general("is not UTF-8 text: save it as UTF-8").in_file(&file));
    };
    let parsed = super::dotenv::parse(text);
    if !parsed.skipped_lines.is_empty() {
        // As the old service did, such lines are ignored; their content may hold a secret.
        log::warn!(
            "{file}: skipped line(s) {:?}: not NAME=value (content not shown)",
            parsed.skipped_lines
        );
    }
    Ok(Some(parsed.vars))
}

#[cfg(test)]
mod tests {
    use super::super::types::*;
    use super::*;
    use std::time::Duration;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn two_sites(extra: &[(&str, &str)]) -> HashMap<String, String> {
        let mut vars = env(&[
            ("DOMAINS", r#"["acme.com", "Shop.Example.com"]"#),
            ("OPENAI_API_KEYS", r#"["sk-acme-1111", "sk-shop-2222"]"#),
            ("ASSISTANT_IDS", r#"["asst_acme", "asst_shop"]"#),
        ]);
        vars.extend(env(extra));
        vars
    }

    fn err_of(vars: &HashMap<String, String>) -> String {
        from_env_map(vars)
            .expect_err("configuration should be refused")
            .to_string()
    }

    #[test]
    fn defaults_and_one_tenant_per_domain() {
        let config = from_env_map(&two_sites(&[])).unwrap();
        assert_eq!(config.server, ServerSettings::default());
        assert_eq!(config.server.listen, "0.0.0.0:3000");
        assert_eq!(config.server.prefix, "/open-ai");
        assert_eq!(config.upstream.base_url, "https://api.openai.com/v1");
        assert_eq!(config.upstream.connect_timeout, Duration::from_millis(5000));
        assert_eq!(config.limits, Limits::default());
        assert!(config.smtp.is_none());
        assert_eq!(config.tenants.len(), 2);
        let shop = &config.tenants[1];
        assert_eq!(shop.name, "shop.example.com");
        assert_eq!(shop.domains, ["shop.example.com".parse().unwrap()]);
        assert_eq!(shop.api_key.expose(), "sk-shop-2222");
        assert_eq!(
            shop.api,
            UpstreamApi::Assistants {
                assistant_id: "asst_shop".into()
            }
        );
        assert_eq!(shop.lead_tool, "sendEmail");
        assert_eq!(shop.stream_format, StreamFormat::OpenAi);
        assert_eq!(config.leads, LeadSettings::default());
        assert!(shop.lead_recipients.is_empty());
    }

    #[test]
    fn port_and_base_url() {
        let config = from_env_map(&two_sites(&[
            ("PORT", "8080"),
            ("OPENAI_BASE_URL", "http://127.0.0.1:8090/v1"),
        ]))
        .unwrap();
        assert_eq!(config.server.listen, "0.0.0.0:8080");
        assert_eq!(
            (config.upstream.host.as_str(), config.upstream.port),
            ("127.0.0.1", 8090)
        );
        assert!(!config.upstream.tls);

        let err = err_of(&two_sites(&[("PORT", "80a")]));
        assert!(err.starts_with("PORT:"), "{err}");
        let err = err_of(&two_sites(&[("PORT", "0")]));
        assert!(err.contains("1 to 65535"), "{err}");
        let err = err_of(&two_sites(&[("OPENAI_BASE_URL", "api.openai.com")]));
        assert!(err.starts_with("OPENAI_BASE_URL:"), "{err}");
    }

    #[test]
    fn metrics_listen_is_optional_and_checked_against_the_port() {
        assert_eq!(from_env_map(&two_sites(&[])).unwrap().metrics_listen, None);
        let config = from_env_map(&two_sites(&[("METRICS_LISTEN", " 127.0.0.1:9090 ")])).unwrap();
        assert_eq!(config.metrics_listen.as_deref(), Some("127.0.0.1:9090"));

        let err = err_of(&two_sites(&[("METRICS_LISTEN", "9090")]));
        assert!(
            err.starts_with("METRICS_LISTEN: \"9090\" is only a port"),
            "{err}"
        );
        let err = err_of(&two_sites(&[("METRICS_LISTEN", "127.0.0.1:3000")]));
        assert!(err.starts_with("METRICS_LISTEN:"), "{err}");
        assert!(err.contains("without PORT it is \"0.0.0.0:3000\""), "{err}");
        let err = err_of(&two_sites(&[
            ("PORT", "8080"),
            ("METRICS_LISTEN", "[::1]:8080"),
        ]));
        assert!(err.contains("PORT makes it \"0.0.0.0:8080\""), "{err}");
        let config = from_env_map(&two_sites(&[
            ("PORT", "8080"),
            ("METRICS_LISTEN", "127.0.0.1:3000"),
        ]))
        .unwrap();
        assert_eq!(config.metrics_listen.as_deref(), Some("127.0.0.1:3000"));
    }

    #[test]
    fn nothing_set_explains_all_ways_to_configure() {
        let err = err_of(&env(&[("PATH", "/usr/bin"), ("DOMAINS", "  ")]));
        assert_eq!(err, NOTHING_CONFIGURED);
        assert!(err.contains("--config PATH"));
        assert_eq!(err.contains("chatbot-proxy demo"), cfg!(feature = "stub"));
    }

    #[test]
    fn a_missing_required_variable_is_named() {
        let mut vars = two_sites(&[]);
        vars.remove("ASSISTANT_IDS");
        let err = err_of(&vars);
        assert!(err.starts_with("ASSISTANT_IDS: is not set"), "{err}");
        assert!(err.contains(r#"ASSISTANT_IDS='["asst_..."#), "{err}");
    }

    #[test]
    fn arrays_must_be_json_arrays_of_strings() {
        let err = err_of(&two_sites(&[("DOMAINS", "acme.com")]));
        assert!(err.starts_with("DOMAINS: is not valid JSON"), "{err}");
        assert!(err.contains(r#"DOMAINS='["example.com""#), "{err}");
        let err = err_of(&two_sites(&[("DOMAINS", r#""acme.com""#)]));
        assert!(
            err.contains("DOMAINS: is JSON a string, not an array"),
            "{err}"
        );
        let err = err_of(&two_sites(&[("ASSISTANT_IDS", r#"["asst_a", 7]"#)]));
        assert!(
            err.starts_with("ASSISTANT_IDS[1]: is a number, not a string"),
            "{err}"
        );
        let err = err_of(&two_sites(&[("DOMAINS", "[]")]));
        assert!(err.starts_with("DOMAINS: is an empty array"), "{err}");
    }

    #[test]
    fn empty_strings_in_arrays_name_the_index() {
        let err = err_of(&two_sites(&[("DOMAINS", r#"["acme.com", " "]"#)]));
        assert!(err.starts_with("DOMAINS[1]: is empty"), "{err}");
        let err = err_of(&two_sites(&[(
            "OPENAI_API_KEYS",
            r#"["", "sk-shop-2222"]"#,
        )]));
        assert!(err.starts_with("OPENAI_API_KEYS[0]: is empty"), "{err}");
        let err = err_of(&two_sites(&[("EMAIL_TO", r#"["a@acme.com", ""]"#)]));
        assert!(err.starts_with("EMAIL_TO[1]: is empty"), "{err}");
    }

    #[test]
    fn array_lengths_must_match() {
        let err = err_of(&env(&[
            ("DOMAINS", r#"["a.com", "b.com", "c.com"]"#),
            ("OPENAI_API_KEYS", r#"["sk-a1", "sk-b1"]"#),
            ("ASSISTANT_IDS", r#"["asst_a", "asst_b", "asst_c"]"#),
        ]));
        assert_eq!(
            err,
            "OPENAI_API_KEYS: DOMAINS has 3 entries but OPENAI_API_KEYS has 2: they are matched \
             by position, so give exactly one entry per domain"
        );
        assert!(!err.contains("sk-a1"));
        let err = err_of(&two_sites(&[("ASSISTANT_IDS", r#"["asst_a"]"#)]));
        assert!(
            err.contains("DOMAINS has 2 entries but ASSISTANT_IDS has 1"),
            "{err}"
        );
    }

    #[test]
    fn a_single_email_to_serves_every_domain() {
        let config = from_env_map(&two_sites(&[(
            "EMAIL_TO",
            r#"["sales@acme.com, ops@acme.com"]"#,
        )]))
        .unwrap();
        for tenant in &config.tenants {
            assert_eq!(tenant.lead_recipients, ["sales@acme.com", "ops@acme.com"]);
        }
    }

    #[test]
    fn email_to_by_position_and_length_rules() {
        let config = from_env_map(&two_sites(&[(
            "EMAIL_TO",
            r#"["a@acme.com", "b@shop.com,c@shop.com"]"#,
        )]))
        .unwrap();
        assert_eq!(config.tenants[0].lead_recipients, ["a@acme.com"]);
        assert_eq!(
            config.tenants[1].lead_recipients,
            ["b@shop.com", "c@shop.com"]
        );
        let config = from_env_map(&two_sites(&[("EMAIL_TO", "[]")])).unwrap();
        assert!(config.tenants[0].lead_recipients.is_empty());

        let three = r#"["a@x.com", "b@x.com", "c@x.com"]"#;
        let err = err_of(&two_sites(&[("EMAIL_TO", three)]));
        assert!(
            err.starts_with("EMAIL_TO: DOMAINS has 2 entries but EMAIL_TO has 3"),
            "{err}"
        );
        let err = err_of(&two_sites(&[(
            "EMAIL_TO",
            r#"["a@x.com", "not-an-address"]"#,
        )]));
        assert!(err.starts_with("EMAIL_TO[1]:"), "{err}");
    }

    #[test]
    fn entries_are_validated_with_their_position() {
        let err = err_of(&two_sites(&[(
            "DOMAINS",
            r#"["acme.com", "https://shop.com"]"#,
        )]));
        assert!(err.starts_with("DOMAINS[1]:"), "{err}");
        let err = err_of(&two_sites(&[("ASSISTANT_IDS", r#"["asst_acme", "shop"]"#)]));
        assert!(err.starts_with("ASSISTANT_IDS[1]:"), "{err}");
        assert!(err.contains("asst_"), "{err}");
        let err = err_of(&two_sites(&[("DOMAINS", r#"["acme.com", "ACME.com"]"#)]));
        assert!(err.starts_with("DOMAINS[1]:"), "{err}");
        assert!(err.contains("DOMAINS[0]"), "{err}");
        // The same site in another spelling: one domain rule for matching and for this check.
        let err = err_of(&two_sites(&[(
            "DOMAINS",
            r#"["example.com", "WWW.example.com."]"#,
        )]));
        assert!(err.starts_with("DOMAINS[1]: \"www.example.com.\" is listed by two tenants: tenant \"example.com\" (DOMAINS[0], written \"example.com\") and tenant \"www.example.com.\""), "{err}");
        assert!(err.contains("the site \"example.com\""), "{err}");
    }

    #[test]
    fn the_keys_never_appear_in_errors() {
        let secret = "sk-SECRET-0123456789";
        let bad_values = [
            secret.to_string(),                     // not JSON
            format!("\"{secret}\""),                // JSON, not an array
            format!("[\"{secret}\""),               // broken JSON
            format!("[\"{secret} x\", \"sk-b1\"]"), // malformed key
            format!("[\"{secret}\", 5]"),           // wrong element type
            format!("[\"{secret}\"]"),              // wrong length
            format!("{{\"k\": \"{secret}\"}}"),     // an object
        ];
        for value in bad_values {
            let err = from_env_map(&two_sites(&[("OPENAI_API_KEYS", &value)])).unwrap_err();
            assert!(err.to_string().starts_with("OPENAI_API_KEYS"), "{err}");
            assert!(!err.to_string().contains("SECRET"), "secret leaked: {err}");
            assert!(
                !format!("{err:?}").contains("SECRET"),
                "secret leaked: {err:?}"
            );
        }
        // A key pasted into another variable is not echoed either.
        let err = err_of(&two_sites(&[(
            "ASSISTANT_IDS",
            &format!("[\"asst_a\", \"{secret}\"]"),
        )]));
        assert!(!err.contains("SECRET"), "{err}");
        let err = err_of(&two_sites(&[("DOMAINS", secret)]));
        assert!(!err.contains("SECRET"), "{err}");
        // Nor in MODELS, INSTRUCTIONS, LEAD_TOOL or SMTP_FROM.
        for (name, value) in [
            ("MODELS", format!("[\"{secret}\"]")),
            ("MODELS", format!("[\"{secret} x\"]")),
            ("MODELS", format!("[\"{secret}\", \"b\", \"c\"]")),
        ] {
            let err = err_of(&two_sites_on_models(&value, &[]));
            assert!(err.starts_with(name), "{err}");
            assert!(!err.contains("SECRET"), "{err}");
        }
        for (name, value) in [
            ("LEAD_TOOL", secret.to_string()),
            ("STREAM_FORMAT", secret.to_string()),
            ("LEADS_DIR", format!("{secret}\u{1}")),
        ] {
            let err = err_of(&two_sites(&[(name, &value)]));
            assert!(err.starts_with(name), "{err}");
            assert!(!err.contains("SECRET"), "{err}");
        }
        let err = err_of(&two_sites(&[
            ("SMTP_HOST", "mail.x"),
            ("SMTP_FROM", secret),
        ]));
        assert!(err.starts_with("SMTP_FROM"), "{err}");
        assert!(!err.contains("SECRET"), "{err}");
        // The SMTP password is never echoed.
        let err = err_of(&two_sites(&[
            ("SMTP_HOST", "mail.x"),
            ("SMTP_PASS", "pw-SECRET"),
        ]));
        assert!(err.starts_with("SMTP_USER:"), "{err}");
        assert!(!err.contains("SECRET"), "{err}");
    }

    #[test]
    fn smtp_from_env() {
        assert!(from_env_map(&two_sites(&[("SMTP_USER", "bot")]))
            .unwrap()
            .smtp
            .is_none());
        let config = from_env_map(&two_sites(&[("SMTP_HOST", "smtp.example.com")])).unwrap();
        let smtp = config.smtp.unwrap();
        assert_eq!(
            (smtp.host.as_str(), smtp.port, smtp.user),
            ("smtp.example.com", 587, None)
        );
        let config = from_env_map(&two_sites(&[
            ("SMTP_HOST", "smtp.example.com"),
            ("SMTP_PORT", "465"),
            ("SMTP_USER", "bot@example.com"),
            ("SMTP_PASS", "pw"),
        ]))
        .unwrap();
        let smtp = config.smtp.unwrap();
        assert_eq!(smtp.port, 465);
        assert_eq!(smtp.password.unwrap().expose(), "pw");
        let err = err_of(&two_sites(&[
            ("SMTP_HOST", "smtp.example.com"),
            ("SMTP_PORT", "tls"),
        ]));
        assert!(err.starts_with("SMTP_PORT:"), "{err}");
        let err = err_of(&two_sites(&[
            ("SMTP_HOST", "smtp.example.com"),
            ("SMTP_USER", "bot"),
        ]));
        assert!(err.starts_with("SMTP_PASS: is missing"), "{err}");
    }

    /// `two_sites` on the Responses API: ASSISTANT_IDS replaced by MODELS.
    fn two_sites_on_models(models: &str, extra: &[(&str, &str)]) -> HashMap<String, String> {
        let mut vars = two_sites(extra);
        vars.remove(ASSISTANT_IDS);
        vars.insert(MODELS.into(), models.into());
        vars
    }

    fn responses(tenant: &Tenant) -> (&str, Option<&str>) {
        match &tenant.api {
            UpstreamApi::Responses {
                model,
                instructions,
                tools,
            } => {
                assert!(tools.is_empty());
                (model, instructions.as_deref())
            }
            other => panic!("expected the Responses API, got {other:?}"),
        }
    }

    #[test]
    fn models_select_the_responses_api_one_for_all_or_one_each() {
        let config = from_env_map(&two_sites_on_models(r#"["gpt-5.4"]"#, &[])).unwrap();
        for tenant in &config.tenants {
            assert_eq!(responses(tenant), ("gpt-5.4", None));
        }
        let config = from_env_map(&two_sites_on_models(
            r#"["gpt-5.4", " gpt-4.1-mini "]"#,
            &[("INSTRUCTIONS", r#"["Be brief.\nUse English."]"#)],
        ))
        .unwrap();
        assert_eq!(
            responses(&config.tenants[0]),
            ("gpt-5.4", Some("Be brief.\nUse English."))
        );
        assert_eq!(
            responses(&config.tenants[1]),
            ("gpt-4.1-mini", Some("Be brief.\nUse English."))
        );
        let config = from_env_map(&two_sites_on_models(
            r#"["gpt-5.4"]"#,
            &[("INSTRUCTIONS", r#"["For acme.", "For the shop."]"#)],
        ))
        .unwrap();
        assert_eq!(responses(&config.tenants[0]).1, Some("For acme."));
        assert_eq!(responses(&config.tenants[1]).1, Some("For the shop."));
        let config = from_env_map(&two_sites_on_models(
            r#"["gpt-5.4"]"#,
            &[("INSTRUCTIONS", "[]")],
        ))
        .unwrap();
        assert_eq!(responses(&config.tenants[0]).1, None);
    }

    #[test]
    fn models_and_instructions_lengths_must_fit_the_domains() {
        let three = r#"["gpt-5.4", "gpt-5.4", "gpt-5.4"]"#;
        let err = err_of(&two_sites_on_models(three, &[]));
        assert_eq!(
            err,
            "MODELS: DOMAINS has 2 entries but MODELS has 3: give one entry per domain (matched \
             by position), or a single entry that serves every domain"
        );
        let err = err_of(&two_sites_on_models(
            r#"["gpt-5.4"]"#,
            &[("INSTRUCTIONS", r#"["a", "b", "c"]"#)],
        ));
        assert!(
            err.starts_with("INSTRUCTIONS: DOMAINS has 2 entries but INSTRUCTIONS has 3"),
            "{err}"
        );
        let err = err_of(&two_sites_on_models("[]", &[]));
        assert!(err.starts_with("MODELS: is an empty array"), "{err}");
        assert!(err.contains(r#"MODELS='["gpt-5.4"]'"#), "{err}");
        let err = err_of(&two_sites_on_models(r#"["gpt-5.4", "gpt 4"]"#, &[]));
        assert!(
            err.starts_with("MODELS[1]: \"gpt 4\" contains spaces"),
            "{err}"
        );
        let err = err_of(&two_sites_on_models(r#"["gpt-5.4", ""]"#, &[]));
        assert!(err.starts_with("MODELS[1]: is empty"), "{err}");
        let err = err_of(&two_sites_on_models("gpt-5.4", &[]));
        assert!(err.starts_with("MODELS: is not valid JSON"), "{err}");
        let err = err_of(&two_sites_on_models(
            r#"["gpt-5.4"]"#,
            &[("INSTRUCTIONS", r#""Be brief.""#)],
        ));
        assert!(
            err.starts_with("INSTRUCTIONS: is JSON a string, not an array"),
            "{err}"
        );
    }

    #[test]
    fn assistant_ids_or_models_exactly_one() {
        let both = two_sites(&[("MODELS", r#"["gpt-5.4"]"#)]);
        let err = err_of(&both);
        assert!(
            err.starts_with("MODELS: and ASSISTANT_IDS are both set"),
            "{err}"
        );
        let mut neither = two_sites(&[]);
        neither.remove(ASSISTANT_IDS);
        let err = err_of(&neither);
        assert!(
            err.starts_with("ASSISTANT_IDS: is not set, and neither is MODELS"),
            "{err}"
        );
        assert!(err.contains(r#"MODELS='["gpt-5.4"]'"#), "{err}");
        // A blank MODELS counts as unset.
        let config = from_env_map(&two_sites(&[("MODELS", "  ")])).unwrap();
        assert!(matches!(
            config.tenants[0].api,
            UpstreamApi::Assistants { .. }
        ));
        // MODELS alone names what else is needed.
        let err = err_of(&env(&[("MODELS", r#"["gpt-5.4"]"#)]));
        assert!(
            err.starts_with("DOMAINS: is not set, but MODELS is:"),
            "{err}"
        );
        let err = err_of(&env(&[
            ("MODELS", r#"["gpt-5.4"]"#),
            ("DOMAINS", r#"["a.com"]"#),
        ]));
        assert!(
            err.starts_with("OPENAI_API_KEYS: is not set, but DOMAINS and MODELS are:"),
            "{err}"
        );
    }

    #[test]
    fn instructions_need_models() {
        let err = err_of(&two_sites(&[("INSTRUCTIONS", r#"["Be brief."]"#)]));
        assert!(
            err.starts_with("INSTRUCTIONS: is only used with MODELS"),
            "{err}"
        );
    }

    #[test]
    fn stream_format_sets_every_tenant() {
        let config = from_env_map(&two_sites(&[("STREAM_FORMAT", "widget-v1")])).unwrap();
        for tenant in &config.tenants {
            assert_eq!(tenant.stream_format, StreamFormat::WidgetV1);
        }
        let config = from_env_map(&two_sites_on_models(
            r#"["gpt-5.4"]"#,
            &[("STREAM_FORMAT", " openai ")],
        ))
        .unwrap();
        assert_eq!(config.tenants[1].stream_format, StreamFormat::OpenAi);
        let err = err_of(&two_sites(&[("STREAM_FORMAT", "widget")]));
        assert!(
            err.starts_with("STREAM_FORMAT: \"widget\" is not a stream format"),
            "{err}"
        );
    }

    #[test]
    fn grace_period_and_drain_timeout() {
        let config = from_env_map(&two_sites(&[])).unwrap();
        assert_eq!(
            (
                config.server.grace_period_seconds,
                config.server.drain_timeout_seconds
            ),
            (0, 25)
        );
        let config = from_env_map(&two_sites(&[
            ("GRACE_PERIOD_SECONDS", " 5 "),
            ("DRAIN_TIMEOUT_SECONDS", "40"),
        ]))
        .unwrap();
        assert_eq!(
            (
                config.server.grace_period_seconds,
                config.server.drain_timeout_seconds
            ),
            (5, 40)
        );
        let err = err_of(&two_sites(&[("GRACE_PERIOD_SECONDS", "soon")]));
        assert!(
            err.starts_with("GRACE_PERIOD_SECONDS: is not a whole number"),
            "{err}"
        );
        let err = err_of(&two_sites(&[("DRAIN_TIMEOUT_SECONDS", "0")]));
        assert!(
            err.starts_with("DRAIN_TIMEOUT_SECONDS: 0 is out of range"),
            "{err}"
        );
    }

    #[test]
    fn lead_tool_and_leads_dir() {
        let config = from_env_map(&two_sites(&[
            ("LEAD_TOOL", "captureLead"),
            ("LEADS_DIR", "/var/lib/leads"),
        ]))
        .unwrap();
        assert!(config.tenants.iter().all(|t| t.lead_tool == "captureLead"));
        assert_eq!(
            config.leads,
            LeadSettings {
                dir: "/var/lib/leads".into(),
                ..LeadSettings::default()
            }
        );
        let err = err_of(&two_sites(&[("LEAD_TOOL", "capture lead")]));
        assert!(err.starts_with("LEAD_TOOL:"), "{err}");
        let err = err_of(&two_sites(&[("LEADS_DIR", "da\u{1}ta")]));
        assert!(err.starts_with("LEADS_DIR:"), "{err}");
    }

    // leads under abuse; bot check (Turnstile)
    #[test]
    fn address_cap_and_bot_check_from_env() {
        let config = from_env_map(&two_sites(&[])).unwrap();
        assert!(config.tenants.iter().all(|t| t.turnstile_secret.is_none()));
        let config = from_env_map(&two_sites(&[
            ("MAX_LEADS_PER_IP_PER_DAY", "9"),
            ("TURNSTILE_SECRETS", r#"["", " 0x4AAA-shop "]"#),
            ("TURNSTILE_VERIFY_URL", "http://127.0.0.1:8099/siteverify"),
            ("TURNSTILE_TIMEOUT_MS", "500"),
        ]))
        .unwrap();
        assert_eq!(config.leads.max_per_address_per_day, 9);
        assert_eq!(config.tenants[0].turnstile_secret, None, "\"\" is none");
        let shop = config.tenants[1].turnstile_secret.as_ref().unwrap();
        assert_eq!(shop.expose(), "0x4AAA-shop");
        let turnstile = &config.limits.turnstile;
        assert_eq!(turnstile.endpoint.port, 8099);
        assert_eq!(turnstile.endpoint.base_path, "/siteverify");
        assert_eq!(turnstile.timeout, std::time::Duration::from_millis(500));

        // Site keys (public), one per domain or one for all.
        let config = from_env_map(&two_sites(&[(
            "TURNSTILE_SITE_KEYS",
            r#"["", "0x4AAA-site"]"#,
        )]))
        .unwrap();
        assert_eq!(config.tenants[0].turnstile_site_key, None);
        assert_eq!(
            config.tenants[1].turnstile_site_key.as_deref(),
            Some("0x4AAA-site")
        );
        let err = err_of(&two_sites(&[("TURNSTILE_SITE_KEYS", r#"["a b"]"#)]));
        assert!(err.starts_with("TURNSTILE_SITE_KEYS[0]: "), "{err}");

        // One entry serves every domain.
        let config =
            from_env_map(&two_sites(&[("TURNSTILE_SECRETS", r#"["0x4AAA-all"]"#)])).unwrap();
        assert!(config
            .tenants
            .iter()
            .all(|t| t.turnstile_secret.as_ref().map(Secret::expose) == Some("0x4AAA-all")));
    }

    #[test]
    fn bad_bot_check_variables_are_named_and_never_shown() {
        let err = err_of(&two_sites(&[(
            "TURNSTILE_SECRETS",
            r#"["0xAAA-one","0xAAA-two","x"]"#,
        )]));
        assert!(
            err.starts_with("TURNSTILE_SECRETS: DOMAINS has 2 entries"),
            "{err}"
        );
        let err = err_of(&two_sites(&[("TURNSTILE_SECRETS", r#"["0xAAA-one" "#)]));
        assert!(
            err.starts_with("TURNSTILE_SECRETS: is not valid JSON (value not shown)"),
            "{err}"
        );
        assert!(!err.contains("0xAAA"), "{err}");
        let err = err_of(&two_sites(&[("TURNSTILE_SECRETS", r#"["0xAAA one", ""]"#)]));
        assert!(
            err.starts_with("TURNSTILE_SECRETS[0]: the Turnstile secret contains spaces"),
            "{err}"
        );
        assert!(!err.contains("0xAAA"), "{err}");
        let err = err_of(&two_sites(&[("TURNSTILE_SECRETS", r#"[1, ""]"#)]));
        assert!(
            err.starts_with("TURNSTILE_SECRETS[0]: is a number"),
            "{err}"
        );
        let err = err_of(&two_sites(&[("TURNSTILE_VERIFY_URL", "not a url")]));
        assert!(
            err.starts_with("TURNSTILE_VERIFY_URL: is not a usable siteverify URL"),
            "{err}"
        );
        let err = err_of(&two_sites(&[("TURNSTILE_TIMEOUT_MS", "999999")]));
        assert!(
            err.starts_with("TURNSTILE_TIMEOUT_MS: 999999 is out of range"),
            "{err}"
        );
        let err = err_of(&two_sites(&[("MAX_LEADS_PER_IP_PER_DAY", "many")]));
        assert!(
            err.starts_with("MAX_LEADS_PER_IP_PER_DAY: is not a whole number"),
            "{err}"
        );
    }

    #[test]
    fn smtp_tls_and_from_from_env() {
        let smtp = |extra: &[(&str, &str)]| {
            let mut vars = two_sites(&[("SMTP_HOST", "smtp.example.com")]);
            vars.extend(env(extra));
            from_env_map(&vars).map(|config| config.smtp.unwrap())
        };
        let plain = smtp(&[]).unwrap();
        assert_eq!(plain.tls, SmtpTls::Opportunistic);
        assert_eq!(plain.from, "AI Bot <chatbot@smtp.example.com>");
        assert_eq!(plain.timeout, Duration::from_secs(10));
        let implicit = smtp(&[("SMTP_PORT", "465")]).unwrap();
        assert_eq!(implicit.tls, SmtpTls::Implicit);
        let none = smtp(&[("SMTP_PORT", "465"), ("SMTP_TLS", "none")]).unwrap();
        assert_eq!(none.tls, SmtpTls::None);
        assert_eq!(
            smtp(&[("SMTP_TLS", "starttls")]).unwrap().tls,
            SmtpTls::StartTls
        );
        let with_user = smtp(&[("SMTP_USER", "bot@acme.com"), ("SMTP_PASS", "pw")]).unwrap();
        assert_eq!(with_user.from, "AI Bot <bot@acme.com>");
        let not_an_address = smtp(&[("SMTP_USER", "apikey"), ("SMTP_PASS", "pw")]).unwrap();
        assert_eq!(not_an_address.from, "AI Bot <chatbot@smtp.example.com>");
        let set = smtp(&[("SMTP_FROM", "Acme <leads@acme.com>")]).unwrap();
        assert_eq!(set.from, "Acme <leads@acme.com>");

        let err = smtp(&[("SMTP_TLS", "ssl")]).unwrap_err().to_string();
        assert!(
            err.starts_with("SMTP_TLS: \"ssl\" is not a TLS mode"),
            "{err}"
        );
        let err = smtp(&[("SMTP_FROM", "Acme <leads@acme.com>\r\nBcc: x@y.z")])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("SMTP_FROM:"), "{err}");
        assert!(err.contains("line break"), "{err}");
        let err = smtp(&[("SMTP_FROM", "nobody")]).unwrap_err().to_string();
        assert!(
            err.starts_with("SMTP_FROM: \"nobody\" is not a mailbox"),
            "{err}"
        );
        // Without SMTP_HOST the new variables are ignored (with a warning), as before.
        let config = from_env_map(&two_sites(&[("SMTP_TLS", "ssl")])).unwrap();
        assert!(config.smtp.is_none());
    }

    #[test]
    fn example_env_file_parses() {
        let text = include_str!("../../conf/example.env");
        let vars: HashMap<String, String> =
            super::super::dotenv::parse(text).vars.into_iter().collect();
        let config = from_env_map(&vars).unwrap();
        assert_eq!(config.tenants.len(), 2);
        assert_eq!(config.tenants[0].name, "acme.com");
        assert!(matches!(
            config.tenants[1].api,
            UpstreamApi::Assistants { .. }
        ));
        assert_eq!(config.tenants[1].stream_format, StreamFormat::OpenAi);
        assert_eq!(config.tenants[1].lead_tool, "sendEmail");
        assert_eq!(config.leads, LeadSettings::default());
        let smtp = config.smtp.unwrap();
        assert_eq!(smtp.tls, SmtpTls::Opportunistic);
        assert_eq!(smtp.from, "AI Bot <bot@example.com>");
        assert_eq!(config.metrics_listen, None);
        assert_eq!(config.server, ServerSettings::default(), "the defaults");

        // The commented-out metrics endpoint works.
        let with_metrics = text.replace("# METRICS_LISTEN=", "METRICS_LISTEN=");
        let vars: HashMap<String, String> = super::super::dotenv::parse(&with_metrics)
            .vars
            .into_iter()
            .collect();
        let config = from_env_map(&vars).unwrap();
        assert_eq!(config.metrics_listen.as_deref(), Some("127.0.0.1:9090"));

        // The commented-out Responses API variant works too.
        let text = text
            .replace("ASSISTANT_IDS=", "# ASSISTANT_IDS=")
            .replace("# MODELS=", "MODELS=")
            .replace("# INSTRUCTIONS=", "INSTRUCTIONS=");
        let vars: HashMap<String, String> = super::super::dotenv::parse(&text)
            .vars
            .into_iter()
            .collect();
        let config = from_env_map(&vars).unwrap();
        assert!(
            matches!(&config.tenants[1].api, UpstreamApi::Responses { model, instructions: Some(text), .. }
                if model == "gpt-5.4" && text.contains("widgets.example"))
        );
    }

    /// A directory under the system temp dir, removed on drop.
    struct TempDir(std::path::PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            let dir = std::env::temp_dir()
                .join(format!("chatbot-proxy-config-{tag}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn dotenv_is_merged_and_the_process_env_wins() {
        let dir = TempDir::new("merge");
        fs::write(
            dir.0.join(".env"),
            "# the old service's file\n\
             DOMAINS='[\"acme.com\"]'\n\
             OPENAI_API_KEYS='[\"sk-from-file\"]'\n\
             ASSISTANT_IDS='[\"asst_file\"]'\n\
             PORT=4000\n\
             PORT=4001\n",
        )
        .unwrap();
        let process = env(&[("ASSISTANT_IDS", r#"["asst_process"]"#)]);
        let config = merged_with_dotenv(&dir.0, process)
            .and_then(|vars| from_env_map(&vars))
            .unwrap();
        let tenant = &config.tenants[0];
        assert_eq!(tenant.api_key.expose(), "sk-from-file", "taken from .env");
        assert_eq!(
            tenant.api,
            UpstreamApi::Assistants {
                assistant_id: "asst_process".into()
            },
            "the process env wins"
        );
        assert_eq!(
            config.server.listen, "0.0.0.0:4001",
            "a later line of .env wins"
        );
    }

    #[test]
    fn without_dotenv_only_the_process_env_counts() {
        let dir = TempDir::new("absent");
        let err = merged_with_dotenv(&dir.0, env(&[]))
            .and_then(|vars| from_env_map(&vars))
            .unwrap_err();
        assert_eq!(err.to_string(), NOTHING_CONFIGURED);
        let config = merged_with_dotenv(&dir.0, two_sites(&[]))
            .and_then(|vars| from_env_map(&vars))
            .unwrap();
        assert_eq!(config.tenants.len(), 2);
    }

    #[test]
    fn a_malformed_dotenv_value_is_read_as_node_reads_it_and_never_shown() {
        // Node's dotenv reads an unterminated quote as a plain value: here one that is not
        // JSON, so the error names the variable, and never shows the secret.
        let dir = TempDir::new("broken");
        fs::write(
            dir.0.join(".env"),
            "DOMAINS='[\"acme.com\"]'\nASSISTANT_IDS='[\"asst_a\"]'\nnot an assignment\nOPENAI_API_KEYS=\"[\\\"sk-SECRET-9\\\"]\n",
        )
        .unwrap();
        let err = merged_with_dotenv(&dir.0, env(&[]))
            .and_then(|vars| from_env_map(&vars))
            .unwrap_err();
        assert_eq!(err.key(), Some("OPENAI_API_KEYS"), "{err}");
        assert!(err.to_string().contains("JSON"), "{err}");
        assert!(!err.to_string().contains("SECRET"), "{err}");
    }

    #[test]
    fn openai_resolve_gives_static_addresses() {
        let config = from_env_map(&two_sites(&[])).unwrap();
        assert!(config.upstream.resolve.is_empty());
        let config =
            from_env_map(&two_sites(&[("OPENAI_RESOLVE", r#"["127.0.0.2", "::1"]"#)])).unwrap();
        let want: Vec<std::net::IpAddr> =
            vec!["127.0.0.2".parse().unwrap(), "::1".parse().unwrap()];
        assert_eq!(config.upstream.resolve, want);
        let err = err_of(&two_sites(&[("OPENAI_RESOLVE", "127.0.0.1")]));
        assert!(
            err.starts_with("OPENAI_RESOLVE: is not valid JSON"),
            "{err}"
        );
        let err = err_of(&two_sites(&[("OPENAI_RESOLVE", r#"["::1", "localhost"]"#)]));
        assert!(
            err.starts_with("OPENAI_RESOLVE[1]: is not an IP address"),
            "{err}"
        );
        let err = err_of(&two_sites(&[("OPENAI_RESOLVE", "[1]")]));
        assert!(err.starts_with("OPENAI_RESOLVE[0]: is a number"), "{err}");
    }

    #[test]
    fn openai_pool_size_bounds_the_idle_upstream_connections() {
        let config = from_env_map(&two_sites(&[])).unwrap();
        assert_eq!(config.upstream.pool_size, 128);
        let config = from_env_map(&two_sites(&[("OPENAI_POOL_SIZE", "8")])).unwrap();
        assert_eq!(config.upstream.pool_size, 8);
        let err = err_of(&two_sites(&[("OPENAI_POOL_SIZE", "0")]));
        assert!(
            err.starts_with("OPENAI_POOL_SIZE: 0 is out of range"),
            "{err}"
        );
        let err = err_of(&two_sites(&[("OPENAI_POOL_SIZE", "many")]));
        assert!(err.starts_with("OPENAI_POOL_SIZE:"), "{err}");
    }

    // conversation handles
    #[test]
    fn session_secret_and_conversation_limits_from_env() {
        let config = from_env_map(&two_sites(&[])).unwrap();
        assert_eq!(config.limits.session_secret, None);
        assert_eq!(config.limits.conversation_ttl.as_secs(), 24 * 3600);
        assert_eq!(config.limits.max_messages_per_conversation, 50);
        let secret = "0123456789abcdef0123456789abcdef";
        let config = from_env_map(&two_sites(&[
            ("SESSION_SECRET", secret),
            ("CONVERSATION_TTL_HOURS", "2"),
            ("MAX_MESSAGES_PER_CONVERSATION", "7"),
        ]))
        .unwrap();
        assert_eq!(config.limits.session_secret, Some(Secret::new(secret)));
        assert_eq!(config.limits.conversation_ttl.as_secs(), 2 * 3600);
        assert_eq!(config.limits.max_messages_per_conversation, 7);

        let short = "tooShortSecret-31-bytes-xxxxxxx";
        let err = err_of(&two_sites(&[("SESSION_SECRET", short)]));
        assert!(
            err.starts_with("SESSION_SECRET: the secret is 31 bytes long"),
            "{err}"
        );
        assert!(!err.contains(short), "{err}");
        let err = err_of(&two_sites(&[("CONVERSATION_TTL_HOURS", "0")]));
        assert!(err.starts_with("CONVERSATION_TTL_HOURS:"), "{err}");
        let err = err_of(&two_sites(&[("MAX_MESSAGES_PER_CONVERSATION", "x")]));
        assert!(err.starts_with("MAX_MESSAGES_PER_CONVERSATION:"), "{err}");
    }

    // output tokens
    #[test]
    fn max_output_tokens_for_every_tenant_or_by_position() {
        let caps = |value: &str| -> Vec<Option<u32>> {
            let config = from_env_map(&two_sites(&[("MAX_OUTPUT_TOKENS", value)])).unwrap();
            config.tenants.iter().map(|t| t.max_output_tokens).collect()
        };
        let none = from_env_map(&two_sites(&[])).unwrap();
        assert!(none.tenants.iter().all(|t| t.max_output_tokens.is_none()));
        assert_eq!(caps("1024"), [Some(1024), Some(1024)]);
        assert_eq!(caps("[512]"), [Some(512), Some(512)]);
        assert_eq!(caps("[512, null]"), [Some(512), None]);
        assert_eq!(caps("[null, 64]"), [None, Some(64)]);

        let err = err_of(&two_sites(&[("MAX_OUTPUT_TOKENS", "[1, 2, 3]")]));
        assert!(
            err.starts_with("MAX_OUTPUT_TOKENS: DOMAINS has 2 entries but MAX_OUTPUT_TOKENS has 3"),
            "{err}"
        );
        let err = err_of(&two_sites(&[("MAX_OUTPUT_TOKENS", "[512, \"x\"]")]));
        assert!(
            err.starts_with("MAX_OUTPUT_TOKENS[1]: is a string, not a whole number"),
            "{err}"
        );
        let err = err_of(&two_sites(&[("MAX_OUTPUT_TOKENS", "[1.5]")]));
        assert!(err.starts_with("MAX_OUTPUT_TOKENS[0]: is 1.5"), "{err}");
        let err = err_of(&two_sites(&[("MAX_OUTPUT_TOKENS", "lots")]));
        assert!(
            err.starts_with("MAX_OUTPUT_TOKENS: is neither a whole number"),
            "{err}"
        );
        let err = err_of(&two_sites(&[("MAX_OUTPUT_TOKENS", "[512, 8]")]));
        assert!(
            err.starts_with("MAX_OUTPUT_TOKENS[1]: 8 is out of range"),
            "{err}"
        );
        let err = err_of(&two_sites(&[("MAX_OUTPUT_TOKENS", "0")]));
        assert!(
            err.starts_with("MAX_OUTPUT_TOKENS: 0 is out of range"),
            "{err}"
        );
    }

    #[test]
    fn the_commented_examples_of_handles_and_output_tokens_work() {
        let text = include_str!("../../conf/example.env")
            .replace("# SESSION_SECRET=", "SESSION_SECRET=")
            .replace("# CONVERSATION_TTL_HOURS=", "CONVERSATION_TTL_HOURS=")
            .replace(
                "# MAX_MESSAGES_PER_CONVERSATION=",
                "MAX_MESSAGES_PER_CONVERSATION=",
            )
            .replace("# MAX_OUTPUT_TOKENS='", "MAX_OUTPUT_TOKENS='");
        let vars: HashMap<String, String> = super::super::dotenv::parse(&text)
            .vars
            .into_iter()
            .collect();
        let config = from_env_map(&vars).unwrap();
        assert!(config.limits.session_secret.is_some());
        assert_eq!(config.limits.max_messages_per_conversation, 50);
        let caps: Vec<_> = config.tenants.iter().map(|t| t.max_output_tokens).collect();
        assert_eq!(caps, [Some(1024), None]);
    }

    #[test]
    fn client_timeouts_and_redaction_from_env() {
        let config = from_env_map(&two_sites(&[
            ("KEEPALIVE_TIMEOUT_SECONDS", "5"),
            ("REQUEST_HEADER_TIMEOUT_SECONDS", "2"),
            ("REQUEST_BODY_TIMEOUT_SECONDS", "3"),
            ("STALLED_READER_TIMEOUT_SECONDS", "4"),
            ("REDACT_RUN_OBJECTS", "true"),
        ]))
        .unwrap();
        let t = config.server.timeouts;
        assert_eq!(
            [
                t.keepalive,
                t.request_header,
                t.request_body,
                t.stalled_reader
            ],
            [5, 2, 3, 4].map(std::time::Duration::from_secs)
        );
        assert!(config.tenants.iter().all(|t| t.redact_run_objects));
        let err = err_of(&two_sites(&[("KEEPALIVE_TIMEOUT_SECONDS", "soon")]));
        assert!(
            err.starts_with("KEEPALIVE_TIMEOUT_SECONDS: is not a whole number"),
            "{err}"
        );
        let err = err_of(&two_sites(&[("KEEPALIVE_TIMEOUT_SECONDS", "0")]));
        assert!(err.starts_with("KEEPALIVE_TIMEOUT_SECONDS:"), "{err}");
        let err = err_of(&two_sites(&[("REDACT_RUN_OBJECTS", "maybe")]));
        assert!(
            err.starts_with("REDACT_RUN_OBJECTS: is not true or false"),
            "{err}"
        );
    }

    // token budgets
    #[test]
    fn daily_token_budgets_serve_every_domain_or_one_each() {
        let budgets = |extra: &[(&str, &str)]| -> Vec<Option<u64>> {
            let config = from_env_map(&two_sites(extra)).unwrap();
            config
                .tenants
                .iter()
                .map(|t| t.daily_token_budget)
                .collect()
        };
        assert_eq!(budgets(&[]), [None, None]);
        assert_eq!(
            budgets(&[("DAILY_TOKEN_BUDGETS", "[50000]")]),
            [Some(50_000), Some(50_000)]
        );
        assert_eq!(
            budgets(&[("DAILY_TOKEN_BUDGETS", "[0, 1000]")]),
            [None, Some(1_000)],
            "0 is no budget"
        );
        let err = err_of(&two_sites(&[("DAILY_TOKEN_BUDGETS", "[1, 2, 3]")]));
        assert!(
            err.starts_with(
                "DAILY_TOKEN_BUDGETS: DOMAINS has 2 entries but DAILY_TOKEN_BUDGETS has 3"
            ),
            "{err}"
        );
        let err = err_of(&two_sites(&[("DAILY_TOKEN_BUDGETS", r#"[1, "2"]"#)]));
        assert!(
            err.starts_with("DAILY_TOKEN_BUDGETS[1]: is a string, not a whole number"),
            "{err}"
        );
        let err = err_of(&two_sites(&[("DAILY_TOKEN_BUDGETS", "[1.5]")]));
        assert!(
            err.starts_with("DAILY_TOKEN_BUDGETS[0]: is a number, not a whole"),
            "{err}"
        );
        let err = err_of(&two_sites(&[("DAILY_TOKEN_BUDGETS", "[-5]")]));
        assert!(
            err.starts_with("DAILY_TOKEN_BUDGETS[0]: -5 is out of range"),
            "{err}"
        );
        let err = err_of(&two_sites(&[("DAILY_TOKEN_BUDGETS", "100")]));
        assert!(
            err.starts_with("DAILY_TOKEN_BUDGETS: is JSON a number, not an array"),
            "{err}"
        );
    }
}
