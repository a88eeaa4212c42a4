//! The `migrate` workload: a background migration pass over dormant carts stored by an
//! older release, while live callers keep calling counters. Baselines in the same run: the
//! same pass with no live traffic, and the live traffic with no pass.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use perennial_core::{EntityRef, Migrate, Progress, Runtime};
use perennial_demo::Counter;
use perennial_demo::counter::CounterMsg;
use perennial_storage::Store;
use perennial_storage_sqlite::SqliteStore;

use crate::query::store_carts;
use crate::workloads::{Scratch, scratch};
use crate::{Options, Report};

/// Carts stored at schema version 1, per pass.
const CARTS: usize = 100_000;
/// Entities a pass rewrites at once.
const PASS_BATCH: usize = 64;
/// Counters the live callers spread over.
const COUNTERS: usize = 1_000;

/// Stores [`CARTS`] version 1 carts (`{"items": {…}}`) in a fresh directory and starts the
/// demo kinds on it. The directory lives as long as the returned scratch.
async fn old_carts(options: &Options, name: &str) -> anyhow::Result<(Runtime, Scratch)> {
    let dir = scratch(options, name)?;
    let store = SqliteStore::open(&dir.path)?;
    store_carts(&store, CARTS, |n| {
        format!(r#"{{"items":{{"tea":2.5,"sku-{}":{}}}}}"#, n % 977, n % 50)
    })
    .await?;
    // A clean close folds every state into the table, as on a node that ran a while.
    store.close().await?;
    let store = SqliteStore::open(&dir.path)?;
    let rt = perennial_demo::register(Runtime::builder().store(store))
        .start()
        .await?;
    Ok((rt, dir))
}

/// Live callers adding to counters until `stop` is set: calls per second and p99 latency.
async fn live(rt: &Runtime, callers: usize, stop: Arc<AtomicBool>) -> anyhow::Result<(f64, u64)> {
    let started = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|caller| {
            let stop = Arc::clone(&stop);
            let counters: Vec<EntityRef<Counter>> = (0..COUNTERS / callers.max(1))
                .map(|i| rt.get::<Counter>(format!("live-{caller}-{i}")))
                .collect();
            tokio::spawn(async move {
                let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let call = Instant::now();
                    counters[n % counters.len()]
                        .call(CounterMsg::Add(1))
                        .await
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                    latency
                        .record(u64::try_from(call.elapsed().as_micros()).unwrap_or(u64::MAX))?;
                    n += 1;
                }
                anyhow::Ok(latency)
            })
        })
        .collect();
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for task in tasks {
        all.add(task.await??)?;
    }
    let secs = started.elapsed().as_secs_f64();
    Ok((all.len() as f64 / secs, all.value_at_quantile(0.99)))
}

/// Live traffic for `duration`.
async fn live_for(rt: &Runtime, callers: usize, duration: Duration) -> anyhow::Result<(f64, u64)> {
    let stop = Arc::new(AtomicBool::new(false));
    let timer = Arc::clone(&stop);
    tokio::spawn(async move {
        tokio::time::sleep(duration).await;
        timer.store(true, Ordering::Relaxed);
    });
    live(rt, callers, stop).await
}

/// One pass over the carts: migrated entities per second, and its seconds.
async fn pass(rt: &Runtime) -> anyhow::Result<(f64, f64)> {
    let started = Instant::now();
    let plan = Migrate::new().batch(PASS_BATCH);
    let report = rt
        .admin()
        .migrate("cart", plan, &Progress::default())
        .await?;
    let secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        report.changed == CARTS as u64 && report.failed == 0,
        "the pass migrated {} of {CARTS} carts ({} failed)",
        report.changed,
        report.failed
    );
    Ok((CARTS as f64 / secs, secs))
}

/// Migrates 100,000 dormant carts alone (the baseline pass) and measures live callers alone
/// (their baseline); then migrates another 100,000 while the live callers call.
pub async fn migrate(options: &Options) -> anyhow::Result<Report> {
    let callers = options.callers.clamp(1, 64);
    let (rt, _alone) = old_carts(options, "migrate-alone").await?;
    let (alone_per_sec, _) = pass(&rt).await?;
    let (live_alone, live_alone_p99) = live_for(&rt, callers, Duration::from_secs(3)).await?;
    rt.shutdown().await;

    let (rt, _live) = old_carts(options, "migrate-live").await?;
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let (rt, stop) = (rt.clone(), Arc::clone(&stop));
        tokio::spawn(async move { live(&rt, callers, stop).await })
    };
    let passed = pass(&rt).await;
    stop.store(true, Ordering::Relaxed);
    let (live_during, live_during_p99) = traffic.await??;
    let (with_live_per_sec, pass_secs) = passed?;
    rt.shutdown().await;
    Ok(Report::Migrate {
        entities: CARTS,
        callers,
        alone_per_sec,
        with_live_per_sec,
        pass_secs,
        live_alone_calls_per_sec: live_alone,
        live_alone_p99_us: live_alone_p99,
        live_during_calls_per_sec: live_during,
        live_during_p99_us: live_during_p99,
    })
}
