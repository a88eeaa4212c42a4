//! Pending rows and kept replies in their first commits, and where each one is.
//!
//! Most of them die young: a message is applied and an ask answered within a few
//! milliseconds, and the kept reply of an ask is deleted once its answer is applied. Written
//! into the keyed B-trees of `pending` and `replies` (and their indexes), each would change
//! pages at random places twice, so a commit of a few hundred of them would write hundreds of
//! pages. So a commit appends them to two small tables of their own, `recent_pending` and
//! `recent_replies`, under rowids it gives in increasing order, and deletes them there by
//! rowid: every change lands on the last few pages. The few that live on (timers, effects
//! waiting, replies kept for their window) are moved to `pending` and `replies` after
//! [`RECENT_COMMITS`] commits, by the writer (see [`crate::writer`]).
//!
//! This module holds the rowid of each recent row and reply, in memory, for the writer and
//! the readers. It is changed only after the transaction that changed the tables committed,
//! so a reader that finds a rowid here and then no row under it knows the row moved (or was
//! deleted) meanwhile, and looks in the older table.
//!
//! The runtime writes each row once (a row's number is `(step << 20) + n`, and a step is
//! committed at most once), and keeps one reply per idempotency key until it is deleted or
//! expires. So neither ever stands in both tables, and a deletion that finds it here need
//! not look in the older table.

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::sync::LazyLock;

use hashbrown::HashMap;
use parking_lot::Mutex;
use perennial_storage::{Batch, Error, ExpireReplies, ReplyWrite};
use perennial_types::{EntityId, EntityKey};
use rusqlite::{Connection, Transaction, params};

use crate::errors::{from_sql, map_err, to_sql};
use crate::rows::{Rows, int, text};
use crate::writer::Fence;

/// How many commits a row or reply stays in the recent tables before it is moved.
pub(crate) const RECENT_COMMITS: usize = 64;
/// Beyond this many recent rows and replies, the oldest are moved sooner, so a scan of the
/// recent tables (which have no index) stays short.
pub(crate) const MAX_RECENT: usize = 16_384;

/// A recent pending row: where it is, and whether deleting its owner deletes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecentRow {
    pub(crate) rowid: i64,
    pub(crate) dies_with_owner: bool,
}

/// The recent rows and replies, by key and by rowid.
#[derive(Debug, Default)]
pub(crate) struct Recent {
    rows: PerEntity<u64, RecentRow>,
    row_ids: BTreeMap<i64, (EntityKey, u64)>,
    replies: PerEntity<String, i64>,
    reply_ids: BTreeMap<i64, (EntityKey, String)>,
    /// The rowid the next recent row or reply gets: above every rowid in either table.
    next_id: i64,
}

/// What a committed transaction changed in the recent tables.
#[derive(Debug, Default)]
pub(crate) struct RecentChanges {
    pub(crate) rows_added: Vec<((EntityKey, u64), RecentRow)>,
    pub(crate) replies_added: Vec<((EntityKey, String), i64)>,
    /// Rows deleted by rowid (applied, cancelled, replaced, or their owner deleted).
    pub(crate) rows_gone: Vec<i64>,
    pub(crate) replies_gone: Vec<i64>,
    /// Every row and reply below this rowid was moved to the older tables.
    pub(crate) moved_below: Option<i64>,
}

impl Recent {
    /// The recent rows and replies a store holds.
    pub(crate) fn load(conn: &Connection) -> Result<Self, Error> {
        let mut recent = Self {
            next_id: 1,
            ..Self::default()
        };
        let mut stmt = conn
            .prepare(
                "SELECT rowid, kind, id, seq, class, target_kind, target_id FROM recent_pending",
            )
            .map_err(map_err)?;
        let mut found = stmt.query([]).map_err(map_err)?;
        while let Some(row) = found.next().map_err(map_err)? {
            let rowid: i64 = row.get(0).map_err(map_err)?;
            let owner = key(row.get(1).map_err(map_err)?, row.get(2).map_err(map_err)?)?;
            let seq = from_sql(row.get(3).map_err(map_err)?, "pending number")?;
            let class: i64 = row.get(4).map_err(map_err)?;
            let target = key(row.get(5).map_err(map_err)?, row.get(6).map_err(map_err)?)?;
            let dies_with_owner =
                class == perennial_storage::PendingClass::Ask.code() || target == owner;
            recent.add_row(
                (owner, seq),
                RecentRow {
                    rowid,
                    dies_with_owner,
                },
            );
        }
        let mut stmt = conn
            .prepare("SELECT rowid, kind, id, key FROM recent_replies")
            .map_err(map_err)?;
        let mut found = stmt.query([]).map_err(map_err)?;
        while let Some(row) = found.next().map_err(map_err)? {
            let rowid: i64 = row.get(0).map_err(map_err)?;
            let entity = key(row.get(1).map_err(map_err)?, row.get(2).map_err(map_err)?)?;
            recent.add_reply((entity, row.get(3).map_err(map_err)?), rowid);
        }
        Ok(recent)
    }

    /// The rowid the next recent row or reply gets.
    pub(crate) fn next_id(&self) -> i64 {
        self.next_id
    }

    /// How many rows and replies are recent.
    pub(crate) fn len(&self) -> usize {
        self.row_ids.len() + self.reply_ids.len()
    }

    /// Where the row `seq` of `owner` is, if it is recent.
    pub(crate) fn row(&self, owner: &EntityKey, seq: u64) -> Option<RecentRow> {
        self.rows.get(owner, &seq)
    }

    /// The recent rows `owner` owns, in no particular order.
    pub(crate) fn rows_of(&self, owner: &EntityKey) -> impl Iterator<Item = (u64, RecentRow)> {
        self.rows.of(owner).iter().copied()
    }

    /// Where the reply kept for `idempotency_key` of `key` is, if it is recent.
    pub(crate) fn reply(&self, key: &EntityKey, idempotency_key: &str) -> Option<i64> {
        self.replies.get(key, idempotency_key)
    }

    /// The rowid below which rows and replies are moved now: those older than
    /// [`RECENT_COMMITS`] commits (`marked`, the next rowid as that commit began), and the
    /// oldest beyond [`MAX_RECENT`]. `None`: nothing to move.
    pub(crate) fn move_below(&self, marked: Option<i64>) -> Option<i64> {
        let oldest = match (self.row_ids.keys().next(), self.reply_ids.keys().next()) {
            (Some(&a), Some(&b)) => a.min(b),
            (a, b) => *a.or(b)?,
        };
        let mut below = marked.unwrap_or(i64::MIN);
        let len = self.len();
        if len > MAX_RECENT {
            // Keep the newest half of the bound: the next few commits move nothing.
            let mut ids: Vec<i64> = self
                .row_ids
                .keys()
                .chain(self.reply_ids.keys())
                .copied()
                .collect();
            let keep = MAX_RECENT / 2;
            let (_, nth, _) = ids.select_nth_unstable(len - keep);
            below = below.max(*nth);
        }
        (oldest < below).then_some(below)
    }

    /// Makes a committed transaction's changes visible.
    pub(crate) fn publish(&mut self, changes: RecentChanges) {
        for (key, row) in changes.rows_added {
            self.add_row(key, row);
        }
        for (key, rowid) in changes.replies_added {
            self.add_reply(key, rowid);
        }
        for rowid in changes.rows_gone {
            if let Some((owner, seq)) = self.row_ids.remove(&rowid) {
                self.rows.remove(&owner, &seq);
            }
        }
        for rowid in changes.replies_gone {
            if let Some((key, idempotency_key)) = self.reply_ids.remove(&rowid) {
                self.replies.remove(&key, &idempotency_key);
            }
        }
        if let Some(below) = changes.moved_below {
            let kept = self.row_ids.split_off(&below);
            for (owner, seq) in std::mem::replace(&mut self.row_ids, kept).into_values() {
                self.rows.remove(&owner, &seq);
            }
            let kept = self.reply_ids.split_off(&below);
            for (key, idem) in std::mem::replace(&mut self.reply_ids, kept).into_values() {
                self.replies.remove(&key, &idem);
            }
        }
    }

    fn add_row(&mut self, (owner, seq): (EntityKey, u64), row: RecentRow) {
        self.next_id = self.next_id.max(row.rowid + 1);
        self.row_ids.insert(row.rowid, (owner.clone(), seq));
        if let Some(old) = self.rows.insert(owner, seq, row) {
            self.row_ids.remove(&old.rowid);
        }
    }

    fn add_reply(&mut self, (key, idempotency_key): (EntityKey, String), rowid: i64) {
        self.next_id = self.next_id.max(rowid + 1);
        self.reply_ids
            .insert(rowid, (key.clone(), idempotency_key.clone()));
        if let Some(old) = self.replies.insert(key, idempotency_key, rowid) {
            self.reply_ids.remove(&old);
        }
    }
}

/// Values kept per entity, few for each: found by a borrowed key (no clone of the entity's
/// key on the commit path), with the entity's entry dropped once it holds none.
#[derive(Debug)]
struct PerEntity<K, V>(HashMap<EntityKey, Vec<(K, V)>>);

impl<K, V> Default for PerEntity<K, V> {
    fn default() -> Self {
        Self(HashMap::new())
    }
}

impl<K: PartialEq, V: Copy> PerEntity<K, V> {
    fn get<Q: ?Sized + PartialEq>(&self, entity: &EntityKey, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        let values = self.0.get(entity)?;
        values
            .iter()
            .find(|(k, _)| k.borrow() == key)
            .map(|(_, v)| *v)
    }

    fn of(&self, entity: &EntityKey) -> &[(K, V)] {
        self.0.get(entity).map_or(&[], Vec::as_slice)
    }

    /// Keeps `value` under `key`; returns the value it replaces.
    fn insert(&mut self, entity: EntityKey, key: K, value: V) -> Option<V> {
        let values = self.0.entry(entity).or_default();
        match values.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => Some(std::mem::replace(v, value)),
            None => {
                values.push((key, value));
                None
            }
        }
    }

    fn remove<Q: ?Sized + PartialEq>(&mut self, entity: &EntityKey, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        let values = self.0.get_mut(entity)?;
        let at = values.iter().position(|(k, _)| k.borrow() == key)?;
        let (_, value) = values.swap_remove(at);
        if values.is_empty() {
            self.0.remove(entity);
        }
        Some(value)
    }
}

/// Appends pending rows to the recent ones, under the rowids the writer gives.
static RECENT_PENDING: LazyLock<Rows> = LazyLock::new(|| {
    Rows::new(
        "INSERT INTO recent_pending \
         (rowid, kind, id, seq, due, class, target_kind, target_id, body)",
        9,
        "",
    )
});

/// Appends kept replies to the recent ones.
static RECENT_REPLIES: LazyLock<Rows> = LazyLock::new(|| {
    Rows::new(
        "INSERT INTO recent_replies (rowid, kind, id, key, at, reply)",
        6,
        "",
    )
});

/// Deletes recent rows (or replies) by rowid, given as a JSON array: one statement a batch.
const DELETE_RECENT_PENDING: &str =
    "DELETE FROM recent_pending WHERE rowid IN (SELECT value FROM json_each(?1))";
const DELETE_RECENT_REPLIES: &str =
    "DELETE FROM recent_replies WHERE rowid IN (SELECT value FROM json_each(?1))";

/// Moves the recent rows and replies below a rowid to the keyed tables.
const MOVE_RECENT: [&str; 4] = [
    "INSERT OR REPLACE INTO pending (kind, id, seq, due, class, target_kind, target_id, body)
     SELECT kind, id, seq, due, class, target_kind, target_id, body FROM recent_pending
      WHERE rowid < ?1",
    "DELETE FROM recent_pending WHERE rowid < ?1",
    "INSERT OR REPLACE INTO replies (kind, id, key, at, reply)
     SELECT kind, id, key, at, reply FROM recent_replies WHERE rowid < ?1",
    "DELETE FROM recent_replies WHERE rowid < ?1",
];

const DELETE_PENDING: &str = "DELETE FROM pending WHERE kind = ?1 AND id = ?2 AND seq = ?3";

const DELETE_REPLY: &str = "DELETE FROM replies WHERE kind = ?1 AND id = ?2 AND key = ?3";

/// Deletes the oldest replies before a time, at most a limit of them.
const EXPIRE_REPLIES: &str = "
DELETE FROM replies WHERE (kind, id, key) IN
    (SELECT kind, id, key FROM replies WHERE at < ?1 ORDER BY at LIMIT ?2)";

/// Writes a batch's pending rows, their deletions, its kept replies and their expiry: new rows
/// and replies to the recent tables, each deletion where its row or reply is (see
/// [`crate::recent`]). Returns what changed in the recent tables.
pub(crate) fn write(
    tx: &Transaction<'_>,
    batch: &Batch,
    fence: &mut Fence,
    recent: &Mutex<Recent>,
) -> Result<RecentChanges, Error> {
    let mut changes = RecentChanges::default();
    let mut rows: Vec<Option<(i64, &perennial_storage::Pending)>> = Vec::new();
    let mut replies: Vec<Option<(i64, &ReplyWrite)>> = Vec::new();
    let mut rows_done = Vec::new();
    let mut replies_done = Vec::new();
    {
        let recent = recent.lock();
        let mut next_id = recent.next_id();
        // A row or reply written and deleted in the same batch is never written at all.
        let mut new_rows: HashMap<(&EntityKey, u64), usize> = HashMap::new();
        for w in &batch.pending {
            if fence.allows(w.shard, w.epoch)? {
                let p = &w.pending;
                if let Some(earlier) = new_rows.insert((&p.owner, p.seq), rows.len()) {
                    rows[earlier] = None;
                }
                if let Some(old) = recent.row(&p.owner, p.seq) {
                    changes.rows_gone.push(old.rowid);
                }
                rows.push(Some((next_id, p)));
                next_id += 1;
            }
        }
        for d in &batch.done {
            if fence.allows(d.shard, d.epoch)? {
                if let Some(i) = new_rows.remove(&(&d.owner, d.seq)) {
                    rows[i] = None;
                } else if let Some(old) = recent.row(&d.owner, d.seq) {
                    changes.rows_gone.push(old.rowid);
                } else {
                    rows_done.push(d);
                }
            }
        }
        let mut new_replies: HashMap<(&EntityKey, &str), usize> = HashMap::new();
        for r in &batch.replies {
            if fence.allows(r.shard, r.epoch)? {
                let key = (&r.key, r.idempotency_key.as_str());
                if let Some(earlier) = new_replies.insert(key, replies.len()) {
                    replies[earlier] = None;
                }
                if let Some(old) = recent.reply(&r.key, &r.idempotency_key) {
                    changes.replies_gone.push(old);
                }
                replies.push(Some((next_id, r)));
                next_id += 1;
            }
        }
        for d in &batch.replies_done {
            if fence.allows(d.shard, d.epoch)? {
                if let Some(i) = new_replies.remove(&(&d.key, d.idempotency_key.as_str())) {
                    replies[i] = None;
                } else if let Some(old) = recent.reply(&d.key, &d.idempotency_key) {
                    changes.replies_gone.push(old);
                } else {
                    replies_done.push(d);
                }
            }
        }
    }
    let mut values = Vec::with_capacity(rows.len() * 9);
    for &(rowid, p) in rows.iter().flatten() {
        values.extend([
            int(rowid),
            text(&p.owner.kind),
            text(p.owner.id.as_str()),
            int(to_sql(p.seq)),
            int(p.due_ms),
            int(p.class.code()),
            text(&p.target.kind),
            text(p.target.id.as_str()),
            text(&p.body),
        ]);
        let row = RecentRow {
            rowid,
            dies_with_owner: p.dies_with_owner(),
        };
        changes.rows_added.push(((p.owner.clone(), p.seq), row));
    }
    RECENT_PENDING.run(tx, &values)?;
    values.clear();
    for &(rowid, r) in replies.iter().flatten() {
        values.extend([
            int(rowid),
            text(&r.key.kind),
            text(r.key.id.as_str()),
            text(&r.idempotency_key),
            int(r.reply.at_ms),
            text(&r.reply.reply),
        ]);
        let key = (r.key.clone(), r.idempotency_key.clone());
        changes.replies_added.push((key, rowid));
    }
    RECENT_REPLIES.run(tx, &values)?;
    drop(values);
    delete_recent(tx, DELETE_RECENT_PENDING, &changes.rows_gone)?;
    delete_recent(tx, DELETE_RECENT_REPLIES, &changes.replies_gone)?;
    if !rows_done.is_empty() {
        let mut delete = tx.prepare_cached(DELETE_PENDING).map_err(map_err)?;
        for d in rows_done {
            delete
                .execute(params![&*d.owner.kind, d.owner.id.as_str(), to_sql(d.seq)])
                .map_err(map_err)?;
        }
    }
    if !replies_done.is_empty() {
        let mut delete = tx.prepare_cached(DELETE_REPLY).map_err(map_err)?;
        for d in replies_done {
            delete
                .execute(params![&*d.key.kind, d.key.id.as_str(), d.idempotency_key])
                .map_err(map_err)?;
        }
    }
    if let Some(expire) = batch.expire_replies {
        expire_replies(tx, expire, &mut changes)?;
    }
    crate::changes::write(tx, batch, fence)?;
    Ok(changes)
}

/// Deletes at most `expire.limit` kept replies older than `expire.before_ms`, the oldest
/// first, from both tables: the recent ones by rowid, the rest with [`EXPIRE_REPLIES`].
fn expire_replies(
    tx: &Transaction<'_>,
    expire: ExpireReplies,
    changes: &mut RecentChanges,
) -> Result<(), Error> {
    let limit = i64::try_from(expire.limit).unwrap_or(i64::MAX);
    let ages = |sql: &str| -> Result<Vec<(i64, i64)>, Error> {
        let mut stmt = tx.prepare_cached(sql).map_err(map_err)?;
        let rows = stmt
            .query_map(params![expire.before_ms, limit], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .map_err(map_err)?;
        rows.collect::<Result<_, _>>().map_err(map_err)
    };
    let recent = ages("SELECT at, rowid FROM recent_replies WHERE at < ?1 ORDER BY at LIMIT ?2")?;
    let older = ages("SELECT at, 0 FROM replies WHERE at < ?1 ORDER BY at LIMIT ?2")?;
    // The oldest `limit` of both: how many of them each table holds.
    let (mut from_recent, mut from_older) = (0, 0);
    while from_recent + from_older < expire.limit {
        match (recent.get(from_recent), older.get(from_older)) {
            (Some(a), Some(b)) if a.0 <= b.0 => from_recent += 1,
            (_, Some(_)) => from_older += 1,
            (Some(_), None) => from_recent += 1,
            (None, None) => break,
        }
    }
    let gone: Vec<i64> = recent[..from_recent]
        .iter()
        .map(|&(_, rowid)| rowid)
        .collect();
    delete_recent(tx, DELETE_RECENT_REPLIES, &gone)?;
    changes.replies_gone.extend(gone);
    if from_older > 0 {
        tx.prepare_cached(EXPIRE_REPLIES)
            .map_err(map_err)?
            .execute(params![expire.before_ms, to_sql(from_older as u64)])
            .map_err(map_err)?;
    }
    Ok(())
}

/// Deletes recent rows or replies by rowid, with `sql` (one of the `DELETE_RECENT_*`).
fn delete_recent(tx: &Transaction<'_>, sql: &str, rowids: &[i64]) -> Result<(), Error> {
    if rowids.is_empty() {
        return Ok(());
    }
    let ids = serde_json::to_string(rowids)
        .map_err(|e| Error::Backend(format!("cannot encode rowids: {e}")))?;
    tx.prepare_cached(sql)
        .map_err(map_err)?
        .execute([ids])
        .map_err(map_err)?;
    Ok(())
}

/// Moves the recent rows and replies below `below` to `pending` and `replies`, inside `tx`.
pub(crate) fn move_older(
    tx: &Transaction<'_>,
    below: Option<i64>,
    changes: &mut RecentChanges,
) -> Result<(), Error> {
    let Some(below) = below else {
        return Ok(());
    };
    for sql in MOVE_RECENT {
        tx.prepare_cached(sql)
            .map_err(map_err)?
            .execute([below])
            .map_err(map_err)?;
    }
    changes.moved_below = Some(below);
    Ok(())
}

/// Deletes the recent rows of the entities `keys` deleted that die with them (see
/// [`perennial_storage::Pending::dies_with_owner`]), those written by this batch included.
/// The older table's are the caller's to delete.
pub(crate) fn delete_owned(
    tx: &Transaction<'_>,
    keys: &[EntityKey],
    recent: &Mutex<Recent>,
    changes: &mut RecentChanges,
) -> Result<(), Error> {
    let mut gone = Vec::new();
    {
        let recent = recent.lock();
        for key in keys {
            let stored = recent.rows_of(key).map(|(_, row)| row);
            let added = changes
                .rows_added
                .iter()
                .filter(|((owner, _), _)| owner == key)
                .map(|(_, row)| *row);
            gone.extend(
                stored
                    .chain(added)
                    .filter(|r| r.dies_with_owner)
                    .map(|r| r.rowid),
            );
        }
    }
    delete_recent(tx, DELETE_RECENT_PENDING, &gone)?;
    changes.rows_gone.extend(gone);
    Ok(())
}

/// An entity key read from a recent table.
fn key(kind: String, id: String) -> Result<EntityKey, Error> {
    let id = EntityId::new(&id)
        .map_err(|e| Error::Corrupt(format!("a recent row has an invalid id: {e}")))?;
    Ok(EntityKey::new(kind, id))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(id: &str) -> EntityKey {
        EntityKey::new("k", EntityId::new(id).unwrap())
    }

    fn row(rowid: i64) -> RecentRow {
        RecentRow {
            rowid,
            dies_with_owner: false,
        }
    }

    #[test]
    fn rows_are_found_by_key_and_forgotten_by_rowid_or_move() {
        let mut recent = Recent::default();
        recent.publish(RecentChanges {
            rows_added: vec![((owner("a"), 1), row(1)), ((owner("a"), 2), row(2))],
            replies_added: vec![((owner("b"), "key".into()), 3)],
            ..RecentChanges::default()
        });
        assert_eq!(recent.row(&owner("a"), 2), Some(row(2)));
        assert_eq!(recent.reply(&owner("b"), "key"), Some(3));
        let mut seqs: Vec<u64> = recent.rows_of(&owner("a")).map(|(s, _)| s).collect();
        seqs.sort_unstable();
        assert_eq!(seqs, [1, 2]);
        assert_eq!(recent.move_below(None), None, "nothing is old yet");
        assert_eq!(recent.move_below(Some(3)), Some(3));
        recent.publish(RecentChanges {
            rows_gone: vec![2],
            moved_below: Some(2),
            ..RecentChanges::default()
        });
        assert_eq!(recent.len(), 1);
        assert_eq!(recent.row(&owner("a"), 1), None, "moved");
        assert_eq!(recent.row(&owner("a"), 2), None, "deleted");
        assert_eq!(recent.reply(&owner("b"), "key"), Some(3));
        assert_eq!(recent.next_id(), 4);
    }

    #[test]
    fn beyond_the_bound_the_oldest_half_is_moved() {
        let mut recent = Recent::default();
        let n = MAX_RECENT + 10;
        recent.publish(RecentChanges {
            rows_added: (0..n)
                .map(|i| ((owner("a"), i as u64), row(i as i64 + 1)))
                .collect(),
            ..RecentChanges::default()
        });
        let below = recent.move_below(None).unwrap();
        assert_eq!(
            recent.row_ids.range(below..).count(),
            MAX_RECENT / 2,
            "the newest half of the bound stays"
        );
    }
}
