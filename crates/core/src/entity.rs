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

use std::any::Any;
use std::collections::VecDeque;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use std::collections::HashMap;

use perennial_storage::{JournalEntry, Pending, Record, StoredReply};

use parking_lot::Mutex;
use perennial_storage::DeadLetter;
use perennial_types::{EntityId, EntityKey, Epoch, ShardId, shard_of};
use tokio::sync::oneshot;

use crate::commit::{Extras, Failure, JournalStep, Owner, Step, Write};
use crate::ctx::{Work, now_us};
use crate::dispatch::{Delivery, RowId};
use crate::journal::{self, InitRecord};
use crate::kind::{KindRt, Mode};
use crate::registry::{Key, Passivated, Resident};
use crate::{CallError, Ctx, Overload, Process};

/// What a call finally gets.
pub(crate) type Reply<K> = Result<<K as Process>::Reply, CallError<<K as Process>::Error>>;

/// A successful step's answer: the handler's reply, or the reply kept for an idempotency key.
pub(crate) enum Answer<K: Process> {
    Value(K::Reply),
    /// The JSON of the reply to the first call with the same idempotency key.
    Kept(Arc<str>),
    /// A rewrite's answer (see [`rewrite`]): whether it wrote anything.
    Rewrote(bool),
}

type Outcome<K> = Result<Answer<K>, CallError<<K as Process>::Error>>;

/// Where a message's outcome goes.
pub(crate) enum ReplyTo<K: Process> {
    /// A typed caller.
    Caller(oneshot::Sender<Reply<K>>),
    /// A caller by kind name: the reply as JSON (for a retried idempotent call, the kept
    /// bytes themselves).
    Json(oneshot::Sender<Result<String, CallError<K::Error>>>),
    /// The dispatcher, delivering a timer, a message from another entity or an effect's result.
    Row(oneshot::Sender<Delivery>),
    /// A migration pass, rewriting the stored state (see [`rewrite`]).
    Rewrite(oneshot::Sender<Result<bool, CallError<K::Error>>>),
}

impl<K: Process> ReplyTo<K> {
    /// Tells the dispatcher its row needs nothing more (a cancelled timer).
    fn send_skipped(self) {
        if let Self::Row(to) = self {
            let _ = to.send(Delivery::Skipped);
        }
    }

    /// Sends the outcome; `key` names the entity in errors made here.
    fn send(self, outcome: Outcome<K>, key: impl FnOnce() -> EntityKey) {
        match self {
            Self::Caller(to) => {
                let reply = outcome.and_then(|answer| match answer {
                    Answer::Value(value) => Ok(value),
                    Answer::Rewrote(_) => Err(not_a_reply(key())),
                    Answer::Kept(json) => {
                        serde_json::from_str(&json).map_err(|e| CallError::CorruptState {
                            key: key(),
                            detail: format!(
                                "the reply kept for the idempotency key no longer decodes: {e}"
                            ),
                        })
                    }
                });
                let _ = to.send(reply);
            }
            Self::Json(to) => {
                let reply = outcome.and_then(|answer| match answer {
                    Answer::Value(value) => {
                        serde_json::to_string(&value).map_err(|e| CallError::UnencodableReply {
                            key: key(),
                            detail: e.to_string(),
                        })
                    }
                    Answer::Kept(json) => Ok(json.to_string()),
                    Answer::Rewrote(_) => Err(not_a_reply(key())),
                });
                let _ = to.send(reply);
            }
            Self::Rewrite(to) => {
                let _ = to.send(outcome.map(|answer| !matches!(answer, Answer::Rewrote(false))));
            }
            Self::Row(to) => {
                let delivery = match outcome {
                    Ok(_) | Err(CallError::DeadLettered { .. }) => Delivery::Applied,
                    Err(CallError::Rejected(e)) => {
                        Delivery::Refused(format!("{}: {e}", crate::Rejection::code(&e)))
                    }
                    // Not applied here (activation found the shard gone): another node will.
                    Err(CallError::NotOwner { .. }) => Delivery::NotServed,
                    Err(e) => Delivery::Retry(e.to_string()),
                };
                let _ = to.send(delivery);
            }
        }
    }
}

/// How a message came to the entity.
pub(crate) enum Via {
    /// A call.
    Call,
    /// A call with an idempotency key; `checked` once storage was asked for a kept reply.
    /// With a `row`: a pending row applied under a key made from its id (carried from
    /// another node, or delivered in a cluster, where another node may deliver it too), so it
    /// is applied once however often it is delivered, and deleted by the step that applies it.
    Idempotent {
        key: Box<str>,
        checked: bool,
        row: Option<Box<RowId>>,
    },
    /// A pending row: a timer, a message from another entity, an effect's result. The step
    /// that applies it deletes it.
    Row(Box<RowId>),
    /// A dead letter retried by an operator, by its number. The step that applies it deletes
    /// the letter.
    Letter(u64),
    /// No message: a migration pass writes the state back at the kind's schema version, and
    /// with `snapshot`, snapshots a `Journal` entity whose journal goes beyond its snapshot.
    Rewrite { snapshot: bool },
}

/// The longest idempotency key accepted, in bytes.
pub(crate) const MAX_IDEMPOTENCY_KEY: usize = 256;

impl Via {
    /// A call with idempotency key `key`, which must be 1 to 256 bytes.
    pub(crate) fn idempotent(key: &str) -> Result<Self, CallError> {
        if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY {
            return Err(CallError::InvalidIdempotencyKey(format!(
                "an idempotency key must be 1 to {MAX_IDEMPOTENCY_KEY} bytes, not {}",
                key.len()
            )));
        }
        Ok(Self::Idempotent {
            key: Box::from(key),
            checked: false,
            row: None,
        })
    }

    /// A pending row applied under a key made from its id: carried from another node (see
    /// `courier`), or delivered in a cluster, where another node may deliver it too.
    pub(crate) fn keyed_row(row: RowId) -> Self {
        Self::Idempotent {
            key: Box::from(crate::courier::row_key(&row.owner, row.seq)),
            checked: false,
            row: Some(Box::new(row)),
        }
    }
}

/// A message waiting in a mailbox, with where its reply goes.
struct Envelope<K: Process> {
    /// `None` only for [`Via::Rewrite`].
    msg: Option<K::Msg>,
    reply: ReplyTo<K>,
    via: Via,
}

/// A reply waiting for the step at `seq` (and all before it) to be durable.
struct Held<K: Process> {
    seq: u64,
    reply: ReplyTo<K>,
    result: Outcome<K>,
    /// Whether its step wrote nothing (a read): its answer came from the state in memory,
    /// so it leaves only while this node still serves the shard under the cell's epoch.
    read: bool,
}

/// Where the entity's state is.
enum Slot<K> {
    /// Not in memory: the next run loads it from storage.
    Unloaded,
    /// In memory, between runs.
    Ready(K),
    /// Taken by the running task.
    Busy,
}

/// How often one message has failed in a row at this entity.
struct Attempts {
    digest: u64,
    count: u32,
}

/// At most this many distinct failing messages are tracked per entity.
const TRACKED_FAILURES: usize = 8;

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
    /// `Journal` kinds: what `init` was handed, until the first step records it.
    init: Option<Box<InitRecord>>,
    /// Why the steps of the previous incarnation were lost, for replies computed from them.
    /// Boxed: it is almost always empty, and every resident entity carries the field.
    lost: Option<Box<Failure>>,
    /// Consecutive failures of messages, to dead-letter one that keeps failing.
    failures: Vec<Attempts>,
    /// The bytes this entity is accounted for in the registry.
    bytes: usize,
    /// What only entities that use idempotency keys or cancel timers need; boxed, since
    /// every resident entity carries the field.
    keys: Option<Box<Keys>>,
}

/// An entity's kept replies and pending cancels.
#[derive(Default)]
struct Keys {
    /// Replies kept for idempotency keys, known to this activation (a cache of storage).
    replies: HashMap<Box<str>, Arc<str>>,
    /// Timers cancelled by steps not yet durable: `(step, timer)`. Once durable, the
    /// dispatcher knows them.
    cancelled: Vec<(u64, u64)>,
}

impl<K: Process> Inner<K> {
    fn keys(&mut self) -> &mut Keys {
        self.keys.get_or_insert_with(Box::default)
    }

    fn kept_reply(&self, key: &str) -> Option<Arc<str>> {
        if perennial_faults::sabotaged(perennial_faults::Sabotage::NoDedup) {
            return None;
        }
        self.keys.as_ref()?.replies.get(key).cloned()
    }

    fn is_cancelled(&self, timer: u64) -> bool {
        self.keys
            .as_ref()
            .is_some_and(|k| k.cancelled.iter().any(|(_, t)| *t == timer))
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

/// Sends a message to an entity and waits for its reply.
pub(crate) async fn call<K: Process>(
    kind: &Arc<KindRt<K>>,
    id: &EntityId,
    msg: K::Msg,
    via: Via,
) -> Reply<K> {
    let _permit = kind.core.admit()?;
    let (reply, answer) = oneshot::channel();
    let reply = ReplyTo::Caller(reply);
    let msg = Some(msg);
    deliver(kind, id, Envelope { msg, reply, via })?;
    // The sender is dropped without an answer only if the runtime itself is torn down.
    answer.await.unwrap_or(Err(CallError::ShuttingDown))
}

/// Sends a message to an entity and waits for its reply as JSON.
pub(crate) async fn call_json<K: Process>(
    kind: &Arc<KindRt<K>>,
    id: &EntityId,
    msg: K::Msg,
    via: Via,
) -> Result<String, CallError<K::Error>> {
    let _permit = kind.core.admit()?;
    let (reply, answer) = oneshot::channel();
    let reply = ReplyTo::Json(reply);
    let msg = Some(msg);
    deliver(kind, id, Envelope { msg, reply, via })?;
    answer.await.unwrap_or(Err(CallError::ShuttingDown))
}

/// Delivers a pending row's message to its target and waits until it is applied (durably).
pub(crate) async fn deliver_row<K: Process>(
    kind: &Arc<KindRt<K>>,
    id: &EntityId,
    msg: K::Msg,
    row: RowId,
    keyed: bool,
) -> Delivery {
    let _permit = match kind.core.admit::<K::Error>() {
        Ok(permit) => permit,
        Err(e) => return Delivery::Retry(e.to_string()),
    };
    let (reply, answer) = oneshot::channel();
    let via = if keyed {
        Via::keyed_row(row)
    } else {
        Via::Row(Box::new(row))
    };
    let envelope = Envelope {
        msg: Some(msg),
        reply: ReplyTo::Row(reply),
        via,
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

/// Writes the entity's stored state back at its kind's schema version, through its mailbox
/// (so after the messages before it, and before those after it); with `snapshot`, also
/// snapshots a `Journal` entity whose journal goes beyond its latest snapshot. Completes
/// once the write is durable: with whether anything was written.
pub(crate) async fn rewrite<K: Process>(
    kind: &Arc<KindRt<K>>,
    id: &EntityId,
    snapshot: bool,
) -> Result<bool, CallError<K::Error>> {
    let _permit = kind.core.admit()?;
    let (reply, answer) = oneshot::channel();
    let envelope = Envelope {
        msg: None,
        reply: ReplyTo::Rewrite(reply),
        via: Via::Rewrite { snapshot },
    };
    deliver(kind, id, envelope)?;
    answer.await.unwrap_or(Err(CallError::ShuttingDown))
}

/// The error a caller would get for a rewrite's answer, which no caller is given.
fn not_a_reply<E>(key: EntityKey) -> CallError<E> {
    CallError::UnencodableReply {
        key,
        detail: "a rewrite has no reply".into(),
    }
}

/// Pushes a message into the entity's mailbox, activating the entity if it is not resident.
fn deliver<K: Process>(
    kind: &Arc<KindRt<K>>,
    id: &EntityId,
    envelope: Envelope<K>,
) -> Result<(), CallError<K::Error>> {
    let shard = shard_of(K::KIND, id.as_str());
    let Some(epoch) = kind.core.shards.epoch(shard) else {
        return Err(CallError::NotOwner { shard });
    };
    if kind.core.pauses.is_paused(K::KIND, id) {
        return Err(CallError::Paused(EntityKey::new(K::KIND, id.clone())));
    }
    if kind.core.quarantine.get(K::KIND, id).is_some() {
        return Err(CallError::Quarantined(EntityKey::new(K::KIND, id.clone())));
    }
    let key = Key {
        kind: kind.index,
        id: id.clone(),
    };
    let capacity = kind.core.config.mailbox_capacity;
    let make = || -> Arc<dyn Resident> {
        kind.counters.resident.fetch_add(1, Ordering::Relaxed);
        Arc::new(Cell::new(Arc::clone(kind), id.clone(), shard, epoch))
    };
    let to_run = kind.core.registry.with_entry(&key, make, |entry| {
        let any: &dyn Any = &**entry;
        let Some(cell) = any.downcast_ref::<Cell<K>>() else {
            return Err(CallError::UnknownKind(K::KIND.to_owned()));
        };
        let mut inner = cell.inner.lock();
        if inner.mailbox.len() >= capacity {
            return Err(CallError::Overloaded {
                scope: Overload::Entity(cell.key()),
            });
        }
        inner.mailbox.push_back(envelope);
        if inner.scheduled {
            return Ok(None);
        }
        inner.scheduled = true;
        drop(inner);
        let entry: Arc<dyn Resident> = Arc::clone(entry);
        let any: Arc<dyn Any + Send + Sync> = entry;
        Ok(any.downcast::<Cell<K>>().ok())
    })?;
    if let Some(cell) = to_run {
        run_here_or_spawn(cell);
    }
    Ok(())
}

/// What one round of a cell's run loop found.
enum Round {
    /// The mailbox is empty: the cell is idle again.
    Idle,
    /// It handled the messages it found; more may have arrived meanwhile.
    Handled,
    /// The state must be loaded first (an await, so only a spawned task may do it).
    NeedsLoad,
    /// Storage must be asked for the reply kept for this idempotency key first.
    NeedsReply(Box<str>),
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

/// How many rounds a caller runs on its own task before it hands the cell to a spawned one.
const INLINE_ROUNDS: usize = 4;

/// The task that runs a cell until its mailbox is empty.
async fn run<K: Process>(cell: Arc<Cell<K>>) {
    loop {
        match cell.round() {
            Round::Idle => return,
            Round::Handled => {}
            Round::NeedsLoad => {
                if !cell.activate().await {
                    return;
                }
            }
            Round::NeedsReply(key) => cell.look_up_reply(key).await,
        }
    }
}

/// Runs a resident cell's messages on the calling task, without spawning one, when that needs
/// no await; otherwise (the state must be loaded, or messages keep coming) spawns the task.
///
/// Only the synchronous part runs here, because a caller's future may be dropped at any await:
/// a run interrupted while loading would leave the cell scheduled with nobody to run it.
fn run_here_or_spawn<K: Process>(cell: Arc<Cell<K>>) {
    for _ in 0..INLINE_ROUNDS {
        match cell.round() {
            Round::Idle => return,
            Round::Handled => {}
            Round::NeedsLoad | Round::NeedsReply(_) => break,
        }
    }
    let runtime = cell.kind.core.runtime.clone();
    runtime.spawn(run(cell));
}

impl<K: Process> Cell<K> {
    /// One round of the run loop: takes the state and every queued message, handles them in
    /// order, and puts the state back. Never awaits.
    fn round(self: &Arc<Self>) -> Round {
        let (mut state, messages, incarnation) = {
            let mut inner = self.inner.lock();
            if inner.mailbox.is_empty() {
                inner.scheduled = false;
                return Round::Idle;
            }
            match self.serving() {
                Serving::Current => {}
                Serving::NotServed => {
                    // Lost, handed off or lapsed: nothing runs here; the callers try the
                    // owner. The state stays: if this epoch comes back, nobody else wrote.
                    let refused = std::mem::take(&mut inner.mailbox);
                    drop(inner);
                    self.refuse(refused);
                    return Round::Handled;
                }
                Serving::NewerEpoch => {
                    // Served again under a newer epoch: another node may have written in
                    // between, so the state in memory may be old. Load it again.
                    if matches!(inner.state, Slot::Ready(_)) {
                        inner.state = Slot::Unloaded;
                    }
                }
            }
            match std::mem::replace(&mut inner.state, Slot::Busy) {
                Slot::Ready(state) => (
                    state,
                    std::mem::take(&mut inner.mailbox),
                    self.incarnation.load(Ordering::SeqCst),
                ),
                other => {
                    // Never loaded, or unloaded by a failed batch.
                    inner.state = other;
                    return Round::NeedsLoad;
                }
            }
        };
        let mut messages = messages.into_iter().peekable();
        let mut intact = true;
        let mut look_up = None;
        while let Some(envelope) = messages.next_if(|e| {
            look_up = self.needs_reply(e);
            look_up.is_none()
        }) {
            if !self.step(&mut state, envelope, incarnation) {
                intact = false;
                break;
            }
        }
        let timeout = if intact {
            guard(|| state.idle_timeout()).ok()
        } else {
            None
        };
        let mut inner = self.inner.lock();
        for envelope in messages.rev() {
            inner.mailbox.push_front(envelope);
        }
        if intact && self.incarnation.load(Ordering::SeqCst) == incarnation {
            inner.state = Slot::Ready(state);
            self.set_deadline(timeout);
        } else {
            inner.state = Slot::Unloaded;
        }
        match look_up {
            Some(key) if intact => Round::NeedsReply(key),
            _ => Round::Handled,
        }
    }

    /// Whether this node serves the entity's shard now, and under which epoch compared with
    /// the one the state in memory was loaded under.
    fn serving(&self) -> Serving {
        if perennial_faults::sabotaged(perennial_faults::Sabotage::StaleReads) {
            return Serving::Current;
        }
        match self.kind.core.shards.epoch(self.shard) {
            None => Serving::NotServed,
            Some(epoch) if epoch == Owner::epoch(self) => Serving::Current,
            Some(_) => Serving::NewerEpoch,
        }
    }

    /// Refuses messages this node may not run: it does not serve their shard now.
    fn refuse(&self, envelopes: VecDeque<Envelope<K>>) {
        for envelope in envelopes {
            let refused = CallError::NotOwner { shard: self.shard };
            envelope.reply.send(Err(refused), || self.key());
        }
    }

    /// What a reply says when it leaves: its step's outcome, unless the step wrote nothing
    /// (`read`) and this node no longer serves the shard under the epoch the answer was
    /// computed under. A node can stall between a step and its reply while another node
    /// takes the shard and writes; the read is then refused as not served (nothing was
    /// applied), and its caller asks the owner.
    fn released(&self, outcome: Outcome<K>, read: bool) -> Outcome<K> {
        if read && !matches!(self.serving(), Serving::Current) {
            return Err(CallError::NotOwner { shard: self.shard });
        }
        outcome
    }

    /// The idempotency key of an envelope whose kept reply must be looked up in storage
    /// before it is handled: neither this activation knows it nor storage was asked.
    fn needs_reply(&self, envelope: &Envelope<K>) -> Option<Box<str>> {
        match &envelope.via {
            Via::Idempotent {
                key,
                checked: false,
                ..
            } if self.inner.lock().kept_reply(key).is_none() => Some(key.clone()),
            _ => None,
        }
    }

    /// Asks storage for the reply kept for `key`, once every step of the entity is durable
    /// (so storage holds every reply this entity kept), and records the answer.
    async fn look_up_reply(&self, key: Box<str>) {
        self.settled().await;
        let found = self.kind.core.store.reply(&self.key(), &key).await;
        let found = found.map(|kept| {
            kept.filter(|_| !perennial_faults::sabotaged(perennial_faults::Sabotage::NoDedup))
        });
        let mut inner = self.inner.lock();
        match found {
            Ok(kept) => {
                if let Some(kept) = kept {
                    Self::cache_reply(&mut inner, key.clone(), Arc::from(kept.reply));
                }
                for envelope in &mut inner.mailbox {
                    if let Via::Idempotent {
                        key: k, checked, ..
                    } = &mut envelope.via
                        && *k == key
                    {
                        *checked = true;
                    }
                }
            }
            Err(source) => {
                // Fail the calls with this key: they cannot know whether they were applied.
                let error = CallError::Storage {
                    key: self.key(),
                    source,
                };
                let (failed, kept): (VecDeque<_>, VecDeque<_>) = std::mem::take(&mut inner.mailbox)
                    .into_iter()
                    .partition(|e| matches!(&e.via, Via::Idempotent { key: k, .. } if *k == key));
                inner.mailbox = kept;
                drop(inner);
                for envelope in failed {
                    envelope
                        .reply
                        .send(Err(error.clone().widen()), || self.key());
                }
            }
        }
    }

    fn cache_reply(inner: &mut Inner<K>, key: Box<str>, reply: Arc<str>) {
        let replies = &mut inner.keys().replies;
        if replies.len() >= CACHED_REPLIES {
            replies.clear();
        }
        replies.insert(key, reply);
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
                init: None,
                lost: None,
                failures: Vec::new(),
                bytes: 0,
                keys: None,
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
        let deadline = self.kind.core.now_ms().saturating_add(ms);
        self.deadline.store(deadline, Ordering::Relaxed);
    }

    /// A brand-new state: [`Default`], then [`Process::init`], with what `init` was handed.
    fn fresh(&self) -> Result<(K, InitRecord), CallError> {
        let mut state = guard(K::default).map_err(|message| self.panicked_error(message))?;
        let at_us = now_us();
        let mut ctx = Ctx::at(&self.id, at_us);
        guard(|| state.init(&mut ctx)).map_err(|message| self.panicked_error(message))?;
        if !ctx.take_work().is_empty() {
            tracing::warn!(kind = K::KIND, id = %self.id,
                "init asked for timers, messages or effects; they are ignored (start them \
                 from a step)");
        }
        let seed = ctx.drawn_seed();
        Ok((state, InitRecord { at_us, seed }))
    }

    fn panicked_error(&self, message: String) -> CallError {
        CallError::Panicked {
            key: self.key(),
            message,
        }
    }

    /// Loads or creates the state. On failure, fails every queued message, leaves the registry
    /// and returns false; the next message starts a new activation.
    ///
    /// It first waits until none of the entity's steps is in flight, so that storage holds
    /// everything they wrote (this matters when a state was abandoned after an impossible
    /// rollback, while its earlier steps were still being committed).
    async fn activate(self: &Arc<Self>) -> bool {
        self.settled().await;
        // Loaded under the shard's epoch of now: if this node lost the shard and took it
        // back since the cell was made, another node may have written in between, and the
        // state is read again under the new epoch.
        let loaded = match self.kind.core.shards.epoch(self.shard) {
            Some(epoch) => {
                self.epoch.store(epoch.0, Ordering::SeqCst);
                self.load().await
            }
            None => Err(CallError::NotOwner { shard: self.shard }),
        };
        match loaded {
            Ok(loaded) => {
                let mut inner = self.inner.lock();
                self.kind.core.registry.account(inner.bytes, loaded.bytes);
                inner.bytes = loaded.bytes;
                inner.state = Slot::Ready(loaded.state);
                inner.seq = loaded.version;
                inner.durable = loaded.version;
                inner.last_json = loaded.json;
                inner.snapshot_step = loaded.snapshot_step;
                inner.outdated = loaded.outdated;
                inner.init = loaded.init.map(Box::new);
                inner.lost = None;
                self.kind
                    .counters
                    .activations
                    .fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(error) => {
                tracing::warn!(kind = K::KIND, id = %self.id, %error, "activation failed");
                // The stored bytes cannot be read back: refuse the entity's calls until an
                // operator fixes and releases it, rather than reading them again.
                let unreadable = match &error {
                    CallError::CorruptState { .. } => Some("corrupt_state"),
                    CallError::ReplayDiverged { .. } => Some("replay_diverged"),
                    CallError::StateTooNew { .. } => Some("state_too_new"),
                    CallError::MigrationFailed { .. } => Some("migration_failed"),
                    _ => None,
                };
                if let Some(code) = unreadable {
                    let quarantine = &self.kind.core.quarantine;
                    quarantine.insert(self.key(), code, error.to_string());
                }
                let key = Key {
                    kind: self.kind.index,
                    id: self.id.clone(),
                };
                let entry: Arc<dyn Resident> = Arc::clone(self) as Arc<dyn Resident>;
                self.kind.core.registry.remove_exact(&key, &entry, || {
                    let mut inner = self.inner.lock();
                    inner.scheduled = false;
                    for envelope in inner.mailbox.drain(..) {
                        envelope
                            .reply
                            .send(Err(error.clone().widen()), || self.key());
                    }
                    self.kind.core.registry.account(inner.bytes, 0);
                    inner.bytes = 0;
                });
                self.kind.counters.resident.fetch_sub(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Waits until every step of the entity is durable or failed.
    async fn settled(&self) {
        loop {
            let notified = self.kind.core.committer.settled().notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let inner = self.inner.lock();
                if inner.held.is_empty() && inner.seq == inner.durable {
                    return;
                }
            }
            notified.await;
        }
    }

    async fn load(&self) -> Result<Loaded<K>, CallError> {
        let mut loaded = match &self.kind.mode {
            Mode::Ephemeral { .. } => self.fresh_loaded()?,
            Mode::Snapshot { decode, .. } => match self.kind.core.store.load(&self.key()).await {
                Ok(None) => self.fresh_loaded()?,
                Ok(Some(record)) => self.decoded(*decode, record)?,
                Err(source) => {
                    return Err(CallError::Storage {
                        key: self.key(),
                        source,
                    });
                }
            },
            Mode::Journal { snapshots } => {
                let key = self.key();
                let store = &*self.kind.core.store;
                let codec = snapshots.as_ref();
                let rebuilt = journal::rebuild(store, &key, &self.id, codec, u64::MAX).await?;
                match rebuilt.state {
                    None => self.fresh_loaded()?,
                    Some(state) => Loaded {
                        state,
                        json: None,
                        outdated: rebuilt.outdated,
                        version: rebuilt.step,
                        snapshot_step: rebuilt.snapshot.map_or(0, |(step, _)| step),
                        bytes: rebuilt
                            .snapshot
                            .map_or(std::mem::size_of::<K>(), |(_, len)| len),
                        init: None,
                    },
                }
            }
        };
        let mut ctx = Ctx::new(&self.id);
        guard(|| loaded.state.on_activate(&mut ctx))
            .map_err(|message| self.panicked_error(message))?;
        Ok(loaded)
    }

    /// A new entity's first state, as an activation returns it.
    fn fresh_loaded(&self) -> Result<Loaded<K>, CallError> {
        let (state, init) = self.fresh()?;
        let journaled = matches!(self.kind.mode, Mode::Journal { .. });
        Ok(Loaded {
            state,
            json: None,
            outdated: false,
            version: 0,
            snapshot_step: 0,
            bytes: std::mem::size_of::<K>(),
            init: journaled.then_some(init),
        })
    }

    /// A `Snapshot` kind's stored state, migrated to the kind's schema version and decoded.
    fn decoded(
        &self,
        decode: fn(&str) -> serde_json::Result<K>,
        record: Record,
    ) -> Result<Loaded<K>, CallError> {
        let version = record.version;
        let (state, json, outdated) = decode_record(&self.key(), decode, record)?;
        Ok(Loaded {
            state,
            bytes: json.len(),
            json: Some(Arc::from(json)),
            outdated,
            version,
            snapshot_step: 0,
            init: None,
        })
    }

    /// Handles one message. Returns false if the state in hand is no longer valid (a batch
    /// failed, or a rollback was impossible) and must be reloaded.
    fn step(self: &Arc<Self>, state: &mut K, envelope: Envelope<K>, incarnation: u32) -> bool {
        let Envelope { msg, reply, via } = envelope;
        // Off by default; `RUST_LOG=perennial_core=debug` shows one span per step.
        let _span = tracing::debug_span!("step", kind = K::KIND, id = %self.id).entered();
        let Some(msg) = msg else {
            let snapshot = matches!(via, Via::Rewrite { snapshot: true });
            return self.rewrite(state, reply, snapshot, incarnation);
        };
        if let Some(answered) = self.answered_before(&via) {
            return match answered {
                Some(kept) => self.respond_outcome(reply, Ok(Answer::Kept(kept)), incarnation),
                None => {
                    reply.send_skipped();
                    true
                }
            };
        }
        // Kept to dead-letter the message if it keeps failing: the handler consumes it.
        let message_json = guard(|| serde_json::to_string(&msg))
            .map_err(|panic| format!("encoding the message panicked: {panic}"))
            .and_then(|encoded| encoded.map_err(|e| e.to_string()));
        let backup = match &self.kind.mode {
            Mode::Ephemeral { clone } => match guard(|| clone(state)) {
                Ok(backup) => Some(backup),
                Err(panic) => {
                    // The message was not handled, and the state is as it was.
                    self.kind.counters.restarts.fetch_add(1, Ordering::Relaxed);
                    let error = self.panicked_error(format!("copying the state panicked: {panic}"));
                    reply.send(Err(error.widen()), || self.key());
                    return true;
                }
            },
            Mode::Snapshot { .. } | Mode::Journal { .. } => None,
        };
        let read_only = matches!(self.kind.mode, Mode::Journal { .. })
            && guard(|| K::is_read_only(&msg)).unwrap_or(false);
        let at_us = now_us();
        let next = self.inner.lock().seq + 1;
        let mut ctx = Ctx::step(&self.id, at_us, next);
        let result = guard(|| state.handle(msg, &mut ctx));
        let work = ctx.take_work();
        let seed = ctx.drawn_seed();
        let result = match (result, self.extras(work, &via)) {
            (Ok(Ok(value)), Ok(extras)) => Ok((value, extras)),
            (Ok(Err(rejection)), _) => Err(Ok(rejection)),
            (Err(panic), _) | (Ok(Ok(_)), Err(panic)) => Err(Err(panic)),
        };
        if matches!(via, Via::Row(_) | Via::Idempotent { row: Some(_), .. }) {
            perennial_faults::failpoint!("step.row_handled");
        }
        match result {
            Ok((value, extras)) if matches!(self.kind.mode, Mode::Journal { .. }) => {
                if read_only && extras.is_none() {
                    self.clear_failures(&message_json);
                    return self.respond_gated(reply, Ok(value), incarnation);
                }
                self.journal(
                    state,
                    reply,
                    (value, extras),
                    &message_json,
                    (at_us, seed),
                    incarnation,
                )
            }
            Ok((value, extras)) => {
                self.keep(state, reply, (value, extras), &message_json, incarnation)
            }
            Err(Ok(rejection)) => {
                self.clear_failures(&message_json);
                match self.rollback(state, backup) {
                    Ok(intact) => {
                        let rejected = Err(CallError::Rejected(rejection));
                        self.respond_gated(reply, rejected, incarnation) && intact
                    }
                    Err(error) => {
                        reply.send(Err(error.widen()), || self.key());
                        false
                    }
                }
            }
            Err(Err(panic)) => {
                let (row, letter) = match via {
                    Via::Row(row) | Via::Idempotent { row: Some(row), .. } => (Some(row), None),
                    Via::Letter(seq) => (None, Some(seq)),
                    Via::Call | Via::Idempotent { row: None, .. } | Via::Rewrite { .. } => {
                        (None, None)
                    }
                };
                let failure = Failed {
                    message: panic,
                    message_json,
                    row,
                    letter,
                };
                self.panicked(state, backup, reply, failure, incarnation)
            }
        }
    }

    /// Whether the message was answered before: `Some(Some(reply))` for an idempotency key
    /// whose reply is kept, `Some(None)` for a timer cancelled since it was sent.
    fn answered_before(&self, via: &Via) -> Option<Option<Arc<str>>> {
        match via {
            Via::Call | Via::Letter(_) | Via::Rewrite { .. } => None,
            Via::Idempotent { key, row, .. } => {
                if row.as_ref().is_some_and(|row| self.is_cancelled(row)) {
                    return Some(None);
                }
                self.inner.lock().kept_reply(key).map(Some)
            }
            Via::Row(row) => self.is_cancelled(row).then_some(None),
        }
    }

    /// Whether `row` is one of this entity's own timers, cancelled since it was sent.
    fn is_cancelled(&self, row: &RowId) -> bool {
        let own = row.owner.kind == self.kind.name && row.owner.id == self.id;
        own && (self.inner.lock().is_cancelled(row.seq)
            || self.kind.core.dispatch.is_cancelled(row))
    }

    /// What a successful step writes besides its state: its timers, messages and effects,
    /// the row it applied, the timers it cancelled. `Err` if the step asked for something
    /// invalid; it then fails like a panic.
    fn extras(&self, work: Work, via: &Via) -> Result<Option<Box<Extras>>, String> {
        if let Some(detail) = work.invalid {
            return Err(format!("the step is invalid: {detail}"));
        }
        if work.is_empty() && matches!(via, Via::Call) {
            return Ok(None);
        }
        let core = &self.kind.core;
        if !work.rows.is_empty() && matches!(self.kind.mode, Mode::Ephemeral { .. }) {
            return Err(format!(
                "kind {:?} is ephemeral: its timers, messages and effects would outlive its \
                 state; register it with `register` or `register_journal` to use them",
                K::KIND
            ));
        }
        let owner = self.key();
        let mut extras = Extras::default();
        for row in work.rows {
            if let Some((kind, _)) = &row.target
                && !core.kind_names.contains(kind)
            {
                return Err(format!(
                    "the step is invalid: ctx.send to kind {kind:?}, which is not registered"
                ));
            }
            if let Some(name) = row.effect
                && !core.effects.contains_key(&(K::KIND, name))
            {
                return Err(format!(
                    "the step is invalid: effect {name:?} is not registered; add \
                     .register_effect::<…>() to the runtime's builder"
                ));
            }
            let target = match row.target {
                Some((kind, id)) => EntityKey::new(kind, id),
                None => owner.clone(),
            };
            extras.rows.push(Pending {
                owner: owner.clone(),
                seq: row.seq,
                due_ms: row.due_ms,
                class: row.class,
                target,
                body: Arc::from(row.body),
            });
        }
        extras.done.extend(
            work.cancels
                .iter()
                .map(|&seq| RowId::new(owner.clone(), seq)),
        );
        match via {
            Via::Row(row) => extras.done.push((**row).clone()),
            Via::Letter(seq) => extras.letter = Some(*seq),
            Via::Idempotent { key, row, .. } => {
                if let Some(row) = row {
                    extras.done.push((**row).clone());
                }
                // Filled in once the reply is encoded (see `keep_reply`).
                extras.reply = Some((
                    key.to_string(),
                    StoredReply {
                        reply: String::new(),
                        at_ms: crate::ctx::now_ms(),
                    },
                ));
            }
            Via::Call | Via::Rewrite { .. } => {}
        }
        if !work.cancels.is_empty() {
            let mut inner = self.inner.lock();
            let step = inner.seq + 1;
            inner
                .keys()
                .cancelled
                .extend(work.cancels.iter().map(|&timer| (step, timer)));
        }
        Ok((!extras.is_empty()).then(|| Box::new(extras)))
    }

    /// Encodes the reply to keep for an idempotent call, and caches it. `None` (nothing to
    /// keep) if the step has no idempotency key or the reply cannot be encoded.
    fn keep_reply(&self, extras: &mut Option<Box<Extras>>, value: &K::Reply) {
        let Some(extras) = extras else {
            return;
        };
        let Some((key, kept)) = &mut extras.reply else {
            return;
        };
        match serde_json::to_string(value) {
            Ok(json) => {
                let json: Arc<str> = Arc::from(json);
                kept.reply = json.to_string();
                Self::cache_reply(&mut self.inner.lock(), Box::from(key.as_str()), json);
            }
            Err(e) => {
                tracing::warn!(kind = K::KIND, id = %self.id, error = %e,
                    "the reply cannot be encoded, so it is not kept for its idempotency key");
                extras.reply = None;
            }
        }
    }

    /// Keeps a step of a `Journal` kind: submits its journal entry (and a snapshot when one
    /// is due), holding the reply until durable.
    fn journal(
        self: &Arc<Self>,
        state: &mut K,
        reply: ReplyTo<K>,
        (value, mut extras): (K::Reply, Option<Box<Extras>>),
        message_json: &Result<String, String>,
        (at_us, seed): (i64, Option<[u8; 32]>),
        incarnation: u32,
    ) -> bool {
        let Mode::Journal { snapshots } = &self.kind.mode else {
            return false;
        };
        let message = match message_json {
            Ok(message) => message,
            Err(detail) => {
                // Without the message, the step cannot be replayed: undo it by replaying.
                let detail = format!("the message cannot be journaled: {detail}");
                tracing::error!(kind = K::KIND, id = %self.id, %detail, "the step is discarded");
                let error = CallError::Unencodable {
                    key: self.key(),
                    detail,
                };
                self.respond_gated(reply, Err(error), incarnation);
                return false;
            }
        };
        let digest = journal::reply_digest(&value);
        self.keep_reply(&mut extras, &value);
        let due = {
            let inner = self.inner.lock();
            snapshots.as_ref().filter(|codec| {
                inner.outdated || inner.seq + 1 - inner.snapshot_step >= codec.policy.every
            })
        };
        let snapshot = due.and_then(|codec| match guard(|| (codec.encode)(state)) {
            Ok(Ok(json)) => Some((Arc::<str>::from(json), codec.policy)),
            Ok(Err(e)) => {
                tracing::warn!(kind = K::KIND, id = %self.id, error = %e,
                    "the state cannot be encoded for a snapshot; the journal keeps every step");
                None
            }
            Err(panic) => {
                tracing::warn!(kind = K::KIND, id = %self.id, %panic,
                    "encoding a snapshot panicked; the journal keeps every step");
                None
            }
        });
        // A watched entity's watchers get its new state once the step is durable.
        let core = &self.kind.core;
        if core.watchers.any() && core.watchers.is_watched(&self.key()) {
            let watched = match (&snapshot, snapshots) {
                (Some((json, _)), _) => Some(Arc::clone(json)),
                (None, Some(codec)) => guard(|| (codec.encode)(state))
                    .ok()
                    .and_then(Result::ok)
                    .map(Arc::<str>::from),
                (None, None) => None,
            };
            extras.get_or_insert_with(Box::default).watched = watched;
        }
        let mut inner = self.inner.lock();
        if self.incarnation.load(Ordering::SeqCst) != incarnation {
            drop(inner);
            return self.respond_lost(reply);
        }
        forget_failure(&mut inner.failures, digest_of(message));
        inner.seq += 1;
        let seq = inner.seq;
        // A new entity's first journaled step records what `init` was handed (its number may
        // be above 1 if a dead letter took a number before it).
        let init = inner.init.take().map(|init| *init);
        let entry = JournalEntry {
            step: seq,
            at_us,
            entry: Arc::from(journal::encode_entry(
                message,
                seed,
                init,
                digest,
                crate::migration::schema_version::<K>(),
            )),
        };
        let (snapshot, trim) = match snapshot {
            Some((json, policy)) => {
                inner.snapshot_step = seq;
                inner.outdated = false;
                self.kind.core.registry.account(inner.bytes, json.len());
                inner.bytes = json.len();
                (Some(json), policy.trim_through(seq))
            }
            None => (None, None),
        };
        let write = Write::Journal(Box::new(JournalStep {
            entry,
            snapshot,
            trim,
        }));
        let answer = Ok(Answer::Value(value));
        self.hold_and_submit(inner, seq, (reply, answer), (write, extras), incarnation);
        true
    }

    /// Keeps the step: encodes the state and submits it, holding the reply until durable.
    fn keep(
        self: &Arc<Self>,
        state: &mut K,
        reply: ReplyTo<K>,
        (value, mut extras): (K::Reply, Option<Box<Extras>>),
        message_json: &Result<String, String>,
        incarnation: u32,
    ) -> bool {
        self.keep_reply(&mut extras, &value);
        let Mode::Snapshot { encode, .. } = &self.kind.mode else {
            // Ephemeral: nothing to make durable, so the reply leaves at once, unless the
            // step made timers, messages or effects: they are durable even here.
            self.clear_failures(message_json);
            if extras.is_none() {
                reply.send(Ok(Answer::Value(value)), || self.key());
                return true;
            }
            let mut inner = self.inner.lock();
            if self.incarnation.load(Ordering::SeqCst) != incarnation {
                drop(inner);
                return self.respond_lost(reply);
            }
            inner.seq += 1;
            let seq = inner.seq;
            let step = (Write::Nothing, extras);
            let answer = Ok(Answer::Value(value));
            self.hold_and_submit(inner, seq, (reply, answer), step, incarnation);
            return true;
        };
        let json = match encoded(*encode, state) {
            Ok(json) => json,
            Err(detail) => return self.unencodable(state, reply, detail, incarnation),
        };
        let mut inner = self.inner.lock();
        if self.incarnation.load(Ordering::SeqCst) != incarnation {
            drop(inner);
            return self.respond_lost(reply);
        }
        if let Ok(message) = message_json {
            forget_failure(&mut inner.failures, digest_of(message));
        }
        if extras.is_none() && !inner.outdated && inner.last_json.as_deref() == Some(&*json) {
            // The step changed nothing, so nothing is written; but its reply must not overtake
            // a held one.
            self.hold_read(inner, reply, Ok(Answer::Value(value)));
            return true;
        }
        inner.seq += 1;
        let seq = inner.seq;
        self.kind.core.registry.account(inner.bytes, json.len());
        inner.bytes = json.len();
        inner.last_json = Some(Arc::clone(&json));
        inner.outdated = false;
        let step = (Write::State(json), extras);
        let answer = Ok(Answer::Value(value));
        self.hold_and_submit(inner, seq, (reply, answer), step, incarnation);
        true
    }

    /// Writes the state back at the kind's schema version if storage holds an older one;
    /// for a `Journal` kind with snapshots, as a snapshot with a mark entry (a step that
    /// changed nothing), also when `snapshot` asks for one and the journal goes beyond the
    /// latest snapshot. The answer, held until durable, says whether anything was written.
    fn rewrite(
        self: &Arc<Self>,
        state: &mut K,
        reply: ReplyTo<K>,
        snapshot: bool,
        incarnation: u32,
    ) -> bool {
        let (encode, snapshots) = match &self.kind.mode {
            Mode::Snapshot { encode, .. } => (*encode, None),
            Mode::Journal {
                snapshots: Some(codec),
            } => (codec.encode, Some(codec.policy)),
            Mode::Journal { snapshots: None } | Mode::Ephemeral { .. } => {
                return self.respond_outcome(reply, Ok(Answer::Rewrote(false)), incarnation);
            }
        };
        let needed = {
            let inner = self.inner.lock();
            inner.outdated || (snapshots.is_some() && snapshot && inner.seq > inner.snapshot_step)
        };
        if !needed {
            return self.respond_outcome(reply, Ok(Answer::Rewrote(false)), incarnation);
        }
        let json = match encoded(encode, state) {
            Ok(json) => json,
            Err(detail) => return self.unencodable(state, reply, detail, incarnation),
        };
        let mut inner = self.inner.lock();
        if self.incarnation.load(Ordering::SeqCst) != incarnation {
            drop(inner);
            return self.respond_lost(reply);
        }
        inner.seq += 1;
        let seq = inner.seq;
        self.kind.core.registry.account(inner.bytes, json.len());
        inner.bytes = json.len();
        inner.outdated = false;
        let write = match snapshots {
            None => {
                inner.last_json = Some(Arc::clone(&json));
                Write::State(json)
            }
            Some(policy) => {
                inner.snapshot_step = seq;
                let schema = crate::migration::schema_version::<K>();
                let entry = JournalEntry {
                    step: seq,
                    at_us: now_us(),
                    entry: Arc::from(journal::encode_mark(schema)),
                };
                Write::Journal(Box::new(JournalStep {
                    entry,
                    snapshot: Some(json),
                    trim: policy.trim_through(seq),
                }))
            }
        };
        let answer = Ok(Answer::Rewrote(true));
        self.hold_and_submit(inner, seq, (reply, answer), (write, None), incarnation);
        true
    }

    /// Answers a step that wrote nothing: at once if every earlier step is durable, else
    /// after them (a reply never overtakes a held one).
    fn hold_read(
        &self,
        mut inner: parking_lot::MutexGuard<'_, Inner<K>>,
        reply: ReplyTo<K>,
        result: Outcome<K>,
    ) {
        if inner.held.is_empty() && inner.seq == inner.durable {
            drop(inner);
            reply.send(self.released(result, true), || self.key());
        } else {
            let seq = inner.seq;
            inner.held.push_back(Held {
                seq,
                reply,
                result,
                read: true,
            });
        }
    }

    /// Holds the reply of step `seq` until it is durable, and sends the step's write to the
    /// commit pipeline.
    fn hold_and_submit(
        self: &Arc<Self>,
        mut inner: parking_lot::MutexGuard<'_, Inner<K>>,
        seq: u64,
        (reply, result): (ReplyTo<K>, Outcome<K>),
        (write, extras): (Write, Option<Box<Extras>>),
        incarnation: u32,
    ) {
        inner.held.push_back(Held {
            seq,
            reply,
            result,
            read: false,
        });
        drop(inner);
        self.kind.core.committer.submit(Step {
            owner: Arc::clone(self) as Arc<dyn Owner>,
            incarnation,
            seq,
            write,
            extras,
        });
    }

    /// The message ran to completion, so it no longer counts as failing.
    fn clear_failures(&self, message_json: &Result<String, String>) {
        if let Ok(message) = message_json {
            forget_failure(&mut self.inner.lock().failures, digest_of(message));
        }
    }

    fn unencodable(
        self: &Arc<Self>,
        state: &mut K,
        reply: ReplyTo<K>,
        detail: String,
        incarnation: u32,
    ) -> bool {
        tracing::error!(kind = K::KIND, id = %self.id, %detail, "the new state cannot be encoded; the step is discarded");
        let intact = match self.rollback(state, None) {
            Ok(intact) => intact,
            Err(error) => {
                reply.send(Err(error.widen()), || self.key());
                return false;
            }
        };
        let error = CallError::Unencodable {
            key: self.key(),
            detail,
        };
        self.respond_gated(reply, Err(error), incarnation) && intact
    }

    /// Handles a panic: rolls back, counts it, and dead-letters a message that keeps failing.
    fn panicked(
        self: &Arc<Self>,
        state: &mut K,
        backup: Option<K>,
        reply: ReplyTo<K>,
        failed: Failed,
        incarnation: u32,
    ) -> bool {
        let Failed {
            message,
            message_json,
            row,
            letter: retried,
        } = failed;
        self.kind.counters.restarts.fetch_add(1, Ordering::Relaxed);
        tracing::error!(kind = K::KIND, id = %self.id, panic = %message,
            "handler panicked; the entity goes on from its previous state");
        let intact = match self.rollback(state, backup) {
            Ok(intact) => intact,
            Err(error) => {
                reply.send(Err(error.widen()), || self.key());
                return false;
            }
        };
        let max = self.kind.core.config.max_attempts;
        let message_json =
            message_json.unwrap_or_else(|e| format!("<the message cannot be encoded: {e}>"));
        let mut inner = self.inner.lock();
        if self.incarnation.load(Ordering::SeqCst) != incarnation {
            drop(inner);
            return self.respond_lost(reply);
        }
        let attempts = record_failure(&mut inner.failures, digest_of(&message_json));
        if attempts < max {
            drop(inner);
            let error = CallError::Panicked {
                key: self.key(),
                message,
            };
            return self.respond_gated(reply, Err(error), incarnation) && intact;
        }
        forget_failure(&mut inner.failures, digest_of(&message_json));
        // The dead letter is a write of its own, with a version of its own: its reply waits
        // for exactly the batch that holds it, and the entity cannot be passivated before.
        inner.seq += 1;
        let seq = inner.seq;
        let key = self.key();
        inner.held.push_back(Held {
            seq,
            reply,
            result: Err(CallError::DeadLettered {
                key: key.clone(),
                attempts,
                message: message.clone(),
            }),
            read: false,
        });
        drop(inner);
        tracing::warn!(kind = K::KIND, id = %self.id, attempts, "message set aside as a dead letter");
        self.kind
            .counters
            .dead_letters
            .fetch_add(1, Ordering::Relaxed);
        let letter = DeadLetter {
            key,
            message: message_json,
            error: message,
            attempts,
            at_ms: crate::ctx::now_ms(),
        };
        // A timer or message that keeps failing is done with: its row goes with the letter.
        // So does the letter it came from, if it was a retried dead letter.
        let extras = Extras {
            done: row.map(|row| vec![*row]).unwrap_or_default(),
            letter: retried,
            ..Extras::default()
        };
        let extras = (!extras.is_empty()).then(|| Box::new(extras));
        self.kind.core.committer.submit(Step {
            owner: Arc::clone(self) as Arc<dyn Owner>,
            incarnation,
            seq,
            write: Write::DeadLetter(Box::new(letter)),
            extras,
        });
        intact
    }

    /// Restores the state from before the failed step. Returns whether the state in hand is
    /// that state; if not (`Journal` kinds), the entity rebuilds it by replay once its steps
    /// in flight are durable.
    ///
    /// A `Snapshot` kind's rollback is impossible only if the last state's JSON does not
    /// decode (its type does not round-trip through `serde_json`, such as an `f64` holding
    /// NaN). The state in hand is then abandoned: the caller gets the error, and the entity
    /// reloads from storage once its steps in flight are settled. Nothing else is failed:
    /// those steps are fine.
    fn rollback(&self, state: &mut K, backup: Option<K>) -> Result<bool, CallError> {
        if let Some(backup) = backup {
            *state = backup;
            return Ok(true);
        }
        let decode = match &self.kind.mode {
            Mode::Snapshot { decode, .. } => decode,
            Mode::Journal { .. } => return Ok(false),
            Mode::Ephemeral { .. } => return Ok(true),
        };
        let json = self.inner.lock().last_json.clone();
        let restored = match json {
            Some(json) => guard(|| decode(&json))
                .map_err(|p| format!("the decoder panicked: {p}"))
                .and_then(|r| r.map_err(|e| e.to_string())),
            None => self
                .fresh()
                .map(|(state, _)| state)
                .map_err(|e| e.to_string()),
        };
        match restored {
            Ok(previous) => {
                *state = previous;
                Ok(true)
            }
            Err(detail) => {
                tracing::error!(kind = K::KIND, id = %self.id, %detail,
                    "cannot restore the previous state; reloading from storage");
                Err(CallError::CorruptState {
                    key: self.key(),
                    detail: format!(
                        "the last state does not decode after encoding; its type must \
                         round-trip through serde_json: {detail}"
                    ),
                })
            }
        }
    }

    /// Answers now if nothing is held, or after the latest step is durable. (Replies of
    /// ephemeral kinds depend on nothing durable and always leave at once.)
    fn respond_gated(&self, reply: ReplyTo<K>, result: Reply<K>, incarnation: u32) -> bool {
        self.respond_outcome(reply, result.map(Answer::Value), incarnation)
    }

    /// [`respond_gated`](Self::respond_gated), for any answer.
    fn respond_outcome(&self, reply: ReplyTo<K>, result: Outcome<K>, incarnation: u32) -> bool {
        let inner = self.inner.lock();
        if !self.kind.is_durable() && inner.held.is_empty() {
            drop(inner);
            reply.send(self.released(result, true), || self.key());
            return true;
        }
        if self.incarnation.load(Ordering::SeqCst) != incarnation {
            drop(inner);
            return self.respond_lost(reply);
        }
        self.hold_read(inner, reply, result);
        true
    }

    /// Fails a reply whose step was computed from state a failed batch took back.
    fn respond_lost(&self, reply: ReplyTo<K>) -> bool {
        let lost = self.inner.lock().lost.as_deref().cloned();
        let failure = lost.unwrap_or(Failure::Storage(perennial_storage::Error::Backend(
            "the entity's pending steps were lost".into(),
        )));
        reply.send(Err(self.failure_error(failure).widen()), || self.key());
        false
    }

    fn failure_error(&self, failure: Failure) -> CallError {
        match failure {
            Failure::Storage(source) => CallError::Storage {
                key: self.key(),
                source,
            },
            Failure::Fenced => CallError::Fenced {
                key: self.key(),
                shard: self.shard,
            },
        }
    }
}

impl<K: Process> Owner for Cell<K> {
    fn key(&self) -> EntityKey {
        Cell::key(self)
    }

    fn schema(&self) -> u32 {
        crate::migration::schema_version::<K>()
    }

    fn shard(&self) -> ShardId {
        self.shard
    }

    fn epoch(&self) -> Epoch {
        Epoch(self.epoch.load(Ordering::SeqCst))
    }

    fn incarnation(&self) -> u32 {
        self.incarnation.load(Ordering::SeqCst)
    }

    fn durable(&self, incarnation: u32, seq: u64) {
        let mut inner = self.inner.lock();
        if self.incarnation.load(Ordering::SeqCst) != incarnation {
            return;
        }
        inner.durable = inner.durable.max(seq);
        let durable = inner.durable;
        if let Some(keys) = &mut inner.keys {
            keys.cancelled.retain(|(step, _)| *step > durable);
        }
        while let Some(held) = inner.held.pop_front() {
            if held.seq > inner.durable {
                inner.held.push_front(held);
                break;
            }
            let outcome = self.released(held.result, held.read);
            held.reply.send(outcome, || self.key());
        }
        if inner.held.is_empty() {
            // Free the queue's buffer: most entities are idle most of the time, and an empty
            // queue would otherwise keep room for several replies, per entity, forever.
            inner.held = VecDeque::new();
        }
    }

    fn failed(&self, incarnation: u32, failure: Failure) {
        let mut inner = self.inner.lock();
        if self.incarnation.load(Ordering::SeqCst) != incarnation {
            return;
        }
        let error = self.failure_error(failure.clone());
        if self.kind.is_durable() {
            // The in-memory state includes lost steps: start a new incarnation from storage.
            self.incarnation.fetch_add(1, Ordering::SeqCst);
            if matches!(inner.state, Slot::Ready(_)) {
                inner.state = Slot::Unloaded;
            }
            inner.seq = inner.durable;
            inner.last_json = None;
            inner.init = None;
            inner.lost = Some(Box::new(failure));
            // Replies kept by lost steps were never stored; cancels may not have happened.
            inner.keys = None;
        }
        for held in inner.held.drain(..) {
            held.reply.send(Err(error.clone().widen()), || self.key());
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

    fn try_passivate(&self, now_ms: u64, force: bool) -> Option<Passivated> {
        if !force && self.deadline_ms() > now_ms {
            return None;
        }
        let mut inner = self.inner.lock();
        let busy = inner.scheduled
            || !inner.mailbox.is_empty()
            || !inner.held.is_empty()
            || inner.seq != inner.durable;
        if busy {
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

/// A step that panicked (or asked for something invalid).
struct Failed {
    /// The panic's message.
    message: String,
    /// The message, to dead-letter it if it keeps failing.
    message_json: Result<String, String>,
    /// The pending row it came from, deleted with its dead letter.
    row: Option<Box<RowId>>,
    /// The dead letter it was a retry of, deleted with the new one.
    letter: Option<u64>,
}

/// A state loaded or created by an activation, with what the cell tracks about it.
struct Loaded<K> {
    state: K,
    /// `Snapshot` kinds: the state's JSON, to roll back to.
    json: Option<Arc<str>>,
    /// Whether storage holds it at an older schema version.
    outdated: bool,
    version: u64,
    /// `Journal` kinds: the step the latest snapshot covers.
    snapshot_step: u64,
    bytes: usize,
    /// `Journal` kinds, new entity: what `init` was handed, for the first step to record.
    init: Option<InitRecord>,
}

/// A `Snapshot` kind's stored record, migrated to the kind's schema version (see
/// [`crate::migration`]) and decoded: the state, its JSON at the kind's version, and whether
/// that differs from the stored version.
pub(crate) fn decode_record<K: Process>(
    key: &EntityKey,
    decode: fn(&str) -> serde_json::Result<K>,
    record: Record,
) -> Result<(K, String, bool), CallError> {
    let migrated = crate::migration::upgrade::<K>(key, record.schema, &record.state)?;
    let outdated = migrated.is_some();
    let json = migrated.unwrap_or(record.state);
    let state = guard(|| decode(&json))
        .map_err(|panic| format!("the decoder panicked: {panic}"))
        .and_then(|decoded| decoded.map_err(|e| e.to_string()));
    match state {
        Ok(state) => Ok((state, json, outdated)),
        Err(detail) if outdated => Err(CallError::MigrationFailed {
            key: key.clone(),
            from: record.schema,
            detail: format!("the migrated state does not decode: {detail}"),
        }),
        Err(detail) => Err(CallError::CorruptState {
            key: key.clone(),
            detail,
        }),
    }
}

/// The state's JSON, or why it cannot be encoded (the encoder failed or panicked).
fn encoded<K>(encode: fn(&K) -> serde_json::Result<String>, state: &K) -> Result<Arc<str>, String> {
    match guard(|| encode(state)) {
        Ok(Ok(json)) => Ok(Arc::from(json)),
        Ok(Err(e)) => Err(e.to_string()),
        Err(panic) => Err(format!("the encoder panicked: {panic}")),
    }
}

/// Runs user code, turning a panic into its message.
pub(crate) fn guard<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
        if let Some(s) = payload.downcast_ref::<&str>() {
            (*s).to_owned()
        } else if let Some(s) = payload.downcast_ref::<String>() {
            s.clone()
        } else {
            "a panic without a message".to_owned()
        }
    })
}

fn digest_of(message: &str) -> u64 {
    let mut h = DefaultHasher::new();
    message.hash(&mut h);
    h.finish()
}

/// Counts one more failure of the message with `digest`; returns the count.
fn record_failure(failures: &mut Vec<Attempts>, digest: u64) -> u32 {
    if let Some(a) = failures.iter_mut().find(|a| a.digest == digest) {
        a.count += 1;
        return a.count;
    }
    if failures.len() >= TRACKED_FAILURES {
        failures.remove(0);
    }
    failures.push(Attempts { digest, count: 1 });
    1
}

fn forget_failure(failures: &mut Vec<Attempts>, digest: u64) {
    failures.retain(|a| a.digest != digest);
}
