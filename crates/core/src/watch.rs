//! Watching an entity: each change of its state, once the step that made it is durable
//! (never before), for [`EntityRef::watch`](crate::EntityRef::watch) and the gateway's `watch`
//! stream.
//!
//! The committer publishes a watched entity's new state right after the batch holding it
//! committed. Entities nobody watches cost one atomic load per batch entry.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;
use perennial_types::EntityKey;
use tokio::sync::broadcast;

/// How many changes a slow watcher may fall behind before it skips to newer ones.
const BACKLOG: usize = 64;

/// One committed change of an entity's state.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StateChange {
    /// The entity's version (its step) after the change.
    pub version: u64,
    /// The new state, as JSON; `null` when the entity was deleted.
    pub state: Arc<str>,
    /// Whether the step deleted the entity ([`Ctx::delete`](crate::Ctx::delete)): its next
    /// message starts it afresh.
    pub deleted: bool,
}

/// The watched entities of a runtime and their channels.
#[derive(Debug, Default)]
pub(crate) struct Watchers {
    /// How many entities have a channel: none is the common case.
    count: AtomicUsize,
    channels: Mutex<HashMap<EntityKey, broadcast::Sender<StateChange>>>,
}

impl Watchers {
    /// Whether anything may watch an entity now (cheap; [`is_watched`](Self::is_watched)
    /// says which).
    pub(crate) fn any(&self) -> bool {
        self.count.load(Ordering::Acquire) > 0
    }

    /// Whether someone watches `key`; forgets its channel once no one does.
    pub(crate) fn is_watched(&self, key: &EntityKey) -> bool {
        if !self.any() {
            return false;
        }
        let mut channels = self.channels.lock();
        match channels.get(key) {
            Some(tx) if tx.receiver_count() > 0 => true,
            Some(_) => {
                channels.remove(key);
                self.count.store(channels.len(), Ordering::Release);
                false
            }
            None => false,
        }
    }

    pub(crate) fn subscribe(&self, key: EntityKey) -> broadcast::Receiver<StateChange> {
        let mut channels = self.channels.lock();
        channels.retain(|_, tx| tx.receiver_count() > 0);
        let rx = channels
            .entry(key)
            .or_insert_with(|| broadcast::channel(BACKLOG).0)
            .subscribe();
        self.count.store(channels.len(), Ordering::Release);
        rx
    }

    /// Ends the watches of the entities of `shards` (handed off: the new owner publishes
    /// their changes; watchers reconnect to it).
    pub(crate) fn close_shards(
        &self,
        shards: &std::collections::HashSet<perennial_types::ShardId>,
    ) {
        let mut channels = self.channels.lock();
        channels.retain(|key, _| {
            !shards.contains(&perennial_types::shard_of(&key.kind, key.id.as_str()))
        });
        self.count.store(channels.len(), Ordering::Release);
    }

    /// Sends a committed change to the entity's watchers; forgets the channel once no one
    /// listens.
    pub(crate) fn publish(&self, key: &EntityKey, change: StateChange) {
        let mut channels = self.channels.lock();
        if let Some(tx) = channels.get(key)
            && tx.send(change).is_err()
        {
            channels.remove(key);
            self.count.store(channels.len(), Ordering::Release);
        }
    }
}

/// A stream of an entity's committed state changes; see [`EntityRef::watch`](crate::EntityRef::watch).
#[derive(Debug)]
pub struct Watch {
    rx: broadcast::Receiver<StateChange>,
    shows_state: bool,
}

impl Watch {
    pub(crate) fn new(rx: broadcast::Receiver<StateChange>, shows_state: bool) -> Self {
        Self { rx, shows_state }
    }

    /// Whether the kind lets clients see its state in a watch stream
    /// ([`Process::WATCH_SHOWS_STATE`](crate::Process::WATCH_SHOWS_STATE)); the changes carry
    /// it either way.
    pub fn shows_state(&self) -> bool {
        self.shows_state
    }

    /// The next committed change, or `None` once the runtime is gone. A watcher that falls
    /// more than 64 changes behind skips to the oldest change still kept: states are whole,
    /// so the latest one is always right.
    pub async fn next(&mut self) -> Option<StateChange> {
        loop {
            match self.rx.recv().await {
                Ok(change) => return Some(change),
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}
