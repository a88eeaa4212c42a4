//! The engine: what every entity of every kind shares, on the ground floor of the crate.
//!
//! Kinds, entities, the dispatcher and the runtime's entry points all reach storage, the
//! commit pipeline, the registry and the node's lifecycle through one [`Engine`]; the engine
//! knows none of them.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::Mutex;
use perennial_storage::Store;
use perennial_types::EntityKey;
use tokio::sync::Notify;

use crate::commit::Committer;
use crate::courier::Courier;
use crate::due::DueRows;
use crate::pause::Pauses;
use crate::process::effect::{EffectVtable, Resources};
use crate::quarantine::Quarantine;
use crate::registry::{Limits, Registry};
use crate::shards::Shards;
use crate::watch::Watchers;
use crate::{CallError, Overload};

/// Tuning shared by every kind.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) mailbox_capacity: usize,
    pub(crate) max_inflight: usize,
    pub(crate) max_attempts: u32,
    pub(crate) passivation_interval: Duration,
    /// How far ahead the dispatcher keeps due rows in memory (see `due`).
    pub(crate) lookahead: Duration,
    /// How long replies to idempotent calls are kept.
    pub(crate) reply_window: Duration,
    /// How often replies older than `reply_window` (and changes older than their feed
    /// keeps) are deleted.
    pub(crate) reply_expiry_interval: Duration,
    /// The kinds that keep a change feed ([`Builder::change_feed`](crate::Builder::change_feed)),
    /// and for how long.
    pub(crate) feeds: HashMap<&'static str, Duration>,
}

/// What every entity of every kind shares: storage, the shards served, the commit pipeline,
/// the registry of resident entities, the due rows, and the node's lifecycle (admission,
/// closing, draining).
pub(crate) struct Engine {
    pub(crate) store: Arc<dyn Store>,
    /// The shards this node serves, and their epochs.
    pub(crate) shards: Shards,
    pub(crate) config: Config,
    pub(crate) registry: Registry,
    pub(crate) committer: Arc<Committer>,
    /// Pending timers, messages and effects due soon.
    pub(crate) due: Arc<DueRows>,
    /// The registered effects, by kind and effect name.
    pub(crate) effects: HashMap<(&'static str, &'static str), EffectVtable>,
    /// What effects are handed ([`crate::EffectCtx::resource`]).
    pub(crate) resources: Arc<Resources>,
    /// Effects' failed attempts and failures for good, since the start.
    pub(crate) effect_counters: EffectCounters,
    /// The registered kinds' names, to check the targets of `ctx.tell`.
    pub(crate) kind_names: HashSet<&'static str>,
    /// The async runtime the node runs on: entity tasks are spawned here, whatever thread
    /// delivers their message.
    pub(crate) runtime: tokio::runtime::Handle,
    /// Calls accepted and not yet answered (shared with the committer).
    inflight: Arc<AtomicUsize>,
    closing: AtomicBool,
    /// Notified when the runtime starts closing.
    closing_now: Notify,
    /// Notified when the last in-flight call is answered during shutdown.
    drained: Notify,
    /// The earliest idle deadline that steps set since the sweeper last looked (in
    /// [`Engine::now_ms`]'s milliseconds), when the sweeper means to look next, and its
    /// wake-up when a step sets a deadline before then.
    pub(crate) idle_soonest_ms: AtomicU64,
    pub(crate) next_sweep_ms: AtomicU64,
    pub(crate) sweep_sooner: Notify,
    /// On tokio's clock, which a simulation pauses and advances.
    started: tokio::time::Instant,
    /// Dead letters being retried or discarded now (see `admin`).
    pub(crate) letters_in_hand: Mutex<HashSet<u64>>,
    /// Entities paused by an operator.
    pub(crate) pauses: Pauses,
    /// Entities whose stored bytes cannot be read back.
    pub(crate) quarantine: Quarantine,
    /// Watched entities, told of each committed change.
    pub(crate) watchers: Arc<Watchers>,
    /// Carries message rows to the nodes that serve their targets (in a cluster).
    pub(crate) courier: OnceLock<Arc<dyn Courier>>,
}

/// How effects fared since the start, and the ones retrying now.
#[derive(Debug, Default)]
pub(crate) struct EffectCounters {
    /// Attempts that failed (returned `Err`, panicked or timed out).
    pub(crate) failed_attempts: std::sync::atomic::AtomicU64,
    /// Effects that failed for good: their entity got [`crate::Effect::failed`]'s message.
    pub(crate) failed: std::sync::atomic::AtomicU64,
    /// The effects running on this node whose last attempt failed, by row.
    pub(crate) retrying: Mutex<HashMap<crate::due::RowId, crate::process::effect::Retrying>>,
}

/// What an [`Engine`] is made of, besides what it makes itself.
pub(crate) struct Parts {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) shards: Shards,
    pub(crate) config: Config,
    pub(crate) limits: Limits,
    pub(crate) effects: HashMap<(&'static str, &'static str), EffectVtable>,
    pub(crate) resources: Resources,
    pub(crate) kind_names: HashSet<&'static str>,
    /// Entities paused by an operator, as stored.
    pub(crate) paused: Vec<EntityKey>,
}

impl Engine {
    /// An engine over `parts`, with a new commit pipeline (not running yet: see
    /// [`Committer::run`]). Must be called inside the async runtime the node runs on.
    pub(crate) fn new(parts: Parts) -> Self {
        let inflight = Arc::new(AtomicUsize::new(0));
        let due = Arc::new(DueRows::default());
        let watchers = Arc::new(Watchers::default());
        let committer = Arc::new(Committer::new(
            Arc::clone(&inflight),
            Arc::clone(&due),
            Arc::clone(&watchers),
            crate::sim::active(),
        ));
        Self {
            store: parts.store,
            shards: parts.shards,
            config: parts.config,
            registry: Registry::new(parts.limits),
            committer,
            due,
            effects: parts.effects,
            resources: Arc::new(parts.resources),
            effect_counters: EffectCounters::default(),
            kind_names: parts.kind_names,
            runtime: tokio::runtime::Handle::current(),
            inflight,
            closing: AtomicBool::new(false),
            closing_now: Notify::new(),
            drained: Notify::new(),
            idle_soonest_ms: AtomicU64::new(u64::MAX),
            next_sweep_ms: AtomicU64::new(0),
            sweep_sooner: Notify::new(),
            started: tokio::time::Instant::now(),
            letters_in_hand: Mutex::default(),
            pauses: Pauses::new(parts.paused),
            quarantine: Quarantine::default(),
            watchers,
            courier: OnceLock::new(),
        }
    }
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("shards", &self.shards)
            .field("inflight", &self.inflight)
            .field("registry", &self.registry)
            .finish_non_exhaustive()
    }
}

/// Counts one accepted call until it is answered (or its caller gives up).
pub(crate) struct Permit<'a>(&'a Engine);

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if self.0.inflight.fetch_sub(1, Ordering::SeqCst) == 1
            && self.0.closing.load(Ordering::SeqCst)
        {
            self.0.drained.notify_waiters();
            // A closed committer waits for the last call before it stops.
            self.0.committer.wake();
        }
    }
}

impl Engine {
    /// Accepts one call, unless the runtime is closing or has too many calls in flight.
    pub(crate) fn admit<E>(&self) -> Result<Permit<'_>, CallError<E>> {
        if self.closing.load(Ordering::SeqCst) {
            return Err(CallError::ShuttingDown);
        }
        let before = self.inflight.fetch_add(1, Ordering::SeqCst);
        let permit = Permit(self);
        // Checked again after counting, so shutdown either sees this call or it sees shutdown.
        if self.closing.load(Ordering::SeqCst) {
            return Err(CallError::ShuttingDown);
        }
        if before >= self.config.max_inflight {
            return Err(CallError::Overloaded {
                scope: Overload::Node,
            });
        }
        Ok(permit)
    }

    /// Whether the runtime is closing.
    pub(crate) fn is_closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    /// Starts closing: refuses new calls and stops the background tasks.
    pub(crate) fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
        self.closing_now.notify_waiters();
    }

    /// Completes once the runtime is closing.
    pub(crate) async fn closed(&self) {
        loop {
            let notified = self.closing_now.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_closing() {
                return;
            }
            notified.await;
        }
    }

    /// Calls accepted and not yet answered.
    pub(crate) fn inflight(&self) -> usize {
        self.inflight.load(Ordering::SeqCst)
    }

    /// Completes once the runtime is closing and every accepted call is answered.
    pub(crate) async fn drained(&self) {
        loop {
            let drained = self.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            if self.inflight() == 0 {
                return;
            }
            drained.await;
        }
    }

    /// Notes an entity's idle deadline (`deadline_ms`) for the sweeper, and wakes it if the
    /// deadline comes before its next sweep. One relaxed load per step when it is not the
    /// earliest deadline noted since the last sweep.
    pub(crate) fn sweep_by(&self, deadline_ms: u64) {
        if deadline_ms < self.idle_soonest_ms.load(Ordering::Relaxed) {
            self.idle_soonest_ms
                .fetch_min(deadline_ms, Ordering::SeqCst);
            if deadline_ms < self.next_sweep_ms.load(Ordering::SeqCst) {
                self.sweep_sooner.notify_one();
            }
        }
    }

    /// The instant [`Engine::now_ms`] reads `ms` at.
    /// (At most a year ahead, so that no far deadline overflows the clock.)
    pub(crate) fn instant_at(&self, ms: u64) -> tokio::time::Instant {
        const YEAR_MS: u64 = 365 * 24 * 3600 * 1000;
        let ms = ms.min(self.now_ms().saturating_add(YEAR_MS));
        self.started + std::time::Duration::from_millis(ms)
    }

    /// Milliseconds since the runtime started: the clock of idle deadlines.
    pub(crate) fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}
