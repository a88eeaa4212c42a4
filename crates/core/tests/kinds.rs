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
        .register::<Counter>()
        .register::<Fleeting>()
        .register_ephemeral::<Scratch>();
    (builder, store)
}

/// A started runtime over a fresh memory store.
pub(crate) async fn runtime() -> (Runtime, FaultyStore<MemoryStore>) {
    let (builder, store) = builder();
    (builder.start().await.unwrap(), store)
}
