//! Crash semantics: rollback on panic or refusal, dead letters after N, ephemeral kinds.

use perennial_core::CallError;
use perennial_storage::Store;
use perennial_types::{EntityId, EntityKey};

use crate::kinds::{Counter, Op, Scratch, builder, runtime};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_rolls_back_to_the_previous_state() {
    let (rt, _store) = runtime().await;
    let h = rt.get::<Counter>("p");
    h.call(Op::Add(5)).await.unwrap();
    match h.call(Op::AddThenPanic(100)).await {
        Err(e @ CallError::Panicked { .. }) => {
            assert_eq!(e.code(), "handler_panicked");
            assert!(e.to_string().contains("boom after adding 100"), "{e}");
        }
        other => panic!("expected Panicked, got {other:?}"),
    }
    assert_eq!(h.call(Op::Get).await.unwrap(), 5);
    let stats = rt.stats();
    assert_eq!(
        stats
            .kinds
            .iter()
            .find(|k| k.kind == "counter")
            .unwrap()
            .restarts,
        1
    );
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_changes_nothing() {
    let (rt, store) = runtime().await;
    let h = rt.get::<Counter>("r");
    h.call(Op::Add(2)).await.unwrap();
    let commits = store.commits();
    match h.call(Op::AddThenReject(40)).await {
        Err(CallError::Rejected(e)) => assert_eq!(e.to_string(), "refused on purpose"),
        other => panic!("expected Rejected, got {other:?}"),
    }
    assert_eq!(h.call(Op::Get).await.unwrap(), 2);
    // Neither the refusal nor the read changed the state, so neither wrote anything.
    assert_eq!(store.commits(), commits);
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_keeps_panicking_becomes_a_dead_letter() {
    let (builder, store) = builder();
    let rt = builder.max_attempts(3).start().await.unwrap();
    let h = rt.get::<Counter>("poison");
    h.call(Op::Add(7)).await.unwrap();
    for attempt in 1..=3 {
        let result = h.call(Op::AddThenPanic(1)).await;
        match (attempt, result) {
            (1 | 2, Err(CallError::Panicked { .. })) => {}
            (3, Err(e @ CallError::DeadLettered { .. })) => {
                assert_eq!(e.code(), "dead_lettered");
                let CallError::DeadLettered { attempts, .. } = e else {
                    unreachable!()
                };
                assert_eq!(attempts, 3);
            }
            (n, other) => panic!("attempt {n}: unexpected {other:?}"),
        }
        // A different message in between does not reset the count of this one.
        h.call(Op::Get).await.unwrap();
    }
    // The entity goes on, from its last good state.
    assert_eq!(h.call(Op::Add(1)).await.unwrap(), 8);
    let letters = rt.admin().dead_letters(Some("counter")).await.unwrap();
    assert_eq!(letters.len(), 1);
    let letter = &letters[0].letter;
    assert_eq!(letter.key.to_string(), "counter/poison");
    assert_eq!(letter.message, r#"{"add_then_panic":1}"#);
    assert!(
        letter.error.contains("boom after adding 1"),
        "{}",
        letter.error
    );
    assert_eq!(letter.attempts, 3);
    let stats = rt.stats();
    let counter = stats.kinds.iter().find(|k| k.kind == "counter").unwrap();
    assert_eq!((counter.restarts, counter.dead_letters), (3, 1));
    // After being set aside, the same message counts from one again.
    assert!(matches!(
        h.call(Op::AddThenPanic(1)).await,
        Err(CallError::Panicked { .. })
    ));
    rt.shutdown().await;
    let key = EntityKey::new("counter", EntityId::new("poison").unwrap());
    assert_eq!(
        store.inner().load(&key).await.unwrap().unwrap().state,
        r#"{"value":8}"#
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ephemeral_kinds_keep_state_across_panics_in_memory_only() {
    let (rt, store) = runtime().await;
    let h = rt.get::<Scratch>("e");
    h.call(Op::Add(3)).await.unwrap();
    assert!(matches!(
        h.call(Op::AddThenPanic(1)).await,
        Err(CallError::Panicked { .. })
    ));
    assert!(matches!(
        h.call(Op::AddThenReject(1)).await,
        Err(CallError::Rejected(_))
    ));
    assert_eq!(h.call(Op::Add(1)).await.unwrap(), 4);
    assert_eq!(store.commits(), 0, "an ephemeral kind writes nothing");
    let stats = rt.stats();
    let scratch = stats.kinds.iter().find(|k| k.kind == "scratch").unwrap();
    assert_eq!(
        scratch.restarts, 1,
        "panics of ephemeral kinds are counted, never silent"
    );
    // Passivation drops the state: that is what ephemeral means. (The reply can leave a
    // moment before the entity's task goes idle, so ask until it is gone.)
    for _ in 0..1000 {
        if rt.admin().passivate_idle() == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    assert_eq!(h.call(Op::Get).await.unwrap(), 0);
    rt.shutdown().await;
}
