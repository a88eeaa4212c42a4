//! Watching an entity: each committed change, in order, never before it is durable.

use std::time::Duration;

use perennial_core::{CallError, Snapshots, Watch};
use perennial_storage::MemoryStore;

use crate::journal::{Ledger, LedgerOp, ledgers};
use crate::kinds::{Counter, Op, Scratch, runtime};

/// The next change, or a failure after two seconds.
async fn next(watch: &mut Watch) -> (u64, serde_json::Value) {
    let change = tokio::time::timeout(Duration::from_secs(2), watch.next())
        .await
        .expect("a change within two seconds")
        .expect("the runtime is running");
    (change.version, serde_json::from_str(&change.state).unwrap())
}

/// Whether a change comes within 200 ms.
async fn quiet(watch: &mut Watch) -> bool {
    tokio::time::timeout(Duration::from_millis(200), watch.next())
        .await
        .is_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_sees_each_committed_change_in_order_and_nothing_before_it_is_durable() {
    let (rt, store) = runtime().await;
    let counter = rt.get::<Counter>("c");
    let mut watch = counter.watch().unwrap();
    let mut other = rt.get::<Counter>("d").watch().unwrap();
    for n in 1..=3 {
        counter.call(Op::Add(n)).await.unwrap();
    }
    for (version, value) in [(1, 1), (2, 3), (3, 6)] {
        assert_eq!(
            next(&mut watch).await,
            (version, serde_json::json!({"value": value}))
        );
    }
    // A step that changes nothing writes nothing, and shows nothing.
    counter.call(Op::Add(0)).await.unwrap();
    assert!(quiet(&mut watch).await);
    assert!(
        quiet(&mut other).await,
        "another entity's watcher sees nothing"
    );

    // While commits are held, the step is not durable: the watcher sees nothing yet.
    store.hold_commits();
    let pending = tokio::spawn({
        let counter = counter.clone();
        async move { counter.call(Op::Add(10)).await }
    });
    assert!(
        quiet(&mut watch).await,
        "a change was shown before it was durable"
    );
    store.release_commits();
    pending.await.unwrap().unwrap();
    assert_eq!(next(&mut watch).await.1, serde_json::json!({"value": 16}));

    // A failed batch shows nothing.
    store.fail_next_commits(1);
    assert!(counter.call(Op::Add(100)).await.is_err());
    assert!(quiet(&mut watch).await, "a lost step was shown");
    assert!(matches!(
        rt.get::<Scratch>("s").watch(),
        Err(CallError::NotWatchable(_))
    ));
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_kind_with_snapshots_is_watched_step_by_step() {
    let rt = ledgers(MemoryStore::new(), Some(Snapshots::every(3))).await;
    let ledger = rt.get::<Ledger>("l");
    let mut watch = ledger.watch().unwrap();
    let mut by_name = rt.watch("ledger", "l").unwrap();
    for n in 1..=4 {
        ledger.call(LedgerOp::Add(n)).await.unwrap();
    }
    for total in [1, 3, 6, 10] {
        let (_, state) = next(&mut watch).await;
        assert_eq!(state["total"], total);
        assert_eq!(next(&mut by_name).await.1["total"], total);
    }
    rt.shutdown().await;
}
