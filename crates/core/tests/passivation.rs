//! Passivation: idle timeouts that depend on state, and races between messages and passivation.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use perennial_core::{EntityRef, Runtime};
use perennial_storage_sqlite::SqliteStore;

use crate::kinds::{Fleeting, Op, builder, until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_entities_are_passivated_by_their_own_timeout() {
    let (builder, _store) = builder();
    let rt = builder
        .passivation_interval(Duration::from_millis(5))
        .start()
        .await
        .unwrap();
    rt.get::<Fleeting>("goes").call(Op::Add(1)).await.unwrap();
    rt.get::<Fleeting>("stays").call(Op::Add(-1)).await.unwrap();
    let fleeting = || {
        rt.stats()
            .kinds
            .into_iter()
            .find(|k| k.kind == "fleeting")
            .unwrap()
    };
    until("the idle entity is passivated", || {
        fleeting().passivations >= 1
    })
    .await;
    // Give the sweeper many more rounds: the other one stays, its timeout is an hour.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!((fleeting().resident, fleeting().passivations), (1, 1));
    // The passivated one comes back with its state.
    assert_eq!(rt.get::<Fleeting>("goes").call(Op::Get).await.unwrap(), 1);
    rt.shutdown().await;
}

/// Thousands of entities that passivate the moment they are idle, under concurrent adds:
/// messages race passivation constantly, and none may be lost or fail.
async fn race(rt: &Runtime, entities: usize, workers: usize, adds_per_worker: usize) {
    let acked = Arc::new(AtomicI64::new(0));
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let rt = rt.clone();
            let acked = Arc::clone(&acked);
            tokio::spawn(async move {
                for i in 0..adds_per_worker {
                    let id = format!("e{}", (w * 7919 + i * 104_729) % entities);
                    let h: EntityRef<Fleeting> = rt.get(id);
                    h.call(Op::Add(1))
                        .await
                        .expect("a call racing passivation failed");
                    acked.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let mut total = 0;
    for e in 0..entities {
        total += rt
            .get::<Fleeting>(format!("e{e}"))
            .call(Op::Get)
            .await
            .unwrap();
    }
    assert_eq!(
        total,
        acked.load(Ordering::Relaxed),
        "adds were lost or doubled"
    );
    let stats = rt.stats();
    let fleeting = stats.kinds.iter().find(|k| k.kind == "fleeting").unwrap();
    assert!(
        fleeting.passivations > entities as u64 / 2,
        "the race did not happen: only {} passivations",
        fleeting.passivations
    );
    assert!(fleeting.activations > entities as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_racing_passivation_are_never_lost_in_memory() {
    let (builder, _store) = builder();
    let rt = builder
        .passivation_interval(Duration::from_millis(1))
        .start()
        .await
        .unwrap();
    race(&rt, 2000, 64, 300).await;
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_racing_passivation_are_never_lost_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    let rt = Runtime::builder()
        .store(store.clone())
        .register_snapshot::<Fleeting>()
        .passivation_interval(Duration::from_millis(1))
        .start()
        .await
        .unwrap();
    race(&rt, 1000, 32, 100).await;
    rt.shutdown().await;
}
