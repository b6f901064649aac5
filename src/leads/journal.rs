//! The lead journal: `leads.jsonl` in the leads directory, one JSON record per line, each
//! append flushed to disk (`sync_data`) before it is acknowledged.
//!
//! Two kinds of record (see [`Record`]): a captured lead, and the mark that a lead was
//! delivered. On open the file is replayed (a torn last line from a crash mid-write is
//! skipped; a corrupt line in the middle is skipped with a warning) and compacted: the
//! pending leads are written to a new file, which is flushed and renamed over the old one,
//! and the directory is flushed so the rename itself survives a crash. While running, the
//! same compaction happens again once delivered leads make up most of a large file.
//!
//! Once the rename is done the journal always appends to the new file, even when flushing
//! the directory fails (the old file has no name any more: records appended to it would
//! vanish at the next start). That failure is a warning, and the directory is flushed again
//! after each later append until it succeeds.
//!
//! Several processes may share the directory (a zero-downtime upgrade runs two): each writes
//! a segment of its own (see [`segments`]), `leads.jsonl` for a single process. On open, and
//! then whenever [`Journal::adopt_orphans`] is called, the segments of processes that have
//! exited are adopted: their pending leads are journaled again here (a lead already pending
//! here, from an adoption a crash interrupted, is skipped: ids are unique), durably, and only
//! then is the old segment deleted and the directory flushed, so a lead is never delivered
//! from two segments.

use std::collections::HashSet;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::lead::Lead;
use super::segments::{self, Orphan, Segment};

/// The journal's file name inside the leads directory, for a single process (the primary
/// segment).
#[cfg(test)]
const FILE_NAME: &str = "leads.jsonl";
/// The file written during the primary's compaction, renamed over [`FILE_NAME`] when complete.
#[cfg(test)]
const COMPACTING_NAME: &str = "leads.jsonl.tmp";

/// One line of the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Record {
    /// A captured lead, pending until a [`Record::Delivered`] with its id follows.
    Lead(LeadRecord),
    /// The lead `id` was accepted by the mail server at `at` (Unix seconds).
    Delivered { id: String, at: u64 },
}

/// A captured lead with everything needed to e-mail it after a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeadRecord {
    /// Unique id, e.g. `lead_1767225600123_5f0c2a9e41b7d380`.
    pub id: String,
    /// When it was captured (Unix seconds).
    pub at: u64,
    /// The tenant's name (for logs).
    pub tenant: String,
    /// The calling website's origin.
    pub site: String,
    /// The conversation it came from.
    pub conversation: String,
    /// The recipients, as configured when the lead was captured.
    pub to: Vec<String>,
    /// What the visitor left.
    pub lead: Lead,
}

/// Why the journal could not be opened or written; the message says what to check.
#[derive(Debug)]
pub enum JournalError {
    /// A file-system step failed on `path`.
    Io {
        step: JournalStep,
        path: PathBuf,
        source: io::Error,
    },
    /// A record could not be encoded as JSON.
    Encode(serde_json::Error),
    /// The blocking task writing a record did not finish (it panicked or was cancelled).
    Unfinished(tokio::task::JoinError),
}

/// The file-system step a [`JournalError::Io`] failed at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JournalStep {
    /// Creating the lead directory.
    CreateDir,
    /// Opening a journal segment's lock file.
    OpenLock,
    /// Taking a segment's lock.
    Lock,
    /// Reading the journal.
    Read,
    /// Writing (or flushing) the journal or its compacted copy.
    Write,
    /// Renaming the compacted copy over the journal.
    Replace,
    /// Flushing the directory's entries.
    SyncDir,
    /// Deleting a journal segment adopted from a process that has exited.
    Delete,
}

impl fmt::Display for JournalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JournalError::Io { step, path, source } => {
                let path = path.display();
                match step {
                    JournalStep::CreateDir => write!(
                        f,
                        "cannot create the lead directory {path}: {source}; create it or point \
                         leads.dir at a writable directory"
                    ),
                    JournalStep::OpenLock => write!(
                        f,
                        "cannot open {path}: {source}; check the directory's permissions"
                    ),
                    JournalStep::Lock => write!(f, "cannot lock {path}: {source}"),
                    JournalStep::Read => write!(
                        f,
                        "cannot read the lead journal {path}: {source}; check its permissions"
                    ),
                    JournalStep::Write => write!(
                        f,
                        "cannot write the lead journal {path}: {source}; check free space and \
                         permissions"
                    ),
                    JournalStep::Replace => write!(
                        f,
                        "cannot replace the lead journal {path} with its compacted copy: \
                         {source}; check the directory's permissions"
                    ),
                    JournalStep::Delete => write!(
                        f,
                        "cannot delete {path}: {source}; check the lead directory's permissions"
                    ),
                    JournalStep::SyncDir => {
                        write!(
                            f,
                            "cannot flush the lead directory {path} to disk: {source}"
                        )
                    }
                }
            }
            JournalError::Encode(e) => write!(f, "cannot encode a journal record: {e}"),
            JournalError::Unfinished(e) => write!(f, "the journal write did not finish: {e}"),
        }
    }
}

impl std::error::Error for JournalError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            JournalError::Io { source, .. } => Some(source),
            JournalError::Encode(e) => Some(e),
            JournalError::Unfinished(e) => Some(e),
        }
    }
}

impl JournalError {
    /// `step` failed on `path`.
    pub(super) fn io(step: JournalStep, path: &Path, source: io::Error) -> JournalError {
        JournalError::Io {
            step,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The journal is compacted while running once it is at least this long and at least
/// twice as long as its pending leads.
const COMPACT_OVER_BYTES: u64 = 1 << 20;

/// How the directory is flushed after a compaction's rename or an adopted segment's
/// deletion: [`sync_dir`], or a failing stand-in in tests.
pub(super) type SyncDir = fn(&Path) -> Result<(), JournalError>;

/// The open journal, positioned for appending.
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    path: PathBuf,
    file: File,
    /// Length of the file after the last complete append: a failed append is cut back to it.
    len: u64,
    /// The pending leads' ids and lines, in order: what a compaction keeps.
    pending: Vec<(String, Vec<u8>)>,
    compact_over: u64,
    sync_dir: SyncDir,
    /// False after a compaction whose directory flush failed: the file's name may not survive
    /// a crash of the machine yet, so the flush is tried again after each append.
    dir_synced: bool,
    /// This process's segment, locked for the journal's life.
    segment: Segment,
    /// Adopted segments that could not be deleted: kept locked so they are not adopted
    /// again while this process lives.
    undeletable: Vec<Orphan>,
}

impl Journal {
    /// Opens (creating it if needed) this process's journal segment in `dir`, adopts the
    /// segments of processes that have exited, and returns the journal with the pending
    /// leads, its own in capture order, then the adopted ones. The file is compacted to just
    /// those leads.
    pub fn open(dir: &Path) -> Result<(Journal, Vec<LeadRecord>), JournalError> {
        Journal::open_with(dir, sync_dir)
    }

    /// [`Journal::open`], flushing the directory with `sync_dir`.
    fn open_with(
        dir: &Path,
        sync_dir: SyncDir,
    ) -> Result<(Journal, Vec<LeadRecord>), JournalError> {
        fs::create_dir_all(dir).map_err(|e| JournalError::io(JournalStep::CreateDir, dir, e))?;
        let segment = segments::claim(dir)?;
        let path = segment.journal(dir);
        if !segment.is_primary() {
            log::info!(
                "another process uses the lead directory {} (an upgrade under way?): this one \
                 journals its leads in {} and adopts the other's once it has exited",
                dir.display(),
                path.display()
            );
        }
        let mut leads = replay(&read(&path)?, &path);
        let mut ids: HashSet<String> = leads.iter().map(|lead| lead.id.clone()).collect();
        let mut adopted = Vec::new();
        for orphan in segments::orphans(dir, &segment.stem) {
            match read(&orphan.journal(dir)) {
                Ok(bytes) => {
                    let new = replay(&bytes, &orphan.journal(dir));
                    leads.extend(new.into_iter().filter(|lead| ids.insert(lead.id.clone())));
                    adopted.push(orphan);
                }
                Err(e) => log::warn!("{e}; its leads are adopted later"),
            }
        }
        let pending = leads
            .iter()
            .map(|lead| Ok((lead.id.clone(), encode(&Record::Lead(lead.clone()))?)))
            .collect::<Result<Vec<_>, JournalError>>()?;
        let rewritten = rewrite(dir, &path, &segment.compacting(dir), &pending, sync_dir)?;
        let mut journal = Journal {
            dir: dir.to_path_buf(),
            path,
            file: rewritten.file,
            len: rewritten.len,
            pending,
            compact_over: COMPACT_OVER_BYTES,
            sync_dir,
            dir_synced: true,
            segment,
            undeletable: Vec::new(),
        };
        let durable = rewritten.dir_synced.is_ok();
        journal.note_dir_sync(rewritten.dir_synced);
        if durable {
            journal.remove_adopted(adopted);
        } else if !adopted.is_empty() {
            // Their leads may not survive a crash of the machine here yet: keep the old
            // segments (locked, so they are not adopted twice by this process).
            log::warn!(
                "the adopted journal segments are kept until the lead directory can be \
                 flushed: their leads may be sent twice after a restart"
            );
            journal.undeletable.extend(adopted);
        }
        Ok((journal, leads))
    }

    /// Adopts the segments of processes that have exited since the last look: their pending
    /// leads not pending here yet are appended to this journal (each flushed to disk), then
    /// the old segments are deleted. Returns the adopted leads, for delivery. A segment that
    /// cannot be read or journaled here is left for a later call.
    pub fn adopt_orphans(&mut self) -> Vec<LeadRecord> {
        let mut adopted = Vec::new();
        let mut done = Vec::new();
        for orphan in segments::orphans(&self.dir, &self.segment.stem) {
            let path = orphan.journal(&self.dir);
            let leads = match read(&path) {
                Ok(bytes) => replay(&bytes, &path),
                Err(e) => {
                    log::warn!("{e}; its leads are adopted later");
                    continue;
                }
            };
            let before = adopted.len();
            let mut complete = true;
            for lead in leads {
                if self.pending.iter().any(|(id, _)| *id == lead.id) {
                    continue;
                }
                if let Err(e) = self.append(&Record::Lead(lead.clone())) {
                    log::error!(
                        "cannot adopt the leads of {}: {e}; they are adopted later",
                        path.display()
                    );
                    complete = false;
                    break;
                }
                adopted.push(lead);
            }
            if complete {
                log::info!(
                    "adopted {} pending lead(s) from {}, left by a process that has exited",
                    adopted.len() - before,
                    path.display()
                );
                done.push(orphan);
            }
        }
        self.remove_adopted(done);
        adopted
    }

    /// Deletes adopted segments (their leads are durable in this journal now). One that
    /// cannot be deleted stays locked by this process, so it is not adopted twice.
    fn remove_adopted(&mut self, adopted: Vec<Orphan>) {
        for orphan in adopted {
            let path = orphan.journal(&self.dir);
            if let Err((orphan, e)) = orphan.remove(&self.dir, self.sync_dir) {
                log::error!(
                    "{} was adopted, but {e}; its leads may be sent twice after a restart \
                     unless it is deleted by hand",
                    path.display()
                );
                self.undeletable.push(orphan);
            }
        }
    }

    /// The journal file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one record and flushes it to disk. On failure the file is cut back so the
    /// next append starts on a clean line.
    pub fn append(&mut self, record: &Record) -> Result<(), JournalError> {
        let line = encode(record)?;
        let written = self
            .file
            .write_all(&line)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            let _ = self.file.set_len(self.len);
            return Err(JournalError::io(JournalStep::Write, &self.path, e));
        }
        self.len += line.len() as u64;
        if !self.dir_synced && (self.sync_dir)(&self.dir).is_ok() {
            self.dir_synced = true;
            log::info!(
                "lead directory {} flushed to disk: the compacted journal's name is durable now",
                self.dir.display()
            );
        }
        match record {
            Record::Lead(lead) => self.pending.push((lead.id.clone(), line)),
            Record::Delivered { id, .. } => self.pending.retain(|(pending, _)| pending != id),
        }
        self.compact_if_worth_it();
        Ok(())
    }

    /// Rewrites the file with just the pending leads when the delivered ones make up most of
    /// a large file. A failure before the rename only leaves the file as long as it was;
    /// after the rename the new file is used whatever happens.
    fn compact_if_worth_it(&mut self) {
        let pending_bytes: u64 = self.pending.iter().map(|(_, line)| line.len() as u64).sum();
        if self.len < self.compact_over || self.len < 2 * pending_bytes {
            return;
        }
        let compacting = self.segment.compacting(&self.dir);
        match rewrite(
            &self.dir,
            &self.path,
            &compacting,
            &self.pending,
            self.sync_dir,
        ) {
            Ok(rewritten) => {
                self.file = rewritten.file;
                self.len = rewritten.len;
                self.note_dir_sync(rewritten.dir_synced);
            }
            Err(e) => log::warn!("lead journal not compacted: {e}"),
        }
    }

    /// Records how the directory flush after a compaction went, warning when it failed.
    fn note_dir_sync(&mut self, flushed: Result<(), JournalError>) {
        match flushed {
            Ok(()) => self.dir_synced = true,
            Err(e) => {
                self.dir_synced = false;
                log::warn!(
                    "lead journal {} compacted, but {e}; records go to the compacted file, and \
                     the flush is tried again after each record until it succeeds (until then a \
                     crash of the machine, not of the proxy, could lose recent records)",
                    self.path.display()
                );
            }
        }
    }
}

/// A journal file's bytes; a missing file is empty.
fn read(path: &Path) -> Result<Vec<u8>, JournalError> {
    match fs::read(path) {
        Ok(bytes) => Ok(bytes),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(JournalError::io(JournalStep::Read, path, e)),
    }
}

/// A record as one line of JSON, with its line end.
fn encode(record: &Record) -> Result<Vec<u8>, JournalError> {
    let mut line = serde_json::to_vec(record).map_err(JournalError::Encode)?;
    line.push(b'\n');
    Ok(line)
}

/// The current time in Unix seconds, for records.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The pending leads of a journal's contents: leads without a later delivered mark, in
/// order, each id once. Lines that do not parse are skipped with a warning.
pub fn replay(bytes: &[u8], path: &Path) -> Vec<LeadRecord> {
    let lines: Vec<&[u8]> = bytes
        .split(|&b| b == b'\n')
        .filter(|line| !line.iter().all(u8::is_ascii_whitespace))
        .collect();
    let mut leads = Vec::new();
    let mut seen = HashSet::new();
    let mut delivered = HashSet::new();
    for (index, line) in lines.iter().enumerate() {
        match serde_json::from_slice::<Record>(line) {
            Ok(Record::Lead(lead)) => {
                if seen.insert(lead.id.clone()) {
                    leads.push(lead);
                }
            }
            Ok(Record::Delivered { id, .. }) => {
                delivered.insert(id);
            }
            Err(e) if index + 1 == lines.len() => log::warn!(
                "lead journal {}: skipping an incomplete last record (a crash mid-write?): {e}",
                path.display()
            ),
            Err(e) => log::warn!(
                "lead journal {}: skipping corrupt record {} of {} ({e}); later records are kept",
                path.display(),
                index + 1,
                lines.len()
            ),
        }
    }
    leads.retain(|lead| !delivered.contains(&lead.id));
    leads
}

/// A journal file written by [`rewrite`] and renamed into place.
struct Rewritten {
    /// The new file, open for appending (the handle stays valid across the rename).
    file: File,
    /// Its length.
    len: u64,
    /// Whether the directory was flushed after the rename (an error says why not).
    dir_synced: Result<(), JournalError>,
}

/// Replaces the journal file `target` (in `dir`) with one holding just the `pending` lines,
/// durably: they go to a new file (`temporary`), flushed, renamed over the journal, and the
/// directory is flushed with `sync_dir`. An error means the journal is unchanged; once the
/// rename is done the new file is returned, with the outcome of the directory flush.
fn rewrite(
    dir: &Path,
    target: &Path,
    temporary: &Path,
    pending: &[(String, Vec<u8>)],
    sync_dir: SyncDir,
) -> Result<Rewritten, JournalError> {
    let cannot_write = |e| JournalError::io(JournalStep::Write, temporary, e);
    match fs::remove_file(temporary) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(cannot_write(e)),
    }
    let mut file = create_private(temporary).map_err(cannot_write)?;
    let mut len = 0;
    for (_, line) in pending {
        file.write_all(line).map_err(cannot_write)?;
        len += line.len() as u64;
    }
    file.sync_all().map_err(cannot_write)?;
    fs::rename(temporary, target).map_err(|e| JournalError::io(JournalStep::Replace, target, e))?;
    Ok(Rewritten {
        file,
        len,
        dir_synced: sync_dir(dir),
    })
}

/// Creates a new file for appending that only the owner can read: it holds visitors'
/// messages.
fn create_private(path: &Path) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    options.append(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

/// Flushes a directory's entries (new names, renames) to disk.
fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    #[cfg(unix)]
    {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| JournalError::io(JournalStep::SyncDir, dir, e))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> LeadRecord {
        LeadRecord {
            id: id.to_string(),
            at: 1_767_225_600,
            tenant: "acme".into(),
            site: "https://www.example.com".into(),
            conversation: "thread_abc".into(),
            to: vec!["sales@example.com".into()],
            lead: Lead {
                name: "Ada".into(),
                email: "ada@example.net".into(),
                message: "Call me".into(),
            },
        }
    }

    fn delivered(id: &str) -> Record {
        Record::Delivered {
            id: id.into(),
            at: 1_767_225_601,
        }
    }

    fn ids(leads: &[LeadRecord]) -> Vec<&str> {
        leads.iter().map(|l| l.id.as_str()).collect()
    }

    fn lines(dir: &Path) -> Vec<String> {
        fs::read_to_string(dir.join(FILE_NAME))
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn records_are_one_json_object_per_line() {
        let line = serde_json::to_string(&Record::Lead(record("lead_1"))).unwrap();
        assert_eq!(
            line,
            r#"{"type":"lead","id":"lead_1","at":1767225600,"tenant":"acme","site":"https://www.example.com","conversation":"thread_abc","to":["sales@example.com"],"lead":{"name":"Ada","email":"ada@example.net","message":"Call me"}}"#
        );
        let line = serde_json::to_string(&delivered("lead_1")).unwrap();
        assert_eq!(
            line,
            r#"{"type":"delivered","id":"lead_1","at":1767225601}"#
        );
    }

    #[test]
    fn a_missing_directory_is_created() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("data/leads");
        let (journal, pending) = Journal::open(&dir).unwrap();
        assert!(pending.is_empty());
        assert_eq!(journal.path(), dir.join(FILE_NAME));
        assert!(journal.path().exists());
    }

    #[test]
    fn pending_leads_are_replayed_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, _) = Journal::open(dir.path()).unwrap();
        journal.append(&Record::Lead(record("lead_1"))).unwrap();
        journal.append(&Record::Lead(record("lead_2"))).unwrap();
        drop(journal);

        let (_, pending) = Journal::open(dir.path()).unwrap();
        assert_eq!(pending, vec![record("lead_1"), record("lead_2")]);
    }

    #[test]
    fn delivered_leads_are_not_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, _) = Journal::open(dir.path()).unwrap();
        journal.append(&Record::Lead(record("lead_1"))).unwrap();
        journal.append(&Record::Lead(record("lead_2"))).unwrap();
        journal.append(&delivered("lead_1")).unwrap();
        drop(journal);

        let (_, pending) = Journal::open(dir.path()).unwrap();
        assert_eq!(ids(&pending), ["lead_2"]);
    }

    #[test]
    fn a_torn_last_line_loses_nothing_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, _) = Journal::open(dir.path()).unwrap();
        journal.append(&Record::Lead(record("lead_1"))).unwrap();
        drop(journal);
        let mut file = OpenOptions::new()
            .append(true)
            .open(dir.path().join(FILE_NAME))
            .unwrap();
        file.write_all(br#"{"type":"lead","id":"lead_2","at":17672"#)
            .unwrap();
        drop(file);

        let (mut journal, pending) = Journal::open(dir.path()).unwrap();
        assert_eq!(ids(&pending), ["lead_1"]);
        // The torn bytes are gone, so the next record starts on a line of its own.
        journal.append(&Record::Lead(record("lead_3"))).unwrap();
        drop(journal);
        let (_, pending) = Journal::open(dir.path()).unwrap();
        assert_eq!(ids(&pending), ["lead_1", "lead_3"]);
    }

    #[test]
    fn a_corrupt_middle_line_is_skipped_and_later_records_kept() {
        let good = |r: &Record| serde_json::to_string(r).unwrap();
        let text = format!(
            "{}\n{{\"type\":\"lead\",garbage\n\u{0}\u{1}\n{}\n{}\n",
            good(&Record::Lead(record("lead_1"))),
            good(&Record::Lead(record("lead_2"))),
            good(&delivered("lead_1")),
        );
        let pending = replay(text.as_bytes(), Path::new("leads.jsonl"));
        assert_eq!(ids(&pending), ["lead_2"]);
    }

    #[test]
    fn invalid_utf8_and_blank_lines_do_not_stop_the_replay() {
        let mut bytes = b"\n\xff\xfe\n  \n".to_vec();
        bytes.extend(serde_json::to_vec(&Record::Lead(record("lead_1"))).unwrap());
        bytes.push(b'\n');
        assert_eq!(ids(&replay(&bytes, Path::new("j"))), ["lead_1"]);
    }

    #[test]
    fn a_lead_recorded_twice_is_replayed_once() {
        let line = serde_json::to_string(&Record::Lead(record("lead_1"))).unwrap();
        let text = format!("{line}\n{line}\n");
        assert_eq!(ids(&replay(text.as_bytes(), Path::new("j"))), ["lead_1"]);
    }

    #[test]
    fn a_second_journal_on_the_same_directory_gets_a_segment_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let (mut first, _) = Journal::open(dir.path()).unwrap();
        assert_eq!(first.path(), dir.path().join(FILE_NAME));
        first.append(&Record::Lead(record("lead_1"))).unwrap();
        let (mut second, pending) = Journal::open(dir.path()).unwrap();
        assert!(pending.is_empty(), "the first journal's leads are its own");
        assert_ne!(second.path(), first.path());
        second.append(&Record::Lead(record("lead_2"))).unwrap();
        // While the first lives, nothing of it is adopted.
        assert!(second.adopt_orphans().is_empty());
        first.append(&Record::Lead(record("lead_3"))).unwrap();
        first.append(&delivered("lead_1")).unwrap();
        drop(first);

        // Once it is gone its pending leads move over, once, and its file goes.
        assert_eq!(ids(&second.adopt_orphans()), ["lead_3"]);
        assert!(!dir.path().join(FILE_NAME).exists());
        assert!(second.adopt_orphans().is_empty());
        drop(second);
        let (journal, pending) = Journal::open(dir.path()).unwrap();
        assert_eq!(journal.path(), dir.path().join(FILE_NAME));
        assert_eq!(ids(&pending), ["lead_2", "lead_3"]);
        let files: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|name| name.ends_with(".jsonl"))
            .collect();
        assert_eq!(files, [FILE_NAME], "the second segment was adopted on open");
    }

    #[test]
    fn a_lead_in_two_segments_after_an_interrupted_adoption_is_adopted_once() {
        let dir = tempfile::tempdir().unwrap();
        let (mut first, _) = Journal::open(dir.path()).unwrap();
        let (mut second, _) = Journal::open(dir.path()).unwrap();
        let (third, _) = Journal::open(dir.path()).unwrap();
        // The second adopted lead_1 from the first, then crashed before deleting it.
        for journal in [&mut first, &mut second] {
            journal.append(&Record::Lead(record("lead_1"))).unwrap();
        }
        first.append(&Record::Lead(record("lead_2"))).unwrap();
        let mut third = third;
        drop(first);
        drop(second);
        assert_eq!(ids(&third.adopt_orphans()), ["lead_1", "lead_2"]);
        drop(third);
        assert_eq!(
            ids(&Journal::open(dir.path()).unwrap().1),
            ["lead_1", "lead_2"]
        );
    }

    #[test]
    fn a_lead_already_pending_here_is_not_adopted_again() {
        let dir = tempfile::tempdir().unwrap();
        let (mut first, _) = Journal::open(dir.path()).unwrap();
        first.append(&Record::Lead(record("lead_1"))).unwrap();
        let (mut second, _) = Journal::open(dir.path()).unwrap();
        second.append(&Record::Lead(record("lead_1"))).unwrap();
        drop(first);
        assert!(second.adopt_orphans().is_empty());
        let text = fs::read_to_string(second.path()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
    }

    #[test]
    fn opening_compacts_the_file_to_the_pending_leads() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, _) = Journal::open(dir.path()).unwrap();
        for id in ["lead_1", "lead_2", "lead_3"] {
            journal.append(&Record::Lead(record(id))).unwrap();
        }
        journal.append(&delivered("lead_1")).unwrap();
        journal.append(&delivered("lead_3")).unwrap();
        drop(journal);
        assert_eq!(lines(dir.path()).len(), 5);

        let (_, pending) = Journal::open(dir.path()).unwrap();
        assert_eq!(ids(&pending), ["lead_2"]);
        let compacted = lines(dir.path());
        assert_eq!(compacted.len(), 1);
        assert!(compacted[0].contains(r#""id":"lead_2""#), "{compacted:?}");
        assert!(!dir.path().join(COMPACTING_NAME).exists());
    }

    #[test]
    fn a_long_running_journal_is_compacted_as_leads_are_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, _) = Journal::open(dir.path()).unwrap();
        journal.compact_over = 2_000;
        for i in 0..100 {
            let id = format!("lead_{i}");
            journal.append(&Record::Lead(record(&id))).unwrap();
            if i != 42 {
                journal.append(&delivered(&id)).unwrap();
            }
        }
        // About 30 kB were written; what is left is the still pending lead and little else.
        let size = fs::metadata(journal.path()).unwrap().len();
        assert!(size < 2_500, "{size} bytes");
        assert_eq!(journal.len, size);
        journal.append(&Record::Lead(record("lead_last"))).unwrap();
        drop(journal);

        let (_, pending) = Journal::open(dir.path()).unwrap();
        assert_eq!(ids(&pending), ["lead_42", "lead_last"]);
    }

    /// A directory flush that always fails, as on a failing disk.
    fn failing_sync(dir: &Path) -> Result<(), JournalError> {
        Err(JournalError::io(
            JournalStep::SyncDir,
            dir,
            io::Error::other("injected failure"),
        ))
    }

    /// The lead ids in the journal file on disk, in order.
    fn lead_ids_on_disk(dir: &Path) -> Vec<String> {
        lines(dir)
            .iter()
            .filter_map(|line| match serde_json::from_str(line).unwrap() {
                Record::Lead(lead) => Some(lead.id),
                Record::Delivered { .. } => None,
            })
            .collect()
    }

    #[test]
    fn after_a_failed_directory_flush_appends_go_to_the_compacted_file() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, _) = Journal::open(dir.path()).unwrap();
        journal.sync_dir = failing_sync;
        journal.compact_over = 2_000;
        for i in 0..20 {
            let id = format!("lead_{i}");
            journal.append(&Record::Lead(record(&id))).unwrap();
            if i != 7 {
                journal.append(&delivered(&id)).unwrap();
            }
        }
        // Compaction ran (the rename replaced the file) although every flush failed...
        assert!(!journal.dir_synced);
        let size = fs::metadata(journal.path()).unwrap().len();
        assert!(size < 2_500, "{size} bytes: not compacted");
        // ...and later records land in the file that has the journal's name.
        journal.append(&Record::Lead(record("lead_after"))).unwrap();
        assert_eq!(journal.len, fs::metadata(journal.path()).unwrap().len());
        assert_eq!(lead_ids_on_disk(dir.path()), ["lead_7", "lead_after"]);
        drop(journal);

        let (_, pending) = Journal::open(dir.path()).unwrap();
        assert_eq!(ids(&pending), ["lead_7", "lead_after"]);
    }

    #[test]
    fn a_failed_directory_flush_on_open_still_opens_the_compacted_file() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, _) = Journal::open(dir.path()).unwrap();
        journal.append(&Record::Lead(record("lead_1"))).unwrap();
        journal.append(&Record::Lead(record("lead_2"))).unwrap();
        journal.append(&delivered("lead_1")).unwrap();
        drop(journal);

        let (mut journal, pending) = Journal::open_with(dir.path(), failing_sync).unwrap();
        assert_eq!(ids(&pending), ["lead_2"]);
        assert!(!journal.dir_synced);
        journal.append(&Record::Lead(record("lead_3"))).unwrap();
        assert_eq!(lead_ids_on_disk(dir.path()), ["lead_2", "lead_3"]);
        drop(journal);

        let (_, pending) = Journal::open(dir.path()).unwrap();
        assert_eq!(ids(&pending), ["lead_2", "lead_3"]);
    }

    #[test]
    fn the_directory_flush_is_retried_after_appends_until_it_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, _) = Journal::open_with(dir.path(), failing_sync).unwrap();
        assert!(!journal.dir_synced);
        journal.append(&Record::Lead(record("lead_1"))).unwrap();
        assert!(!journal.dir_synced, "the injected failure persists");
        journal.sync_dir = sync_dir;
        journal.append(&Record::Lead(record("lead_2"))).unwrap();
        assert!(journal.dir_synced);
    }

    #[test]
    fn a_stale_compaction_file_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(COMPACTING_NAME), "left over by a crash").unwrap();
        let (mut journal, _) = Journal::open(dir.path()).unwrap();
        journal.append(&Record::Lead(record("lead_1"))).unwrap();
        drop(journal);
        assert_eq!(ids(&Journal::open(dir.path()).unwrap().1), ["lead_1"]);
    }

    #[cfg(unix)]
    #[test]
    fn the_journal_is_readable_by_its_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = Journal::open(dir.path()).unwrap();
        let mode = fs::metadata(journal.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
