//! Load on probe entities (kind `probe`, an append-only list), recorded as a history and
//! checked by `perennial-checker`: what every chaos test of the binary drives.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use perennial_checker::{Invocation, Op, Recorder, Report, Type, check, to_jsonl};

use crate::node::Http;

/// The admin token the chaos tests start nodes with (finishing a load passivates probes).
pub(crate) const ADMIN: &str = "test-admin-token-0123456789";

/// How long a client waits for an answer, unless told otherwise.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// The delay of the clients' timers, in milliseconds.
const TIMER_MS: u64 = 30;

/// What one client did: appends acknowledged, and how long after the mark its first was.
#[derive(Default)]
pub(crate) struct Tally {
    acked: AtomicU64,
    first_after_mark: Mutex<Option<Duration>>,
}

/// Clients appending tokens to probes (kinds `probe` and `jprobe`, append-only lists), one
/// call at a time, every call recorded in a history for the checker (`perennial-checker`).
/// Probes are named by their path, `kind/id`. Client `c` writes to probe `c % probes`; every
/// 20th call forwards its token to the next probe of the same kind (a message between
/// entities), every 20th schedules it on a durable timer, every 20th hands it to an effect.
/// A call that fails is sent again with the same token and idempotency key (to another node,
/// in turn) until it is acknowledged, unless the load allows no failure.
/// After each acknowledged append, the client reads a probe (its own, then the next
/// client's, in turn) through another node than the one that acknowledged it: the checker
/// holds every read to the appends acknowledged before it began (`stale`). A read is not
/// sent again; one that fails is recorded as unknown.
pub(crate) struct Load {
    live: Arc<RwLock<Vec<SocketAddr>>>,
    stop: Arc<AtomicBool>,
    tallies: Vec<Arc<Tally>>,
    mark: Arc<Mutex<Option<Instant>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    history: Arc<Recorder>,
    probes: Arc<Vec<String>>,
    /// Calls answered with an error or not at all, then sent again.
    retries: Arc<AtomicU64>,
    /// Error answers, by status and code (`503 storage_io`).
    errors: Arc<Mutex<BTreeMap<String, u64>>>,
}

/// What a load run showed, once checked.
pub(crate) struct Outcome {
    /// Each client's acknowledged appends.
    pub(crate) acked: Vec<u64>,
    /// Each client's first acknowledgement after the mark.
    pub(crate) firsts: Vec<Option<Duration>>,
    /// Calls sent again.
    pub(crate) retries: u64,
    /// Error answers, by status and code (`503 storage_io`).
    pub(crate) errors: BTreeMap<String, u64>,
    pub(crate) report: Report,
}

impl Load {
    pub(crate) fn start(
        http: &Http,
        live: Vec<SocketAddr>,
        clients: usize,
        probes: Vec<String>,
        retry: bool,
    ) -> Load {
        Self::start_with(http, live, vec![CALL_TIMEOUT; clients], probes, retry)
    }

    /// Like [`start`](Self::start), with one client per timeout: a client gives up on a
    /// call after its timeout (and sends it again, if the load retries).
    pub(crate) fn start_with(
        http: &Http,
        live: Vec<SocketAddr>,
        timeouts: Vec<Duration>,
        probes: Vec<String>,
        retry: bool,
    ) -> Load {
        let clients = timeouts.len();
        let mut load = Load {
            live: Arc::new(RwLock::new(live)),
            stop: Arc::default(),
            tallies: (0..clients).map(|_| Arc::default()).collect(),
            mark: Arc::default(),
            tasks: Vec::new(),
            history: Arc::new(Recorder::new()),
            probes: Arc::new(probes),
            retries: Arc::default(),
            errors: Arc::default(),
        };
        for (c, timeout) in timeouts.into_iter().enumerate() {
            let client = Client {
                c,
                http: http.clone(),
                live: Arc::clone(&load.live),
                stop: Arc::clone(&load.stop),
                tally: Arc::clone(&load.tallies[c]),
                mark: Arc::clone(&load.mark),
                history: Arc::clone(&load.history),
                probes: Arc::clone(&load.probes),
                retries: Arc::clone(&load.retries),
                errors: Arc::clone(&load.errors),
                retry,
                timeout,
            };
            load.tasks.push(tokio::spawn(client.run()));
        }
        load
    }

    pub(crate) fn set_live(&self, live: Vec<SocketAddr>) {
        *self.live.write() = live;
    }

    /// How many appends the clients had acknowledged so far, in all.
    pub(crate) fn acked(&self) -> u64 {
        self.tallies
            .iter()
            .map(|t| t.acked.load(Ordering::Relaxed))
            .sum()
    }

    /// How many error answers the clients got so far.
    pub(crate) fn error_count(&self) -> u64 {
        self.errors.lock().values().sum()
    }

    /// From now on, each client records when its first append is acknowledged.
    pub(crate) fn mark(&self) {
        *self.mark.lock() = Some(Instant::now());
    }

    /// Stops the clients, passivates the probes on every node in `addrs` (so the final
    /// lists come from storage, not from memory), reads every probe's final list through the
    /// first once timers and messages have settled, saves the history as `<name>.jsonl` in
    /// the test's scratch directory, and checks it: the test fails on any violation.
    pub(crate) async fn finish(self, http: &Http, addrs: &[SocketAddr], name: &str) -> Outcome {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.expect("a client panicked");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let bearer = format!("Bearer {ADMIN}");
        let kinds: BTreeSet<&str> = self
            .probes
            .iter()
            .filter_map(|p| p.split_once('/'))
            .map(|(kind, _)| kind)
            .collect();
        for &node in addrs {
            for kind in &kinds {
                let (status, body) = http
                    .send(
                        node,
                        "POST",
                        &format!("/v1/admin/kinds/{kind}/passivate"),
                        &[("authorization", &bearer)],
                        "",
                    )
                    .await
                    .expect("the node answers");
                assert_eq!(status, 200, "{body}");
            }
        }
        let addr = addrs[0];
        // Timers and messages still on their way change the lists. A row waiting for a retry
        // (at most 5 s apart) or for the dispatcher's next scan of storage (every 5 s) may
        // take that long: the lists must stay the same for longer before they are final. A
        // single node that holds no row in memory has none on its way (it read every row
        // due soon from storage when it started), so there a second is enough.
        let mut finals = BTreeMap::new();
        let mut stable_since = Instant::now();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut now = BTreeMap::new();
            for probe in self.probes.iter() {
                let (status, list) = http
                    .post(addr, &format!("/v1/{probe}"), r#""read""#)
                    .await
                    .expect("the node answers");
                assert_eq!(status, 200, "{list}");
                now.insert(probe.clone(), serde_json::from_value(list).expect("a list"));
            }
            if now != finals {
                finals = now;
                stable_since = Instant::now();
            } else if stable_since.elapsed() > Duration::from_secs(6)
                || (stable_since.elapsed() > Duration::from_secs(1)
                    && addrs.len() == 1
                    && metric(http, addr, "perennial_pending_in_memory").await == Some(0.0))
            {
                break;
            }
            assert!(Instant::now() < deadline, "the probes never settled");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let events = self.history.events();
        let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}.jsonl"));
        let _ = std::fs::write(&path, to_jsonl(&events));
        let report = check(&events, &finals);
        assert!(report.is_valid(), "{report}\nhistory: {}", path.display());
        Outcome {
            acked: self
                .tallies
                .iter()
                .map(|t| t.acked.load(Ordering::Relaxed))
                .collect(),
            firsts: self
                .tallies
                .iter()
                .map(|t| *t.first_after_mark.lock())
                .collect(),
            retries: self.retries.load(Ordering::Relaxed),
            errors: self.errors.lock().clone(),
            report,
        }
    }
}

/// A value of the node's `/metrics`, read with the admin token.
pub(crate) async fn metric(http: &Http, addr: SocketAddr, name: &str) -> Option<f64> {
    let bearer = format!("Bearer {ADMIN}");
    let (status, text) = http
        .get_text(addr, "/metrics", &[("authorization", &bearer)])
        .await
        .ok()?;
    if status != 200 {
        return None;
    }
    text.lines().find_map(|line| {
        let (metric, value) = line.split_once(' ')?;
        (metric == name).then(|| value.parse().ok())?
    })
}

struct Client {
    c: usize,
    http: Http,
    live: Arc<RwLock<Vec<SocketAddr>>>,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
    mark: Arc<Mutex<Option<Instant>>>,
    history: Arc<Recorder>,
    probes: Arc<Vec<String>>,
    retries: Arc<AtomicU64>,
    errors: Arc<Mutex<BTreeMap<String, u64>>>,
    /// Whether a failed call may be sent again; if not, any failure fails the test.
    retry: bool,
    /// How long the client waits for an answer before it counts the call as unknown.
    timeout: Duration,
}

impl Client {
    /// Reads a probe, its own for even `n`, the next client's for odd, through the `at`-th
    /// live node, and records what it returned.
    async fn read(&self, n: u64, at: usize) {
        let probes = self.probes.len();
        let probe = &self.probes[(self.c + n as usize % 2) % probes];
        let addr = {
            let live = self.live.read();
            live[at % live.len()]
        };
        let call = self.history.invoke(Invocation {
            process: self.c as u64,
            f: Op::Read,
            entity: probe.clone(),
            token: None,
            to: None,
            ms: None,
            key: None,
        });
        let path = format!("/v1/{probe}");
        let sent = self.http.post(addr, &path, r#""read""#);
        match tokio::time::timeout(self.timeout, sent).await {
            Ok(Ok((200, list))) => {
                let list: Vec<String> = serde_json::from_value(list).expect("a list");
                self.history.complete(call, Type::Ok, Some(list));
            }
            outcome => {
                self.history.complete(call, Type::Info, None);
                assert!(
                    self.retry,
                    "client {}: a read got {outcome:?} (no call may fail here)",
                    self.c
                );
            }
        }
    }

    async fn run(self) {
        let probes = self.probes.len();
        let probe = &self.probes[self.c % probes];
        let kind = probe.split_once('/').map_or("", |(kind, _)| kind);
        // The next probe of the same kind: a probe sends only to its own kind.
        let next = (1..=probes)
            .map(|d| &self.probes[(self.c + d) % probes])
            .find(|p| p.split_once('/').is_some_and(|(k, _)| k == kind))
            .expect("the probe itself");
        let next_id = next.split_once('/').map_or("", |(_, id)| id);
        let path = format!("/v1/{probe}");
        let (me, mut n) = (self.c as u64, 0u64);
        while !self.stop.load(Ordering::Relaxed) {
            let token = format!("c{}-{n}", self.c);
            let f = Op::nth_write(n, 20);
            let body = f.body(&token, next_id, TIMER_MS);
            let give_up = Instant::now() + Duration::from_secs(60);
            let mut attempt = self.c;
            loop {
                let addr = {
                    let live = self.live.read();
                    live[attempt % live.len()]
                };
                let call = self
                    .history
                    .invoke(Invocation::write(me, f, probe, &token, next, TIMER_MS));
                let sent = self.http.post_with_key(addr, &path, Some(&token), &body);
                let outcome = tokio::time::timeout(self.timeout, sent).await;
                match outcome {
                    Ok(Ok((200, list))) => {
                        let list: Vec<String> = serde_json::from_value(list).expect("a list");
                        self.history.complete(call, Type::Ok, Some(list));
                        break;
                    }
                    Ok(Ok((status, body))) if !self.retry || status < 500 => {
                        panic!("client {}: {status} {body} (no call may fail here)", self.c)
                    }
                    outcome => {
                        if let Ok(Ok((status, body))) = &outcome {
                            let code = body["error"]["code"].as_str().unwrap_or("?");
                            *self
                                .errors
                                .lock()
                                .entry(format!("{status} {code}"))
                                .or_default() += 1;
                        }
                        // Unknown: it may or may not have been applied.
                        self.history.complete(call, Type::Info, None);
                        assert!(
                            self.retry,
                            "client {}: {outcome:?} (no call may fail here)",
                            self.c
                        );
                        self.retries.fetch_add(1, Ordering::Relaxed);
                        assert!(
                            Instant::now() < give_up,
                            "client {}: {token} never acknowledged",
                            self.c
                        );
                        attempt += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            self.read(n, attempt + 1).await;
            self.tally.acked.fetch_add(1, Ordering::Relaxed);
            let mark = *self.mark.lock();
            if let Some(mark) = mark {
                let mut first = self.tally.first_after_mark.lock();
                if first.is_none() {
                    *first = Some(Instant::now().duration_since(mark));
                }
            }
            n += 1;
        }
    }
}
