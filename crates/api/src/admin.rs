//! The bodies the admin API answers with (`/v1/admin/…`). States, messages and replies are
//! the entity's own JSON, carried as [`serde_json::Value`].

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `GET /v1/admin/kinds`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Kinds {
    /// Each registered kind, by name.
    pub kinds: Vec<KindInfo>,
}

/// One registered kind and its counters since the node started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KindInfo {
    /// The kind's name.
    pub kind: String,
    /// How it keeps its state: `snapshot`, `journal` or `ephemeral`.
    pub persistence: Option<String>,
    /// Entities stored.
    pub stored: u64,
    /// Entities in memory now.
    pub resident: u64,
    /// Activations since the start.
    pub activations: u64,
    /// Passivations since the start.
    pub passivations: u64,
    /// Handler panics since the start.
    pub restarts: u64,
    /// Messages set aside as dead letters since the start.
    pub dead_letters: u64,
}

/// `GET /v1/admin/kinds/{kind}/entities`: a page of a kind's entities.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entities {
    /// The kind.
    pub kind: String,
    /// The page's entities, in id order.
    pub entities: Vec<EntityRow>,
    /// The id to ask for the next page after, if there may be one.
    pub next: Option<String>,
}

/// One entity, as a listing shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EntityRow {
    /// Its id.
    pub id: String,
    /// Whether it is in memory on this node.
    pub resident: bool,
    /// Whether an operator paused it.
    pub paused: bool,
    /// The version of its stored state; 0 if nothing is stored.
    pub state_version: u64,
    /// The schema version of its stored state.
    pub schema: u32,
    /// Its latest journal step (`Journal` kinds), else 0.
    pub last_step: u64,
    /// When its last step committed, in milliseconds since the Unix epoch.
    pub updated_at_ms: Option<i64>,
}

/// `GET /v1/admin/kinds/{kind}/query`: a page of the entities whose state matches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Matches {
    /// The kind.
    pub kind: String,
    /// The page's entities, in id order, with their states.
    pub entities: Vec<StateRow>,
    /// The id to ask for the next page after, if there may be one.
    pub next: Option<String>,
}

/// One entity's committed state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateRow {
    /// Its id.
    pub id: String,
    /// Its state.
    pub state: Value,
    /// The state's version.
    pub version: u64,
    /// When it committed, in milliseconds since the Unix epoch.
    pub updated_at_ms: i64,
}

/// `GET /v1/admin/paused`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Paused {
    /// The paused entities.
    pub paused: Vec<EntityRef>,
}

/// An entity, by kind and id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntityRef {
    /// Its kind.
    pub kind: String,
    /// Its id.
    pub id: String,
}

/// `GET /v1/admin/quarantined`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quarantine {
    /// The quarantined entities.
    pub quarantined: Vec<QuarantinedRow>,
}

/// An entity whose stored bytes cannot be read back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuarantinedRow {
    /// Its kind.
    pub kind: String,
    /// Its id.
    pub id: String,
    /// Why, as an error code (`corrupt_state`, `replay_diverged`, …).
    pub code: String,
    /// Why, for a person.
    pub reason: String,
    /// Since when, in milliseconds since the Unix epoch.
    pub since_ms: i64,
}

/// `GET /v1/admin/dead-letters` (and each letter of it, alone, at `…/{seq}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetters {
    /// The letters, oldest first.
    pub dead_letters: Vec<DeadLetterRow>,
}

/// A message set aside after failing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetterRow {
    /// Its number.
    pub seq: u64,
    /// The target's kind.
    pub kind: String,
    /// The target's id.
    pub id: String,
    /// The message.
    pub message: Value,
    /// Why it failed.
    pub error: String,
    /// How many times it failed.
    pub attempts: u32,
    /// When it was set aside, in milliseconds since the Unix epoch.
    pub at_ms: i64,
}

/// `GET /v1/admin/cluster`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterInfo {
    /// This node's name in the cluster; `None` outside one.
    pub node: Option<String>,
    /// How many shards this node serves now.
    pub served_shards: usize,
    /// The live members.
    pub members: Vec<Member>,
}

/// A live member of the cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Member {
    /// Its name.
    pub node: String,
    /// Where its gateway listens.
    pub address: String,
    /// How many shards it holds.
    pub shards: usize,
}
