//! The edges the first review found: impossible rollbacks, dead letters and their batches,
//! unencodable replies, panicking user code outside `handle`, and a dropped runtime.

use perennial_core::{CallError, Runtime};
use perennial_storage::{FaultyStore, MemoryStore};

use crate::kinds::{
    Awkward, Counter, Fragile, FragileOp, Op, Shy, ShyCounter, Unbuildable, builder, until,
};

async fn runtime_with_edges() -> (Runtime, FaultyStore<MemoryStore>) {
    let store = FaultyStore::new(MemoryStore::new());
    let rt = Runtime::builder()
        .store(store.clone())
        .register_snapshot::<Counter>()
        .register_snapshot::<Fragile>()
        .register_snapshot::<Awkward>()
        .register_snapshot::<Unbuildable>()
        .register_snapshot::<ShyCounter>()
        .start()
        .await
        .unwrap();
    (rt, store)
}

/// A state that does not round-trip makes the next rollback impossible. The caller of that
/// step gets `corrupt_state`, but an earlier step still being committed is not failed: its
/// caller gets its `Ok` (it is durable), and nothing else is disturbed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_impossible_rollback_fails_only_its_own_call() {
    let (rt, store) = runtime_with_edges().await;
    let h = rt.get::<Fragile>("f");
    h.call(FragileOp::Set(1.0)).await.unwrap();
    store.hold_commits();
    let nan = tokio::spawn({
        let h = h.clone();
        async move { h.call(FragileOp::Set(f64::NAN)).await }
    });
    until("the NaN step is in flight", || rt.stats().inflight == 1).await;
    match h.call(FragileOp::Refuse).await {
        Err(e @ CallError::CorruptState { .. }) => assert_eq!(e.code(), "corrupt_state"),
        other => panic!("expected corrupt_state, got {other:?}"),
    }
    store.release_commits();
    nan.await
        .unwrap()
        .expect("the NaN step is durable: its call succeeded");
    // The stored state is `{"x":null}`, which no longer decodes: the entity says so, then
    // is quarantined.
    assert!(matches!(
        h.call(FragileOp::Set(2.0)).await,
        Err(CallError::CorruptState { .. })
    ));
    assert!(matches!(
        h.call(FragileOp::Set(2.0)).await,
        Err(CallError::Quarantined(_))
    ));
    // Other entities are not disturbed.
    assert_eq!(rt.get::<Counter>("c").call(Op::Add(1)).await.unwrap(), 1);
    rt.shutdown().await;
}

/// A dead letter's reply waits for the batch that writes it: if that batch fails, the caller
/// gets a storage error, not `dead_lettered`, even if the entity's earlier step committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_reply_waits_for_its_own_batch() {
    let (builder, store) = builder();
    let rt = builder.max_attempts(3).start().await.unwrap();
    let h = rt.get::<Counter>("d");
    store.hold_commits();
    // Commit attempt 1: this add. Attempt 2: the dead letter, which fails.
    store.fail_every(2);
    let add = tokio::spawn({
        let h = h.clone();
        async move { h.call(Op::Add(1)).await }
    });
    // The add's batch alone is attempt 1: the dead letter must not join it.
    until("the add's batch is held", || store.held() == 1).await;
    let panics: Vec<_> = (0..3)
        .map(|_| {
            let h = h.clone();
            tokio::spawn(async move { h.call(Op::AddThenPanic(1)).await })
        })
        .collect();
    let restarts = || {
        rt.stats()
            .kinds
            .into_iter()
            .find(|k| k.kind == "counter")
            .unwrap()
            .restarts
    };
    until("all three panics are handled", || restarts() == 3).await;
    store.release_commits();
    assert_eq!(add.await.unwrap().unwrap(), 1);
    let mut outcomes = Vec::new();
    for p in panics {
        outcomes.push(match p.await.unwrap() {
            Err(e) => e.code().to_owned(),
            Ok(v) => format!("ok {v}"),
        });
    }
    outcomes.sort();
    assert_eq!(
        outcomes,
        ["handler_panicked", "handler_panicked", "storage_io"]
    );
    assert!(rt.admin().dead_letters(None).await.unwrap().is_empty());
    rt.shutdown().await;
}

/// A reply that cannot be encoded is reported as applied: the step is durable.
#[tokio::test]
async fn an_unencodable_reply_says_the_step_was_applied() {
    let (rt, _store) = runtime_with_edges().await;
    match rt.call_json("awkward", "a", b"null").await {
        Err(e @ CallError::UnencodableReply { .. }) => {
            assert_eq!(e.code(), "unencodable_reply");
            assert!(e.to_string().contains("was applied"), "{e}");
        }
        other => panic!("expected unencodable_reply, got {other:?}"),
    }
    // Typed callers are unaffected, and see the first call's effect.
    assert_eq!(rt.get::<Awkward>("a").call(()).await.unwrap().len(), 1);
    rt.shutdown().await;
}

/// User code that panics outside `handle` fails the call and never leaves the entity stuck.
#[tokio::test]
async fn panics_in_default_or_in_a_messages_serialize_never_wedge_an_entity() {
    let (rt, _store) = runtime_with_edges().await;
    for _ in 0..3 {
        assert!(matches!(
            rt.get::<Unbuildable>("u").call(()).await,
            Err(CallError::Panicked { .. })
        ));
    }
    // The message is encoded only to dead-letter it; its panic does not stop the step.
    let h = rt.get::<ShyCounter>("s");
    assert_eq!(h.call(Shy).await.unwrap(), 1);
    assert_eq!(h.call(Shy).await.unwrap(), 2);
    rt.shutdown().await;
}

/// Dropping the runtime without `shutdown` still answers the calls already admitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_runtime_still_answers_admitted_calls() {
    let (rt, store) = runtime_with_edges().await;
    store.hold_commits();
    let h = rt.get::<Counter>("late");
    let call = tokio::spawn({
        let h = h.clone();
        async move { h.call(Op::Add(1)).await }
    });
    until("the call is in flight", || rt.stats().inflight == 1).await;
    drop(rt);
    store.release_commits();
    let answer = tokio::time::timeout(std::time::Duration::from_secs(10), call)
        .await
        .expect("the admitted call was answered");
    assert_eq!(answer.unwrap().unwrap(), 1);
    assert!(matches!(
        h.call(Op::Get).await,
        Err(CallError::ShuttingDown)
    ));
}
