//! The faults of a simulation, drawn from its seed: what strikes when, and the healing at
//! the end of the safety phase.

use std::sync::Arc;
use std::time::Duration;

use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};

use crate::Config;
use crate::store::SimDb;

/// How many faults of each class fired in a run.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FaultCounts {
    /// Nodes crashed (and started again later).
    pub crashes: u64,
    /// Nodes cut off from the database for a while.
    pub db_cuts: u64,
    /// Commits made to fail before they applied.
    pub failed_commits: u64,
    /// Commits made to apply and then fail.
    pub ambiguous_commits: u64,
    /// Times a node's clock fell behind the database's (its leases expired early).
    pub clock_skews: u64,
    /// Network partitions (node and node, or client and node).
    pub partitions: u64,
    /// Nodes stopped past their lease (SIGSTOP: requests wait, messages are held), half of
    /// them while the other nodes crash, so that they take their shards back under newer
    /// epochs with their entities still in memory.
    pub stops: u64,
}

/// Something to do later: undo a fault, or strike the second half of one.
#[derive(Debug, Clone)]
enum Undo {
    Bounce(String),
    Reconnect(String),
    Repair(String, String),
    /// Resume a stopped node: deliver the messages held.
    Resume(String),
    /// Crash a node (while another is stopped), to be bounced later.
    Crash(String),
}

/// The nemesis: its generator, its schedule and what it must undo.
pub(crate) struct Nemesis {
    rng: ChaCha8Rng,
    nodes: Vec<String>,
    clients: Vec<String>,
    lease: Duration,
    next: Duration,
    undo: Vec<(Duration, Undo)>,
    counts: FaultCounts,
    log: Vec<String>,
}

impl Nemesis {
    pub(crate) fn new(config: &Config, nodes: &[String], clients: &[String]) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(config.seed ^ 0x6e65_6d65_7369_7321),
            nodes: nodes.to_vec(),
            clients: clients.to_vec(),
            lease: config.lease,
            // Let the cluster form first.
            next: Duration::from_secs(2),
            undo: Vec::new(),
            counts: FaultCounts::default(),
            log: Vec::new(),
        }
    }

    fn below(&mut self, n: u64) -> u64 {
        self.rng.next_u64() % n.max(1)
    }

    fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.below(to - from))
    }

    fn node(&mut self) -> String {
        let i = self.below(self.nodes.len() as u64) as usize;
        self.nodes[i].clone()
    }

    /// Undoes what is due and strikes when it is time.
    pub(crate) fn strike(&mut self, now: Duration, sim: &mut turmoil::Sim<'_>, db: &Arc<SimDb>) {
        self.undo_due(now, sim, db);
        if now < self.next {
            return;
        }
        self.next = now + self.millis(300, 2500);
        let node = self.node();
        // Clock skew twice as often as the others: it is what only fencing survives.
        let fault = match self.below(9) {
            7 => 4,
            f => f,
        };
        match fault {
            0 if sim.is_host_running(node.as_str()) => {
                sim.crash(node.as_str());
                let back = now + self.millis(200, 4000);
                self.undo.push((back, Undo::Bounce(node.clone())));
                self.counts.crashes += 1;
            }
            1 => {
                db.cut(&node, true);
                let back = now + self.millis(200, 5000);
                self.undo.push((back, Undo::Reconnect(node.clone())));
                self.counts.db_cuts += 1;
            }
            2 => {
                db.fail_next(&node, 1 + self.below(3) as u32);
                self.counts.failed_commits += 1;
            }
            3 => {
                db.ambiguous_next(&node, 1 + self.below(3) as u32);
                self.counts.ambiguous_commits += 1;
            }
            4 => {
                let stall = self.millis(600, 1500);
                db.skew(&node, stall);
                // Beyond the margin the contract allows between clocks: until the node's own
                // deadline passes, its reads may be stale, and are not held to real time.
                db.uncheck_reads(now, now + stall + self.lease);
                self.counts.clock_skews += 1;
            }
            // One stop at a time: a second would change when the first ends.
            8 if sim.is_host_running(node.as_str()) && !db.any_stopped() => {
                let lease = u64::try_from(self.lease.as_millis()).unwrap_or(u64::MAX);
                let stop = self.millis(lease + 200, 5 * lease);
                db.stop(&node, now + stop);
                // Messages between nodes wait, as in a stopped process's socket buffers;
                // clients' calls go unanswered (holding them all would overflow the buffers).
                for other in self.nodes.iter().filter(|n| **n != node) {
                    sim.hold(node.as_str(), other.as_str());
                }
                for client in self.callers() {
                    sim.partition(node.as_str(), client.as_str());
                }
                self.undo.push((now + stop, Undo::Resume(node.clone())));
                // Half the time the other nodes crash while this one is stopped, so that
                // their leases (on its shards, among others) run out just before it resumes:
                // it then takes its shards back in its first tick, under newer epochs, with
                // its entities still in memory, never having seen them lost.
                // Only after the others had time to take its shards and write.
                let crash_at = stop.saturating_sub(self.lease + self.millis(0, 300));
                if self.below(2) == 0 && crash_at > self.lease + Duration::from_millis(300) {
                    for other in self.nodes.clone().into_iter().filter(|n| *n != node) {
                        self.undo.push((now + crash_at, Undo::Crash(other.clone())));
                        let back = now + stop + self.millis(200, 2000);
                        self.undo.push((back, Undo::Bounce(other)));
                    }
                }
                self.counts.stops += 1;
            }
            5 | 6 => {
                let other = if fault == 5 {
                    self.node()
                } else {
                    let i = self.below(self.clients.len() as u64) as usize;
                    self.clients[i].clone()
                };
                if other != node {
                    sim.partition(node.as_str(), other.as_str());
                    let back = now + self.millis(200, 4000);
                    self.undo
                        .push((back, Undo::Repair(node.clone(), other.clone())));
                    self.counts.partitions += 1;
                }
            }
            _ => return,
        }
        tracing::debug!("{now:?} fault {fault} at {node}");
        self.log.push(format!("{now:?} fault {fault} at {node}"));
    }

    fn undo_due(&mut self, now: Duration, sim: &mut turmoil::Sim<'_>, db: &Arc<SimDb>) {
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.undo)
            .into_iter()
            .partition(|(at, _)| *at <= now);
        self.undo = later;
        for (_, undo) in due {
            self.apply(undo, sim, db);
        }
    }

    fn apply(&mut self, undo: Undo, sim: &mut turmoil::Sim<'_>, db: &Arc<SimDb>) {
        match &undo {
            Undo::Bounce(node) => sim.bounce(node.as_str()),
            Undo::Reconnect(node) => db.cut(node, false),
            Undo::Repair(a, b) => sim.repair(a.as_str(), b.as_str()),
            Undo::Resume(node) => {
                for other in self.nodes.iter().filter(|n| *n != node) {
                    sim.release(node.as_str(), other.as_str());
                }
                for client in self.callers() {
                    sim.repair(node.as_str(), client.as_str());
                }
            }
            Undo::Crash(node) => {
                if sim.is_host_running(node.as_str()) {
                    sim.crash(node.as_str());
                    self.counts.crashes += 1;
                }
            }
        }
        self.log.push(format!("undo {undo:?}"));
    }

    /// The hosts that call the nodes: the clients and the final reader.
    fn callers(&self) -> Vec<String> {
        let mut callers = self.clients.clone();
        callers.push("reader".to_owned());
        callers
    }

    /// Ends the safety phase: undoes every fault, restarts every crashed node.
    pub(crate) fn heal(&mut self, sim: &mut turmoil::Sim<'_>, db: &Arc<SimDb>) {
        for (_, undo) in std::mem::take(&mut self.undo) {
            if !matches!(undo, Undo::Crash(_)) {
                self.apply(undo, sim, db);
            }
        }
        db.heal();
        for node in self.nodes.clone() {
            if !sim.is_host_running(node.as_str()) {
                sim.bounce(node.as_str());
            }
        }
        self.log.push("healed".into());
    }

    pub(crate) fn counts(&self) -> FaultCounts {
        self.counts.clone()
    }

    pub(crate) fn log(&self) -> &[String] {
        &self.log
    }
}
