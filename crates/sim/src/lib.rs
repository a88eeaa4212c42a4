//! A deterministic simulation of a Perennial cluster, under turmoil: nodes (real runtimes
//! and lease managers), clients and a fault-injecting database, all on one thread in
//! simulated time, so that a seed replays a run exactly.
//!
//! - [`store`]: the simulated database ([`store::SimDb`]), its faults, and each node's view
//!   of it ([`store::SimStore`], a `Store` and a `Directory`).
//! - `node`: a node's software and the wire between nodes and clients (simulated TCP).
//! - `client`: the probe workload, recorded for the history checker, and the final reads.
//! - `nemesis`: the faults, drawn from the seed: crashes and restarts, nodes cut off from the
//!   database, failed and ambiguous commits, clock skew (a node serves, by its own clock,
//!   shards whose leases the database already gave away), network partitions between nodes
//!   and between clients and nodes, and nodes stopped past their lease (SIGSTOP), some while
//!   another node crashes, with reads through them after they resume.
//!
//! A run has two phases, as TigerBeetle's simulator does: **safety**, when faults come at
//! random, then **liveness**, when they stop and everything heals, and every client must
//! finish its calls. The history checker then holds the whole history to the contract.
//!
//! ```no_run
//! let outcome = perennial_sim::run(&perennial_sim::Config::new(7));
//! assert!(outcome.report.is_valid(), "{}", outcome.report);
//! ```

mod client;
mod nemesis;
mod node;
pub mod store;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use perennial_checker::{Recorder, Report, check, to_jsonl};

pub use nemesis::FaultCounts;
pub use store::DbCounts;

/// Each probe's list, by its path.
type Lists = BTreeMap<String, Vec<String>>;

/// How a simulation runs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// The seed: the same seed, the same run.
    pub seed: u64,
    /// Nodes, named `n1`, `n2`, …
    pub nodes: usize,
    /// Clients, each calling one probe.
    pub clients: usize,
    /// Probes (half `probe`, half `jprobe`).
    pub probes: usize,
    /// Calls each client makes.
    pub calls: usize,
    /// How long a client waits before each call (so that the calls meet the faults).
    pub pace: Duration,
    /// Clients that only read, while the others write.
    pub readers: usize,
    /// The nodes' lease.
    pub lease: Duration,
    /// How long faults come (simulated time), before everything heals.
    pub faults_for: Duration,
    /// Whether faults come at all.
    pub faults: bool,
    /// The most simulated time a run may take; a run that does not finish in it fails
    /// (liveness).
    pub limit: Duration,
}

impl Config {
    /// The default simulation for `seed`: 3 nodes, 12 clients on 6 probes making 40 calls
    /// each, 250 ms apart (and reading after each), 2 clients that only read, leases of 1 s,
    /// faults for 15 s, at most 300 s.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            nodes: 3,
            clients: 12,
            probes: 6,
            calls: 40,
            pace: Duration::from_millis(250),
            readers: 3,
            lease: Duration::from_secs(1),
            faults_for: Duration::from_secs(15),
            faults: true,
            limit: Duration::from_secs(300),
        }
    }
}

/// What a run did and what the checker found.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The run's seed.
    pub seed: u64,
    /// The checker's report on the whole history.
    pub report: Report,
    /// Why the run did not finish, if it did not (a liveness failure, or a host's error).
    pub error: Option<String>,
    /// The faults that fired.
    pub faults: FaultCounts,
    /// What the database saw of them.
    pub db: DbCounts,
    /// Calls sent again after a failure or no answer.
    pub retries: u64,
    /// Simulated time the run took.
    pub simulated: Duration,
    /// A digest of everything observable (the history, the final lists, the faults): two
    /// runs of one seed must have the same.
    pub digest: u64,
}

impl Outcome {
    /// Whether the run finished and the checker found nothing.
    pub fn is_valid(&self) -> bool {
        self.error.is_none() && self.report.is_valid()
    }
}

/// The simulation's elapsed time, from inside it.
fn elapsed() -> Duration {
    turmoil::sim_elapsed().unwrap_or_default()
}

/// The simulation's wall time, from inside it.
fn since_epoch() -> Duration {
    turmoil::since_epoch().unwrap_or_default()
}

/// Runs one simulation.
pub fn run(config: &Config) -> Outcome {
    perennial_core::sim::install(since_epoch, config.seed);
    let outcome = simulate(config);
    perennial_core::sim::uninstall();
    outcome
}

fn simulate(config: &Config) -> Outcome {
    let mut sim = turmoil::Builder::new()
        .rng_seed(config.seed)
        .simulation_duration(config.limit)
        .tick_duration(Duration::from_millis(5))
        // A LAN: calls take milliseconds, so a probe gets many in a lease's time.
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(5))
        .epoch(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000))
        .build();
    let db = store::SimDb::new();
    let nodes: Vec<String> = (1..=config.nodes).map(|i| format!("n{i}")).collect();
    for host in &nodes {
        let (name, db, lease) = (host.clone(), Arc::clone(&db), config.lease);
        sim.host(host.as_str(), move || {
            node::run(name.clone(), db.store(&name), lease)
        });
    }
    let probes: Arc<Vec<String>> = Arc::new(
        (0..config.probes)
            .map(|i| format!("{}/s{i}", if i % 2 == 0 { "probe" } else { "jprobe" }))
            .collect(),
    );
    let history = Arc::new(Recorder::with_clock(|| {
        u64::try_from(elapsed().as_nanos()).unwrap_or(u64::MAX)
    }));
    let done = Arc::new(AtomicUsize::new(0));
    let retries = Arc::new(AtomicU64::new(0));
    let clients: Vec<String> = (0..config.clients).map(|c| format!("client{c}")).collect();
    for (c, name) in clients.iter().enumerate() {
        let client = client::Client {
            c,
            nodes: nodes.clone(),
            probes: Arc::clone(&probes),
            calls: config.calls,
            pace: config.pace,
            history: Arc::clone(&history),
            db: Arc::clone(&db),
        };
        let (done, retries) = (Arc::clone(&done), Arc::clone(&retries));
        sim.client(name.as_str(), async move {
            retries.fetch_add(client.run().await, Ordering::Relaxed);
            done.fetch_add(1, Ordering::SeqCst);
            Ok(())
        });
    }
    let readers: Vec<String> = (0..config.readers).map(|r| format!("reads{r}")).collect();
    for (r, name) in readers.iter().enumerate() {
        let reader = client::Reader {
            r,
            nodes: nodes.clone(),
            probes: Arc::clone(&probes),
            history: Arc::clone(&history),
            db: Arc::clone(&db),
            done: Arc::clone(&done),
            writers: config.clients,
        };
        sim.client(name.as_str(), async move {
            reader.run().await;
            Ok(())
        });
    }
    let healed = Arc::new(AtomicBool::new(false));
    let finals: Arc<Mutex<Option<Lists>>> = Arc::default();
    {
        let (done, healed, finals) = (Arc::clone(&done), Arc::clone(&healed), Arc::clone(&finals));
        let (nodes, probes, clients) = (nodes.clone(), Arc::clone(&probes), config.clients);
        sim.client("reader", async move {
            while done.load(Ordering::SeqCst) < clients || !healed.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            *finals.lock() = Some(client::read_finals(&nodes, &probes).await);
            Ok(())
        });
    }

    let callers: Vec<String> = clients.iter().chain(&readers).cloned().collect();
    let mut nemesis = nemesis::Nemesis::new(config, &nodes, &callers);
    let mut error = None;
    loop {
        db.set_now(sim.elapsed());
        match sim.step() {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => {
                error = Some(e.to_string());
                break;
            }
        }
        let now = sim.elapsed();
        if config.faults && now < config.faults_for {
            nemesis.strike(now, &mut sim, &db);
        } else if !healed.load(Ordering::SeqCst) {
            nemesis.heal(&mut sim, &db);
            healed.store(true, Ordering::SeqCst);
        }
    }
    let simulated = sim.elapsed();
    drop(sim);

    let events = history.events();
    // What storage holds, read without any node: the ground truth, whatever the nodes say.
    let stored: BTreeMap<String, Vec<String>> = probes
        .iter()
        .map(|probe| {
            let (kind, id) = probe.split_once('/').expect("a kind/id path");
            (probe.clone(), db.stored_list(kind, id).unwrap_or_default())
        })
        .collect();
    let read = finals.lock().take();
    match &read {
        Some(read) if *read != stored => {
            error.get_or_insert_with(|| {
                format!("the nodes read {read:?}, but storage holds {stored:?}")
            });
        }
        Some(_) => {}
        None => {
            error.get_or_insert_with(|| "the final lists were never read".into());
        }
    }
    // Checked against storage, so that a run that did not finish is checked too.
    let report = check(&events, &stored);
    let finals = Some(stored);
    let faults = nemesis.counts();
    let mut observed = to_jsonl(&events);
    observed.push_str(&format!("{finals:?}\n{:?}\n", nemesis.log()));
    Outcome {
        seed: config.seed,
        report,
        error,
        faults,
        db: db.counts(),
        retries: retries.load(Ordering::Relaxed),
        simulated,
        digest: xxhash_rust::xxh3::xxh3_64(observed.as_bytes()),
    }
}
