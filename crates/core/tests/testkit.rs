//! The test kit's runtime (`testing::TestRuntime`): a clock that moves only when the test
//! moves it, firing what falls due in order, each at its own time (durable timers, idle
//! timeouts, effects' backoff, asks' deadlines); a restart that loses what only memory held
//! and keeps what was acknowledged; seeded randomness.

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use perennial_core::testing::{START, TestRuntime};
use perennial_core::{
    AskError, Asked, CallError, Ctx, Effect, EffectCtx, EffectError, EffectFailure, Process, Retry,
};
use serde::{Deserialize, Serialize};

/// Records the time of each step it handles, and does what it is told to at those times.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Diary {
    /// `(what, milliseconds after START)` of each step but reads.
    entries: Vec<(String, u64)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum DiaryMsg {
    /// Schedules a note after each of these delays (in seconds).
    Plan(Vec<u64>),
    Note(String),
    /// Starts a `Flaky` effect that fails this many times first.
    Work(u32),
    /// Asks the `Mute` entity `id`, with a deadline of `within` seconds.
    AskMute {
        id: String,
        within: u64,
    },
    Answered(Asked<Mute>),
    /// A random id, from the step's randomness.
    NewId,
    Read,
}

impl Process for Diary {
    const KIND: &'static str = "diary";
    type Msg = DiaryMsg;
    type Reply = Vec<(String, u64)>;
    type Error = std::convert::Infallible;

    fn handle(
        &mut self,
        msg: DiaryMsg,
        ctx: &mut Ctx<'_, Self>,
    ) -> Result<Self::Reply, Self::Error> {
        let at = since_start(ctx.now());
        match msg {
            DiaryMsg::Plan(delays) => {
                for s in delays {
                    ctx.schedule(
                        Duration::from_secs(s),
                        DiaryMsg::Note(format!("after {s}s")),
                    );
                }
            }
            DiaryMsg::Note(what) => self.entries.push((what, at)),
            DiaryMsg::Answered(answer) => {
                let what = match answer.result {
                    Ok(()) => "answered".into(),
                    Err(AskError::TimedOut) => "timed out".into(),
                    Err(e) => format!("{e}"),
                };
                self.entries.push((what, at));
            }
            DiaryMsg::Work(fails) => {
                ctx.effect(Flaky { fails });
            }
            DiaryMsg::AskMute { id, within } => {
                ctx.ask_within::<Mute>(id, (), Duration::from_secs(within), DiaryMsg::Answered);
            }
            DiaryMsg::NewId => return Ok(vec![(ctx.new_id(), at)]),
            DiaryMsg::Read => {}
        }
        Ok(self.entries.clone())
    }

    fn is_read_only(msg: &DiaryMsg) -> bool {
        matches!(msg, DiaryMsg::Read)
    }
}

fn since_start(t: SystemTime) -> u64 {
    let ms = t.duration_since(SystemTime::UNIX_EPOCH).unwrap() - START;
    u64::try_from(ms.as_millis()).unwrap()
}

/// Every attempt of a `Flaky` effect: its effect id and when it ran (ms after START).
static ATTEMPTS: Mutex<Vec<(String, u64)>> = Mutex::new(Vec::new());

fn attempts_of(prefix: &str) -> Vec<u64> {
    ATTEMPTS
        .lock()
        .unwrap()
        .iter()
        .filter(|(id, _)| id.starts_with(prefix))
        .map(|(_, at)| *at)
        .collect()
}

/// Fails its first `fails` attempts, retried after 10 s, then 20 s, then 40 s.
#[derive(Debug, Serialize, Deserialize)]
struct Flaky {
    fails: u32,
}

impl Effect for Flaky {
    type Kind = Diary;
    const NAME: &'static str = "flaky";

    fn retry() -> Retry {
        Retry::DEFAULT
            .attempts(5)
            .backoff(Duration::from_secs(10), Duration::from_secs(60))
    }

    async fn run(self, cx: EffectCtx) -> Result<DiaryMsg, EffectError> {
        ATTEMPTS
            .lock()
            .unwrap()
            .push((cx.id().to_string(), since_start(cx.now())));
        if cx.attempt() <= self.fails {
            return Err(EffectError::new("not yet"));
        }
        Ok(DiaryMsg::Note(format!(
            "worked at attempt {}",
            cx.attempt()
        )))
    }

    fn failed(self, failure: EffectFailure) -> DiaryMsg {
        DiaryMsg::Note(format!("failed: {failure:?}"))
    }
}

/// Never answers: it is paused by the tests that ask it.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Mute;

impl Process for Mute {
    const KIND: &'static str = "mute";
    type Msg = ();
    type Reply = ();
    type Error = std::convert::Infallible;

    fn handle(&mut self, (): (), _ctx: &mut Ctx<'_, Self>) -> Result<(), Self::Error> {
        Ok(())
    }
}

/// Remembers in memory only what it was told: a restart forgets it.
#[derive(Debug, Default, Clone)]
struct Scratch(Vec<u64>);

impl Process for Scratch {
    const KIND: &'static str = "scratch";
    type Msg = u64;
    type Reply = Vec<u64>;
    type Error = std::convert::Infallible;

    fn handle(&mut self, n: u64, _ctx: &mut Ctx<'_, Self>) -> Result<Vec<u64>, Self::Error> {
        self.0.push(n);
        Ok(self.0.clone())
    }
}

/// Counts durably, and goes idle after a minute.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Count(u64);

impl Process for Count {
    const KIND: &'static str = "count";
    type Msg = ();
    type Reply = u64;
    type Error = std::convert::Infallible;

    fn handle(&mut self, (): (), _ctx: &mut Ctx<'_, Self>) -> Result<u64, Self::Error> {
        self.0 += 1;
        Ok(self.0)
    }

    fn idle_timeout(&self) -> Duration {
        Duration::from_secs(60)
    }
}

async fn start() -> TestRuntime {
    TestRuntime::start(|b| {
        b.register_snapshot::<Diary>()
            .register_effect::<Flaky>()
            .register_snapshot::<Mute>()
            .register_ephemeral::<Scratch>()
            .register_snapshot::<Count>()
    })
    .await
    .unwrap()
}

async fn read(rt: &TestRuntime, id: &str) -> Vec<(String, u64)> {
    rt.get::<Diary>(id).call(DiaryMsg::Read).await.unwrap()
}

#[tokio::test]
async fn timers_fire_in_order_each_at_its_own_time_and_not_before() {
    let rt = start().await;
    assert_eq!(rt.now(), SystemTime::UNIX_EPOCH + START);
    rt.get::<Diary>("d")
        .call(DiaryMsg::Plan(vec![3600, 10, 86_400 * 30]))
        .await
        .unwrap();
    rt.advance(Duration::from_secs(9)).await;
    assert!(read(&rt, "d").await.is_empty(), "nothing is due yet");
    rt.advance(Duration::from_secs(3600)).await;
    assert_eq!(
        read(&rt, "d").await,
        [
            ("after 10s".to_string(), 10_000),
            ("after 3600s".to_string(), 3_600_000)
        ],
        "each fired at its own time, in order"
    );
    // Thirty days in one go.
    rt.advance(Duration::from_secs(86_400 * 30)).await;
    assert_eq!(
        read(&rt, "d").await[2],
        ("after 2592000s".to_string(), 2_592_000_000)
    );
    assert_eq!(
        rt.now(),
        SystemTime::UNIX_EPOCH + START + Duration::from_secs(9 + 3600 + 86_400 * 30)
    );
}

#[tokio::test]
async fn an_idle_entity_is_passivated_when_its_timeout_passes() {
    let rt = start().await;
    rt.get::<Count>("c").call(()).await.unwrap();
    rt.advance(Duration::from_secs(30)).await;
    assert_eq!(rt.stats().resident, 1, "not idle long enough yet");
    rt.advance(Duration::from_secs(40)).await;
    assert_eq!(rt.stats().resident, 0, "passivated after its minute");
    assert_eq!(rt.get::<Count>("c").call(()).await.unwrap(), 2);
}

#[tokio::test]
async fn an_effects_attempts_wait_their_backoff_on_the_moved_clock() {
    let rt = start().await;
    rt.get::<Diary>("e").call(DiaryMsg::Work(2)).await.unwrap();
    rt.settle().await;
    assert_eq!(
        attempts_of("diary/e/").len(),
        1,
        "the first attempt ran at once"
    );
    rt.advance(Duration::from_secs(4)).await;
    assert_eq!(attempts_of("diary/e/").len(), 1, "the backoff is 5 to 10 s");
    rt.advance(Duration::from_secs(60)).await;
    let attempts = attempts_of("diary/e/");
    assert_eq!(attempts.len(), 3, "{attempts:?}");
    // Waits drawn in [half, all] of 10 s, then of 20 s.
    let first_wait = attempts[1] - attempts[0];
    let second_wait = attempts[2] - attempts[1];
    assert!((5_000..=10_000).contains(&first_wait), "{attempts:?}");
    assert!((10_000..=20_000).contains(&second_wait), "{attempts:?}");
    let entries = read(&rt, "e").await;
    assert_eq!(entries, [("worked at attempt 3".to_string(), attempts[2])]);
}

#[tokio::test]
async fn an_asks_deadline_fires_on_the_moved_clock() {
    let rt = start().await;
    assert!(rt.admin().pause("mute", "m").await.unwrap());
    rt.get::<Diary>("a")
        .call(DiaryMsg::AskMute {
            id: "m".into(),
            within: 120,
        })
        .await
        .unwrap();
    rt.advance(Duration::from_secs(119)).await;
    assert!(read(&rt, "a").await.is_empty());
    rt.advance(Duration::from_secs(1)).await;
    assert_eq!(read(&rt, "a").await, [("timed out".to_string(), 120_000)]);
}

#[tokio::test]
async fn a_restart_loses_what_only_memory_held_and_keeps_what_was_acknowledged() {
    let mut rt = start().await;
    assert_eq!(rt.get::<Scratch>("s").call(1).await.unwrap(), [1]);
    assert_eq!(rt.get::<Count>("c").call(()).await.unwrap(), 1);
    rt.get::<Diary>("d")
        .call(DiaryMsg::Plan(vec![60]))
        .await
        .unwrap();
    rt.restart().await.unwrap();
    let scratch = rt.get::<Scratch>("s").call(2).await.unwrap();
    assert_eq!(scratch, [2], "ephemeral: gone");
    assert_eq!(
        rt.get::<Count>("c").call(()).await.unwrap(),
        2,
        "stored: kept"
    );
    rt.advance(Duration::from_secs(60)).await;
    assert_eq!(
        read(&rt, "d").await,
        [("after 60s".to_string(), 60_000)],
        "the timer too"
    );
}

#[tokio::test]
async fn an_effect_cut_short_by_a_restart_runs_again_with_the_same_id() {
    let mut rt = start().await;
    rt.get::<Diary>("r").call(DiaryMsg::Work(1)).await.unwrap();
    rt.settle().await;
    let first = ATTEMPTS
        .lock()
        .unwrap()
        .iter()
        .find(|(id, _)| id.starts_with("diary/r/"))
        .cloned();
    let (id, _) = first.expect("the first attempt ran");
    // Killed during the backoff: the effect is still pending in storage.
    rt.restart().await.unwrap();
    rt.advance(Duration::from_secs(1)).await;
    let runs: Vec<String> = ATTEMPTS
        .lock()
        .unwrap()
        .iter()
        .filter(|(i, _)| i.starts_with("diary/r/"))
        .map(|(i, _)| i.clone())
        .collect();
    assert_eq!(
        runs,
        [id.clone(), id],
        "run again at once, from its first attempt"
    );
    assert_eq!(
        read(&rt, "r").await.len(),
        0,
        "and failing again, as attempt 1"
    );
    rt.advance(Duration::from_secs(20)).await;
    assert_eq!(read(&rt, "r").await[0].0, "worked at attempt 2");
}

#[tokio::test]
async fn calls_in_flight_at_a_restart_fail_instead_of_hanging() {
    let mut rt = start().await;
    let old = rt.runtime().clone();
    let call = tokio::spawn(async move { old.get::<Count>("c").call(()).await });
    rt.restart().await.unwrap();
    match call.await.unwrap() {
        Err(CallError::ShuttingDown | CallError::Storage { .. }) => {}
        other => panic!("{other:?}"),
    }
    let stale = rt.runtime().clone();
    rt.restart().await.unwrap();
    assert!(matches!(
        stale.get::<Count>("c").call(()).await,
        Err(CallError::ShuttingDown)
    ));
}

#[tokio::test]
async fn a_seed_makes_the_steps_randomness_the_same_every_run() {
    async fn first_id(seed: u64) -> String {
        let rt = TestRuntime::start_with_seed(seed, |b| b.register_snapshot::<Diary>())
            .await
            .unwrap();
        let id = rt.get::<Diary>("s").call(DiaryMsg::NewId).await.unwrap();
        rt.shutdown().await;
        id[0].0.clone()
    }
    assert_eq!(first_id(7).await, first_id(7).await);
    assert_ne!(first_id(7).await, first_id(8).await);
}
