//! Messages between entities on different nodes.
//!
//! A message an entity sends (`ctx.tell`) is a pending row of the sender, delivered by the
//! dispatcher of the node that serves the sender's shard. When another node serves the
//! target, the dispatcher hands the row to the [`Courier`] the cluster layer set
//! ([`Plumbing::set_courier`](crate::Plumbing::set_courier)), which carries it to that node;
//! there, [`Plumbing::deliver`](crate::Plumbing::deliver) applies it.
//!
//! Carried rows are applied exactly once however often they are carried: the receiving step
//! deletes the row and keeps its reply under a key made from the row's id, in one
//! transaction, so a row carried again (its answer was lost, the sender's node restarted)
//! finds the kept reply and is not applied again.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use perennial_types::EntityKey;

/// How the delivery of a pending row ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Delivery {
    /// The step that applied the row is durable; it deleted the row.
    Applied,
    /// The step that applied an ask is durable; its reply, as JSON. The row is still stored:
    /// it is the asker's step applying the answer that deletes it.
    Answered(String),
    /// The row was cancelled before it was applied: nothing to do.
    Skipped,
    /// The handler refused the message: `code` is its rejection's stable name, `message` its
    /// text. Refusing changes nothing, so the row is deleted (an ask's asker is told).
    Refused {
        /// The rejection's [`code`](crate::Rejection::code).
        code: String,
        /// The rejection's text.
        message: String,
    },
    /// It did not happen (storage failed, the entity is overloaded, the handler panicked
    /// fewer times than the dead-letter limit): try again later.
    Retry(String),
    /// It can never be applied (the message no longer decodes, the kind is gone): the row
    /// becomes a dead letter.
    Poison(String),
    /// This node does not serve the target's shard: nothing happened; another node must
    /// apply it.
    NotServed,
}

/// A message row on its way to the node that serves its target.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Parcel {
    /// The entity that sent it (the row's owner).
    pub owner: EntityKey,
    /// The row's number among its owner's rows.
    pub seq: u64,
    /// The entity it is for.
    pub target: EntityKey,
    /// The message, as JSON.
    pub body: Arc<str>,
    /// Whether the row is an ask: the target keeps its reply under the row's key and answers
    /// it ([`Delivery::Answered`]) without deleting the row.
    pub ask: bool,
}

impl Parcel {
    /// A parcel of message row `seq` of `owner`, for `target`.
    pub fn new(owner: EntityKey, seq: u64, target: EntityKey, body: Arc<str>) -> Self {
        Self {
            owner,
            seq,
            target,
            body,
            ask: false,
        }
    }

    /// A parcel of ask row `seq` of `owner`, for `target`, with the message for the target.
    pub fn ask(owner: EntityKey, seq: u64, target: EntityKey, msg: Arc<str>) -> Self {
        Self {
            ask: true,
            ..Self::new(owner, seq, target, msg)
        }
    }
}

/// How a target applies a delivered row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Applying {
    /// A timer, a message, an effect's result or an answer on this node: the step that
    /// applies it deletes it.
    Row,
    /// A message that another node may deliver too (carried, or in a cluster): applied under
    /// a key made from the row's id, once however often delivered, and deleted.
    KeyedRow,
    /// An ask's answer, to the asker, in a cluster: applied under a key made from the row's
    /// id (another than the target's, which may be the asker itself), once however often
    /// delivered (a commit whose outcome was unknown, say), and the row deleted.
    KeyedAnswer,
    /// An ask's message: applied under the row's key, once, its reply kept under that key and
    /// answered; the row stays (the asker's step deletes it). `fresh`: its first delivery
    /// since it was committed, with no other node delivering it, so no kept reply can exist
    /// and the target need not look for one in storage.
    Ask { fresh: bool },
}

/// Carries message rows to the nodes that serve their targets; a cluster layer implements it.
///
/// `carry` returns what the receiving node's [`Plumbing::deliver`](crate::Plumbing::deliver)
/// answered, or [`Delivery::Retry`] if it could not reach it; the dispatcher retries with a
/// backoff until the row is applied, refused or poison.
pub trait Courier: Send + Sync + 'static {
    /// Carries `parcel` to the node that serves its target and applies it there.
    fn carry(&self, parcel: Parcel) -> Pin<Box<dyn Future<Output = Delivery> + Send>>;
}

/// The idempotency key the asker applies an ask's answer under (see [`row_key`]).
pub(crate) fn answer_key(owner: &EntityKey, seq: u64) -> String {
    let mut key = row_key(owner, seq);
    key.push_str(":answer");
    key
}

/// The idempotency key a carried row is applied under: fixed length whatever the owner's id.
pub(crate) fn row_key(owner: &EntityKey, seq: u64) -> String {
    let mut bytes = Vec::with_capacity(owner.kind.len() + 1 + owner.id.as_str().len());
    bytes.extend_from_slice(owner.kind.as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(owner.id.as_str().as_bytes());
    let digest = xxhash_rust::xxh3::xxh3_128(&bytes);
    format!("row:{digest:032x}:{seq}")
}
