//! The workloads behind `perennial bench`, each measured in the same run as its baseline.
//!
//! - [`durable`]: durable calls to many counters from many concurrent callers, through the
//!   runtime on SQLite; then the same workload the "database approach" way (a stateless
//!   handler, one SQLite transaction per call, the same durability settings).
//! - [`ephemeral`]: the same calls to an in-memory kind: the runtime's own overhead.
//! - [`resident`]: memory per idle resident entity, from the process's resident set size.
//! - [`activation`]: activations per second of entities stored on disk.
//! - [`journal`]: `Journal` kinds: replay speed, activation time by journal length with and
//!   without snapshots, and the cost of a step by state size in both persistence modes.
//! - [`pending`]: durable timers scheduled and fired per second, memory with a million
//!   timers pending, and exactly-once messages between entities per second against plain
//!   durable calls.
//! - [`asks`]: asks between entities and one-way messages per second, against plain durable
//!   calls, in alternating rounds of one run.
//! - [`postgres`]: the durable workload on the PostgreSQL store, against one PostgreSQL
//!   transaction per call on the same server.
//! - [`cluster`]: durable calls over HTTP through 1 and 3 nodes (processes) sharing
//!   PostgreSQL, against one PostgreSQL transaction per call; and the time a node's entities
//!   take to answer again after it is killed with SIGKILL.
//! - [`query`]: a million stored entities queried by state, without an index (a scan, the
//!   baseline) and with an index by the compared path.
//! - [`queue`]: jobs per key with a cap per key through `perennial_queue` (on SQLite and on
//!   PostgreSQL), against a jobs table claimed with `FOR UPDATE SKIP LOCKED` on the same
//!   PostgreSQL.
//! - [`latency`]: durable calls offered at a fixed rate (open loop) at half of the highest
//!   rate the same setup sustains, in process and over HTTP: p50, p99 and p999 from when each
//!   call was due.
//! - [`large`]: ten million stored entities of 1 KiB, read from the disk: restart to the
//!   first served call, the first call to an entity not yet active, and durable calls per
//!   second over all of them.
//! - [`backup`]: an online backup of a million stored entities beside live callers, against
//!   the same callers alone; and the restore of that backup.
//!
//! Each workload returns a [`Report`]; [`Report::to_json`] gives one JSON object per line so
//! scripts can compare runs.

mod asks;
mod backup;
mod cluster;
mod large;
mod latency;
mod load;
mod migrate;
mod node;
mod pending;
mod postgres;
mod query;
mod queue;
mod workloads;

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

pub use asks::asks;
pub use backup::backup;
pub use cluster::{ClusterRun, cluster};
pub use large::{LargeCrash, LargePass, large};
pub use latency::{LatencyRun, latency};
pub use migrate::migrate;
pub use pending::pending;
pub use postgres::postgres;
pub use query::query;
pub use queue::queue;
pub use workloads::{activation, durable, ephemeral, journal, resident};

/// What to run, and how big.
#[derive(Debug, Clone)]
pub struct Options {
    /// How long each timed workload runs.
    pub duration: Duration,
    /// How many distinct counters the calls spread over.
    pub entities: usize,
    /// How many callers call concurrently.
    pub callers: usize,
    /// How many entities the memory workload makes resident.
    pub resident_entities: usize,
    /// How many entities of 1 KiB the large workload stores.
    pub large_entities: usize,
    /// Where the workloads keep their data; a fresh temporary directory if `None`.
    pub dir: Option<PathBuf>,
    /// The PostgreSQL server of the `postgres` workload (default: 127.0.0.1:5432, user
    /// `postgres`, database `test`).
    pub postgres: Option<String>,
    /// The `perennial` binary, which the workloads that kill a node with SIGKILL run as
    /// `perennial serve`. Without it, `cluster` fails and `large` skips its kill -9 trials.
    pub node_binary: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            duration: Duration::from_secs(10),
            entities: 10_000,
            callers: 256,
            resident_entities: 1_000_000,
            large_entities: 10_000_000,
            dir: None,
            postgres: None,
            node_binary: None,
        }
    }
}

/// The result of one workload.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "workload", rename_all = "snake_case")]
pub enum Report {
    /// Durable calls through the runtime, and the database approach in the same run.
    Durable {
        /// The store: `sqlite` or `postgres`.
        store: &'static str,
        /// Distinct entities called.
        entities: usize,
        /// Concurrent callers.
        callers: usize,
        /// Durable calls per second through the runtime.
        calls_per_sec: f64,
        /// Median latency of a call, in microseconds.
        p50_us: u64,
        /// 99th percentile latency, in microseconds.
        p99_us: u64,
        /// Commits (fsyncs) per second.
        commits_per_sec: f64,
        /// Average steps per commit.
        steps_per_commit: f64,
        /// Calls per second the database approach managed in this run.
        baseline_calls_per_sec: f64,
        /// The database approach's median latency, in microseconds.
        baseline_p50_us: u64,
        /// The database approach's 99th percentile latency, in microseconds.
        baseline_p99_us: u64,
        /// `calls_per_sec / baseline_calls_per_sec`.
        ratio: f64,
    },
    /// Calls to an in-memory kind.
    Ephemeral {
        /// Distinct entities called.
        entities: usize,
        /// Concurrent callers.
        callers: usize,
        /// Calls per second.
        calls_per_sec: f64,
        /// Median latency, in microseconds.
        p50_us: u64,
        /// 99th percentile latency, in microseconds.
        p99_us: u64,
    },
    /// Memory held per idle resident entity.
    Resident {
        /// Entities made resident.
        entities: usize,
        /// Entities still resident when measured.
        resident: usize,
        /// Growth of the resident set size, divided by the entities.
        bytes_per_entity: f64,
        /// Resident set size before, in bytes.
        rss_before: u64,
        /// Resident set size after, in bytes.
        rss_after: u64,
    },
    /// `Journal` kinds.
    Journal {
        /// Journal entries replayed per second, activating an entity with 100,000 of them.
        replay_entries_per_sec: f64,
        /// Activation times by journal length, with and without snapshots.
        activations: Vec<JournalActivation>,
        /// Step costs by state size and mode.
        steps: Vec<StepCost>,
    },
    /// Durable timers and messages between entities.
    Pending {
        /// Timers scheduled per second, one per call.
        timers_scheduled_per_sec: f64,
        /// Timers fired per second, when 100,000 are due at once.
        timers_fired_per_sec: f64,
        /// Timers left pending (an hour away) for the memory figure.
        pending_timers: usize,
        /// How many of them the node held in memory.
        pending_in_memory: usize,
        /// Resident set size before they were scheduled, in bytes.
        rss_before: u64,
        /// Resident set size with them pending, their entities passivated.
        rss_pending: u64,
        /// Messages between entities applied per second (exactly once).
        messages_per_sec: f64,
        /// Plain durable calls per second, in the same run.
        baseline_calls_per_sec: f64,
    },
    /// Asks and messages between entities per second, against plain durable calls (medians
    /// of alternating rounds).
    Asks {
        /// Concurrent callers.
        callers: usize,
        /// Plain durable calls per second.
        calls_per_sec: f64,
        /// One-way messages applied per second (the sender's step and the receiver's).
        messages_per_sec: f64,
        /// Asks answered per second (the asker's step, the target's and the answer's).
        asks_per_sec: f64,
        /// `messages_per_sec / calls_per_sec`.
        messages_ratio: f64,
        /// `asks_per_sec / calls_per_sec`.
        asks_ratio: f64,
    },
    /// Jobs per key with a cap per key: the job queue against a jobs table.
    Queue {
        /// Keys, each with its own queue.
        keys: usize,
        /// Jobs of one key that may run at once.
        cap: u32,
        /// Jobs in all.
        jobs: usize,
        /// How long each job's work takes, in milliseconds.
        work_ms: f64,
        /// Concurrent submitters.
        callers: usize,
        /// Through `perennial_queue` on SQLite.
        sqlite: queue::Outcome,
        /// Through `perennial_queue` on PostgreSQL.
        postgres: queue::Outcome,
        /// A jobs table on the same PostgreSQL, claimed with `FOR UPDATE SKIP LOCKED`.
        baseline: queue::Outcome,
        /// Jobs of all keys that may run at once, in the run with a cap across keys.
        global_cap: u32,
        /// Through `perennial_queue` on SQLite, under that cap too.
        sqlite_global: queue::Outcome,
        /// `sqlite.jobs_per_sec / baseline.jobs_per_sec`.
        sqlite_ratio: f64,
        /// `postgres.jobs_per_sec / baseline.jobs_per_sec`.
        postgres_ratio: f64,
    },
    /// Entities found by state among a million stored.
    Query {
        /// Entities stored.
        entities: usize,
        /// Entities each query finds.
        matches: usize,
        /// Seconds taken to store them (batches of 10,000 states, then a clean close).
        stored_secs: f64,
        /// Seconds taken to build the index.
        index_secs: f64,
        /// Median time of an equality query without an index, in microseconds.
        scan_p50_us: u64,
        /// Median time of the same query with the index, in microseconds.
        indexed_p50_us: u64,
        /// The slowest indexed query, in microseconds.
        indexed_max_us: u64,
        /// `scan_p50_us / indexed_p50_us`.
        speedup: f64,
    },
    /// A background migration pass over dormant entities, with and without live traffic.
    Migrate {
        /// Dormant entities (carts at schema version 1) per pass.
        entities: usize,
        /// Live callers.
        callers: usize,
        /// Entities migrated per second by a pass with no live traffic (the baseline).
        alone_per_sec: f64,
        /// Entities migrated per second while the live callers call.
        with_live_per_sec: f64,
        /// Seconds that pass took.
        pass_secs: f64,
        /// Live calls per second with no pass running (the baseline).
        live_alone_calls_per_sec: f64,
        /// Their 99th percentile latency, in microseconds.
        live_alone_p99_us: u64,
        /// Live calls per second during the pass.
        live_during_calls_per_sec: f64,
        /// Their 99th percentile latency, in microseconds.
        live_during_p99_us: u64,
    },
    /// An online backup beside live callers, and its restore.
    Backup {
        /// Entities in the backup.
        entities: u64,
        /// The backup file's size, in bytes.
        bytes: u64,
        /// Seconds the backup took, flush and rename included.
        backup_secs: f64,
        /// Milliseconds the backup held its snapshot (its read transaction).
        snapshot_ms: f64,
        /// Seconds the restore took: the backup checked page by page, copied and flushed.
        restore_secs: f64,
        /// Live callers.
        callers: usize,
        /// Live calls per second with no backup running (the baseline).
        live_alone_calls_per_sec: f64,
        /// Their 99th percentile latency, in microseconds.
        live_alone_p99_us: u64,
        /// Their slowest call, in microseconds.
        live_alone_max_us: u64,
        /// Live calls per second while the backup ran.
        live_during_calls_per_sec: f64,
        /// Their 99th percentile latency, in microseconds.
        live_during_p99_us: u64,
        /// Their slowest call, in microseconds: how long the backup held a call up at most.
        live_during_max_us: u64,
    },
    /// Durable calls through clusters of nodes sharing PostgreSQL, and failover.
    Cluster {
        /// Distinct entities called.
        entities: usize,
        /// Concurrent callers (HTTP connections).
        callers: usize,
        /// One run per cluster size.
        runs: Vec<ClusterRun>,
        /// Calls per second of the database approach as a service in this run: an HTTP
        /// server whose handler runs one PostgreSQL transaction per call, called the same way.
        baseline_calls_per_sec: f64,
        /// Its median latency, in microseconds.
        baseline_p50_us: u64,
        /// Its 99th percentile latency, in microseconds.
        baseline_p99_us: u64,
        /// The same transactions sent straight to PostgreSQL, without HTTP.
        direct_calls_per_sec: f64,
        /// The nodes' lease.
        lease_ms: u64,
        /// Per trial: from the kill -9 of a node until all of 32 of its entities answered
        /// again through another node, in milliseconds.
        failover_ms: Vec<u64>,
    },
    /// Durable calls offered open loop at half of the sustained maximum.
    Latency {
        /// Distinct entities called.
        entities: usize,
        /// Concurrent callers of the closed-loop run that finds the maximum.
        callers: usize,
        /// One run per API: in process, then over HTTP.
        runs: Vec<LatencyRun>,
    },
    /// Entities of 1 KiB in a store far larger than SQLite's page cache, read from the disk.
    Large {
        /// Entities stored.
        entities: usize,
        /// The store's size on disk, in bytes.
        store_bytes: u64,
        /// Seconds spent storing them in this run; `None` when an earlier run had.
        fill_secs: Option<f64>,
        /// Median time from opening the store to the first call's answer, in milliseconds.
        restart_to_first_call_ms: f64,
        /// The slowest of those restarts, in milliseconds.
        restart_max_ms: f64,
        /// First calls to entities not yet active, one at a time, in each pass.
        cold_calls: usize,
        /// Concurrent callers of the throughput runs.
        callers: usize,
        /// Just after the store's files were dropped from the page cache.
        from_disk: LargePass,
        /// Once the store's files were read into the page cache.
        from_page_cache: LargePass,
        /// Restarts of a node (a process of its own) killed with SIGKILL under load; `None`
        /// without [`Options::node_binary`].
        after_kill_9: Option<LargeCrash>,
    },
    /// Entities activated from storage.
    Activation {
        /// Entities activated.
        entities: usize,
        /// Activations per second.
        activations_per_sec: f64,
        /// Median latency of the activating call, in microseconds.
        p50_us: u64,
        /// 99th percentile latency, in microseconds.
        p99_us: u64,
    },
}

/// How long one activation of a `Journal` entity took.
#[derive(Debug, Clone, Serialize)]
pub struct JournalActivation {
    /// Steps in the entity's journal.
    pub entries: usize,
    /// Whether the kind writes snapshots.
    pub snapshots: bool,
    /// Entries replayed (after the latest snapshot).
    pub replayed: usize,
    /// The median time of the activating call, in microseconds.
    pub micros: u64,
}

/// What a tiny step costs on a state of a given size.
#[derive(Debug, Clone, Serialize)]
pub struct StepCost {
    /// The state's size, in bytes.
    pub state_bytes: usize,
    /// `snapshot` or `journal`.
    pub mode: &'static str,
    /// Median latency of one call (one at a time), in microseconds.
    pub p50_us: u64,
    /// Mean latency, in microseconds.
    pub mean_us: u64,
}

impl Report {
    /// The report as one line of JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!(r#"{{"error":"{e}"}}"#))
    }

    /// The report as a few lines for a person.
    pub fn to_text(&self) -> String {
        match self {
            Self::Durable {
                store,
                entities,
                callers,
                calls_per_sec,
                p50_us,
                p99_us,
                commits_per_sec,
                steps_per_commit,
                baseline_calls_per_sec,
                baseline_p50_us,
                baseline_p99_us,
                ratio,
            } => format!(
                "durable     {calls_per_sec:>10.0} calls/s  p50 {p50_us} µs  p99 {p99_us} µs  ({store}; {entities} entities, {callers} callers; {commits_per_sec:.0} commits/s, {steps_per_commit:.1} steps/commit)\n\
                 database    {baseline_calls_per_sec:>10.0} calls/s  p50 {baseline_p50_us} µs  p99 {baseline_p99_us} µs  (one {store} transaction per call)\n\
                 ratio       {ratio:>10.1}×"
            ),
            Self::Ephemeral {
                entities,
                callers,
                calls_per_sec,
                p50_us,
                p99_us,
            } => format!(
                "ephemeral   {calls_per_sec:>10.0} calls/s  p50 {p50_us} µs  p99 {p99_us} µs  ({entities} entities, {callers} callers, in memory)"
            ),
            Self::Resident {
                entities,
                resident,
                bytes_per_entity,
                rss_before,
                rss_after,
            } => format!(
                "resident    {bytes_per_entity:>10.0} bytes per idle entity  ({resident} of {entities} resident; RSS {} → {} MiB)",
                rss_before >> 20,
                rss_after >> 20
            ),
            Self::Journal {
                replay_entries_per_sec,
                activations,
                steps,
            } => {
                let mut out = format!("replay      {replay_entries_per_sec:>10.0} entries/s");
                for a in activations {
                    let mode = if a.snapshots { "with" } else { "without" };
                    out.push_str(&format!(
                        "\nactivate    {:>10} µs  journal of {} entries, {mode} snapshots ({} replayed)",
                        a.micros, a.entries, a.replayed
                    ));
                }
                for s in steps {
                    out.push_str(&format!(
                        "\nstep        {:>10} µs  p50 (mean {} µs), {} state of {} KiB",
                        s.p50_us,
                        s.mean_us,
                        s.mode,
                        s.state_bytes >> 10
                    ));
                }
                out
            }
            Self::Pending {
                timers_scheduled_per_sec,
                timers_fired_per_sec,
                pending_timers,
                pending_in_memory,
                rss_before,
                rss_pending,
                messages_per_sec,
                baseline_calls_per_sec,
            } => format!(
                "timers      {timers_scheduled_per_sec:>10.0} scheduled/s  {timers_fired_per_sec:.0} fired/s
                 pending     {pending_timers:>10} timers stored, {pending_in_memory} in memory; RSS {} → {} MiB
                 messages    {messages_per_sec:>10.0} applied/s exactly once  (plain durable calls: {baseline_calls_per_sec:.0}/s)",
                rss_before >> 20,
                rss_pending >> 20
            ),
            Self::Asks {
                callers,
                calls_per_sec,
                messages_per_sec,
                asks_per_sec,
                messages_ratio,
                asks_ratio,
            } => format!(
                "asks        {asks_per_sec:>10.0} answered/s ({asks_ratio:.2}× plain calls)  messages {messages_per_sec:.0} applied/s ({messages_ratio:.2}×)  plain durable calls {calls_per_sec:.0}/s  ({callers} callers)"
            ),
            Self::Queue {
                keys,
                cap,
                jobs,
                work_ms,
                callers,
                sqlite,
                postgres,
                baseline,
                global_cap,
                sqlite_global,
                sqlite_ratio,
                postgres_ratio,
            } => {
                let line = |name: &str, o: &queue::Outcome| {
                    format!(
                        "  {name:<36}{:>10.0} jobs/s  submit to start p50 {:.1} ms, p99 {:.1} ms  most at once: of one key {}, of all {}",
                        o.jobs_per_sec, o.start_p50_ms, o.start_p99_ms, o.max_per_key, o.max_all
                    )
                };
                format!(
                    "queue       {jobs} jobs over {keys} keys, at most {cap} of a key at once, {work_ms} ms of work each ({callers} submitters)\n{}\n{}\n{}\n{}\n  job queue to jobs table: {sqlite_ratio:.1}× (SQLite), {postgres_ratio:.1}× (PostgreSQL)",
                    line("job queue, SQLite", sqlite),
                    line("job queue, PostgreSQL", postgres),
                    line("jobs table, SKIP LOCKED", baseline),
                    line(&format!("job queue, SQLite, {global_cap} of all"), sqlite_global),
                )
            }
            Self::Query {
                entities,
                matches,
                stored_secs,
                index_secs,
                scan_p50_us,
                indexed_p50_us,
                indexed_max_us,
                speedup,
            } => format!(
                "query       {indexed_p50_us:>10} µs p50 indexed (max {indexed_max_us} µs)  {scan_p50_us} µs without index  ({speedup:.0}×; {matches} of {entities} entities match; stored in {stored_secs:.1} s, indexed in {index_secs:.1} s)"
            ),
            Self::Migrate {
                entities,
                callers,
                alone_per_sec,
                with_live_per_sec,
                pass_secs,
                live_alone_calls_per_sec,
                live_alone_p99_us,
                live_during_calls_per_sec,
                live_during_p99_us,
            } => format!(
                "migrate     {with_live_per_sec:>10.0} entities/s migrated beside live calls ({pass_secs:.1} s for {entities}; alone: {alone_per_sec:.0}/s)
                 live calls  {live_during_calls_per_sec:>10.0}/s p99 {live_during_p99_us} µs during the pass  (without it: {live_alone_calls_per_sec:.0}/s p99 {live_alone_p99_us} µs; {callers} callers)"
            ),
            Self::Backup {
                entities,
                bytes,
                backup_secs,
                snapshot_ms,
                restore_secs,
                callers,
                live_alone_calls_per_sec,
                live_alone_p99_us,
                live_alone_max_us,
                live_during_calls_per_sec,
                live_during_p99_us,
                live_during_max_us,
            } => format!(
                "backup      {entities} entities, {:.0} MiB: backed up in {backup_secs:.2} s (snapshot held {snapshot_ms:.0} ms), restored in {restore_secs:.2} s
                 live calls  {live_during_calls_per_sec:>10.0}/s p99 {live_during_p99_us} µs, slowest {live_during_max_us} µs during the backup  (without it: {live_alone_calls_per_sec:.0}/s p99 {live_alone_p99_us} µs, slowest {live_alone_max_us} µs; {callers} callers)",
                *bytes as f64 / (1 << 20) as f64
            ),
            Self::Activation {
                entities,
                activations_per_sec,
                p50_us,
                p99_us,
            } => format!(
                "activation  {activations_per_sec:>10.0} activations/s  p50 {p50_us} µs  p99 {p99_us} µs  ({entities} entities from SQLite)"
            ),
            Self::Large {
                entities,
                store_bytes,
                fill_secs,
                restart_to_first_call_ms,
                restart_max_ms,
                cold_calls,
                callers,
                from_disk,
                from_page_cache,
                after_kill_9,
            } => {
                let pass = |name: &str, p: &LargePass| {
                    format!(
                        "\n            {name}: {:.0} calls/s  p50 {} µs  p99 {} µs ({callers} callers); first call to an inactive entity p50 {} µs  p99 {} µs  max {} µs ({cold_calls} calls)",
                        p.calls_per_sec, p.p50_us, p.p99_us, p.cold_p50_us, p.cold_p99_us, p.cold_max_us
                    )
                };
                format!(
                    "large       {entities} entities of 1 KiB, {:.1} GB on disk{}; restart to first call {restart_to_first_call_ms:.1} ms (slowest {restart_max_ms:.1} ms){}{}{}",
                    *store_bytes as f64 / 1e9,
                    fill_secs.map_or(String::new(), |s| format!(", stored in {s:.0} s")),
                    pass("from the disk", from_disk),
                    pass("from the page cache", from_page_cache),
                    after_kill_9.as_ref().map_or(String::new(), |k| format!(
                        "\n            after kill -9 under load: process start to first call {:.1} ms (slowest {:.1} ms)",
                        k.restart_to_first_call_ms, k.restart_max_ms
                    )),
                )
            }
            Self::Latency {
                entities,
                callers,
                runs,
            } => runs
                .iter()
                .map(|r| {
                    format!(
                        "latency     {:>10.0} calls/s offered  p50 {} µs  p99 {} µs  p999 {} µs  max {} µs  ({}, open loop at half of {:.0} calls/s with {callers} callers; {entities} entities; {} of {} commits over 5 ms)",
                        r.rate,
                        r.p50_us,
                        r.p99_us,
                        r.p999_us,
                        r.max_us,
                        r.api,
                        r.max_calls_per_sec,
                        r.commits_over_5_ms,
                        r.commits
                    )
                })
                .collect::<Vec<_>>()
                .join("\n"),
            Self::Cluster {
                entities,
                callers,
                runs,
                baseline_calls_per_sec,
                baseline_p50_us,
                baseline_p99_us,
                direct_calls_per_sec,
                lease_ms,
                failover_ms,
            } => {
                let mut lines: Vec<String> = runs
                    .iter()
                    .map(|r| {
                        format!(
                            "cluster     {:>10.0} calls/s  p50 {} µs  p99 {} µs  ({} node{}, HTTP; {entities} entities, {callers} callers)  {:.1}× the database",
                            r.calls_per_sec,
                            r.p50_us,
                            r.p99_us,
                            r.nodes,
                            if r.nodes == 1 { "" } else { "s" },
                            r.ratio
                        )
                    })
                    .collect();
                lines.push(format!(
                    "database    {baseline_calls_per_sec:>10.0} calls/s  p50 {baseline_p50_us} µs  p99 {baseline_p99_us} µs  (HTTP service, one PostgreSQL transaction per call)"
                ));
                lines.push(format!(
                    "database    {direct_calls_per_sec:>10.0} calls/s  (the same transactions without HTTP)"
                ));
                lines.push(format!(
                    "failover    {failover_ms:?} ms after kill -9, lease {lease_ms} ms"
                ));
                lines.join("\n")
            }
        }
    }
}
