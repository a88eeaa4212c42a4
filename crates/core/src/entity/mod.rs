//! One resident entity: its mailbox, its run loop, and how its steps reach storage.
//!
//! An entity is a [`Cell`] in the registry. A message is pushed into the cell's mailbox; if no
//! task is running the cell, one is spawned. The task loads the state if needed, then handles
//! queued messages one at a time. Each successful step of a `Snapshot` kind is encoded and
//! submitted to the commit pipeline, and its reply is **held** in the cell until the pipeline
//! reports the step durable (output gating): the entity goes on to its next message without
//! waiting for the fsync, but no reply leaves early.
//!
//! A successful step of a `Journal` kind submits its journal entry instead (see
//! [`crate::journal`]), with a snapshot every few steps if the kind takes them; its reply is
//! held the same way.
//!
//! A step that returns `Err` or panics is rolled back to the state after the previous step:
//! from a copy (`Ephemeral`), by decoding the last state (`Snapshot`), or by replaying the
//! journal once the steps in flight are durable (`Journal`).
//! If a batch fails, the cell's incarnation changes: every held reply fails, every queued
//! step of the old incarnation is dropped by the pipeline, and the state is reloaded from
//! storage before the next message.
//!
//! # Layout
//! - `mailbox`: how a message comes in ([`Via`]), the mailbox and the run loop, and whether
//!   this node may run the entity's messages now.
//! - `activation`: loading or creating the state.
//! - `step`: one message handled, and what it keeps: the state, a journal entry, its timers,
//!   messages and effects.
//! - `failure`: a step that fails: rollback, and dead letters for a message that keeps
//!   failing.
//! - `reply`: where an outcome goes, and the replies held until their step is durable.

mod activation;
mod failure;
mod mailbox;
mod reply;
mod step;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use perennial_types::{EntityId, EntityKey, Epoch, ShardId};
use tokio::sync::oneshot;

use crate::commit::Failure;
use crate::courier::{Applying, Delivery};
use crate::due::RowId;
use crate::guard::guard;
use crate::journal::InitRecord;
use crate::kind::KindRt;
use crate::process::ctx::first_row_after;
use crate::registry::{Key, Passivated, Resident};
use crate::{CallError, Caller, Ctx, Process};

pub(crate) use activation::decode_record;
use failure::Attempts;
pub(crate) use mailbox::Via;
use mailbox::{Envelope, deliver};
pub(crate) use reply::Reply;
use reply::{Held, ReplyTo};

/// Where the entity's state is.
enum Slot<K> {
    /// Not in memory: the next run loads it from storage.
    Unloaded,
    /// In memory, between runs.
    Ready(K),
    /// Taken by the running task.
    Busy,
}

struct Inner<K: Process> {
    state: Slot<K>,
    /// Whether a task is running this cell (or about to).
    scheduled: bool,
    mailbox: VecDeque<Envelope<K>>,
    /// Replies waiting for durability, in step order.
    held: VecDeque<Held<K>>,
    /// The version of the latest step, durable or not.
    seq: u64,
    /// The version known to be durable.
    durable: u64,
    /// `Snapshot` kinds: the state after step `seq`, to roll back to.
    last_json: Option<Arc<str>>,
    /// `Journal` kinds: the step the latest snapshot covers.
    snapshot_step: u64,
    /// Whether storage holds the state (or snapshot) at an older schema version: the next
    /// step writes it back (a `Journal` kind, as a snapshot), even if it changed nothing.
    outdated: bool,
    /// The bytes this entity is accounted for in the registry.
    bytes: usize,
    /// What only some entities need; boxed, since every resident entity carries the field.
    rare: Option<Box<Rare>>,
}

/// What only some resident entities need: those that use idempotency keys or cancel timers,
/// whose messages failed, whose steps were lost, or a new `Journal` entity before its first
/// step.
#[derive(Default)]
struct Rare {
    keys: Keys,
    /// Consecutive failures of messages, to dead-letter one that keeps failing.
    failures: Vec<Attempts>,
    /// `Journal` kinds: what `init` was handed, until the first step records it.
    init: Option<InitRecord>,
    /// Why the steps of the previous incarnation were lost, for replies computed from them.
    lost: Option<Failure>,
}

/// An entity's kept replies and pending cancels, and where its deleted life ended.
#[derive(Default)]
struct Keys {
    /// The step that last deleted the entity ([`Ctx::delete`]), 0 if none did while it was
    /// in memory: rows to itself numbered below [`first_row_after`] it are from a deleted
    /// life, and the next life numbers its steps after it.
    deleted_at: u64,
    /// Replies kept for idempotency keys, known to this activation (a cache of storage).
    replies: HashMap<Box<str>, Arc<str>>,
    /// Timers cancelled by steps not yet durable: `(step, timer)`. Once durable, the
    /// dispatcher knows them.
    cancelled: Vec<(u64, u64)>,
}

impl<K: Process> Inner<K> {
    fn rare(&mut self) -> &mut Rare {
        self.rare.get_or_insert_with(Box::default)
    }

    fn keys(&mut self) -> &mut Keys {
        &mut self.rare().keys
    }

    fn kept_reply(&self, key: &str) -> Option<Arc<str>> {
        if perennial_faults::sabotaged(perennial_faults::Sabotage::NoDedup) {
            return None;
        }
        self.rare.as_ref()?.keys.replies.get(key).cloned()
    }

    /// Whether the entity's own row `timer` must not be applied: cancelled, or from a life
    /// that was deleted since.
    fn is_cancelled(&self, timer: u64) -> bool {
        self.rare.as_ref().is_some_and(|r| {
            let k = &r.keys;
            timer < first_row_after(k.deleted_at) && k.deleted_at > 0
                || k.cancelled.iter().any(|(_, t)| *t == timer)
        })
    }

    /// The step a deletion in this activation ended at (0 if none).
    fn deleted_at(&self) -> u64 {
        self.rare.as_ref().map_or(0, |r| r.keys.deleted_at)
    }

    /// Sets what `init` was handed, for a new `Journal` entity's first step to record.
    fn set_init(&mut self, init: Option<InitRecord>) {
        match (init, &mut self.rare) {
            (Some(init), _) => self.rare().init = Some(init),
            (None, Some(rare)) => rare.init = None,
            (None, None) => {}
        }
    }

    /// Why the steps of the previous incarnation were lost, if they were.
    fn lost(&self) -> Option<Failure> {
        self.rare.as_ref()?.lost.clone()
    }

    /// `message` ran to completion, so it no longer counts as failing.
    fn forget_failure(&mut self, message: &str) {
        if let Some(rare) = &mut self.rare
            && !rare.failures.is_empty()
        {
            failure::forget_failure(&mut rare.failures, failure::digest_of(message));
        }
    }
}

/// At most this many kept replies are cached per entity; beyond, the cache is emptied (a
/// miss asks storage, once the entity's steps are durable).
const CACHED_REPLIES: usize = 256;

/// One resident entity.
pub(crate) struct Cell<K: Process> {
    kind: Arc<KindRt<K>>,
    id: EntityId,
    shard: ShardId,
    /// The epoch of the shard when the entity was activated: its writes name it, so a node
    /// that lost the shard since has them fenced.
    epoch: AtomicU64,
    /// Changes when a batch with this entity's steps fails; see the module docs.
    incarnation: AtomicU32,
    /// When the entity may be passivated, in milliseconds of the runtime's clock.
    deadline: AtomicU64,
    inner: Mutex<Inner<K>>,
}

/// Whether the state in a cell's memory may answer now (see [`Cell::serving`]).
enum Serving {
    /// This node serves the shard under the epoch the state was loaded under: nobody else
    /// can have written since.
    Current,
    /// This node does not serve the shard now.
    NotServed,
    /// This node serves the shard again, under a newer epoch: the state must be loaded again.
    NewerEpoch,
}

/// Sends a message to an entity and waits for its reply.
pub(crate) async fn call<K: Process>(
    kind: &Arc<KindRt<K>>,
    id: &EntityId,
    (msg, caller): (K::Msg, Option<Caller>),
    via: Via,
) -> Reply<K> {
    ask(kind, id, (Some(msg), via, caller), ReplyTo::Caller).await
}

/// Sends a message to an entity and waits for its reply as JSON.
pub(crate) async fn call_json<K: Process>(
    kind: &Arc<KindRt<K>>,
    id: &EntityId,
    (msg, caller): (K::Msg, Option<Caller>),
    via: Via,
) -> Result<String, CallError<K::Error>> {
    ask(kind, id, (Some(msg), via, caller), ReplyTo::Json).await
}

/// Writes the entity's stored state back at its kind's schema version, through its mailbox
/// (so after the messages before it, and before those after it); with `snapshot`, also
/// snapshots a `Journal` entity whose journal goes beyond its latest snapshot. Completes
/// once the write is durable: with whether anything was written.
pub(crate) async fn rewrite<K: Process>(
    kind: &Arc<KindRt<K>>,
    id: &EntityId,
    snapshot: bool,
) -> Result<bool, CallError<K::Error>> {
    let via = Via::Rewrite { snapshot };
    ask(kind, id, (None, via, None), ReplyTo::Done).await
}

/// Deletes the entity as [`Ctx::delete`] would, through its mailbox (so after the messages
/// before it, and before those after it). Completes once the deletion is durable.
pub(crate) async fn delete<K: Process>(
    kind: &Arc<KindRt<K>>,
    id: &EntityId,
) -> Result<bool, CallError<K::Error>> {
    ask(kind, id, (None, Via::Delete, None), ReplyTo::Done).await
}

/// Where the answer to a call of kind `K` goes, as a `T`.
type Answering<K, T> = oneshot::Sender<Result<T, CallError<<K as Process>::Error>>>;

/// Admits a call, puts `msg` in the entity's mailbox with a reply of the form `reply_to`
/// makes, and waits for the answer.
async fn ask<K: Process, T>(
    kind: &Arc<KindRt<K>>,
    id: &EntityId,
    (msg, via, caller): (Option<K::Msg>, Via, Option<Caller>),
    reply_to: fn(Answering<K, T>) -> ReplyTo<K>,
) -> Result<T, CallError<K::Error>> {
    let _permit = kind.engine.admit()?;
    if let Some(msg) = &msg
        && matches!(via, Via::Call | Via::Idempotent { row: None, .. })
        && guard(|| K::is_internal(msg)).unwrap_or(true)
    {
        return Err(CallError::Internal(EntityKey::new(K::KIND, id.clone())));
    }
    let (reply, answer) = oneshot::channel();
    let reply = reply_to(reply);
    let envelope = Envelope {
        msg,
        reply,
        via,
        caller,
    };
    deliver(kind, id, envelope)?;
    // The sender is dropped without an answer only if the runtime itself is torn down.
    answer.await.unwrap_or(Err(CallError::ShuttingDown))
}

/// Delivers a pending row's message to its target and waits until it is applied (durably).
pub(crate) async fn deliver_row<K: Process>(
    kind: &Arc<KindRt<K>>,
    id: &EntityId,
    msg: K::Msg,
    row: RowId,
    applying: Applying,
) -> Delivery {
    let _permit = match kind.engine.admit::<K::Error>() {
        Ok(permit) => permit,
        Err(e) => return Delivery::Retry(e.to_string()),
    };
    let (reply, answer) = oneshot::channel();
    let (via, reply) = match applying {
        Applying::Row => (Via::Row(Box::new(row)), ReplyTo::Row(reply)),
        Applying::KeyedRow => (Via::keyed_row(row), ReplyTo::Row(reply)),
        Applying::KeyedAnswer => (Via::keyed_answer(row), ReplyTo::Row(reply)),
        Applying::Ask { fresh } => (Via::ask(&row, fresh), ReplyTo::Ask(reply)),
    };
    let envelope = Envelope {
        msg: Some(msg),
        reply,
        via,
        caller: None,
    };
    match deliver(kind, id, envelope) {
        Ok(()) => {}
        Err(CallError::NotOwner { .. }) => return Delivery::NotServed,
        Err(e) => return Delivery::Retry(e.to_string()),
    }
    answer
        .await
        .unwrap_or_else(|_| Delivery::Retry("the runtime stopped".into()))
}

/// Whether the entity is in memory with messages queued or steps not yet durable.
pub(crate) fn is_busy<K: Process>(kind: &KindRt<K>, id: &EntityId) -> bool {
    let key = Key {
        kind: kind.index,
        id: id.clone(),
    };
    kind.engine.registry.is_busy(&key)
}

impl<K: Process> Cell<K> {
    /// The entity's state, locked, if `incarnation` is still current; `None` if a batch
    /// failed since and took back the state the step was computed from (the step must not
    /// be kept).
    fn lock_current(&self, incarnation: u32) -> Option<parking_lot::MutexGuard<'_, Inner<K>>> {
        let inner = self.inner.lock();
        (self.incarnation.load(Ordering::SeqCst) == incarnation).then_some(inner)
    }

    /// Whether messages are queued, it runs, or steps are not yet durable.
    fn busy(inner: &Inner<K>) -> bool {
        inner.scheduled
            || !inner.mailbox.is_empty()
            || !inner.held.is_empty()
            || inner.seq != inner.durable
    }

    /// Whether this node serves the entity's shard now, and under which epoch compared with
    /// the one the state in memory was loaded under.
    fn serving(&self) -> Serving {
        if perennial_faults::sabotaged(perennial_faults::Sabotage::StaleReads) {
            return Serving::Current;
        }
        match self.kind.engine.shards.epoch(self.shard) {
            None => Serving::NotServed,
            Some(epoch) if epoch.0 == self.epoch.load(Ordering::SeqCst) => Serving::Current,
            Some(_) => Serving::NewerEpoch,
        }
    }

    fn new(kind: Arc<KindRt<K>>, id: EntityId, shard: ShardId, epoch: Epoch) -> Self {
        let cell = Self {
            kind,
            id,
            shard,
            epoch: AtomicU64::new(epoch.0),
            incarnation: AtomicU32::new(0),
            deadline: AtomicU64::new(u64::MAX),
            inner: Mutex::new(Inner {
                state: Slot::Unloaded,
                scheduled: false,
                mailbox: VecDeque::new(),
                held: VecDeque::new(),
                seq: 0,
                durable: 0,
                last_json: None,
                snapshot_step: 0,
                outdated: false,
                bytes: 0,
                rare: None,
            }),
        };
        cell.set_deadline(None);
        cell
    }

    fn key(&self) -> EntityKey {
        EntityKey::new(Arc::clone(&self.kind.name), self.id.clone())
    }

    fn set_deadline(&self, timeout: Option<Duration>) {
        let timeout = timeout.unwrap_or(Duration::from_secs(300));
        let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let deadline = self.kind.engine.now_ms().saturating_add(ms);
        self.deadline.store(deadline, Ordering::Relaxed);
        self.kind.engine.sweep_by(deadline);
    }

    fn panicked_error(&self, message: String) -> CallError {
        CallError::Panicked {
            key: self.key(),
            message,
        }
    }
}

impl<K: Process> Resident for Cell<K> {
    fn key(&self) -> Key {
        Key {
            kind: self.kind.index,
            id: self.id.clone(),
        }
    }

    fn shard(&self) -> ShardId {
        self.shard
    }

    fn deadline_ms(&self) -> u64 {
        self.deadline.load(Ordering::Relaxed)
    }

    fn is_busy(&self) -> bool {
        // Not `scheduled`: a run loop about to end a round has nothing in flight, and
        // whatever it runs comes before what is queued next.
        let inner = self.inner.lock();
        !inner.mailbox.is_empty() || !inner.held.is_empty() || inner.seq != inner.durable
    }

    fn try_passivate(&self, now_ms: u64, force: bool) -> Option<Passivated> {
        if !force && self.deadline_ms() > now_ms {
            return None;
        }
        let mut inner = self.inner.lock();
        if Self::busy(&inner) {
            return None;
        }
        let state = match std::mem::replace(&mut inner.state, Slot::Unloaded) {
            Slot::Ready(state) => Some(state),
            Slot::Unloaded | Slot::Busy => None,
        };
        let bytes = std::mem::take(&mut inner.bytes);
        drop(inner);
        perennial_faults::failpoint!("passivate.unregister");
        let kind = Arc::clone(&self.kind);
        let id = self.id.clone();
        Some(Passivated {
            bytes,
            hook: Box::new(move || {
                if let Some(mut state) = state {
                    let mut ctx = Ctx::new(&id);
                    if let Err(panic) = guard(|| state.on_passivate(&mut ctx)) {
                        tracing::error!(kind = K::KIND, %id, %panic, "on_passivate panicked");
                    }
                }
                kind.counters.passivations.fetch_add(1, Ordering::Relaxed);
                kind.counters.resident.fetch_sub(1, Ordering::Relaxed);
            }),
        })
    }
}

#[cfg(all(test, target_pointer_width = "64"))]
mod tests {
    use super::*;

    /// A state of one number, as the memory workload's counters.
    #[derive(Default, serde::Serialize, serde::Deserialize)]
    struct Small(i64);

    impl Process for Small {
        const KIND: &'static str = "small";
        type Msg = i64;
        type Reply = i64;
        type Error = std::convert::Infallible;

        fn handle(&mut self, add: i64, _: &mut Ctx<'_, Self>) -> Result<i64, Self::Error> {
            self.0 += add;
            Ok(self.0)
        }
    }

    /// Every resident entity carries a cell: with its `Arc`'s counts it must stay within
    /// the allocator's 224-byte class (256 before the seldom-used fields shared a box).
    #[test]
    fn an_idle_entity_s_cell_fits_in_224_bytes() {
        let cell = std::mem::size_of::<Cell<Small>>();
        assert!(cell + 16 <= 224, "a cell takes {cell} bytes");
    }
}
