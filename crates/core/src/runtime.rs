//! [`Runtime`], its [`Builder`], and [`Handle`]: the library's entry points.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use perennial_storage::{Store, StoredDeadLetter};
use perennial_types::{EntityId, Epoch, SHARDS, ShardId};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::commit::{CommitStats, Committer};
use crate::dispatch::{self, Dispatch, Kinds};
use crate::effect::{Effect, EffectRunner};
use crate::entity;
use crate::journal::{HistoryEntry, SnapshotCodec, Snapshots};
use crate::kind::{Counters, DynKind, KindRt, KindStats, Mode};
use crate::registry::{Limits, Registry};
use crate::{CallError, JsonRejection, Overload, Process, StartError};

/// Tuning shared by every kind.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) mailbox_capacity: usize,
    pub(crate) max_inflight: usize,
    pub(crate) max_attempts: u32,
    pub(crate) passivation_interval: Duration,
    /// How long replies to idempotent calls are kept.
    pub(crate) reply_window: Duration,
    /// How often replies older than `reply_window` are deleted.
    pub(crate) reply_expiry_interval: Duration,
}

/// What every entity of every kind shares: storage, the commit pipeline, the registry.
pub(crate) struct Core {
    pub(crate) store: Arc<dyn Store>,
    /// The shards this node serves, and their epochs.
    pub(crate) shards: crate::shards::Shards,
    pub(crate) config: Config,
    pub(crate) registry: Registry,
    pub(crate) committer: Arc<Committer>,
    /// Pending timers, messages and effects due soon.
    pub(crate) dispatch: Arc<Dispatch>,
    /// The registered effects, by kind and effect name.
    pub(crate) effects: HashMap<(&'static str, &'static str), EffectRunner>,
    /// The registered kinds' names, to check the targets of `ctx.send`.
    pub(crate) kind_names: std::collections::HashSet<&'static str>,
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
    /// On tokio's clock, which a simulation pauses and advances.
    started: tokio::time::Instant,
    /// Dead letters being retried or discarded now (see `admin`).
    pub(crate) letters_in_hand: Mutex<std::collections::HashSet<u64>>,
    /// Entities paused by an operator.
    pub(crate) pauses: crate::pause::Pauses,
    /// Entities whose stored bytes cannot be read back.
    pub(crate) quarantine: crate::quarantine::Quarantine,
    /// Watched entities, told of each committed change.
    pub(crate) watchers: Arc<crate::watch::Watchers>,
    /// Carries message rows to the nodes that serve their targets (in a cluster).
    pub(crate) courier: std::sync::OnceLock<Arc<dyn crate::Courier>>,
}

impl fmt::Debug for Core {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Core")
            .field("shards", &self.shards)
            .field("inflight", &self.inflight)
            .field("registry", &self.registry)
            .finish_non_exhaustive()
    }
}

/// Counts one accepted call until it is answered (or its caller gives up).
pub(crate) struct Permit<'a>(&'a Core);

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

impl Core {
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
    fn close(&self) {
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

    /// Milliseconds since the runtime started: the clock of idle deadlines.
    pub(crate) fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

type Registration = (
    &'static str,
    Box<dyn FnOnce(&Arc<Core>, u16) -> RegisteredKind + Send>,
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
///     .register::<Counter>()
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
    effects: HashMap<(&'static str, &'static str), EffectRunner>,
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
            config: Config {
                mailbox_capacity: 1024,
                max_inflight: 100_000,
                max_attempts: 3,
                passivation_interval: Duration::from_secs(1),
                reply_window: Duration::from_secs(24 * 60 * 60),
                reply_expiry_interval: Duration::from_secs(60),
            },
            limits: Limits {
                max_entities: 1_000_000,
                max_bytes: 1 << 30,
            },
            node: "node".to_owned(),
        }
    }
}

impl Builder {
    /// The store that holds the entities' state. Required.
    pub fn store(mut self, store: impl Store) -> Self {
        self.store = Some(Arc::new(store));
        self
    }

    /// Registers a kind whose state is written after each step (`Persistence::Snapshot`).
    pub fn register<K>(self) -> Self
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
    /// latest snapshot, and past states can be computed ([`Runtime::state_at`]).
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
    /// again after the restart. A step that starts an unregistered effect fails like a panic.
    pub fn register_effect<E: Effect>(mut self) -> Self {
        self.effects
            .insert((E::Kind::KIND, E::NAME), crate::effect::runner::<E>);
        self
    }

    /// How long the reply to a call with an idempotency key is kept, so that a retry gets it
    /// again instead of applying the message twice ([`Handle::call_idempotent`]). Older
    /// replies are deleted in the background. Default: 24 hours.
    pub fn idempotency_window(mut self, window: Duration) -> Self {
        self.config.reply_window = window;
        self.config.reply_expiry_interval =
            (window / 10).clamp(Duration::from_millis(10), Duration::from_secs(60));
        self
    }

    fn add<K: Process>(mut self, mode: Mode<K>) -> Self {
        self.registrations.push((
            K::KIND,
            Box::new(move |core: &Arc<Core>, index: u16| {
                let kind = Arc::new(KindRt::<K> {
                    name: Arc::from(K::KIND),
                    index,
                    mode,
                    counters: Counters::default(),
                    core: Arc::clone(core),
                });
                RegisteredKind {
                    name: K::KIND,
                    type_id: TypeId::of::<K>(),
                    typed: Arc::clone(&kind) as Arc<dyn Any + Send + Sync>,
                    dynamic: kind,
                }
            }),
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
    /// [`CallError::Overloaded`]. Default: 1024.
    pub fn mailbox_capacity(mut self, messages: usize) -> Self {
        self.config.mailbox_capacity = messages.max(1);
        self
    }

    /// At most this many calls are in flight in the node; more are refused with
    /// [`CallError::Overloaded`]. Default: 100,000.
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
    /// as it acquires their leases ([`Runtime::serve`]) and takes them back
    /// ([`Runtime::hand_off`]). Until then, calls fail with [`CallError::NotOwner`].
    pub async fn start_unclaimed(self) -> Result<Runtime, StartError> {
        let store = self.store.clone().ok_or(StartError::NoStore)?;
        let paused = store.paused().await?;
        self.launch(store, Some(crate::shards::Shards::none()), paused)
    }

    /// Starts a runtime that reads the store and never writes to it: it claims no shard, so
    /// a running node keeps its shards, and any step this runtime computed would be fenced.
    /// For tools that read history and past states ([`Runtime::state_at`]) with the kinds'
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
        let shards = shards.unwrap_or_else(crate::shards::Shards::none);
        let mut names = std::collections::HashSet::new();
        let inflight = Arc::new(AtomicUsize::new(0));
        let dispatch = Arc::new(Dispatch::default());
        let watchers = Arc::new(crate::watch::Watchers::default());
        let committer = Arc::new(Committer::new(
            Arc::clone(&inflight),
            Arc::clone(&dispatch),
            Arc::clone(&watchers),
            crate::sim::active(),
        ));
        let kind_names = self.registrations.iter().map(|(name, _)| *name).collect();
        let core = Arc::new(Core {
            store: Arc::clone(&store),
            shards,
            config: self.config,
            registry: Registry::new(self.limits),
            committer: Arc::clone(&committer),
            dispatch,
            effects: self.effects,
            kind_names,
            runtime: tokio::runtime::Handle::current(),
            inflight,
            closing: AtomicBool::new(false),
            closing_now: Notify::new(),
            drained: Notify::new(),
            started: tokio::time::Instant::now(),
            letters_in_hand: Mutex::default(),
            pauses: crate::pause::Pauses::new(paused),
            quarantine: crate::quarantine::Quarantine::default(),
            watchers,
            courier: std::sync::OnceLock::new(),
        });
        let mut by_name = HashMap::new();
        let mut by_type = HashMap::new();
        for (index, (_, register)) in self.registrations.into_iter().enumerate() {
            let index = u16::try_from(index).unwrap_or(u16::MAX);
            let kind = register(&core, index);
            if !names.insert(kind.name) {
                return Err(StartError::DuplicateKind(kind.name));
            }
            by_name.insert(kind.name, kind.dynamic);
            by_type.insert(kind.type_id, kind.typed);
        }
        let committer_thread = spawn_committer(committer, store)?;
        let sweeper_task = tokio::spawn(sweep(Arc::clone(&core)));
        // A read-only runtime owns no shard: another node delivers its timers.
        let dispatcher_task = writes.then(|| {
            let kinds: Arc<Kinds> = Arc::new(by_name.clone());
            tokio::spawn(dispatch::run(Arc::clone(&core), kinds))
        });
        tracing::info!(node = %self.node, kinds = by_name.len(), "runtime started");
        Ok(Runtime {
            shared: Arc::new(Shared {
                core,
                by_name,
                by_type,
                tasks: Mutex::new(Some(Tasks {
                    committer: committer_thread,
                    sweeper: sweeper_task,
                    dispatcher: dispatcher_task,
                })),
            }),
        })
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
        tokio::spawn(async move {
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

/// Passivates idle entities every `passivation_interval` until the runtime closes.
async fn sweep(core: Arc<Core>) {
    let mut tick = tokio::time::interval(core.config.passivation_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if core.closing.load(Ordering::SeqCst) {
            return;
        }
        core.registry.sweep(core.now_ms());
    }
}

pub(crate) struct Shared {
    pub(crate) core: Arc<Core>,
    pub(crate) by_name: HashMap<&'static str, Arc<dyn DynKind>>,
    by_type: HashMap<TypeId, Arc<dyn Any + Send + Sync>>,
    /// The runtime's background work. Taken by `shutdown`.
    tasks: Mutex<Option<Tasks>>,
}

struct Tasks {
    /// Completes when the committer thread stopped.
    committer: tokio::sync::oneshot::Receiver<()>,
    sweeper: JoinHandle<()>,
    dispatcher: Option<JoinHandle<()>>,
}

impl Tasks {
    fn abort(&self) {
        self.sweeper.abort();
        if let Some(dispatcher) = &self.dispatcher {
            dispatcher.abort();
        }
    }
}

/// A running Perennial node: it hosts the registered kinds' entities.
///
/// Cloning is cheap; clones share the node. Call [`shutdown`](Runtime::shutdown) to stop it
/// cleanly. Dropping the last clone without it stops the committer and the sweeper once the
/// steps already submitted are committed, but does not wait for them.
#[derive(Clone)]
pub struct Runtime {
    pub(crate) shared: Arc<Shared>,
}

impl fmt::Debug for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runtime")
            .field("kinds", &self.kinds())
            .field("core", &self.shared.core)
            .finish()
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Without a shutdown, nothing else would ever stop the committer thread.
        self.core.close();
        self.core.committer.close();
        if let Some(tasks) = self.tasks.lock().take() {
            tasks.abort();
        }
    }
}

/// A snapshot of the runtime's counters.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Stats {
    /// Each registered kind's counters, sorted by name.
    pub kinds: Vec<KindStats>,
    /// Entities resident now.
    pub resident: usize,
    /// Bytes of resident state (each entity's last committed state).
    pub resident_bytes: usize,
    /// Calls accepted and not yet answered.
    pub inflight: usize,
    /// The commit pipeline's counters.
    pub commit: CommitStats,
    /// Pending timers, messages and effects held in memory (those due soon; the rest wait in
    /// storage).
    pub pending_in_memory: usize,
    /// Timers, messages and effects fired (applied, refused or dead-lettered) since the start.
    pub pending_fired: u64,
    /// Entities quarantined now (see [`Runtime::quarantined`]).
    pub quarantined: usize,
}

impl Runtime {
    /// A builder for a runtime.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// A handle to the entity `id` of kind `K`. Cheap: nothing is activated until a message
    /// is sent. An invalid id or an unregistered kind is reported by the handle's calls.
    pub fn get<K: Process>(&self, id: impl AsRef<str>) -> Handle<K> {
        let kind = self
            .shared
            .by_type
            .get(&TypeId::of::<K>())
            .and_then(|k| Arc::clone(k).downcast::<KindRt<K>>().ok());
        let target = match (kind, EntityId::new(id.as_ref())) {
            (Some(kind), Ok(id)) => Ok((kind, id)),
            (None, _) => Err(CallError::UnknownKind(K::KIND.to_owned())),
            (_, Err(e)) => Err(CallError::InvalidId(e)),
        };
        Handle { target }
    }

    /// Sends a JSON message to the entity `id` of the kind named `kind`; returns the JSON reply.
    ///
    /// For callers that know kinds by name only, such as the HTTP gateway.
    pub async fn call_json(
        &self,
        kind: &str,
        id: &str,
        msg: &[u8],
    ) -> Result<String, CallError<JsonRejection>> {
        self.call_json_idempotent(kind, id, None, msg).await
    }

    /// [`call_json`](Self::call_json) with an optional idempotency key (see
    /// [`Handle::call_idempotent`]): a retry with the same key gets the first reply, byte for
    /// byte.
    pub async fn call_json_idempotent(
        &self,
        kind: &str,
        id: &str,
        idempotency_key: Option<&str>,
        msg: &[u8],
    ) -> Result<String, CallError<JsonRejection>> {
        let Some(dynamic) = self.shared.by_name.get(kind) else {
            return Err(CallError::UnknownKind(kind.to_owned()));
        };
        let id = EntityId::new(id)?;
        let via = match idempotency_key {
            Some(key) => entity::Via::idempotent(key).map_err(CallError::widen)?,
            None => entity::Via::Call,
        };
        Arc::clone(dynamic).call_json(id, msg, via).await
    }

    /// The names of the registered kinds, sorted.
    pub fn kinds(&self) -> Vec<&'static str> {
        let mut names: Vec<_> = self.shared.by_name.keys().copied().collect();
        names.sort_unstable();
        names
    }

    /// The epoch this node serves `shard` under now; `None` if it does not serve it.
    pub fn epoch_of(&self, shard: ShardId) -> Option<Epoch> {
        self.shared.core.shards.epoch(shard)
    }

    /// The shards this node serves now, with their epochs, in shard order.
    pub fn served_shards(&self) -> Vec<(ShardId, Epoch)> {
        self.shared.core.shards.served()
    }

    /// Serves `grants` (shards and the epochs their leases gave) from now on, and every
    /// served shard until `until`, a time on this process's monotonic clock (as tokio's
    /// clock tells it: `tokio::time::Instant::now().into_std()`, which a simulation
    /// advances) that the caller sets short of the leases' expiry. Called by a cluster's lease manager each time it
    /// acquires or renews leases; a runtime started with [`Builder::start`] serves every
    /// shard already.
    pub fn serve(&self, grants: &[(ShardId, Epoch)], until: Instant) {
        let core = &self.shared.core;
        // A shard served under another epoch before may have been written by another node
        // since. Its rows held in memory are forgotten (the scan that follows the grant reads
        // what is stored), its watches end (a watcher reconnects and reads the state again),
        // and its resident entities load their state again before their next step (see
        // `entity::Serving`).
        let changed = core.shards.changed(grants);
        if !changed.is_empty() {
            let changed = changed.into_iter().collect();
            core.dispatch.forget_shards(&changed);
            core.watchers.close_shards(&changed);
        }
        core.shards
            .grant(grants, tokio::time::Instant::from_std(until));
    }

    /// Reads the paused entities from storage again. A cluster's lease manager calls it when
    /// the node takes shards, since another node may have paused or resumed their entities.
    pub async fn reload_pauses(&self) -> Result<(), CallError> {
        let core = &self.shared.core;
        let stored = core.store.paused().await.map_err(CallError::Store)?;
        core.pauses.replace(stored);
        Ok(())
    }

    /// Sets the courier that carries messages between entities to the nodes that serve
    /// their targets, when this node does not (a cluster sets it once, at start). Returns
    /// `false` if one was set already.
    pub fn set_courier(&self, courier: Arc<dyn crate::Courier>) -> bool {
        self.shared.core.courier.set(courier).is_ok()
    }

    /// Applies a message row another node carried here ([`Courier`](crate::Courier)): once,
    /// however often the same row is carried, and deleting the row in the same transaction.
    /// [`Delivery::NotServed`](crate::Delivery::NotServed) if this node does not serve the
    /// target's shard.
    pub async fn deliver(&self, parcel: crate::Parcel) -> crate::Delivery {
        let Some(kind) = self.shared.by_name.get(&*parcel.target.kind) else {
            let detail = format!("kind {:?} is not registered", parcel.target.kind);
            return crate::Delivery::Poison(detail);
        };
        let row = crate::dispatch::RowId::new(parcel.owner, parcel.seq);
        Arc::clone(kind)
            .deliver(parcel.target.id, parcel.body, row, true)
            .await
    }

    /// Hands `shards` off: stops taking calls for them ([`CallError::NotOwner`], also for
    /// messages queued and not yet run), passivates their resident entities once their
    /// steps in flight are durable, and drops their pending rows from memory. Returns how
    /// many entities were still busy after `patience`; their later writes are fenced once
    /// the caller releases the leases.
    pub async fn hand_off(&self, shards: &[ShardId], patience: Duration) -> usize {
        let core = &self.shared.core;
        core.shards.revoke(shards);
        let set: std::collections::HashSet<ShardId> = shards.iter().copied().collect();
        core.dispatch.forget_shards(&set);
        // The node that takes them finds their damaged bytes again, if they still are.
        core.quarantine.forget_shards(&set);
        let give_up = tokio::time::Instant::now() + patience;
        loop {
            let (_, busy) = core
                .registry
                .passivate_where(|entry| set.contains(&entry.shard()));
            if busy == 0 || tokio::time::Instant::now() >= give_up {
                core.watchers.close_shards(&set);
                if busy > 0 {
                    tracing::warn!(busy, "handing shards off with entities still busy");
                }
                return busy;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The runtime's counters.
    pub fn stats(&self) -> Stats {
        let core = &self.shared.core;
        let mut kinds: Vec<KindStats> = self.shared.by_name.values().map(|k| k.stats()).collect();
        let (pending_in_memory, pending_fired) = core.dispatch.stats();
        kinds.sort_by(|a, b| a.kind.cmp(&b.kind));
        Stats {
            kinds,
            resident: core.registry.resident(),
            resident_bytes: core.registry.resident_bytes(),
            inflight: core.inflight.load(Ordering::SeqCst),
            commit: core.committer.stats(),
            pending_in_memory,
            quarantined: core.quarantine.len(),
            pending_fired,
        }
    }

    /// The dead letters in the store, oldest first, of one kind or of all.
    pub async fn dead_letters(
        &self,
        kind: Option<&str>,
    ) -> Result<Vec<StoredDeadLetter>, perennial_storage::Error> {
        self.shared.core.store.dead_letters(kind).await
    }

    /// How the kind named `kind` keeps its state, if it is registered.
    pub fn persistence(&self, kind: &str) -> Option<crate::Persistence> {
        self.shared.by_name.get(kind).map(|k| k.persistence())
    }

    /// Up to `limit` steps of a `Journal` entity's durable history, after step `after`, in
    /// step order. Steps a snapshot made unnecessary are deleted unless the kind's
    /// [`Snapshots`] policy keeps them.
    ///
    /// ```
    /// # use perennial_core::{Ctx, Process, Runtime};
    /// # use perennial_storage::MemoryStore;
    /// # #[derive(Default)]
    /// # struct Tally(u32);
    /// # impl Process for Tally {
    /// #     const KIND: &'static str = "tally";
    /// #     type Msg = u32;
    /// #     type Reply = u32;
    /// #     type Error = std::convert::Infallible;
    /// #     fn handle(&mut self, n: u32, _: &mut Ctx<'_, Self>) -> Result<u32, Self::Error> {
    /// #         self.0 += n;
    /// #         Ok(self.0)
    /// #     }
    /// # }
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let rt = Runtime::builder()
    ///     .store(MemoryStore::new())
    ///     .register_journal::<Tally>()
    ///     .start()
    ///     .await?;
    /// rt.get::<Tally>("t").call(5).await?;
    /// rt.get::<Tally>("t").call(7).await?;
    /// let history = rt.history("tally", "t", 0, 100).await?;
    /// assert_eq!(history[1].step, 2);
    /// assert_eq!(history[1].message, 7);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn history(
        &self,
        kind: &str,
        id: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<HistoryEntry>, CallError> {
        let Some(dynamic) = self.shared.by_name.get(kind) else {
            return Err(CallError::UnknownKind(kind.to_owned()));
        };
        let key = perennial_types::EntityKey::new(kind, EntityId::new(id)?);
        if dynamic.persistence() != crate::Persistence::Journal {
            return Err(CallError::NoHistory {
                key,
                detail: format!("kind {kind:?} is not a Journal kind: it keeps no history"),
            });
        }
        let entries = self
            .shared
            .core
            .store
            .journal(&key, after, limit)
            .await
            .map_err(|source| CallError::Storage {
                key: key.clone(),
                source,
            })?;
        entries
            .iter()
            .map(|e| {
                HistoryEntry::from_journal(e).map_err(|error| CallError::CorruptState {
                    key: key.clone(),
                    detail: format!("journal entry {}: {error}", e.step),
                })
            })
            .collect()
    }

    /// The durable state of an entity as of step `step`, as JSON: for `Journal` kinds with
    /// snapshots, by replay from the latest snapshot at or before `step` (or from the first
    /// step, if the journal still holds it); for `Snapshot` kinds, only at their latest step.
    pub async fn state_at(&self, kind: &str, id: &str, step: u64) -> Result<String, CallError> {
        self.stored_state(kind, id, Some(step)).await
    }

    /// The latest durable state of an entity, as JSON, with the step it is at: for `Journal`
    /// kinds with snapshots, by replaying the journal after the latest snapshot. Nothing is
    /// activated.
    pub async fn durable_state(&self, kind: &str, id: &str) -> Result<String, CallError> {
        self.stored_state(kind, id, None).await
    }

    async fn stored_state(
        &self,
        kind: &str,
        id: &str,
        step: Option<u64>,
    ) -> Result<String, CallError> {
        let Some(dynamic) = self.shared.by_name.get(kind) else {
            return Err(CallError::UnknownKind(kind.to_owned()));
        };
        let id = EntityId::new(id)?;
        Arc::clone(dynamic).state_at(id, step).await
    }

    /// Passivates every idle entity now; returns how many entities stay resident.
    pub fn passivate_idle(&self) -> usize {
        self.shared.core.registry.passivate_all()
    }

    /// Stops the runtime: refuses new calls, waits until every accepted call is answered
    /// (so every acknowledged step is durable), passivates all entities and stops the
    /// committer. The store stays open; close it afterwards if the node owns it.
    pub async fn shutdown(&self) {
        let core = &self.shared.core;
        core.close();
        loop {
            let drained = core.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            if core.inflight.load(Ordering::SeqCst) == 0 {
                break;
            }
            drained.await;
        }
        // Entities whose callers gave up may still be finishing a step: give them a moment.
        let give_up = Instant::now() + Duration::from_secs(10);
        while core.registry.passivate_all() > 0 && Instant::now() < give_up {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        core.committer.close();
        let tasks = self.shared.tasks.lock().take();
        if let Some(tasks) = tasks {
            tasks.abort();
            let _ = tasks.committer.await;
        }
        tracing::info!("runtime stopped");
    }
}

/// A handle's kind and entity id, borrowed.
type Target<'a, K> = (&'a Arc<KindRt<K>>, &'a EntityId);

/// A cheap, cloneable address of one entity of kind `K`. See [`Runtime::get`].
pub struct Handle<K: Process> {
    target: Result<(Arc<KindRt<K>>, EntityId), CallError>,
}

impl<K: Process> Clone for Handle<K> {
    fn clone(&self) -> Self {
        Self {
            target: self.target.clone(),
        }
    }
}

impl<K: Process> fmt::Debug for Handle<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Handle");
        d.field("kind", &K::KIND);
        match &self.target {
            Ok((_, id)) => d.field("id", id),
            Err(e) => d.field("error", e),
        };
        d.finish()
    }
}

impl<K: Process> Handle<K> {
    /// Watches the entity: [`Watch::next`](crate::Watch::next) gives each change of its
    /// state (as JSON, with its version) once the step that made it is durable, never
    /// before. Steps that leave the state as it was give none.
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
    /// let rt = Runtime::builder().store(MemoryStore::new()).register::<Counter>().start().await?;
    /// let counter = rt.get::<Counter>("c1");
    /// let mut changes = counter.watch()?;
    /// counter.call(5).await?;
    /// let change = changes.next().await.unwrap();
    /// assert_eq!(&*change.state, r#"{"value":5}"#);
    /// # Ok(())
    /// # }
    /// ```
    pub fn watch(&self) -> Result<crate::Watch, CallError> {
        let (kind, id) = self.target.as_ref().map_err(Clone::clone)?;
        if !DynKind::watchable(&**kind) {
            return Err(CallError::NotWatchable(K::KIND.to_owned()));
        }
        let key = perennial_types::EntityKey::new(K::KIND, id.clone());
        Ok(crate::Watch::new(kind.core.watchers.subscribe(key)))
    }

    /// The entity's id, if it is valid.
    pub fn id(&self) -> Option<&EntityId> {
        self.target.as_ref().ok().map(|(_, id)| id)
    }

    /// Sends `msg` and waits for the reply, which leaves the entity only once the step that
    /// produced it is durable.
    pub async fn call(&self, msg: K::Msg) -> Result<K::Reply, CallError<K::Error>> {
        let (kind, id) = self.target()?;
        entity::call(kind, id, msg, entity::Via::Call).await
    }

    /// Sends `msg` with an idempotency key: the first call with `key` is applied and its reply
    /// kept; a retry with the same key (after a timeout, a lost connection, a crash of the
    /// node between the commit and the reply) gets that reply again, without applying the
    /// message a second time. Keys are per entity, 1 to 256 bytes, and kept for the
    /// runtime's [`idempotency_window`](Builder::idempotency_window).
    ///
    /// Only applied calls are remembered: a call the handler refused (or that failed) was not
    /// applied, so a retry runs again.
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
    /// let rt = Runtime::builder().store(MemoryStore::new()).register::<Counter>().start().await?;
    /// let c = rt.get::<Counter>("c1");
    /// assert_eq!(c.call_idempotent("payment-17", 5).await?, 5);
    /// assert_eq!(c.call_idempotent("payment-17", 5).await?, 5, "not applied twice");
    /// assert_eq!(c.call(1).await?, 6);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn call_idempotent(
        &self,
        key: impl AsRef<str>,
        msg: K::Msg,
    ) -> Result<K::Reply, CallError<K::Error>> {
        let (kind, id) = self.target()?;
        let via = entity::Via::idempotent(key.as_ref()).map_err(CallError::widen)?;
        entity::call(kind, id, msg, via).await
    }

    /// Sends `msg` and waits until the step it caused is durable, without the reply.
    pub async fn send(&self, msg: K::Msg) -> Result<(), CallError<K::Error>> {
        self.call(msg).await.map(drop)
    }

    fn target(&self) -> Result<Target<'_, K>, CallError<K::Error>> {
        match &self.target {
            Ok((kind, id)) => Ok((kind, id)),
            Err(e) => Err(e.clone().widen()),
        }
    }
}
