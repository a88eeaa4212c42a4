//! What a kind of entity is written against: the [`Process`] trait, with its [`Persistence`]
//! and its state [`Migration`]s; the context a step runs in (`ctx`: [`Ctx`]; `rng`:
//! [`Rng`](crate::Rng)); effects (`effect`: [`Effect`](crate::Effect)); and asks (`ask`: [`Asked`](crate::Asked)). These name one
//! another in their signatures, so they live together, below the runtime that runs them.

pub(crate) mod ask;
pub(crate) mod caller;
pub(crate) mod ctx;
pub(crate) mod effect;
pub(crate) mod rng;

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::{Ctx, Rejection};

/// A kind of persistent process: its state is `Self`, it handles [`Msg`](Process::Msg)s one
/// at a time, and it answers each with a [`Reply`](Process::Reply) or a
/// [`Error`](Process::Error).
///
/// Each entity of the kind is addressed by an id. It is activated when its first message
/// arrives: from its stored state, or from [`Default`] followed by [`init`](Process::init) if
/// it never existed. After each step that changed the state, the runtime makes the new state
/// durable before it releases the reply (a step that changed nothing writes nothing, but its
/// reply still waits for the durability of the steps before it).
///
/// Handlers are **transactional**: when [`handle`](Process::handle) returns `Err` or panics,
/// every change it made to `self` is discarded and the entity continues from the state it had
/// before the message. (A `Journal` kind gets that state back by replaying its journal,
/// which costs a replay from its latest snapshot: such kinds should refuse a message before
/// they change anything.)
///
/// How the state is kept is chosen at registration (see [`Persistence`]). For `Snapshot`
/// kinds, the state must round-trip through `serde_json` (what it writes, it must read back):
/// the runtime stores it as JSON and rolls back by decoding it. A state that does not (an `f64`
/// holding NaN, say) is reported as `corrupt_state` the next time it is needed, and its
/// stored bytes are left as they are.
///
/// ```
/// use perennial_core::{Ctx, Process};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Default, Serialize, Deserialize)]
/// struct Counter {
///     value: i64,
/// }
///
/// #[derive(Serialize, Deserialize)]
/// #[serde(rename_all = "snake_case")]
/// enum CounterMsg {
///     Add(i64),
///     Get,
/// }
///
/// impl Process for Counter {
///     const KIND: &'static str = "counter";
///     type Msg = CounterMsg;
///     type Reply = i64;
///     type Error = std::convert::Infallible;
///
///     fn handle(&mut self, msg: CounterMsg, _ctx: &mut Ctx<'_, Self>) -> Result<i64, Self::Error> {
///         if let CounterMsg::Add(n) = msg {
///             self.value += n;
///         }
///         Ok(self.value)
///     }
/// }
/// ```
pub trait Process: Default + Send + 'static {
    /// The kind's name: it addresses the kind in URLs and names it in storage, so it must not
    /// change once entities are stored.
    const KIND: &'static str;

    /// The migrations of the kind's stored state, oldest first: `MIGRATIONS[0]` turns the
    /// JSON of schema version 1 into version 2, `MIGRATIONS[1]` version 2 into 3, and so on.
    /// The kind's state is at version `MIGRATIONS.len() + 1`; states stored by older code
    /// are migrated in memory when they are read, and written back at the new version by
    /// the entity's next step (or by `perennial migrate`, for entities nobody calls).
    ///
    /// Append to the list; never edit or remove a released migration. A stored state of a
    /// newer version than the list reaches (after a rollback) is refused with
    /// [`CallError::StateTooNew`](crate::CallError::StateTooNew), and left as it is.
    ///
    /// ```
    /// use perennial_core::{Ctx, Migration, MigrationError, Process};
    /// use serde::{Deserialize, Serialize};
    /// use serde_json::{Value, json};
    ///
    /// /// Version 3: prices in cents, with a currency.
    /// #[derive(Default, Serialize, Deserialize)]
    /// struct Cart {
    ///     lines: Vec<Line>,
    ///     currency: String,
    /// }
    ///
    /// #[derive(Serialize, Deserialize)]
    /// struct Line {
    ///     sku: String,
    ///     cents: u64,
    /// }
    ///
    /// /// Version 1 was `{"items": {"sku": price}}`.
    /// fn items_to_lines(mut v1: Value) -> Result<Value, MigrationError> {
    ///     let items = v1["items"].take();
    ///     let items = items.as_object().ok_or(MigrationError::new("no items"))?;
    ///     let lines: Vec<Value> =
    ///         items.iter().map(|(sku, price)| json!({"sku": sku, "price": price})).collect();
    ///     Ok(json!({ "lines": lines }))
    /// }
    ///
    /// /// Version 2 had prices in dollars, with no currency.
    /// fn dollars_to_cents(mut v2: Value) -> Result<Value, MigrationError> {
    ///     for line in v2["lines"].as_array_mut().ok_or(MigrationError::new("no lines"))? {
    ///         let dollars = line["price"].as_f64().ok_or(MigrationError::new("no price"))?;
    ///         line["cents"] = json!((dollars * 100.0).round() as u64);
    ///     }
    ///     v2["currency"] = json!("USD");
    ///     Ok(v2)
    /// }
    ///
    /// impl Process for Cart {
    ///     const KIND: &'static str = "cart";
    ///     const MIGRATIONS: &'static [Migration] = &[items_to_lines, dollars_to_cents];
    ///     type Msg = ();
    ///     type Reply = usize;
    ///     type Error = std::convert::Infallible;
    ///
    ///     fn handle(&mut self, _: (), _ctx: &mut Ctx<'_, Self>) -> Result<usize, Self::Error> {
    ///         Ok(self.lines.len())
    ///     }
    /// }
    ///
    /// assert_eq!(perennial_core::schema_version::<Cart>(), 3);
    /// let v1 = json!({"items": {"tea": 2.5}});
    /// let v3 = dollars_to_cents(items_to_lines(v1).unwrap()).unwrap();
    /// assert_eq!(v3["lines"][0]["cents"], 250);
    /// ```
    const MIGRATIONS: &'static [Migration] = &[];

    /// Whether clients that watch an entity over HTTP (`GET /v1/{kind}/{id}/watch`) see its
    /// state. `false` for a state that holds what not every caller may see (a poker table's
    /// deck and hole cards): the stream then only says *that* the state changed (and its
    /// version), and clients ask the entity, whose handler knows the
    /// [caller](crate::Ctx::caller), for what they may see. In-process watchers
    /// ([`EntityRef::watch`](crate::EntityRef::watch)) and operators see the state either way.
    const WATCH_SHOWS_STATE: bool = true;

    /// The messages the kind handles.
    type Msg: Serialize + DeserializeOwned + Send + 'static;

    /// What a successful step answers.
    type Reply: Serialize + DeserializeOwned + Send + 'static;

    /// What a refused message answers. Returning it rolls the step back.
    type Error: Rejection;

    /// Handles one message. Runs to completion before the entity's next message starts.
    ///
    /// Randomness, time and ids must come from `ctx`, never from the outside world.
    fn handle(
        &mut self,
        msg: Self::Msg,
        ctx: &mut Ctx<'_, Self>,
    ) -> Result<Self::Reply, Self::Error>;

    /// Whether handling `msg` leaves the state as it is, for `Journal` kinds: such a message
    /// is not journaled (its reply still waits for the steps before it to be durable). A
    /// message that does change the state must answer `false`, the default, or the change is
    /// lost at the next activation. Other kinds ignore it.
    fn is_read_only(msg: &Self::Msg) -> bool {
        let _ = msg;
        false
    }

    /// Whether `msg` may only come from inside the runtime: another entity's `tell` or `ask`
    /// (or an ask's answer), a timer, an effect's result, a dead letter an operator retries.
    /// A call that sends such a message, over HTTP or in process, is refused with
    /// [`CallError::Internal`](crate::CallError::Internal) before the handler sees it, so a
    /// client cannot forge, say, the result of an effect. Default: none is.
    fn is_internal(msg: &Self::Msg) -> bool {
        let _ = msg;
        false
    }

    /// Runs once, when the entity is created: after [`Default`], before its first message.
    /// What it does to `self` becomes durable with that first message's step.
    fn init(&mut self, ctx: &mut Ctx<'_, Self>) {
        let _ = ctx;
    }

    /// Runs each time the entity is activated (after `init` for a new entity), before any
    /// message. Use it to rebuild derived, in-memory data; it is not a step of its own.
    fn on_activate(&mut self, ctx: &mut Ctx<'_, Self>) {
        let _ = ctx;
    }

    /// Runs when the entity is passivated, right before its state is dropped. All its steps
    /// are durable by then; changes made here are not stored.
    fn on_passivate(&mut self, ctx: &mut Ctx<'_, Self>) {
        let _ = ctx;
    }

    /// How long the entity may stay idle in memory before it is passivated. It is asked
    /// after each run of messages, so it may depend on the state.
    fn idle_timeout(&self) -> Duration {
        Duration::from_secs(300)
    }
}

/// How a kind keeps its state. Chosen when the kind is registered with the runtime. Its JSON
/// is its name in lower case (`"snapshot"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Persistence {
    /// The state (serde) is written after each step, before the reply leaves.
    Snapshot,
    /// The inputs of each step (the message, and the time and randomness `ctx` handed out)
    /// are journaled before the reply leaves; activation rebuilds the state by replaying
    /// them. The state needs no serde, and snapshots cut replay when it has.
    Journal,
    /// The state lives in memory only. A panic restores the state from before the message,
    /// but a restart or a passivation loses it.
    Ephemeral,
}

/// One step of a kind's state history: turns the JSON of schema version N into the JSON of
/// version N + 1. See [`Process::MIGRATIONS`].
pub type Migration = fn(Value) -> Result<Value, MigrationError>;

/// Why a [`Migration`] could not migrate a state. The entity is then quarantined with
/// [`CallError::MigrationFailed`](crate::CallError::MigrationFailed), and its stored bytes are left as they are.
///
/// ```
/// use perennial_core::MigrationError;
/// use serde_json::Value;
///
/// fn rename_owner(mut state: Value) -> Result<Value, MigrationError> {
///     let owner = state["owner"].take();
///     if owner.is_null() {
///         return Err(MigrationError::new("the state has no owner"));
///     }
///     state["account"] = owner;
///     Ok(state)
/// }
/// assert!(rename_owner(serde_json::json!({})).is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct MigrationError(String);

impl MigrationError {
    /// A migration error explained by `reason`.
    pub fn new(reason: impl Into<String>) -> Self {
        Self(reason.into())
    }
}

impl From<serde_json::Error> for MigrationError {
    fn from(e: serde_json::Error) -> Self {
        Self(e.to_string())
    }
}
