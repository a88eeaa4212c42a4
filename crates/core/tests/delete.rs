//! Deleting an entity: by a step (`ctx.delete()`) or by an operator. Its state, journal and
//! rows to itself go in one commit, durably; its messages to others still arrive; its next
//! message starts it afresh, whatever was resident, passivated or restarted in between.

use std::time::Duration;

use perennial_core::{AdminError, CallError, Ctx, Process, Runtime};
use perennial_storage::{FaultyStore, MemoryStore, Store};
use perennial_types::{EntityId, EntityKey};
use serde::{Deserialize, Serialize};

use crate::kinds::until;

/// A bin of items that can delete itself, set timers, and send items to other bins.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Bin {
    items: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum BinMsg {
    Put(String),
    /// Puts the item after `ms`, by a timer.
    Later {
        ms: u64,
        item: String,
    },
    /// Sends the item to bin `to`.
    Give {
        to: String,
        item: String,
    },
    /// Puts the item, sends it to `to` as well, then deletes this bin, all in one step.
    PutGiveAndDelete {
        to: String,
        item: String,
    },
    Delete,
    Get,
}

fn handle<K: Process<Msg = BinMsg>>(
    bin: &mut Bin,
    msg: BinMsg,
    ctx: &mut Ctx<'_, K>,
    give: impl Fn(&mut Ctx<'_, K>, String, BinMsg),
) -> Vec<String> {
    match msg {
        BinMsg::Put(item) => bin.items.push(item),
        BinMsg::Later { ms, item } => {
            ctx.schedule(Duration::from_millis(ms), BinMsg::Put(item));
        }
        BinMsg::Give { to, item } => give(ctx, to, BinMsg::Put(item)),
        BinMsg::PutGiveAndDelete { to, item } => {
            bin.items.push(item.clone());
            give(ctx, to, BinMsg::Put(item));
            ctx.delete();
        }
        BinMsg::Delete => ctx.delete(),
        BinMsg::Get => {}
    }
    bin.items.clone()
}

impl Process for Bin {
    const KIND: &'static str = "bin";
    type Msg = BinMsg;
    type Reply = Vec<String>;
    type Error = std::convert::Infallible;

    fn handle(&mut self, msg: BinMsg, ctx: &mut Ctx<'_, Self>) -> Result<Vec<String>, Self::Error> {
        Ok(handle(self, msg, ctx, |ctx, to, msg| {
            ctx.tell::<Bin>(to, msg)
        }))
    }
}

/// The same bin as a `Journal` kind: its new life is rebuilt by replay.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct JournaledBin(Bin);

impl Process for JournaledBin {
    const KIND: &'static str = "journaled_bin";
    type Msg = BinMsg;
    type Reply = Vec<String>;
    type Error = std::convert::Infallible;

    fn handle(&mut self, msg: BinMsg, ctx: &mut Ctx<'_, Self>) -> Result<Vec<String>, Self::Error> {
        Ok(handle(&mut self.0, msg, ctx, |ctx, to, msg| {
            ctx.tell::<JournaledBin>(to, msg);
        }))
    }
}

/// The same bin in memory only.
#[derive(Debug, Default, Clone)]
struct EphemeralBin(Bin);

impl Process for EphemeralBin {
    const KIND: &'static str = "ephemeral_bin";
    type Msg = BinMsg;
    type Reply = Vec<String>;
    type Error = std::convert::Infallible;

    fn handle(&mut self, msg: BinMsg, ctx: &mut Ctx<'_, Self>) -> Result<Vec<String>, Self::Error> {
        Ok(handle(&mut self.0, msg, ctx, |_, _, _| {}))
    }
}

async fn bins(store: &FaultyStore<MemoryStore>) -> Runtime {
    Runtime::builder()
        .store(store.clone())
        .register_snapshot::<Bin>()
        .register_journal::<JournaledBin>()
        .register_ephemeral::<EphemeralBin>()
        .start()
        .await
        .unwrap()
}

fn key(kind: &str, id: &str) -> EntityKey {
    EntityKey::new(kind, EntityId::new(id).unwrap())
}

fn put(item: &str) -> BinMsg {
    BinMsg::Put(item.into())
}

/// What the store holds of an entity: a state, journal entries, rows it owns.
async fn stored(store: &FaultyStore<MemoryStore>, kind: &str, id: &str) -> (bool, usize, usize) {
    let k = key(kind, id);
    let state = store.load(&k).await.unwrap().is_some();
    let journal = store.journal(&k, 0, 1000).await.unwrap().len();
    let rows = store
        .due(i64::MAX, usize::MAX)
        .await
        .unwrap()
        .iter()
        .filter(|row| row.owner == k)
        .count();
    (state, journal, rows)
}

/// Waits until the bin holds `expected`.
async fn items_become(bin: &perennial_core::EntityRef<Bin>, expected: &[&str]) {
    for _ in 0..500 {
        if bin.call(BinMsg::Get).await.unwrap() == expected {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "the bin holds {:?}, not {expected:?}",
        bin.call(BinMsg::Get).await.unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_deletes_its_entity_and_the_next_message_starts_afresh() {
    let store = FaultyStore::new(MemoryStore::new());
    let rt = bins(&store).await;
    let b = rt.get::<Bin>("b1");
    b.call(put("x")).await.unwrap();
    b.call(put("y")).await.unwrap();
    assert!(stored(&store, "bin", "b1").await.0);
    // The deleting step's reply is its own, and leaves once the deletion is durable.
    assert_eq!(b.call(BinMsg::Delete).await.unwrap(), ["x", "y"]);
    assert_eq!(stored(&store, "bin", "b1").await, (false, 0, 0));
    let listed = rt.admin().entities("bin", None, 100).await.unwrap();
    assert!(listed.iter().all(|e| e.id != "b1"), "{listed:?}");
    assert_eq!(rt.admin().stored("bin").await.unwrap(), 0);
    assert!(b.call(BinMsg::Get).await.unwrap().is_empty(), "afresh");
    assert_eq!(b.call(put("z")).await.unwrap(), ["z"]);
    // A new runtime on the same storage sees the new life only.
    rt.shutdown().await;
    let rt = bins(&store).await;
    assert_eq!(rt.get::<Bin>("b1").call(BinMsg::Get).await.unwrap(), ["z"]);
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_kind_is_deleted_whole_and_its_new_life_replays() {
    let store = FaultyStore::new(MemoryStore::new());
    let rt = bins(&store).await;
    let b = rt.get::<JournaledBin>("j1");
    for item in ["a", "b", "c"] {
        b.call(put(item)).await.unwrap();
    }
    assert_eq!(stored(&store, "journaled_bin", "j1").await, (false, 3, 0));
    b.call(BinMsg::Delete).await.unwrap();
    assert_eq!(stored(&store, "journaled_bin", "j1").await, (false, 0, 0));
    // The new life, still in memory, numbers its steps after the deleted ones.
    assert_eq!(b.call(put("d")).await.unwrap(), ["d"]);
    assert_eq!(b.call(put("e")).await.unwrap(), ["d", "e"]);
    let history = rt
        .admin()
        .history("journaled_bin", "j1", 0, 100)
        .await
        .unwrap();
    let steps: Vec<u64> = history.iter().map(|h| h.step).collect();
    assert_eq!(steps, [5, 6], "steps 1-3 and the deleting step 4 are gone");
    // Rebuilt by replay from the first step of the new life.
    rt.shutdown().await;
    let rt = bins(&store).await;
    let b = rt.get::<JournaledBin>("j1");
    assert_eq!(b.call(BinMsg::Get).await.unwrap(), ["d", "e"]);
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timers_die_with_their_entity_and_never_reach_its_new_life() {
    let store = FaultyStore::new(MemoryStore::new());
    let rt = bins(&store).await;
    let b = rt.get::<Bin>("t1");
    b.call(BinMsg::Later {
        ms: 150,
        item: "late".into(),
    })
    .await
    .unwrap();
    assert_eq!(stored(&store, "bin", "t1").await.2, 1);
    b.call(BinMsg::Delete).await.unwrap();
    assert_eq!(stored(&store, "bin", "t1").await, (false, 0, 0));
    b.call(put("new")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        b.call(BinMsg::Get).await.unwrap(),
        ["new"],
        "the timer died"
    );
    // A timer of the new life fires as usual.
    b.call(BinMsg::Later {
        ms: 10,
        item: "fresh".into(),
    })
    .await
    .unwrap();
    items_become(&b, &["new", "fresh"]).await;
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_to_others_outlive_their_sender_and_no_new_life_overwrites_them() {
    let store = FaultyStore::new(MemoryStore::new());
    let rt = bins(&store).await;
    let admin = rt.admin();
    // The target waits (paused), so the sender's messages stay stored.
    admin.pause("bin", "target").await.unwrap();
    let sender = rt.get::<Bin>("sender");
    sender
        .call(BinMsg::PutGiveAndDelete {
            to: "target".into(),
            item: "first".into(),
        })
        .await
        .unwrap();
    assert_eq!(stored(&store, "bin", "sender").await, (false, 0, 1));
    // A new life, after the sender left memory: its message must not take the first's
    // number (it would overwrite it).
    // (Busy for a moment while its run loop ends the round that deleted it.)
    until("the sender leaves memory", || {
        admin.passivate("bin", "sender").unwrap() == perennial_core::Passivation::Passivated
    })
    .await;
    sender
        .call(BinMsg::Give {
            to: "target".into(),
            item: "second".into(),
        })
        .await
        .unwrap();
    assert_eq!(stored(&store, "bin", "sender").await.2, 2);
    admin.resume("bin", "target").await.unwrap();
    items_become(&rt.get::<Bin>("target"), &["first", "second"]).await;
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_deletion_deletes_nothing() {
    let store = FaultyStore::new(MemoryStore::new());
    let rt = bins(&store).await;
    let b = rt.get::<Bin>("f1");
    b.call(put("kept")).await.unwrap();
    store.fail_next_commits(1);
    let failed = b.call(BinMsg::Delete).await.unwrap_err();
    assert!(matches!(failed, CallError::Storage { .. }), "{failed}");
    assert!(stored(&store, "bin", "f1").await.0);
    assert_eq!(b.call(BinMsg::Get).await.unwrap(), ["kept"]);
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ephemeral_entity_starts_afresh() {
    let store = FaultyStore::new(MemoryStore::new());
    let rt = bins(&store).await;
    let b = rt.get::<EphemeralBin>("e1");
    b.call(put("x")).await.unwrap();
    assert_eq!(b.call(BinMsg::Delete).await.unwrap(), ["x"]);
    assert!(b.call(BinMsg::Get).await.unwrap().is_empty());
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_see_the_deletion() {
    let store = FaultyStore::new(MemoryStore::new());
    let rt = bins(&store).await;
    let b = rt.get::<Bin>("w1");
    b.call(put("x")).await.unwrap();
    let mut watch = b.watch().unwrap();
    b.call(BinMsg::Delete).await.unwrap();
    let change = watch.next().await.unwrap();
    assert!(change.deleted);
    assert_eq!(&*change.state, "null");
    b.call(put("y")).await.unwrap();
    let change = watch.next().await.unwrap();
    assert!(!change.deleted);
    assert_eq!(&*change.state, r#"{"items":["y"]}"#);
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_delete_idle_entities_and_busy_ones_only_by_force() {
    let store = FaultyStore::new(MemoryStore::new());
    let rt = bins(&store).await;
    let admin = rt.admin();
    let b = rt.get::<Bin>("o1");
    b.call(put("x")).await.unwrap();
    admin.delete("bin", "o1", false).await.unwrap();
    assert_eq!(stored(&store, "bin", "o1").await, (false, 0, 0));
    assert!(b.call(BinMsg::Get).await.unwrap().is_empty());
    // Never stored, not resident: nothing to remove, and no error.
    admin.delete("bin", "never", false).await.unwrap();
    assert_eq!(stored(&store, "bin", "never").await, (false, 0, 0));

    // Busy: a step waits for its commit.
    store.hold_commits();
    let pending = tokio::spawn({
        let b = b.clone();
        async move { b.call(put("in flight")).await }
    });
    until("the step is held", || store.held() > 0).await;
    let refused = admin.delete("bin", "o1", false).await.unwrap_err();
    assert!(matches!(refused, AdminError::Busy(_)), "{refused}");
    assert_eq!(refused.code(), "busy");
    let forced = tokio::spawn({
        let admin = rt.admin();
        async move { admin.delete("bin", "o1", true).await }
    });
    store.release_commits();
    assert_eq!(pending.await.unwrap().unwrap(), ["in flight"]);
    forced.await.unwrap().unwrap();
    assert_eq!(stored(&store, "bin", "o1").await, (false, 0, 0));
    assert!(
        b.call(BinMsg::Get).await.unwrap().is_empty(),
        "deleted after it"
    );
    let unknown = admin.delete("nope", "x", false).await.unwrap_err();
    assert_eq!(unknown.code(), "unknown_kind");
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quarantined_entity_is_deleted_without_being_read() {
    let store = FaultyStore::new(MemoryStore::new());
    let rt = bins(&store).await;
    store.inner().put_raw(key("bin", "q1"), "{not json", 3);
    let b = rt.get::<Bin>("q1");
    let failed = b.call(BinMsg::Get).await.unwrap_err();
    assert!(matches!(failed, CallError::CorruptState { .. }), "{failed}");
    assert_eq!(rt.admin().quarantined().len(), 1);
    rt.admin().delete("bin", "q1", false).await.unwrap();
    assert!(rt.admin().quarantined().is_empty(), "released");
    assert_eq!(stored(&store, "bin", "q1").await, (false, 0, 0));
    assert_eq!(b.call(put("fresh")).await.unwrap(), ["fresh"]);
    rt.shutdown().await;
}
