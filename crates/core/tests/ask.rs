//! Asks between entities (`ctx.ask`): the target applies the message once, and its reply,
//! its refusal, its failure or the deadline comes back to the asker as one of its own
//! messages, applied once, whatever restarts in between; handlers never wait.

use std::time::Duration;

use perennial_core::{AskError, AskId, Asked, CallError, Ctx, Process, Rejection, Runtime};
use perennial_storage::{FaultyStore, MemoryStore, Store};
use serde::{Deserialize, Serialize};

/// One product's stock.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Stock {
    left: u32,
    /// How many takes it applied.
    takes: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum StockMsg {
    Put(u32),
    Take(u32),
    Panic,
    Get,
}

#[derive(Debug, thiserror::Error)]
#[error("only {left} left")]
struct SoldOut {
    left: u32,
}

impl Rejection for SoldOut {
    fn code(&self) -> &str {
        "sold_out"
    }
}

impl Process for Stock {
    const KIND: &'static str = "stock";
    type Msg = StockMsg;
    type Reply = u32;
    type Error = SoldOut;

    fn handle(&mut self, msg: StockMsg, _ctx: &mut Ctx<'_, Self>) -> Result<u32, SoldOut> {
        match msg {
            StockMsg::Put(n) => self.left += n,
            StockMsg::Take(n) => {
                self.left = self
                    .left
                    .checked_sub(n)
                    .ok_or(SoldOut { left: self.left })?;
                self.takes += 1;
            }
            StockMsg::Panic => panic!("the stock panics on purpose"),
            StockMsg::Get => {}
        }
        Ok(self.left)
    }
}

/// Asks stocks and records each answer as text.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Order {
    asked: Vec<AskId>,
    outcomes: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum OrderMsg {
    Reserve {
        sku: String,
        n: u32,
        /// A deadline, in milliseconds.
        within: Option<u64>,
    },
    Reserved {
        sku: String,
        answer: Asked<Stock>,
    },
    /// Asks the stock to panic.
    Break {
        sku: String,
    },
    /// Asks a kind that is not registered.
    AskNowhere,
    FromNowhere(Asked<Nowhere>),
    /// Makes a message that does not hold the answer.
    DropAnswer,
    Get,
}

fn outcome(sku: &str, answer: &Asked<Stock>) -> String {
    match &answer.result {
        Ok(left) => format!("{sku}: {left} left"),
        Err(AskError::Refused { code, message }) => format!("{sku}: {code} ({message})"),
        Err(AskError::TimedOut) => format!("{sku}: timed out"),
        Err(AskError::Failed(_)) => format!("{sku}: failed"),
        Err(e) => format!("{sku}: {e}"),
    }
}

impl Process for Order {
    const KIND: &'static str = "order";
    type Msg = OrderMsg;
    type Reply = Vec<String>;
    type Error = std::convert::Infallible;

    fn handle(
        &mut self,
        msg: OrderMsg,
        ctx: &mut Ctx<'_, Self>,
    ) -> Result<Vec<String>, Self::Error> {
        match msg {
            OrderMsg::Reserve { sku, n, within } => {
                let answer = |answer| OrderMsg::Reserved {
                    sku: sku.clone(),
                    answer,
                };
                let id = match within {
                    None => ctx.ask::<Stock>(&sku, StockMsg::Take(n), answer),
                    Some(ms) => ctx.ask_within::<Stock>(
                        &sku,
                        StockMsg::Take(n),
                        Duration::from_millis(ms),
                        answer,
                    ),
                };
                self.asked.push(id);
            }
            OrderMsg::Reserved { sku, answer } => {
                assert!(self.asked.contains(&answer.id), "an answer to an ask made");
                self.outcomes.push(outcome(&sku, &answer));
            }
            OrderMsg::Break { sku } => {
                let id = ctx.ask::<Stock>(&sku, StockMsg::Panic, |answer| OrderMsg::Reserved {
                    sku: sku.clone(),
                    answer,
                });
                self.asked.push(id);
            }
            OrderMsg::AskNowhere => {
                ctx.ask::<Nowhere>("x", (), OrderMsg::FromNowhere);
            }
            OrderMsg::DropAnswer => {
                ctx.ask::<Stock>("tea", StockMsg::Get, |_| OrderMsg::Get);
            }
            OrderMsg::Get | OrderMsg::FromNowhere(_) => {}
        }
        Ok(self.outcomes.clone())
    }
}

/// A kind that is never registered.
#[derive(Default)]
struct Nowhere;

impl Process for Nowhere {
    const KIND: &'static str = "nowhere";
    type Msg = ();
    type Reply = ();
    type Error = std::convert::Infallible;

    fn handle(&mut self, (): (), _ctx: &mut Ctx<'_, Self>) -> Result<(), Self::Error> {
        Ok(())
    }
}

/// Two of these ask each other, many times at once.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Peer {
    pinged: u32,
    answers: u32,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum PeerMsg {
    AskPing { to: String, times: u32 },
    Ping,
    Pong(Asked<Peer>),
    Get,
}

impl Process for Peer {
    const KIND: &'static str = "peer";
    type Msg = PeerMsg;
    type Reply = (u32, u32);
    type Error = std::convert::Infallible;

    fn handle(&mut self, msg: PeerMsg, ctx: &mut Ctx<'_, Self>) -> Result<(u32, u32), Self::Error> {
        match msg {
            PeerMsg::AskPing { to, times } => {
                for _ in 0..times {
                    ctx.ask::<Peer>(&to, PeerMsg::Ping, PeerMsg::Pong);
                }
            }
            PeerMsg::Ping => self.pinged += 1,
            PeerMsg::Pong(answer) => {
                assert!(answer.result.is_ok(), "{:?}", answer.result);
                self.answers += 1;
            }
            PeerMsg::Get => {}
        }
        Ok((self.pinged, self.answers))
    }
}

async fn runtime(store: &FaultyStore<MemoryStore>) -> Runtime {
    Runtime::builder()
        .store(store.clone())
        .register_snapshot::<Stock>()
        .register_snapshot::<Order>()
        .register_snapshot::<Peer>()
        .max_attempts(2)
        .start()
        .await
        .unwrap()
}

fn reserve(sku: &str, n: u32, within: Option<u64>) -> OrderMsg {
    OrderMsg::Reserve {
        sku: sku.into(),
        n,
        within,
    }
}

/// Waits until the order has `n` outcomes; returns them.
async fn outcomes(rt: &Runtime, order: &str, n: usize) -> Vec<String> {
    let order = rt.get::<Order>(order);
    let started = std::time::Instant::now();
    loop {
        let got = order.call(OrderMsg::Get).await.unwrap();
        if got.len() >= n {
            return got;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "timed out waiting for {n} outcomes: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// How many pending rows storage holds.
async fn stored_rows(store: &dyn Store) -> usize {
    store.due(i64::MAX, 1_000).await.unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_comes_back_as_a_message_of_the_asker() {
    let store = FaultyStore::new(MemoryStore::new());
    let rt = runtime(&store).await;
    rt.get::<Stock>("tea").call(StockMsg::Put(5)).await.unwrap();
    let order = rt.get::<Order>("o1");
    // The asking step answers at once: it does not wait for the stock.
    assert!(
        order
            .call(reserve("tea", 2, None))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(outcomes(&rt, "o1", 1).await, ["tea: 3 left"]);
    assert_eq!(rt.get::<Stock>("tea").call(StockMsg::Get).await.unwrap(), 3);
    // The asker's answering step deleted the row; nothing is left to deliver. Nothing can
    // ask the stock for the reply it kept under the row's key any more: it is deleted too.
    let started = std::time::Instant::now();
    while stored_rows(&store).await > 0 || store.inner().kept_replies() > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{} rows and {} kept replies stay",
            stored_rows(&store).await,
            store.inner().kept_replies()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_and_a_failure_come_back_as_messages() {
    let store = FaultyStore::new(MemoryStore::new());
    let rt = runtime(&store).await;
    rt.get::<Stock>("tea").call(StockMsg::Put(1)).await.unwrap();
    let order = rt.get::<Order>("o1");
    order.call(reserve("tea", 2, None)).await.unwrap();
    assert_eq!(
        outcomes(&rt, "o1", 1).await,
        ["tea: sold_out (only 1 left)"]
    );
    // A message that keeps panicking is dead-lettered by the target; the asker is told.
    order
        .call(OrderMsg::Break { sku: "tea".into() })
        .await
        .unwrap();
    assert_eq!(outcomes(&rt, "o1", 2).await[1], "tea: failed");
    let letters = rt.admin().dead_letters(None).await.unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].letter.key.kind.as_ref(), "stock");
    let stock = rt.get::<Stock>("tea").call(StockMsg::Get).await.unwrap();
    assert_eq!(
        stock, 1,
        "neither the refusal nor the panic changed the stock"
    );
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_answers_timed_out_and_the_late_target_never_applies_it() {
    let store = FaultyStore::new(MemoryStore::new());
    let rt = runtime(&store).await;
    rt.get::<Stock>("tea").call(StockMsg::Put(5)).await.unwrap();
    rt.admin().pause("stock", "tea").await.unwrap();
    let order = rt.get::<Order>("o1");
    order.call(reserve("tea", 1, Some(100))).await.unwrap();
    assert_eq!(outcomes(&rt, "o1", 1).await, ["tea: timed out"]);
    rt.admin().resume("stock", "tea").await.unwrap();
    // An ask answered in time is not touched by its deadline.
    order.call(reserve("tea", 1, Some(60_000))).await.unwrap();
    assert_eq!(outcomes(&rt, "o1", 2).await[1], "tea: 4 left");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stock = rt.get::<Stock>("tea");
    assert_eq!(stock.call(StockMsg::Get).await.unwrap(), 4, "one take only");
    assert_eq!(outcomes(&rt, "o1", 2).await.len(), 2, "one answer per ask");
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ask_is_applied_once_and_answered_once_across_a_restart() {
    let store = FaultyStore::new(MemoryStore::new());
    let rt = runtime(&store).await;
    rt.get::<Stock>("tea").call(StockMsg::Put(5)).await.unwrap();
    // The ask is made while the stock is paused, then the asker is paused and the stock
    // resumed: the stock applies the ask, and the answer waits for the asker.
    rt.admin().pause("stock", "tea").await.unwrap();
    rt.get::<Order>("o1")
        .call(reserve("tea", 2, None))
        .await
        .unwrap();
    rt.admin().pause("order", "o1").await.unwrap();
    rt.admin().resume("stock", "tea").await.unwrap();
    let stock = rt.get::<Stock>("tea");
    let started = std::time::Instant::now();
    while stock.call(StockMsg::Get).await.unwrap() != 3 {
        assert!(started.elapsed() < Duration::from_secs(10), "never taken");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Restarted with the answer not applied: the ask is delivered again, and the stock
    // answers from the reply it kept, without taking again.
    rt.shutdown().await;
    let rt = runtime(&store).await;
    rt.admin().resume("order", "o1").await.unwrap();
    assert_eq!(outcomes(&rt, "o1", 1).await, ["tea: 3 left"]);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(outcomes(&rt, "o1", 1).await.len(), 1, "answered once");
    let stock = rt.get::<Stock>("tea");
    assert_eq!(stock.call(StockMsg::Get).await.unwrap(), 3, "taken once");
    assert_eq!(stored_rows(&store).await, 0);
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entities_that_ask_each_other_get_every_answer() {
    let store = FaultyStore::new(MemoryStore::new());
    let rt = runtime(&store).await;
    let (a, b) = (rt.get::<Peer>("a"), rt.get::<Peer>("b"));
    let times = 50;
    let (x, y) = tokio::join!(
        a.call(PeerMsg::AskPing {
            to: "b".into(),
            times
        }),
        b.call(PeerMsg::AskPing {
            to: "a".into(),
            times
        }),
    );
    x.unwrap();
    y.unwrap();
    let started = std::time::Instant::now();
    loop {
        let (a_state, b_state) = (
            a.call(PeerMsg::Get).await.unwrap(),
            b.call(PeerMsg::Get).await.unwrap(),
        );
        if a_state == (times, times) && b_state == (times, times) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "a {a_state:?}, b {b_state:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_ask_fails_its_step_like_a_panic() {
    let store = FaultyStore::new(MemoryStore::new());
    let rt = runtime(&store).await;
    let order = rt.get::<Order>("o1");
    for (msg, expected) in [
        (OrderMsg::AskNowhere, "not registered"),
        (OrderMsg::DropAnswer, "must hold the `Asked` value"),
    ] {
        match order.call(msg).await {
            Err(CallError::Panicked { message, .. }) => {
                assert!(message.contains(expected), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(stored_rows(&store).await, 0, "nothing was stored");
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_asker_drops_its_asks() {
    let store = FaultyStore::new(MemoryStore::new());
    let rt = runtime(&store).await;
    rt.get::<Stock>("tea").call(StockMsg::Put(5)).await.unwrap();
    rt.admin().pause("stock", "tea").await.unwrap();
    let order = rt.get::<Order>("o1");
    order.call(reserve("tea", 1, None)).await.unwrap();
    assert_eq!(stored_rows(&store).await, 1);
    rt.admin().delete("order", "o1", true).await.unwrap();
    assert_eq!(stored_rows(&store).await, 0, "the ask died with its asker");
    rt.admin().resume("stock", "tea").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(order.call(OrderMsg::Get).await.unwrap().is_empty());
    let stock = rt.get::<Stock>("tea").call(StockMsg::Get).await.unwrap();
    assert_eq!(stock, 5, "the stock never got the ask");
    rt.shutdown().await;
}
