//! Configuration loading: a TOML file (`--config PATH`) or the old service's environment.
//!
//! [`load`] is what `main` calls. [`from_toml_str`] and [`from_env_map`] are the same loaders
//! without any I/O: they take the text and the environment as values, for tests and for the
//! `demo` command. Either way the result is a fully checked [`Config`], or a [`ConfigError`]
//! naming the key (and the file line) at fault and what to do, never showing a secret.
//!
//! The way through: the file (`file`, by serde) or the environment (`env`) gives the typed
//! configuration as written (`raw`); `validate` turns it into a [`Config`] with the rules of
//! `check` (domains by the one domain rule of [`crate::domain`]), the same for both modes.

mod check;
mod defaults;
mod dotenv;
mod env;
mod error;
mod file;
mod raw;
mod types;
mod validate;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub use env::from_env_map;
pub use error::ConfigError;
pub use file::from_toml_str;
pub use types::*;

/// Loads the configuration.
///
/// With `path`, the TOML file is the whole configuration (`api_key_env` / `password_env` are read
/// from the process environment, `instructions_file` relative to the file's directory). Without, the process environment plus `.env` in the current
/// directory if present (the process environment wins); the process environment is never
/// modified.
pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
    match path {
        Some(path) => {
            let name = path.display().to_string();
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError::general(format!(
                    "cannot read the configuration file ({e}): check the --config path"
                ))
                .in_file(&name)
            })?;
            let dir = path.parent().unwrap_or(Path::new(""));
            file::from_toml_str_in(&text, &name, dir, &process_env())
        }
        None => {
            let dir = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
            from_env_map(&env::merged_with_dotenv(&dir, process_env())?)
        }
    }
}

/// The process environment; variables whose name or value is not UTF-8 are left out.
fn process_env() -> HashMap<String, String> {
    std::env::vars_os()
        .filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_file_is_named_in_the_error() {
        let path = Path::new("/nonexistent/chatbot-proxy.toml");
        let err = load(Some(path)).unwrap_err().to_string();
        assert!(
            err.starts_with("/nonexistent/chatbot-proxy.toml: cannot read"),
            "{err}"
        );
        assert!(err.contains("--config"), "{err}");
    }
}
