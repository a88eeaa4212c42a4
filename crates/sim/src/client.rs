//! The simulated clients: two to a probe, each appends tokens to its probe (`probe` and `jprobe`), forwarding,
//! scheduling and starting effects now and then, one call at a time, every call recorded
//! for the history checker; an unanswered call is sent again with its idempotency key, to
//! the next node, until it is acknowledged. Then the reader reads each probe's final list.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use perennial_checker::{Invocation, Op, Recorder, Type};

use crate::node::{Request, Response, ask};

/// One client's part of the load.
pub(crate) struct Client {
    pub(crate) c: usize,
    pub(crate) nodes: Vec<String>,
    pub(crate) probes: Arc<Vec<String>>,
    pub(crate) calls: usize,
    pub(crate) history: Arc<Recorder>,
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
        for n in 0..self.calls {
            let token = format!("c{}-{n}", self.c);
            let (f, body) = match n % 10 {
                3 => (
                    Op::Forward,
                    format!(r#"{{"forward": {{"token": "{token}", "to": "{next_id}"}}}}"#),
                ),
                6 => (
                    Op::Schedule,
                    format!(r#"{{"schedule": {{"token": "{token}", "ms": {TIMER_MS}}}}}"#),
                ),
                8 => (Op::Effect, format!(r#"{{"effect": "{token}"}}"#)),
                _ => (Op::Append, format!(r#"{{"append": "{token}"}}"#)),
            };
            let request = Request::Call {
                kind: kind.to_owned(),
                id: id.to_owned(),
                key: Some(token.clone()),
                body,
            };
            // Each call starts at another node, so that two nodes that both believe they own
            // a probe (split brain) both get its calls, and the checker sees two timelines.
            let mut attempt = self.c + n;
            loop {
                let node = &self.nodes[attempt % self.nodes.len()];
                let call = self.history.invoke(Invocation {
                    process: self.c as u64,
                    f,
                    entity: probe.clone(),
                    token: Some(token.clone()),
                    to: (f == Op::Forward).then(|| next.clone()),
                    ms: (f == Op::Schedule).then_some(TIMER_MS),
                    key: Some(token.clone()),
                });
                match ask(node, &request, Duration::from_secs(2)).await {
                    Some(Response::Call { status: 200, body }) => {
                        let list: Vec<String> =
                            serde_json::from_str(&body).expect("a probe answers a list");
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
        }
        retries
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
            let read = Request::Call {
                kind: kind.into(),
                id: id.into(),
                key: None,
                body: r#""read""#.into(),
            };
            let mut list = None;
            for node in nodes {
                if let Some(Response::Call { status: 200, body }) = ask(node, &read, patience).await
                {
                    list = serde_json::from_str::<Vec<String>>(&body).ok();
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
