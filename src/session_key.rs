//! The secret that signs conversation handles: configured (`SESSION_SECRET`), or generated once
//! and kept in the leads directory, so a restart keeps the handles it gave out valid.
//!
//! The generated secret is 32 random bytes from the operating system (`ring`'s
//! `SystemRandom`), written as 64 hex characters to `session.key` (mode 0600). The file is
//! written under a temporary name first and then linked to its name, which fails if the name
//! exists: a reader sees the whole file or none, and of two processes starting at once on one
//! directory, the second reads the first's secret instead of replacing it. Replicas on
//! different machines do not share a directory: they must share `SESSION_SECRET`.
//!
//! Runs once at start-up, before the server's runtime: its file I/O blocks no request.

use crate::config::Secret;
use crate::handle::{HandleKey, MIN_SECRET_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The file, in the leads directory, that keeps a generated secret.
pub const FILE_NAME: &str = "session.key";
/// Random bytes of a generated secret.
const GENERATED_BYTES: usize = 32;

/// The key that signs handles: from `configured` (already checked to be long enough), or from
/// `dir/session.key`, which is created if missing. Either way the secret is registered with
/// the log redactor. The error says what to fix.
pub fn load(configured: Option<&Secret>, dir: &Path) -> Result<HandleKey, String> {
    let secret = match configured {
        Some(secret) => secret.expose().to_string(),
        None => read_or_create(dir)?,
    };
    crate::logging::register_secret(&secret);
    HandleKey::new(secret.as_bytes()).ok_or_else(|| {
        format!("the session secret is shorter than {MIN_SECRET_LEN} bytes: set SESSION_SECRET")
    })
}

/// The secret kept in `dir`, generated and kept there first if there is none.
fn read_or_create(dir: &Path) -> Result<String, String> {
    let path = dir.join(FILE_NAME);
    match read(&path)? {
        Some(secret) => {
            log::info!(
                "conversation handles are signed with the secret kept in {}",
                path.display()
            );
            Ok(secret)
        }
        None => {
            let secret = create(dir, &path)?;
            log::info!(
                "generated the secret that signs conversation handles and kept it in {} \
                 (mode 0600); replicas of a fleet must share one secret instead: set \
                 SESSION_SECRET",
                path.display()
            );
            Ok(secret)
        }
    }
}

/// The secret in `path`, `None` if there is no such file.
fn read(path: &Path) -> Result<Option<String>, String> {
    let shown = path.display();
    let text = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(format!(
                "cannot read {shown} ({e}): give the proxy read access to it, or set \
                 SESSION_SECRET"
            ))
        }
    };
    let Ok(text) = String::from_utf8(text) else {
        return Err(format!(
            "{shown} is not text: delete it to have a new secret generated (conversations \
             already started will have to start again), or set SESSION_SECRET"
        ));
    };
    let secret = text.trim();
    if secret.len() < MIN_SECRET_LEN {
        return Err(format!(
            "{shown} holds {} bytes, fewer than the {MIN_SECRET_LEN} a session secret needs: \
             delete it to have a new one generated, or set SESSION_SECRET",
            secret.len()
        ));
    }
    if let Ok(meta) = fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            log::warn!("{shown} can be read by other users of this machine: chmod 600 {shown}");
        }
    }
    Ok(Some(secret.to_string()))
}

/// Generate a secret and keep it in `path`; if another process kept one there first, that one.
fn create(dir: &Path, path: &Path) -> Result<String, String> {
    let failed = |what: &str, e: std::io::Error| {
        format!(
            "cannot {what} in {} ({e}): make the leads directory writable, or set \
             SESSION_SECRET",
            dir.display()
        )
    };
    fs::create_dir_all(dir).map_err(|e| failed("create the directory", e))?;
    let secret = generate()?;
    let temporary = temporary_path(dir)?;
    let written = write_private(&temporary, &secret);
    let linked = written.and_then(|()| fs::hard_link(&temporary, path));
    let _ = fs::remove_file(&temporary);
    match linked {
        Ok(()) => Ok(secret),
        // Another process started at the same moment and kept its secret first: use it.
        Err(e) if e.kind() == ErrorKind::AlreadyExists => read(path)?
            .ok_or_else(|| format!("{} vanished while it was being read", path.display())),
        Err(e) => Err(failed(&format!("write {FILE_NAME}"), e)),
    }
}

/// A new secret: [`GENERATED_BYTES`] random bytes as lowercase hex.
fn generate() -> Result<String, String> {
    let mut bytes = [0u8; GENERATED_BYTES];
    SystemRandom::new().fill(&mut bytes).map_err(|_| {
        "the operating system gave no random bytes for the session secret: set SESSION_SECRET"
            .to_string()
    })?;
    Ok(hex::encode(bytes))
}

/// A name in `dir` that no other process uses.
fn temporary_path(dir: &Path) -> Result<PathBuf, String> {
    let mut nonce = [0u8; 8];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| "the operating system gave no random bytes".to_string())?;
    let nonce = hex::encode(nonce);
    Ok(dir.join(format!(".{FILE_NAME}.{}.{nonce}", std::process::id())))
}

/// Write `secret` to a new file at `path` that only its owner can read, on disk before it
/// returns.
fn write_private(path: &Path, secret: &str) -> std::io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(format!("{secret}\n").as_bytes())?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_secret_is_kept_private_and_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let leads = dir.path().join("leads");
        let first = read_or_create(&leads).unwrap();
        assert_eq!(first.len(), 2 * GENERATED_BYTES);
        assert!(first.bytes().all(|b| b.is_ascii_hexdigit()));
        let path = leads.join(FILE_NAME);
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        assert_eq!(read_or_create(&leads).unwrap(), first, "read, not replaced");
        let names: Vec<_> = fs::read_dir(&leads).unwrap().map(|e| e.unwrap()).collect();
        assert_eq!(names.len(), 1, "no temporary file is left behind");
        let other = tempfile::tempdir().unwrap();
        assert_ne!(read_or_create(other.path()).unwrap(), first);
    }

    #[test]
    fn handles_signed_before_a_restart_verify_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let handle = load(None, dir.path())
            .unwrap()
            .issue("acme", "thread_a", 1_000);
        let again = load(None, dir.path()).unwrap();
        assert_eq!(again.verify(&handle, "acme", 1_000, 60), Ok("thread_a"));
    }

    #[test]
    fn a_configured_secret_wins_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let secret = Secret::new("s".repeat(MIN_SECRET_LEN));
        let a = load(Some(&secret), dir.path()).unwrap();
        let b = load(Some(&secret), &dir.path().join("elsewhere")).unwrap();
        let handle = a.issue("acme", "conv_1", 5);
        assert_eq!(b.verify(&handle, "acme", 5, 60), Ok("conv_1"));
        assert!(fs::read_dir(dir.path()).unwrap().next().is_none());
    }

    #[test]
    fn a_damaged_file_is_an_error_that_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(FILE_NAME), "short\n").unwrap();
        let err = read_or_create(dir.path()).unwrap_err();
        assert!(
            err.contains("5 bytes") && err.contains("SESSION_SECRET"),
            "{err}"
        );
        assert!(!err.contains("short"), "{err}");
    }

    #[test]
    fn a_file_that_appears_meanwhile_is_read_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let theirs = "t".repeat(40);
        fs::write(dir.path().join(FILE_NAME), format!("{theirs}\n")).unwrap();
        let path = dir.path().join(FILE_NAME);
        assert_eq!(create(dir.path(), &path).unwrap(), theirs);
    }
}
