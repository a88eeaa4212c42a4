//! The workloads. Each sets up its own runtime and data, measures, and cleans up.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use perennial_core::{EntityRef, Runtime, Snapshots};
use perennial_demo::Counter;
use perennial_demo::cache::{Cache, CacheMsg};
use perennial_demo::counter::CounterMsg;
use perennial_storage::Store;
use perennial_storage_sqlite::SqliteStore;
use tokio::sync::oneshot;

use crate::load::{each, timed};
use crate::{JournalActivation, Options, Report, StepCost};

/// A directory for one workload's data, removed afterwards unless the user named it.
pub(crate) struct Scratch {
    pub(crate) path: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

pub(crate) fn scratch(options: &Options, name: &str) -> anyhow::Result<Scratch> {
    match &options.dir {
        Some(dir) => {
            let path = dir.join(name);
            if path.exists() {
                std::fs::remove_dir_all(&path)
                    .with_context(|| format!("cannot clear {}", path.display()))?;
            }
            Ok(Scratch { path, _temp: None })
        }
        None => {
            let temp = tempfile::Builder::new()
                .prefix(&format!("perennial-bench-{name}-"))
                .tempdir()?;
            Ok(Scratch {
                path: temp.path().to_path_buf(),
                _temp: Some(temp),
            })
        }
    }
}

/// Adds one to a counter, durably.
pub(crate) async fn add_one(counter: EntityRef<Counter>) -> anyhow::Result<()> {
    counter
        .call(CounterMsg::Add(1))
        .await
        .map(drop)
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// Handles to counters `c0` … `c{n-1}`.
pub(crate) fn handles(rt: &Runtime, n: usize) -> Arc<Vec<EntityRef<Counter>>> {
    Arc::new((0..n).map(|i| rt.get::<Counter>(format!("c{i}"))).collect())
}

/// Durable calls through the runtime on SQLite, then the database approach, in one run.
pub async fn durable(options: &Options) -> anyhow::Result<Report> {
    let dir = scratch(options, "durable")?;
    let store = SqliteStore::open(dir.path.join("runtime"))?;
    let runtime = durable_calls(Arc::new(store), options).await?;
    let baseline = database_approach(&dir.path.join("baseline"), options).await?;
    Ok(runtime.report("sqlite", options, &baseline))
}

/// What the runtime did in a durable workload.
pub(crate) struct DurableRun {
    measured: crate::load::Measured,
    commits_per_sec: f64,
    steps_per_commit: f64,
}

impl DurableRun {
    pub(crate) fn report(
        &self,
        store: &'static str,
        options: &Options,
        baseline: &crate::load::Measured,
    ) -> Report {
        Report::Durable {
            store,
            entities: options.entities,
            callers: options.callers,
            calls_per_sec: self.measured.per_sec(),
            p50_us: self.measured.p50_us(),
            p99_us: self.measured.p99_us(),
            commits_per_sec: self.commits_per_sec,
            steps_per_commit: self.steps_per_commit,
            baseline_calls_per_sec: baseline.per_sec(),
            baseline_p50_us: baseline.p50_us(),
            baseline_p99_us: baseline.p99_us(),
            ratio: self.measured.per_sec() / baseline.per_sec(),
        }
    }
}

/// Durable `add` calls from many callers to many counters through the runtime on `store`;
/// closes the store.
pub(crate) async fn durable_calls(
    store: Arc<dyn perennial_storage::Store>,
    options: &Options,
) -> anyhow::Result<DurableRun> {
    let rt = Runtime::builder()
        .store(Arc::clone(&store))
        .register_snapshot::<Counter>()
        .start()
        .await?;
    let counters = handles(&rt, options.entities);
    // Create every entity first, so the timed part measures steady state.
    let warm = Arc::clone(&counters);
    each(options.entities, options.callers, move |i| {
        let h = warm[i].clone();
        add_one(h)
    })
    .await?;
    let before = rt.stats().commit;
    let n = options.entities;
    let calls = Arc::clone(&counters);
    let measured = timed(options.callers, options.duration, move |_, pick| {
        let h = calls[pick.below(n)].clone();
        add_one(h)
    })
    .await?;
    let after = rt.stats().commit;
    rt.shutdown().await;
    store.close().await?;
    let commits = (after.commits - before.commits) as f64;
    let steps = (after.steps - before.steps) as f64;
    Ok(DurableRun {
        commits_per_sec: commits / measured.elapsed.as_secs_f64(),
        steps_per_commit: if commits > 0.0 { steps / commits } else { 0.0 },
        measured,
    })
}

/// The same workload without the runtime: each call is one SQLite transaction that reads the
/// counter, adds one and writes it back, with the runtime's durability settings (WAL,
/// `synchronous=FULL`). One connection serves the calls in turn: SQLite has one writer at a
/// time, and a single connection spares it busy-waiting, so this is the baseline's best case.
async fn database_approach(dir: &Path, options: &Options) -> anyhow::Result<crate::load::Measured> {
    std::fs::create_dir_all(dir)?;
    let conn = rusqlite::Connection::open(dir.join("baseline.db"))?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    anyhow::ensure!(mode == "wal", "the baseline database is not in WAL mode");
    conn.execute_batch(
        "PRAGMA synchronous = FULL;
         CREATE TABLE counters (id TEXT PRIMARY KEY, state TEXT NOT NULL) WITHOUT ROWID;",
    )?;
    {
        let tx = conn.unchecked_transaction()?;
        let mut insert = tx.prepare("INSERT INTO counters (id, state) VALUES (?1, ?2)")?;
        for i in 0..options.entities {
            insert.execute((format!("c{i}"), r#"{"value":1}"#))?;
        }
        drop(insert);
        tx.commit()?;
    }
    let (jobs, queue) = std::sync::mpsc::channel::<(usize, oneshot::Sender<anyhow::Result<()>>)>();
    let worker = std::thread::spawn(move || {
        while let Ok((i, reply)) = queue.recv() {
            let _ = reply.send(one_transaction(&conn, i));
        }
    });
    let n = options.entities;
    let measured = timed(options.callers, options.duration, move |_, pick| {
        let i = pick.below(n);
        let (tx, rx) = oneshot::channel();
        let sent = jobs.send((i, tx));
        async move {
            sent.map_err(|_| anyhow::anyhow!("the baseline worker stopped"))?;
            rx.await?
        }
    })
    .await?;
    worker
        .join()
        .map_err(|_| anyhow::anyhow!("the baseline worker panicked"))?;
    Ok(measured)
}

fn one_transaction(conn: &rusqlite::Connection, i: usize) -> anyhow::Result<()> {
    let id = format!("c{i}");
    let tx = conn.unchecked_transaction()?;
    let state: String = tx
        .prepare_cached("SELECT state FROM counters WHERE id = ?1")?
        .query_row([&id], |r| r.get(0))?;
    let mut counter: Counter = serde_json::from_str(&state)?;
    counter.value += 1;
    tx.prepare_cached("UPDATE counters SET state = ?2 WHERE id = ?1")?
        .execute((&id, serde_json::to_string(&counter)?))?;
    tx.commit()?;
    Ok(())
}

/// Calls to an in-memory (`Ephemeral`) counter: the runtime's own cost per call.
pub async fn ephemeral(options: &Options) -> anyhow::Result<Report> {
    let rt = Runtime::builder()
        .store(perennial_storage::MemoryStore::new())
        .register_ephemeral::<Counter>()
        .start()
        .await?;
    let counters = handles(&rt, options.entities);
    let n = options.entities;
    let measured = timed(options.callers, options.duration, move |_, pick| {
        let h = counters[pick.below(n)].clone();
        add_one(h)
    })
    .await?;
    rt.shutdown().await;
    Ok(Report::Ephemeral {
        entities: options.entities,
        callers: options.callers,
        calls_per_sec: measured.per_sec(),
        p50_us: measured.p50_us(),
        p99_us: measured.p99_us(),
    })
}

/// Seconds the memory workload waits, once its calls are answered, before it measures: the
/// last batches commit, tasks end, and the store folds its log.
const SETTLE: u64 = 5;

/// Makes `resident_entities` counters resident and idle, and measures the growth of the
/// process's resident set. SQLite's page cache is kept small (2 MiB per connection) so the
/// figure is the entities' cost, not the cache's.
pub async fn resident(options: &Options) -> anyhow::Result<Report> {
    let dir = scratch(options, "resident")?;
    let rt = Runtime::builder()
        .store(small_cache_store(&dir.path)?)
        .register_snapshot::<Counter>()
        .max_resident(options.resident_entities + 1)
        .max_resident_bytes(usize::MAX)
        .start()
        .await?;
    let rss_before = rss_bytes()?;
    let activate = rt.clone();
    each(options.resident_entities, options.callers, move |i| {
        let h = activate.get::<Counter>(format!("r{i}"));
        add_one(h)
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(SETTLE)).await;
    let rss_after = rss_bytes()?;
    let resident = rt.stats().resident;
    rt.shutdown().await;
    Ok(Report::Resident {
        entities: options.resident_entities,
        resident,
        bytes_per_entity: rss_after.saturating_sub(rss_before) as f64 / resident.max(1) as f64,
        rss_before,
        rss_after,
    })
}

/// Stores `entities` counters, restarts the runtime, and activates each of them from SQLite.
pub async fn activation(options: &Options) -> anyhow::Result<Report> {
    let dir = scratch(options, "activation")?;
    let n = options.resident_entities.min(200_000).max(options.entities);
    let store = small_cache_store(&dir.path)?;
    let rt = counters(&store).await?;
    let create = rt.clone();
    each(n, options.callers, move |i| {
        let h = create.get::<Counter>(format!("a{i}"));
        add_one(h)
    })
    .await?;
    rt.shutdown().await;
    // A fresh runtime and a reopened store: nothing is resident or pending in memory,
    // every state comes from the SQLite file.
    store.close().await?;
    drop(store);
    let store = small_cache_store(&dir.path)?;
    let rt = counters(&store).await?;
    let read = rt.clone();
    let measured = each(n, options.callers, move |i| {
        let h = read.get::<Counter>(format!("a{i}"));
        async move {
            let reply = h
                .call(CounterMsg::Get)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            anyhow::ensure!(reply.value == 1, "a{i} came back as {}", reply.value);
            Ok(())
        }
    })
    .await?;
    let activations = rt.stats().kinds.iter().map(|k| k.activations).sum::<u64>();
    anyhow::ensure!(
        activations as usize >= n,
        "only {activations} of {n} activations happened"
    );
    rt.shutdown().await;
    store.close().await?;
    Ok(Report::Activation {
        entities: n,
        activations_per_sec: measured.per_sec(),
        p50_us: measured.p50_us(),
        p99_us: measured.p99_us(),
    })
}

/// Journal lengths whose activation time the journal workload measures.
const JOURNAL_LENGTHS: [usize; 3] = [10, 1_000, 100_000];
/// With snapshots, the journal workload writes one every this many steps.
const JOURNAL_SNAPSHOT_EVERY: u64 = 64;
/// How many times each activation is timed (the median is reported).
const ACTIVATION_RUNS: usize = 5;

/// `Journal` kinds: activation time for journals of 10, 1,000 and 100,000 entries, with and
/// without snapshots (hence replay speed), and the cost of a tiny step on a state of 1 KiB,
/// 1 MiB and 10 MiB in `Snapshot` and `Journal` modes.
pub async fn journal(options: &Options) -> anyhow::Result<Report> {
    let dir = scratch(options, "journal")?;
    let mut activations = Vec::new();
    for snapshots in [false, true] {
        let path = dir.path.join(if snapshots { "snapshots" } else { "plain" });
        let store = SqliteStore::open(&path)?;
        let rt = journal_counters(&store, snapshots).await?;
        for n in JOURNAL_LENGTHS {
            let h = rt.get::<Counter>(format!("j{n}"));
            // Many sends in flight at once, so the steps share commits.
            each(n, options.callers, move |_| add_one(h.clone())).await?;
        }
        rt.shutdown().await;
        store.close().await?;
        drop(store);
        let store = SqliteStore::open(&path)?;
        let rt = journal_counters(&store, snapshots).await?;
        for n in JOURNAL_LENGTHS {
            let h = rt.get::<Counter>(format!("j{n}"));
            let mut runs = Vec::with_capacity(ACTIVATION_RUNS);
            for _ in 0..ACTIVATION_RUNS {
                passivate_all(&rt).await?;
                let started = std::time::Instant::now();
                let reply = h
                    .call(CounterMsg::Get)
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                runs.push(started.elapsed());
                anyhow::ensure!(reply.value == n as i64, "j{n} replayed to {}", reply.value);
            }
            runs.sort();
            let median = runs[runs.len() / 2];
            let replayed = if snapshots {
                n % JOURNAL_SNAPSHOT_EVERY as usize
            } else {
                n
            };
            activations.push(JournalActivation {
                entries: n,
                snapshots,
                replayed,
                micros: median.as_micros() as u64,
            });
        }
        rt.shutdown().await;
        store.close().await?;
    }
    let longest = activations
        .iter()
        .find(|a| !a.snapshots && a.entries == 100_000)
        .context("the longest journal was not measured")?;
    let replay_entries_per_sec = longest.entries as f64 / (longest.micros.max(1) as f64 / 1e6);
    let mut steps = Vec::new();
    for (bytes, count) in [(1usize << 10, 200), (1 << 20, 100), (10 << 20, 30)] {
        for journal in [false, true] {
            let path = dir.path.join(format!("cache-{bytes}-{journal}"));
            steps.push(step_cost(&path, bytes, count, journal).await?);
        }
    }
    Ok(Report::Journal {
        replay_entries_per_sec,
        activations,
        steps,
    })
}

/// Times `count` tiny steps, one at a time, on a cache of `bytes` bytes.
async fn step_cost(
    path: &Path,
    bytes: usize,
    count: usize,
    journal: bool,
) -> anyhow::Result<StepCost> {
    let store = SqliteStore::open(path)?;
    let builder = Runtime::builder().store(store.clone());
    let builder = if journal {
        builder.register_journal::<Cache>()
    } else {
        builder.register_snapshot::<Cache>()
    };
    let rt = builder.start().await?;
    let cache = rt.get::<Cache>("hot");
    let value_bytes = 1000.min(bytes);
    let fill = CacheMsg::Fill {
        entries: u32::try_from(bytes / value_bytes)?,
        value_bytes: u32::try_from(value_bytes)?,
    };
    cache.call(fill).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut times = Vec::with_capacity(count);
    for i in 0..count {
        let put = CacheMsg::Put {
            key: "hot".into(),
            value: i.to_string(),
        };
        let started = std::time::Instant::now();
        cache.call(put).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        times.push(started.elapsed());
    }
    rt.shutdown().await;
    store.close().await?;
    times.sort();
    Ok(StepCost {
        state_bytes: bytes,
        mode: if journal { "journal" } else { "snapshot" },
        p50_us: times[times.len() / 2].as_micros() as u64,
        mean_us: (times.iter().sum::<Duration>() / count as u32).as_micros() as u64,
    })
}

/// Passivates every entity; an entity whose last call just returned may still be finishing
/// its run, so this tries again for a moment.
async fn passivate_all(rt: &Runtime) -> anyhow::Result<()> {
    for _ in 0..1000 {
        if rt.admin().passivate_idle() == 0 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    anyhow::bail!("an entity stayed resident")
}

/// A runtime hosting counters as a `Journal` kind on `store`.
async fn journal_counters(store: &SqliteStore, snapshots: bool) -> anyhow::Result<Runtime> {
    let builder = Runtime::builder().store(store.clone());
    let builder = if snapshots {
        builder.register_journal_with_snapshots::<Counter>(Snapshots::every(JOURNAL_SNAPSHOT_EVERY))
    } else {
        builder.register_journal::<Counter>()
    };
    Ok(builder.start().await?)
}

/// A runtime hosting counters on `store`.
async fn counters(store: &SqliteStore) -> anyhow::Result<Runtime> {
    Ok(Runtime::builder()
        .store(store.clone())
        .register_snapshot::<Counter>()
        .start()
        .await?)
}

pub(crate) fn small_cache_store(dir: &Path) -> anyhow::Result<SqliteStore> {
    let mut options = perennial_storage_sqlite::Options::default();
    options.cache_mib = 2;
    options.mmap_mib = 0;
    Ok(SqliteStore::open_with(dir, options)?)
}

/// The process's resident set size, from `/proc/self/status`.
pub(crate) fn rss_bytes() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")
        .context("measuring memory needs /proc/self/status (Linux)")?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS line in /proc/self/status")?;
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .context("malformed VmRSS line")?
        .parse()?;
    Ok(kib * 1024)
}
