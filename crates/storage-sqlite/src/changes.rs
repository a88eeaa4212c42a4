//! The change feeds of the kinds that keep one (format 7): a batch's changes written by the
//! writer, numbered in commit order (one writer, `AUTOINCREMENT`), and a page of them read
//! back in one transaction.

use perennial_storage::{Batch, ChangePage, Error, StoredChange};
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use crate::errors::{from_sql, map_err, to_sql};
use crate::writer::Fence;

const INSERT_CHANGE: &str =
    "INSERT INTO changes (kind, id, version, at, state) VALUES (?1, ?2, ?3, ?4, ?5)";

/// Notes the highest number among the changes `EXPIRE_CHANGES` deletes: a kind's oldest
/// before a time, at most a limit of them.
const NOTE_EXPIRED_CHANGES: &str = "
INSERT INTO changes_expired (kind, through)
SELECT ?1, max(seq)
  FROM (SELECT seq FROM changes WHERE kind = ?1 AND at < ?2 ORDER BY at, seq LIMIT ?3)
 WHERE true HAVING max(seq) IS NOT NULL
ON CONFLICT (kind) DO UPDATE SET through = max(through, excluded.through)";

/// Deletes a kind's changes before a time.
const EXPIRE_CHANGES: &str = "
DELETE FROM changes WHERE seq IN
    (SELECT seq FROM changes WHERE kind = ?1 AND at < ?2 ORDER BY at, seq LIMIT ?3)";

/// Writes a batch's changes (numbered in commit order by the single writer) and their expiry.
pub(crate) fn write(
    tx: &Transaction<'_>,
    batch: &Batch,
    fence: &mut Fence<'_>,
) -> Result<(), Error> {
    if !batch.changes.is_empty() {
        let mut insert = tx.prepare_cached(INSERT_CHANGE).map_err(map_err)?;
        for c in &batch.changes {
            if fence.allows(c.shard, c.epoch)? {
                insert
                    .execute(params![
                        &*c.key.kind,
                        c.key.id.as_str(),
                        to_sql(c.version),
                        c.at_ms,
                        c.state.as_deref()
                    ])
                    .map_err(map_err)?;
            }
        }
    }
    for expire in &batch.expire_changes {
        let limit = i64::try_from(expire.limit).unwrap_or(i64::MAX);
        for sql in [NOTE_EXPIRED_CHANGES, EXPIRE_CHANGES] {
            tx.prepare_cached(sql)
                .map_err(map_err)?
                .execute(params![expire.kind, expire.before_ms, limit])
                .map_err(map_err)?;
        }
    }
    Ok(())
}

/// Up to `limit` changes of `kind` numbered above `after`, and how far expiry went, read in
/// one transaction (so that an expiry in between cannot hide a gap).
pub(crate) fn read(
    conn: &Connection,
    kind: &str,
    after: u64,
    limit: usize,
) -> Result<ChangePage, Error> {
    let tx = conn.unchecked_transaction().map_err(map_err)?;
    let expired: Option<i64> = tx
        .prepare_cached("SELECT through FROM changes_expired WHERE kind = ?1")
        .map_err(map_err)?
        .query_row([kind], |r| r.get(0))
        .optional()
        .map_err(map_err)?;
    let mut stmt = tx
        .prepare_cached(
            "SELECT seq, id, version, at, state FROM changes
              WHERE kind = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
        )
        .map_err(map_err)?;
    let after = i64::try_from(after).unwrap_or(i64::MAX);
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = stmt
        .query_map(rusqlite::params![kind, after, limit], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, Option<String>>(4)?,
            ))
        })
        .map_err(map_err)?;
    let mut changes = Vec::new();
    for row in rows {
        let (seq, id, version, at_ms, state) = row.map_err(map_err)?;
        changes.push(StoredChange {
            seq: from_sql(seq, "change number")?,
            id,
            version: from_sql(version, "change version")?,
            at_ms,
            state,
        });
    }
    drop(stmt);
    tx.finish().map_err(map_err)?;
    Ok(ChangePage {
        changes,
        expired_through: expired.map_or(Ok(0), |n| from_sql(n, "expired change number"))?,
    })
}
