//! The `backup` workload: an online backup of a store of a million entities while live
//! callers keep calling, against the same callers with no backup running (the baseline, in
//! the same run); then the restore of that backup.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use perennial_core::Runtime;
use perennial_storage::Store;
use perennial_storage_sqlite::{self as sqlite, SqliteStore};

use crate::load::{Live, live, live_for};
use crate::query::store_carts;
use crate::workloads::scratch;
use crate::{Options, Report};

/// Entities stored before the backup.
const ENTITIES: usize = 1_000_000;
/// How long the callers run before the backup starts, and alone for the baseline.
const WARM: Duration = Duration::from_secs(1);

/// Stores a million carts, starts the demo kinds on them with live callers, backs the
/// directory up beside them, then restores the backup into a new directory.
pub async fn backup(options: &Options) -> anyhow::Result<Report> {
    let callers = options.callers.clamp(1, 64);
    let dir = scratch(options, "backup")?;
    let data = dir.path.join("data");
    let store = SqliteStore::open(&data)?;
    store_carts(&store, ENTITIES, |n| {
        format!(r#"{{"items":{{"tea":2.5,"sku-{}":{}}}}}"#, n % 977, n % 50)
    })
    .await?;
    // A clean close folds every state into the table, as on a node that ran a while.
    store.close().await?;
    let store = SqliteStore::open(&data)?;
    let rt = perennial_demo::register(Runtime::builder().store(store))
        .start()
        .await?;
    let alone: Live = live_for(&rt, callers, WARM * 3).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let (rt, stop) = (rt.clone(), Arc::clone(&stop));
        tokio::spawn(async move { live(&rt, callers, stop).await })
    };
    tokio::time::sleep(WARM).await;
    let file = dir.path.join("backup.db");
    let (from, to) = (data.clone(), file.clone());
    let taken = tokio::task::spawn_blocking(move || sqlite::backup(from, to)).await?;
    stop.store(true, Ordering::Relaxed);
    let during: Live = traffic.await??;
    let report = taken?;
    rt.shutdown().await;

    let started = Instant::now();
    let summary = sqlite::restore(&file, dir.path.join("restored"))?;
    let restore_secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        summary.entities >= ENTITIES as u64,
        "the backup holds {} entities, not at least {ENTITIES}",
        summary.entities
    );
    Ok(Report::Backup {
        entities: summary.entities,
        bytes: report.bytes,
        backup_secs: report.took_us as f64 / 1e6,
        snapshot_ms: report.snapshot_us as f64 / 1e3,
        restore_secs,
        callers,
        live_alone_calls_per_sec: alone.per_sec,
        live_alone_p99_us: alone.p99_us,
        live_alone_max_us: alone.max_us,
        live_during_calls_per_sec: during.per_sec,
        live_during_p99_us: during.p99_us,
        live_during_max_us: during.max_us,
    })
}
