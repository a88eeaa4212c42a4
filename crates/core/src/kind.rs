//! What the runtime keeps per registered kind: how its state persists, its counters, and the
//! type-erased face used for calls by kind name.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use perennial_types::EntityId;

use crate::runtime::Core;
use crate::{CallError, JsonRejection, Persistence, Process, Rejection};

/// How a kind's state is kept, with the functions that need the kind's extra bounds.
pub(crate) enum Mode<K> {
    /// Serialized to JSON after each step.
    Snapshot {
        encode: fn(&K) -> serde_json::Result<String>,
        decode: fn(&str) -> serde_json::Result<K>,
    },
    /// In memory only; a copy taken before each step restores it after a failed step.
    Ephemeral { clone: fn(&K) -> K },
}

/// The runtime's record of one registered kind.
pub(crate) struct KindRt<K: Process> {
    /// The kind's name, shared by every key of the kind.
    pub(crate) name: Arc<str>,
    /// The kind's index in the registry's keys.
    pub(crate) index: u16,
    pub(crate) mode: Mode<K>,
    pub(crate) counters: Counters,
    pub(crate) core: Arc<Core>,
}

impl<K: Process> std::fmt::Debug for KindRt<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KindRt")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl<K: Process> KindRt<K> {
    pub(crate) fn persistence(&self) -> Persistence {
        match self.mode {
            Mode::Snapshot { .. } => Persistence::Snapshot,
            Mode::Ephemeral { .. } => Persistence::Ephemeral,
        }
    }
}

/// The per-kind counters behind [`KindStats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) activations: AtomicU64,
    pub(crate) passivations: AtomicU64,
    pub(crate) restarts: AtomicU64,
    pub(crate) dead_letters: AtomicU64,
    pub(crate) resident: AtomicU64,
}

/// Counters of one kind since the runtime started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct KindStats {
    /// The kind's name.
    pub kind: String,
    /// How the kind keeps its state.
    pub persistence: Option<Persistence>,
    /// Entities activated (loaded or created).
    pub activations: u64,
    /// Entities passivated (by idleness, memory limits or shutdown).
    pub passivations: u64,
    /// Handler panics, each of which restarted its entity from its previous state.
    pub restarts: u64,
    /// Messages set aside as dead letters.
    pub dead_letters: u64,
    /// Entities resident now.
    pub resident: u64,
}

/// A kind seen without its types: for calls by kind name with JSON messages.
pub(crate) trait DynKind: Send + Sync {
    fn call_json<'a>(
        self: Arc<Self>,
        id: EntityId,
        msg: &'a [u8],
    ) -> Pin<Box<dyn Future<Output = Result<String, CallError<JsonRejection>>> + Send + 'a>>;

    fn stats(&self) -> KindStats;
}

impl<K: Process> DynKind for KindRt<K> {
    fn call_json<'a>(
        self: Arc<Self>,
        id: EntityId,
        msg: &'a [u8],
    ) -> Pin<Box<dyn Future<Output = Result<String, CallError<JsonRejection>>> + Send + 'a>> {
        Box::pin(async move {
            let msg: K::Msg = serde_json::from_slice(msg).map_err(|e| CallError::BadMessage {
                kind: K::KIND.to_owned(),
                detail: e.to_string(),
            })?;
            let reply = crate::entity::call(&self, &id, msg).await.map_err(|e| {
                e.map_rejection(|r| JsonRejection {
                    code: r.code().to_owned(),
                    message: r.to_string(),
                })
            })?;
            serde_json::to_string(&reply).map_err(|e| CallError::UnencodableReply {
                key: perennial_types::EntityKey::new(self.name.clone(), id),
                detail: e.to_string(),
            })
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
        }
    }
}
