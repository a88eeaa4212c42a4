//! Activation: an entity's state loaded from storage (decoded, migrated, or rebuilt from its
//! journal) or created from [`Default`] and [`Process::init`], once none of its steps is in
//! flight, under the shard's epoch of now.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use perennial_storage::Record;
use perennial_types::EntityKey;

use super::{Cell, Slot};
use crate::clock::now_us;
use crate::guard::guard;
use crate::journal::{self, InitRecord};
use crate::kind::Mode;
use crate::process::ctx::step_of_row;
use crate::registry::{Key, Resident};
use crate::{CallError, Ctx, Process};

impl<K: Process> Cell<K> {
    /// A brand-new state: [`Default`], then [`Process::init`], with what `init` was handed.
    pub(super) fn fresh(&self) -> Result<(K, InitRecord), CallError> {
        let mut state = guard(K::default).map_err(|message| self.panicked_error(message))?;
        let at_us = now_us();
        let mut ctx = Ctx::at(&self.id, at_us);
        guard(|| state.init(&mut ctx)).map_err(|message| self.panicked_error(message))?;
        if !ctx.take_work().is_empty() {
            tracing::warn!(kind = K::KIND, id = %self.id,
                "init asked for timers, messages or effects; they are ignored (start them \
                 from a step)");
        }
        let seed = ctx.drawn_seed();
        Ok((state, InitRecord { at_us, seed }))
    }

    /// Loads or creates the state. On failure, fails every queued message, leaves the registry
    /// and returns false; the next message starts a new activation.
    ///
    /// It first waits until none of the entity's steps is in flight, so that storage holds
    /// everything they wrote (this matters when a state was abandoned after an impossible
    /// rollback, while its earlier steps were still being committed).
    pub(super) async fn activate(self: &Arc<Self>) -> bool {
        self.settled().await;
        // Loaded under the shard's epoch of now: if this node lost the shard and took it
        // back since the cell was made, another node may have written in between, and the
        // state is read again under the new epoch.
        let loaded = match self.kind.engine.shards.epoch(self.shard) {
            Some(epoch) => {
                self.epoch.store(epoch.0, Ordering::SeqCst);
                self.load().await
            }
            None => Err(CallError::NotOwner { shard: self.shard }),
        };
        match loaded {
            Ok(loaded) => {
                let mut inner = self.inner.lock();
                self.kind.engine.registry.account(inner.bytes, loaded.bytes);
                inner.bytes = loaded.bytes;
                inner.state = Slot::Ready(loaded.state);
                inner.seq = loaded.version;
                inner.durable = loaded.version;
                inner.last_json = loaded.json;
                inner.snapshot_step = loaded.snapshot_step;
                inner.outdated = loaded.outdated;
                if let Some(rare) = inner.rare.as_mut() {
                    if loaded.stored {
                        // A deletion that failed: the life it would have ended goes on.
                        rare.keys.deleted_at = 0;
                    }
                    rare.lost = None;
                }
                inner.set_init(loaded.init);
                self.kind
                    .counters
                    .activations
                    .fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(error) => {
                tracing::warn!(kind = K::KIND, id = %self.id, %error, "activation failed");
                // The stored bytes cannot be read back: refuse the entity's calls until an
                // operator fixes and releases it, rather than reading them again.
                let unreadable = match &error {
                    CallError::CorruptState { .. } => Some("corrupt_state"),
                    CallError::ReplayDiverged { .. } => Some("replay_diverged"),
                    CallError::StateTooNew { .. } => Some("state_too_new"),
                    CallError::MigrationFailed { .. } => Some("migration_failed"),
                    _ => None,
                };
                if let Some(code) = unreadable {
                    let quarantine = &self.kind.engine.quarantine;
                    quarantine.insert(self.key(), code, error.to_string());
                }
                let key = Key {
                    kind: self.kind.index,
                    id: self.id.clone(),
                };
                let entry: Arc<dyn Resident> = Arc::clone(self) as Arc<dyn Resident>;
                self.kind.engine.registry.remove_exact(&key, &entry, || {
                    let mut inner = self.inner.lock();
                    inner.scheduled = false;
                    for envelope in inner.mailbox.drain(..) {
                        envelope
                            .reply
                            .send(Err(error.clone().widen()), || self.key());
                    }
                    self.kind.engine.registry.account(inner.bytes, 0);
                    inner.bytes = 0;
                });
                self.kind.counters.resident.fetch_sub(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Waits until every step of the entity is durable or failed.
    pub(super) async fn settled(&self) {
        loop {
            let notified = self.kind.engine.committer.settled().notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let inner = self.inner.lock();
                if inner.held.is_empty() && inner.seq == inner.durable {
                    return;
                }
            }
            notified.await;
        }
    }

    async fn load(&self) -> Result<Loaded<K>, CallError> {
        let mut loaded = match &self.kind.mode {
            Mode::Ephemeral { .. } => {
                let start = self.inner.lock().deleted_at();
                self.fresh_loaded(start)?
            }
            Mode::Snapshot { decode, .. } => match self.kind.engine.store.load(&self.key()).await {
                Ok(None) => self.fresh_loaded(self.life_start().await?)?,
                Ok(Some(record)) => self.decoded(*decode, record)?,
                Err(source) => {
                    return Err(CallError::Storage {
                        key: self.key(),
                        source,
                    });
                }
            },
            Mode::Journal { snapshots } => {
                let key = self.key();
                let store = &*self.kind.engine.store;
                let codec = snapshots.as_ref();
                let rebuilt = journal::rebuild(store, &key, &self.id, codec, u64::MAX).await?;
                match rebuilt.state {
                    None => self.fresh_loaded(self.life_start().await?)?,
                    Some(state) => Loaded {
                        state,
                        stored: true,
                        json: None,
                        outdated: rebuilt.outdated,
                        version: rebuilt.step,
                        snapshot_step: rebuilt.snapshot.map_or(0, |(step, _)| step),
                        bytes: rebuilt
                            .snapshot
                            .map_or(std::mem::size_of::<K>(), |(_, len)| len),
                        init: None,
                    },
                }
            }
        };
        let mut ctx = Ctx::new(&self.id);
        guard(|| loaded.state.on_activate(&mut ctx))
            .map_err(|message| self.panicked_error(message))?;
        Ok(loaded)
    }

    /// The step a new life of the entity starts after: 0 for an entity never deleted. After
    /// a deletion, above the steps of the life this activation saw deleted, and above the
    /// rows earlier lives still own (messages to others on their way), so that no row and no
    /// effect's id is numbered twice.
    async fn life_start(&self) -> Result<u64, CallError> {
        let deleted_at = self.inner.lock().deleted_at();
        let last = self
            .kind
            .engine
            .store
            .last_row(&self.key())
            .await
            .map_err(|source| CallError::Storage {
                key: self.key(),
                source,
            })?;
        Ok(deleted_at.max(last.map_or(0, step_of_row)))
    }

    /// A new life's first state, as an activation returns it: its steps are numbered after
    /// `start` (see [`life_start`](Self::life_start)).
    fn fresh_loaded(&self, start: u64) -> Result<Loaded<K>, CallError> {
        let (state, init) = self.fresh()?;
        let journaled = matches!(self.kind.mode, Mode::Journal { .. });
        Ok(Loaded {
            state,
            stored: false,
            json: None,
            outdated: false,
            version: start,
            // Nothing before the new life is replayed: it is as good as a snapshot.
            snapshot_step: start,
            bytes: std::mem::size_of::<K>(),
            init: journaled.then_some(init),
        })
    }

    /// A `Snapshot` kind's stored state, migrated to the kind's schema version and decoded.
    fn decoded(
        &self,
        decode: fn(&str) -> serde_json::Result<K>,
        record: Record,
    ) -> Result<Loaded<K>, CallError> {
        let version = record.version;
        let (state, json, outdated) = decode_record(&self.key(), decode, record)?;
        Ok(Loaded {
            state,
            stored: true,
            bytes: json.len(),
            json: Some(Arc::from(json)),
            outdated,
            version,
            snapshot_step: 0,
            init: None,
        })
    }
}

/// A state loaded or created by an activation, with what the cell tracks about it.
struct Loaded<K> {
    state: K,
    /// Whether it came from storage (not a new life).
    stored: bool,
    /// `Snapshot` kinds: the state's JSON, to roll back to.
    json: Option<Arc<str>>,
    /// Whether storage holds it at an older schema version.
    outdated: bool,
    version: u64,
    /// `Journal` kinds: the step the latest snapshot covers.
    snapshot_step: u64,
    bytes: usize,
    /// `Journal` kinds, new entity: what `init` was handed, for the first step to record.
    init: Option<InitRecord>,
}

/// A `Snapshot` kind's stored record, migrated to the kind's schema version (see
/// [`crate::upgrade`]) and decoded: the state, its JSON at the kind's version, and whether
/// that differs from the stored version.
pub(crate) fn decode_record<K: Process>(
    key: &EntityKey,
    decode: fn(&str) -> serde_json::Result<K>,
    record: Record,
) -> Result<(K, String, bool), CallError> {
    let migrated = crate::upgrade::upgrade::<K>(key, record.schema, &record.state)?;
    let outdated = migrated.is_some();
    let json = migrated.unwrap_or(record.state);
    let state = guard(|| decode(&json))
        .map_err(|panic| format!("the decoder panicked: {panic}"))
        .and_then(|decoded| decoded.map_err(|e| e.to_string()));
    match state {
        Ok(state) => Ok((state, json, outdated)),
        Err(detail) if outdated => Err(CallError::MigrationFailed {
            key: key.clone(),
            from: record.schema,
            detail: format!("the migrated state does not decode: {detail}"),
        }),
        Err(detail) => Err(CallError::CorruptState {
            key: key.clone(),
            detail,
        }),
    }
}
