//! States committed to the log but not yet folded into the `entities` table.
//!
//! The writer appends each committed state to `state_log` (cheap: the log grows at its end)
//! and later folds the latest state of each entity into `entities`, a slice at a time, in key
//! order (cheap too: neighbouring keys share pages). Until an entity is folded, its latest
//! state is kept here, so loads never read the log back and the fold needs no query.
//!
//! Shared by the writer (which changes it only after a commit succeeded) and the readers.

use std::collections::{BTreeSet, HashSet, VecDeque};
use std::ops::Bound;
use std::sync::Arc;

use hashbrown::HashMap;
use perennial_types::{EntityKey, ShardId};

/// The latest committed state of an entity that is still only in the log.
#[derive(Debug, Clone)]
pub(crate) struct PendingState {
    /// The row of `state_log` that holds it.
    pub(crate) seq: i64,
    pub(crate) shard: ShardId,
    pub(crate) version: u64,
    /// The state's schema version.
    pub(crate) schema: u32,
    pub(crate) updated_at: i64,
    pub(crate) state: Arc<str>,
}

#[derive(Debug, Default)]
pub(crate) struct Pending {
    /// The latest state of each entity not folded yet.
    states: HashMap<EntityKey, PendingState>,
    /// Every appended state's row and key, in row order. An entry is stale once its entity was
    /// folded or written again; stale entries are dropped when they reach the front.
    appended: VecDeque<(i64, EntityKey)>,
    /// The keys of `states`, in order: the fold sweeps through them. Kept up to date as keys
    /// come and go (not on every append), so a sweep never has to sort.
    order: BTreeSet<EntityKey>,
    /// The last key folded: the sweep continues after it.
    cursor: Option<EntityKey>,
}

impl Pending {
    pub(crate) fn get(&self, key: &EntityKey) -> Option<&PendingState> {
        self.states.get(key)
    }

    /// The ids and states of `kind`'s entities not folded yet.
    pub(crate) fn of_kind(&self, kind: &str) -> Vec<(String, PendingState)> {
        self.states
            .iter()
            .filter(|(key, _)| &*key.kind == kind)
            .map(|(key, state)| (key.id.as_str().to_owned(), state.clone()))
            .collect()
    }

    /// Up to `limit` entities of `kind` not folded yet whose id is after `after`, by id.
    pub(crate) fn of_kind_after(
        &self,
        kind: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Vec<(String, PendingState)> {
        let in_kind = self.order.iter().skip_while(|k| &*k.kind < kind);
        in_kind
            .take_while(|k| &*k.kind == kind)
            .filter(|k| after.is_none_or(|a| k.id.as_str() > a))
            .take(limit)
            .filter_map(|k| Some((k.id.as_str().to_owned(), self.states.get(k)?.clone())))
            .collect()
    }

    pub(crate) fn len(&self) -> usize {
        self.states.len()
    }

    /// Records a committed state, replacing the entity's older one.
    pub(crate) fn insert(&mut self, key: EntityKey, state: PendingState) {
        self.appended.push_back((state.seq, key.clone()));
        if self.states.insert(key.clone(), state).is_none() {
            self.order.insert(key);
        }
    }

    /// Forgets a deleted entity's state.
    pub(crate) fn remove(&mut self, key: &EntityKey) {
        if self.states.remove(key).is_some() {
            self.order.remove(key);
        }
    }

    /// Forgets an entity whose state at `seq` was folded, unless a newer state replaced it.
    pub(crate) fn folded(&mut self, key: &EntityKey, seq: i64) {
        if self.states.get(key).is_some_and(|p| p.seq == seq) {
            self.states.remove(key);
            self.order.remove(key);
        }
    }

    /// Up to `budget` entries to fold next, in key order after the last key folded (wrapping
    /// around), skipping the keys in `skip`.
    pub(crate) fn next_slice(
        &mut self,
        budget: usize,
        skip: &HashSet<&EntityKey>,
    ) -> Vec<(EntityKey, PendingState)> {
        let mut slice = Vec::with_capacity(budget.min(self.states.len()));
        // The keys after the cursor, then the keys up to it: each key at most once.
        let keys: Box<dyn Iterator<Item = &EntityKey>> = match &self.cursor {
            Some(cursor) => Box::new(
                self.order
                    .range((Bound::Excluded(cursor), Bound::Unbounded))
                    .chain(
                        self.order
                            .range((Bound::Unbounded, Bound::Included(cursor))),
                    ),
            ),
            None => Box::new(self.order.iter()),
        };
        let mut last = None;
        for key in keys {
            if slice.len() >= budget {
                break;
            }
            last = Some(key);
            if skip.contains(key) {
                continue;
            }
            if let Some(state) = self.states.get(key) {
                slice.push((key.clone(), state.clone()));
            }
        }
        if let Some(last) = last {
            self.cursor = Some(last.clone());
        }
        slice
    }

    /// The oldest log row still needed: every row before it can be deleted. `None` when no
    /// row is needed.
    pub(crate) fn low_watermark(&mut self) -> Option<i64> {
        while let Some((seq, key)) = self.appended.front() {
            if self.states.get(key).is_some_and(|s| s.seq == *seq) {
                return Some(*seq);
            }
            self.appended.pop_front();
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use perennial_types::EntityId;

    use super::*;

    fn key(id: &str) -> EntityKey {
        EntityKey::new("k", EntityId::new(id).unwrap())
    }

    fn state(seq: i64) -> PendingState {
        PendingState {
            seq,
            shard: ShardId(0),
            version: 1,
            schema: 1,
            updated_at: 0,
            state: Arc::from("{}"),
        }
    }

    #[test]
    fn slices_sweep_in_key_order_and_skip_what_they_are_told() {
        let mut p = Pending::default();
        for (i, id) in ["d", "a", "c", "b", "e"].iter().enumerate() {
            p.insert(key(id), state(i as i64 + 1));
        }
        let skip_b = key("b");
        let skip: HashSet<&EntityKey> = [&skip_b].into_iter().collect();
        let ids = |s: Vec<(EntityKey, PendingState)>| -> Vec<String> {
            s.into_iter().map(|(k, _)| k.id.to_string()).collect()
        };
        assert_eq!(ids(p.next_slice(2, &skip)), ["a", "c"]);
        assert_eq!(ids(p.next_slice(2, &HashSet::new())), ["d", "e"]);
        // The sweep wraps around; `b`, skipped before, is folded now.
        assert_eq!(ids(p.next_slice(2, &HashSet::new())), ["a", "b"]);
    }

    #[test]
    fn the_watermark_is_the_oldest_row_still_needed() {
        let mut p = Pending::default();
        p.insert(key("a"), state(1));
        p.insert(key("b"), state(2));
        p.insert(key("a"), state(3));
        // Row 1 is superseded by row 3; row 2 is still needed.
        assert_eq!(p.low_watermark(), Some(2));
        p.folded(&key("b"), 2);
        assert_eq!(p.low_watermark(), Some(3));
        // Folding an older state of `a` does not forget the newer one.
        p.folded(&key("a"), 1);
        assert_eq!(p.low_watermark(), Some(3));
        p.folded(&key("a"), 3);
        assert_eq!(p.low_watermark(), None);
        assert_eq!(p.len(), 0);
    }
}
