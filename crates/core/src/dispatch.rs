//! The dispatcher: fires due timers, delivers messages sent between entities, runs effects.
//!
//! Steps create pending rows (see [`perennial_storage::Pending`]) in their own commit. The
//! dispatcher keeps in memory only the rows due soon: those due within [`LOOKAHEAD`] of now,
//! at most [`MAX_IN_MEMORY`] of them, loaded by a scan of the store every
//! `LOOKAHEAD / 2` (and at start, which is how rows survive restarts), plus the rows that
//! committed batches create meanwhile, when they fall inside that window. Millions of
//! pending timers therefore cost storage, not memory.
//!
//! A due row is delivered to its target entity as a message; the target's step that applies
//! it deletes the row **in the same transaction**, so a row is applied exactly once: before
//! that commit it is still stored and will be delivered again after a crash, after it the
//! row is gone. Within one node, each row has at most one delivery in flight (`known`), and
//! the messages from one entity to another go one at a time, in the order sent (`lanes`).
//!
//! An effect row is run first (its work, outside any handler), then its result is delivered
//! to its entity like a timer. If the node stops while the effect runs, the row is still
//! stored, and the effect runs again after the restart: effects run at least once.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use perennial_storage::{DeadLetter, DeadLetterWrite, Pending, PendingClass, PendingDone};
use perennial_types::{EntityKey, Epoch, ShardId, shard_of};
use tokio::sync::Notify;

use crate::effect::{EffectBody, EffectId};
use crate::kind::DynKind;
use crate::runtime::Core;
use perennial_faults::failpoint;

/// Rows due within this much of now are kept in memory.
const LOOKAHEAD: Duration = Duration::from_secs(10);
/// At most this many rows are kept in memory waiting for their time.
pub(crate) const MAX_IN_MEMORY: usize = 100_000;
/// How long a failed delivery waits before it is tried again, at first and at most.
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(5);

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

    fn of(row: &Pending) -> Self {
        Self::new(row.owner.clone(), row.seq)
    }
}

pub(crate) use crate::courier::Delivery;

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
    /// Rows due at or before this are all in memory (unless `partial`).
    horizon_ms: i64,
    /// The last scan stopped at its limit, or a committed row was left in storage.
    partial: bool,
    /// Rows that finished while a scan was reading: its result may still hold them.
    finished_during_scan: Option<HashSet<RowId>>,
}

/// The dispatcher's shared state: the committer adds and removes rows, the dispatcher task
/// delivers them.
#[derive(Default)]
pub(crate) struct Dispatch {
    state: Mutex<State>,
    wake: Notify,
    /// Rows fired (applied, refused or dead-lettered), for the statistics.
    fired: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Dispatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.state.lock();
        f.debug_struct("Dispatch")
            .field("in_memory", &state.known.len())
            .field("inflight", &state.inflight.len())
            .finish_non_exhaustive()
    }
}

impl Dispatch {
    /// A batch made `created` durable and deleted `deleted`.
    pub(crate) fn committed(
        &self,
        created: impl Iterator<Item = Pending>,
        deleted: impl Iterator<Item = RowId>,
    ) {
        let mut state = self.state.lock();
        let mut wake = false;
        for row in created {
            let soon = row.class == PendingClass::Message || row.due_ms <= state.horizon_ms;
            if soon && state.known.len() < MAX_IN_MEMORY {
                wake |= state.add(row);
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
        if row.class == PendingClass::Message {
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
        if let Some(scan) = &mut self.finished_during_scan {
            scan.insert(id);
        }
        if row.class == PendingClass::Message {
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

/// The kinds by name, as the dispatcher delivers to them.
pub(crate) type Kinds = HashMap<&'static str, Arc<dyn DynKind>>;

/// The dispatcher task: scans the store for due rows and delivers them, until the runtime
/// closes.
pub(crate) async fn run(core: Arc<Core>, kinds: Arc<Kinds>) {
    let dispatch = Arc::clone(&core.dispatch);
    let mut next_scan = tokio::time::Instant::now();
    let mut next_expiry = tokio::time::Instant::now() + core.config.reply_expiry_interval;
    loop {
        if core.is_closing() {
            return;
        }
        let now = tokio::time::Instant::now();
        if now >= next_scan {
            next_scan = now + scan(&core).await;
        }
        if now >= next_expiry {
            expire_replies(&core);
            next_expiry = now + core.config.reply_expiry_interval;
        }
        let (due, next_due) = dispatch.state.lock().take_due(crate::ctx::now_ms());
        for row in due {
            // Delivered under the epoch its owner's shard has now: if the shard is lost and
            // taken again meanwhile, another node may have applied the row in between.
            let shard = shard_of(&row.owner.kind, row.owner.id.as_str());
            match core.shards.epoch(shard) {
                Some(epoch) => {
                    tokio::spawn(deliver(Arc::clone(&core), Arc::clone(&kinds), row, epoch));
                }
                None => dispatch.state.lock().finish(&row),
            }
        }
        let mut until = next_scan.min(next_expiry);
        if let Some(at) = next_due {
            let wait = u64::try_from(at - crate::ctx::now_ms()).unwrap_or(0);
            until = until.min(tokio::time::Instant::now() + Duration::from_millis(wait));
        }
        let notified = dispatch.wake.notified();
        tokio::select! {
            // In order, not at random: a simulation must take the same branch every run.
            biased;
            () = notified => {}
            // Shards granted: their rows are in storage only.
            () = core.shards.granted.notified() => next_scan = tokio::time::Instant::now(),
            () = tokio::time::sleep_until(until) => {}
            () = core.closed() => return,
        }
    }
}

/// Loads the rows due soon; returns when to scan again.
async fn scan(core: &Core) -> Duration {
    let horizon = crate::ctx::now_ms().saturating_add(millis(LOOKAHEAD));
    let room = {
        let mut state = core.dispatch.state.lock();
        state.finished_during_scan = Some(HashSet::new());
        // Rows committed while the scan reads may be missing from its result: from now on,
        // those due before the new horizon are taken as they commit.
        state.horizon_ms = state.horizon_ms.max(horizon);
        MAX_IN_MEMORY.saturating_sub(state.known.len())
    };
    let result = core.store.due(horizon, room.max(1)).await;
    let mut state = core.dispatch.state.lock();
    let finished = state.finished_during_scan.take().unwrap_or_default();
    let rows = match result {
        Ok(rows) => rows,
        Err(error) => {
            tracing::warn!(%error, "cannot read the pending timers, messages and effects; retrying");
            return Duration::from_secs(1);
        }
    };
    let full = rows.len() >= room.max(1);
    let mut last_due = None;
    for row in rows {
        last_due = Some(row.due_ms);
        // In a cluster, other nodes deliver the rows of the shards they own.
        let ours = core
            .shards
            .epoch(shard_of(&row.owner.kind, row.owner.id.as_str()));
        if ours.is_some() && !finished.contains(&RowId::of(&row)) {
            state.add(row);
        }
    }
    state.partial = full;
    state.horizon_ms = match (full, last_due) {
        // Rows due after the last one read may still be in storage.
        (true, Some(last)) => last.saturating_sub(1),
        _ => horizon,
    };
    drop(state);
    core.dispatch.wake.notify_one();
    if full {
        Duration::from_millis(200)
    } else {
        LOOKAHEAD / 2
    }
}

/// Deletes kept replies older than the idempotency window, a bounded number per batch.
fn expire_replies(core: &Core) {
    let window = millis(core.config.reply_window);
    let before_ms = crate::ctx::now_ms().saturating_sub(window);
    core.committer.chore(|batch| {
        batch.expire_replies = Some(perennial_storage::ExpireReplies {
            before_ms,
            limit: 10_000,
        });
    });
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Delivers one row, retrying until it is applied, refused or poison, or the runtime closes.
async fn deliver(core: Arc<Core>, kinds: Arc<Kinds>, row: Pending, epoch: Epoch) {
    let mut backoff = RETRY_FIRST;
    // An effect's work runs once per delivery task; only its result's delivery is retried.
    let mut body = Arc::clone(&row.body);
    if row.class == PendingClass::Effect {
        match run_effect(&core, &row).await {
            Ok(msg) => {
                failpoint!("effect.finished");
                body = Arc::from(msg);
            }
            Err(outcome) => return settle(&core, &row, outcome),
        }
    }
    failpoint!("dispatch.deliver");
    let owner_shard = shard_of(&row.owner.kind, row.owner.id.as_str());
    loop {
        // A paused or quarantined target gets nothing; the row waits, in memory and in
        // storage.
        core.pauses.held(&row.target, || core.is_closing()).await;
        core.quarantine
            .held(&row.target, || core.is_closing())
            .await;
        if core.shards.epoch(owner_shard) != Some(epoch) {
            // Handed off, or the lease lapsed (and perhaps taken again, with a new epoch): the
            // row may have been applied elsewhere meanwhile. Whoever serves the shard now
            // reads it from storage, if it is still there.
            return settle(&core, &row, Delivery::Skipped);
        }
        let Some(kind) = kinds.get(&*row.target.kind) else {
            let detail = format!("kind {:?} is not registered", row.target.kind);
            return settle(&core, &row, Delivery::Poison(detail));
        };
        // In a cluster, a node that lost the owner's shard may still be delivering the row
        // while the new owner delivers it too: every delivery then keeps its reply under a
        // key made from the row's id, so whichever comes second is not applied again.
        let mut outcome = Arc::clone(kind)
            .deliver(
                row.target.id.clone(),
                Arc::clone(&body),
                RowId::of(&row),
                core.shards.shared,
            )
            .await;
        if outcome == Delivery::NotServed {
            // Another node serves the target: the cluster's courier carries the row there.
            outcome = match core.courier.get() {
                Some(courier) => {
                    let parcel = crate::courier::Parcel::new(
                        row.owner.clone(),
                        row.seq,
                        row.target.clone(),
                        Arc::clone(&body),
                    );
                    match courier.carry(parcel).await {
                        Delivery::NotServed => Delivery::Retry("the target moved".into()),
                        outcome => outcome,
                    }
                }
                None => Delivery::Retry("no node serves the target's shard now".into()),
            };
        }
        match outcome {
            Delivery::Retry(detail) => {
                if core.is_closing() {
                    return settle(&core, &row, Delivery::Retry(detail));
                }
                tracing::debug!(owner = %row.owner, seq = row.seq, %detail, "delivery failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RETRY_MAX);
            }
            outcome => return settle(&core, &row, outcome),
        }
    }
}

/// Runs an effect's work; returns its result message (JSON). A panicking effect runs again
/// after a pause (effects run at least once anyway).
async fn run_effect(core: &Core, row: &Pending) -> Result<String, Delivery> {
    let mut backoff = RETRY_FIRST;
    loop {
        let work = start_effect(core, row).map_err(Delivery::Poison)?;
        match tokio::spawn(work).await {
            Ok(result) => return result.map_err(Delivery::Poison),
            Err(e) if core.is_closing() => return Err(Delivery::Retry(e.to_string())),
            Err(e) => {
                tracing::error!(owner = %row.owner, seq = row.seq, error = %e,
                    "an effect panicked; running it again");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RETRY_MAX);
            }
        }
    }
}

/// Decodes a stored effect and starts its work (not yet polled).
fn start_effect(
    core: &Core,
    row: &Pending,
) -> Result<crate::effect::BoxFuture<Result<String, String>>, String> {
    let parsed: EffectBody<'_> = serde_json::from_str(&row.body)
        .map_err(|e| format!("the stored effect does not decode: {e}"))?;
    let name: &str = &parsed.effect;
    let Some(runner) = core.effects.get(&(&*row.owner.kind, name)) else {
        return Err(format!(
            "effect {name:?} of kind {:?} is not registered; add \
             .register_effect::<…>() to the runtime's builder",
            row.owner.kind
        ));
    };
    runner(
        parsed.input.get(),
        EffectId::new(row.owner.clone(), row.seq),
    )
}

/// Ends a delivery: the row leaves memory, and a refused or poison row is deleted.
fn settle(core: &Core, row: &Pending, outcome: Delivery) {
    use std::sync::atomic::Ordering;
    match &outcome {
        Delivery::Applied => {
            core.dispatch.fired.fetch_add(1, Ordering::Relaxed);
        }
        Delivery::Skipped | Delivery::Retry(_) | Delivery::NotServed => {}
        Delivery::Refused(detail) | Delivery::Poison(detail) => {
            core.dispatch.fired.fetch_add(1, Ordering::Relaxed);
            let poison = matches!(outcome, Delivery::Poison(_));
            if poison {
                tracing::error!(owner = %row.owner, seq = row.seq, target = %row.target, %detail,
                    "a timer, message or effect cannot be applied; it is kept as a dead letter");
            } else {
                tracing::info!(owner = %row.owner, seq = row.seq, target = %row.target, %detail,
                    "the target refused a timer or message; it is dropped");
            }
            // Written under the row owner's shard: this node serves it (it delivers the row).
            let shard = shard_of(&row.owner.kind, row.owner.id.as_str());
            let Some(epoch) = core.shards.epoch(shard) else {
                core.dispatch.state.lock().finish(row);
                return;
            };
            let letter = poison.then(|| DeadLetterWrite {
                shard,
                epoch,
                letter: DeadLetter {
                    key: row.target.clone(),
                    message: row.body.to_string(),
                    error: detail.clone(),
                    attempts: 1,
                    at_ms: crate::ctx::now_ms(),
                },
            });
            let done = PendingDone {
                shard,
                epoch,
                owner: row.owner.clone(),
                seq: row.seq,
            };
            core.committer.chore(|batch| {
                batch.done.push(done);
                batch.dead_letters.extend(letter);
            });
        }
    }
    core.dispatch.state.lock().finish(row);
    core.dispatch.wake.notify_one();
}
