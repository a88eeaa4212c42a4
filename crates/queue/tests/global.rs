//! The cap shared by all keys of a kind ([`Job::GLOBAL`]), on the test kit's runtime, whose
//! clock the test moves: jobs take exactly their time, so who ran when is exact.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use perennial_core::testing::TestRuntime;
use perennial_core::{CallError, EffectCtx, EffectError, Runtime};
use perennial_queue::{
    GlobalCap, Job, JobQueue, POOL, PermitMsg, Permits, QueueError, QueueMsg, RateLimit,
};
use serde::{Deserialize, Serialize};

/// Renders for `ms` milliseconds. Each user renders 3 at a time; all users together, 4.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Render {
    ms: u64,
}

impl Job for Render {
    const KIND: &'static str = "render";
    const CONCURRENCY: u32 = 3;
    const GLOBAL: Option<GlobalCap> = Some(GlobalCap {
        kind: "render-permits",
        concurrency: 4,
    });
    const DELETE_WHEN_DRAINED: bool = true;
    type Output = ();

    async fn run(self, _cx: EffectCtx) -> Result<(), EffectError> {
        tokio::time::sleep(Duration::from_millis(self.ms)).await;
        Ok(())
    }
}

type Queue = JobQueue<Render>;

const USERS: usize = 6;
const JOBS: usize = 5;

/// Submits 5 jobs of 100 ms for each of 6 users.
async fn submit_all(rt: &Runtime) {
    for user in 0..USERS {
        for _ in 0..JOBS {
            let q = rt.get::<Queue>(format!("user-{user}"));
            q.call(QueueMsg::submit(Render { ms: 100 })).await.unwrap();
        }
    }
}

/// A job as its result was applied: whose, which, and when its work ran.
#[derive(Debug, Clone)]
struct Ran {
    user: String,
    number: u64,
    started_ms: i64,
    finished_ms: i64,
}

/// The most jobs whose work overlapped in time.
fn most_at_once<'a>(jobs: impl IntoIterator<Item = &'a Ran>) -> usize {
    let mut edges: Vec<(i64, i32)> = jobs
        .into_iter()
        .flat_map(|r| [(r.started_ms, 1), (r.finished_ms, -1)])
        .collect();
    // An end at the same millisecond as a start comes first.
    edges.sort_unstable();
    let (mut now, mut most) = (0, 0);
    for (_, step) in edges {
        now += step;
        most = most.max(now);
    }
    usize::try_from(most).unwrap()
}

/// What the queues' listener heard: every job result applied (drained queues delete
/// themselves, so their histories cannot be read at the end).
type Record = Arc<Mutex<Vec<Ran>>>;

async fn start(record: &Record) -> TestRuntime {
    let record = Arc::clone(record);
    TestRuntime::start(move |b| {
        let record = Arc::clone(&record);
        JobQueue::<Render>::register(b).listen::<Queue>(move |change| {
            if let Some(QueueMsg::Finished(outcome)) = &change.msg {
                record.lock().unwrap().push(Ran {
                    user: change.id.to_string(),
                    number: outcome.number,
                    started_ms: outcome.started_ms,
                    finished_ms: outcome.finished_ms,
                });
            }
        })
    })
    .await
    .unwrap()
}

async fn pool(rt: &Runtime) -> perennial_queue::PermitStatus {
    rt.get::<Permits<Render>>(POOL)
        .call(PermitMsg::Status)
        .await
        .unwrap()
}

/// Checks that each user's 5 jobs were applied once, at most 3 of a user and 4 in all at
/// once; returns when each user's first job started (ms after the first start).
fn check(record: &Record) -> BTreeMap<String, i64> {
    let ran = record.lock().unwrap().clone();
    let mut by_user: BTreeMap<String, Vec<Ran>> = BTreeMap::new();
    for r in ran.iter().cloned() {
        by_user.entry(r.user.clone()).or_default().push(r);
    }
    assert_eq!(by_user.len(), USERS, "{ran:?}");
    let origin = ran.iter().map(|r| r.started_ms).min().unwrap();
    let mut first = BTreeMap::new();
    for (user, jobs) in &by_user {
        let mut numbers: Vec<u64> = jobs.iter().map(|r| r.number).collect();
        numbers.sort_unstable();
        assert_eq!(numbers, [1, 2, 3, 4, 5], "{user}: each job applied once");
        assert!(most_at_once(jobs) <= 3, "{user}: {jobs:?}");
        let start = jobs.iter().map(|r| r.started_ms).min().unwrap();
        first.insert(user.clone(), start - origin);
    }
    assert_eq!(
        most_at_once(&ran),
        4,
        "the global cap, reached and never passed"
    );
    first
}

#[tokio::test]
async fn all_keys_together_run_at_most_the_global_cap_taking_turns() {
    let record = Record::default();
    let rt = start(&record).await;
    submit_all(&rt).await;
    rt.advance(Duration::from_millis(799)).await;
    assert_eq!(
        pool(&rt).await.in_use,
        2,
        "30 jobs in 8 waves of 4: the last wave has 2"
    );
    rt.advance(Duration::from_millis(1)).await;
    let first = check(&record);
    // Turns, one permit at a time in the order the keys asked: at 0 the first user takes 3
    // (nobody else waits yet) and the second 1; at 100 the first user's permits go to the
    // second user (waiting since 0) and the next three, not back to the first user.
    assert_eq!(
        first.values().copied().collect::<Vec<_>>(),
        [0, 0, 100, 100, 100, 200]
    );
    let ran = record.lock().unwrap().clone();
    let origin = ran.iter().map(|r| r.started_ms).min().unwrap();
    let mut second_wave: Vec<&str> = ran
        .iter()
        .filter(|r| r.started_ms - origin == 100)
        .map(|r| r.user.as_str())
        .collect();
    second_wave.sort_unstable();
    assert_eq!(second_wave, ["user-1", "user-2", "user-3", "user-4"]);
    let status = pool(&rt).await;
    assert_eq!(
        (status.in_use, status.keys_running, status.wanted),
        (0, 0, 0)
    );
    assert_eq!(
        rt.admin().stored("render").await.unwrap(),
        0,
        "drained queues are gone"
    );
}

#[tokio::test]
async fn the_cap_holds_and_every_job_is_applied_once_across_a_kill_9() {
    let record = Record::default();
    let mut rt = start(&record).await;
    submit_all(&rt).await;
    rt.advance(Duration::from_millis(250)).await;
    rt.restart().await.unwrap();
    // The jobs cut short run again from the start; the others wait for permits as before.
    rt.advance(Duration::from_secs(2)).await;
    check(&record);
    let status = pool(&rt).await;
    assert_eq!(
        (status.in_use, status.keys_running, status.wanted),
        (0, 0, 0)
    );
}

#[tokio::test]
async fn permits_and_results_cannot_be_sent_by_a_call_and_the_cap_is_configurable() {
    let record = Record::default();
    let rt = start(&record).await;
    let forged = rt
        .get::<Queue>("mallory")
        .call(QueueMsg::Permits(100))
        .await;
    assert!(matches!(forged, Err(CallError::Internal(_))), "{forged:?}");
    let json = rt
        .call_json("render", "mallory", br#"{"permits": 100}"#)
        .await;
    assert!(matches!(json, Err(CallError::Internal(_))), "{json:?}");
    let update = PermitMsg::Update {
        queue: "mallory".into(),
        release: 0,
        want: 100,
    };
    let forged = rt.get::<Permits<Render>>(POOL).call(update).await;
    assert!(matches!(forged, Err(CallError::Internal(_))), "{forged:?}");

    let bad = rt
        .get::<Permits<Render>>(POOL)
        .call(PermitMsg::Configure { concurrency: 0 })
        .await;
    assert!(matches!(
        bad,
        Err(CallError::Rejected(QueueError::BadGlobalConcurrency))
    ));
    let raised = rt
        .get::<Permits<Render>>(POOL)
        .call(PermitMsg::Configure { concurrency: 6 })
        .await
        .unwrap();
    assert_eq!(raised.concurrency, 6);
    submit_all(&rt).await;
    rt.settle().await;
    assert_eq!(pool(&rt).await.in_use, 6, "six at once now");
}

#[tokio::test]
async fn lifting_a_keys_rate_limit_starts_its_jobs_at_once_under_a_global_cap() {
    let record = Record::default();
    let rt = start(&record).await;
    let q = rt.get::<Queue>("slow");
    let long = || QueueMsg::submit(Render { ms: 100_000 });
    // Configured while it has work: a drained queue deletes itself, settings and all.
    q.call(long()).await.unwrap();
    rt.settle().await;
    let one_a_minute = QueueMsg::Configure {
        concurrency: None,
        rate: Some(RateLimit::new(1, Duration::from_secs(60))),
    };
    q.call(one_a_minute).await.unwrap();
    q.call(long()).await.unwrap();
    q.call(long()).await.unwrap();
    rt.settle().await;
    assert_eq!(
        pool(&rt).await.in_use,
        2,
        "the third waits a minute for the rate"
    );
    let lifted = QueueMsg::Configure {
        concurrency: None,
        rate: Some(RateLimit::new(0, Duration::from_secs(60))),
    };
    q.call(lifted).await.unwrap();
    rt.settle().await;
    assert_eq!(pool(&rt).await.in_use, 3, "not a minute later: now");
}
