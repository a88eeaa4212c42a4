//! [`Inspector`]: reads a data directory without the user's types and without writing, for
//! `perennial inspect` and other tools. It works beside a running node (SQLite's WAL lets
//! readers in while the writer writes) and on a stopped node's directory.

use std::path::Path;

use perennial_storage::{EntitySummary, Error, JournalEntry};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use crate::errors::{from_sql, map_err};
use crate::schema::FORMAT_VERSION;
use crate::store::DB_FILE;

/// A read-only view of a data directory.
///
/// ```
/// use perennial_storage_sqlite::{Inspector, SqliteStore};
///
/// let dir = tempfile::tempdir().unwrap();
/// drop(SqliteStore::open(dir.path()).unwrap());
/// let inspector = Inspector::open(dir.path()).unwrap();
/// assert!(inspector.kinds().unwrap().is_empty());
/// ```
#[derive(Debug)]
pub struct Inspector {
    conn: Connection,
}

/// One kind, as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct KindSummary {
    /// The kind's name.
    pub kind: String,
    /// Entities with a stored state or a journal.
    pub entities: u64,
    /// Journal entries of all its entities (0 for kinds that are not `Journal` kinds).
    pub journal_entries: u64,
}

/// An entity's stored state.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct StoredState {
    /// The state as JSON text.
    pub state: String,
    /// The step (or version) it is at.
    pub version: u64,
    /// When it was written, in milliseconds since the Unix epoch.
    pub updated_at_ms: i64,
}

impl Inspector {
    /// Opens the data directory `dir` for reading. Fails if it holds no Perennial data, or
    /// data from a newer version.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, Error> {
        let path = dir.as_ref().join(DB_FILE);
        if !path.is_file() {
            return Err(Error::Io(format!(
                "{} holds no Perennial data (no {DB_FILE})",
                dir.as_ref().display()
            )));
        }
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(map_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(map_err)?;
        let version = crate::schema::format_of(&conn)?;
        if version < 2 {
            return Err(Error::Backend(format!(
                "the data is in format {version}; open it once with `perennial serve` to \
                 upgrade it to format {FORMAT_VERSION}"
            )));
        }
        Ok(Self { conn })
    }

    /// Every stored kind, by name.
    pub fn kinds(&self) -> Result<Vec<KindSummary>, Error> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT kind, count(*),
                        (SELECT count(*) FROM journal AS j WHERE j.kind = e.kind)
                   FROM (SELECT kind, id FROM entity_state
                         UNION SELECT DISTINCT kind, id FROM journal) AS e
                  GROUP BY kind ORDER BY kind",
            )
            .map_err(map_err)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })
            .map_err(map_err)?;
        let mut kinds = Vec::new();
        for row in rows {
            let (kind, entities, journal_entries) = row.map_err(map_err)?;
            kinds.push(KindSummary {
                kind,
                entities: from_sql(entities, "entity count")?,
                journal_entries: from_sql(journal_entries, "journal count")?,
            });
        }
        Ok(kinds)
    }

    /// Up to `limit` entities of `kind` with an id after `after` (all, if `None`), by id.
    pub fn entities(
        &self,
        kind: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<EntitySummary>, Error> {
        crate::reader::entities(&self.conn, kind, after, limit)
    }

    /// An entity's stored state: for a `Journal` kind, its latest snapshot.
    pub fn state(&self, kind: &str, id: &str) -> Result<Option<StoredState>, Error> {
        let row = self
            .conn
            .query_row(
                "SELECT state, version, updated_at FROM entity_state WHERE kind = ?1 AND id = ?2",
                params![kind, id],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                },
            )
            .optional()
            .map_err(map_err)?;
        row.map(|(state, version, updated_at_ms)| {
            Ok(StoredState {
                state,
                version: from_sql(version, "entity version")?,
                updated_at_ms,
            })
        })
        .transpose()
    }

    /// Up to `limit` journal entries of an entity after step `after`, in step order.
    pub fn history(
        &self,
        kind: &str,
        id: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<JournalEntry>, Error> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT step, at, entry FROM journal
                  WHERE kind = ?1 AND id = ?2 AND step > ?3 ORDER BY step LIMIT ?4",
            )
            .map_err(map_err)?;
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = stmt
            .query_map(params![kind, id, after, limit], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                ))
            })
            .map_err(map_err)?;
        let mut entries = Vec::new();
        for row in rows {
            let (step, at_us, entry) = row.map_err(map_err)?;
            entries.push(JournalEntry {
                step: from_sql(step, "journal step")?,
                at_us,
                entry: entry.into(),
            });
        }
        Ok(entries)
    }
}
