//! Entities paused by an operator: their calls are refused with [`CallError::Paused`], and
//! their timers, messages and effect results wait (durably, as pending rows) until they are
//! resumed, then arrive in their usual order.
//!
//! The set is stored (a [`PauseWrite`](perennial_storage::PauseWrite) in a batch) and loaded
//! when the runtime starts, so a pause survives restarts.
//!
//! [`CallError::Paused`]: crate::CallError::Paused

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use perennial_types::{EntityId, EntityKey};
use tokio::sync::Notify;

/// The paused entities of this node.
#[derive(Debug, Default)]
pub(crate) struct Pauses {
    /// How many are paused: the common case (none) costs one atomic load per message.
    count: AtomicUsize,
    keys: Mutex<HashSet<EntityKey>>,
    /// Notified whenever an entity is resumed.
    resumed: Notify,
}

impl Pauses {
    pub(crate) fn new(keys: Vec<EntityKey>) -> Self {
        let keys: HashSet<EntityKey> = keys.into_iter().collect();
        Self {
            count: AtomicUsize::new(keys.len()),
            keys: Mutex::new(keys),
            resumed: Notify::new(),
        }
    }

    pub(crate) fn is_paused(&self, kind: &str, id: &EntityId) -> bool {
        self.count.load(Ordering::Acquire) > 0
            && self.keys.lock().contains(&EntityKey::new(kind, id.clone()))
    }

    /// Marks `key` paused; returns whether it was not already.
    pub(crate) fn insert(&self, key: EntityKey) -> bool {
        let mut keys = self.keys.lock();
        let new = keys.insert(key);
        self.count.store(keys.len(), Ordering::Release);
        new
    }

    /// Marks `key` resumed; returns whether it was paused.
    pub(crate) fn remove(&self, key: &EntityKey) -> bool {
        let mut keys = self.keys.lock();
        let was = keys.remove(key);
        self.count.store(keys.len(), Ordering::Release);
        drop(keys);
        if was {
            self.resumed.notify_waiters();
        }
        was
    }

    /// Replaces the paused entities with those storage holds (in a cluster, another node
    /// may have paused or resumed entities of the shards this node just took).
    pub(crate) fn replace(&self, stored: Vec<EntityKey>) {
        let mut keys = self.keys.lock();
        let stored: HashSet<EntityKey> = stored.into_iter().collect();
        let resumed = keys.iter().any(|k| !stored.contains(k));
        *keys = stored;
        self.count.store(keys.len(), Ordering::Release);
        drop(keys);
        if resumed {
            self.resumed.notify_waiters();
        }
    }

    /// The paused entities, in key order.
    pub(crate) fn list(&self) -> Vec<EntityKey> {
        let mut keys: Vec<EntityKey> = self.keys.lock().iter().cloned().collect();
        keys.sort();
        keys
    }

    /// Waits while `key` is paused, or until `stop` says to give up (checked every second).
    pub(crate) async fn held(&self, key: &EntityKey, stop: impl Fn() -> bool) {
        loop {
            let resumed = self.resumed.notified();
            if !self.is_paused(&key.kind, &key.id) || stop() {
                return;
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), resumed).await;
        }
    }
}
