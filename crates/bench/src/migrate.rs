//! The `migrate` workload: a background migration pass over dormant carts stored by an
//! older release, while live callers keep calling counters. Baselines in the same run: the
//! same pass with no live traffic, and the live traffic with no pass.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use perennial_core::{Migrate, Progress, Runtime};
use perennial_storage::Store;
use perennial_storage_sqlite::SqliteStore;

use crate::load::{Live, live, live_for};
use crate::query::store_carts;
use crate::workloads::{Scratch, scratch};
use crate::{Options, Report};

/// Carts stored at schema version 1, per pass.
const CARTS: usize = 100_000;
/// Entities a pass rewrites at once.
const PASS_BATCH: usize = 64;

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
    let alone: Live = live_for(&rt, callers, Duration::from_secs(3)).await?;
    rt.shutdown().await;

    let (rt, _live) = old_carts(options, "migrate-live").await?;
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let (rt, stop) = (rt.clone(), Arc::clone(&stop));
        tokio::spawn(async move { live(&rt, callers, stop).await })
    };
    let passed = pass(&rt).await;
    stop.store(true, Ordering::Relaxed);
    let during: Live = traffic.await??;
    let (with_live_per_sec, pass_secs) = passed?;
    rt.shutdown().await;
    Ok(Report::Migrate {
        entities: CARTS,
        callers,
        alone_per_sec,
        with_live_per_sec,
        pass_secs,
        live_alone_calls_per_sec: alone.per_sec,
        live_alone_p99_us: alone.p99_us,
        live_during_calls_per_sec: during.per_sec,
        live_during_p99_us: during.p99_us,
    })
}
