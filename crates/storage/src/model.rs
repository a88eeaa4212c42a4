//! The [`Store`] trait and the values that cross it.

use std::fmt::Debug;
use std::sync::Arc;

use perennial_types::{EntityKey, Epoch, ShardId};

/// An entity's last committed state, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The state as JSON text: the value written, though a store that keeps a parsed JSON
    /// type (PostgreSQL's `jsonb`) may give back other spaces and key order.
    pub state: String,
    /// The entity's version: it grows with every change of its state (not always by one).
    pub version: u64,
    /// The schema version of the state: which version of the kind's code wrote it (1 for
    /// a kind that never declared migrations, and for every state stored before versions
    /// were kept).
    pub schema: u32,
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
    /// The state's schema version (see [`Record::schema`]).
    pub schema: u32,
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

/// A dead letter to delete: discarded by an operator, or applied by a retry in the same
/// batch. Fenced like a state write of its entity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterDone {
    /// The shard of the letter's entity.
    pub shard: ShardId,
    /// The epoch the writer holds for `shard`.
    pub epoch: Epoch,
    /// The letter's number ([`StoredDeadLetter::seq`]).
    pub seq: u64,
}

/// An entity paused or resumed by an operator, fenced like a state write. While paused, the
/// runtime refuses its calls and holds its timers and messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PauseWrite {
    /// Which entity.
    pub key: EntityKey,
    /// The entity's shard.
    pub shard: ShardId,
    /// The epoch the writer holds for `shard`.
    pub epoch: Epoch,
    /// Paused (`true`) or resumed (`false`).
    pub paused: bool,
}

/// One stored entity, as listed: what an operator sees without loading its state.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct EntitySummary {
    /// The entity's id.
    pub id: String,
    /// The version of its stored state: for a `Journal` kind, the step of its latest
    /// snapshot (0 if none).
    pub state_version: u64,
    /// The schema version of its stored state ([`Record::schema`]; 1 if it has none).
    pub schema: u32,
    /// The latest step in its journal (0 if none).
    pub last_step: u64,
    /// When its last step committed, in milliseconds since the Unix epoch.
    pub updated_at_ms: i64,
}

impl EntitySummary {
    /// A summary of entity `id`, whose state has schema version 1.
    pub fn new(id: String, state_version: u64, last_step: u64, updated_at_ms: i64) -> Self {
        Self {
            id,
            state_version,
            schema: 1,
            last_step,
            updated_at_ms,
        }
    }

    /// The same summary, with the stored state's schema version.
    pub fn with_schema(mut self, schema: u32) -> Self {
        self.schema = schema;
        self
    }
}

/// One stored entity's state, as a query finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EntityState {
    /// The entity's id.
    pub id: String,
    /// Its stored state as JSON text: for a `Journal` kind, its latest snapshot.
    pub state: String,
    /// The state's version ([`Record::version`]).
    pub version: u64,
    /// When the state was committed, in milliseconds since the Unix epoch.
    pub updated_at_ms: i64,
}

impl EntityState {
    /// The state of entity `id`.
    pub fn new(id: String, state: String, version: u64, updated_at_ms: i64) -> Self {
        Self {
            id,
            state,
            version,
            updated_at_ms,
        }
    }
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

/// Deletes an entity: written by the batch of the step (or the operator's request) that
/// deletes it, and applied after every other write of the batch. Its state (for a `Journal`
/// kind, its snapshot), its whole journal, and the pending rows it addressed to itself (its
/// timers, its effects, its messages to itself) are deleted, so that the next message
/// starts it afresh. The messages it sent to other entities stay (they are theirs now, and
/// [`Store::last_row`](crate::Store::last_row) keeps a new life from numbering its rows
/// over them), and so do its kept replies (a retry within their window still gets the
/// first reply), its dead letters and its pause mark. Fenced like a state write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntityDelete {
    /// Which entity.
    pub key: EntityKey,
    /// The entity's shard.
    pub shard: ShardId,
    /// The epoch the writer holds for `shard`.
    pub epoch: Epoch,
}

/// What a [`Pending`] row holds: when it is due, what is done with its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PendingClass {
    /// A timer: the body is a message for the owner itself, delivered at `due_ms`.
    Timer,
    /// A message sent to another entity (the target), delivered as soon as possible.
    Message,
    /// An effect: the body describes work to run outside the owner's handler; its result
    /// comes back to the owner as a message.
    Effect,
    /// An ask: the body holds a message for the target and the owner's message to make from
    /// the target's answer, which comes back to the owner.
    Ask,
}

impl PendingClass {
    /// The class's number in storage.
    pub fn code(self) -> i64 {
        match self {
            Self::Timer => 0,
            Self::Message => 1,
            Self::Effect => 2,
            Self::Ask => 3,
        }
    }

    /// The class with storage number `code`.
    pub fn from_code(code: i64) -> Option<Self> {
        match code {
            0 => Some(Self::Timer),
            1 => Some(Self::Message),
            2 => Some(Self::Effect),
            3 => Some(Self::Ask),
            _ => None,
        }
    }
}

/// Work that an entity's step left to be done after it committed: a timer, a message to
/// another entity (its outbox), or an effect. The row is deleted in the same transaction as
/// the step that applies it, so it is applied exactly once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// The entity whose step created it.
    pub owner: EntityKey,
    /// Its number, unique per owner and growing with the owner's steps.
    pub seq: u64,
    /// When it is due, in milliseconds since the Unix epoch.
    pub due_ms: i64,
    /// What it is.
    pub class: PendingClass,
    /// The entity its message is for: the owner itself for timers and effects.
    pub target: EntityKey,
    /// A message (JSON) for timers and messages; the effect's description (JSON) for effects.
    pub body: Arc<str>,
}

impl Pending {
    /// Whether the row dies with its owner (see [`EntityDelete`]): it is addressed to the
    /// owner (a timer, an effect, a message to itself), or it is an ask, whose answer would
    /// come back to the owner.
    pub fn dies_with_owner(&self) -> bool {
        self.class == PendingClass::Ask || self.target == self.owner
    }
}

/// A pending row written by a batch, fenced by its owner's shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingWrite {
    /// The owner's shard.
    pub shard: ShardId,
    /// The epoch the writer holds for `shard`.
    pub epoch: Epoch,
    /// The row.
    pub pending: Pending,
}

/// Deletes a pending row: it was applied (by a step of its target) or cancelled (by a step of
/// its owner). Fenced by the shard of the entity whose step deletes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingDone {
    /// The shard of the entity whose step deletes the row.
    pub shard: ShardId,
    /// The epoch the writer holds for `shard`.
    pub epoch: Epoch,
    /// The row's owner.
    pub owner: EntityKey,
    /// The row's number.
    pub seq: u64,
}

/// The first reply to a call made with an idempotency key, kept so that a retry gets it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredReply {
    /// The reply, as JSON text.
    pub reply: String,
    /// When the call was applied, in milliseconds since the Unix epoch.
    pub at_ms: i64,
}

/// A reply to keep for an idempotency key, written by the batch of the step that made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyWrite {
    /// The entity called.
    pub key: EntityKey,
    /// The entity's shard.
    pub shard: ShardId,
    /// The epoch the writer holds for `shard`.
    pub epoch: Epoch,
    /// The caller's idempotency key.
    pub idempotency_key: String,
    /// The reply.
    pub reply: StoredReply,
}

/// Deletes a kept reply that nothing can ask for any more: an ask's, once the asker applied
/// the answer and deleted the ask's row (see `ask` in `perennial_core`'s dispatcher). Without
/// it the reply would only expire with the replies' window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyDone {
    /// The entity that kept the reply.
    pub key: EntityKey,
    /// The entity's shard.
    pub shard: ShardId,
    /// The epoch the writer holds for `shard`.
    pub epoch: Epoch,
    /// The key the reply was kept under.
    pub idempotency_key: String,
}

/// Deletes at most `limit` kept replies applied before `before_ms` (the oldest first), so
/// that idempotency keys cost bounded storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpireReplies {
    /// Replies applied before this time (milliseconds since the Unix epoch) are deleted.
    pub before_ms: i64,
    /// At most this many are deleted by one batch.
    pub limit: usize,
}

/// One step of an entity of a kind that keeps a change feed, written by its batch: the
/// entity's version after the step and its state then (`None`: the step deleted it). The
/// store numbers changes in commit order (see [`Catalog::changes`](crate::Catalog::changes)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeWrite {
    /// Which entity.
    pub key: EntityKey,
    /// The entity's shard.
    pub shard: ShardId,
    /// The epoch the writer holds for `shard`.
    pub epoch: Epoch,
    /// The entity's version after the step.
    pub version: u64,
    /// When the step committed, in milliseconds since the Unix epoch.
    pub at_ms: i64,
    /// The state after the step, as JSON; `None` if the step deleted the entity.
    pub state: Option<Arc<str>>,
}

/// Deletes the oldest changes of `kind` committed before `before_ms`, at most `limit` of them
/// (the rest go with later batches), so that a feed costs bounded
/// storage; a reader whose cursor is older learns that it missed some
/// ([`ChangePage::expired_through`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpireChanges {
    /// The kind.
    pub kind: String,
    /// Changes committed before this time (milliseconds since the Unix epoch) are deleted,
    /// the oldest first.
    pub before_ms: i64,
    /// At most this many are deleted by one batch.
    pub limit: usize,
}

/// A change as a kind's feed reads it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredChange {
    /// Its place in the feed: greater than every change committed before it (numbers may
    /// skip).
    pub seq: u64,
    /// The entity's id.
    pub id: String,
    /// The entity's version after the step.
    pub version: u64,
    /// When the step committed, in milliseconds since the Unix epoch.
    pub at_ms: i64,
    /// The state after the step, as JSON; `None` if the step deleted the entity.
    pub state: Option<String>,
}

/// Changes of one kind after a cursor, in feed order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangePage {
    /// The changes, in increasing [`seq`](StoredChange::seq).
    pub changes: Vec<StoredChange>,
    /// Every change of the kind numbered up to this was deleted by expiry (0 if none was):
    /// a reader whose cursor is below it missed changes.
    pub expired_through: u64,
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
    /// Dead letters to delete.
    pub letters_done: Vec<DeadLetterDone>,
    /// Journal entries to append.
    pub journal: Vec<JournalWrite>,
    /// Journal entries to delete, applied after this batch's appends.
    pub trims: Vec<JournalTrim>,
    /// Timers, messages and effects to keep until they are applied.
    pub pending: Vec<PendingWrite>,
    /// Pending rows to delete, applied after this batch's inserts.
    pub done: Vec<PendingDone>,
    /// Replies to keep for idempotency keys.
    pub replies: Vec<ReplyWrite>,
    /// Kept replies to delete, after this batch's `replies`.
    pub replies_done: Vec<ReplyDone>,
    /// Old replies to delete.
    pub expire_replies: Option<ExpireReplies>,
    /// Entities paused or resumed.
    pub pauses: Vec<PauseWrite>,
    /// Entities deleted, after every other write of the batch (see [`EntityDelete`]).
    pub deletes: Vec<EntityDelete>,
    /// Steps of kinds that keep a change feed, in the order they were taken.
    pub changes: Vec<ChangeWrite>,
    /// Old changes to delete.
    pub expire_changes: Vec<ExpireChanges>,
}

impl Batch {
    /// Whether the batch writes nothing.
    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
            && self.dead_letters.is_empty()
            && self.letters_done.is_empty()
            && self.journal.is_empty()
            && self.trims.is_empty()
            && self.pending.is_empty()
            && self.done.is_empty()
            && self.replies.is_empty()
            && self.replies_done.is_empty()
            && self.expire_replies.is_none()
            && self.pauses.is_empty()
            && self.deletes.is_empty()
            && self.changes.is_empty()
            && self.expire_changes.is_empty()
    }
}

/// A write of a [`Batch`], fenced by its shard's epoch: it lands only if the writer's epoch
/// is still the shard's current one.
pub trait Fenced {
    /// The shard the write is fenced by, and the epoch its writer holds for it.
    fn fenced_by(&self) -> (ShardId, Epoch);
}

macro_rules! fenced {
    ($($write:ty),* $(,)?) => {
        $(impl Fenced for $write {
            fn fenced_by(&self) -> (ShardId, Epoch) {
                (self.shard, self.epoch)
            }
        })*
    };
}

fenced!(
    StateWrite,
    DeadLetterWrite,
    DeadLetterDone,
    PauseWrite,
    JournalWrite,
    JournalTrim,
    EntityDelete,
    PendingWrite,
    PendingDone,
    ReplyWrite,
    ReplyDone,
    ChangeWrite,
);

/// What a successful commit did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommitOutcome {
    /// Shards whose writes were refused because the writer's epoch is not the shard's
    /// current epoch. Every other write in the batch is durable.
    pub fenced: Vec<ShardId>,
}
