//! The cap shared by every key of a queue kind ([`Job::GLOBAL`]): one permit pool entity
//! that the queues ask for permits to start jobs and give them back to, by messages.
//!
//! A queue holds a permit for each job it runs, and no other: when a job ends it gives the
//! permit back and, if it has more jobs waiting, asks again, so the pool hands permits out
//! in turns, one at a time, to the queues that wait (first come, first served), and a busy
//! key cannot keep the others waiting. Messages between entities are exactly once and in
//! order, and both sides keep their counts in their durable state, so no permit is lost or
//! made up across crashes: the cap holds, with two exceptions. A cancelled job's permit goes
//! back at once while its work takes up to 50 ms to stop; and jobs that a queue stored before
//! its kind had a cap run without permits until they end.
//!
//! Both sides count only what the other told them, so deleting a queue that holds permits
//! (an operator's `DELETE`) loses those permits for good, and deleting the pool makes the
//! queues waiting on it wait forever: stop the queues' work first.

use std::collections::{BTreeMap, VecDeque};
use std::marker::PhantomData;

use perennial_core::{Ctx, Process};
use serde::{Deserialize, Serialize};

use crate::Job;
use crate::message::{QueueError, QueueMsg};
use crate::queue::JobQueue;

/// The most jobs a global cap may let run at once.
pub const MAX_GLOBAL_CONCURRENCY: u32 = 1_000_000;

/// The id of the permit pool entity of a kind with a global cap.
pub const POOL: &str = "pool";

/// A cap on the jobs running at once across all keys of a queue kind, on top of each key's
/// own concurrency: see [`Job::GLOBAL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GlobalCap {
    /// The kind of the permit pool entity (its one entity is [`POOL`]). It must not change
    /// while queues of the job type are stored.
    pub kind: &'static str,
    /// At most this many jobs of all keys run at once, until an operator configures the
    /// pool otherwise ([`PermitMsg::Configure`]). At least 1.
    pub concurrency: u32,
}

/// The permit pool of a job type with a global cap: an entity of kind
/// [`GlobalCap::kind`], registered with its queue kind by
/// [`JobQueue::register`](crate::JobQueue::register).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Permits<J> {
    /// At most this many permits are out at once.
    concurrency: u32,
    /// Permits out: held by running jobs.
    in_use: u32,
    /// Permits each queue holds.
    held: BTreeMap<String, u32>,
    /// Permits each waiting queue still asks for.
    wanted: BTreeMap<String, u32>,
    /// The waiting queues, in the order they get their next permit.
    turns: VecDeque<String>,
    #[serde(skip)]
    _job: PhantomData<fn() -> J>,
}

impl<J: Job> Default for Permits<J> {
    fn default() -> Self {
        Self {
            concurrency: J::GLOBAL.map_or(1, |g| g.concurrency.clamp(1, MAX_GLOBAL_CONCURRENCY)),
            in_use: 0,
            held: BTreeMap::new(),
            wanted: BTreeMap::new(),
            turns: VecDeque::new(),
            _job: PhantomData,
        }
    }
}

/// A message to a permit pool. Over HTTP: `"status"` and `{"configure": {"concurrency":
/// 50}}`; `update` comes from the queues only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PermitMsg {
    /// From the queue `queue`: gives back `release` permits and asks for `want` more.
    Update {
        /// The queue's key.
        queue: String,
        /// Permits it no longer uses.
        release: u32,
        /// Permits it asks for, beyond those it asked for before.
        want: u32,
    },
    /// Sets the cap (1 to [`MAX_GLOBAL_CONCURRENCY`]). Raising it hands permits out at once;
    /// lowering it takes none back: fewer are handed out as jobs end.
    Configure {
        /// At most this many jobs of all keys run at once.
        concurrency: u32,
    },
    /// Reads the pool's counts.
    Status,
}

/// What a permit pool answers: its counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PermitStatus {
    /// The cap.
    pub concurrency: u32,
    /// Permits out: jobs running across all keys.
    pub in_use: u32,
    /// Keys running jobs now.
    pub keys_running: usize,
    /// Keys waiting for a permit.
    pub keys_waiting: usize,
    /// Permits the waiting keys ask for in all.
    pub wanted: u64,
}

impl<J: Job> Permits<J> {
    /// The pool's counts.
    pub fn status(&self) -> PermitStatus {
        PermitStatus {
            concurrency: self.concurrency,
            in_use: self.in_use,
            keys_running: self.held.len(),
            keys_waiting: self.turns.len(),
            wanted: self.wanted.values().map(|&w| u64::from(w)).sum(),
        }
    }

    fn update(&mut self, queue: String, release: u32, want: u32) {
        if let Some(held) = self.held.get_mut(&queue) {
            // Never more than it holds, whatever it says.
            let back = release.min(*held);
            *held -= back;
            self.in_use -= back;
            if *held == 0 {
                self.held.remove(&queue);
            }
        }
        if want > 0 {
            let wanted = self.wanted.entry(queue.clone()).or_insert(0);
            if *wanted == 0 {
                self.turns.push_back(queue);
            }
            *wanted = wanted.saturating_add(want);
        }
    }

    /// Hands the free permits out, one per waiting queue in turn, and tells each queue how
    /// many it got.
    fn hand_out(&mut self, ctx: &mut Ctx<'_, Self>) {
        let mut given: BTreeMap<String, u32> = BTreeMap::new();
        while self.in_use < self.concurrency {
            let Some(queue) = self.turns.pop_front() else {
                break;
            };
            let Some(wanted) = self.wanted.get_mut(&queue) else {
                continue;
            };
            *wanted -= 1;
            if *wanted == 0 {
                self.wanted.remove(&queue);
            } else {
                self.turns.push_back(queue.clone());
            }
            self.in_use += 1;
            *self.held.entry(queue.clone()).or_insert(0) += 1;
            *given.entry(queue).or_insert(0) += 1;
        }
        for (queue, permits) in given {
            ctx.tell::<JobQueue<J>>(queue, QueueMsg::Permits(permits));
        }
    }
}

impl<J: Job> Process for Permits<J> {
    const KIND: &'static str = match J::GLOBAL {
        Some(cap) => cap.kind,
        None => "",
    };
    type Msg = PermitMsg;
    type Reply = PermitStatus;
    type Error = QueueError;

    fn handle(
        &mut self,
        msg: PermitMsg,
        ctx: &mut Ctx<'_, Self>,
    ) -> Result<PermitStatus, QueueError> {
        match msg {
            PermitMsg::Update {
                queue,
                release,
                want,
            } => self.update(queue, release, want),
            PermitMsg::Configure { concurrency } => {
                if !(1..=MAX_GLOBAL_CONCURRENCY).contains(&concurrency) {
                    return Err(QueueError::BadGlobalConcurrency);
                }
                self.concurrency = concurrency;
            }
            PermitMsg::Status => return Ok(self.status()),
        }
        self.hand_out(ctx);
        Ok(self.status())
    }

    fn is_read_only(msg: &PermitMsg) -> bool {
        matches!(msg, PermitMsg::Status)
    }

    fn is_internal(msg: &PermitMsg) -> bool {
        matches!(msg, PermitMsg::Update { .. })
    }
}
