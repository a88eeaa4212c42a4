//! Online backups of a data directory, and the way back: [`backup`] copies the database
//! beside a node that serves it, consistent to one commit; [`check_backup`] reads a copy
//! back; [`restore`] makes a new data directory of one.
//!
//! A backup is SQLite's online backup of the whole file in one step, under one read
//! transaction. In WAL mode a reader never blocks the writer, so commits go on meanwhile; the
//! writer's checkpoints cannot recycle the WAL past the reader's snapshot until the copy ends,
//! so the WAL grows by what is committed during the copy. The copy holds every commit that
//! completed before the backup began (so every call acknowledged by then) and none that began
//! after its snapshot. It is written beside its final name, flushed, and renamed, so a
//! crash never leaves a partial file under that name. It is a single file in rollback-journal
//! mode: nothing beside it is needed to read it.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use perennial_storage::{Error, Result};
use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags};

use crate::errors::map_err;
use crate::schema::format_of;
use crate::store::DB_FILE;

/// How long a backup waits, in all, for a lock it cannot take (another process rewriting the
/// file's header, such as a checkpoint resetting the WAL) before it gives up.
const BUSY_FOR: Duration = Duration::from_secs(30);

/// What a backup wrote.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct BackupReport {
    /// The backup file.
    pub file: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
    /// How long the copy held its read transaction (the snapshot), in microseconds.
    pub snapshot_us: u64,
    /// How long the whole backup took, flush and rename included, in microseconds.
    pub took_us: u64,
}

/// What a backup file holds, as [`check_backup`] found it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct BackupSummary {
    /// The data's format version.
    pub format: u32,
    /// Entities with a stored state.
    pub entities: u64,
    /// Journal entries.
    pub journal_entries: u64,
    /// Timers, messages and effects not applied yet.
    pub pending: u64,
}

/// Copies the store of the data directory `dir` into the new file `to`, consistent to one
/// commit, beside a node that serves `dir` (or none). Fails if `to` exists: a backup never
/// overwrites.
///
/// ```
/// use perennial_storage::Store;
/// use perennial_storage_sqlite::{SqliteStore, backup, check_backup, restore};
///
/// # fn main() -> Result<(), perennial_storage::Error> {
/// let dir = tempfile::tempdir().unwrap();
/// let store = SqliteStore::open(dir.path().join("data"))?;
/// let copy = dir.path().join("monday.db");
/// let report = backup(dir.path().join("data"), &copy)?;
/// assert_eq!(report.file, copy);
/// assert_eq!(check_backup(&copy)?.entities, 0);
/// restore(&copy, dir.path().join("restored"))?;
/// # drop(store);
/// # Ok(())
/// # }
/// ```
pub fn backup(dir: impl AsRef<Path>, to: impl AsRef<Path>) -> Result<BackupReport> {
    let started = Instant::now();
    let (source, to) = (data_file(dir.as_ref())?, to.as_ref());
    refuse_existing(to)?;
    let partial = partial_of(to);
    remove_stale(&partial)?;
    let from = Connection::open_with_flags(
        &source,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(map_err)?;
    from.busy_timeout(BUSY_FOR).map_err(map_err)?;
    format_of(&from)?;
    let snapshot = {
        let mut copy = Connection::open(&partial).map_err(|e| write_error(&partial, e))?;
        let took = copy_all(&from, &mut copy)?;
        // A file of its own: no WAL beside it, whatever the source's mode.
        copy.pragma_update(None, "journal_mode", "DELETE")
            .map_err(map_err)?;
        took
    };
    drop(from);
    let bytes = flush(&partial)?;
    rename_durably(&partial, to)?;
    Ok(BackupReport {
        file: to.to_owned(),
        bytes,
        snapshot_us: micros(snapshot),
        took_us: micros(started.elapsed()),
    })
}

/// Reads the backup file `file` back, writing nothing: SQLite's integrity check of every
/// page and index, the data's format, and what it holds. Whether this build's kinds can
/// decode every state is for a runtime to say (`perennial backup --verify` checks both).
pub fn check_backup(file: impl AsRef<Path>) -> Result<BackupSummary> {
    let file = file.as_ref();
    if !file.is_file() {
        return Err(Error::Io(format!("{} is not a file", file.display())));
    }
    let conn = Connection::open_with_flags(
        file,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(map_err)?;
    let format = format_of(&conn).map_err(|e| not_a_backup(file, &e))?;
    if format == 0 {
        return Err(Error::Corrupt(format!(
            "{} holds no Perennial data",
            file.display()
        )));
    }
    let problems: Vec<String> = {
        let mut check = conn
            .prepare("PRAGMA integrity_check")
            .map_err(|e| not_a_backup(file, &map_err(e)))?;
        check
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(map_err)?
            .collect::<std::result::Result<_, _>>()
            .map_err(map_err)?
    };
    if problems != ["ok"] {
        return Err(Error::Corrupt(format!(
            "{} fails SQLite's integrity check: {}",
            file.display(),
            problems.join("; ")
        )));
    }
    let count = |sql: &str| -> Result<u64> {
        conn.query_row(sql, [], |r| r.get::<_, i64>(0))
            .map(|n| u64::try_from(n).unwrap_or(0))
            .map_err(map_err)
    };
    Ok(BackupSummary {
        format,
        // The view merges the log not folded yet with the table, deletions included.
        entities: count("SELECT count(*) FROM entity_state")?,
        journal_entries: count("SELECT count(*) FROM journal")?,
        // Before format 8 every pending row was in `pending`; `all_pending` came with 8.
        pending: count(if format >= 8 {
            "SELECT count(*) FROM all_pending"
        } else {
            "SELECT count(*) FROM pending"
        })?,
    })
}

/// Makes the new data directory `dir` from the backup file `from`, after checking it (see
/// [`check_backup`]). Fails if `dir` already holds data: a restore never overwrites. A node
/// started on `dir` then serves what the backup holds.
pub fn restore(from: impl AsRef<Path>, dir: impl AsRef<Path>) -> Result<BackupSummary> {
    let (from, dir) = (from.as_ref(), dir.as_ref());
    let summary = check_backup(from)?;
    let target = dir.join(DB_FILE);
    refuse_existing(&target)?;
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::Io(format!("cannot create {}: {e}", dir.display())))?;
    let partial = partial_of(&target);
    remove_stale(&partial)?;
    std::fs::copy(from, &partial).map_err(|e| write_error(&partial, e))?;
    flush(&partial)?;
    rename_durably(&partial, &target)?;
    Ok(summary)
}

/// Copies every page of `from` into `to` in one step, so under one read transaction: one
/// snapshot. Returns how long the step took.
fn copy_all(from: &Connection, to: &mut Connection) -> Result<Duration> {
    let backup = Backup::new(from, to).map_err(map_err)?;
    let give_up = Instant::now() + BUSY_FOR;
    loop {
        let started = Instant::now();
        match backup.step(-1).map_err(map_err)? {
            StepResult::Done => return Ok(started.elapsed()),
            // One step of every page cannot leave more; a lock held elsewhere can delay it.
            StepResult::More | StepResult::Busy | StepResult::Locked
                if Instant::now() < give_up =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            _ => {
                return Err(Error::Backend(
                    "the backup could not read the database for 30 s (it stayed locked)".into(),
                ));
            }
        }
    }
}

/// The database file of the data directory `dir`.
fn data_file(dir: &Path) -> Result<PathBuf> {
    let file = dir.join(DB_FILE);
    if file.is_file() {
        Ok(file)
    } else {
        Err(Error::Io(format!(
            "{} holds no Perennial data (no {DB_FILE})",
            dir.display()
        )))
    }
}

fn refuse_existing(path: &Path) -> Result<()> {
    if path.exists() {
        return Err(Error::Io(format!(
            "{} exists already; give a new name (backups and restores never overwrite)",
            path.display()
        )));
    }
    Ok(())
}

/// Where a file is written before it is renamed to `path`.
fn partial_of(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".partial");
    PathBuf::from(name)
}

/// Removes what an interrupted backup or restore left.
fn remove_stale(partial: &Path) -> Result<()> {
    match std::fs::remove_file(partial) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(write_error(partial, e)),
    }
}

/// Flushes a written file to disk; returns its size.
fn flush(path: &Path) -> Result<u64> {
    let file = File::open(path).map_err(|e| write_error(path, e))?;
    file.sync_all().map_err(|e| write_error(path, e))?;
    Ok(file.metadata().map_err(|e| write_error(path, e))?.len())
}

/// Renames `from` to `to` and flushes their directory, so that the new name survives a crash.
fn rename_durably(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to).map_err(|e| write_error(to, e))?;
    let dir = match to.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| write_error(dir, e))
}

fn write_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Io(format!("cannot write {}: {e}", path.display()))
}

fn not_a_backup(file: &Path, e: &Error) -> Error {
    match e {
        Error::TooNew { .. } => e.clone(),
        _ => Error::Corrupt(format!(
            "{} is not a Perennial backup ({e})",
            file.display()
        )),
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
