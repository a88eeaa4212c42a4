//! Effects: work outside the handler whose result comes back as a message; run again after a
//! restart if a crash interrupted them.

use std::sync::Mutex;
use std::time::Duration;

use perennial_core::{CallError, Ctx, Effect, EffectId, Process, Runtime};
use perennial_storage::{MemoryStore, Store};
use serde::{Deserialize, Serialize};

/// Starts effects and records their results.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Job {
    pub(crate) results: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum JobMsg {
    Start { ms: u64 },
    StartUnregistered,
    Finished { result: String },
    Get,
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

    async fn run(self, id: EffectId) -> JobMsg {
        RUNS.lock().unwrap().push(id.to_string());
        tokio::time::sleep(Duration::from_millis(self.ms)).await;
        JobMsg::Finished {
            result: id.to_string(),
        }
    }
}

/// Never registered.
#[derive(Debug, Serialize, Deserialize)]
struct Stray;

impl Effect for Stray {
    type Kind = Job;
    const NAME: &'static str = "stray";

    async fn run(self, _id: EffectId) -> JobMsg {
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
            JobMsg::Start { ms } => Some(ctx.effect(Nap { ms }).to_string()),
            JobMsg::StartUnregistered => Some(ctx.effect(Stray).to_string()),
            JobMsg::Finished { result } => {
                self.results.push(result);
                None
            }
            JobMsg::Get => None,
        };
        Ok((self.results.clone(), started))
    }
}

async fn jobs(store: &MemoryStore) -> Runtime {
    Runtime::builder()
        .store(store.clone())
        .register_snapshot::<Job>()
        .register_effect::<Nap>()
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
