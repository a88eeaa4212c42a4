//! The queue entity: [`JobQueue`], its state and its steps.

use std::collections::VecDeque;
use std::time::{Duration, UNIX_EPOCH};

use perennial_core::{Builder, Ctx, EffectId, Migration, MigrationError, Process, TimerId};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Job;
use crate::job::Work;
use crate::message::{
    FinishedJob, JobResult, JobState, MAX_CONCURRENCY, MAX_QUEUED, Outcome, QueueError, QueueMsg,
    QueueReply, QueueStatus, RateLimit,
};
use crate::permits::{POOL, PermitMsg, Permits};

/// The queue of one key for jobs of type `J`: an entity of kind `J::KIND`, started by the
/// first message to its key. It starts jobs as effects while fewer than its concurrency run,
/// the next one each time a job ends, highest priority first; it keeps its waiting jobs,
/// running jobs, counts and the last finished jobs as its state, so all of it survives
/// restarts (a job whose work a crash interrupted runs again, with the same id).
///
/// Talk to it with [`QueueMsg`]s through the runtime, like any entity:
/// `rt.get::<JobQueue<Mail>>("alice").call(QueueMsg::submit(mail))`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(bound(serialize = "J: Serialize", deserialize = "J: DeserializeOwned"))]
pub struct JobQueue<J: Job> {
    /// At most this many jobs run at once.
    concurrency: u32,
    /// The number the next job submitted gets.
    next: u64,
    /// Jobs waiting, in the order they start: by priority (highest first), then number.
    queued: VecDeque<Waiting<J>>,
    /// Jobs whose work runs.
    running: Vec<Running<J>>,
    done: u64,
    failed: u64,
    cancelled: u64,
    /// The last `J::HISTORY` jobs finished, oldest first.
    history: VecDeque<FinishedJob<J>>,
    /// At most so many starts per interval, if set.
    #[serde(default)]
    rate: Option<RateLimit>,
    /// When the last jobs started (milliseconds since the Unix epoch), oldest first: as many
    /// as the rate limit counts, within its interval.
    #[serde(default)]
    recent_starts: VecDeque<i64>,
    /// The timer that wakes the queue once the rate limit lets the next job start.
    #[serde(default)]
    wake: Option<TimerId>,
    /// With a global cap: the permits from the pool this queue holds (one per running job
    /// once a step ends), and those it asked for and has not got yet.
    #[serde(default, skip_serializing_if = "is_zero")]
    permits: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    asked: u32,
}

/// For serde: a count left out of the stored state while it is 0.
#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A job waiting to start.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(bound(serialize = "J: Serialize", deserialize = "J: DeserializeOwned"))]
struct Waiting<J> {
    number: u64,
    job: J,
    priority: i32,
    submitted_ms: i64,
}

/// A job whose work was started, as the effect `effect`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(bound(serialize = "J: Serialize", deserialize = "J: DeserializeOwned"))]
struct Running<J> {
    number: u64,
    job: J,
    submitted_ms: i64,
    started_ms: i64,
    effect: EffectId,
}

impl<J: Job> Default for JobQueue<J> {
    fn default() -> Self {
        Self {
            concurrency: J::CONCURRENCY.clamp(1, MAX_CONCURRENCY),
            next: 1,
            queued: VecDeque::new(),
            running: Vec::new(),
            done: 0,
            failed: 0,
            cancelled: 0,
            history: VecDeque::new(),
            rate: J::RATE.filter(|r| r.limits() && r.is_valid()),
            recent_starts: VecDeque::new(),
            wake: None,
            permits: 0,
            asked: 0,
        }
    }
}

impl<J: Job> JobQueue<J> {
    /// Registers the queue kind of `J` and the effect that runs its work with `builder`.
    ///
    /// ```no_run
    /// # use perennial_core::{EffectCtx, EffectError, Runtime};
    /// # use perennial_queue::{Job, JobQueue};
    /// # #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
    /// # struct Mail;
    /// # impl Job for Mail {
    /// #     const KIND: &'static str = "mail";
    /// #     type Output = ();
    /// #     async fn run(self, _: EffectCtx) -> Result<(), EffectError> { Ok(()) }
    /// # }
    /// # async fn start(store: perennial_storage::MemoryStore) -> Result<(), perennial_core::StartError> {
    /// let rt = JobQueue::<Mail>::register(Runtime::builder().store(store))
    ///     .start()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn register(builder: Builder) -> Builder {
        let builder = builder
            .register_snapshot::<Self>()
            .register_effect::<Work<J>>();
        match J::GLOBAL {
            Some(_) => builder.register_snapshot::<Permits<J>>(),
            None => builder,
        }
    }

    /// The queue's counts.
    pub fn status(&self) -> QueueStatus {
        QueueStatus {
            concurrency: self.concurrency,
            running: self.running.len(),
            queued: self.queued.len(),
            done: self.done,
            failed: self.failed,
            cancelled: self.cancelled,
            rate: self.rate,
        }
    }

    /// Where job `number` is.
    pub fn job(&self, number: u64) -> JobState<J> {
        if let Some(ahead) = self.queued.iter().position(|w| w.number == number) {
            let w = &self.queued[ahead];
            return JobState::Queued {
                number,
                job: w.job.clone(),
                priority: w.priority,
                ahead,
            };
        }
        if let Some(r) = self.running.iter().find(|r| r.number == number) {
            return JobState::Running {
                number,
                job: r.job.clone(),
                started_ms: r.started_ms,
            };
        }
        match self.history.iter().rev().find(|f| f.number == number) {
            Some(finished) => JobState::Finished(finished.clone()),
            None => JobState::Unknown,
        }
    }

    /// Whether nothing waits and nothing runs.
    pub fn is_drained(&self) -> bool {
        self.queued.is_empty() && self.running.is_empty()
    }

    fn submit(&mut self, job: J, priority: i32, now_ms: i64) -> Result<u64, QueueError> {
        job.check().map_err(QueueError::BadJob)?;
        if self.queued.len() >= MAX_QUEUED {
            return Err(QueueError::QueueFull);
        }
        let number = self.next;
        self.next += 1;
        // After every job of the same or a higher priority: first in, first out within one.
        let at = self.queued.partition_point(|w| w.priority >= priority);
        let waiting = Waiting {
            number,
            job,
            priority,
            submitted_ms: now_ms,
        };
        self.queued.insert(at, waiting);
        Ok(number)
    }

    /// Starts waiting jobs while fewer than the concurrency run, the rate limit allows, and
    /// with a global cap, a permit is free; when only the rate limit holds a job back, sets a
    /// timer for when it will not.
    fn start_jobs(&mut self, ctx: &mut Ctx<'_, Self>) {
        let now = step_ms(ctx);
        let permitted = |q: &Self| J::GLOBAL.is_none() || q.running.len() < q.permits as usize;
        while self.running.len() < self.concurrency as usize
            && !self.queued.is_empty()
            && permitted(self)
        {
            if let Some(next) = self.rate_allows_at(now) {
                self.wake_at(next, ctx);
                break;
            }
            let Some(w) = self.queued.pop_front() else {
                break;
            };
            if self.rate.is_some() {
                self.recent_starts.push_back(now);
            }
            let effect = ctx.effect(Work {
                number: w.number,
                job: w.job.clone(),
            });
            self.running.push(Running {
                number: w.number,
                job: w.job,
                submitted_ms: w.submitted_ms,
                started_ms: now,
                effect,
            });
        }
    }

    /// `None` if the rate limit lets a job start at `now`; else when it will. Forgets the
    /// starts that left the limit's window.
    fn rate_allows_at(&mut self, now: i64) -> Option<i64> {
        let Some(rate) = self.rate else {
            self.recent_starts.clear();
            return None;
        };
        let per = i64::try_from(rate.per_ms).unwrap_or(i64::MAX);
        while self
            .recent_starts
            .front()
            .is_some_and(|&at| at.saturating_add(per) <= now)
        {
            self.recent_starts.pop_front();
        }
        // Extra starts (the limit was lowered) wait their turn to leave the window too.
        let over = self.recent_starts.len().checked_sub(rate.starts as usize)?;
        self.recent_starts
            .get(over)
            .map(|&at| at.saturating_add(per))
    }

    /// Has a timer wake the queue at `at` (milliseconds since the Unix epoch), unless one
    /// will already.
    fn wake_at(&mut self, at: i64, ctx: &mut Ctx<'_, Self>) {
        if self.wake.is_some() {
            return;
        }
        let at = UNIX_EPOCH + Duration::from_millis(u64::try_from(at).unwrap_or(0));
        self.wake = Some(ctx.schedule_at(at, QueueMsg::Wake));
    }

    /// With a global cap: gives back the permits no running job uses, and asks the pool for
    /// one per job that could start now (beyond those asked for already), in one message.
    fn balance_permits(&mut self, ctx: &mut Ctx<'_, Self>) {
        if J::GLOBAL.is_none() {
            return;
        }
        let running = u32::try_from(self.running.len()).unwrap_or(u32::MAX);
        let release = self.permits.saturating_sub(running);
        self.permits -= release;
        // Held back by the rate limit: nothing to ask for until it lets a job start.
        let could_start = if self.rate_allows_at(step_ms(ctx)).is_some() {
            0
        } else {
            let queued = u32::try_from(self.queued.len()).unwrap_or(u32::MAX);
            self.concurrency.saturating_sub(running).min(queued)
        };
        let want = could_start.saturating_sub(self.asked);
        self.asked += want;
        if release > 0 || want > 0 {
            let queue = ctx.id().to_string();
            ctx.tell::<Permits<J>>(
                POOL,
                PermitMsg::Update {
                    queue,
                    release,
                    want,
                },
            );
        }
    }

    fn configure(
        &mut self,
        concurrency: Option<u32>,
        rate: Option<RateLimit>,
    ) -> Result<(), QueueError> {
        if concurrency.is_some_and(|c| !(1..=MAX_CONCURRENCY).contains(&c)) {
            return Err(QueueError::BadConcurrency);
        }
        if rate.is_some_and(|r| !r.is_valid()) {
            return Err(QueueError::BadRate);
        }
        if let Some(concurrency) = concurrency {
            self.concurrency = concurrency;
        }
        if let Some(rate) = rate {
            self.rate = rate.limits().then_some(rate);
        }
        Ok(())
    }

    fn cancel(&mut self, number: u64, ctx: &mut Ctx<'_, Self>) {
        let now = step_ms(ctx);
        let (job, submitted_ms, started_ms) =
            if let Some(i) = self.queued.iter().position(|w| w.number == number) {
                let Some(w) = self.queued.remove(i) else {
                    return;
                };
                (w.job, w.submitted_ms, now)
            } else if let Some(i) = self.running.iter().position(|r| r.number == number) {
                let r = self.running.swap_remove(i);
                ctx.cancel_effect(&r.effect);
                (r.job, r.submitted_ms, r.started_ms)
            } else {
                return;
            };
        self.cancelled += 1;
        self.keep(FinishedJob {
            number,
            job,
            submitted_ms,
            started_ms,
            finished_ms: now,
            attempt: None,
            result: JobResult::Cancelled,
        });
    }

    /// Applies a job's outcome; `now_ms` is the step's time, the end of a job that failed for
    /// good (whose outcome has no attempt's times).
    fn finish(&mut self, outcome: Outcome<J::Output>, now_ms: i64) {
        // Ignored for a job that is not running: cancelled meanwhile, or not a real outcome.
        let Some(i) = self.running.iter().position(|r| r.number == outcome.number) else {
            return;
        };
        let r = self.running.swap_remove(i);
        let result = match outcome.result {
            Ok(output) => {
                self.done += 1;
                JobResult::Ok(output)
            }
            Err(error) => {
                self.failed += 1;
                JobResult::Failed(error)
            }
        };
        let (started_ms, finished_ms) = match outcome.attempt {
            Some(_) => (outcome.started_ms, outcome.finished_ms),
            None => (r.started_ms, now_ms),
        };
        self.keep(FinishedJob {
            number: r.number,
            job: r.job,
            submitted_ms: r.submitted_ms,
            started_ms,
            finished_ms,
            attempt: outcome.attempt,
            result,
        });
    }

    /// Adds a finished job to the history, dropping the oldest beyond `J::HISTORY`.
    fn keep(&mut self, finished: FinishedJob<J>) {
        if J::HISTORY == 0 {
            return;
        }
        while self.history.len() >= J::HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(finished);
    }
}

/// The step's time, in milliseconds since the Unix epoch.
fn step_ms<J: Job>(ctx: &Ctx<'_, JobQueue<J>>) -> i64 {
    ctx.now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl<J: Job> Process for JobQueue<J> {
    const KIND: &'static str = J::KIND;
    const MIGRATIONS: &'static [Migration] = J::MIGRATIONS;
    type Msg = QueueMsg<J>;
    type Reply = QueueReply<J>;
    type Error = QueueError;

    fn handle(
        &mut self,
        msg: QueueMsg<J>,
        ctx: &mut Ctx<'_, Self>,
    ) -> Result<QueueReply<J>, QueueError> {
        let reply = match msg {
            QueueMsg::Submit { job, priority } => {
                let number = self.submit(job, priority, step_ms(ctx))?;
                self.start_jobs(ctx);
                QueueReply::Submitted {
                    number,
                    queued: self.queued.len(),
                }
            }
            QueueMsg::Cancel { number } => {
                self.cancel(number, ctx);
                // The permit of a stopped job goes back to the pool before the next job of
                // this key may take one: the keys waiting have their turn first.
                self.balance_permits(ctx);
                self.start_jobs(ctx);
                QueueReply::Job(self.job(number))
            }
            QueueMsg::Retry { number } => {
                let failed = self.history.iter().rev().find(|f| f.number == number);
                let Some(FinishedJob {
                    job,
                    result: JobResult::Failed(_),
                    ..
                }) = failed
                else {
                    return Err(QueueError::NotFailed(number));
                };
                let number = self.submit(job.clone(), 0, step_ms(ctx))?;
                self.start_jobs(ctx);
                QueueReply::Submitted {
                    number,
                    queued: self.queued.len(),
                }
            }
            QueueMsg::Configure { concurrency, rate } => {
                self.configure(concurrency, rate)?;
                self.start_jobs(ctx);
                QueueReply::Status(self.status())
            }
            QueueMsg::Wake => {
                self.wake = None;
                self.start_jobs(ctx);
                QueueReply::Status(self.status())
            }
            QueueMsg::Status => return Ok(QueueReply::Status(self.status())),
            QueueMsg::Job { number } => return Ok(QueueReply::Job(self.job(number))),
            QueueMsg::History => return Ok(QueueReply::History(self.history.clone().into())),
            QueueMsg::Finished(outcome) => {
                self.finish(outcome, step_ms(ctx));
                self.balance_permits(ctx);
                self.start_jobs(ctx);
                QueueReply::Status(self.status())
            }
            QueueMsg::Permits(permits) => {
                self.asked = self.asked.saturating_sub(permits);
                self.permits = self.permits.saturating_add(permits);
                self.start_jobs(ctx);
                QueueReply::Status(self.status())
            }
        };
        self.balance_permits(ctx);
        // Not while permits are out or asked for: a queue deleted then would lose them.
        if J::DELETE_WHEN_DRAINED && self.is_drained() && self.permits == 0 && self.asked == 0 {
            ctx.delete();
        }
        Ok(reply)
    }

    fn is_internal(msg: &QueueMsg<J>) -> bool {
        matches!(msg, QueueMsg::Finished(_) | QueueMsg::Permits(_))
    }

    fn is_read_only(msg: &QueueMsg<J>) -> bool {
        matches!(
            msg,
            QueueMsg::Status | QueueMsg::Job { .. } | QueueMsg::History
        )
    }

    fn idle_timeout(&self) -> Duration {
        if self.is_drained() {
            // Drained: leave memory soon (the state stays stored).
            Duration::from_secs(1)
        } else {
            Duration::from_secs(300)
        }
    }
}

/// Applies `change` to the JSON of every job in a stored queue's state (waiting, running and
/// in the history): the body of a [`Job::MIGRATIONS`] entry when the job type changed.
///
/// ```
/// use perennial_core::MigrationError;
/// use perennial_queue::each_job;
/// use serde_json::{Value, json};
///
/// /// Version 2 of the job renamed `url` to `source`.
/// fn url_to_source(queue: Value) -> Result<Value, MigrationError> {
///     each_job(queue, |job| {
///         let url = job["url"].take();
///         job["source"] = url;
///         Ok(())
///     })
/// }
///
/// let v1 = json!({"queued": [{"number": 1, "job": {"url": "a"}}], "running": [], "history": []});
/// let v2 = url_to_source(v1).unwrap();
/// assert_eq!(v2["queued"][0]["job"], json!({"url": null, "source": "a"}));
/// ```
pub fn each_job(
    mut queue: Value,
    mut change: impl FnMut(&mut Value) -> Result<(), MigrationError>,
) -> Result<Value, MigrationError> {
    for list in ["queued", "running", "history"] {
        let Some(entries) = queue.get_mut(list).and_then(Value::as_array_mut) else {
            return Err(MigrationError::new(format!(
                "the stored queue has no list {list:?}"
            )));
        };
        for entry in entries {
            let job = entry
                .get_mut("job")
                .ok_or_else(|| MigrationError::new(format!("an entry of {list:?} has no job")))?;
            change(job)?;
        }
    }
    Ok(queue)
}
