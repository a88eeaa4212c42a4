//! The `pending` workload: durable timers and exactly-once messages between entities.

use std::time::{Duration, Instant, SystemTime};

use perennial_core::{Ctx, Process, Runtime};
use perennial_demo::Counter;
use perennial_demo::counter::CounterMsg;
use perennial_storage::Store;
use perennial_storage_sqlite::SqliteStore;
use serde::{Deserialize, Serialize};

use crate::load::each;
use crate::workloads::{rss_bytes, scratch, small_cache_store};
use crate::{Options, Report};

/// Timers scheduled (and fired) by the throughput part.
const FIRED_TIMERS: usize = 100_000;
/// Timers left pending for the memory part.
const PENDING_TIMERS: usize = 1_000_000;
/// Timers one call schedules in the memory part.
const TIMERS_PER_CALL: u32 = 1000;
/// Transfers (each one message between two counters) in the messages part.
const TRANSFERS: usize = 50_000;

/// An entity that schedules timers and counts the ones that fire.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Ticker {
    fired: u64,
}

#[derive(Debug, Serialize, Deserialize)]
enum TickerMsg {
    /// Schedules `count` timers, all due at `at_ms` (milliseconds since the Unix epoch).
    Schedule {
        count: u32,
        at_ms: u64,
    },
    Tick,
}

impl Process for Ticker {
    const KIND: &'static str = "ticker";
    type Msg = TickerMsg;
    type Reply = u64;
    type Error = std::convert::Infallible;

    fn handle(&mut self, msg: TickerMsg, ctx: &mut Ctx<'_, Self>) -> Result<u64, Self::Error> {
        match msg {
            TickerMsg::Schedule { count, at_ms } => {
                let at = SystemTime::UNIX_EPOCH + Duration::from_millis(at_ms);
                for _ in 0..count {
                    ctx.schedule_at(at, TickerMsg::Tick);
                }
            }
            TickerMsg::Tick => self.fired += 1,
        }
        Ok(self.fired)
    }
}

fn unix_ms(after: Duration) -> u64 {
    let at = SystemTime::now() + after;
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Timers scheduled and fired per second; memory with a million timers pending; messages
/// between entities per second, against plain durable calls in the same run.
pub async fn pending(options: &Options) -> anyhow::Result<Report> {
    let dir = scratch(options, "pending")?;
    let store = small_cache_store(&dir.path)?;
    let rt = Runtime::builder()
        .store(store.clone())
        .register_snapshot::<Ticker>()
        .register_snapshot::<Counter>()
        .start()
        .await?;
    let entities = options.entities.max(1);

    // Throughput: one timer per call, all due at one instant a little later, so that they
    // pile up and fire as fast as the node can apply them.
    let due_in = Duration::from_secs(4);
    let at_ms = unix_ms(due_in);
    let due = Instant::now() + due_in;
    let scheduler = rt.clone();
    let scheduled = each(FIRED_TIMERS, options.callers, move |i| {
        let h = scheduler.get::<Ticker>(format!("t{}", i % entities));
        async move {
            h.call(TickerMsg::Schedule { count: 1, at_ms })
                .await
                .map(drop)
                .map_err(|e| anyhow::anyhow!("{e}"))
        }
    })
    .await?;
    anyhow::ensure!(
        Instant::now() < due,
        "scheduling took longer than the timers' delay; the fire rate would be wrong"
    );
    let fired_before = rt.stats().pending_fired;
    tokio::time::sleep_until(due.into()).await;
    let started = Instant::now();
    while rt.stats().pending_fired - fired_before < FIRED_TIMERS as u64 {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "timers did not fire"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let fire_secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        store.due(i64::MAX, 1).await?.is_empty(),
        "a fired timer is still stored"
    );

    // Memory: a million timers an hour away, their entities passivated.
    rt.admin().passivate_idle();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before = rss_bytes()?;
    let far = unix_ms(Duration::from_secs(3600));
    let calls = PENDING_TIMERS / TIMERS_PER_CALL as usize;
    let scheduler = rt.clone();
    each(calls, options.callers.min(64), move |i| {
        let h = scheduler.get::<Ticker>(format!("p{i}"));
        async move {
            h.call(TickerMsg::Schedule {
                count: TIMERS_PER_CALL,
                at_ms: far,
            })
            .await
            .map(drop)
            .map_err(|e| anyhow::anyhow!("{e}"))
        }
    })
    .await?;
    rt.admin().passivate_idle();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_pending = rss_bytes()?;
    let in_memory = rt.stats().pending_in_memory;
    let stored = store.due(i64::MAX, usize::MAX).await?.len();

    // Messages: each transfer is one step at the sender and one message applied at the
    // receiver, exactly once; the baseline is the same number of plain durable calls.
    let baseline = transfers(&rt, &store, options, false).await?;
    let messages = transfers(&rt, &store, options, true).await?;
    rt.shutdown().await;
    store.close().await?;
    Ok(Report::Pending {
        timers_scheduled_per_sec: scheduled.per_sec(),
        timers_fired_per_sec: FIRED_TIMERS as f64 / fire_secs,
        pending_timers: stored,
        pending_in_memory: in_memory,
        rss_before,
        rss_pending,
        messages_per_sec: messages,
        baseline_calls_per_sec: baseline,
    })
}

/// Runs [`TRANSFERS`] transfers (or plain additions) between counters; returns how many
/// per second were applied, from the first call until the last message is applied.
async fn transfers(
    rt: &Runtime,
    store: &SqliteStore,
    options: &Options,
    send: bool,
) -> anyhow::Result<f64> {
    let entities = options.entities.max(2);
    let prefix = if send { "m" } else { "b" };
    let caller = rt.clone();
    let started = Instant::now();
    each(TRANSFERS, options.callers, move |i| {
        let h = caller.get::<Counter>(format!("{prefix}{}", i % entities));
        let msg = if send {
            CounterMsg::Transfer {
                to: format!("{prefix}{}", (i * 7 + 1) % entities),
                amount: 1,
            }
        } else {
            CounterMsg::Add(1)
        };
        async move {
            h.call(msg)
                .await
                .map(drop)
                .map_err(|e| anyhow::anyhow!("{e}"))
        }
    })
    .await?;
    if send {
        // Applied, not just sent: wait until no message is left in storage (messages are
        // due when sent; the far timers are not due for an hour).
        let soon = i64::try_from(unix_ms(Duration::from_secs(60))).unwrap_or(i64::MAX);
        while !store.due(soon, 1).await?.is_empty() {
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(600),
                "messages were not delivered"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    Ok(TRANSFERS as f64 / started.elapsed().as_secs_f64())
}
