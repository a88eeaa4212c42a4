//! Durable timers: they fire once, after passivation and restarts, and can be cancelled.

use std::collections::BTreeMap;
use std::time::Duration;

use perennial_core::{CallError, Ctx, Process, Runtime, Snapshots, TimerId};
use perennial_storage::{FaultyStore, MemoryStore, Store};
use perennial_types::{EntityId, EntityKey};
use serde::{Deserialize, Serialize};

use crate::kinds::{Refused, until};

/// An entity that sets named timers and records the ones that fired.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Alarm {
    pub(crate) fired: Vec<String>,
    timers: BTreeMap<String, TimerId>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum AlarmMsg {
    Set {
        name: String,
        ms: u64,
    },
    SetMany {
        count: u32,
        ms: u64,
    },
    /// Schedules any message.
    Arm {
        ms: u64,
        then: Box<AlarmMsg>,
    },
    Cancel {
        name: String,
    },
    Fire {
        name: String,
    },
    /// Fired by a timer: refused, or panics, on purpose.
    Refuse,
    Explode,
    Get,
}

impl Process for Alarm {
    const KIND: &'static str = "alarm";
    type Msg = AlarmMsg;
    type Reply = Vec<String>;
    type Error = Refused;

    fn handle(&mut self, msg: AlarmMsg, ctx: &mut Ctx<'_, Self>) -> Result<Vec<String>, Refused> {
        match msg {
            AlarmMsg::Set { name, ms } => {
                let fire = AlarmMsg::Fire { name: name.clone() };
                let id = ctx.schedule(Duration::from_millis(ms), fire);
                self.timers.insert(name, id);
            }
            AlarmMsg::SetMany { count, ms } => {
                for i in 0..count {
                    let fire = AlarmMsg::Fire {
                        name: format!("m{i}"),
                    };
                    ctx.schedule(Duration::from_millis(ms), fire);
                }
            }
            AlarmMsg::Arm { ms, then } => {
                ctx.schedule(Duration::from_millis(ms), *then);
            }
            AlarmMsg::Cancel { name } => {
                if let Some(id) = self.timers.remove(&name) {
                    ctx.cancel(id);
                }
            }
            AlarmMsg::Fire { name } => {
                self.timers.remove(&name);
                self.fired.push(name);
            }
            AlarmMsg::Refuse => return Err(Refused),
            AlarmMsg::Explode => panic!("a timer's message that always panics"),
            AlarmMsg::Get => {}
        }
        Ok(self.fired.clone())
    }
}

/// The same entity as a `Journal` kind, whose timers are recreated by replay: they must not
/// be stored twice.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct JournaledAlarm(Alarm);

impl Process for JournaledAlarm {
    const KIND: &'static str = "journaled_alarm";
    type Msg = AlarmMsg;
    type Reply = Vec<String>;
    type Error = Refused;

    fn handle(&mut self, msg: AlarmMsg, ctx: &mut Ctx<'_, Self>) -> Result<Vec<String>, Refused> {
        // The same logic, through a context of the other kind's type.
        match msg {
            AlarmMsg::Set { name, ms } => {
                let id = ctx.schedule(
                    Duration::from_millis(ms),
                    AlarmMsg::Fire { name: name.clone() },
                );
                self.0.timers.insert(name, id);
            }
            AlarmMsg::Fire { name } => self.0.fired.push(name),
            _ => {}
        }
        Ok(self.0.fired.clone())
    }
}

pub(crate) async fn alarms(store: &FaultyStore<MemoryStore>) -> Runtime {
    Runtime::builder()
        .store(store.clone())
        .register_snapshot::<Alarm>()
        .register_journal_with_snapshots::<JournaledAlarm>(Snapshots::every(1000))
        .max_attempts(2)
        .start()
        .await
        .unwrap()
}

fn key(kind: &str, id: &str) -> EntityKey {
    EntityKey::new(kind, EntityId::new(id).unwrap())
}

/// What the store holds of an alarm's fired timers.
async fn stored_fired(store: &FaultyStore<MemoryStore>, id: &str) -> Vec<String> {
    match store.load(&key("alarm", id)).await.unwrap() {
        Some(record) => serde_json::from_str::<Alarm>(&record.state).unwrap().fired,
        None => Vec::new(),
    }
}

async fn pending_rows(store: &FaultyStore<MemoryStore>) -> usize {
    store.due(i64::MAX, usize::MAX).await.unwrap().len()
}

async fn wait_stored(store: &FaultyStore<MemoryStore>, id: &str, expected: &[&str]) {
    for _ in 0..1000 {
        if stored_fired(store, id).await == expected {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "{id} fired {:?}, expected {expected:?}",
        stored_fired(store, id).await
    );
}

fn set(name: &str, ms: u64) -> AlarmMsg {
    AlarmMsg::Set {
        name: name.into(),
        ms,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timer_fires_once_after_its_delay() {
    let store = FaultyStore::new(MemoryStore::new());
    let rt = alarms(&store).await;
    let a = rt.get::<Alarm>("a");
    let started = std::time::Instant::now();
    a.call(set("x", 150)).await.unwrap();
    assert_eq!(pending_rows(&store).await, 1, "stored with the step");
    wait_stored(&store, "a", &["x"]).await;
    assert!(started.elapsed() >= Duration::from_millis(150), "not early");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(a.call(AlarmMsg::Get).await.unwrap(), ["x"], "exactly once");
    assert_eq!(
        pending_rows(&store).await,
        0,
        "deleted by the step that applied it"
    );
    assert_eq!(rt.stats().pending_fired, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_timer_never_fires() {
    let store = FaultyStore::new(MemoryStore::new());
    let rt = alarms(&store).await;
    let a = rt.get::<Alarm>("a");
    a.call(set("late", 200)).await.unwrap();
    a.call(set("kept", 250)).await.unwrap();
    a.call(AlarmMsg::Cancel {
        name: "late".into(),
    })
    .await
    .unwrap();
    // A timer due at once, cancelled by the next message: it may fire first, but once.
    a.call(set("now", 0)).await.unwrap();
    a.call(AlarmMsg::Cancel { name: "now".into() })
        .await
        .unwrap();
    for _ in 0..500 {
        if stored_fired(&store, "a").await.contains(&"kept".to_owned()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let fired = a.call(AlarmMsg::Get).await.unwrap();
    assert!(!fired.contains(&"late".to_owned()), "{fired:?}");
    assert_eq!(
        fired.iter().filter(|f| *f == "kept").count(),
        1,
        "{fired:?}"
    );
    assert!(
        fired.iter().filter(|f| *f == "now").count() <= 1,
        "{fired:?}"
    );
    assert_eq!(pending_rows(&store).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timer_reactivates_a_passivated_entity() {
    let store = FaultyStore::new(MemoryStore::new());
    let rt = alarms(&store).await;
    rt.get::<Alarm>("p").call(set("wake", 300)).await.unwrap();
    // The reply may leave a moment before the entity's run loop marks it idle.
    until("the alarm is passivated", || {
        rt.admin().passivate_idle() == 0
    })
    .await;
    assert_eq!(rt.stats().resident, 0);
    wait_stored(&store, "p", &["wake"]).await;
    let alarm = rt.stats().kinds.into_iter().find(|k| k.kind == "alarm");
    assert_eq!(
        alarm.unwrap().activations,
        2,
        "activated again by its timer"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timers_survive_a_restart() {
    let store = FaultyStore::new(MemoryStore::new());
    let rt = alarms(&store).await;
    rt.get::<Alarm>("r").call(set("soon", 0)).await.unwrap();
    rt.get::<Alarm>("r").call(set("later", 400)).await.unwrap();
    rt.shutdown().await;
    drop(rt);
    // Whatever fired before the shutdown is stored; the rest is still pending.
    let fired_before = stored_fired(&store, "r").await.len();
    assert_eq!(pending_rows(&store).await + fired_before, 2);
    let rt = alarms(&store).await;
    wait_stored(&store, "r", &["soon", "later"]).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(stored_fired(&store, "r").await.len(), 2, "each once");
    assert_eq!(pending_rows(&store).await, 0);
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn far_timers_wait_in_storage_not_in_memory() {
    let store = FaultyStore::new(MemoryStore::new());
    let rt = alarms(&store).await;
    let hour = 3_600_000;
    rt.get::<Alarm>("f")
        .call(AlarmMsg::SetMany {
            count: 1000,
            ms: hour,
        })
        .await
        .unwrap();
    rt.get::<Alarm>("f").call(set("near", 50)).await.unwrap();
    assert_eq!(pending_rows(&store).await, 1001);
    assert!(
        rt.stats().pending_in_memory <= 1,
        "{} rows in memory",
        rt.stats().pending_in_memory
    );
    wait_stored(&store, "f", &["near"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_or_poison_timer_messages_are_done_with() {
    let store = FaultyStore::new(MemoryStore::new());
    let rt = alarms(&store).await;
    // A timer whose message the entity refuses, and one whose message always panics: the
    // first is dropped, the second dead-lettered after `max_attempts`; neither stays.
    let a = rt.get::<Alarm>("t");
    let arm = |then| AlarmMsg::Arm {
        ms: 10,
        then: Box::new(then),
    };
    a.call(arm(AlarmMsg::Refuse)).await.unwrap();
    a.call(arm(AlarmMsg::Explode)).await.unwrap();
    // The dispatcher counts a delivery once its outcome comes back, just after the commit
    // that deleted the row: wait for both.
    for _ in 0..500 {
        if pending_rows(&store).await == 0 && rt.stats().pending_fired == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(pending_rows(&store).await, 0);
    let letters = rt.admin().dead_letters(Some("alarm")).await.unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].letter.message, r#""explode""#);
    assert_eq!(letters[0].letter.attempts, 2);
    assert!(a.call(AlarmMsg::Get).await.unwrap().is_empty());
    assert_eq!(rt.stats().pending_fired, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_kinds_replay_without_storing_their_timers_again() {
    let store = FaultyStore::new(MemoryStore::new());
    let rt = alarms(&store).await;
    let j = rt.get::<JournaledAlarm>("j");
    j.call(set("a", 400)).await.unwrap();
    j.call(set("b", 600)).await.unwrap();
    assert_eq!(pending_rows(&store).await, 2);
    assert_eq!(rt.admin().passivate_idle(), 0);
    // Activation replays both steps; their timers are not created again.
    j.call(AlarmMsg::Get).await.unwrap();
    assert_eq!(pending_rows(&store).await, 2);
    until("both fired", || rt.stats().pending_fired == 2).await;
    assert_eq!(j.call(AlarmMsg::Get).await.unwrap(), ["a", "b"]);
    assert_eq!(pending_rows(&store).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_step_stores_no_timer() {
    let store = FaultyStore::new(MemoryStore::new());
    let rt = alarms(&store).await;
    store.fail_next_commits(1);
    let failed = rt.get::<Alarm>("f").call(set("lost", 10)).await;
    assert!(
        matches!(failed, Err(CallError::Storage { .. })),
        "{failed:?}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(pending_rows(&store).await, 0);
    assert!(
        rt.get::<Alarm>("f")
            .call(AlarmMsg::Get)
            .await
            .unwrap()
            .is_empty()
    );
}
