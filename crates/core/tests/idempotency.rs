//! Idempotency keys: a retried call gets the first reply, and is not applied twice.

use std::time::Duration;

use perennial_core::{CallError, Runtime};
use perennial_storage::{MemoryStore, Store};
use perennial_types::{EntityId, EntityKey};

use crate::kinds::{Counter, Op, counters};

fn key(id: &str) -> EntityKey {
    EntityKey::new("counter", EntityId::new(id).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_gets_the_first_reply_without_applying_again() {
    let store = MemoryStore::new();
    let rt = counters(&store).await;
    let c = rt.get::<Counter>("c");
    assert_eq!(c.call_idempotent("pay-1", Op::Add(5)).await.unwrap(), 5);
    assert_eq!(c.call_idempotent("pay-1", Op::Add(5)).await.unwrap(), 5);
    assert_eq!(c.call_idempotent("pay-2", Op::Add(5)).await.unwrap(), 10);
    // The same key at another entity is another key.
    let d = rt.get::<Counter>("d");
    assert_eq!(d.call_idempotent("pay-1", Op::Add(1)).await.unwrap(), 1);
    assert_eq!(c.call(Op::Get).await.unwrap(), 10);
    let kept = store.reply(&key("c"), "pay-1").await.unwrap().unwrap();
    assert_eq!(kept.reply, "5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_a_restart_gets_the_first_reply() {
    let store = MemoryStore::new();
    let rt = counters(&store).await;
    rt.get::<Counter>("c")
        .call_idempotent("k", Op::Add(3))
        .await
        .unwrap();
    rt.shutdown().await;
    drop(rt);
    // As if the node crashed after the commit and before the reply left: a new node.
    let rt = counters(&store).await;
    let c = rt.get::<Counter>("c");
    assert_eq!(c.call_idempotent("k", Op::Add(3)).await.unwrap(), 3);
    assert_eq!(c.call(Op::Get).await.unwrap(), 3);
    // By name, the kept bytes come back as they are.
    let json = rt
        .call_json_idempotent("counter", "c", Some("k"), br#"{"add":3}"#)
        .await
        .unwrap();
    assert_eq!(json, "3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_with_one_key_apply_once() {
    let store = MemoryStore::new();
    let rt = counters(&store).await;
    let calls: Vec<_> = (0..20)
        .map(|_| {
            let c = rt.get::<Counter>("c");
            tokio::spawn(async move { c.call_idempotent("once", Op::Add(1)).await })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap().unwrap(), 1);
    }
    assert_eq!(rt.get::<Counter>("c").call(Op::Get).await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_call_is_not_kept() {
    let store = MemoryStore::new();
    let rt = counters(&store).await;
    let c = rt.get::<Counter>("c");
    let refused = c.call_idempotent("k", Op::AddThenReject(1)).await;
    assert!(matches!(refused, Err(CallError::Rejected(_))));
    assert!(store.reply(&key("c"), "k").await.unwrap().is_none());
    assert_eq!(c.call_idempotent("k", Op::Add(2)).await.unwrap(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_expire_after_the_window() {
    let store = MemoryStore::new();
    let rt = Runtime::builder()
        .store(store.clone())
        .register_snapshot::<Counter>()
        .idempotency_window(Duration::from_millis(100))
        .start()
        .await
        .unwrap();
    let c = rt.get::<Counter>("c");
    c.call_idempotent("k", Op::Add(1)).await.unwrap();
    for _ in 0..500 {
        if store.reply(&key("c"), "k").await.unwrap().is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        store.reply(&key("c"), "k").await.unwrap().is_none(),
        "expired"
    );
    // The cached reply went with passivation; the key is new again.
    assert_eq!(rt.admin().passivate_idle(), 0);
    assert_eq!(c.call_idempotent("k", Op::Add(1)).await.unwrap(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_keys_are_refused() {
    let store = MemoryStore::new();
    let rt = counters(&store).await;
    let c = rt.get::<Counter>("c");
    for bad in [String::new(), "k".repeat(257)] {
        let refused = c.call_idempotent(bad, Op::Add(1)).await;
        assert!(matches!(refused, Err(CallError::InvalidIdempotencyKey(_))));
    }
    assert_eq!(c.call(Op::Get).await.unwrap(), 0);
}
