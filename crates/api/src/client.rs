//! The client API: `POST /v1/{kind}/{id}` (a call, whose body and reply are the kind's own
//! JSON) and `GET /v1/{kind}/{id}/watch` (its committed states as Server-Sent Events), and
//! the node's `GET /healthz` and `GET /readyz`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// One Server-Sent Event of a watch: `event: state`, `data` the state, `id` its version; or
/// `event: deleted` (`data: null`) when a step deleted the entity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WatchEvent {
    /// `state`, `changed` (a kind that keeps its state from watchers), or `deleted`.
    pub event: WatchEventName,
    /// The state, as JSON (`null` for `changed` and `deleted`).
    pub data: String,
    /// The state's version (absent on the first event when it is not known).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[0-9]+$")]
    pub id: Option<String>,
}

/// The name of a watch's events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WatchEventName {
    /// A committed state.
    State,
    /// The entity was deleted; its next message starts it afresh.
    Deleted,
    /// The state changed, and the kind does not show it to watchers: ask the entity.
    Changed,
}

/// The query of `GET /v1/{kind}/changes`: `?after=CURSOR`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FeedParams {
    /// Send the changes after this cursor (the `id` of the last event received); 0, or
    /// absent without `Last-Event-ID`: from the oldest change kept.
    #[param(
        minimum = 0,
        maximum = 18_446_744_073_709_551_615_u64,
        format = "uint64"
    )]
    pub after: Option<u64>,
}

/// One event of a kind's change feed (`event: change`; its `id` is the cursor).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ChangeEvent {
    /// The entity's id.
    pub id: String,
    /// The entity's version after the step.
    pub version: u64,
    /// Whether the step deleted the entity.
    pub deleted: bool,
    /// The state after the step; absent when deleted, and for a kind that keeps its state
    /// from clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<serde_json::Value>,
}

/// `GET /healthz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok` while the node serves.
    #[schema(example = "ok")]
    pub status: String,
}

/// `GET /readyz`: whether the node can serve calls now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Ready {
    /// `ready`, or `not_ready` (with the reason).
    #[schema(example = "ready")]
    pub status: String,
    /// How many shards the node serves now.
    #[schema(minimum = 0, maximum = 1024)]
    pub shards: u32,
    /// Why the node is not ready: shutting down, no shard served yet, or the store not
    /// answering.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}
