//! The [`Store`] trait and the values that cross it.

use std::fmt::Debug;
use std::sync::Arc;

use perennial_types::{EntityKey, Epoch, ShardId};

use crate::Error;

/// An entity's last committed state, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The state as JSON text.
    pub state: String,
    /// The entity's version: it grows with every change of its state (not always by one).
    pub version: u64,
}

/// The new state of one entity, written by a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateWrite {
    /// Which entity.
    pub key: EntityKey,
    /// The entity's shard (see [`perennial_types::shard_of`]).
    pub shard: ShardId,
    /// The epoch the writer holds for `shard`; a stale epoch makes the store refuse the write.
    pub epoch: Epoch,
    /// The state as JSON text.
    pub state: Arc<str>,
    /// The entity's version after this write (see [`Record::version`]).
    pub version: u64,
}

/// A message that failed too many times, set aside so that its entity can go on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The entity the message was for.
    pub key: EntityKey,
    /// The message as JSON text.
    pub message: String,
    /// Why it failed (the panic text of the last attempt).
    pub error: String,
    /// How many times it was tried.
    pub attempts: u32,
    /// When it was set aside, in milliseconds since the Unix epoch.
    pub at_ms: i64,
}

/// A dead letter written by a batch, fenced like a state write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterWrite {
    /// The shard of the letter's entity.
    pub shard: ShardId,
    /// The epoch the writer holds for `shard`.
    pub epoch: Epoch,
    /// The letter.
    pub letter: DeadLetter,
}

/// A dead letter as stored, with the sequence number the store gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDeadLetter {
    /// The letter's number, increasing in the order letters were written.
    pub seq: u64,
    /// The letter.
    pub letter: DeadLetter,
}

/// One step of a `Journal` kind, as stored: what the step was handed, so that replaying it
/// through the same handler gives the same state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalEntry {
    /// The entity's step number: 1 for its first step, then one more for each step kept.
    pub step: u64,
    /// When the step ran, in microseconds since the Unix epoch (the handler's `ctx.now()`).
    pub at_us: i64,
    /// The step's inputs as one JSON object: the message, the random seed if the step used
    /// one, and a digest of its reply. Stores keep it as text and never look inside.
    pub entry: Arc<str>,
}

/// A journal entry written by a batch, fenced like a state write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalWrite {
    /// Which entity.
    pub key: EntityKey,
    /// The entity's shard.
    pub shard: ShardId,
    /// The epoch the writer holds for `shard`.
    pub epoch: Epoch,
    /// The entry. A store refuses nothing here: steps are unique per entity by construction.
    pub entry: JournalEntry,
}

/// Deletes an entity's journal entries up to and including step `through`, written by a batch
/// (after a snapshot made them unnecessary). Fenced like a state write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalTrim {
    /// Which entity.
    pub key: EntityKey,
    /// The entity's shard.
    pub shard: ShardId,
    /// The epoch the writer holds for `shard`.
    pub epoch: Epoch,
    /// The last step deleted.
    pub through: u64,
}

/// Everything one commit writes: states, journal entries and dead letters of many entities.
///
/// A store writes a batch in one transaction with one durable flush.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    /// New entity states, at most one per entity.
    pub states: Vec<StateWrite>,
    /// Dead letters to keep.
    pub dead_letters: Vec<DeadLetterWrite>,
    /// Journal entries to append.
    pub journal: Vec<JournalWrite>,
    /// Journal entries to delete, applied after this batch's appends.
    pub trims: Vec<JournalTrim>,
}

impl Batch {
    /// Whether the batch writes nothing.
    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
            && self.dead_letters.is_empty()
            && self.journal.is_empty()
            && self.trims.is_empty()
    }
}

/// What a successful commit did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommitOutcome {
    /// Shards whose writes were refused because the writer's epoch is not the shard's
    /// current epoch. Every other write in the batch is durable.
    pub fenced: Vec<ShardId>,
}

/// A durable home for entity state and journals.
///
/// Implementations must make [`commit`](Store::commit) atomic and durable: when it returns
/// `Ok`, every write of the batch except those of fenced shards survives a crash of the
/// process and of the machine; when it returns `Err`, none of them is visible.
///
/// `commit` is a blocking call, unlike the others: it runs the transaction on the calling
/// thread and returns once the batch is durable. The runtime calls it from its own committer
/// thread, which takes the next batch the moment the call returns; a hop to another thread
/// in between would leave the disk idle.
#[async_trait::async_trait]
pub trait Store: Send + Sync + Debug + 'static {
    /// Claims `shards` for `owner`: gives each of them one new epoch, greater than any epoch
    /// any of them had, and returns it. Writes naming an older epoch are refused from now on.
    async fn claim(&self, owner: &str, shards: &[ShardId]) -> Result<Epoch, Error>;

    /// Reads an entity's last committed state, or `None` if it was never written.
    async fn load(&self, key: &EntityKey) -> Result<Option<Record>, Error>;

    /// Reads up to `limit` of an entity's journal entries with a step above `after`, in step
    /// order.
    async fn journal(
        &self,
        key: &EntityKey,
        after: u64,
        limit: usize,
    ) -> Result<Vec<JournalEntry>, Error>;

    /// Writes a batch in one durable transaction, on the calling thread (it blocks).
    fn commit(&self, batch: Batch) -> Result<CommitOutcome, Error>;

    /// Lists dead letters, oldest first, of one kind or of all kinds.
    async fn dead_letters(&self, kind: Option<&str>) -> Result<Vec<StoredDeadLetter>, Error>;

    /// Flushes and releases what the store holds. Later calls fail with [`Error::Closed`].
    async fn close(&self) -> Result<(), Error> {
        Ok(())
    }
}

#[async_trait::async_trait]
impl<S: Store + ?Sized> Store for Arc<S> {
    async fn claim(&self, owner: &str, shards: &[ShardId]) -> Result<Epoch, Error> {
        (**self).claim(owner, shards).await
    }
    async fn load(&self, key: &EntityKey) -> Result<Option<Record>, Error> {
        (**self).load(key).await
    }
    async fn journal(
        &self,
        key: &EntityKey,
        after: u64,
        limit: usize,
    ) -> Result<Vec<JournalEntry>, Error> {
        (**self).journal(key, after, limit).await
    }
    fn commit(&self, batch: Batch) -> Result<CommitOutcome, Error> {
        (**self).commit(batch)
    }
    async fn dead_letters(&self, kind: Option<&str>) -> Result<Vec<StoredDeadLetter>, Error> {
        (**self).dead_letters(kind).await
    }
    async fn close(&self) -> Result<(), Error> {
        (**self).close().await
    }
}
