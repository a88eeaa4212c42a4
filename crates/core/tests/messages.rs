//! Messages between entities (`ctx.tell`): delivered after the sender's commit, applied once,
//! in order, whatever fails; replies come back as messages. Internal messages
//! (`Process::is_internal`) come only from inside the runtime, never from a call.

use std::time::Duration;

use perennial_core::testing::TestRuntime;
use perennial_core::{CallError, Ctx, Process, Runtime};
use perennial_storage::{FaultyStore, MemoryStore, Store};
use perennial_types::{EntityId, EntityKey};
use serde::{Deserialize, Serialize};

use crate::kinds::Refused;

/// Sends numbered messages to an inbox and records the receipts the inbox sends back.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Sender {
    pub(crate) receipts: Vec<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum SenderMsg {
    Send { to: String, n: u64 },
    SendToNowhere,
    Receipt { n: u64 },
    Get,
}

impl Process for Sender {
    const KIND: &'static str = "sender";
    type Msg = SenderMsg;
    type Reply = Vec<u64>;
    type Error = Refused;

    fn handle(&mut self, msg: SenderMsg, ctx: &mut Ctx<'_, Self>) -> Result<Vec<u64>, Refused> {
        match msg {
            SenderMsg::Send { to, n } => {
                let from = ctx.id().to_string();
                ctx.tell::<Inbox>(to, InboxMsg::Add { from, n });
            }
            SenderMsg::SendToNowhere => ctx.tell::<Unregistered>("x", ()),
            SenderMsg::Receipt { n } => self.receipts.push(n),
            SenderMsg::Get => {}
        }
        Ok(self.receipts.clone())
    }
}

/// Records what it was sent, in order, and answers each sender with a receipt.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Inbox {
    pub(crate) got: Vec<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum InboxMsg {
    Add { from: String, n: u64 },
    Get,
}

impl Process for Inbox {
    const KIND: &'static str = "inbox";
    type Msg = InboxMsg;
    type Reply = Vec<u64>;
    type Error = Refused;

    fn handle(&mut self, msg: InboxMsg, ctx: &mut Ctx<'_, Self>) -> Result<Vec<u64>, Refused> {
        if let InboxMsg::Add { from, n } = msg {
            self.got.push(n);
            ctx.tell::<Sender>(from, SenderMsg::Receipt { n });
        }
        Ok(self.got.clone())
    }
}

/// A kind no runtime here registers.
#[derive(Default)]
struct Unregistered;

impl Process for Unregistered {
    const KIND: &'static str = "unregistered";
    type Msg = ();
    type Reply = ();
    type Error = std::convert::Infallible;

    fn handle(&mut self, (): (), _: &mut Ctx<'_, Self>) -> Result<(), Self::Error> {
        Ok(())
    }
}

async fn mail(store: &FaultyStore<MemoryStore>) -> Runtime {
    Runtime::builder()
        .store(store.clone())
        .register_snapshot::<Sender>()
        .register_snapshot::<Inbox>()
        .start()
        .await
        .unwrap()
}

async fn stored<T: serde::de::DeserializeOwned + Default>(
    store: &FaultyStore<MemoryStore>,
    kind: &str,
    id: &str,
) -> T {
    let key = EntityKey::new(kind, EntityId::new(id).unwrap());
    match store.load(&key).await.unwrap() {
        Some(record) => serde_json::from_str(&record.state).unwrap(),
        None => T::default(),
    }
}

/// Waits until nothing is pending in storage.
async fn drained(store: &FaultyStore<MemoryStore>) {
    for _ in 0..1000 {
        if store.due(i64::MAX, 1).await.unwrap().is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("rows still pending: {:?}", store.due(i64::MAX, 10).await);
}

fn send(to: &str, n: u64) -> SenderMsg {
    SenderMsg::Send { to: to.into(), n }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_are_applied_once_in_order_and_answered_by_message() {
    let store = FaultyStore::new(MemoryStore::new());
    let rt = mail(&store).await;
    let s = rt.get::<Sender>("s");
    for n in 1..=50 {
        s.call(send("box", n)).await.unwrap();
    }
    drained(&store).await;
    let inbox: Inbox = stored(&store, "inbox", "box").await;
    assert_eq!(inbox.got, (1..=50).collect::<Vec<_>>());
    let mut receipts = s.call(SenderMsg::Get).await.unwrap();
    assert_eq!(receipts, (1..=50).collect::<Vec<_>>(), "in order, once");
    receipts.dedup();
    assert_eq!(receipts.len(), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_commits_neither_lose_nor_repeat_messages() {
    let store = FaultyStore::new(MemoryStore::new());
    let rt = mail(&store).await;
    store.fail_every(4);
    let mut acknowledged = Vec::new();
    for n in 1..=60 {
        // The sends of several senders interleave at one inbox; each sender's stay in order.
        let sender = rt.get::<Sender>(format!("s{}", n % 3));
        match sender.call(send("box", n)).await {
            Ok(_) => acknowledged.push(n),
            Err(CallError::Storage { .. }) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert!(acknowledged.len() < 60, "some commits failed");
    // Deliveries whose commits fail are retried until they land.
    drained(&store).await;
    store.fail_every(0);
    let inbox: Inbox = stored(&store, "inbox", "box").await;
    let mut got = inbox.got.clone();
    got.sort_unstable();
    assert_eq!(
        got, acknowledged,
        "every acknowledged send, once; nothing else"
    );
    for s in 0..3 {
        let from_s: Vec<u64> = inbox.got.iter().copied().filter(|n| n % 3 == s).collect();
        let mut sorted = from_s.clone();
        sorted.sort_unstable();
        assert_eq!(from_s, sorted, "sender s{s}'s messages in order");
        let sender: Sender = stored(&store, "sender", &format!("s{s}")).await;
        assert_eq!(sender.receipts, sorted, "s{s}'s receipts, once each");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_sent_before_a_restart_are_delivered_after_it() {
    let store = FaultyStore::new(MemoryStore::new());
    let rt = mail(&store).await;
    // Stopped right after the sends: some deliveries may be done, the rest are pending in
    // storage. Either way, the next node delivers each exactly once.
    for n in 1..=5 {
        rt.get::<Sender>("s").call(send("box", n)).await.unwrap();
    }
    rt.shutdown().await;
    drop(rt);
    let rt = mail(&store).await;
    drained(&store).await;
    let inbox: Inbox = stored(&store, "inbox", "box").await;
    assert_eq!(inbox.got, [1, 2, 3, 4, 5]);
    let receipts = rt.get::<Sender>("s").call(SenderMsg::Get).await.unwrap();
    assert_eq!(receipts, [1, 2, 3, 4, 5]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sending_to_an_unregistered_kind_fails_the_step() {
    let store = FaultyStore::new(MemoryStore::new());
    let rt = mail(&store).await;
    let s = rt.get::<Sender>("s");
    s.call(SenderMsg::Receipt { n: 7 }).await.unwrap();
    let failed = s.call(SenderMsg::SendToNowhere).await;
    match failed {
        Err(CallError::Panicked { message, .. }) => {
            assert!(message.contains("\"unregistered\""), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(s.call(SenderMsg::Get).await.unwrap(), [7], "rolled back");
    assert!(store.due(i64::MAX, 10).await.unwrap().is_empty());
}

/// Grants credit to itself by a timer and to others by `tell`: both internal messages.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Wallet {
    credit: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum WalletMsg {
    /// Grants `credit` to itself in a minute.
    Later(u64),
    /// Grants `credit` to the wallet `to` now.
    Give { to: String, credit: u64 },
    /// Internal: only a timer or another wallet sends it.
    Grant(u64),
}

impl Process for Wallet {
    const KIND: &'static str = "wallet";
    type Msg = WalletMsg;
    type Reply = u64;
    type Error = std::convert::Infallible;

    fn handle(&mut self, msg: WalletMsg, ctx: &mut Ctx<'_, Self>) -> Result<u64, Self::Error> {
        match msg {
            WalletMsg::Later(credit) => {
                ctx.schedule(Duration::from_secs(60), WalletMsg::Grant(credit));
            }
            WalletMsg::Give { to, credit } => ctx.tell::<Wallet>(to, WalletMsg::Grant(credit)),
            WalletMsg::Grant(credit) => self.credit += credit,
        }
        Ok(self.credit)
    }

    fn is_internal(msg: &WalletMsg) -> bool {
        matches!(msg, WalletMsg::Grant(_))
    }
}

#[tokio::test]
async fn an_internal_message_is_refused_from_a_call_and_applied_from_a_timer_or_a_tell() {
    let rt = TestRuntime::start(|b| b.register_snapshot::<Wallet>())
        .await
        .unwrap();
    let w = rt.get::<Wallet>("w");
    let forged = w.call(WalletMsg::Grant(1_000)).await;
    assert!(matches!(forged, Err(CallError::Internal(_))), "{forged:?}");
    let json = rt.call_json("wallet", "w", br#"{"grant": 1000}"#).await;
    match json {
        Err(e @ CallError::Internal(_)) => assert_eq!(e.code(), "internal_message"),
        other => panic!("{other:?}"),
    }
    let keyed = w.call_idempotent("k1", WalletMsg::Grant(1_000)).await;
    assert!(matches!(keyed, Err(CallError::Internal(_))), "{keyed:?}");
    assert_eq!(
        w.call(WalletMsg::Later(5)).await.unwrap(),
        0,
        "nothing forged"
    );
    rt.advance(Duration::from_secs(60)).await;
    let other = rt.get::<Wallet>("other");
    let give = WalletMsg::Give {
        to: "w".into(),
        credit: 2,
    };
    other.call(give).await.unwrap();
    rt.settle().await;
    assert_eq!(
        w.call(WalletMsg::Later(0)).await.unwrap(),
        7,
        "5 by the timer, 2 told"
    );
}
