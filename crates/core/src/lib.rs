//! The Perennial runtime: persistent processes that are started on demand, handle one message
//! at a time, and keep their state durable before any reply leaves.
//!
//! # A tour
//!
//! A kind of entity is a type that implements [`Process`]: its state is the type itself, and
//! [`Process::handle`] turns one message into a reply. A [`Runtime`] hosts the kinds it was
//! built with; [`Runtime::get`] gives a cheap [`EntityRef`] to one entity, and
//! [`EntityRef::call`] sends it a message:
//!
//! ```
//! use perennial_core::{Ctx, Process, Runtime};
//! use perennial_storage::MemoryStore;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Default, Serialize, Deserialize)]
//! struct Counter {
//!     value: i64,
//! }
//!
//! impl Process for Counter {
//!     const KIND: &'static str = "counter";
//!     type Msg = i64;
//!     type Reply = i64;
//!     type Error = std::convert::Infallible;
//!
//!     fn handle(&mut self, add: i64, _ctx: &mut Ctx<'_, Self>) -> Result<i64, Self::Error> {
//!         self.value += add;
//!         Ok(self.value)
//!     }
//! }
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let rt = Runtime::builder()
//!     .store(MemoryStore::new())
//!     .register_snapshot::<Counter>()
//!     .start()
//!     .await?;
//! let c1 = rt.get::<Counter>("c1");
//! c1.call(40).await?;
//! assert_eq!(c1.call(2).await?, 42);
//! rt.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! What happens underneath:
//! - **Activation on demand.** The first message to an entity loads its state from the
//!   [`Store`](perennial_storage::Store), or creates it from [`Default`] and [`Process::init`].
//!   Lookup-or-create is atomic: concurrent first messages make one activation.
//! - **Durable before acknowledged.** After each step the new state (JSON) goes to the commit
//!   pipeline; the reply is held until the batch holding the step is durable. Batches are
//!   grouped across all entities: one transaction and one fsync per batch.
//! - **Transactional steps.** A handler that returns `Err` or panics changes nothing; the
//!   entity goes on from its previous state. A message that panics
//!   [`max_attempts`](Builder::max_attempts) times in a row becomes a dead letter.
//! - **Three ways to keep state.** [`Builder::register_snapshot`] writes the state (JSON) after each
//!   step; [`Builder::register_journal`] journals each step's inputs instead and rebuilds
//!   the state by replay, so the state needs no serde and a step costs the same however big
//!   the state is; [`Builder::register_ephemeral`] keeps it in memory only.
//! - **Timers, messages, effects.** A handler may [`schedule`](Ctx::schedule) a durable
//!   timer, [`tell`](Ctx::tell) a message to another entity (exactly once), or start an
//!   [`Effect`] (slow work whose result comes back as a message); all are stored with the
//!   step, and applied once whatever crashes. [`EntityRef::call_idempotent`] makes a caller's
//!   retry return the first reply instead of applying the message twice.
//! - **Passivation.** Idle entities leave memory after their
//!   [`idle_timeout`](Process::idle_timeout), and the least recently used ones leave when the
//!   node is over its [`max_resident`](Builder::max_resident) or
//!   [`max_resident_bytes`](Builder::max_resident_bytes) limits. A message racing a
//!   passivation simply activates the entity again.
//!
//! **Architecture Invariant:** this crate knows nothing about HTTP, SQL or other nodes; it
//! writes with the shard epoch the store gave it.
//!
//! # Layout
//!
//! From the ground floor up; a module uses only those above it (a test checks that no
//! modules import each other in a circle).
//! - `guard`, `clock`, `sim`, `task`, `error`: the panic guard, wall time, the simulation's
//!   hooks, where tasks are spawned, [`CallError`] and [`StartError`].
//! - `process/`: what a kind is written against: [`Process`], [`Ctx`], [`Effect`],
//!   [`Migration`].
//! - `upgrade`: a stored state of an older schema version brought up to date.
//! - `journal`: `Journal` kinds' entries, snapshots and replay; [`Snapshots`],
//!   [`HistoryEntry`].
//! - `registry`, `shards`, `pause`, `quarantine`, `watch`, `courier`, `due`, `histogram`:
//!   the resident entities, the shards served, paused and quarantined entities, watchers,
//!   the rows due soon.
//! - `commit`: the group-commit pipeline.
//! - `engine`: what every entity shares (storage, the pipeline, the registry, the node's
//!   lifecycle).
//! - `kind`: what the runtime keeps per registered kind.
//! - `entity/`: one resident entity: its mailbox and run loop, activation, steps, failures
//!   and held replies.
//! - `dyn_kind`: a kind seen without its types, for calls by kind name.
//! - `dispatch`: fires due timers, delivers messages between entities, runs effects.
//! - `builder`, `runtime`, `entity_ref`: [`Builder`], [`Runtime`], [`EntityRef`]: the entry points.
//! - `admin`, `migration`: what operators do to a running runtime; migration passes.
//! - `testing/` (feature `testing`): the test kit, a handler without a runtime and a runtime
//!   whose clock the test moves.

#![cfg_attr(docsrs, feature(doc_cfg))]

mod admin;
mod builder;
mod clock;
mod commit;
mod courier;
mod dispatch;
mod due;
mod dyn_kind;
mod engine;
mod entity;
mod entity_ref;
mod error;
mod guard;
mod histogram;
mod journal;
mod kind;
mod listen;
mod migration;
mod pause;
mod plumbing;
mod process;
mod quarantine;
mod readiness;
mod registry;
mod runtime;
mod shards;
#[cfg(feature = "sim")]
pub mod sim;
#[cfg(not(feature = "sim"))]
mod sim;
mod task;
#[cfg(feature = "testing")]
pub mod testing;
mod upgrade;
mod watch;

pub use admin::{Admin, EntityInfo, Passivation};
pub use builder::Builder;
pub use commit::CommitStats;
pub use courier::{Courier, Delivery, Parcel};
pub use entity_ref::EntityRef;
pub use error::{
    AdminError, CallError, FeedError, JsonRejection, Overload, Refusal, Rejection, StartError,
};
pub use histogram::Histogram;
pub use journal::{HistoryEntry, Snapshots};
pub use kind::KindStats;
pub use listen::Change;
pub use migration::{Migrate, MigrationReport, Progress, ReplayReport};
pub use plumbing::Plumbing;
pub use process::ask::{AskError, AskId, Asked};
pub use process::caller::Caller;
pub use process::ctx::Ctx;
pub use process::effect::{
    Effect, EffectCtx, EffectError, EffectFailure, EffectId, Retry, Retrying, TimerId,
};
pub use process::rng::Rng;
pub use process::{Migration, MigrationError, Persistence, Process};
pub use quarantine::Quarantined;
pub use readiness::Readiness;
pub use runtime::{Runtime, Stats};
pub use upgrade::schema_version;
pub use watch::{StateChange, Watch};

pub use perennial_types::{EntityId, EntityKey};
