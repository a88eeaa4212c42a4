//! The simulated clients: two to a probe, each appends tokens to its probe (`probe` and
//! `jprobe`), forwarding, scheduling and starting effects now and then, one call at a time,
//! every call recorded for the history checker; an unanswered call is sent again with its
//! idempotency key, to the next node, until it is acknowledged. After each, the client reads
//! a probe (its own, then the next client's) through the next node, once: the checker holds
//! reads to real time (`stale`). Then the reader reads each probe's final list.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use perennial_checker::{Invocation, Op, Recorder, Type};

use crate::node::{Request, Response, ask, call, reply};
use crate::store::SimDb;

/// One client's part of the load.
pub(crate) struct Client {
    pub(crate) c: usize,
    pub(crate) nodes: Vec<String>,
    pub(crate) probes: Arc<Vec<String>>,
    pub(crate) calls: usize,
    /// How long the client waits between calls, so that its calls meet the faults.
    pub(crate) pace: Duration,
    pub(crate) history: Arc<Recorder>,
    /// The database, which knows when reads are beyond the contract (a clock skew).
    pub(crate) db: Arc<SimDb>,
}

/// The delay of the clients' timers.
const TIMER_MS: u64 = 30;

impl Client {
    /// Makes its calls; returns how many times one was sent again.
    pub(crate) async fn run(self) -> u64 {
        let probes = self.probes.len();
        let probe = &self.probes[self.c % probes];
        let (kind, id) = probe.split_once('/').expect("a kind/id path");
        // The next probe of the same kind: a probe sends only to its own kind.
        let next = (1..=probes)
            .map(|d| &self.probes[(self.c + d) % probes])
            .find(|p| p.starts_with(&format!("{kind}/")))
            .expect("the probe itself");
        let next_id = next.split_once('/').map_or("", |(_, id)| id);
        let mut retries = 0;
        let me = self.c as u64;
        for n in 0..self.calls {
            tokio::time::sleep(self.pace).await;
            let token = format!("c{}-{n}", self.c);
            let f = Op::nth_write(n as u64, 10);
            let body = f.body(&token, next_id, TIMER_MS);
            let request = call(kind, id, Some(&token), &body);
            // Each call starts at another node, so that two nodes that both believe they own
            // a probe (split brain) both get its calls, and the checker sees two timelines.
            let mut attempt = self.c + n;
            loop {
                let node = &self.nodes[attempt % self.nodes.len()];
                let call = self
                    .history
                    .invoke(Invocation::write(me, f, probe, &token, next, TIMER_MS));
                match reply(ask(node, &request, Duration::from_secs(2)).await) {
                    Ok(body) => {
                        let list: Vec<String> =
                            serde_json::from_slice(&body).expect("a probe answers a list");
                        self.history.complete(call, Type::Ok, Some(list));
                        break;
                    }
                    _ => {
                        // Not the owner, failed, or no answer: it may or may not have been
                        // applied; send it again with its key.
                        self.history.complete(call, Type::Info, None);
                        retries += 1;
                        attempt += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            let read = if n % 2 == 0 {
                probe.clone()
            } else {
                self.next_client_probe()
            };
            self.read(&read, attempt + 1).await;
        }
        retries
    }

    /// The probe of the next client (another probe, written meanwhile by others).
    fn next_client_probe(&self) -> String {
        self.probes[(self.c + 1) % self.probes.len()].clone()
    }

    /// Reads `probe` from the `first`-th node on (see [`read`]).
    async fn read(&self, probe: &str, first: usize) {
        let client = Caller {
            process: self.c as u64,
            nodes: &self.nodes,
            history: &self.history,
            db: &self.db,
        };
        client.read(probe, first).await;
    }
}

/// A client that only reads: it reads the probes in turn, through the nodes in turn, until
/// the writing clients are done; so that some reads reach an entity before any write does
/// after a change of its shard's owner.
pub(crate) struct Reader {
    pub(crate) r: usize,
    pub(crate) nodes: Vec<String>,
    pub(crate) probes: Arc<Vec<String>>,
    pub(crate) history: Arc<Recorder>,
    pub(crate) db: Arc<SimDb>,
    /// How many writing clients are done, and how many there are.
    pub(crate) done: Arc<std::sync::atomic::AtomicUsize>,
    pub(crate) writers: usize,
}

impl Reader {
    pub(crate) async fn run(self) {
        let client = Caller {
            process: 1000 + self.r as u64,
            nodes: &self.nodes,
            history: &self.history,
            db: &self.db,
        };
        let mut n = self.r;
        while self.done.load(std::sync::atomic::Ordering::SeqCst) < self.writers {
            let probe = &self.probes[n % self.probes.len()];
            client.read(probe, n / self.probes.len()).await;
            n += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// What a read needs to know of its client.
struct Caller<'a> {
    process: u64,
    nodes: &'a [String],
    history: &'a Recorder,
    db: &'a SimDb,
}

impl Caller<'_> {
    /// Reads `probe`, asking the nodes in turn from the `first`-th until one that serves it
    /// answers (a node that does not refuses at once), and records each attempt. A read
    /// during a clock skew beyond the contract's margin is recorded as unknown: the contract
    /// does not hold it to real time.
    async fn read(&self, probe: &str, first: usize) {
        let (kind, id) = probe.split_once('/').expect("a kind/id path");
        let request = call(kind, id, None, r#""read""#);
        for at in first..first + self.nodes.len() {
            let node = &self.nodes[at % self.nodes.len()];
            let began = crate::elapsed();
            let call = self.history.invoke(Invocation {
                process: self.process,
                f: Op::Read,
                entity: probe.to_owned(),
                token: None,
                to: None,
                ms: None,
                key: None,
            });
            match reply(ask(node, &request, Duration::from_millis(500)).await) {
                Ok(body) => {
                    if self.db.reads_checked(began, crate::elapsed()) {
                        let list: Vec<String> =
                            serde_json::from_slice(&body).expect("a probe answers a list");
                        self.history.complete(call, Type::Ok, Some(list));
                    } else {
                        self.history.complete(call, Type::Info, None);
                    }
                    return;
                }
                // Answered, and refused: not served there, or failed.
                Err(Some(Response::Node(_))) => self.history.complete(call, Type::Fail, None),
                Err(_) => self.history.complete(call, Type::Info, None),
            }
        }
    }
}

/// Reads every probe's final list once the system has settled: every node passivated its
/// probes (so the lists come from storage), holds no timer or message in memory, and the
/// lists stayed the same for a while.
pub(crate) async fn read_finals(
    nodes: &[String],
    probes: &[String],
) -> BTreeMap<String, Vec<String>> {
    let patience = Duration::from_secs(2);
    let mut finals = BTreeMap::new();
    let mut stable = 0;
    loop {
        for node in nodes {
            for kind in ["probe", "jprobe"] {
                let passivate = Request::Passivate { kind: kind.into() };
                let _ = ask(node, &passivate, patience).await;
            }
        }
        let mut pending = 0;
        for node in nodes {
            match ask(node, &Request::Pending, patience).await {
                Some(Response::Count(n)) => pending += n,
                _ => pending += 1,
            }
        }
        let mut now = BTreeMap::new();
        for probe in probes {
            let (kind, id) = probe.split_once('/').expect("a kind/id path");
            let read = call(kind, id, None, r#""read""#);
            let mut list = None;
            for node in nodes {
                if let Ok(body) = reply(ask(node, &read, patience).await) {
                    list = serde_json::from_slice::<Vec<String>>(&body).ok();
                    break;
                }
            }
            if let Some(list) = list {
                now.insert(probe.clone(), list);
            }
        }
        if now.len() == probes.len() && now == finals && pending == 0 {
            stable += 1;
            if stable >= 3 {
                return finals;
            }
        } else {
            stable = 0;
        }
        finals = now;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
