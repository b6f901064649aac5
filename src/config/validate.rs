//! The one place where a configuration as written ([`RawConfig`], from the TOML file or from
//! the environment) becomes the validated [`Config`]: defaults, the rules of `check`, and
//! the checks across keys (API choice, secrets from the environment, a domain in one tenant
//! only). Errors name the key as the user wrote it: `tenants[1].domains[0]` and its line for
//! the file, the variable (`DOMAINS[1]`) for the environment.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use super::check::{self, At, Bounds, DomainOwners};
use super::defaults;
use super::env;
use super::error::ConfigError;
use super::raw::{
    ApiKind, List, Opt, Origin, RawConfig, RawLeads, RawLimits, RawServer, RawSmtp, RawTenant,
    RawUpstream, Val, TOML_DATETIME_KEY,
};
use super::types::{
    ClientTimeouts, Config, LeadSettings, Limits, Secret, ServerSettings, SmtpSettings, Tenant,
    TurnstileSettings, UpstreamApi, UpstreamSettings,
};

/// Where the raw configuration came from, for messages, `*_env` keys and relative paths.
pub(crate) struct Source<'a> {
    /// The TOML text (positions are byte offsets into it); `None` for the environment.
    pub(crate) text: Option<&'a str>,
    /// The variables that `api_key_env` and `password_env` name.
    pub(crate) env: &'a HashMap<String, String>,
    /// The directory that a relative `instructions_file` starts from.
    pub(crate) dir: &'a Path,
}

/// The 1-based line of byte `offset`.
pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

impl Source<'_> {
    /// Where `val` was written: `key` on its line in the file, or its environment variable.
    fn at<T>(&self, val: &Val<T>, key: impl Into<String>) -> At {
        self.place(&val.from, key)
    }

    /// [`Source::at`] for a value's origin.
    fn place(&self, from: &Origin, key: impl Into<String>) -> At {
        match (from, self.text) {
            (Origin::Var(name), _) => At::key(name.as_str()),
            (Origin::Span(span), Some(text)) => At::on_line(key, line_of(text, span.start)),
            (Origin::Span(_), None) => At::key(key),
        }
    }

    /// Where `key`, which is not set, belongs: the line of its `table`, or its variable.
    fn missing(&self, table: &At, key: &str) -> At {
        match self.text {
            Some(_) => At {
                key: key.to_string(),
                line: table.line,
            },
            None => At::key(env::var_for(key)),
        }
    }

    /// `check` applied to a setting when it is set.
    fn opt<T, R>(
        &self,
        val: &Opt<T>,
        key: &str,
        check: impl FnOnce(&T, &At) -> Result<R, ConfigError>,
    ) -> Result<Option<R>, ConfigError> {
        val.as_ref()
            .map(|val| check(&val.value, &self.at(val, key)))
            .transpose()
    }

    /// A text setting through `check`, when set.
    fn text<R>(
        &self,
        val: &Opt<String>,
        key: &str,
        check: impl FnOnce(&str, &At) -> Result<R, ConfigError>,
    ) -> Result<Option<R>, ConfigError> {
        self.opt(val, key, |text, at| check(text, at))
    }

    /// A whole number within `bounds`; their default when not set.
    fn int(&self, val: &Opt<i64>, key: &str, bounds: &Bounds) -> Result<u64, ConfigError> {
        let value = self.opt(val, key, |v, at| check::in_bounds(*v, bounds, at))?;
        Ok(value.unwrap_or(bounds.default))
    }

    /// A duration in milliseconds within `bounds`; their default when not set.
    fn millis(&self, val: &Opt<i64>, key: &str, bounds: &Bounds) -> Result<Duration, ConfigError> {
        self.int(val, key, bounds).map(Duration::from_millis)
    }

    /// Each string of a list through `check`, each with its own key (`key[i]`).
    fn each<R>(
        &self,
        list: &List<String>,
        key: &str,
        mut check: impl FnMut(&str, &At) -> Result<R, ConfigError>,
    ) -> Result<Vec<R>, ConfigError> {
        let items = list.0.iter().enumerate();
        items
            .map(|(i, item)| check(&item.value, &self.at(item, format!("{key}[{i}]"))))
            .collect()
    }

    /// The value of the environment variable that `val` (an `*_env` key) names.
    fn env_value(
        &self,
        val: &Val<String>,
        key: &str,
        purpose: &str,
    ) -> Result<(String, String), ConfigError> {
        let at = self.at(val, key);
        let name = check::env_var_name(&val.value, &at)?;
        let value = check::env_value(self.env, &name, purpose, &at)?;
        Ok((name, value))
    }
}

/// Validates `raw`: the configuration, or the first problem found.
pub(crate) fn config(raw: RawConfig, src: &Source) -> Result<Config, ConfigError> {
    let (server, metrics_listen) = server(src, &raw.server)?;
    let config = Config {
        server,
        upstream: upstream(src, &raw.upstream)?,
        limits: limits(src, &raw.limits)?,
        smtp: raw
            .smtp
            .as_ref()
            .map(|smtp| self::smtp(src, smtp))
            .transpose()?,
        leads: leads(src, &raw.leads)?,
        tenants: tenants(src, &raw.tenants)?,
        metrics_listen,
    };
    check::finish(&config);
    Ok(config)
}

/// `[limits]`: what browsers may send, and how abuse is counted.
fn limits(src: &Source, raw: &RawLimits) -> Result<Limits, ConfigError> {
    let mut limits = Limits {
        max_body_bytes: src.int(
            &raw.max_body_bytes,
            "limits.max_body_bytes",
            &check::BODY_BYTES,
        )? as usize,
        max_message_chars: src.int(
            &raw.max_message_chars,
            "limits.max_message_chars",
            &check::MESSAGE_CHARS,
        )? as usize,
        ..Limits::default()
    };
    limits.redis_url = src.opt(&raw.redis_url, "limits.redis_url", |url, at| {
        check::redis_url(url, at)
    })?;
    if let Some(list) = &raw.trusted_proxies {
        let key = "limits.trusted_proxies";
        limits.trusted_proxies = src.each(&list.value, key, check::trusted_proxy)?;
    }
    // request limits
    if let Some(rate) = src.text(&raw.rate_limit_ip, "limits.rate_limit_ip", check::rate)? {
        limits.rate_limit_ip = rate;
    }
    let key = "limits.max_streams_per_ip";
    limits.max_streams_per_ip =
        src.int(&raw.max_streams_per_ip, key, &check::STREAMS_PER_IP)? as u32;
    conversation_limits(src, raw, &mut limits)?;
    limits.turnstile = turnstile(src, raw)?;
    Ok(limits)
}

// bot check (Turnstile)
/// `limits.turnstile_verify_url` and `limits.turnstile_timeout_ms`.
fn turnstile(src: &Source, raw: &RawLimits) -> Result<TurnstileSettings, ConfigError> {
    let key = "limits.turnstile_timeout_ms";
    let timeout = src.millis(&raw.turnstile_timeout_ms, key, &check::TURNSTILE_TIMEOUT_MS)?;
    let mut endpoint = TurnstileSettings::default().endpoint;
    src.text(
        &raw.turnstile_verify_url,
        "limits.turnstile_verify_url",
        |text, at| check::verify_url(text, at, &mut endpoint),
    )?;
    Ok(TurnstileSettings {
        endpoint: TurnstileSettings::endpoint(endpoint, timeout),
        timeout,
    })
}

// conversation handles
/// The handles' secret (exactly one of `session_secret` / `session_secret_env`, or neither),
/// their lifetime and the messages one conversation may take.
fn conversation_limits(
    src: &Source,
    raw: &RawLimits,
    limits: &mut Limits,
) -> Result<(), ConfigError> {
    limits.session_secret = match (&raw.session_secret, &raw.session_secret_env) {
        (Some(_), Some(env)) => {
            return Err(src.at(env, "limits.session_secret_env").err(
                "and limits.session_secret are both set: keep exactly one (session_secret_env \
                 keeps the secret out of this file)",
            ))
        }
        (Some(val), None) => Some(check::session_secret(
            val.value.expose(),
            "the secret",
            &src.at(val, "limits.session_secret"),
        )?),
        (None, Some(val)) => {
            let key = "limits.session_secret_env";
            let purpose = "the secret that signs conversation handles (at least 32 bytes)";
            let (var, value) = src.env_value(val, key, purpose)?;
            let what = format!("the secret in {var}");
            Some(check::session_secret(&value, &what, &src.at(val, key))?)
        }
        (None, None) => None,
    };
    let key = "limits.conversation_ttl_hours";
    let hours = src.int(
        &raw.conversation_ttl_hours,
        key,
        &check::CONVERSATION_TTL_HOURS,
    )?;
    limits.conversation_ttl = Duration::from_secs(hours * 3600);
    let key = "limits.max_messages_per_conversation";
    let bounds = &check::MESSAGES_PER_CONVERSATION;
    // The bounds keep the count far below u32::MAX.
    limits.max_messages_per_conversation =
        src.int(&raw.max_messages_per_conversation, key, bounds)? as u32;
    Ok(())
}

/// `[server]`, and `metrics_listen`, which must not take the port of `listen`.
fn server(src: &Source, raw: &RawServer) -> Result<(ServerSettings, Option<String>), ConfigError> {
    let mut server = ServerSettings::default();
    if let Some(listen) = src.text(&raw.listen, "server.listen", check::listen)? {
        server.listen = listen;
    }
    if let Some(prefix) = src.text(&raw.prefix, "server.prefix", check::prefix)? {
        server.prefix = prefix;
    }
    server.threads = src.int(&raw.threads, "server.threads", &check::THREADS)? as usize;
    server.grace_period_seconds = src.int(
        &raw.grace_period_seconds,
        "server.grace_period_seconds",
        &check::GRACE_SECONDS,
    )?;
    let older = "server.graceful_shutdown_timeout_seconds";
    let (drain, key) = match (
        &raw.drain_timeout_seconds,
        &raw.graceful_shutdown_timeout_seconds,
    ) {
        (Some(_), Some(old)) => {
            return Err(src.at(old, older).err(
                "is the older name of drain_timeout_seconds, which is also set: keep only \
                 drain_timeout_seconds",
            ))
        }
        (None, Some(_)) => (&raw.graceful_shutdown_timeout_seconds, older),
        _ => (&raw.drain_timeout_seconds, "server.drain_timeout_seconds"),
    };
    server.drain_timeout_seconds = src.int(drain, key, &check::DRAIN_SECONDS)?;
    if let Some(sock) = src.text(
        &raw.upgrade_sock,
        "server.upgrade_sock",
        check::upgrade_sock,
    )? {
        server.upgrade_sock = sock;
    }
    let keys = [
        &raw.keepalive_timeout_seconds,
        &raw.request_header_timeout_seconds,
        &raw.request_body_timeout_seconds,
        &raw.stalled_reader_timeout_seconds,
    ];
    let names = [
        "keepalive_timeout_seconds",
        "request_header_timeout_seconds",
        "request_body_timeout_seconds",
        "stalled_reader_timeout_seconds",
    ];
    let mut seconds = [Duration::ZERO; 4];
    for (i, bounds) in check::CLIENT_TIMEOUT_SECONDS.iter().enumerate() {
        let key = format!("server.{}", names[i]);
        seconds[i] = Duration::from_secs(src.int(keys[i], &key, bounds)?);
    }
    let [keepalive, request_header, request_body, stalled_reader] = seconds;
    server.timeouts = ClientTimeouts {
        keepalive,
        request_header,
        request_body,
        stalled_reader,
    };
    let listen = &server.listen;
    let listen_is = match (&raw.listen, src.text.is_some()) {
        (Some(val), true) => {
            let line = src.at(val, "server.listen").line.unwrap_or_default();
            format!("server.listen = {listen:?}, line {line}")
        }
        (None, true) => format!("server.listen defaults to {listen:?}"),
        (Some(_), false) => format!("PORT makes it {listen:?}"),
        (None, false) => format!("without PORT it is {listen:?}"),
    };
    let metrics_listen = src.text(&raw.metrics_listen, "server.metrics_listen", |text, at| {
        check::metrics_listen(text, at, listen, &listen_is)
    })?;
    Ok((server, metrics_listen))
}

fn upstream(src: &Source, raw: &RawUpstream) -> Result<UpstreamSettings, ConfigError> {
    let mut upstream = UpstreamSettings::default();
    src.text(&raw.base_url, "upstream.base_url", |text, at| {
        check::base_url(text, at, &mut upstream)
    })?;
    let timeouts = [
        (
            &raw.connect_timeout_ms,
            "connect_timeout_ms",
            &check::CONNECT_TIMEOUT_MS,
        ),
        (
            &raw.first_byte_timeout_ms,
            "first_byte_timeout_ms",
            &check::FIRST_BYTE_TIMEOUT_MS,
        ),
        (
            &raw.idle_timeout_ms,
            "idle_timeout_ms",
            &check::IDLE_TIMEOUT_MS,
        ),
        (
            &raw.pool_idle_timeout_ms,
            "pool_idle_timeout_ms",
            &check::POOL_IDLE_TIMEOUT_MS,
        ),
    ];
    let [connect, first_byte, idle, pool_idle] =
        timeouts.map(|(val, key, bounds)| src.millis(val, &format!("upstream.{key}"), bounds));
    upstream.connect_timeout = connect?;
    upstream.first_byte_timeout = first_byte?;
    upstream.idle_timeout = idle?;
    upstream.pool_idle_timeout = pool_idle?;
    upstream.pool_size = src.int(&raw.pool_size, "upstream.pool_size", &check::POOL_SIZE)? as usize;
    let key = "upstream.address_connect_timeout_ms";
    let bounds = &check::ADDRESS_CONNECT_TIMEOUT_MS;
    let address = src.opt(&raw.address_connect_timeout_ms, key, |v, at| {
        Ok((check::in_bounds(*v, bounds, at)?, at.clone()))
    })?;
    let connect_ms = upstream.connect_timeout.as_millis() as u64;
    let address = address.as_ref().map(|(ms, at)| (*ms, at));
    upstream.address_connect_timeout =
        Duration::from_millis(check::address_connect_timeout(address, connect_ms)?);
    if let Some(list) = &raw.resolve {
        upstream.resolve = src.each(&list.value, "upstream.resolve", check::resolve_address)?;
    }
    Ok(upstream)
}

fn smtp(src: &Source, raw: &Val<RawSmtp>) -> Result<SmtpSettings, ConfigError> {
    let table = src.at(raw, "smtp");
    let raw = &raw.value;
    let Some(host) = src.text(&raw.host, "smtp.host", check::smtp_host)? else {
        return Err(src.missing(&table, "smtp.host").err(
            "is missing: add host = \"smtp.example.com\" to [smtp], or remove the [smtp] table \
             to disable lead e-mails",
        ));
    };
    let port = src.int(&raw.port, "smtp.port", &check::SMTP_PORT)? as u16;
    let user = src.text(&raw.user, "smtp.user", check::smtp_user)?;
    let (password, password_at) = match (&raw.password, &raw.password_env) {
        (Some(_), Some(env)) => {
            return Err(src.at(env, "smtp.password_env").err(
                "and smtp.password are both set: keep exactly one (password_env keeps the \
                 password out of this file)",
            ))
        }
        (Some(val), None) => {
            let at = src.at(val, "smtp.password");
            (Some(check::smtp_password(&val.value, &at)?), at)
        }
        (None, Some(val)) => {
            let (_, value) = src.env_value(val, "smtp.password_env", "the SMTP password")?;
            (Some(Secret::new(value)), src.at(val, "smtp.password_env"))
        }
        (None, None) => (None, src.missing(&table, "smtp.password")),
    };
    let user_at = match &raw.user {
        Some(val) => src.at(val, "smtp.user"),
        None => src.missing(&table, "smtp.user"),
    };
    check::smtp_credentials(user.as_deref(), password.as_ref(), &user_at, &password_at)?;
    let from = match src.text(&raw.from, "smtp.from", check::mailbox)? {
        Some(from) => from,
        None => check::default_from(user.as_deref(), &host, &src.missing(&table, "smtp.from"))?,
    };
    Ok(SmtpSettings {
        tls: raw
            .tls
            .as_ref()
            .map_or_else(|| defaults::smtp_tls(port), |tls| tls.value),
        timeout: src.millis(&raw.timeout_ms, "smtp.timeout_ms", &check::SMTP_TIMEOUT_MS)?,
        host,
        port,
        user,
        password,
        from,
    })
}

fn leads(src: &Source, raw: &RawLeads) -> Result<LeadSettings, ConfigError> {
    let mut leads = LeadSettings::default();
    if let Some(dir) = src.text(&raw.dir, "leads.dir", check::leads_dir)? {
        leads.dir = dir;
    }
    let counts = [
        (
            &raw.max_per_conversation,
            "max_per_conversation",
            &check::LEADS_PER_CONVERSATION,
        ),
        (
            &raw.max_per_tenant_per_hour,
            "max_per_tenant_per_hour",
            &check::LEADS_PER_HOUR,
        ),
        (&raw.max_tool_rounds, "max_tool_rounds", &check::TOOL_ROUNDS),
    ];
    // The bounds keep every count far below u32::MAX.
    let [conversation, hour, rounds] = counts.map(|(val, key, bounds)| {
        src.int(val, &format!("leads.{key}"), bounds)
            .map(|n| n as u32)
    });
    leads.max_per_conversation = conversation?;
    leads.max_per_tenant_per_hour = hour?;
    leads.max_tool_rounds = rounds?;
    let key = "leads.send_timeout_ms";
    leads.send_timeout = src.millis(&raw.send_timeout_ms, key, &check::SEND_TIMEOUT_MS)?;
    // leads under abuse
    let key = "leads.max_per_address_per_day";
    let bounds = &check::LEADS_PER_ADDRESS_PER_DAY;
    leads.max_per_address_per_day = src.int(&raw.max_per_address_per_day, key, bounds)? as u32;
    Ok(leads)
}

fn tenants(src: &Source, raw: &Opt<Vec<Val<RawTenant>>>) -> Result<Vec<Tenant>, ConfigError> {
    const HOW: &str = "add a [[tenants]] table with domains, api_key_env (or api_key), and \
                       assistant_id (Assistants API) or model (Responses API); see \
                       conf/chatbot-proxy.toml";
    let Some(list) = raw else {
        return Err(ConfigError::new(
            "tenants",
            format!("no tenant is configured: {HOW}"),
        ));
    };
    if list.value.is_empty() {
        return Err(src.at(list, "tenants").err(format!("is empty: {HOW}")));
    }
    let mut owners = DomainOwners::default();
    let mut names: HashMap<String, At> = HashMap::new();
    let mut tenants = Vec::with_capacity(list.value.len());
    for (index, raw) in list.value.iter().enumerate() {
        let table = src.at(raw, format!("tenants[{index}]"));
        let tenant = tenant(src, index, &raw.value, &table, &mut owners)?;
        if let Some(first) = names.get(&tenant.name) {
            let key = format!("{}.name", table.key);
            let at = match &raw.value.name {
                Some(name) => src.at(name, key),
                None => src.missing(&table, &key),
            };
            return Err(at.err(format!(
                "{} is already the name of {}: give each tenant its own name",
                check::shown(&tenant.name),
                first.describe()
            )));
        }
        names.insert(tenant.name.clone(), table);
        tenants.push(tenant);
    }
    Ok(tenants)
}

fn tenant(
    src: &Source,
    index: usize,
    raw: &RawTenant,
    table: &At,
    owners: &mut DomainOwners,
) -> Result<Tenant, ConfigError> {
    let key = |field: &str| format!("{}.{field}", table.key);
    const EXAMPLE: &str = "domains = [\"example.com\", \"*.example.com\"]";
    let Some(list) = &raw.domains else {
        return Err(src.missing(table, &key("domains")).err(
            "is missing: add domains = [\"example.com\"] to this [[tenants]] table (the sites \
             allowed to use this tenant)",
        ));
    };
    if list.value.0.is_empty() {
        return Err(src.at(list, key("domains")).err(format!(
            "is empty: list at least one domain, e.g. {EXAMPLE}"
        )));
    }
    let domains = src.each(&list.value, &key("domains"), |text, at| {
        check::domain(text, at).map(|(text, pattern)| (text, pattern, at.clone()))
    })?;
    let name = src.text(&raw.name, &key("name"), check::tenant_name)?;
    let name = name.unwrap_or_else(|| domains[0].0.clone());
    let label = format!("tenant {}", check::shown(&name));
    let mut patterns = Vec::with_capacity(domains.len());
    for (text, pattern, at) in domains {
        if owners.claim(&text, &pattern, index, &label, &at)? {
            patterns.push(pattern);
        }
    }
    let api_key = api_key(src, raw, table, &name)?;
    let turnstile_secret = turnstile_secret(src, raw, table, &name)?;
    let lead_tool = src.text(&raw.lead_tool, &key("lead_tool"), check::function_name)?;
    let lead_tool = lead_tool.unwrap_or_else(|| defaults::LEAD_TOOL.to_string());
    let api = upstream_api(src, raw, table, &name, &lead_tool)?;
    let lead_recipients = match &raw.lead_recipients {
        Some(list) => src.each(&list.value, &key("lead_recipients"), check::recipient)?,
        None => Vec::new(),
    };
    // output tokens
    let max_output_tokens = src.opt(
        &raw.max_output_tokens,
        &key("max_output_tokens"),
        |v, at| check::output_tokens(*v, at),
    )?;
    Ok(Tenant {
        name,
        domains: patterns,
        api_key,
        api,
        lead_recipients,
        lead_tool,
        stream_format: raw
            .stream_format
            .as_ref()
            .map(|f| f.value)
            .unwrap_or_default(),
        redact_run_objects: raw.redact_run_objects.as_ref().is_some_and(|r| r.value),
        // request limits
        rate_limit: src
            .text(&raw.rate_limit, &key("rate_limit"), check::rate)?
            .flatten(),
        // token budgets
        daily_token_budget: src
            .opt(
                &raw.daily_token_budget,
                &key("daily_token_budget"),
                |v, at| check::in_bounds(*v, &check::DAILY_TOKENS, at),
            )?
            .filter(|&tokens| tokens > 0),
        turnstile_secret,
        turnstile_site_key: src
            .text(
                &raw.turnstile_site_key,
                &key("turnstile_site_key"),
                check::turnstile_site_key,
            )?
            .flatten(),
        max_output_tokens,
    })
}

// bot check (Turnstile)
/// At most one of `turnstile_secret` / `turnstile_secret_env`; neither: no bot check.
fn turnstile_secret(
    src: &Source,
    raw: &RawTenant,
    table: &At,
    name: &str,
) -> Result<Option<Secret>, ConfigError> {
    let key = |field: &str| format!("{}.{field}", table.key);
    match (&raw.turnstile_secret, &raw.turnstile_secret_env) {
        (None, None) => Ok(None),
        (Some(_), Some(env)) => Err(src.at(env, key("turnstile_secret_env")).err(format!(
            "and {} are both set: keep exactly one (turnstile_secret_env keeps the secret out \
             of this file)",
            key("turnstile_secret")
        ))),
        (Some(val), None) => check::turnstile_secret(
            val.value.expose(),
            "the Turnstile secret",
            &src.at(val, key("turnstile_secret")),
        )
        .map(Some),
        (None, Some(val)) => {
            let purpose = format!("the Turnstile secret key of tenant {}", check::shown(name));
            let (var, value) = src.env_value(val, &key("turnstile_secret_env"), &purpose)?;
            let at = src.at(val, key("turnstile_secret_env"));
            check::turnstile_secret(&value, &format!("the Turnstile secret in {var}"), &at)
                .map(Some)
        }
    }
}

/// Exactly one of `api_key` / `api_key_env`; the variable must be set.
fn api_key(src: &Source, raw: &RawTenant, table: &At, name: &str) -> Result<Secret, ConfigError> {
    let key = |field: &str| format!("{}.{field}", table.key);
    match (&raw.api_key, &raw.api_key_env) {
        (Some(_), Some(env)) => Err(src.at(env, key("api_key_env")).err(format!(
            "and {} are both set: keep exactly one (api_key_env is preferred: it keeps the key \
             out of this file)",
            key("api_key")
        ))),
        (None, None) => Err(src.missing(table, &key("api_key")).err(
            "is missing: add api_key_env = \"ACME_OPENAI_KEY\" (an environment variable \
             holding the OpenAI key) or api_key = \"sk-...\"",
        )),
        (Some(val), None) => check::api_key(
            val.value.expose(),
            "the API key",
            &src.at(val, key("api_key")),
        ),
        (None, Some(val)) => {
            let purpose = format!("the OpenAI API key of tenant {}", check::shown(name));
            let (var, value) = src.env_value(val, &key("api_key_env"), &purpose)?;
            let at = src.at(val, key("api_key_env"));
            check::api_key(&value, &format!("the API key in {var}"), &at)
        }
    }
}

/// The tenant's upstream API: `api` if set, else inferred from which of `assistant_id` /
/// `model` is present; then the settings that API takes.
fn upstream_api(
    src: &Source,
    raw: &RawTenant,
    table: &At,
    name: &str,
    lead_tool: &str,
) -> Result<UpstreamApi, ConfigError> {
    let key = |field: &str| format!("{}.{field}", table.key);
    let (kind, chosen) = match &raw.api {
        Some(api) => {
            let api_at = src.at(api, key("api"));
            let (wanted, unwanted, example) = match api.value {
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
            let (this, other) = match api.value {
                ApiKind::Assistants => ("assistants", "responses"),
                ApiKind::Responses => ("responses", "assistants"),
            };
            if let (Some(val), field) = unwanted {
                return Err(src.at(val, key(field)).err(format!(
                    "is set, but api = \"{this}\" does not use it: remove it, or write \
                     api = \"{other}\""
                )));
            }
            match wanted {
                (Some(val), _) => (api.value, val),
                (None, field) => {
                    let at = src.missing(&api_at, &key(field));
                    return Err(at.err(format!("is missing: api = \"{this}\" needs {example}")));
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
                (Some(val), None) => (ApiKind::Assistants, val),
                (None, Some(val)) => (ApiKind::Responses, val),
                (Some(assistant), Some(model)) => {
                    let later = match (&assistant.from, &model.from) {
                        (Origin::Span(a), Origin::Span(m)) if a.start > m.start => assistant,
                        _ => model,
                    };
                    return Err(src.at(later, label).err(
                        "set either assistant_id (Assistants API) or model (Responses API), \
                         not both",
                    ));
                }
                (None, None) => {
                    return Err(src.missing(table, &label).err(
                        "set either assistant_id (Assistants API) or model (Responses API): \
                         add assistant_id = \"asst_...\" or model = \"gpt-5.4\"",
                    ))
                }
            }
        }
    };

    if kind == ApiKind::Assistants {
        const ELSEWHERE: &str = "is only for the Responses API: with the Assistants API the \
             instructions and tools live in the assistant on OpenAI's side; set them there and \
             remove this key, or replace assistant_id with model";
        let extra = [
            (raw.instructions.as_ref().map(|v| &v.from), "instructions"),
            (
                raw.instructions_file.as_ref().map(|v| &v.from),
                "instructions_file",
            ),
            (raw.tools.as_ref().map(|v| &v.from), "tools"),
        ];
        if let Some((from, field)) = extra.into_iter().find_map(|(f, k)| Some((f?, k))) {
            return Err(src.place(from, key(field)).err(ELSEWHERE));
        }
        let assistant_id =
            check::assistant_id(&chosen.value, &src.at(chosen, key("assistant_id")))?;
        return Ok(UpstreamApi::Assistants { assistant_id });
    }
    let model = check::model(&chosen.value, &src.at(chosen, key("model")))?;
    let instructions = match (&raw.instructions, &raw.instructions_file) {
        (Some(_), Some(file)) => {
            return Err(src.at(file, key("instructions_file")).err(format!(
                "and {} are both set: keep one (the text itself, or the file holding it)",
                key("instructions")
            )))
        }
        (Some(_), None) => src.text(&raw.instructions, &key("instructions"), |text, at| {
            check::instructions(text, "the text", at)
        })?,
        (None, Some(_)) => src.text(
            &raw.instructions_file,
            &key("instructions_file"),
            |name, at| instructions_file(src.dir, name, at),
        )?,
        (None, None) => None,
    };
    let tools = match &raw.tools {
        Some(list) => tools(src, &list.value, &key("tools"), lead_tool)?,
        None => Vec::new(),
    };
    Ok(UpstreamApi::Responses {
        model,
        instructions,
        tools,
    })
}

/// The instructions in the file `name`, relative to `dir` (the configuration's directory).
fn instructions_file(dir: &Path, name: &str, at: &At) -> Result<String, ConfigError> {
    let name = name.trim();
    if name.is_empty() {
        return Err(at.err(
            "is empty: write the path of a UTF-8 text file holding the instructions, relative \
             to this file's directory",
        ));
    }
    let place = if Path::new(name).is_absolute() {
        String::new()
    } else if dir.as_os_str().is_empty() {
        " (relative paths start from the working directory)".to_string()
    } else {
        format!(
            " (relative paths start from {}, the directory of this file)",
            dir.display()
        )
    };
    let shown = check::shown(name);
    let bytes = std::fs::read(dir.join(name)).map_err(|e| {
        at.err(format!(
            "cannot read {shown}{place}: {e}; check the path and the file's permissions"
        ))
    })?;
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
    let Ok(text) = std::str::from_utf8(bytes) else {
        return Err(at.err(format!(
            "{shown}{place} is not UTF-8 text: save it as UTF-8"
        )));
    };
    check::instructions(text, &format!("the file {shown}"), at)
}

/// `tools`: each entry (with its own key `tools[i]` and line) passed through as JSON.
fn tools(
    src: &Source,
    list: &List<serde_json::Value>,
    key: &str,
    lead_tool: &str,
) -> Result<Vec<serde_json::Value>, ConfigError> {
    let items = list.0.iter().enumerate();
    items
        .map(|(i, item)| {
            let at = src.at(item, format!("{key}[{i}]"));
            if has_datetime(&item.value) {
                return Err(at.err(
                    "contains a date or time: tool definitions take strings, numbers, \
                     booleans, arrays and tables only; write the date as a string in double \
                     quotes",
                ));
            }
            check::tool(&item.value, lead_tool, &at)?;
            Ok(item.value.clone())
        })
        .collect()
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
