//! `Journal` kinds: replay rebuilds exactly the live state, snapshots cut it short, the
//! determinism guard catches handlers that replay differently, history and time travel.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::UNIX_EPOCH;

use perennial_core::{AdminError, CallError, Ctx, Persistence, Process, Runtime, Snapshots};
use perennial_storage::{FaultyStore, JournalEntry, MemoryStore, Store};
use perennial_types::EntityKey;
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

use crate::kinds::Refused;

/// A ledger whose steps use everything `ctx` hands out. Each reply is the whole state, so a
/// test can compare the live state with a replayed one.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Ledger {
    pub(crate) total: i64,
    draws: Vec<u64>,
    ids: Vec<String>,
    stamps: Vec<u128>,
    /// What `init` drew: replay must give the same.
    born: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum LedgerOp {
    Add(i64),
    Draw,
    NewId,
    Stamp,
    /// Adds, then refuses: the addition must not survive.
    AddThenReject(i64),
    /// Adds, then panics: the addition must not survive.
    AddThenPanic(i64),
    Get,
}

impl Process for Ledger {
    const KIND: &'static str = "ledger";
    type Msg = LedgerOp;
    type Reply = Ledger;
    type Error = Refused;

    fn init(&mut self, ctx: &mut Ctx<'_, Self>) {
        self.born = ctx.rng().below(1_000_000);
    }

    fn handle(&mut self, op: LedgerOp, ctx: &mut Ctx<'_, Self>) -> Result<Ledger, Refused> {
        match op {
            LedgerOp::Add(n) => self.total = self.total.wrapping_add(n),
            LedgerOp::Draw => {
                let n = ctx.rng().below(1000);
                self.draws.push(n);
            }
            LedgerOp::NewId => {
                let id = ctx.new_id();
                self.ids.push(id);
            }
            LedgerOp::Stamp => {
                let at = ctx.now().duration_since(UNIX_EPOCH).unwrap().as_micros();
                self.stamps.push(at);
            }
            LedgerOp::AddThenReject(n) => {
                self.total += n;
                return Err(Refused);
            }
            LedgerOp::AddThenPanic(n) => {
                self.total += n;
                panic!("on purpose");
            }
            LedgerOp::Get => {}
        }
        Ok(self.clone())
    }

    fn is_read_only(op: &LedgerOp) -> bool {
        matches!(op, LedgerOp::Get)
    }
}

pub(crate) async fn ledgers(store: impl Store, snapshots: Option<Snapshots>) -> Runtime {
    let builder = Runtime::builder().store(store);
    let builder = match snapshots {
        Some(policy) => builder.register_journal_with_snapshots::<Ledger>(policy),
        None => builder.register_journal::<Ledger>(),
    };
    builder.max_attempts(2).start().await.unwrap()
}

/// A runtime hosting `K` as a `Journal` kind without snapshots.
async fn journaled<K: Process>(store: impl Store) -> Runtime {
    Runtime::builder()
        .store(store)
        .register_journal::<K>()
        .start()
        .await
        .unwrap()
}

fn op_strategy() -> impl Strategy<Value = LedgerOp> {
    prop_oneof![
        4 => (-1000i64..1000).prop_map(LedgerOp::Add),
        2 => Just(LedgerOp::Draw),
        1 => Just(LedgerOp::NewId),
        1 => Just(LedgerOp::Stamp),
        1 => (1i64..10).prop_map(LedgerOp::AddThenReject),
        1 => (1i64..10).prop_map(LedgerOp::AddThenPanic),
        1 => Just(LedgerOp::Get),
    ]
}

/// Runs `ops` live against `rt`; returns the state after each journaled step, by step.
async fn run_live(rt: &Runtime, id: &str, ops: &[LedgerOp]) -> (Ledger, Vec<Ledger>) {
    let handle = rt.get::<Ledger>(id);
    let mut by_step = Vec::new();
    let mut last = handle.call(LedgerOp::Get).await.unwrap();
    for op in ops {
        match handle.call(op.clone()).await {
            Ok(state) => {
                if !matches!(op, LedgerOp::Get) {
                    by_step.push(state.clone());
                }
                last = state;
            }
            Err(CallError::Rejected(Refused) | CallError::Panicked { .. }) => {}
            Err(CallError::DeadLettered { .. }) => {}
            Err(other) => panic!("{op:?}: {other}"),
        }
    }
    (last, by_step)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Whatever the messages, replaying the journal (with or without snapshots) rebuilds the
    /// state the live steps left, and every past state is the one the live step produced.
    #[test]
    fn replay_equals_live_state(
        ops in proptest::collection::vec(op_strategy(), 1..40),
        every in 1u64..8,
    ) {
        let tokio = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        tokio.block_on(async {
            let store = MemoryStore::new();
            let policy = Snapshots::every(every).keep_all_history();
            let rt = ledgers(store.clone(), Some(policy)).await;
            let (live, by_step) = run_live(&rt, "l", &ops).await;
            // Past states, by replay: from the start (before the latest snapshot) or from a
            // snapshot (after it).
            for (i, expected) in by_step.iter().enumerate() {
                let json = rt.admin().state_at("ledger", "l", i as u64 + 1).await.unwrap();
                let past: Ledger = serde_json::from_str(&json).unwrap();
                assert_eq!(&past, expected, "state at step {}", i + 1);
            }
            rt.shutdown().await;
            if by_step.is_empty() {
                // Nothing was journaled, so nothing is durable: like any kind's, a new
                // entity's `init` becomes durable with its first kept step.
                rt.shutdown().await;
                return;
            }
            // A restart replays the tail after the latest snapshot.
            let rt = ledgers(store.clone(), Some(policy)).await;
            let replayed = rt.get::<Ledger>("l").call(LedgerOp::Get).await.unwrap();
            assert_eq!(replayed, live);
            rt.shutdown().await;
            // Without snapshots, the whole journal replays to the same state.
            let rt = ledgers(store, None).await;
            let full = rt.get::<Ledger>("l").call(LedgerOp::Get).await;
            // The snapshotted runtime wrote snapshots; this one ignores them and replays
            // every step (nothing was trimmed).
            assert_eq!(full.unwrap(), live);
            rt.shutdown().await;
        });
    }
}

/// A refused or panicking step changes nothing, also in a `Journal` kind (whose state is
/// rebuilt by replay), and is not journaled.
#[tokio::test]
async fn failed_steps_roll_back_and_are_not_journaled() {
    let store = MemoryStore::new();
    let rt = ledgers(store.clone(), None).await;
    let l = rt.get::<Ledger>("l");
    l.call(LedgerOp::Add(5)).await.unwrap();
    assert!(matches!(
        l.call(LedgerOp::AddThenReject(100)).await,
        Err(CallError::Rejected(Refused))
    ));
    assert!(matches!(
        l.call(LedgerOp::AddThenPanic(100)).await,
        Err(CallError::Panicked { .. })
    ));
    let state = l.call(LedgerOp::Add(1)).await.unwrap();
    assert_eq!(state.total, 6);
    assert_eq!(l.call(LedgerOp::Get).await.unwrap().total, 6);
    let history = rt.admin().history("ledger", "l", 0, 100).await.unwrap();
    let messages: Vec<String> = history.iter().map(|h| h.message.to_string()).collect();
    assert_eq!(messages, [r#"{"add":5}"#, r#"{"add":1}"#]);
    assert_eq!(
        history.iter().map(|h| h.step).collect::<Vec<_>>(),
        [1, 2],
        "read-only and failed steps take no step number"
    );
    // The first step records what init was handed.
    assert!(history[0].recorded.get("init").is_some());
    assert!(history[1].recorded.get("init").is_none());
    assert_eq!(rt.persistence("ledger"), Some(Persistence::Journal));
}

/// Snapshots cut the journal: entries they cover are deleted (by default) or kept for the
/// policy's window, and activation reads only the tail.
#[tokio::test]
async fn snapshots_trim_the_journal_by_policy() {
    for (policy, first_kept) in [
        (Snapshots::every(5), 11),
        (Snapshots::every(5).keep_history(3), 8),
        (Snapshots::every(5).keep_all_history(), 1),
    ] {
        let store = MemoryStore::new();
        let rt = ledgers(store.clone(), Some(policy)).await;
        let l = rt.get::<Ledger>("l");
        for n in 1..=12 {
            l.call(LedgerOp::Add(n)).await.unwrap();
        }
        let key = EntityKey::new("ledger", "l".parse().unwrap());
        let steps: Vec<u64> = store
            .journal(&key, 0, 100)
            .await
            .unwrap()
            .iter()
            .map(|e| e.step)
            .collect();
        assert_eq!(steps, (first_kept..=12).collect::<Vec<_>>(), "{policy:?}");
        let snapshot = store.load(&key).await.unwrap().unwrap();
        assert_eq!(snapshot.version, 10, "the latest snapshot covers step 10");
        rt.shutdown().await;
        let rt = ledgers(store.clone(), Some(policy)).await;
        assert_eq!(
            rt.get::<Ledger>("l")
                .call(LedgerOp::Get)
                .await
                .unwrap()
                .total,
            78
        );
        // Time travel before the trimmed part fails clearly, after it works.
        let early = rt.admin().state_at("ledger", "l", 2).await;
        if first_kept > 1 {
            assert!(
                matches!(early, Err(AdminError::Entity(CallError::NoHistory { .. }))),
                "{early:?}"
            );
        } else {
            let past: Ledger = serde_json::from_str(&early.unwrap()).unwrap();
            assert_eq!(past.total, 3);
        }
        let past: Ledger =
            serde_json::from_str(&rt.admin().state_at("ledger", "l", 11).await.unwrap()).unwrap();
        assert_eq!(past.total, 66);
        assert!(matches!(
            rt.admin().state_at("ledger", "l", 13).await,
            Err(AdminError::Entity(CallError::NoHistory { .. }))
        ));
        rt.shutdown().await;
    }
}

/// Set by a test to make [`Wobbly`] reply differently than it did live.
static WOBBLE: AtomicBool = AtomicBool::new(false);
/// Set by a test to make [`Wobbly`] ask for randomness it did not ask for live.
static WOBBLE_RNG: AtomicBool = AtomicBool::new(false);
/// A counter outside the state: what a handler must never depend on.
static OUTSIDE: AtomicU64 = AtomicU64::new(0);

/// A deliberately nondeterministic kind: its reply depends on a global, not on its state.
#[derive(Default)]
struct Wobbly {
    seen: u64,
}

impl Process for Wobbly {
    const KIND: &'static str = "wobbly";
    type Msg = String;
    type Reply = u64;
    type Error = std::convert::Infallible;

    fn handle(&mut self, msg: String, ctx: &mut Ctx<'_, Self>) -> Result<u64, Self::Error> {
        self.seen += 1;
        if WOBBLE_RNG.load(Ordering::SeqCst) {
            let _ = ctx.rng().below(10);
        }
        if msg == "outside" && WOBBLE.load(Ordering::SeqCst) {
            return Ok(self.seen + OUTSIDE.fetch_add(1, Ordering::SeqCst) + 1000);
        }
        Ok(self.seen)
    }
}

/// The determinism guard: a replay whose reply differs, or that asks for randomness the
/// live step did not, stops the activation with an error naming the entity and the step;
/// the journal is left as it was.
#[tokio::test]
async fn the_determinism_guard_fires_on_a_nondeterministic_kind() {
    let store = MemoryStore::new();
    let start = || journaled::<Wobbly>(store.clone());
    let rt = start().await;
    for msg in ["a", "b", "outside", "c"] {
        rt.get::<Wobbly>("w").call(msg.to_owned()).await.unwrap();
    }
    rt.shutdown().await;
    let key = EntityKey::new("wobbly", "w".parse().unwrap());
    let before: Vec<JournalEntry> = store.journal(&key, 0, 100).await.unwrap();

    // Replaying the same code works.
    let rt = start().await;
    assert_eq!(rt.get::<Wobbly>("w").call("d".into()).await.unwrap(), 5);
    rt.shutdown().await;

    WOBBLE.store(true, Ordering::SeqCst);
    let rt = start().await;
    let err = rt.get::<Wobbly>("w").call("e".into()).await.unwrap_err();
    WOBBLE.store(false, Ordering::SeqCst);
    match &err {
        CallError::ReplayDiverged { key, step, detail } => {
            assert_eq!(key.to_string(), "wobbly/w");
            assert_eq!(*step, 3);
            assert!(detail.contains("reply differs"), "{detail}");
        }
        other => panic!("expected ReplayDiverged, got {other:?}"),
    }
    assert_eq!(err.code(), "replay_diverged");
    // Quarantined: refused at once from now on, until released.
    let quarantined = rt.admin().quarantined();
    assert_eq!(quarantined.len(), 1, "{quarantined:?}");
    assert_eq!(quarantined[0].code, "replay_diverged");
    assert!(matches!(
        rt.get::<Wobbly>("w").call("e".into()).await,
        Err(CallError::Quarantined(_))
    ));
    rt.shutdown().await;

    WOBBLE_RNG.store(true, Ordering::SeqCst);
    let rt = start().await;
    let err = rt.get::<Wobbly>("w").call("e".into()).await.unwrap_err();
    WOBBLE_RNG.store(false, Ordering::SeqCst);
    match &err {
        CallError::ReplayDiverged { step, detail, .. } => {
            assert_eq!(*step, 1);
            assert!(detail.contains("ctx.rng()"), "{detail}");
        }
        other => panic!("expected ReplayDiverged, got {other:?}"),
    }
    rt.shutdown().await;
    let mut after = store.journal(&key, 0, 100).await.unwrap();
    after.truncate(before.len());
    assert_eq!(
        after, before,
        "a divergent replay must not touch the journal"
    );
}

/// A state with a closure behind a trait object: no serde, and still durable.
#[derive(Default)]
struct Pricing {
    rule: Option<Box<dyn Fn(u64) -> u64 + Send>>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum PricingMsg {
    /// Picks the pricing rule: a flat fee, or a percentage.
    Choose {
        flat: Option<u64>,
        percent: Option<u64>,
    },
    Quote(u64),
}

impl Process for Pricing {
    const KIND: &'static str = "pricing";
    type Msg = PricingMsg;
    type Reply = u64;
    type Error = std::convert::Infallible;

    fn handle(&mut self, msg: PricingMsg, _ctx: &mut Ctx<'_, Self>) -> Result<u64, Self::Error> {
        match msg {
            PricingMsg::Choose { flat, percent } => {
                self.rule = Some(match (flat, percent) {
                    (Some(fee), _) => Box::new(move |amount| amount + fee),
                    (None, Some(pct)) => Box::new(move |amount| amount + amount * pct / 100),
                    (None, None) => Box::new(|amount| amount),
                });
                Ok(0)
            }
            PricingMsg::Quote(amount) => Ok(self.rule.as_ref().map_or(amount, |rule| rule(amount))),
        }
    }

    fn is_read_only(msg: &PricingMsg) -> bool {
        matches!(msg, PricingMsg::Quote(_))
    }
}

/// A closure chosen by a message comes back, behaving the same, after a restart and after
/// a passivation.
#[tokio::test]
async fn a_closure_in_the_state_survives_a_restart() {
    let store = FaultyStore::new(MemoryStore::new());
    let start = || journaled::<Pricing>(store.clone());
    let rt = start().await;
    let flat = rt.get::<Pricing>("flat");
    let pct = rt.get::<Pricing>("pct");
    flat.call(PricingMsg::Choose {
        flat: Some(7),
        percent: None,
    })
    .await
    .unwrap();
    pct.call(PricingMsg::Choose {
        flat: None,
        percent: Some(10),
    })
    .await
    .unwrap();
    assert_eq!(flat.call(PricingMsg::Quote(100)).await.unwrap(), 107);
    assert_eq!(pct.call(PricingMsg::Quote(100)).await.unwrap(), 110);
    assert_eq!(rt.admin().passivate_idle(), 0);
    let activations = || rt.stats().kinds[0].activations;
    let before = activations();
    assert_eq!(pct.call(PricingMsg::Quote(200)).await.unwrap(), 220);
    assert_eq!(activations(), before + 1, "the entity was activated again");
    rt.shutdown().await;

    let rt = start().await;
    assert_eq!(
        rt.get::<Pricing>("flat")
            .call(PricingMsg::Quote(1))
            .await
            .unwrap(),
        8
    );
    assert_eq!(
        rt.get::<Pricing>("pct")
            .call(PricingMsg::Quote(50))
            .await
            .unwrap(),
        55
    );
    // Its past states cannot be shown (not serializable), but its history can.
    assert!(matches!(
        rt.admin().state_at("pricing", "pct", 1).await,
        Err(AdminError::Entity(CallError::NoHistory { .. }))
    ));
    assert_eq!(
        rt.admin()
            .history("pricing", "pct", 0, 10)
            .await
            .unwrap()
            .len(),
        1
    );
    rt.shutdown().await;
}

/// A batch that fails while it carries a snapshot loses that step only (its caller is told),
/// and the entity rebuilds from the journal and goes on; the next snapshot lands.
#[tokio::test]
async fn a_failed_snapshot_batch_loses_only_its_step() {
    let store = FaultyStore::new(MemoryStore::new());
    let rt = ledgers(store.clone(), Some(Snapshots::every(3))).await;
    let l = rt.get::<Ledger>("l");
    l.call(LedgerOp::Add(1)).await.unwrap();
    l.call(LedgerOp::Add(2)).await.unwrap();
    store.fail_next_commits(1);
    let lost = l.call(LedgerOp::Add(100)).await;
    assert!(matches!(lost, Err(CallError::Storage { .. })), "{lost:?}");
    assert_eq!(l.call(LedgerOp::Add(4)).await.unwrap().total, 7);
    let key = EntityKey::new("ledger", "l".parse().unwrap());
    let snapshot = store.inner().load(&key).await.unwrap().unwrap();
    assert_eq!(
        snapshot.version, 3,
        "the retried third step wrote the snapshot"
    );
    rt.shutdown().await;
    let rt = ledgers(store, Some(Snapshots::every(3))).await;
    assert_eq!(
        rt.get::<Ledger>("l")
            .call(LedgerOp::Get)
            .await
            .unwrap()
            .total,
        7
    );
    rt.shutdown().await;
}

/// A dead letter takes no journal step (the failed step rebuilds the state by replay, which
/// numbers the next step after the last journaled one): the journal stays contiguous.
#[tokio::test]
async fn a_dead_letter_leaves_the_journal_contiguous() {
    let store = MemoryStore::new();
    let rt = ledgers(store.clone(), None).await;
    let l = rt.get::<Ledger>("l");
    l.call(LedgerOp::Add(5)).await.unwrap();
    for _ in 0..2 {
        let _ = l.call(LedgerOp::AddThenPanic(100)).await;
    }
    l.call(LedgerOp::Add(1)).await.unwrap();
    rt.shutdown().await;
    let rt = ledgers(store.clone(), None).await;
    let state = rt.get::<Ledger>("l").call(LedgerOp::Get).await;
    assert_eq!(state.unwrap().total, 6);
    let history = rt.admin().history("ledger", "l", 0, 100).await.unwrap();
    let steps: Vec<u64> = history.iter().map(|h| h.step).collect();
    assert_eq!(steps, [1, 2], "the step after the letter is step 2");
    rt.shutdown().await;
}
