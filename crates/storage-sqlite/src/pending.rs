//! States committed to the log but not yet folded into the `entities` table.
//!
//! The writer appends each committed state to `state_log` (cheap: the log grows at its end)
//! and later folds the latest state of each entity into `entities`, a slice at a time, in key
//! order (cheap too: neighbouring keys share pages). Until an entity is folded, its latest
//! state is kept here, so loads never read the log back and the fold needs no query.
//!
//! Shared by the writer (which changes it only after a commit succeeded) and the readers.

use std::collections::{BTreeMap, HashSet};
use std::ops::Bound;
use std::sync::Arc;

use perennial_types::{EntityKey, ShardId};

/// The latest committed state of an entity that is still only in the log.
#[derive(Debug, Clone)]
pub(crate) struct PendingState {
    /// The row of `state_log` that holds it.
    pub(crate) seq: i64,
    pub(crate) shard: ShardId,
    pub(crate) version: u64,
    pub(crate) updated_at: i64,
    pub(crate) state: Arc<str>,
}

#[derive(Debug, Default)]
pub(crate) struct Pending {
    by_key: BTreeMap<EntityKey, PendingState>,
    /// The same entries by log row: the smallest is the oldest row still needed.
    by_seq: BTreeMap<i64, EntityKey>,
    /// The last key folded: the next fold continues after it.
    cursor: Option<EntityKey>,
}

impl Pending {
    pub(crate) fn get(&self, key: &EntityKey) -> Option<&PendingState> {
        self.by_key.get(key)
    }

    pub(crate) fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Records a committed state, replacing the entity's older one.
    pub(crate) fn insert(&mut self, key: EntityKey, state: PendingState) {
        self.by_seq.insert(state.seq, key.clone());
        if let Some(old) = self.by_key.insert(key, state) {
            self.by_seq.remove(&old.seq);
        }
    }

    /// Forgets an entity whose state at `seq` was folded, unless a newer state replaced it.
    pub(crate) fn folded(&mut self, key: &EntityKey, seq: i64) {
        if self.by_key.get(key).is_some_and(|p| p.seq == seq) {
            self.by_key.remove(key);
            self.by_seq.remove(&seq);
        }
    }

    /// Up to `budget` entries to fold next, in key order after the cursor (wrapping around),
    /// skipping the keys in `skip`. Moves the cursor past them.
    pub(crate) fn next_slice(
        &mut self,
        budget: usize,
        skip: &HashSet<&EntityKey>,
    ) -> Vec<(EntityKey, PendingState)> {
        let mut slice = Vec::with_capacity(budget.min(self.by_key.len()));
        // The keys after the cursor, then the keys up to it: each key once.
        let keys: Box<dyn Iterator<Item = (&EntityKey, &PendingState)>> = match &self.cursor {
            Some(cursor) => Box::new(
                self.by_key
                    .range((Bound::Excluded(cursor), Bound::Unbounded))
                    .chain(
                        self.by_key
                            .range((Bound::Unbounded, Bound::Included(cursor))),
                    ),
            ),
            None => Box::new(self.by_key.iter()),
        };
        for (key, state) in keys {
            if slice.len() >= budget {
                break;
            }
            if !skip.contains(key) {
                slice.push((key.clone(), state.clone()));
            }
        }
        if let Some((last, _)) = slice.last() {
            self.cursor = Some(last.clone());
        }
        slice
    }

    /// The oldest log row that will still be needed once `folded` entries are folded and the
    /// entries of `rewritten` keys are replaced by rows from `first_new` on. Every row before
    /// it can be deleted.
    pub(crate) fn low_watermark(
        &self,
        folded: &[(EntityKey, PendingState)],
        rewritten: &HashSet<&EntityKey>,
        first_new: Option<i64>,
    ) -> Option<i64> {
        let gone: HashSet<i64> = folded.iter().map(|(_, s)| s.seq).collect();
        let oldest_kept = self
            .by_seq
            .iter()
            .find(|(seq, key)| !gone.contains(seq) && !rewritten.contains(key))
            .map(|(seq, _)| *seq);
        match (oldest_kept, first_new) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}
