//! The storage layer's contract: what every backend (memory, SQLite, later PostgreSQL) provides.
//!
//! A [`Store`] holds the ground truth of a Perennial node: each entity's last committed state
//! (as JSON text, so generic tools can read it), the journals of `Journal` kinds, pending timers, messages and effects, the replies kept
//! for idempotency keys, the shard epochs that fence stale writers, and
//! the dead letters. The runtime's commit pipeline hands a store one [`Batch`] at a time; the
//! store makes the whole batch durable in one transaction before it returns.
//!
//! **API Boundary.** **Architecture Invariant:** every backend passes the same conformance
//! suite (`conformance`, behind the `test-util` feature); a write is accepted only when it
//! names its shard's current epoch.
//!
//! # Layout
//! - [`Store`]: what the runtime needs (with [`Batch`], [`Record`] and [`CommitOutcome`]),
//!   and [`Catalog`]: what operators ask of the stored data.
//! - [`Filter`] and [`Path`] (module [`filter`]): filters over entity state, which
//!   [`Catalog::query`] answers, and the paths a store can index.
//! - [`Directory`], with [`Member`] and [`Lease`]: a cluster's membership and shard leases.
//! - [`Error`]: what can go wrong, as one enum every backend maps its failures into.
//! - [`MemoryStore`]: a store in memory, for tests and for kinds that need no disk.
//! - `conformance`, `FaultyStore` (feature `test-util`): the shared test suite and a store
//!   wrapper that injects failures and delays.

#![cfg_attr(docsrs, feature(doc_cfg))]

mod directory;
mod error;
pub mod filter;
mod memory;
mod model;
mod store;

#[cfg(feature = "test-util")]
pub mod conformance;
#[cfg(feature = "test-util")]
mod faulty;

pub use directory::{Directory, Lease, Member};
pub use error::{Error, Result};
#[cfg(feature = "test-util")]
pub use faulty::FaultyStore;
pub use filter::{Filter, FilterError, Path};
pub use memory::MemoryStore;
pub use model::{
    Batch, ChangePage, ChangeWrite, CommitOutcome, DeadLetter, DeadLetterDone, DeadLetterWrite,
    EntityDelete, EntityState, EntitySummary, ExpireChanges, ExpireReplies, Fenced, JournalEntry,
    JournalTrim, JournalWrite, PauseWrite, Pending, PendingClass, PendingDone, PendingWrite,
    Record, ReplyDone, ReplyWrite, StateWrite, StoredChange, StoredDeadLetter, StoredReply,
};
pub use store::{Catalog, Page, Store};
