//! Memory bounds and overload: resident caps (count and bytes) and bounded mailboxes.

use perennial_core::{CallError, Overload};

use crate::kinds::{Counter, Op, SLEEPERS, builder, until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_resident_count_stays_under_its_cap() {
    let (builder, _store) = builder();
    let rt = builder.max_resident(50).start().await.unwrap();
    for i in 0..1000 {
        rt.get::<Counter>(format!("c{i}"))
            .call(Op::Add(i))
            .await
            .unwrap();
    }
    let stats = rt.stats();
    assert!(
        stats.resident <= 60,
        "{} resident with a cap of 50",
        stats.resident
    );
    // Evicted entities come back with their state.
    for i in (0..1000).step_by(37) {
        assert_eq!(
            rt.get::<Counter>(format!("c{i}"))
                .call(Op::Get)
                .await
                .unwrap(),
            i
        );
    }
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resident_bytes_stay_under_their_cap() {
    let (builder, _store) = builder();
    // Each state is `{"value":N}`, about 12 bytes.
    let rt = builder.max_resident_bytes(1200).start().await.unwrap();
    for i in 0..1000 {
        rt.get::<Counter>(format!("c{i}"))
            .call(Op::Add(1))
            .await
            .unwrap();
    }
    let stats = rt.stats();
    assert!(
        stats.resident_bytes <= 1400,
        "{} bytes resident",
        stats.resident_bytes
    );
    assert!(stats.resident <= 120, "{} resident", stats.resident);
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_mailbox_refuses_with_overloaded() {
    let (builder, _store) = builder();
    let rt = builder.mailbox_capacity(4).start().await.unwrap();
    let h = rt.get::<Counter>("busy");
    // The first message keeps the entity busy while the others queue.
    let sleeping = SLEEPERS.load(std::sync::atomic::Ordering::SeqCst);
    let sleeper = tokio::spawn({
        let h = h.clone();
        async move { h.call(Op::Sleep(600)).await }
    });
    until("the entity is busy", || {
        SLEEPERS.load(std::sync::atomic::Ordering::SeqCst) > sleeping
    })
    .await;
    let calls: Vec<_> = (0..20)
        .map(|_| {
            let h = h.clone();
            tokio::spawn(async move { h.call(Op::Add(1)).await })
        })
        .collect();
    let mut ok = 0;
    let mut overloaded = 0;
    for c in calls {
        match c.await.unwrap() {
            Ok(_) => ok += 1,
            Err(CallError::Overloaded {
                scope: Overload::Entity(key),
            }) => {
                assert_eq!(key.to_string(), "counter/busy");
                overloaded += 1;
            }
            Err(e) => panic!("unexpected {e}"),
        }
    }
    sleeper.await.unwrap().unwrap();
    assert_eq!(ok, 4);
    assert_eq!(overloaded, 16);
    assert_eq!(h.call(Op::Get).await.unwrap(), 4);
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_calls_in_flight_refuse_with_overloaded() {
    let (builder, store) = builder();
    let rt = builder.max_inflight(8).start().await.unwrap();
    store.hold_commits();
    let calls: Vec<_> = (0..8)
        .map(|i| {
            let h = rt.get::<Counter>(format!("n{i}"));
            tokio::spawn(async move { h.call(Op::Add(1)).await })
        })
        .collect();
    until("eight calls are in flight", || rt.stats().inflight == 8).await;
    match rt.get::<Counter>("one-too-many").call(Op::Add(1)).await {
        Err(
            e @ CallError::Overloaded {
                scope: Overload::Node,
            },
        ) => assert_eq!(e.code(), "overloaded"),
        other => panic!("expected a node overload, got {other:?}"),
    }
    store.release_commits();
    for c in calls {
        c.await.unwrap().unwrap();
    }
    assert_eq!(
        rt.get::<Counter>("one-too-many")
            .call(Op::Add(1))
            .await
            .unwrap(),
        1
    );
    rt.shutdown().await;
}
