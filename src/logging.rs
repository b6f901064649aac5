//! Logging that never writes a secret.
//!
//! `env_logger` does the filtering (`RUST_LOG`, default `info`) and formatting; in front of it
//! sits a redactor. Every configured secret (API keys, the SMTP password) is registered at
//! start-up and replaced by `***` in every log line, at every level, whoever logs it: at
//! `trace`, Pingora itself prints request headers. Any `Bearer` credential is masked whole
//! too (the browser's own `Authorization` header included).

use once_cell::sync::Lazy;
use std::borrow::Cow;
use std::sync::RwLock;

static SECRETS: Lazy<RwLock<Vec<String>>> = Lazy::new(|| RwLock::new(Vec::new()));

/// Install the logger. Call once, first thing in `main`.
pub fn init() {
    let inner =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).build();
    let max = inner.filter();
    if log::set_boxed_logger(Box::new(Redacting { inner })).is_ok() {
        log::set_max_level(max);
    }
}

/// Never let `secret` reach a log line. Secrets shorter than 4 characters are ignored (they
/// would mask ordinary words).
pub fn register_secret(secret: &str) {
    if secret.len() < 4 {
        return;
    }
    let mut secrets = SECRETS.write().unwrap_or_else(|p| p.into_inner());
    if !secrets.iter().any(|s| s == secret) {
        secrets.push(secret.to_string());
        // Longest first, so a secret containing another is masked whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    }
}

/// `text` with every registered secret and every `Bearer` credential replaced by `***`.
pub fn redact(text: &str) -> Cow<'_, str> {
    let secrets = SECRETS.read().unwrap_or_else(|p| p.into_inner());
    let mut out = Cow::Borrowed(text);
    // Until no secret is left: a mask next to a secret's own `*` could rebuild that secret or
    // another one. Each replacement shortens the text (secrets are longer than the mask), so
    // this ends.
    while let Some(secret) = secrets.iter().find(|s| out.contains(s.as_str())) {
        out = Cow::Owned(out.replace(secret.as_str(), "***"));
    }
    mask_bearer(out)
}

/// Replace each case-insensitive `bearer <token>` (the whole `Authorization` value) with `***`.
/// Any run of spaces or tabs may separate the scheme from the token, as HTTP allows.
fn mask_bearer(text: Cow<'_, str>) -> Cow<'_, str> {
    let lower = text.to_ascii_lowercase();
    if !lower.contains("bearer") {
        return text;
    }
    let mut out = String::new();
    let mut rest = 0;
    for (at, _) in lower.match_indices("bearer") {
        let after = at + "bearer".len();
        let gap = lower[after..].len() - lower[after..].trim_start_matches([' ', '\t']).len();
        if at < rest || gap == 0 {
            continue;
        }
        let token_start = after + gap;
        let token_end = text[token_start..]
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '\\' | ',' | '}'))
            .map_or(text.len(), |n| token_start + n);
        out.push_str(&text[rest..at]);
        out.push_str("***");
        rest = token_end;
    }
    if rest == 0 {
        return text;
    }
    out.push_str(&text[rest..]);
    Cow::Owned(out)
}

struct Redacting {
    inner: env_logger::Logger,
}

impl log::Log for Redacting {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        self.inner.enabled(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.inner.enabled(record.metadata()) {
            return;
        }
        let text = record.args().to_string();
        let clean = redact(&text);
        self.inner.log(
            &log::Record::builder()
                .args(format_args!("{clean}"))
                .metadata(record.metadata().clone())
                .module_path(record.module_path())
                .file(record.file())
                .line(record.line())
                .build(),
        );
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_secrets_and_bearer_tokens_are_masked() {
        register_secret("sk-logging-test-key");
        register_secret("pw-logging-test");
        let line = "Writing request header: b\"POST /v1/threads\\r\\nAuthorization: Bearer sk-logging-test-key\\r\\n\" pass=pw-logging-test";
        let clean = redact(line);
        assert!(!clean.contains("sk-logging-test-key"), "{clean}");
        assert!(!clean.contains("pw-logging-test"), "{clean}");
        assert!(clean.contains("Authorization: ***\\r"), "{clean}");
    }

    #[test]
    fn any_bearer_credential_is_masked() {
        assert_eq!(
            redact(r#"headers: {"authorization": "Bearer client-token-1", "x": "bearer abc"}"#),
            r#"headers: {"authorization": "***", "x": "***"}"#
        );
    }

    #[test]
    fn bearer_tokens_after_several_spaces_are_masked() {
        // Up to the next blank, quote or separator: masking too much beats showing a key.
        assert_eq!(
            redact("Authorization: Bearer  \t a_Aa0a~A; x"),
            "Authorization: *** x"
        );
        assert_eq!(redact("bearers of news"), "bearers of news");
    }

    #[test]
    fn a_mask_cannot_rebuild_a_secret() {
        register_secret("*sk*");
        assert!(!redact("**sk*sk**").contains("*sk*"));
        // Masking one secret must not rebuild another, already handled one.
        register_secret("****");
        register_secret("*ab*");
        let clean = redact("*ab****");
        assert!(
            !clean.contains("****") && !clean.contains("*ab*"),
            "{clean}"
        );
    }

    #[test]
    fn ordinary_lines_pass_unchanged() {
        let line = "access client=127.0.0.1 route=create-thread status=200";
        assert!(matches!(redact(line), Cow::Borrowed(_)));
        register_secret("abc"); // too short to register
        assert_eq!(redact("abcdef"), "abcdef");
    }
}
