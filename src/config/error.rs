//! The error every configuration problem turns into.
//!
//! A `ConfigError` says where the problem is (file and line for TOML, the variable for the
//! environment), which key is wrong, and what to do about it. It is built only from text the
//! loader writes itself, so it never carries a secret (API key, SMTP password).

use std::error::Error;
use std::fmt;

/// A configuration problem, ready to be shown to whoever runs the proxy.
///
/// Displayed as `FILE line N: KEY: MESSAGE` (TOML), `KEY: MESSAGE` (environment), or just
/// `MESSAGE` when no single key is at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    file: Option<String>,
    line: Option<usize>,
    key: Option<String>,
    message: String,
}

impl ConfigError {
    /// A problem with one key (`tenants[1].assistant_id`, `DOMAINS`, ...).
    pub(crate) fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            file: None,
            line: None,
            key: Some(key.into()),
            message: message.into(),
        }
    }

    /// A problem that is not about one key (unreadable file, nothing configured).
    pub(crate) fn general(message: impl Into<String>) -> Self {
        ConfigError {
            file: None,
            line: None,
            key: None,
            message: message.into(),
        }
    }

    /// Records the line (1-based) the problem is on.
    pub(crate) fn with_line(mut self, line: Option<usize>) -> Self {
        self.line = line;
        self
    }

    /// Records the file the problem is in, unless one is already recorded.
    pub(crate) fn in_file(mut self, file: &str) -> Self {
        if self.file.is_none() {
            self.file = Some(file.to_string());
        }
        self
    }
}

/// Structured access, for callers that want more than the displayed text.
#[allow(dead_code)] // the binary only displays errors; tests and future callers use these
impl ConfigError {
    /// The key at fault, e.g. `tenants[1].assistant_id` or `OPENAI_API_KEYS[0]`.
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// The 1-based line in the file, when known.
    pub fn line(&self) -> Option<usize> {
        self.line
    }

    /// The file (as named by the caller), when the problem is in one.
    pub fn file(&self) -> Option<&str> {
        self.file.as_deref()
    }

    /// What is wrong and what to do, without the location.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.file, self.line) {
            (Some(file), Some(line)) => write!(f, "{file} line {line}: ")?,
            (Some(file), None) => write!(f, "{file}: ")?,
            (None, Some(line)) => write!(f, "line {line}: ")?,
            (None, None) => {}
        }
        if let Some(key) = &self.key {
            write!(f, "{key}: ")?;
        }
        f.write_str(&self.message)
    }
}

impl Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_puts_file_line_and_key_before_the_message() {
        let err = ConfigError::new("tenants[1].assistant_id", "must start with \"asst_\"")
            .with_line(Some(12))
            .in_file("chatbot-proxy.toml");
        assert_eq!(
            err.to_string(),
            "chatbot-proxy.toml line 12: tenants[1].assistant_id: must start with \"asst_\""
        );
        assert_eq!(err.key(), Some("tenants[1].assistant_id"));
        assert_eq!(err.line(), Some(12));
        assert_eq!(err.file(), Some("chatbot-proxy.toml"));
    }

    #[test]
    fn display_without_file_is_key_then_message() {
        let err = ConfigError::new("DOMAINS", "is empty");
        assert_eq!(err.to_string(), "DOMAINS: is empty");
        assert_eq!(ConfigError::general("nothing").to_string(), "nothing");
    }
}
