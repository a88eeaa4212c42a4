//! The writer: one connection, one transaction per batch, every write fenced.
//!
//! **Fencing.** A batch first takes `FOR SHARE` locks on the `shards` rows it writes to and
//! reads their epochs; a write naming another epoch is dropped and its shard reported. A claim
//! takes `FOR UPDATE` locks on the same rows, so it waits for every batch that checked an
//! epoch it is about to change, and such a batch's writes either land before the claim or are
//! refused after it. Checking the epoch without the lock would let a stale writer's batch land
//! after the new owner loaded its state (the pitfall measured in the reliability research).
//!
//! Each kind of row is written by one statement over arrays (`unnest`), whatever the batch's
//! size: a batch of a thousand steps is a handful of statements and one `COMMIT`.

use std::collections::{BTreeSet, HashMap};

use perennial_storage::{Batch, CommitOutcome, Error, Fenced};
use perennial_types::{EntityKey, Epoch, SHARDS, ShardId};
use tokio_postgres::{Client, Statement, Transaction};

use crate::errors::{map_err, to_sql};

const UPSERT_STATES: &str = "
INSERT INTO entities (kind, id, shard, version, updated_at, state, schema)
SELECT k, i, s, v, $6, st::jsonb, sc
  FROM unnest($1::text[], $2::text[], $3::integer[], $4::bigint[], $5::text[], $7::integer[])
       AS t(k, i, s, v, st, sc)
ON CONFLICT (kind, id) DO UPDATE
   SET shard = excluded.shard, version = excluded.version,
       updated_at = excluded.updated_at, state = excluded.state, schema = excluded.schema";

const INSERT_DEAD_LETTERS: &str = "
INSERT INTO dead_letters (kind, id, message, error, attempts, at)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::integer[], $6::bigint[])";

const INSERT_JOURNAL: &str = "
INSERT INTO journal (kind, id, step, at, entry)
SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::text[])";

const TRIM_JOURNAL: &str = "
DELETE FROM journal AS j
 USING unnest($1::text[], $2::text[], $3::bigint[]) AS t(k, i, through)
 WHERE j.kind = t.k AND j.id = t.i AND j.step <= t.through";

const UPSERT_PENDING: &str = "
INSERT INTO pending (kind, id, seq, due, class, target_kind, target_id, body)
SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::smallint[],
                     $6::text[], $7::text[], $8::text[])
ON CONFLICT (kind, id, seq) DO UPDATE
   SET due = excluded.due, class = excluded.class, target_kind = excluded.target_kind,
       target_id = excluded.target_id, body = excluded.body";

const DELETE_PENDING: &str = "
DELETE FROM pending AS p
 USING unnest($1::text[], $2::text[], $3::bigint[]) AS t(k, i, s)
 WHERE p.kind = t.k AND p.id = t.i AND p.seq = t.s";

const UPSERT_REPLIES: &str = "
INSERT INTO replies (kind, id, key, at, reply)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[])
ON CONFLICT (kind, id, key) DO UPDATE SET at = excluded.at, reply = excluded.reply";

const DELETE_REPLIES: &str = "
DELETE FROM replies AS r
 USING unnest($1::text[], $2::text[], $3::text[]) AS t(k, i, key)
 WHERE r.kind = t.k AND r.id = t.i AND r.key = t.key";

const EXPIRE_REPLIES: &str = "
DELETE FROM replies WHERE (kind, id, key) IN
    (SELECT kind, id, key FROM replies WHERE at < $1 ORDER BY at LIMIT $2)";

const DELETE_DEAD_LETTERS: &str = "DELETE FROM dead_letters WHERE seq = ANY($1)";

// A deleted entity's state, journal, and the rows it addressed to itself (timers, effects,
// messages to itself; its messages to others are theirs now).
const DELETE_ENTITIES: &str = "
DELETE FROM entities AS e USING unnest($1::text[], $2::text[]) AS t(k, i)
 WHERE e.kind = t.k AND e.id = t.i";
const DELETE_JOURNALS: &str = "
DELETE FROM journal AS j USING unnest($1::text[], $2::text[]) AS t(k, i)
 WHERE j.kind = t.k AND j.id = t.i";
const DELETE_OWNED: &str = "
DELETE FROM pending AS p USING unnest($1::text[], $2::text[]) AS t(k, i)
 WHERE p.kind = t.k AND p.id = t.i
   AND (p.class = 3 OR (p.target_kind = t.k AND p.target_id = t.i))";

/// Serializes the batches that write changes, until they commit: taken last, so held only
/// for the changes' insert and the commit. Numbers drawn under it follow commit order.
const LOCK_CHANGES: &str =
    "SELECT pg_advisory_xact_lock(hashtext('perennial changes of ' || current_schema()))";

/// Reserves `$1` numbers of the change sequence; returns the last.
const RESERVE_CHANGES: &str = "SELECT setval('changes_seq', nextval('changes_seq') + $1 - 1)";

const INSERT_CHANGES: &str = "
INSERT INTO changes (seq, kind, id, version, at, state)
SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bigint[], $5::bigint[],
                     $6::text[])";

/// Notes the highest number among the changes `EXPIRE_CHANGES` deletes: a kind's oldest
/// before a time, at most a limit of them.
const NOTE_EXPIRED_CHANGES: &str = "
INSERT INTO changes_expired (kind, through)
SELECT $1, max(seq)
  FROM (SELECT seq FROM changes WHERE kind = $1 AND at < $2 ORDER BY at, seq LIMIT $3) AS old
HAVING max(seq) IS NOT NULL
ON CONFLICT (kind) DO UPDATE SET through = greatest(changes_expired.through, excluded.through)";

const EXPIRE_CHANGES: &str = "
DELETE FROM changes WHERE seq IN
    (SELECT seq FROM changes WHERE kind = $1 AND at < $2 ORDER BY at, seq LIMIT $3)";

const LOCK_EPOCHS: &str =
    "SELECT shard, epoch FROM shards WHERE shard = ANY($1) ORDER BY shard FOR SHARE";

const PAUSE: &str = "
INSERT INTO paused (kind, id, at) SELECT k, i, $3 FROM unnest($1::text[], $2::text[]) AS t(k, i)
ON CONFLICT DO NOTHING";

const RESUME: &str = "
DELETE FROM paused AS p USING unnest($1::text[], $2::text[]) AS t(k, i)
 WHERE p.kind = t.k AND p.id = t.i";

/// The write connection, with the statements it prepared (each is parsed and planned once
/// per connection, not once per batch).
#[derive(Debug)]
pub(crate) struct Writer {
    pub(crate) client: Client,
    prepared: HashMap<&'static str, Statement>,
    /// The server turned out read-only (a standby): open the connection again before the
    /// next batch, so that an address with several hosts finds the primary.
    pub(crate) stale: bool,
}

impl Writer {
    pub(crate) fn new(client: Client) -> Self {
        Self {
            client,
            prepared: HashMap::new(),
            stale: false,
        }
    }
}

/// The statement for `sql`, prepared on first use.
async fn prepared(
    cache: &mut HashMap<&'static str, Statement>,
    tx: &Transaction<'_>,
    sql: &'static str,
) -> Result<Statement, Error> {
    if let Some(statement) = cache.get(sql) {
        return Ok(statement.clone());
    }
    let statement = tx.prepare(sql).await.map_err(map_err)?;
    cache.insert(sql, statement.clone());
    Ok(statement)
}

/// The epochs a batch holds locks on, and the shards whose writes it refused.
struct Fence {
    epochs: HashMap<u32, u64>,
    fenced: BTreeSet<ShardId>,
}

impl Fence {
    /// The writes of `writes` that may land, in their order; records the shards of the others.
    fn keep<'a, W: Fenced>(&mut self, writes: &'a [W]) -> Vec<&'a W> {
        writes
            .iter()
            .filter(|w| {
                let (shard, epoch) = w.fenced_by();
                self.allows(shard, epoch)
            })
            .collect()
    }

    /// Whether a write naming `epoch` for `shard` may land; records the shard if not.
    fn allows(&mut self, shard: ShardId, epoch: Epoch) -> bool {
        let current = self.epochs.get(&shard.0).copied().unwrap_or(0);
        let ok = (current != 0 && current == epoch.0)
            || perennial_faults::sabotaged(perennial_faults::Sabotage::NoFence);
        if !ok {
            self.fenced.insert(shard);
        }
        ok
    }
}

/// The kind and the id column of `keys`, for `unnest`.
fn key_columns<'a>(keys: impl Iterator<Item = &'a EntityKey>) -> (Vec<&'a str>, Vec<&'a str>) {
    keys.map(|k| (&*k.kind, k.id.as_str())).unzip()
}

/// Writes `batch` in one transaction; see the module docs.
pub(crate) async fn commit(writer: &mut Writer, batch: &Batch) -> Result<CommitOutcome, Error> {
    if batch.is_empty() {
        return Ok(CommitOutcome::default());
    }
    let now = crate::now_ms();
    let Writer {
        client,
        prepared: cache,
        ..
    } = writer;
    let tx = client.transaction().await.map_err(map_err)?;
    let mut fence = Fence {
        epochs: lock_epochs(&tx, cache, batch).await?,
        fenced: BTreeSet::new(),
    };
    // The epochs are checked and locked; nothing is written yet.
    perennial_faults::failpoint!("pg.commit.fenced");

    // States: the latest of each entity, in key order (so concurrent writers lock rows in
    // one order).
    let mut states = fence.keep(&batch.states);
    states.sort_by(|a, b| a.key.cmp(&b.key).then(b.version.cmp(&a.version)));
    states.dedup_by(|later, earlier| later.key == earlier.key);
    if !states.is_empty() {
        let (kinds, ids) = key_columns(states.iter().map(|w| &w.key));
        let shards: Vec<i32> = states.iter().map(|w| shard_sql(w.shard)).collect();
        let versions: Vec<i64> = states.iter().map(|w| to_sql(w.version)).collect();
        let texts: Vec<&str> = states.iter().map(|w| &*w.state).collect();
        let schemas: Vec<i32> = states
            .iter()
            .map(|w| i32::try_from(w.schema).unwrap_or(i32::MAX))
            .collect();
        tx.execute(
            &prepared(cache, &tx, UPSERT_STATES).await?,
            &[&kinds, &ids, &shards, &versions, &texts, &now, &schemas],
        )
        .await
        .map_err(map_err)?;
    }

    let letters: Vec<_> = fence
        .keep(&batch.dead_letters)
        .into_iter()
        .map(|d| &d.letter)
        .collect();
    if !letters.is_empty() {
        let (kinds, ids) = key_columns(letters.iter().map(|l| &l.key));
        let messages: Vec<&str> = letters.iter().map(|l| l.message.as_str()).collect();
        let errors: Vec<&str> = letters.iter().map(|l| l.error.as_str()).collect();
        let attempts: Vec<i32> = letters
            .iter()
            .map(|l| i32::try_from(l.attempts).unwrap_or(i32::MAX))
            .collect();
        let at: Vec<i64> = letters.iter().map(|l| l.at_ms).collect();
        tx.execute(
            &prepared(cache, &tx, INSERT_DEAD_LETTERS).await?,
            &[&kinds, &ids, &messages, &errors, &attempts, &at],
        )
        .await
        .map_err(map_err)?;
    }
    let done_letters: Vec<i64> = fence
        .keep(&batch.letters_done)
        .into_iter()
        .map(|d| to_sql(d.seq))
        .collect();
    if !done_letters.is_empty() {
        tx.execute(
            &prepared(cache, &tx, DELETE_DEAD_LETTERS).await?,
            &[&done_letters],
        )
        .await
        .map_err(map_err)?;
    }

    for paused in [true, false] {
        let keys: Vec<_> = batch
            .pauses
            .iter()
            .filter(|p| p.paused == paused && fence.allows(p.shard, p.epoch))
            .map(|p| &p.key)
            .collect();
        if keys.is_empty() {
            continue;
        }
        let (kinds, ids) = key_columns(keys.iter().copied());
        if paused {
            tx.execute(&prepared(cache, &tx, PAUSE).await?, &[&kinds, &ids, &now])
                .await
        } else {
            tx.execute(&prepared(cache, &tx, RESUME).await?, &[&kinds, &ids])
                .await
        }
        .map_err(map_err)?;
    }

    let journal = fence.keep(&batch.journal);
    if !journal.is_empty() {
        let (kinds, ids) = key_columns(journal.iter().map(|j| &j.key));
        let steps: Vec<i64> = journal.iter().map(|j| to_sql(j.entry.step)).collect();
        let at: Vec<i64> = journal.iter().map(|j| j.entry.at_us).collect();
        let entries: Vec<&str> = journal.iter().map(|j| &*j.entry.entry).collect();
        tx.execute(
            &prepared(cache, &tx, INSERT_JOURNAL).await?,
            &[&kinds, &ids, &steps, &at, &entries],
        )
        .await
        .map_err(map_err)?;
    }
    let trims = fence.keep(&batch.trims);
    if !trims.is_empty() {
        let (kinds, ids) = key_columns(trims.iter().map(|t| &t.key));
        let through: Vec<i64> = trims.iter().map(|t| to_sql(t.through)).collect();
        tx.execute(
            &prepared(cache, &tx, TRIM_JOURNAL).await?,
            &[&kinds, &ids, &through],
        )
        .await
        .map_err(map_err)?;
    }

    let pending: Vec<_> = fence
        .keep(&batch.pending)
        .into_iter()
        .map(|w| &w.pending)
        .collect();
    if !pending.is_empty() {
        let (kinds, ids) = key_columns(pending.iter().map(|p| &p.owner));
        let seqs: Vec<i64> = pending.iter().map(|p| to_sql(p.seq)).collect();
        let due: Vec<i64> = pending.iter().map(|p| p.due_ms).collect();
        let classes: Vec<i16> = pending
            .iter()
            .map(|p| i16::try_from(p.class.code()).unwrap_or(i16::MAX))
            .collect();
        let target_kinds: Vec<&str> = pending.iter().map(|p| &*p.target.kind).collect();
        let target_ids: Vec<&str> = pending.iter().map(|p| p.target.id.as_str()).collect();
        let bodies: Vec<&str> = pending.iter().map(|p| &*p.body).collect();
        tx.execute(
            &prepared(cache, &tx, UPSERT_PENDING).await?,
            &[
                &kinds,
                &ids,
                &seqs,
                &due,
                &classes,
                &target_kinds,
                &target_ids,
                &bodies,
            ],
        )
        .await
        .map_err(map_err)?;
    }
    let done = fence.keep(&batch.done);
    if !done.is_empty() {
        let (kinds, ids) = key_columns(done.iter().map(|d| &d.owner));
        let seqs: Vec<i64> = done.iter().map(|d| to_sql(d.seq)).collect();
        tx.execute(
            &prepared(cache, &tx, DELETE_PENDING).await?,
            &[&kinds, &ids, &seqs],
        )
        .await
        .map_err(map_err)?;
    }

    let mut replies = fence.keep(&batch.replies);
    // One row per key (a later write of the same key replaces an earlier one).
    replies.reverse();
    let mut seen = std::collections::HashSet::new();
    replies.retain(|r| seen.insert((&r.key, &r.idempotency_key)));
    if !replies.is_empty() {
        let (kinds, ids) = key_columns(replies.iter().map(|r| &r.key));
        let keys: Vec<&str> = replies.iter().map(|r| r.idempotency_key.as_str()).collect();
        let at: Vec<i64> = replies.iter().map(|r| r.reply.at_ms).collect();
        let texts: Vec<&str> = replies.iter().map(|r| r.reply.reply.as_str()).collect();
        tx.execute(
            &prepared(cache, &tx, UPSERT_REPLIES).await?,
            &[&kinds, &ids, &keys, &at, &texts],
        )
        .await
        .map_err(map_err)?;
    }
    let forgotten = fence.keep(&batch.replies_done);
    if !forgotten.is_empty() {
        let (kinds, ids) = key_columns(forgotten.iter().map(|r| &r.key));
        let keys: Vec<&str> = forgotten
            .iter()
            .map(|r| r.idempotency_key.as_str())
            .collect();
        tx.execute(
            &prepared(cache, &tx, DELETE_REPLIES).await?,
            &[&kinds, &ids, &keys],
        )
        .await
        .map_err(map_err)?;
    }
    if let Some(expire) = &batch.expire_replies {
        let limit = i64::try_from(expire.limit).unwrap_or(i64::MAX);
        tx.execute(
            &prepared(cache, &tx, EXPIRE_REPLIES).await?,
            &[&expire.before_ms, &limit],
        )
        .await
        .map_err(map_err)?;
    }
    // Deletes last: they take what the batch wrote for the same entities with them.
    let deleted: Vec<_> = fence
        .keep(&batch.deletes)
        .into_iter()
        .map(|d| &d.key)
        .collect();
    if !deleted.is_empty() {
        let (kinds, ids) = key_columns(deleted.iter().copied());
        for sql in [DELETE_ENTITIES, DELETE_JOURNALS, DELETE_OWNED] {
            tx.execute(&prepared(cache, &tx, sql).await?, &[&kinds, &ids])
                .await
                .map_err(map_err)?;
        }
    }
    write_changes(&tx, cache, batch, &mut fence).await?;
    perennial_faults::failpoint!("pg.written");
    tx.commit().await.map_err(map_err)?;
    Ok(CommitOutcome {
        fenced: fence.fenced.into_iter().collect(),
    })
}

/// Writes a batch's changes, numbered in commit order: under a lock that every batch with
/// changes takes and holds until it commits, so a number drawn after another batch's is
/// drawn after that batch committed. A reader that saw number N thus sees every number below
/// it that will ever commit. Then their expiry.
async fn write_changes(
    tx: &Transaction<'_>,
    cache: &mut HashMap<&'static str, Statement>,
    batch: &Batch,
    fence: &mut Fence,
) -> Result<(), Error> {
    let changes = fence.keep(&batch.changes);
    if !changes.is_empty() {
        tx.execute(&prepared(cache, tx, LOCK_CHANGES).await?, &[])
            .await
            .map_err(map_err)?;
        let count = i64::try_from(changes.len()).unwrap_or(i64::MAX);
        let last: i64 = tx
            .query_one(&prepared(cache, tx, RESERVE_CHANGES).await?, &[&count])
            .await
            .map_err(map_err)?
            .get(0);
        let seqs: Vec<i64> = (last - count + 1..=last).collect();
        let (kinds, ids) = key_columns(changes.iter().map(|c| &c.key));
        let versions: Vec<i64> = changes.iter().map(|c| to_sql(c.version)).collect();
        let at: Vec<i64> = changes.iter().map(|c| c.at_ms).collect();
        let states: Vec<Option<&str>> = changes.iter().map(|c| c.state.as_deref()).collect();
        tx.execute(
            &prepared(cache, tx, INSERT_CHANGES).await?,
            &[&seqs, &kinds, &ids, &versions, &at, &states],
        )
        .await
        .map_err(map_err)?;
    }
    for expire in &batch.expire_changes {
        let limit = i64::try_from(expire.limit).unwrap_or(i64::MAX);
        for sql in [NOTE_EXPIRED_CHANGES, EXPIRE_CHANGES] {
            tx.execute(
                &prepared(cache, tx, sql).await?,
                &[&expire.kind, &expire.before_ms, &limit],
            )
            .await
            .map_err(map_err)?;
        }
    }
    Ok(())
}

/// Locks (`FOR SHARE`) the `shards` rows of every shard `batch` writes to, in shard order, and
/// returns their epochs.
async fn lock_epochs(
    tx: &Transaction<'_>,
    cache: &mut HashMap<&'static str, Statement>,
    batch: &Batch,
) -> Result<HashMap<u32, u64>, Error> {
    let named = batch
        .states
        .iter()
        .map(|w| w.shard)
        .chain(batch.dead_letters.iter().map(|d| d.shard))
        .chain(batch.letters_done.iter().map(|d| d.shard))
        .chain(batch.pauses.iter().map(|p| p.shard))
        .chain(batch.journal.iter().map(|j| j.shard))
        .chain(batch.trims.iter().map(|t| t.shard))
        .chain(batch.pending.iter().map(|w| w.shard))
        .chain(batch.done.iter().map(|d| d.shard))
        .chain(batch.replies.iter().map(|r| r.shard))
        .chain(batch.replies_done.iter().map(|r| r.shard))
        .chain(batch.deletes.iter().map(|d| d.shard))
        .chain(batch.changes.iter().map(|c| c.shard));
    let shards: BTreeSet<i32> = named.filter(|s| s.0 < SHARDS).map(shard_sql).collect();
    let shards: Vec<i32> = shards.into_iter().collect();
    let rows = tx
        .query(&prepared(cache, tx, LOCK_EPOCHS).await?, &[&shards])
        .await
        .map_err(map_err)?;
    Ok(rows
        .iter()
        .map(|r| {
            let shard: i32 = r.get(0);
            let epoch: i64 = r.get(1);
            (
                u32::try_from(shard).unwrap_or(u32::MAX),
                u64::try_from(epoch).unwrap_or(0),
            )
        })
        .collect())
}

/// Gives `shards` one new epoch, above any they had, for `owner`; see the module docs. This
/// takes the shards outright, with no lease (one node on the database); nodes of a cluster
/// use [`PostgresStore::acquire`](crate::PostgresStore::acquire), which may take them back.
pub(crate) async fn claim(
    client: &mut Client,
    owner: &str,
    shards: &[ShardId],
) -> Result<Epoch, Error> {
    if let Some(bad) = shards.iter().find(|s| s.0 >= SHARDS) {
        return Err(Error::Backend(format!("{bad} does not exist")));
    }
    let shards: Vec<i32> = shards.iter().copied().map(shard_sql).collect();
    let tx = client.transaction().await.map_err(map_err)?;
    let rows = tx
        .query(
            "SELECT epoch FROM shards WHERE shard = ANY($1) ORDER BY shard FOR UPDATE",
            &[&shards],
        )
        .await
        .map_err(map_err)?;
    let next = rows.iter().map(|r| r.get::<_, i64>(0)).max().unwrap_or(0) + 1;
    tx.execute(
        "UPDATE shards SET epoch = $2, owner = $3, claimed_at = $4 WHERE shard = ANY($1)",
        &[&shards, &next, &owner, &crate::now_ms()],
    )
    .await
    .map_err(map_err)?;
    tx.commit().await.map_err(map_err)?;
    Ok(Epoch(u64::try_from(next).unwrap_or(0)))
}

fn shard_sql(shard: ShardId) -> i32 {
    i32::try_from(shard.0).unwrap_or(i32::MAX)
}
