//! What the runtime keeps per registered kind: how its state persists and its counters.
//! The kind's type-erased face, for calls by kind name, is in `dyn_kind`.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use crate::engine::Engine;
use crate::journal::SnapshotCodec;
use crate::{Persistence, Process};

/// How a kind's state is kept, with the functions that need the kind's extra bounds.
pub(crate) enum Mode<K> {
    /// Serialized to JSON after each step.
    Snapshot {
        encode: fn(&K) -> serde_json::Result<String>,
        decode: fn(&str) -> serde_json::Result<K>,
    },
    /// Inputs journaled at each step, the state rebuilt by replay; snapshots if serializable.
    Journal { snapshots: Option<SnapshotCodec<K>> },
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
    pub(crate) engine: Arc<Engine>,
    /// Its listeners ([`Builder::listen`](crate::Builder::listen)), if it has any.
    pub(crate) listeners: Option<crate::listen::Listeners<K>>,
    /// How long its change feed keeps changes, if it keeps one
    /// ([`Builder::change_feed`](crate::Builder::change_feed)).
    pub(crate) feed: Option<std::time::Duration>,
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
            Mode::Journal { .. } => Persistence::Journal,
            Mode::Ephemeral { .. } => Persistence::Ephemeral,
        }
    }

    /// Whether the kind's steps must be durable before their replies leave.
    pub(crate) fn is_durable(&self) -> bool {
        !matches!(self.mode, Mode::Ephemeral { .. })
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
    /// Changes its listeners lost because their queues were full, since the start.
    pub listener_dropped: u64,
    /// Changes waiting in its listeners' queues now (their lag).
    pub listener_queued: u64,
}
