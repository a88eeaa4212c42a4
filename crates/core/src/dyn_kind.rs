//! A kind seen without its types ([`DynKind`]): calls by kind name with JSON messages,
//! pending rows delivered by the dispatcher, migration rewrites, and reads of stored states.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use perennial_types::EntityId;

use crate::courier::{Applying, Delivery};
use crate::due::RowId;
use crate::entity::Via;
use crate::journal;
use crate::kind::{KindRt, KindStats, Mode};
use crate::process::effect::BoxFuture;
use crate::{CallError, Caller, JsonRejection, Persistence, Process};

/// A call by kind name, in flight: completes with the reply's JSON.
pub(crate) type JsonCall<'a> =
    Pin<Box<dyn Future<Output = Result<String, CallError<JsonRejection>>> + Send + 'a>>;

/// A kind seen without its types: for calls by kind name with JSON messages.
pub(crate) trait DynKind: Send + Sync {
    /// Calls the entity with a JSON message from `caller`, which came `via` a plain call, an
    /// idempotency key or a retried dead letter.
    fn call_json<'a>(
        self: Arc<Self>,
        id: EntityId,
        message: (&'a [u8], Option<Caller>),
        via: Via,
    ) -> JsonCall<'a>;

    /// The kind's index in the registry's keys.
    fn index(&self) -> u16;

    /// Delivers a pending row's message (JSON) to the entity; completes once it is applied
    /// durably, refused, or failed, applied as `applying` says.
    fn deliver(
        self: Arc<Self>,
        id: EntityId,
        msg: Arc<str>,
        row: RowId,
        applying: Applying,
    ) -> BoxFuture<Delivery>;

    fn stats(&self) -> KindStats;

    fn persistence(&self) -> Persistence;

    /// The kind's schema version in this build.
    fn schema(&self) -> u32;

    /// Writes the entity's state back at the kind's schema version if it is stored at an
    /// older one (and snapshots it if `snapshot` and its journal goes beyond its latest
    /// snapshot), through its mailbox; completes once durable, with whether it wrote.
    fn rewrite(
        self: Arc<Self>,
        id: EntityId,
        snapshot: bool,
    ) -> BoxFuture<Result<bool, CallError<JsonRejection>>>;

    /// Deletes the entity through its mailbox (see `entity::delete`); completes once durable.
    fn delete(self: Arc<Self>, id: EntityId) -> BoxFuture<Result<bool, CallError<JsonRejection>>>;

    /// Whether the entity is in memory with messages queued or steps not yet durable.
    fn is_busy(&self, id: &EntityId) -> bool;

    /// Whether this build can activate the stored entity, checked from storage without
    /// writing: its state migrates and decodes, its journal replays as it ran live. `true`
    /// if its state is stored at an older schema version.
    fn check(self: Arc<Self>, id: EntityId) -> BoxFuture<Result<bool, CallError>>;

    /// Whether its committed states can be watched as JSON: `Snapshot` kinds, and `Journal`
    /// kinds with snapshots.
    fn watchable(&self) -> bool;

    /// [`Process::WATCH_SHOWS_STATE`].
    fn watch_shows_state(&self) -> bool;

    /// How long its change feed keeps changes, if it keeps one.
    fn feed(&self) -> Option<std::time::Duration>;

    /// The entity's state as of `step` (its latest, if `None`), as JSON, from storage;
    /// `None` if nothing of it is stored (never written, or deleted).
    fn state_at(
        self: Arc<Self>,
        id: EntityId,
        step: Option<u64>,
    ) -> Pin<Box<dyn Future<Output = Result<Option<String>, CallError>> + Send>>;
}

impl<K: Process> DynKind for KindRt<K> {
    fn call_json<'a>(
        self: Arc<Self>,
        id: EntityId,
        (msg, caller): (&'a [u8], Option<Caller>),
        via: Via,
    ) -> JsonCall<'a> {
        Box::pin(async move {
            let msg: K::Msg = serde_json::from_slice(msg).map_err(|e| CallError::BadMessage {
                kind: K::KIND.to_owned(),
                detail: e.to_string(),
            })?;
            crate::entity::call_json(&self, &id, (msg, caller), via)
                .await
                .map_err(CallError::into_json)
        })
    }

    fn deliver(
        self: Arc<Self>,
        id: EntityId,
        msg: Arc<str>,
        row: RowId,
        applying: Applying,
    ) -> BoxFuture<Delivery> {
        Box::pin(async move {
            let msg: K::Msg = match serde_json::from_str(&msg) {
                Ok(msg) => msg,
                Err(e) => {
                    return Delivery::Poison(format!(
                        "the message is not a valid {} message any more: {e}",
                        K::KIND
                    ));
                }
            };
            crate::entity::deliver_row(&self, &id, msg, row, applying).await
        })
    }

    fn persistence(&self) -> Persistence {
        KindRt::persistence(self)
    }

    fn schema(&self) -> u32 {
        crate::upgrade::schema_version::<K>()
    }

    fn rewrite(
        self: Arc<Self>,
        id: EntityId,
        snapshot: bool,
    ) -> BoxFuture<Result<bool, CallError<JsonRejection>>> {
        Box::pin(async move {
            crate::entity::rewrite(&self, &id, snapshot)
                .await
                .map_err(CallError::into_json)
        })
    }

    fn delete(self: Arc<Self>, id: EntityId) -> BoxFuture<Result<bool, CallError<JsonRejection>>> {
        Box::pin(async move {
            crate::entity::delete(&self, &id)
                .await
                .map_err(CallError::into_json)
        })
    }

    fn is_busy(&self, id: &EntityId) -> bool {
        crate::entity::is_busy(self, id)
    }

    fn check(self: Arc<Self>, id: EntityId) -> BoxFuture<Result<bool, CallError>> {
        Box::pin(async move {
            let key = perennial_types::EntityKey::new(self.name.clone(), id.clone());
            let store = &*self.engine.store;
            match &self.mode {
                Mode::Snapshot { decode, .. } => {
                    let record = store
                        .load(&key)
                        .await
                        .map_err(|source| CallError::Storage {
                            key: key.clone(),
                            source,
                        })?;
                    match record {
                        None => Ok(false),
                        Some(record) => crate::entity::decode_record(&key, *decode, record)
                            .map(|(_, _, outdated)| outdated),
                    }
                }
                Mode::Journal { snapshots } => {
                    let codec = snapshots.as_ref();
                    let rebuilt = journal::rebuild(store, &key, &id, codec, u64::MAX).await?;
                    Ok(rebuilt.outdated)
                }
                Mode::Ephemeral { .. } => Ok(false),
            }
        })
    }

    fn index(&self) -> u16 {
        self.index
    }

    fn watch_shows_state(&self) -> bool {
        K::WATCH_SHOWS_STATE
    }

    fn feed(&self) -> Option<std::time::Duration> {
        self.feed
    }

    fn watchable(&self) -> bool {
        matches!(
            self.mode,
            Mode::Snapshot { .. } | Mode::Journal { snapshots: Some(_) }
        )
    }

    fn state_at(
        self: Arc<Self>,
        id: EntityId,
        step: Option<u64>,
    ) -> Pin<Box<dyn Future<Output = Result<Option<String>, CallError>> + Send>> {
        Box::pin(async move {
            let key = perennial_types::EntityKey::new(self.name.clone(), id.clone());
            let no_history = |detail: String| CallError::NoHistory {
                key: key.clone(),
                detail,
            };
            let store = &*self.engine.store;
            let storage = |source| CallError::Storage {
                key: key.clone(),
                source,
            };
            if step == Some(0) {
                return Err(no_history("steps are numbered from 1".into()));
            }
            let upto = step.unwrap_or(u64::MAX);
            match &self.mode {
                Mode::Journal {
                    snapshots: Some(codec),
                } => {
                    let rebuilt = journal::rebuild(store, &key, &id, Some(codec), upto).await?;
                    let Some(state) = rebuilt.state else {
                        return match step {
                            None => Ok(None),
                            Some(step) => Err(no_history(format!(
                                "no snapshot covers step {step} and the journal does not \
                                 reach back to it"
                            ))),
                        };
                    };
                    if rebuilt.step < upto && step.is_some() {
                        let later = store
                            .journal(&key, rebuilt.step, 1)
                            .await
                            .map_err(storage)?;
                        if later.is_empty() {
                            return Err(no_history(format!(
                                "the entity has reached step {} only",
                                rebuilt.step
                            )));
                        }
                    }
                    (codec.encode)(&state)
                        .map(Some)
                        .map_err(|e| CallError::Unencodable {
                            key: key.clone(),
                            detail: e.to_string(),
                        })
                }
                Mode::Journal { snapshots: None } => Err(no_history(format!(
                    "the state of kind {:?} is not serializable, so it cannot be shown as \
                     JSON; its history (the journal) can",
                    K::KIND
                ))),
                Mode::Snapshot { .. } => match store.load(&key).await.map_err(storage)? {
                    Some(record) if step.is_none_or(|step| step == record.version) => {
                        Ok(Some(record.state))
                    }
                    Some(record) => Err(no_history(format!(
                        "kind {:?} keeps only its latest state (step {}); register it as a \
                         Journal kind to keep history",
                        K::KIND,
                        record.version
                    ))),
                    None => Ok(None),
                },
                Mode::Ephemeral { .. } => Err(no_history(format!(
                    "kind {:?} is ephemeral: nothing of it is stored",
                    K::KIND
                ))),
            }
        })
    }

    fn stats(&self) -> KindStats {
        let c = &self.counters;
        KindStats {
            kind: K::KIND.to_owned(),
            persistence: Some(self.persistence()),
            activations: c.activations.load(Ordering::Relaxed),
            passivations: c.passivations.load(Ordering::Relaxed),
            restarts: c.restarts.load(Ordering::Relaxed),
            dead_letters: c.dead_letters.load(Ordering::Relaxed),
            resident: c.resident.load(Ordering::Relaxed),
            listener_dropped: self.listeners.as_ref().map_or(0, |l| l.dropped()),
            listener_queued: self.listeners.as_ref().map_or(0, |l| l.queued()),
        }
    }
}
