//! The load generator: concurrent callers for a fixed time, with latency histograms.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use perennial_core::{EntityRef, Runtime};
use perennial_demo::Counter;
use perennial_demo::counter::CounterMsg;

/// What a timed run measured.
pub(crate) struct Measured {
    pub(crate) calls: u64,
    pub(crate) elapsed: Duration,
    pub(crate) latency: Histogram<u64>,
}

impl Measured {
    pub(crate) fn per_sec(&self) -> f64 {
        self.calls as f64 / self.elapsed.as_secs_f64()
    }

    pub(crate) fn p50_us(&self) -> u64 {
        self.latency.value_at_quantile(0.50)
    }

    pub(crate) fn p99_us(&self) -> u64 {
        self.latency.value_at_quantile(0.99)
    }
}

/// A histogram of 1 µs to 60 s, with three significant digits.
pub(crate) fn histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 60_000_000, 3)?)
}

/// A small, fast, seedable generator for picking entities; not for anything else.
pub(crate) struct Pick(u64);

impl Pick {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub(crate) fn below(&mut self, n: usize) -> usize {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        ((u128::from(x) * n as u128) >> 64) as usize
    }
}

/// Runs `callers` concurrent loops of `call(caller, pick)` for `duration`.
pub(crate) async fn timed<F, Fut>(
    callers: usize,
    duration: Duration,
    call: F,
) -> anyhow::Result<Measured>
where
    F: Fn(usize, &mut Pick) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let deadline = Instant::now() + duration;
    run(callers, move |caller, pick| {
        (Instant::now() < deadline).then(|| call(caller, pick))
    })
    .await
}

/// Runs `call(i)` for every `i` in `0..n`, `callers` at a time; measures the whole.
pub(crate) async fn each<F, Fut>(n: usize, callers: usize, call: F) -> anyhow::Result<Measured>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let next = AtomicUsize::new(0);
    run(callers, move |_, _| {
        let i = next.fetch_add(1, Ordering::Relaxed);
        (i < n).then(|| call(i))
    })
    .await
}

/// Runs `callers` concurrent loops, each timing the calls `next` gives it until it gives none.
async fn run<F, Fut>(callers: usize, next: F) -> anyhow::Result<Measured>
where
    F: Fn(usize, &mut Pick) -> Option<Fut> + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let next = Arc::new(next);
    let started = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|caller| {
            let next = Arc::clone(&next);
            tokio::spawn(async move {
                let mut pick = Pick::new(caller as u64 + 1);
                let mut latency = histogram()?;
                let mut calls = 0u64;
                while let Some(call) = next(caller, &mut pick) {
                    let t = Instant::now();
                    call.await?;
                    let us = u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX);
                    latency.saturating_record(us.max(1));
                    calls += 1;
                }
                anyhow::Ok((calls, latency))
            })
        })
        .collect();
    let mut measured = Measured {
        calls: 0,
        elapsed: Duration::ZERO,
        latency: histogram()?,
    };
    for task in tasks {
        let (calls, latency) = task.await??;
        measured.calls += calls;
        measured.latency.add(latency)?;
    }
    measured.elapsed = started.elapsed();
    Ok(measured)
}

/// Counters the live callers of [`live`] spread over.
const LIVE_COUNTERS: usize = 1_000;

/// What live callers saw while something else ran beside them.
pub(crate) struct Live {
    pub(crate) per_sec: f64,
    pub(crate) p99_us: u64,
    pub(crate) max_us: u64,
}

/// Live callers adding to counters until `stop` is set: calls per second and latency.
pub(crate) async fn live(
    rt: &Runtime,
    callers: usize,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Live> {
    let started = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|caller| {
            let stop = Arc::clone(&stop);
            let counters: Vec<EntityRef<Counter>> = (0..LIVE_COUNTERS / callers.max(1))
                .map(|i| rt.get::<Counter>(format!("live-{caller}-{i}")))
                .collect();
            tokio::spawn(async move {
                let mut latency = histogram()?;
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let call = Instant::now();
                    counters[n % counters.len()]
                        .call(CounterMsg::Add(1))
                        .await
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                    latency.saturating_record(
                        u64::try_from(call.elapsed().as_micros()).unwrap_or(u64::MAX),
                    );
                    n += 1;
                }
                anyhow::Ok(latency)
            })
        })
        .collect();
    let mut all = histogram()?;
    for task in tasks {
        all.add(task.await??)?;
    }
    let secs = started.elapsed().as_secs_f64();
    Ok(Live {
        per_sec: all.len() as f64 / secs,
        p99_us: all.value_at_quantile(0.99),
        max_us: all.max(),
    })
}

/// Live traffic for `duration`.
pub(crate) async fn live_for(
    rt: &Runtime,
    callers: usize,
    duration: Duration,
) -> anyhow::Result<Live> {
    let stop = Arc::new(AtomicBool::new(false));
    let timer = Arc::clone(&stop);
    tokio::spawn(async move {
        tokio::time::sleep(duration).await;
        timer.store(true, Ordering::Relaxed);
    });
    live(rt, callers, stop).await
}
