//! [`Builder`]: what a [`Runtime`] hosts (kinds, effects, a store) and how it is tuned, and
//! `start`, which makes the engine, registers the kinds and starts the background work.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use std::time::Duration;

use perennial_storage::Store;
use perennial_types::{SHARDS, ShardId};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::commit::Committer;
use crate::dispatch::{self, Kinds};
use crate::dyn_kind::DynKind;
use crate::engine::{Config, Engine, Parts};
use crate::journal::{SnapshotCodec, Snapshots};
use crate::kind::{Counters, KindRt, Mode};
use crate::listen::{self, Change};
use crate::process::effect::{Effect, EffectVtable, Resources};
use crate::registry::Limits;
use crate::runtime::Tasks;
use crate::shards::Shards;
use crate::{Process, Runtime, StartError};

type Registration = (
    &'static str,
    Box<dyn FnOnce(&Arc<Engine>, u16, &mut listen::ByKind) -> RegisteredKind + Send>,
);

struct RegisteredKind {
    name: &'static str,
    type_id: TypeId,
    typed: Arc<dyn Any + Send + Sync>,
    dynamic: Arc<dyn DynKind>,
}

/// Configures and starts a [`Runtime`].
///
/// ```
/// # use perennial_core::{Ctx, Process, Runtime};
/// # use perennial_storage::MemoryStore;
/// # #[derive(Default, serde::Serialize, serde::Deserialize)]
/// # struct Counter { value: i64 }
/// # impl Process for Counter {
/// #     const KIND: &'static str = "counter";
/// #     type Msg = i64;
/// #     type Reply = i64;
/// #     type Error = std::convert::Infallible;
/// #     fn handle(&mut self, n: i64, _: &mut Ctx<'_, Self>) -> Result<i64, Self::Error> {
/// #         self.value += n;
/// #         Ok(self.value)
/// #     }
/// # }
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let rt = Runtime::builder()
///     .store(MemoryStore::new())
///     .register_snapshot::<Counter>()
///     .max_resident(100_000)
///     .start()
///     .await?;
/// assert_eq!(rt.get::<Counter>("c1").call(5).await?, 5);
/// rt.shutdown().await;
/// # Ok(())
/// # }
/// ```
#[must_use = "a builder does nothing until `start` is called"]
pub struct Builder {
    store: Option<Arc<dyn Store>>,
    registrations: Vec<Registration>,
    effects: HashMap<(&'static str, &'static str), EffectVtable>,
    resources: Resources,
    listeners: listen::ByKind,
    config: Config,
    limits: Limits,
    node: String,
}

impl fmt::Debug for Builder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("store", &self.store)
            .field("kinds", &self.registrations.len())
            .field("effects", &self.effects.len())
            .field("resources", &self.resources.len())
            .field("listeners", &self.listeners.len())
            .field("config", &self.config)
            .field("limits", &self.limits)
            .field("node", &self.node)
            .finish()
    }
}

impl Default for Builder {
    fn default() -> Self {
        Self {
            store: None,
            registrations: Vec::new(),
            effects: HashMap::new(),
            resources: Resources::default(),
            listeners: listen::ByKind::new(),
            config: Config {
                mailbox_capacity: 1024,
                max_inflight: 100_000,
                max_attempts: 3,
                passivation_interval: Duration::from_secs(1),
                lookahead: crate::due::LOOKAHEAD,
                reply_window: Duration::from_secs(24 * 60 * 60),
                reply_expiry_interval: Duration::from_secs(60),
                feeds: HashMap::new(),
            },
            limits: Limits {
                max_entities: 1_000_000,
                max_bytes: 1 << 30,
            },
            node: "node".to_owned(),
        }
    }
}

impl Runtime {
    /// A builder for a runtime.
    pub fn builder() -> Builder {
        Builder::default()
    }
}

impl Builder {
    /// The store that holds the entities' state. Required.
    pub fn store(mut self, store: impl Store) -> Self {
        self.store = Some(Arc::new(store));
        self
    }

    /// Registers a kind whose state is written after each step (`Persistence::Snapshot`).
    pub fn register_snapshot<K>(self) -> Self
    where
        K: Process + Serialize + DeserializeOwned,
    {
        self.add::<K>(Mode::Snapshot {
            encode: |state| serde_json::to_string(state),
            decode: |json| serde_json::from_str(json),
        })
    }

    /// Registers a kind whose steps are journaled (`Persistence::Journal`): the state needs
    /// no serde at all (it may hold closures, `Rc`, trait objects), and activation rebuilds
    /// it by replaying the whole journal through [`Process::handle`].
    ///
    /// ```
    /// use perennial_core::{Ctx, Process, Runtime};
    /// use perennial_storage::MemoryStore;
    ///
    /// /// Keeps a scoring rule, a closure chosen by the first message.
    /// #[derive(Default)]
    /// struct Scorer {
    ///     rule: Option<Box<dyn Fn(u32) -> u32 + Send>>,
    /// }
    ///
    /// impl Process for Scorer {
    ///     const KIND: &'static str = "scorer";
    ///     type Msg = u32;
    ///     type Reply = u32;
    ///     type Error = std::convert::Infallible;
    ///
    ///     fn handle(&mut self, n: u32, _ctx: &mut Ctx<'_, Self>) -> Result<u32, Self::Error> {
    ///         let rule = self.rule.get_or_insert_with(|| Box::new(move |x| x * n));
    ///         Ok(rule(10))
    ///     }
    /// }
    ///
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let store = MemoryStore::new();
    /// let rt = Runtime::builder()
    ///     .store(store.clone())
    ///     .register_journal::<Scorer>()
    ///     .start()
    ///     .await?;
    /// assert_eq!(rt.get::<Scorer>("s1").call(3).await?, 30);
    /// rt.shutdown().await;
    ///
    /// // A new runtime on the same store rebuilds the closure by replaying the journal.
    /// let rt = Runtime::builder()
    ///     .store(store)
    ///     .register_journal::<Scorer>()
    ///     .start()
    ///     .await?;
    /// assert_eq!(rt.get::<Scorer>("s1").call(5).await?, 30);
    /// # Ok(())
    /// # }
    /// ```
    pub fn register_journal<K: Process>(self) -> Self {
        self.add::<K>(Mode::Journal { snapshots: None })
    }

    /// Registers a `Journal` kind whose state is serializable, so that a snapshot every
    /// few steps (see [`Snapshots`]) cuts replay: activation replays only the steps after the
    /// latest snapshot, and past states can be computed ([`Admin::state_at`](crate::Admin::state_at)).
    pub fn register_journal_with_snapshots<K>(self, snapshots: Snapshots) -> Self
    where
        K: Process + Serialize + DeserializeOwned,
    {
        self.add::<K>(Mode::Journal {
            snapshots: Some(SnapshotCodec {
                policy: snapshots,
                encode: |state| serde_json::to_string(state),
                decode: |json| serde_json::from_str(json),
            }),
        })
    }

    /// Registers a kind whose state lives in memory only (`Persistence::Ephemeral`): a
    /// panicking step is rolled back from a copy taken before it, but a restart or a
    /// passivation loses the state.
    pub fn register_ephemeral<K>(self) -> Self
    where
        K: Process + Clone,
    {
        self.add::<K>(Mode::Ephemeral { clone: K::clone })
    }

    /// Registers an effect type (see [`Effect`]), so that the entities of its kind can start
    /// it with [`Ctx::effect`](crate::Ctx::effect), and so that one a crash interrupted runs
    /// again after the restart. A step that starts an unregistered effect fails like a panic;
    /// an effect whose kind is not registered fails [`start`](Self::start).
    pub fn register_effect<E: Effect>(mut self) -> Self {
        self.effects
            .insert((E::Kind::KIND, E::NAME), EffectVtable::of::<E>());
        self
    }

    /// Calls `listener` for every committed step of every entity of kind `K`, in step order
    /// per entity, with the message and the state before and after it (a [`Change`]): never
    /// for a step that was rolled back, or whose commit failed or was fenced, and once the
    /// step is durable. A deletion comes with `after: None`.
    ///
    /// Each listener runs on a task of its own, from a queue of 4,096 changes: a listener
    /// slower than the kind's steps loses changes, which the kind's
    /// [`KindStats::listener_dropped`](crate::KindStats::listener_dropped) counts (and
    /// `/metrics`), rather than slowing commits. Keep it quick: hand slow work to a channel of
    /// your own. A listener that panics is logged and gets the next change. Listening costs
    /// two copies of the state and one of the message per step, so `K` and its message must
    /// be `Clone`; a kind without listeners pays nothing. Steps of `Ephemeral` kinds are never
    /// committed, so they are not heard. A listener of a kind that is not registered fails
    /// [`start`](Self::start).
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use perennial_core::{Change, Ctx, Process, Runtime};
    /// use perennial_storage::MemoryStore;
    /// use serde::{Deserialize, Serialize};
    ///
    /// #[derive(Debug, Default, Clone, Serialize, Deserialize)]
    /// struct Counter(i64);
    ///
    /// impl Process for Counter {
    ///     const KIND: &'static str = "counter";
    ///     type Msg = i64;
    ///     type Reply = i64;
    ///     type Error = std::convert::Infallible;
    ///
    ///     fn handle(&mut self, n: i64, _ctx: &mut Ctx<'_, Self>) -> Result<i64, Self::Error> {
    ///         self.0 += n;
    ///         Ok(self.0)
    ///     }
    /// }
    ///
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let seen = Arc::new(Mutex::new(Vec::new()));
    /// let log = Arc::clone(&seen);
    /// let rt = Runtime::builder()
    ///     .store(MemoryStore::new())
    ///     .register_snapshot::<Counter>()
    ///     .listen(move |change: &Change<Counter>| {
    ///         let after = change.after.as_ref().map_or(0, |c| c.0);
    ///         log.lock().unwrap().push((change.before.0, change.msg, after));
    ///     })
    ///     .start()
    ///     .await?;
    /// rt.get::<Counter>("c1").call(5).await?;
    /// rt.get::<Counter>("c1").call(2).await?;
    /// # while seen.lock().unwrap().len() < 2 { tokio::task::yield_now().await; }
    /// assert_eq!(*seen.lock().unwrap(), [(0, Some(5), 5), (5, Some(2), 7)]);
    /// # rt.shutdown().await;
    /// # Ok(())
    /// # }
    /// ```
    pub fn listen<K>(mut self, listener: impl FnMut(&Change<K>) + Send + 'static) -> Self
    where
        K: Process + Clone,
        K::Msg: Clone,
    {
        let pending = self
            .listeners
            .entry(K::KIND)
            .or_insert_with(|| Box::new(listen::Pending::<K>::new(K::clone, K::Msg::clone)));
        if let Some(pending) = pending.downcast_mut::<listen::Pending<K>>() {
            pending.push(Box::new(listener));
        }
        self
    }

    /// Keeps a change feed of kind `K`: every committed step of every entity of the kind (its
    /// version and state after, or its deletion), numbered in commit order and kept `keep`
    /// long, in the step's own commit. Clients follow it over HTTP from a cursor
    /// (`GET /v1/{kind}/changes`), across restarts of either side and, in a cluster, of any
    /// node; in Rust, [`Runtime::changes`](crate::Runtime::changes) reads it. Each step
    /// then writes one more row, so only kinds that need it keep one. The kind must store
    /// its state as JSON (`Snapshot`, or `Journal` with snapshots), or `start` fails.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use perennial_core::{Ctx, Process, Runtime};
    /// # use perennial_storage::MemoryStore;
    /// # #[derive(Default, serde::Serialize, serde::Deserialize)]
    /// # struct Counter { value: i64 }
    /// # impl Process for Counter {
    /// #     const KIND: &'static str = "counter";
    /// #     type Msg = i64;
    /// #     type Reply = i64;
    /// #     type Error = std::convert::Infallible;
    /// #     fn handle(&mut self, n: i64, _: &mut Ctx<'_, Self>) -> Result<i64, Self::Error> {
    /// #         self.value += n;
    /// #         Ok(self.value)
    /// #     }
    /// # }
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let rt = Runtime::builder()
    ///     .store(MemoryStore::new())
    ///     .register_snapshot::<Counter>()
    ///     .change_feed::<Counter>(Duration::from_secs(7 * 24 * 3600))
    ///     .start()
    ///     .await?;
    /// rt.get::<Counter>("c1").call(5).await?;
    /// rt.get::<Counter>("c2").call(1).await?;
    /// let page = rt.changes("counter", 0, 100).await?;
    /// let seen: Vec<_> = page.changes.iter().map(|c| (c.id.as_str(), c.version)).collect();
    /// assert_eq!(seen, [("c1", 1), ("c2", 1)]);
    /// // Later: go on from the last one read.
    /// let next = rt.changes("counter", page.changes[1].seq, 100).await?;
    /// assert!(next.changes.is_empty());
    /// # rt.shutdown().await;
    /// # Ok(())
    /// # }
    /// ```
    pub fn change_feed<K: Process>(mut self, keep: Duration) -> Self {
        self.config.feeds.insert(K::KIND, keep);
        self
    }

    /// Gives effects a resource: an HTTP client, a connection pool, a configuration. An
    /// effect's attempt gets it with [`EffectCtx::resource::<T>()`](crate::EffectCtx::resource),
    /// by its type (one value per type; a later one replaces an earlier one). Effects hold no
    /// state of their own, so this is where what they share lives, instead of a `static`.
    ///
    /// ```
    /// use perennial_core::Runtime;
    /// use perennial_storage::MemoryStore;
    ///
    /// /// The payment provider's address, for the effects that charge cards.
    /// struct Payments {
    ///     url: String,
    /// }
    ///
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let rt = Runtime::builder()
    ///     .store(MemoryStore::new())
    ///     .resource(Payments { url: "https://pay.example".into() })
    ///     .start()
    ///     .await?;
    /// # rt.shutdown().await;
    /// # Ok(())
    /// # }
    /// ```
    pub fn resource<T: Send + Sync + 'static>(mut self, value: T) -> Self {
        self.resources.insert(value);
        self
    }

    /// How long the reply to a call with an idempotency key is kept, so that a retry gets it
    /// again instead of applying the message twice ([`EntityRef::call_idempotent`](crate::EntityRef::call_idempotent)). Older
    /// replies are deleted in the background. Default: 24 hours.
    pub fn idempotency_window(mut self, window: Duration) -> Self {
        self.config.reply_window = window;
        self.config.reply_expiry_interval =
            (window / 10).clamp(Duration::from_millis(10), Duration::from_secs(60));
        self
    }

    /// How far ahead the dispatcher keeps due rows in memory: a test runtime, whose clock
    /// jumps, looks further ahead than a node so that it scans its store less often.
    #[cfg(feature = "testing")]
    pub(crate) fn lookahead(mut self, lookahead: Duration) -> Self {
        self.config.lookahead = lookahead;
        self
    }

    fn add<K: Process>(mut self, mode: Mode<K>) -> Self {
        self.registrations.push((
            K::KIND,
            Box::new(
                move |engine: &Arc<Engine>, index: u16, listeners: &mut listen::ByKind| {
                    let listeners = listeners
                        .remove(K::KIND)
                        .and_then(|pending| pending.downcast::<listen::Pending<K>>().ok())
                        .map(|pending| pending.start());
                    let kind = Arc::new(KindRt::<K> {
                        name: Arc::from(K::KIND),
                        index,
                        mode,
                        counters: Counters::default(),
                        feed: engine.config.feeds.get(K::KIND).copied(),
                        engine: Arc::clone(engine),
                        listeners,
                    });
                    RegisteredKind {
                        name: K::KIND,
                        type_id: TypeId::of::<K>(),
                        typed: Arc::clone(&kind) as Arc<dyn Any + Send + Sync>,
                        dynamic: kind,
                    }
                },
            ),
        ));
        self
    }

    /// At most this many entities stay resident; beyond it, idle ones are passivated,
    /// least recently used first. Default: 1,000,000.
    pub fn max_resident(mut self, entities: usize) -> Self {
        self.limits.max_entities = entities;
        self
    }

    /// At most this many bytes of state (the size of each entity's last committed state)
    /// stay resident; beyond it, idle entities are passivated. Default: 1 GiB.
    pub fn max_resident_bytes(mut self, bytes: usize) -> Self {
        self.limits.max_bytes = bytes;
        self
    }

    /// At most this many messages wait in one entity's mailbox; more are refused with
    /// [`CallError::Overloaded`](crate::CallError::Overloaded). Default: 1024.
    pub fn mailbox_capacity(mut self, messages: usize) -> Self {
        self.config.mailbox_capacity = messages.max(1);
        self
    }

    /// At most this many calls are in flight in the node; more are refused with
    /// [`CallError::Overloaded`](crate::CallError::Overloaded). Default: 100,000.
    pub fn max_inflight(mut self, calls: usize) -> Self {
        self.config.max_inflight = calls.max(1);
        self
    }

    /// After this many consecutive panics of the same message at an entity, the message is
    /// set aside as a dead letter. Default: 3.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.config.max_attempts = attempts.max(1);
        self
    }

    /// How often idle entities are looked for. Default: one second.
    pub fn passivation_interval(mut self, interval: Duration) -> Self {
        self.config.passivation_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// The name this node claims the store's shards under. Default: `"node"`.
    pub fn node_name(mut self, name: impl Into<String>) -> Self {
        self.node = name.into();
        self
    }

    /// Claims every shard of the store with a new epoch (fencing out any earlier writer) and
    /// starts the runtime's tasks, serving every shard for as long as it runs. Must be called
    /// inside a Tokio runtime.
    pub async fn start(self) -> Result<Runtime, StartError> {
        let store = self.store.clone().ok_or(StartError::NoStore)?;
        let shards: Vec<ShardId> = (0..SHARDS).map(ShardId).collect();
        let epoch = store.claim(&self.node, &shards).await?;
        let paused = store.paused().await?;
        self.launch(store, Some(crate::shards::Shards::all(epoch)), paused)
    }

    /// Starts the runtime's tasks serving no shard: a cluster's lease manager grants shards
    /// as it acquires their leases ([`Plumbing::serve`](crate::Plumbing::serve)) and takes them back
    /// ([`Plumbing::hand_off`](crate::Plumbing::hand_off)). Until then, calls fail with [`CallError::NotOwner`](crate::CallError::NotOwner).
    pub async fn start_unclaimed(self) -> Result<Runtime, StartError> {
        let store = self.store.clone().ok_or(StartError::NoStore)?;
        let paused = store.paused().await?;
        self.launch(store, Some(crate::shards::Shards::none()), paused)
    }

    /// Starts a runtime that reads the store and never writes to it: it claims no shard, so
    /// a running node keeps its shards, and any step this runtime computed would be fenced.
    /// For tools that read history and past states ([`Admin::state_at`](crate::Admin::state_at)) with the kinds'
    /// own code.
    pub async fn start_read_only(self) -> Result<Runtime, StartError> {
        let store = self.store.clone().ok_or(StartError::NoStore)?;
        let paused = store.paused().await?;
        self.launch(store, None, paused)
    }

    /// Starts the tasks; `shards` is `None` for a read-only runtime.
    fn launch(
        self,
        store: Arc<dyn Store>,
        shards: Option<crate::shards::Shards>,
        paused: Vec<perennial_types::EntityKey>,
    ) -> Result<Runtime, StartError> {
        let writes = shards.is_some();
        let mut names = std::collections::HashSet::new();
        let kind_names: std::collections::HashSet<&'static str> =
            self.registrations.iter().map(|(name, _)| *name).collect();
        if let Some((kind, effect)) = self
            .effects
            .keys()
            .find(|(kind, _)| !kind_names.contains(kind))
        {
            return Err(StartError::EffectWithoutKind { kind, effect });
        }
        if let Some(kind) = self
            .listeners
            .keys()
            .find(|kind| !kind_names.contains(*kind))
        {
            return Err(StartError::ListenerWithoutKind(kind));
        }
        if let Some(kind) = self
            .config
            .feeds
            .keys()
            .find(|kind| !kind_names.contains(*kind))
        {
            return Err(StartError::FeedWithoutKind(kind));
        }
        let engine = Arc::new(Engine::new(Parts {
            store: Arc::clone(&store),
            shards: shards.unwrap_or_else(Shards::none),
            config: self.config,
            limits: self.limits,
            effects: self.effects,
            resources: self.resources,
            kind_names,
            paused,
        }));
        let committer = Arc::clone(&engine.committer);
        let mut by_name = HashMap::new();
        let mut by_type = HashMap::new();
        let mut listeners = self.listeners;
        for (index, (_, register)) in self.registrations.into_iter().enumerate() {
            let index = u16::try_from(index).unwrap_or(u16::MAX);
            let kind = register(&engine, index, &mut listeners);
            if !names.insert(kind.name) {
                return Err(StartError::DuplicateKind(kind.name));
            }
            if kind.dynamic.feed().is_some() && !kind.dynamic.watchable() {
                return Err(StartError::FeedWithoutState(kind.name));
            }
            by_name.insert(kind.name, kind.dynamic);
            by_type.insert(kind.type_id, kind.typed);
        }
        let committer_thread = spawn_committer(committer, store)?;
        let sweeper_task = crate::task::spawn(sweep(Arc::clone(&engine)));
        // A read-only runtime owns no shard: another node delivers its timers.
        let dispatcher_task = writes.then(|| {
            let kinds: Arc<Kinds> = Arc::new(by_name.clone());
            crate::task::spawn(dispatch::run(Arc::clone(&engine), kinds))
        });
        tracing::info!(node = %self.node, kinds = by_name.len(), "runtime started");
        let tasks = Tasks {
            committer: committer_thread,
            sweeper: sweeper_task,
            dispatcher: dispatcher_task,
        };
        Ok(Runtime::new(engine, by_name, by_type, tasks))
    }
}

/// Starts the committer's thread (or task, in a simulation); the receiver completes when it
/// has stopped.
fn spawn_committer(
    committer: Arc<Committer>,
    store: Arc<dyn Store>,
) -> Result<tokio::sync::oneshot::Receiver<()>, StartError> {
    let (stopped, on_stop) = tokio::sync::oneshot::channel();
    if committer.is_task() {
        // A simulation runs on one thread, and a thread of the committer's own would run
        // beside it, out of its control.
        crate::task::spawn(async move {
            committer.run_as_task(&*store).await;
            let _ = stopped.send(());
        });
        return Ok(on_stop);
    }
    let releaser = tokio::runtime::Handle::current();
    // `start` runs inside the runtime, so `current` cannot fail here.
    std::thread::Builder::new()
        .name("perennial-committer".into())
        .spawn(move || {
            committer.run(&*store, &releaser);
            let _ = stopped.send(());
        })
        .map_err(|e| {
            StartError::Storage(perennial_storage::Error::Io(format!(
                "cannot start the committer thread: {e}"
            )))
        })?;
    Ok(on_stop)
}

/// Sweeps at most this many passivation intervals apart, even with nothing due: a state
/// that grew may have taken the node over its limits.
const SWEEP_GAP: u32 = 30;

/// Passivates idle entities until the runtime closes: when the earliest idle deadline
/// passes, but at most every `passivation_interval` and at least every `SWEEP_GAP` of them.
/// A step that sets a deadline before the next sweep wakes it ([`Engine::sweep_by`]) to sleep
/// less, and so does a node over its limits that an insert could not bring under them.
async fn sweep(engine: Arc<Engine>) {
    use std::sync::atomic::Ordering::SeqCst;
    let interval = millis(engine.config.passivation_interval);
    let gap = millis(engine.config.passivation_interval.saturating_mul(SWEEP_GAP));
    loop {
        let last = engine.now_ms();
        // Deadlines that steps set from here on, during the sweep too, are noted anew.
        engine.idle_soonest_ms.store(u64::MAX, SeqCst);
        let mut remaining = engine.registry.sweep(last);
        let (soonest, latest) = (last.saturating_add(interval), last.saturating_add(gap));
        loop {
            let next = remaining
                .min(engine.idle_soonest_ms.load(SeqCst))
                .clamp(soonest, latest);
            engine.next_sweep_ms.store(next, SeqCst);
            tokio::select! {
                biased;
                () = engine.closed() => return,
                () = engine.sweep_sooner.notified() => {}
                // Over the limits: sweep as soon as the interval allows.
                () = engine.registry.pressed.notified() => remaining = soonest,
                () = tokio::time::sleep_until(engine.instant_at(next)) => break,
            }
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
