//! `perennial migrate`, `snapshot-all` and `verify-replay`: passes over the stored entities
//! of a data directory (or a PostgreSQL store) with this build's kinds, for deploys that
//! change code. `migrate` writes every state stored at an older schema version back at the
//! current one; `snapshot-all` snapshots every `Journal` entity whose journal goes beyond
//! its latest snapshot (run it with the old build before deploying a new handler);
//! `verify-replay` writes nothing and names the entities this build could not activate.
//!
//! `migrate` and `snapshot-all` need the node stopped (a running node migrates through
//! `POST /v1/admin/kinds/{kind}/migrate` instead); `verify-replay` opens a PostgreSQL
//! store read-only, beside running nodes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use perennial_core::{Migrate, Progress, Runtime};
use perennial_storage::Store;
use perennial_storage_sqlite::SqliteStore;

use crate::output;

/// Where the entities are, and which kinds to go through.
#[derive(Debug, clap::Args)]
pub(crate) struct Target {
    /// The data directory (of a stopped node).
    #[arg(long, default_value = "./perennial-data", conflicts_with = "store")]
    data: PathBuf,
    /// A PostgreSQL store instead of a data directory: postgres://user@host/db.
    #[arg(long, value_name = "URL", env = "PERENNIAL_STORE")]
    store: Option<String>,
    /// The PostgreSQL schema of the store.
    #[arg(long, default_value = "perennial", env = "PERENNIAL_STORE_SCHEMA")]
    store_schema: String,
    /// Only this kind (default: every kind of this build that stores state).
    #[arg(long)]
    kind: Option<String>,
    /// Print the reports as JSON, one object per kind and line.
    #[arg(long)]
    json: bool,
}

impl Target {
    /// Every kind of this build in the data directory `data`.
    pub(crate) fn data_dir(data: PathBuf, json: bool) -> Self {
        Target {
            data,
            store: None,
            store_schema: "perennial".to_owned(),
            kind: None,
            json,
        }
    }
}

#[derive(Debug, clap::Args)]
pub(crate) struct MigrateArgs {
    #[command(flatten)]
    target: Target,
    /// Write nothing: report how many entities would change, and the first that fail.
    #[arg(long)]
    dry_run: bool,
    /// How many entities are rewritten at once.
    #[arg(long, default_value_t = 64)]
    batch: usize,
}

/// What a pass does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pass {
    Migrate,
    SnapshotAll,
}

pub(crate) async fn migrate(args: MigrateArgs, pass: Pass) -> anyhow::Result<()> {
    let target = &args.target;
    let rt = open(target, false).await?;
    let mut plan = Migrate::new().batch(args.batch);
    if args.dry_run {
        plan = plan.dry_run();
    }
    if pass == Pass::SnapshotAll {
        plan = plan.snapshot();
    }
    let kinds = kinds(&rt, target, pass)?;
    let mut failed = 0;
    for kind in kinds {
        let progress = Arc::new(Progress::default());
        let bar = bar(&kind, &progress, target.json);
        let report = rt.admin().migrate(&kind, plan, &progress).await;
        bar.finish_and_clear();
        let report = report.with_context(|| format!("cannot go through kind {kind}"))?;
        failed += report.failed;
        if target.json {
            output::json(&serde_json::to_value(&report)?);
            continue;
        }
        let verb = match (pass, args.dry_run) {
            (Pass::Migrate, false) => "migrated to schema version",
            (Pass::Migrate, true) => "would migrate to schema version",
            (Pass::SnapshotAll, false) => "snapshotted at schema version",
            (Pass::SnapshotAll, true) => "would snapshot at schema version",
        };
        output::answer(&format!(
            "{kind}: {} of {} entities {verb} {}, {} unchanged, {} failed ({:.1} s)",
            report.changed,
            report.examined,
            report.schema,
            report.unchanged,
            report.failed,
            report.elapsed_ms as f64 / 1000.0
        ));
        for f in &report.failures {
            output::answer(&format!("  {kind}/{}: {} ({})", f.id, f.error, f.code));
        }
    }
    rt.shutdown().await;
    anyhow::ensure!(
        failed == 0,
        "{failed} entities could not be {}; they are left as they were (see above)",
        if pass == Pass::Migrate {
            "migrated"
        } else {
            "snapshotted"
        }
    );
    Ok(())
}

pub(crate) async fn verify_replay(target: Target) -> anyhow::Result<()> {
    let rt = open(&target, true).await?;
    let mut failed = 0;
    for kind in kinds(&rt, &target, Pass::Migrate)? {
        let progress = Arc::new(Progress::default());
        let bar = bar(&kind, &progress, target.json);
        let report = rt.admin().verify_replay(&kind, &progress).await;
        bar.finish_and_clear();
        let report = report.with_context(|| format!("cannot check kind {kind}"))?;
        failed += report.failed;
        if target.json {
            output::json(&serde_json::to_value(&report)?);
            continue;
        }
        output::answer(&format!(
            "{kind}: {} entities checked, {} this build cannot activate",
            report.checked, report.failed
        ));
        for f in &report.failures {
            output::answer(&format!("  {kind}/{}: {} ({})", f.id, f.error, f.code));
        }
    }
    rt.shutdown().await;
    anyhow::ensure!(
        failed == 0,
        "{failed} entities would be quarantined by this build; snapshot them with the build \
         that wrote them (`perennial snapshot-all`), or fix the code, before deploying"
    );
    Ok(())
}

/// The kinds to go through: the one asked for, or every stored kind of this build (for
/// `snapshot-all`, the `Journal` ones).
fn kinds(rt: &Runtime, target: &Target, pass: Pass) -> anyhow::Result<Vec<String>> {
    use perennial_core::Persistence;
    if let Some(kind) = &target.kind {
        anyhow::ensure!(
            rt.persistence(kind).is_some(),
            "this build has no kind {kind:?}; its kinds are {}",
            rt.kinds().join(", ")
        );
        return Ok(vec![kind.clone()]);
    }
    Ok(rt
        .kinds()
        .into_iter()
        .filter(|k| match (pass, rt.persistence(k)) {
            (_, Some(Persistence::Ephemeral) | None) => false,
            (Pass::SnapshotAll, Some(p)) => p == Persistence::Journal,
            (Pass::Migrate, Some(_)) => true,
        })
        .map(str::to_owned)
        .collect())
}

/// A runtime of this build's kinds on the target's store: read-only (it claims no shard,
/// so running nodes keep theirs), or owning every shard (the node must be stopped).
async fn open(target: &Target, read_only: bool) -> anyhow::Result<Runtime> {
    let store: Arc<dyn Store> = match &target.store {
        None => Arc::new(SqliteStore::open(&target.data).with_context(|| {
            format!(
                "cannot open the data directory {} (stop the node that uses it, or work \
                 on a copy)",
                target.data.display()
            )
        })?),
        Some(url) => {
            let mut options = perennial_storage_postgres::Options::default();
            options.schema = target.store_schema.clone();
            let store = perennial_storage_postgres::PostgresStore::connect_with(url, options)
                .await
                .context("cannot use the PostgreSQL store")?;
            Arc::new(store)
        }
    };
    let builder = perennial_demo::register(Runtime::builder().store(store));
    Ok(if read_only {
        builder.start_read_only().await?
    } else {
        builder.start().await?
    })
}

/// A progress bar over `progress`, on stderr, drawn while the pass runs.
fn bar(kind: &str, progress: &Arc<Progress>, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let style =
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} entities, {per_sec}, eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
    let bar = ProgressBar::new(0)
        .with_style(style)
        .with_message(kind.to_owned());
    let (drawn, shared) = (bar.clone(), Arc::clone(progress));
    std::thread::spawn(move || {
        while !drawn.is_finished() {
            drawn.set_length(shared.total());
            drawn.set_position(shared.examined());
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    bar
}
