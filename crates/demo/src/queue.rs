//! Kind `queue`: a per-key job queue that runs at most N jobs of its key at once.
//!
//! One entity per key (per user, say): it is started on demand by the first `submit`, starts
//! jobs as [effects](perennial_core::Effect) up to its concurrency, starts the next one each
//! time a job's result comes back, and is passivated soon after it is drained. Jobs survive
//! restarts: a queued job is part of the state, a running job is a pending effect that runs
//! again after a crash (at least once, with the same job id).
//!
//! Messages, as JSON:
//! - `{"configure": {"concurrency": 3}}` → the status (1 to 1,000; default 1).
//! - `{"submit": {"job": "resize-42", "work_ms": 200}}` → `{"queued": Q}`, the jobs waiting.
//!   With `"fails": N`, the job's first N attempts fail (a flaky service, for trying the
//!   retry policy: backoff from 100 ms, 10 attempts, then the job finishes with its error).
//! - `"status"` → `{"running": R, "queued": Q, "done": D}`.
//! - `"history"` → the last jobs finished: `[{"job", "started_ms", "finished_ms"}, …]`.
//!
//! A job's work is the effect [`Work`]: it sleeps `work_ms` (a stand-in for real work, such
//! as an HTTP call that takes the effect id as its idempotency key).

use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

use perennial_core::{Ctx, Effect, EffectCtx, EffectError, EffectFailure, Process, Rejection};
use serde::{Deserialize, Serialize};

/// The most jobs one queue may run at once.
pub const MAX_CONCURRENCY: u32 = 1000;
/// The longest work a job may ask for.
pub const MAX_WORK_MS: u64 = 3_600_000;
/// How many finished jobs the history keeps.
pub const HISTORY_JOBS: usize = 1000;

/// The state of a `queue` entity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Queue {
    /// At most this many jobs run at once.
    pub concurrency: u32,
    /// Jobs waiting to start, oldest first.
    pub queued: VecDeque<Job>,
    /// Jobs started and not finished.
    pub running: Vec<Job>,
    /// Jobs finished since the queue was created.
    pub done: u64,
    /// The last [`HISTORY_JOBS`] jobs finished.
    pub history: VecDeque<Finished>,
}

impl Default for Queue {
    fn default() -> Self {
        Self {
            concurrency: 1,
            queued: VecDeque::new(),
            running: Vec::new(),
            done: 0,
            history: VecDeque::new(),
        }
    }
}

/// A job, as submitted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// The job's name.
    pub job: String,
    /// How long its work takes.
    pub work_ms: u64,
    /// How many attempts of its work fail before one succeeds (a stand-in for a flaky
    /// service; the effect's retry policy tries again with backoff).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub fails: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A job that ran: when its work started and finished (its last run, if it ran again after a
/// crash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finished {
    /// The job's name.
    pub job: String,
    /// When its work started, in milliseconds since the Unix epoch.
    pub started_ms: i64,
    /// When its work finished.
    pub finished_ms: i64,
    /// Why it failed, if it did (every attempt of its work failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Which attempt of its work succeeded (counted since the node started), if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
}

/// A message to a queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueMsg {
    /// Sets how many jobs may run at once.
    Configure {
        /// At most this many.
        concurrency: u32,
    },
    /// Adds a job.
    Submit(Job),
    /// Reads the counts.
    Status,
    /// Reads the last jobs finished.
    History,
    /// A job's work is done (sent by its effect).
    Finished(Finished),
}

/// A queue's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum QueueReply {
    /// To `submit`: the jobs waiting, this one included if it did not start at once.
    Queued {
        /// The jobs waiting.
        queued: usize,
    },
    /// To `status`, `configure` and a job's result.
    Status {
        /// Jobs running.
        running: usize,
        /// Jobs waiting.
        queued: usize,
        /// Jobs finished.
        done: u64,
    },
    /// To `history`.
    History(Vec<Finished>),
}

/// Why a queue refused a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// The concurrency is outside 1 to [`MAX_CONCURRENCY`].
    #[error("the concurrency must be 1 to {MAX_CONCURRENCY}")]
    BadConcurrency,
    /// The job's name is empty or longer than 256 bytes, or its work is over [`MAX_WORK_MS`].
    #[error("a job needs a name of 1 to 256 bytes and at most {MAX_WORK_MS} ms of work")]
    BadJob,
}

impl Rejection for QueueError {
    fn code(&self) -> &str {
        match self {
            Self::BadConcurrency => "bad_concurrency",
            Self::BadJob => "bad_job",
        }
    }
}

/// A job's work: sleeps `work_ms`, then reports to its queue; its first `fails` attempts
/// fail after the sleep.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Work {
    /// The job.
    pub job: String,
    /// How long it sleeps.
    pub work_ms: u64,
    /// How many attempts fail before one succeeds.
    #[serde(default)]
    pub fails: u32,
}

impl Effect for Work {
    type Kind = Queue;
    const NAME: &'static str = "work";

    async fn run(self, cx: EffectCtx) -> Result<QueueMsg, EffectError> {
        let started_ms = unix_ms();
        tokio::time::sleep(Duration::from_millis(self.work_ms)).await;
        if cx.attempt() <= self.fails {
            return Err(EffectError::new(format!(
                "attempt {} of {} fails, as the job asked",
                cx.attempt(),
                self.job
            )));
        }
        Ok(QueueMsg::Finished(Finished {
            job: self.job,
            started_ms,
            finished_ms: unix_ms(),
            error: None,
            attempt: Some(cx.attempt()),
        }))
    }

    fn failed(self, failure: EffectFailure) -> QueueMsg {
        let now = unix_ms();
        QueueMsg::Finished(Finished {
            job: self.job,
            started_ms: now,
            finished_ms: now,
            error: Some(failure.error),
            attempt: None,
        })
    }
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Process for Queue {
    const KIND: &'static str = "queue";
    type Msg = QueueMsg;
    type Reply = QueueReply;
    type Error = QueueError;

    fn handle(&mut self, msg: QueueMsg, ctx: &mut Ctx<'_, Self>) -> Result<QueueReply, QueueError> {
        match msg {
            QueueMsg::Configure { concurrency } => {
                if !(1..=MAX_CONCURRENCY).contains(&concurrency) {
                    return Err(QueueError::BadConcurrency);
                }
                self.concurrency = concurrency;
            }
            QueueMsg::Submit(job) => {
                if job.job.is_empty() || job.job.len() > 256 || job.work_ms > MAX_WORK_MS {
                    return Err(QueueError::BadJob);
                }
                self.queued.push_back(job);
                self.start_jobs(ctx);
                return Ok(QueueReply::Queued {
                    queued: self.queued.len(),
                });
            }
            QueueMsg::Status => {}
            QueueMsg::History => return Ok(QueueReply::History(self.history.clone().into())),
            QueueMsg::Finished(finished) => {
                if let Some(i) = self.running.iter().position(|j| j.job == finished.job) {
                    self.running.swap_remove(i);
                    self.done += 1;
                    if self.history.len() >= HISTORY_JOBS {
                        self.history.pop_front();
                    }
                    self.history.push_back(finished);
                }
            }
        }
        self.start_jobs(ctx);
        Ok(self.status())
    }

    fn idle_timeout(&self) -> Duration {
        if self.running.is_empty() && self.queued.is_empty() {
            // Drained: leave memory soon (the state stays stored).
            Duration::from_secs(1)
        } else {
            Duration::from_secs(300)
        }
    }
}

impl Queue {
    /// Starts waiting jobs while fewer than `concurrency` run.
    fn start_jobs(&mut self, ctx: &mut Ctx<'_, Self>) {
        while self.running.len() < self.concurrency as usize {
            let Some(job) = self.queued.pop_front() else {
                break;
            };
            ctx.effect(Work {
                job: job.job.clone(),
                work_ms: job.work_ms,
                fails: job.fails,
            });
            self.running.push(job);
        }
    }

    fn status(&self) -> QueueReply {
        QueueReply::Status {
            running: self.running.len(),
            queued: self.queued.len(),
            done: self.done,
        }
    }
}

#[cfg(test)]
mod tests {
    use perennial_core::Runtime;
    use perennial_storage::MemoryStore;

    use super::*;

    #[test]
    fn messages_have_the_documented_json_shapes() {
        let submit: QueueMsg =
            serde_json::from_str(r#"{"submit": {"job": "a", "work_ms": 5}}"#).unwrap();
        assert_eq!(
            submit,
            QueueMsg::Submit(Job {
                job: "a".into(),
                work_ms: 5,
                fails: 0,
            })
        );
        let configure: QueueMsg =
            serde_json::from_str(r#"{"configure": {"concurrency": 3}}"#).unwrap();
        assert_eq!(configure, QueueMsg::Configure { concurrency: 3 });
        let status = serde_json::to_string(&QueueReply::Status {
            running: 1,
            queued: 2,
            done: 3,
        })
        .unwrap();
        assert_eq!(status, r#"{"running":1,"queued":2,"done":3}"#);
        assert_eq!(
            serde_json::to_string(&QueueReply::Queued { queued: 4 }).unwrap(),
            r#"{"queued":4}"#
        );
    }

    /// The most jobs whose work overlapped in time.
    fn peak(history: &[Finished]) -> usize {
        let mut edges: Vec<(i64, i32)> = history
            .iter()
            .flat_map(|f| [(f.started_ms, 1), (f.finished_ms, -1)])
            .collect();
        // An end at the same millisecond as a start comes first.
        edges.sort_unstable();
        let (mut now, mut most) = (0i32, 0i32);
        for (_, step) in edges {
            now += step;
            most = most.max(now);
        }
        usize::try_from(most).unwrap_or(0)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_queue_never_runs_more_than_its_concurrency() {
        let rt = crate::register(Runtime::builder().store(MemoryStore::new()))
            .start()
            .await
            .unwrap();
        let q = rt.get::<Queue>("user-1");
        q.call(QueueMsg::Configure { concurrency: 3 })
            .await
            .unwrap();
        for i in 0..12 {
            let job = Job {
                job: format!("j{i}"),
                work_ms: 40,
                fails: 0,
            };
            q.call(QueueMsg::Submit(job)).await.unwrap();
        }
        let mut status = q.call(QueueMsg::Status).await.unwrap();
        for _ in 0..500 {
            if status
                == (QueueReply::Status {
                    running: 0,
                    queued: 0,
                    done: 12,
                })
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            status = q.call(QueueMsg::Status).await.unwrap();
        }
        let QueueReply::History(history) = q.call(QueueMsg::History).await.unwrap() else {
            panic!("not a history");
        };
        assert_eq!(history.len(), 12, "{status:?}");
        assert_eq!(peak(&history), 3, "{history:?}");
        assert_eq!(
            q.call(QueueMsg::Configure { concurrency: 0 }).await.ok(),
            None
        );
        rt.shutdown().await;
    }

    #[test]
    fn peak_counts_overlaps() {
        let f = |s, e| Finished {
            error: None,
            attempt: None,
            job: String::new(),
            started_ms: s,
            finished_ms: e,
        };
        assert_eq!(peak(&[f(0, 10), f(5, 15), f(10, 20)]), 2);
        assert_eq!(peak(&[f(0, 10), f(10, 20)]), 1);
    }
}
