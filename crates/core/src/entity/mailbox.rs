//! How a message comes to an entity ([`Via`]), its mailbox, and the run loop that handles the
//! queued messages one at a time, on the caller's task when that needs no await.
//!
//! Before a round runs, the cell checks that this node serves the entity's shard under the
//! epoch its state was loaded under; if not, the messages are refused (not served) or the
//! state is loaded again (a newer epoch: another node may have written in between).

use std::any::Any;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use perennial_types::{EntityId, EntityKey, shard_of};

use super::reply::ReplyTo;
use super::{CACHED_REPLIES, Cell, Inner, Serving, Slot};
use crate::due::RowId;
use crate::guard::guard;
use crate::kind::KindRt;
use crate::registry::{Key, Resident};
use crate::{CallError, Overload, Process};

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
    /// No message: an operator deletes the entity (see `entity::delete`).
    Delete,
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

    /// A call from `caller` with idempotency key `key` (1 to 256 bytes): each caller's keys
    /// are their own, so one caller cannot get another's kept reply by sending their key.
    pub(crate) fn idempotent_for(
        key: &str,
        caller: Option<&crate::Caller>,
    ) -> Result<Self, CallError> {
        let via = Self::idempotent(key)?;
        Ok(match (via, caller) {
            (Self::Idempotent { checked, row, .. }, Some(caller)) => Self::Idempotent {
                key: Box::from(format!("caller\u{1f}{}\u{1f}{key}", caller.subject())),
                checked,
                row,
            },
            (via, _) => via,
        })
    }

    /// An ask's message, applied under a key made from its row's id: once, however often it
    /// is delivered, with its reply kept under that key. The row is not deleted: the asker's
    /// step that applies the answer does that. `fresh`: no kept reply can exist yet (see
    /// `Applying::Ask`), so storage is not asked for one.
    pub(crate) fn ask(row: &RowId, fresh: bool) -> Self {
        Self::Idempotent {
            key: Box::from(crate::courier::row_key(&row.owner, row.seq)),
            checked: fresh,
            row: None,
        }
    }

    /// An ask's answer applied under a key made from its row's id (not the target's key: the
    /// asker may have asked itself), and the row deleted.
    pub(crate) fn keyed_answer(row: RowId) -> Self {
        Self::Idempotent {
            key: Box::from(crate::courier::answer_key(&row.owner, row.seq)),
            checked: false,
            row: Some(Box::new(row)),
        }
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
pub(super) struct Envelope<K: Process> {
    /// `None` only for [`Via::Rewrite`] and [`Via::Delete`].
    pub(super) msg: Option<K::Msg>,
    pub(super) reply: ReplyTo<K>,
    pub(super) via: Via,
    /// Who sent it: only calls have a caller (see [`Ctx::caller`](crate::Ctx::caller)).
    pub(super) caller: Option<crate::Caller>,
}

/// Pushes a message into the entity's mailbox, activating the entity if it is not resident.
pub(super) fn deliver<K: Process>(
    kind: &Arc<KindRt<K>>,
    id: &EntityId,
    envelope: Envelope<K>,
) -> Result<(), CallError<K::Error>> {
    let shard = shard_of(K::KIND, id.as_str());
    let Some(epoch) = kind.engine.shards.epoch(shard) else {
        return Err(CallError::NotOwner { shard });
    };
    if kind.engine.pauses.is_paused(K::KIND, id) {
        return Err(CallError::Paused(EntityKey::new(K::KIND, id.clone())));
    }
    if kind.engine.quarantine.get(K::KIND, id).is_some() {
        return Err(CallError::Quarantined(EntityKey::new(K::KIND, id.clone())));
    }
    let key = Key {
        kind: kind.index,
        id: id.clone(),
    };
    let capacity = kind.engine.config.mailbox_capacity;
    let make = || -> Arc<dyn Resident> {
        kind.counters.resident.fetch_add(1, Ordering::Relaxed);
        Arc::new(Cell::new(Arc::clone(kind), id.clone(), shard, epoch))
    };
    let to_run = kind.engine.registry.with_entry(&key, make, |entry| {
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
    let runtime = cell.kind.engine.runtime.clone();
    crate::task::spawn_on(&runtime, run(cell));
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

    /// Refuses messages this node may not run: it does not serve their shard now.
    fn refuse(&self, envelopes: VecDeque<Envelope<K>>) {
        for envelope in envelopes {
            let refused = CallError::NotOwner { shard: self.shard };
            envelope.reply.send(Err(refused), || self.key());
        }
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
        let found = self.kind.engine.store.reply(&self.key(), &key).await;
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

    pub(super) fn cache_reply(inner: &mut Inner<K>, key: Box<str>, reply: Arc<str>) {
        let replies = &mut inner.keys().replies;
        if replies.len() >= CACHED_REPLIES {
            replies.clear();
        }
        replies.insert(key, reply);
    }
}
