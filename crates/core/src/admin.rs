//! What an operator does to a running runtime: list a kind's entities and query them by
//! state, index a kind by a path, passivate entities now, pause and resume an entity, and
//! retry or discard dead letters.

use std::sync::Arc;

use perennial_storage::{
    Batch, DeadLetterDone, EntityDelete, EntityState, Filter, Page, Path, PauseWrite,
    StoredDeadLetter,
};
use perennial_types::{EntityId, EntityKey, Epoch, ShardId, shard_of};

use crate::entity::Via;
use crate::journal::HistoryEntry;
use crate::registry::Key;
use crate::{AdminError, CallError, Persistence, Quarantined, Runtime};

/// One entity of a kind, as an operator sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct EntityInfo {
    /// The entity's id.
    pub id: String,
    /// Whether it is in memory on this node now.
    pub resident: bool,
    /// Whether an operator paused it ([`Admin::pause`](crate::Admin::pause)).
    pub paused: bool,
    /// The version of its stored state (for a `Journal` kind, the step of its latest
    /// snapshot); 0 if nothing is stored.
    pub state_version: u64,
    /// The schema version of its stored state (see
    /// [`Process::MIGRATIONS`](crate::Process::MIGRATIONS)); 1 if nothing is stored.
    pub schema: u32,
    /// Its latest journal step (`Journal` kinds), else 0.
    pub last_step: u64,
    /// When its last step committed, in milliseconds since the Unix epoch; `None` if nothing
    /// is stored (an `Ephemeral` entity).
    pub updated_at_ms: Option<i64>,
}

/// What [`Admin::passivate`](crate::Admin::passivate) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Passivation {
    /// The entity left memory; its next message activates it again.
    Passivated,
    /// The entity is handling a message or waiting for a commit; it stays.
    Busy,
    /// The entity was not in memory.
    NotResident,
}

/// What operators do to a running runtime, apart from what its application does: list and
/// query a kind's entities, index a kind, read an entity's stored state and history, pause,
/// resume, passivate and release entities, handle dead letters, and run migration passes.
/// Reached through [`Runtime::admin`]; cheap to make and to clone.
#[derive(Debug, Clone)]
pub struct Admin {
    pub(crate) rt: Runtime,
}

impl Runtime {
    /// The operator's API of this runtime: see [`Admin`].
    pub fn admin(&self) -> Admin {
        Admin { rt: self.clone() }
    }
}

impl Admin {
    /// The dead letters in the store, oldest first, of one kind or of all.
    pub async fn dead_letters(
        &self,
        kind: Option<&str>,
    ) -> Result<Vec<StoredDeadLetter>, perennial_storage::Error> {
        self.rt
            .shared
            .engine
            .store
            .catalog()
            .dead_letters(kind)
            .await
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
    /// let history = rt.admin().history("tally", "t", 0, 100).await?;
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
    ) -> Result<Vec<HistoryEntry>, AdminError> {
        let Some(dynamic) = self.rt.shared.by_name.get(kind) else {
            return Err(AdminError::UnknownKind(kind.to_owned()));
        };
        let key = perennial_types::EntityKey::new(kind, EntityId::new(id)?);
        if dynamic.persistence() != crate::Persistence::Journal {
            return Err(AdminError::Entity(CallError::NoHistory {
                key,
                detail: format!("kind {kind:?} is not a Journal kind: it keeps no history"),
            }));
        }
        let entries = self
            .rt
            .shared
            .engine
            .store
            .journal(&key, after, limit)
            .await
            .map_err(|source| {
                AdminError::Entity(CallError::Storage {
                    key: key.clone(),
                    source,
                })
            })?;
        entries
            .iter()
            .map(|e| {
                HistoryEntry::from_journal(e).map_err(|error| {
                    AdminError::Entity(CallError::CorruptState {
                        key: key.clone(),
                        detail: format!("journal entry {}: {error}", e.step),
                    })
                })
            })
            .collect()
    }

    /// The durable state of an entity as of step `step`, as JSON: for `Journal` kinds with
    /// snapshots, by replay from the latest snapshot at or before `step` (or from the first
    /// step, if the journal still holds it); for `Snapshot` kinds, only at their latest step.
    pub async fn state_at(&self, kind: &str, id: &str, step: u64) -> Result<String, AdminError> {
        self.stored_state(kind, id, Some(step)).await
    }

    /// The latest durable state of an entity, as JSON, with the step it is at: for `Journal`
    /// kinds with snapshots, by replaying the journal after the latest snapshot. Nothing is
    /// activated.
    pub async fn durable_state(&self, kind: &str, id: &str) -> Result<String, AdminError> {
        self.stored_state(kind, id, None).await
    }

    /// Passivates every idle entity now; returns how many entities stay resident.
    pub fn passivate_idle(&self) -> usize {
        self.rt.shared.engine.registry.passivate_all()
    }

    /// Up to `limit` entities of `kind` whose id is after `after` (from the first, if
    /// `None`), in id order: those stored, with whether each is resident; for an `Ephemeral`
    /// kind, those resident.
    ///
    /// ```
    /// # use perennial_core::{Ctx, Process, Runtime};
    /// # use perennial_storage::MemoryStore;
    /// # #[derive(Default, serde::Serialize, serde::Deserialize)]
    /// # struct Counter(i64);
    /// # impl Process for Counter {
    /// #     const KIND: &'static str = "counter";
    /// #     type Msg = i64;
    /// #     type Reply = i64;
    /// #     type Error = std::convert::Infallible;
    /// #     fn handle(&mut self, n: i64, _: &mut Ctx<'_, Self>) -> Result<i64, Self::Error> {
    /// #         self.0 += n;
    /// #         Ok(self.0)
    /// #     }
    /// # }
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let rt = Runtime::builder().store(MemoryStore::new()).register_snapshot::<Counter>().start().await?;
    /// for id in ["b", "a", "c"] {
    ///     rt.get::<Counter>(id).call(1).await?;
    /// }
    /// let page = rt.admin().entities("counter", Some("a"), 10).await?;
    /// let ids: Vec<&str> = page.iter().map(|e| e.id.as_str()).collect();
    /// assert_eq!(ids, ["b", "c"]);
    /// assert!(page[0].resident);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn entities(
        &self,
        kind: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<EntityInfo>, AdminError> {
        let dynamic = self.rt.kind(kind)?;
        let engine = &self.rt.shared.engine;
        let resident = |id: &EntityId| {
            engine.registry.contains(&Key {
                kind: dynamic.index(),
                id: id.clone(),
            })
        };
        if dynamic.persistence() == Persistence::Ephemeral {
            let mut ids = engine.registry.ids_of(dynamic.index());
            ids.retain(|id| after.is_none_or(|a| id.as_str() > a));
            ids.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
            ids.truncate(limit);
            return Ok(ids
                .into_iter()
                .map(|id| EntityInfo {
                    paused: engine.pauses.is_paused(kind, &id),
                    id: id.as_str().to_owned(),
                    resident: true,
                    state_version: 0,
                    schema: 1,
                    last_step: 0,
                    updated_at_ms: None,
                })
                .collect());
        }
        let stored = engine
            .store
            .catalog()
            .entities(kind, Page::after(after, limit))
            .await
            .map_err(AdminError::Store)?;
        Ok(stored
            .into_iter()
            .map(|e| EntityInfo {
                resident: EntityId::new(&e.id).is_ok_and(|id| resident(&id)),
                paused: EntityId::new(&e.id).is_ok_and(|id| engine.pauses.is_paused(kind, &id)),
                id: e.id,
                state_version: e.state_version,
                schema: e.schema,
                last_step: e.last_step,
                updated_at_ms: Some(e.updated_at_ms),
            })
            .collect())
    }

    /// Up to `limit` stored entities of `kind` whose id is after `after` and whose state
    /// matches `filter`, in id order, with their states as stored: acknowledged state only
    /// (for a `Journal` kind, its latest snapshot). See [`Filter`] for the language, and
    /// [`Admin::create_index`](crate::Admin::create_index) to answer a filter without reading every state.
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
    /// let rt = Runtime::builder().store(MemoryStore::new()).register_snapshot::<Counter>().start().await?;
    /// for (id, n) in [("a", 5), ("b", 500), ("c", 50)] {
    ///     rt.get::<Counter>(id).call(n).await?;
    /// }
    /// let big = rt.admin().query("counter", &"value >= 50".parse()?, None, 10).await?;
    /// let ids: Vec<&str> = big.iter().map(|e| e.id.as_str()).collect();
    /// assert_eq!(ids, ["b", "c"]);
    /// assert_eq!(big[0].state, r#"{"value":500}"#);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn query(
        &self,
        kind: &str,
        filter: &Filter,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<EntityState>, AdminError> {
        self.stored_kind(kind)?;
        let store = &self.rt.shared.engine.store;
        store
            .catalog()
            .query(kind, filter, Page::after(after, limit))
            .await
            .map_err(AdminError::Store)
    }

    /// Indexes the stored states of `kind` by the value at `path` (which has no `[*]`), so
    /// that [`query`](Admin::query) answers a filter comparing it without reading every
    /// state. Building the index of a large kind takes a while (on SQLite, about a second per
    /// million entities), and commits wait meanwhile. Indexing a path again does nothing.
    pub async fn create_index(&self, kind: &str, path: &Path) -> Result<(), AdminError> {
        self.stored_kind(kind)?;
        if !path.is_single() {
            return Err(AdminError::NotIndexable(path.to_string()));
        }
        let store = &self.rt.shared.engine.store;
        store
            .catalog()
            .create_index(kind, path)
            .await
            .map_err(AdminError::Store)
    }

    /// Drops the index of `kind` by `path`; returns whether there was one.
    pub async fn drop_index(&self, kind: &str, path: &Path) -> Result<bool, AdminError> {
        self.stored_kind(kind)?;
        let store = &self.rt.shared.engine.store;
        store
            .catalog()
            .drop_index(kind, path)
            .await
            .map_err(AdminError::Store)
    }

    /// The paths `kind` is indexed by.
    pub async fn indexes(&self, kind: &str) -> Result<Vec<Path>, AdminError> {
        self.stored_kind(kind)?;
        let store = &self.rt.shared.engine.store;
        store
            .catalog()
            .indexes(kind)
            .await
            .map_err(AdminError::Store)
    }

    /// Pauses an entity, durably: from now on its calls fail with [`CallError::Paused`],
    /// and its timers, messages from other entities and effect results wait in storage.
    /// Messages it accepted before the pause still run. Returns whether it was not paused already.
    pub async fn pause(&self, kind: &str, id: &str) -> Result<bool, AdminError> {
        self.rt.kind(kind)?;
        let key = EntityKey::new(kind, EntityId::new(id)?);
        // Only the node that serves the entity knows whether it is paused now.
        self.served(&key)?;
        let pauses = &self.rt.shared.engine.pauses;
        if !pauses.insert(key.clone()) {
            return Ok(false);
        }
        if let Err(e) = self.commit_pause(&key, true).await {
            pauses.remove(&key);
            return Err(e);
        }
        Ok(true)
    }

    /// Resumes a paused entity, durably: calls are accepted again, and what waited is
    /// delivered in its usual order. Returns whether it was paused.
    pub async fn resume(&self, kind: &str, id: &str) -> Result<bool, AdminError> {
        self.rt.kind(kind)?;
        let key = EntityKey::new(kind, EntityId::new(id)?);
        self.served(&key)?;
        let pauses = &self.rt.shared.engine.pauses;
        if !pauses.is_paused(&key.kind, &key.id) {
            return Ok(false);
        }
        self.commit_pause(&key, false).await?;
        Ok(pauses.remove(&key))
    }

    /// How many entities of `kind` are stored (with a state or a journal); 0 for an
    /// `Ephemeral` kind.
    pub async fn stored(&self, kind: &str) -> Result<u64, AdminError> {
        if self.rt.kind(kind)?.persistence() == Persistence::Ephemeral {
            return Ok(0);
        }
        let store = &self.rt.shared.engine.store;
        store.catalog().count(kind).await.map_err(AdminError::Store)
    }

    /// The timers, messages to other entities and effects that `kind`/`id`'s steps left and
    /// that are not applied yet (at most `limit`, by number), as storage holds them.
    pub async fn pending_of(
        &self,
        kind: &str,
        id: &str,
        limit: usize,
    ) -> Result<Vec<perennial_storage::Pending>, AdminError> {
        self.stored_kind(kind)?;
        let key = EntityKey::new(kind, EntityId::new(id)?);
        let store = &self.rt.shared.engine.store;
        store
            .catalog()
            .pending_of(&key, limit)
            .await
            .map_err(AdminError::Store)
    }

    /// The effects of `kind`/`id` that this node is running and whose last attempt failed
    /// (they wait for their next attempt, or run it), by the number of their pending row
    /// ([`pending_of`](Self::pending_of)). Empty for an entity another node serves.
    pub fn retrying(
        &self,
        kind: &str,
        id: &str,
    ) -> Result<Vec<(u64, crate::Retrying)>, AdminError> {
        self.stored_kind(kind)?;
        let key = EntityKey::new(kind, EntityId::new(id)?);
        let retrying = self.rt.shared.engine.effect_counters.retrying.lock();
        let mut found: Vec<(u64, crate::Retrying)> = retrying
            .iter()
            .filter(|(row, _)| row.owner == key)
            .map(|(row, r)| (row.seq, r.clone()))
            .collect();
        found.sort_by_key(|(seq, _)| *seq);
        Ok(found)
    }

    /// The paused entities, in key order.
    pub fn paused(&self) -> Vec<EntityKey> {
        self.rt.shared.engine.pauses.list()
    }

    /// The entities this node quarantined because their stored bytes cannot be read back
    /// (see [`CallError::Quarantined`]), in key order.
    pub fn quarantined(&self) -> Vec<Quarantined> {
        self.rt.shared.engine.quarantine.list()
    }

    /// Releases a quarantined entity, once its bytes are fixed: the next message activates
    /// it from storage again (and quarantines it again if they still cannot be read), and
    /// its timers and messages that waited are delivered. Returns whether it was
    /// quarantined.
    pub fn release(&self, kind: &str, id: &str) -> Result<bool, AdminError> {
        self.rt.kind(kind)?;
        let key = EntityKey::new(kind, EntityId::new(id)?);
        // Only the node that serves the entity activates it.
        self.served(&key)?;
        Ok(self.rt.shared.engine.quarantine.remove(&key))
    }

    async fn commit_pause(&self, key: &EntityKey, paused: bool) -> Result<(), AdminError> {
        let (shard, epoch) = self.served(key)?;
        let pause = PauseWrite {
            key: key.clone(),
            shard,
            epoch,
            paused,
        };
        self.commit_now(
            key,
            Batch {
                pauses: vec![pause],
                ..Batch::default()
            },
        )
        .await
    }

    /// The shard of `key` and its epoch, if this node serves it.
    fn served(&self, key: &EntityKey) -> Result<(ShardId, Epoch), AdminError> {
        let shard = shard_of(&key.kind, key.id.as_str());
        let epoch = self.rt.shared.engine.shards.epoch(shard);
        epoch
            .map(|epoch| (shard, epoch))
            .ok_or(AdminError::NotOwner { shard })
    }

    /// Commits an operator's batch about `key` now, beside the commit pipeline.
    async fn commit_now(&self, key: &EntityKey, batch: Batch) -> Result<(), AdminError> {
        let storage = AdminError::Store;
        let store = Arc::clone(&self.rt.shared.engine.store);
        // A simulation has no threads but its own.
        let outcome = if self.rt.shared.engine.committer.is_task() {
            store.commit(batch).map_err(storage)?
        } else {
            tokio::task::spawn_blocking(move || store.commit(batch))
                .await
                .map_err(|e| storage(perennial_storage::Error::Backend(e.to_string())))?
                .map_err(storage)?
        };
        if let Some(&shard) = outcome.fenced.first() {
            return Err(AdminError::Entity(CallError::Fenced {
                key: key.clone(),
                shard,
            }));
        }
        Ok(())
    }

    /// Passivates one entity now, if it is idle: its state is already durable, so it only
    /// leaves memory (its kind's `on_passivate` runs).
    pub fn passivate(&self, kind: &str, id: &str) -> Result<Passivation, AdminError> {
        let dynamic = self.rt.kind(kind)?;
        let key = Key {
            kind: dynamic.index(),
            id: EntityId::new(id)?,
        };
        // Resident only where it is served.
        self.served(&EntityKey::new(kind, key.id.clone()))?;
        Ok(match self.rt.shared.engine.registry.passivate(&key) {
            None => Passivation::NotResident,
            Some(true) => Passivation::Passivated,
            Some(false) => Passivation::Busy,
        })
    }

    /// Deletes an entity, as a step calling [`Ctx::delete`](crate::Ctx::delete) would: its
    /// state, journal and rows to itself are gone once this returns, and its next message
    /// starts it afresh. Unless `force`, it is refused with [`AdminError::Busy`] while the
    /// entity has messages in flight on this node (queued, or applied and not yet durable);
    /// forced, the deletion is queued after them. A quarantined entity (its stored bytes
    /// cannot be read back) is deleted without being activated, and released. An entity
    /// that was never stored is
    /// deleted all the same (there is nothing to remove). Returns once the deletion is durable.
    pub async fn delete(&self, kind: &str, id: &str, force: bool) -> Result<(), AdminError> {
        let dynamic = Arc::clone(self.rt.kind(kind)?);
        let id = EntityId::new(id)?;
        let key = EntityKey::new(kind, id.clone());
        self.served(&key)?;
        let engine = &self.rt.shared.engine;
        if engine.quarantine.get(kind, &id).is_some() {
            // Nothing of it is in memory (a quarantined entity runs nothing), and its bytes
            // cannot be activated to run a deleting step: the deletion is committed here.
            let (shard, epoch) = self.served(&key)?;
            let delete = EntityDelete {
                key: key.clone(),
                shard,
                epoch,
            };
            let batch = Batch {
                deletes: vec![delete],
                ..Batch::default()
            };
            self.commit_now(&key, batch).await?;
            engine.due.forget_to_self(std::slice::from_ref(&key));
            engine.quarantine.remove(&key);
            return Ok(());
        }
        if !force && dynamic.is_busy(&id) {
            return Err(AdminError::Busy(key));
        }
        dynamic.delete(id).await?;
        Ok(())
    }

    /// Passivates every idle entity of `kind` now. Returns how many left memory and how many
    /// stay because they are busy.
    pub fn passivate_kind(&self, kind: &str) -> Result<(usize, usize), AdminError> {
        let index = self.rt.kind(kind)?.index();
        Ok(self
            .rt
            .shared
            .engine
            .registry
            .passivate_where(|entry| entry.key().kind == index))
    }

    /// The dead letter numbered `seq`, if it is stored.
    pub async fn dead_letter(
        &self,
        seq: u64,
    ) -> Result<Option<StoredDeadLetter>, perennial_storage::Error> {
        // Dead letters are few (each is a message that failed several times): a scan is fine.
        let letters = self
            .rt
            .shared
            .engine
            .store
            .catalog()
            .dead_letters(None)
            .await?;
        Ok(letters.into_iter().find(|l| l.seq == seq))
    }

    /// Sends dead letter `seq`'s message to its entity again. If the step applies it, the
    /// letter is deleted in the same transaction, so a letter is applied at most once by
    /// retries; if it fails again, it is refused (the letter stays) or set aside again (the
    /// new letter replaces the old). Returns the reply's JSON.
    ///
    /// # Errors
    /// [`AdminError::NoSuchLetter`] if no letter has that number (it was retried or discarded),
    /// or the call's own error.
    pub async fn retry_dead_letter(&self, seq: u64) -> Result<String, AdminError> {
        let _retrying = LetterInHand::claim(&self.rt, seq)?;
        let letter = self
            .dead_letter(seq)
            .await
            .map_err(AdminError::Store)?
            .ok_or(AdminError::NoSuchLetter(seq))?
            .letter;
        let dynamic = self.rt.kind(&letter.key.kind)?;
        Arc::clone(dynamic)
            .call_json(
                letter.key.id.clone(),
                (letter.message.as_bytes(), None),
                Via::Letter(seq),
            )
            .await
            .map_err(AdminError::from)
    }

    /// Deletes dead letter `seq` without applying it. Returns whether it was stored.
    pub async fn discard_dead_letter(&self, seq: u64) -> Result<bool, AdminError> {
        let _retrying = LetterInHand::claim(&self.rt, seq)?;
        let storage = AdminError::Store;
        let Some(letter) = self.dead_letter(seq).await.map_err(storage)? else {
            return Ok(false);
        };
        let key = &letter.letter.key;
        let (shard, epoch) = self.served(key)?;
        let done = DeadLetterDone { shard, epoch, seq };
        let batch = Batch {
            letters_done: vec![done],
            ..Batch::default()
        };
        self.commit_now(key, batch).await?;
        Ok(true)
    }

    async fn stored_state(
        &self,
        kind: &str,
        id: &str,
        step: Option<u64>,
    ) -> Result<String, AdminError> {
        let Some(dynamic) = self.rt.shared.by_name.get(kind) else {
            return Err(AdminError::UnknownKind(kind.to_owned()));
        };
        let id = EntityId::new(id)?;
        let key = EntityKey::new(kind, id.clone());
        Arc::clone(dynamic)
            .state_at(id, step)
            .await?
            .ok_or(AdminError::NoSuchEntity(key))
    }

    /// The kind named `kind`, if it keeps its state in storage.
    fn stored_kind(&self, kind: &str) -> Result<&Arc<dyn crate::dyn_kind::DynKind>, AdminError> {
        let dynamic = self.rt.kind(kind)?;
        if dynamic.persistence() == Persistence::Ephemeral {
            return Err(AdminError::NotStored(kind.to_owned()));
        }
        Ok(dynamic)
    }
}

/// A dead letter being retried or discarded: two at once would apply it twice.
struct LetterInHand<'a> {
    rt: &'a Runtime,
    seq: u64,
}

impl<'a> LetterInHand<'a> {
    fn claim(rt: &'a Runtime, seq: u64) -> Result<Self, AdminError> {
        if rt.shared.engine.letters_in_hand.lock().insert(seq) {
            Ok(Self { rt, seq })
        } else {
            Err(AdminError::LetterBusy(seq))
        }
    }
}

impl Drop for LetterInHand<'_> {
    fn drop(&mut self) {
        self.rt
            .shared
            .engine
            .letters_in_hand
            .lock()
            .remove(&self.seq);
    }
}
