//! The messages between the nodes of a cluster: a node that does not serve an entity's
//! shard sends the call to the node that does, on its internal route ([`PATH`]), as a
//! [`Batch`] of [`Request`]s, and gets one [`Answer`] per request back, in order. Both are
//! encoded with postcard (a compact, binary serde format); the content type
//! ([`CONTENT_TYPE`]) names the format's version, and a node refuses one it does not know.
//!
//! Postcard numbers enum variants by their order: new variants go at the end, and a
//! variant's fields never change. (A new shape is a new version of [`CONTENT_TYPE`].)

use serde::{Deserialize, Serialize};

/// The internal route's path.
pub const PATH: &str = "/internal/v1/calls";
/// The content type of a batch and of its answers, with the wire format's version.
pub const CONTENT_TYPE: &str = "application/x-perennial-calls.v1";
/// The header that carries the cluster secret.
pub const SECRET_HEADER: &str = "x-perennial-cluster-secret";

/// An operator's request that only the node serving the entity can carry out; in a cluster,
/// another node forwards it there.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum AdminOp {
    /// Pause an entity.
    Pause {
        /// The entity's kind.
        kind: String,
        /// The entity's id.
        id: String,
    },
    /// Resume a paused entity.
    Resume {
        /// The entity's kind.
        kind: String,
        /// The entity's id.
        id: String,
    },
    /// Passivate an entity now.
    Passivate {
        /// The entity's kind.
        kind: String,
        /// The entity's id.
        id: String,
    },
    /// Retry dead letter `seq`: its entity's node applies it.
    Retry {
        /// The letter's number.
        seq: u64,
    },
    /// Discard dead letter `seq` without applying it.
    Discard {
        /// The letter's number.
        seq: u64,
    },
    /// Release a quarantined entity (added last: the wire format numbers the variants).
    Release {
        /// The entity's kind.
        kind: String,
        /// The entity's id.
        id: String,
    },
    /// Delete an entity; with `force`, even with messages in flight (added last).
    Delete {
        /// The entity's kind.
        kind: String,
        /// The entity's id.
        id: String,
        /// Delete it after its messages in flight instead of refusing.
        force: bool,
    },
}

/// What one node asks another to run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    /// A client's call to an entity.
    Call {
        /// The entity's kind.
        kind: String,
        /// The entity's id.
        id: String,
        /// The client's `Idempotency-Key`, if it sent one.
        idempotency_key: Option<String>,
        /// The message, as the client sent it.
        body: Vec<u8>,
    },
    /// An operator's request about an entity the receiving node serves.
    Admin(AdminOp),
    /// A message row of an entity of the sending node, for an entity of the receiving one.
    Deliver {
        /// The kind of the entity whose step sent it.
        owner_kind: String,
        /// The id of the entity whose step sent it.
        owner_id: String,
        /// The row's number among its owner's rows.
        seq: u64,
        /// The target's kind.
        kind: String,
        /// The target's id.
        id: String,
        /// The message, as JSON.
        body: String,
        /// Whether the row is an ask: the receiver keeps its reply and answers it
        /// ([`Delivered::Answered`]) instead of deleting the row.
        #[serde(default)]
        ask: bool,
    },
    /// A client's call to an entity on behalf of the caller the forwarding node
    /// authenticated (the handler's `ctx.caller()`).
    CallAs {
        /// Who is calling: the subject of their verified caller token.
        caller: String,
        /// The entity's kind.
        kind: String,
        /// The entity's id.
        id: String,
        /// The client's `Idempotency-Key`, if it sent one.
        idempotency_key: Option<String>,
        /// The message, as the client sent it.
        body: Vec<u8>,
    },
}

impl Request {
    /// The bytes of its message: what counts towards a batch's size.
    pub fn body_len(&self) -> usize {
        match self {
            Request::Call { body, .. } | Request::CallAs { body, .. } => body.len(),
            Request::Deliver { body, .. } => body.len(),
            Request::Admin(_) => 0,
        }
    }
}

/// Calls for one node.
#[derive(Debug, Serialize, Deserialize)]
pub struct Batch {
    /// The calls, answered in this order.
    pub calls: Vec<Request>,
}

/// What the receiving node answered to one [`Request`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Answer {
    /// The response its gateway would have sent for a client's call: a status and a JSON
    /// body.
    Response {
        /// The HTTP status.
        status: u16,
        /// The JSON body.
        body: Vec<u8>,
    },
    /// The node does not serve the entity's shard (or lost it during the step): nothing was
    /// applied, so the caller may send it again after refreshing its routes.
    NotServed,
    /// How a delivered row ended.
    Delivered(Delivered),
}

/// A `perennial_core::Delivery` on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Delivered {
    /// Applied (durably), or set aside as a dead letter.
    Applied,
    /// Nothing to do (a cancelled timer).
    Skipped,
    /// An ask was applied (durably): the target's reply, as JSON.
    Answered(String),
    /// The target refused it; it is dropped (an ask's asker is told).
    Refused {
        /// The rejection's stable name.
        code: String,
        /// The rejection's text.
        message: String,
    },
    /// Not applied now; deliver it again later.
    Retry(String),
    /// It can never be applied; it becomes a dead letter.
    Poison(String),
}
