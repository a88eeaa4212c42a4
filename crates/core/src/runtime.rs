//! [`Runtime`]: a running node, the library's entry point: handles to entities, calls by kind
//! name, statistics, and a clean shutdown.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use std::time::{Duration, Instant};

use parking_lot::Mutex;
use perennial_types::{EntityId, EntityKey, shard_of};

use tokio::task::JoinHandle;

use crate::commit::CommitStats;
use crate::dyn_kind::DynKind;
use crate::engine::Engine;
use crate::entity;

use crate::kind::{KindRt, KindStats};
use crate::{CallError, Caller, EntityRef, JsonRejection, Process};

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

impl Shared {
    /// Refuses new calls, lets the committer stop once the calls in flight are answered, and
    /// stops the background tasks.
    fn stop(&self) {
        self.engine.close();
        self.engine.committer.close();
        if let Some(tasks) = self.tasks.lock().take() {
            tasks.abort();
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Without a shutdown, nothing else would ever stop the committer thread.
        self.stop();
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
    /// Entities quarantined now (see [`Admin::quarantined`](crate::Admin::quarantined)).
    pub quarantined: usize,
    /// Effects' attempts that failed (returned `Err`, panicked or timed out) since the start.
    pub effect_attempts_failed: u64,
    /// Effects that failed for good since the start: their entity got
    /// [`Effect::failed`](crate::Effect::failed)'s message.
    pub effects_failed: u64,
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

    /// Stops the runtime as a kill -9 would: nothing it computed is written any more, its
    /// calls in flight fail, its background tasks stop (the test kit's restart).
    #[cfg(feature = "testing")]
    pub(crate) fn kill(&self) {
        self.shared.engine.committer.kill();
        self.shared.stop();
    }

    /// A handle to the entity `id` of kind `K`. Cheap: nothing is activated until a message
    /// is sent. An invalid id or an unregistered kind is reported by the handle's calls.
    pub fn get<K: Process>(&self, id: impl AsRef<str>) -> EntityRef<K> {
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
        EntityRef::new(target)
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
    /// [`EntityRef::call_idempotent`]): a retry with the same key gets the first reply, byte for
    /// byte.
    pub async fn call_json_idempotent(
        &self,
        kind: &str,
        id: &str,
        idempotency_key: Option<&str>,
        msg: &[u8],
    ) -> Result<String, CallError<JsonRejection>> {
        self.call_json_as(None, kind, id, idempotency_key, msg)
            .await
    }

    /// [`call_json_idempotent`](Self::call_json_idempotent) on behalf of `caller` (see
    /// [`Ctx::caller`](crate::Ctx::caller)), as the HTTP gateway calls once it has verified
    /// who is calling. Idempotency keys are per caller.
    pub async fn call_json_as(
        &self,
        caller: Option<&Caller>,
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
            Some(key) => entity::Via::idempotent_for(key, caller).map_err(CallError::widen)?,
            None => entity::Via::Call,
        };
        Arc::clone(dynamic)
            .call_json(id, (msg, caller.cloned()), via)
            .await
    }

    /// The names of the registered kinds, sorted.
    pub fn kinds(&self) -> Vec<&'static str> {
        let mut names: Vec<_> = self.shared.by_name.keys().copied().collect();
        names.sort_unstable();
        names
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
            effect_attempts_failed: engine
                .effect_counters
                .failed_attempts
                .load(std::sync::atomic::Ordering::Relaxed),
            effects_failed: engine
                .effect_counters
                .failed
                .load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// How the kind named `kind` keeps its state, if it is registered.
    pub fn persistence(&self, kind: &str) -> Option<crate::Persistence> {
        self.shared.by_name.get(kind).map(|k| k.persistence())
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

    /// Watches the entity `id` of the kind named `kind`: each change of its state, once
    /// durable. See [`EntityRef::watch`](crate::EntityRef::watch).
    pub fn watch(&self, kind: &str, id: &str) -> Result<crate::Watch, CallError> {
        let dynamic = self.kind(kind)?;
        if !dynamic.watchable() {
            return Err(CallError::NotWatchable(kind.to_owned()));
        }
        let shows_state = dynamic.watch_shows_state();
        let key = EntityKey::new(kind, EntityId::new(id)?);
        let shard = shard_of(kind, id);
        if self.shared.engine.shards.epoch(shard).is_none() {
            // Another node commits its changes.
            return Err(CallError::NotOwner { shard });
        }
        let changes = self.shared.engine.watchers.subscribe(key);
        Ok(crate::Watch::new(changes, shows_state))
    }

    /// Reads up to `limit` changes of the kind named `kind` after the cursor `after` (0: from
    /// the oldest kept), in commit order: each committed step of each entity, with its
    /// version and state after it (`None`: it deleted the entity). Go on from the last
    /// change's [`seq`](perennial_storage::StoredChange::seq); a page whose
    /// [`expired_through`](perennial_storage::ChangePage::expired_through) is above your
    /// cursor means changes you had not read expired. See
    /// [`Builder::change_feed`](crate::Builder::change_feed). In a cluster, every node reads
    /// the whole feed.
    pub async fn changes(
        &self,
        kind: &str,
        after: u64,
        limit: usize,
    ) -> Result<perennial_storage::ChangePage, crate::FeedError> {
        let Some(dynamic) = self.shared.by_name.get(kind) else {
            return Err(crate::FeedError::UnknownKind(kind.to_owned()));
        };
        if dynamic.feed().is_none() {
            return Err(crate::FeedError::NoFeed(kind.to_owned()));
        }
        self.shared
            .engine
            .store
            .catalog()
            .changes(kind, after, limit)
            .await
            .map_err(crate::FeedError::Store)
    }

    /// Whether the kind named `kind` keeps a change feed whose states clients may see
    /// ([`Process::WATCH_SHOWS_STATE`](crate::Process::WATCH_SHOWS_STATE)); `None` if it
    /// keeps no feed (or is not registered).
    pub fn feed_shows_state(&self, kind: &str) -> Option<bool> {
        let dynamic = self.shared.by_name.get(kind)?;
        dynamic.feed().map(|_| dynamic.watch_shows_state())
    }

    pub(crate) fn kind(&self, kind: &str) -> Result<&Arc<dyn crate::dyn_kind::DynKind>, CallError> {
        self.shared
            .by_name
            .get(kind)
            .ok_or_else(|| CallError::UnknownKind(kind.to_owned()))
    }
}
