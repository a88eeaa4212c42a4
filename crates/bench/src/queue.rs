//! The `queue` workload: jobs per key with a cap on how many of a key run at once, through
//! [`perennial_queue::JobQueue`] (on SQLite and on PostgreSQL), against what users do today
//! on the same PostgreSQL server in the same run: a jobs table claimed by workers with
//! `SELECT … FOR UPDATE SKIP LOCKED`, a row per key counting its running jobs.
//!
//! The same jobs in both: [`KEYS`] keys, [`JOBS`] jobs spread evenly over them (each key's
//! submitted together, one key after another), submitted by the bench's callers as fast as
//! they go; each job's work sleeps [`WORK`]. Measured alike:
//! jobs per second from the first submit until every job's work ended, the time from a job's
//! submit until its work starts (p50, p99), and the most jobs of one key whose work ran at
//! once, counted around the work itself (it must never exceed [`CAP`]).
//!
//! A fourth run puts the job queue on SQLite under a cap across keys as well
//! ([`Job::GLOBAL`], [`GLOBAL_CAP`]): its figures say what the permit pool costs, and the
//! most jobs of all keys running at once must never exceed that cap.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use hdrhistogram::Histogram;
use perennial_core::{EffectCtx, EffectError, Runtime};
use perennial_queue::{GlobalCap, Job, JobQueue, QueueMsg, QueueReply};
use perennial_storage::Store;
use perennial_storage_postgres::PostgresStore;
use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use crate::load::each;
use crate::postgres::{connections_in, server_url};
use crate::workloads::{scratch, small_cache_store};
use crate::{Options, Report};

/// Keys (users), each with a queue of its own.
pub(crate) const KEYS: usize = 1_000;
/// Jobs of one key that may run at once.
pub(crate) const CAP: u32 = 3;
/// Jobs of all keys that may run at once, in the run with a cap across keys.
pub(crate) const GLOBAL_CAP: u32 = 64;
/// Jobs in all.
pub(crate) const JOBS: usize = 30_000;
/// How long each job's work takes.
pub(crate) const WORK: Duration = Duration::from_millis(1);
/// The baseline's workers, sharing [`CONNECTIONS`] connections.
const WORKERS: usize = 64;
const CONNECTIONS: usize = 16;
/// How long an idle baseline worker waits before it looks for a job again.
const IDLE_POLL: Duration = Duration::from_millis(2);

/// The key of the `i`th job submitted: each key's jobs are submitted together, as a user
/// submits a batch of work, so that every key has more jobs waiting than it may run.
fn key_of(i: usize) -> usize {
    i / (JOBS / KEYS)
}

/// What every job's work reports to, in both approaches.
struct Gauges {
    /// Jobs of each key whose work runs now.
    running: Vec<AtomicU32>,
    /// The most of one key ever running at once.
    peak: AtomicU32,
    /// Jobs of all keys whose work runs now, and the most ever.
    running_all: AtomicU32,
    peak_all: AtomicU32,
    /// Submit to start of the work, in microseconds.
    start: Mutex<Histogram<u64>>,
    /// Jobs whose work ended.
    finished: AtomicUsize,
}

impl Gauges {
    fn new() -> anyhow::Result<Arc<Self>> {
        Ok(Arc::new(Self {
            running: (0..KEYS).map(|_| AtomicU32::new(0)).collect(),
            peak: AtomicU32::new(0),
            running_all: AtomicU32::new(0),
            peak_all: AtomicU32::new(0),
            // Up to ten minutes, in microseconds.
            start: Mutex::new(Histogram::new_with_bounds(1, 600_000_000, 3)?),
            finished: AtomicUsize::new(0),
        }))
    }

    /// A job of `key` submitted at `submitted_us` does its work.
    async fn work(&self, key: usize, submitted_us: i64) {
        let waited = u64::try_from(now_us().saturating_sub(submitted_us)).unwrap_or(0);
        let waited = waited.max(1);
        self.start
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .saturating_record(waited);
        let now = self.running[key].fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        let all = self.running_all.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak_all.fetch_max(all, Ordering::SeqCst);
        tokio::time::sleep(WORK).await;
        self.running_all.fetch_sub(1, Ordering::SeqCst);
        self.running[key].fetch_sub(1, Ordering::SeqCst);
        self.finished.fetch_add(1, Ordering::SeqCst);
    }

    /// Waits until all [`JOBS`] jobs' work ended (at most ten minutes).
    async fn all_finished(&self) -> anyhow::Result<()> {
        let started = Instant::now();
        while self.finished.load(Ordering::SeqCst) < JOBS {
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(600),
                "only {} of {JOBS} jobs finished",
                self.finished.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(())
    }

    fn outcome(&self, elapsed: Duration) -> Outcome {
        let start = self
            .start
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Outcome {
            jobs_per_sec: JOBS as f64 / elapsed.as_secs_f64(),
            start_p50_ms: start.value_at_quantile(0.50) as f64 / 1000.0,
            start_p99_ms: start.value_at_quantile(0.99) as f64 / 1000.0,
            max_per_key: self.peak.load(Ordering::SeqCst),
            max_all: self.peak_all.load(Ordering::SeqCst),
        }
    }
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// One approach's figures.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Outcome {
    /// Jobs per second, from the first submit until every job's work ended.
    pub jobs_per_sec: f64,
    /// Median time from a job's submit until its work started, in milliseconds.
    pub start_p50_ms: f64,
    /// 99th percentile of the same.
    pub start_p99_ms: f64,
    /// The most jobs of one key whose work ran at once.
    pub max_per_key: u32,
    /// The most jobs of all keys whose work ran at once.
    pub max_all: u32,
}

/// A job of the benchmark: its key and when it was submitted.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Sleep {
    key: usize,
    submitted_us: i64,
}

impl Job for Sleep {
    const KIND: &'static str = "bench_queue";
    const CONCURRENCY: u32 = CAP;
    type Output = ();

    async fn run(self, cx: EffectCtx) -> Result<(), EffectError> {
        let gauges = cx.resource::<Arc<Gauges>>()?;
        gauges.work(self.key, self.submitted_us).await;
        Ok(())
    }
}

/// The same job, under a cap across keys too.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CappedSleep(Sleep);

impl Job for CappedSleep {
    const KIND: &'static str = "bench_capped_queue";
    const CONCURRENCY: u32 = CAP;
    const GLOBAL: Option<GlobalCap> = Some(GlobalCap {
        kind: "bench_queue_permits",
        concurrency: GLOBAL_CAP,
    });
    type Output = ();

    async fn run(self, cx: EffectCtx) -> Result<(), EffectError> {
        self.0.run(cx).await
    }
}

/// A job type of the benchmark, made from its key and submit time.
trait BenchJob: Job {
    fn new(key: usize, submitted_us: i64) -> Self;
}

impl BenchJob for Sleep {
    fn new(key: usize, submitted_us: i64) -> Self {
        Self { key, submitted_us }
    }
}

impl BenchJob for CappedSleep {
    fn new(key: usize, submitted_us: i64) -> Self {
        Self(Sleep { key, submitted_us })
    }
}

/// The job queue on SQLite and on PostgreSQL, then the jobs table on PostgreSQL.
pub async fn queue(options: &Options) -> anyhow::Result<Report> {
    let dir = scratch(options, "queue")?;
    let sqlite = through_job_queues::<Sleep>(small_cache_store(&dir.path)?, options).await?;
    let global_dir = scratch(options, "queue-global")?;
    let sqlite_global =
        through_job_queues::<CappedSleep>(small_cache_store(&global_dir.path)?, options).await?;
    anyhow::ensure!(
        sqlite_global.max_all <= GLOBAL_CAP,
        "{} jobs ran at once across keys, over the cap of {GLOBAL_CAP}",
        sqlite_global.max_all
    );
    let url = server_url(options);
    let schema = format!("perennial_bench_queue_{}", std::process::id());
    let mut store_options = perennial_storage_postgres::Options::default();
    store_options.schema = schema.clone();
    let store = PostgresStore::connect_with(&url, store_options).await?;
    let postgres = through_job_queues::<Sleep>(store, options).await;
    let baseline = jobs_table(&url, &format!("{schema}_table"), options).await;
    let (admin, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    for schema in [schema.clone(), format!("{schema}_table")] {
        admin
            .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
            .await?;
    }
    let (postgres, baseline) = (postgres?, baseline?);
    Ok(Report::Queue {
        keys: KEYS,
        cap: CAP,
        jobs: JOBS,
        work_ms: WORK.as_secs_f64() * 1000.0,
        callers: options.callers,
        sqlite,
        postgres,
        baseline,
        global_cap: GLOBAL_CAP,
        sqlite_global,
        sqlite_ratio: sqlite.jobs_per_sec / baseline.jobs_per_sec,
        postgres_ratio: postgres.jobs_per_sec / baseline.jobs_per_sec,
    })
}

/// Every job submitted to its key's [`JobQueue`] on `store`; checks that every queue
/// counted each of its jobs once.
async fn through_job_queues<J: BenchJob>(
    store: impl Store,
    options: &Options,
) -> anyhow::Result<Outcome> {
    let gauges = Gauges::new()?;
    let rt = JobQueue::<J>::register(Runtime::builder().store(store))
        .resource(Arc::clone(&gauges))
        .start()
        .await?;
    let started = Instant::now();
    let submitter = rt.clone();
    each(JOBS, options.callers, move |i| {
        let rt = submitter.clone();
        async move {
            let key = key_of(i);
            let job = J::new(key, now_us());
            rt.get::<JobQueue<J>>(format!("k{key}"))
                .call(QueueMsg::submit(job))
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            Ok(())
        }
    })
    .await?;
    gauges.all_finished().await?;
    let outcome = gauges.outcome(started.elapsed());
    // Exactly-once accounting: every queue counts each of its jobs once.
    let mut done = 0;
    for key in 0..KEYS {
        let queue = rt.get::<JobQueue<J>>(format!("k{key}"));
        loop {
            match queue.call(QueueMsg::Status).await? {
                QueueReply::Status(s) if s.running == 0 && s.queued == 0 => {
                    done += s.done;
                    break;
                }
                _ => tokio::time::sleep(Duration::from_millis(2)).await,
            }
        }
    }
    anyhow::ensure!(
        done == JOBS as u64,
        "the queues counted {done} of {JOBS} jobs"
    );
    rt.shutdown().await;
    Ok(outcome)
}

/// Claims the oldest waiting job whose key has fewer than [`CAP`] running, and counts it as
/// running there, in one statement (one transaction): the job's row and its key's row are
/// locked while it is claimed and counted, and jobs or keys other workers hold are skipped.
const CLAIM: &str = "
WITH j AS (
    SELECT j.id, j.key, j.submitted_us FROM jobs j JOIN key_slots s ON s.key = j.key
     WHERE NOT j.running AND s.running < $1
     ORDER BY j.id LIMIT 1
       FOR UPDATE OF j, s SKIP LOCKED),
s AS (UPDATE key_slots SET running = running + 1 WHERE key = (SELECT key FROM j)),
c AS (UPDATE jobs SET running = true WHERE id = (SELECT id FROM j))
SELECT id, key, submitted_us FROM j";

/// Deletes a finished job and frees its key's slot, in one statement.
const FINISH: &str = "
WITH f AS (DELETE FROM jobs WHERE id = $1 RETURNING key)
UPDATE key_slots SET running = running - 1 WHERE key = (SELECT key FROM f)";

/// The same jobs as rows of a table in `schema` (created), claimed by [`WORKERS`] workers.
async fn jobs_table(url: &str, schema: &str, options: &Options) -> anyhow::Result<Outcome> {
    let clients = connections_in(url, schema, CONNECTIONS).await?;
    clients[0]
        .batch_execute(&format!(
            "CREATE TABLE jobs (id bigserial PRIMARY KEY, key int NOT NULL,
                                running boolean NOT NULL DEFAULT false, submitted_us bigint NOT NULL);
             CREATE INDEX jobs_waiting ON jobs (id) WHERE NOT running;
             CREATE TABLE key_slots (key int PRIMARY KEY, running int NOT NULL DEFAULT 0);
             INSERT INTO key_slots SELECT generate_series(0, {})",
            KEYS - 1
        ))
        .await?;
    let clients = Arc::new(clients);
    let gauges = Gauges::new()?;
    let started = Instant::now();
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let (clients, gauges) = (Arc::clone(&clients), Arc::clone(&gauges));
            tokio::spawn(async move { work_jobs(&clients[w % CONNECTIONS], &gauges).await })
        })
        .collect();
    let submitters = Arc::clone(&clients);
    each(JOBS, options.callers, move |i| {
        let clients = Arc::clone(&submitters);
        async move {
            let key = i32::try_from(key_of(i))?;
            clients[i % CONNECTIONS]
                .execute(
                    "INSERT INTO jobs (key, submitted_us) VALUES ($1, $2)",
                    &[&key, &now_us()],
                )
                .await?;
            Ok(())
        }
    })
    .await?;
    gauges.all_finished().await?;
    let outcome = gauges.outcome(started.elapsed());
    for worker in workers {
        worker.await??;
    }
    Ok(outcome)
}

/// One baseline worker: claims a job, does its work, finishes it; until every job finished.
async fn work_jobs(client: &Client, gauges: &Gauges) -> anyhow::Result<()> {
    let cap = i32::try_from(CAP)?;
    let (claim, finish) = (client.prepare(CLAIM).await?, client.prepare(FINISH).await?);
    while gauges.finished.load(Ordering::SeqCst) < JOBS {
        let Some(row) = client.query_opt(&claim, &[&cap]).await? else {
            tokio::time::sleep(IDLE_POLL).await;
            continue;
        };
        let (id, key, submitted_us): (i64, i32, i64) = (row.get(0), row.get(1), row.get(2));
        let key = usize::try_from(key)?;
        // Counted as finished when its work ends, as a job of the queue is.
        gauges.work(key, submitted_us).await;
        client.execute(&finish, &[&id]).await?;
    }
    Ok(())
}
