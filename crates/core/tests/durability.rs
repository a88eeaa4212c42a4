//! Durable before acknowledged: output gating, group commit, failed batches, fencing, shutdown.

use std::time::Duration;

use perennial_core::{CallError, Plumbing};
use perennial_storage::{MemoryStore, Store};
use perennial_types::{EntityId, EntityKey, ShardId};

use crate::kinds::{Counter, Op, counters, runtime, until};

async fn stored_value(store: &impl Store, id: &str) -> Option<String> {
    let key = EntityKey::new("counter", EntityId::new(id).unwrap());
    store.load(&key).await.unwrap().map(|r| r.state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_wait_until_the_step_is_durable() {
    let (rt, store) = runtime().await;
    store.hold_commits();
    let first = tokio::spawn({
        let h = rt.get::<Counter>("gated");
        async move { h.call(Op::Add(1)).await }
    });
    // The entity goes on without waiting for the fsync: its second step runs too...
    let second = tokio::spawn({
        let h = rt.get::<Counter>("gated");
        async move { h.call(Op::Add(1)).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    // ...but neither reply has left, and nothing is in storage yet.
    assert!(!first.is_finished() && !second.is_finished());
    assert_eq!(stored_value(store.inner(), "gated").await, None);
    store.release_commits();
    let mut replies = [
        first.await.unwrap().unwrap(),
        second.await.unwrap().unwrap(),
    ];
    replies.sort_unstable();
    assert_eq!(replies, [1, 2]);
    assert_eq!(
        stored_value(store.inner(), "gated").await.as_deref(),
        Some(r#"{"value":2}"#)
    );
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_steps_share_one_commit() {
    let (rt, store) = runtime().await;
    // A lone call pays one commit.
    rt.get::<Counter>("lone").call(Op::Add(1)).await.unwrap();
    assert_eq!(store.commits(), 1);
    // While one commit is in progress, every new step waits for the next one.
    store.hold_commits();
    let blocker = tokio::spawn({
        let h = rt.get::<Counter>("blocker");
        async move { h.call(Op::Add(1)).await }
    });
    until("the blocker is in flight", || rt.stats().inflight == 1).await;
    let calls: Vec<_> = (0..500)
        .map(|i| {
            let h = rt.get::<Counter>(format!("e{i}"));
            tokio::spawn(async move { h.call(Op::Add(1)).await })
        })
        .collect();
    until("all 501 calls are in flight", || rt.stats().inflight == 501).await;
    store.release_commits();
    blocker.await.unwrap().unwrap();
    for c in calls {
        assert_eq!(c.await.unwrap().unwrap(), 1);
    }
    // 1 (lone) + 1 (blocker) + the 500 others in very few batches.
    let commits = store.commits();
    assert!(commits <= 5, "500 concurrent steps took {commits} commits");
    assert!(
        store.largest_batch() >= 400,
        "largest batch {}",
        store.largest_batch()
    );
    let stats = rt.stats();
    assert_eq!(stats.commit.steps, 502);
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_batch_fails_its_steps_and_the_entity_reloads_durable_state() {
    let (rt, store) = runtime().await;
    let h = rt.get::<Counter>("f");
    assert_eq!(h.call(Op::Add(10)).await.unwrap(), 10);
    store.fail_next_commits(1);
    match h.call(Op::Add(5)).await {
        Err(CallError::Storage { key, source }) => {
            assert_eq!(key.to_string(), "counter/f");
            assert!(source.to_string().contains("injected"), "{source}");
        }
        other => panic!("expected a storage error, got {other:?}"),
    }
    // The lost step is not in memory either: the entity continues from durable state.
    assert_eq!(h.call(Op::Get).await.unwrap(), 10);
    assert_eq!(h.call(Op::Add(1)).await.unwrap(), 11);
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn later_steps_computed_from_a_lost_step_are_discarded_too() {
    let (rt, store) = runtime().await;
    let h = rt.get::<Counter>("chain");
    h.call(Op::Add(100)).await.unwrap();
    // Step A goes into a batch that is held, then fails; step B is computed from A's state
    // meanwhile and waits for the next batch. B must not be written.
    store.hold_commits();
    store.fail_next_commits(1);
    let a = tokio::spawn({
        let h = h.clone();
        async move { h.call(Op::Add(1)).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let b = tokio::spawn({
        let h = h.clone();
        async move { h.call(Op::Add(1)).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    store.release_commits();
    assert!(matches!(a.await.unwrap(), Err(CallError::Storage { .. })));
    assert!(matches!(b.await.unwrap(), Err(CallError::Storage { .. })));
    assert_eq!(h.call(Op::Get).await.unwrap(), 100);
    assert_eq!(
        stored_value(store.inner(), "chain").await.as_deref(),
        Some(r#"{"value":100}"#)
    );
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_runtime_on_the_same_store_fences_the_first() {
    let store = MemoryStore::new();
    let first = counters(&store).await;
    first.get::<Counter>("z").call(Op::Add(1)).await.unwrap();
    let second = counters(&store).await;
    assert!(Plumbing::of(&second).epoch_of(ShardId(0)) > Plumbing::of(&first).epoch_of(ShardId(0)));
    match first.get::<Counter>("z").call(Op::Add(1)).await {
        Err(e @ CallError::Fenced { .. }) => assert_eq!(e.code(), "fenced"),
        other => panic!("expected Fenced, got {other:?}"),
    }
    assert_eq!(
        second.get::<Counter>("z").call(Op::Add(10)).await.unwrap(),
        11
    );
    first.shutdown().await;
    second.shutdown().await;
    assert_eq!(
        stored_value(&store, "z").await.as_deref(),
        Some(r#"{"value":11}"#)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_every_accepted_call_then_refuses_new_ones() {
    let (rt, store) = runtime().await;
    let calls: Vec<_> = (0..200)
        .map(|i| {
            let h = rt.get::<Counter>(format!("s{}", i % 20));
            tokio::spawn(async move { h.call(Op::Add(1)).await })
        })
        .collect();
    tokio::task::yield_now().await;
    rt.shutdown().await;
    let mut ok = 0;
    for c in calls {
        match c.await.unwrap() {
            Ok(_) => ok += 1,
            Err(CallError::ShuttingDown) => {}
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    let mut stored = 0;
    for i in 0..20 {
        if let Some(json) = stored_value(store.inner(), &format!("s{i}")).await {
            let v: serde_json::Value = serde_json::from_str(&json).unwrap();
            stored += v["value"].as_i64().unwrap();
        }
    }
    assert_eq!(
        stored, ok,
        "every acknowledged add is stored, and nothing else"
    );
    assert!(matches!(
        rt.get::<Counter>("late").call(Op::Get).await,
        Err(CallError::ShuttingDown)
    ));
}

/// Under load with failing commits, an error reply never hides an applied step and an `Ok`
/// reply never hides a lost one: each counter ends at exactly its number of `Ok` adds.
/// (Replies of committed batches are released off the committer thread; a failure must not
/// overtake the release of an earlier, durable step of the same entity.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_failing_commits_every_ok_is_applied_and_every_error_is_not() {
    let (rt, store) = runtime().await;
    store.fail_every(7);
    let entities = 4;
    let callers: Vec<_> = (0..32)
        .map(|c| {
            let h = rt.get::<Counter>(format!("hot{}", c % entities));
            tokio::spawn(async move {
                let mut ok = 0i64;
                for _ in 0..150 {
                    match h.call(Op::Add(1)).await {
                        Ok(_) => ok += 1,
                        Err(CallError::Storage { .. }) => {}
                        Err(e) => panic!("unexpected {e}"),
                    }
                }
                (c % entities, ok)
            })
        })
        .collect();
    let mut ok = vec![0i64; entities];
    for c in callers {
        let (e, n) = c.await.unwrap();
        ok[e] += n;
    }
    store.fail_every(0);
    for (e, expected) in ok.iter().enumerate() {
        let value = rt
            .get::<Counter>(format!("hot{e}"))
            .call(Op::Get)
            .await
            .unwrap();
        assert_eq!(
            value, *expected,
            "hot{e}: {value} applied, {expected} acknowledged"
        );
    }
    let failed = store.commits();
    assert!(
        ok.iter().sum::<i64>() < 32 * 150,
        "no call failed: the failures never hit"
    );
    assert!(failed > 10);
    rt.shutdown().await;
}
