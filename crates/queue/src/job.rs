//! What a user writes: a [`Job`] type and its work; and the effect that runs that work for
//! the queue ([`Work`]), whose result comes back to the queue as a message.

use std::fmt;
use std::future::Future;
use std::time::SystemTime;

use perennial_core::{Effect, EffectCtx, EffectError, EffectFailure, Migration, Retry};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::message::{Outcome, QueueMsg, RateLimit};
use crate::permits::GlobalCap;
use crate::queue::JobQueue;

/// A job type: the data of one job, stored with the queue until the job finished, and its
/// work. Each job type has its own queue kind, [`JobQueue<Self>`], with one queue entity per
/// key (a user, a tenant, a device).
///
/// The work runs **at least once**: a crash while it runs (or before its result is durable)
/// runs it again after the restart, and a failed attempt is retried as [`retry`](Self::retry)
/// says. Its result is applied to the queue exactly once. Pass [`EffectCtx::id`]'s text to an
/// external API as the idempotency key to make the whole exactly-once: it is the same on
/// every attempt of a job and unique across all queues.
///
/// ```
/// use perennial_core::{EffectCtx, EffectError};
/// use perennial_queue::Job;
/// use serde::{Deserialize, Serialize};
///
/// /// Sends one e-mail through the mail service given to the runtime's builder.
/// #[derive(Debug, Clone, Serialize, Deserialize)]
/// struct Mail {
///     to: String,
///     subject: String,
/// }
///
/// struct MailService;
/// impl MailService {
///     async fn send(&self, _key: &str, _to: &str, _subject: &str) -> Result<String, String> {
///         Ok("queued-at-provider".into())
///     }
/// }
///
/// impl Job for Mail {
///     const KIND: &'static str = "mail";
///     type Output = String;
///
///     async fn run(self, cx: EffectCtx) -> Result<String, EffectError> {
///         let service = cx.resource::<MailService>()?;
///         let key = cx.id().to_string();
///         service.send(&key, &self.to, &self.subject).await.map_err(EffectError::new)
///     }
/// }
/// ```
pub trait Job: Serialize + DeserializeOwned + Clone + fmt::Debug + Send + Sync + 'static {
    /// The name of the queue kind for this job type (`/v1/{KIND}/{key}` over HTTP). It must
    /// not change while queues of it are stored.
    const KIND: &'static str;

    /// How many jobs of one key run at once until the key is configured otherwise
    /// ([`QueueMsg::Configure`]). At least 1.
    const CONCURRENCY: u32 = 1;

    /// A cap on the jobs running at once across all keys, on top of each key's own: a
    /// tenant's quota, say, when each key is one of its users. Kept by a permit pool entity
    /// of kind [`GlobalCap::kind`] (id [`POOL`](crate::POOL)), which operators can read and
    /// configure like any entity. A queue asks the pool for a permit per job it could start
    /// and gives it back when the job ends, so the keys waiting take turns. Default: none.
    ///
    /// ```
    /// # use perennial_core::{EffectCtx, EffectError};
    /// # use perennial_queue::{GlobalCap, Job};
    /// # #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
    /// # struct Render;
    /// impl Job for Render {
    ///     const KIND: &'static str = "render";
    ///     /// Each user renders 2 at a time; all users together, 40.
    ///     const CONCURRENCY: u32 = 2;
    ///     const GLOBAL: Option<GlobalCap> = Some(GlobalCap {
    ///         kind: "render-permits",
    ///         concurrency: 40,
    ///     });
    ///     type Output = ();
    ///
    ///     async fn run(self, _cx: EffectCtx) -> Result<(), EffectError> {
    ///         Ok(())
    ///     }
    /// }
    /// ```
    const GLOBAL: Option<GlobalCap> = None;

    /// The rate limit on each key's starts until the key is configured otherwise
    /// ([`QueueMsg::Configure`](crate::QueueMsg::Configure)). Default: none.
    const RATE: Option<RateLimit> = None;

    /// How many finished jobs each queue keeps in its history (the oldest go first).
    const HISTORY: usize = 100;

    /// Whether a queue is deleted once it is drained (nothing waiting, nothing running), so
    /// that a key's queue exists only while it has work. Its history and a configured
    /// concurrency go with it. By default a drained queue is kept (and leaves memory when it
    /// is idle, like any entity).
    const DELETE_WHEN_DRAINED: bool = false;

    /// The migrations of the stored queues' state, for when this type (or its output)
    /// changes shape: see [`Process::MIGRATIONS`](perennial_core::Process::MIGRATIONS).
    /// Each one gets a queue's whole state; [`each_job`](crate::each_job) applies a change
    /// to every job in it.
    const MIGRATIONS: &'static [Migration] = &[];

    /// What a job's work produces; kept in the history with the job.
    type Output: Serialize + DeserializeOwned + Clone + fmt::Debug + Send + Sync + 'static;

    /// How failed attempts are retried: attempts, backoff, a timeout per attempt. When the
    /// last attempt failed (or one failed with a [permanent](EffectError::permanent) error),
    /// the job is finished as failed, with the last error. Default: [`Retry::DEFAULT`].
    fn retry() -> Retry {
        Retry::DEFAULT
    }

    /// Checks a job before it is queued: an `Err` refuses the submit with `bad_job` and this
    /// text (a job from an HTTP client may be anything its type can decode). Default: any.
    fn check(&self) -> Result<(), String> {
        Ok(())
    }

    /// Does the job's work, once per attempt. An `Err`, a panic or an attempt past its
    /// timeout is a failed attempt. `cx` has the job's id (stable across attempts and
    /// restarts), the attempt's number and the resources given to the runtime's builder.
    fn run(self, cx: EffectCtx) -> impl Future<Output = Result<Self::Output, EffectError>> + Send;
}

/// The effect that runs one job's work for its queue. Registered by
/// [`JobQueue::register`]; not used directly.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(bound(serialize = "J: Serialize", deserialize = "J: DeserializeOwned"))]
pub struct Work<J> {
    /// The job's number in its queue.
    pub(crate) number: u64,
    pub(crate) job: J,
}

impl<J: Job> Effect for Work<J> {
    type Kind = JobQueue<J>;
    const NAME: &'static str = "job";

    fn retry() -> Retry {
        J::retry()
    }

    async fn run(self, cx: EffectCtx) -> Result<QueueMsg<J>, EffectError> {
        let (started_ms, attempt) = (unix_ms(&cx), cx.attempt());
        let clock = cx.clone();
        let output = self.job.run(cx).await?;
        Ok(QueueMsg::Finished(Outcome {
            number: self.number,
            started_ms,
            finished_ms: unix_ms(&clock),
            attempt: Some(attempt),
            result: Ok(output),
        }))
    }

    fn failed(self, failure: EffectFailure) -> QueueMsg<J> {
        // No attempt's times to give: the queue's step puts in when it started the job and
        // its own time.
        QueueMsg::Finished(Outcome {
            number: self.number,
            started_ms: 0,
            finished_ms: 0,
            attempt: None,
            result: Err(failure.error),
        })
    }
}

/// Wall time in milliseconds since the Unix epoch: when an attempt's work ran (outside any
/// step, so not the step's clock).
fn unix_ms(cx: &EffectCtx) -> i64 {
    cx.now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
