//! `Journal` persistence: what a step records, and how replay rebuilds a state from it.
//!
//! Each kept step of a `Journal` kind is one [`JournalEntry`]: the message, the time, the
//! random seed and the caller its [`Ctx`] handed out, and a digest of its reply, as one JSON object (so a
//! generic tool can read it). The entity's first step also records what `init` was handed.
//! Activation rebuilds the state by running the entries through the same handler, after the
//! latest snapshot if the kind takes them, and compares each reply's digest with the
//! recorded one: a difference means the code or the handler's inputs changed, and the entity
//! is not activated ([`CallError::ReplayDiverged`]).
//!
//! An entry also records the kind's schema version when it is above 1 (`"v"`), so that a
//! build older than the one that wrote it refuses to replay it
//! ([`CallError::StateTooNew`]). A snapshot written by a migration pass, with no step of its
//! own to record, is a *mark* entry (`"mark": "snapshot"`) that replay passes over.

use perennial_storage::JournalEntry;
use perennial_types::{EntityId, EntityKey};
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

use crate::guard::guard;
use crate::{CallError, Caller, Ctx, Process};

/// When a `Journal` kind whose state is serializable writes snapshots, and how much journal
/// it keeps behind them. See
/// [`register_journal_with_snapshots`](crate::Builder::register_journal_with_snapshots).
///
/// ```
/// use perennial_core::Snapshots;
///
/// // A snapshot every 1,000 steps; the last 10,000 steps stay readable as history.
/// let policy = Snapshots::every(1_000).keep_history(10_000);
/// # let _ = policy;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshots {
    pub(crate) every: u64,
    /// How many steps of journal stay behind the latest snapshot; `None` keeps them all.
    pub(crate) keep: Option<u64>,
}

impl Snapshots {
    /// A snapshot every `steps` steps (at least 1), written in the same batch as the step.
    /// Activation then replays at most that many entries. Journal entries the snapshot covers
    /// are deleted, unless [`keep_history`](Self::keep_history) says otherwise.
    pub fn every(steps: u64) -> Self {
        Self {
            every: steps.max(1),
            keep: Some(0),
        }
    }

    /// Keeps the last `steps` steps before each snapshot in the journal, to serve history
    /// and time travel over them.
    pub fn keep_history(mut self, steps: u64) -> Self {
        self.keep = Some(steps);
        self
    }

    /// Keeps every journal entry: the whole history stays readable, and storage grows with
    /// every step.
    pub fn keep_all_history(mut self) -> Self {
        self.keep = None;
        self
    }

    /// The last step a snapshot at `step` lets the journal delete, if any.
    pub(crate) fn trim_through(&self, step: u64) -> Option<u64> {
        let through = step.checked_sub(self.keep?)?;
        (through > 0).then_some(through)
    }
}

/// One step of an entity's journal, as [`Admin::history`](crate::Admin::history) shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct HistoryEntry {
    /// The step's number: 1 for the entity's first step.
    pub step: u64,
    /// When the step ran (its `ctx.now()`), in microseconds since the Unix epoch.
    pub at_us: i64,
    /// The message.
    pub message: serde_json::Value,
    /// The rest of what was recorded: `reply` (a digest of the reply), and `seed`, `caller`
    /// and `init` when the step drew randomness, came from an authenticated caller or
    /// created the entity.
    pub recorded: serde_json::Value,
}

impl HistoryEntry {
    /// A stored journal entry, as history. Fails if the entry is not a JSON object with a
    /// message, which this runtime never writes.
    pub fn from_journal(entry: &JournalEntry) -> Result<Self, serde_json::Error> {
        let mut recorded: serde_json::Value = serde_json::from_str(&entry.entry)?;
        let message = recorded
            .as_object_mut()
            .and_then(|o| o.remove("msg"))
            .ok_or_else(|| serde::de::Error::missing_field("msg"))?;
        Ok(Self {
            step: entry.step,
            at_us: entry.at_us,
            message,
            recorded,
        })
    }
}

/// What `init` was handed when the entity was created: recorded with its first step.
#[derive(Debug, Clone, Copy)]
pub(crate) struct InitRecord {
    pub(crate) at_us: i64,
    pub(crate) seed: Option<[u8; 32]>,
}

/// The JSON of one step's entry. `message` is the message's JSON; `schema` the kind's
/// schema version (written only above 1).
pub(crate) fn encode_entry(
    message: &str,
    (seed, caller): (Option<[u8; 32]>, Option<&Caller>),
    init: Option<InitRecord>,
    reply: u64,
    schema: u32,
) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(message.len() + 160);
    out.push_str("{\"msg\":");
    out.push_str(message);
    let _ = write!(out, ",\"reply\":\"{reply:016x}\"");
    if schema > 1 {
        let _ = write!(out, ",\"v\":{schema}");
    }
    if let Some(seed) = seed {
        out.push_str(",\"seed\":\"");
        push_hex(&mut out, &seed);
        out.push('"');
    }
    if let Some(caller) = caller {
        out.push_str(",\"caller\":");
        // A string always encodes.
        out.push_str(&serde_json::to_string(caller.subject()).unwrap_or_default());
    }
    if let Some(init) = init {
        let _ = write!(out, ",\"init\":{{\"at_us\":{}", init.at_us);
        if let Some(seed) = init.seed {
            out.push_str(",\"seed\":\"");
            push_hex(&mut out, &seed);
            out.push('"');
        }
        out.push('}');
    }
    out.push('}');
    out
}

/// The JSON of a mark entry: a step that changed nothing, written with a snapshot by a
/// migration pass (see `migration`). Replay passes over it.
pub(crate) fn encode_mark(schema: u32) -> String {
    format!("{{\"msg\":null,\"mark\":\"snapshot\",\"reply\":\"0\",\"v\":{schema}}}")
}

/// One entry as replay reads it. Hex fields are borrowed from the entry's text.
#[derive(Deserialize)]
#[serde(bound(deserialize = "M: Deserialize<'de>"))]
struct Entry<'a, M> {
    /// `None` only in a mark entry.
    #[serde(default)]
    msg: Option<M>,
    #[serde(borrow, default)]
    mark: Option<&'a str>,
    /// The schema version of the code that wrote it (1 if absent).
    #[serde(default)]
    v: Option<u32>,
    #[serde(borrow)]
    reply: &'a str,
    #[serde(borrow, default)]
    seed: Option<&'a str>,
    /// Who sent the message (see [`Ctx::caller`]), if anyone authenticated did.
    #[serde(default)]
    caller: Option<Caller>,
    #[serde(borrow, default)]
    init: Option<Init<'a>>,
}

#[derive(Deserialize)]
struct Init<'a> {
    at_us: i64,
    #[serde(borrow, default)]
    seed: Option<&'a str>,
}

/// A stable 64-bit digest of a reply's JSON (xxh3 of the text), encoded into a buffer this
/// thread reuses: replay computes one per entry, and one allocation each would show.
pub(crate) fn reply_digest<T: Serialize>(reply: &T) -> u64 {
    thread_local! {
        static BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    BUFFER.with(|buffer| {
        let Ok(mut buffer) = buffer.try_borrow_mut() else {
            // Only a reply whose `Serialize` computes another digest gets here.
            return xxh3_64(&serde_json::to_vec(reply).unwrap_or_default());
        };
        buffer.clear();
        // A reply that fails to encode fails the same way on replay: its digest is stable.
        let _ = serde_json::to_writer(&mut *buffer, reply);
        let digest = xxh3_64(&buffer);
        if buffer.capacity() > 1 << 20 {
            // Do not keep a huge reply's buffer for the life of the thread.
            *buffer = Vec::new();
        }
        digest
    })
}

fn push_hex(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 15)] as char);
    }
}

fn parse_seed(hex: &str) -> Option<[u8; 32]> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut seed = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        let text = std::str::from_utf8(pair).ok()?;
        seed[i] = u8::from_str_radix(text, 16).ok()?;
    }
    Some(seed)
}

/// How to read and write a kind's snapshots, with its policy.
pub(crate) struct SnapshotCodec<K> {
    pub(crate) policy: Snapshots,
    pub(crate) encode: fn(&K) -> serde_json::Result<String>,
    pub(crate) decode: fn(&str) -> serde_json::Result<K>,
}

/// A state rebuilt from storage.
pub(crate) struct Rebuilt<K> {
    /// `None` if the entity has neither a snapshot nor a journal: it never existed.
    pub(crate) state: Option<K>,
    /// The last step applied (0 if none).
    pub(crate) step: u64,
    /// The step the snapshot that replay started from covers, and its length in bytes.
    pub(crate) snapshot: Option<(u64, usize)>,
    /// Whether that snapshot was stored at an older schema version (and migrated).
    pub(crate) outdated: bool,
}

/// How many entries replay reads from the store at a time.
const PAGE: usize = 4096;

/// Rebuilds an entity's state as of step `upto` (`u64::MAX`: its latest step) from its
/// latest snapshot at or before `upto` (if `codec` is given) and the journal after it.
pub(crate) async fn rebuild<K: Process>(
    store: &dyn perennial_storage::Store,
    key: &EntityKey,
    id: &EntityId,
    codec: Option<&SnapshotCodec<K>>,
    upto: u64,
) -> Result<Rebuilt<K>, CallError> {
    let storage = |source| CallError::Storage {
        key: key.clone(),
        source,
    };
    let mut rebuilt = Rebuilt {
        state: None,
        step: 0,
        snapshot: None,
        outdated: false,
    };
    let snapshot = match codec {
        Some(codec) => store.load(key).await.map_err(storage)?.map(|r| (codec, r)),
        None => None,
    };
    if let Some((codec, record)) = snapshot
        && record.version <= upto
    {
        let migrated = crate::upgrade::upgrade::<K>(key, record.schema, &record.state)?;
        rebuilt.outdated = migrated.is_some();
        let json = migrated.as_deref().unwrap_or(&record.state);
        let state = guard(|| (codec.decode)(json))
            .map_err(|panic| format!("the decoder panicked: {panic}"))
            .and_then(|decoded| decoded.map_err(|e| e.to_string()))
            .map_err(|detail| match migrated {
                Some(_) => CallError::MigrationFailed {
                    key: key.clone(),
                    from: record.schema,
                    detail: format!(
                        "the migrated snapshot at step {} does not decode: {detail}",
                        record.version
                    ),
                },
                None => CallError::CorruptState {
                    key: key.clone(),
                    detail: format!("snapshot at step {}: {detail}", record.version),
                },
            })?;
        rebuilt.state = Some(state);
        rebuilt.step = record.version;
        rebuilt.snapshot = Some((record.version, record.state.len()));
    }
    let mut after = rebuilt.step;
    'pages: loop {
        let page = store.journal(key, after, PAGE).await.map_err(storage)?;
        let full = page.len() == PAGE;
        for entry in &page {
            if entry.step > upto {
                break 'pages;
            }
            // A life that follows a deletion starts where the deleted one ended, with the
            // `init` entry of its first step.
            let starts_a_life = || rebuilt.state.is_none() && after == 0 && has_init(entry);
            if entry.step != after + 1 && !starts_a_life() {
                // Steps are numbered one by one, and a trim only deletes steps a snapshot
                // covers: a hole means lost entries, and replaying past it would build a
                // state the entity never had.
                return Err(CallError::CorruptState {
                    key: key.clone(),
                    detail: format!(
                        "journal step {} is missing: the journal goes from step {after} to step {}",
                        after + 1,
                        entry.step
                    ),
                });
            }
            apply(&mut rebuilt, key, id, entry)?;
            perennial_faults::failpoint!("journal.replay");
            after = entry.step;
        }
        if !full {
            break;
        }
        // A long replay shares the worker with the other entities' calls.
        tokio::task::yield_now().await;
    }
    Ok(rebuilt)
}

/// Whether a journal entry records `init`: the first step of a life.
fn has_init(entry: &JournalEntry) -> bool {
    #[derive(serde::Deserialize)]
    struct Probe {
        init: Option<serde::de::IgnoredAny>,
    }
    serde_json::from_str::<Probe>(&entry.entry).is_ok_and(|probe| probe.init.is_some())
}

/// Replays one entry onto the state, checking that it does what it did live.
fn apply<K: Process>(
    rebuilt: &mut Rebuilt<K>,
    key: &EntityKey,
    id: &EntityId,
    entry: &JournalEntry,
) -> Result<(), CallError> {
    let step = entry.step;
    let diverged = |detail: String| CallError::ReplayDiverged {
        key: key.clone(),
        step,
        detail,
    };
    let parsed: Entry<'_, K::Msg> = serde_json::from_str(&entry.entry).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            // Not JSON at all: no code change explains that; the bytes are damaged.
            CallError::CorruptState {
                key: key.clone(),
                detail: format!("journal step {step} is not JSON: {e}"),
            }
        } else {
            diverged(format!("the journaled message no longer decodes: {e}"))
        }
    })?;
    let supported = crate::upgrade::schema_version::<K>();
    if let Some(schema) = parsed.v.filter(|&v| v > supported) {
        return Err(CallError::StateTooNew {
            key: key.clone(),
            schema,
            supported,
        });
    }
    if parsed.mark.is_some() {
        // A snapshot's mark: the step changed nothing. It follows a snapshot (or the state
        // it covers) by construction.
        if rebuilt.state.is_none() {
            return Err(CallError::NoHistory {
                key: key.clone(),
                detail: format!("the journal starts at mark step {step}, without a snapshot"),
            });
        }
        rebuilt.step = step;
        return Ok(());
    }
    let msg = match parsed.msg {
        Some(msg) => msg,
        // `"msg": null` reads as `None`, but it is the message of a kind whose messages
        // include null (such as `()`).
        None => serde_json::from_str("null")
            .map_err(|e| diverged(format!("the journaled message no longer decodes: {e}")))?,
    };
    let seed = match parsed.seed {
        Some(hex) => Some(parse_seed(hex).ok_or_else(|| diverged("a bad seed".into()))?),
        None => None,
    };
    let recorded =
        u64::from_str_radix(parsed.reply, 16).map_err(|_| diverged("a bad reply digest".into()))?;
    let state = match &mut rebuilt.state {
        Some(state) => state,
        None => {
            let Some(init) = parsed.init else {
                return Err(CallError::NoHistory {
                    key: key.clone(),
                    detail: format!(
                        "the journal starts at step {step} and no snapshot covers the steps \
                         before it"
                    ),
                });
            };
            let init_seed = match init.seed {
                Some(hex) => Some(parse_seed(hex).ok_or_else(|| diverged("a bad seed".into()))?),
                None => None,
            };
            let mut state = guard(K::default)
                .map_err(|panic| diverged(format!("Default::default panicked: {panic}")))?;
            let mut ctx = Ctx::replay(id, init.at_us, init_seed, 0);
            guard(|| state.init(&mut ctx))
                .map_err(|panic| diverged(format!("init panicked on replay: {panic}")))?;
            if ctx.strayed() {
                return Err(diverged(
                    "init used ctx.rng() on replay but not when it ran live".into(),
                ));
            }
            rebuilt.state.insert(state)
        }
    };
    let mut ctx = Ctx::replay(id, entry.at_us, seed, step);
    ctx.set_caller(parsed.caller.as_ref());
    let result = guard(|| state.handle(msg, &mut ctx));
    if ctx.strayed() {
        return Err(diverged(
            "the handler used ctx.rng() on replay but not when it ran live: it depends on \
             something outside the state, the message and ctx"
                .into(),
        ));
    }
    match result {
        Err(panic) => Err(diverged(format!(
            "the handler panicked on replay, but succeeded live: {panic}"
        ))),
        Ok(Err(rejection)) => Err(diverged(format!(
            "the handler refused the message on replay ({}: {rejection}), but accepted it live",
            crate::Rejection::code(&rejection)
        ))),
        Ok(Ok(reply)) => {
            let digest = reply_digest(&reply);
            if digest != recorded {
                return Err(diverged(format!(
                    "the reply differs from the one recorded live (digest {digest:016x}, \
                     recorded {recorded:016x}): the handler changed, or it used time, \
                     randomness or state from outside ctx"
                )));
            }
            rebuilt.step = step;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_json_with_the_recorded_inputs() {
        let init = InitRecord {
            at_us: 5,
            seed: None,
        };
        let json = encode_entry(
            r#"{"add":2}"#,
            (Some([0xab; 32]), None),
            Some(init),
            0x1f,
            1,
        );
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["msg"]["add"], 2);
        assert_eq!(value["reply"], "000000000000001f");
        assert_eq!(value["seed"], "ab".repeat(32));
        assert_eq!(value["init"]["at_us"], 5);
        let parsed: Entry<'_, serde_json::Value> = serde_json::from_str(&json).unwrap();
        assert_eq!(parse_seed(parsed.seed.unwrap()), Some([0xab; 32]));
        assert_eq!(parsed.v, None, "version 1 is not written");
        let v3 = encode_entry("1", (None, None), None, 0, 3);
        let parsed: Entry<'_, serde_json::Value> = serde_json::from_str(&v3).unwrap();
        assert_eq!(parsed.v, Some(3));
        let quoted = Caller::new("a \"b\"\n");
        let json = encode_entry("1", (None, Some(&quoted)), None, 0, 1);
        let parsed: Entry<'_, serde_json::Value> = serde_json::from_str(&json).unwrap();
        assert_eq!(
            parsed.caller,
            Some(quoted),
            "a caller's name is escaped as JSON"
        );
        let mark = encode_mark(3);
        let mark: Entry<'_, serde_json::Value> = serde_json::from_str(&mark).unwrap();
        assert_eq!((mark.msg, mark.mark), (None, Some("snapshot")));
    }

    /// Digests are stored: they must not change between versions of the crates behind them.
    #[test]
    fn reply_digest_is_pinned() {
        assert_eq!(
            reply_digest(&serde_json::json!({"value": 7})),
            PINNED_DIGEST
        );
    }

    const PINNED_DIGEST: u64 = 11_118_498_187_653_837_131;

    #[test]
    fn trims_follow_the_policy() {
        assert_eq!(Snapshots::every(10).trim_through(30), Some(30));
        assert_eq!(
            Snapshots::every(10).keep_history(25).trim_through(30),
            Some(5)
        );
        assert_eq!(Snapshots::every(10).keep_history(30).trim_through(30), None);
        assert_eq!(
            Snapshots::every(10).keep_all_history().trim_through(30),
            None
        );
    }
}
