//! The commit pipeline: group commit of the steps of all entities, one batch at a time.
//!
//! Entities [`submit`](Committer::submit) steps without waiting. One committer thread takes
//! *everything* queued the moment the store is free, writes it as one [`Batch`] (one
//! transaction, one fsync, run by [`Store::commit`] on this very thread), then tells each
//! entity which of its steps are durable, so it can release the replies it holds, and goes
//! straight back to the queue. A lone step is committed at once; under load, every step that
//! arrived during a commit joins the next one. There is no timer anywhere, and no hand-off
//! between threads on the way to the disk.
//!
//! **Architecture Invariant:** a reply leaves only after [`Owner::durable`] covered its
//! step. A failed batch fails every step in it and, through the incarnation check, every
//! later step of the same entities that was computed from the lost state.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use parking_lot::{Condvar, Mutex};
use perennial_storage::{
    Batch, ChangeWrite, DeadLetter, DeadLetterDone, DeadLetterWrite, EntityDelete, JournalEntry,
    JournalTrim, JournalWrite, Pending, PendingDone, PendingWrite, ReplyWrite, StateWrite, Store,
    StoredReply,
};
use perennial_types::{EntityKey, Epoch, ShardId};
use tokio::sync::Notify;

use crate::due::{DueRows, RowId};
use crate::histogram::{BATCH_BOUNDS, Histogram, Recorder, SECONDS_BOUNDS};
use crate::watch::{StateChange, Watchers};
use perennial_faults::failpoint;

/// What a step writes.
pub(crate) enum Write {
    /// The entity's new state, as JSON.
    State(Arc<str>),
    /// A message set aside; the state does not change.
    DeadLetter(Box<DeadLetter>),
    /// A step of a `Journal` kind.
    Journal(Box<JournalStep>),
    /// Nothing but the step's extras (an `Ephemeral` kind's kept reply or applied row).
    Nothing,
    /// The entity is deleted ([`Ctx::delete`](crate::Ctx::delete)), after the rest of the
    /// batch: its earlier steps' writes in the batch go with it.
    Delete,
}

/// What a step of a `Journal` kind writes.
pub(crate) struct JournalStep {
    pub(crate) entry: JournalEntry,
    /// A snapshot of the state after this step, when one is due.
    pub(crate) snapshot: Option<Arc<str>>,
    /// The last journal step the snapshot makes unnecessary, if the policy deletes any.
    pub(crate) trim: Option<u64>,
}

/// What a step writes besides its state or journal entry; rare, so boxed.
#[derive(Debug, Default)]
pub(crate) struct Extras {
    /// Timers, messages and effects the step created (owned by its entity).
    pub(crate) rows: Vec<Pending>,
    /// Pending rows the step deletes: the one it applied, the timers it cancelled.
    pub(crate) done: Vec<RowId>,
    /// The reply to keep for the call's idempotency key.
    pub(crate) reply: Option<(String, StoredReply)>,
    /// The dead letter the step applied (a retry), deleted with it.
    pub(crate) letter: Option<u64>,
    /// The state after the step, for its watchers and its kind's change feed, when the step
    /// writes no state (`Journal` kinds).
    pub(crate) watched: Option<Arc<str>>,
}

impl Extras {
    pub(crate) fn is_empty(&self) -> bool {
        self.rows.is_empty()
            && self.done.is_empty()
            && self.reply.is_none()
            && self.watched.is_none()
            && self.letter.is_none()
    }
}

/// One step of one entity, on its way to storage.
pub(crate) struct Step {
    /// The entity, told when the step is durable or lost.
    pub(crate) owner: Arc<dyn Owner>,
    /// The entity's incarnation when it computed the step; a stale one is dropped.
    pub(crate) incarnation: u32,
    /// The entity's version after this step.
    pub(crate) seq: u64,
    pub(crate) write: Write,
    pub(crate) extras: Option<Box<Extras>>,
}

/// Why a batch did not make a step durable.
#[derive(Debug, Clone)]
pub(crate) enum Failure {
    /// The store failed the whole batch.
    Storage(perennial_storage::Error),
    /// The entity's shard has a newer epoch: another writer owns it now.
    Fenced,
}

/// An entity as the commit pipeline sees it.
pub(crate) trait Owner: Send + Sync {
    fn key(&self) -> EntityKey;
    fn shard(&self) -> ShardId;
    fn epoch(&self) -> Epoch;
    /// The schema version its states are written at (its kind's).
    fn schema(&self) -> u32;
    /// Whether its kind keeps a change feed: then each of its steps is written as a change.
    fn keeps_feed(&self) -> bool;
    /// The entity's current incarnation. It changes when a batch with its steps fails.
    fn incarnation(&self) -> u32;
    /// Steps of `incarnation` up to version `seq` are durable.
    fn durable(&self, incarnation: u32, seq: u64);
    /// Steps of `incarnation` were lost.
    fn failed(&self, incarnation: u32, failure: Failure);
}

/// The queue between the entities and the committer thread, with the pipeline's counters.
pub(crate) struct Committer {
    queue: Mutex<Vec<Step>>,
    /// Writes that belong to no step (deleting refused messages, expiring replies), for the
    /// next batch. Taken under `queue`'s lock, like the steps.
    chores: Mutex<Batch>,
    /// Told which pending rows each batch created and deleted.
    due: Arc<DueRows>,
    /// Calls admitted and not answered, shared with the runtime: the committer stops only
    /// once there are none, so no admitted call's step arrives after it is gone.
    inflight: Arc<AtomicUsize>,
    /// Replies of committed batches still being released by the runtime's workers.
    releases: Arc<Releases>,
    /// Wakes the committer when the queue goes from empty to not empty, or on close.
    wake: Condvar,
    /// The same, for a committer that runs as a task (in a simulation, see [`crate::sim`]).
    woken: Notify,
    /// Whether the committer runs as a task, and releases replies itself.
    as_task: bool,
    closed: AtomicBool,
    /// Set by the test kit's restart: no batch is written any more, as after a kill -9.
    #[cfg(feature = "testing")]
    killed: AtomicBool,
    commits: AtomicU64,
    committed_steps: AtomicU64,
    largest_batch: AtomicU64,
    /// Entities whose writes were fenced.
    fenced: AtomicU64,
    batch_steps: Recorder,
    durable_seconds: Recorder,
    /// Told of each watched entity's new state once it is durable.
    watchers: Arc<Watchers>,
    /// Failed batches since the last success, so that a full disk logs a line a second, not
    /// one per batch.
    failures: Mutex<Streak>,
}

/// Batches failed in a row, for the log.
#[derive(Default)]
struct Streak {
    /// Failed batches since the last success.
    failed: u64,
    /// Failed batches since the last line logged.
    unlogged: u64,
    /// When the last line was logged.
    logged: Option<std::time::Instant>,
}

impl Streak {
    /// Counts a failed batch; logs the first of a streak, then at most a line a second.
    fn failed(&mut self, error: &perennial_storage::Error, steps: u64) {
        self.failed += 1;
        self.unlogged += 1;
        if self
            .logged
            .is_none_or(|at| at.elapsed() >= std::time::Duration::from_secs(1))
        {
            tracing::error!(%error, steps, batches = self.unlogged,
                "batches failed to commit; their steps are discarded, the next batch is tried");
            self.unlogged = 0;
            self.logged = Some(std::time::Instant::now());
        }
    }

    /// A batch committed: ends a streak of failures.
    fn succeeded(&mut self) {
        if self.failed > 0 {
            tracing::warn!(failed = self.failed, "commits succeed again");
            *self = Streak::default();
        }
    }
}

impl std::fmt::Debug for Committer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Committer")
            .field("queued", &self.queue.lock().len())
            .field("commits", &self.commits)
            .finish_non_exhaustive()
    }
}

/// Releases of committed batches, done by the runtime's workers so that the committer can go
/// back to the disk at once: releasing a batch's replies wakes hundreds of callers.
///
/// **Invariant:** an entity is told its steps failed only after every earlier release has
/// run. Otherwise a failure could overtake the release of an earlier, durable step of the
/// same entity and fail its reply: the caller would see an error for a step that is applied.
#[derive(Default)]
struct Releases {
    /// How many releases are spawned and not finished.
    outstanding: Mutex<usize>,
    done: Condvar,
    /// Notified whenever steps are settled, for activations that wait for their entity's.
    settled: Notify,
}

/// Counts a release as finished when dropped: after it ran, or if the runtime dropped it.
struct Finished(Arc<Releases>);

impl Drop for Finished {
    fn drop(&mut self) {
        let mut outstanding = self.0.outstanding.lock();
        *outstanding -= 1;
        if *outstanding == 0 {
            self.0.done.notify_all();
        }
        drop(outstanding);
        self.0.settled.notify_waiters();
    }
}

impl Releases {
    /// Releases the held replies of `durable` steps on the runtime's workers.
    /// Releases on this thread instead if `inline` (a committer that runs as a task).
    fn spawn(
        self: &Arc<Self>,
        runtime: &tokio::runtime::Handle,
        durable: Vec<(Arc<dyn Owner>, u32, u64)>,
        inline: bool,
    ) {
        if inline {
            // One thread runs the whole simulation: release here, in order, so that no
            // later wait for releases can block the thread their task would run on.
            for (owner, incarnation, seq) in durable {
                owner.durable(incarnation, seq);
            }
            self.settled.notify_waiters();
            return;
        }
        *self.outstanding.lock() += 1;
        // Made before the task and moved into it, so it counts down even if the task never
        // runs (the runtime shutting down) or its work panics.
        let finished = Finished(Arc::clone(self));
        crate::task::spawn_on(runtime, async move {
            let _finished = finished;
            for (owner, incarnation, seq) in durable {
                owner.durable(incarnation, seq);
            }
        });
    }

    /// Waits until every spawned release has run.
    fn wait_all(&self) {
        let mut outstanding = self.outstanding.lock();
        while *outstanding > 0 {
            self.done.wait(&mut outstanding);
        }
    }
}

/// Counters of the commit pipeline.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct CommitStats {
    /// Batches committed.
    pub commits: u64,
    /// Steps those batches carried (before coalescing several steps of one entity).
    pub steps: u64,
    /// The most steps one batch carried.
    pub largest_batch: u64,
    /// Entities whose writes in a batch were refused because their shard had a newer
    /// epoch (another node owns it now); their steps were discarded and their callers got
    /// [`CallError::Fenced`](crate::CallError::Fenced).
    pub fenced: u64,
    /// Steps per committed batch.
    pub batch_steps: Histogram,
    /// Seconds each commit took to be durable (the store's transaction and its fsync).
    pub durable_seconds: Histogram,
}

impl Committer {
    /// Queues a step for the next batch.
    pub(crate) fn submit(&self, step: Step) {
        let mut queue = self.queue.lock();
        let was_empty = queue.is_empty();
        queue.push(step);
        drop(queue);
        if was_empty {
            self.notify();
        }
    }

    /// Wakes the committer, thread or task.
    fn notify(&self) {
        if self.as_task {
            self.woken.notify_one();
        } else {
            self.wake.notify_one();
        }
    }

    /// Whether the committer runs as a task: nothing may then block its thread.
    pub(crate) fn is_task(&self) -> bool {
        self.as_task
    }

    /// Adds writes of no step to the next batch. Their failure is only logged: a chore must
    /// be safe to lose (the work it finishes is found again and redone).
    pub(crate) fn chore(&self, add: impl FnOnce(&mut Batch)) {
        let _queue = self.queue.lock();
        add(&mut self.chores.lock());
        self.notify();
    }

    /// A committer that stops only once `inflight` is zero (see [`Committer::close`]); it
    /// runs as a task if `as_task`, on a thread of its own otherwise.
    pub(crate) fn new(
        inflight: Arc<AtomicUsize>,
        due: Arc<DueRows>,
        watchers: Arc<Watchers>,
        as_task: bool,
    ) -> Self {
        Self {
            watchers,
            queue: Mutex::default(),
            chores: Mutex::default(),
            due,
            inflight,
            releases: Arc::default(),
            wake: Condvar::new(),
            woken: Notify::new(),
            as_task,
            closed: AtomicBool::new(false),
            #[cfg(feature = "testing")]
            killed: AtomicBool::new(false),
            commits: AtomicU64::new(0),
            committed_steps: AtomicU64::new(0),
            largest_batch: AtomicU64::new(0),
            fenced: AtomicU64::new(0),
            batch_steps: Recorder::new(BATCH_BOUNDS, 1.0),
            durable_seconds: Recorder::new(SECONDS_BOUNDS, 1e9),
            failures: Mutex::default(),
        }
    }

    /// Notified each time steps are settled (durable or failed).
    pub(crate) fn settled(&self) -> &Notify {
        &self.releases.settled
    }

    /// Wakes the committer to look at its exit condition again.
    pub(crate) fn wake(&self) {
        let _queue = self.queue.lock();
        self.notify();
    }

    /// Asks the committer to stop once the queue is empty and no call is in flight.
    pub(crate) fn close(&self) {
        // Under the queue's lock, so the committer cannot miss the wake-up between its check
        // of `closed` and its wait.
        let _queue = self.queue.lock();
        self.closed.store(true, Ordering::SeqCst);
        self.notify();
    }

    /// Writes nothing from now on, as if the process had been killed: every batch fails, so
    /// the steps not yet durable are lost and their callers told so (the test kit's restart).
    #[cfg(feature = "testing")]
    pub(crate) fn kill(&self) {
        self.killed.store(true, Ordering::SeqCst);
    }

    pub(crate) fn stats(&self) -> CommitStats {
        CommitStats {
            commits: self.commits.load(Ordering::Relaxed),
            steps: self.committed_steps.load(Ordering::Relaxed),
            largest_batch: self.largest_batch.load(Ordering::Relaxed),
            fenced: self.fenced.load(Ordering::Relaxed),
            batch_steps: self.batch_steps.snapshot(),
            durable_seconds: self.durable_seconds.snapshot(),
        }
    }

    /// The committer thread's loop: commits batches until closed and drained.
    pub(crate) fn run(&self, store: &dyn Store, releaser: &tokio::runtime::Handle) {
        let mut spare = Vec::new();
        loop {
            let (steps, chores) = {
                let mut queue = self.queue.lock();
                loop {
                    let chores = std::mem::take(&mut *self.chores.lock());
                    if !queue.is_empty() || !chores.is_empty() {
                        break (std::mem::replace(&mut *queue, spare), chores);
                    }
                    if self.closed.load(Ordering::SeqCst)
                        && self.inflight.load(Ordering::SeqCst) == 0
                    {
                        return;
                    }
                    self.wake.wait(&mut queue);
                }
            };
            spare = self.commit(store, releaser, steps, chores);
        }
    }

    /// The committer's loop as a task (in a simulation): the same as [`run`](Self::run), but
    /// it awaits new steps instead of blocking its thread, and releases replies itself.
    pub(crate) async fn run_as_task(&self, store: &dyn Store) {
        let mut spare = Vec::new();
        loop {
            let woken = self.woken.notified();
            let taken = {
                let mut queue = self.queue.lock();
                let chores = std::mem::take(&mut *self.chores.lock());
                if !queue.is_empty() || !chores.is_empty() {
                    Some((
                        std::mem::replace(&mut *queue, std::mem::take(&mut spare)),
                        chores,
                    ))
                } else if self.closed.load(Ordering::SeqCst)
                    && self.inflight.load(Ordering::SeqCst) == 0
                {
                    return;
                } else {
                    None
                }
            };
            match taken {
                Some((steps, chores)) => {
                    spare = self.commit(store, &tokio::runtime::Handle::current(), steps, chores);
                    // Let the entities run: a task that never yields starves the others.
                    tokio::task::yield_now().await;
                }
                None => woken.await,
            }
        }
    }

    /// Commits one batch and reports the outcome to every owner in it. Returns the emptied
    /// vector so its allocation is reused.
    fn commit(
        &self,
        store: &dyn Store,
        releaser: &tokio::runtime::Handle,
        mut steps: Vec<Step>,
        chores: Batch,
    ) -> Vec<Step> {
        let count = steps.len() as u64;
        let mut batch = chores;
        let chores = !batch.is_empty();
        let mut owners = Owners {
            watchers: self.watchers.any().then(|| Arc::clone(&self.watchers)),
            ..Owners::default()
        };
        for step in steps.drain(..) {
            if step.incarnation != step.owner.incarnation() {
                // Computed from state that a failed batch took back; its reply was failed.
                continue;
            }
            owners.add(step, &mut batch);
        }
        if owners.entries.is_empty() && !chores {
            return steps;
        }
        // What the dispatcher must learn once the batch is durable (rows are rare).
        let created: Vec<(ShardId, Pending)> = batch
            .pending
            .iter()
            .map(|w| (w.shard, w.pending.clone()))
            .collect();
        let deleted: Vec<(ShardId, RowId)> = batch
            .done
            .iter()
            .map(|d| (d.shard, RowId::new(d.owner.clone(), d.seq)))
            .collect();
        let kept_replies = !batch.replies.is_empty();
        let erased: Vec<EntityDelete> = batch.deletes.clone();
        if perennial_faults::sabotaged(perennial_faults::Sabotage::ReplyBeforeDurable) {
            for e in &owners.entries {
                e.owner.durable(e.incarnation, e.seq);
            }
        }
        failpoint!("commit.before");
        let started = std::time::Instant::now();
        #[cfg(feature = "testing")]
        let result = if self.killed.load(Ordering::SeqCst) {
            Err(perennial_storage::Error::Io("the node was killed".into()))
        } else {
            store.commit(batch)
        };
        #[cfg(not(feature = "testing"))]
        let result = store.commit(batch);
        if result.is_ok() {
            self.durable_seconds.record(started.elapsed().as_secs_f64());
            self.batch_steps.record(count as f64);
        }
        match result {
            Ok(outcome) => {
                failpoint!("commit.after");
                self.failures.lock().succeeded();
                if !created.is_empty() {
                    failpoint!("commit.rows_written");
                }
                if !deleted.is_empty() {
                    failpoint!("commit.rows_applied");
                }
                if kept_replies {
                    failpoint!("commit.reply_kept");
                }
                if !created.is_empty() || !deleted.is_empty() {
                    // Before the replies are released: an entity whose step cancelled a
                    // timer may be passivated once released, and the timer must be gone.
                    let kept = |shard: &ShardId| !outcome.fenced.contains(shard);
                    self.due.committed(
                        created.into_iter().filter(|(s, _)| kept(s)).map(|(_, p)| p),
                        deleted.into_iter().filter(|(s, _)| kept(s)).map(|(_, r)| r),
                    );
                }
                if !erased.is_empty() {
                    let owners: Vec<EntityKey> = erased
                        .into_iter()
                        .filter(|d| !outcome.fenced.contains(&d.shard))
                        .map(|d| d.key)
                        .collect();
                    self.due.forget_to_self(&owners);
                }
                self.commits.fetch_add(1, Ordering::Relaxed);
                self.committed_steps.fetch_add(count, Ordering::Relaxed);
                self.largest_batch.fetch_max(count, Ordering::Relaxed);
                if !outcome.fenced.is_empty() {
                    self.releases.wait_all();
                }
                let mut durable = Vec::with_capacity(owners.entries.len());
                for e in owners.entries {
                    if outcome.fenced.contains(&e.owner.shard()) {
                        self.fenced.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(entity = %e.owner.key(), shard = %e.owner.shard(),
                            "a write was refused: another node owns the shard now");
                        e.owner.failed(e.incarnation, Failure::Fenced);
                    } else {
                        if let Some((version, state)) = e.watched {
                            let change = StateChange {
                                version,
                                deleted: state.is_none(),
                                state: state.unwrap_or_else(|| Arc::from("null")),
                            };
                            self.watchers.publish(&e.owner.key(), change);
                        }
                        durable.push((e.owner, e.incarnation, e.seq));
                    }
                }
                if !outcome.fenced.is_empty() {
                    self.releases.settled.notify_waiters();
                }
                self.releases.spawn(releaser, durable, self.as_task);
            }
            Err(error) if owners.entries.is_empty() => {
                self.failures.lock().failed(&error, 0);
            }
            Err(error) => {
                self.failures.lock().failed(&error, count);
                self.releases.wait_all();
                for e in owners.entries {
                    e.owner
                        .failed(e.incarnation, Failure::Storage(error.clone()));
                }
                self.releases.settled.notify_waiters();
            }
        }
        steps
    }
}

/// The owners of one batch, each once, with what the batch writes for them.
#[derive(Default)]
struct Owners {
    entries: Vec<OwnerEntry>,
    /// Index into `entries` by the owner's address.
    by_owner: hashbrown::HashMap<usize, usize>,
    /// The watchers, if any entity is watched: only then are states kept for them.
    watchers: Option<Arc<Watchers>>,
}

struct OwnerEntry {
    owner: Arc<dyn Owner>,
    incarnation: u32,
    /// The highest version of this owner in the batch.
    seq: u64,
    /// Where this owner's state write sits in the batch, if it has one.
    state: Option<usize>,
    /// Whether the owner is watched.
    watching: bool,
    /// The owner's latest state in the batch (`None`: deleted) and its version, if it is
    /// watched.
    watched: Option<(u64, Option<Arc<str>>)>,
}

impl Owners {
    /// Adds a step, keeping only the latest state of each owner: a later state of the same
    /// entity replaces the earlier one in the batch (both would be written in one transaction).
    fn add(&mut self, step: Step, batch: &mut Batch) {
        let address = Arc::as_ptr(&step.owner).cast::<()>() as usize;
        let watchers = &self.watchers;
        let index = *self.by_owner.entry(address).or_insert_with(|| {
            let watching = watchers
                .as_ref()
                .is_some_and(|w| w.is_watched(&step.owner.key()));
            self.entries.push(OwnerEntry {
                owner: Arc::clone(&step.owner),
                incarnation: step.incarnation,
                seq: step.seq,
                state: None,
                watching,
                watched: None,
            });
            self.entries.len() - 1
        });
        let entry = &mut self.entries[index];
        entry.seq = entry.seq.max(step.seq);
        let watched = entry.watching;
        let feed = step.owner.keeps_feed();
        if let Some(mut extras) = step.extras {
            if let Some(state) = extras.watched.take() {
                if feed {
                    entry.change(batch, step.seq, Some(Arc::clone(&state)));
                }
                if watched {
                    entry.watch(step.seq, state);
                }
            }
            entry.add_extras(batch, *extras);
        }
        match step.write {
            Write::Nothing => {}
            Write::Delete => {
                if feed {
                    entry.change(batch, step.seq, None);
                }
                if watched {
                    entry.deleted(step.seq);
                }
                batch.deletes.push(EntityDelete {
                    key: entry.owner.key(),
                    shard: entry.owner.shard(),
                    epoch: entry.owner.epoch(),
                });
            }
            Write::State(state) => {
                if feed {
                    entry.change(batch, step.seq, Some(Arc::clone(&state)));
                }
                if watched {
                    entry.watch(step.seq, Arc::clone(&state));
                }
                entry.set_state(batch, state, step.seq);
            }
            Write::DeadLetter(letter) => batch.dead_letters.push(DeadLetterWrite {
                shard: entry.owner.shard(),
                epoch: entry.owner.epoch(),
                letter: *letter,
            }),
            Write::Journal(journal) => {
                let JournalStep {
                    entry: journaled,
                    snapshot,
                    trim,
                } = *journal;
                batch.journal.push(JournalWrite {
                    key: entry.owner.key(),
                    shard: entry.owner.shard(),
                    epoch: entry.owner.epoch(),
                    entry: journaled,
                });
                if let Some(snapshot) = snapshot {
                    entry.set_state(batch, snapshot, step.seq);
                }
                if let Some(through) = trim {
                    batch.trims.push(JournalTrim {
                        key: entry.owner.key(),
                        shard: entry.owner.shard(),
                        epoch: entry.owner.epoch(),
                        through,
                    });
                }
            }
        }
    }
}

impl OwnerEntry {
    /// Writes a step's timers, messages, effects, deletions and kept reply.
    fn add_extras(&self, batch: &mut Batch, extras: Extras) {
        let (shard, epoch) = (self.owner.shard(), self.owner.epoch());
        batch
            .pending
            .extend(extras.rows.into_iter().map(|pending| PendingWrite {
                shard,
                epoch,
                pending,
            }));
        batch
            .done
            .extend(extras.done.into_iter().map(|row| PendingDone {
                shard,
                epoch,
                owner: row.owner,
                seq: row.seq,
            }));
        if let Some(seq) = extras.letter {
            batch
                .letters_done
                .push(DeadLetterDone { shard, epoch, seq });
        }
        if let Some((idempotency_key, reply)) = extras.reply {
            batch.replies.push(ReplyWrite {
                key: self.owner.key(),
                shard,
                epoch,
                idempotency_key,
                reply,
            });
        }
    }

    /// Writes a step of the owner as a change of its kind's feed: its version and state after
    /// (`None`: deleted).
    fn change(&self, batch: &mut Batch, seq: u64, state: Option<Arc<str>>) {
        batch.changes.push(ChangeWrite {
            key: self.owner.key(),
            shard: self.owner.shard(),
            epoch: self.owner.epoch(),
            version: seq,
            at_ms: crate::clock::now_ms(),
            state,
        });
    }

    /// Keeps the owner's state at version `seq` for its watchers, unless a later one is kept.
    fn watch(&mut self, seq: u64, state: Arc<str>) {
        if self.watched.as_ref().is_none_or(|(kept, _)| *kept <= seq) {
            self.watched = Some((seq, Some(state)));
        }
    }

    /// Tells the owner's watchers it was deleted at version `seq`.
    fn deleted(&mut self, seq: u64) {
        if self.watched.as_ref().is_none_or(|(kept, _)| *kept <= seq) {
            self.watched = Some((seq, None));
        }
    }

    /// Writes the owner's state at version `seq`, replacing an older one in the batch.
    fn set_state(&mut self, batch: &mut Batch, state: Arc<str>, seq: u64) {
        match self.state {
            Some(i) if batch.states[i].version <= seq => {
                batch.states[i].state = state;
                batch.states[i].version = seq;
            }
            Some(_) => {}
            None => {
                self.state = Some(batch.states.len());
                batch.states.push(StateWrite {
                    key: self.owner.key(),
                    shard: self.owner.shard(),
                    epoch: self.owner.epoch(),
                    state,
                    version: seq,
                    schema: self.owner.schema(),
                });
            }
        }
    }
}
