//! Change feeds: every committed step of a kind that keeps one, in commit order, in the
//! step's own commit (so a failed step is not in it, and a restart loses none), and only for
//! kinds that keep one.

use std::time::Duration;

use perennial_core::{FeedError, Runtime, Snapshots, StartError};
use perennial_storage::{FaultyStore, MemoryStore};

use crate::journal::{Ledger, LedgerOp};
use crate::kinds::{Counter, Op};

const WEEK: Duration = Duration::from_secs(7 * 24 * 3600);

async fn started(store: &FaultyStore<MemoryStore>) -> Runtime {
    Runtime::builder()
        .store(store.clone())
        .register_snapshot::<Counter>()
        .change_feed::<Counter>(WEEK)
        .register_journal_with_snapshots::<Ledger>(Snapshots::every(1_000))
        .change_feed::<Ledger>(WEEK)
        .start()
        .await
        .unwrap()
}

/// (id, version, whether the state is kept) of every change of `kind` after `after`.
async fn changes(rt: &Runtime, kind: &str, after: u64) -> Vec<(String, u64, bool)> {
    let page = rt.changes(kind, after, 1000).await.unwrap();
    page.changes
        .into_iter()
        .map(|c| (c.id, c.version, c.state.is_some()))
        .collect()
}

#[tokio::test]
async fn every_committed_step_is_in_the_feed_in_order_and_survives_a_restart() {
    let store = FaultyStore::new(MemoryStore::new());
    let rt = started(&store).await;
    let (c1, c2) = (rt.get::<Counter>("c1"), rt.get::<Counter>("c2"));
    c1.call(Op::Add(1)).await.unwrap();
    c2.call(Op::Add(5)).await.unwrap();
    c1.call(Op::Add(2)).await.unwrap();
    // A read that changes nothing writes nothing, so it is no change.
    c1.call(Op::Get).await.unwrap();
    let page = rt.changes("counter", 0, 1000).await.unwrap();
    let states: Vec<(&str, u64, Option<&str>)> = page
        .changes
        .iter()
        .map(|c| (c.id.as_str(), c.version, c.state.as_deref()))
        .collect();
    assert_eq!(
        states,
        [
            ("c1", 1, Some(r#"{"value":1}"#)),
            ("c2", 1, Some(r#"{"value":5}"#)),
            ("c1", 2, Some(r#"{"value":3}"#)),
        ]
    );
    // A failed commit keeps its step out of the feed.
    store.fail_next_commits(1);
    assert!(c2.call(Op::Add(100)).await.is_err());
    // Journal kinds' steps, with their state after; a deletion, without.
    let ledger = rt.get::<Ledger>("l1");
    ledger.call(LedgerOp::Add(7)).await.unwrap();
    ledger.call(LedgerOp::Get).await.unwrap();
    rt.admin().delete("counter", "c2", true).await.unwrap();
    assert_eq!(
        changes(&rt, "ledger", 0).await,
        [("l1".to_owned(), 1, true)]
    );
    let cursor = page.changes[2].seq;
    assert_eq!(
        changes(&rt, "counter", cursor).await,
        [("c2".to_owned(), 2, false)]
    );
    rt.shutdown().await;
    // After a restart the feed is all there, and goes on with higher numbers.
    let rt = started(&store).await;
    rt.get::<Counter>("c1").call(Op::Add(1)).await.unwrap();
    let all = changes(&rt, "counter", 0).await;
    let ids: Vec<(&str, u64)> = all.iter().map(|(i, v, _)| (i.as_str(), *v)).collect();
    assert_eq!(ids, [("c1", 1), ("c2", 1), ("c1", 2), ("c2", 2), ("c1", 3)]);
    rt.shutdown().await;
}

#[tokio::test]
async fn only_kinds_that_keep_a_feed_have_one() {
    let store = FaultyStore::new(MemoryStore::new());
    let rt = Runtime::builder()
        .store(store.clone())
        .register_snapshot::<Counter>()
        .start()
        .await
        .unwrap();
    rt.get::<Counter>("c1").call(Op::Add(1)).await.unwrap();
    assert!(matches!(
        rt.changes("counter", 0, 10).await,
        Err(FeedError::NoFeed(_))
    ));
    assert!(matches!(
        rt.changes("nope", 0, 10).await,
        Err(FeedError::UnknownKind(_))
    ));
    assert!(rt.feed_shows_state("counter").is_none());
    rt.shutdown().await;
    let unregistered = Runtime::builder()
        .store(MemoryStore::new())
        .change_feed::<Counter>(WEEK)
        .start()
        .await;
    assert!(matches!(
        unregistered,
        Err(StartError::FeedWithoutKind("counter"))
    ));
    let stateless = Runtime::builder()
        .store(MemoryStore::new())
        .register_journal::<Ledger>()
        .change_feed::<Ledger>(WEEK)
        .start()
        .await;
    assert!(matches!(
        stateless,
        Err(StartError::FeedWithoutState("ledger"))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_changes_expire_and_the_feed_says_so() {
    let rt = Runtime::builder()
        .store(MemoryStore::new())
        .register_snapshot::<Counter>()
        .change_feed::<Counter>(Duration::from_millis(50))
        // Expiry runs with the replies' (a tenth of their window, at least 10 ms).
        .idempotency_window(Duration::from_millis(100))
        .start()
        .await
        .unwrap();
    let c1 = rt.get::<Counter>("c1");
    c1.call(Op::Add(1)).await.unwrap();
    let first = rt.changes("counter", 0, 10).await.unwrap().changes[0].seq;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let page = rt.changes("counter", 0, 10).await.unwrap();
        if page.changes.is_empty() {
            assert_eq!(page.expired_through, first);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never expired: {page:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    rt.shutdown().await;
}
