//! Kind `queue`: the demo's per-key job queue, a [`JobQueue`] of [`Sleep`] jobs.
//!
//! One queue per key (per user, say), started on demand by the first `submit`: it runs at most
//! N of its jobs at once (1 until configured), highest priority first, each as an effect,
//! and keeps them across restarts (see [`perennial_queue`]). A job's work only sleeps: a
//! stand-in for real work, such as an HTTP call that takes the job's id as its idempotency
//! key.
//!
//! Messages, as JSON:
//! - `{"configure": {"concurrency": 3, "rate": {"starts": 10, "per_ms": 60000}}}` → the
//!   status: at most 3 jobs at once (1 to 10,000), at most 10 starts a minute (optional;
//!   `{"starts": 0}` lifts it).
//! - `{"submit": {"job": {"name": "resize-42", "work_ms": 200}, "priority": 1}}` →
//!   `{"number": 1, "queued": 0}`: the job's number, and the jobs waiting. The priority is
//!   optional (0; higher first). With `"fails": N` in the job, its first N attempts fail (a
//!   flaky service, for trying the retry policy: backoff from 100 ms, 10 attempts, then the
//!   job fails with its error).
//! - `"status"` → `{"concurrency", "running", "queued", "done", "failed", "cancelled",
//!   "rate"}` (no `rate` without one).
//! - `{"job": {"number": 1}}` → where it is: `{"state": "queued", "ahead": 0, …}`,
//!   `"running"`, `"finished"` (with its result) or `"unknown"`.
//! - `{"cancel": {"number": 1}}` → the job's state after the cancel.
//! - `"history"` → the last 1,000 jobs finished: `[{"number", "job", "started_ms",
//!   "finished_ms", "attempt", "result"}, …]`, `result` being `{"ok": null}`,
//!   `{"failed": "…"}` or `"cancelled"`.
//!
//! Queues stored by release 1 (schema version 1, before [`perennial_queue`]) are migrated
//! when read (see [`from_release_1`]); the effect release 1 started for a running job,
//! [`RetiredWork`], is retired: it only wakes the queue, which runs that job again.

use std::time::Duration;

use perennial_core::{Effect, EffectCtx, EffectError, EffectFailure, MigrationError};
use perennial_queue::{Job, JobQueue, QueueMsg};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The longest work a job may ask for.
pub const MAX_WORK_MS: u64 = 3_600_000;
/// How many finished jobs a queue's history keeps.
pub const HISTORY_JOBS: usize = 1000;

/// The demo's queue kind.
pub type Queue = JobQueue<Sleep>;

/// A demo job: sleeps `work_ms`; its first `fails` attempts fail after the sleep.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sleep {
    /// The job's name (1 to 256 bytes).
    pub name: String,
    /// How long its work takes, at most [`MAX_WORK_MS`].
    pub work_ms: u64,
    /// How many attempts of its work fail before one succeeds.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub fails: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Job for Sleep {
    const KIND: &'static str = "queue";
    const HISTORY: usize = HISTORY_JOBS;
    const MIGRATIONS: &'static [perennial_core::Migration] = &[from_release_1];
    type Output = ();

    fn check(&self) -> Result<(), String> {
        if self.name.is_empty() || self.name.len() > 256 {
            return Err("a job needs a name of 1 to 256 bytes".into());
        }
        if self.work_ms > MAX_WORK_MS {
            return Err(format!("a job may work {MAX_WORK_MS} ms at most"));
        }
        Ok(())
    }

    async fn run(self, cx: EffectCtx) -> Result<(), EffectError> {
        tokio::time::sleep(Duration::from_millis(self.work_ms)).await;
        if cx.attempt() <= self.fails {
            return Err(EffectError::new(format!(
                "attempt {} of {} fails, as the job asked",
                cx.attempt(),
                self.name
            )));
        }
        Ok(())
    }
}

/// The effect release 1 started for each running job (`"work"`), retired. A row of it stored
/// before the upgrade still runs once: it does no work and wakes the queue, which takes a
/// step (deleting the row) and starts its waiting jobs.
/// Among them is the job this effect ran: [`from_release_1`] put it back at the front.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RetiredWork {
    /// The job's name.
    pub job: String,
}

impl Effect for RetiredWork {
    type Kind = Queue;
    const NAME: &'static str = "work";

    async fn run(self, _cx: EffectCtx) -> Result<QueueMsg<Sleep>, EffectError> {
        Ok(QueueMsg::Wake)
    }

    fn failed(self, _failure: EffectFailure) -> QueueMsg<Sleep> {
        QueueMsg::Wake
    }
}

/// Schema version 1 (the demo's own queue of release 1) to 2 (a [`JobQueue`]): jobs get
/// numbers (the history's first, then the running, then the waiting ones); running jobs wait
/// again, at the front, so each runs again (work runs at least once); finished jobs with an
/// error count as failed.
///
/// Version 1 was `{"concurrency", "queued": [job], "running": [job], "done", "history":
/// [{"job", "started_ms", "finished_ms", "error"?, "attempt"?}]}`, a job being `{"job":
/// name, "work_ms", "fails"?}`.
pub fn from_release_1(v1: Value) -> Result<Value, MigrationError> {
    let list = |name: &str| {
        v1.get(name)
            .and_then(Value::as_array)
            .ok_or_else(|| MigrationError::new(format!("a release-1 queue has a list {name:?}")))
    };
    let (history, running, queued) = (list("history")?, list("running")?, list("queued")?);
    let mut number = 0u64;
    let mut next = || {
        number += 1;
        number
    };
    let mut failed = 0u64;
    let mut finished = Vec::with_capacity(history.len());
    for f in history {
        let result = match f.get("error") {
            Some(error) if !error.is_null() => {
                failed += 1;
                json!({ "failed": error })
            }
            _ => json!({ "ok": null }),
        };
        let mut job = json!({
            "number": next(),
            "job": { "name": f["job"], "work_ms": 0 },
            "submitted_ms": f["started_ms"],
            "started_ms": f["started_ms"],
            "finished_ms": f["finished_ms"],
            "result": result,
        });
        if let Some(attempt) = f.get("attempt").filter(|a| !a.is_null()) {
            job["attempt"] = attempt.clone();
        }
        finished.push(job);
    }
    let mut waiting = Vec::with_capacity(running.len() + queued.len());
    for j in running.iter().chain(queued) {
        let mut job = json!({ "name": j["job"], "work_ms": j["work_ms"] });
        if let Some(fails) = j.get("fails").filter(|f| f.as_u64().is_some_and(|f| f > 0)) {
            job["fails"] = fails.clone();
        }
        waiting.push(json!({ "number": next(), "job": job, "priority": 0, "submitted_ms": 0 }));
    }
    let done = v1["done"].as_u64().unwrap_or(0);
    Ok(json!({
        "concurrency": v1["concurrency"],
        "next": number + 1,
        "queued": waiting,
        "running": [],
        "done": done.saturating_sub(failed),
        "failed": failed,
        "cancelled": 0,
        "history": finished,
    }))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use perennial_core::testing::{Handler, TestRuntime};
    use perennial_core::{EntityId, EntityKey, Runtime};
    use perennial_queue::{FinishedJob, JobResult, QueueReply, QueueStatus};
    use perennial_storage::{
        Batch, MemoryStore, Pending, PendingClass, PendingWrite, Record, Store,
    };
    use perennial_types::shard_of;

    use super::*;

    /// The most jobs whose work overlapped in time.
    fn peak(history: &[FinishedJob<Sleep>]) -> usize {
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

    async fn wait_for(q: &perennial_core::EntityRef<Queue>, done: u64) -> QueueStatus {
        for _ in 0..1000 {
            if let Ok(QueueReply::Status(status)) = q.call(QueueMsg::Status).await
                && status.done + status.failed >= done
            {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the queue never finished {done} jobs");
    }

    async fn history(q: &perennial_core::EntityRef<Queue>) -> Vec<FinishedJob<Sleep>> {
        match q.call(QueueMsg::History).await.unwrap() {
            QueueReply::History(history) => history,
            other => panic!("not a history: {other:?}"),
        }
    }

    /// On the test kit's clock: the 12 jobs of 40 ms run in exactly four waves of three.
    #[tokio::test]
    async fn a_queue_never_runs_more_than_its_concurrency() {
        let rt = TestRuntime::start(crate::register).await.unwrap();
        let q = rt.get::<Queue>("user-1");
        q.call(QueueMsg::concurrency(3)).await.unwrap();
        for i in 0..12 {
            let job = Sleep {
                name: format!("j{i}"),
                work_ms: 40,
                fails: 0,
            };
            q.call(QueueMsg::submit(job)).await.unwrap();
        }
        rt.advance(Duration::from_millis(159)).await;
        let QueueReply::Status(status) = q.call(QueueMsg::Status).await.unwrap() else {
            panic!("not a status");
        };
        assert_eq!((status.done, status.running), (9, 3), "three waves done");
        rt.advance(Duration::from_millis(1)).await;
        let history = history(&q).await;
        assert_eq!(history.len(), 12);
        assert_eq!(peak(&history), 3, "{history:?}");
        let starts: Vec<i64> = history
            .iter()
            .map(|f| f.started_ms - history[0].started_ms)
            .collect();
        assert_eq!(starts, [0, 0, 0, 40, 40, 40, 80, 80, 80, 120, 120, 120]);
        let bad = Sleep {
            name: String::new(),
            work_ms: 1,
            fails: 0,
        };
        assert!(q.call(QueueMsg::submit(bad)).await.is_err());
    }

    /// A submit starts the job as an effect when a slot is free, and a cancel stops it.
    #[test]
    fn a_job_starts_as_an_effect_and_a_cancel_stops_it() {
        let (mut queue, mut handler) = (Queue::default(), Handler::<Queue>::new("u1"));
        let job = Sleep {
            name: "resize-1".into(),
            work_ms: 200,
            fails: 0,
        };
        let submit = handler.handle(&mut queue, QueueMsg::submit(job.clone()));
        assert!(matches!(
            submit.reply,
            Ok(QueueReply::Submitted {
                number: 1,
                queued: 0
            })
        ));
        let started = submit.effects::<perennial_queue::Work<Sleep>>();
        assert_eq!(started.len(), 1, "one job, started at once");
        let effect = started[0].0.clone();
        let waiting = handler.handle(&mut queue, QueueMsg::submit(job));
        assert!(
            waiting.effects::<perennial_queue::Work<Sleep>>().is_empty(),
            "one at a time"
        );
        let cancel = handler.handle(&mut queue, QueueMsg::Cancel { number: 1 });
        assert!(cancel.cancels_effect(&effect));
        assert_eq!(
            cancel.effects::<perennial_queue::Work<Sleep>>().len(),
            1,
            "the waiting job takes the slot"
        );
    }

    #[test]
    fn messages_have_the_documented_json_shapes() {
        let submit: QueueMsg<Sleep> = serde_json::from_str(
            r#"{"submit": {"job": {"name": "a", "work_ms": 5, "fails": 2}, "priority": 1}}"#,
        )
        .unwrap();
        let QueueMsg::Submit { job, priority: 1 } = submit else {
            panic!("not a submit");
        };
        assert_eq!((job.name.as_str(), job.work_ms, job.fails), ("a", 5, 2));
        assert_eq!(
            serde_json::to_string(&job).unwrap(),
            r#"{"name":"a","work_ms":5,"fails":2}"#
        );
    }

    /// A queue as release 1 stored it: one job finished, one failed, one running (its effect
    /// row pending, as release 1 wrote it), one waiting.
    fn release_1() -> Value {
        json!({
            "concurrency": 1,
            "queued": [{"job": "c", "work_ms": 5}],
            "running": [{"job": "b", "work_ms": 5, "fails": 1}],
            "done": 2,
            "history": [
                {"job": "a", "started_ms": 10, "finished_ms": 20, "attempt": 1},
                {"job": "x", "started_ms": 30, "finished_ms": 40, "error": "broken"}
            ]
        })
    }

    #[test]
    fn a_release_1_queue_migrates_to_a_job_queue() {
        let v2 = from_release_1(release_1()).unwrap();
        let queue: Queue = serde_json::from_value(v2).unwrap();
        let status = queue.status();
        assert_eq!(
            (status.done, status.failed, status.running, status.queued),
            (1, 1, 0, 2)
        );
        assert!(matches!(
            queue.job(2),
            perennial_queue::JobState::Finished(f) if f.result == JobResult::Failed("broken".into())
        ));
        assert!(
            matches!(queue.job(3), perennial_queue::JobState::Queued { job, ahead: 0, .. } if job.name == "b" && job.fails == 1),
            "the running job waits again, first"
        );
        assert!(from_release_1(json!({"concurrency": 1})).is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_release_1_queue_with_a_running_job_finishes_every_job_after_the_upgrade() {
        let store = MemoryStore::new();
        let key = EntityKey::new("queue", EntityId::new("u1").unwrap());
        store.put_record(
            key.clone(),
            Record {
                state: release_1().to_string(),
                version: 7,
                schema: 1,
            },
        );
        // The running job's effect row, as release 1 stored it.
        let epoch = store
            .claim("test", &[shard_of("queue", "u1")])
            .await
            .unwrap();
        let row = Pending {
            owner: key.clone(),
            seq: 7,
            due_ms: 0,
            class: PendingClass::Effect,
            target: key.clone(),
            body: Arc::from(r#"{"effect":"work","input":{"job":"b","work_ms":5,"fails":1}}"#),
        };
        let batch = Batch {
            pending: vec![PendingWrite {
                shard: shard_of("queue", "u1"),
                epoch,
                pending: row,
            }],
            ..Batch::default()
        };
        store.commit(batch).unwrap();
        let rt = crate::register(Runtime::builder().store(store.clone()))
            .start()
            .await
            .unwrap();
        let q = rt.get::<Queue>("u1");
        // The retired effect wakes the queue, which runs b (failing once) and c.
        let status = wait_for(&q, 4).await;
        assert_eq!(
            (status.done, status.failed, status.running, status.queued),
            (3, 1, 0, 0)
        );
        let names: Vec<String> = history(&q).await.into_iter().map(|f| f.job.name).collect();
        assert_eq!(names, ["a", "x", "b", "c"]);
        assert!(
            store.due(i64::MAX, 10).await.unwrap().is_empty(),
            "no row is left"
        );
        rt.shutdown().await;
    }
}
