//! Effects: work outside the handler whose result comes back as a message; run again after a
//! restart if a crash interrupted them; failed attempts (errors, panics, timeouts) retried by
//! their policy, then the failure comes back as a message; resources from the builder;
//! cancellation by a step.

use std::sync::Mutex;
use std::time::Duration;

use perennial_core::{
    CallError, Ctx, Effect, EffectCtx, EffectError, EffectFailure, EffectId, Process, Retry,
    Runtime, StartError,
};
use perennial_storage::{MemoryStore, Store};
use serde::{Deserialize, Serialize};

/// Starts effects and records their results.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Job {
    pub(crate) results: Vec<String>,
    last: Option<EffectId>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum JobMsg {
    Start {
        ms: u64,
    },
    StartUnregistered,
    /// Starts a `Flaky` effect.
    Flaky {
        fail: u32,
        how: How,
    },
    /// Cancels the effect started last.
    CancelLast,
    Finished {
        result: String,
    },
    Get,
}

/// How a `Flaky` effect's failing attempts fail.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum How {
    Err,
    Panic,
    Hang,
    Permanent,
    /// Succeeds, with the `Greeting` resource in its result.
    Resource,
}

/// Every run of `Nap`: its effect id.
static RUNS: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn runs_of(id: &str) -> usize {
    RUNS.lock().unwrap().iter().filter(|r| *r == id).count()
}

/// Sleeps, then reports which effect it was.
#[derive(Debug, Serialize, Deserialize)]
struct Nap {
    ms: u64,
}

impl Effect for Nap {
    type Kind = Job;
    const NAME: &'static str = "nap";

    async fn run(self, cx: EffectCtx) -> Result<JobMsg, EffectError> {
        let id = cx.id().to_string();
        RUNS.lock().unwrap().push(id.clone());
        tokio::time::sleep(Duration::from_millis(self.ms)).await;
        Ok(JobMsg::Finished { result: id })
    }

    fn failed(self, failure: EffectFailure) -> JobMsg {
        JobMsg::Finished {
            result: format!("failed: {}", failure.error),
        }
    }
}

/// A resource given to the builder.
struct Greeting(&'static str);

/// Fails its first `fail` attempts as `how` says, then succeeds with its attempt's number.
#[derive(Debug, Serialize, Deserialize)]
struct Flaky {
    fail: u32,
    how: How,
}

impl Effect for Flaky {
    type Kind = Job;
    const NAME: &'static str = "flaky";

    fn retry() -> Retry {
        Retry::DEFAULT
            .attempts(3)
            .backoff(Duration::from_millis(10), Duration::from_millis(40))
            .timeout(Duration::from_millis(300))
    }

    async fn run(self, cx: EffectCtx) -> Result<JobMsg, EffectError> {
        RUNS.lock().unwrap().push(cx.id().to_string());
        if let How::Resource = self.how {
            let greeting = cx.resource::<Greeting>()?;
            return Ok(JobMsg::Finished {
                result: greeting.0.to_owned(),
            });
        }
        if cx.attempt() <= self.fail {
            match self.how {
                How::Err => return Err(EffectError::new("not yet")),
                How::Panic => panic!("the effect panics on purpose"),
                How::Hang => tokio::time::sleep(Duration::from_secs(3600)).await,
                How::Permanent => return Err(EffectError::permanent("never")),
                How::Resource => {}
            }
        }
        Ok(JobMsg::Finished {
            result: format!("attempt {}", cx.attempt()),
        })
    }

    fn failed(self, failure: EffectFailure) -> JobMsg {
        JobMsg::Finished {
            result: format!("failed after {}: {}", failure.attempts, failure.error),
        }
    }
}

/// Never registered.
#[derive(Debug, Serialize, Deserialize)]
struct Stray;

impl Effect for Stray {
    type Kind = Job;
    const NAME: &'static str = "stray";

    async fn run(self, _cx: EffectCtx) -> Result<JobMsg, EffectError> {
        Ok(JobMsg::Get)
    }

    fn failed(self, _failure: EffectFailure) -> JobMsg {
        JobMsg::Get
    }
}

/// The reply: the results so far, and the id of an effect just started.
type JobReply = (Vec<String>, Option<String>);

impl Process for Job {
    const KIND: &'static str = "job";
    type Msg = JobMsg;
    type Reply = JobReply;
    type Error = std::convert::Infallible;

    fn handle(&mut self, msg: JobMsg, ctx: &mut Ctx<'_, Self>) -> Result<JobReply, Self::Error> {
        let started = match msg {
            JobMsg::Start { ms } => Some(ctx.effect(Nap { ms })),
            JobMsg::StartUnregistered => Some(ctx.effect(Stray)),
            JobMsg::Flaky { fail, how } => Some(ctx.effect(Flaky { fail, how })),
            JobMsg::CancelLast => {
                if let Some(last) = self.last.take() {
                    ctx.cancel_effect(&last);
                }
                None
            }
            JobMsg::Finished { result } => {
                self.results.push(result);
                None
            }
            JobMsg::Get => None,
        };
        if let Some(id) = &started {
            self.last = Some(id.clone());
        }
        Ok((self.results.clone(), started.map(|id| id.to_string())))
    }
}

async fn jobs(store: &MemoryStore) -> Runtime {
    Runtime::builder()
        .store(store.clone())
        .register_snapshot::<Job>()
        .register_effect::<Nap>()
        .register_effect::<Flaky>()
        .resource(Greeting("hello"))
        .start()
        .await
        .unwrap()
}

async fn results(rt: &Runtime, id: &str, count: usize) -> Vec<String> {
    for _ in 0..1000 {
        let (results, _) = rt.get::<Job>(id).call(JobMsg::Get).await.unwrap();
        if results.len() >= count {
            return results;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{id} did not get {count} results");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_effects_result_comes_back_as_a_message() {
    let store = MemoryStore::new();
    let rt = jobs(&store).await;
    let (_, id) = rt
        .get::<Job>("j1")
        .call(JobMsg::Start { ms: 20 })
        .await
        .unwrap();
    let id = id.unwrap();
    assert!(id.starts_with("job/j1/e"), "{id}");
    assert_eq!(results(&rt, "j1", 1).await, std::slice::from_ref(&id));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(runs_of(&id), 1);
    assert_eq!(results(&rt, "j1", 1).await.len(), 1, "applied once");
    assert!(store.due(i64::MAX, 10).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_effect_runs_again_with_the_same_id_after_a_restart() {
    let store = MemoryStore::new();
    let rt = jobs(&store).await;
    let (_, id) = rt
        .get::<Job>("j2")
        .call(JobMsg::Start { ms: 300 })
        .await
        .unwrap();
    let id = id.unwrap();
    for _ in 0..100 {
        if runs_of(&id) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The node goes away while the effect sleeps: its result is never applied.
    rt.shutdown().await;
    drop(rt);
    assert_eq!(store.due(i64::MAX, 10).await.unwrap().len(), 1);
    let rt = jobs(&store).await;
    assert_eq!(results(&rt, "j2", 1).await, std::slice::from_ref(&id));
    assert!(runs_of(&id) >= 2, "started again, with the same id");
    assert!(store.due(i64::MAX, 10).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unregistered_effect_fails_its_step() {
    let store = MemoryStore::new();
    let rt = jobs(&store).await;
    match rt.get::<Job>("j3").call(JobMsg::StartUnregistered).await {
        Err(CallError::Panicked { message, .. }) => {
            assert!(message.contains("register_effect"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert!(store.due(i64::MAX, 10).await.unwrap().is_empty());
}

/// Starts a `Flaky` effect on job `id`; returns its result once applied.
async fn flaky(rt: &Runtime, id: &str, fail: u32, how: How) -> String {
    let (_, effect) = rt
        .get::<Job>(id)
        .call(JobMsg::Flaky { fail, how })
        .await
        .unwrap();
    let first = results(rt, id, 1).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(results(rt, id, 1).await.len(), 1, "one message per effect");
    assert!(effect.is_some());
    first[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_attempts_are_retried_and_the_failure_comes_back_as_a_message() {
    let store = MemoryStore::new();
    let rt = jobs(&store).await;
    let before = rt.stats();
    // An error, a panic and a timeout are each a failed attempt, retried after a backoff.
    assert_eq!(flaky(&rt, "f1", 2, How::Err).await, "attempt 3");
    assert_eq!(flaky(&rt, "f2", 1, How::Panic).await, "attempt 2");
    assert_eq!(flaky(&rt, "f3", 1, How::Hang).await, "attempt 2");
    // When no attempt is left, the failure comes back.
    assert_eq!(
        flaky(&rt, "f4", 3, How::Err).await,
        "failed after 3: not yet"
    );
    let panicked = flaky(&rt, "f5", 5, How::Panic).await;
    assert!(
        panicked.starts_with("failed after 3: the attempt panicked: the effect panics"),
        "{panicked}"
    );
    // A permanent error ends it at once.
    assert_eq!(
        flaky(&rt, "f6", 1, How::Permanent).await,
        "failed after 1: never"
    );
    let after = rt.stats();
    assert_eq!(
        after.effect_attempts_failed - before.effect_attempts_failed,
        2 + 1 + 1 + 3 + 3 + 1
    );
    assert_eq!(after.effects_failed - before.effects_failed, 3);
    assert!(store.due(i64::MAX, 10).await.unwrap().is_empty());
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_see_an_effect_that_is_retrying() {
    let store = MemoryStore::new();
    let rt = jobs(&store).await;
    rt.get::<Job>("f7")
        .call(JobMsg::Flaky {
            fail: 3,
            how: How::Hang,
        })
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let seen = loop {
        let retrying = rt.admin().retrying("job", "f7").unwrap();
        if let Some((_, r)) = retrying.first() {
            break r.clone();
        }
        assert!(started.elapsed() < Duration::from_secs(10), "never seen");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert!(seen.failed_attempts >= 1);
    assert!(seen.last_error.contains("timeout"), "{}", seen.last_error);
    let pending = rt.admin().pending_of("job", "f7", 10).await.unwrap();
    assert_eq!(pending.len(), 1, "its row waits in storage");
    let result = results(&rt, "f7", 1).await;
    assert!(result[0].starts_with("failed after 3"), "{result:?}");
    assert!(rt.admin().retrying("job", "f7").unwrap().is_empty());
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_effect_gets_the_builders_resources() {
    let store = MemoryStore::new();
    let rt = jobs(&store).await;
    assert_eq!(flaky(&rt, "r1", 0, How::Resource).await, "hello");
    rt.shutdown().await;
    // Without it: a permanent failure that says what to add.
    let rt = Runtime::builder()
        .store(store.clone())
        .register_snapshot::<Job>()
        .register_effect::<Flaky>()
        .start()
        .await
        .unwrap();
    let missing = flaky(&rt, "r2", 0, How::Resource).await;
    assert!(
        missing.starts_with("failed after 1: no resource of type")
            && missing.contains(".resource("),
        "{missing}"
    );
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_effect_is_stopped_and_never_answers() {
    let store = MemoryStore::new();
    let rt = jobs(&store).await;
    let job = rt.get::<Job>("c1");
    let (_, id) = job.call(JobMsg::Start { ms: 10_000 }).await.unwrap();
    let id = id.unwrap();
    for _ in 0..100 {
        if runs_of(&id) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(runs_of(&id), 1, "running");
    job.call(JobMsg::CancelLast).await.unwrap();
    // Stopped within the check interval; its row is gone, and nothing comes back.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(store.due(i64::MAX, 10).await.unwrap().is_empty());
    assert!(results(&rt, "c1", 0).await.is_empty());
    assert_eq!(rt.stats().pending_in_memory, 0, "its delivery ended");
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_effect_of_a_kind_not_registered_fails_start() {
    let started = Runtime::builder()
        .store(MemoryStore::new())
        .register_effect::<Nap>()
        .start()
        .await;
    match started {
        Err(e @ StartError::EffectWithoutKind { .. }) => {
            assert!(e.to_string().contains("register the kind"), "{e}");
        }
        other => panic!("{other:?}"),
    }
}
