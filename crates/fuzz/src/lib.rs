//! Perennial's fuzz targets: every decoder of stored and wire data, fed arbitrary bytes.
//!
//! Each target must end with a value or a typed error, never a panic, and a decoder that
//! refuses stored bytes must leave them as they were. The targets are plain functions, so
//! that the same code runs in two harnesses:
//! - `fuzz/` (outside the workspace) runs each under libFuzzer: `cargo +nightly fuzz run
//!   http_call` from that folder, with `cargo-fuzz` installed;
//! - this crate's test (`tests/corpus.rs`) replays their corpora, `fuzz/corpus/NAME/*`, and
//!   inputs derived from them, on stable, in `cargo test`.
//!
//! | target | what the bytes become |
//! |---|---|
//! | `http_call` | requests to `POST /v1/{kind}/{id}` through the gateway: the path, an idempotency key, and up to 8 messages to one entity |
//! | `stored_state` | the stored state of a demo kind (a snapshot, for `Journal` kinds), then a call |
//! | `journal` | the journal entries of a `Journal` kind, then a call (replay) |
//! | `parcel` | a message row carried from another node (`Plumbing::deliver`) |
//! | `filter` | a filter over entity state (the admin query), matched against states |
//! | `wire` | the internal route's postcard messages between nodes |
//! | `log_row` | a row of SQLite's `state_log`, as a store opening the file reads it |

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use perennial_core::{CallError, EntityId, EntityKey, Parcel, Plumbing, Runtime};
use perennial_storage::{Filter, JournalEntry, MemoryStore, Path, Store};
use serde_json::Value;
use tower::ServiceExt;

/// A fuzz target: its name (its corpus folder) and its body.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// The target's name, as in `cargo fuzz run NAME`.
    pub name: &'static str,
    /// Runs one input; panics on a violation.
    pub run: fn(&[u8]),
}

/// Every target.
pub const TARGETS: [Target; 7] = [
    Target {
        name: "http_call",
        run: http_call,
    },
    Target {
        name: "stored_state",
        run: stored_state,
    },
    Target {
        name: "journal",
        run: journal,
    },
    Target {
        name: "parcel",
        run: parcel,
    },
    Target {
        name: "filter",
        run: filter,
    },
    Target {
        name: "wire",
        run: wire,
    },
    Target {
        name: "log_row",
        run: log_row,
    },
];

/// The demo kinds, and a message that only reads each (to activate an entity).
const KINDS: [(&str, &str); 7] = [
    ("counter", r#""get""#),
    ("probe", r#""read""#),
    ("queue", r#""status""#),
    ("table", r#""view""#),
    ("jprobe", r#""read""#),
    ("cache", r#""size""#),
    ("house", r#""stats""#),
];

/// A node of the demo kinds on a memory store, made once per process.
struct Node {
    tokio: tokio::runtime::Runtime,
    rt: Runtime,
    store: MemoryStore,
    app: Router,
}

fn node() -> &'static Node {
    static NODE: OnceLock<Node> = OnceLock::new();
    NODE.get_or_init(|| {
        let tokio = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let store = MemoryStore::new();
        let rt = tokio
            .block_on(perennial_demo::register(Runtime::builder().store(store.clone())).start())
            .expect("the demo kinds start");
        let options = perennial_gateway::Options::default();
        let app = {
            let _entered = tokio.enter();
            perennial_gateway::app(rt.clone(), &options)
        };
        Node {
            tokio,
            rt,
            store,
            app,
        }
    })
}

/// A fresh entity id for each input, so that inputs do not pile up on one entity.
fn fresh_id(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("{prefix}{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Forgets an entity after an input: out of memory, out of the store, out of quarantine.
fn forget(node: &Node, kind: &str, id: &str) {
    let _ = node.rt.admin().release(kind, id);
    let _ = node.rt.admin().passivate(kind, id);
    if let Ok(parsed) = EntityId::new(id) {
        node.store.forget(&EntityKey::new(kind, parsed));
    }
}

/// `data`'s first byte picks one of `n` choices; the rest is the input.
fn pick(data: &[u8], n: usize) -> (usize, &[u8]) {
    match data.split_first() {
        Some((&first, rest)) => (usize::from(first) % n, rest),
        None => (0, data),
    }
}

/// Percent-encodes every byte but ASCII letters and digits, for a path segment.
fn encode_segment(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 3);
    for &b in bytes {
        if b.is_ascii_alphanumeric() {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Requests through the gateway: `kind-byte flags id 0xFF message (0xFF message)*`. Bit 0
/// of `flags` adds an idempotency key; bit 1 uses the id from the input instead of a fresh
/// one. Each answer must be `200` with JSON, or an error body with a code; no handler may
/// panic on a message that decodes.
pub fn http_call(data: &[u8]) {
    let (kind, rest) = pick(data, KINDS.len() + 1);
    let kind = KINDS.get(kind).map_or("no-such-kind", |(k, _)| k);
    let (flags, rest) = rest.split_first().map_or((0, rest), |(f, r)| (*f, r));
    let mut parts = rest.split(|&b| b == 0xFF);
    let given_id = parts.next().unwrap_or_default();
    let id = if flags & 2 != 0 {
        encode_segment(given_id)
    } else {
        fresh_id("h")
    };
    let node = node();
    for (n, body) in parts.take(8).enumerate() {
        let mut request =
            Request::post(format!("/v1/{kind}/{id}")).header("content-type", "application/json");
        if flags & 1 != 0 {
            request = request.header("idempotency-key", format!("k{n}"));
        }
        let Ok(request) = request.body(Body::from(body.to_vec())) else {
            return;
        };
        let (status, answer) = node.tokio.block_on(async {
            let response = node
                .app
                .clone()
                .oneshot(request)
                .await
                .expect("the gateway answers");
            let status = response.status();
            let bytes = response
                .into_body()
                .collect()
                .await
                .expect("the body is read")
                .to_bytes();
            (status, bytes)
        });
        let answer: Value = serde_json::from_slice(&answer)
            .unwrap_or_else(|e| panic!("{status}: the answer is not JSON ({e}): {answer:?}"));
        if status != StatusCode::OK {
            let code = answer["error"]["code"].as_str().unwrap_or_default();
            assert!(!code.is_empty(), "{status} without a code: {answer}");
            assert!(
                !matches!(code, "handler_panicked" | "dead_lettered"),
                "a demo handler panicked on {kind} {:?}: {answer}",
                String::from_utf8_lossy(body)
            );
        }
    }
    if let Ok(id) = std::str::from_utf8(given_id) {
        forget(node, kind, id);
    }
    forget(node, kind, &id);
}

/// A stored state (the snapshot, for `Journal` kinds) of arbitrary bytes, then a call that
/// reads it. It must decode, or be refused as `corrupt_state` with the bytes left as they
/// were (and the entity quarantined).
pub fn stored_state(data: &[u8]) {
    let (kind, rest) = pick(data, KINDS.len());
    let (kind, read) = KINDS[kind];
    let node = node();
    let id = fresh_id("s");
    let key = EntityKey::new(kind, EntityId::new(&id).expect("a valid id"));
    let text = String::from_utf8_lossy(rest);
    node.store.put_raw(key.clone(), &text, 1);
    let result = node
        .tokio
        .block_on(node.rt.call_json(kind, &id, read.as_bytes()));
    if let Err(CallError::CorruptState { .. }) = &result {
        let stored = node.tokio.block_on(node.store.load(&key)).ok().flatten();
        assert_eq!(
            stored.map(|r| r.state),
            Some(text.into_owned()),
            "refused bytes must stay as they were"
        );
        assert!(
            node.rt.admin().quarantined().iter().any(|q| q.key == key),
            "{key} is quarantined"
        );
    }
    forget(node, kind, &id);
}

/// The journal of a `Journal` kind, of arbitrary entries (split at 0xFF; the first byte of
/// each sets its step's distance from the previous one, so holes happen), then a call that
/// replays it. A journal that cannot be replayed must be left as it was.
pub fn journal(data: &[u8]) {
    const JOURNALED: [(&str, &str); 4] = [
        ("jprobe", r#""read""#),
        ("table", r#""view""#),
        ("house", r#""stats""#),
        ("cache", r#""size""#),
    ];
    let (kind, rest) = pick(data, JOURNALED.len());
    let (kind, read) = JOURNALED[kind];
    let node = node();
    let id = fresh_id("j");
    let key = EntityKey::new(kind, EntityId::new(&id).expect("a valid id"));
    let mut step = 0u64;
    let entries: Vec<JournalEntry> = rest
        .split(|&b| b == 0xFF)
        .take(64)
        .map(|part| {
            let (gap, text) = part.split_first().map_or((1, part), |(g, t)| (*g, t));
            step += if gap == b'+' { 2 } else { 1 };
            JournalEntry {
                step,
                at_us: 1_700_000_000_000_000,
                entry: String::from_utf8_lossy(text).into(),
            }
        })
        .collect();
    node.store.put_journal(key.clone(), entries.clone());
    let result = node
        .tokio
        .block_on(node.rt.call_json(kind, &id, read.as_bytes()));
    if let Err(
        CallError::CorruptState { .. }
        | CallError::ReplayDiverged { .. }
        | CallError::NoHistory { .. },
    ) = &result
    {
        let stored = node
            .tokio
            .block_on(node.store.journal(&key, 0, usize::MAX))
            .unwrap_or_default();
        assert_eq!(stored, entries, "a refused journal must stay as it was");
    }
    forget(node, kind, &id);
}

/// A message row carried from another node: `kind-byte body`. It is applied, refused,
/// retried or poison, never a panic.
pub fn parcel(data: &[u8]) {
    let (kind, body) = pick(data, KINDS.len() + 1);
    let kind = KINDS.get(kind).map_or("no-such-kind", |(k, _)| k);
    let node = node();
    let id = fresh_id("p");
    let owner = EntityKey::new("counter", EntityId::new("sender").expect("a valid id"));
    let target = EntityKey::new(kind, EntityId::new(&id).expect("a valid id"));
    let parcel = Parcel::new(owner, 1, target, String::from_utf8_lossy(body).into());
    let _ = node.tokio.block_on(Plumbing::of(&node.rt).deliver(parcel));
    forget(node, kind, &id);
}

/// A filter over entity state, as the admin query takes it; one that parses is matched
/// against states (including the input itself, if it is JSON), and a path as the index
/// route takes it.
pub fn filter(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(filter) = Filter::parse(&text) {
        let states = [
            serde_json::json!({"value": 5, "players": [{"name": "alice", "chips": 10}]}),
            serde_json::json!([1, "two", null, {"3": [4.5e300]}]),
            Value::Null,
        ];
        for state in &states {
            let _ = filter.matches(state);
        }
        if let Ok(state) = serde_json::from_slice::<Value>(data) {
            let _ = filter.matches(&state);
        }
    }
    if let Ok(path) = Path::parse(&text) {
        let again = Path::parse(&path.to_string()).expect("a path prints as it parses");
        assert_eq!(again, path, "{text:?}");
    }
}

/// The internal route's messages between nodes, in postcard.
pub fn wire(data: &[u8]) {
    let _ = perennial_gateway::decode_wire_for_fuzzing(data);
}

/// A row of SQLite's `state_log`, as a store opening the file reads it.
pub fn log_row(data: &[u8]) {
    let _ = perennial_storage_sqlite::decode_log_row_for_fuzzing(&String::from_utf8_lossy(data));
}
