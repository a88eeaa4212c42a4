//! Entities whose stored bytes cannot be read back: a state that no longer decodes, a
//! journal whose replay diverges. They are quarantined when an activation finds this: their
//! calls fail at once with [`CallError::Quarantined`] instead of reading the same bytes
//! again, their timers, messages and effect results wait (as pending rows, in storage), and
//! nothing writes to them, so their bytes stay as they were until an operator fixes them and
//! releases the entity ([`Admin::release`](crate::Admin::release)).
//!
//! The set lives in memory only: the stored bytes are the evidence, so after a restart the
//! first activation finds them again.
//!
//! [`CallError::Quarantined`]: crate::CallError::Quarantined

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use perennial_types::{EntityId, EntityKey};
use tokio::sync::Notify;

/// A quarantined entity: why, and since when.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Quarantined {
    /// The entity.
    pub key: EntityKey,
    /// The code of the error its activation met: `corrupt_state` or `replay_diverged`.
    pub code: &'static str,
    /// That error, in words (the decoder's message, the step where replay diverged).
    pub reason: String,
    /// When it was quarantined, in milliseconds since the Unix epoch.
    pub since_ms: i64,
}

/// The quarantined entities of this node.
#[derive(Debug, Default)]
pub(crate) struct Quarantine {
    /// How many are quarantined: the common case (none) costs one atomic load per message.
    count: AtomicUsize,
    entries: Mutex<HashMap<EntityKey, Quarantined>>,
    /// Notified whenever an entity is released.
    released: Notify,
}

impl Quarantine {
    /// Why `kind`/`id` is quarantined, if it is.
    pub(crate) fn get(&self, kind: &str, id: &EntityId) -> Option<Quarantined> {
        if self.count.load(Ordering::Acquire) == 0 {
            return None;
        }
        let key = EntityKey::new(kind, id.clone());
        self.entries.lock().get(&key).cloned()
    }

    /// Quarantines `key`; a second time changes nothing.
    pub(crate) fn insert(&self, key: EntityKey, code: &'static str, reason: String) {
        let mut entries = self.entries.lock();
        if entries.contains_key(&key) {
            return;
        }
        tracing::error!(entity = %key, code, %reason,
            "entity quarantined: its stored bytes are kept as they are until it is released");
        let since_ms = crate::clock::now_ms();
        entries.insert(
            key.clone(),
            Quarantined {
                key,
                code,
                reason,
                since_ms,
            },
        );
        self.count.store(entries.len(), Ordering::Release);
    }

    /// Releases `key`; returns whether it was quarantined.
    pub(crate) fn remove(&self, key: &EntityKey) -> bool {
        let mut entries = self.entries.lock();
        let was = entries.remove(key).is_some();
        self.count.store(entries.len(), Ordering::Release);
        drop(entries);
        if was {
            self.released.notify_waiters();
        }
        was
    }

    /// Forgets the entities of `shards`: this node no longer serves them.
    pub(crate) fn forget_shards(
        &self,
        shards: &std::collections::HashSet<perennial_types::ShardId>,
    ) {
        let mut entries = self.entries.lock();
        entries.retain(|key, _| {
            !shards.contains(&perennial_types::shard_of(&key.kind, key.id.as_str()))
        });
        self.count.store(entries.len(), Ordering::Release);
        drop(entries);
        // Rows held for them give up waiting (their shard's new owner delivers them).
        self.released.notify_waiters();
    }

    /// The quarantined entities, in key order.
    pub(crate) fn list(&self) -> Vec<Quarantined> {
        let mut list: Vec<Quarantined> = self.entries.lock().values().cloned().collect();
        list.sort_by(|a, b| a.key.cmp(&b.key));
        list
    }

    /// How many entities are quarantined.
    pub(crate) fn len(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Waits while `key` is quarantined, or until `stop` says to give up (checked every
    /// second).
    pub(crate) async fn held(&self, key: &EntityKey, stop: impl Fn() -> bool) {
        loop {
            let released = self.released.notified();
            if self.get(&key.kind, &key.id).is_none() || stop() {
                return;
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), released).await;
        }
    }
}
