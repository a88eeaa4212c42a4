//! Persistent processes for Rust: the one crate an application depends on.
//!
//! It re-exports what an application uses of the runtime ([`perennial_core`]) and the
//! stores: [`SqliteStore`] for a node with its data on local disk, [`MemoryStore`] for
//! tests. The list is explicit, in four groups: writing kinds, running them, their errors
//! and statistics, and operating them ([`Runtime::admin`]). What a cluster builds on
//! ([`perennial_core::Plumbing`], couriers) and the simulation's hooks stay in
//! `perennial_core`.
//!
//! ```
//! use perennial::{Ctx, Process, Runtime, SqliteStore};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Default, Serialize, Deserialize)]
//! struct Cart {
//!     items: Vec<String>,
//! }
//!
//! impl Process for Cart {
//!     const KIND: &'static str = "cart";
//!     type Msg = String;
//!     type Reply = usize;
//!     type Error = std::convert::Infallible;
//!
//!     fn handle(&mut self, item: String, _ctx: &mut Ctx<'_, Self>) -> Result<usize, Self::Error> {
//!         self.items.push(item);
//!         Ok(self.items.len())
//!     }
//! }
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! let rt = Runtime::builder()
//!     .store(SqliteStore::open(dir.path())?)
//!     .register_snapshot::<Cart>()
//!     .start()
//!     .await?;
//! // Durable on disk before `call` returns.
//! assert_eq!(rt.get::<Cart>("user-7").call("tea".into()).await?, 1);
//! rt.shutdown().await;
//! # Ok(())
//! # }
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]

// Writing kinds: the process traits, the context of a step, effects, journal snapshots and
// state migrations.
pub use perennial_core::{
    AskError, AskId, Asked, Caller, Ctx, Effect, EffectCtx, EffectError, EffectFailure, EffectId,
    Migration, MigrationError, Persistence, Process, Refusal, Rejection, Retry, Rng, Snapshots,
    TimerId, schema_version,
};
// Running them: the runtime, its builder, handles to entities, watches and listeners.
pub use perennial_core::{
    Builder, Change, EntityId, EntityKey, EntityRef, Runtime, StateChange, Watch,
};
// What can go wrong, and the counters.
pub use perennial_core::{
    CallError, CommitStats, FeedError, Histogram, JsonRejection, KindStats, Overload, StartError,
    Stats,
};
// Operating them: what `Runtime::admin` returns and answers.
pub use perennial_core::{
    Admin, EntityInfo, HistoryEntry, Migrate, MigrationReport, Passivation, Progress, Quarantined,
    Readiness, ReplayReport,
};

pub use perennial_storage::{MemoryStore, Store};
pub use perennial_storage_sqlite::SqliteStore;

/// The storage layer: the [`Store`] trait, its errors and records; and online backups of the
/// embedded store's data directory.
pub mod storage {
    pub use perennial_storage::*;
    pub use perennial_storage_sqlite::Options as SqliteOptions;
    pub use perennial_storage_sqlite::{
        BackupReport, BackupSummary, backup, check_backup, restore,
    };
}

/// A durable job queue per key: a [`Job`](queue::Job) type and its work, run by one
/// [`JobQueue`](queue::JobQueue) entity per key, at most N jobs of a key at once, highest
/// priority first, with retries, a rate limit, cancellation and history. See
/// [`perennial_queue`] for the whole story.
///
/// ```no_run
/// use perennial::queue::{Job, JobQueue, QueueMsg, QueueReply};
/// use perennial::{EffectCtx, EffectError, Runtime, SqliteStore};
/// use serde::{Deserialize, Serialize};
///
/// /// Renders one video for a user.
/// #[derive(Debug, Clone, Serialize, Deserialize)]
/// struct Render {
///     video: String,
/// }
///
/// impl Job for Render {
///     const KIND: &'static str = "renders";
///     const CONCURRENCY: u32 = 3; // per user
///     type Output = String;
///
///     async fn run(self, cx: EffectCtx) -> Result<String, EffectError> {
///         // Call the render farm here, with `cx.id()` as the idempotency key.
///         Ok(format!("{}.mp4 ({})", self.video, cx.id()))
///     }
/// }
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let rt = JobQueue::<Render>::register(Runtime::builder().store(SqliteStore::open("./data")?))
///     .start()
///     .await?;
/// let alice = rt.get::<JobQueue<Render>>("alice");
/// for video in ["intro", "talk", "outro", "bloopers"] {
///     let job = Render { video: video.into() };
///     if let QueueReply::Submitted { number, queued } = alice.call(QueueMsg::submit(job)).await? {
///         println!("job {number}: {queued} waiting"); // the fourth waits for a slot
///     }
/// }
/// # Ok(())
/// # }
/// ```
pub mod queue {
    pub use perennial_queue::{
        FinishedJob, GlobalCap, Job, JobQueue, JobResult, JobState, MAX_CONCURRENCY,
        MAX_GLOBAL_CONCURRENCY, MAX_QUEUED, MAX_RATE_INTERVAL_MS, Outcome, POOL, PermitMsg,
        PermitStatus, Permits, QueueError, QueueMsg, QueueReply, QueueStatus, RateLimit, Work,
        each_job,
    };
}

/// The test kit (feature `testing`): [`testing::Handler`] runs `handle` step by step on a
/// state you hold, without a runtime, and shows what each step scheduled, told, asked and
/// started; [`testing::TestRuntime`] runs whole flows on a runtime whose clock the test moves
/// (timers, idle timeouts, effects' backoff and asks' deadlines fire when it does) and can
/// restart it as a kill -9 would.
#[cfg(feature = "testing")]
pub use perennial_core::testing;

/// The Rust example of the README, compiled with the doctests: it must build as written in
/// a new crate.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct Readme;

/// The Rust examples of `docs/guide.md`, compiled and run with the doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/guide.md")]
pub struct Guide;

/// The Rust examples of `docs/async-work.md`, compiled and run with the doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/async-work.md")]
pub struct AsyncWorkGuide;

/// The Rust example of `docs/migrations.md`, compiled and run with the doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/migrations.md")]
pub struct MigrationsGuide;
