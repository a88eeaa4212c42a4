//! The `large` workload: a store of ten million entities of 1 KiB, far larger than SQLite's
//! page cache, made once and reused: how long a restart takes to serve its first call, what
//! the first call to an entity not yet active costs, and durable calls per second spread over
//! all of them.
//!
//! Before each restart the store's files are dropped from the operating system's page cache
//! (`posix_fadvise(DONTNEED)` on its own files, nothing else), so those figures are a node's
//! whose store is read from the disk. The calls are timed twice: from the disk, and once the
//! store's files were read into the page cache, as on a node that has run a while (SQLite's
//! own cache, 64 MiB, holds a small part of it either way).

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use perennial_core::{Ctx, Process, Runtime};
use perennial_storage::Store;
use perennial_storage_sqlite::SqliteStore;
use serde::{Deserialize, Serialize};

use crate::load::{Pick, histogram, timed};
use crate::node::{self, Node};
use crate::query::{micros, store_states};
use crate::{Options, Report};

/// Bytes of text in each stored profile, so that its JSON is about 1 KiB.
const BIO_BYTES: usize = 1_000;
/// Entities stored per progress mark while the store is made.
const FILL_STEP: usize = 200_000;
/// Restarts timed (the median and the slowest are reported).
const RESTARTS: usize = 5;
/// First calls to entities not active, one at a time.
const COLD_CALLS: usize = 2_000;
/// The file in the workload's directory that says how many entities are stored so far.
const FILLED: &str = "filled";
/// kill -9 trials of a node serving the store (the median and the slowest are reported).
const CRASHES: usize = 3;
/// How long callers call a node before it is killed.
const CALLS_BEFORE_KILL: Duration = Duration::from_secs(2);
/// Counters the callers of a node about to be killed add to.
const COUNTERS: usize = 10_000;

/// An entity of about 1 KiB: a visit count and a text.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Profile {
    visits: u64,
    bio: String,
}

/// The only message: one more visit.
#[derive(Debug, Serialize, Deserialize)]
struct Visit;

impl Process for Profile {
    const KIND: &'static str = "profile";
    type Msg = Visit;
    type Reply = u64;
    type Error = std::convert::Infallible;

    fn handle(&mut self, _: Visit, _: &mut Ctx<'_, Self>) -> Result<u64, Self::Error> {
        self.visits += 1;
        Ok(self.visits)
    }
}

fn cold_calls(entities: usize) -> usize {
    COLD_CALLS.min(entities / 10).max(1)
}

fn id_of(n: usize) -> String {
    format!("p-{n:08}")
}

/// The stored JSON of profile `n`: no two alike, about 1 KiB.
fn state_of(n: usize) -> String {
    let line = format!("profile {n:08} ");
    let bio: String = line.chars().cycle().take(BIO_BYTES).collect();
    format!(r#"{{"visits":0,"bio":"{bio}"}}"#)
}

/// Makes the store (or finishes making it) in `options.dir/large`, then restarts a node on
/// it five times; then, from the disk and again from the page cache, calls 2,000 entities
/// (at most a tenth of them) one at a time and runs `options.callers` callers over all the
/// entities for `options.duration`.
pub async fn large(options: &Options) -> anyhow::Result<Report> {
    let entities = options.large_entities;
    anyhow::ensure!(entities > 0, "the large workload needs at least one entity");
    let (path, _temp) = match &options.dir {
        Some(dir) => (dir.join("large"), None),
        None => {
            let temp = tempfile::Builder::new()
                .prefix("perennial-bench-large-")
                .tempdir()?;
            (temp.path().to_path_buf(), Some(temp))
        }
    };
    let fill_secs = fill(&path, entities).await?;
    let store_bytes = files(&path)?
        .iter()
        .map(|f| f.metadata().map(|m| m.len()).unwrap_or(0))
        .sum();

    // Entities are picked at random; none is called twice, so every call finds it inactive.
    let mut pick = Pick::new(0x1a29e);
    let mut called = std::collections::HashSet::new();
    let mut fresh = move || loop {
        let n = pick.below(entities);
        if called.insert(n) || called.len() >= entities {
            return n;
        }
    };

    let mut restarts = Vec::with_capacity(RESTARTS);
    for _ in 0..RESTARTS {
        evict(&path)?;
        let started = Instant::now();
        let (store, rt) = open(&path).await?;
        let n = fresh();
        let visits = visit(&rt, n).await?;
        restarts.push(started.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(visits >= 1, "{} came back with {visits} visits", id_of(n));
        rt.shutdown().await;
        store.close().await?;
    }

    evict(&path)?;
    let from_disk = pass(&path, entities, options, &mut fresh).await?;
    warm(&path)?;
    let from_page_cache = pass(&path, entities, options, &mut fresh).await?;
    let after_kill_9 = match &options.node_binary {
        Some(binary) => Some(crashes(binary, &path, options).await?),
        None => None,
    };

    restarts.sort_by(f64::total_cmp);
    Ok(Report::Large {
        entities,
        store_bytes,
        fill_secs,
        restart_to_first_call_ms: restarts[restarts.len() / 2],
        restart_max_ms: restarts.last().copied().unwrap_or(0.0),
        cold_calls: cold_calls(entities),
        callers: options.callers,
        from_disk,
        from_page_cache,
        after_kill_9,
    })
}

/// What one pass over the large store measured: first calls to inactive entities one at a
/// time, then callers over all of them.
#[derive(Debug, Clone, Serialize)]
pub struct LargePass {
    /// Median latency of a first call to an inactive entity, in microseconds.
    pub cold_p50_us: u64,
    /// Its 99th percentile, in microseconds.
    pub cold_p99_us: u64,
    /// The slowest of them, in microseconds.
    pub cold_max_us: u64,
    /// Durable calls per second, each to an entity picked at random among all of them.
    pub calls_per_sec: f64,
    /// Median latency of those calls, in microseconds.
    pub p50_us: u64,
    /// 99th percentile latency of those calls, in microseconds.
    pub p99_us: u64,
    /// Activations during the pass.
    pub activations: u64,
}

/// What restarting a node killed with SIGKILL under load measured.
#[derive(Debug, Clone, Serialize)]
pub struct LargeCrash {
    /// Median time from starting a node's process to the answer of its first call, in
    /// milliseconds.
    pub restart_to_first_call_ms: f64,
    /// The slowest of those restarts, in milliseconds.
    pub restart_max_ms: f64,
    /// The fewest calls a node answered in the moments before it was killed.
    pub min_calls_before_kill: u64,
}

/// Runs `binary` as `perennial serve` on the store, kills it with SIGKILL while `options.callers`
/// callers add to counters over HTTP, and times a new node from the start of its process to
/// its first answered call; [`CRASHES`] times. The page cache is kept, as when only the
/// process died. The last node is stopped cleanly, so that the store is folded for later
/// runs.
async fn crashes(binary: &Path, path: &Path, options: &Options) -> anyhow::Result<LargeCrash> {
    let data = path
        .to_str()
        .context("the data directory's path is not UTF-8")?;
    let http = node::http(options.callers);
    let mut node = Node::start(binary, &["--data", data])?;
    let mut restarts = Vec::with_capacity(CRASHES);
    let mut min_calls_before_kill = u64::MAX;
    for _ in 0..CRASHES {
        let answered = Arc::new(AtomicU64::new(0));
        let killed = Arc::new(AtomicBool::new(false));
        let addr = node.addr;
        let callers: Vec<_> = (0..options.callers)
            .map(|c| {
                let (http, answered, killed) =
                    (http.clone(), Arc::clone(&answered), Arc::clone(&killed));
                tokio::spawn(async move {
                    let mut pick = Pick::new(c as u64 + 1);
                    while !killed.load(Ordering::Relaxed) {
                        let id = format!("c{}", pick.below(COUNTERS));
                        // Calls under way when the node dies fail; that is the point.
                        if let Ok(true) = node::add(&http, addr, &id).await {
                            answered.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        tokio::time::sleep(CALLS_BEFORE_KILL).await;
        node.kill9()?;
        killed.store(true, Ordering::Relaxed);
        for caller in callers {
            caller.await?;
        }
        min_calls_before_kill = min_calls_before_kill.min(answered.load(Ordering::Relaxed));
        let started = Instant::now();
        node = Node::start(binary, &["--data", data])?;
        anyhow::ensure!(
            node::add(&http, node.addr, "first").await?,
            "the first call after a restart failed"
        );
        restarts.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    node.stop()?;
    anyhow::ensure!(
        min_calls_before_kill > 0,
        "no call was answered before a kill"
    );
    restarts.sort_by(f64::total_cmp);
    Ok(LargeCrash {
        restart_to_first_call_ms: restarts[restarts.len() / 2],
        restart_max_ms: restarts.last().copied().unwrap_or(0.0),
        min_calls_before_kill,
    })
}

/// Opens a node on the store (nothing resident), makes its first calls one at a
/// time, then runs `options.callers` callers over all the entities for `options.duration`.
async fn pass(
    path: &Path,
    entities: usize,
    options: &Options,
    fresh: &mut impl FnMut() -> usize,
) -> anyhow::Result<LargePass> {
    let (store, rt) = open(path).await?;
    let mut cold = histogram()?;
    for _ in 0..cold_calls(entities) {
        let started = Instant::now();
        visit(&rt, fresh()).await?;
        cold.saturating_record(micros(started.elapsed()).max(1));
    }
    let caller = rt.clone();
    let measured = timed(options.callers, options.duration, move |_, pick| {
        let (rt, n) = (caller.clone(), pick.below(entities));
        async move { visit(&rt, n).await.map(drop) }
    })
    .await?;
    let activations = rt.stats().kinds.iter().map(|k| k.activations).sum::<u64>();
    rt.shutdown().await;
    store.close().await?;
    Ok(LargePass {
        cold_p50_us: cold.value_at_quantile(0.50),
        cold_p99_us: cold.value_at_quantile(0.99),
        cold_max_us: cold.max(),
        calls_per_sec: measured.per_sec(),
        p50_us: measured.p50_us(),
        p99_us: measured.p99_us(),
        activations,
    })
}

/// One durable visit to profile `n`; its visits so far.
async fn visit(rt: &Runtime, n: usize) -> anyhow::Result<u64> {
    rt.get::<Profile>(id_of(n))
        .call(Visit)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// A node on the store at `path`, as `perennial serve` opens it (SQLite's default cache).
async fn open(path: &Path) -> anyhow::Result<(SqliteStore, Runtime)> {
    let store = SqliteStore::open(path)?;
    let rt = Runtime::builder()
        .store(store.clone())
        .register_snapshot::<Profile>()
        .start()
        .await?;
    Ok((store, rt))
}

/// Stores the profiles that `path` does not hold yet, resuming where an interrupted run
/// stopped; returns how long that took, or `None` when the store was already whole.
async fn fill(path: &Path, entities: usize) -> anyhow::Result<Option<f64>> {
    let mark = path.join(FILLED);
    let done: usize = match std::fs::read_to_string(&mark) {
        Ok(text) => text
            .trim()
            .parse()
            .with_context(|| format!("{} is not a count", mark.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", mark.display())),
    };
    anyhow::ensure!(
        done <= entities,
        "{} holds {done} profiles, more than the {entities} asked for: give \
         --large-entities {done}, or another --data directory",
        path.display()
    );
    if done == entities {
        return Ok(None);
    }
    let started = Instant::now();
    let store = SqliteStore::open(path)?;
    for from in (done..entities).step_by(FILL_STEP) {
        let to = (from + FILL_STEP).min(entities);
        store_states(&store, Profile::KIND, from..to, id_of, state_of).await?;
        // Written after the states are durable: a run stopped between the two stores a
        // step again, which writes the same states.
        std::fs::write(&mark, to.to_string())
            .with_context(|| format!("cannot write {}", mark.display()))?;
    }
    // A clean close folds every state into the table, as on a node that ran a while.
    store.close().await?;
    Ok(Some(started.elapsed().as_secs_f64()))
}

/// The store's files in `path`.
fn files(path: &Path) -> anyhow::Result<Vec<std::fs::File>> {
    let mut files = Vec::new();
    for entry in
        std::fs::read_dir(path).with_context(|| format!("cannot read {}", path.display()))?
    {
        let entry: PathBuf = entry?.path();
        if entry.is_file() && entry.file_name().is_some_and(|n| n != FILLED) {
            files.push(std::fs::File::open(&entry)?);
        }
    }
    Ok(files)
}

/// Reads the store's files once, so that the operating system's page cache holds them (the
/// machine needs the memory for it): what a node that has run a while reads from.
fn warm(path: &Path) -> anyhow::Result<()> {
    use std::io::Read;
    let mut buffer = vec![0u8; 1 << 20];
    for mut file in files(path)? {
        while file.read(&mut buffer).context("cannot read the store")? > 0 {}
    }
    Ok(())
}

/// Drops the store's files from the page cache (they were closed cleanly, so every page is
/// on disk): the next reads come from the disk.
fn evict(path: &Path) -> anyhow::Result<()> {
    for file in files(path)? {
        nix::fcntl::posix_fadvise(
            file.as_fd(),
            0,
            0,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
        )
        .context("cannot drop the store from the page cache")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// The workload runs small: it makes the store, reuses it on a second run, and every
    /// call it times was answered.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn makes_the_store_once_and_times_every_part() {
        let dir = tempfile::tempdir().unwrap();
        let options = Options {
            duration: Duration::from_millis(300),
            callers: 8,
            large_entities: 4_000,
            dir: Some(dir.path().to_path_buf()),
            ..Options::default()
        };
        let Report::Large {
            fill_secs,
            cold_calls,
            from_disk,
            from_page_cache,
            store_bytes,
            ..
        } = large(&options).await.unwrap()
        else {
            panic!("not the large report")
        };
        assert!(fill_secs.is_some());
        assert_eq!(cold_calls, 400);
        for pass in [from_disk, from_page_cache] {
            assert!(pass.calls_per_sec > 0.0);
            assert!(pass.activations >= 400, "{pass:?}");
        }
        assert!(store_bytes > 4_000 * BIO_BYTES as u64, "{store_bytes}");
        let Report::Large { fill_secs, .. } = large(&options).await.unwrap() else {
            panic!("not the large report")
        };
        assert_eq!(fill_secs, None, "the second run reuses the store");
        let fewer = Options {
            large_entities: 3_000,
            ..options
        };
        let refused = large(&fewer).await.unwrap_err().to_string();
        assert!(refused.contains("--large-entities 4000"), "{refused}");
    }

    #[test]
    fn a_profile_is_about_a_kibibyte() {
        let state = state_of(12);
        assert!((1_000..1_100).contains(&state.len()), "{}", state.len());
        let profile: Profile = serde_json::from_str(&state).unwrap();
        assert_eq!(profile.visits, 0);
    }
}
