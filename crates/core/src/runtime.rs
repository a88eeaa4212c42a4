//! [`Runtime`]: a running node, the library's entry point: handles to entities, calls by kind
//! name, statistics, and a clean shutdown.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use std::time::{Duration, Instant};

use parking_lot::Mutex;
use perennial_storage::{Store, StoredDeadLetter};
use perennial_types::{EntityId, Epoch, ShardId};

use tokio::task::JoinHandle;

use crate::commit::CommitStats;
use crate::dyn_kind::DynKind;
use crate::engine::Engine;
use crate::entity;
use crate::journal::HistoryEntry;
use crate::kind::{KindRt, KindStats};
use crate::{CallError, Handle, JsonRejection, Process};

pub(crate) struct Shared {
    pub(crate) engine: Arc<Engine>,
    pub(crate) by_name: HashMap<&'static str, Arc<dyn DynKind>>,
    by_type: HashMap<TypeId, Arc<dyn Any + Send + Sync>>,
    /// The runtime's background work. Taken by `shutdown`.
    tasks: Mutex<Option<Tasks>>,
}

/// The runtime's background work: the committer, the sweeper that passivates idle entities,
/// and the dispatcher (none on a read-only runtime).
pub(crate) struct Tasks {
    /// Completes when the committer thread stopped.
    pub(crate) committer: tokio::sync::oneshot::Receiver<()>,
    pub(crate) sweeper: JoinHandle<()>,
    pub(crate) dispatcher: Option<JoinHandle<()>>,
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
            .field("engine", &self.shared.engine)
            .finish()
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Without a shutdown, nothing else would ever stop the committer thread.
        self.engine.close();
        self.engine.committer.close();
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
    pub(crate) fn new(
        engine: Arc<Engine>,
        by_name: HashMap<&'static str, Arc<dyn DynKind>>,
        by_type: HashMap<TypeId, Arc<dyn Any + Send + Sync>>,
        tasks: Tasks,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                engine,
                by_name,
                by_type,
                tasks: Mutex::new(Some(tasks)),
            }),
        }
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
        Handle::new(target)
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
        self.shared.engine.shards.epoch(shard)
    }

    /// The shards this node serves now, with their epochs, in shard order.
    pub fn served_shards(&self) -> Vec<(ShardId, Epoch)> {
        self.shared.engine.shards.served()
    }

    /// Serves `grants` (shards and the epochs their leases gave) from now on, and every
    /// served shard until `until`, a time on this process's monotonic clock (as tokio's
    /// clock tells it: `tokio::time::Instant::now().into_std()`, which a simulation
    /// advances) that the caller sets short of the leases' expiry. Called by a cluster's lease manager each time it
    /// acquires or renews leases; a runtime started with [`Builder::start`](crate::Builder::start) serves every
    /// shard already.
    pub fn serve(&self, grants: &[(ShardId, Epoch)], until: Instant) {
        let engine = &self.shared.engine;
        // A shard served under another epoch before may have been written by another node
        // since. Its rows held in memory are forgotten (the scan that follows the grant reads
        // what is stored), its watches end (a watcher reconnects and reads the state again),
        // and its resident entities load their state again before their next step (see
        // `entity::Serving`).
        let changed = engine.shards.changed(grants);
        if !changed.is_empty() {
            let changed = changed.into_iter().collect();
            engine.due.forget_shards(&changed);
            engine.watchers.close_shards(&changed);
        }
        engine
            .shards
            .grant(grants, tokio::time::Instant::from_std(until));
    }

    /// Reads the paused entities from storage again. A cluster's lease manager calls it when
    /// the node takes shards, since another node may have paused or resumed their entities.
    pub async fn reload_pauses(&self) -> Result<(), CallError> {
        let engine = &self.shared.engine;
        let stored = engine.store.paused().await.map_err(CallError::Store)?;
        engine.pauses.replace(stored);
        Ok(())
    }

    /// Sets the courier that carries messages between entities to the nodes that serve
    /// their targets, when this node does not (a cluster sets it once, at start). Returns
    /// `false` if one was set already.
    pub fn set_courier(&self, courier: Arc<dyn crate::Courier>) -> bool {
        self.shared.engine.courier.set(courier).is_ok()
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
        let row = crate::due::RowId::new(parcel.owner, parcel.seq);
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
        let engine = &self.shared.engine;
        engine.shards.revoke(shards);
        let set: std::collections::HashSet<ShardId> = shards.iter().copied().collect();
        engine.due.forget_shards(&set);
        // The node that takes them finds their damaged bytes again, if they still are.
        engine.quarantine.forget_shards(&set);
        let give_up = tokio::time::Instant::now() + patience;
        loop {
            let (_, busy) = engine
                .registry
                .passivate_where(|entry| set.contains(&entry.shard()));
            if busy == 0 || tokio::time::Instant::now() >= give_up {
                engine.watchers.close_shards(&set);
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
        let engine = &self.shared.engine;
        let mut kinds: Vec<KindStats> = self.shared.by_name.values().map(|k| k.stats()).collect();
        let (pending_in_memory, pending_fired) = engine.due.stats();
        kinds.sort_by(|a, b| a.kind.cmp(&b.kind));
        Stats {
            kinds,
            resident: engine.registry.resident(),
            resident_bytes: engine.registry.resident_bytes(),
            inflight: engine.inflight(),
            commit: engine.committer.stats(),
            pending_in_memory,
            quarantined: engine.quarantine.len(),
            pending_fired,
        }
    }

    /// The dead letters in the store, oldest first, of one kind or of all.
    pub async fn dead_letters(
        &self,
        kind: Option<&str>,
    ) -> Result<Vec<StoredDeadLetter>, perennial_storage::Error> {
        self.shared.engine.store.dead_letters(kind).await
    }

    /// How the kind named `kind` keeps its state, if it is registered.
    pub fn persistence(&self, kind: &str) -> Option<crate::Persistence> {
        self.shared.by_name.get(kind).map(|k| k.persistence())
    }

    /// Up to `limit` steps of a `Journal` entity's durable history, after step `after`, in
    /// step order. Steps a snapshot made unnecessary are deleted unless the kind's
    /// [`Snapshots`](crate::Snapshots) policy keeps them.
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
            .engine
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
        self.shared.engine.registry.passivate_all()
    }

    /// Stops the runtime: refuses new calls, waits until every accepted call is answered
    /// (so every acknowledged step is durable), passivates all entities and stops the
    /// committer. The store stays open; close it afterwards if the node owns it.
    pub async fn shutdown(&self) {
        let engine = &self.shared.engine;
        engine.close();
        engine.drained().await;
        // Entities whose callers gave up may still be finishing a step: give them a moment.
        let give_up = Instant::now() + Duration::from_secs(10);
        while engine.registry.passivate_all() > 0 && Instant::now() < give_up {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        engine.committer.close();
        let tasks = self.shared.tasks.lock().take();
        if let Some(tasks) = tasks {
            tasks.abort();
            let _ = tasks.committer.await;
        }
        tracing::info!("runtime stopped");
    }
}
