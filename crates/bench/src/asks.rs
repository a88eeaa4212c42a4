//! The `asks` workload: asks between entities (`ctx.ask`) and one-way messages (`ctx.tell`)
//! per second, against plain durable calls, in alternating rounds of one run.
//!
//! - A plain call is one durable step.
//! - A message is the sender's step (with its outbox row) and the receiver's step (which
//!   deletes the row), counted once the receiver's step is durable.
//! - An ask is the asker's step (with its ask row), the target's step (which keeps its reply
//!   under the row's key) and the asker's step that applies the answer (which deletes the
//!   row), counted once that last step is durable.

use std::time::{Duration, Instant};

use perennial_core::{Asked, Ctx, Process, Runtime};
use perennial_demo::Counter;
use perennial_demo::counter::CounterMsg;
use perennial_storage::Store;
use serde::{Deserialize, Serialize};

use crate::load::each;
use crate::workloads::{scratch, small_cache_store};
use crate::{Options, Report};

/// Operations per round, of each sort.
const PER_ROUND: usize = 30_000;
/// Rounds of each sort; the report gives their medians.
const ROUNDS: usize = 3;

/// Asks counters to add one, and counts the answers.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Asker {
    answered: u64,
}

#[derive(Debug, Serialize, Deserialize)]
enum AskerMsg {
    /// Asks counter `to` to add one.
    Ask {
        to: String,
    },
    /// Tells counter `to` to add one.
    Tell {
        to: String,
    },
    Answered(Asked<Counter>),
    Count,
}

impl Process for Asker {
    const KIND: &'static str = "asker";
    type Msg = AskerMsg;
    type Reply = u64;
    type Error = std::convert::Infallible;

    fn handle(&mut self, msg: AskerMsg, ctx: &mut Ctx<'_, Self>) -> Result<u64, Self::Error> {
        match msg {
            AskerMsg::Ask { to } => {
                ctx.ask::<Counter>(to, CounterMsg::Add(1), AskerMsg::Answered);
            }
            AskerMsg::Tell { to } => ctx.tell::<Counter>(to, CounterMsg::Add(1)),
            AskerMsg::Answered(_) => self.answered += 1,
            AskerMsg::Count => {}
        }
        Ok(self.answered)
    }
}

/// What a round does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sort {
    Call,
    Message,
    Ask,
}

/// Asks, messages and plain calls per second, in alternating rounds of one run.
pub async fn asks(options: &Options) -> anyhow::Result<Report> {
    let dir = scratch(options, "asks")?;
    let store = small_cache_store(&dir.path)?;
    let rt = Runtime::builder()
        .store(store.clone())
        .register_snapshot::<Counter>()
        .register_snapshot::<Asker>()
        .start()
        .await?;
    // Every counter and asker is created (and resident) before the first round, so that
    // every round compares steps of resident entities.
    let entities = options.entities.max(2);
    let warm = rt.clone();
    each(entities * 2, options.callers, move |i| {
        let rt = warm.clone();
        async move {
            let n = i / 2;
            if i % 2 == 0 {
                done(
                    rt.get::<Counter>(format!("c{n}"))
                        .call(CounterMsg::Get)
                        .await,
                )
            } else {
                done(rt.get::<Asker>(format!("a{n}")).call(AskerMsg::Count).await)
            }
        }
    })
    .await?;
    let (mut calls, mut messages, mut asks) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        // Alternating order, so that no sort always runs on the warmest cache.
        let order = if round % 2 == 0 {
            [Sort::Call, Sort::Message, Sort::Ask]
        } else {
            [Sort::Ask, Sort::Message, Sort::Call]
        };
        for sort in order {
            let rate = self::round(&rt, &store, options, sort).await?;
            match sort {
                Sort::Call => calls.push(rate),
                Sort::Message => messages.push(rate),
                Sort::Ask => asks.push(rate),
            }
        }
    }
    rt.shutdown().await;
    store.close().await?;
    let (calls, messages, asks) = (median(calls), median(messages), median(asks));
    Ok(Report::Asks {
        callers: options.callers,
        calls_per_sec: calls,
        messages_per_sec: messages,
        asks_per_sec: asks,
        messages_ratio: messages / calls,
        asks_ratio: asks / calls,
    })
}

/// One round of [`PER_ROUND`] operations of `sort`; returns how many per second completed,
/// from the first call until the last step is durable.
async fn round(
    rt: &Runtime,
    store: &impl Store,
    options: &Options,
    sort: Sort,
) -> anyhow::Result<f64> {
    let entities = options.entities.max(2);
    let caller = rt.clone();
    let started = Instant::now();
    each(PER_ROUND, options.callers, move |i| {
        let from = format!("a{}", i % entities);
        let to = format!("c{}", (i * 7 + 1) % entities);
        let rt = caller.clone();
        async move {
            let asker = rt.get::<Asker>(from);
            let done = match sort {
                Sort::Call => rt
                    .get::<Counter>(to)
                    .call(CounterMsg::Add(1))
                    .await
                    .map(drop),
                Sort::Message => return done(asker.call(AskerMsg::Tell { to }).await),
                Sort::Ask => return done(asker.call(AskerMsg::Ask { to }).await),
            };
            done.map_err(|e| anyhow::anyhow!("{e}"))
        }
    })
    .await?;
    if sort != Sort::Call {
        // Applied, not just sent: wait until no row is left in storage.
        while !store.due(i64::MAX, 1).await?.is_empty() {
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(600),
                "the {sort:?}s were not all applied"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    Ok(PER_ROUND as f64 / started.elapsed().as_secs_f64())
}

fn done<T, E: std::fmt::Display>(result: Result<T, E>) -> anyhow::Result<()> {
    result.map(drop).map_err(|e| anyhow::anyhow!("{e}"))
}

fn median(mut rates: Vec<f64>) -> f64 {
    rates.sort_by(f64::total_cmp);
    rates.get(rates.len() / 2).copied().unwrap_or(0.0)
}
