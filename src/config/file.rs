//! The TOML configuration file (`--config PATH`): the whole configuration in one file.
//!
//! The file is deserialized into `Raw*` structs whose leaves are `toml::Spanned<toml::Value>`, so
//! every value keeps its position and the type checks produce our own messages naming the full
//! key (`tenants[1].assistant_id`) and its line. Errors from the TOML parser itself (syntax,
//! unknown or duplicate keys) get their line from the error's span and their key from the
//! surrounding table headers. `api_key_env` / `password_env` are looked up in the environment
//! map the caller passes; `instructions_file` is read relative to the file's directory.
//! `tools` entries are deserialized straight into JSON values, so they reach the upstream
//! exactly as written (same keys, same order).

use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use toml::{Spanned, Value};

use super::check::{self, ApiKind, At, DomainOwners};
use super::defaults;
use super::error::ConfigError;
use super::types::{
    Config, LeadSettings, Limits, Secret, ServerSettings, SmtpSettings, StreamFormat, Tenant,
    UpstreamApi, UpstreamSettings,
};

/// An optional leaf value with its position.
type Field = Option<Spanned<Value>>;

/// An optional value kept as JSON (for `tools`), with its position.
type JsonField = Option<Spanned<serde_json::Value>>;

/// The key under which TOML date-times reach a deserializer that is not TOML's own.
const TOML_DATETIME_KEY: &str = "$__toml_private_datetime";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    server: Option<RawServer>,
    upstream: Option<RawUpstream>,
    limits: Option<RawLimits>,
    smtp: Option<Spanned<RawSmtp>>,
    leads: Option<RawLeads>,
    tenants: Option<Spanned<Vec<Spanned<RawTenant>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Field,
    metrics_listen: Field,
    prefix: Field,
    threads: Field,
    grace_period_seconds: Field,
    drain_timeout_seconds: Field,
    /// The older name of `drain_timeout_seconds`, still accepted.
    graceful_shutdown_timeout_seconds: Field,
    upgrade_sock: Field,
    keepalive_timeout_seconds: Field,
    request_header_timeout_seconds: Field,
    request_body_timeout_seconds: Field,
    stalled_reader_timeout_seconds: Field,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    base_url: Field,
    connect_timeout_ms: Field,
    first_byte_timeout_ms: Field,
    idle_timeout_ms: Field,
    pool_idle_timeout_ms: Field,
    address_connect_timeout_ms: Field,
    resolve: Field,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_body_bytes: Field,
    max_message_chars: Field,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSmtp {
    host: Field,
    port: Field,
    user: Field,
    password: Field,
    password_env: Field,
    tls: Field,
    from: Field,
    timeout_ms: Field,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLeads {
    dir: Field,
    max_per_conversation: Field,
    max_per_tenant_per_hour: Field,
    max_tool_rounds: Field,
    send_timeout_ms: Field,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenant {
    name: Field,
    domains: Field,
    api_key: Field,
    api_key_env: Field,
    api: Field,
    assistant_id: Field,
    model: Field,
    instructions: Field,
    instructions_file: Field,
    tools: JsonField,
    lead_recipients: Field,
    lead_tool: Field,
    stream_format: Field,
}

/// Keys whose values are secrets: a parser error on their line is checked for leaks.
const SECRET_KEYS: [&str; 2] = ["api_key", "password"];

/// Parses and validates a TOML configuration.
///
/// `source_name` is how the file is named in errors (e.g. `chatbot-proxy.toml`); it is also
/// taken as the file's path: a relative `instructions_file` is read from its directory (the
/// working directory when the name has none). `env` supplies the variables named by
/// `api_key_env` and `password_env`.
pub fn from_toml_str(
    text: &str,
    source_name: &str,
    env: &HashMap<String, String>,
) -> Result<Config, ConfigError> {
    let base_dir = Path::new(source_name).parent().unwrap_or(Path::new(""));
    from_toml_str_in(text, source_name, base_dir, env)
}

/// [`from_toml_str`] with the directory that relative `instructions_file` paths start from.
pub(crate) fn from_toml_str_in(
    text: &str,
    source_name: &str,
    base_dir: &Path,
    env: &HashMap<String, String>,
) -> Result<Config, ConfigError> {
    parse(text, base_dir, env).map_err(|e| e.in_file(source_name))
}

fn parse(
    text: &str,
    base_dir: &Path,
    env: &HashMap<String, String>,
) -> Result<Config, ConfigError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let raw: RawConfig = toml::from_str(text).map_err(|e| parser_error(text, &e))?;
    let doc = Doc {
        text,
        env,
        base_dir,
    };
    let server = doc.server(raw.server.as_ref())?;
    let metrics_listen = doc.metrics_listen(raw.server.as_ref(), &server)?;
    let config = Config {
        server,
        upstream: doc.upstream(raw.upstream)?,
        limits: doc.limits(raw.limits)?,
        smtp: raw.smtp.map(|smtp| doc.smtp(smtp)).transpose()?,
        leads: doc.leads(raw.leads)?,
        tenants: doc.tenants(raw.tenants)?,
        metrics_listen,
    };
    check::finish(&config);
    Ok(config)
}

/// The 1-based line of byte `offset`.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The document being converted, for positions, environment look-ups and file reads.
struct Doc<'a> {
    text: &'a str,
    env: &'a HashMap<String, String>,
    /// The directory of the configuration file (empty: the working directory).
    base_dir: &'a Path,
}

impl Doc<'_> {
    fn at(&self, key: impl Into<String>, span: &Range<usize>) -> At {
        At::on_line(key, line_of(self.text, span.start))
    }

    fn located(&self, key: impl Into<String>, field: &Spanned<Value>) -> At {
        self.at(key, &field.span())
    }

    /// A string value. Never echoes the value (it may be a secret).
    fn string(
        &self,
        field: &Spanned<Value>,
        at: &At,
        example: &str,
    ) -> Result<String, ConfigError> {
        match field.get_ref() {
            Value::String(s) => Ok(s.clone()),
            other => Err(at.err(format!(
                "must be a string in double quotes, not {}: write e.g. {example}",
                article(other.type_str())
            ))),
        }
    }

    /// An integer value.
    fn integer(&self, field: &Spanned<Value>, at: &At, example: &str) -> Result<i64, ConfigError> {
        match field.get_ref() {
            Value::Integer(i) => Ok(*i),
            other => Err(at.err(format!(
                "must be a whole number without quotes, not {}: write e.g. {example}",
                article(other.type_str())
            ))),
        }
    }

    /// An array of strings, each with its own key (`key[i]`) and line.
    fn strings(
        &self,
        field: &Spanned<Value>,
        at: &At,
        example: &str,
    ) -> Result<Vec<(String, At)>, ConfigError> {
        let Value::Array(items) = field.get_ref() else {
            return Err(at.err(format!(
                "must be an array of strings, not {}: write e.g. {example}",
                article(field.get_ref().type_str())
            )));
        };
        let spans = element_spans(self.text, &field.span());
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let item_at = match spans.as_ref().and_then(|s| s.get(i)) {
                Some(span) => self.at(format!("{}[{i}]", at.key), span),
                None => at.index(i),
            };
            match item {
                Value::String(s) => out.push((s.clone(), item_at)),
                other => {
                    return Err(item_at.err(format!(
                        "must be a string in double quotes, not {}: write e.g. {example}",
                        article(other.type_str())
                    )))
                }
            }
        }
        Ok(out)
    }

    /// An optional integer setting within `bounds`, `default` when absent.
    fn bounded(
        &self,
        field: &Field,
        key: &str,
        bounds: &check::Bounds,
        default: u64,
    ) -> Result<u64, ConfigError> {
        let Some(field) = field else {
            return Ok(default);
        };
        let at = self.located(key, field);
        let value = self.integer(field, &at, &format!("{} = {default}", last_segment(key)))?;
        check::in_bounds(value, bounds, default, &at)
    }

    fn server(&self, raw: Option<&RawServer>) -> Result<ServerSettings, ConfigError> {
        let mut server = ServerSettings::default();
        let Some(raw) = raw else {
            return Ok(server);
        };
        if let Some(field) = &raw.listen {
            let at = self.located("server.listen", field);
            let text = self.string(field, &at, "listen = \"0.0.0.0:3000\"")?;
            server.listen = check::listen(&text, &at)?;
        }
        if let Some(field) = &raw.prefix {
            let at = self.located("server.prefix", field);
            let text = self.string(field, &at, "prefix = \"/open-ai\"")?;
            server.prefix = check::prefix(&text, &at)?;
        }
        let threads = self.bounded(
            &raw.threads,
            "server.threads",
            &check::THREADS,
            defaults::THREADS as u64,
        )?;
        server.threads = threads as usize;
        server.grace_period_seconds = self.bounded(
            &raw.grace_period_seconds,
            "server.grace_period_seconds",
            &check::GRACE_SECONDS,
            defaults::GRACE_PERIOD_SECONDS,
        )?;
        let (drain, drain_key) = match (
            &raw.drain_timeout_seconds,
            &raw.graceful_shutdown_timeout_seconds,
        ) {
            (Some(_), Some(old)) => {
                let at = self.located("server.graceful_shutdown_timeout_seconds", old);
                return Err(at.err(
                    "is the older name of drain_timeout_seconds, which is also set: keep \
                     only drain_timeout_seconds",
                ));
            }
            (None, Some(_)) => (
                &raw.graceful_shutdown_timeout_seconds,
                "server.graceful_shutdown_timeout_seconds",
            ),
            _ => (&raw.drain_timeout_seconds, "server.drain_timeout_seconds"),
        };
        server.drain_timeout_seconds = self.bounded(
            drain,
            drain_key,
            &check::SHUTDOWN_SECONDS,
            defaults::DRAIN_TIMEOUT_SECONDS,
        )?;
        if let Some(field) = &raw.upgrade_sock {
            let at = self.located("server.upgrade_sock", field);
            let text = self.string(
                field,
                &at,
                &format!("upgrade_sock = {:?}", defaults::UPGRADE_SOCK),
            )?;
            server.upgrade_sock = check::upgrade_sock(&text, &at)?;
        }
        let seconds = |field: &Field, key: &str, default: Duration| {
            self.bounded(field, key, &check::SHUTDOWN_SECONDS, default.as_secs())
                .map(Duration::from_secs)
        };
        let defaults = server.timeouts;
        server.timeouts.keepalive = seconds(
            &raw.keepalive_timeout_seconds,
            "server.keepalive_timeout_seconds",
            defaults.keepalive,
        )?;
        server.timeouts.request_header = seconds(
            &raw.request_header_timeout_seconds,
            "server.request_header_timeout_seconds",
            defaults.request_header,
        )?;
        server.timeouts.request_body = seconds(
            &raw.request_body_timeout_seconds,
            "server.request_body_timeout_seconds",
            defaults.request_body,
        )?;
        server.timeouts.stalled_reader = seconds(
            &raw.stalled_reader_timeout_seconds,
            "server.stalled_reader_timeout_seconds",
            defaults.stalled_reader,
        )?;
        Ok(server)
    }

    /// `server.metrics_listen`, which must not take the port of `server.listen`.
    fn metrics_listen(
        &self,
        raw: Option<&RawServer>,
        server: &ServerSettings,
    ) -> Result<Option<String>, ConfigError> {
        let Some(field) = raw.and_then(|raw| raw.metrics_listen.as_ref()) else {
            return Ok(None);
        };
        let at = self.located("server.metrics_listen", field);
        let text = self.string(field, &at, "metrics_listen = \"127.0.0.1:9090\"")?;
        let listen_is = match raw.and_then(|raw| raw.listen.as_ref()) {
            Some(listen) => format!(
                "server.listen = {:?}, line {}",
                server.listen,
                line_of(self.text, listen.span().start)
            ),
            None => format!("server.listen defaults to {:?}", server.listen),
        };
        check::metrics_listen(&text, &at, &server.listen, &listen_is).map(Some)
    }

    fn upstream(&self, raw: Option<RawUpstream>) -> Result<UpstreamSettings, ConfigError> {
        let mut upstream = UpstreamSettings::default();
        let Some(raw) = raw else {
            return Ok(upstream);
        };
        if let Some(field) = &raw.base_url {
            let at = self.located("upstream.base_url", field);
            let text = self.string(field, &at, "base_url = \"https://api.openai.com/v1\"")?;
            check::base_url(&text, &at, &mut upstream)?;
        }
        let timeouts = [
            (
                &raw.connect_timeout_ms,
                "upstream.connect_timeout_ms",
                defaults::CONNECT_TIMEOUT_MS,
            ),
            (
                &raw.first_byte_timeout_ms,
                "upstream.first_byte_timeout_ms",
                defaults::FIRST_BYTE_TIMEOUT_MS,
            ),
            (
                &raw.idle_timeout_ms,
                "upstream.idle_timeout_ms",
                defaults::IDLE_TIMEOUT_MS,
            ),
            (
                &raw.pool_idle_timeout_ms,
                "upstream.pool_idle_timeout_ms",
                defaults::POOL_IDLE_TIMEOUT_MS,
            ),
        ];
        let mut values = [std::time::Duration::ZERO; 4];
        for (slot, (field, key, default)) in values.iter_mut().zip(timeouts) {
            *slot = std::time::Duration::from_millis(self.bounded(
                field,
                key,
                &check::TIMEOUT_MS,
                default,
            )?);
        }
        let [connect, first_byte, idle, pool_idle] = values;
        upstream.connect_timeout = connect;
        upstream.first_byte_timeout = first_byte;
        upstream.idle_timeout = idle;
        upstream.pool_idle_timeout = pool_idle;
        upstream.address_connect_timeout = self.address_connect_timeout(&raw, connect)?;
        if let Some(field) = &raw.resolve {
            let at = self.located("upstream.resolve", field);
            for (text, item_at) in self.strings(field, &at, "resolve = [\"203.0.113.7\"]")? {
                upstream
                    .resolve
                    .push(check::resolve_address(&text, &item_at)?);
            }
        }
        Ok(upstream)
    }

    /// `upstream.address_connect_timeout_ms`, at most `connect`.
    fn address_connect_timeout(
        &self,
        raw: &RawUpstream,
        connect: Duration,
    ) -> Result<Duration, ConfigError> {
        let key = "upstream.address_connect_timeout_ms";
        let default = defaults::ADDRESS_CONNECT_TIMEOUT_MS;
        let value = match &raw.address_connect_timeout_ms {
            Some(field) => Some((
                self.bounded(
                    &raw.address_connect_timeout_ms,
                    key,
                    &check::TIMEOUT_MS,
                    default,
                )?,
                self.located(key, field),
            )),
            None => None,
        };
        let value = value.as_ref().map(|(ms, at)| (*ms, at));
        check::address_connect_timeout(value, connect.as_millis() as u64).map(Duration::from_millis)
    }

    fn limits(&self, raw: Option<RawLimits>) -> Result<Limits, ConfigError> {
        let mut limits = Limits::default();
        let Some(raw) = raw else {
            return Ok(limits);
        };
        limits.max_body_bytes = self.bounded(
            &raw.max_body_bytes,
            "limits.max_body_bytes",
            &check::BODY_BYTES,
            defaults::MAX_BODY_BYTES as u64,
        )? as usize;
        limits.max_message_chars = self.bounded(
            &raw.max_message_chars,
            "limits.max_message_chars",
            &check::MESSAGE_CHARS,
            defaults::MAX_MESSAGE_CHARS as u64,
        )? as usize;
        Ok(limits)
    }

    fn smtp(&self, raw: Spanned<RawSmtp>) -> Result<SmtpSettings, ConfigError> {
        let table = self.at("smtp", &raw.span());
        let raw = raw.into_inner();
        let Some(host_field) = &raw.host else {
            return Err(table.field("host").err(
                "is missing: add host = \"smtp.example.com\" to [smtp], or remove the [smtp] \
                 table to disable lead e-mails",
            ));
        };
        let host_at = self.located("smtp.host", host_field);
        let host = check::smtp_host(
            &self.string(host_field, &host_at, "host = \"smtp.example.com\"")?,
            &host_at,
        )?;
        let port = self.bounded(
            &raw.port,
            "smtp.port",
            &check::PORT,
            u64::from(defaults::SMTP_PORT),
        )? as u16;

        let mut user_at = table.field("user");
        let user = match &raw.user {
            Some(field) => {
                user_at = self.located("smtp.user", field);
                let user = self.string(field, &user_at, "user = \"bot@example.com\"")?;
                if user.trim().is_empty() {
                    return Err(user_at.err("is empty: give the SMTP user name, or remove the key"));
                }
                Some(user.trim().to_string())
            }
            None => None,
        };

        let mut password_at = table.field("password");
        let password = match (&raw.password, &raw.password_env) {
            (Some(_), Some(env_field)) => {
                return Err(self.located("smtp.password_env", env_field).err(
                    "and smtp.password are both set: keep exactly one (password_env keeps the \
                     password out of this file)",
                ))
            }
            (Some(field), None) => {
                password_at = self.located("smtp.password", field);
                let password = self.string(field, &password_at, "password = \"...\"")?;
                if password.trim().is_empty() {
                    return Err(
                        password_at.err("is empty: give the SMTP password, or remove the key")
                    );
                }
                Some(Secret::new(password))
            }
            (None, Some(field)) => {
                password_at = self.located("smtp.password_env", field);
                let name = self.string(field, &password_at, "password_env = \"SMTP_PASS\"")?;
                let name = check::env_var_name(&name, &password_at)?;
                let value = check::env_value(self.env, &name, "the SMTP password", &password_at)?;
                Some(Secret::new(value))
            }
            (None, None) => None,
        };
        check::smtp_credentials(user.as_deref(), password.as_ref(), &user_at, &password_at)?;

        let tls = match &raw.tls {
            Some(field) => {
                let at = self.located("smtp.tls", field);
                check::smtp_tls(&self.string(field, &at, "tls = \"starttls\"")?, &at)?
            }
            None => defaults::smtp_tls(port),
        };
        let from = match &raw.from {
            Some(field) => {
                let at = self.located("smtp.from", field);
                let text = self.string(field, &at, "from = \"AI Bot <bot@example.com>\"")?;
                check::mailbox(&text, &at)?
            }
            None => check::default_from(user.as_deref(), &host, "smtp.from", &table.field("from"))?,
        };
        let timeout = Duration::from_millis(self.bounded(
            &raw.timeout_ms,
            "smtp.timeout_ms",
            &check::SMTP_TIMEOUT_MS,
            defaults::SMTP_TIMEOUT_MS,
        )?);
        Ok(SmtpSettings {
            host,
            port,
            user,
            password,
            tls,
            from,
            timeout,
        })
    }

    fn leads(&self, raw: Option<RawLeads>) -> Result<LeadSettings, ConfigError> {
        let mut leads = LeadSettings::default();
        let Some(raw) = raw else {
            return Ok(leads);
        };
        if let Some(field) = &raw.dir {
            let at = self.located("leads.dir", field);
            leads.dir = check::leads_dir(&self.string(field, &at, "dir = \"data\"")?, &at)?;
        }
        let counts = [
            (
                &mut leads.max_per_conversation,
                &raw.max_per_conversation,
                "leads.max_per_conversation",
                &check::LEADS_PER_CONVERSATION,
                defaults::MAX_LEADS_PER_CONVERSATION,
            ),
            (
                &mut leads.max_per_tenant_per_hour,
                &raw.max_per_tenant_per_hour,
                "leads.max_per_tenant_per_hour",
                &check::LEADS_PER_HOUR,
                defaults::MAX_LEADS_PER_TENANT_PER_HOUR,
            ),
            (
                &mut leads.max_tool_rounds,
                &raw.max_tool_rounds,
                "leads.max_tool_rounds",
                &check::TOOL_ROUNDS,
                defaults::MAX_TOOL_ROUNDS,
            ),
        ];
        for (slot, field, key, bounds, default) in counts {
            let value = self.bounded(field, key, bounds, u64::from(default))?;
            // The bounds keep every count far below u32::MAX.
            *slot = u32::try_from(value).unwrap_or(default);
        }
        leads.send_timeout = Duration::from_millis(self.bounded(
            &raw.send_timeout_ms,
            "leads.send_timeout_ms",
            &check::SEND_TIMEOUT_MS,
            defaults::LEAD_SEND_TIMEOUT_MS,
        )?);
        Ok(leads)
    }

    fn tenants(
        &self,
        raw: Option<Spanned<Vec<Spanned<RawTenant>>>>,
    ) -> Result<Vec<Tenant>, ConfigError> {
        const HOW: &str = "add a [[tenants]] table with domains, api_key_env (or api_key), and \
                           assistant_id (Assistants API) or model (Responses API); see \
                           conf/chatbot-proxy.toml";
        let Some(list) = raw else {
            return Err(ConfigError::new(
                "tenants",
                format!("no tenant is configured: {HOW}"),
            ));
        };
        if list.get_ref().is_empty() {
            return Err(self
                .at("tenants", &list.span())
                .err(format!("is empty: {HOW}")));
        }
        let mut owners = DomainOwners::default();
        let mut names: HashMap<String, At> = HashMap::new();
        let mut tenants = Vec::with_capacity(list.get_ref().len());
        for (index, raw) in list.into_inner().into_iter().enumerate() {
            let table = self.at(format!("tenants[{index}]"), &raw.span());
            let tenant = self.tenant(index, raw.get_ref(), &table, &mut owners)?;
            if let Some(first) = names.get(&tenant.name) {
                let at = match &raw.get_ref().name {
                    Some(field) => self.located(format!("{}.name", table.key), field),
                    None => table.field("name"),
                };
                return Err(at.err(format!(
                    "{} is already the name of {} (line {}): give each tenant its own name",
                    check::shown(&tenant.name),
                    first.key,
                    first.line.unwrap_or_default()
                )));
            }
            names.insert(tenant.name.clone(), table);
            tenants.push(tenant);
        }
        Ok(tenants)
    }

    fn tenant(
        &self,
        index: usize,
        raw: &RawTenant,
        table: &At,
        owners: &mut DomainOwners,
    ) -> Result<Tenant, ConfigError> {
        let domains_key = format!("{}.domains", table.key);
        let Some(domains_field) = &raw.domains else {
            return Err(table.field("domains").err(
                "is missing: add domains = [\"example.com\"] to this [[tenants]] table \
                 (the sites allowed to use this tenant)",
            ));
        };
        let domains_at = self.located(domains_key, domains_field);
        let example = "domains = [\"example.com\", \"*.example.com\"]";
        let entries = self.strings(domains_field, &domains_at, example)?;
        if entries.is_empty() {
            return Err(domains_at.err(format!(
                "is empty: list at least one domain, e.g. {example}"
            )));
        }
        let mut domains = Vec::with_capacity(entries.len());
        for (text, at) in &entries {
            domains.push((check::domain(text, at)?, at));
        }

        let name = match &raw.name {
            Some(field) => {
                let at = self.located(format!("{}.name", table.key), field);
                check::tenant_name(&self.string(field, &at, "name = \"acme\"")?, &at)?
            }
            None => domains[0].0.clone(),
        };
        let label = format!("tenant {}", check::shown(&name));
        for (domain, at) in &domains {
            owners.claim(domain, index, &label, at)?;
        }

        let api_key = self.api_key(raw, table, &name)?;

        let lead_tool = match &raw.lead_tool {
            Some(field) => {
                let at = self.located(format!("{}.lead_tool", table.key), field);
                let text = self.string(field, &at, "lead_tool = \"sendEmail\"")?;
                check::function_name(&text, &at)?
            }
            None => defaults::LEAD_TOOL.to_string(),
        };
        let stream_format = match &raw.stream_format {
            Some(field) => {
                let at = self.located(format!("{}.stream_format", table.key), field);
                let text = self.string(field, &at, "stream_format = \"openai\"")?;
                check::stream_format(&text, &at)?
            }
            None => StreamFormat::default(),
        };
        let api = self.upstream_api(raw, table, &name, &lead_tool)?;

        let mut lead_recipients = Vec::new();
        if let Some(field) = &raw.lead_recipients {
            let at = self.located(format!("{}.lead_recipients", table.key), field);
            for (text, item_at) in
                self.strings(field, &at, "lead_recipients = [\"sales@example.com\"]")?
            {
                lead_recipients.push(check::recipient(&text, &item_at)?);
            }
        }

        Ok(Tenant {
            name,
            domains: domains.into_iter().map(|(d, _)| d).collect(),
            api_key,
            api,
            lead_recipients,
            lead_tool,
            stream_format,
            redact_run_objects: false,
        })
    }

    /// The tenant's upstream API: `api` if set, else inferred from which of `assistant_id` /
    /// `model` is present; then the settings that API takes.
    fn upstream_api(
        &self,
        raw: &RawTenant,
        table: &At,
        name: &str,
        lead_tool: &str,
    ) -> Result<UpstreamApi, ConfigError> {
        let key = |field: &str| format!("{}.{field}", table.key);
        let choice = match &raw.api {
            Some(field) => {
                let api_at = self.located(key("api"), field);
                let kind = check::api_kind(
                    &self.string(field, &api_at, "api = \"responses\"")?,
                    &api_at,
                )?;
                let (wanted, unwanted, example) = match kind {
                    ApiKind::Assistants => (
                        (&raw.assistant_id, "assistant_id"),
                        (&raw.model, "model"),
                        "assistant_id = \"asst_...\" (copy it from the OpenAI dashboard)",
                    ),
                    ApiKind::Responses => (
                        (&raw.model, "model"),
                        (&raw.assistant_id, "assistant_id"),
                        "model = \"gpt-5.4\"",
                    ),
                };
                let (api, other_api) = match kind {
                    ApiKind::Assistants => ("assistants", "responses"),
                    ApiKind::Responses => ("responses", "assistants"),
                };
                if let (Some(field), unwanted_key) = unwanted {
                    return Err(self.located(key(unwanted_key), field).err(format!(
                        "is set, but api = \"{api}\" does not use it: remove it, or write \
                         api = \"{other_api}\""
                    )));
                }
                match wanted {
                    (Some(field), _) => (kind, field),
                    (None, wanted_key) => {
                        let at = At {
                            key: key(wanted_key),
                            line: api_at.line,
                        };
                        return Err(at.err(format!("is missing: api = \"{api}\" needs {example}")));
                    }
                }
            }
            None => {
                // `tenants[1] (acme)`, unless the name looks like a secret.
                let label = if check::shown(name).starts_with('"') {
                    format!("{} ({name})", table.key)
                } else {
                    table.key.clone()
                };
                match (&raw.assistant_id, &raw.model) {
                    (Some(field), None) => (ApiKind::Assistants, field),
                    (None, Some(field)) => (ApiKind::Responses, field),
                    (Some(assistant), Some(model)) => {
                        let later = if assistant.span().start > model.span().start {
                            assistant
                        } else {
                            model
                        };
                        return Err(self.located(label, later).err(
                            "set either assistant_id (Assistants API) or model (Responses API), \
                             not both",
                        ));
                    }
                    (None, None) => {
                        let at = At {
                            key: label,
                            line: table.line,
                        };
                        return Err(at.err(
                            "set either assistant_id (Assistants API) or model (Responses API): \
                             add assistant_id = \"asst_...\" or model = \"gpt-5.4\"",
                        ));
                    }
                }
            }
        };

        match choice {
            (ApiKind::Assistants, field) => {
                const ELSEWHERE: &str = "is only for the Responses API: with the Assistants API \
                     the instructions and tools live in the assistant on OpenAI's side; set them \
                     there and remove this key, or replace assistant_id with model";
                for (extra, extra_key) in [
                    (&raw.instructions, "instructions"),
                    (&raw.instructions_file, "instructions_file"),
                ] {
                    if let Some(extra) = extra {
                        return Err(self.located(key(extra_key), extra).err(ELSEWHERE));
                    }
                }
                if let Some(tools) = &raw.tools {
                    return Err(self.at(key("tools"), &tools.span()).err(ELSEWHERE));
                }
                let at = self.located(key("assistant_id"), field);
                let text = self.string(field, &at, "assistant_id = \"asst_...\"")?;
                Ok(UpstreamApi::Assistants {
                    assistant_id: check::assistant_id(&text, &at)?,
                })
            }
            (ApiKind::Responses, field) => {
                let at = self.located(key("model"), field);
                let model = check::model(&self.string(field, &at, "model = \"gpt-5.4\"")?, &at)?;
                let instructions = match (&raw.instructions, &raw.instructions_file) {
                    (Some(_), Some(file)) => {
                        return Err(self.located(key("instructions_file"), file).err(format!(
                            "and {} are both set: keep one (the text itself, or the file \
                             holding it)",
                            key("instructions")
                        )))
                    }
                    (Some(field), None) => {
                        let at = self.located(key("instructions"), field);
                        let text = self.string(field, &at, "instructions = \"You are ...\"")?;
                        Some(check::instructions(&text, "the text", &at)?)
                    }
                    (None, Some(field)) => {
                        let at = self.located(key("instructions_file"), field);
                        Some(self.instructions_file(field, &at)?)
                    }
                    (None, None) => None,
                };
                let tools = match &raw.tools {
                    Some(field) => self.tools(field, &key("tools"), lead_tool)?,
                    None => Vec::new(),
                };
                Ok(UpstreamApi::Responses {
                    model,
                    instructions,
                    tools,
                })
            }
        }
    }

    /// The instructions in the file named by `field`, relative to the configuration's directory.
    fn instructions_file(&self, field: &Spanned<Value>, at: &At) -> Result<String, ConfigError> {
        let name = self.string(field, at, "instructions_file = \"acme-instructions.txt\"")?;
        let name = name.trim();
        if name.is_empty() {
            return Err(at.err(
                "is empty: write the path of a UTF-8 text file holding the instructions, \
                 relative to this file's directory",
            ));
        }
        let path = self.base_dir.join(name);
        let place = if Path::new(name).is_absolute() {
            String::new()
        } else if self.base_dir.as_os_str().is_empty() {
            " (relative paths start from the working directory)".to_string()
        } else {
            format!(
                " (relative paths start from {}, the directory of this file)",
                self.base_dir.display()
            )
        };
        let bytes = std::fs::read(&path).map_err(|e| {
            at.err(format!(
                "cannot read {}{place}: {e}; check the path and the file's permissions",
                check::shown(name)
            ))
        })?;
        let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
        let Ok(text) = std::str::from_utf8(bytes) else {
            return Err(at.err(format!(
                "{}{place} is not UTF-8 text: save it as UTF-8",
                check::shown(name)
            )));
        };
        check::instructions(text, &format!("the file {}", check::shown(name)), at)
    }

    /// `tools`: an array of tables, each passed through as JSON; every entry gets its own
    /// key (`tools[i]`) and line.
    fn tools(
        &self,
        field: &Spanned<serde_json::Value>,
        key: &str,
        lead_tool: &str,
    ) -> Result<Vec<serde_json::Value>, ConfigError> {
        let at = self.at(key, &field.span());
        let serde_json::Value::Array(items) = field.get_ref() else {
            return Err(at.err(format!(
                "must be an array of tables, not {}: write e.g. tools = [{{ type = \
                 \"file_search\", vector_store_ids = [\"vs_...\"] }}]",
                toml_kind(field.get_ref())
            )));
        };
        let spans = element_spans(self.text, &field.span());
        for (i, item) in items.iter().enumerate() {
            let item_at = match spans.as_ref().and_then(|s| s.get(i)) {
                Some(span) => self.at(format!("{key}[{i}]"), span),
                None => at.index(i),
            };
            if has_datetime(item) {
                return Err(item_at.err(
                    "contains a date or time: tool definitions take strings, numbers, booleans, \
                     arrays and tables only; write the date as a string in double quotes",
                ));
            }
            check::tool(item, lead_tool, &item_at)?;
        }
        Ok(items.clone())
    }

    /// Exactly one of `api_key` / `api_key_env`; the variable must be set.
    fn api_key(&self, raw: &RawTenant, table: &At, name: &str) -> Result<Secret, ConfigError> {
        match (&raw.api_key, &raw.api_key_env) {
            (Some(_), Some(env_field)) => Err(self
                .located(format!("{}.api_key_env", table.key), env_field)
                .err(format!(
                    "and {}.api_key are both set: keep exactly one (api_key_env is preferred: \
                     it keeps the key out of this file)",
                    table.key
                ))),
            (None, None) => Err(table.field("api_key").err(
                "is missing: add api_key_env = \"ACME_OPENAI_KEY\" (an environment variable \
                 holding the OpenAI key) or api_key = \"sk-...\"",
            )),
            (Some(field), None) => {
                let at = self.located(format!("{}.api_key", table.key), field);
                let key = self.string(field, &at, "api_key = \"sk-...\"")?;
                check::api_key(&key, "the API key", &at)
            }
            (None, Some(field)) => {
                let at = self.located(format!("{}.api_key_env", table.key), field);
                let var = self.string(field, &at, "api_key_env = \"ACME_OPENAI_KEY\"")?;
                let var = check::env_var_name(&var, &at)?;
                let purpose = format!("the OpenAI API key of tenant {}", check::shown(name));
                let key = check::env_value(self.env, &var, &purpose, &at)?;
                check::api_key(&key, &format!("the API key in {var}"), &at)
            }
        }
    }
}

/// "a string", "an integer", ... for messages.
fn article(type_name: &str) -> String {
    match type_name.chars().next() {
        Some('a' | 'e' | 'i' | 'o' | 'u') => format!("an {type_name}"),
        _ => format!("a {type_name}"),
    }
}

fn last_segment(key: &str) -> &str {
    key.rsplit('.').next().unwrap_or(key)
}

/// Whether a value converted from TOML holds a date-time anywhere.
fn has_datetime(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::Object(map) => {
            map.contains_key(TOML_DATETIME_KEY) || map.values().any(has_datetime)
        }
        serde_json::Value::Array(items) => items.iter().any(has_datetime),
        _ => false,
    }
}

/// "a string", "a date-time", ... for a value converted from TOML.
fn toml_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Object(map) if map.contains_key(TOML_DATETIME_KEY) => "a date-time",
        serde_json::Value::Object(_) => "a table",
        other => check::json_kind(other),
    }
}

/// The spans of the elements of the array written at `span`, found by parsing that slice
/// again on its own (a `Value` keeps no positions for its elements). An array of tables
/// (`[[tenants.tools]]` headers) gets one span per header.
fn element_spans(text: &str, span: &Range<usize>) -> Option<Vec<Range<usize>>> {
    #[derive(Deserialize)]
    struct Wrapper {
        x: Vec<Spanned<Value>>,
    }
    let slice = text.get(span.clone())?;
    if slice.starts_with("[[") {
        return table_array_spans(slice, span.start);
    }
    let prefix = "x = ";
    let wrapper: Wrapper = toml::from_str(&format!("{prefix}{slice}")).ok()?;
    let shift = span.start;
    Some(
        wrapper
            .x
            .iter()
            .map(|item| {
                let s = item.span();
                (s.start - prefix.len() + shift)..(s.end - prefix.len() + shift)
            })
            .collect(),
    )
}

/// The spans of the tables of an array of tables written as `[[a.b]]` sections: each runs
/// from one header written like the first to the next. `shift` is where `slice` starts.
fn table_array_spans(slice: &str, shift: usize) -> Option<Vec<Range<usize>>> {
    let header_of = |line: &str| line.split('#').next().unwrap_or("").trim().to_string();
    let first = header_of(slice.split('\n').next()?);
    let mut starts = Vec::new();
    let mut offset = 0;
    for line in slice.split_inclusive('\n') {
        if header_of(line) == first {
            starts.push(offset);
        }
        offset += line.len();
    }
    let ends = starts.iter().skip(1).copied().chain([slice.len()]);
    Some(
        starts
            .iter()
            .zip(ends)
            .map(|(&start, end)| (start + shift)..(end + shift))
            .collect(),
    )
}

/// Turns an error of the TOML parser or deserializer into a `ConfigError` with a line, a key
/// and advice, making sure no secret from the offending line slips into the message.
fn parser_error(text: &str, err: &toml::de::Error) -> ConfigError {
    let span = err.span();
    let line = span.as_ref().map(|s| line_of(text, s.start));
    let key = span.as_ref().and_then(|s| key_path_at(text, s.start));
    let mut message = friendly(err.message());
    if let Some(line) = line {
        if leaks_secret(&message, text.split('\n').nth(line - 1).unwrap_or("")) {
            message = "this line is not valid TOML (the value is not shown because it is a \
                       secret): write it as a string in double quotes, e.g. api_key = \"sk-...\""
                .to_string();
        }
    }
    let error = match key {
        Some(key) => ConfigError::new(key, message),
        None => ConfigError::general(message),
    };
    error.with_line(line)
}

/// Rewords the parser's message and adds what to do.
fn friendly(message: &str) -> String {
    let message = message.trim().replace('\n', "; ");
    if let Some(rest) = message.strip_prefix("unknown field") {
        let rest = rest
            .replacen(
                ", expected one of ",
                ": check the spelling; the keys allowed here are ",
                1,
            )
            .replacen(
                ", expected ",
                ": check the spelling; the keys allowed here are ",
                1,
            )
            .replacen(", there are no fields", ": this table takes no keys", 1);
        return format!("unknown key{rest}");
    }
    if message.starts_with("duplicate key") {
        return format!("{message}: keep only one of them");
    }
    if message.starts_with("invalid type") {
        let message = message
            .replace("expected struct RawTenant", "expected a [[tenants]] table")
            .replace(
                "expected a sequence",
                "expected an array (write tenants as [[tenants]] tables)",
            );
        let message = match message.find("expected struct Raw") {
            Some(pos) => format!("{}expected a table such as [server]", &message[..pos]),
            None => message,
        };
        return format!("{message}; see conf/chatbot-proxy.toml for the expected layout");
    }
    format!(
        "{message}: fix the TOML syntax here (strings need double quotes, e.g. key = \"value\")"
    )
}

/// Whether `message` could reveal the value of a secret on `line`.
fn leaks_secret(message: &str, line: &str) -> bool {
    if message.to_ascii_lowercase().contains("sk-") {
        return true;
    }
    let Some((key, value)) = line.split_once('=') else {
        return false;
    };
    let key = key.trim().trim_matches(['"', '\'']);
    if !SECRET_KEYS.contains(&last_segment(key)) {
        return false;
    }
    let value: Vec<char> = value.trim().trim_matches(['"', '\'']).chars().collect();
    value.len() >= 4
        && value
            .windows(4)
            .any(|w| message.contains(&w.iter().collect::<String>()))
}

/// The dotted key for a position: the enclosing table header (`[server]`, or `tenants[N]` for
/// the N-th `[[tenants]]`) and the key assigned on that line or the closest one above it.
fn key_path_at(text: &str, offset: usize) -> Option<String> {
    let target = line_of(text, offset);
    let mut table = String::new();
    let mut key: Option<String> = None;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for line in text.split('\n').take(target) {
        let code = line.split('#').next().unwrap_or("").trim();
        if let Some(name) = code.strip_prefix("[[").and_then(|r| r.strip_suffix("]]")) {
            let name = name.trim().to_string();
            let count = counts.entry(name.clone()).or_insert(0);
            table = format!("{name}[{count}]");
            *count += 1;
            key = None;
        } else if let Some(name) = code.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            if is_key_text(name) {
                table = name.trim().to_string();
                key = None;
            }
        } else if let Some((left, _)) = code.split_once('=') {
            if is_key_text(left) {
                key = Some(left.trim().replace(['"', '\''], ""));
            }
        }
    }
    match (table.is_empty(), key) {
        (true, None) => None,
        (true, Some(key)) => Some(key),
        (false, None) => Some(table),
        (false, Some(key)) => Some(format!("{table}.{key}")),
    }
}

fn is_key_text(text: &str) -> bool {
    let text = text.trim();
    !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.\"' ".contains(c))
}

#[cfg(test)]
mod tests {
    use super::super::types::SmtpTls;
    use super::*;

    const FILE: &str = "chatbot-proxy.toml";

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const MINIMAL: &str = r#"
[[tenants]]
domains = ["acme.com"]
api_key = "sk-minimal-0000"
assistant_id = "asst_minimal"
"#;

    fn load(text: &str) -> Result<Config, ConfigError> {
        from_toml_str(text, FILE, &env(&[("ACME_OPENAI_KEY", "sk-from-env-1234")]))
    }

    fn load_err(text: &str) -> String {
        load(text)
            .expect_err("configuration should be refused")
            .to_string()
    }

    #[test]
    fn defaults_fill_everything_but_the_tenant() {
        let config = load(MINIMAL).unwrap();
        assert_eq!(
            config.server,
            ServerSettings {
                listen: "0.0.0.0:3000".into(),
                prefix: "/open-ai".into(),
                threads: 2,
                grace_period_seconds: 0,
                drain_timeout_seconds: 25,
                upgrade_sock: "/tmp/chatbot-proxy-upgrade.sock".into(),
                timeouts: Default::default(),
            }
        );
        let up = &config.upstream;
        assert_eq!(up.base_url, "https://api.openai.com/v1");
        assert!(up.tls);
        assert_eq!(
            (up.host.as_str(), up.port, up.base_path.as_str()),
            ("api.openai.com", 443, "/v1")
        );
        assert_eq!(up.connect_timeout, Duration::from_millis(5000));
        assert_eq!(up.first_byte_timeout, Duration::from_millis(60000));
        assert_eq!(up.idle_timeout, Duration::from_millis(60000));
        assert_eq!(up.pool_idle_timeout, Duration::from_millis(90000));
        assert_eq!(config.limits.max_body_bytes, 32768);
        assert_eq!(config.limits.max_message_chars, 4000);
        assert!(config.smtp.is_none());
        let tenant = &config.tenants[0];
        assert_eq!(tenant.name, "acme.com", "name defaults to the first domain");
        assert_eq!(tenant.api_key.expose(), "sk-minimal-0000");
        assert!(tenant.lead_recipients.is_empty());
        assert_eq!(
            tenant.api,
            UpstreamApi::Assistants {
                assistant_id: "asst_minimal".into()
            },
            "assistant_id alone selects the Assistants API"
        );
        assert_eq!(tenant.lead_tool, "sendEmail");
        assert_eq!(tenant.stream_format, StreamFormat::OpenAi);
        assert_eq!(config.leads, LeadSettings::default());
    }

    #[test]
    fn example_file_parses_with_its_env_vars() {
        let text = include_str!("../../conf/chatbot-proxy.toml");
        let vars = env(&[
            ("ACME_OPENAI_KEY", "sk-acme-example"),
            ("BISTRO_OPENAI_KEY", "sk-bistro-example"),
            ("SMTP_PASS", "smtp-example-pass"),
        ]);
        let config = from_toml_str(text, "conf/chatbot-proxy.toml", &vars).unwrap();
        assert_eq!(config.tenants.len(), 3);
        let [acme, widgets, bistro] = &config.tenants[..] else {
            unreachable!()
        };
        assert_eq!(acme.name, "acme");
        assert_eq!(acme.domains, ["acme.com", "*.acme.com"]);
        assert_eq!(acme.api_key.expose(), "sk-acme-example");
        assert_eq!(
            acme.api,
            UpstreamApi::Assistants {
                assistant_id: "asst_acme0123456789".into()
            }
        );
        assert_eq!(widgets.lead_recipients.len(), 2);
        assert_eq!(widgets.stream_format, StreamFormat::WidgetV1);
        assert!(matches!(widgets.api, UpstreamApi::Assistants { .. }));
        assert_eq!(bistro.api_key.expose(), "sk-bistro-example");
        let UpstreamApi::Responses {
            model,
            instructions,
            tools,
        } = &bistro.api
        else {
            panic!("bistro uses the Responses API: {:?}", bistro.api)
        };
        assert_eq!(model, "gpt-5.4");
        let instructions = instructions.as_deref().unwrap();
        assert!(instructions.starts_with("You are the friendly assistant"));
        assert!(
            instructions.ends_with("with them."),
            "trimmed: {instructions:?}"
        );
        assert_eq!(
            tools,
            &[
                serde_json::json!({"type": "file_search", "vector_store_ids": ["vs_bistro0123456789"]})
            ]
        );
        for tenant in &config.tenants {
            assert_eq!(tenant.lead_tool, "sendEmail");
        }
        let smtp = config.smtp.expect("the example configures SMTP");
        assert_eq!(smtp.password.unwrap().expose(), "smtp-example-pass");
        assert_eq!(smtp.tls, SmtpTls::Opportunistic);
        assert_eq!(smtp.from, "AI Bot <bot@example.com>");
        assert_eq!(smtp.timeout, Duration::from_secs(10));
        assert_eq!(config.leads, LeadSettings::default());
        assert_eq!(config.server.prefix, "/open-ai");
        assert_eq!(
            config.server,
            ServerSettings::default(),
            "the example shows the defaults"
        );
        assert_eq!(config.metrics_listen, None, "commented out in the example");

        let with_metrics = text.replace("# metrics_listen = ", "metrics_listen = ");
        let config = from_toml_str(&with_metrics, "conf/chatbot-proxy.toml", &vars).unwrap();
        assert_eq!(config.metrics_listen.as_deref(), Some("127.0.0.1:9090"));
    }

    #[test]
    fn example_file_without_its_env_vars_names_the_missing_variable() {
        let text = include_str!("../../conf/chatbot-proxy.toml");
        let err = from_toml_str(text, "conf/chatbot-proxy.toml", &env(&[("SMTP_PASS", "x")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("ACME_OPENAI_KEY"), "{err}");
        assert!(err.contains("api_key_env"), "{err}");
    }

    #[test]
    fn every_section_is_read() {
        let text = r#"
[server]
listen = "127.0.0.1:8080"
prefix = "/chat/"
threads = 4
grace_period_seconds = 0
graceful_shutdown_timeout_seconds = 20

[upstream]
base_url = "http://127.0.0.1:8090/v1"
connect_timeout_ms = 100
first_byte_timeout_ms = 200
idle_timeout_ms = 300
pool_idle_timeout_ms = 400

[limits]
max_body_bytes = 1024
max_message_chars = 100

[smtp]
host = "smtp.example.com"

[[tenants]]
name = "acme"
domains = [" ACME.com ", "*.acme.com"]
api_key_env = "ACME_OPENAI_KEY"
assistant_id = "asst_acme"
lead_recipients = ["sales@acme.com"]
"#;
        let config = load(text).unwrap();
        assert_eq!(config.server.listen, "127.0.0.1:8080");
        assert_eq!(config.server.prefix, "/chat");
        assert_eq!(config.server.threads, 4);
        assert_eq!(config.server.grace_period_seconds, 0);
        assert_eq!(config.server.drain_timeout_seconds, 20);
        assert!(!config.upstream.tls);
        assert_eq!(config.upstream.port, 8090);
        assert_eq!(
            config.upstream.pool_idle_timeout,
            Duration::from_millis(400)
        );
        assert_eq!(config.limits.max_body_bytes, 1024);
        assert_eq!(config.limits.max_message_chars, 100);
        let smtp = config.smtp.unwrap();
        assert_eq!((smtp.port, smtp.user, smtp.password), (587, None, None));
        assert_eq!(config.tenants[0].domains, ["acme.com", "*.acme.com"]);
        assert_eq!(config.tenants[0].api_key.expose(), "sk-from-env-1234");
    }

    #[test]
    fn prefix_slash_alone_means_no_prefix() {
        let config = load(&format!("[server]\nprefix = \"/\"\n{MINIMAL}")).unwrap();
        assert_eq!(config.server.prefix, "");
    }

    #[test]
    fn bad_prefix_is_reported_with_key_and_line() {
        let err = load_err(&format!("[server]\nprefix = \"open-ai\"\n{MINIMAL}"));
        assert!(
            err.starts_with("chatbot-proxy.toml line 2: server.prefix:"),
            "{err}"
        );
        assert!(err.contains("must start with '/'"), "{err}");
        let err = load_err(&format!("[server]\nprefix = \"/a b\"\n{MINIMAL}"));
        assert!(err.contains("server.prefix"), "{err}");
    }

    #[test]
    fn bad_listen_is_reported_with_key_and_line() {
        let err = load_err(&format!("[server]\nlisten = \"0.0.0.0:99999\"\n{MINIMAL}"));
        assert!(
            err.starts_with("chatbot-proxy.toml line 2: server.listen:"),
            "{err}"
        );
        assert!(err.contains("1 to 65535"), "{err}");
    }

    #[test]
    fn metrics_listen_is_optional_and_read_from_the_server_table() {
        assert_eq!(load(MINIMAL).unwrap().metrics_listen, None);
        let config = load(&format!(
            "[server]\nlisten = \"0.0.0.0:3000\"\nmetrics_listen = \" 127.0.0.1:9090 \"\n{MINIMAL}"
        ))
        .unwrap();
        assert_eq!(config.metrics_listen.as_deref(), Some("127.0.0.1:9090"));
        assert_eq!(config.server.listen, "0.0.0.0:3000");
        let config = load(&format!(
            "[server]\nmetrics_listen = \"[::1]:9090\"\n{MINIMAL}"
        ))
        .unwrap();
        assert_eq!(config.metrics_listen.as_deref(), Some("[::1]:9090"));
    }

    #[test]
    fn bad_metrics_listen_is_reported_with_key_and_line() {
        let err = load_err(&format!(
            "[server]\nthreads = 2\nmetrics_listen = \"9090\"\n{MINIMAL}"
        ));
        assert!(
            err.starts_with(
                "chatbot-proxy.toml line 3: server.metrics_listen: \"9090\" is only a port"
            ),
            "{err}"
        );
        let err = load_err(&format!("[server]\nmetrics_listen = 9090\n{MINIMAL}"));
        assert!(
            err.starts_with("chatbot-proxy.toml line 2: server.metrics_listen: must be a string"),
            "{err}"
        );
        assert!(err.contains("metrics_listen = \"127.0.0.1:9090\""), "{err}");
        let err = load_err(&format!(
            "[server]\nmetrics_listen = \"localhost:9090\"\n{MINIMAL}"
        ));
        assert!(err.contains("the host must be an IP address"), "{err}");
    }

    #[test]
    fn metrics_listen_must_not_take_the_proxy_port() {
        let err = load_err(&format!(
            "[server]\nlisten = \"0.0.0.0:8080\"\nmetrics_listen = \"127.0.0.1:8080\"\n{MINIMAL}"
        ));
        assert!(
            err.starts_with("chatbot-proxy.toml line 3: server.metrics_listen: \"127.0.0.1:8080\""),
            "{err}"
        );
        assert!(err.contains("port of its own"), "{err}");
        assert!(
            err.contains("server.listen = \"0.0.0.0:8080\", line 2"),
            "{err}"
        );
        let err = load_err(&format!(
            "[server]\nmetrics_listen = \"127.0.0.1:3000\"\n{MINIMAL}"
        ));
        assert!(
            err.contains("server.listen defaults to \"0.0.0.0:3000\""),
            "{err}"
        );
        let config = load(&format!(
            "[server]\nlisten = \"127.0.0.1:8080\"\nmetrics_listen = \"10.0.0.1:8080\"\n{MINIMAL}"
        ))
        .unwrap();
        assert_eq!(config.metrics_listen.as_deref(), Some("10.0.0.1:8080"));
    }

    #[test]
    fn drain_timeout_its_older_name_and_the_upgrade_socket() {
        let config = load(&format!(
            "[server]\ndrain_timeout_seconds = 7\nupgrade_sock = \"/run/cp/up.sock\"\n{MINIMAL}"
        ))
        .unwrap();
        assert_eq!(config.server.drain_timeout_seconds, 7);
        assert_eq!(config.server.upgrade_sock, "/run/cp/up.sock");
        let config = load(&format!(
            "[server]\ngraceful_shutdown_timeout_seconds = 9\n{MINIMAL}"
        ))
        .unwrap();
        assert_eq!(config.server.drain_timeout_seconds, 9);
        let err = load_err(&format!(
            "[server]\ndrain_timeout_seconds = 7\ngraceful_shutdown_timeout_seconds = 9\n{MINIMAL}"
        ));
        assert!(
            err.contains("server.graceful_shutdown_timeout_seconds")
                && err.contains("keep only drain_timeout_seconds"),
            "{err}"
        );
        let err = load_err(&format!("[server]\ndrain_timeout_seconds = 0\n{MINIMAL}"));
        assert!(err.contains("server.drain_timeout_seconds"), "{err}");
        let long = format!("/tmp/{}.sock", "x".repeat(120));
        let err = load_err(&format!("[server]\nupgrade_sock = {long:?}\n{MINIMAL}"));
        assert!(err.contains("server.upgrade_sock"), "{err}");
        assert!(err.contains("Unix socket path"), "{err}");
        let err = load_err(&format!("[server]\nupgrade_sock = \" \"\n{MINIMAL}"));
        assert!(err.contains("server.upgrade_sock"), "{err}");
    }

    #[test]
    fn bad_base_url_is_reported_with_key_and_line() {
        let err = load_err(&format!(
            "{MINIMAL}\n[upstream]\nbase_url = \"ftp://example.com\"\n"
        ));
        assert!(
            err.starts_with("chatbot-proxy.toml line 8: upstream.base_url:"),
            "{err}"
        );
        assert!(err.contains("http and https"), "{err}");
    }

    #[test]
    fn zero_timeout_and_huge_body_limit_are_refused() {
        let err = load_err(&format!("[upstream]\nidle_timeout_ms = 0\n{MINIMAL}"));
        assert!(
            err.starts_with("chatbot-proxy.toml line 2: upstream.idle_timeout_ms:"),
            "{err}"
        );
        let err = load_err(&format!("[limits]\nmax_body_bytes = 20000000\n{MINIMAL}"));
        assert!(err.contains("limits.max_body_bytes"), "{err}");
        assert!(err.contains("10485760"), "{err}");
        let err = load_err(&format!("[limits]\nmax_message_chars = 0\n{MINIMAL}"));
        assert!(err.contains("limits.max_message_chars"), "{err}");
        let err = load_err(&format!("[server]\nthreads = 0\n{MINIMAL}"));
        assert!(err.contains("server.threads"), "{err}");
        let err = load_err(&format!(
            "[server]\ngraceful_shutdown_timeout_seconds = 0\n{MINIMAL}"
        ));
        assert!(
            err.contains("server.graceful_shutdown_timeout_seconds"),
            "{err}"
        );
    }

    #[test]
    fn wrong_types_name_the_key_and_line() {
        let err = load_err(&format!("[server]\nthreads = \"4\"\n{MINIMAL}"));
        assert!(
            err.starts_with("chatbot-proxy.toml line 2: server.threads:"),
            "{err}"
        );
        assert!(err.contains("whole number"), "{err}");
        let err = load_err(
            "[[tenants]]\ndomains = \"acme.com\"\napi_key = \"sk-x1\"\nassistant_id = \"asst_a\"\n",
        );
        assert!(
            err.starts_with("chatbot-proxy.toml line 2: tenants[0].domains:"),
            "{err}"
        );
        assert!(err.contains("array of strings"), "{err}");
    }

    #[test]
    fn unknown_key_is_reported_with_its_line_and_table() {
        let text = format!("{MINIMAL}\n[upstream]\nbase_ur = \"https://x.example\"\n");
        let err = load(&text).unwrap_err();
        assert_eq!(err.line(), Some(8));
        assert_eq!(err.key(), Some("upstream.base_ur"));
        let shown = err.to_string();
        assert!(shown.contains("unknown key `base_ur`"), "{shown}");
        assert!(shown.contains("base_url"), "{shown}");

        let err = load_err("[[tenants]]\ndomains = [\"a.com\"]\napi_kye = \"sk-typo-secret\"\n");
        assert!(
            err.starts_with("chatbot-proxy.toml line 3: tenants[0].api_kye: unknown key"),
            "{err}"
        );
        assert!(!err.contains("sk-typo-secret"), "{err}");

        let err = load_err(&format!("[sever]\nthreads = 2\n{MINIMAL}"));
        assert!(
            err.starts_with("chatbot-proxy.toml line 1: sever: unknown key"),
            "{err}"
        );
    }

    #[test]
    fn syntax_error_has_its_line() {
        let err = load(&format!("{MINIMAL}\n[server]\nlisten = 0.0.0.0:3000\n")).unwrap_err();
        assert_eq!(err.line(), Some(8), "{err}");
        assert_eq!(err.key(), Some("server.listen"), "{err}");
        assert!(err.to_string().contains("double quotes"), "{err}");
    }

    #[test]
    fn tenants_are_required() {
        let err = load_err("[server]\nthreads = 2\n");
        assert!(err.contains("tenants: no tenant is configured"), "{err}");
        assert!(err.contains("[[tenants]]"), "{err}");
        let err = load_err("tenants = []\n");
        assert!(
            err.starts_with("chatbot-proxy.toml line 1: tenants: is empty"),
            "{err}"
        );
    }

    /// One tenant whose `domains` line (line 2) is `list`.
    fn with_domains(list: &str) -> String {
        format!("[[tenants]]\ndomains = {list}\napi_key = \"sk-a1\"\nassistant_id = \"asst_a\"\n")
    }

    #[test]
    fn tenant_domains_rules() {
        let err = load_err("[[tenants]]\napi_key = \"sk-a1\"\nassistant_id = \"asst_a\"\n");
        assert!(
            err.starts_with("chatbot-proxy.toml line 1: tenants[0].domains: is missing"),
            "{err}"
        );
        let err = load_err(&with_domains("[]"));
        assert!(
            err.starts_with("chatbot-proxy.toml line 2: tenants[0].domains: is empty"),
            "{err}"
        );
        let err = load_err(&with_domains("[\n  \"a.com\",\n  \"https://b.com\",\n]"));
        assert!(
            err.starts_with("chatbot-proxy.toml line 4: tenants[0].domains[1]:"),
            "{err}"
        );
        assert!(err.contains("bare host name"), "{err}");
        let err = load_err(&with_domains(r#"["a.com", ""]"#));
        assert!(err.contains("tenants[0].domains[1]: is empty"), "{err}");
        let err = load_err(&with_domains(r#"["a.com", 5]"#));
        assert!(
            err.contains("tenants[0].domains[1]: must be a string"),
            "{err}"
        );
        let err = load_err(&with_domains(r#"["a.com:8080"]"#));
        assert!(err.contains("tenants[0].domains[0]"), "{err}");
        let err = load_err(&with_domains(r#"["a.com b.com"]"#));
        assert!(err.contains("whitespace"), "{err}");
        let err = load_err(&with_domains(r#"["a.com", "A.com "]"#));
        assert!(err.contains("listed twice in the same tenant"), "{err}");
        let config = load(&with_domains(r#"[" Shop.A.com ", "*.a.com"]"#)).unwrap();
        assert_eq!(config.tenants[0].domains, ["shop.a.com", "*.a.com"]);
    }

    #[test]
    fn a_domain_in_two_tenants_names_both() {
        let text = r#"
[[tenants]]
name = "acme"
domains = ["acme.com", "shop.acme.com"]
api_key = "sk-a1"
assistant_id = "asst_a"

[[tenants]]
name = "shop"
domains = ["SHOP.acme.com"]
api_key = "sk-b1"
assistant_id = "asst_b"
"#;
        let err = load_err(text);
        assert!(
            err.starts_with("chatbot-proxy.toml line 10: tenants[1].domains[0]:"),
            "{err}"
        );
        assert!(err.contains("\"acme\""), "{err}");
        assert!(err.contains("\"shop\""), "{err}");
        assert!(err.contains("tenants[0].domains[1], line 4"), "{err}");
    }

    #[test]
    fn duplicate_tenant_names_are_refused() {
        let text = "[[tenants]]\nname = \"x\"\ndomains = [\"a.com\"]\napi_key = \"sk-a1\"\nassistant_id = \"asst_a\"\n\
                    [[tenants]]\nname = \"x\"\ndomains = [\"b.com\"]\napi_key = \"sk-b1\"\nassistant_id = \"asst_b\"\n";
        let err = load_err(text);
        assert!(
            err.starts_with("chatbot-proxy.toml line 7: tenants[1].name:"),
            "{err}"
        );
        assert!(err.contains("tenants[0]"), "{err}");
    }

    #[test]
    fn api_key_needs_exactly_one_source() {
        let err = load_err("[[tenants]]\ndomains = [\"a.com\"]\nassistant_id = \"asst_a\"\n");
        assert!(err.contains("tenants[0].api_key: is missing"), "{err}");
        assert!(err.contains("api_key_env"), "{err}");
        let err = load_err(
            "[[tenants]]\ndomains = [\"a.com\"]\napi_key = \"sk-both-secret\"\napi_key_env = \"ACME_OPENAI_KEY\"\nassistant_id = \"asst_a\"\n",
        );
        assert!(err.starts_with("chatbot-proxy.toml line 4: tenants[0].api_key_env: and tenants[0].api_key are both set"), "{err}");
        assert!(!err.contains("sk-both-secret"), "{err}");
    }

    #[test]
    fn api_key_env_is_resolved_and_must_be_set() {
        let text = "[[tenants]]\ndomains = [\"a.com\"]\napi_key_env = \"SHOP_KEY\"\nassistant_id = \"asst_a\"\n";
        let config = from_toml_str(text, FILE, &env(&[("SHOP_KEY", " sk-shop-9876\n")])).unwrap();
        assert_eq!(config.tenants[0].api_key.expose(), "sk-shop-9876");

        let err = from_toml_str(text, FILE, &env(&[])).unwrap_err();
        assert_eq!(err.key(), Some("tenants[0].api_key_env"));
        assert_eq!(err.line(), Some(3));
        assert!(
            err.to_string()
                .contains("environment variable SHOP_KEY is not set"),
            "{err}"
        );

        let err = from_toml_str(text, FILE, &env(&[("SHOP_KEY", "  ")])).unwrap_err();
        assert!(err.to_string().contains("SHOP_KEY is empty"), "{err}");
    }

    #[test]
    fn assistant_id_rules() {
        let err = load_err("[[tenants]]\ndomains = [\"a.com\"]\napi_key = \"sk-a1\"\n");
        assert_eq!(
            err,
            "chatbot-proxy.toml line 1: tenants[0] (a.com): set either assistant_id (Assistants \
             API) or model (Responses API): add assistant_id = \"asst_...\" or model = \"gpt-5.4\""
        );
        let err = load_err(
            "[[tenants]]\ndomains = [\"a.com\"]\napi_key = \"sk-a1\"\napi = \"assistants\"\n",
        );
        assert!(
            err.starts_with("chatbot-proxy.toml line 4: tenants[0].assistant_id: is missing"),
            "{err}"
        );
        let err = load_err(
            "[[tenants]]\ndomains = [\"a.com\"]\napi_key = \"sk-a1\"\nassistant_id = \"\"\n",
        );
        assert!(
            err.starts_with("chatbot-proxy.toml line 4: tenants[0].assistant_id: is empty"),
            "{err}"
        );
        let two = format!("{MINIMAL}\n[[tenants]]\ndomains = [\"b.com\"]\napi_key = \"sk-b1\"\nassistant_id = \"thread_b\"\n");
        let err = load_err(&two);
        assert!(
            err.starts_with("chatbot-proxy.toml line 10: tenants[1].assistant_id:"),
            "{err}"
        );
        assert!(err.contains("\"asst_\""), "{err}");
    }

    #[test]
    fn lead_recipients_rules() {
        let text = |list: &str| {
            format!("[[tenants]]\ndomains = [\"a.com\"]\napi_key = \"sk-a1\"\nassistant_id = \"asst_a\"\nlead_recipients = {list}\n")
        };
        let config = load(&text("[\" sales@a.com \", \"ops@a.com\"]")).unwrap();
        assert_eq!(
            config.tenants[0].lead_recipients,
            ["sales@a.com", "ops@a.com"]
        );
        let err = load_err(&text("[\"sales@a.com\", \"nobody\"]"));
        assert!(
            err.starts_with("chatbot-proxy.toml line 5: tenants[0].lead_recipients[1]:"),
            "{err}"
        );
        let err = load_err(&text("[\"a@a.com, b@a.com\"]"));
        assert!(err.contains("one e-mail address"), "{err}");
    }

    #[test]
    fn smtp_rules() {
        let with = |smtp: &str| format!("{MINIMAL}\n[smtp]\n{smtp}");
        let err = load_err(&with("port = 25\n"));
        assert!(
            err.starts_with("chatbot-proxy.toml line 7: smtp.host: is missing"),
            "{err}"
        );
        let err = load_err(&with("host = \"mail.x\"\nport = 0\n"));
        assert!(err.contains("smtp.port"), "{err}");
        let err = load_err(&with("host = \"mail.x\"\nuser = \"bot@x\"\n"));
        assert!(err.contains("smtp.password: is missing"), "{err}");
        let err = load_err(&with(
            "host = \"mail.x\"\nuser = \"bot@x\"\npassword_env = \"MAIL_PW\"\n",
        ));
        assert!(
            err.contains("environment variable MAIL_PW is not set"),
            "{err}"
        );
        let config = from_toml_str(
            &with("host = \"mail.x\"\nport = 465\nuser = \"bot@x\"\npassword_env = \"MAIL_PW\"\n"),
            FILE,
            &env(&[("MAIL_PW", "pw-1")]),
        )
        .unwrap();
        let smtp = config.smtp.unwrap();
        assert_eq!((smtp.port, smtp.user.as_deref()), (465, Some("bot@x")));
        assert_eq!(smtp.password.unwrap().expose(), "pw-1");
    }

    /// One tenant: `[[tenants]]` (line 1), name (2), domains (3), api_key (4), `rest` (5+).
    fn named(rest: &str) -> String {
        format!("[[tenants]]\nname = \"acme\"\ndomains = [\"a.com\"]\napi_key = \"sk-a1\"\n{rest}")
    }

    #[test]
    fn model_alone_selects_the_responses_api() {
        let config = load(&named("model = \"gpt-5.4\"\n")).unwrap();
        assert_eq!(
            config.tenants[0].api,
            UpstreamApi::Responses {
                model: "gpt-5.4".into(),
                instructions: None,
                tools: Vec::new(),
            }
        );
        let config = load(&named("api = \"responses\"\nmodel = \" gpt-4.1-mini \"\n")).unwrap();
        assert!(
            matches!(&config.tenants[0].api, UpstreamApi::Responses { model, .. } if model == "gpt-4.1-mini")
        );
        let config = load(&named("api = \"assistants\"\nassistant_id = \"asst_x\"\n")).unwrap();
        assert_eq!(
            config.tenants[0].api,
            UpstreamApi::Assistants {
                assistant_id: "asst_x".into()
            }
        );
    }

    #[test]
    fn assistant_id_and_model_together_name_the_tenant() {
        let text = format!(
            "{MINIMAL}\n{}",
            named("assistant_id = \"asst_b\"\nmodel = \"gpt-5.4\"\n").replace("a.com", "b.com")
        );
        let err = load(&text).unwrap_err();
        assert_eq!(
            err.to_string(),
            "chatbot-proxy.toml line 12: tenants[1] (acme): set either assistant_id (Assistants \
             API) or model (Responses API), not both"
        );
        assert_eq!(err.key(), Some("tenants[1] (acme)"));
        // The later of the two keys is pointed at, whichever order they are in.
        let err = load(&named("model = \"gpt-5.4\"\nassistant_id = \"asst_b\"\n")).unwrap_err();
        assert_eq!(err.line(), Some(6), "{err}");
        // Neither: the tenant's header line.
        let err = load(&format!(
            "{MINIMAL}\n{}",
            named("").replace("a.com", "b.com")
        ))
        .unwrap_err();
        assert_eq!(err.line(), Some(7), "{err}");
        assert!(
            err.to_string().contains("tenants[1] (acme): set either"),
            "{err}"
        );
    }

    #[test]
    fn explicit_api_needs_its_field_and_refuses_the_other() {
        let err = load_err(&named("api = \"responses\"\nassistant_id = \"asst_a\"\n"));
        assert!(
            err.starts_with(
                "chatbot-proxy.toml line 6: tenants[0].assistant_id: is set, but api = \
                 \"responses\" does not use it"
            ),
            "{err}"
        );
        let err = load_err(&named("api = \"responses\"\n"));
        assert!(
            err.starts_with("chatbot-proxy.toml line 5: tenants[0].model: is missing: api = \"responses\" needs model"),
            "{err}"
        );
        let err = load_err(&named(
            "api = \"assistants\"\nassistant_id = \"asst_a\"\nmodel = \"gpt-5.4\"\n",
        ));
        assert!(
            err.starts_with(
                "chatbot-proxy.toml line 7: tenants[0].model: is set, but api = \"assistants\""
            ),
            "{err}"
        );
        let err = load_err(&named("api = \"chat\"\nmodel = \"gpt-5.4\"\n"));
        assert!(
            err.starts_with("chatbot-proxy.toml line 5: tenants[0].api: \"chat\" is not an API"),
            "{err}"
        );
        let err = load_err(&named("api = 1\nmodel = \"gpt-5.4\"\n"));
        assert!(
            err.starts_with("chatbot-proxy.toml line 5: tenants[0].api: must be a string"),
            "{err}"
        );
    }

    #[test]
    fn model_rules_in_the_file() {
        let err = load_err(&named("model = \"\"\n"));
        assert!(
            err.starts_with("chatbot-proxy.toml line 5: tenants[0].model: is empty"),
            "{err}"
        );
        let err = load_err(&named("model = \"gpt 5\"\n"));
        assert!(
            err.starts_with(
                "chatbot-proxy.toml line 5: tenants[0].model: \"gpt 5\" contains spaces"
            ),
            "{err}"
        );
    }

    #[test]
    fn responses_settings_are_refused_with_the_assistants_api() {
        for (extra, key) in [
            ("instructions = \"Be brief.\"", "instructions"),
            ("instructions_file = \"a.txt\"", "instructions_file"),
            ("tools = [{ type = \"file_search\" }]", "tools"),
        ] {
            let err = load_err(&named(&format!("assistant_id = \"asst_a\"\n{extra}\n")));
            assert!(
                err.starts_with(&format!(
                    "chatbot-proxy.toml line 6: tenants[0].{key}: is only for the Responses API"
                )),
                "{err}"
            );
            assert!(err.contains("OpenAI's side"), "{err}");
        }
    }

    #[test]
    fn instructions_rules() {
        let config = load(&named(
            "model = \"gpt-5.4\"\ninstructions = \"\"\"\n  Be brief.\n\"\"\"\n",
        ))
        .unwrap();
        assert!(
            matches!(&config.tenants[0].api, UpstreamApi::Responses { instructions: Some(text), .. } if text == "Be brief.")
        );
        let err = load_err(&named("model = \"gpt-5.4\"\ninstructions = \"  \"\n"));
        assert!(
            err.starts_with(
                "chatbot-proxy.toml line 6: tenants[0].instructions: the text is empty"
            ),
            "{err}"
        );
        let err = load_err(&named(
            "model = \"gpt-5.4\"\ninstructions = \"Be brief.\"\ninstructions_file = \"a.txt\"\n",
        ));
        assert!(
            err.starts_with(
                "chatbot-proxy.toml line 7: tenants[0].instructions_file: and \
                 tenants[0].instructions are both set"
            ),
            "{err}"
        );
    }

    /// A directory under the system temp dir, removed on drop.
    struct TempDir(std::path::PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            let dir = std::env::temp_dir()
                .join(format!("chatbot-proxy-file-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn instructions_of(config: &Config) -> Option<&str> {
        match &config.tenants[0].api {
            UpstreamApi::Responses { instructions, .. } => instructions.as_deref(),
            UpstreamApi::Assistants { .. } => None,
        }
    }

    #[test]
    fn instructions_file_is_read_relative_to_the_toml_directory() {
        let dir = TempDir::new("instructions");
        std::fs::create_dir_all(dir.0.join("prompts")).unwrap();
        std::fs::write(
            dir.0.join("prompts/acme.txt"),
            "\u{feff}You are the assistant of acme.\nBe brief.\n\n",
        )
        .unwrap();
        let text = named("model = \"gpt-5.4\"\ninstructions_file = \"prompts/acme.txt\"\n");
        let path = dir.0.join("chatbot-proxy.toml");
        std::fs::write(&path, &text).unwrap();

        // Through `load`, as `--config PATH` does: the working directory does not matter.
        let config = super::super::load(Some(&path)).unwrap();
        assert_eq!(
            instructions_of(&config),
            Some("You are the assistant of acme.\nBe brief.")
        );
        // Through `from_toml_str`, with the path as the source name.
        let name = path.display().to_string();
        let config = from_toml_str(&text, &name, &env(&[])).unwrap();
        assert_eq!(
            instructions_of(&config),
            Some("You are the assistant of acme.\nBe brief.")
        );
        // An absolute path is taken as it is.
        let absolute = dir.0.join("prompts/acme.txt");
        let text_abs = named(&format!(
            "model = \"gpt-5.4\"\ninstructions_file = {:?}\n",
            absolute.display().to_string()
        ));
        let config = from_toml_str(&text_abs, FILE, &env(&[])).unwrap();
        assert!(instructions_of(&config).is_some());
    }

    #[test]
    fn unreadable_or_empty_instructions_file_names_key_and_line() {
        let dir = TempDir::new("instructions-bad");
        let name = dir.0.join("chatbot-proxy.toml").display().to_string();
        let with_file = |file: &str| {
            named(&format!(
                "model = \"gpt-5.4\"\ninstructions_file = \"{file}\"\n"
            ))
        };

        let err = from_toml_str(&with_file("missing.txt"), &name, &env(&[])).unwrap_err();
        assert_eq!(err.key(), Some("tenants[0].instructions_file"));
        assert_eq!(err.line(), Some(6));
        let shown = err.to_string();
        assert!(shown.contains("cannot read \"missing.txt\""), "{shown}");
        assert!(shown.contains(&dir.0.display().to_string()), "{shown}");

        std::fs::write(dir.0.join("blank.txt"), " \n\t\n").unwrap();
        let err = from_toml_str(&with_file("blank.txt"), &name, &env(&[])).unwrap_err();
        assert_eq!(err.line(), Some(6));
        assert!(
            err.to_string().contains("the file \"blank.txt\" is empty"),
            "{err}"
        );

        std::fs::write(dir.0.join("latin1.txt"), b"caf\xe9\n").unwrap();
        let err = from_toml_str(&with_file("latin1.txt"), &name, &env(&[])).unwrap_err();
        assert!(err.to_string().contains("is not UTF-8"), "{err}");

        let err = from_toml_str(&with_file("."), &name, &env(&[])).unwrap_err();
        assert!(
            err.to_string().contains("cannot read"),
            "a directory: {err}"
        );

        let err = from_toml_str(&with_file(" "), &name, &env(&[])).unwrap_err();
        assert!(
            err.to_string()
                .contains("tenants[0].instructions_file: is empty"),
            "{err}"
        );
    }

    #[test]
    fn tools_pass_through_as_json() {
        let text = named(
            r#"model = "gpt-5.4"
tools = [
  { type = "file_search", vector_store_ids = ["vs_123", "vs_456"], max_num_results = 8 },
  { type = "function", name = "lookupOrder", strict = true, parameters = { type = "object", properties = { order = { type = "string" } }, required = ["order"] } },
  { type = "web_search", user_location = { type = "approximate", country = "DE" }, ratio = 0.5 },
]
"#,
        );
        let config = load(&text).unwrap();
        let UpstreamApi::Responses { tools, .. } = &config.tenants[0].api else {
            panic!("{:?}", config.tenants[0].api)
        };
        let expected = serde_json::json!([
            {"type": "file_search", "vector_store_ids": ["vs_123", "vs_456"], "max_num_results": 8},
            {"type": "function", "name": "lookupOrder", "strict": true, "parameters": {
                "type": "object",
                "properties": {"order": {"type": "string"}},
                "required": ["order"]
            }},
            {"type": "web_search", "user_location": {"type": "approximate", "country": "DE"}, "ratio": 0.5}
        ]);
        assert_eq!(serde_json::Value::Array(tools.clone()), expected);
        // Written as they are: the keys keep the file's order.
        assert_eq!(
            serde_json::to_string(&tools[0]).unwrap(),
            r#"{"type":"file_search","vector_store_ids":["vs_123","vs_456"],"max_num_results":8}"#
        );

        // The same as an array of tables, and an empty list.
        let text = named(
            "model = \"gpt-5.4\"\n[[tenants.tools]]\ntype = \"file_search\"\nvector_store_ids = [\"vs_1\"]\n",
        );
        let config = load(&text).unwrap();
        assert!(
            matches!(&config.tenants[0].api, UpstreamApi::Responses { tools, .. } if tools == &[serde_json::json!({"type": "file_search", "vector_store_ids": ["vs_1"]})])
        );
        let config = load(&named("model = \"gpt-5.4\"\ntools = []\n")).unwrap();
        assert!(
            matches!(&config.tenants[0].api, UpstreamApi::Responses { tools, .. } if tools.is_empty())
        );
    }

    #[test]
    fn tool_entries_are_checked_with_their_line() {
        let with_tools = |tools: &str| named(&format!("model = \"gpt-5.4\"\n{tools}\n"));
        let err = load_err(&with_tools(
            "tools = [\n  { type = \"file_search\" },\n  { vector_store_ids = [\"vs_1\"] },\n]",
        ));
        assert!(
            err.starts_with("chatbot-proxy.toml line 8: tenants[0].tools[1]: has no type"),
            "{err}"
        );
        let err = load_err(&with_tools("tools = [\"file_search\"]"));
        assert!(
            err.starts_with("chatbot-proxy.toml line 6: tenants[0].tools[0]: must be a table"),
            "{err}"
        );
        let err = load_err(&with_tools("tools = [{ type = 1 }]"));
        assert!(
            err.contains("tenants[0].tools[0]: has a type that is a number"),
            "{err}"
        );
        let err = load_err(&with_tools("tools = { type = \"file_search\" }"));
        assert!(
            err.starts_with("chatbot-proxy.toml line 6: tenants[0].tools: must be an array of tables, not a table"),
            "{err}"
        );
        let err = load_err(&with_tools(
            "tools = [{ type = \"x\", since = 2024-01-01 }]",
        ));
        assert!(
            err.contains("tenants[0].tools[0]: contains a date"),
            "{err}"
        );
        let err = load_err(&with_tools("tools = 2024-01-01T00:00:00Z"));
        assert!(err.contains("not a date-time"), "{err}");

        // The lead tool is the proxy's own: default name, then a custom one.
        let err = load_err(&with_tools(
            "tools = [\n  { type = \"file_search\" },\n  { type = \"function\", name = \"sendEmail\" },\n]",
        ));
        assert!(
            err.starts_with(
                "chatbot-proxy.toml line 8: tenants[0].tools[1]: is a function named \"sendEmail\""
            ),
            "{err}"
        );
        let text = named(
            "model = \"gpt-5.4\"\nlead_tool = \"captureLead\"\ntools = [{ type = \"function\", name = \"captureLead\" }]\n",
        );
        assert!(
            load_err(&text).contains("tenants[0].tools[0]: is a function named \"captureLead\"")
        );
        let text = named(
            "model = \"gpt-5.4\"\nlead_tool = \"captureLead\"\ntools = [{ type = \"function\", name = \"sendEmail\" }]\n",
        );
        assert!(
            load(&text).is_ok(),
            "sendEmail is an ordinary function when not the lead tool"
        );

        // Array-of-tables entries get the line of their own header.
        let err = load_err(&named(
            "model = \"gpt-5.4\"\n[[tenants.tools]]\ntype = \"file_search\"\n\n[[tenants.tools]]\nname = \"x\"\n",
        ));
        assert!(
            err.starts_with("chatbot-proxy.toml line 9: tenants[0].tools[1]: has no type"),
            "{err}"
        );
    }

    #[test]
    fn lead_tool_and_stream_format() {
        let config = load(&named(
            "assistant_id = \"asst_a\"\nlead_tool = \"capture_lead\"\nstream_format = \"widget-v1\"\n",
        ))
        .unwrap();
        assert_eq!(config.tenants[0].lead_tool, "capture_lead");
        assert_eq!(config.tenants[0].stream_format, StreamFormat::WidgetV1);
        let err = load_err(&named(
            "assistant_id = \"asst_a\"\nlead_tool = \"send email\"\n",
        ));
        assert!(
            err.starts_with("chatbot-proxy.toml line 6: tenants[0].lead_tool: \"send email\" is not a function name"),
            "{err}"
        );
        let long = "x".repeat(65);
        let err = load_err(&named(&format!(
            "assistant_id = \"asst_a\"\nlead_tool = \"{long}\"\n"
        )));
        assert!(err.contains("1 to 64"), "{err}");
        let err = load_err(&named(
            "assistant_id = \"asst_a\"\nstream_format = \"sse\"\n",
        ));
        assert!(
            err.starts_with("chatbot-proxy.toml line 6: tenants[0].stream_format: \"sse\" is not a stream format"),
            "{err}"
        );
    }

    #[test]
    fn leads_table() {
        let text = format!(
            "{MINIMAL}\n[leads]\ndir = \"/var/lib/chatbot-proxy/leads\"\nmax_per_conversation = 1\n\
             max_per_tenant_per_hour = 20\nmax_tool_rounds = 20\nsend_timeout_ms = 250\n"
        );
        let leads = load(&text).unwrap().leads;
        assert_eq!(
            leads,
            LeadSettings {
                dir: "/var/lib/chatbot-proxy/leads".into(),
                max_per_conversation: 1,
                max_per_tenant_per_hour: 20,
                max_tool_rounds: 20,
                send_timeout: Duration::from_millis(250),
            }
        );
        let leads = load(&format!("{MINIMAL}\n[leads]\nmax_tool_rounds = 2\n"))
            .unwrap()
            .leads;
        assert_eq!(
            leads,
            LeadSettings {
                max_tool_rounds: 2,
                ..LeadSettings::default()
            },
            "the other keys keep their defaults"
        );

        let with = |leads: &str| load_err(&format!("{MINIMAL}\n[leads]\n{leads}\n"));
        let err = with("max_tool_rounds = 21");
        assert!(
            err.starts_with("chatbot-proxy.toml line 8: leads.max_tool_rounds: 21 is out of range"),
            "{err}"
        );
        assert!(err.contains("from 1 to 20"), "{err}");
        assert!(with("max_tool_rounds = 0").contains("leads.max_tool_rounds"));
        assert!(with("max_per_conversation = 0").contains("leads.max_per_conversation"));
        assert!(with("max_per_tenant_per_hour = -1").contains("leads.max_per_tenant_per_hour"));
        assert!(with("send_timeout_ms = 60001").contains("leads.send_timeout_ms"));
        let err = with("dir = \"\"");
        assert!(
            err.starts_with("chatbot-proxy.toml line 8: leads.dir: is empty"),
            "{err}"
        );
        let err = with("dir = 5");
        assert!(err.contains("leads.dir: must be a string"), "{err}");
        let err = with("max_rounds = 3");
        assert!(
            err.starts_with("chatbot-proxy.toml line 8: leads.max_rounds: unknown key"),
            "{err}"
        );
        assert!(err.contains("max_tool_rounds"), "{err}");
    }

    #[test]
    fn smtp_tls_defaults_by_port() {
        let tls = |smtp: &str| {
            load(&format!("{MINIMAL}\n[smtp]\nhost = \"mail.x\"\n{smtp}"))
                .unwrap()
                .smtp
                .unwrap()
                .tls
        };
        assert_eq!(tls(""), SmtpTls::Opportunistic, "default port 587");
        assert_eq!(tls("port = 465\n"), SmtpTls::Implicit);
        assert_eq!(tls("port = 25\n"), SmtpTls::Opportunistic);
        assert_eq!(tls("port = 465\ntls = \"none\"\n"), SmtpTls::None);
        assert_eq!(tls("tls = \"starttls\"\n"), SmtpTls::StartTls);
        assert_eq!(tls("port = 2525\ntls = \"implicit\"\n"), SmtpTls::Implicit);
        let err = load_err(&format!(
            "{MINIMAL}\n[smtp]\nhost = \"mail.x\"\ntls = \"ssl\"\n"
        ));
        assert!(
            err.starts_with("chatbot-proxy.toml line 9: smtp.tls: \"ssl\" is not a TLS mode"),
            "{err}"
        );
    }

    #[test]
    fn smtp_from_and_timeout() {
        let smtp = |keys: &str| {
            load(&format!("{MINIMAL}\n[smtp]\nhost = \"mail.x\"\n{keys}"))
                .map(|config| config.smtp.unwrap())
        };
        let plain = smtp("").unwrap();
        assert_eq!(plain.from, "AI Bot <chatbot@mail.x>");
        assert_eq!(plain.timeout, Duration::from_millis(10_000));
        let with_user = from_toml_str(
            &format!("{MINIMAL}\n[smtp]\nhost = \"mail.x\"\nuser = \"bot@acme.com\"\npassword_env = \"PW\"\n"),
            FILE,
            &env(&[("PW", "pw")]),
        )
        .unwrap()
        .smtp
        .unwrap();
        assert_eq!(with_user.from, "AI Bot <bot@acme.com>");
        let set = smtp("from = \"Acme Leads <leads@acme.com>\"\ntimeout_ms = 2500\n").unwrap();
        assert_eq!(set.from, "Acme Leads <leads@acme.com>");
        assert_eq!(set.timeout, Duration::from_millis(2500));
        assert_eq!(
            smtp("from = \"leads@acme.com\"\n").unwrap().from,
            "leads@acme.com"
        );

        for bad in [
            r#"from = "AI Bot <bot@acme.com>\r\nBcc: x@evil.example""#,
            r#"from = "AI Bot""#,
            r#"from = "a@b@acme.com""#,
            r#"from = "AI Bot <bot@acme.com> x""#,
        ] {
            let err = smtp(&format!("{bad}\n")).unwrap_err();
            assert_eq!(err.key(), Some("smtp.from"), "{bad}: {err}");
            assert_eq!(err.line(), Some(9), "{bad}: {err}");
            assert!(err.to_string().contains("is not a mailbox"), "{err}");
        }
        let err = smtp("timeout_ms = 0\n").unwrap_err();
        assert_eq!((err.key(), err.line()), (Some("smtp.timeout_ms"), Some(9)));
        assert!(smtp("timeout_ms = 600001\n").is_err());
    }

    #[test]
    fn secrets_never_appear_in_errors() {
        let secret = "sk-SECRET-abcdef123456";
        let cases = [
            // Malformed key (spaces inside).
            format!("[[tenants]]\ndomains = [\"a.com\"]\napi_key = \"{} x\"\nassistant_id = \"asst_a\"\n", secret),
            // Not quoted: a TOML syntax error on the secret's line.
            format!("[[tenants]]\ndomains = [\"a.com\"]\napi_key = {secret}\nassistant_id = \"asst_a\"\n"),
            // Unterminated string.
            format!("[[tenants]]\ndomains = [\"a.com\"]\napi_key = \"{secret}\nassistant_id = \"asst_a\"\n"),
            // Key pasted into the wrong fields.
            format!("[[tenants]]\ndomains = [\"a.com\"]\napi_key = \"sk-a1\"\nassistant_id = \"{secret}\"\n"),
            format!("[[tenants]]\ndomains = [\"{secret}/\"]\napi_key = \"sk-a1\"\nassistant_id = \"asst_a\"\n"),
            format!("[[tenants]]\ndomains = [\"a.com\"]\napi_key_env = \"{secret}\"\nassistant_id = \"asst_a\"\n"),
            // Valid key, but another error in the same tenant.
            format!("[[tenants]]\ndomains = [\"a.com\"]\napi_key = \"{secret}\"\nassistant_id = \"bad\"\n"),
            format!("[[tenants]]\ndomains = [\"a.com\"]\napi_key = \"{secret}\"\napi_key = \"{secret}\"\n"),
            // SMTP password: malformed, and with a missing user.
            format!("{MINIMAL}[smtp]\nhost = \"m.x\"\npassword = {secret}\n"),
            format!("{MINIMAL}[smtp]\nhost = \"m.x\"\npassword = \"{secret}\"\n"),
            format!("{MINIMAL}[smtp]\nhost = \"m.x\"\npassword = \"{secret}\"\npassword_env = \"P\"\n"),
            // Key pasted into the new tenant and SMTP keys.
            format!("[[tenants]]\ndomains = [\"a.com\"]\napi_key = \"sk-a1\"\nmodel = \"{secret}\"\n"),
            format!("[[tenants]]\ndomains = [\"a.com\"]\napi_key = \"sk-a1\"\nmodel = \"{secret} x\"\n"),
            format!("[[tenants]]\ndomains = [\"a.com\"]\napi_key = \"sk-a1\"\napi = \"{secret}\"\nmodel = \"m\"\n"),
            format!("[[tenants]]\ndomains = [\"a.com\"]\napi_key = \"sk-a1\"\nmodel = \"m\"\ninstructions_file = \"{secret}\"\n"),
            format!("[[tenants]]\ndomains = [\"a.com\"]\napi_key = \"sk-a1\"\nmodel = \"m\"\nlead_tool = \"{secret}\"\n"),
            format!("[[tenants]]\ndomains = [\"a.com\"]\napi_key = \"sk-a1\"\nassistant_id = \"asst_a\"\nstream_format = \"{secret}\"\n"),
            format!("[[tenants]]\nname = \"{secret}\"\ndomains = [\"a.com\"]\napi_key = \"sk-a1\"\nassistant_id = \"asst_a\"\nmodel = \"m\"\n"),
            // A valid key in a tenant that sets both APIs, or neither.
            format!("[[tenants]]\ndomains = [\"a.com\"]\napi_key = \"{secret}\"\nassistant_id = \"asst_a\"\nmodel = \"m\"\n"),
            format!("[[tenants]]\ndomains = [\"a.com\"]\napi_key = \"{secret}\"\n"),
            format!("{MINIMAL}[smtp]\nhost = \"m.x\"\nfrom = \"{secret}\"\n"),
            format!("{MINIMAL}[smtp]\nhost = \"m.x\"\ntls = \"{secret}\"\n"),
            format!("{MINIMAL}[leads]\ndir = \"{secret}\\u0000\"\n"),
        ];
        for text in cases {
            let err = load(&text).expect_err(&text);
            let shown = err.to_string();
            assert!(!shown.contains("SECRET"), "secret leaked: {shown}");
            assert!(
                !format!("{err:?}").contains("SECRET"),
                "secret leaked in Debug: {err:?}"
            );
        }
    }

    #[test]
    fn parser_messages_quoting_a_secret_are_detected() {
        let line = "api_key = \"sk-live-abcdef\"";
        assert!(leaks_secret("invalid value `live-abc`", line));
        assert!(leaks_secret(
            "invalid value `sk-live-abcdef`",
            "threads = 2"
        ));
        assert!(leaks_secret(
            "bad `hunter22`",
            "  smtp.password = 'hunter22'"
        ));
        assert!(!leaks_secret("invalid string; expected `\"`", line));
        assert!(!leaks_secret(
            "invalid value `live-abc`",
            "name = \"live-abc\""
        ));
    }

    #[test]
    fn a_byte_order_mark_is_ignored() {
        let config = load(&format!("\u{feff}{MINIMAL}")).unwrap();
        assert_eq!(config.tenants.len(), 1);
    }

    #[test]
    fn config_debug_hides_secrets() {
        let config = load(MINIMAL).unwrap();
        let debug = format!("{config:?}");
        assert!(!debug.contains("sk-minimal-0000"), "{debug}");
    }

    #[test]
    fn key_path_follows_table_headers() {
        let text = "a = 1\n[server]\nlisten = 2\n[[tenants]]\nx = 1\n[[tenants]]\ny = [\n 1,\n]\n";
        let offset = |needle: &str| text.find(needle).unwrap();
        assert_eq!(key_path_at(text, 0).as_deref(), Some("a"));
        assert_eq!(
            key_path_at(text, offset("listen")).as_deref(),
            Some("server.listen")
        );
        assert_eq!(
            key_path_at(text, offset("x =")).as_deref(),
            Some("tenants[0].x")
        );
        assert_eq!(
            key_path_at(text, offset(" 1,")).as_deref(),
            Some("tenants[1].y")
        );
    }

    #[test]
    fn resolve_and_address_connect_timeout() {
        let config = load(MINIMAL).unwrap();
        assert!(config.upstream.resolve.is_empty(), "DNS by default");
        assert_eq!(
            config.upstream.address_connect_timeout,
            Duration::from_millis(1000)
        );
        let config = load(&format!(
            "[upstream]\nbase_url = \"http://api.test:8090/v1\"\n\
             resolve = [\"127.0.0.2\", \"::1\", \"[2001:db8::7]\"]\n\
             address_connect_timeout_ms = 250\n{MINIMAL}"
        ))
        .unwrap();
        let want: Vec<std::net::IpAddr> = ["127.0.0.2", "::1", "2001:db8::7"]
            .iter()
            .map(|ip| ip.parse().unwrap())
            .collect();
        assert_eq!(config.upstream.resolve, want);
        assert_eq!(
            config.upstream.address_connect_timeout,
            Duration::from_millis(250)
        );
        // The default never exceeds a shorter connect timeout.
        let config = load(&format!("[upstream]\nconnect_timeout_ms = 400\n{MINIMAL}")).unwrap();
        assert_eq!(
            config.upstream.address_connect_timeout,
            Duration::from_millis(400)
        );
    }

    #[test]
    fn bad_resolve_entries_and_a_too_long_address_timeout_are_refused() {
        let err = load_err(&format!(
            "[upstream]\nresolve = [\"127.0.0.1\", \"127.0.0.1:8080\"]\n{MINIMAL}"
        ));
        assert!(
            err.starts_with("chatbot-proxy.toml line 2: upstream.resolve[1]: is not an IP address"),
            "{err}"
        );
        assert!(err.contains("without a port"), "{err}");
        let err = load_err(&format!("[upstream]\nresolve = \"127.0.0.1\"\n{MINIMAL}"));
        assert!(err.contains("upstream.resolve: must be an array"), "{err}");
        let err = load_err(&format!(
            "[upstream]\nconnect_timeout_ms = 1000\naddress_connect_timeout_ms = 2000\n{MINIMAL}"
        ));
        assert!(
            err.starts_with("chatbot-proxy.toml line 3: upstream.address_connect_timeout_ms:"),
            "{err}"
        );
        assert!(err.contains("connect_timeout_ms (1000)"), "{err}");
    }
}
