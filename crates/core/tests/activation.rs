//! On-demand activation: lookup-or-create is atomic, state comes from storage, bad input is typed.

use perennial_core::{CallError, Runtime};
use perennial_storage::{MemoryStore, Store};
use perennial_types::{EntityId, EntityKey};

use crate::kinds::{Counter, Op, counters, runtime};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_messages_make_one_activation() {
    let (rt, _store) = runtime().await;
    let calls: Vec<_> = (0..1000)
        .map(|_| {
            let h = rt.get::<Counter>("hot");
            tokio::spawn(async move { h.call(Op::Add(1)).await })
        })
        .collect();
    let mut replies = Vec::new();
    for c in calls {
        replies.push(c.await.unwrap().unwrap());
    }
    replies.sort_unstable();
    // Each call saw a distinct value: they ran one at a time on one state.
    assert_eq!(replies, (1..=1000).collect::<Vec<i64>>());
    let stats = rt.stats();
    let counter = stats.kinds.iter().find(|k| k.kind == "counter").unwrap();
    assert_eq!(counter.activations, 1);
    assert_eq!(counter.resident, 1);
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_is_loaded_from_storage_after_a_restart() {
    let store = MemoryStore::new();
    let rt = counters(&store).await;
    rt.get::<Counter>("c").call(Op::Add(41)).await.unwrap();
    rt.shutdown().await;
    let rt = counters(&store).await;
    assert_eq!(rt.get::<Counter>("c").call(Op::Add(1)).await.unwrap(), 42);
    rt.shutdown().await;
    let key = EntityKey::new("counter", EntityId::new("c").unwrap());
    let record = store.load(&key).await.unwrap().unwrap();
    assert_eq!(record.state, r#"{"value":42}"#);
    assert_eq!(record.version, 2);
}

/// Stored bytes that do not decode: the first call gets `corrupt_state` with the decoder's
/// reason, the entity is quarantined (listed with why), later calls are refused at once
/// without reading storage again, nothing overwrites the bytes, other entities serve, and
/// once the bytes are fixed a release lets the entity serve again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_stored_state_quarantines_the_entity_and_is_left_untouched() {
    let (builder, store) = crate::kinds::builder();
    let key = EntityKey::new("counter", EntityId::new("broken").unwrap());
    store
        .inner()
        .put_raw(key.clone(), r#"{"value":"not a number"}"#, 7);
    let rt = builder.store(store.clone()).start().await.unwrap();
    match rt.get::<Counter>("broken").call(Op::Add(1)).await {
        Err(CallError::CorruptState { key: k, detail }) => {
            assert_eq!(k, key);
            assert!(detail.contains("invalid type"), "{detail}");
        }
        other => panic!("expected CorruptState, got {other:?}"),
    }
    let quarantined = rt.admin().quarantined();
    assert_eq!(quarantined.len(), 1, "{quarantined:?}");
    assert_eq!(quarantined[0].key, key);
    assert_eq!(quarantined[0].code, "corrupt_state");
    assert!(
        quarantined[0].reason.contains("invalid type"),
        "{quarantined:?}"
    );
    assert_eq!(rt.stats().quarantined, 1);
    let loads = store.loads();
    for _ in 0..3 {
        match rt.get::<Counter>("broken").call(Op::Add(1)).await {
            Err(e @ CallError::Quarantined(_)) => {
                assert_eq!(e.code(), "quarantined");
                assert!(e.to_string().contains("counter/broken"), "{e}");
            }
            other => panic!("expected Quarantined, got {other:?}"),
        }
    }
    assert_eq!(
        store.loads(),
        loads,
        "a quarantined entity is not read again"
    );
    // Other entities are unaffected, and the bad bytes are still there, unchanged.
    assert_eq!(rt.get::<Counter>("fine").call(Op::Add(1)).await.unwrap(), 1);
    let record = store.load(&key).await.unwrap().unwrap();
    assert_eq!(
        (record.state.as_str(), record.version),
        (r#"{"value":"not a number"}"#, 7)
    );
    // Fixed by an operator, then released: it serves again.
    store.inner().put_raw(key.clone(), r#"{"value":5}"#, 8);
    assert!(rt.admin().release("counter", "broken").unwrap());
    assert!(
        !rt.admin().release("counter", "broken").unwrap(),
        "released once"
    );
    assert!(rt.admin().quarantined().is_empty());
    assert_eq!(
        rt.get::<Counter>("broken").call(Op::Add(1)).await.unwrap(),
        6
    );
    rt.shutdown().await;
}

/// Released while its bytes are still bad, an entity is quarantined again at once.
#[tokio::test]
async fn a_release_of_bytes_still_bad_quarantines_again() {
    let store = MemoryStore::new();
    let key = EntityKey::new("counter", EntityId::new("still").unwrap());
    store.put_raw(key.clone(), "not json", 3);
    let rt = counters(&store).await;
    let first = rt.get::<Counter>("still").call(Op::Get).await;
    assert!(
        matches!(first, Err(CallError::CorruptState { .. })),
        "{first:?}"
    );
    assert!(rt.admin().release("counter", "still").unwrap());
    let again = rt.get::<Counter>("still").call(Op::Get).await;
    assert!(
        matches!(again, Err(CallError::CorruptState { .. })),
        "{again:?}"
    );
    assert_eq!(rt.admin().quarantined().len(), 1);
    assert!(matches!(
        rt.get::<Counter>("still").call(Op::Get).await,
        Err(CallError::Quarantined(_))
    ));
    rt.shutdown().await;
}

#[tokio::test]
async fn invalid_ids_and_unknown_kinds_are_typed_errors() {
    let (rt, _store) = runtime().await;
    let long = "x".repeat(300);
    assert!(matches!(
        rt.get::<Counter>(&long).call(Op::Get).await,
        Err(CallError::InvalidId(_))
    ));
    assert!(matches!(
        rt.get::<Counter>("").call(Op::Get).await,
        Err(CallError::InvalidId(_))
    ));
    let bare = Runtime::builder()
        .store(MemoryStore::new())
        .start()
        .await
        .unwrap();
    assert!(matches!(
        bare.get::<Counter>("c").call(Op::Get).await,
        Err(CallError::UnknownKind(k)) if k == "counter"
    ));
    rt.shutdown().await;
    bare.shutdown().await;
}

#[tokio::test]
async fn json_calls_decode_dispatch_and_encode() {
    let (rt, _store) = runtime().await;
    assert_eq!(
        rt.call_json("counter", "j", br#"{"add": 5}"#)
            .await
            .unwrap(),
        "5"
    );
    assert_eq!(
        rt.call_json("counter", "j", br#""get""#).await.unwrap(),
        "5"
    );
    match rt.call_json("counter", "j", br#"{"ad": 5}"#).await {
        Err(e @ CallError::BadMessage { .. }) => assert_eq!(e.code(), "bad_message"),
        other => panic!("expected BadMessage, got {other:?}"),
    }
    match rt.call_json("counter", "j", b"{not json").await {
        Err(CallError::BadMessage { .. }) => {}
        other => panic!("expected BadMessage, got {other:?}"),
    }
    match rt.call_json("nope", "j", b"1").await {
        Err(e @ CallError::UnknownKind(_)) => assert_eq!(e.code(), "unknown_kind"),
        other => panic!("expected UnknownKind, got {other:?}"),
    }
    match rt
        .call_json("counter", "j", br#"{"add_then_reject": 5}"#)
        .await
    {
        Err(e @ CallError::Rejected(_)) => {
            assert_eq!(e.code(), "refused");
            assert_eq!(e.to_string(), "refused on purpose");
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
    assert_eq!(
        rt.call_json("counter", "j", br#""get""#).await.unwrap(),
        "5"
    );
    rt.shutdown().await;
}

#[tokio::test]
async fn a_builder_without_a_store_or_with_duplicate_kinds_does_not_start() {
    assert!(matches!(
        Runtime::builder().start().await,
        Err(perennial_core::StartError::NoStore)
    ));
    let twice = Runtime::builder()
        .store(MemoryStore::new())
        .register_snapshot::<Counter>()
        .register_snapshot::<Counter>()
        .start()
        .await;
    assert!(matches!(
        twice,
        Err(perennial_core::StartError::DuplicateKind("counter"))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handle_outliving_its_dropped_runtime_refuses_calls() {
    let store = MemoryStore::new();
    let rt = counters(&store).await;
    let h = rt.get::<Counter>("orphan");
    assert_eq!(h.call(Op::Add(1)).await.unwrap(), 1);
    drop(rt);
    assert!(matches!(
        h.call(Op::Add(1)).await,
        Err(CallError::ShuttingDown)
    ));
    // The acknowledged step is in the store.
    let key = EntityKey::new("counter", EntityId::new("orphan").unwrap());
    assert_eq!(
        store.load(&key).await.unwrap().unwrap().state,
        r#"{"value":1}"#
    );
}

/// A load that fails (an I/O error) fails the calls waiting for it, and leaves nothing
/// behind: the next call loads again, and succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_load_fails_its_callers_and_the_next_call_loads_again() {
    let (rt, store) = runtime().await;
    rt.get::<Counter>("l").call(Op::Add(5)).await.unwrap();
    rt.shutdown().await;
    let (builder, _) = crate::kinds::builder();
    let rt = builder.store(store.clone()).start().await.unwrap();
    store.fail_next_loads(1);
    match rt.get::<Counter>("l").call(Op::Get).await {
        Err(e @ CallError::Storage { .. }) => assert_eq!(e.code(), "storage_io"),
        other => panic!("expected a storage error, got {other:?}"),
    }
    let loads = store.loads();
    assert_eq!(rt.get::<Counter>("l").call(Op::Get).await.unwrap(), 5);
    assert_eq!(store.loads(), loads + 1, "the second call loaded again");
    rt.shutdown().await;
}
