//! The registry of resident entities: lookup-or-create, least-recently-used order, and
//! passivation by idleness or by memory limits.
//!
//! The table is split into [`SHARDS`] independently locked parts. Lookup-or-create runs under
//! one part's lock, and so does removal, so a message is pushed into a mailbox either before
//! the entity is passivated (which then waits, as the entity is no longer idle) or after it is
//! gone (and a new activation is created). This is what makes "a message racing passivation is
//! never lost" hold without retries.
//!
//! **Architecture Invariant:** at most one live activation per entity per node. Lock order is
//! registry part, then entity.

use std::any::Any;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;
use perennial_types::EntityId;
use slab::Slab;

/// How many independently locked parts the table has.
const SHARDS: usize = 64;
/// Marks the end of an LRU list.
const NIL: u32 = u32::MAX;
/// How many entities an over-limit insert tries to evict from its own part at once.
const EVICT_PER_INSERT: usize = 4;

/// An entity's key in the registry: its kind's index and its id.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    pub(crate) kind: u16,
    pub(crate) id: EntityId,
}

/// A resident entity, as the registry sees it.
pub(crate) trait Resident: Any + Send + Sync {
    /// The entity's key in the registry.
    fn key(&self) -> Key;
    /// The entity's shard.
    fn shard(&self) -> perennial_types::ShardId;
    /// The entity's idle deadline, in milliseconds of the runtime's clock.
    fn deadline_ms(&self) -> u64;
    /// Passivates the entity if it is idle with every step durable and, unless `force`, its
    /// deadline has passed. Called under the registry's lock; the returned hook runs the
    /// kind's `on_passivate` and must be called after the lock is released.
    fn try_passivate(&self, now_ms: u64, force: bool) -> Option<Passivated>;
    /// Whether the entity has messages queued or steps not yet durable.
    fn is_busy(&self) -> bool;
}

/// What passivating one entity left to do, outside the registry's lock.
pub(crate) struct Passivated {
    /// The bytes the entity was accounted for.
    pub(crate) bytes: usize,
    /// Runs `on_passivate` and drops the state.
    pub(crate) hook: Box<dyn FnOnce() + Send>,
}

/// Limits on what stays resident.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) max_entities: usize,
    pub(crate) max_bytes: usize,
}

pub(crate) struct Registry {
    parts: Box<[Mutex<Part>]>,
    hasher: hashbrown::DefaultHashBuilder,
    resident: AtomicUsize,
    bytes: AtomicUsize,
    limits: Limits,
    /// Where the next round-robin eviction starts.
    cursor: AtomicUsize,
    /// Notified when the node is over its limits and what an insert could evict did not
    /// bring it under them: the sweeper then evicts at its next chance.
    pub(crate) pressed: tokio::sync::Notify,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("resident", &self.resident)
            .field("bytes", &self.bytes)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// One part of the table: a map to slots, and the slots in least-recently-used order.
#[derive(Default)]
struct Part {
    index: hashbrown::HashMap<Key, u32>,
    nodes: Slab<Node>,
    /// The most recently used slot.
    head: Option<u32>,
    /// The least recently used slot.
    tail: Option<u32>,
}

/// A resident entity and its neighbours in LRU order. Small on purpose: one per entity.
struct Node {
    entry: Arc<dyn Resident>,
    prev: u32,
    next: u32,
}

impl Registry {
    pub(crate) fn new(limits: Limits) -> Self {
        Self {
            parts: (0..SHARDS).map(|_| Mutex::new(Part::default())).collect(),
            hasher: hashbrown::DefaultHashBuilder::default(),
            resident: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
            limits,
            cursor: AtomicUsize::new(0),
            pressed: tokio::sync::Notify::new(),
        }
    }

    fn part_of(&self, key: &Key) -> usize {
        (self.hasher.hash_one(key) as usize) % SHARDS
    }

    /// Finds the entity or creates it with `make`, marks it most recently used, and runs `f`
    /// on it, all under the part's lock. Then, if the node is over its limits, evicts a few
    /// idle entities of the same part and runs their hooks.
    pub(crate) fn with_entry<R>(
        &self,
        key: &Key,
        make: impl FnOnce() -> Arc<dyn Resident>,
        f: impl FnOnce(&Arc<dyn Resident>) -> R,
    ) -> R {
        let p = self.part_of(key);
        let mut part = self.parts[p].lock();
        let (slot, created) = match part.index.get(key) {
            Some(&slot) => (slot, false),
            None => {
                let slot = part.nodes.insert(Node {
                    entry: make(),
                    prev: NIL,
                    next: NIL,
                });
                // Slots index a slab of at most `u32::MAX` entities per part.
                let slot = u32::try_from(slot).unwrap_or(NIL);
                part.index.insert(key.clone(), slot);
                part.push_front(slot);
                self.resident.fetch_add(1, Ordering::Relaxed);
                (slot, true)
            }
        };
        if !created {
            part.unlink(slot);
            part.push_front(slot);
        }
        let result = f(&part.nodes[slot as usize].entry);
        let mut evicted = Vec::new();
        if created && self.over_limits() {
            self.evict_from(&mut part, EVICT_PER_INSERT, &mut evicted);
        }
        drop(part);
        let short = EVICT_PER_INSERT.saturating_sub(evicted.len());
        run_hooks(evicted);
        if created && short > 0 && self.over_limits() {
            // This part had too little to give: take from the others, one lock at a time.
            self.evict_round_robin(short);
            if self.over_limits() {
                self.pressed.notify_one();
            }
        }
        result
    }

    /// Evicts up to `max` idle entities from the parts after the cursor, while over limits.
    fn evict_round_robin(&self, max: usize) {
        let mut evicted = 0;
        for _ in 0..SHARDS {
            if evicted >= max || !self.over_limits() {
                break;
            }
            let p = self.cursor.fetch_add(1, Ordering::Relaxed) % SHARDS;
            let mut hooks = Vec::new();
            self.evict_from(&mut self.parts[p].lock(), max - evicted, &mut hooks);
            evicted += hooks.len();
            run_hooks(hooks);
        }
    }

    /// Removes `entry` if it is still the one registered under `key`, and runs `then` on it
    /// under the part's lock.
    pub(crate) fn remove_exact(&self, key: &Key, entry: &Arc<dyn Resident>, then: impl FnOnce()) {
        let mut part = self.parts[self.part_of(key)].lock();
        if let Some(&slot) = part.index.get(key)
            && Arc::ptr_eq(&part.nodes[slot as usize].entry, entry)
        {
            part.remove(slot);
            self.resident.fetch_sub(1, Ordering::Relaxed);
        }
        then();
    }

    /// Adds (or with a negative delta, removes) resident bytes.
    pub(crate) fn account(&self, old: usize, new: usize) {
        if new >= old {
            let before = self.bytes.fetch_add(new - old, Ordering::Relaxed);
            if before <= self.limits.max_bytes && before + (new - old) > self.limits.max_bytes {
                self.pressed.notify_one();
            }
        } else {
            self.bytes.fetch_sub(old - new, Ordering::Relaxed);
        }
    }

    pub(crate) fn resident(&self) -> usize {
        self.resident.load(Ordering::Relaxed)
    }

    pub(crate) fn resident_bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    fn over_limits(&self) -> bool {
        self.resident() > self.limits.max_entities || self.resident_bytes() > self.limits.max_bytes
    }

    /// Passivates every idle entity whose deadline has passed, then evicts least recently
    /// used idle entities while the node is over its limits. Returns when the next sweep is
    /// due: the earliest deadline of the entities left (`u64::MAX` if none is), or `now_ms`
    /// while the node is still over its limits.
    pub(crate) fn sweep(&self, now_ms: u64) -> u64 {
        let mut next_ms = u64::MAX;
        for part in self.parts.iter() {
            let mut hooks = Vec::new();
            {
                let mut part = part.lock();
                let mut due: Vec<u32> = Vec::new();
                for (slot, n) in part.nodes.iter() {
                    let deadline = n.entry.deadline_ms();
                    if deadline <= now_ms {
                        due.push(slot as u32);
                    } else {
                        next_ms = next_ms.min(deadline);
                    }
                }
                for slot in due {
                    if let Some(p) = part.nodes[slot as usize].entry.try_passivate(now_ms, false) {
                        part.remove(slot);
                        self.forget(&p);
                        hooks.push(p);
                    } else {
                        // Busy now: its deadline moves when its step ends.
                        next_ms = now_ms;
                    }
                }
            }
            run_hooks(hooks);
        }
        // Round-robin over the parts, least recently used first in each, until under the
        // limits or nothing more can go.
        while self.over_limits() {
            let mut progress = false;
            for part in self.parts.iter() {
                let mut hooks = Vec::new();
                self.evict_from(&mut part.lock(), 16, &mut hooks);
                progress |= !hooks.is_empty();
                run_hooks(hooks);
                if !self.over_limits() {
                    break;
                }
            }
            if !progress {
                return now_ms;
            }
        }
        next_ms
    }

    /// Passivates every idle entity now, whatever its deadline. Returns how many remain.
    pub(crate) fn passivate_all(&self) -> usize {
        self.passivate_where(|_: &dyn Resident| true);
        self.resident()
    }

    /// Whether the entity is resident.
    pub(crate) fn contains(&self, key: &Key) -> bool {
        self.parts[self.part_of(key)].lock().index.contains_key(key)
    }

    /// The ids of the resident entities of kind `kind`, in no order.
    pub(crate) fn ids_of(&self, kind: u16) -> Vec<EntityId> {
        let mut ids = Vec::new();
        for part in self.parts.iter() {
            let part = part.lock();
            ids.extend(
                part.index
                    .keys()
                    .filter(|k| k.kind == kind)
                    .map(|k| k.id.clone()),
            );
        }
        ids
    }

    /// Whether the entity is resident and busy (see [`Resident::is_busy`]).
    pub(crate) fn is_busy(&self, key: &Key) -> bool {
        let part = self.parts[self.part_of(key)].lock();
        part.index
            .get(key)
            .is_some_and(|&slot| part.nodes[slot as usize].entry.is_busy())
    }

    /// Passivates one entity now, if it is idle with every step durable: `None` if it is not
    /// resident, `Some(false)` if it is busy.
    pub(crate) fn passivate(&self, key: &Key) -> Option<bool> {
        let passivated = {
            let mut part = self.parts[self.part_of(key)].lock();
            let slot = *part.index.get(key)?;
            let passivated = part.nodes[slot as usize]
                .entry
                .try_passivate(u64::MAX, true);
            if let Some(p) = &passivated {
                part.remove(slot);
                self.forget(p);
            }
            passivated
        };
        let done = passivated.is_some();
        run_hooks(passivated.into_iter().collect());
        Some(done)
    }

    /// Passivates every idle entity that `which` selects, whatever its deadline. Returns how
    /// many it passivated and how many of those selected stay (busy).
    pub(crate) fn passivate_where(&self, which: impl Fn(&dyn Resident) -> bool) -> (usize, usize) {
        let (mut passivated, mut busy) = (0, 0);
        for part in self.parts.iter() {
            let mut hooks = Vec::new();
            {
                let mut part = part.lock();
                let slots: Vec<u32> = part
                    .nodes
                    .iter()
                    .filter(|(_, n)| which(&*n.entry))
                    .map(|(slot, _)| slot as u32)
                    .collect();
                for slot in slots {
                    if let Some(p) = part.nodes[slot as usize]
                        .entry
                        .try_passivate(u64::MAX, true)
                    {
                        part.remove(slot);
                        self.forget(&p);
                        hooks.push(p);
                    } else {
                        busy += 1;
                    }
                }
            }
            passivated += hooks.len();
            run_hooks(hooks);
        }
        (passivated, busy)
    }

    /// Evicts up to `max` idle entities from the cold end of one part, while over limits.
    fn evict_from(&self, part: &mut Part, max: usize, hooks: &mut Vec<Passivated>) {
        let mut slot = part.tail.unwrap_or(NIL);
        let mut looked = 0;
        while slot != NIL && hooks.len() < max && looked < max * 4 && self.over_limits() {
            let prev = part.nodes[slot as usize].prev;
            if let Some(p) = part.nodes[slot as usize]
                .entry
                .try_passivate(u64::MAX, true)
            {
                part.remove(slot);
                self.forget(&p);
                hooks.push(p);
            }
            looked += 1;
            slot = prev;
        }
    }

    fn forget(&self, p: &Passivated) {
        self.resident.fetch_sub(1, Ordering::Relaxed);
        self.bytes.fetch_sub(p.bytes, Ordering::Relaxed);
    }
}

fn run_hooks(hooks: Vec<Passivated>) {
    for p in hooks {
        (p.hook)();
    }
}

impl Part {
    fn push_front(&mut self, slot: u32) {
        let old = self.head.unwrap_or(NIL);
        self.nodes[slot as usize].prev = NIL;
        self.nodes[slot as usize].next = old;
        if old != NIL {
            self.nodes[old as usize].prev = slot;
        } else {
            self.tail = Some(slot);
        }
        self.head = Some(slot);
    }

    fn unlink(&mut self, slot: u32) {
        let (prev, next) = (
            self.nodes[slot as usize].prev,
            self.nodes[slot as usize].next,
        );
        if prev != NIL {
            self.nodes[prev as usize].next = next;
        } else {
            self.head = (next != NIL).then_some(next);
        }
        if next != NIL {
            self.nodes[next as usize].prev = prev;
        } else {
            self.tail = (prev != NIL).then_some(prev);
        }
    }

    fn remove(&mut self, slot: u32) {
        self.unlink(slot);
        let node = self.nodes.remove(slot as usize);
        self.index.remove(&node.entry.key());
    }
}
