//! The rows due soon, held in memory between the committer, which adds the rows that
//! committed batches create and drops those they delete, and the dispatcher (`dispatch`),
//! which takes the due ones and delivers them.
//!
//! Only the rows due within [`LOOKAHEAD`] of now are kept, at most [`MAX_IN_MEMORY`] of them;
//! the rest wait in storage until a scan reads them. Within one node, each row has at most one
//! delivery in flight (`known`), and the messages from one entity to another go one at a time,
//! in the order sent (`lanes`).

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::time::Duration;

use parking_lot::Mutex;
use perennial_storage::{Pending, PendingClass};
use perennial_types::{EntityKey, ShardId, shard_of};
use tokio::sync::Notify;

/// Rows due within this much of now are kept in memory.
pub(crate) const LOOKAHEAD: Duration = Duration::from_secs(10);
/// At most this many rows are kept in memory waiting for their time.
pub(crate) const MAX_IN_MEMORY: usize = 100_000;

/// A pending row's identity: its owner and number.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct RowId {
    pub(crate) owner: EntityKey,
    pub(crate) seq: u64,
}

impl RowId {
    pub(crate) fn new(owner: EntityKey, seq: u64) -> Self {
        Self { owner, seq }
    }

    pub(crate) fn of(row: &Pending) -> Self {
        Self::new(row.owner.clone(), row.seq)
    }
}

/// Whether rows of `class` go to another entity as soon as possible, in a lane: messages and
/// asks (an ask holds its lane until its answer is applied, so what the asker sends the same
/// target after it is applied after it).
fn in_lane(class: PendingClass) -> bool {
    matches!(class, PendingClass::Message | PendingClass::Ask)
}

/// A messages lane: the rows from one entity to another, applied one at a time, in order.
type Pair = (EntityKey, EntityKey);

#[derive(Default)]
struct Lane {
    busy: bool,
    rows: std::collections::BTreeMap<u64, Pending>,
}

#[derive(Default)]
struct State {
    /// Timers and effects waiting for their time, in due order.
    waiting: BTreeSet<(i64, RowId)>,
    rows: HashMap<RowId, Pending>,
    /// Messages, by sender and target.
    lanes: HashMap<Pair, Lane>,
    /// Lanes with a row to deliver and none in flight.
    ready: VecDeque<Pair>,
    /// Rows being delivered; `true` once the row was deleted (a cancelled timer).
    inflight: HashMap<RowId, bool>,
    /// Every row in `waiting`, `lanes` or `inflight`.
    known: HashSet<RowId>,
    /// Asks added by committed batches and not delivered yet (see [`DueRows::take_fresh`]).
    fresh: HashSet<RowId>,
    /// Rows due at or before this are all in memory (unless `partial`).
    horizon_ms: i64,
    /// The last scan stopped at its limit, or a committed row was left in storage.
    partial: bool,
    /// Rows that finished while a scan was reading: its result may still hold them.
    finished_during_scan: Option<HashSet<RowId>>,
}

/// The rows due soon, in memory: the committer adds and removes rows, the dispatcher task
/// delivers them.
#[derive(Default)]
pub(crate) struct DueRows {
    state: Mutex<State>,
    wake: Notify,
    /// Rows fired (applied, refused or dead-lettered), for the statistics.
    fired: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for DueRows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.state.lock();
        f.debug_struct("DueRows")
            .field("in_memory", &state.known.len())
            .field("inflight", &state.inflight.len())
            .finish_non_exhaustive()
    }
}

impl DueRows {
    /// A batch made `created` durable and deleted `deleted`.
    pub(crate) fn committed(
        &self,
        created: impl Iterator<Item = Pending>,
        deleted: impl Iterator<Item = RowId>,
    ) {
        let mut state = self.state.lock();
        let mut wake = false;
        for row in created {
            let soon = in_lane(row.class) || row.due_ms <= state.horizon_ms;
            if soon && state.known.len() < MAX_IN_MEMORY {
                let ask = (row.class == PendingClass::Ask).then(|| RowId::of(&row));
                let added = state.add(row);
                if let Some(id) = ask.filter(|_| added) {
                    state.fresh.insert(id);
                }
                wake |= added;
            } else if soon {
                state.partial = true;
            }
        }
        for row in deleted {
            state.forget(&row);
        }
        drop(state);
        if wake {
            self.wake.notify_one();
        }
    }

    /// Whether `row` is an ask that came from a batch this process committed and was never
    /// delivered since (not one read back from storage, whose earlier deliveries this process
    /// cannot know): its first delivery on a single node can skip looking for a kept reply.
    /// Asked once per row: later calls answer `false`.
    pub(crate) fn take_fresh(&self, row: &RowId) -> bool {
        self.state.lock().fresh.remove(row)
    }

    /// Whether `row` was deleted while its delivery was in flight (a cancelled timer).
    pub(crate) fn is_cancelled(&self, row: &RowId) -> bool {
        self.state
            .lock()
            .inflight
            .get(row)
            .copied()
            .unwrap_or(false)
    }

    /// Drops the rows owned by entities of `shards` (handed off: their new owner delivers
    /// them). Rows in flight finish as they do.
    pub(crate) fn forget_shards(&self, shards: &HashSet<ShardId>) {
        let mut state = self.state.lock();
        let owned = |key: &EntityKey| shards.contains(&shard_of(&key.kind, key.id.as_str()));
        let gone: Vec<RowId> = state
            .known
            .iter()
            .filter(|id| owned(&id.owner) && !state.inflight.contains_key(*id))
            .cloned()
            .collect();
        for id in &gone {
            state.forget(id);
        }
        state
            .lanes
            .retain(|(owner, _), lane| lane.busy || !lane.rows.is_empty() || !owned(owner));
    }

    /// Drops the rows that die with deleted entities (their timers, effects, messages to
    /// themselves and asks: storage deleted them with the entity). A row of theirs in flight
    /// is marked deleted, like a cancelled timer, so that no new life applies it and an ask
    /// goes no further; a message to another entity in flight is delivered all the same (the
    /// mark is only read for an entity's own rows and for asks).
    pub(crate) fn forget_to_self(&self, owners: &[EntityKey]) {
        if owners.is_empty() {
            return;
        }
        let mut state = self.state.lock();
        let to_self = |state: &State, id: &RowId| {
            state.inflight.contains_key(id)
                || state.rows.get(id).is_some_and(Pending::dies_with_owner)
                || state.lanes.iter().any(|((owner, _), lane)| {
                    *owner == id.owner
                        && lane.rows.get(&id.seq).is_some_and(Pending::dies_with_owner)
                })
        };
        let gone: Vec<RowId> = state
            .known
            .iter()
            .filter(|id| owners.contains(&id.owner) && to_self(&state, id))
            .cloned()
            .collect();
        for id in &gone {
            state.forget(id);
        }
    }

    /// Takes the rows to deliver now; returns them and when the next one is due.
    pub(crate) fn take_due(&self, now_ms: i64) -> (Vec<Pending>, Option<i64>) {
        self.state.lock().take_due(now_ms)
    }

    /// A delivery ended: the row leaves memory, and its lane may go on.
    pub(crate) fn finish(&self, row: &Pending) {
        self.state.lock().finish(row);
    }

    /// Wakes the dispatcher task: rows may be due.
    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }

    /// Completes when [`wake`](Self::wake) is called.
    pub(crate) fn woken(&self) -> tokio::sync::futures::Notified<'_> {
        self.wake.notified()
    }

    /// Counts a row fired (applied, refused or dead-lettered).
    pub(crate) fn count_fired(&self) {
        self.fired
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// A scan of the store for rows due before `horizon_ms` starts: rows committed while it
    /// reads may be missing from its result, so from now on those due before the new horizon
    /// are taken as they commit. Returns how many rows there is room for.
    pub(crate) fn scan_started(&self, horizon_ms: i64) -> usize {
        let mut state = self.state.lock();
        state.finished_during_scan = Some(HashSet::new());
        state.horizon_ms = state.horizon_ms.max(horizon_ms);
        MAX_IN_MEMORY.saturating_sub(state.known.len())
    }

    /// The scan could not read the store.
    pub(crate) fn scan_failed(&self) {
        self.state.lock().finished_during_scan = None;
    }

    /// The scan read `rows` (at most `room`): keeps those `ours` accepts that did not finish
    /// meanwhile, and wakes the dispatcher. Returns whether the scan was full (rows due later
    /// may still be in storage only).
    pub(crate) fn scanned(
        &self,
        rows: Vec<Pending>,
        room: usize,
        horizon_ms: i64,
        ours: impl Fn(&Pending) -> bool,
    ) -> bool {
        let mut state = self.state.lock();
        let finished = state.finished_during_scan.take().unwrap_or_default();
        let full = rows.len() >= room;
        let mut last_due = None;
        for row in rows {
            last_due = Some(row.due_ms);
            if ours(&row) && !finished.contains(&RowId::of(&row)) {
                state.add(row);
            }
        }
        state.partial = full;
        state.horizon_ms = match (full, last_due) {
            // Rows due after the last one read may still be in storage.
            (true, Some(last)) => last.saturating_sub(1),
            _ => horizon_ms,
        };
        drop(state);
        self.wake.notify_one();
        full
    }

    /// How many rows are in memory, and how many rows have fired since the start.
    pub(crate) fn stats(&self) -> (usize, u64) {
        let in_memory = self.state.lock().known.len();
        (
            in_memory,
            self.fired.load(std::sync::atomic::Ordering::Relaxed),
        )
    }
}

impl State {
    /// Adds a row unless it is known; returns whether it may be due now.
    fn add(&mut self, row: Pending) -> bool {
        let id = RowId::of(&row);
        if !self.known.insert(id.clone()) {
            return false;
        }
        if in_lane(row.class) {
            let pair = (row.owner.clone(), row.target.clone());
            let lane = self.lanes.entry(pair.clone()).or_default();
            let was_idle = !lane.busy && lane.rows.is_empty();
            lane.rows.insert(row.seq, row);
            if was_idle {
                self.ready.push_back(pair);
            }
            return true;
        }
        self.waiting.insert((row.due_ms, id.clone()));
        self.rows.insert(id, row);
        true
    }

    /// A row was deleted from storage: drop it, or mark its delivery cancelled.
    fn forget(&mut self, id: &RowId) {
        if !self.fresh.is_empty() {
            self.fresh.remove(id);
        }
        if let Some(scan) = &mut self.finished_during_scan {
            scan.insert(id.clone());
        }
        if let Some(cancelled) = self.inflight.get_mut(id) {
            *cancelled = true;
            return;
        }
        if !self.known.remove(id) {
            return;
        }
        if let Some(row) = self.rows.remove(id) {
            self.waiting.remove(&(row.due_ms, id.clone()));
        } else {
            // A message: in the lane of its owner and (unknown here) target.
            for ((owner, _), lane) in &mut self.lanes {
                if *owner == id.owner && lane.rows.remove(&id.seq).is_some() {
                    break;
                }
            }
        }
    }

    /// Takes the rows to deliver now; returns them and when the next one is due.
    fn take_due(&mut self, now_ms: i64) -> (Vec<Pending>, Option<i64>) {
        let mut due = Vec::new();
        while let Some((at, _)) = self.waiting.first() {
            if *at > now_ms {
                break;
            }
            let Some((_, id)) = self.waiting.pop_first() else {
                break;
            };
            if let Some(row) = self.rows.remove(&id) {
                self.inflight.insert(id, false);
                due.push(row);
            }
        }
        while let Some(pair) = self.ready.pop_front() {
            let Some(lane) = self.lanes.get_mut(&pair) else {
                continue;
            };
            if lane.busy {
                continue;
            }
            match lane.rows.pop_first() {
                Some((_, row)) => {
                    lane.busy = true;
                    self.inflight.insert(RowId::of(&row), false);
                    due.push(row);
                }
                None => {
                    self.lanes.remove(&pair);
                }
            }
        }
        (due, self.waiting.first().map(|(at, _)| *at))
    }

    /// A delivery ended: the row leaves memory, and its lane may go on.
    fn finish(&mut self, row: &Pending) {
        let id = RowId::of(row);
        self.inflight.remove(&id);
        self.known.remove(&id);
        if row.class == PendingClass::Ask {
            self.fresh.remove(&id);
        }
        if let Some(scan) = &mut self.finished_during_scan {
            scan.insert(id);
        }
        if in_lane(row.class) {
            let pair = (row.owner.clone(), row.target.clone());
            if let Some(lane) = self.lanes.get_mut(&pair) {
                lane.busy = false;
                if lane.rows.is_empty() {
                    self.lanes.remove(&pair);
                } else {
                    self.ready.push_back(pair);
                }
            }
        }
    }
}
