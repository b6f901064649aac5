//! The lead directory shared by several processes: one journal segment per process.
//!
//! During a zero-downtime upgrade two processes run on the same `leads.dir`. Each journals
//! the leads it captures in a segment of its own, `<stem>.jsonl`, guarded by an exclusive
//! lock on `<stem>.lock` that it holds for its whole life (the OS releases it when the process
//! ends, even on `kill -9`):
//! - the primary segment, `leads.jsonl` / `leads.lock`, for the first process (a single
//!   process always uses it, as before segments existed);
//! - `leads-<pid>-<random>.jsonl` / `.lock` for a process started while another holds the
//!   primary lock. Its lock is taken before its journal file exists, so a segment whose file
//!   can be seen always has a lock file.
//!
//! A segment whose lock can be taken belongs to a process that has exited: an [`Orphan`].
//! Its owner's successor adopts it (see `journal`): reads it while holding its lock, journals
//! its pending leads again in its own segment, then [`Orphan::remove`]s it. Only the holder of
//! a segment's lock reads, writes or deletes that segment, so a lead is delivered only by the
//! owner of the segment that holds it.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

use super::journal::{JournalError, JournalStep, SyncDir};

/// The primary segment's stem.
pub const PRIMARY: &str = "leads";
/// How the stem of every other segment starts.
const SECONDARY_PREFIX: &str = "leads-";

/// A segment whose lock this process holds.
#[derive(Debug)]
pub struct Segment {
    /// `leads` or `leads-<pid>-<random>`.
    pub stem: String,
    /// Held for the segment's life; closing it releases the lock.
    _lock: File,
}

impl Segment {
    /// The segment's journal file in `dir`.
    pub fn journal(&self, dir: &Path) -> PathBuf {
        journal_path(dir, &self.stem)
    }

    /// The file a compaction of the segment writes before renaming it over the journal.
    pub fn compacting(&self, dir: &Path) -> PathBuf {
        compacting_path(dir, &self.stem)
    }

    pub fn is_primary(&self) -> bool {
        self.stem == PRIMARY
    }
}

/// The segment of a process that has exited, locked by this process for adoption.
#[derive(Debug)]
pub struct Orphan {
    pub stem: String,
    /// Held until the orphan is deleted (or for the process's life if it cannot be).
    _lock: File,
}

impl Orphan {
    /// The orphan's journal file in `dir`.
    pub fn journal(&self, dir: &Path) -> PathBuf {
        journal_path(dir, &self.stem)
    }

    /// Deletes the orphan's files, then flushes the directory with `sync_dir`, so the
    /// deletion is durable before the adopted leads are delivered. The primary's lock file
    /// stays (the next process takes that lock); another segment's goes, while still held.
    /// On failure the orphan is handed back, still locked, with the reason.
    pub fn remove(self, dir: &Path, sync_dir: SyncDir) -> Result<(), (Orphan, JournalError)> {
        let removed = [
            journal_path(dir, &self.stem),
            compacting_path(dir, &self.stem),
        ]
        .iter()
        .try_for_each(|path| remove_if_present(path))
        .and_then(|()| sync_dir(dir));
        if let Err(e) = removed {
            return Err((self, e));
        }
        if self.stem != PRIMARY {
            // Only a stale lock file is left if this fails: harmless.
            if let Err(e) = remove_if_present(&lock_path(dir, &self.stem)) {
                log::warn!("{e}");
            }
        }
        Ok(())
    }
}

fn journal_path(dir: &Path, stem: &str) -> PathBuf {
    dir.join(format!("{stem}.jsonl"))
}

fn compacting_path(dir: &Path, stem: &str) -> PathBuf {
    dir.join(format!("{stem}.jsonl.tmp"))
}

fn lock_path(dir: &Path, stem: &str) -> PathBuf {
    dir.join(format!("{stem}.lock"))
}

fn remove_if_present(path: &Path) -> Result<(), JournalError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(JournalError::io(JournalStep::Delete, path, e)),
    }
}

/// Opens `stem`'s lock file (creating it when `create_new` is false and it is missing; only
/// creating a new one when `create_new`) and tries to lock it. `Ok(None)`: another process
/// holds it.
fn try_lock(dir: &Path, stem: &str, create_new: bool) -> Result<Option<File>, JournalError> {
    let path = lock_path(dir, stem);
    let mut options = OpenOptions::new();
    options.write(true);
    if create_new {
        options.create_new(true);
    } else {
        options.create(true).truncate(false);
    }
    let file = options
        .open(&path)
        .map_err(|e| JournalError::io(JournalStep::OpenLock, &path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(TryLockError::WouldBlock) => Ok(None),
        Err(TryLockError::Error(e)) => Err(JournalError::io(JournalStep::Lock, &path, e)),
    }
}

/// Takes the primary segment if no other process holds it, else a new segment of this
/// process's own.
pub fn claim(dir: &Path) -> Result<Segment, JournalError> {
    if let Some(lock) = try_lock(dir, PRIMARY, false)? {
        return Ok(Segment {
            stem: PRIMARY.to_string(),
            _lock: lock,
        });
    }
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let salt = std::hash::BuildHasher::hash_one(
            &std::collections::hash_map::RandomState::new(),
            (std::time::SystemTime::now(), attempt),
        );
        let stem = format!(
            "{SECONDARY_PREFIX}{}-{:08x}",
            std::process::id(),
            salt as u32
        );
        match try_lock(dir, &stem, true) {
            Ok(Some(lock)) => return Ok(Segment { stem, _lock: lock }),
            // A name just taken by another process: draw another.
            Ok(None) => continue,
            Err(JournalError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::AlreadyExists && attempt < 16 =>
            {
                continue
            }
            Err(e) => return Err(e),
        }
    }
}

/// The segments in `dir` other than `own` whose lock is free (their process has exited),
/// each locked for the caller. Segments that cannot be checked are skipped with a warning.
pub fn orphans(dir: &Path, own: &str) -> Vec<Orphan> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            log::warn!(
                "cannot list the lead directory {} to look for leads left by other \
                 processes: {e}",
                dir.display()
            );
            return Vec::new();
        }
    };
    let mut stems: Vec<String> = entries
        .flatten()
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter_map(|name| name.strip_suffix(".jsonl").map(str::to_string))
        .filter(|stem| stem != own && (stem == PRIMARY || stem.starts_with(SECONDARY_PREFIX)))
        .collect();
    stems.sort();
    stems
        .into_iter()
        .filter_map(|stem| match try_lock(dir, &stem, false) {
            Ok(Some(lock)) => Some(Orphan { stem, _lock: lock }),
            Ok(None) => None,
            Err(e) => {
                log::warn!("lead journal segment {stem} not checked: {e}");
                None
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_sync(_: &Path) -> Result<(), JournalError> {
        Ok(())
    }

    #[test]
    fn the_first_claim_gets_the_primary_and_the_next_its_own_segment() {
        let dir = tempfile::tempdir().unwrap();
        let first = claim(dir.path()).unwrap();
        assert!(first.is_primary());
        assert_eq!(first.journal(dir.path()), dir.path().join("leads.jsonl"));
        let second = claim(dir.path()).unwrap();
        assert!(!second.is_primary());
        assert!(second.stem.starts_with("leads-"), "{}", second.stem);
        assert_ne!(second.stem, claim(dir.path()).unwrap().stem);
        drop(first);
        assert!(claim(dir.path()).unwrap().is_primary());
    }

    #[test]
    fn only_segments_whose_lock_is_free_are_orphans() {
        let dir = tempfile::tempdir().unwrap();
        let primary = claim(dir.path()).unwrap();
        let live = claim(dir.path()).unwrap();
        let gone = claim(dir.path()).unwrap();
        for segment in [&primary, &live, &gone] {
            fs::write(segment.journal(dir.path()), "").unwrap();
        }
        fs::write(dir.path().join("other.jsonl"), "").unwrap();
        let gone_stem = gone.stem.clone();
        drop(gone);
        let found = orphans(dir.path(), &live.stem);
        let stems: Vec<&str> = found.iter().map(|o| o.stem.as_str()).collect();
        assert_eq!(stems, [gone_stem.as_str()]);
        // Locked by the caller now: nobody else can adopt it at the same time.
        assert!(orphans(dir.path(), &primary.stem).is_empty());

        for orphan in found {
            orphan.remove(dir.path(), no_sync).unwrap();
        }
        assert!(!dir.path().join(format!("{gone_stem}.jsonl")).exists());
        assert!(!dir.path().join(format!("{gone_stem}.lock")).exists());
    }

    #[test]
    fn removing_the_primary_keeps_its_lock_file() {
        let dir = tempfile::tempdir().unwrap();
        let primary = claim(dir.path()).unwrap();
        let other = claim(dir.path()).unwrap();
        fs::write(primary.journal(dir.path()), "").unwrap();
        fs::write(primary.compacting(dir.path()), "").unwrap();
        drop(primary);
        let mut found = orphans(dir.path(), &other.stem);
        assert_eq!(found.len(), 1);
        found.pop().unwrap().remove(dir.path(), no_sync).unwrap();
        assert!(!dir.path().join("leads.jsonl").exists());
        assert!(!dir.path().join("leads.jsonl.tmp").exists());
        assert!(dir.path().join("leads.lock").exists());
        assert!(claim(dir.path()).unwrap().is_primary());
    }
}
