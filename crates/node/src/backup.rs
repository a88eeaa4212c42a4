//! `perennial backup` and `perennial restore`: online backups of the embedded store, checked
//! copies, and new data directories made of them; and the periodic backups `serve` takes
//! when its configuration names a `backup_dir`. The copying itself is
//! [`perennial_storage_sqlite::backup`].

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use perennial_storage_sqlite::{BackupSummary, backup, check_backup, restore};

use crate::output;
use crate::upgrade;

/// What `perennial backup` does.
#[derive(Debug, clap::Args)]
pub(crate) struct BackupArgs {
    /// The data directory to copy; a node may be serving it meanwhile.
    #[arg(long, default_value = "./perennial-data")]
    data: PathBuf,
    /// The backup file to write (it must not exist).
    #[arg(long, value_name = "FILE", required_unless_present = "verify")]
    to: Option<PathBuf>,
    /// Check a backup file instead: SQLite's integrity check, then every stored state
    /// decoded (and every journal replayed) with this build's kinds, on a scratch copy.
    #[arg(long, value_name = "FILE", conflicts_with = "to")]
    verify: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// What `perennial restore` does.
#[derive(Debug, clap::Args)]
pub(crate) struct RestoreArgs {
    /// The backup file.
    #[arg(long, value_name = "FILE")]
    from: PathBuf,
    /// The new data directory (it must hold no data); `perennial serve --data` it next.
    #[arg(long, value_name = "DIR")]
    data: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run_backup(args: BackupArgs) -> anyhow::Result<()> {
    if let Some(file) = &args.verify {
        return crate::block_on(verify(file, args.json));
    }
    let Some(to) = &args.to else {
        anyhow::bail!("give --to FILE (or --verify FILE)");
    };
    let report = backup(&args.data, to)
        .with_context(|| format!("cannot back up {}", args.data.display()))?;
    if args.json {
        output::json(&serde_json::to_value(&report)?);
    } else {
        output::answer(&format!(
            "backed up {} to {} ({} bytes; snapshot held {:.1} ms, {:.1} ms in all)",
            args.data.display(),
            report.file.display(),
            report.bytes,
            report.snapshot_us as f64 / 1000.0,
            report.took_us as f64 / 1000.0
        ));
    }
    Ok(())
}

pub(crate) fn run_restore(args: RestoreArgs) -> anyhow::Result<()> {
    let summary = restore(&args.from, &args.data).with_context(|| {
        format!(
            "cannot restore {} into {}",
            args.from.display(),
            args.data.display()
        )
    })?;
    if args.json {
        output::json(&serde_json::to_value(&summary)?);
    } else {
        output::answer(&format!(
            "restored {} into {}: {}; serve it with `perennial serve --data {}`",
            args.from.display(),
            args.data.display(),
            describe(&summary),
            args.data.display()
        ));
    }
    Ok(())
}

/// Checks the backup `file` page by page, then decodes and replays every stored entity of
/// this build's kinds on a scratch copy (the file itself is only read).
async fn verify(file: &Path, json: bool) -> anyhow::Result<()> {
    let summary = check_backup(file).with_context(|| format!("{} is damaged", file.display()))?;
    let scratch = tempfile::tempdir().context("cannot make a scratch directory")?;
    let data = scratch.path().join("data");
    restore(file, &data).with_context(|| format!("cannot copy {}", file.display()))?;
    if json {
        output::json(&serde_json::to_value(&summary)?);
    } else {
        output::answer(&format!(
            "{}: intact, {}",
            file.display(),
            describe(&summary)
        ));
    }
    upgrade::verify_replay(upgrade::Target::data_dir(data, json)).await
}

fn describe(s: &BackupSummary) -> String {
    format!(
        "format {}, {} entities, {} journal entries, {} timers and messages pending",
        s.format, s.entities, s.journal_entries, s.pending
    )
}

/// Periodic backups of the data directory `data` into `dir`: one every `every`, named by
/// the time it was taken, keeping the newest `keep`. Runs until the node stops; a failed
/// backup is logged and tried again at the next period.
pub(crate) async fn periodic(data: PathBuf, dir: PathBuf, every: Duration, keep: usize) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is now: the first backup is taken one period after the start.
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let (data, dir) = (data.clone(), dir.clone());
        let taken = tokio::task::spawn_blocking(move || take(&data, &dir, keep)).await;
        match taken {
            Ok(Ok(report)) => tracing::info!(
                file = %report.file.display(),
                bytes = report.bytes,
                snapshot_ms = report.snapshot_us / 1000,
                "backed up"
            ),
            Ok(Err(error)) => tracing::error!(error = format!("{error:#}"), "backup failed"),
            Err(error) => tracing::error!(%error, "backup failed"),
        }
    }
}

/// The prefix and suffix of a periodic backup's name, around the time it was taken.
const PREFIX: &str = "perennial-";
const SUFFIX: &str = ".db";

/// Takes one periodic backup, then deletes the oldest beyond `keep`.
fn take(
    data: &Path,
    dir: &Path,
    keep: usize,
) -> anyhow::Result<perennial_storage_sqlite::BackupReport> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the backup directory {}", dir.display()))?;
    let at = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
    let report = backup(data, dir.join(format!("{PREFIX}{at}{SUFFIX}")))?;
    let mut taken: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(PREFIX) && n.ends_with(SUFFIX))
        })
        .collect();
    // Their names sort as their times do.
    taken.sort();
    let excess = taken.len().saturating_sub(keep.max(1));
    for old in &taken[..excess] {
        std::fs::remove_file(old)
            .with_context(|| format!("cannot delete the old backup {}", old.display()))?;
    }
    Ok(report)
}
