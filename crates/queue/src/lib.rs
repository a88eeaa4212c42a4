//! A durable job queue per key, built on Perennial's entities: each key (a user, a tenant, a
//! device) has its own queue, which runs at most N of its jobs at once, highest priority
//! first, retries failed work with backoff, and keeps every job across crashes and restarts.
//!
//! You write a [`Job`]: the data of one job and its async work. The queue of each key is an
//! entity of kind [`Job::KIND`], a [`JobQueue`], started by the first message to its key; you
//! send it [`QueueMsg`]s like any entity, in process or over HTTP.
//!
//! - **Concurrency per key**: [`Job::CONCURRENCY`] jobs of a key run at once, or what
//!   [`QueueMsg::Configure`] set for that key.
//! - **Rate limit per key**: at most N starts per interval ([`Job::RATE`], or configured per
//!   key); a job held back starts by a durable timer as soon as the limit allows.
//! - **Priorities**: a waiting job of a higher priority starts first; first in, first out
//!   within one priority.
//! - **Retries**: a failed attempt (an error, a panic, a timeout) is retried as
//!   [`Job::retry`] says; when none is left the job is finished as failed, with its error,
//!   and [`QueueMsg::Retry`] submits it again.
//! - **Cancellation**: [`QueueMsg::Cancel`] drops a waiting job, or stops a running one.
//! - **Status and history**: [`QueueMsg::Status`], [`QueueMsg::Job`] and
//!   [`QueueMsg::History`] (the last [`Job::HISTORY`] jobs finished, with their outputs).
//! - **Durable**: the queue's state (waiting, running, counts, history) is stored with each
//!   step. A job's work runs at least once (again after a crash that interrupted it, with
//!   the same [`EffectCtx::id`](perennial_core::EffectCtx::id), to pass on as an idempotency
//!   key); its result is applied exactly once.
//! - **Short-lived queues**: with [`Job::DELETE_WHEN_DRAINED`], a key's queue exists only
//!   while it has work.
//!
//! - **A cap across keys**: with [`Job::GLOBAL`], at most N jobs of all keys run at once
//!   (a tenant's quota over its users' queues); a permit pool entity hands permits out to
//!   the waiting keys in turns.
//!
//! ```
//! use std::time::Duration;
//!
//! use perennial_core::{EffectCtx, EffectError, Runtime};
//! use perennial_queue::{Job, JobQueue, JobResult, JobState, QueueMsg, QueueReply};
//! use perennial_storage::MemoryStore;
//! use serde::{Deserialize, Serialize};
//!
//! /// Makes a thumbnail of one image.
//! #[derive(Debug, Clone, Serialize, Deserialize)]
//! struct Thumbnail {
//!     image: String,
//!     width: u32,
//! }
//!
//! impl Job for Thumbnail {
//!     const KIND: &'static str = "thumbnails";
//!     const CONCURRENCY: u32 = 3;
//!     type Output = String;
//!
//!     async fn run(self, _cx: EffectCtx) -> Result<String, EffectError> {
//!         // Real work goes here: an HTTP call, a subprocess, a query.
//!         tokio::time::sleep(Duration::from_millis(5)).await;
//!         Ok(format!("{}-{}.png", self.image, self.width))
//!     }
//! }
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let rt = JobQueue::<Thumbnail>::register(Runtime::builder().store(MemoryStore::new()))
//!     .start()
//!     .await?;
//! let alice = rt.get::<JobQueue<Thumbnail>>("alice");
//! let job = Thumbnail { image: "cat".into(), width: 320 };
//! let QueueReply::Submitted { number, .. } = alice.call(QueueMsg::submit(job)).await? else {
//!     unreachable!("a submit is answered with the job's number");
//! };
//! // The work runs outside the handler; its result comes back to the queue.
//! loop {
//!     if let QueueReply::Job(JobState::Finished(done)) =
//!         alice.call(QueueMsg::Job { number }).await?
//!     {
//!         assert!(matches!(done.result, JobResult::Ok(ref file) if file == "cat-320.png"));
//!         break;
//!     }
//!     tokio::time::sleep(Duration::from_millis(5)).await;
//! }
//! rt.shutdown().await;
//! # Ok(())
//! # }
//! ```

mod job;
mod message;
mod permits;
mod queue;

pub use job::{Job, Work};
pub use message::{
    FinishedJob, JobResult, JobState, MAX_CONCURRENCY, MAX_QUEUED, MAX_RATE_INTERVAL_MS, Outcome,
    QueueError, QueueMsg, QueueReply, QueueStatus, RateLimit,
};
pub use permits::{GlobalCap, MAX_GLOBAL_CONCURRENCY, POOL, PermitMsg, PermitStatus, Permits};
pub use queue::{JobQueue, each_job};
