//! The TOML configuration file (`--config PATH`): the whole configuration in one file.
//!
//! serde deserializes the file into the typed `raw` structures (unknown keys and wrong types
//! are serde's own errors, carrying toml's span); `validate` then checks them as it checks the
//! environment. An error gets its line from the span and its key from the parsed document:
//! the dotted path (`tenants[1].domains[0]`) of whatever the span points at, so `#` or `[x]`
//! inside strings never mislead it. Messages never quote the offending line, which may hold a
//! secret. `api_key_env` / `password_env` are looked up in the environment map the caller
//! passes; `instructions_file` is read relative to the file's directory.

use std::collections::HashMap;
use std::path::Path;

use toml_edit::{ImDocument, Item, TableLike, Value};

use super::error::ConfigError;
use super::raw::RawConfig;
use super::types::Config;
use super::validate::{self, line_of, Source};

/// The documented example file, whose `key = value` lines are quoted in messages.
const EXAMPLE_FILE: &str = include_str!("../../conf/chatbot-proxy.toml");

/// Keys whose values are secrets: a parser error on their line is checked for leaks.
const SECRET_KEYS: [&str; 3] = ["api_key", "password", "session_secret"];

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
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let source = Source {
        text: Some(text),
        env,
        dir: base_dir,
    };
    toml::from_str::<RawConfig>(text)
        .map_err(|e| toml_error(text, &e))
        .and_then(|raw| validate::config(raw, &source))
        .map_err(|e| e.in_file(source_name))
}

/// A parser or deserializer error as a `ConfigError` with its line, its key and what to do,
/// and no secret from the offending line.
fn toml_error(text: &str, err: &toml::de::Error) -> ConfigError {
    let syntax = ImDocument::parse(text).is_err();
    let mut message = reworded(err.message(), syntax);
    let Some(offset) = err.span().map(|span| span.start) else {
        return ConfigError::general(message);
    };
    let line = line_of(text, offset);
    let key = key_at(text, offset, syntax);
    if leaks_secret(&message, text.split('\n').nth(line - 1).unwrap_or("")) {
        message = "this line is not valid TOML (the value is not shown because it is a secret): \
                   write it as a string in double quotes, e.g. api_key = \"sk-...\""
            .to_string();
    } else if message.starts_with("must be ") {
        match key.as_deref().and_then(example_of) {
            Some(example) => message += &format!(": write e.g. {example}"),
            None => message += ": see conf/chatbot-proxy.toml for the expected layout",
        }
    }
    match key {
        Some(key) => ConfigError::new(key, message),
        None => ConfigError::general(message),
    }
    .with_line(Some(line))
}

/// The message of the parser (`syntax`) or of serde, reworded to say what to do, without
/// the value serde may quote.
fn reworded(message: &str, syntax: bool) -> String {
    let message = message.trim().replace('\n', "; ");
    if syntax && message.starts_with("duplicate key") {
        return format!("{message}: keep only one of them");
    }
    if syntax {
        return format!(
            "{message}: fix the TOML syntax here (strings need double quotes, e.g. key = \"value\")"
        );
    }
    if let Some(rest) = message.strip_prefix("unknown field") {
        let allowed = ": check the spelling; the keys allowed here are ";
        let rest = rest
            .replacen(", expected one of ", allowed, 1)
            .replacen(", expected ", allowed, 1)
            .replacen(", there are no fields", ": this table takes no keys", 1);
        return format!("unknown key{rest}");
    }
    let Some((found, expected)) = message
        .strip_prefix("invalid type: ")
        .and_then(|rest| rest.split_once(", expected "))
    else {
        return message; // our own, from a type's `TryFrom`
    };
    let expected = match expected {
        "i64" => "a whole number without quotes",
        "a string" => "a string in double quotes",
        "a sequence" => "an array",
        other if other.starts_with("struct ") => "a table",
        other => other,
    };
    // What serde found, without the value itself (`string "4"`, `integer `5``).
    let found = match found.split([' ', '`', '"']).next().unwrap_or_default() {
        "string" => "a string",
        "integer" => "a number",
        "floating" => "a decimal number",
        "boolean" => "a boolean",
        "sequence" => "an array",
        "map" => "a table",
        "date-time" => "a date-time",
        _ => "something else",
    };
    format!("must be {expected}, not {found}")
}

/// `name = value` as the example file writes it (commented out or not) for the last part of
/// `key`; none when the value spans lines.
fn example_of(key: &str) -> Option<&'static str> {
    let name = key.rsplit('.').next()?.split('[').next()?;
    EXAMPLE_FILE
        .lines()
        .map(|line| line.trim_start_matches(['#', ' ']))
        .find(|line| {
            line.split_once(" = ").is_some_and(|(left, value)| {
                left == name && value != "\"\"\"" && !value.ends_with('[')
            })
        })
}

/// The dotted key (`tenants[1].domains[0]`) of what is written at byte `offset`. After a
/// syntax error the rest of the line is replaced by a value, so that the document parses.
fn key_at(text: &str, offset: usize, syntax: bool) -> Option<String> {
    let patched;
    let text = match syntax {
        true => {
            let end = text
                .get(offset..)?
                .find('\n')
                .map_or(text.len(), |n| offset + n);
            patched = format!("{}0{}", &text[..offset], &text[end..]);
            &patched
        }
        false => text,
    };
    let doc = ImDocument::parse(text).ok()?;
    key_in_table(doc.as_table(), offset, "")
}

fn key_in_table(table: &dyn TableLike, offset: usize, path: &str) -> Option<String> {
    table.iter().find_map(|(name, item)| {
        let path = match path {
            "" => name.to_string(),
            _ => format!("{path}.{name}"),
        };
        let at_key = table.key(name).and_then(|key| key.span());
        if at_key.is_some_and(|span| span.contains(&offset)) {
            return Some(path);
        }
        let inner = match item {
            Item::Table(table) => key_in_table(table, offset, &path),
            Item::ArrayOfTables(tables) => tables.iter().enumerate().find_map(|(i, table)| {
                let path = format!("{path}[{i}]");
                key_in_table(table, offset, &path).or_else(|| within(table.span(), offset, path))
            }),
            Item::Value(value) => key_in_value(value, offset, &path),
            Item::None => None,
        };
        inner.or_else(|| within(item.span(), offset, path))
    })
}

fn key_in_value(value: &Value, offset: usize, path: &str) -> Option<String> {
    match value {
        Value::Array(items) => items.iter().enumerate().find_map(|(i, item)| {
            let path = format!("{path}[{i}]");
            key_in_value(item, offset, &path).or_else(|| within(item.span(), offset, path))
        }),
        Value::InlineTable(table) => key_in_table(table, offset, path),
        _ => None,
    }
}

/// `path` when `span` holds `offset`.
fn within(span: Option<std::ops::Range<usize>>, offset: usize, path: String) -> Option<String> {
    span.filter(|span| span.contains(&offset)).map(|_| path)
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
    if !SECRET_KEYS.contains(&key.rsplit('.').next().unwrap_or(key)) {
        return false;
    }
    let value: Vec<char> = value.trim().trim_matches(['"', '\'']).chars().collect();
    value.len() >= 4
        && value
            .windows(4)
            .any(|w| message.contains(&w.iter().collect::<String>()))
}

#[cfg(test)]
mod tests {
    use super::super::types::*;
    use super::*;
    use std::time::Duration;

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

    /// A tenant's domains in their normalized form.
    fn domains(tenant: &Tenant) -> Vec<String> {
        tenant.domains.iter().map(ToString::to_string).collect()
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
        assert_eq!(domains(acme), ["acme.com", "*.acme.com"]);
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
        assert_eq!(domains(&config.tenants[0]), ["acme.com", "*.acme.com"]);
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
        assert_eq!(domains(&config.tenants[0]), ["shop.a.com", "*.a.com"]);
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
    fn upstream_pool_size_is_read_and_bounded() {
        let config = load(MINIMAL).unwrap();
        assert_eq!(config.upstream.pool_size, 128, "Pingora's default");
        let with = |upstream: &str| format!("{MINIMAL}\n[upstream]\n{upstream}\n");
        let config = load(&with("pool_size = 16")).unwrap();
        assert_eq!(config.upstream.pool_size, 16);
        let err = load_err(&with("pool_size = 0"));
        assert!(
            err.starts_with("chatbot-proxy.toml line 8: upstream.pool_size: 0 is out of range"),
            "{err}"
        );
        assert!(err.contains("from 1 to 100000"), "{err}");
        assert!(load_err(&with("pool_size = 100001")).contains("upstream.pool_size"));
        assert!(load_err(&with("pool_size = \"64\"")).contains("upstream.pool_size"));
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
                max_per_address_per_day: 5,
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

    // leads under abuse; bot check (Turnstile)
    #[test]
    fn address_cap_and_bot_check_settings() {
        let config = load(MINIMAL).unwrap();
        assert_eq!(config.leads.max_per_address_per_day, 5);
        assert_eq!(config.tenants[0].turnstile_secret, None, "off by default");
        let turnstile = &config.limits.turnstile;
        assert_eq!(
            turnstile.endpoint.base_url,
            "https://challenges.cloudflare.com/turnstile/v0/siteverify"
        );
        assert_eq!(turnstile.timeout, Duration::from_secs(3));

        let config = load(&format!(
            "[leads]\nmax_per_address_per_day = 12\n[limits]\n\
             turnstile_verify_url = \"http://127.0.0.1:9/siteverify\"\n\
             turnstile_timeout_ms = 250\n{MINIMAL}turnstile_secret = \"0x4AAA-secret\"\n"
        ))
        .unwrap();
        assert_eq!(config.leads.max_per_address_per_day, 12);
        let secret = config.tenants[0].turnstile_secret.as_ref().unwrap();
        assert_eq!(secret.expose(), "0x4AAA-secret");
        let turnstile = &config.limits.turnstile;
        let e = &turnstile.endpoint;
        assert_eq!(
            (e.tls, e.host.as_str(), e.port, e.base_path.as_str()),
            (false, "127.0.0.1", 9, "/siteverify")
        );
        assert_eq!(turnstile.timeout, Duration::from_millis(250));
        assert_eq!(e.connect_timeout, Duration::from_millis(250));
        assert_eq!(e.first_byte_timeout, Duration::from_millis(250));
        assert_eq!(e.address_connect_timeout, Duration::from_millis(250));
        assert_eq!(
            config.tenants[0].turnstile_site_key, None,
            "no site key by default"
        );

        // The site key is public: the proxy's widget gets it from widget-config.
        let config = load(&format!(
            "{MINIMAL}turnstile_secret = \"0xS\"\nturnstile_site_key = \" 0x4AAA-site_key \"\n"
        ))
        .unwrap();
        let key = config.tenants[0].turnstile_site_key.as_deref();
        assert_eq!(key, Some("0x4AAA-site_key"));
        let config = load(&format!("{MINIMAL}turnstile_site_key = \"\"\n")).unwrap();
        assert_eq!(config.tenants[0].turnstile_site_key, None, "\"\" is none");
        let err = load_err(&format!(
            "{MINIMAL}turnstile_site_key = \"0x4AAA <script>\"\n"
        ));
        assert!(
            err.contains("tenants[0].turnstile_site_key: ")
                && err.contains("not a Turnstile site key"),
            "{err}"
        );

        let env = env(&[("ACME_TURNSTILE", " 0x4AAA-from-env ")]);
        let text = format!("{MINIMAL}turnstile_secret_env = \"ACME_TURNSTILE\"\n");
        let config = from_toml_str(&text, FILE, &env).unwrap();
        let secret = config.tenants[0].turnstile_secret.as_ref().unwrap();
        assert_eq!(secret.expose(), "0x4AAA-from-env");
    }

    #[test]
    fn bad_bot_check_settings_are_refused_without_showing_secrets() {
        let err = load_err(&format!(
            "{MINIMAL}turnstile_secret = \"0xSECRET\"\nturnstile_secret_env = \"T\"\n"
        ));
        assert!(
            err.contains(
                "tenants[0].turnstile_secret_env: and tenants[0].turnstile_secret are both set"
            ),
            "{err}"
        );
        let err = load_err(&format!("{MINIMAL}turnstile_secret = \"0x SECRET\"\n"));
        assert!(
            err.contains("tenants[0].turnstile_secret: the Turnstile secret contains spaces"),
            "{err}"
        );
        assert!(!err.contains("SECRET"), "{err}");
        let err = load_err(&format!("{MINIMAL}turnstile_secret = \" \"\n"));
        assert!(err.contains("is empty"), "{err}");
        let err = load_err(&format!(
            "{MINIMAL}turnstile_secret_env = \"NOT_SET_ANYWHERE\"\n"
        ));
        assert!(err.contains("NOT_SET_ANYWHERE is not set"), "{err}");
        for url in [
            "challenges.cloudflare.com/turnstile",
            "ftp://127.0.0.1/siteverify",
            "https://user:pw@example.com/siteverify",
            "https://example.com/siteverify?secret=x",
        ] {
            let err = load_err(&format!(
                "[limits]\nturnstile_verify_url = \"{url}\"\n{MINIMAL}"
            ));
            assert!(
                err.starts_with("chatbot-proxy.toml line 2: limits.turnstile_verify_url: is not a usable siteverify URL"),
                "{err}"
            );
            assert!(!err.contains("pw@"), "{err}");
        }
        let err = load_err(&format!("[limits]\nturnstile_timeout_ms = 0\n{MINIMAL}"));
        assert!(
            err.contains("limits.turnstile_timeout_ms: 0 is out of range"),
            "{err}"
        );
        let err = load_err(&format!("[leads]\nmax_per_address_per_day = 0\n{MINIMAL}"));
        assert!(
            err.contains("leads.max_per_address_per_day: 0 is out of range"),
            "{err}"
        );
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
        assert_eq!(key_at(text, 0, false).as_deref(), Some("a"));
        assert_eq!(
            key_at(text, offset("listen"), false).as_deref(),
            Some("server.listen")
        );
        assert_eq!(
            key_at(text, offset("x ="), false).as_deref(),
            Some("tenants[0].x")
        );
        assert_eq!(
            key_at(text, offset(" 1,"), false).as_deref(),
            Some("tenants[1].y")
        );
    }

    #[test]
    fn key_path_is_not_fooled_by_strings_and_comments() {
        // Header-like text inside strings and comments, which scanning lines took for tables.
        let text = "a = \"[x] # not a table\"\n# [[tenants]]\n[server]\nprefix = \"#[y]\"\n\
                    listen = 2 # [z]\n[[tenants]]\ndomains = [\"a\", \"[[b]]\", 3]\n";
        let offset = |needle: &str| text.find(needle).unwrap();
        assert_eq!(key_at(text, offset("[x]"), false).as_deref(), Some("a"));
        assert_eq!(
            key_at(text, offset("listen"), false).as_deref(),
            Some("server.listen")
        );
        assert_eq!(
            key_at(text, offset("3]"), false).as_deref(),
            Some("tenants[0].domains[2]"),
            "the first [[tenants]] is the one after the comment"
        );
        // A syntax error: the rest of the line is replaced, the rest of the file still counts.
        let broken = "[server]\nlisten = 0.0.0.0:3000\n[[tenants]]\nx = 1\n";
        let at = broken.find("0.0.0").unwrap();
        assert_eq!(key_at(broken, at, true).as_deref(), Some("server.listen"));
    }

    #[test]
    fn wrong_types_are_serde_errors_with_an_example_and_never_the_value() {
        let err = load(&format!(
            "{MINIMAL}[smtp]\nhost = \"m.x\"\nport = \"hunter2-port\"\n"
        ))
        .unwrap_err();
        assert_eq!((err.key(), err.line()), (Some("smtp.port"), Some(8)));
        assert_eq!(
            err.message(),
            "must be a whole number without quotes, not a string: write e.g. port = 587"
        );
        let err = load_err(&named("model = \"m\"\ntools = 2024-01-01T00:00:00Z\n"));
        assert!(err.contains("tenants[0].tools: must be an array of tables, not a date-time"));
        // A secret in a number's place: the type is named, the value is not.
        let err = load_err(&format!("[server]\nthreads = \"sk-SECRET-77\"\n{MINIMAL}"));
        assert_eq!(
            err,
            "chatbot-proxy.toml line 2: server.threads: must be a whole number without quotes, \
             not a string: write e.g. threads = 2"
        );
        let err = load_err(&format!("server = 5\n{MINIMAL}"));
        assert!(
            err.starts_with("chatbot-proxy.toml line 1: server: must be a table"),
            "{err}"
        );
    }

    #[test]
    fn an_invalid_domain_names_the_tenant_key() {
        // Moved from the tenant directory, which parsed the entries before the configuration
        // did: now the configuration parses them, with the directory's own rule.
        let err = load_err(&with_domains(r#"["a.com", "*"]"#));
        assert!(
            err.starts_with(
                "chatbot-proxy.toml line 2: tenants[0].domains[1]: \"*\" would allow every website"
            ),
            "{err}"
        );
        let err = load_err(&with_domains(r#"["*.com"]"#));
        assert!(err.contains("every site under \"com\""), "{err}");
        // An entry that looks like a key is not quoted, nor is the hint that names its host.
        let err = load_err(&with_domains(r#"["sk-live-abcdef.com:80"]"#));
        assert!(!err.contains("abcdef"), "{err}");
    }

    /// Two tenants, `alice` with `first` and `bob` with `second` (line 8).
    fn two_tenants(first: &str, second: &str) -> String {
        format!(
            "[[tenants]]\nname = \"alice\"\ndomains = [\"{first}\"]\napi_key = \"sk-a1\"\n\
             assistant_id = \"asst_a\"\n[[tenants]]\nname = \"bob\"\ndomains = [\"{second}\"]\n\
             api_key = \"sk-b1\"\nassistant_id = \"asst_b\"\n"
        )
    }

    #[test]
    fn the_same_site_in_two_tenants_is_refused_after_normalization() {
        for (first, second, site) in [
            ("example.com", "www.example.com", "example.com"),
            ("Example.COM.", "example.com", "example.com"),
            (
                "bücher.example",
                "xn--bcher-kva.example",
                "xn--bcher-kva.example",
            ),
            ("::1", "[::1]", "[::1]"),
            ("::ffff:1.2.3.4", "::ffff:102:304", "[::ffff:102:304]"),
            ("*.Example.com.", "*.example.com", "*.example.com"),
        ] {
            let err = load(&two_tenants(first, second)).unwrap_err();
            assert_eq!(err.key(), Some("tenants[1].domains[0]"), "{err}");
            assert_eq!(err.line(), Some(8), "{err}");
            let shown = err.to_string();
            for part in ["\"alice\"", "\"bob\"", "tenants[0].domains[0], line 3"] {
                assert!(shown.contains(part), "{first} / {second}: {shown}");
            }
            assert!(shown.contains(&format!("the site \"{site}\"")), "{shown}");
        }
        // Different sites: nested wildcards, a wildcard and its apex, www under a wildcard.
        for (first, second) in [
            ("*.example.com", "*.eu.example.com"),
            ("*.example.com", "example.com"),
            ("*.example.com", "shop.example.com"),
            ("example.com", "www.example.org"),
            ("127.0.0.1", "localhost"),
        ] {
            let config = load(&two_tenants(first, second)).unwrap();
            assert_eq!(config.tenants.len(), 2, "{first} / {second}");
        }
    }

    #[test]
    fn two_spellings_of_one_site_in_one_tenant_are_kept() {
        let config = load(&with_domains(r#"["example.com", "www.example.com"]"#)).unwrap();
        assert_eq!(domains(&config.tenants[0]), ["example.com"]);
        assert_eq!(config.tenants[0].name, "example.com");
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
        assert!(err.contains("upstream.resolve"), "{err}");
        assert!(err.contains("array"), "{err}");
        let err = load_err(&format!(
            "[upstream]\nconnect_timeout_ms = 1000\naddress_connect_timeout_ms = 2000\n{MINIMAL}"
        ));
        assert!(
            err.starts_with("chatbot-proxy.toml line 3: upstream.address_connect_timeout_ms:"),
            "{err}"
        );
        assert!(err.contains("connect_timeout_ms (1000)"), "{err}");
    }

    // conversation handles
    #[test]
    fn session_secret_from_the_file_or_a_variable() {
        let secret = "s3cret-s3cret-s3cret-s3cret-s3cret";
        let config = load(&format!(
            "[limits]\nsession_secret = \"{secret}\"\nconversation_ttl_hours = 48\n\
             max_messages_per_conversation = 3\n{MINIMAL}"
        ))
        .unwrap();
        assert_eq!(config.limits.session_secret, Some(Secret::new(secret)));
        assert_eq!(
            config.limits.conversation_ttl,
            Duration::from_secs(48 * 3600)
        );
        assert_eq!(config.limits.max_messages_per_conversation, 3);
        let text = format!("[limits]\nsession_secret_env = \"HANDLE_KEY\"\n{MINIMAL}");
        let config = from_toml_str(&text, FILE, &env(&[("HANDLE_KEY", secret)])).unwrap();
        assert_eq!(config.limits.session_secret, Some(Secret::new(secret)));

        let err = load_err(&format!(
            "[limits]\nsession_secret = \"short-one\"\n{MINIMAL}"
        ));
        assert!(
            err.starts_with(
                "chatbot-proxy.toml line 2: limits.session_secret: the secret is 9 bytes"
            ),
            "{err}"
        );
        assert!(!err.contains("short-one"), "{err}");
        let err = from_toml_str(&text, FILE, &env(&[("HANDLE_KEY", "short-two")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("limits.session_secret_env: the secret in HANDLE_KEY is 9 bytes"),
            "{err}"
        );
        assert!(!err.contains("short-two"), "{err}");
        let err = from_toml_str(&text, FILE, &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("HANDLE_KEY is not set"), "{err}");
        let err = load_err(&format!(
            "[limits]\nsession_secret = \"{secret}\"\nsession_secret_env = \"K\"\n{MINIMAL}"
        ));
        assert!(err.contains("both set"), "{err}");
        let err = load_err(&format!(
            "[limits]\nmax_messages_per_conversation = 0\n{MINIMAL}"
        ));
        assert!(
            err.contains("limits.max_messages_per_conversation"),
            "{err}"
        );
        for line in [
            "session_secret = s3cret-value-written-bare",
            "session_secret = [\"s3cret-value-in-an-array\"]",
        ] {
            let err = load_err(&format!("[limits]\n{line}\n{MINIMAL}"));
            assert!(err.contains("line 2"), "{err}");
            assert!(!err.contains("s3cret-value"), "{err}");
        }
    }

    #[test]
    fn the_commented_examples_of_handles_and_output_tokens_work() {
        let text = include_str!("../../conf/chatbot-proxy.toml")
            .replace("# session_secret_env = ", "session_secret_env = ")
            .replace("# max_output_tokens = ", "max_output_tokens = ");
        let vars = env(&[
            ("ACME_OPENAI_KEY", "sk-acme-example"),
            ("BISTRO_OPENAI_KEY", "sk-bistro-example"),
            ("SMTP_PASS", "smtp-example-pass"),
            ("SESSION_SECRET", "an-example-secret-of-32-bytes-xx"),
        ]);
        let config = from_toml_str(&text, "conf/chatbot-proxy.toml", &vars).unwrap();
        assert!(config.limits.session_secret.is_some());
        assert_eq!(
            config.limits.conversation_ttl,
            Duration::from_secs(24 * 3600)
        );
        assert_eq!(config.tenants[0].max_output_tokens, Some(1024));
    }

    // output tokens
    #[test]
    fn max_output_tokens_per_tenant() {
        assert_eq!(load(MINIMAL).unwrap().tenants[0].max_output_tokens, None);
        let config = load(&format!("{MINIMAL}max_output_tokens = 800\n")).unwrap();
        assert_eq!(config.tenants[0].max_output_tokens, Some(800));
        let err = load_err(&format!("{MINIMAL}max_output_tokens = 15\n"));
        assert!(
            err.contains("tenants[0].max_output_tokens: 15 is out of range"),
            "{err}"
        );
    }

    #[test]
    fn client_timeouts_and_run_object_redaction() {
        let config = load(MINIMAL).unwrap();
        let timeouts = config.server.timeouts;
        assert_eq!(timeouts.keepalive, Duration::from_secs(60));
        assert_eq!(timeouts.request_header, Duration::from_secs(10));
        assert_eq!(timeouts.request_body, Duration::from_secs(15));
        assert_eq!(timeouts.stalled_reader, Duration::from_secs(30));
        assert!(!config.tenants[0].redact_run_objects, "off by default");
        let config = load(&format!(
            "[server]\nkeepalive_timeout_seconds = 5\nrequest_header_timeout_seconds = 2\n\
             request_body_timeout_seconds = 3\nstalled_reader_timeout_seconds = 4\n{MINIMAL}\n\
             redact_run_objects = true\n"
        ))
        .unwrap();
        let timeouts = config.server.timeouts;
        assert_eq!(
            [
                timeouts.keepalive,
                timeouts.request_header,
                timeouts.request_body,
                timeouts.stalled_reader
            ],
            [5, 2, 3, 4].map(Duration::from_secs)
        );
        assert!(config.tenants[0].redact_run_objects);
        let err = load_err(&format!(
            "[server]\nkeepalive_timeout_seconds = 0\n{MINIMAL}"
        ));
        assert!(
            err.starts_with("chatbot-proxy.toml line 2: server.keepalive_timeout_seconds:"),
            "{err}"
        );
        let err = load_err(&format!("{MINIMAL}\nredact_run_objects = \"yes\"\n"));
        assert!(err.contains("redact_run_objects"), "{err}");
    }

    // token budgets
    #[test]
    fn daily_token_budget_is_per_tenant_and_zero_means_none() {
        let config = load(MINIMAL).unwrap();
        assert_eq!(
            config.tenants[0].daily_token_budget, None,
            "no budget by default"
        );
        let config = load(&format!("{MINIMAL}\ndaily_token_budget = 250000\n")).unwrap();
        assert_eq!(config.tenants[0].daily_token_budget, Some(250_000));
        let config = load(&format!("{MINIMAL}\ndaily_token_budget = 0\n")).unwrap();
        assert_eq!(config.tenants[0].daily_token_budget, None);
        let err = load_err(&format!("{MINIMAL}\ndaily_token_budget = -1\n"));
        assert!(err.contains("tenants[0].daily_token_budget:"), "{err}");
        assert!(err.contains("-1 is out of range"), "{err}");
    }
}
