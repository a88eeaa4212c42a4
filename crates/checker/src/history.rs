//! Histories: what clients asked of probes and what they got, as events in JSONL with
//! Jepsen's field names (`type`, `f`, `value`, `process`, `time`, `index`).

use std::time::Instant;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// Whether an event starts an operation or tells how it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Type {
    /// The client sent it.
    Invoke,
    /// It was acknowledged: it happened, and `value` is the list it returned.
    Ok,
    /// It definitely did not happen (the node refused it before running it).
    Fail,
    /// Its outcome is unknown (the connection broke, the node died, a timeout).
    Info,
}

/// What an operation does to a probe (the messages of `perennial_demo::probe`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// Appends `token`.
    Append,
    /// Appends `token` and sends it to `to`.
    Forward,
    /// Asks `to` to append `token`; appends `token` followed by `!` when the answer comes.
    Ask,
    /// Appends `token` when a timer fires, `ms` after the call.
    Schedule,
    /// Appends `token` when an effect that returns it has run.
    Effect,
    /// Reads the list.
    Read,
}

impl Op {
    /// What a client's `n`-th write does, in a mix of `every` calls (at least 10): one
    /// forward, one ask, one timer and one effect, appends otherwise.
    pub fn nth_write(n: u64, every: u64) -> Op {
        match n % every.max(10) {
            3 => Op::Forward,
            5 => Op::Ask,
            6 => Op::Schedule,
            8 => Op::Effect,
            _ => Op::Append,
        }
    }

    /// The JSON body of a call to a probe that does this: `token` is what it appends, `to`
    /// the probe a forward sends to or an ask asks, `ms` a timer's delay. A read's body
    /// names none of them.
    ///
    /// ```
    /// use perennial_checker::Op;
    ///
    /// assert_eq!(Op::Append.body("t1", "p2", 30), r#"{"append":"t1"}"#);
    /// let timer: serde_json::Value = serde_json::from_str(&Op::Schedule.body("t1", "p2", 30))?;
    /// assert_eq!(timer, serde_json::json!({"schedule": {"token": "t1", "ms": 30}}));
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    pub fn body(self, token: &str, to: &str, ms: u64) -> String {
        let body = match self {
            Op::Append => serde_json::json!({ "append": token }),
            Op::Forward => serde_json::json!({ "forward": { "token": token, "to": to } }),
            Op::Ask => serde_json::json!({ "ask": { "token": token, "to": to } }),
            Op::Schedule => serde_json::json!({ "schedule": { "token": token, "ms": ms } }),
            Op::Effect => serde_json::json!({ "effect": token }),
            Op::Read => serde_json::json!("read"),
        };
        body.to_string()
    }
}

/// One event of a history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Its place in the history.
    pub index: u64,
    /// Nanoseconds since the history began.
    pub time: u64,
    /// The client.
    pub process: u64,
    /// Invoke, ok, fail or info.
    #[serde(rename = "type")]
    pub kind: Type,
    /// The operation.
    pub f: Op,
    /// The probe.
    pub entity: String,
    /// The token it appends (none for reads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Where a forward sends its token, or whom an ask asks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// A timer's delay, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ms: Option<u64>,
    /// The idempotency key the call carried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// For a completion: the index of its invocation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invoke: Option<u64>,
    /// For `ok`: the list the probe returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Vec<String>>,
}

/// What a client is about to do, for [`Recorder::invoke`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// The client.
    pub process: u64,
    /// The operation.
    pub f: Op,
    /// The probe.
    pub entity: String,
    /// The token (none for reads).
    pub token: Option<String>,
    /// The forward's or the ask's target.
    pub to: Option<String>,
    /// A timer's delay, in milliseconds.
    pub ms: Option<u64>,
    /// The idempotency key.
    pub key: Option<String>,
}

impl Invocation {
    /// A write `f` by client `process` to probe `entity`, keyed by its token (so that a retry
    /// is the same call): `to` is where a forward or an ask goes, `ms` a timer's delay; each
    /// is recorded only for the operations that use it.
    pub fn write(process: u64, f: Op, entity: &str, token: &str, to: &str, ms: u64) -> Self {
        Invocation {
            process,
            f,
            entity: entity.to_owned(),
            token: Some(token.to_owned()),
            to: matches!(f, Op::Forward | Op::Ask).then(|| to.to_owned()),
            ms: (f == Op::Schedule).then_some(ms),
            key: Some(token.to_owned()),
        }
    }
}

/// Records a history from many clients at once.
pub struct Recorder {
    /// Nanoseconds since the history began.
    clock: Box<dyn Fn() -> u64 + Send + Sync>,
    events: Mutex<Vec<Event>>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("events", &self.events.lock().len())
            .finish_non_exhaustive()
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    /// An empty history, whose clock starts now.
    pub fn new() -> Self {
        let started = Instant::now();
        Self::with_clock(move || u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }

    /// An empty history timed by `clock`, in nanoseconds (a simulation's clock, say, so that
    /// the same run records the same history).
    pub fn with_clock(clock: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        Self {
            clock: Box::new(clock),
            events: Mutex::new(Vec::new()),
        }
    }

    fn push(&self, make: impl FnOnce(u64, u64) -> Event) -> u64 {
        let mut events = self.events.lock();
        let index = events.len() as u64;
        let time = (self.clock)();
        events.push(make(index, time));
        index
    }

    /// Records that a client sends `what`; returns the invocation's index, for its completion.
    pub fn invoke(&self, what: Invocation) -> u64 {
        self.push(|index, time| Event {
            index,
            time,
            process: what.process,
            kind: Type::Invoke,
            f: what.f,
            entity: what.entity,
            token: what.token,
            to: what.to,
            ms: what.ms,
            key: what.key,
            invoke: None,
            value: None,
        })
    }

    /// Records how invocation `invoke` ended; `value` is the returned list for `ok`.
    pub fn complete(&self, invoke: u64, kind: Type, value: Option<Vec<String>>) {
        let mut events = self.events.lock();
        let Some(call) = usize::try_from(invoke)
            .ok()
            .and_then(|i| events.get(i))
            .cloned()
        else {
            return;
        };
        let index = events.len() as u64;
        let time = (self.clock)();
        events.push(Event {
            index,
            time,
            kind,
            invoke: Some(invoke),
            value,
            ..call
        });
    }

    /// The events so far.
    pub fn events(&self) -> Vec<Event> {
        self.events.lock().clone()
    }

    /// The history as JSONL: one event per line.
    pub fn to_jsonl(&self) -> String {
        to_jsonl(&self.events.lock())
    }
}

/// Events as JSONL.
pub fn to_jsonl(events: &[Event]) -> String {
    let mut out = String::new();
    for event in events {
        if let Ok(line) = serde_json::to_string(event) {
            out.push_str(&line);
            out.push('\n');
        }
    }
    out
}

/// Reads a JSONL history; the error names the line that does not parse.
pub fn from_jsonl(text: &str) -> Result<Vec<Event>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(n, line)| serde_json::from_str(line).map_err(|e| format!("line {}: {e}", n + 1)))
        .collect()
}
