//! What operators do: list a kind's entities, passivate now, retry or discard dead letters.

use std::sync::atomic::{AtomicBool, Ordering};

use perennial_core::{AdminError, CallError, Ctx, Passivation, Process};
use serde::{Deserialize, Serialize};

use crate::kinds::{Counter, Op, SLEEPERS, Scratch, builder, runtime, until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entities_are_listed_by_id_with_their_residency() {
    let (rt, _store) = runtime().await;
    for id in ["c", "a", "b", "d"] {
        rt.get::<Counter>(id).call(Op::Add(1)).await.unwrap();
    }
    rt.get::<Counter>("b").call(Op::Add(1)).await.unwrap();
    assert_eq!(
        rt.admin().passivate("counter", "a").unwrap(),
        Passivation::Passivated
    );

    let all = rt.admin().entities("counter", None, 10).await.unwrap();
    let ids: Vec<(&str, bool)> = all.iter().map(|e| (e.id.as_str(), e.resident)).collect();
    assert_eq!(ids, [("a", false), ("b", true), ("c", true), ("d", true)]);
    assert_eq!(all[1].state_version, 2);
    assert!(all[1].updated_at_ms.is_some_and(|t| t > 0));
    let page = rt.admin().entities("counter", Some("b"), 1).await.unwrap();
    assert_eq!(page[0].id, "c");
    assert!(
        rt.admin()
            .entities("counter", Some("d"), 10)
            .await
            .unwrap()
            .is_empty()
    );

    // An ephemeral kind stores nothing: its resident entities are listed.
    rt.get::<Scratch>("s2").call(Op::Add(1)).await.unwrap();
    rt.get::<Scratch>("s1").call(Op::Add(1)).await.unwrap();
    let scratch = rt.admin().entities("scratch", None, 10).await.unwrap();
    let ids: Vec<&str> = scratch.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["s1", "s2"]);
    assert!(
        scratch
            .iter()
            .all(|e| e.resident && e.updated_at_ms.is_none())
    );

    assert!(matches!(
        rt.admin().entities("nope", None, 10).await,
        Err(AdminError::UnknownKind(_))
    ));
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passivation_now_spares_busy_entities_and_loses_nothing() {
    let (rt, _store) = runtime().await;
    for id in ["x", "y", "z"] {
        rt.get::<Counter>(id).call(Op::Add(5)).await.unwrap();
    }
    assert_eq!(
        rt.admin().passivate("counter", "nobody").unwrap(),
        Passivation::NotResident
    );
    // A busy entity stays.
    let started = SLEEPERS.load(Ordering::SeqCst);
    let busy = rt.get::<Counter>("z");
    let sleeping = tokio::spawn(async move { busy.call(Op::Sleep(300)).await });
    until("z is busy", || SLEEPERS.load(Ordering::SeqCst) > started).await;
    assert_eq!(
        rt.admin().passivate("counter", "z").unwrap(),
        Passivation::Busy
    );
    // x and y are idle once their calls' steps end, which may be a moment after the caller
    // has its reply: an entity still busy is spared, so ask again until only z is.
    let (mut passivated, mut busy) = rt.admin().passivate_kind("counter").unwrap();
    until("only z is busy", || {
        if busy > 1 {
            let (more, now) = rt.admin().passivate_kind("counter").unwrap();
            (passivated, busy) = (passivated + more, now);
        }
        busy == 1
    })
    .await;
    assert_eq!((passivated, busy), (2, 1));
    sleeping.await.unwrap().unwrap();
    let resident: Vec<bool> = rt
        .admin()
        .entities("counter", None, 10)
        .await
        .unwrap()
        .iter()
        .map(|e| e.resident)
        .collect();
    assert_eq!(resident, [false, false, true]);
    // Their next messages activate them again, from their stored state.
    assert_eq!(rt.get::<Counter>("x").call(Op::Get).await.unwrap(), 5);
    rt.shutdown().await;
}

/// Switches that make `Flaky` panic, one per test.
static BROKEN: [AtomicBool; 2] = [AtomicBool::new(false), AtomicBool::new(false)];

/// A kind whose messages panic while their switch is on: a bug, then its fix.
#[derive(Default, Serialize, Deserialize)]
struct Flaky {
    total: i64,
}

impl Process for Flaky {
    const KIND: &'static str = "flaky";
    type Msg = (usize, i64);
    type Reply = i64;
    type Error = std::convert::Infallible;

    fn handle(
        &mut self,
        (switch, n): (usize, i64),
        _: &mut Ctx<'_, Self>,
    ) -> Result<i64, Self::Error> {
        self.total += n;
        assert!(!BROKEN[switch].load(Ordering::SeqCst), "broken for now");
        Ok(self.total)
    }
}

/// A runtime where `(switch, n)`, sent to `flaky/f` while broken, was set aside; returns it
/// with the letter's number.
async fn with_dead_letter(switch: usize, n: i64) -> (perennial_core::Runtime, u64) {
    let (builder, _store) = builder();
    let rt = builder
        .register_snapshot::<Flaky>()
        .max_attempts(2)
        .start()
        .await
        .unwrap();
    BROKEN[switch].store(true, Ordering::SeqCst);
    let h = rt.get::<Flaky>("f");
    loop {
        match h.call((switch, n)).await {
            Err(CallError::DeadLettered { .. }) => break,
            Err(CallError::Panicked { .. }) => {}
            other => panic!("{other:?}"),
        }
    }
    let letters = rt.admin().dead_letters(Some("flaky")).await.unwrap();
    let seq = letters.last().unwrap().seq;
    (rt, seq)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_dead_letter_is_applied_once_and_deleted_with_its_step() {
    let (rt, seq) = with_dead_letter(0, 7).await;
    let letter = rt.admin().dead_letter(seq).await.unwrap().unwrap();
    assert_eq!(letter.letter.message, "[0,7]");
    assert!(letter.letter.error.contains("broken for now"), "{letter:?}");

    // Still broken: the retry is set aside again, and the new letter replaces the old.
    let retried = rt.admin().retry_dead_letter(seq).await;
    assert!(
        matches!(retried, Err(AdminError::Entity(CallError::Panicked { .. }))),
        "{retried:?}"
    );
    let retried = rt.admin().retry_dead_letter(seq).await;
    assert!(
        matches!(
            retried,
            Err(AdminError::Entity(CallError::DeadLettered { .. }))
        ),
        "{retried:?}"
    );
    let letters = rt.admin().dead_letters(Some("flaky")).await.unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    let seq = letters[0].seq;

    // Fixed: the retry applies it once, and the letter is gone.
    BROKEN[0].store(false, Ordering::SeqCst);
    assert_eq!(rt.admin().retry_dead_letter(seq).await.unwrap(), "7");
    assert!(rt.admin().dead_letters(None).await.unwrap().is_empty());
    assert!(matches!(
        rt.admin().retry_dead_letter(seq).await,
        Err(AdminError::NoSuchLetter(s)) if s == seq
    ));
    assert_eq!(rt.get::<Flaky>("f").call((0, 0)).await.unwrap(), 7);
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_discarded_dead_letter_is_gone_without_being_applied() {
    let (rt, seq) = with_dead_letter(1, 5).await;
    BROKEN[1].store(false, Ordering::SeqCst);
    assert!(rt.admin().discard_dead_letter(seq).await.unwrap());
    assert!(!rt.admin().discard_dead_letter(seq).await.unwrap());
    assert!(rt.admin().dead_letter(seq).await.unwrap().is_none());
    assert_eq!(rt.get::<Flaky>("f").call((1, 0)).await.unwrap(), 0);
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_entity_refuses_calls_holds_messages_and_drains_them_in_order_on_resume() {
    use crate::messages::{Inbox, InboxMsg, Sender, SenderMsg};
    use perennial_storage::{FaultyStore, MemoryStore, Store};
    use perennial_types::{EntityId, EntityKey};

    let store = FaultyStore::new(MemoryStore::new());
    let start = || async {
        perennial_core::Runtime::builder()
            .store(store.clone())
            .register_snapshot::<Sender>()
            .register_snapshot::<Inbox>()
            .start()
            .await
            .unwrap()
    };
    let send = |n| SenderMsg::Send {
        to: "box".into(),
        n,
    };
    let inbox_key = EntityKey::new("inbox", EntityId::new("box").unwrap());
    let rt = start().await;
    rt.get::<Sender>("s").call(send(1)).await.unwrap();
    let inbox = rt.get::<Inbox>("box");
    let got = || async { inbox.call(InboxMsg::Get).await.unwrap() };
    assert_eq!(
        eventually("the first message arrives", got, |g| g.len() == 1).await,
        [1]
    );

    assert!(rt.admin().pause("inbox", "box").await.unwrap());
    assert!(!rt.admin().pause("inbox", "box").await.unwrap());
    assert!(matches!(
        inbox.call(InboxMsg::Get).await,
        Err(CallError::Paused(key)) if key == inbox_key
    ));
    for n in 2..=4 {
        rt.get::<Sender>("s").call(send(n)).await.unwrap();
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        store.due(i64::MAX, 10).await.unwrap().len(),
        3,
        "the messages wait"
    );
    let listed = rt.admin().entities("inbox", None, 10).await.unwrap();
    assert!(listed[0].paused);

    // The pause is stored: a restarted node keeps it.
    rt.shutdown().await;
    let rt = start().await;
    assert_eq!(rt.admin().paused(), std::slice::from_ref(&inbox_key));
    let inbox = rt.get::<Inbox>("box");
    assert!(matches!(
        inbox.call(InboxMsg::Get).await,
        Err(CallError::Paused(_))
    ));

    assert!(rt.admin().resume("inbox", "box").await.unwrap());
    assert!(!rt.admin().resume("inbox", "box").await.unwrap());
    let got = || async { inbox.call(InboxMsg::Get).await.unwrap() };
    let all = eventually("the held messages arrive", got, |g| g.len() == 4).await;
    assert_eq!(all, [1, 2, 3, 4]);
    let sender = rt.get::<Sender>("s");
    let receipts = || async { sender.call(SenderMsg::Get).await.unwrap() };
    let all = eventually("the receipts arrive", receipts, |r| r.len() == 4).await;
    assert_eq!(all, [1, 2, 3, 4]);
    assert!(rt.admin().paused().is_empty());
    assert!(matches!(
        rt.admin().pause("nope", "x").await,
        Err(AdminError::UnknownKind(_))
    ));
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entities_are_queried_by_state_and_indexed_by_path() {
    use perennial_storage::{Filter, Path};

    let (rt, _store) = runtime().await;
    for (id, n) in [("a", 5), ("b", 500), ("c", 50), ("d", -1)] {
        rt.get::<Counter>(id).call(Op::Add(n)).await.unwrap();
    }
    let filter: Filter = "value >= 50".parse().unwrap();
    let ids = |found: Vec<perennial_storage::EntityState>| -> Vec<String> {
        found.into_iter().map(|e| e.id).collect()
    };
    assert_eq!(
        ids(rt
            .admin()
            .query("counter", &filter, None, 10)
            .await
            .unwrap()),
        ["b", "c"]
    );
    assert_eq!(
        ids(rt
            .admin()
            .query("counter", &filter, Some("b"), 10)
            .await
            .unwrap()),
        ["c"]
    );
    let value = Path::parse("value").unwrap();
    rt.admin().create_index("counter", &value).await.unwrap();
    assert_eq!(
        rt.admin().indexes("counter").await.unwrap(),
        std::slice::from_ref(&value)
    );
    assert_eq!(
        ids(rt.admin().query("counter", &filter, None, 1).await.unwrap()),
        ["b"]
    );
    assert!(rt.admin().drop_index("counter", &value).await.unwrap());

    let each = Path::parse("items[*].name").unwrap();
    assert!(matches!(
        rt.admin().create_index("counter", &each).await,
        Err(AdminError::NotIndexable(p)) if p == "items[*].name"
    ));
    assert!(matches!(
        rt.admin().query("scratch", &filter, None, 10).await,
        Err(AdminError::NotStored(_))
    ));
    assert!(matches!(
        rt.admin().query("nope", &filter, None, 10).await,
        Err(AdminError::UnknownKind(_))
    ));
    rt.shutdown().await;
}

/// Calls `get` until `done` holds for its answer (at most ten seconds), and returns it.
async fn eventually<T, F: std::future::Future<Output = T>>(
    what: &str,
    get: impl Fn() -> F,
    done: impl Fn(&T) -> bool,
) -> T {
    let started = std::time::Instant::now();
    loop {
        let answer = get().await;
        if done(&answer) {
            return answer;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "timed out waiting until {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}
