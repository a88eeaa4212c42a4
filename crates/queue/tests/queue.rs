//! The job queue's contract on the memory store: the cap per key, priorities, retries,
//! cancellation, restarts, deletion when drained, and the JSON its users send and get.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use perennial_core::{
    CallError, EffectCtx, EffectError, EntityId, EntityKey, EntityRef, Retry, Runtime,
};
use perennial_queue::{
    FinishedJob, Job, JobQueue, JobResult, JobState, QueueError, QueueMsg, QueueReply, QueueStatus,
    RateLimit,
};
use perennial_storage::{MemoryStore, Store};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

/// What the jobs of a test share: how many run now and at most, and a gate they can wait at.
struct Lab {
    running: AtomicUsize,
    peak: AtomicUsize,
    /// Jobs with `gated` wait for a permit here before they end.
    gate: Semaphore,
}

impl Default for Lab {
    fn default() -> Self {
        Self {
            running: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            gate: Semaphore::new(0),
        }
    }
}

/// A job that takes `ms`, fails its first `fails` attempts, and with `gated` waits for the
/// lab's gate; its output is its name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Task {
    name: String,
    #[serde(default)]
    ms: u64,
    #[serde(default)]
    fails: u32,
    #[serde(default)]
    gated: bool,
}

impl Task {
    fn named(name: &str) -> Self {
        Self {
            name: name.into(),
            ms: 0,
            fails: 0,
            gated: false,
        }
    }

    /// A task that waits at the lab's gate.
    fn gated(name: &str) -> Self {
        Self {
            gated: true,
            ..Self::named(name)
        }
    }
}

impl Job for Task {
    const KIND: &'static str = "tasks";
    type Output = String;

    fn retry() -> Retry {
        Retry::DEFAULT
            .attempts(4)
            .backoff(Duration::from_millis(1), Duration::from_millis(5))
    }

    fn check(&self) -> Result<(), String> {
        if self.name.is_empty() {
            return Err("a task needs a name".into());
        }
        Ok(())
    }

    async fn run(self, cx: EffectCtx) -> Result<String, EffectError> {
        let lab = cx.resource::<Arc<Lab>>()?;
        let now = lab.running.fetch_add(1, Ordering::SeqCst) + 1;
        lab.peak.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(self.ms)).await;
        if self.gated {
            lab.gate
                .acquire()
                .await
                .map_err(|e| EffectError::new(e.to_string()))?
                .forget();
        }
        lab.running.fetch_sub(1, Ordering::SeqCst);
        if cx.attempt() <= self.fails {
            return Err(EffectError::new(format!("attempt {} fails", cx.attempt())));
        }
        Ok(self.name)
    }
}

/// The same job, in queues deleted once drained.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Brief(Task);

impl Job for Brief {
    const KIND: &'static str = "briefs";
    const DELETE_WHEN_DRAINED: bool = true;
    type Output = String;

    async fn run(self, cx: EffectCtx) -> Result<String, EffectError> {
        self.0.run(cx).await
    }
}

async fn runtime(store: &MemoryStore, lab: &Arc<Lab>) -> Runtime {
    let builder = Runtime::builder()
        .store(store.clone())
        .resource(Arc::clone(lab));
    JobQueue::<Brief>::register(JobQueue::<Task>::register(builder))
        .start()
        .await
        .unwrap()
}

type Tasks = EntityRef<JobQueue<Task>>;

/// A runtime on a new memory store, with alice's queue of tasks.
async fn alice() -> (MemoryStore, Arc<Lab>, Runtime, Tasks) {
    let (store, lab) = (MemoryStore::new(), Arc::new(Lab::default()));
    let rt = runtime(&store, &lab).await;
    let queue = rt.get::<JobQueue<Task>>("alice");
    (store, lab, rt, queue)
}

async fn submit(queue: &Tasks, task: Task, priority: i32) -> u64 {
    match queue
        .call(QueueMsg::Submit {
            job: task,
            priority,
        })
        .await
    {
        Ok(QueueReply::Submitted { number, .. }) => number,
        other => panic!("not submitted: {other:?}"),
    }
}

async fn status_of(queue: &Tasks) -> QueueStatus {
    match queue.call(QueueMsg::Status).await.unwrap() {
        QueueReply::Status(status) => status,
        other => panic!("not a status: {other:?}"),
    }
}

async fn history(queue: &Tasks) -> Vec<FinishedJob<Task>> {
    match queue.call(QueueMsg::History).await.unwrap() {
        QueueReply::History(history) => history,
        other => panic!("not a history: {other:?}"),
    }
}

/// Waits until `done` says the status is reached; returns it.
async fn wait_for(queue: &Tasks, done: impl Fn(&QueueStatus) -> bool) -> QueueStatus {
    let started = Instant::now();
    loop {
        let status = status_of(queue).await;
        if done(&status) {
            return status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "timed out at {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn names(history: &[FinishedJob<Task>]) -> Vec<&str> {
    history.iter().map(|f| f.job.name.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_never_runs_more_than_its_concurrency_and_each_job_finishes_once() {
    let (_, lab, rt, queue) = alice().await;
    let configured = queue.call(QueueMsg::concurrency(3)).await;
    assert!(matches!(configured, Ok(QueueReply::Status(s)) if s.concurrency == 3));
    for i in 0..20 {
        let task = Task {
            ms: 2,
            gated: true,
            ..Task::named(&format!("j{i}"))
        };
        assert_eq!(submit(&queue, task, 0).await, i + 1, "numbered in order");
    }
    // Three wait at the gate, the rest in the queue; then all may end.
    wait_for(&queue, |s| s.running == 3 && s.queued == 17).await;
    lab.gate.add_permits(20);
    let status = wait_for(&queue, |s| s.done == 20).await;
    assert_eq!((status.running, status.queued, status.failed), (0, 0, 0));
    assert_eq!(
        lab.peak.load(Ordering::SeqCst),
        3,
        "three at once, never more"
    );
    let history = history(&queue).await;
    let mut done = names(&history);
    done.sort_unstable();
    done.dedup();
    assert_eq!(done.len(), 20, "each job once: {done:?}");
    assert!(
        history
            .iter()
            .all(|f| f.result == JobResult::Ok(f.job.name.clone())),
        "{history:?}"
    );
    // Another key has a queue of its own, with the default concurrency.
    let bob = rt.get::<JobQueue<Task>>("bob");
    assert_eq!(status_of(&bob).await.concurrency, 1);
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn higher_priorities_start_first_and_one_priority_in_order() {
    let (_, lab, rt, queue) = alice().await;
    // The first job holds the only slot until the gate opens; the others wait.
    let blocker = Task::gated("blocker");
    submit(&queue, blocker, 0).await;
    for (name, priority) in [("low", -1), ("mid-1", 5), ("high", 9), ("mid-2", 5)] {
        submit(&queue, Task::named(name), priority).await;
    }
    let JobState::Queued { ahead, .. } = job(&queue, 3).await else {
        panic!("mid-1 waits");
    };
    assert_eq!(ahead, 1, "only high is ahead of mid-1");
    lab.gate.add_permits(1);
    wait_for(&queue, |s| s.done == 5).await;
    assert_eq!(
        names(&history(&queue).await),
        ["blocker", "high", "mid-1", "mid-2", "low"]
    );
    rt.shutdown().await;
}

async fn job(queue: &Tasks, number: u64) -> JobState<Task> {
    match queue.call(QueueMsg::Job { number }).await.unwrap() {
        QueueReply::Job(state) => state,
        other => panic!("not a job: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_spaces_the_starts_and_can_be_lifted() {
    let (_, _, rt, queue) = alice().await;
    let rate = RateLimit::new(2, Duration::from_millis(300));
    let configure = QueueMsg::Configure {
        concurrency: Some(10),
        rate: Some(rate),
    };
    assert!(matches!(
        queue.call(configure).await,
        Ok(QueueReply::Status(s)) if s.rate == Some(rate) && s.concurrency == 10
    ));
    let started = Instant::now();
    for i in 0..6 {
        submit(&queue, Task::named(&format!("j{i}")), 0).await;
    }
    // Only two may start in the first 300 ms; the others wait for the queue's timer.
    let early = status_of(&queue).await;
    assert!(early.done + early.running as u64 <= 2, "{early:?}");
    assert!(early.queued >= 4, "{early:?}");
    wait_for(&queue, |s| s.done == 6).await;
    // Starts at 0, 300 and 600 ms (at the earliest), two at a time.
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "{:?}",
        started.elapsed()
    );
    // `{"starts": 0}` lifts the limit.
    let lift = QueueMsg::Configure {
        concurrency: None,
        rate: Some(RateLimit::new(0, Duration::ZERO)),
    };
    let lifted = queue.call(lift).await;
    assert!(matches!(lifted, Ok(QueueReply::Status(s)) if s.rate.is_none() && s.concurrency == 10));
    for i in 6..12 {
        submit(&queue, Task::named(&format!("j{i}")), 0).await;
    }
    wait_for(&queue, |s| s.done == 12).await;
    let bad = QueueMsg::Configure {
        concurrency: None,
        rate: Some(RateLimit::new(1, Duration::ZERO)),
    };
    assert!(matches!(
        queue.call(bad).await,
        Err(CallError::Rejected(QueueError::BadRate))
    ));
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_attempts_are_retried_then_the_job_fails_with_its_error() {
    let (_, _, rt, queue) = alice().await;
    let flaky = Task {
        fails: 2,
        ..Task::named("flaky")
    };
    let broken = Task {
        fails: 100,
        ..Task::named("broken")
    };
    let flaky = submit(&queue, flaky, 0).await;
    let broken = submit(&queue, broken, 0).await;
    let status = wait_for(&queue, |s| s.done + s.failed == 2).await;
    assert_eq!((status.done, status.failed), (1, 1));
    let JobState::Finished(flaky) = job(&queue, flaky).await else {
        panic!("flaky finished");
    };
    assert_eq!(flaky.attempt, Some(3), "two failures, then success");
    assert_eq!(flaky.result, JobResult::Ok("flaky".into()));
    let JobState::Finished(broken) = job(&queue, broken).await else {
        panic!("broken finished");
    };
    assert_eq!(broken.attempt, None);
    assert_eq!(broken.result, JobResult::Failed("attempt 4 fails".into()));
    // A failed job can be submitted again (here it fails again: its work always does); a job
    // that did not fail cannot.
    let again = match queue
        .call(QueueMsg::Retry {
            number: broken.number,
        })
        .await
    {
        Ok(QueueReply::Submitted { number, .. }) => number,
        other => panic!("{other:?}"),
    };
    assert!(again > broken.number, "a new job");
    let refused = queue
        .call(QueueMsg::Retry {
            number: flaky.number,
        })
        .await;
    assert!(
        matches!(refused, Err(CallError::Rejected(QueueError::NotFailed(n))) if n == flaky.number),
        "{refused:?}"
    );
    let status = wait_for(&queue, |s| s.done + s.failed == 3).await;
    assert_eq!((status.done, status.failed), (1, 2));
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_job_never_starts_or_is_stopped_and_its_result_never_counts() {
    let (_, lab, rt, queue) = alice().await;
    let running = Task::gated("running");
    let running = submit(&queue, running, 0).await;
    let waiting = submit(&queue, Task::named("waiting"), 0).await;
    let last = submit(&queue, Task::named("last"), 0).await;
    let cancelled = |state: QueueReply<Task>| match state {
        QueueReply::Job(JobState::Finished(f)) => f.result == JobResult::Cancelled,
        _ => false,
    };
    assert!(cancelled(
        queue
            .call(QueueMsg::Cancel { number: waiting })
            .await
            .unwrap()
    ));
    // Cancelling the running job frees its slot: the last one starts.
    assert!(cancelled(
        queue
            .call(QueueMsg::Cancel { number: running })
            .await
            .unwrap()
    ));
    let status = wait_for(&queue, |s| s.done == 1).await;
    assert_eq!((status.cancelled, status.running, status.queued), (2, 0, 0));
    assert!(
        matches!(job(&queue, last).await, JobState::Finished(f) if f.result == JobResult::Ok("last".into()))
    );
    // The stopped work's end, had it come, is not applied: the job stays cancelled.
    lab.gate.add_permits(1);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(status_of(&queue).await.done, 1);
    // Cancelling again, or a job that does not exist, changes nothing.
    assert!(cancelled(
        queue
            .call(QueueMsg::Cancel { number: running })
            .await
            .unwrap()
    ));
    let unknown = queue.call(QueueMsg::Cancel { number: 99 }).await.unwrap();
    assert!(matches!(unknown, QueueReply::Job(JobState::Unknown)));
    assert_eq!(status_of(&queue).await.cancelled, 2);
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_running_at_a_restart_run_again_and_finish_once() {
    let (store, _, rt, queue) = alice().await;
    queue.call(QueueMsg::concurrency(2)).await.unwrap();
    for i in 0..4 {
        let task = Task {
            gated: true,
            ..Task::named(&format!("j{i}"))
        };
        submit(&queue, task, 0).await;
    }
    wait_for(&queue, |s| s.running == 2).await;
    rt.shutdown().await;

    // A new runtime on the same store: the two jobs that were running start again.
    let lab = Arc::new(Lab::default());
    let rt = runtime(&store, &lab).await;
    let queue = rt.get::<JobQueue<Task>>("alice");
    lab.gate.add_permits(4);
    let status = wait_for(&queue, |s| s.done == 4).await;
    assert_eq!(
        (status.concurrency, status.running, status.queued),
        (2, 0, 0)
    );
    let history = history(&queue).await;
    let mut finished = names(&history);
    // Two run at once: they may end in either order.
    finished.sort_unstable();
    assert_eq!(finished, ["j0", "j1", "j2", "j3"], "each job once");
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_deleted_when_drained_exists_only_while_it_has_work() {
    let (store, lab) = (MemoryStore::new(), Arc::new(Lab::default()));
    let rt = runtime(&store, &lab).await;
    let queue = rt.get::<JobQueue<Brief>>("alice");
    let key = EntityKey::new("briefs", EntityId::new("alice").unwrap());
    let gated = Brief(Task::gated("one"));
    queue.call(QueueMsg::submit(gated)).await.unwrap();
    assert!(
        store.load(&key).await.unwrap().is_some(),
        "stored while it works"
    );
    lab.gate.add_permits(1);
    let started = Instant::now();
    while store.load(&key).await.unwrap().is_some() {
        assert!(started.elapsed() < Duration::from_secs(20), "never deleted");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The next submit starts a new queue.
    let reply = queue
        .call(QueueMsg::submit(Brief(Task::named("two"))))
        .await;
    assert!(matches!(reply, Ok(QueueReply::Submitted { number: 1, .. })));
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_settings_are_refused_with_a_code() {
    let (_, _, rt, queue) = alice().await;
    for concurrency in [0, 10_001] {
        let refused = queue.call(QueueMsg::concurrency(concurrency)).await;
        assert!(
            matches!(
                refused,
                Err(CallError::Rejected(QueueError::BadConcurrency))
            ),
            "{refused:?}"
        );
    }
    let refused = queue.call(QueueMsg::submit(Task::named(""))).await;
    assert!(
        matches!(&refused, Err(CallError::Rejected(QueueError::BadJob(why))) if why == "a task needs a name"),
        "{refused:?}"
    );
    assert_eq!(status_of(&queue).await.queued, 0, "nothing was queued");
    rt.shutdown().await;
}

#[test]
fn messages_and_replies_have_the_documented_json_shapes() {
    let submit: QueueMsg<Task> =
        serde_json::from_str(r#"{"submit": {"job": {"name": "a", "ms": 5}, "priority": 2}}"#)
            .unwrap();
    assert!(matches!(submit, QueueMsg::Submit { ref job, priority: 2 } if job.name == "a"));
    let plain: QueueMsg<Task> =
        serde_json::from_str(r#"{"submit": {"job": {"name": "b"}}}"#).unwrap();
    assert!(matches!(plain, QueueMsg::Submit { priority: 0, .. }));
    for text in [
        r#""status""#,
        r#""history""#,
        r#"{"job": {"number": 3}}"#,
        r#"{"cancel": {"number": 3}}"#,
        r#"{"retry": {"number": 3}}"#,
        r#"{"configure": {"concurrency": 3}}"#,
        r#"{"configure": {"rate": {"starts": 10, "per_ms": 60000}}}"#,
        r#""wake""#,
    ] {
        serde_json::from_str::<QueueMsg<Task>>(text).unwrap();
    }
    // Replies read back as what they were (kept replies of idempotent calls are decoded).
    let finished = FinishedJob {
        number: 7,
        job: Task::named("a"),
        submitted_ms: 1,
        started_ms: 2,
        finished_ms: 3,
        attempt: Some(1),
        result: JobResult::Ok("a".to_owned()),
    };
    let replies: Vec<QueueReply<Task>> = vec![
        QueueReply::Submitted {
            number: 4,
            queued: 2,
        },
        QueueReply::Status(QueueStatus {
            concurrency: 3,
            running: 1,
            queued: 2,
            done: 3,
            failed: 4,
            cancelled: 5,
            rate: None,
        }),
        QueueReply::Job(JobState::Queued {
            number: 5,
            job: Task::named("q"),
            priority: 1,
            ahead: 0,
        }),
        QueueReply::Job(JobState::Running {
            number: 6,
            job: Task::named("r"),
            started_ms: 9,
        }),
        QueueReply::Job(JobState::Finished(finished.clone())),
        QueueReply::Job(JobState::Unknown),
        QueueReply::History(vec![finished]),
    ];
    let texts: Vec<String> = replies
        .iter()
        .map(|r| serde_json::to_string(r).unwrap())
        .collect();
    assert_eq!(texts[0], r#"{"number":4,"queued":2}"#);
    assert_eq!(
        texts[1],
        r#"{"concurrency":3,"running":1,"queued":2,"done":3,"failed":4,"cancelled":5}"#
    );
    assert_eq!(texts[5], r#"{"state":"unknown"}"#);
    for text in &texts {
        let back: QueueReply<Task> = serde_json::from_str(text).unwrap();
        assert_eq!(&serde_json::to_string(&back).unwrap(), text);
    }
}
