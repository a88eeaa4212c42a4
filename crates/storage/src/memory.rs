//! A store that keeps everything in memory: for tests, and as the reference the other
//! backends are compared with in the conformance suite.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use parking_lot::Mutex;
use perennial_types::{EntityKey, Epoch, SHARDS, ShardId};

use crate::{
    Batch, Catalog, ChangePage, CommitOutcome, DeadLetterDone, DeadLetterWrite, EntityDelete,
    EntityState, EntitySummary, Error, Filter, JournalEntry, JournalTrim, JournalWrite, Page, Path,
    PauseWrite, Pending, PendingDone, PendingWrite, Record, ReplyDone, ReplyWrite, Result,
    StateWrite, Store, StoredChange, StoredDeadLetter, StoredReply,
};

/// A [`Store`] in memory. Nothing survives the process; "durable" means "committed".
///
/// ```
/// use perennial_storage::{MemoryStore, Store};
/// use perennial_types::ShardId;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let store = MemoryStore::new();
/// let first = store.claim("node-1", &[ShardId(0)]).await.unwrap();
/// let second = store.claim("node-2", &[ShardId(0)]).await.unwrap();
/// assert!(second > first);
/// # }
/// ```
#[derive(Debug, Default, Clone)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug)]
struct Inner {
    /// Each entity's last committed record, by (kind, id).
    entities: BTreeMap<EntityKey, Record>,
    /// Each journal's entries, by entity, then by step.
    journals: BTreeMap<EntityKey, BTreeMap<u64, JournalEntry>>,
    /// The current epoch of each shard; 0 means never claimed.
    epochs: Vec<u64>,
    dead_letters: BTreeMap<u64, StoredDeadLetter>,
    /// The number of the last dead letter written.
    last_letter: u64,
    /// When each entity's last step committed, in milliseconds since the Unix epoch.
    updated_ms: BTreeMap<EntityKey, i64>,
    /// Pending timers, messages and effects, by owner and number.
    pending: BTreeMap<(EntityKey, u64), Pending>,
    /// The same rows, in the order they are due.
    due: BTreeSet<(i64, EntityKey, u64)>,
    /// Replies kept for idempotency keys, by entity and key.
    replies: BTreeMap<(EntityKey, String), StoredReply>,
    /// The paths each kind is indexed by. Queries scan here anyway; the list is kept so that
    /// the memory store answers like the others.
    indexes: BTreeMap<String, BTreeSet<Path>>,
    /// Entities paused by an operator.
    paused: BTreeSet<EntityKey>,
    /// The change feeds: each change by its number, with its kind.
    changes: BTreeMap<u64, (String, StoredChange)>,
    /// The number of the last change written.
    last_change: u64,
    /// Per kind, the highest number expiry deleted.
    expired_changes: BTreeMap<String, u64>,
    closed: bool,
}

impl Default for Inner {
    fn default() -> Self {
        Self {
            entities: BTreeMap::new(),
            journals: BTreeMap::new(),
            epochs: vec![0; SHARDS as usize],
            dead_letters: BTreeMap::new(),
            last_letter: 0,
            updated_ms: BTreeMap::new(),
            pending: BTreeMap::new(),
            due: BTreeSet::new(),
            replies: BTreeMap::new(),
            indexes: BTreeMap::new(),
            paused: BTreeSet::new(),
            changes: BTreeMap::new(),
            last_change: 0,
            expired_changes: BTreeMap::new(),
            closed: false,
        }
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Overwrites an entity's stored state with arbitrary text, bypassing fencing.
    ///
    /// For tests that need corrupt or hand-made state.
    pub fn put_raw(&self, key: EntityKey, state: &str, version: u64) {
        let state = state.to_owned();
        self.put_record(
            key,
            Record {
                state,
                version,
                schema: 1,
            },
        );
    }

    /// Overwrites an entity's stored record (state, version and schema version), bypassing
    /// fencing: for tests of states written by older or newer code.
    pub fn put_record(&self, key: EntityKey, record: Record) {
        self.inner.lock().entities.insert(key, record);
    }

    /// Replaces an entity's journal with arbitrary entries, bypassing fencing.
    ///
    /// For tests that need corrupt or hand-made journals.
    pub fn put_journal(&self, key: EntityKey, entries: Vec<JournalEntry>) {
        let journal = entries.into_iter().map(|e| (e.step, e)).collect();
        self.inner.lock().journals.insert(key, journal);
    }

    /// Forgets everything stored about an entity: its state and its journal.
    ///
    /// For tests that reuse an entity's id with hand-made state.
    pub fn forget(&self, key: &EntityKey) {
        let mut inner = self.inner.lock();
        inner.entities.remove(key);
        inner.journals.remove(key);
    }

    /// How many replies it keeps for idempotency keys (and asks), for tests that check none
    /// is kept longer than needed.
    pub fn kept_replies(&self) -> usize {
        self.inner.lock().replies.len()
    }
}

impl Inner {
    fn check_open(&self) -> Result<()> {
        if self.closed {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    /// Deletes an entity's state, journal and rows to itself (see [`EntityDelete`]).
    fn delete(&mut self, key: &EntityKey) {
        self.entities.remove(key);
        self.journals.remove(key);
        self.updated_ms.remove(key);
        let owned: Vec<u64> = self
            .pending
            .range((key.clone(), 0)..=(key.clone(), u64::MAX))
            .filter(|(_, row)| row.dies_with_owner())
            .map(|((_, seq), _)| *seq)
            .collect();
        for seq in owned {
            if let Some(row) = self.pending.remove(&(key.clone(), seq)) {
                self.due.remove(&(row.due_ms, row.owner, row.seq));
            }
        }
    }

    fn is_current(&self, shard: ShardId, epoch: Epoch) -> bool {
        let current = self.epochs.get(shard.0 as usize).copied().unwrap_or(0);
        (current != 0 && current == epoch.0)
            || perennial_faults::sabotaged(perennial_faults::Sabotage::NoFence)
    }
}

#[async_trait::async_trait]
impl Store for MemoryStore {
    async fn claim(&self, _owner: &str, shards: &[ShardId]) -> Result<Epoch> {
        let mut inner = self.inner.lock();
        inner.check_open()?;
        if let Some(bad) = shards.iter().find(|s| s.0 >= SHARDS) {
            return Err(Error::Backend(format!("{bad} does not exist")));
        }
        let next = shards
            .iter()
            .map(|s| inner.epochs[s.0 as usize])
            .max()
            .unwrap_or(0)
            + 1;
        for shard in shards {
            inner.epochs[shard.0 as usize] = next;
        }
        Ok(Epoch(next))
    }

    async fn load(&self, key: &EntityKey) -> Result<Option<Record>> {
        let inner = self.inner.lock();
        inner.check_open()?;
        Ok(inner.entities.get(key).cloned())
    }

    fn commit(&self, batch: Batch) -> Result<CommitOutcome> {
        let mut inner = self.inner.lock();
        inner.check_open()?;
        let mut outcome = CommitOutcome::default();
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let mut fence = |shard: ShardId, epoch: Epoch, inner: &Inner| {
            let ok = inner.is_current(shard, epoch);
            if !ok && !outcome.fenced.contains(&shard) {
                outcome.fenced.push(shard);
            }
            ok
        };
        for StateWrite {
            key,
            shard,
            epoch,
            state,
            version,
            schema,
        } in batch.states
        {
            if fence(shard, epoch, &inner) {
                let state = state.to_string();
                inner.updated_ms.insert(key.clone(), now_ms);
                let record = Record {
                    state,
                    version,
                    schema,
                };
                inner.entities.insert(key, record);
            }
        }
        for DeadLetterWrite {
            shard,
            epoch,
            letter,
        } in batch.dead_letters
        {
            if fence(shard, epoch, &inner) {
                inner.last_letter += 1;
                let seq = inner.last_letter;
                inner
                    .dead_letters
                    .insert(seq, StoredDeadLetter { seq, letter });
            }
        }
        for DeadLetterDone { shard, epoch, seq } in batch.letters_done {
            if fence(shard, epoch, &inner) {
                inner.dead_letters.remove(&seq);
            }
        }
        for PauseWrite {
            key,
            shard,
            epoch,
            paused,
        } in batch.pauses
        {
            if fence(shard, epoch, &inner) {
                if paused {
                    inner.paused.insert(key);
                } else {
                    inner.paused.remove(&key);
                }
            }
        }
        for JournalWrite {
            key,
            shard,
            epoch,
            entry,
        } in batch.journal
        {
            if fence(shard, epoch, &inner) {
                inner.updated_ms.insert(key.clone(), now_ms);
                inner
                    .journals
                    .entry(key)
                    .or_default()
                    .insert(entry.step, entry);
            }
        }
        for JournalTrim {
            key,
            shard,
            epoch,
            through,
        } in batch.trims
        {
            if fence(shard, epoch, &inner)
                && let Some(journal) = inner.journals.get_mut(&key)
            {
                *journal = journal.split_off(&through.saturating_add(1));
            }
        }
        for PendingWrite {
            shard,
            epoch,
            pending,
        } in batch.pending
        {
            if fence(shard, epoch, &inner) {
                let key = (pending.owner.clone(), pending.seq);
                if let Some(old) = inner.pending.insert(key, pending.clone()) {
                    inner.due.remove(&(old.due_ms, old.owner, old.seq));
                }
                inner
                    .due
                    .insert((pending.due_ms, pending.owner, pending.seq));
            }
        }
        for PendingDone {
            shard,
            epoch,
            owner,
            seq,
        } in batch.done
        {
            if fence(shard, epoch, &inner)
                && let Some(old) = inner.pending.remove(&(owner, seq))
            {
                inner.due.remove(&(old.due_ms, old.owner, old.seq));
            }
        }
        for ReplyWrite {
            key,
            shard,
            epoch,
            idempotency_key,
            reply,
        } in batch.replies
        {
            if fence(shard, epoch, &inner) {
                inner.replies.insert((key, idempotency_key), reply);
            }
        }
        for ReplyDone {
            key,
            shard,
            epoch,
            idempotency_key,
        } in batch.replies_done
        {
            if fence(shard, epoch, &inner) {
                inner.replies.remove(&(key, idempotency_key));
            }
        }
        if let Some(expire) = batch.expire_replies {
            let mut old: Vec<_> = inner
                .replies
                .iter()
                .filter(|(_, r)| r.at_ms < expire.before_ms)
                .map(|(k, r)| (r.at_ms, k.clone()))
                .collect();
            old.sort();
            for (_, key) in old.into_iter().take(expire.limit) {
                inner.replies.remove(&key);
            }
        }
        for EntityDelete { key, shard, epoch } in batch.deletes {
            if fence(shard, epoch, &inner) {
                inner.delete(&key);
            }
        }
        for change in batch.changes {
            if fence(change.shard, change.epoch, &inner) {
                inner.last_change += 1;
                let seq = inner.last_change;
                let stored = StoredChange {
                    seq,
                    id: change.key.id.as_str().to_owned(),
                    version: change.version,
                    at_ms: change.at_ms,
                    state: change.state.map(|s| s.to_string()),
                };
                inner
                    .changes
                    .insert(seq, (change.key.kind.to_string(), stored));
            }
        }
        for expire in batch.expire_changes {
            let mut old: Vec<(i64, u64)> = inner
                .changes
                .iter()
                .filter(|(_, (kind, c))| *kind == expire.kind && c.at_ms < expire.before_ms)
                .map(|(seq, (_, c))| (c.at_ms, *seq))
                .collect();
            old.sort_unstable();
            for (_, seq) in old.into_iter().take(expire.limit) {
                inner.changes.remove(&seq);
                let through = inner
                    .expired_changes
                    .entry(expire.kind.clone())
                    .or_default();
                *through = (*through).max(seq);
            }
        }
        outcome.fenced.sort();
        Ok(outcome)
    }

    async fn due(&self, before_ms: i64, limit: usize) -> Result<Vec<Pending>> {
        let inner = self.inner.lock();
        inner.check_open()?;
        Ok(inner
            .due
            .iter()
            .take_while(|(due, _, _)| *due <= before_ms)
            .take(limit)
            .filter_map(|(_, owner, seq)| inner.pending.get(&(owner.clone(), *seq)).cloned())
            .collect())
    }

    async fn reply(&self, key: &EntityKey, idempotency_key: &str) -> Result<Option<StoredReply>> {
        let inner = self.inner.lock();
        inner.check_open()?;
        Ok(inner
            .replies
            .get(&(key.clone(), idempotency_key.to_owned()))
            .cloned())
    }

    async fn journal(&self, key: &EntityKey, after: u64, max: usize) -> Result<Vec<JournalEntry>> {
        let inner = self.inner.lock();
        inner.check_open()?;
        let Some(journal) = inner.journals.get(key) else {
            return Ok(Vec::new());
        };
        Ok(journal
            .range(after.saturating_add(1)..)
            .take(max)
            .map(|(_, e)| e.clone())
            .collect())
    }

    async fn paused(&self) -> Result<Vec<EntityKey>> {
        let inner = self.inner.lock();
        inner.check_open()?;
        Ok(inner.paused.iter().cloned().collect())
    }

    async fn last_row(&self, key: &EntityKey) -> Result<Option<u64>> {
        let inner = self.inner.lock();
        inner.check_open()?;
        Ok(inner
            .pending
            .range((key.clone(), 0)..=(key.clone(), u64::MAX))
            .next_back()
            .map(|((_, seq), _)| *seq))
    }

    async fn close(&self) -> Result<()> {
        self.inner.lock().closed = true;
        Ok(())
    }

    fn catalog(&self) -> &dyn Catalog {
        self
    }
}

#[async_trait::async_trait]
impl Catalog for MemoryStore {
    async fn dead_letters(&self, kind: Option<&str>) -> Result<Vec<StoredDeadLetter>> {
        let inner = self.inner.lock();
        inner.check_open()?;
        Ok(inner
            .dead_letters
            .values()
            .filter(|d| kind.is_none_or(|k| &*d.letter.key.kind == k))
            .cloned()
            .collect())
    }

    async fn entities(&self, kind: &str, page: Page<'_>) -> Result<Vec<EntitySummary>> {
        let Page { after, limit } = page;
        let inner = self.inner.lock();
        inner.check_open()?;
        // Every entity with a state or a journal, in id order.
        let of_kind = |k: &&EntityKey| &*k.kind == kind && after.is_none_or(|a| k.id.as_str() > a);
        let mut ids: BTreeSet<&EntityKey> = inner.entities.keys().filter(of_kind).collect();
        ids.extend(inner.journals.keys().filter(of_kind));
        Ok(ids
            .into_iter()
            .take(limit)
            .map(|key| {
                let record = inner.entities.get(key);
                let version = record.map_or(0, |r| r.version);
                let schema = record.map_or(1, |r| r.schema);
                let last_step = inner
                    .journals
                    .get(key)
                    .and_then(|j| j.keys().next_back().copied())
                    .unwrap_or(0);
                let updated = inner.updated_ms.get(key).copied().unwrap_or(0);
                EntitySummary::new(key.id.as_str().to_owned(), version, last_step, updated)
                    .with_schema(schema)
            })
            .collect())
    }

    async fn count(&self, kind: &str) -> Result<u64> {
        let inner = self.inner.lock();
        inner.check_open()?;
        let of_kind = |key: &&EntityKey| &*key.kind == kind;
        let mut ids: BTreeSet<&EntityKey> = inner.entities.keys().filter(of_kind).collect();
        ids.extend(inner.journals.keys().filter(of_kind));
        Ok(ids.len() as u64)
    }

    async fn pending_of(&self, owner: &EntityKey, limit: usize) -> Result<Vec<Pending>> {
        let inner = self.inner.lock();
        inner.check_open()?;
        let rows = inner
            .pending
            .range((owner.clone(), 0)..=(owner.clone(), u64::MAX));
        Ok(rows.take(limit).map(|(_, row)| row.clone()).collect())
    }

    async fn query(&self, kind: &str, filter: &Filter, page: Page<'_>) -> Result<Vec<EntityState>> {
        let Page { after, limit } = page;
        let inner = self.inner.lock();
        inner.check_open()?;
        let mut found = Vec::new();
        let of_kind = inner
            .entities
            .iter()
            .filter(|(k, _)| &*k.kind == kind && after.is_none_or(|a| k.id.as_str() > a));
        for (key, record) in of_kind {
            if found.len() == limit {
                break;
            }
            let state: serde_json::Value = serde_json::from_str(&record.state)
                .map_err(|e| Error::Corrupt(format!("the state of {key} is not JSON: {e}")))?;
            if filter.matches(&state) {
                found.push(EntityState::new(
                    key.id.as_str().to_owned(),
                    record.state.clone(),
                    record.version,
                    inner.updated_ms.get(key).copied().unwrap_or(0),
                ));
            }
        }
        Ok(found)
    }

    async fn create_index(&self, kind: &str, path: &Path) -> Result<()> {
        let mut inner = self.inner.lock();
        inner.check_open()?;
        if !path.is_single() {
            return Err(Error::Invalid(format!(
                "`{path}` cannot be indexed: an index is by one value, and `[*]` stands for many"
            )));
        }
        inner
            .indexes
            .entry(kind.to_owned())
            .or_default()
            .insert(path.clone());
        Ok(())
    }

    async fn drop_index(&self, kind: &str, path: &Path) -> Result<bool> {
        let mut inner = self.inner.lock();
        inner.check_open()?;
        Ok(inner
            .indexes
            .get_mut(kind)
            .is_some_and(|paths| paths.remove(path)))
    }

    async fn indexes(&self, kind: &str) -> Result<Vec<Path>> {
        let inner = self.inner.lock();
        inner.check_open()?;
        Ok(inner
            .indexes
            .get(kind)
            .map(|paths| paths.iter().cloned().collect())
            .unwrap_or_default())
    }

    async fn changes(&self, kind: &str, after: u64, limit: usize) -> Result<ChangePage> {
        let inner = self.inner.lock();
        inner.check_open()?;
        let changes = inner
            .changes
            .range(after.saturating_add(1)..)
            .filter(|(_, (k, _))| k == kind)
            .take(limit)
            .map(|(_, (_, change))| change.clone())
            .collect();
        let expired_through = inner.expired_changes.get(kind).copied().unwrap_or(0);
        Ok(ChangePage {
            changes,
            expired_through,
        })
    }
}
