//! The two ways to configure the proxy: one TOML file (`--config`), or the old service's
//! environment (process environment plus a `.env` file in the working directory); `--test`;
//! and configuration errors that stop start-up with a message naming the key and line, and
//! never the secret.

use crate::harness::*;
use serde_json::json;

/// The upstream calls made while creating a thread from `origin` must carry `key`.
fn assert_served_with_key(stub: &Stub, proxy: &Proxy, prefix: &str, origin: &str, key: &str) {
    stub.clear_requests();
    let resp = proxy
        .get(&format!("{prefix}/create-thread"))
        .origin(origin)
        .send();
    assert_eq!(
        resp.status, 200,
        "create-thread from {origin}: {}",
        resp.body
    );
    let upstream = stub.requests();
    assert_eq!(upstream.len(), 1, "{upstream:?}");
    assert_eq!(
        upstream[0].header("authorization"),
        Some(format!("Bearer {key}").as_str()),
        "{origin} must be served with {key}"
    );
}

/// Sends a message from `origin` and checks the run used `assistant`.
fn assert_run_uses_assistant(proxy: &Proxy, prefix: &str, origin: &str, assistant: &str) {
    let thread = proxy
        .get(&format!("{prefix}/create-thread"))
        .origin(origin)
        .send();
    assert_eq!(thread.status, 200, "{}", thread.body);
    let thread_id = thread.json()["id"].as_str().unwrap().to_string();
    let req = RawRequest::new("POST", &format!("{prefix}/process-message"))
        .header("Origin", origin)
        .json(&json!({"threadId": thread_id, "message": "config check"}));
    let stream = proxy.raw(&req);
    assert_eq!(stream.status, 200, "{}", stream.text());
    let events = stream.events();
    assert!(!events.is_empty(), "{}", stream.text());
    assert_eq!(events[0].json()["assistant_id"], assistant);
    assert_eq!(event_names(&events).last().copied(), Some("done"));
}

/// True if `text` says "line N" (any case), not followed by another digit.
fn mentions_line(text: &str, line: usize) -> bool {
    let lower = text.to_ascii_lowercase();
    let needle = format!("line {line}");
    lower.match_indices(&needle).any(|(at, _)| {
        !lower[at + needle.len()..]
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit())
    })
}

fn assert_rejected(exited: &Exited, names: &[&str], secrets: &[&str]) {
    assert_eq!(
        exited.code,
        Some(1),
        "an invalid configuration must make --test exit 1; output:\n{}",
        exited.output
    );
    for name in names {
        assert!(
            exited.output.contains(name),
            "the message must name {name:?}; output:\n{}",
            exited.output
        );
    }
    for secret in secrets {
        assert!(
            !exited.output.contains(secret),
            "the output reveals the secret {secret:?}:\n{}",
            exited.output
        );
    }
}

// ---------------------------------------------------------------------------------------------
// TOML mode
// ---------------------------------------------------------------------------------------------

#[test]
fn toml_mode_serves_each_tenant_with_its_key_and_assistant() {
    let stub = Stub::start();
    let proxy = Proxy::start_with_toml(&two_tenant_toml(&stub.base_url()));
    assert_served_with_key(&stub, &proxy, PREFIX, ORIGIN_A, KEY_A);
    assert_served_with_key(&stub, &proxy, PREFIX, ORIGIN_B, KEY_B);
    assert_run_uses_assistant(&proxy, PREFIX, ORIGIN_A, ASSISTANT_A);
    assert_run_uses_assistant(&proxy, PREFIX, ORIGIN_B, ASSISTANT_B);
}

#[test]
fn toml_mode_reads_prefix_and_api_key_env() {
    let stub = Stub::start();
    let toml = format!(
        r#"[server]
prefix = "/chat"

[upstream]
base_url = "{}"

[[tenants]]
domains = ["shop.example.com"]
api_key_env = "SHOP_OPENAI_KEY"
assistant_id = "asst_SHOP"
"#,
        stub.base_url()
    );
    let proxy = Proxy::launch()
        .toml(&toml)
        .env("SHOP_OPENAI_KEY", "sk-from-env-var")
        .start();
    assert_served_with_key(&stub, &proxy, "/chat", ORIGIN_A, "sk-from-env-var");
    assert_run_uses_assistant(&proxy, "/chat", ORIGIN_A, "asst_SHOP");

    let resp = proxy
        .get(&format!("{PREFIX}/create-thread"))
        .origin(ORIGIN_A)
        .send();
    resp.assert_error(404, "not_found");
}

#[test]
fn toml_mode_ignores_the_environment_and_dotenv() {
    let stub = Stub::start();
    let old_env = [
        ("DOMAINS", r#"["evil.net"]"#),
        ("OPENAI_API_KEYS", r#"["sk-env-evil"]"#),
        ("ASSISTANT_IDS", r#"["asst_EVIL"]"#),
        ("OPENAI_BASE_URL", "http://127.0.0.1:9/v1"),
    ];
    let mut launch = Proxy::launch()
        .toml(&two_tenant_toml(&stub.base_url()))
        .dotenv("DOMAINS='[\"evil.net\"]'\nOPENAI_API_KEYS='[\"sk-dotenv-evil\"]'\nASSISTANT_IDS='[\"asst_EVIL\"]'\n");
    for (name, value) in old_env {
        launch = launch.env(name, value);
    }
    let proxy = launch.start();

    let resp = proxy
        .get(&format!("{PREFIX}/create-thread"))
        .origin(EVIL_ORIGIN)
        .send();
    resp.assert_error(403, "origin_not_allowed");
    assert_served_with_key(&stub, &proxy, PREFIX, ORIGIN_A, KEY_A);
}

// ---------------------------------------------------------------------------------------------
// Environment mode (the old service's configuration)
// ---------------------------------------------------------------------------------------------

const ENV_KEY_A: &str = "sk-env-a";
const ENV_KEY_B: &str = "sk-env-b";

fn old_service_env(stub: &Stub) -> Vec<(&'static str, String)> {
    vec![
        (
            "DOMAINS",
            r#"["shop.example.com","b-tenant.test"]"#.to_string(),
        ),
        (
            "OPENAI_API_KEYS",
            format!(r#"["{ENV_KEY_A}","{ENV_KEY_B}"]"#),
        ),
        ("ASSISTANT_IDS", r#"["asst_EA","asst_EB"]"#.to_string()),
        (
            "EMAIL_TO",
            r#"["sales@shop.example.com","team@b-tenant.test"]"#.to_string(),
        ),
        ("OPENAI_BASE_URL", stub.base_url()),
    ]
}

#[test]
fn env_only_mode_serves_each_domain_with_its_key_and_assistant() {
    let stub = Stub::start();
    let vars = old_service_env(&stub);
    let vars: Vec<(&str, &str)> = vars.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let proxy = Proxy::start_with_env(&vars, None);

    assert_served_with_key(&stub, &proxy, PREFIX, ORIGIN_A, ENV_KEY_A);
    assert_served_with_key(
        &stub,
        &proxy,
        PREFIX,
        "https://www.b-tenant.test",
        ENV_KEY_B,
    );
    assert_run_uses_assistant(&proxy, PREFIX, ORIGIN_A, "asst_EA");
    assert_run_uses_assistant(&proxy, PREFIX, ORIGIN_B, "asst_EB");
    let resp = proxy
        .get(&format!("{PREFIX}/create-thread"))
        .origin(EVIL_ORIGIN)
        .send();
    resp.assert_error(403, "origin_not_allowed");

    let logs = proxy.logs();
    for key in [ENV_KEY_A, ENV_KEY_B] {
        assert!(!logs.contains(key), "the log reveals {key}:\n{logs}");
    }
}

#[test]
fn a_dotenv_file_written_for_the_old_service_configures_the_proxy() {
    let stub = Stub::start();
    // As the NestJS service's .env files look: unquoted JSON arrays.
    let dotenv = format!(
        "# chatbot\nDOMAINS=[\"shop.example.com\",\"b-tenant.test\"]\n\
         OPENAI_API_KEYS=[\"{ENV_KEY_A}\",\"{ENV_KEY_B}\"]\n\
         ASSISTANT_IDS=[\"asst_EA\",\"asst_EB\"]\n\
         EMAIL_TO=[\"sales@shop.example.com\"]\n\
         OPENAI_BASE_URL={}\n",
        stub.base_url()
    );
    let proxy = Proxy::start_with_env(&[], Some(&dotenv));
    assert_served_with_key(&stub, &proxy, PREFIX, ORIGIN_A, ENV_KEY_A);
    assert_served_with_key(&stub, &proxy, PREFIX, ORIGIN_B, ENV_KEY_B);
    assert_run_uses_assistant(&proxy, PREFIX, ORIGIN_B, "asst_EB");
}

#[test]
fn the_process_environment_wins_over_dotenv() {
    let stub = Stub::start();
    let dotenv = format!(
        "DOMAINS='[\"shop.example.com\"]'\n\
         OPENAI_API_KEYS='[\"sk-from-dotenv\"]'\n\
         ASSISTANT_IDS='[\"asst_DOTENV\"]'\n\
         OPENAI_BASE_URL={}\n",
        stub.base_url()
    );
    let proxy = Proxy::start_with_env(
        &[("OPENAI_API_KEYS", r#"["sk-from-process"]"#)],
        Some(&dotenv),
    );
    assert_served_with_key(&stub, &proxy, PREFIX, ORIGIN_A, "sk-from-process");
    assert_run_uses_assistant(&proxy, PREFIX, ORIGIN_A, "asst_DOTENV");
}

// ---------------------------------------------------------------------------------------------
// --test
// ---------------------------------------------------------------------------------------------

#[test]
fn check_mode_accepts_a_valid_toml() {
    let exited = Proxy::launch()
        .toml(&two_tenant_toml("http://127.0.0.1:9/v1"))
        .check();
    assert_eq!(exited.code, Some(0), "{}", exited.output);
    assert!(
        exited.output.contains("configuration OK: 2 tenants"),
        "{}",
        exited.output
    );
    assert!(!exited.output.contains(KEY_A) && !exited.output.contains(KEY_B));
}

#[test]
fn check_mode_accepts_a_valid_environment() {
    let exited = Proxy::launch()
        .env("DOMAINS", r#"["shop.example.com","b-tenant.test"]"#)
        .env("OPENAI_API_KEYS", r#"["sk-env-a","sk-env-b"]"#)
        .env("ASSISTANT_IDS", r#"["asst_EA","asst_EB"]"#)
        // One recipient for every domain.
        .env("EMAIL_TO", r#"["sales@example.com"]"#)
        .check();
    assert_eq!(exited.code, Some(0), "{}", exited.output);
    assert!(
        exited.output.contains("configuration OK: 2 tenants"),
        "{}",
        exited.output
    );
}

#[test]
fn check_mode_accepts_a_dotenv_file() {
    let exited = Proxy::launch()
        .dotenv(
            "DOMAINS=[\"a.example\",\"b.example\",\"c.example\"]\n\
             OPENAI_API_KEYS=[\"sk-1\",\"sk-2\",\"sk-3\"]\n\
             ASSISTANT_IDS=[\"asst_1\",\"asst_2\",\"asst_3\"]\n",
        )
        .check();
    assert_eq!(exited.code, Some(0), "{}", exited.output);
    assert!(
        exited.output.contains("configuration OK: 3 tenants"),
        "{}",
        exited.output
    );
}

#[test]
fn a_wrongly_typed_value_is_named_with_its_line() {
    let toml = r#"[upstream]
base_url = "http://127.0.0.1:9/v1"

[limits]
max_body_bytes = "big"

[[tenants]]
domains = ["shop.example.com"]
api_key = "sk-live-SECRET-1"
assistant_id = "asst_A"
"#;
    let exited = Proxy::launch().toml(toml).check();
    assert_rejected(&exited, &["max_body_bytes"], &["sk-live-SECRET-1"]);
    assert!(
        mentions_line(&exited.output, 5),
        "the message must give line 5:\n{}",
        exited.output
    );
}

#[test]
fn a_toml_syntax_error_is_named_with_its_line() {
    let toml = r#"[upstream]
base_url = "http://127.0.0.1:9/v1"

[[tenants]]
domains = ["shop.example.com"]
api_key = "sk-live-SECRET-2"
assistant_id = asst_A
"#;
    let exited = Proxy::launch().toml(toml).check();
    assert_rejected(&exited, &["assistant_id"], &["sk-live-SECRET-2"]);
    assert!(
        mentions_line(&exited.output, 7),
        "the message must give line 7:\n{}",
        exited.output
    );
}

#[test]
fn a_syntax_error_on_the_key_line_does_not_print_the_key() {
    let toml = r#"[[tenants]]
domains = ["shop.example.com"]
api_key = "sk-live-SECRET-3
assistant_id = "asst_A"
"#;
    let exited = Proxy::launch().toml(toml).check();
    assert_rejected(&exited, &[], &["sk-live-SECRET-3", "SECRET-3"]);
    assert!(
        mentions_line(&exited.output, 3),
        "the message must give line 3:\n{}",
        exited.output
    );
}

#[test]
fn an_invalid_base_url_is_named_with_its_line() {
    let toml = r#"[upstream]
base_url = "not a url"

[[tenants]]
domains = ["shop.example.com"]
api_key = "sk-live-SECRET-4"
assistant_id = "asst_A"
"#;
    let exited = Proxy::launch().toml(toml).check();
    assert_rejected(&exited, &["base_url"], &["sk-live-SECRET-4"]);
    assert!(
        mentions_line(&exited.output, 2),
        "the message must give line 2:\n{}",
        exited.output
    );
}

#[test]
fn a_missing_assistant_id_is_named() {
    let toml = r#"[[tenants]]
domains = ["shop.example.com"]
api_key = "sk-live-SECRET-5"
assistant_id = "asst_A"

[[tenants]]
domains = ["b-tenant.test"]
api_key = "sk-live-SECRET-6"
"#;
    let exited = Proxy::launch().toml(toml).check();
    assert_rejected(
        &exited,
        &["assistant_id"],
        &["sk-live-SECRET-5", "sk-live-SECRET-6"],
    );
}

#[test]
fn api_key_and_api_key_env_are_mutually_exclusive_and_one_is_required() {
    let both = r#"[[tenants]]
domains = ["shop.example.com"]
api_key = "sk-live-SECRET-7"
api_key_env = "SHOP_KEY"
assistant_id = "asst_A"
"#;
    let exited = Proxy::launch()
        .toml(both)
        .env("SHOP_KEY", "sk-live-SECRET-8")
        .check();
    assert_rejected(
        &exited,
        &["api_key"],
        &["sk-live-SECRET-7", "sk-live-SECRET-8"],
    );

    let neither = r#"[[tenants]]
domains = ["shop.example.com"]
assistant_id = "asst_A"
"#;
    let exited = Proxy::launch().toml(neither).check();
    assert_rejected(&exited, &["api_key"], &[]);
}

#[test]
fn an_api_key_env_naming_an_unset_variable_is_an_error() {
    let toml = r#"[[tenants]]
domains = ["shop.example.com"]
api_key_env = "UNSET_SHOP_OPENAI_KEY"
assistant_id = "asst_A"
"#;
    let exited = Proxy::launch().toml(toml).check();
    assert_rejected(&exited, &["UNSET_SHOP_OPENAI_KEY"], &[]);
}

#[test]
fn a_configuration_without_tenants_is_an_error() {
    let toml = r#"[upstream]
base_url = "http://127.0.0.1:9/v1"
"#;
    let exited = Proxy::launch().toml(toml).check();
    assert_rejected(&exited, &["tenants"], &[]);
}

#[test]
fn a_bad_smtp_value_is_named_without_the_password() {
    let toml = r#"[smtp]
host = "smtp.example.com"
port = "five-eight-seven"
user = "bot@example.com"
password = "smtp-SECRET-PW"

[[tenants]]
domains = ["shop.example.com"]
api_key = "sk-live-SECRET-9"
assistant_id = "asst_A"
"#;
    let exited = Proxy::launch().toml(toml).check();
    assert_rejected(&exited, &["port"], &["smtp-SECRET-PW", "sk-live-SECRET-9"]);
    assert!(
        mentions_line(&exited.output, 3),
        "the message must give line 3:\n{}",
        exited.output
    );
}

#[test]
fn a_missing_config_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-such-config.toml");
    let exited = Proxy::launch().check_config_path(&path);
    assert_rejected(&exited, &["no-such-config.toml"], &[]);
}

#[test]
fn an_invalid_configuration_stops_start_up() {
    let toml = r#"[limits]
max_message_chars = -5

[[tenants]]
domains = ["shop.example.com"]
api_key = "sk-live-SECRET-10"
assistant_id = "asst_A"
"#;
    let exited = Proxy::launch().toml(toml).run_expecting_exit();
    assert!(
        exited.code.is_some_and(|c| c != 0),
        "start-up must fail with a non-zero exit code, got {:?}:\n{}",
        exited.code,
        exited.output
    );
    assert!(
        exited.output.contains("max_message_chars"),
        "{}",
        exited.output
    );
    assert!(
        !exited.output.contains("sk-live-SECRET-10"),
        "{}",
        exited.output
    );

    let exited = Proxy::launch()
        .env("DOMAINS", r#"["shop.example.com","b-tenant.test"]"#)
        .env("OPENAI_API_KEYS", r#"["sk-env-SECRET-11"]"#)
        .env("ASSISTANT_IDS", r#"["asst_1","asst_2"]"#)
        .run_expecting_exit();
    assert!(
        exited.code.is_some_and(|c| c != 0),
        "start-up must fail with a non-zero exit code, got {:?}:\n{}",
        exited.code,
        exited.output
    );
    assert!(
        exited.output.contains("OPENAI_API_KEYS"),
        "{}",
        exited.output
    );
    assert!(
        !exited.output.contains("sk-env-SECRET-11"),
        "{}",
        exited.output
    );
}

// ---------------------------------------------------------------------------------------------
// Environment-mode errors
// ---------------------------------------------------------------------------------------------

fn env_check(vars: &[(&str, &str)]) -> Exited {
    let mut launch = Proxy::launch();
    for (name, value) in vars {
        launch = launch.env(name, value);
    }
    launch.check()
}

#[test]
fn env_arrays_of_different_lengths_are_an_error() {
    let exited = env_check(&[
        ("DOMAINS", r#"["a.example","b.example"]"#),
        ("OPENAI_API_KEYS", r#"["sk-env-SECRET-12"]"#),
        ("ASSISTANT_IDS", r#"["asst_1","asst_2"]"#),
    ]);
    assert_rejected(&exited, &["OPENAI_API_KEYS"], &["sk-env-SECRET-12"]);

    let exited = env_check(&[
        ("DOMAINS", r#"["a.example","b.example"]"#),
        (
            "OPENAI_API_KEYS",
            r#"["sk-env-SECRET-13","sk-env-SECRET-14"]"#,
        ),
        ("ASSISTANT_IDS", r#"["asst_1","asst_2","asst_3"]"#),
    ]);
    assert_rejected(
        &exited,
        &["ASSISTANT_IDS"],
        &["sk-env-SECRET-13", "sk-env-SECRET-14"],
    );

    let exited = env_check(&[
        ("DOMAINS", r#"["a.example","b.example"]"#),
        (
            "OPENAI_API_KEYS",
            r#"["sk-env-SECRET-15","sk-env-SECRET-16"]"#,
        ),
        ("ASSISTANT_IDS", r#"["asst_1","asst_2"]"#),
        ("EMAIL_TO", r#"["x@a.example","y@b.example","z@c.example"]"#),
    ]);
    assert_rejected(
        &exited,
        &["EMAIL_TO"],
        &["sk-env-SECRET-15", "sk-env-SECRET-16"],
    );
}

#[test]
fn env_arrays_that_are_not_json_are_named_without_their_value() {
    let exited = env_check(&[
        ("DOMAINS", "shop.example.com"),
        ("OPENAI_API_KEYS", r#"["sk-env-SECRET-17"]"#),
        ("ASSISTANT_IDS", r#"["asst_1"]"#),
    ]);
    assert_rejected(&exited, &["DOMAINS"], &["sk-env-SECRET-17"]);

    let exited = env_check(&[
        ("DOMAINS", r#"["shop.example.com"]"#),
        ("OPENAI_API_KEYS", "sk-env-SECRET-18"),
        ("ASSISTANT_IDS", r#"["asst_1"]"#),
    ]);
    assert_rejected(
        &exited,
        &["OPENAI_API_KEYS"],
        &["sk-env-SECRET-18", "SECRET-18"],
    );
}

#[test]
fn no_configuration_at_all_names_what_is_missing() {
    let exited = env_check(&[]);
    assert_rejected(&exited, &["DOMAINS"], &[]);
}

#[test]
fn a_bad_smtp_port_in_the_environment_is_named_without_the_password() {
    let exited = env_check(&[
        ("DOMAINS", r#"["shop.example.com"]"#),
        ("OPENAI_API_KEYS", r#"["sk-env-SECRET-19"]"#),
        ("ASSISTANT_IDS", r#"["asst_1"]"#),
        ("SMTP_HOST", "smtp.example.com"),
        ("SMTP_PORT", "five-eight-seven"),
        ("SMTP_USER", "bot@example.com"),
        ("SMTP_PASS", "smtp-SECRET-PW-2"),
    ]);
    assert_rejected(
        &exited,
        &["SMTP_PORT"],
        &["smtp-SECRET-PW-2", "sk-env-SECRET-19"],
    );
}

// ---------------------------------------------------------------------------------------------
// One domain rule: a site listed by two tenants, in any spelling
// ---------------------------------------------------------------------------------------------

/// Start-up stopped by an invalid configuration: a non-zero exit code and a message naming
/// `names`, without `secrets`.
fn assert_start_up_refused(exited: &Exited, names: &[&str], secrets: &[&str]) {
    assert!(
        exited.code.is_some_and(|c| c != 0),
        "start-up must fail with a non-zero exit code, got {:?}:\n{}",
        exited.code,
        exited.output
    );
    for text in names {
        assert!(
            exited.output.contains(text),
            "{text:?} not named:\n{}",
            exited.output
        );
    }
    for secret in secrets {
        assert!(
            !exited.output.contains(secret),
            "{secret:?} shown:\n{}",
            exited.output
        );
    }
}

/// Tenants `alice` (line 3: `alice_domain`) and `bob` (line 9: `bob_domain`).
fn alice_and_bob(alice_domain: &str, bob_domain: &str) -> String {
    format!(
        r#"[[tenants]]
name = "alice"
domains = ["{alice_domain}"]
api_key = "sk-live-SECRET-20"
assistant_id = "asst_ALICE"

[[tenants]]
name = "bob"
domains = ["{bob_domain}"]
api_key = "sk-live-SECRET-21"
assistant_id = "asst_BOB"
"#
    )
}

#[test]
fn a_site_listed_by_two_tenants_in_the_toml_is_refused_naming_both() {
    for (alice, bob, site) in [
        ("example.com", "www.example.com", "example.com"),
        ("*.Example.com.", "*.example.com", "*.example.com"),
        (
            "bücher.example",
            "WWW.xn--bcher-kva.example",
            "xn--bcher-kva.example",
        ),
        ("::1", "[::1]", "[::1]"),
    ] {
        let toml = alice_and_bob(alice, bob);
        let secrets = ["sk-live-SECRET-20", "sk-live-SECRET-21"];
        let exited = Proxy::launch().toml(&toml).check();
        assert_rejected(
            &exited,
            &["\"alice\"", "\"bob\"", "tenants[1].domains[0]", site],
            &secrets,
        );
        assert!(mentions_line(&exited.output, 9), "{}", exited.output);
        assert!(
            !exited.output.contains("configuration OK"),
            "{}",
            exited.output
        );

        let exited = Proxy::launch().toml(&toml).run_expecting_exit();
        assert_start_up_refused(&exited, &["\"alice\"", "\"bob\"", site], &secrets);
    }
}

#[test]
fn a_site_listed_twice_in_the_environment_is_refused_naming_both() {
    let vars = [
        ("DOMAINS", r#"["example.com","www.example.com"]"#),
        (
            "OPENAI_API_KEYS",
            r#"["sk-env-SECRET-22","sk-env-SECRET-23"]"#,
        ),
        ("ASSISTANT_IDS", r#"["asst_1","asst_2"]"#),
    ];
    let secrets = ["sk-env-SECRET-22", "sk-env-SECRET-23"];
    let names = [
        "DOMAINS[1]",
        "DOMAINS[0]",
        "tenant \"example.com\"",
        "tenant \"www.example.com\"",
        "the site \"example.com\"",
    ];
    assert_rejected(&env_check(&vars), &names, &secrets);

    let mut launch = Proxy::launch();
    for (name, value) in vars {
        launch = launch.env(name, value);
    }
    assert_start_up_refused(&launch.run_expecting_exit(), &names, &secrets);
}

#[test]
fn two_spellings_of_one_site_in_one_tenant_are_accepted() {
    let stub = Stub::start();
    let toml = format!(
        "[upstream]\nbase_url = \"{}\"\n\n[[tenants]]\ndomains = [\"shop.example.com\", \
         \"WWW.Shop.Example.com.\"]\napi_key = \"{KEY_A}\"\nassistant_id = \"asst_A\"\n",
        stub.base_url()
    );
    let exited = Proxy::launch().toml(&toml).check();
    assert_eq!(exited.code, Some(0), "{}", exited.output);
    let proxy = Proxy::start_with_toml(&toml);
    assert_served_with_key(&stub, &proxy, PREFIX, "https://www.shop.example.com", KEY_A);
}
