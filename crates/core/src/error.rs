//! What can fail, by family: a call ([`CallError`]), an operator's request ([`AdminError`]),
//! a start ([`StartError`]).

use std::convert::Infallible;
use std::fmt;

use perennial_types::{EntityKey, InvalidId, ShardId};

/// Why a call to an entity did not produce a reply.
///
/// `E` is the kind's own [`Rejection`] type ([`Process::Error`](crate::Process::Error)).
/// Every variant but [`Rejected`](CallError::Rejected) comes from the runtime.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum CallError<E = Infallible> {
    /// The handler refused the message; nothing changed.
    #[error("{0}")]
    Rejected(E),
    /// The handler panicked; nothing changed and the entity goes on from its previous state.
    #[error("the handler of {key} panicked: {message}")]
    Panicked {
        /// The entity.
        key: EntityKey,
        /// The panic's message.
        message: String,
    },
    /// The message panicked too many times and was set aside as a dead letter.
    #[error(
        "the message to {key} failed {attempts} times and was set aside as a dead letter: {message}"
    )]
    DeadLettered {
        /// The entity.
        key: EntityKey,
        /// How many times it failed.
        attempts: u32,
        /// The last panic's message.
        message: String,
    },
    /// Too much work is queued; retry later.
    #[error("{scope} is overloaded; retry later")]
    Overloaded {
        /// What is overloaded: one entity's mailbox, or the whole node.
        scope: Overload,
    },
    /// Storage failed, so the step was not made durable and the entity went back to what
    /// storage holds. If the failure came during the commit itself (a failed fsync), storage
    /// may nevertheless hold the step: the outcome is unknown, not "nothing changed".
    #[error("storage failed for {key}: {source}")]
    Storage {
        /// The entity.
        key: EntityKey,
        /// What the store reported.
        source: perennial_storage::Error,
    },
    /// The entity's stored state cannot be decoded. The stored bytes are left untouched.
    #[error("the stored state of {key} cannot be decoded ({detail}); it was left untouched")]
    CorruptState {
        /// The entity.
        key: EntityKey,
        /// What the decoder reported.
        detail: String,
    },
    /// Replaying the entity's journal did not do what the live steps did: the kind's code
    /// changed in a way that breaks replay, or a handler used time, randomness or data from
    /// outside its `ctx`. The entity is not activated, and its journal is left untouched.
    #[error("replaying the journal of {key} diverged at step {step}: {detail}")]
    ReplayDiverged {
        /// The entity.
        key: EntityKey,
        /// The step whose replay differed.
        step: u64,
        /// What differed.
        detail: String,
    },
    /// The entity's stored state was written by newer code (a higher schema version than
    /// this build's [`Process::MIGRATIONS`](crate::Process::MIGRATIONS) reach): after a
    /// rollback, or on an old node during a rolling upgrade. Nothing is overwritten; run the
    /// newer build, or add the missing migrations.
    #[error(
        "the stored state of {key} has schema version {schema}, newer than this build's {supported}; it was left untouched (run the newer build)"
    )]
    StateTooNew {
        /// The entity.
        key: EntityKey,
        /// The version it was stored at.
        schema: u32,
        /// The newest version this build knows.
        supported: u32,
    },
    /// A migration of the entity's stored state failed, or the migrated state does not
    /// decode. Nothing is overwritten.
    #[error(
        "the stored state of {key} cannot be migrated from schema version {from}: {detail}; it was left untouched"
    )]
    MigrationFailed {
        /// The entity.
        key: EntityKey,
        /// The version the failing migration starts from.
        from: u32,
        /// What failed.
        detail: String,
    },
    /// The history or past state asked for is not stored.
    #[error("no such history of {key}: {detail}")]
    NoHistory {
        /// The entity.
        key: EntityKey,
        /// What is missing, and why.
        detail: String,
    },
    /// The new state could not be encoded, so the step was discarded.
    #[error("the new state of {key} cannot be encoded: {detail}")]
    Unencodable {
        /// The entity.
        key: EntityKey,
        /// What the encoder reported.
        detail: String,
    },
    /// The step was applied and is durable, but its reply could not be encoded as JSON
    /// (calls by kind name only). Retrying would apply the message again.
    #[error("the step for {key} was applied, but its reply cannot be encoded: {detail}")]
    UnencodableReply {
        /// The entity.
        key: EntityKey,
        /// What the encoder reported.
        detail: String,
    },
    /// This node no longer owns the entity's shard; another writer took it over.
    #[error("this node no longer owns {shard} of {key}; the step was discarded")]
    Fenced {
        /// The entity.
        key: EntityKey,
        /// Its shard.
        shard: ShardId,
    },
    /// This node does not serve the entity's shard now (in a cluster, another node owns it,
    /// or this node's lease on it lapsed). Nothing was done; the cluster's router sends the
    /// call to the owner.
    #[error("this node does not serve {shard} now; the call was not run")]
    NotOwner {
        /// The shard.
        shard: ShardId,
    },
    /// The idempotency key is empty or too long.
    #[error("invalid idempotency key: {0}")]
    InvalidIdempotencyKey(String),
    /// The runtime is shutting down and takes no new messages.
    #[error("the runtime is shutting down")]
    ShuttingDown,
    /// No kind of that name (or type) is registered with the runtime.
    #[error("no kind named {0:?} is registered")]
    UnknownKind(String),
    /// The message could not be decoded for the kind (JSON calls only).
    #[error("the message is not a valid {kind} message: {detail}")]
    BadMessage {
        /// The kind.
        kind: String,
        /// What the decoder reported.
        detail: String,
    },
    /// The id is not a valid entity id.
    #[error(transparent)]
    InvalidId(#[from] InvalidId),
    /// An operator paused the entity: its calls are refused until it is resumed (its timers
    /// and messages from other entities wait instead).
    #[error("{0} is paused by an operator; calls are refused until it is resumed")]
    Paused(EntityKey),
    /// The message may only come from inside the runtime (another entity's `tell` or `ask`,
    /// a timer, an effect's result): [`Process::is_internal`](crate::Process::is_internal)
    /// says so, and a call cannot send it. Nothing changed.
    #[error(
        "this message to {0} may only come from inside the runtime (another entity, a timer, \
         an effect's result); it cannot be sent by a call"
    )]
    Internal(EntityKey),
    /// The entity's stored bytes cannot be read back (an undecodable state, a journal whose
    /// replay diverged), so it is quarantined: its calls are refused and nothing writes to
    /// it until an operator fixes the bytes and releases it.
    #[error(
        "{0} is quarantined: its stored bytes cannot be read back, and are kept as they are; \
         fix them, then release it"
    )]
    Quarantined(EntityKey),
    /// The kind's states cannot be watched: it stores none (`Ephemeral`), or they are not
    /// serializable (`Journal` without snapshots).
    #[error(
        "the states of kind {0:?} cannot be watched: it keeps no JSON state (ephemeral, or a journal kind without snapshots)"
    )]
    NotWatchable(String),
}

impl CallError {
    /// This runtime error (never a rejection) as a `CallError` of any rejection type.
    pub(crate) fn widen<F>(self) -> CallError<F> {
        self.map_rejection(|never: Infallible| match never {})
    }
}

/// What an [`CallError::Overloaded`] refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Overload {
    /// One entity's mailbox is full.
    Entity(EntityKey),
    /// The node has as many calls in flight as it accepts.
    Node,
}

impl fmt::Display for Overload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Entity(key) => write!(f, "the mailbox of {key}"),
            Self::Node => f.write_str("this node"),
        }
    }
}

impl<E> CallError<E> {
    /// Changes the rejection type, keeping every runtime error as it is.
    pub fn map_rejection<F>(self, f: impl FnOnce(E) -> F) -> CallError<F> {
        match self {
            Self::Rejected(e) => CallError::Rejected(f(e)),
            Self::Panicked { key, message } => CallError::Panicked { key, message },
            Self::DeadLettered {
                key,
                attempts,
                message,
            } => CallError::DeadLettered {
                key,
                attempts,
                message,
            },
            Self::Overloaded { scope } => CallError::Overloaded { scope },
            Self::Storage { key, source } => CallError::Storage { key, source },
            Self::CorruptState { key, detail } => CallError::CorruptState { key, detail },
            Self::ReplayDiverged { key, step, detail } => {
                CallError::ReplayDiverged { key, step, detail }
            }
            Self::StateTooNew {
                key,
                schema,
                supported,
            } => CallError::StateTooNew {
                key,
                schema,
                supported,
            },
            Self::MigrationFailed { key, from, detail } => {
                CallError::MigrationFailed { key, from, detail }
            }
            Self::NoHistory { key, detail } => CallError::NoHistory { key, detail },
            Self::Unencodable { key, detail } => CallError::Unencodable { key, detail },
            Self::UnencodableReply { key, detail } => CallError::UnencodableReply { key, detail },
            Self::Fenced { key, shard } => CallError::Fenced { key, shard },
            Self::NotOwner { shard } => CallError::NotOwner { shard },
            Self::InvalidIdempotencyKey(detail) => CallError::InvalidIdempotencyKey(detail),
            Self::ShuttingDown => CallError::ShuttingDown,
            Self::UnknownKind(kind) => CallError::UnknownKind(kind),
            Self::BadMessage { kind, detail } => CallError::BadMessage { kind, detail },
            Self::InvalidId(e) => CallError::InvalidId(e),
            Self::Paused(key) => CallError::Paused(key),
            Self::Internal(key) => CallError::Internal(key),
            Self::Quarantined(key) => CallError::Quarantined(key),
            Self::NotWatchable(kind) => CallError::NotWatchable(kind),
        }
    }

    /// A stable, machine-readable name for the error, such as `"overloaded"`; for a
    /// rejection, the kind's own code.
    pub fn code(&self) -> &str
    where
        E: Rejection,
    {
        match self {
            Self::Rejected(e) => e.code(),
            Self::Panicked { .. } => "handler_panicked",
            Self::DeadLettered { .. } => "dead_lettered",
            Self::Overloaded { .. } => "overloaded",
            Self::Storage { source, .. } => storage_code(source),
            Self::CorruptState { .. } => "corrupt_state",
            Self::ReplayDiverged { .. } => "replay_diverged",
            Self::StateTooNew { .. } => "state_too_new",
            Self::MigrationFailed { .. } => "migration_failed",
            Self::NoHistory { .. } => "no_history",
            Self::Unencodable { .. } => "unencodable_state",
            Self::UnencodableReply { .. } => "unencodable_reply",
            Self::Fenced { .. } => "fenced",
            Self::NotOwner { .. } => "not_owner",
            Self::InvalidIdempotencyKey(_) => "invalid_idempotency_key",
            Self::ShuttingDown => "shutting_down",
            Self::UnknownKind(_) => "unknown_kind",
            Self::BadMessage { .. } => "bad_message",
            Self::InvalidId(_) => "invalid_id",
            Self::Paused(_) => "paused",
            Self::Internal(_) => "internal_message",
            Self::Quarantined(_) => "quarantined",
            Self::NotWatchable(_) => "not_watchable",
        }
    }
}

/// A refusal carried as JSON: what [`Runtime::call_json`](crate::Runtime::call_json)
/// returns in [`CallError::Rejected`], where the kind's own error type is not known.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct JsonRejection {
    /// The kind's error code.
    pub code: String,
    /// The kind's error message.
    pub message: String,
    /// What kind of refusal it is.
    pub refusal: Refusal,
}

impl<E: Rejection> CallError<E> {
    /// The same error, with a rejection as its code and message (for callers by kind name).
    pub(crate) fn into_json(self) -> CallError<JsonRejection> {
        self.map_rejection(|r| JsonRejection {
            code: r.code().to_owned(),
            message: r.to_string(),
            refusal: r.refusal(),
        })
    }
}

impl Rejection for JsonRejection {
    fn code(&self) -> &str {
        &self.code
    }

    fn refusal(&self) -> Refusal {
        self.refusal
    }
}

/// An error a handler returns to refuse a message. See [`Process::Error`](crate::Process::Error).
///
/// The [`code`](Rejection::code) is a short, stable, `snake_case` name that clients can
/// match on (the HTTP gateway sends it as `error.code`); the `Display` text explains it
/// to a person.
pub trait Rejection: std::error::Error + Send + Sync + 'static {
    /// A stable, machine-readable name for this error, such as `"not_your_turn"`.
    fn code(&self) -> &str;

    /// What kind of refusal this is: the message is invalid here (the default), or the
    /// caller is not known or not allowed (see [`Ctx::caller`](crate::Ctx::caller)). The
    /// HTTP gateway answers `400`, `401` or `403` by it.
    fn refusal(&self) -> Refusal {
        Refusal::Invalid
    }
}

/// What kind of refusal a [`Rejection`] is. The HTTP gateway picks the response's status
/// from it; the entity's state is left as it was in every case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Refusal {
    /// The message cannot be applied to the entity as it is (HTTP `400`).
    #[default]
    Invalid,
    /// The message needs a known caller, and the call had none (HTTP `401`).
    Unauthenticated,
    /// The caller may not send this message (HTTP `403`).
    Forbidden,
}

impl Rejection for std::convert::Infallible {
    fn code(&self) -> &str {
        match *self {}
    }
}

/// Why a kind's change feed could not be read ([`Runtime::changes`](crate::Runtime::changes)).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum FeedError {
    /// No kind of this name is registered.
    #[error("no kind named {0:?} is registered")]
    UnknownKind(String),
    /// The kind keeps no change feed.
    #[error("kind {0:?} keeps no change feed: register it with Builder::change_feed")]
    NoFeed(String),
    /// Storage failed; reading again later may succeed.
    #[error("storage failed: {0}")]
    Store(perennial_storage::Error),
}

impl FeedError {
    /// A stable, machine-readable name for the error.
    pub fn code(&self) -> &'static str {
        match self {
            Self::UnknownKind(_) => "unknown_kind",
            Self::NoFeed(_) => "no_change_feed",
            Self::Store(source) => storage_code(source),
        }
    }
}

/// Why an operator's request ([`Admin`](crate::Admin)) failed.
///
/// A request that reaches an entity (retrying a dead letter, a migration's rewrite, reading
/// an entity's stored state or history) fails as a call would, with [`AdminError::Entity`];
/// the rest are the operator's own failures.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// The entity the request reached failed it, as it would a call.
    #[error(transparent)]
    Entity(CallError<JsonRejection>),
    /// No kind of this name is registered.
    #[error("no kind named {0:?} is registered")]
    UnknownKind(String),
    /// The id is not a valid entity id.
    #[error(transparent)]
    InvalidId(#[from] InvalidId),
    /// This node does not serve the entity's shard now; nothing was done. In a cluster,
    /// the node that serves it can.
    #[error("this node does not serve {shard} now; the request was not carried out")]
    NotOwner {
        /// The entity's shard.
        shard: ShardId,
    },
    /// Storage failed (listing a kind's entities, reading dead letters, an index).
    #[error("storage failed: {0}")]
    Store(perennial_storage::Error),
    /// No dead letter has this number: it was retried or discarded, or never existed.
    #[error("no dead letter numbered {0}; list them to see which are stored")]
    NoSuchLetter(u64),
    /// The dead letter is being retried or discarded by another request right now.
    #[error("dead letter {0} is being retried or discarded right now; list it again in a moment")]
    LetterBusy(u64),
    /// The kind keeps no state in storage (`Ephemeral`), so there is nothing to query or
    /// index.
    #[error("kind {0:?} is ephemeral: it stores no state to query or index")]
    NotStored(String),
    /// A path with `[*]` was given to index.
    #[error(
        "`{0}` cannot be indexed: an index is by one value per entity, and `[*]` stands for many"
    )]
    NotIndexable(String),
    /// The entity has messages in flight (queued, or applied and not yet durable), so it was
    /// not deleted; delete it with `force` to delete it after them.
    #[error(
        "{0} has messages in flight; it was not deleted (wait and try again, or force the \
         deletion: it then comes after them)"
    )]
    Busy(EntityKey),
    /// Nothing of the entity is stored: it was never written, or it was deleted.
    #[error("nothing is stored for {0}: it was never written, or it was deleted")]
    NoSuchEntity(EntityKey),
}

impl AdminError {
    /// A stable, machine-readable name for the error, such as `"no_such_letter"`; for
    /// [`Entity`](AdminError::Entity), the call's code.
    pub fn code(&self) -> &str {
        match self {
            Self::Entity(e) => e.code(),
            Self::UnknownKind(_) => "unknown_kind",
            Self::InvalidId(_) => "invalid_id",
            Self::NotOwner { .. } => "not_owner",
            Self::Store(perennial_storage::Error::Invalid(_)) => "invalid_request",
            Self::Store(source) => storage_code(source),
            Self::NoSuchLetter(_) => "no_such_letter",
            Self::LetterBusy(_) => "letter_busy",
            Self::NotStored(_) => "not_stored",
            Self::NotIndexable(_) => "not_indexable",
            Self::Busy(_) => "busy",
            Self::NoSuchEntity(_) => "no_such_entity",
        }
    }
}

impl<E: Rejection> From<CallError<E>> for AdminError {
    /// What the two families share keeps its name; the rest is the entity's failure.
    fn from(error: CallError<E>) -> Self {
        let error = error.into_json();
        match error {
            CallError::UnknownKind(kind) => Self::UnknownKind(kind),
            CallError::InvalidId(e) => Self::InvalidId(e),
            CallError::NotOwner { shard } => Self::NotOwner { shard },
            other => Self::Entity(other),
        }
    }
}

/// The code of a storage failure.
fn storage_code(error: &perennial_storage::Error) -> &'static str {
    match error {
        perennial_storage::Error::Corrupt(_) => "storage_corrupt",
        perennial_storage::Error::Full(_) => "storage_full",
        perennial_storage::Error::Io(_) => "storage_io",
        _ => "storage_failed",
    }
}

/// Why the runtime could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// No store was given to the builder.
    #[error("no store: give the builder one with `.store(...)`")]
    NoStore,
    /// Two kinds were registered with the same name.
    #[error("two kinds are named {0:?}; kind names must be unique")]
    DuplicateKind(&'static str),
    /// An effect was registered whose kind is not.
    #[error(
        "effect {effect:?} is registered for kind {kind:?}, which is not: register the kind too"
    )]
    EffectWithoutKind {
        /// The effect's kind.
        kind: &'static str,
        /// The effect's name.
        effect: &'static str,
    },
    /// A listener was given for a kind that is not registered.
    #[error("a listener is given for kind {0:?}, which is not registered: register the kind too")]
    ListenerWithoutKind(&'static str),
    /// A change feed was asked for a kind that is not registered.
    #[error(
        "a change feed is asked for kind {0:?}, which is not registered: register the kind too"
    )]
    FeedWithoutKind(&'static str),
    /// A change feed was asked for a kind that keeps no JSON state to put in it.
    #[error(
        "kind {0:?} keeps no JSON state for a change feed (it is ephemeral, or a journal kind \
         without snapshots): register it with snapshots, or keep no feed"
    )]
    FeedWithoutState(&'static str),
    /// The store could not be claimed.
    #[error("cannot claim the store: {0}")]
    Storage(#[from] perennial_storage::Error),
}
