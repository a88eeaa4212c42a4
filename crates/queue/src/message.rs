//! What a queue is sent and answers, and its refusals. Over HTTP these are the JSON bodies of
//! `/v1/{kind}/{key}`: `{"submit": {"job": {…}, "priority": 1}}`, `"status"`,
//! `{"job": {"number": 3}}`, `{"cancel": {"number": 3}}`, `{"retry": {"number": 3}}`,
//! `{"configure": {"concurrency": 3, "rate": {"starts": 10, "per_ms": 60000}}}` and
//! `"history"`.

use perennial_core::Rejection;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::Job;

/// The most jobs one queue holds waiting; a submit beyond is refused (`queue_full`).
pub const MAX_QUEUED: usize = 100_000;
/// The most jobs of one key that may run at once.
pub const MAX_CONCURRENCY: u32 = 10_000;

/// A message to a [`JobQueue`](crate::JobQueue).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[serde(bound(serialize = "J: Serialize", deserialize = "J: DeserializeOwned"))]
pub enum QueueMsg<J: Job> {
    /// Adds a job. It starts at once if fewer than the concurrency run, else it waits: jobs
    /// of a higher `priority` start first, and jobs of one priority in the order submitted.
    /// Answered with [`QueueReply::Submitted`].
    Submit {
        /// The job.
        job: J,
        /// Higher first; 0 when left out.
        #[serde(default)]
        priority: i32,
    },
    /// Cancels a job: one waiting never starts; one running is stopped (within 50 ms) and its
    /// result is never applied, though its work may have been done. Answered with the job's
    /// [`JobState`] after the cancel (a job that finished already stays finished).
    Cancel {
        /// The job's number, from [`QueueReply::Submitted`].
        number: u64,
    },
    /// Submits a failed job again: one in the history that failed for good (every attempt
    /// failed) waits again as a new job, with a new number, at priority 0. Answered with
    /// [`QueueReply::Submitted`]; a job that did not fail, or is no longer in the history, is
    /// refused (`not_failed`).
    Retry {
        /// The failed job's number.
        number: u64,
    },
    /// Sets how many jobs of this key may run at once (1 to [`MAX_CONCURRENCY`]) and how
    /// fast they may start; a setting left out stays as it is. Raising a limit starts waiting
    /// jobs at once; lowering one stops none. Answered with the status.
    Configure {
        /// At most this many run at once.
        #[serde(default)]
        concurrency: Option<u32>,
        /// At most this many start per interval; `{"starts": 0}` removes the limit.
        #[serde(default)]
        rate: Option<RateLimit>,
    },
    /// Reads the queue's counts ([`QueueReply::Status`]).
    Status,
    /// Reads where one job is ([`QueueReply::Job`]).
    Job {
        /// The job's number.
        number: u64,
    },
    /// Reads the last jobs finished, oldest first ([`QueueReply::History`]).
    History,
    /// A job's work is done, or failed for good: sent by the job's effect, not by users (one
    /// for a job that is not running is ignored).
    Finished(Outcome<J::Output>),
    /// Starts the waiting jobs the limits allow now: sent by the queue's own timer when its
    /// rate limit lets the next job start. Harmless from anyone else.
    Wake,
    /// Permits to start jobs, from the pool of a kind with a global cap ([`Job::GLOBAL`]).
    /// Sent by the pool only: a call that sends it is refused.
    Permits(u32),
}

impl<J: Job> QueueMsg<J> {
    /// Submits `job` at priority 0.
    pub fn submit(job: J) -> Self {
        Self::Submit { job, priority: 0 }
    }

    /// Sets the concurrency only.
    pub fn concurrency(concurrency: u32) -> Self {
        Self::Configure {
            concurrency: Some(concurrency),
            rate: None,
        }
    }
}

/// The longest interval of a rate limit: a week.
pub const MAX_RATE_INTERVAL_MS: u64 = 7 * 24 * 60 * 60 * 1000;

/// A rate limit on the jobs a key starts: at most `starts` per `per_ms` milliseconds, over
/// any window of that length (a job that must wait starts as soon as the oldest of the last
/// `starts` starts is `per_ms` old, by a durable timer). 0 starts: no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimit {
    /// At most this many starts…
    pub starts: u32,
    /// …per this many milliseconds (1 to [`MAX_RATE_INTERVAL_MS`]).
    pub per_ms: u64,
}

impl RateLimit {
    /// At most `starts` starts per `per`.
    pub const fn new(starts: u32, per: std::time::Duration) -> Self {
        let ms = per.as_millis();
        Self {
            starts,
            per_ms: if ms > u64::MAX as u128 {
                u64::MAX
            } else {
                ms as u64
            },
        }
    }

    /// Whether it limits anything.
    pub fn limits(&self) -> bool {
        self.starts > 0
    }

    /// Whether it can be set: no limit, or a limit over 1 ms to [`MAX_RATE_INTERVAL_MS`].
    pub fn is_valid(&self) -> bool {
        !self.limits() || (1..=MAX_RATE_INTERVAL_MS).contains(&self.per_ms)
    }
}

/// How one run of a job's work ended, as its effect reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome<O> {
    /// The job's number.
    pub number: u64,
    /// When the work's last attempt started, in milliseconds since the Unix epoch; 0 when
    /// no attempt succeeded (the queue then puts in its own times, see [`FinishedJob`]).
    pub started_ms: i64,
    /// When it ended; 0 when no attempt succeeded.
    pub finished_ms: i64,
    /// Which attempt succeeded (counted since the node started the work); `None` if none did.
    pub attempt: Option<u32>,
    /// The work's output, or the last attempt's error.
    pub result: Result<O, String>,
}

/// A queue's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
#[serde(bound(serialize = "J: Serialize", deserialize = "J: DeserializeOwned"))]
pub enum QueueReply<J: Job> {
    /// To [`QueueMsg::Submit`]: the job's number and how many jobs wait now (0 if it started).
    Submitted {
        /// The job's number in this queue: name it to cancel the job or ask where it is.
        number: u64,
        /// Jobs waiting, this one included if it did not start.
        queued: usize,
    },
    /// To [`QueueMsg::Status`], [`QueueMsg::Configure`] and a job's end.
    Status(QueueStatus),
    /// To [`QueueMsg::Job`] and [`QueueMsg::Cancel`].
    Job(JobState<J>),
    /// To [`QueueMsg::History`].
    History(Vec<FinishedJob<J>>),
}

/// A queue's counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueStatus {
    /// At most this many jobs run at once.
    pub concurrency: u32,
    /// Jobs running.
    pub running: usize,
    /// Jobs waiting.
    pub queued: usize,
    /// Jobs whose work succeeded, since the queue was created.
    pub done: u64,
    /// Jobs whose every attempt failed.
    pub failed: u64,
    /// Jobs cancelled.
    pub cancelled: u64,
    /// The rate limit on starts, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<RateLimit>,
}

/// Where one job is.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
#[serde(bound(serialize = "J: Serialize", deserialize = "J: DeserializeOwned"))]
pub enum JobState<J: Job> {
    /// Waiting; `ahead` jobs start before it (as things stand: a job of a higher priority
    /// submitted later goes ahead of it).
    Queued {
        /// The job's number.
        number: u64,
        /// The job.
        job: J,
        /// Its priority.
        priority: i32,
        /// Jobs that start before it.
        ahead: usize,
    },
    /// Its work is running (or waiting for its next attempt).
    Running {
        /// The job's number.
        number: u64,
        /// The job.
        job: J,
        /// When the queue started it, in milliseconds since the Unix epoch.
        started_ms: i64,
    },
    /// It finished and is still in the history.
    Finished(FinishedJob<J>),
    /// No such job: never submitted, or finished and no longer in the history.
    Unknown,
}

/// A job that finished: its work succeeded or failed for good, or it was cancelled.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(bound(serialize = "J: Serialize", deserialize = "J: DeserializeOwned"))]
pub struct FinishedJob<J: Job> {
    /// The job's number.
    pub number: u64,
    /// The job.
    pub job: J,
    /// When it was submitted, in milliseconds since the Unix epoch.
    pub submitted_ms: i64,
    /// When its work's successful attempt started; for a job that failed, when the queue
    /// started it; for a job cancelled before it started, when it was cancelled.
    pub started_ms: i64,
    /// When its work's successful attempt ended; for a job that failed, when the queue
    /// learned it; for a cancelled job, when it was cancelled.
    pub finished_ms: i64,
    /// Which attempt succeeded, if one did (see [`Outcome::attempt`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// How it ended.
    pub result: JobResult<J::Output>,
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobResult<O> {
    /// Its work succeeded with this output.
    Ok(O),
    /// Every attempt failed (or one failed for good); the last error.
    Failed(String),
    /// It was cancelled.
    Cancelled,
}

/// Why a queue refused a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// The concurrency is outside 1 to [`MAX_CONCURRENCY`].
    #[error("the concurrency must be 1 to {MAX_CONCURRENCY}")]
    BadConcurrency,
    /// A global cap outside 1 to [`MAX_GLOBAL_CONCURRENCY`](crate::MAX_GLOBAL_CONCURRENCY).
    #[error("a global cap must be 1 to {}", crate::MAX_GLOBAL_CONCURRENCY)]
    BadGlobalConcurrency,
    /// The rate limit's interval is outside 1 ms to [`MAX_RATE_INTERVAL_MS`].
    #[error("a rate limit's interval must be 1 to {MAX_RATE_INTERVAL_MS} ms")]
    BadRate,
    /// The job's [`check`](crate::Job::check) refused it.
    #[error("the job is refused: {0}")]
    BadJob(String),
    /// The job to retry is not a failed job in the history.
    #[error("job {0} is not a failed job in the history; only those can be retried")]
    NotFailed(u64),
    /// [`MAX_QUEUED`] jobs wait already.
    #[error("the queue holds {MAX_QUEUED} waiting jobs already; submit again later")]
    QueueFull,
}

impl Rejection for QueueError {
    fn code(&self) -> &str {
        match self {
            Self::BadConcurrency => "bad_concurrency",
            Self::BadGlobalConcurrency => "bad_global_concurrency",
            Self::BadRate => "bad_rate",
            Self::BadJob(_) => "bad_job",
            Self::QueueFull => "queue_full",
            Self::NotFailed(_) => "not_failed",
        }
    }
}
