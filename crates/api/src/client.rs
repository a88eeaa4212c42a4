//! The client API: `POST /v1/{kind}/{id}` (a call, whose body and reply are the kind's own
//! JSON) and `GET /v1/{kind}/{id}/watch` (its committed states as Server-Sent Events), and
//! the node's `GET /healthz`.

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

/// `GET /healthz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok` while the node serves.
    #[schema(example = "ok")]
    pub status: String,
}
