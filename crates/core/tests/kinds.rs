//! Kinds used by the tests, and helpers to start runtimes over them.

use std::fmt;
use std::time::Duration;

use perennial_core::{Builder, Ctx, Process, Rejection, Runtime};
use perennial_storage::{FaultyStore, MemoryStore};
use serde::{Deserialize, Serialize};

/// A counter whose messages can also misbehave on purpose.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub(crate) struct Counter {
    pub(crate) value: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Op {
    Add(i64),
    Get,
    /// Adds, then panics: the addition must not survive.
    AddThenPanic(i64),
    /// Adds, then refuses: the addition must not survive.
    AddThenReject(i64),
    /// Sleeps in the handler, to keep the entity busy.
    Sleep(u64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refused;

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("refused on purpose")
    }
}

impl std::error::Error for Refused {}

impl Rejection for Refused {
    fn code(&self) -> &str {
        "refused"
    }
}

/// How many `Sleep` messages have started, so tests can wait for a busy entity.
pub(crate) static SLEEPERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Waits (at most ten seconds) until `done` holds.
pub(crate) async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let started = std::time::Instant::now();
    while !done() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn apply(value: &mut i64, op: Op) -> Result<i64, Refused> {
    match op {
        Op::Add(n) => *value += n,
        Op::Get => {}
        Op::AddThenPanic(n) => {
            *value += n;
            panic!("boom after adding {n}");
        }
        Op::AddThenReject(n) => {
            *value += n;
            return Err(Refused);
        }
        Op::Sleep(ms) => {
            SLEEPERS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(ms));
        }
    }
    Ok(*value)
}

impl Process for Counter {
    const KIND: &'static str = "counter";
    type Msg = Op;
    type Reply = i64;
    type Error = Refused;

    fn handle(&mut self, op: Op, _ctx: &mut Ctx<'_, Self>) -> Result<i64, Refused> {
        apply(&mut self.value, op)
    }
}

/// A counter that wants to be passivated as soon as it is idle, unless it holds `keep`.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub(crate) struct Fleeting {
    pub(crate) value: i64,
}

impl Process for Fleeting {
    const KIND: &'static str = "fleeting";
    type Msg = Op;
    type Reply = i64;
    type Error = Refused;

    fn handle(&mut self, op: Op, _ctx: &mut Ctx<'_, Self>) -> Result<i64, Refused> {
        apply(&mut self.value, op)
    }

    fn idle_timeout(&self) -> Duration {
        // Negative values stay resident: the timeout depends on the state.
        if self.value < 0 {
            Duration::from_secs(3600)
        } else {
            Duration::ZERO
        }
    }
}

/// A counter kept in memory only.
#[derive(Debug, Default, Clone)]
pub(crate) struct Scratch {
    pub(crate) value: i64,
}

impl Process for Scratch {
    const KIND: &'static str = "scratch";
    type Msg = Op;
    type Reply = i64;
    type Error = Refused;

    fn handle(&mut self, op: Op, _ctx: &mut Ctx<'_, Self>) -> Result<i64, Refused> {
        apply(&mut self.value, op)
    }
}

/// A builder over a fresh memory store, wrapped so tests can fail and count commits.
pub(crate) fn builder() -> (Builder, FaultyStore<MemoryStore>) {
    let store = FaultyStore::new(MemoryStore::new());
    let builder = Runtime::builder()
        .store(store.clone())
        .register_snapshot::<Counter>()
        .register_snapshot::<Fleeting>()
        .register_ephemeral::<Scratch>();
    (builder, store)
}

/// A runtime hosting only `Counter`, over `store`.
pub(crate) async fn counters(store: &MemoryStore) -> Runtime {
    Runtime::builder()
        .store(store.clone())
        .register_snapshot::<Counter>()
        .start()
        .await
        .unwrap()
}

/// A started runtime over a fresh memory store.
pub(crate) async fn runtime() -> (Runtime, FaultyStore<MemoryStore>) {
    let (builder, store) = builder();
    (builder.start().await.unwrap(), store)
}

/// A kind whose state can hold a NaN, which `serde_json` writes as `null` and cannot read back:
/// a state type that does not round-trip.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Fragile {
    pub(crate) x: f64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum FragileOp {
    /// Sets `x`; NaN makes the state impossible to decode.
    Set(f64),
    /// Refuses, which needs a rollback.
    Refuse,
}

impl Process for Fragile {
    const KIND: &'static str = "fragile";
    type Msg = FragileOp;
    type Reply = ();
    type Error = Refused;

    fn handle(&mut self, op: FragileOp, _ctx: &mut Ctx<'_, Self>) -> Result<(), Refused> {
        match op {
            FragileOp::Set(x) => {
                self.x = x;
                Ok(())
            }
            FragileOp::Refuse => Err(Refused),
        }
    }
}

/// A kind whose reply cannot be encoded as JSON (a map with non-string keys).
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Awkward {
    pub(crate) calls: u32,
}

impl Process for Awkward {
    const KIND: &'static str = "awkward";
    type Msg = ();
    type Reply = std::collections::HashMap<(u8, u8), u8>;
    type Error = std::convert::Infallible;

    fn handle(&mut self, _: (), _ctx: &mut Ctx<'_, Self>) -> Result<Self::Reply, Self::Error> {
        self.calls += 1;
        Ok([((1, 2), 3)].into_iter().collect())
    }
}

/// A kind whose `Default` panics: it can never be created.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Unbuildable;

impl Default for Unbuildable {
    fn default() -> Self {
        panic!("Default refuses");
    }
}

impl Process for Unbuildable {
    const KIND: &'static str = "unbuildable";
    type Msg = ();
    type Reply = ();
    type Error = std::convert::Infallible;

    fn handle(&mut self, _: (), _ctx: &mut Ctx<'_, Self>) -> Result<(), Self::Error> {
        Ok(())
    }
}

/// A message whose `Serialize` panics (the runtime encodes messages to dead-letter them).
#[derive(Debug, Deserialize)]
pub(crate) struct Shy;

impl Serialize for Shy {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        panic!("Shy will not be encoded");
    }
}

/// A counter that takes `Shy` messages.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct ShyCounter {
    pub(crate) value: i64,
}

impl Process for ShyCounter {
    const KIND: &'static str = "shy";
    type Msg = Shy;
    type Reply = i64;
    type Error = std::convert::Infallible;

    fn handle(&mut self, _: Shy, _ctx: &mut Ctx<'_, Self>) -> Result<i64, Self::Error> {
        self.value += 1;
        Ok(self.value)
    }
}
