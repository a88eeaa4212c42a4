//! The reader threads: loads served from read-only connections, beside the writer.

use std::sync::Arc;
use std::thread;

use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;
use perennial_storage::{
    ChangePage, DeadLetter, EntityState, EntitySummary, Error, Filter, JournalEntry, Path,
    Pending as PendingRow, PendingClass, Record, StoredDeadLetter, StoredReply,
};
use perennial_types::{EntityId, EntityKey};
use rusqlite::{Connection, OptionalExtension};
use tokio::sync::oneshot;

use crate::errors::{from_sql, map_err};
use crate::pending::Pending;
use crate::query;
use crate::recent::Recent;

/// A request to any reader thread.
#[derive(Debug)]
pub(crate) enum ReadCmd {
    Load {
        key: EntityKey,
        reply: oneshot::Sender<Result<Option<Record>, Error>>,
    },
    LastRow {
        key: EntityKey,
        reply: oneshot::Sender<Result<Option<u64>, Error>>,
    },
    DeadLetters {
        kind: Option<String>,
        reply: oneshot::Sender<Result<Vec<StoredDeadLetter>, Error>>,
    },
    Journal {
        key: EntityKey,
        after: u64,
        limit: usize,
        reply: oneshot::Sender<Result<Vec<JournalEntry>, Error>>,
    },
    Due {
        before_ms: i64,
        limit: usize,
        reply: oneshot::Sender<Result<Vec<PendingRow>, Error>>,
    },
    Reply {
        key: EntityKey,
        idempotency_key: String,
        reply: oneshot::Sender<Result<Option<StoredReply>, Error>>,
    },
    Entities {
        kind: String,
        after: Option<String>,
        limit: usize,
        reply: oneshot::Sender<Result<Vec<EntitySummary>, Error>>,
    },
    Query {
        kind: String,
        filter: Filter,
        after: Option<String>,
        limit: usize,
        reply: oneshot::Sender<Result<Vec<EntityState>, Error>>,
    },
    Indexes {
        kind: String,
        reply: oneshot::Sender<Result<Vec<Path>, Error>>,
    },
    Changes {
        kind: String,
        after: u64,
        limit: usize,
        reply: oneshot::Sender<Result<ChangePage, Error>>,
    },
    Paused {
        reply: oneshot::Sender<Result<Vec<EntityKey>, Error>>,
    },
    Count {
        kind: String,
        reply: oneshot::Sender<Result<u64, Error>>,
    },
    PendingOf {
        owner: EntityKey,
        limit: usize,
        reply: oneshot::Sender<Result<Vec<PendingRow>, Error>>,
    },
}

/// Starts one thread per connection, all serving the returned channel.
pub(crate) fn spawn(
    conns: Vec<Connection>,
    pending: Arc<Mutex<Pending>>,
    recent: Arc<Mutex<Recent>>,
) -> Result<Sender<ReadCmd>, Error> {
    let (tx, rx) = crossbeam_channel::unbounded();
    for (i, conn) in conns.into_iter().enumerate() {
        let rx = rx.clone();
        let pending = Arc::clone(&pending);
        let recent = Arc::clone(&recent);
        thread::Builder::new()
            .name(format!("perennial-sqlite-reader-{i}"))
            .spawn(move || serve(&conn, &pending, &recent, &rx))
            .map_err(|e| Error::Io(format!("cannot start a reader thread: {e}")))?;
    }
    Ok(tx)
}

fn serve(
    conn: &Connection,
    pending: &Mutex<Pending>,
    recent: &Mutex<Recent>,
    rx: &Receiver<ReadCmd>,
) {
    while let Ok(cmd) = rx.recv() {
        match cmd {
            ReadCmd::Load { key, reply } => {
                let _ = reply.send(load(conn, pending, &key));
            }
            ReadCmd::LastRow { key, reply } => {
                let _ = reply.send(last_row(conn, recent, &key));
            }
            ReadCmd::DeadLetters { kind, reply } => {
                let _ = reply.send(dead_letters(conn, kind.as_deref()));
            }
            ReadCmd::Journal {
                key,
                after,
                limit,
                reply,
            } => {
                let _ = reply.send(journal(conn, &key, after, limit));
            }
            ReadCmd::Due {
                before_ms,
                limit,
                reply,
            } => {
                let _ = reply.send(due(conn, before_ms, limit));
            }
            ReadCmd::Reply {
                key,
                idempotency_key,
                reply,
            } => {
                let _ = reply.send(stored_reply(conn, recent, &key, &idempotency_key));
            }
            ReadCmd::Entities {
                kind,
                after,
                limit,
                reply,
            } => {
                let listed = entities_with_pending(conn, pending, &kind, after.as_deref(), limit);
                let _ = reply.send(listed);
            }
            ReadCmd::Query {
                kind,
                filter,
                after,
                limit,
                reply,
            } => {
                let found = query::query(conn, pending, &kind, &filter, after.as_deref(), limit);
                let _ = reply.send(found);
            }
            ReadCmd::Indexes { kind, reply } => {
                let _ = reply.send(query::indexes(conn, &kind));
            }
            ReadCmd::Changes {
                kind,
                after,
                limit,
                reply,
            } => {
                let _ = reply.send(crate::changes::read(conn, &kind, after, limit));
            }
            ReadCmd::Count { kind, reply } => {
                let _ = reply.send(count(conn, &kind));
            }
            ReadCmd::PendingOf {
                owner,
                limit,
                reply,
            } => {
                let _ = reply.send(pending_of(conn, &owner, limit));
            }
            ReadCmd::Paused { reply } => {
                let _ = reply.send(paused(conn));
            }
        }
    }
}

/// An entity's latest committed state: from the pending states if it is not folded yet
/// (the writer publishes them only after their commit), else from `entities`.
fn load(
    conn: &Connection,
    pending: &Mutex<Pending>,
    key: &EntityKey,
) -> Result<Option<Record>, Error> {
    if let Some(p) = pending.lock().get(key) {
        return Ok(Some(Record {
            state: p.state.to_string(),
            version: p.version,
            schema: p.schema,
        }));
    }
    let mut stmt = conn
        .prepare_cached("SELECT state, version, schema FROM entities WHERE kind = ?1 AND id = ?2")
        .map_err(map_err)?;
    let row = stmt
        .query_row((&*key.kind, key.id.as_str()), |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, i64>(2)?,
            ))
        })
        .optional()
        .map_err(map_err)?;
    let Some((state, version, schema)) = row else {
        return Ok(None);
    };
    let version = from_sql(version, "entity version")?;
    let schema = u32::try_from(schema)
        .map_err(|_| Error::Corrupt(format!("{key} has schema version {schema}")))?;
    Ok(Some(Record {
        state,
        version,
        schema,
    }))
}

/// The highest number among the pending rows `key` owns: the recent ones first (see
/// [`crate::recent`]), then `pending`.
fn last_row(
    conn: &Connection,
    recent: &Mutex<Recent>,
    key: &EntityKey,
) -> Result<Option<u64>, Error> {
    let newest = recent.lock().rows_of(key).map(|(seq, _)| seq).max();
    let seq: Option<i64> = conn
        .prepare_cached("SELECT max(seq) FROM pending WHERE kind = ?1 AND id = ?2")
        .map_err(map_err)?
        .query_row((&*key.kind, key.id.as_str()), |r| r.get(0))
        .map_err(map_err)?;
    let older = seq
        .map(|s| from_sql(s, "a pending row's number"))
        .transpose()?;
    Ok(newest.max(older))
}

/// The paused entities, in key order.
fn paused(conn: &Connection) -> Result<Vec<EntityKey>, Error> {
    let mut stmt = conn
        .prepare_cached("SELECT kind, id FROM paused ORDER BY kind, id")
        .map_err(map_err)?;
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
        .map_err(map_err)?;
    let mut keys = Vec::new();
    for row in rows {
        let (kind, id) = row.map_err(map_err)?;
        let id = EntityId::new(&id).map_err(|e| {
            Error::Corrupt(format!("a paused entity of {kind} has an invalid id: {e}"))
        })?;
        keys.push(EntityKey::new(kind, id));
    }
    Ok(keys)
}

fn dead_letters(conn: &Connection, kind: Option<&str>) -> Result<Vec<StoredDeadLetter>, Error> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT seq, kind, id, message, error, attempts, at FROM dead_letters
             WHERE ?1 IS NULL OR kind = ?1 ORDER BY seq",
        )
        .map_err(map_err)?;
    let rows = stmt
        .query_map([kind], |row| {
            let kind: String = row.get(1)?;
            let id: String = row.get(2)?;
            Ok((
                row.get::<_, i64>(0)?,
                kind,
                id,
                row.get::<_, String>(3)?,
                row.get::<_, String>(4)?,
                row.get::<_, u32>(5)?,
                row.get::<_, i64>(6)?,
            ))
        })
        .map_err(map_err)?;
    let mut letters = Vec::new();
    for row in rows {
        let (seq, kind, id, message, error, attempts, at_ms) = row.map_err(map_err)?;
        let id = EntityId::new(&id)
            .map_err(|e| Error::Corrupt(format!("dead letter {seq} has an invalid id: {e}")))?;
        letters.push(StoredDeadLetter {
            seq: from_sql(seq, "dead letter number")?,
            letter: DeadLetter {
                key: EntityKey::new(kind, id),
                message,
                error,
                attempts,
                at_ms,
            },
        });
    }
    Ok(letters)
}

/// Up to `limit` journal entries of `key` after step `after`. Journal rows are written in the
/// commit's own transaction (they are never pending), so the table alone is exact.
fn journal(
    conn: &Connection,
    key: &EntityKey,
    after: u64,
    limit: usize,
) -> Result<Vec<JournalEntry>, Error> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT step, at, entry FROM journal
             WHERE kind = ?1 AND id = ?2 AND step > ?3 ORDER BY step LIMIT ?4",
        )
        .map_err(map_err)?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let after = i64::try_from(after).unwrap_or(i64::MAX);
    let mut rows = stmt
        .query(rusqlite::params![&*key.kind, key.id.as_str(), after, limit])
        .map_err(map_err)?;
    let mut entries = Vec::new();
    while let Some(row) = rows.next().map_err(map_err)? {
        let step: i64 = row.get(0).map_err(map_err)?;
        // Borrowed from SQLite's row, copied once into the entry.
        let entry = row
            .get_ref(2)
            .map_err(map_err)?
            .as_str()
            .map_err(|e| Error::Corrupt(format!("journal step {step} is not text: {e}")))?;
        entries.push(JournalEntry {
            step: from_sql(step, "journal step")?,
            at_us: row.get(1).map_err(map_err)?,
            entry: Arc::from(entry),
        });
    }
    Ok(entries)
}

/// Up to `limit` pending rows due at or before `before_ms`, the earliest first.
fn due(conn: &Connection, before_ms: i64, limit: usize) -> Result<Vec<PendingRow>, Error> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT kind, id, seq, due, class, target_kind, target_id, body FROM all_pending
             WHERE due <= ?1 ORDER BY due LIMIT ?2",
        )
        .map_err(map_err)?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = stmt
        .query(rusqlite::params![before_ms, limit])
        .map_err(map_err)?;
    pending_rows(rows)
}

/// How many entities of `kind` have a state (folded or not) or a journal.
fn count(conn: &Connection, kind: &str) -> Result<u64, Error> {
    let n: i64 = conn
        .prepare_cached(
            "SELECT count(*) FROM (SELECT id FROM entity_state WHERE kind = ?1
                                   UNION SELECT id FROM journal WHERE kind = ?1)",
        )
        .map_err(map_err)?
        .query_row([kind], |r| r.get(0))
        .map_err(map_err)?;
    from_sql(n, "entity count")
}

/// An entity's pending rows, by number.
fn pending_of(
    conn: &Connection,
    owner: &EntityKey,
    limit: usize,
) -> Result<Vec<PendingRow>, Error> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT kind, id, seq, due, class, target_kind, target_id, body FROM all_pending
             WHERE kind = ?1 AND id = ?2 ORDER BY seq LIMIT ?3",
        )
        .map_err(map_err)?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = stmt
        .query(rusqlite::params![&*owner.kind, owner.id.as_str(), limit])
        .map_err(map_err)?;
    pending_rows(rows)
}

/// Pending rows selected as `kind, id, seq, due, class, target_kind, target_id, body`.
fn pending_rows(mut rows: rusqlite::Rows<'_>) -> Result<Vec<PendingRow>, Error> {
    let mut due = Vec::new();
    while let Some(row) = rows.next().map_err(map_err)? {
        let entity = |kind: usize, id: usize| -> Result<EntityKey, Error> {
            let kind: String = row.get(kind).map_err(map_err)?;
            let id: String = row.get(id).map_err(map_err)?;
            let id = EntityId::new(&id)
                .map_err(|e| Error::Corrupt(format!("a pending row has an invalid id: {e}")))?;
            Ok(EntityKey::new(kind, id))
        };
        let owner = entity(0, 1)?;
        let seq: i64 = row.get(2).map_err(map_err)?;
        let class: i64 = row.get(4).map_err(map_err)?;
        let class = PendingClass::from_code(class).ok_or_else(|| {
            Error::Corrupt(format!(
                "pending row {owner}#{seq} has an unknown class {class}"
            ))
        })?;
        let body: String = row.get(7).map_err(map_err)?;
        due.push(PendingRow {
            seq: from_sql(seq, "pending number")?,
            due_ms: row.get(3).map_err(map_err)?,
            class,
            target: entity(5, 6)?,
            body: Arc::from(body),
            owner,
        });
    }
    Ok(due)
}

/// The reply kept for an idempotency key, if any: among the recent ones if it is one (see
/// [`crate::recent`]), else in `replies`, where it may also have moved meanwhile.
fn stored_reply(
    conn: &Connection,
    recent: &Mutex<Recent>,
    key: &EntityKey,
    idempotency_key: &str,
) -> Result<Option<StoredReply>, Error> {
    let rowid = recent.lock().reply(key, idempotency_key);
    if let Some(rowid) = rowid {
        let found = conn
            .prepare_cached("SELECT reply, at FROM recent_replies WHERE rowid = ?1")
            .map_err(map_err)?
            .query_row([rowid], |row| {
                Ok(StoredReply {
                    reply: row.get(0)?,
                    at_ms: row.get(1)?,
                })
            })
            .optional()
            .map_err(map_err)?;
        if found.is_some() {
            return Ok(found);
        }
    }
    let mut stmt = conn
        .prepare_cached("SELECT reply, at FROM replies WHERE kind = ?1 AND id = ?2 AND key = ?3")
        .map_err(map_err)?;
    stmt.query_row(
        rusqlite::params![&*key.kind, key.id.as_str(), idempotency_key],
        |row| {
            Ok(StoredReply {
                reply: row.get(0)?,
                at_ms: row.get(1)?,
            })
        },
    )
    .optional()
    .map_err(map_err)
}

/// Up to `limit` stored entities of `kind` (with a state or a journal) with an id after
/// `after`, by id, for the store: from the `entities` table and the journal by their keys,
/// with the states not folded yet from memory. Each page costs its own rows, however many
/// states the log holds (the `entity_state` view would merge the whole log for each).
fn entities_with_pending(
    conn: &Connection,
    pending: &Mutex<Pending>,
    kind: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<EntitySummary>, Error> {
    use std::collections::BTreeMap;
    // id -> (version, updated_at, schema), or None for a journal-only entity.
    let mut found: BTreeMap<String, Option<(u64, i64, u32)>> = BTreeMap::new();
    let sql_limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut table = conn
        .prepare_cached(
            "SELECT id, version, updated_at, schema FROM entities
              WHERE kind = ?1 AND (?2 IS NULL OR id > ?2) ORDER BY id LIMIT ?3",
        )
        .map_err(map_err)?;
    let rows = table
        .query_map(rusqlite::params![kind, after, sql_limit], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })
        .map_err(map_err)?;
    for row in rows {
        let (id, version, updated_at, schema) = row.map_err(map_err)?;
        let schema = u32::try_from(schema)
            .map_err(|_| Error::Corrupt(format!("{kind}/{id} has schema version {schema}")))?;
        let version = from_sql(version, "entity version")?;
        found.insert(id, Some((version, updated_at, schema)));
    }
    let mut journaled = conn
        .prepare_cached(
            "SELECT DISTINCT id FROM journal
              WHERE kind = ?1 AND (?2 IS NULL OR id > ?2) ORDER BY id LIMIT ?3",
        )
        .map_err(map_err)?;
    let ids = journaled
        .query_map(rusqlite::params![kind, after, sql_limit], |r| {
            r.get::<_, String>(0)
        })
        .map_err(map_err)?;
    for id in ids {
        found.entry(id.map_err(map_err)?).or_insert(None);
    }
    for (id, p) in pending.lock().of_kind_after(kind, after, limit) {
        found.insert(id, Some((p.version, p.updated_at, p.schema)));
    }
    let mut last = conn
        .prepare_cached(
            "SELECT coalesce(max(step), 0), coalesce(max(at), 0) FROM journal
              WHERE kind = ?1 AND id = ?2",
        )
        .map_err(map_err)?;
    let mut entities = Vec::with_capacity(limit.min(found.len()));
    for (id, state) in found.into_iter().take(limit) {
        let (last_step, last_step_us) = last
            .query_row(rusqlite::params![kind, id], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
            })
            .map_err(map_err)?;
        let (version, updated_at, schema) = state.unwrap_or((0, 0, 1));
        let summary = EntitySummary::new(
            id,
            version,
            from_sql(last_step, "journal step")?,
            updated_at.max(last_step_us / 1000),
        );
        entities.push(summary.with_schema(schema));
    }
    Ok(entities)
}

/// Up to `limit` stored entities of `kind` (with a state or a journal) with an id after
/// `after`, by id, through the `entity_state` view. For `perennial inspect`.
pub(crate) fn entities(
    conn: &Connection,
    kind: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<EntitySummary>, Error> {
    let mut stmt = conn
        .prepare_cached(
            "WITH ids AS (
                 SELECT id FROM entity_state WHERE kind = ?1 AND (?2 IS NULL OR id > ?2)
                 UNION SELECT DISTINCT id FROM journal WHERE kind = ?1 AND (?2 IS NULL OR id > ?2)
                 ORDER BY id LIMIT ?3)
             SELECT ids.id, coalesce(s.version, 0), coalesce(s.updated_at, 0),
                    coalesce(s.schema, 1),
                    coalesce((SELECT max(step) FROM journal AS j
                               WHERE j.kind = ?1 AND j.id = ids.id), 0),
                    coalesce((SELECT max(at) FROM journal AS j
                               WHERE j.kind = ?1 AND j.id = ids.id), 0)
               FROM ids LEFT JOIN entity_state AS s ON s.kind = ?1 AND s.id = ids.id
              ORDER BY ids.id",
        )
        .map_err(map_err)?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = stmt
        .query_map(rusqlite::params![kind, after, limit], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, i64>(5)?,
            ))
        })
        .map_err(map_err)?;
    let mut entities = Vec::new();
    for row in rows {
        let (id, version, updated_at_ms, schema, last_step, last_step_us) = row.map_err(map_err)?;
        let schema = u32::try_from(schema)
            .map_err(|_| Error::Corrupt(format!("{kind}/{id} has schema version {schema}")))?;
        let summary = EntitySummary::new(
            id,
            from_sql(version, "entity version")?,
            from_sql(last_step, "journal step")?,
            updated_at_ms.max(last_step_us / 1000),
        );
        entities.push(summary.with_schema(schema));
    }
    Ok(entities)
}
