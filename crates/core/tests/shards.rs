//! Serving shards as a cluster's lease manager grants them: calls for shards not served are
//! refused without running, a lapsed time stops service, a handoff passivates the shard's
//! entities and leaves its timers to the next owner.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use perennial_core::{CallError, Courier, Delivery, Parcel, Plumbing, Runtime};
use perennial_storage::{MemoryStore, Store};
use perennial_types::{ShardId, shard_of};

use crate::journal::{Ledger, LedgerOp};
use crate::kinds::{Counter, Op, until};
use crate::messages::{Inbox, InboxMsg, Sender, SenderMsg};
use crate::timers::{Alarm, AlarmMsg};

fn shard(kind: &str, id: &str) -> ShardId {
    shard_of(kind, id)
}

async fn unclaimed(store: &MemoryStore) -> Runtime {
    Runtime::builder()
        .store(store.clone())
        .register_snapshot::<Counter>()
        .register_snapshot::<Alarm>()
        .start_unclaimed()
        .await
        .unwrap()
}

#[tokio::test]
async fn calls_run_only_for_served_shards_and_only_while_their_time_lasts() {
    let store = MemoryStore::new();
    let rt = unclaimed(&store).await;
    let c1 = shard("counter", "c1");
    let refused = rt.get::<Counter>("c1").call(Op::Add(1)).await;
    assert!(
        matches!(refused, Err(CallError::NotOwner { shard }) if shard == c1),
        "{refused:?}"
    );

    let epoch = store.claim("a", &[c1]).await.unwrap();
    Plumbing::of(&rt).serve(&[(c1, epoch)], Instant::now() + Duration::from_millis(300));
    assert_eq!(Plumbing::of(&rt).epoch_of(c1), Some(epoch));
    assert_eq!(Plumbing::of(&rt).served_shards(), vec![(c1, epoch)]);
    assert_eq!(rt.get::<Counter>("c1").call(Op::Add(2)).await.unwrap(), 2);

    // Not renewed in time: the node stops serving the shard, even with the entity resident.
    tokio::time::sleep(Duration::from_millis(350)).await;
    let lapsed = rt.get::<Counter>("c1").call(Op::Add(1)).await;
    assert!(
        matches!(lapsed, Err(CallError::NotOwner { .. })),
        "{lapsed:?}"
    );
    assert!(Plumbing::of(&rt).served_shards().is_empty());

    // Renewed: served again, from the state it had.
    Plumbing::of(&rt).serve(&[], Instant::now() + Duration::from_secs(30));
    assert_eq!(rt.get::<Counter>("c1").call(Op::Add(1)).await.unwrap(), 3);
    rt.shutdown().await;
}

#[tokio::test]
async fn a_node_that_lost_its_shard_to_a_newer_epoch_reloads_before_it_writes() {
    let store = MemoryStore::new();
    let a = unclaimed(&store).await;
    let c1 = shard("counter", "c1");
    let first = store.claim("a", &[c1]).await.unwrap();
    Plumbing::of(&a).serve(&[(c1, first)], Instant::now() + Duration::from_secs(30));
    assert_eq!(a.get::<Counter>("c1").call(Op::Add(1)).await.unwrap(), 1);

    // Another node takes the shard (a's lease lapsed) and writes.
    let b = unclaimed(&store).await;
    let second = store.claim("b", &[c1]).await.unwrap();
    Plumbing::of(&b).serve(&[(c1, second)], Instant::now() + Duration::from_secs(30));
    assert_eq!(b.get::<Counter>("c1").call(Op::Add(10)).await.unwrap(), 11);
    Plumbing::of(&b)
        .hand_off(&[c1], Duration::from_secs(5))
        .await;

    // a still holds the entity in memory under the old epoch: its write is fenced, not lost
    // over b's, and the next call reads b's state under the epoch a serves now.
    let fenced = a.get::<Counter>("c1").call(Op::Add(100)).await;
    assert!(
        matches!(fenced, Err(CallError::Fenced { .. })),
        "{fenced:?}"
    );
    let third = store.claim("a", &[c1]).await.unwrap();
    Plumbing::of(&a).serve(&[(c1, third)], Instant::now() + Duration::from_secs(30));
    assert_eq!(
        a.get::<Counter>("c1").call(Op::Add(100)).await.unwrap(),
        111
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_handoff_passivates_the_shards_entities_and_its_timers_move_with_it() {
    let store = MemoryStore::new();
    let a = unclaimed(&store).await;
    let s = shard("alarm", "a1");
    let epoch = store.claim("a", &[s]).await.unwrap();
    Plumbing::of(&a).serve(&[(s, epoch)], Instant::now() + Duration::from_secs(30));
    let set = AlarmMsg::Set {
        name: "later".into(),
        ms: 400,
    };
    a.get::<Alarm>("a1").call(set).await.unwrap();
    assert_eq!(a.stats().resident, 1);

    let busy = Plumbing::of(&a)
        .hand_off(&[s], Duration::from_secs(5))
        .await;
    assert_eq!(busy, 0);
    assert_eq!(a.stats().resident, 0, "the shard's entities left memory");
    assert!(Plumbing::of(&a).served_shards().is_empty());
    let refused = a.get::<Alarm>("a1").call(AlarmMsg::Get).await;
    assert!(
        matches!(refused, Err(CallError::NotOwner { .. })),
        "{refused:?}"
    );

    // The next owner finds the timer in storage and fires it; a fires nothing.
    let b = unclaimed(&store).await;
    let next = store.claim("b", &[s]).await.unwrap();
    Plumbing::of(&b).serve(&[(s, next)], Instant::now() + Duration::from_secs(30));
    let fired = || async {
        b.get::<Alarm>("a1")
            .call(AlarmMsg::Get)
            .await
            .unwrap()
            .contains(&"later".to_owned())
    };
    let start = Instant::now();
    while !fired().await {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the timer never fired at b"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    until("a stays out", || a.stats().resident == 0).await;
    a.shutdown().await;
    b.shutdown().await;
}

/// Carries parcels to another runtime, each twice (as a courier does when an answer is lost
/// and it carries the row again), and counts them.
struct Twice {
    to: Runtime,
    carried: Arc<AtomicUsize>,
}

impl Courier for Twice {
    fn carry(&self, parcel: Parcel) -> Pin<Box<dyn Future<Output = Delivery> + Send>> {
        let to = self.to.clone();
        let carried = Arc::clone(&self.carried);
        Box::pin(async move {
            carried.fetch_add(1, Ordering::SeqCst);
            let first = Plumbing::of(&to).deliver(parcel.clone()).await;
            let again = Plumbing::of(&to).deliver(parcel).await;
            assert_eq!(first, again, "a row carried again gets the same answer");
            again
        })
    }
}

/// Messages between entities on two nodes: the sender's node hands a message for an entity
/// it does not serve to its courier; the receiving node applies it once, however often it
/// is carried, and deletes the row in the same step; the receipt travels back the same way.
#[tokio::test]
async fn messages_to_entities_on_another_node_are_carried_and_applied_once() {
    let store = MemoryStore::new();
    let start = || async {
        Runtime::builder()
            .store(store.clone())
            .register_snapshot::<Sender>()
            .register_snapshot::<Inbox>()
            .start_unclaimed()
            .await
            .unwrap()
    };
    let (a, b) = (start().await, start().await);
    let (s, i) = (shard("sender", "s1"), shard("inbox", "i1"));
    assert_ne!(s, i);
    let long = Instant::now() + Duration::from_secs(60);
    Plumbing::of(&a).serve(&[(s, store.claim("a", &[s]).await.unwrap())], long);
    Plumbing::of(&b).serve(&[(i, store.claim("b", &[i]).await.unwrap())], long);
    let (to_b, to_a) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    assert!(Plumbing::of(&a).set_courier(Arc::new(Twice {
        to: b.clone(),
        carried: Arc::clone(&to_b),
    })));
    Plumbing::of(&b).set_courier(Arc::new(Twice {
        to: a.clone(),
        carried: Arc::clone(&to_a),
    }));
    for n in 1..=3 {
        let send = SenderMsg::Send { to: "i1".into(), n };
        a.get::<Sender>("s1").call(send).await.unwrap();
    }
    let start_at = Instant::now();
    loop {
        let receipts = a.get::<Sender>("s1").call(SenderMsg::Get).await.unwrap();
        if receipts.len() == 3 {
            assert_eq!(receipts, [1, 2, 3]);
            break;
        }
        assert!(
            start_at.elapsed() < Duration::from_secs(10),
            "receipts: {receipts:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got = b.get::<Inbox>("i1").call(InboxMsg::Get).await.unwrap();
    assert_eq!(got, [1, 2, 3], "each message applied once, in order");
    assert!(to_b.load(Ordering::SeqCst) >= 3 && to_a.load(Ordering::SeqCst) >= 3);
    let start_at = Instant::now();
    while !store.due(i64::MAX, usize::MAX).await.unwrap().is_empty() {
        assert!(
            start_at.elapsed() < Duration::from_secs(10),
            "rows are left"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.shutdown().await;
    b.shutdown().await;
}

/// A node that lost a shard and takes it back forgets the shard's rows it held in memory:
/// another node may have applied or cancelled them meanwhile, and what is stored decides.
#[tokio::test]
async fn rows_held_across_a_lost_shard_are_read_again_from_storage() {
    let store = MemoryStore::new();
    let a = unclaimed(&store).await;
    let s = shard("alarm", "a1");
    let first = store.claim("a", &[s]).await.unwrap();
    Plumbing::of(&a).serve(&[(s, first)], Instant::now() + Duration::from_secs(30));
    let set = AlarmMsg::Set {
        name: "later".into(),
        ms: 1500,
    };
    a.get::<Alarm>("a1").call(set).await.unwrap();
    // a's lease lapses (no handoff: a stalled node), so a keeps the timer in memory.
    Plumbing::of(&a).serve(&[], Instant::now());
    assert!(Plumbing::of(&a).served_shards().is_empty());

    // b takes the shard and cancels the timer.
    let b = unclaimed(&store).await;
    let second = store.claim("b", &[s]).await.unwrap();
    Plumbing::of(&b).serve(&[(s, second)], Instant::now() + Duration::from_secs(30));
    let cancel = AlarmMsg::Cancel {
        name: "later".into(),
    };
    b.get::<Alarm>("a1").call(cancel).await.unwrap();
    Plumbing::of(&b)
        .hand_off(&[s], Duration::from_secs(5))
        .await;

    // a takes it back before the timer is due: the cancelled timer must not fire.
    let third = store.claim("a", &[s]).await.unwrap();
    Plumbing::of(&a).serve(&[(s, third)], Instant::now() + Duration::from_secs(30));
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let fired = a.get::<Alarm>("a1").call(AlarmMsg::Get).await.unwrap();
    assert!(fired.is_empty(), "a cancelled timer fired: {fired:?}");
    a.shutdown().await;
    b.shutdown().await;
}

/// In a cluster, the node that delivers a row itself keeps its reply under the row's key, so
/// a copy carried in later (by a node that lost the sender's shard mid-delivery) is not
/// applied again.
#[tokio::test]
async fn a_row_delivered_here_is_not_applied_again_when_carried_in() {
    let store = MemoryStore::new();
    let b = Runtime::builder()
        .store(store.clone())
        .register_snapshot::<Sender>()
        .register_snapshot::<Inbox>()
        .start_unclaimed()
        .await
        .unwrap();
    let (s, i) = (shard("sender", "s1"), shard("inbox", "i1"));
    let grants = [
        (s, store.claim("b", &[s]).await.unwrap()),
        (i, store.claim("b", &[i]).await.unwrap()),
    ];
    Plumbing::of(&b).serve(&grants, Instant::now() + Duration::from_secs(60));
    // Hold the message while its row is read, then let it through.
    b.admin().pause("inbox", "i1").await.unwrap();
    let send = SenderMsg::Send {
        to: "i1".into(),
        n: 1,
    };
    b.get::<Sender>("s1").call(send).await.unwrap();
    let row = store
        .due(i64::MAX, 10)
        .await
        .unwrap()
        .into_iter()
        .find(|r| &*r.target.kind == "inbox")
        .expect("the message's row");
    b.admin().resume("inbox", "i1").await.unwrap();
    let start_at = Instant::now();
    while b
        .get::<Inbox>("i1")
        .call(InboxMsg::Get)
        .await
        .unwrap()
        .is_empty()
    {
        assert!(
            start_at.elapsed() < Duration::from_secs(10),
            "never delivered"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The same row, carried in by another node.
    let parcel = Parcel::new(row.owner, row.seq, row.target, row.body);
    assert_eq!(Plumbing::of(&b).deliver(parcel).await, Delivery::Applied);
    let got = b.get::<Inbox>("i1").call(InboxMsg::Get).await.unwrap();
    assert_eq!(got, [1], "applied once");
    b.shutdown().await;
}

/// The regression test of issue 19 (a stale read in a cluster): node a holds an entity in
/// memory; its lease lapses (a stalled node); b takes the shard and acknowledges writes;
/// a takes the shard back under a newer epoch. A read through a must see b's writes: the
/// state a loaded under the old epoch must not answer. For every kind of read: a step that
/// changes nothing (`Snapshot` kind), a refusal, and a read-only step (`Journal` kind).
#[tokio::test]
async fn a_node_that_takes_its_shard_back_reads_what_others_wrote_meanwhile() {
    let store = MemoryStore::new();
    let start = || async {
        Runtime::builder()
            .store(store.clone())
            .register_snapshot::<Counter>()
            .register_journal::<Ledger>()
            .start_unclaimed()
            .await
            .unwrap()
    };
    let (a, b) = (start().await, start().await);
    let (c, l) = (shard("counter", "c1"), shard("ledger", "l1"));
    let long = || Instant::now() + Duration::from_secs(60);
    let claim = |node: &'static str| {
        let store = store.clone();
        async move {
            let epoch = |s| {
                let store = store.clone();
                async move { (s, store.claim(node, &[s]).await.unwrap()) }
            };
            vec![epoch(c).await, epoch(l).await]
        }
    };

    Plumbing::of(&a).serve(&claim("a").await, long());
    assert_eq!(a.get::<Counter>("c1").call(Op::Add(1)).await.unwrap(), 1);
    let ledger = a.get::<Ledger>("l1").call(LedgerOp::Add(1)).await.unwrap();
    assert_eq!(ledger.total, 1);
    assert_eq!(a.stats().resident, 2, "both entities are in a's memory");

    // a stalls past its lease: it stops serving, by its own clock, keeping its entities.
    Plumbing::of(&a).serve(&[], Instant::now());
    let refused = a.get::<Counter>("c1").call(Op::Get).await;
    assert!(
        matches!(refused, Err(CallError::NotOwner { .. })),
        "{refused:?}"
    );

    // b takes the shards, acknowledges writes, and hands them back.
    Plumbing::of(&b).serve(&claim("b").await, long());
    assert_eq!(b.get::<Counter>("c1").call(Op::Add(10)).await.unwrap(), 11);
    let ledger = b.get::<Ledger>("l1").call(LedgerOp::Add(10)).await.unwrap();
    assert_eq!(ledger.total, 11);
    Plumbing::of(&b)
        .hand_off(&[c, l], Duration::from_secs(5))
        .await;

    // a takes them back under newer epochs, with the old states still in memory.
    Plumbing::of(&a).serve(&claim("a").await, long());
    let read = a.get::<Counter>("c1").call(Op::Get).await.unwrap();
    assert_eq!(
        read, 11,
        "stale read: a answered {read} after b acknowledged 11"
    );
    let ledger = a.get::<Ledger>("l1").call(LedgerOp::Get).await.unwrap();
    assert_eq!(
        ledger.total, 11,
        "stale read: a's read-only step answered {} after b acknowledged 11",
        ledger.total
    );

    // Once more, and a refusal (a step that writes nothing) answers from b's state too.
    Plumbing::of(&a).serve(&[], Instant::now());
    Plumbing::of(&b).serve(&claim("b").await, long());
    assert_eq!(
        b.get::<Counter>("c1").call(Op::Add(100)).await.unwrap(),
        111
    );
    Plumbing::of(&b)
        .hand_off(&[c, l], Duration::from_secs(5))
        .await;
    Plumbing::of(&a).serve(&claim("a").await, long());
    let refused = a.get::<Counter>("c1").call(Op::AddThenReject(1)).await;
    assert!(
        matches!(refused, Err(CallError::Rejected(_))),
        "{refused:?}"
    );
    let read = a.get::<Counter>("c1").call(Op::Get).await.unwrap();
    assert_eq!(
        read, 111,
        "stale read: a answered {read} after b acknowledged 111"
    );
    a.shutdown().await;
    b.shutdown().await;
}

/// What a [`Stalling`] entity runs inside its next `Get` step, standing for a node that
/// stalls (SIGSTOP, a long pause) between a step and its reply.
static STALL: parking_lot::Mutex<Option<Box<dyn FnOnce() + Send>>> = parking_lot::Mutex::new(None);

/// A counter whose `Get` runs [`STALL`] while it handles the message.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
struct Stalling {
    value: i64,
}

impl perennial_core::Process for Stalling {
    const KIND: &'static str = "stalling";
    type Msg = Op;
    type Reply = i64;
    type Error = std::convert::Infallible;

    fn handle(
        &mut self,
        op: Op,
        _ctx: &mut perennial_core::Ctx<'_, Self>,
    ) -> Result<i64, Self::Error> {
        match op {
            Op::Add(n) => self.value += n,
            _ => {
                if let Some(stall) = STALL.lock().take() {
                    stall();
                }
            }
        }
        Ok(self.value)
    }
}

/// A read computed while the node served the shard, whose node stopped serving it before
/// the reply left, is refused as not served (its caller then asks the owner): the check is
/// made when the reply is released, not only when the message was admitted.
#[tokio::test]
async fn a_read_is_not_released_once_its_node_stopped_serving_the_shard() {
    let store = MemoryStore::new();
    let a = Runtime::builder()
        .store(store.clone())
        .register_snapshot::<Stalling>()
        .start_unclaimed()
        .await
        .unwrap();
    let s = shard("stalling", "s1");
    Plumbing::of(&a).serve(
        &[(s, store.claim("a", &[s]).await.unwrap())],
        Instant::now() + Duration::from_secs(60),
    );
    assert_eq!(a.get::<Stalling>("s1").call(Op::Add(5)).await.unwrap(), 5);

    let lapse = a.clone();
    *STALL.lock() = Some(Box::new(move || {
        Plumbing::of(&lapse).serve(&[], Instant::now())
    }));
    let read = a.get::<Stalling>("s1").call(Op::Get).await;
    assert!(
        matches!(read, Err(CallError::NotOwner { shard }) if shard == s),
        "stale read: a released {read:?} after it stopped serving the shard"
    );
    a.shutdown().await;
}

/// A watch of an entity whose shard this node takes again under a newer epoch ends: another
/// node may have committed changes it never saw, so the watcher reconnects and reads the
/// state again (the gateway's watch stream sends the stored state first).
#[tokio::test]
async fn a_watch_ends_when_its_shard_is_taken_again_under_a_newer_epoch() {
    let store = MemoryStore::new();
    let a = unclaimed(&store).await;
    let c = shard("counter", "c1");
    let long = || Instant::now() + Duration::from_secs(60);
    Plumbing::of(&a).serve(&[(c, store.claim("a", &[c]).await.unwrap())], long());
    let mut watch = a.watch("counter", "c1").unwrap();
    assert_eq!(a.get::<Counter>("c1").call(Op::Add(1)).await.unwrap(), 1);
    let change = watch.next().await.expect("the change");
    assert_eq!(&*change.state, r#"{"value":1}"#);

    // Renewed under the same epoch: the watch goes on.
    Plumbing::of(&a).serve(&[(c, Plumbing::of(&a).epoch_of(c).unwrap())], long());
    assert_eq!(a.get::<Counter>("c1").call(Op::Add(1)).await.unwrap(), 2);
    assert_eq!(watch.next().await.expect("the change").version, 2);

    // Taken again under a newer epoch: it ends.
    Plumbing::of(&a).serve(&[(c, store.claim("a", &[c]).await.unwrap())], long());
    let ended = tokio::time::timeout(Duration::from_secs(5), watch.next()).await;
    assert_eq!(ended.expect("the watch ended"), None);
    a.shutdown().await;
}
